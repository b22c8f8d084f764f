//! Reading design folders from a git tree at one commit: finding the folders, resolving
//! the paths a manifest names (following symbolic links only while they stay inside
//! the folder) and hashing the files.

use std::collections::{BTreeMap, HashMap, VecDeque};

use gix::bstr::ByteSlice;
use gix::objs::tree::EntryKind;
use serde::Serialize;

use super::manifest::{
    MANIFEST_FILE, Manifest, ManifestError, ManifestProblem, Process, RelPath, SourceFormat,
};
use super::names::{ProfileId, Sha256};
use super::source::plain_component;

/// Names tried, in order, when a manifest does not name its licence file.
const LICENCE_NAMES: &[&str] = &[
    "LICENSE",
    "LICENSE.txt",
    "LICENSE.md",
    "LICENCE",
    "LICENCE.txt",
    "LICENCE.md",
    "COPYING",
];

/// Symbolic links followed for one path before giving up (a loop, most likely).
const MAX_LINK_HOPS: usize = 16;

/// What a file is to its design.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum FileRole {
    /// The `design.toml` manifest.
    Manifest,
    /// The licence text or note.
    Licence,
    /// A source file (CAD, mesh, drawing).
    Source {
        /// Its format.
        format: SourceFormat,
    },
    /// G-code for a machine profile.
    Gcode {
        /// The profile it was made for.
        profile: ProfileId,
    },
}

/// A file of a design at one commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct DesignFile {
    /// Path inside the design folder, as the manifest names it.
    pub path: String,
    /// Path inside the source repository (what [`super::Catalog::file`] takes).
    pub repo_path: String,
    /// What the file is.
    pub role: FileRole,
    /// Size in bytes.
    pub size: u64,
    /// SHA-256 of the bytes; [`super::Catalog::file_by_hash`] serves it.
    pub sha256: Sha256,
}

/// A design read and checked at one commit.
#[derive(Debug, Clone)]
pub(crate) struct LoadedDesign {
    pub(crate) manifest: Manifest,
    pub(crate) folder: String,
    pub(crate) files: Vec<DesignFile>,
    pub(crate) licence_text: Option<String>,
    pub(crate) blobs: Vec<(Sha256, gix::ObjectId)>,
}

/// Why a path could not be resolved to a blob, before it is turned into a manifest problem.
#[derive(Debug)]
pub(crate) enum Resolve {
    Missing,
    NotAFile,
    Escape { link: String },
    TooManyLinks,
    Git(String),
}

/// A commit's tree, read with a base folder (the source's `subdir`).
pub(crate) struct CommitTree<'r> {
    pub(crate) repo: &'r gix::Repository,
    pub(crate) root: gix::Tree<'r>,
    pub(crate) base: Vec<String>,
}

impl<'r> CommitTree<'r> {
    /// The tree of `commit`, with `base` (slash separated, may be empty) as the folder
    /// designs live under.
    pub(crate) fn new(
        repo: &'r gix::Repository,
        commit: gix::ObjectId,
        base: &str,
    ) -> Result<Self, String> {
        let root = repo
            .find_commit(commit)
            .and_then(|c| c.tree())
            .map_err(|e| format!("cannot read commit {commit}: {e:#}"))?;
        let base: Vec<String> = base
            .split('/')
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect();
        Ok(Self { repo, root, base })
    }

    fn entry(&self, components: &[String]) -> Result<Option<gix::object::tree::Entry<'r>>, String> {
        if components.is_empty() {
            return Ok(None);
        }
        self.root
            .lookup_entry(components.iter().map(String::as_str))
            .map_err(|e| format!("{e:#}"))
    }

    fn subtree(&self, components: &[String]) -> Result<Option<gix::Tree<'r>>, String> {
        if components.is_empty() {
            return Ok(Some(self.root.clone()));
        }
        match self.entry(components)? {
            Some(e) if e.mode().kind() == EntryKind::Tree => e
                .object()
                .map(|o| Some(o.into_tree()))
                .map_err(|e| format!("{e:#}")),
            _ => Ok(None),
        }
    }

    /// Whether the base folder exists at this commit.
    pub(crate) fn has_base(&self) -> Result<bool, String> {
        Ok(self.subtree(&self.base)?.is_some())
    }

    /// Folders under the base that hold a manifest, relative to the base. A design
    /// folder is not searched further; hidden folders are skipped.
    pub(crate) fn design_folders(&self) -> Result<Vec<Vec<String>>, String> {
        let mut found = Vec::new();
        let mut queue = VecDeque::from([Vec::<String>::new()]);
        while let Some(rel) = queue.pop_front() {
            let full: Vec<String> = self.base.iter().chain(&rel).cloned().collect();
            let Some(tree) = self.subtree(&full)? else {
                continue;
            };
            let decoded = tree.decode().map_err(|e| format!("{e:#}"))?;
            let is_design = decoded.entries.iter().any(|e| {
                e.filename == MANIFEST_FILE.as_bytes() && e.mode.kind() != EntryKind::Tree
            });
            if is_design {
                found.push(rel);
                continue;
            }
            for e in &decoded.entries {
                if e.mode.kind() != EntryKind::Tree {
                    continue;
                }
                if let Some(name) = plain_component(e.filename).filter(|n| !n.starts_with('.')) {
                    let mut child = rel.clone();
                    child.push(name.to_owned());
                    queue.push_back(child);
                }
            }
        }
        found.sort();
        Ok(found)
    }

    /// Resolve `rel` inside the folder `within` (relative to the repository root) to a
    /// blob, following symbolic links that stay inside `within`.
    pub(crate) fn resolve(
        &self,
        within: &[String],
        rel: &[String],
    ) -> Result<gix::ObjectId, Resolve> {
        let mut resolved: Vec<String> = Vec::new();
        let mut pending: VecDeque<String> = rel.iter().cloned().collect();
        let mut hops = 0;
        let mut last_link = String::new();
        while let Some(part) = pending.pop_front() {
            match part.as_str() {
                "" | "." => continue,
                ".." => {
                    if resolved.pop().is_none() {
                        return Err(Resolve::Escape { link: last_link });
                    }
                    continue;
                }
                _ => {}
            }
            let full: Vec<String> = within
                .iter()
                .chain(&resolved)
                .chain([&part])
                .cloned()
                .collect();
            let entry = self
                .entry(&full)
                .map_err(Resolve::Git)?
                .ok_or(Resolve::Missing)?;
            match entry.mode().kind() {
                EntryKind::Tree => resolved.push(part),
                EntryKind::Link => {
                    hops += 1;
                    if hops > MAX_LINK_HOPS {
                        return Err(Resolve::TooManyLinks);
                    }
                    last_link = resolved
                        .iter()
                        .chain([&part])
                        .cloned()
                        .collect::<Vec<_>>()
                        .join("/");
                    let target = entry.object().map_err(|e| Resolve::Git(format!("{e:#}")))?;
                    let target = target.data.to_str_lossy().into_owned();
                    if target.starts_with('/') || target.starts_with('\\') {
                        return Err(Resolve::Escape { link: last_link });
                    }
                    for piece in target.split('/').rev() {
                        pending.push_front(piece.to_owned());
                    }
                }
                EntryKind::Blob | EntryKind::BlobExecutable => {
                    return if pending.iter().all(|p| p.is_empty() || p == ".") {
                        Ok(entry.object_id())
                    } else {
                        Err(Resolve::Missing)
                    };
                }
                EntryKind::Commit => return Err(Resolve::Missing),
            }
        }
        Err(Resolve::NotAFile)
    }

    /// Read a blob's bytes.
    pub(crate) fn read(&self, id: gix::ObjectId) -> Result<Vec<u8>, String> {
        self.repo
            .find_object(id)
            .map(|o| o.detach().data)
            .map_err(|e| format!("cannot read blob {id}: {e:#}"))
    }

    /// A blob's size without reading it.
    pub(crate) fn size(&self, id: gix::ObjectId) -> Result<u64, String> {
        self.repo
            .find_header(id)
            .map(|h| h.size())
            .map_err(|e| format!("cannot read blob {id}: {e:#}"))
    }
}

/// What loading needs besides the tree.
pub(crate) struct LoadRules<'a> {
    pub(crate) max_file_bytes: u64,
    pub(crate) profiles: Option<&'a BTreeMap<ProfileId, Process>>,
}

/// Read and check the design in `folder` (relative to the tree's base). `hashes` caches
/// SHA-256 by blob id across calls, since most files do not change between syncs.
pub(crate) fn load_design(
    tree: &CommitTree<'_>,
    folder: &[String],
    rules: &LoadRules<'_>,
    hashes: &mut HashMap<gix::ObjectId, Sha256>,
) -> Result<LoadedDesign, Vec<ManifestError>> {
    let within: Vec<String> = tree.base.iter().chain(folder).cloned().collect();
    let folder_path = within.join("/");
    let join = |rel: &str| {
        if folder_path.is_empty() {
            rel.to_owned()
        } else {
            format!("{folder_path}/{rel}")
        }
    };
    let manifest_path = join(MANIFEST_FILE);
    let error = |key: Option<String>, problem: ManifestProblem| ManifestError {
        file: manifest_path.clone(),
        key,
        problem,
    };
    let git = |m: String| vec![error(None, ManifestProblem::Invalid(m))];

    let manifest_id = tree
        .resolve(&within, &[MANIFEST_FILE.to_owned()])
        .map_err(|_| git("the manifest is not a readable file".into()))?;
    let manifest_size = tree.size(manifest_id).map_err(git)?;
    if manifest_size > rules.max_file_bytes.min(1 << 20) {
        return Err(vec![error(
            None,
            ManifestProblem::Oversized {
                path: MANIFEST_FILE.into(),
                size: manifest_size,
                limit: rules.max_file_bytes.min(1 << 20),
            },
        )]);
    }
    let text = tree.read(manifest_id).map_err(git)?;
    let text = String::from_utf8(text).map_err(|_| git("the manifest is not UTF-8".into()))?;
    let manifest = Manifest::parse(&manifest_path, &text)?;

    let mut problems = Vec::new();
    let mut files = Vec::new();
    let mut blobs = Vec::new();
    let mut add = |key: String,
                   path: &RelPath,
                   role: FileRole|
     -> Result<gix::ObjectId, ManifestError> {
        let shown = path.to_string();
        let resolved = tree.resolve(&within, path.components()).and_then(|id| {
            let size = tree.size(id).map_err(Resolve::Git)?;
            Ok((id, size))
        });
        let problem = match resolved {
            Ok((_, size)) if size > rules.max_file_bytes => ManifestProblem::Oversized {
                path: shown,
                size,
                limit: rules.max_file_bytes,
            },
            Ok((id, size)) => {
                let sha256 = match hashes.get(&id) {
                    Some(h) => *h,
                    None => {
                        let bytes = tree
                            .read(id)
                            .map_err(|m| error(Some(key.clone()), ManifestProblem::Invalid(m)))?;
                        let h = Sha256::of(&bytes);
                        hashes.insert(id, h);
                        h
                    }
                };
                blobs.push((sha256, id));
                files.push(DesignFile {
                    path: shown.clone(),
                    repo_path: join(&shown),
                    role,
                    size,
                    sha256,
                });
                return Ok(id);
            }
            Err(Resolve::Missing) => ManifestProblem::MissingFile(shown),
            Err(Resolve::NotAFile) => ManifestProblem::NotAFile(shown),
            Err(Resolve::Escape { link }) => ManifestProblem::SymlinkEscape { path: shown, link },
            Err(Resolve::TooManyLinks) => {
                ManifestProblem::Invalid(format!("`{shown}` goes through too many symbolic links"))
            }
            Err(Resolve::Git(m)) => ManifestProblem::Invalid(m),
        };
        Err(error(Some(key), problem))
    };

    let manifest_rel = RelPath::parse(MANIFEST_FILE).expect("constant path");
    if let Err(e) = add("(manifest)".into(), &manifest_rel, FileRole::Manifest) {
        problems.push(e);
    }
    let licence_rel = match &manifest.licence_file {
        Some(path) => Some(path.clone()),
        None => LICENCE_NAMES
            .iter()
            .map(|name| RelPath::parse(name).expect("constant path"))
            .find(|rel| tree.resolve(&within, rel.components()).is_ok()),
    };
    let licence_id = licence_rel.and_then(|rel| {
        add("licence_file".into(), &rel, FileRole::Licence)
            .map_err(|e| problems.push(e))
            .ok()
    });
    for (i, s) in manifest.sources.iter().enumerate() {
        if let Err(e) = add(
            format!("sources[{i}].file"),
            &s.file,
            FileRole::Source { format: s.format },
        ) {
            problems.push(e);
        }
    }
    for (i, g) in manifest.gcode.iter().enumerate() {
        let role = FileRole::Gcode {
            profile: g.profile.clone(),
        };
        if let Err(e) = add(format!("gcode[{i}].file"), &g.file, role) {
            problems.push(e);
        }
        if let Some(profiles) = rules.profiles {
            let key = Some(format!("gcode[{i}].profile"));
            match profiles.get(&g.profile) {
                None => problems.push(error(
                    key,
                    ManifestProblem::UnknownProfile(g.profile.clone()),
                )),
                Some(process) if *process != manifest.process => problems.push(error(
                    key,
                    ManifestProblem::ProfileProcess {
                        profile: g.profile.clone(),
                        profile_process: *process,
                        design_process: manifest.process,
                    },
                )),
                Some(_) => {}
            }
        }
    }
    if !problems.is_empty() {
        return Err(problems);
    }
    let licence_text = match licence_id {
        Some(id) => Some(String::from_utf8_lossy(&tree.read(id).map_err(git)?).into_owned()),
        None => None,
    };
    Ok(LoadedDesign {
        manifest,
        folder: folder_path,
        files,
        licence_text,
        blobs,
    })
}
