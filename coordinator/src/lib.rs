//! munifab-coordinator: the cooperative's shared service (store, API, catalog, scheduler,
//! dispatch, ledger).
//!
//! # Layout
//!
//! - [`lifecycle`]: job states and the one rule for moving between them.
//! - [`store`]: the database (SQLite or PostgreSQL) behind one API; migrations.
//! - [`auth`]: roles, scopes, bearer tokens.
//! - [`artifacts`]: uploaded G-code on disk, content-addressed by SHA-256.
//! - [`submission`]: the analysis that accepts or refuses an upload.
//! - [`api`]: the HTTP API (`app()`), errors, OpenAPI document.
//! - [`mqtt`]: the embedded broker and its ACL front, the client link, ingestion.
//! - [`dispatch`]: the task that ingests, places (with [`scheduler::plan`]), publishes and
//!   expires.
//! - [`metrics`]: counters and the Prometheus text.
//! - [`config`]: strict TOML + `MUNIFAB_*` configuration into validated settings.
//! - [`server`]: `serve` — start everything in order, stop it in order.
//! - [`clock`]: time as an input.
//! - [`catalog`]: open designs from git sources and local overlays, pinned to commits.
//! - [`scheduler`]: pure placement of queued jobs on free machines (fair share between
//!   cooperatives, nearest capable fablab, readiness gating).
//! - [`ledger`]: the hash-chained production ledger: entries, canonical encoding,
//!   verification, reports and CSV.
//! - `demo` (feature `demo`, on by default): the whole chain in one process, with real
//!   agents on virtual machines.

pub mod api;
pub mod artifacts;
pub mod auth;
pub mod catalog;
pub mod clock;
pub mod config;
#[cfg(feature = "demo")]
pub mod demo;
pub mod dispatch;
pub mod ledger;
pub mod lifecycle;
pub mod metrics;
pub mod mqtt;
pub mod scheduler;
pub mod server;
pub mod store;
pub mod submission;
