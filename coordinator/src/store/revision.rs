//! The store's revision: one number per process, shared by every clone of a [`Store`]
//! handle, that moves after each committed write of something the HTTP API shows (jobs and
//! their events, machines, agents, tokens, cooperatives, sites, pools, quotas, the ledger),
//! and after a catalog sync. `GET /api/v1/changes` lets a client await the next move instead
//! of asking again on a timer; it then re-reads what it cares about.
//!
//! Transactions that write such rows end in [`Store::commit`], which commits and then moves
//! the revision, so a client woken by the move reads the committed state. The few writes
//! made straight on the pool call [`Store::bump_revision`] after them. Writes that no answer
//! of the API shows — the outbox's delivery bookkeeping (`enqueue_command`, `mark_sent`,
//! pruning) and an agent message that changed nothing but its replay guard — commit without
//! moving it.
//!
//! It is not the dispatcher's change notes ([`super::changes`]): those say *what* changed,
//! for the scheduler's picture only; this says only *that* something changed.
//!
//! The number starts at a random value below 2^52 in each process (exact in a JavaScript
//! number, and never the value a client kept from a coordinator that has since restarted,
//! except by a chance of about one in 2^52), so clients compare it for equality only. A
//! write by another process on the same database (another replica, the command-line
//! tools) does not move this process's revision.

use std::time::Duration;

use sqlx::{Any, Transaction};
use tokio::sync::watch;

use super::{Store, StoreError};

/// Revisions start below this (2^52), so a counter that moves for centuries stays an exact
/// JavaScript number.
const START_BELOW: u64 = 1 << 52;

/// A fresh process's first revision: random, so that it is not the one a client kept from
/// an earlier process (see the module docs).
pub(super) fn first_revision() -> u64 {
    let mut bytes = [0u8; 8];
    match getrandom::fill(&mut bytes) {
        Ok(()) => u64::from_le_bytes(bytes) % START_BELOW,
        Err(e) => {
            // Only a restart that lands on exactly the client's number can be missed.
            tracing::warn!(error = %e, "no random start for the store revision; starting at 0");
            0
        }
    }
}

impl Store {
    /// The current revision. Compare it for equality only: it starts at a random value in
    /// each process.
    pub fn revision(&self) -> u64 {
        *self.revision.borrow()
    }

    /// Returns the revision as soon as it differs from `after` — at once if it already
    /// does — or, if it does not move within `timeout`, the unchanged revision (`after`).
    pub async fn changed_since(&self, after: u64, timeout: Duration) -> u64 {
        let mut rx = self.revision.subscribe();
        // `wait_for` looks at the current value first; the sender lives as long as `self`,
        // so the channel cannot close under it.
        let _ = tokio::time::timeout(timeout, rx.wait_for(|r| *r != after)).await;
        self.revision()
    }

    /// How many callers are waiting in [`Store::changed_since`] now (diagnostics, and tests
    /// that must know a request waits before they write).
    pub fn revision_waiters(&self) -> usize {
        self.revision.receiver_count()
    }

    /// Moves the revision for a change the API shows that the store did not write itself:
    /// the design catalog after a sync. Writes through the store move it on their own.
    pub fn bump_revision(&self) {
        self.revision.send_modify(|r| *r = r.wrapping_add(1));
    }

    /// Commits `tx` and then moves the revision: the end of every transaction that writes
    /// something the API shows.
    pub(crate) async fn commit(&self, tx: Transaction<'static, Any>) -> Result<(), StoreError> {
        tx.commit().await?;
        self.bump_revision();
        Ok(())
    }
}

/// The sending half every clone of a store shares.
pub(super) fn channel() -> watch::Sender<u64> {
    watch::Sender::new(first_revision())
}
