//! Messages of the v1 contract and their JSON encoding.
//!
//! Every message is one JSON object: the envelope `{"v":1,"id":…,"ts":…,"type":…}` plus the
//! fields of its type. Each topic kind carries one *family* of message types
//! ([`StatusBody`], [`StateBody`], [`TelemetryBody`], [`Event`], [`Command`]).
//!
//! Decoding reads the envelope first, then the body. Unknown fields are ignored; a `type`
//! this version does not know decodes to the family's `Unknown` variant carrying the type
//! name, so a receiver can answer it with a [`Event::CommandError`] instead of failing.

use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use time::OffsetDateTime;
use uuid::Uuid;

use crate::ids::{AgentId, JobId, MachineId};
use crate::model::{Capabilities, Requirements};
use crate::topic::{Topic, TopicKind};

/// The only protocol version this crate speaks.
pub const VERSION: u32 = 1;

/// Largest payload accepted by [`Message::from_json`], in bytes. Control messages are small;
/// bulk data travels over HTTP.
pub const MAX_PAYLOAD: usize = 256 * 1024;

/// Why a payload could not be decoded.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    /// The payload is larger than [`MAX_PAYLOAD`].
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD}-byte limit")]
    TooLarge(usize),
    /// Not JSON, truncated, or the envelope fields are missing or mistyped.
    #[error("invalid message envelope: {0}")]
    Envelope(serde_json::Error),
    /// The envelope names a protocol version this crate does not speak.
    #[error("unsupported protocol version {0} (this side speaks {VERSION})")]
    Version(u32),
    /// The type is known but its fields are missing or mistyped.
    #[error("invalid {type_name} message: {source}")]
    Body {
        /// The message type.
        type_name: String,
        /// What serde reported.
        source: serde_json::Error,
    },
}

/// A family of message types that share a topic kind.
pub trait Family: Serialize + DeserializeOwned + Sized {
    /// The `type` names this family knows, in declaration order.
    const TYPES: &'static [&'static str];
    /// The value standing for a type this version does not know.
    fn unknown(type_name: String) -> Self;
    /// The `type` name of this value.
    fn type_name(&self) -> &str;
}

/// A decoded or to-be-encoded message: envelope plus body.
#[derive(Debug, Clone, PartialEq)]
pub struct Message<B> {
    /// Unique id; events are deduplicated by it.
    pub id: Uuid,
    /// When the sender created it.
    pub ts: OffsetDateTime,
    /// The typed body.
    pub body: B,
}

#[derive(Serialize)]
struct WireOut<'a, B> {
    v: u32,
    id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    ts: OffsetDateTime,
    #[serde(flatten)]
    body: &'a B,
}

#[derive(Deserialize)]
struct Header {
    v: u32,
    #[allow(dead_code)]
    id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    #[allow(dead_code)]
    ts: OffsetDateTime,
    #[serde(rename = "type")]
    type_name: String,
}

#[derive(Deserialize)]
struct HeaderIds {
    id: Uuid,
    #[serde(with = "time::serde::rfc3339")]
    ts: OffsetDateTime,
}

impl<B: Family> Message<B> {
    /// A message with the given id and timestamp (time is an input: callers at the IO edge
    /// pass the clock's reading).
    pub fn new(id: Uuid, ts: OffsetDateTime, body: B) -> Self {
        Self { id, ts, body }
    }

    /// A message with a fresh random id, stamped with the current UTC time.
    pub fn stamped(body: B) -> Self {
        Self::new(Uuid::new_v4(), OffsetDateTime::now_utc(), body)
    }

    /// Encodes to the JSON wire form.
    ///
    /// An `Unknown` body (which exists only on the decoding side) encodes as its type name
    /// with no fields.
    pub fn to_json(&self) -> Vec<u8> {
        if !B::TYPES.contains(&self.body.type_name()) {
            let out = serde_json::json!({
                "v": VERSION,
                "id": self.id,
                "ts": self.ts.format(&time::format_description::well_known::Rfc3339).unwrap_or_default(),
                "type": self.body.type_name(),
            });
            return serde_json::to_vec(&out).unwrap_or_default();
        }
        let wire = WireOut {
            v: VERSION,
            id: self.id,
            ts: self.ts,
            body: &self.body,
        };
        serde_json::to_vec(&wire).expect("protocol types always serialize")
    }

    /// Decodes a payload of this family.
    pub fn from_json(payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.len() > MAX_PAYLOAD {
            return Err(DecodeError::TooLarge(payload.len()));
        }
        let header: Header = serde_json::from_slice(payload).map_err(DecodeError::Envelope)?;
        if header.v != VERSION {
            return Err(DecodeError::Version(header.v));
        }
        let ids: HeaderIds = serde_json::from_slice(payload).map_err(DecodeError::Envelope)?;
        let body = if B::TYPES.contains(&header.type_name.as_str()) {
            serde_json::from_slice(payload).map_err(|source| DecodeError::Body {
                type_name: header.type_name.clone(),
                source,
            })?
        } else {
            B::unknown(header.type_name)
        };
        Ok(Self {
            id: ids.id,
            ts: ids.ts,
            body,
        })
    }
}

macro_rules! family {
    ($name:ident { $($variant:ident($ty:ty) = $tag:literal),+ $(,)? }) => {
        impl Family for $name {
            const TYPES: &'static [&'static str] = &[$($tag),+];
            fn unknown(type_name: String) -> Self {
                $name::Unknown { type_name }
            }
            fn type_name(&self) -> &str {
                match self {
                    $($name::$variant(_) => $tag,)+
                    $name::Unknown { type_name } => type_name,
                }
            }
        }
    };
}

// ---------------------------------------------------------------------------------------
// status

/// Whether an agent is connected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Presence {
    /// Connected and serving its machines.
    Online,
    /// Gone: a clean shutdown, or the broker published the last will.
    Offline,
}

/// Retained presence of an agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AgentStatus {
    /// Online or offline.
    pub state: Presence,
    /// Agent software version.
    pub version: String,
    /// The site (fablab) the agent serves.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub site: Option<String>,
    /// Machines the agent drives.
    #[serde(default)]
    pub machines: Vec<MachineId>,
    /// True when this message is the broker-published last will (connection lost).
    #[serde(default)]
    pub last_will: bool,
}

/// Messages on `…/{agent}/status`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum StatusBody {
    /// Presence of the agent.
    AgentStatus(AgentStatus),
    /// A type this version does not know.
    #[serde(skip)]
    Unknown {
        /// Its `type` name.
        type_name: String,
    },
}
family!(StatusBody { AgentStatus(AgentStatus) = "agent_status" });

impl AgentStatus {
    /// The last-will form, registered at connect time: the broker publishes it (retained)
    /// when the agent's connection drops without a clean disconnect.
    pub fn last_will(version: impl Into<String>, site: Option<String>) -> Self {
        Self {
            state: Presence::Offline,
            version: version.into(),
            site,
            machines: Vec::new(),
            last_will: true,
        }
    }
}

// ---------------------------------------------------------------------------------------
// machine state

/// Operational state of a machine as the agent sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MachineStatus {
    /// Not connected (port closed, unplugged, agent offline).
    Offline,
    /// Connected, not yet confirmed ready.
    Idle,
    /// A job ended; an operator must remove the part / reload stock and confirm.
    NeedsAttention,
    /// Confirmed ready by an operator: may receive a job.
    Ready,
    /// Running a job.
    Busy,
    /// Job paused.
    Paused,
    /// Firmware error, alarm or halt; needs an operator.
    Error,
}

/// The job a machine is working on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurrentJob {
    /// The job.
    pub job: JobId,
    /// Assignment epoch of the job on this machine.
    pub epoch: u64,
}

/// Retained state of one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineState {
    /// The machine.
    pub machine: MachineId,
    /// Its state.
    pub state: MachineStatus,
    /// What it can do.
    pub capabilities: Capabilities,
    /// The job it holds, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<CurrentJob>,
    /// Whether an operator must confirm readiness after each job.
    #[serde(default = "yes")]
    pub needs_confirmation: bool,
    /// Human-readable detail (alarm text, who confirmed readiness).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub detail: Option<String>,
}

fn yes() -> bool {
    true
}

/// Messages on `…/machines/{machine}/state`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// Messages are decoded once and matched by value; boxing the big variant would only make
// receivers' patterns noisier.
#[allow(clippy::large_enum_variant)]
pub enum StateBody {
    /// The machine's state.
    MachineState(MachineState),
    /// A type this version does not know.
    #[serde(skip)]
    Unknown {
        /// Its `type` name.
        type_name: String,
    },
}
family!(StateBody { MachineState(MachineState) = "machine_state" });

// ---------------------------------------------------------------------------------------
// telemetry

/// One temperature sensor reading.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Temperature {
    /// Sensor name as the firmware reports it: `T0`, `T1`, `B`, `C`.
    pub sensor: String,
    /// Measured, °C.
    pub actual: f64,
    /// Target, °C.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<f64>,
}

/// Live readings of one machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Telemetry {
    /// The machine.
    pub machine: MachineId,
    /// The running job.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<JobId>,
    /// Temperatures.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub temperatures: Vec<Temperature>,
    /// Tool position in work coordinates, mm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub position: Option<crate::model::Vec3>,
    /// Job progress, 0–100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub progress_percent: Option<f64>,
    /// Current feed, mm/min.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub feed_mm_min: Option<f64>,
    /// Current spindle speed, rpm.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spindle_rpm: Option<f64>,
    /// Last line of the job acknowledged by the firmware.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// Firmware state word (GRBL `Run`, `Hold:0`, `Alarm`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub firmware_state: Option<String>,
}

/// Messages on `…/machines/{machine}/telemetry`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum TelemetryBody {
    /// Readings.
    Telemetry(Telemetry),
    /// A type this version does not know.
    #[serde(skip)]
    Unknown {
        /// Its `type` name.
        type_name: String,
    },
}
family!(TelemetryBody { Telemetry(Telemetry) = "telemetry" });

// ---------------------------------------------------------------------------------------
// events

/// Which job, machine and assignment an event is about, and its place in the agent's
/// per-job sequence.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRef {
    /// The job.
    pub job: JobId,
    /// The machine running it.
    pub machine: MachineId,
    /// The assignment epoch.
    pub epoch: u64,
    /// Per-(job, epoch) sequence number, from 0, without gaps.
    pub seq: u64,
}

/// Why an agent refused an assignment.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RejectReason {
    /// The assignment's epoch is older than one the agent has seen for the job.
    StaleEpoch,
    /// The machine is running another job.
    Busy,
    /// The machine has not been confirmed ready by an operator.
    NotReady,
    /// The machine is unknown to the agent.
    UnknownMachine,
    /// The artifact could not be downloaded.
    DownloadFailed,
    /// The artifact's SHA-256 or size did not match the assignment.
    ChecksumMismatch,
    /// The preflight analysis found errors against this machine's profile.
    PreflightFailed,
}

/// Severity of an analysis finding.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Severity {
    /// Reported, does not refuse the file.
    Warning,
    /// Refuses the file.
    Error,
}

/// One finding of the G-code validation, as it travels on the wire.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Finding {
    /// Error or warning.
    pub severity: Severity,
    /// Stable machine-readable code (`out_of_volume`, `forbidden_command`, …).
    pub code: String,
    /// 1-based line in the file.
    pub line: u64,
    /// 1-based column.
    #[serde(default)]
    pub column: u32,
    /// What a maker reads.
    pub message: String,
}

/// `rejected`: the agent refused an assignment.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Rejected {
    /// The job.
    #[serde(flatten)]
    pub job: JobRef,
    /// Why.
    pub reason: RejectReason,
    /// Details for people.
    pub message: String,
    /// Preflight findings, when the reason is `preflight_failed`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub findings: Vec<Finding>,
}

/// `transferring`: the artifact is being downloaded.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Transferring {
    /// The job.
    #[serde(flatten)]
    pub job: JobRef,
    /// Bytes already in the cache.
    pub bytes: u64,
    /// Artifact size.
    pub total: u64,
}

/// `progress`: streaming advanced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Progress {
    /// The job.
    #[serde(flatten)]
    pub job: JobRef,
    /// Last line acknowledged by the firmware (1-based line of the file).
    pub line: u64,
    /// Bytes of the file acknowledged.
    pub bytes: u64,
    /// 0–100.
    pub percent: f64,
}

/// Figures of a finished stream.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct JobSummary {
    /// Lines sent to the firmware.
    pub lines: u64,
    /// Bytes of the file streamed.
    pub bytes: u64,
    /// Wall time from start to end, seconds.
    pub seconds: f64,
    /// Lines retransmitted on the firmware's request.
    #[serde(default)]
    pub resends: u64,
}

/// `completed`: the job finished.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Completed {
    /// The job.
    #[serde(flatten)]
    pub job: JobRef,
    /// Figures.
    pub summary: JobSummary,
}

/// `failed`: the job stopped on an error.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Failed {
    /// The job.
    #[serde(flatten)]
    pub job: JobRef,
    /// What went wrong.
    pub reason: String,
    /// The file line where it stopped, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub line: Option<u64>,
    /// Figures up to the failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub summary: Option<JobSummary>,
}

/// `command_error`: the agent could not act on a command (unknown type, malformed).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CommandError {
    /// Id of the command message.
    pub command: Uuid,
    /// Its type name as received.
    pub command_type: String,
    /// Why it was not acted on.
    pub reason: String,
}

/// Messages on `…/{agent}/events`: at-least-once, deduplicated by message id.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum Event {
    /// The agent took the assignment.
    Accepted(JobRef),
    /// The agent refused the assignment.
    Rejected(Rejected),
    /// Downloading the artifact.
    Transferring(Transferring),
    /// Streaming to the firmware began.
    Started(JobRef),
    /// Streaming advanced.
    Progress(Progress),
    /// The job is paused.
    Paused(JobRef),
    /// The job resumed.
    Resumed(JobRef),
    /// The job finished successfully.
    Completed(Completed),
    /// The job stopped on an error.
    Failed(Failed),
    /// The job was cancelled.
    Cancelled(JobRef),
    /// A command could not be acted on.
    CommandError(CommandError),
    /// A type this version does not know.
    #[serde(skip)]
    Unknown {
        /// Its `type` name.
        type_name: String,
    },
}
family!(Event {
    Accepted(JobRef) = "accepted",
    Rejected(Rejected) = "rejected",
    Transferring(Transferring) = "transferring",
    Started(JobRef) = "started",
    Progress(Progress) = "progress",
    Paused(JobRef) = "paused",
    Resumed(JobRef) = "resumed",
    Completed(Completed) = "completed",
    Failed(Failed) = "failed",
    Cancelled(JobRef) = "cancelled",
    CommandError(CommandError) = "command_error",
});

impl Event {
    /// The job this event is about, if it is a job event.
    pub fn job_ref(&self) -> Option<&JobRef> {
        match self {
            Event::Accepted(j)
            | Event::Started(j)
            | Event::Paused(j)
            | Event::Resumed(j)
            | Event::Cancelled(j) => Some(j),
            Event::Rejected(e) => Some(&e.job),
            Event::Transferring(e) => Some(&e.job),
            Event::Progress(e) => Some(&e.job),
            Event::Completed(e) => Some(&e.job),
            Event::Failed(e) => Some(&e.job),
            Event::CommandError(_) | Event::Unknown { .. } => None,
        }
    }

    /// Whether the event ends the job's run on the machine.
    pub fn is_terminal(&self) -> bool {
        matches!(
            self,
            Event::Completed(_) | Event::Failed(_) | Event::Cancelled(_)
        )
    }
}

// ---------------------------------------------------------------------------------------
// commands

/// Where the agent downloads the G-code, and how it checks it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    /// HTTP(S) URL on the coordinator; supports Range requests.
    pub url: String,
    /// Lower-case hex SHA-256 of the content.
    pub sha256: String,
    /// Size in bytes.
    pub size: u64,
}

/// The analysis figures the coordinator computed at submission.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct AnalysisSummary {
    /// Lines in the file.
    pub lines: u64,
    /// Bytes in the file.
    pub bytes: u64,
    /// Estimated run time, seconds.
    pub estimated_seconds: f64,
    /// Filament length, mm (FDM).
    #[serde(default)]
    pub extrusion_mm: f64,
    /// Material mass, grams, when a density is known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub material_grams: Option<f64>,
    /// Layer count (FDM).
    #[serde(default)]
    pub layers: u32,
}

/// `assign`: run a job on a machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Assign {
    /// The job.
    pub job: JobId,
    /// Assignment epoch; the agent refuses anything older than what it has seen.
    pub epoch: u64,
    /// The machine.
    pub machine: MachineId,
    /// What to download.
    pub artifact: Artifact,
    /// What the job needs (the agent re-checks against its own profile).
    pub requirements: Requirements,
    /// Figures from the coordinator's analysis.
    pub analysis: AnalysisSummary,
}

/// `cancel` / `pause` / `resume`: control a running job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobCommand {
    /// The job.
    pub job: JobId,
    /// Must match the current assignment's epoch.
    pub epoch: u64,
    /// The machine.
    pub machine: MachineId,
}

/// `clear`: an operator confirmed the machine is ready for the next job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Clear {
    /// The machine.
    pub machine: MachineId,
    /// Who confirmed (operator name or token label).
    pub confirmed_by: String,
    /// CNC: stock loaded and work zero set.
    #[serde(default)]
    pub stock_loaded: bool,
}

/// `emergency_stop`: halt the machine now, ahead of anything queued.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EmergencyStop {
    /// The machine.
    pub machine: MachineId,
    /// Who asked.
    pub requested_by: String,
}

/// Messages on `…/{agent}/commands`, coordinator to agent.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
// Messages are decoded once and matched by value; boxing the big variant would only make
// receivers' patterns noisier.
#[allow(clippy::large_enum_variant)]
pub enum Command {
    /// Run a job.
    Assign(Assign),
    /// Cancel a job.
    Cancel(JobCommand),
    /// Pause a job.
    Pause(JobCommand),
    /// Resume a job.
    Resume(JobCommand),
    /// Confirm a machine ready.
    Clear(Clear),
    /// Emergency stop.
    EmergencyStop(EmergencyStop),
    /// A type this version does not know.
    #[serde(skip)]
    Unknown {
        /// Its `type` name.
        type_name: String,
    },
}
family!(Command {
    Assign(Assign) = "assign",
    Cancel(JobCommand) = "cancel",
    Pause(JobCommand) = "pause",
    Resume(JobCommand) = "resume",
    Clear(Clear) = "clear",
    EmergencyStop(EmergencyStop) = "emergency_stop",
});

// ---------------------------------------------------------------------------------------
// any

/// A message decoded according to the topic it arrived on.
#[derive(Debug, Clone, PartialEq)]
pub enum Inbound {
    /// From `…/status`.
    Status(Message<StatusBody>),
    /// From `…/machines/{m}/state`.
    State(Message<StateBody>),
    /// From `…/machines/{m}/telemetry`.
    Telemetry(Message<TelemetryBody>),
    /// From `…/events`.
    Event(Message<Event>),
    /// From `…/commands`.
    Command(Message<Command>),
}

impl Inbound {
    /// Decodes `payload` as the family its topic carries.
    pub fn decode(topic: &Topic, payload: &[u8]) -> Result<Inbound, DecodeError> {
        Ok(match topic.kind() {
            TopicKind::Status => Inbound::Status(Message::from_json(payload)?),
            TopicKind::MachineState => Inbound::State(Message::from_json(payload)?),
            TopicKind::Telemetry => Inbound::Telemetry(Message::from_json(payload)?),
            TopicKind::Events => Inbound::Event(Message::from_json(payload)?),
            TopicKind::Commands => Inbound::Command(Message::from_json(payload)?),
        })
    }

    /// The message id.
    pub fn id(&self) -> Uuid {
        match self {
            Inbound::Status(m) => m.id,
            Inbound::State(m) => m.id,
            Inbound::Telemetry(m) => m.id,
            Inbound::Event(m) => m.id,
            Inbound::Command(m) => m.id,
        }
    }

    /// The `type` name.
    pub fn type_name(&self) -> &str {
        match self {
            Inbound::Status(m) => m.body.type_name(),
            Inbound::State(m) => m.body.type_name(),
            Inbound::Telemetry(m) => m.body.type_name(),
            Inbound::Event(m) => m.body.type_name(),
            Inbound::Command(m) => m.body.type_name(),
        }
    }
}

/// A message ready to publish: topic, payload and delivery flags.
#[derive(Debug, Clone, PartialEq)]
pub struct Outbound {
    /// Where.
    pub topic: Topic,
    /// The JSON bytes.
    pub payload: Vec<u8>,
}

impl Outbound {
    /// Encodes `msg` for `topic`.
    pub fn new<B: Family>(topic: Topic, msg: &Message<B>) -> Self {
        Self {
            payload: msg.to_json(),
            topic,
        }
    }

    /// Agent status on its status topic.
    pub fn status(agent: &AgentId, msg: &Message<StatusBody>) -> Self {
        Self::new(Topic::Status(agent.clone()), msg)
    }
}
