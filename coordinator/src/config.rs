//! Configuration: a TOML file (every key optional), `MUNIFAB_*` environment overrides,
//! parsed strictly (an unknown key is an error) into validated [`Settings`] once.
//!
//! Environment names are `MUNIFAB_` + section + `_` + key, upper case:
//! `MUNIFAB_HTTP_LISTEN`, `MUNIFAB_DATABASE_URL`, `MUNIFAB_MQTT_MODE`,
//! `MUNIFAB_DISPATCH_OFFLINE_GRACE_SECS`, and `MUNIFAB_DATA_DIR` for the top-level key.
//! Variables naming no section of this file (`MUNIFAB_TEST_*`, the agent's) are left alone.

use std::fmt;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

use crate::catalog::{CatalogConfig, GitSourceConfig, OverlayConfig, SyncInterval};
use crate::dispatch::DispatchSettings;
use crate::store::LostPolicy;

const SECTIONS: [&str; 5] = ["http", "database", "mqtt", "dispatch", "catalog"];
/// Keys whose values stay strings even when they look like numbers.
const STRING_KEYS: [&str; 10] = [
    "cache_dir",
    "profiles_dir",
    "listen",
    "public_url",
    "url",
    "mode",
    "username",
    "password",
    "client_id",
    "lost_policy",
];

/// Why the configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("cannot read {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file (with overrides) is not valid configuration.
    #[error("invalid configuration{}: {source}", .path.as_ref().map(|p| format!(" in {}", p.display())).unwrap_or_default())]
    Parse {
        /// The file, if any.
        path: Option<PathBuf>,
        /// What serde or TOML said (names the key).
        source: toml::de::Error,
    },
    /// A value is out of range or inconsistent.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct Raw {
    data_dir: Option<PathBuf>,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    database: RawDatabase,
    #[serde(default)]
    mqtt: RawMqtt,
    #[serde(default)]
    dispatch: RawDispatch,
    catalog: Option<RawCatalog>,
}

/// `[catalog]`: present means the catalog is on.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCatalog {
    cache_dir: Option<PathBuf>,
    profiles_dir: Option<PathBuf>,
    max_file_bytes: Option<u64>,
    sync_on_start: Option<bool>,
    sync_interval: Option<SyncInterval>,
    #[serde(default)]
    sources: Vec<GitSourceConfig>,
    #[serde(default)]
    overlays: Vec<OverlayConfig>,
}

/// The design catalog's settings.
#[derive(Debug, Clone)]
pub struct CatalogSettings {
    /// Sources, overlays, cache folder and file limit.
    pub config: CatalogConfig,
    /// Folder of machine profiles (`*.toml`) the designs' G-code is checked against.
    pub profiles_dir: Option<PathBuf>,
    /// Sync every source when the coordinator starts (default true).
    pub sync_on_start: bool,
    /// Re-sync every source this often while running; off when absent.
    pub sync_interval: Option<SyncInterval>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHttp {
    listen: Option<String>,
    public_url: Option<String>,
    max_upload_bytes: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMqtt {
    mode: Option<String>,
    listen: Option<String>,
    url: Option<String>,
    username: Option<String>,
    password: Option<String>,
    client_id: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDispatch {
    offline_grace_secs: Option<u64>,
    lost_policy: Option<LostPolicy>,
    max_rejections: Option<u32>,
    tick_ms: Option<u64>,
}

/// Which broker the coordinator uses.
#[derive(Clone, PartialEq, Eq)]
pub enum MqttMode {
    /// rumqttd in this process, behind the ACL front on `listen`.
    Embedded {
        /// Address agents connect to.
        listen: SocketAddr,
    },
    /// An external broker (Mosquitto, EMQX).
    External {
        /// Host.
        host: String,
        /// Port.
        port: u16,
        /// User name and password.
        credentials: Option<(String, String)>,
    },
}

impl fmt::Debug for MqttMode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            MqttMode::Embedded { listen } => write!(f, "embedded broker on {listen}"),
            MqttMode::External {
                host,
                port,
                credentials,
            } => write!(
                f,
                "external broker at {host}:{port}{}",
                credentials
                    .as_ref()
                    .map(|(u, _)| format!(" as {u} (password hidden)"))
                    .unwrap_or_default()
            ),
        }
    }
}

/// Validated settings.
#[derive(Debug, Clone)]
pub struct Settings {
    /// SQLite file, artifacts.
    pub data_dir: PathBuf,
    /// HTTP listen address.
    pub http_listen: SocketAddr,
    /// Base URL agents use for artifacts; `None`: derived from the bound address.
    pub public_url: Option<String>,
    /// Largest upload.
    pub max_upload_bytes: u64,
    /// `sqlite://…` or `postgres://…`.
    pub database_url: String,
    /// Broker.
    pub mqtt: MqttMode,
    /// MQTT client id of this coordinator.
    pub mqtt_client_id: String,
    /// Dispatch policy (its `public_url` is filled in at start).
    pub dispatch: DispatchSettings,
    /// The design catalog, when a `[catalog]` section is present.
    pub catalog: Option<CatalogSettings>,
}

impl Settings {
    /// Reads `file` (if any), applies the `MUNIFAB_*` variables in `env`, validates.
    pub fn load(
        file: Option<&Path>,
        env: impl IntoIterator<Item = (String, String)>,
    ) -> Result<Settings, ConfigError> {
        let text = match file {
            Some(p) => std::fs::read_to_string(p).map_err(|source| ConfigError::Read {
                path: p.to_path_buf(),
                source,
            })?,
            None => String::new(),
        };
        let parse_err = |source| ConfigError::Parse {
            path: file.map(Path::to_path_buf),
            source,
        };
        let mut table: toml::Table = toml::from_str(&text).map_err(parse_err)?;
        apply_env(&mut table, env);
        let raw: Raw = table.try_into().map_err(parse_err)?;
        Settings::validate(raw)
    }

    fn validate(raw: Raw) -> Result<Settings, ConfigError> {
        let bad = |m: String| ConfigError::Invalid(m);
        let data_dir = raw
            .data_dir
            .unwrap_or_else(|| PathBuf::from("munifab-data"));
        let http_listen: SocketAddr = raw
            .http
            .listen
            .as_deref()
            .unwrap_or("127.0.0.1:8080")
            .parse()
            .map_err(|e| bad(format!("http.listen: {e}")))?;
        let database_url = raw
            .database
            .url
            .filter(|u| !u.trim().is_empty())
            .unwrap_or_else(|| format!("sqlite://{}", data_dir.join("munifab.db").display()));
        if !(database_url.starts_with("sqlite:")
            || database_url.starts_with("postgres://")
            || database_url.starts_with("postgresql://"))
        {
            return Err(bad(format!(
                "database.url must be sqlite://PATH or postgres://…, not {database_url:?}"
            )));
        }
        let mqtt = match raw.mqtt.mode.as_deref().unwrap_or("embedded") {
            "embedded" => {
                if raw.mqtt.url.is_some() {
                    return Err(bad("mqtt.url applies to mode = \"external\" only".into()));
                }
                MqttMode::Embedded {
                    listen: raw
                        .mqtt
                        .listen
                        .as_deref()
                        .unwrap_or("0.0.0.0:1883")
                        .parse()
                        .map_err(|e| bad(format!("mqtt.listen: {e}")))?,
                }
            }
            "external" => {
                let url = raw
                    .mqtt
                    .url
                    .ok_or_else(|| bad("mqtt.mode = \"external\" needs mqtt.url".into()))?;
                let rest = url
                    .strip_prefix("mqtt://")
                    .or_else(|| url.strip_prefix("tcp://"))
                    .ok_or_else(|| {
                        bad(format!("mqtt.url must be mqtt://HOST[:PORT], not {url:?}"))
                    })?;
                let rest = rest.trim_end_matches('/');
                let (host, port) = match rest.rsplit_once(':') {
                    Some((h, p)) => (
                        h.to_string(),
                        p.parse()
                            .map_err(|e| bad(format!("mqtt.url port {p:?}: {e}")))?,
                    ),
                    None => (rest.to_string(), 1883),
                };
                if host.is_empty() {
                    return Err(bad(format!("mqtt.url has no host: {url:?}")));
                }
                let credentials = match (raw.mqtt.username, raw.mqtt.password) {
                    (Some(u), Some(p)) => Some((u, p)),
                    (None, None) => None,
                    _ => {
                        return Err(bad("mqtt.username and mqtt.password go together".into()));
                    }
                };
                MqttMode::External {
                    host,
                    port,
                    credentials,
                }
            }
            other => {
                return Err(bad(format!(
                    "mqtt.mode must be \"embedded\" or \"external\", not {other:?}"
                )));
            }
        };
        let d = raw.dispatch;
        let max_rejections = d.max_rejections.unwrap_or(5);
        if max_rejections == 0 {
            return Err(bad("dispatch.max_rejections must be at least 1".into()));
        }
        let tick_ms = d.tick_ms.unwrap_or(1000);
        if tick_ms == 0 {
            return Err(bad("dispatch.tick_ms must be at least 1".into()));
        }
        let catalog = match raw.catalog {
            None => None,
            Some(c) => {
                let config = CatalogConfig {
                    cache_dir: c.cache_dir.unwrap_or_else(|| data_dir.join("catalog")),
                    sources: c.sources,
                    overlays: c.overlays,
                    max_file_bytes: c
                        .max_file_bytes
                        .unwrap_or(crate::catalog::config::DEFAULT_MAX_FILE_BYTES),
                };
                config.validate().map_err(|e| bad(e.to_string()))?;
                Some(CatalogSettings {
                    config,
                    profiles_dir: c.profiles_dir,
                    sync_on_start: c.sync_on_start.unwrap_or(true),
                    sync_interval: c.sync_interval,
                })
            }
        };
        Ok(Settings {
            catalog,
            data_dir,
            http_listen,
            public_url: raw.http.public_url,
            max_upload_bytes: raw.http.max_upload_bytes.unwrap_or(64 * 1024 * 1024),
            database_url,
            mqtt,
            mqtt_client_id: raw
                .mqtt
                .client_id
                .unwrap_or_else(|| "munifab-coordinator".into()),
            dispatch: DispatchSettings {
                offline_grace: Duration::from_secs(d.offline_grace_secs.unwrap_or(300)),
                lost_policy: d.lost_policy.unwrap_or(LostPolicy::Requeue),
                max_rejections,
                tick: Duration::from_millis(tick_ms),
                public_url: String::new(),
            },
        })
    }

    /// The database URL with any password hidden, for the start-up log.
    pub fn redacted_database_url(&self) -> String {
        match self.database_url.split_once("://") {
            Some((scheme, rest)) => match rest.split_once('@') {
                Some((userinfo, host)) => {
                    let user = userinfo.split(':').next().unwrap_or_default();
                    format!("{scheme}://{user}:***@{host}")
                }
                None => self.database_url.clone(),
            },
            None => self.database_url.clone(),
        }
    }
}

fn apply_env(table: &mut toml::Table, env: impl IntoIterator<Item = (String, String)>) {
    for (name, value) in env {
        let Some(rest) = name.strip_prefix("MUNIFAB_") else {
            continue;
        };
        let rest = rest.to_ascii_lowercase();
        let (section, key) = if rest == "data_dir" {
            (None, rest)
        } else if let Some(s) = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))) {
            (Some(*s), rest[s.len() + 1..].to_string())
        } else {
            continue;
        };
        let parsed = if STRING_KEYS.contains(&key.as_str()) || section.is_none() {
            toml::Value::String(value)
        } else if let Ok(i) = value.parse::<i64>() {
            toml::Value::Integer(i)
        } else if let Ok(b) = value.parse::<bool>() {
            toml::Value::Boolean(b)
        } else {
            toml::Value::String(value)
        };
        let target = match section {
            None => &mut *table,
            Some(s) => match table
                .entry(s.to_string())
                .or_insert_with(|| toml::Value::Table(Default::default()))
            {
                toml::Value::Table(t) => t,
                other => {
                    // A scalar where a section belongs: replace it, the file was wrong anyway
                    // and deserialisation would have refused it.
                    *other = toml::Value::Table(Default::default());
                    other.as_table_mut().expect("just made a table")
                }
            },
        };
        target.insert(key, parsed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(toml: &str, env: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let dir = std::env::temp_dir().join(format!("mf-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("c.toml");
        std::fs::write(&path, toml).unwrap();
        let r = Settings::load(
            Some(&path),
            env.iter().map(|(k, v)| (k.to_string(), v.to_string())),
        );
        std::fs::remove_dir_all(dir).unwrap();
        r
    }

    #[test]
    fn defaults_give_an_embedded_broker_and_sqlite_in_the_data_dir() {
        let s = load("", &[]).unwrap();
        assert_eq!(s.database_url, "sqlite://munifab-data/munifab.db");
        assert!(matches!(s.mqtt, MqttMode::Embedded { .. }));
        assert_eq!(s.dispatch.offline_grace, Duration::from_secs(300));
    }

    #[test]
    fn an_unknown_key_in_the_file_or_the_environment_is_an_error() {
        let err = load("[http]\nlisten = \"127.0.0.1:1\"\nlistn = 1\n", &[]).unwrap_err();
        assert!(err.to_string().contains("listn"), "{err}");
        let err = load("", &[("MUNIFAB_DISPATCH_GRACE", "3")]).unwrap_err();
        assert!(err.to_string().contains("grace"), "{err}");
    }

    #[test]
    fn environment_overrides_the_file_and_keeps_strings_as_strings() {
        let s = load(
            "[mqtt]\nmode = \"embedded\"\n",
            &[
                ("MUNIFAB_MQTT_MODE", "external"),
                ("MUNIFAB_MQTT_URL", "mqtt://broker:1884"),
                ("MUNIFAB_MQTT_USERNAME", "coord"),
                ("MUNIFAB_MQTT_PASSWORD", "1234"),
                ("MUNIFAB_DISPATCH_OFFLINE_GRACE_SECS", "7"),
                ("MUNIFAB_DISPATCH_LOST_POLICY", "fail"),
                ("MUNIFAB_TEST_DATABASE_URL", "ignored"),
                ("MUNIFAB_AGENT_ID", "ignored"),
            ],
        )
        .unwrap();
        assert_eq!(
            s.mqtt,
            MqttMode::External {
                host: "broker".into(),
                port: 1884,
                credentials: Some(("coord".into(), "1234".into()))
            }
        );
        assert_eq!(s.dispatch.offline_grace, Duration::from_secs(7));
        assert_eq!(s.dispatch.lost_policy, LostPolicy::Fail);
        assert!(!format!("{:?}", s.mqtt).contains("1234"), "password hidden");
    }

    #[test]
    fn inconsistent_values_are_explained() {
        let err = load("[mqtt]\nmode = \"external\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("needs mqtt.url"), "{err}");
        let err = load("[database]\nurl = \"mysql://x\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("sqlite://"), "{err}");
        let err = load("[http]\nlisten = \"nowhere\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("http.listen"), "{err}");
    }

    #[test]
    fn a_catalog_section_turns_the_catalog_on_with_checked_sources() {
        assert!(load("", &[]).unwrap().catalog.is_none());
        let s = load(
            "data_dir = \"d\"\n[catalog]\nprofiles_dir = \"profiles\"\n\
             [[catalog.sources]]\nname = \"commons\"\nurl = \"/srv/designs.git\"\n\
             ref = \"HEAD\"\nsubdir = \"designs\"\n\
             [[catalog.overlays]]\nname = \"fablab\"\npath = \"/srv/fablab\"\n",
            &[],
        )
        .unwrap();
        let c = s.catalog.unwrap();
        assert_eq!(c.config.cache_dir, PathBuf::from("d").join("catalog"));
        assert_eq!(c.config.sources[0].git_ref, "HEAD");
        assert_eq!(c.config.sources[0].subdir.as_deref(), Some("designs"));
        assert_eq!(c.config.overlays[0].name.as_str(), "fablab");
        assert!(c.sync_on_start);
        assert_eq!(
            c.sync_interval, None,
            "periodic sync is off unless asked for"
        );
        let s = load("[catalog]\nsync_interval = \"15m\"\n", &[]).unwrap();
        let every = s.catalog.unwrap().sync_interval.unwrap().duration();
        assert_eq!(every, std::time::Duration::from_secs(900));
        let err = load("[catalog]\nsync_interval = \"15\"\n", &[]).unwrap_err();
        assert!(err.to_string().contains("not an interval"), "{err}");
        let err = load(
            "[[catalog.sources]]\nname = \"x\"\nurl = \"ssh://example.org/x.git\"\n",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("transport"), "{err}");
        let err = load(
            "[[catalog.sources]]\nname = \"x\"\nurl = \"/x\"\nbranch = \"m\"\n",
            &[],
        )
        .unwrap_err();
        assert!(err.to_string().contains("branch"), "{err}");
    }

    #[test]
    fn passwords_are_hidden_in_the_logged_database_url() {
        let s = load("[database]\nurl = \"postgres://u:secret@db:5432/m\"\n", &[]).unwrap();
        assert_eq!(s.redacted_database_url(), "postgres://u:***@db:5432/m");
    }
}
