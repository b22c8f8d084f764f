//! `[catalog] sync_interval`: the running coordinator re-syncs its sources on a timer.
//! Driven by tokio's paused clock: no test waits for real time to pass.

use std::sync::Arc;
use std::time::Duration;

use munifab_coordinator::catalog::{Catalog, CommitId, SyncReport, sync_periodically};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use crate::util::{GitRepo, Setup, at, design};

const EVERY: Duration = Duration::from_secs(15 * 60);
/// What the injected clock says; recorded as each source's `synced_at`.
const CLOCK_MS: i64 = 1_900_000_000_000;

fn commit_of(report: &SyncReport, source: &str) -> Option<CommitId> {
    report
        .sources
        .iter()
        .find(|s| s.name.as_str() == source)
        .and_then(|s| s.commit)
}

fn error_of(report: &SyncReport, source: &str) -> Option<String> {
    report
        .sources
        .iter()
        .find(|s| s.name.as_str() == source)
        .and_then(|s| s.error.clone())
}

#[tokio::test(start_paused = true)]
async fn a_sync_interval_resyncs_on_the_timer_and_a_failing_source_does_not_stop_the_others() {
    let repo = GitRepo::new();
    design(repo.path(), "cube", "cube", "G28\n");
    let first = repo.commit("first");
    let setup = Setup::new().git("commons", &repo.url(), None).git(
        "gone",
        "/nonexistent/munifab/designs.git",
        None,
    );
    let catalog = Arc::new(Catalog::open(setup.config.clone()).expect("catalog opens"));
    let start = catalog.sync(at(0));
    assert_eq!(commit_of(&start, "commons"), Some(first));
    assert!(error_of(&start, "gone").is_some());

    let (tx, mut reports) = mpsc::unbounded_channel();
    let shutdown = CancellationToken::new();
    let started = Instant::now();
    let task = tokio::spawn(sync_periodically(
        catalog.clone(),
        EVERY,
        Arc::new(|| CLOCK_MS),
        shutdown.clone(),
        move |report| {
            let _ = tx.send((Instant::now(), report));
        },
    ));
    // On this single-threaded runtime the loop starts its timer at its first poll: let
    // it run now, so the period counts from `started`.
    tokio::task::yield_now().await;

    design(repo.path(), "cube", "cube", "G28\nG1 X1\n");
    let second = repo.commit("second");
    // Just before the period is up nothing has been fetched.
    tokio::time::advance(EVERY - Duration::from_secs(1)).await;
    assert!(reports.try_recv().is_err(), "a sync ran before the period");
    let served = catalog.sources();
    let commons = served.iter().find(|s| s.name.as_str() == "commons");
    assert_eq!(commons.and_then(|s| s.commit), Some(first));

    let (when, report) = reports.recv().await.expect("a periodic sync");
    assert_eq!(when - started, EVERY);
    assert_eq!(commit_of(&report, "commons"), Some(second));
    let commons = report
        .sources
        .iter()
        .find(|s| s.name.as_str() == "commons")
        .unwrap();
    assert_eq!(
        commons.synced_at.map(|t| t.unix_timestamp()),
        Some(CLOCK_MS / 1000),
        "synced_at comes from the injected clock"
    );
    let gone = error_of(&report, "gone").expect("the missing source is reported");
    assert!(gone.contains("/nonexistent/munifab/designs.git"), "{gone}");
    assert_eq!(report.designs, 1, "commons still serves its design");

    // The loop keeps going after a failure: the next period picks up the next commit.
    design(repo.path(), "cube", "cube", "G28\nG1 X2\n");
    let third = repo.commit("third");
    let (when, report) = reports.recv().await.expect("a second periodic sync");
    assert_eq!(when - started, EVERY * 2);
    assert_eq!(commit_of(&report, "commons"), Some(third));
    assert!(error_of(&report, "gone").is_some());

    shutdown.cancel();
    tokio::time::timeout(EVERY, task)
        .await
        .expect("the loop stops on shutdown, before another period")
        .expect("the loop does not panic");
    assert!(reports.recv().await.is_none(), "no sync after shutdown");
}
