//! Turning a folder of designs into a git source whose provenance resolves.
//!
//! The sample adaptation in `designs/` pins its original with `derived_from.revision`.
//! A pin names a commit, and a commit only exists in the history it was made in: once the
//! hosting pipeline squashed this repository's history, the checked-in revision names
//! nothing. [`commit_designs_as_git_source`] rebuilds a small history in which the pins
//! hold: a first commit with every original, a second with the adaptations, their
//! `derived_from.revision` rewritten to the first commit when the original is a design of
//! the same source. The demo serves that repository as its `commons` source.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

use gix::objs::tree::EntryKind;

use super::manifest::{MANIFEST_FILE, Manifest};
use super::names::{CommitId, DesignId, SourceName};

/// The branch the seeded repository's commits are on (and its `HEAD` points at).
pub const SEED_BRANCH: &str = "main";

/// Why a folder of designs could not be committed.
#[derive(Debug, thiserror::Error)]
pub enum SeedError {
    /// The destination exists and is not an empty folder: nothing is overwritten.
    #[error("{0} already exists and is not an empty folder; refusing to write a repository there")]
    DestinationInUse(PathBuf),
    /// A file or folder could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file or folder.
        path: PathBuf,
        /// The IO error.
        #[source]
        source: std::io::Error,
    },
    /// A file name is not UTF-8 (git paths in a design source must be).
    #[error("{0}: file names must be UTF-8")]
    NotUtf8(PathBuf),
    /// A manifest does not parse, so whether it is an adaptation cannot be told.
    #[error("{}", errors.join("; "))]
    Manifest {
        /// The parser's messages, each naming the file and the key.
        errors: Vec<String>,
    },
    /// An adaptation names an original of this source that the first commit lacks.
    #[error(
        "{file}: `derived_from` names `{source_name}/{id}`, which is not among the originals in {dir}"
    )]
    MissingOriginal {
        /// The adaptation's manifest.
        file: String,
        /// The source named.
        source_name: SourceName,
        /// The original's id.
        id: DesignId,
        /// The designs folder.
        dir: PathBuf,
    },
    /// The repository could not be created or written.
    #[error("writing the git repository at {path}: {message}")]
    Git {
        /// The repository.
        path: PathBuf,
        /// The git library's message.
        message: String,
    },
}

/// What [`commit_designs_as_git_source`] made.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SeededSource {
    /// The bare repository; configure it as the source's `url`, with `ref = "main"`.
    pub path: PathBuf,
    /// The first commit: every design without `derived_from`, and the non-design files.
    pub originals: CommitId,
    /// The branch head: the second commit with the adaptations, or the first when the
    /// folder has none.
    pub head: CommitId,
    /// Ids of the adaptations whose `derived_from.revision` now names `originals`.
    pub rewritten: Vec<DesignId>,
}

/// A file to commit: its path in the repository, its kind and content.
struct Entry {
    path: String,
    kind: EntryKind,
    bytes: Vec<u8>,
}

/// Commit `designs_dir` into a new bare git repository at `dest` in two commits, so that
/// the adaptations' provenance resolves when the repository is configured as the source
/// named `source`:
///
/// 1. every design folder whose manifest has no `derived_from`, plus every file outside a
///    design folder;
/// 2. the adaptations (designs with `derived_from`), where `derived_from.source` is
///    `source` and `derived_from.id` is one of the originals, get `derived_from.revision`
///    rewritten to the first commit's id (only that value in the manifest text changes).
///    An adaptation of another source keeps its revision.
///
/// Both commits are on `main` (which `HEAD` names), authored by "MuniFab catalog" at
/// `at`: the same folder and time give the same commit ids. Hidden files and folders are
/// left out, as the catalog's overlays leave them out; symbolic links are stored as links.
/// `dest` must not exist or be an empty folder.
pub fn commit_designs_as_git_source(
    designs_dir: &Path,
    dest: &Path,
    source: &SourceName,
    at: time::OffsetDateTime,
) -> Result<SeededSource, SeedError> {
    let entries = read_folder(designs_dir)?;
    // Design folders: those holding a manifest. The sample repository is flat, but a
    // design may sit at any depth, as the catalog allows.
    let mut manifests: BTreeMap<String, Manifest> = BTreeMap::new();
    let mut errors = Vec::new();
    for e in entries.iter().filter(|e| is_manifest(&e.path)) {
        let folder = e
            .path
            .strip_suffix(MANIFEST_FILE)
            .unwrap_or("")
            .trim_end_matches('/')
            .to_owned();
        let text = String::from_utf8_lossy(&e.bytes);
        match Manifest::parse(&e.path, &text) {
            Ok(m) => {
                manifests.insert(folder, m);
            }
            Err(errs) => errors.extend(errs.iter().map(ToString::to_string)),
        }
    }
    if !errors.is_empty() {
        return Err(SeedError::Manifest { errors });
    }
    let folder_of = |path: &str| -> Option<&String> {
        manifests
            .keys()
            .filter(|f| f.is_empty() || path.starts_with(&format!("{f}/")))
            .max_by_key(|f| f.len())
    };
    let is_adaptation =
        |path: &str| folder_of(path).is_some_and(|f| manifests[f].derived_from.is_some());
    let originals: BTreeSet<&DesignId> = manifests
        .values()
        .filter(|m| m.derived_from.is_none())
        .map(|m| &m.id)
        .collect();

    // Check every adaptation of this source before writing anything.
    for (folder, m) in &manifests {
        if let Some(d) = &m.derived_from
            && d.source == source.as_str()
            && !originals.contains(&d.id)
        {
            let file = if folder.is_empty() {
                MANIFEST_FILE.to_owned()
            } else {
                format!("{folder}/{MANIFEST_FILE}")
            };
            return Err(SeedError::MissingOriginal {
                file,
                source_name: source.clone(),
                id: d.id.clone(),
                dir: designs_dir.to_owned(),
            });
        }
    }

    let repo = create_bare(dest)?;
    let git = |e: &dyn std::fmt::Display| SeedError::Git {
        path: dest.to_owned(),
        message: format!("{e:#}"),
    };
    let signature = gix::actor::Signature {
        name: "MuniFab catalog".into(),
        email: "catalog@munifab.invalid".into(),
        time: gix::date::Time {
            seconds: at.unix_timestamp(),
            offset: 0,
        },
    };
    let mut time_buf = gix::date::parse::TimeBuf::default();
    let sig = signature.to_ref(&mut time_buf);
    let branch = format!("refs/heads/{SEED_BRANCH}");

    let empty = gix::ObjectId::empty_tree(repo.object_hash());
    let mut editor = repo.edit_tree(empty).map_err(|e| git(&e))?;
    for e in entries.iter().filter(|e| !is_adaptation(&e.path)) {
        let blob = repo.write_blob(&e.bytes).map_err(|e| git(&e))?;
        editor
            .upsert(e.path.as_str(), e.kind, blob)
            .map_err(|e| git(&e))?;
    }
    let tree = editor.write().map_err(|e| git(&e))?.detach();
    let first = repo
        .commit_as(
            sig,
            sig,
            branch.as_str(),
            "Original designs",
            tree,
            Vec::<gix::ObjectId>::new(),
        )
        .map_err(|e| git(&e))?
        .detach();
    let originals_commit = CommitId::from_gix(&first);

    let adaptations: Vec<&Entry> = entries.iter().filter(|e| is_adaptation(&e.path)).collect();
    if adaptations.is_empty() {
        return Ok(SeededSource {
            path: dest.to_owned(),
            originals: originals_commit,
            head: originals_commit,
            rewritten: Vec::new(),
        });
    }
    let mut rewritten = Vec::new();
    let mut editor = repo.edit_tree(tree).map_err(|e| git(&e))?;
    for e in adaptations {
        let mut bytes = e.bytes.clone();
        if is_manifest(&e.path) {
            let folder = folder_of(&e.path).expect("an adaptation's manifest is in its folder");
            let manifest = &manifests[folder];
            let d = manifest
                .derived_from
                .as_ref()
                .expect("adaptations have derived_from");
            if d.source == source.as_str() {
                bytes = rewrite_revision(&e.path, &bytes, d.revision, originals_commit)?;
                rewritten.push(manifest.id.clone());
            }
        }
        let blob = repo.write_blob(&bytes).map_err(|e| git(&e))?;
        editor
            .upsert(e.path.as_str(), e.kind, blob)
            .map_err(|e| git(&e))?;
    }
    let tree = editor.write().map_err(|e| git(&e))?.detach();
    let message = format!(
        "Local adaptations, derived_from pinned to {originals_commit}\n\nRewritten: {}\n",
        rewritten
            .iter()
            .map(DesignId::as_str)
            .collect::<Vec<_>>()
            .join(", ")
    );
    let head = repo
        .commit_as(sig, sig, branch.as_str(), message, tree, [first])
        .map_err(|e| git(&e))?
        .detach();
    Ok(SeededSource {
        path: dest.to_owned(),
        originals: originals_commit,
        head: CommitId::from_gix(&head),
        rewritten,
    })
}

fn is_manifest(path: &str) -> bool {
    path == MANIFEST_FILE || path.ends_with(&format!("/{MANIFEST_FILE}"))
}

/// Replace the quoted `old` revision in a manifest's text by `new`, and check by parsing
/// again that `derived_from.revision` is now `new` and nothing else changed meaning.
fn rewrite_revision(
    file: &str,
    bytes: &[u8],
    old: CommitId,
    new: CommitId,
) -> Result<Vec<u8>, SeedError> {
    let text = String::from_utf8_lossy(bytes);
    let (old_q, new_q) = (format!("\"{old}\""), format!("\"{new}\""));
    let out = text.replacen(&old_q, &new_q, 1);
    let reparsed = Manifest::parse(file, &out).map_err(|errs| SeedError::Manifest {
        errors: errs.iter().map(ToString::to_string).collect(),
    })?;
    match reparsed.derived_from {
        Some(d) if d.revision == new => Ok(out.into_bytes()),
        _ => Err(SeedError::Manifest {
            errors: vec![format!(
                "{file}: key `derived_from.revision`: cannot rewrite {old} to {new}: the value is not written as a plain quoted string"
            )],
        }),
    }
}

fn create_bare(dest: &Path) -> Result<gix::Repository, SeedError> {
    let in_use = match std::fs::read_dir(dest) {
        Ok(mut entries) => entries.next().is_some(),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => false,
        Err(_) => true,
    };
    if in_use {
        return Err(SeedError::DestinationInUse(dest.to_owned()));
    }
    let git = |e: &dyn std::fmt::Display| SeedError::Git {
        path: dest.to_owned(),
        message: format!("{e:#}"),
    };
    std::fs::create_dir_all(dest).map_err(|e| git(&e))?;
    gix::init_bare(dest).map_err(|e| git(&e))?;
    gix::open::Options::isolated()
        .open(dest)
        .map(|r| r.to_thread_local())
        .map_err(|e| git(&e))
}

/// Every file under `dir` (hidden ones left out), with slash-separated paths, in path
/// order.
fn read_folder(dir: &Path) -> Result<Vec<Entry>, SeedError> {
    let read = |path: &Path, source| SeedError::Read {
        path: path.to_owned(),
        source,
    };
    let mut out = Vec::new();
    let mut stack = vec![(dir.to_owned(), String::new())];
    while let Some((abs, rel)) = stack.pop() {
        for entry in std::fs::read_dir(&abs).map_err(|e| read(&abs, e))? {
            let entry = entry.map_err(|e| read(&abs, e))?;
            let path = entry.path();
            let name = entry
                .file_name()
                .into_string()
                .map_err(|_| SeedError::NotUtf8(path.clone()))?;
            if name.starts_with('.') {
                continue;
            }
            let git_path = if rel.is_empty() {
                name
            } else {
                format!("{rel}/{name}")
            };
            let kind = entry.file_type().map_err(|e| read(&path, e))?;
            if kind.is_dir() {
                stack.push((path, git_path));
            } else if kind.is_symlink() {
                let target = std::fs::read_link(&path).map_err(|e| read(&path, e))?;
                let target = target
                    .into_os_string()
                    .into_string()
                    .map_err(|_| SeedError::NotUtf8(path.clone()))?;
                out.push(Entry {
                    path: git_path,
                    kind: EntryKind::Link,
                    bytes: target.into_bytes(),
                });
            } else {
                let bytes = std::fs::read(&path).map_err(|e| read(&path, e))?;
                let kind = if is_executable(&entry) {
                    EntryKind::BlobExecutable
                } else {
                    EntryKind::Blob
                };
                out.push(Entry {
                    path: git_path,
                    kind,
                    bytes,
                });
            }
        }
    }
    out.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(out)
}

#[cfg(unix)]
fn is_executable(entry: &std::fs::DirEntry) -> bool {
    use std::os::unix::fs::PermissionsExt;
    entry
        .metadata()
        .is_ok_and(|m| m.permissions().mode() & 0o111 != 0)
}

#[cfg(not(unix))]
fn is_executable(_: &std::fs::DirEntry) -> bool {
    false
}
