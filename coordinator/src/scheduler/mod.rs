//! The fair, cosmo-local scheduler: which queued job starts on which free machine.
//!
//! [`plan`] is a pure function from a [`Snapshot`] and the current time to a list of
//! [`Assignment`]s. The store builds the snapshot from its tables, calls `plan` on every
//! change that can free or fill a machine (and periodically, so jobs age), and dispatches
//! the assignments; nothing in here does IO or reads a clock.
//!
//! # What the store provides
//!
//! A [`Snapshot`] per run, read in one transaction:
//!
//! - `jobs`: every job in state `queued`, with its requirements from the G-code analysis,
//!   its estimate, its delivery site (the maker's choice, or the cooperative's home site) and
//!   the machines whose agents rejected it in preflight;
//! - `machines`: every machine with its agent's online state, `busy` when a job is assigned
//!   or running on it, its operator confirmation as a [`Readiness`], the capabilities from
//!   its retained state, the material an operator reported loaded, and when its last job
//!   ended;
//! - `sites`, `pools` (machines and member cooperatives with weights) as configured;
//! - `usage`: per cooperative, ledger machine-seconds of jobs that ended in the fair-share
//!   window (for example 7 days; [`ledger::usage_since`](crate::ledger::usage_since)) plus
//!   the estimates of its jobs assigned or running now;
//! - `quotas`: per cooperative with a quota, the budget and the machine-seconds used in the
//!   current period, running jobs' estimates included.
//!
//! Then it records each [`Assignment`] (job → machine, epoch + 1, machine busy and
//! `needs_attention` from now on) and publishes the assign commands. The assignment's
//! `pool` is the pool the ledger entry will name.
//!
//! # Layout
//!
//! - [`ids`]: cooperative, site, region and pool ids.
//! - `explain` (private): [`explain()`](fn@explain) tells why one queued job waits.
//! - [`snapshot`]: the input types.
//! - `plan` (private): the algorithm; its rules and invariants are documented on [`plan()`](fn@plan).

mod explain;
pub mod ids;
mod plan;
pub mod snapshot;

pub use explain::{Explanation, WaitReason, explain};
pub use ids::{CoopId, PoolId, RegionId, SiteId};
pub use plan::{Assignment, plan};
pub use snapshot::{
    GeoPoint, MachineKey, MachineKeyError, MachineSnapshot, Policy, Pool, PoolMember, QueuedJob,
    Quota, Readiness, Site, Snapshot, SnapshotError, Usage,
};
