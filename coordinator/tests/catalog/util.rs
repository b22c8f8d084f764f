//! Helpers for the catalog tests: real git repositories made with the `git` CLI, real
//! folders, and a catalog over them. Failures say which command or file went wrong.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::rc::Rc;

use munifab_coordinator::catalog::{
    Catalog, CatalogConfig, CommitId, DesignError, DesignKey, GitSourceConfig, OverlayConfig,
    SyncReport,
};

/// A fixed clock for syncs: the tests never depend on the time of day.
pub fn at(seconds: i64) -> time::OffsetDateTime {
    time::OffsetDateTime::from_unix_timestamp(1_800_000_000 + seconds).expect("valid time")
}

/// A git repository in a temporary folder, driven by the `git` CLI.
pub struct GitRepo {
    pub dir: tempfile::TempDir,
}

impl GitRepo {
    pub fn new() -> Self {
        let repo = Self {
            dir: tempfile::tempdir().expect("temporary folder"),
        };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Run git in the repository with a fixed identity; panics with git's output.
    pub fn git(&self, args: &[&str]) -> String {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=Test",
                "-c",
                "user.email=test@example.org",
                "-c",
                "commit.gpgsign=false",
            ])
            .args(args)
            .current_dir(self.path())
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?} failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    pub fn write(&self, path: &str, bytes: impl AsRef<[u8]>) {
        write(&self.path().join(path), bytes);
    }

    pub fn remove(&self, path: &str) {
        std::fs::remove_dir_all(self.path().join(path)).expect("remove folder");
    }

    /// Commit everything and return the new commit.
    pub fn commit(&self, message: &str) -> CommitId {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "--allow-empty", "-m", message]);
        self.git(&["rev-parse", "HEAD"]).parse().expect("commit id")
    }

    pub fn url(&self) -> String {
        format!("file://{}", self.path().display())
    }
}

pub fn write(path: &Path, bytes: impl AsRef<[u8]>) {
    std::fs::create_dir_all(path.parent().expect("parent")).expect("create folder");
    std::fs::write(path, bytes).unwrap_or_else(|e| panic!("write {}: {e}", path.display()));
}

/// A valid manifest for design `id`, with `extra` TOML appended before the file tables.
pub fn manifest(id: &str, extra: &str) -> String {
    format!(
        r#"id = "{id}"
title = "Design {id}"
summary = "A test design."
version = "1.0.0"
licence = "CERN-OHL-S-2.0"
process = "fdm"
materials = ["PLA"]
tags = ["test"]
{extra}
[[authors]]
name = "Test Author"

[[sources]]
file = "part.stl"

[[gcode]]
profile = "generic-marlin-220"
file = "part.gcode"
"#
    )
}

/// Write a complete valid design folder at `folder` under `root`.
pub fn design(root: &Path, folder: &str, id: &str, gcode: &str) {
    let dir = root.join(folder);
    write(&dir.join("design.toml"), manifest(id, ""));
    write(&dir.join("part.stl"), "solid part\nendsolid part\n");
    write(&dir.join("part.gcode"), gcode);
    write(
        &dir.join("LICENSE"),
        "CERN-OHL-S-2.0, see https://ohwr.org/cern_ohl_s_v2.txt\n",
    );
}

/// A catalog builder over temporary mirrors.
pub struct Setup {
    cache: Rc<tempfile::TempDir>,
    pub config: CatalogConfig,
}

/// An open catalog that keeps its temporary cache folder alive.
pub struct Opened {
    catalog: Catalog,
    _cache: Rc<tempfile::TempDir>,
}

impl std::ops::Deref for Opened {
    type Target = Catalog;
    fn deref(&self) -> &Catalog {
        &self.catalog
    }
}

impl Opened {
    /// Apply a builder step to the catalog inside.
    pub fn map(self, f: impl FnOnce(Catalog) -> Catalog) -> Self {
        Self {
            catalog: f(self.catalog),
            _cache: self._cache,
        }
    }
}

impl Setup {
    pub fn new() -> Self {
        let cache = Rc::new(tempfile::tempdir().expect("temporary folder"));
        let config = CatalogConfig {
            cache_dir: cache.path().join("cache"),
            sources: Vec::new(),
            overlays: Vec::new(),
            max_file_bytes: 1024 * 1024,
        };
        Self { cache, config }
    }

    pub fn git(mut self, name: &str, url: &str, subdir: Option<&str>) -> Self {
        self.config.sources.push(GitSourceConfig {
            name: name.parse().expect("source name"),
            url: url.to_owned(),
            git_ref: "main".into(),
            subdir: subdir.map(str::to_owned),
        });
        self
    }

    pub fn overlay(mut self, name: &str, path: &Path) -> Self {
        self.config.overlays.push(OverlayConfig {
            name: name.parse().expect("overlay name"),
            path: path.to_owned(),
        });
        self
    }

    pub fn open(&self) -> Opened {
        Opened {
            catalog: Catalog::open(self.config.clone()).expect("catalog opens"),
            _cache: self.cache.clone(),
        }
    }
}

/// The errors of a sync, with a readable panic when there are some.
pub fn assert_clean(report: &SyncReport) {
    assert!(
        report.errors.is_empty(),
        "sync errors: {:#?}",
        report.errors
    );
}

/// The only error of a sync that should have exactly one.
pub fn only_error(report: &SyncReport) -> &DesignError {
    assert_eq!(
        report.errors.len(),
        1,
        "expected one error, got {:#?}",
        report.errors
    );
    &report.errors[0]
}

/// The repository root (the workspace), for the shipped designs and profiles.
pub fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("workspace")
        .to_owned()
}

/// `source/id` as a key.
pub fn key(source: &str, id: &str) -> DesignKey {
    DesignKey {
        source: source.parse().expect("source name"),
        id: id.parse().expect("design id"),
    }
}
