//! The design catalog: open designs from git sources and local overlays, each pinned to
//! an exact commit so a part can be traced to its design, licence and authors.
//!
//! # Layout
//! - [`names`]: validated slugs, commit ids, SHA-256 hashes, `source/id@commit` specs
//! - [`licence`]: SPDX expressions and the open-licence rule
//! - [`manifest`]: the strict `design.toml` parser
//! - [`config`]: the `[catalog]` configuration section
//! - [`profile`]: machine profile files (`profiles/*.toml`)
//! - `source`: fetching git sources and snapshotting overlays into bare mirrors
//! - `tree`: reading design folders from a commit's tree
//! - [`index`]: the synced designs, search and provenance; [`Catalog`] is the entry point
//! - [`periodic`]: re-syncing on a timer while the coordinator runs (async, tokio)
//! - [`seed`]: committing a folder of designs as a git source whose provenance resolves
//!
//! Every read goes through a mirror's object database at a commit, never a checkout.
//! All calls block on disk (and, on sync, on the `git upload-pack` process of a local
//! source); async callers run them in `spawn_blocking`.

pub mod config;
pub mod index;
pub mod licence;
pub mod manifest;
pub mod names;
pub mod periodic;
pub mod profile;
pub mod seed;
mod source;
mod tree;

pub use config::{CatalogConfig, ConfigError, GitSourceConfig, OverlayConfig, SyncInterval};
pub use index::{
    Catalog, CatalogError, Design, DesignDetail, DesignError, DesignQuery, DesignSummary, Page,
    PinnedFile, ProvenanceLink, SourceKind, SourceStatus, SyncReport,
};
pub use licence::{Licence, LicenceError};
pub use manifest::{Manifest, ManifestError, ManifestProblem, Process};
pub use names::{
    CommitId, DesignId, DesignKey, DesignSpec, NameError, ProfileId, Sha256, SourceName,
};
pub use periodic::sync_periodically;
pub use profile::{MachineProfile, ProfileError};
pub use seed::{SeedError, SeededSource, commit_designs_as_git_source};
pub use source::SourceError;
pub use tree::{DesignFile, FileRole};
