//! The catalog itself: sync, the index of current designs, search, provenance, and
//! pinned reads of files.

use std::collections::{BTreeMap, HashMap};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, RwLock};

use serde::Serialize;
use time::OffsetDateTime;

use super::config::{CatalogConfig, ConfigError};
use super::manifest::{Author, Manifest, ManifestError, Process, RelPath};
use super::names::{CommitId, DesignId, DesignKey, DesignSpec, ProfileId, Sha256, SourceName};
use super::profile::MachineProfile;
use super::source::{self, SourceError};
use super::tree::{CommitTree, DesignFile, FileRole, LoadRules, Resolve, load_design};

/// Provenance chains longer than this are cut (and say so): a guard against cycles
/// that span sources.
const MAX_PROVENANCE_DEPTH: usize = 16;
/// Page size when a query does not give one, and the most a query may ask for.
const DEFAULT_PAGE: usize = 50;
const MAX_PAGE: usize = 500;

/// Why a catalog call failed.
#[derive(Debug, thiserror::Error)]
pub enum CatalogError {
    /// The configuration is unusable.
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// A source's mirror could not be opened or updated.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// The cache folder could not be created.
    #[error("cannot create the catalog cache folder {path}: {source}")]
    CacheDir {
        /// The folder.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// No source has this name.
    #[error("no catalog source is named `{0}`")]
    UnknownSource(SourceName),
    /// No design matches.
    #[error("no design `{0}` in the catalog")]
    UnknownDesign(String),
    /// A bare id names designs in several sources.
    #[error("design `{id}` exists in several sources ({}); write `source/{id}`", sources.iter().map(SourceName::as_str).collect::<Vec<_>>().join(", "))]
    AmbiguousDesign {
        /// The id.
        id: DesignId,
        /// The sources holding it.
        sources: Vec<SourceName>,
    },
    /// The commit is not in the source's mirror.
    #[error("source `{source_name}` has no commit {commit}")]
    UnknownCommit {
        /// The source.
        source_name: SourceName,
        /// The commit asked for.
        commit: CommitId,
    },
    /// The design at that commit does not pass the manifest checks.
    #[error("design `{design}` at {commit} is invalid: {}", errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "))]
    InvalidDesign {
        /// The design.
        design: DesignKey,
        /// The commit.
        commit: CommitId,
        /// Its problems.
        errors: Vec<ManifestError>,
    },
    /// The design has no G-code for the profile.
    #[error("design `{design}` has no G-code for profile `{profile}` (it has: {})", available.iter().map(ProfileId::as_str).collect::<Vec<_>>().join(", "))]
    NoGcode {
        /// The design.
        design: DesignKey,
        /// The profile asked for.
        profile: ProfileId,
        /// The profiles it has G-code for.
        available: Vec<ProfileId>,
    },
    /// No file at that path and commit.
    #[error("source `{source_name}` has no file `{path}` at {commit}")]
    FileNotFound {
        /// The source.
        source_name: SourceName,
        /// The commit.
        commit: CommitId,
        /// The path asked for.
        path: String,
    },
    /// No synced design has a file with this hash.
    #[error("no catalog file has SHA-256 {0}")]
    HashNotFound(Sha256),
    /// Stored bytes did not match their recorded hash (a damaged mirror).
    #[error("file {path} should have SHA-256 {expected} but has {actual}")]
    HashMismatch {
        /// The file.
        path: String,
        /// The recorded hash.
        expected: Sha256,
        /// The hash of the bytes read.
        actual: Sha256,
    },
    /// The git library failed reading a mirror.
    #[error("reading source `{source_name}`: {message}")]
    Git {
        /// The source.
        source_name: SourceName,
        /// The git library's message.
        message: String,
    },
}

/// Where a source's designs come from.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum SourceKind {
    /// A git repository, fetched.
    Git {
        /// Its URL or path.
        url: String,
        /// The ref followed.
        git_ref: String,
        /// The folder holding designs, if not the root.
        subdir: Option<String>,
    },
    /// A local folder, snapshotted into a commit on each sync.
    Overlay {
        /// The folder.
        path: PathBuf,
    },
}

/// A source's state after the last sync.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceStatus {
    /// The configured name.
    pub name: SourceName,
    /// Git or overlay.
    pub kind: SourceKind,
    /// The commit the catalog serves, if any sync (now or earlier) succeeded.
    pub commit: Option<CommitId>,
    /// When the last successful sync of this source happened (in this process).
    #[serde(with = "time::serde::rfc3339::option")]
    pub synced_at: Option<OffsetDateTime>,
    /// Why the last sync of this source failed; the previous designs stay served.
    pub error: Option<String>,
    /// Designs served from this source.
    pub designs: usize,
}

/// A problem found during sync: a design that was left out, or a source that failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesignError {
    /// The source.
    pub source: SourceName,
    /// The commit read, when the source got that far.
    pub commit: Option<CommitId>,
    /// The manifest path inside the source; `None` for a source-level failure.
    pub path: Option<String>,
    /// The key at fault, if one.
    pub key: Option<String>,
    /// What is wrong, naming the file, the key and the problem.
    pub message: String,
}

/// What a sync did.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SyncReport {
    /// Every source's state.
    pub sources: Vec<SourceStatus>,
    /// Designs now served.
    pub designs: usize,
    /// Designs left out and sources that failed.
    pub errors: Vec<DesignError>,
}

/// A design at one commit of its source.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Design {
    /// `source/id`.
    pub key: DesignKey,
    /// The commit it was read at.
    pub commit: CommitId,
    /// Its folder inside the source repository.
    pub folder: String,
    /// The validated manifest.
    pub manifest: Manifest,
    /// Manifest, licence, sources and G-code, each with size and SHA-256.
    pub files: Vec<DesignFile>,
    /// The licence file's text, if the folder has one.
    pub licence_text: Option<String>,
}

impl Design {
    /// `source/id@commit`, the form a job stores.
    pub fn pinned_spec(&self) -> String {
        format!("{}@{}", self.key, self.commit)
    }

    /// Machine profiles this design has G-code for.
    pub fn gcode_profiles(&self) -> Vec<ProfileId> {
        self.manifest
            .gcode
            .iter()
            .map(|g| g.profile.clone())
            .collect()
    }

    /// The design's G-code file for `profile`.
    pub fn gcode_file(&self, profile: &ProfileId) -> Option<&DesignFile> {
        self.files
            .iter()
            .find(|f| matches!(&f.role, FileRole::Gcode { profile: p } if p == profile))
    }

    /// A one-paragraph attribution, for the ledger, labels and the web page.
    pub fn attribution(&self) -> String {
        let m = &self.manifest;
        let authors = m
            .authors
            .iter()
            .map(|a| a.name.as_str())
            .collect::<Vec<_>>()
            .join(", ");
        let mut s = format!(
            "\u{201c}{}\u{201d} version {} by {authors}, licensed under {}. Design {}.",
            m.title,
            m.version,
            m.licence,
            self.pinned_spec()
        );
        if let Some(d) = &m.derived_from {
            s.push_str(&format!(
                " Adapted from {}/{}@{}",
                d.source, d.id, d.revision
            ));
            if let Some(changes) = &d.changes {
                s.push_str(&format!(": {}", changes.trim()));
            }
            s.push('.');
        }
        s
    }

    /// The short form listed by searches.
    pub fn summary(&self) -> DesignSummary {
        let m = &self.manifest;
        DesignSummary {
            key: self.key.clone(),
            commit: self.commit,
            title: m.title.clone(),
            summary: m.summary.clone(),
            version: m.version.clone(),
            licence: m.licence.to_string(),
            process: m.process,
            materials: m.materials.clone(),
            tags: m.tags.clone(),
            authors: m.authors.iter().map(|a| a.name.clone()).collect(),
            gcode_profiles: self.gcode_profiles(),
            derived_from: m
                .derived_from
                .as_ref()
                .map(|d| format!("{}/{}@{}", d.source, d.id, d.revision)),
        }
    }
}

/// A design as listed by a search.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesignSummary {
    /// `source/id`.
    pub key: DesignKey,
    /// The commit served.
    pub commit: CommitId,
    /// Title.
    pub title: String,
    /// Summary.
    pub summary: String,
    /// The design's own version.
    pub version: String,
    /// Licence expression.
    pub licence: String,
    /// Process.
    pub process: Process,
    /// Materials.
    pub materials: Vec<String>,
    /// Tags.
    pub tags: Vec<String>,
    /// Author names.
    pub authors: Vec<String>,
    /// Profiles with G-code.
    pub gcode_profiles: Vec<ProfileId>,
    /// `source/id@revision` of the original, for adaptations.
    pub derived_from: Option<String>,
}

/// One step back in a design's ancestry.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum ProvenanceLink {
    /// The original was found at the named revision.
    Resolved {
        /// The original, `source/id` in this catalog.
        key: DesignKey,
        /// Its commit.
        commit: CommitId,
        /// Its title.
        title: String,
        /// Its version.
        version: String,
        /// Its licence.
        licence: String,
        /// Its authors.
        authors: Vec<Author>,
        /// What the adaptation one step down changed, as its manifest says.
        changes: Option<String>,
    },
    /// The original could not be read; the declared reference is kept.
    Unresolved {
        /// The declared source.
        source: String,
        /// The declared id.
        id: DesignId,
        /// The declared revision.
        revision: CommitId,
        /// Why it could not be read.
        reason: String,
    },
}

/// A design with everything a detail page needs.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DesignDetail {
    /// The design.
    pub design: Design,
    /// Its ancestry, nearest original first.
    pub provenance: Vec<ProvenanceLink>,
    /// Attribution text.
    pub attribution: String,
}

/// What a job pins when it is submitted from a design.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PinnedFile {
    /// `source/id`.
    pub design: DesignKey,
    /// The exact commit.
    pub commit: CommitId,
    /// Title, for the job and ledger.
    pub title: String,
    /// The design's own version.
    pub version: String,
    /// Licence expression, for the ledger.
    pub licence: String,
    /// Authors, for the ledger.
    pub authors: Vec<Author>,
    /// Attribution text.
    pub attribution: String,
    /// Process.
    pub process: Process,
    /// The machine profile.
    pub profile: ProfileId,
    /// The G-code's path inside the source repository.
    pub path: String,
    /// Its SHA-256.
    pub sha256: Sha256,
    /// Its bytes.
    pub bytes: Vec<u8>,
}

/// A search over the current designs. Empty fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DesignQuery {
    /// Words that must all appear in id, title, summary, tags or authors (any case).
    pub text: Option<String>,
    /// Process.
    pub process: Option<Process>,
    /// A material the design lists (any case).
    pub material: Option<String>,
    /// A licence id the expression names (any case).
    pub licence: Option<String>,
    /// A tag.
    pub tag: Option<String>,
    /// A source.
    pub source: Option<SourceName>,
    /// Results to skip.
    pub offset: usize,
    /// Results to return; 50 when not given, at most 500.
    pub limit: Option<usize>,
}

/// One page of results.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Page<T> {
    /// Matches in total.
    pub total: usize,
    /// Results skipped.
    pub offset: usize,
    /// Page size used.
    pub limit: usize,
    /// This page.
    pub items: Vec<T>,
}

struct Mirror {
    repo: gix::ThreadSafeRepository,
    kind: SourceKind,
    base: String,
}

#[derive(Default, Clone)]
struct Index {
    sources: BTreeMap<SourceName, SourceStatus>,
    designs: BTreeMap<DesignKey, Arc<Design>>,
    errors: Vec<DesignError>,
    by_hash: HashMap<Sha256, (SourceName, gix::ObjectId)>,
}

/// The design catalog. Cheap reads take `&self` and see the last completed sync;
/// [`Catalog::sync`] builds a new index and swaps it in, so readers never wait on git.
pub struct Catalog {
    config: CatalogConfig,
    profiles: Option<BTreeMap<ProfileId, Process>>,
    mirrors: BTreeMap<SourceName, Mirror>,
    index: RwLock<Arc<Index>>,
    /// Serialises syncs and caches SHA-256 by blob id between them.
    hash_cache: Mutex<HashMap<gix::ObjectId, Sha256>>,
    /// Designs read at older commits (pins, provenance). A design at a commit never
    /// changes, so entries never go stale; the map is only bounded.
    pinned: Mutex<HashMap<(DesignKey, CommitId), Arc<Design>>>,
}

/// How many designs read at older commits are kept.
const PINNED_CACHE: usize = 256;

impl std::fmt::Debug for Catalog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Catalog")
            .field("config", &self.config)
            .field("sources", &self.mirrors.keys().collect::<Vec<_>>())
            .finish_non_exhaustive()
    }
}

impl Catalog {
    /// Open (creating if needed) the mirrors of every configured source and serve what
    /// they held at the last sync, without touching the network. Call [`Catalog::sync`]
    /// to fetch.
    pub fn open(config: CatalogConfig) -> Result<Self, CatalogError> {
        config.validate()?;
        let sources_dir = config.cache_dir.join("sources");
        std::fs::create_dir_all(&sources_dir).map_err(|source| CatalogError::CacheDir {
            path: sources_dir.clone(),
            source,
        })?;
        let mut mirrors = BTreeMap::new();
        for s in &config.sources {
            let repo = source::open_mirror(&s.name, &sources_dir.join(format!("{}.git", s.name)))?;
            let kind = SourceKind::Git {
                url: s.url.clone(),
                git_ref: s.git_ref.clone(),
                subdir: s.subdir.clone(),
            };
            let base = s.subdir.clone().unwrap_or_default();
            mirrors.insert(s.name.clone(), Mirror { repo, kind, base });
        }
        for o in &config.overlays {
            let repo = source::open_mirror(
                &o.name,
                &sources_dir.join(format!("{}.overlay.git", o.name)),
            )?;
            let kind = SourceKind::Overlay {
                path: o.path.clone(),
            };
            mirrors.insert(
                o.name.clone(),
                Mirror {
                    repo,
                    kind,
                    base: String::new(),
                },
            );
        }
        let catalog = Self {
            config,
            profiles: None,
            mirrors,
            index: RwLock::new(Arc::new(Index::default())),
            hash_cache: Mutex::new(HashMap::new()),
            pinned: Mutex::new(HashMap::new()),
        };
        catalog.index_mirror_heads();
        Ok(catalog)
    }

    /// Serve what each mirror held at its last sync.
    fn index_mirror_heads(&self) {
        let mut cache = self.hash_cache.lock().unwrap_or_else(|p| p.into_inner());
        let mut index = Index::default();
        for (name, mirror) in &self.mirrors {
            let repo = mirror.repo.to_thread_local();
            let head = source::mirror_head(&repo);
            self.index_source(&mut index, name, mirror, head, None, &mut cache);
        }
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
    }

    /// Check G-code against these machine profiles (now, and on every sync): a profile
    /// that is not among them, or of another process, makes the design invalid.
    pub fn with_profiles<'a>(
        mut self,
        profiles: impl IntoIterator<Item = &'a MachineProfile>,
    ) -> Self {
        self.profiles = Some(
            profiles
                .into_iter()
                .map(|p| (p.id.clone(), p.capabilities.process))
                .collect(),
        );
        self.index_mirror_heads();
        self
    }

    /// Fetch every git source and snapshot every overlay, then serve the designs found.
    /// A source that fails keeps serving what it served before; a design that fails is
    /// left out; both are listed in the report and by [`Catalog::errors`].
    pub fn sync(&self, now: OffsetDateTime) -> SyncReport {
        let mut cache = self.hash_cache.lock().unwrap_or_else(|p| p.into_inner());
        let previous = self.snapshot();
        let mut index = Index {
            by_hash: previous.by_hash.clone(),
            ..Index::default()
        };
        for (name, mirror) in &self.mirrors {
            let repo = mirror.repo.to_thread_local();
            let fetched = match &mirror.kind {
                SourceKind::Git { url, git_ref, .. } => source::fetch(&repo, name, url, git_ref),
                SourceKind::Overlay { path } => source::import_overlay(&repo, name, path, now),
            };
            match fetched {
                Ok(commit) => {
                    tracing::info!(source = %name, %commit, "catalog source synced");
                    self.index_source(
                        &mut index,
                        name,
                        mirror,
                        Some(commit),
                        Some(now),
                        &mut cache,
                    );
                }
                Err(e) => {
                    tracing::warn!(source = %name, error = %e, "catalog source failed to sync");
                    self.keep_previous(&mut index, &previous, name, mirror, e.to_string());
                }
            }
        }
        let report = SyncReport {
            sources: index.sources.values().cloned().collect(),
            designs: index.designs.len(),
            errors: index.errors.clone(),
        };
        *self.index.write().unwrap_or_else(|p| p.into_inner()) = Arc::new(index);
        report
    }

    fn keep_previous(
        &self,
        index: &mut Index,
        previous: &Index,
        name: &SourceName,
        mirror: &Mirror,
        error: String,
    ) {
        let mut status = previous
            .sources
            .get(name)
            .cloned()
            .unwrap_or_else(|| SourceStatus {
                name: name.clone(),
                kind: mirror.kind.clone(),
                commit: None,
                synced_at: None,
                error: None,
                designs: 0,
            });
        status.error = Some(error.clone());
        index.errors.push(DesignError {
            source: name.clone(),
            commit: status.commit,
            path: None,
            key: None,
            message: error,
        });
        for (key, design) in previous.designs.iter().filter(|(k, _)| &k.source == name) {
            index.designs.insert(key.clone(), design.clone());
        }
        index.errors.extend(
            previous
                .errors
                .iter()
                .filter(|e| &e.source == name && e.path.is_some())
                .cloned(),
        );
        index.sources.insert(name.clone(), status);
    }

    /// Read every design of `name` at `commit` into `index`.
    fn index_source(
        &self,
        index: &mut Index,
        name: &SourceName,
        mirror: &Mirror,
        commit: Option<CommitId>,
        synced_at: Option<OffsetDateTime>,
        cache: &mut HashMap<gix::ObjectId, Sha256>,
    ) {
        let mut status = SourceStatus {
            name: name.clone(),
            kind: mirror.kind.clone(),
            commit,
            synced_at,
            error: None,
            designs: 0,
        };
        let source_error = |index: &mut Index, status: &mut SourceStatus, message: String| {
            status.error = Some(message.clone());
            index.errors.push(DesignError {
                source: name.clone(),
                commit: status.commit,
                path: None,
                key: None,
                message,
            });
        };
        let Some(commit) = commit else {
            // Never synced: nothing to serve yet, and nothing wrong either.
            index.sources.insert(name.clone(), status);
            return;
        };
        let repo = mirror.repo.to_thread_local();
        let folders = CommitTree::new(&repo, commit.to_gix(), &mirror.base).and_then(|tree| {
            if tree.has_base()? {
                tree.design_folders().map(|f| (tree, f))
            } else {
                Err(format!(
                    "folder `{}` does not exist at commit {commit}",
                    mirror.base
                ))
            }
        });
        let (tree, folders) = match folders {
            Ok(found) => found,
            Err(message) => {
                source_error(index, &mut status, message);
                index.sources.insert(name.clone(), status);
                return;
            }
        };
        let rules = LoadRules {
            max_file_bytes: self.config.max_file_bytes,
            profiles: self.profiles.as_ref(),
        };
        let mut seen: BTreeMap<DesignId, String> = BTreeMap::new();
        for folder in folders {
            match load_design(&tree, &folder, &rules, cache) {
                Ok(loaded) => {
                    let id = loaded.manifest.id.clone();
                    if let Some(other) = seen.get(&id) {
                        let file = format!("{}/{}", loaded.folder, super::manifest::MANIFEST_FILE);
                        let e = ManifestError {
                            file,
                            key: Some("id".into()),
                            problem: super::manifest::ManifestProblem::DuplicateId {
                                id,
                                other: other.clone(),
                            },
                        };
                        index.errors.push(design_error(name, commit, e));
                        continue;
                    }
                    seen.insert(id.clone(), loaded.folder.clone());
                    for (hash, blob) in &loaded.blobs {
                        index.by_hash.insert(*hash, (name.clone(), *blob));
                    }
                    let key = DesignKey {
                        source: name.clone(),
                        id,
                    };
                    let design = Design {
                        key: key.clone(),
                        commit,
                        folder: loaded.folder,
                        manifest: loaded.manifest,
                        files: loaded.files,
                        licence_text: loaded.licence_text,
                    };
                    index.designs.insert(key, Arc::new(design));
                    status.designs += 1;
                }
                Err(errors) => {
                    for e in errors {
                        tracing::warn!(source = %name, error = %e, "design left out of the catalog");
                        index.errors.push(design_error(name, commit, e));
                    }
                }
            }
        }
        index.sources.insert(name.clone(), status);
    }

    fn snapshot(&self) -> Arc<Index> {
        self.index.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    fn mirror(&self, name: &SourceName) -> Result<&Mirror, CatalogError> {
        self.mirrors
            .get(name)
            .ok_or_else(|| CatalogError::UnknownSource(name.clone()))
    }

    /// Every source's state after the last sync.
    pub fn sources(&self) -> Vec<SourceStatus> {
        self.snapshot().sources.values().cloned().collect()
    }

    /// Designs left out and sources that failed at the last sync.
    pub fn errors(&self) -> Vec<DesignError> {
        self.snapshot().errors.clone()
    }

    /// Search the current designs, ordered by id then source.
    pub fn search(&self, query: &DesignQuery) -> Page<DesignSummary> {
        let index = self.snapshot();
        let words: Vec<String> = query
            .text
            .as_deref()
            .unwrap_or("")
            .split_whitespace()
            .map(str::to_lowercase)
            .collect();
        let mut matches: Vec<&Arc<Design>> = index
            .designs
            .values()
            .filter(|d| {
                let m = &d.manifest;
                query.process.is_none_or(|p| p == m.process)
                    && query.source.as_ref().is_none_or(|s| s == &d.key.source)
                    && query
                        .material
                        .as_ref()
                        .is_none_or(|q| m.materials.iter().any(|x| x.eq_ignore_ascii_case(q)))
                    && query.licence.as_ref().is_none_or(|q| m.licence.mentions(q))
                    && query
                        .tag
                        .as_ref()
                        .is_none_or(|q| m.tags.iter().any(|t| t.eq_ignore_ascii_case(q)))
                    && (words.is_empty() || {
                        let haystack = format!(
                            "{} {} {} {} {}",
                            m.id,
                            m.title,
                            m.summary,
                            m.tags.join(" "),
                            m.authors
                                .iter()
                                .map(|a| a.name.as_str())
                                .collect::<Vec<_>>()
                                .join(" ")
                        )
                        .to_lowercase();
                        words.iter().all(|w| haystack.contains(w.as_str()))
                    })
            })
            .collect();
        matches.sort_by(|a, b| (&a.key.id, &a.key.source).cmp(&(&b.key.id, &b.key.source)));
        let limit = query.limit.unwrap_or(DEFAULT_PAGE).clamp(1, MAX_PAGE);
        Page {
            total: matches.len(),
            offset: query.offset,
            limit,
            items: matches
                .into_iter()
                .skip(query.offset)
                .take(limit)
                .map(|d| d.summary())
                .collect(),
        }
    }

    /// The current revision of a design, with provenance and attribution.
    pub fn design(&self, key: &DesignKey) -> Result<DesignDetail, CatalogError> {
        let design = self.current(key)?;
        Ok(self.detail((*design).clone()))
    }

    /// A design at an exact commit of its source (which may be older than the current
    /// one, or hold a design since deleted), with provenance and attribution.
    pub fn design_at(
        &self,
        key: &DesignKey,
        commit: CommitId,
    ) -> Result<DesignDetail, CatalogError> {
        let design = self.load_at(key, commit)?;
        Ok(self.detail(design))
    }

    fn detail(&self, design: Design) -> DesignDetail {
        let provenance = self.provenance(&design);
        let attribution = design.attribution();
        DesignDetail {
            design,
            provenance,
            attribution,
        }
    }

    fn current(&self, key: &DesignKey) -> Result<Arc<Design>, CatalogError> {
        self.snapshot()
            .designs
            .get(key)
            .cloned()
            .ok_or_else(|| CatalogError::UnknownDesign(key.to_string()))
    }

    fn load_at(&self, key: &DesignKey, commit: CommitId) -> Result<Design, CatalogError> {
        if let Some(current) = self.snapshot().designs.get(key)
            && current.commit == commit
        {
            return Ok((**current).clone());
        }
        let cache_key = (key.clone(), commit);
        if let Some(found) = self
            .pinned
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&cache_key)
        {
            return Ok((**found).clone());
        }
        let design = self.read_at(key, commit)?;
        let mut pinned = self.pinned.lock().unwrap_or_else(|p| p.into_inner());
        if pinned.len() >= PINNED_CACHE {
            pinned.clear();
        }
        pinned.insert(cache_key, Arc::new(design.clone()));
        Ok(design)
    }

    fn read_at(&self, key: &DesignKey, commit: CommitId) -> Result<Design, CatalogError> {
        let mirror = self.mirror(&key.source)?;
        let repo = mirror.repo.to_thread_local();
        let git = |message: String| CatalogError::Git {
            source_name: key.source.clone(),
            message,
        };
        if repo.find_commit(commit.to_gix()).is_err() {
            return Err(CatalogError::UnknownCommit {
                source_name: key.source.clone(),
                commit,
            });
        }
        let tree = CommitTree::new(&repo, commit.to_gix(), &mirror.base).map_err(git)?;
        let unknown = || CatalogError::UnknownDesign(format!("{key}@{commit}"));
        if !tree.has_base().map_err(git)? {
            return Err(unknown());
        }
        let mut folders = tree.design_folders().map_err(git)?;
        // Folders are usually named after the id; try that one first.
        folders.sort_by_key(|f| f.last().map(String::as_str) != Some(key.id.as_str()));
        // Profiles may have been retired since; an old pin still names its own G-code.
        let rules = LoadRules {
            max_file_bytes: self.config.max_file_bytes,
            profiles: None,
        };
        let mut cache = HashMap::new();
        for folder in folders {
            match load_design(&tree, &folder, &rules, &mut cache) {
                Ok(loaded) if loaded.manifest.id == key.id => {
                    return Ok(Design {
                        key: key.clone(),
                        commit,
                        folder: loaded.folder,
                        manifest: loaded.manifest,
                        files: loaded.files,
                        licence_text: loaded.licence_text,
                    });
                }
                Ok(_) => {}
                Err(errors) if folder.last().map(String::as_str) == Some(key.id.as_str()) => {
                    return Err(CatalogError::InvalidDesign {
                        design: key.clone(),
                        commit,
                        errors,
                    });
                }
                Err(_) => {}
            }
        }
        Err(unknown())
    }

    /// Follow `derived_from` back across sources, nearest original first. The chain
    /// stops at a design with no `derived_from`, at one that cannot be read (listed as
    /// unresolved), or at a cycle.
    pub fn provenance(&self, design: &Design) -> Vec<ProvenanceLink> {
        let mut chain = Vec::new();
        let mut seen = vec![(design.key.clone(), design.commit)];
        let mut next = design.manifest.derived_from.clone();
        while let Some(d) = next.take() {
            let unresolved = |reason: String| ProvenanceLink::Unresolved {
                source: d.source.clone(),
                id: d.id.clone(),
                revision: d.revision,
                reason,
            };
            if chain.len() >= MAX_PROVENANCE_DEPTH {
                chain.push(unresolved(format!(
                    "the chain is longer than {MAX_PROVENANCE_DEPTH} steps"
                )));
                break;
            }
            let Some(source) = self.source_named(&d.source) else {
                chain.push(unresolved(format!(
                    "no configured source is named or located at `{}`",
                    d.source
                )));
                break;
            };
            let key = DesignKey {
                source,
                id: d.id.clone(),
            };
            if seen.contains(&(key.clone(), d.revision)) {
                chain.push(unresolved("the chain loops back on itself".into()));
                break;
            }
            match self.load_at(&key, d.revision) {
                Ok(original) => {
                    seen.push((key.clone(), d.revision));
                    let m = &original.manifest;
                    chain.push(ProvenanceLink::Resolved {
                        key,
                        commit: d.revision,
                        title: m.title.clone(),
                        version: m.version.clone(),
                        licence: m.licence.to_string(),
                        authors: m.authors.clone(),
                        changes: d.changes.clone(),
                    });
                    next = m.derived_from.clone();
                }
                Err(e) => {
                    chain.push(unresolved(e.to_string()));
                    break;
                }
            }
        }
        chain
    }

    /// A `derived_from.source` may give a configured name or a git source's URL.
    fn source_named(&self, declared: &str) -> Option<SourceName> {
        let trim = |u: &str| u.trim_end_matches('/').trim_end_matches(".git").to_owned();
        self.mirrors.iter().find_map(|(name, m)| {
            let by_url =
                matches!(&m.kind, SourceKind::Git { url, .. } if trim(url) == trim(declared));
            (name.as_str() == declared || by_url).then(|| name.clone())
        })
    }

    /// Pin a design revision and profile to a G-code file, as a job submitted from a
    /// design does: `source/id@commit` pins exactly, `source/id` (or a bare id that
    /// only one source has) takes the currently synced commit.
    pub fn resolve(
        &self,
        spec: &DesignSpec,
        profile: &ProfileId,
    ) -> Result<PinnedFile, CatalogError> {
        let key = match &spec.source {
            Some(source) => DesignKey {
                source: source.clone(),
                id: spec.id.clone(),
            },
            None => {
                let index = self.snapshot();
                let sources: Vec<SourceName> = index
                    .designs
                    .keys()
                    .filter(|k| k.id == spec.id)
                    .map(|k| k.source.clone())
                    .collect();
                match sources.as_slice() {
                    [] => return Err(CatalogError::UnknownDesign(spec.to_string())),
                    [one] => DesignKey {
                        source: one.clone(),
                        id: spec.id.clone(),
                    },
                    _ => {
                        return Err(CatalogError::AmbiguousDesign {
                            id: spec.id.clone(),
                            sources,
                        });
                    }
                }
            }
        };
        let design = match spec.commit {
            Some(commit) => self.load_at(&key, commit)?,
            None => (*self.current(&key)?).clone(),
        };
        let file = design
            .gcode_file(profile)
            .ok_or_else(|| CatalogError::NoGcode {
                design: key.clone(),
                profile: profile.clone(),
                available: design.gcode_profiles(),
            })?;
        let bytes = self.file(&key.source, design.commit, &file.repo_path)?;
        let actual = Sha256::of(&bytes);
        if actual != file.sha256 {
            return Err(CatalogError::HashMismatch {
                path: file.repo_path.clone(),
                expected: file.sha256,
                actual,
            });
        }
        let m = &design.manifest;
        Ok(PinnedFile {
            design: key,
            commit: design.commit,
            title: m.title.clone(),
            version: m.version.clone(),
            licence: m.licence.to_string(),
            authors: m.authors.clone(),
            attribution: design.attribution(),
            process: m.process,
            profile: profile.clone(),
            path: file.repo_path.clone(),
            sha256: file.sha256,
            bytes,
        })
    }

    /// The bytes of `path` (inside the source repository, e.g.
    /// `designs/cube/cube.gcode`) at `commit`. Symbolic links are followed while they
    /// stay inside the source's design folder.
    pub fn file(
        &self,
        source: &SourceName,
        commit: CommitId,
        path: &str,
    ) -> Result<Vec<u8>, CatalogError> {
        let mirror = self.mirror(source)?;
        let repo = mirror.repo.to_thread_local();
        let not_found = || CatalogError::FileNotFound {
            source_name: source.clone(),
            commit,
            path: path.to_owned(),
        };
        let git = |message: String| CatalogError::Git {
            source_name: source.clone(),
            message,
        };
        if repo.find_commit(commit.to_gix()).is_err() {
            return Err(CatalogError::UnknownCommit {
                source_name: source.clone(),
                commit,
            });
        }
        let rel = RelPath::parse(path).map_err(|_| not_found())?;
        let tree = CommitTree::new(&repo, commit.to_gix(), "").map_err(git)?;
        let base: Vec<String> = mirror
            .base
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        let inside = rel
            .components()
            .strip_prefix(base.as_slice())
            .ok_or_else(not_found)?;
        match tree.resolve(&base, inside) {
            Ok(id) => tree.read(id).map_err(git),
            Err(Resolve::Git(message)) => Err(git(message)),
            Err(_) => Err(not_found()),
        }
    }

    /// The bytes of any file of a design synced by this catalog, by SHA-256.
    pub fn file_by_hash(&self, sha256: &Sha256) -> Result<Vec<u8>, CatalogError> {
        let index = self.snapshot();
        let (source, blob) = index
            .by_hash
            .get(sha256)
            .ok_or(CatalogError::HashNotFound(*sha256))?;
        let mirror = self.mirror(source)?;
        let repo = mirror.repo.to_thread_local();
        let bytes = repo
            .find_object(*blob)
            .map(|o| o.detach().data)
            .map_err(|e| CatalogError::Git {
                source_name: source.clone(),
                message: format!("{e:#}"),
            })?;
        let actual = Sha256::of(&bytes);
        if &actual != sha256 {
            return Err(CatalogError::HashMismatch {
                path: format!("blob {blob}"),
                expected: *sha256,
                actual,
            });
        }
        Ok(bytes)
    }
}

fn design_error(source: &SourceName, commit: CommitId, e: ManifestError) -> DesignError {
    DesignError {
        source: source.clone(),
        commit: Some(commit),
        path: Some(e.file.clone()),
        key: e.key.clone(),
        message: e.to_string(),
    }
}
