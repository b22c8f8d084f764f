//! MuniFab agent: the workshop daemon. It joins the cooperative's broker, announces its
//! machines, runs the jobs it is assigned and keeps going when the network does not.
//!
//! # Layout
//!
//! - [`config`]: `agent.toml`, parsed strictly into validated [`config::Settings`].
//! - [`backoff`]: reconnect delays (capped exponential, jittered), pure.
//! - [`spool`]: the durable outbox of events (fsync'd files, removed on PUBACK).
//! - [`session`]: the one task that owns the MQTT connection, the spool and every publish.
//! - [`artifact`]: HTTP(S) downloads into a content-addressed cache, with Range resume.
//! - [`tls`]: rustls client configuration shared by MQTT and HTTP.
//! - [`job`]: pure job bookkeeping per machine (admission, sequence numbers, progress rate).
//! - [`machine`]: the one module that talks to the firmware bridge; one task per machine.
//! - [`worker`]: one task per machine running its jobs from download to the last line.
//! - [`agent`]: [`run`] wires session, workers and the command router; shutdown order.
//! - [`probe`]: serial port discovery and firmware identification for `probe` / `check`.

pub mod agent;
pub mod artifact;
pub mod backoff;
pub mod config;
pub mod job;
pub mod machine;
pub mod probe;
pub mod session;
pub mod spool;
pub mod tls;
pub mod worker;

pub use agent::{AgentError, run};
