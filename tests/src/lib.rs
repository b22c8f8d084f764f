//! Helpers that give MuniFab tests real services, and (under `tests/`) the end-to-end suite.
//!
//! # Layout
//!
//! - [`broker`]: a real MQTT broker for a test — an embedded rumqttd on a free loopback port,
//!   and Mosquitto (or any broker) at `MUNIFAB_TEST_MQTT_URL` when that variable is set.
//! - [`services`]: the environment variables CI sets, with the rule that a service CI asked
//!   for must be reachable: the test fails with a clear message, it never skips.
//! - [`process`]: the workspace's binaries (found in the test's own target directory, built
//!   if missing) run as child processes that are killed when the test ends or panics.
//! - [`http`]: a small HTTP/1.1 client for the coordinator's API (bearer tokens, JSON,
//!   multipart uploads).
//! - [`stack`]: a whole installation from those processes — coordinator, agents, virtual
//!   machines on ptys — on the embedded broker and SQLite, or on the configured services.
//!
//! The end-to-end suite itself is `tests/e2e/` (one test binary).
//!
//! Other crates use this crate as a dev-dependency; of ours it depends only on
//! `munifab-firmware-bridge`'s G-code helpers (without serial IO), and that crate does not use
//! this one, so there is no cycle.

pub mod broker;
pub mod http;
pub mod process;
pub mod services;
pub mod stack;
