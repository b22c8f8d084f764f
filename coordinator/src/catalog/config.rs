//! The `[catalog]` configuration section: git sources and local overlays.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::names::SourceName;

/// Files larger than this are refused unless configured otherwise (32 MiB): big enough
/// for a detailed STEP model, small enough that a sync cannot fill the disk by accident.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 32 * 1024 * 1024;

fn default_max_file_bytes() -> u64 {
    DEFAULT_MAX_FILE_BYTES
}

fn default_ref() -> String {
    "main".into()
}

/// The catalog's configuration.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CatalogConfig {
    /// Where the bare mirrors of the sources are kept (one per source).
    pub cache_dir: PathBuf,
    /// Git repositories of designs, fetched on sync.
    #[serde(default)]
    pub sources: Vec<GitSourceConfig>,
    /// Plain folders of a fablab's own designs and adaptations, snapshotted on sync.
    #[serde(default)]
    pub overlays: Vec<OverlayConfig>,
    /// Largest file a design may carry, in bytes.
    #[serde(default = "default_max_file_bytes")]
    pub max_file_bytes: u64,
}

/// A git repository of designs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GitSourceConfig {
    /// Name designs of this source are known by (`name/id`).
    pub name: SourceName,
    /// `http(s)://` or `file://` URL, or local path, of the repository.
    pub url: String,
    /// Branch, tag or full ref name to follow; `main` when not given.
    #[serde(rename = "ref", default = "default_ref")]
    pub git_ref: String,
    /// Folder inside the repository that holds the designs; the root when not given.
    #[serde(default)]
    pub subdir: Option<String>,
}

/// A plain folder of designs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OverlayConfig {
    /// Name designs of this overlay are known by (`name/id`).
    pub name: SourceName,
    /// The folder.
    pub path: PathBuf,
}

/// How often a running coordinator re-syncs its catalog sources: `"15m"`, `"1h"`,
/// `"90s"`, `"1h30m"` (hours, minutes, seconds). At least one minute, so a typo cannot
/// turn the coordinator into a tight fetch loop against someone's git server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct SyncInterval(Duration);

/// The shortest accepted [`SyncInterval`].
pub const MIN_SYNC_INTERVAL: Duration = Duration::from_secs(60);

impl SyncInterval {
    /// The period.
    pub fn duration(self) -> Duration {
        self.0
    }
}

impl std::str::FromStr for SyncInterval {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        let bad = || {
            format!(
                "`{text}` is not an interval: write a number followed by h, m or s, e.g. \"15m\" or \"1h30m\""
            )
        };
        let mut total: u64 = 0;
        let mut number = String::new();
        // Rank of the last unit read (h 0, m 1, s 2): each unit at most once, largest
        // first, as in "1h30m".
        let mut last_rank: Option<usize> = None;
        for c in text.trim().chars() {
            if c.is_ascii_digit() {
                number.push(c);
                continue;
            }
            let (rank, unit) = match c {
                'h' => (0, 3600),
                'm' => (1, 60),
                's' => (2, 1),
                _ => return Err(bad()),
            };
            if number.is_empty() || last_rank.is_some_and(|r| r >= rank) {
                return Err(bad());
            }
            last_rank = Some(rank);
            let n: u64 = number.parse().map_err(|_| bad())?;
            total = n
                .checked_mul(unit)
                .and_then(|v| total.checked_add(v))
                .ok_or_else(bad)?;
            number.clear();
        }
        if !number.is_empty() || last_rank.is_none() {
            return Err(bad());
        }
        let d = Duration::from_secs(total);
        if d < MIN_SYNC_INTERVAL {
            return Err(format!(
                "`{text}` is shorter than the shortest sync interval, 1m"
            ));
        }
        Ok(Self(d))
    }
}

impl TryFrom<String> for SyncInterval {
    type Error = String;

    fn try_from(text: String) -> Result<Self, String> {
        text.parse()
    }
}

impl From<SyncInterval> for String {
    fn from(i: SyncInterval) -> String {
        let s = i.0.as_secs();
        let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
        let mut out = String::new();
        for (n, unit) in [(h, 'h'), (m, 'm'), (sec, 's')] {
            if n > 0 {
                out.push_str(&format!("{n}{unit}"));
            }
        }
        out
    }
}

/// A configuration the catalog cannot work with.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConfigError {
    /// Two sources or overlays share a name.
    #[error("catalog source name `{0}` is used twice")]
    DuplicateName(SourceName),
    /// A source's URL is empty.
    #[error("catalog source `{0}`: `url` must not be empty")]
    EmptyUrl(SourceName),
    /// A source's URL uses a transport this build does not include.
    #[error(
        "catalog source `{name}`: `{url}` uses a transport this build does not support (ssh and git:// are not included); use an http(s):// or file:// URL or a local path"
    )]
    UnsupportedUrl {
        /// The source.
        name: SourceName,
        /// The URL.
        url: String,
    },
    /// A ref is empty or contains spaces or `:`.
    #[error("catalog source `{0}`: `ref` must be a branch, tag or ref name")]
    BadRef(SourceName),
    /// A subdir is absolute or uses `..`.
    #[error("catalog source `{0}`: `subdir` must be a relative folder without `..`")]
    BadSubdir(SourceName),
    /// The file size limit is zero.
    #[error("catalog `max_file_bytes` must be above zero")]
    ZeroLimit,
}

impl CatalogConfig {
    /// Check what serde cannot: unique names, usable refs and subdirs.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let mut names = BTreeSet::new();
        let all = self
            .sources
            .iter()
            .map(|s| &s.name)
            .chain(self.overlays.iter().map(|o| &o.name));
        for name in all {
            if !names.insert(name) {
                return Err(ConfigError::DuplicateName(name.clone()));
            }
        }
        for s in &self.sources {
            if s.url.trim().is_empty() {
                return Err(ConfigError::EmptyUrl(s.name.clone()));
            }
            // ssh and git:// transports are not compiled in (see docs/designs.md).
            let lower = s.url.to_ascii_lowercase();
            if ["ssh://", "git://", "git+ssh://", "ssh+git://"]
                .iter()
                .any(|p| lower.starts_with(p))
                || (lower.contains('@') && lower.contains(':') && !lower.contains("://"))
            {
                return Err(ConfigError::UnsupportedUrl {
                    name: s.name.clone(),
                    url: s.url.clone(),
                });
            }
            if s.git_ref.is_empty() || s.git_ref.contains(|c: char| c.is_whitespace() || c == ':') {
                return Err(ConfigError::BadRef(s.name.clone()));
            }
            if let Some(sub) = &s.subdir
                && (sub.starts_with('/') || sub.split('/').any(|p| p == ".."))
            {
                return Err(ConfigError::BadSubdir(s.name.clone()));
            }
        }
        if self.max_file_bytes == 0 {
            return Err(ConfigError::ZeroLimit);
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<CatalogConfig, String> {
        let c: CatalogConfig = toml::from_str(text).map_err(|e| e.to_string())?;
        c.validate().map_err(|e| e.to_string())?;
        Ok(c)
    }

    #[test]
    fn a_source_with_subdir_and_an_overlay_parse_with_defaults() {
        let c = parse(
            r#"
cache_dir = "/var/cache/munifab"
[[sources]]
name = "commons"
url = "."
subdir = "designs"
[[overlays]]
name = "fablab"
path = "/srv/designs"
"#,
        )
        .unwrap();
        assert_eq!(c.sources[0].git_ref, "main");
        assert_eq!(c.max_file_bytes, DEFAULT_MAX_FILE_BYTES);
    }

    #[test]
    fn unknown_keys_duplicate_names_and_remote_transports_are_refused() {
        assert!(
            parse("cache_dir = \"x\"\ncolour = 1")
                .unwrap_err()
                .contains("colour")
        );
        let dup = "cache_dir = \"x\"\n[[sources]]\nname = \"a\"\nurl = \"/r\"\n[[overlays]]\nname = \"a\"\npath = \"/o\"";
        assert!(parse(dup).unwrap_err().contains("used twice"));
        let ssh = "cache_dir = \"x\"\n[[sources]]\nname = \"a\"\nurl = \"ssh://example.org/r.git\"";
        assert!(parse(ssh).unwrap_err().contains("http(s)://"));
        let scp = "cache_dir = \"x\"\n[[sources]]\nname = \"a\"\nurl = \"git@example.org:r.git\"";
        assert!(parse(scp).unwrap_err().contains("transport"));
        let https =
            "cache_dir = \"x\"\n[[sources]]\nname = \"a\"\nurl = \"https://example.org/r.git\"";
        assert!(parse(https).is_ok(), "http(s) sources are fetched");
        let up = "cache_dir = \"x\"\n[[sources]]\nname = \"a\"\nurl = \"/r\"\nsubdir = \"../x\"";
        assert!(parse(up).unwrap_err().contains("subdir"));
    }

    #[test]
    fn sync_intervals_read_hours_minutes_and_seconds_and_refuse_the_rest() {
        let secs = |t: &str| t.parse::<SyncInterval>().map(|i| i.duration().as_secs());
        assert_eq!(secs("15m"), Ok(900));
        assert_eq!(secs("1h30m"), Ok(5400));
        assert_eq!(secs("2h"), Ok(7200));
        assert_eq!(secs("90s"), Ok(90));
        for bad in [
            "",
            "15",
            "m",
            "15 x",
            "30m1h",
            "1m1m",
            "-5m",
            "1.5h",
            "99999999999999999999h",
        ] {
            assert!(secs(bad).unwrap_err().contains("not an interval"), "{bad}");
        }
        assert!(secs("30s").unwrap_err().contains("shortest"));
        let i: SyncInterval = "1h30m".parse().unwrap();
        assert_eq!(String::from(i), "1h30m");
    }
}
