//! The production ledger: one sealed entry per ended job, chained by SHA-256.
//!
//! Pure functions over entries; the store persists them in order and calls [`append`]
//! with the last stored entry, [`verify`] (or a [`ChainVerifier`] while streaming) to
//! check, and [`Report::build`] / [`entries_to_csv`] for reports and export.
//!
//! # How the store uses it
//!
//! On every job end, in one transaction: read the entry with the highest `seq`, build an
//! [`EntryDraft`] (material from the analysis via [`prorated_material_mg`], energy from the
//! machine profile via [`energy_wh`]), seal it with [`append`], and insert it with `seq` as
//! the primary key. Two coordinator replicas appending at once then collide on `seq`; the
//! loser retries with the new last entry, so the chain never forks. Store every field as
//! read back by [`Entry`] (times are whole seconds in UTC, so they survive any database);
//! verification recomputes the hash from the columns, so an edited row fails at its own
//! `seq`.
//!
//! # Layout
//!
//! - [`canonical`](mod@canonical): the byte-exact JSON form entries are hashed in.
//! - [`entry`]: entries, drafts, sealing, verification, material and energy helpers.
//! - [`report`]: filters, totals by cooperative / pool / site / month, CSV.

pub mod canonical;
pub mod entry;
pub mod report;

pub use entry::{
    BadHash, BrokenLink, ChainVerifier, DesignRef, DraftError, ENCODING_VERSION, Entry, EntryDraft,
    EntryHash, LinkFault, MAX_CANONICAL_INT, Outcome, Unencodable, append, energy_wh,
    prorated_material_mg, verify,
};
pub use report::{Filter, GroupBy, Report, ReportRow, Totals, entries_to_csv, usage_since};
