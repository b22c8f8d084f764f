//! MuniFab firmware bridge: everything between a G-code file and a machine's firmware.
//!
//! # Layout
//!
//! - [`gcode`]: streaming G-code analysis, machine profiles and validation (no IO, no
//!   tokio; builds without the `serial` feature).
//! - [`session`]: sans-IO host sessions for Marlin ([`session::marlin`]) and GRBL
//!   ([`session::grbl`]): bytes, commands and time in; bytes, events and deadlines out.
//!   Shared line handling in [`session::line`], parsed reports in [`session::telemetry`].
//! - `transport` (feature `serial`): one tokio task owns a serial port, pty or in-memory
//!   stream and drives a session with it; cloneable handles talk to it over channels.
//! - [`virtual_machine`]: firmware-side simulators of Marlin 2.x and GRBL 1.1 (sans-IO
//!   cores, an emulated UART with fault injection) and, with the `serial` feature, runners
//!   that put them on a pseudo-terminal or an in-memory stream.

pub mod gcode;
pub mod session;
#[cfg(feature = "serial")]
pub mod transport;
pub mod virtual_machine;
