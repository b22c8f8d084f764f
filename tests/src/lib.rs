//! Helpers that give MuniFab tests real services, and (under `tests/`) the end-to-end suite.
//!
//! # Layout
//!
//! - [`broker`]: a real MQTT broker for a test — an embedded rumqttd on a free loopback port,
//!   and Mosquitto (or any broker) at `MUNIFAB_TEST_MQTT_URL` when that variable is set.
//! - [`services`]: the environment variables CI sets, with the rule that a service CI asked
//!   for must be reachable: the test fails with a clear message, it never skips.
//!
//! Other crates use this crate as a dev-dependency; it depends on none of them, so there is
//! no cycle.

pub mod broker;
pub mod services;
