//! The repository's `designs/` folder committed into a fresh bare git repository, so the
//! demo's catalog syncs it as a real git source (fetched over the local transport), not as
//! an overlay folder.

use std::path::{Path, PathBuf};

use anyhow::Context;
use gix::objs::tree::EntryKind;

/// Branch the commit is written to (the catalog's default ref).
pub const BRANCH: &str = "main";

/// Commits every file under `designs` (dot files and folders left out) as the only commit
/// of a new bare repository at `dest`, on branch [`BRANCH`]. Author, committer and time
/// are fixed, so the same folder always gives the same commit id.
pub fn commit_designs(designs: &Path, dest: &Path) -> anyhow::Result<String> {
    let repo = gix::init_bare(dest)
        .with_context(|| format!("creating a git repository at {}", dest.display()))?;
    let empty = gix::ObjectId::empty_tree(repo.object_hash());
    let mut editor = repo.edit_tree(empty)?;
    let mut stack = vec![PathBuf::new()];
    let mut files = 0_usize;
    while let Some(rel) = stack.pop() {
        let abs = designs.join(&rel);
        let entries =
            std::fs::read_dir(&abs).with_context(|| format!("reading {}", abs.display()))?;
        for entry in entries {
            let entry = entry.with_context(|| format!("reading {}", abs.display()))?;
            let name = entry.file_name();
            let name = name
                .to_str()
                .with_context(|| format!("{} is not UTF-8", entry.path().display()))?;
            if name.starts_with('.') {
                continue;
            }
            let rel_path = rel.join(name);
            let kind = entry.file_type()?;
            if kind.is_dir() {
                stack.push(rel_path);
                continue;
            }
            let path = entry.path();
            let bytes =
                std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
            let mode = if is_executable(&entry.metadata()?) {
                EntryKind::BlobExecutable
            } else {
                EntryKind::Blob
            };
            let id = repo.write_blob(&bytes)?.detach();
            let git_path = rel_path.to_string_lossy().replace('\\', "/");
            editor.upsert(git_path.as_str(), mode, id)?;
            files += 1;
        }
    }
    anyhow::ensure!(files > 0, "{} holds no files", designs.display());
    let tree = editor.write()?.detach();
    let signature = gix::actor::Signature {
        name: "MuniFab demo".into(),
        email: "demo@munifab.invalid".into(),
        time: gix::date::Time {
            seconds: 1_800_000_000,
            offset: 0,
        },
    };
    let mut time_buf = gix::date::parse::TimeBuf::default();
    let sig = signature.to_ref(&mut time_buf);
    let commit = repo.new_commit_as(
        sig,
        sig,
        "designs of the MuniFab repository",
        tree,
        Vec::<gix::ObjectId>::new(),
    )?;
    repo.reference(
        format!("refs/heads/{BRANCH}").as_str(),
        commit.id,
        gix::refs::transaction::PreviousValue::Any,
        "munifab demo: designs",
    )?;
    Ok(commit.id.to_string())
}

#[cfg(unix)]
fn is_executable(meta: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::PermissionsExt;
    meta.permissions().mode() & 0o111 != 0
}

#[cfg(not(unix))]
fn is_executable(_: &std::fs::Metadata) -> bool {
    false
}
