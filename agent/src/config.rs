//! `agent.toml`: parsed once, strictly, into validated [`Settings`].
//!
//! Two layers, as in ripgrep: `Raw*` structs mirror the file exactly (`deny_unknown_fields`,
//! so a misspelt key is an error, not a silently ignored setting), then [`Settings::load`]
//! applies `MUNIFAB_*` environment overrides and turns the raw values into types that
//! cannot be wrong later (ids, URLs, baud rates, absolute paths, capabilities).
//!
//! Relative paths in the file (data directory, profile files) are relative to the file's
//! own directory, so an example config works from any working directory.

use std::collections::HashSet;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use munifab_firmware_bridge::gcode::{MachineProfile, MotionLimits, Power};
use munifab_protocol::{AgentId, Box3, Capabilities, Firmware, MachineId, Process, Vec3};
use serde::Deserialize;
use url::Url;

/// Environment variables that override the file (URLs and secrets only: everything else
/// belongs in the reviewed file).
pub mod env {
    /// Broker URL (`mqtt://host:port` or `mqtts://host:port`).
    pub const BROKER_URL: &str = "MUNIFAB_BROKER_URL";
    /// Broker user name (defaults to the agent id).
    pub const BROKER_USERNAME: &str = "MUNIFAB_BROKER_USERNAME";
    /// The agent token: broker password and the secret the signing key is derived from.
    pub const AGENT_TOKEN: &str = "MUNIFAB_AGENT_TOKEN";
    /// Coordinator base URL for artifacts.
    pub const COORDINATOR_URL: &str = "MUNIFAB_COORDINATOR_URL";
    /// Data directory (spool, artifact cache).
    pub const DATA_DIR: &str = "MUNIFAB_DATA_DIR";
    /// Every override, for `--help` texts and docs.
    pub const ALL: [&str; 5] = [
        BROKER_URL,
        BROKER_USERNAME,
        AGENT_TOKEN,
        COORDINATOR_URL,
        DATA_DIR,
    ];
}

/// Why a configuration could not be loaded.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Read {
        /// The file.
        file: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// The file is not valid TOML, has an unknown key or a value of the wrong type.
    #[error("{file}: {message}")]
    Syntax {
        /// The file.
        file: PathBuf,
        /// The TOML parser's message, naming the key and its line.
        message: String,
    },
    /// The machine profile file a machine refers to is not valid.
    #[error("{file}: `{key}`: {source}")]
    Profile {
        /// The agent configuration.
        file: PathBuf,
        /// The key naming the profile.
        key: String,
        /// What the profile loader said (names the profile file and its key).
        source: Box<munifab_firmware_bridge::gcode::ProfileError>,
    },
    /// A value parsed but is not acceptable.
    #[error("{file}: `{key}`: {problem}")]
    Invalid {
        /// The file (or the environment variable that supplied the value).
        file: PathBuf,
        /// Dotted path of the key.
        key: String,
        /// What is wrong and what is expected.
        problem: String,
    },
}

/// A secret that never appears in logs or `Debug` output.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(s: impl Into<String>) -> Self {
        Self(s.into())
    }
    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("\"<redacted>\"")
    }
}

// ---------------------------------------------------------------------------------------
// raw file

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    agent_id: String,
    site: Option<String>,
    data_dir: Option<PathBuf>,
    telemetry_interval_ms: Option<u64>,
    broker: RawBroker,
    coordinator: RawCoordinator,
    #[serde(default)]
    shutdown: RawShutdown,
    #[serde(default)]
    machines: Vec<RawMachine>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBroker {
    url: Option<String>,
    username: Option<String>,
    token: Option<String>,
    ca_file: Option<PathBuf>,
    keep_alive_s: Option<u64>,
    reconnect_min_ms: Option<u64>,
    reconnect_max_ms: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCoordinator {
    url: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawShutdown {
    running_jobs: Option<OnShutdown>,
    timeout_s: Option<u64>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawMachine {
    id: String,
    port: String,
    baud: Option<u32>,
    firmware: Firmware,
    profile: Option<PathBuf>,
    capabilities: Option<RawCapabilities>,
    #[serde(default)]
    scripts: RawScripts,
    needs_confirmation: Option<bool>,
    #[serde(rename = "virtual")]
    virtual_options: Option<VirtualOptions>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawScripts {
    #[serde(default)]
    start: Vec<String>,
    #[serde(default)]
    end: Vec<String>,
    #[serde(default)]
    cancel: Vec<String>,
}

/// Strict mirror of the protocol's `Capabilities` (which ignores unknown fields on the wire,
/// as it must; a file written by a person must not).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawCapabilities {
    process: Process,
    firmware: Firmware,
    build_volume: RawBox,
    nozzle_diameter_mm: Option<f64>,
    #[serde(default)]
    materials: Vec<String>,
    max_hotend_temp_c: Option<f64>,
    max_bed_temp_c: Option<f64>,
    spindle_max_rpm: Option<f64>,
    tool_count: Option<u32>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawBox {
    min: RawVec,
    max: RawVec,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawVec {
    x: f64,
    y: f64,
    z: f64,
}

// ---------------------------------------------------------------------------------------
// validated settings

/// Everything the agent needs, validated.
#[derive(Debug, Clone)]
pub struct Settings {
    /// This agent's id: the MQTT client id and topic level.
    pub agent: AgentId,
    /// The site (fablab) announced in the status.
    pub site: Option<String>,
    /// Where the spool and the artifact cache live.
    pub data_dir: PathBuf,
    /// Interval between telemetry samples.
    pub telemetry_interval: Duration,
    /// Broker connection.
    pub broker: BrokerSettings,
    /// Base URL of the coordinator; relative artifact URLs are resolved against it.
    pub coordinator: Url,
    /// What to do with running jobs on SIGINT/SIGTERM.
    pub shutdown: ShutdownSettings,
    /// The machines this agent drives.
    pub machines: Vec<MachineSettings>,
}

/// Broker connection settings.
#[derive(Debug, Clone)]
pub struct BrokerSettings {
    /// Host name or address.
    pub host: String,
    /// TCP port.
    pub port: u16,
    /// TLS (from an `mqtts://` URL), with an optional extra CA file.
    pub tls: Option<TlsSettings>,
    /// MQTT user name.
    pub username: String,
    /// Agent token: MQTT password, and the secret the signing key derives from.
    pub token: Secret,
    /// MQTT keep-alive.
    pub keep_alive: Duration,
    /// First reconnect delay.
    pub reconnect_min: Duration,
    /// Cap of the reconnect delay.
    pub reconnect_max: Duration,
}

/// TLS settings of the broker connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TlsSettings {
    /// PEM CA bundle to trust instead of the system roots.
    pub ca_file: Option<PathBuf>,
}

/// What shutdown does with a running job.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnShutdown {
    /// Pause the job (the machine parks and holds); the operator decides later.
    Pause,
    /// Let the job finish, up to the shutdown timeout, then pause it.
    Finish,
    /// Cancel the job and run the cancel script.
    Cancel,
}

/// Shutdown behaviour.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShutdownSettings {
    /// What happens to running jobs.
    pub running_jobs: OnShutdown,
    /// How long shutdown may take before the agent exits anyway.
    pub timeout: Duration,
}

/// Where a machine is connected.
#[derive(Debug, Clone, PartialEq)]
pub enum PortSpec {
    /// A serial device, ideally a stable `/dev/serial/by-id/…` name.
    Serial(PathBuf),
    /// A built-in virtual machine (`virtual:marlin`, `virtual:grbl`).
    Virtual(VirtualKind),
}

/// Which virtual machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VirtualKind {
    /// A simulated Marlin printer.
    Marlin,
    /// A simulated GRBL router.
    Grbl,
}

/// Options of a virtual machine (`[machines.virtual]`).
#[derive(Debug, Clone, Copy, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VirtualOptions {
    /// Moves, dwells and heating run this many times faster than real; 0: no delays at all.
    #[serde(default = "one")]
    pub speed: f64,
    /// Emulate the serial line's speed (bytes at baud/10 per second), as a real cable.
    #[serde(default = "yes")]
    pub paced: bool,
}

impl Default for VirtualOptions {
    fn default() -> Self {
        Self {
            speed: 1.0,
            paced: true,
        }
    }
}

fn one() -> f64 {
    1.0
}

fn yes() -> bool {
    true
}

/// G-code run around jobs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Scripts {
    /// Before every job.
    pub start: Vec<String>,
    /// After a completed job.
    pub end: Vec<String>,
    /// After a cancelled job (e.g. heaters off, spindle off, park).
    pub cancel: Vec<String>,
}

/// One machine.
#[derive(Debug, Clone)]
pub struct MachineSettings {
    /// Machine id (topic level).
    pub id: MachineId,
    /// Where it is connected.
    pub port: PortSpec,
    /// Serial speed.
    pub baud: u32,
    /// Firmware on the machine.
    pub firmware: Firmware,
    /// What it can do (announced) and its motion limits: the preflight's reference.
    pub profile: MachineProfile,
    /// Start/end/cancel G-code.
    pub scripts: Scripts,
    /// Whether a job's end leaves the machine `needs_attention` until a `clear`.
    pub needs_confirmation: bool,
    /// Options of a virtual machine.
    pub virtual_options: VirtualOptions,
}

const BAUD_RATES: [u32; 9] = [
    9600, 19200, 38400, 57600, 115200, 230400, 250000, 500000, 1000000,
];

impl Settings {
    /// Reads and validates `path`, with overrides from the process environment.
    pub fn load(path: &Path) -> Result<Settings, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            file: path.to_path_buf(),
            source,
        })?;
        Settings::parse(&text, path, &|k| std::env::var(k).ok())
    }

    /// Validates `text` as if read from `path`; `env` supplies `MUNIFAB_*` overrides (an
    /// input, so tests do not touch the process environment).
    pub fn parse(
        text: &str,
        path: &Path,
        env: &dyn Fn(&str) -> Option<String>,
    ) -> Result<Settings, ConfigError> {
        let file = path.to_path_buf();
        let base = path
            .parent()
            .map(Path::to_path_buf)
            .unwrap_or_else(|| PathBuf::from("."));
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigError::Syntax {
            file: file.clone(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let env = |k: &str| env(k).filter(|v| !v.trim().is_empty());
        let invalid = |key: &str, problem: String| ConfigError::Invalid {
            file: file.clone(),
            key: key.to_string(),
            problem,
        };

        let agent = AgentId::new(raw.agent_id.clone()).map_err(|e| {
            invalid(
                "agent_id",
                format!("{:?} is not a valid id: {e}", raw.agent_id),
            )
        })?;

        // broker
        let (broker_url, url_key) = match env(env::BROKER_URL) {
            Some(u) => (u, env::BROKER_URL.to_string()),
            None => (
                raw.broker.url.clone().ok_or_else(|| {
                    invalid("broker.url", "missing (or set MUNIFAB_BROKER_URL)".into())
                })?,
                "broker.url".to_string(),
            ),
        };
        let url = Url::parse(&broker_url)
            .map_err(|e| invalid(&url_key, format!("{broker_url:?} is not a URL: {e}")))?;
        let (tls, default_port) = match url.scheme() {
            "mqtt" | "tcp" => (false, 1883),
            "mqtts" | "ssl" => (true, 8883),
            other => {
                return Err(invalid(
                    &url_key,
                    format!("scheme {other:?} is not supported; use mqtt:// or mqtts://"),
                ));
            }
        };
        let host = url
            .host_str()
            .filter(|h| !h.is_empty())
            .ok_or_else(|| invalid(&url_key, "the URL has no host".into()))?
            .trim_matches(['[', ']'])
            .to_string();
        let port = url.port().unwrap_or(default_port);
        if !url.username().is_empty() || url.password().is_some() {
            return Err(invalid(
                &url_key,
                "put credentials in broker.username / broker.token (or MUNIFAB_AGENT_TOKEN), not in the URL".into(),
            ));
        }
        let ca_file = raw.broker.ca_file.map(|p| base.join(p));
        if ca_file.is_some() && !tls {
            return Err(invalid(
                "broker.ca_file",
                "a CA file only makes sense with an mqtts:// URL".into(),
            ));
        }
        let token = env(env::AGENT_TOKEN).or(raw.broker.token).ok_or_else(|| {
            invalid(
                "broker.token",
                "missing: the agent token authenticates to the broker and signs messages (set it here or in MUNIFAB_AGENT_TOKEN)".into(),
            )
        })?;
        let username = env(env::BROKER_USERNAME)
            .or(raw.broker.username)
            .unwrap_or_else(|| agent.to_string());
        let keep_alive = Duration::from_secs(raw.broker.keep_alive_s.unwrap_or(15));
        if keep_alive < Duration::from_secs(5) || keep_alive > Duration::from_secs(3600) {
            return Err(invalid(
                "broker.keep_alive_s",
                "must be between 5 and 3600 seconds".into(),
            ));
        }
        let reconnect_min = Duration::from_millis(raw.broker.reconnect_min_ms.unwrap_or(500));
        let reconnect_max = Duration::from_millis(raw.broker.reconnect_max_ms.unwrap_or(30_000));
        if reconnect_min.is_zero() || reconnect_min > reconnect_max {
            return Err(invalid(
                "broker.reconnect_min_ms",
                format!(
                    "must be above 0 and at most broker.reconnect_max_ms ({} ms)",
                    reconnect_max.as_millis()
                ),
            ));
        }
        let broker = BrokerSettings {
            host,
            port,
            tls: tls.then_some(TlsSettings { ca_file }),
            username,
            token: Secret::new(token),
            keep_alive,
            reconnect_min,
            reconnect_max,
        };

        // coordinator
        let (coord_url, coord_key) = match env(env::COORDINATOR_URL) {
            Some(u) => (u, env::COORDINATOR_URL.to_string()),
            None => (
                raw.coordinator.url.clone().ok_or_else(|| {
                    invalid(
                        "coordinator.url",
                        "missing (or set MUNIFAB_COORDINATOR_URL)".into(),
                    )
                })?,
                "coordinator.url".to_string(),
            ),
        };
        let coordinator = Url::parse(&coord_url)
            .map_err(|e| invalid(&coord_key, format!("{coord_url:?} is not a URL: {e}")))?;
        if !matches!(coordinator.scheme(), "http" | "https") {
            return Err(invalid(
                &coord_key,
                "must be an http:// or https:// URL".into(),
            ));
        }

        let data_dir = match env(env::DATA_DIR) {
            Some(d) => PathBuf::from(d),
            None => base.join(
                raw.data_dir
                    .unwrap_or_else(|| PathBuf::from("munifab-data")),
            ),
        };

        let telemetry_interval = Duration::from_millis(raw.telemetry_interval_ms.unwrap_or(1000));
        if telemetry_interval < Duration::from_millis(100) {
            return Err(invalid(
                "telemetry_interval_ms",
                "must be at least 100 ms (telemetry is a sample, not a stream)".into(),
            ));
        }

        let shutdown = ShutdownSettings {
            running_jobs: raw.shutdown.running_jobs.unwrap_or(OnShutdown::Pause),
            timeout: Duration::from_secs(raw.shutdown.timeout_s.unwrap_or(30)),
        };

        if raw.machines.is_empty() {
            return Err(invalid(
                "machines",
                "no [[machines]]: an agent drives at least one machine".into(),
            ));
        }
        let mut seen = HashSet::new();
        let mut machines = Vec::with_capacity(raw.machines.len());
        for (i, m) in raw.machines.into_iter().enumerate() {
            let key = |k: &str| format!("machines[{i}].{k}");
            let id = MachineId::new(m.id.clone())
                .map_err(|e| invalid(&key("id"), format!("{:?} is not a valid id: {e}", m.id)))?;
            if !seen.insert(id.clone()) {
                return Err(invalid(&key("id"), format!("machine {id} is listed twice")));
            }
            let port = parse_port(&m.port).map_err(|p| invalid(&key("port"), p))?;
            if let PortSpec::Virtual(kind) = port {
                let fits = match kind {
                    VirtualKind::Marlin => matches!(m.firmware, Firmware::Marlin | Firmware::Prusa),
                    VirtualKind::Grbl => m.firmware == Firmware::Grbl,
                };
                if !fits {
                    return Err(invalid(
                        &key("firmware"),
                        format!("{:?} cannot drive port {:?}", m.firmware, m.port),
                    ));
                }
                if let Some(v) = &m.virtual_options
                    && !(v.speed.is_finite() && v.speed >= 0.0)
                {
                    return Err(invalid(
                        &key("virtual.speed"),
                        format!(
                            "must be 0 (no delays) or a positive factor, not {}",
                            v.speed
                        ),
                    ));
                }
            } else if m.virtual_options.is_some() {
                return Err(invalid(
                    &key("virtual"),
                    "options for a virtual machine on a serial port".into(),
                ));
            }
            let baud = m.baud.unwrap_or(115_200);
            if !BAUD_RATES.contains(&baud) {
                return Err(invalid(
                    &key("baud"),
                    format!("{baud} is not a rate serial firmware uses; one of {BAUD_RATES:?}"),
                ));
            }
            let profile = match (m.profile, m.capabilities) {
                (Some(_), Some(_)) => {
                    return Err(invalid(
                        &key("profile"),
                        "give either a profile file or an inline [machines.capabilities] table, not both".into(),
                    ));
                }
                (None, None) => {
                    return Err(invalid(
                        &key("profile"),
                        "missing: a profile file or an inline [machines.capabilities] table".into(),
                    ));
                }
                (None, Some(caps)) => MachineProfile {
                    id: id.to_string(),
                    name: id.to_string(),
                    capabilities: caps
                        .validate()
                        .map_err(|(k, p)| invalid(&format!("machines[{i}].capabilities.{k}"), p))?,
                    motion: MotionLimits::DEFAULT,
                    power: Power { watts: 0.0 },
                },
                (Some(profile), None) => {
                    let path = base.join(&profile);
                    MachineProfile::load(&path).map_err(|e| ConfigError::Profile {
                        file: file.clone(),
                        key: key("profile"),
                        source: Box::new(e),
                    })?
                }
            };
            let capabilities = &profile.capabilities;
            if capabilities.firmware != m.firmware {
                return Err(invalid(
                    &key("firmware"),
                    format!(
                        "{:?} differs from the profile's firmware {:?}",
                        m.firmware, capabilities.firmware
                    ),
                ));
            }
            machines.push(MachineSettings {
                id,
                port,
                baud,
                firmware: m.firmware,
                profile,
                scripts: Scripts {
                    start: m.scripts.start,
                    end: m.scripts.end,
                    cancel: m.scripts.cancel,
                },
                needs_confirmation: m.needs_confirmation.unwrap_or(true),
                virtual_options: m.virtual_options.unwrap_or_default(),
            });
        }

        Ok(Settings {
            agent,
            site: raw.site,
            data_dir,
            telemetry_interval,
            broker,
            coordinator,
            shutdown,
            machines,
        })
    }
}

fn parse_port(s: &str) -> Result<PortSpec, String> {
    if let Some(kind) = s.strip_prefix("virtual:") {
        return match kind {
            "marlin" => Ok(PortSpec::Virtual(VirtualKind::Marlin)),
            "grbl" => Ok(PortSpec::Virtual(VirtualKind::Grbl)),
            other => Err(format!(
                "unknown virtual machine {other:?}; use virtual:marlin or virtual:grbl"
            )),
        };
    }
    let path = PathBuf::from(s);
    if !path.is_absolute() {
        return Err(format!(
            "{s:?} is neither an absolute device path (/dev/serial/by-id/…) nor virtual:marlin / virtual:grbl"
        ));
    }
    Ok(PortSpec::Serial(path))
}

impl RawCapabilities {
    fn validate(self) -> Result<Capabilities, (String, String)> {
        let b = &self.build_volume;
        for (axis, lo, hi) in [
            ("x", b.min.x, b.max.x),
            ("y", b.min.y, b.max.y),
            ("z", b.min.z, b.max.z),
        ] {
            if !(lo.is_finite() && hi.is_finite() && lo < hi) {
                return Err((
                    format!("build_volume.max.{axis}"),
                    format!("must be finite and above min.{axis} ({lo} .. {hi})"),
                ));
            }
        }
        for (k, v) in [
            ("nozzle_diameter_mm", self.nozzle_diameter_mm),
            ("max_hotend_temp_c", self.max_hotend_temp_c),
            ("max_bed_temp_c", self.max_bed_temp_c),
            ("spindle_max_rpm", self.spindle_max_rpm),
        ] {
            if let Some(v) = v
                && !(v.is_finite() && v > 0.0)
            {
                return Err((k.to_string(), format!("must be a positive number, not {v}")));
            }
        }
        let materials = self
            .materials
            .into_iter()
            .map(|m| m.trim().to_ascii_uppercase())
            .collect::<Vec<_>>();
        if materials.iter().any(String::is_empty) {
            return Err(("materials".into(), "contains an empty name".into()));
        }
        let tool_count = self.tool_count.unwrap_or(1);
        if tool_count == 0 {
            return Err(("tool_count".into(), "must be at least 1".into()));
        }
        let v = |r: &RawVec| Vec3 {
            x: r.x,
            y: r.y,
            z: r.z,
        };
        Ok(Capabilities {
            process: self.process,
            firmware: self.firmware,
            build_volume: Box3 {
                min: v(&b.min),
                max: v(&b.max),
            },
            nozzle_diameter_mm: self.nozzle_diameter_mm,
            materials,
            max_hotend_temp_c: self.max_hotend_temp_c,
            max_bed_temp_c: self.max_bed_temp_c,
            spindle_max_rpm: self.spindle_max_rpm,
            tool_count,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
agent_id = "lab-a"
[broker]
url = "mqtt://127.0.0.1:1883"
token = "s3cret"
[coordinator]
url = "http://127.0.0.1:8080"
[[machines]]
id = "mk3"
port = "virtual:marlin"
firmware = "marlin"
[machines.capabilities]
process = "fdm"
firmware = "marlin"
build_volume = { min = { x = 0.0, y = 0.0, z = 0.0 }, max = { x = 220.0, y = 220.0, z = 250.0 } }
materials = ["pla"]
"#;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    fn parse(text: &str) -> Result<Settings, ConfigError> {
        Settings::parse(text, Path::new("/etc/munifab/agent.toml"), &no_env)
    }

    #[test]
    fn a_minimal_file_gets_safe_defaults() {
        let s = parse(MINIMAL).unwrap();
        assert_eq!(s.agent.as_str(), "lab-a");
        assert_eq!(s.broker.username, "lab-a");
        assert_eq!((s.broker.host.as_str(), s.broker.port), ("127.0.0.1", 1883));
        assert!(s.broker.tls.is_none());
        assert_eq!(s.telemetry_interval, Duration::from_secs(1));
        assert_eq!(s.data_dir, PathBuf::from("/etc/munifab/munifab-data"));
        let m = &s.machines[0];
        assert!(
            m.needs_confirmation,
            "needs_confirmation must default to true"
        );
        assert_eq!(m.baud, 115_200);
        assert_eq!(m.port, PortSpec::Virtual(VirtualKind::Marlin));
        assert_eq!(m.profile.capabilities.materials, vec!["PLA".to_string()]);
        assert_eq!(s.shutdown.running_jobs, OnShutdown::Pause);
    }

    #[test]
    fn an_unknown_key_names_the_file_the_key_and_the_line() {
        let text = MINIMAL.replace("[coordinator]", "colour = \"red\"\n[coordinator]");
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.starts_with("/etc/munifab/agent.toml:"), "{err}");
        assert!(err.contains("colour"), "{err}");
        assert!(err.contains("unknown field"), "{err}");
        assert!(err.contains("line"), "{err}");
    }

    #[test]
    fn an_unknown_key_inside_capabilities_is_an_error() {
        let text = MINIMAL.replace(
            "materials = [\"pla\"]",
            "materials = [\"pla\"]\nlaser_watts = 5",
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("laser_watts"), "{err}");
    }

    #[test]
    fn the_environment_overrides_urls_and_the_token_and_secrets_stay_out_of_debug() {
        let env = |k: &str| match k {
            env::BROKER_URL => Some("mqtts://broker.example:8884".to_string()),
            env::AGENT_TOKEN => Some("from-env".to_string()),
            env::COORDINATOR_URL => Some("https://coord.example".to_string()),
            _ => None,
        };
        let s = Settings::parse(MINIMAL, Path::new("agent.toml"), &env).unwrap();
        assert_eq!(s.broker.host, "broker.example");
        assert_eq!(s.broker.port, 8884);
        assert_eq!(s.broker.tls, Some(TlsSettings { ca_file: None }));
        assert_eq!(s.broker.token.expose(), "from-env");
        assert_eq!(s.coordinator.as_str(), "https://coord.example/");
        let shown = format!("{s:?}");
        assert!(
            !shown.contains("from-env") && !shown.contains("s3cret"),
            "{shown}"
        );
    }

    #[test]
    fn invalid_values_name_their_key() {
        let cases = [
            ("agent_id = \"lab-a\"", "agent_id = \"Lab A\"", "`agent_id`"),
            (
                "mqtt://127.0.0.1:1883",
                "http://127.0.0.1:1883",
                "`broker.url`",
            ),
            (
                "port = \"virtual:marlin\"",
                "port = \"ttyUSB0\"",
                "`machines[0].port`",
            ),
            (
                "port = \"virtual:marlin\"",
                "port = \"virtual:laser\"",
                "`machines[0].port`",
            ),
            (
                "firmware = \"marlin\"\n[machines.capabilities]",
                "firmware = \"grbl\"\n[machines.capabilities]",
                "`machines[0].firmware`",
            ),
            (
                "id = \"mk3\"",
                "id = \"mk3\"\nbaud = 12345",
                "`machines[0].baud`",
            ),
            (
                "x = 220.0",
                "x = -1.0",
                "`machines[0].capabilities.build_volume.max.x`",
            ),
            ("token = \"s3cret\"", "", "`broker.token`"),
        ];
        for (from, to, key) in cases {
            let text = MINIMAL.replacen(from, to, 1);
            assert_ne!(text, MINIMAL, "case {from:?} did not apply");
            let err = parse(&text).unwrap_err().to_string();
            assert!(err.contains(key), "expected {key} in: {err}");
        }
    }

    #[test]
    fn a_machine_listed_twice_is_refused() {
        let text = format!(
            "{MINIMAL}\n{}",
            &MINIMAL[MINIMAL.find("[[machines]]").unwrap()..]
        );
        let err = parse(&text).unwrap_err().to_string();
        assert!(err.contains("listed twice"), "{err}");
    }

    #[test]
    fn a_profile_file_is_read_relative_to_the_config_and_strictly() {
        let dir = std::env::temp_dir().join(format!("munifab-cfg-{}", uuid::Uuid::new_v4()));
        std::fs::create_dir_all(dir.join("profiles")).unwrap();
        let profile = r#"
id = "generic-grbl-300x200"
name = "Generic GRBL router"
[capabilities]
process = "cnc"
firmware = "grbl"
build_volume = { min = { x = 0.0, y = 0.0, z = -40.0 }, max = { x = 300.0, y = 200.0, z = 40.0 } }
spindle_max_rpm = 12000.0
[motion]
max_feed_mm_min = 3000.0
max_z_feed_mm_min = 800.0
acceleration_mm_s2 = 300.0
[power]
watts = 400.0
"#;
        std::fs::write(dir.join("profiles/router.toml"), profile).unwrap();
        let cfg = MINIMAL.replace("virtual:marlin", "virtual:grbl").replace(
            "firmware = \"marlin\"\n[machines.capabilities]",
            "firmware = \"grbl\"\nprofile = \"profiles/router.toml\"\n[machines.capabilities]",
        );
        let cfg = &cfg[..cfg.find("[machines.capabilities]").unwrap()];
        let s = Settings::parse(cfg, &dir.join("agent.toml"), &no_env).unwrap();
        assert_eq!(s.machines[0].profile.capabilities.process, Process::Cnc);

        std::fs::write(
            dir.join("profiles/router.toml"),
            profile.replace("[power]", "jerk = 8.0\n[power]"),
        )
        .unwrap();
        let err = Settings::parse(cfg, &dir.join("agent.toml"), &no_env)
            .unwrap_err()
            .to_string();
        assert!(err.contains("router.toml") && err.contains("jerk"), "{err}");
        std::fs::remove_dir_all(dir).unwrap();
    }
}

#[cfg(test)]
mod example_tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_is_valid_and_uses_virtual_machines() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples/agent.toml");
        let s = Settings::parse(&std::fs::read_to_string(&path).unwrap(), &path, &|_| None)
            .unwrap_or_else(|e| panic!("{e}"));
        assert!(s.machines.len() >= 2);
        assert!(
            s.machines
                .iter()
                .all(|m| matches!(m.port, PortSpec::Virtual(_)))
        );
    }
}
