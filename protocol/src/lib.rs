//! MuniFab wire contract, version 1: the MQTT topics and messages spoken between the
//! coordinator and the agents. No IO: this crate only builds, parses, encodes, decodes and
//! signs. `docs/protocol.md` is the human description; its examples are checked against
//! this crate by a test.
//!
//! # Layout
//!
//! - [`ids`]: validated agent, machine and job ids (ids become topic levels).
//! - [`topic`]: the five topic kinds, their QoS and retain flags, parser and filters.
//! - [`model`]: capabilities of machines, requirements of jobs, and the fit check.
//! - [`message`]: the envelope and every message family, JSON encode/decode.
//! - [`auth`]: end-to-end HMAC signatures on payloads.

pub mod auth;
pub mod ids;
pub mod message;
pub mod model;
pub mod topic;

pub use auth::{AuthError, SigningKey};
pub use ids::{AgentId, IdError, JobId, MachineId};
pub use message::{
    AgentStatus, AnalysisSummary, Artifact, Assign, Clear, Command, CommandError, Completed,
    CurrentJob, DecodeError, EmergencyStop, Event, Failed, Family, Finding, Inbound, JobCommand,
    JobRef, JobSummary, MachineState, MachineStatus, Message, Outbound, Presence, Progress,
    RejectReason, Rejected, Severity, StateBody, StatusBody, Telemetry, TelemetryBody, Temperature,
    Transferring,
};
pub use model::{Box3, Capabilities, Firmware, Flavour, Process, Requirements, Unmet, Vec3};
pub use topic::{Qos, Topic, TopicError, TopicKind};
