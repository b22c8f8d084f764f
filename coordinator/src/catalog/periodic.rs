//! Re-syncing the catalog on a timer while the coordinator runs (`[catalog]
//! sync_interval`), besides the sync at start and the one on demand.
//!
//! The loop is thin: a tokio interval, and [`Catalog::sync`] on the blocking pool. A
//! source that fails is reported and keeps serving its last commit while the others move
//! on ([`Catalog::sync`] does that); the loop itself never stops on a failure, only on
//! shutdown, and never in the middle of a sync.

use std::sync::Arc;
use std::time::Duration;

use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;

use super::index::{Catalog, SyncReport};
use crate::clock::Clock;

/// Sync `catalog` every `every` until `shutdown` fires, the first time one period after
/// the call (the coordinator has just synced at start). `clock` gives the time recorded
/// as each source's `synced_at`; `after_sync` sees every report (logging is done here).
///
/// A sync that takes longer than the period delays the next one rather than running
/// back to back.
pub async fn sync_periodically(
    catalog: Arc<Catalog>,
    every: Duration,
    clock: Clock,
    shutdown: CancellationToken,
    mut after_sync: impl FnMut(SyncReport) + Send,
) {
    let mut ticker = tokio::time::interval_at(Instant::now() + every, every);
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            biased;
            () = shutdown.cancelled() => break,
            _ = ticker.tick() => {}
        }
        let now = unix_ms(clock());
        let c = catalog.clone();
        let report = match tokio::task::spawn_blocking(move || c.sync(now)).await {
            Ok(report) => report,
            Err(e) => {
                // A panic in the git library must not end periodic syncing for good.
                tracing::error!(error = %e, "periodic catalog sync failed");
                continue;
            }
        };
        log(&report);
        after_sync(report);
    }
    tracing::debug!("periodic catalog sync stopped");
}

fn unix_ms(ms: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000))
        .unwrap_or(time::OffsetDateTime::UNIX_EPOCH)
}

fn log(report: &SyncReport) {
    for s in &report.sources {
        match &s.error {
            None => tracing::info!(
                source = %s.name,
                commit = ?s.commit.map(|c| c.to_string()),
                designs = s.designs,
                "catalog source re-synced"
            ),
            Some(e) => {
                tracing::warn!(source = %s.name, error = %e, "catalog source failed to re-sync")
            }
        }
    }
}
