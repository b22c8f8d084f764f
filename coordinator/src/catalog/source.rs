//! Bringing sources into local bare mirrors: git sources are fetched with gix (local
//! paths, `file://` and `http(s)://`), overlay folders are imported as commits. Either
//! way the catalog then reads every file from a git object database at a known commit,
//! never from a checkout, so a job pinned to a commit gets the same bytes however the
//! source moves on.

use std::path::{Path, PathBuf};
use std::sync::atomic::AtomicBool;

use gix::bstr::ByteSlice;
use gix::objs::tree::EntryKind;

use super::names::{CommitId, SourceName};

/// The ref in a mirror that holds the last fetched (or imported) commit.
const HEAD_REF: &str = "refs/munifab/head";
/// Every synced commit is kept reachable under this prefix, so jobs pinned to it can
/// always be served, even after the upstream rewrites history or the mirror is gc'ed.
const PIN_PREFIX: &str = "refs/munifab/pins/";

/// Why a source could not be brought up to date.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SourceError {
    /// The local mirror could not be created or opened.
    #[error("source `{source_name}`: cannot open the mirror at {path}: {message}")]
    Mirror {
        /// The source.
        source_name: SourceName,
        /// The mirror's path.
        path: PathBuf,
        /// The git library's message.
        message: String,
    },
    /// Fetching from the remote failed (unreachable, not a repository, no such ref).
    #[error("source `{source_name}`: fetching `{git_ref}` from {url} failed: {message}")]
    Fetch {
        /// The source.
        source_name: SourceName,
        /// The configured URL.
        url: String,
        /// The configured ref.
        git_ref: String,
        /// The git library's message.
        message: String,
    },
    /// The overlay folder could not be read or stored.
    #[error("overlay `{source_name}`: importing {path} failed: {message}")]
    Overlay {
        /// The overlay.
        source_name: SourceName,
        /// The file or folder at fault.
        path: PathBuf,
        /// What went wrong.
        message: String,
    },
}

/// Open the bare mirror at `path`, creating it first if needed. Global and system git
/// configuration is ignored so that behaviour does not depend on the host.
pub(crate) fn open_mirror(
    name: &SourceName,
    path: &Path,
) -> Result<gix::ThreadSafeRepository, SourceError> {
    let fail = |e: &dyn std::fmt::Display| SourceError::Mirror {
        source_name: name.clone(),
        path: path.to_owned(),
        message: format!("{e:#}"),
    };
    if !path.join("HEAD").exists() {
        std::fs::create_dir_all(path).map_err(|e| fail(&e))?;
        gix::init_bare(path).map_err(|e| fail(&e))?;
    }
    gix::open::Options::isolated()
        .open(path)
        .map_err(|e| fail(&e))
}

/// The commit the mirror's head ref points at, if anything was synced before.
pub(crate) fn mirror_head(repo: &gix::Repository) -> Option<CommitId> {
    let mut r = repo.try_find_reference(HEAD_REF).ok()??;
    let id = r.peel_to_id().ok()?;
    Some(CommitId::from_gix(&id))
}

/// Fetch `git_ref` of `url` into the mirror and return the commit it points at.
pub(crate) fn fetch(
    repo: &gix::Repository,
    name: &SourceName,
    url: &str,
    git_ref: &str,
) -> Result<CommitId, SourceError> {
    let fail = |message: String| SourceError::Fetch {
        source_name: name.clone(),
        url: url.to_owned(),
        git_ref: git_ref.to_owned(),
        message,
    };
    let lower = url.to_ascii_lowercase();
    if lower.starts_with("http://") || lower.starts_with("https://") {
        install_tls_provider();
    }
    let spec = format!("+{git_ref}:{HEAD_REF}");
    let interrupt = AtomicBool::new(false);
    let outcome = (|| -> gix::Result<()> {
        let remote = repo
            .remote_at(url)?
            .with_fetch_tags(gix::remote::fetch::Tags::None)
            .with_refspecs(Some(spec.as_str()), gix::remote::Direction::Fetch)?;
        remote
            .connect(gix::remote::Direction::Fetch)?
            .prepare_fetch(gix::progress::Discard, Default::default())?
            .receive(gix::progress::Discard, &interrupt)?;
        Ok(())
    })();
    outcome.map_err(|e| fail(describe_fetch_error(&e)))?;
    let commit =
        mirror_head(repo).ok_or_else(|| fail(format!("the remote has no ref `{git_ref}`")))?;
    pin(repo, commit).map_err(fail)?;
    Ok(commit)
}

/// A one-line reason for a failed fetch. gix wraps HTTP failures several layers deep
/// ("Transport handshake failed", an IO error, reqwest's error, hyper's...); for those
/// say what happened in the terms a person configuring a source needs. Other failures
/// (a local path that is not a repository, a missing ref) keep gix's own chain.
fn describe_fetch_error(e: &(dyn std::error::Error + 'static)) -> String {
    let mut chain = Vec::new();
    let mut next = Some(e);
    while let Some(err) = next {
        chain.push(err);
        next = err.source();
    }
    let http = chain.iter().find_map(|err| {
        err.downcast_ref::<reqwest::Error>().or_else(|| {
            err.downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<reqwest::Error>())
        })
    });
    let Some(http) = http else {
        return format!("{e:#}");
    };
    let innermost = chain.last().map(ToString::to_string).unwrap_or_default();
    if let Some(status) = http.status() {
        format!(
            "the server answered HTTP {status}: no git repository is published at this URL, or it needs credentials"
        )
    } else if http.is_connect() {
        format!("cannot connect to the server: {innermost}")
    } else if http.is_timeout() {
        format!("the server did not answer in time: {innermost}")
    } else {
        format!("the HTTP request failed: {innermost}")
    }
}

/// gix fetches http(s) with reqwest, built (as everywhere in MuniFab) with rustls and no
/// crypto provider of its own: reqwest would panic building its client unless a process
/// default is installed. Install ring's, once; if the binary installed one already, that
/// one stays.
fn install_tls_provider() {
    static INSTALL: std::sync::Once = std::sync::Once::new();
    INSTALL.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Keep `commit` reachable in the mirror for as long as the mirror exists.
fn pin(repo: &gix::Repository, commit: CommitId) -> Result<(), String> {
    let name = format!("{PIN_PREFIX}{commit}");
    repo.reference(
        name.as_str(),
        commit.to_gix(),
        gix::refs::transaction::PreviousValue::Any,
        "munifab: pin synced commit",
    )
    .map(|_| ())
    .map_err(|e| format!("cannot pin {commit}: {e:#}"))
}

/// The identity written on overlay snapshot commits.
fn overlay_signature(now: time::OffsetDateTime) -> gix::actor::Signature {
    let seconds = now.unix_timestamp();
    gix::actor::Signature {
        name: "MuniFab catalog".into(),
        email: "catalog@munifab.invalid".into(),
        time: gix::date::Time { seconds, offset: 0 },
    }
}

/// Snapshot the overlay folder `dir` into the mirror as a commit. A new commit is made
/// only when the folder's content changed since the last snapshot, so an unchanged
/// overlay keeps its commit id and jobs pinned to it stay valid.
pub(crate) fn import_overlay(
    repo: &gix::Repository,
    name: &SourceName,
    dir: &Path,
    now: time::OffsetDateTime,
) -> Result<CommitId, SourceError> {
    let fail = |path: &Path, message: String| SourceError::Overlay {
        source_name: name.clone(),
        path: path.to_owned(),
        message,
    };
    if !dir.is_dir() {
        return Err(fail(dir, "not a folder".into()));
    }
    let empty = gix::ObjectId::empty_tree(repo.object_hash());
    let mut editor = repo
        .edit_tree(empty)
        .map_err(|e| fail(dir, format!("{e:#}")))?;
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        let abs = dir.join(&rel);
        let entries = std::fs::read_dir(&abs).map_err(|e| fail(&abs, e.to_string()))?;
        for entry in entries {
            let entry = entry.map_err(|e| fail(&abs, e.to_string()))?;
            let file_name = entry.file_name();
            let Some(file_name_str) = file_name.to_str() else {
                return Err(fail(&entry.path(), "file names must be UTF-8".into()));
            };
            if file_name_str.starts_with('.') {
                continue;
            }
            let rel_path = rel.join(file_name_str);
            let path = entry.path();
            let kind = entry.file_type().map_err(|e| fail(&path, e.to_string()))?;
            let git_path = rel_path.to_string_lossy().replace('\\', "/");
            let (entry_kind, blob) = if kind.is_dir() {
                stack.push(rel_path);
                continue;
            } else if kind.is_symlink() {
                // Kept as a link, as git would: the catalog refuses links that leave a
                // design folder when it resolves manifest paths.
                let target = std::fs::read_link(&path).map_err(|e| fail(&path, e.to_string()))?;
                (
                    EntryKind::Link,
                    target.to_string_lossy().into_owned().into_bytes(),
                )
            } else {
                (
                    EntryKind::Blob,
                    std::fs::read(&path).map_err(|e| fail(&path, e.to_string()))?,
                )
            };
            let id = repo
                .write_blob(&blob)
                .map_err(|e| fail(&path, format!("{e:#}")))?;
            editor
                .upsert(git_path.as_str(), entry_kind, id)
                .map_err(|e| fail(&path, format!("{e:#}")))?;
        }
    }
    let tree = editor
        .write()
        .map_err(|e| fail(dir, format!("{e:#}")))?
        .detach();
    let previous = mirror_head(repo);
    if let Some(prev) = previous {
        let prev_tree = repo
            .find_commit(prev.to_gix())
            .and_then(|c| c.tree_id())
            .map_err(|e| fail(dir, format!("{e:#}")))?;
        if prev_tree == tree {
            return Ok(prev);
        }
    }
    let signature = overlay_signature(now);
    let mut time_buf = gix::date::parse::TimeBuf::default();
    let sig_ref = signature.to_ref(&mut time_buf);
    let message = format!("overlay snapshot of {}", dir.display());
    let commit = repo
        .new_commit_as(
            sig_ref,
            sig_ref,
            message,
            tree,
            previous.map(CommitId::to_gix),
        )
        .map_err(|e| fail(dir, format!("{e:#}")))?;
    let commit = CommitId::from_gix(&commit.id);
    repo.reference(
        HEAD_REF,
        commit.to_gix(),
        gix::refs::transaction::PreviousValue::Any,
        "munifab: overlay snapshot",
    )
    .map_err(|e| fail(dir, format!("{e:#}")))?;
    pin(repo, commit).map_err(|m| fail(dir, m))?;
    Ok(commit)
}

/// Whether a git entry name is safe to use as a path component.
pub(crate) fn plain_component(name: &[u8]) -> Option<&str> {
    let s = name.to_str().ok()?;
    (!s.is_empty() && s != "." && s != ".." && !s.contains('/')).then_some(s)
}
