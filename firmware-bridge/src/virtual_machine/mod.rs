//! Virtual machines: firmware-side simulators of Marlin 2.x and GRBL 1.1 that behave like the
//! real controllers — buffers, timing, temperatures and faults included — so hosts can be
//! tested and measured without hardware. They are part of the product (`munifab-bridge
//! simulate`, demos, benchmarks), not test mocks.
//!
//! # Layout
//!
//! - [`FirmwareCore`]: the sans-IO contract of a firmware: bytes in, lines out, time passed
//!   in, a record of executed commands. Implemented by [`Marlin`] (`marlin.rs`) and [`Grbl`]
//!   (`grbl.rs`).
//! - [`VirtualMachine`] (`machine.rs`): a core behind an emulated UART (`wire.rs`, bytes paced
//!   at baud/10 per second each way) with seeded fault injection (`faults.rs`). Still sans-IO.
//! - `planner.rs`, `thermal.rs`: motion and temperature models shared by the cores.
//! - With the `serial` feature: `runner.rs` puts a [`VirtualMachine`] on any byte stream in a
//!   tokio task and hands out a [`VmHandle`]; `pty.rs` opens a pseudo-terminal for it.

mod faults;
mod grbl;
mod machine;
mod marlin;
mod planner;
#[cfg(feature = "serial")]
mod pty;
#[cfg(feature = "serial")]
mod runner;
mod thermal;
mod wire;

use std::fmt;
use std::time::{Duration, Instant};

pub use faults::{Fault, FaultConfig};
pub use grbl::{Grbl, GrblConfig, normalize_grbl_line};
pub use machine::{FirmwareConfig, VirtualMachine, VmConfig, VmEvent, VmStats};
pub use marlin::{Marlin, MarlinConfig};
#[cfg(feature = "serial")]
pub use pty::{PtyLink, PtyOptions};
#[cfg(feature = "serial")]
pub use runner::{
    VmError, VmHandle, spawn_in_memory, spawn_on_pty, spawn_on_pty_with, spawn_on_stream,
};

/// One command a virtual machine executed, as its handler saw it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Executed {
    /// The line number the host put on the line (`N…`), if any.
    pub line: Option<u64>,
    /// The command text without line number, checksum, comments or line end.
    pub command: String,
}

/// The sans-IO contract of a virtual firmware.
///
/// Time only moves when the caller says so: `now` must never go backwards, and
/// [`FirmwareCore::handle_timeout`] must be called once [`FirmwareCore::poll_timeout`] is
/// reached for timed behaviour (moves, dwell, heating, keepalives, reports) to happen.
pub trait FirmwareCore: fmt::Debug + Send {
    /// Bytes that have just arrived at the controller's UART.
    fn handle_input(&mut self, now: Instant, bytes: &[u8]);
    /// Lets the firmware act on time passing.
    fn handle_timeout(&mut self, now: Instant);
    /// When the firmware next needs [`FirmwareCore::handle_timeout`], if ever.
    fn poll_timeout(&self) -> Option<Instant>;
    /// The next complete line the firmware prints, with its line end.
    fn poll_output(&mut self) -> Option<Vec<u8>>;
    /// How this firmware ends its lines (`\n` for Marlin, `\r\n` for GRBL).
    fn line_end(&self) -> &'static [u8];
    /// The machine's own protection fires: Marlin's thermal runaway protection kills it,
    /// GRBL's hard limit switch raises `ALARM:1`.
    fn trip(&mut self, now: Instant);
    /// A hardware reset (DTR pulse, watchdog, power): all state but the record is lost.
    fn reset(&mut self, now: Instant);
    /// Every command executed since power-on, in order, across resets.
    fn record(&self) -> &[Executed];
    /// Bytes lost because they arrived while the RX buffer was full (or while booting).
    fn rx_lost(&self) -> u64;
}

/// A configuration a virtual machine cannot run with.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum VmConfigError {
    /// A fault rate is not a probability.
    #[error("{name} must be between 0 and 1, got {value}")]
    Probability {
        /// The setting.
        name: &'static str,
        /// The rejected value.
        value: f64,
    },
    /// The speed factor is negative or not a number.
    #[error("speed factor must be a finite number >= 0 (0 = no delay), got {0}")]
    Speed(f64),
    /// GRBL refuses soft limits without homing (`$20=1` needs `$22=1`).
    #[error("soft limits need homing enabled")]
    SoftLimitsNeedHoming,
    /// A buffer or interval is too small for the firmware to work.
    #[error("{name} must be at least {min}, got {value}")]
    Size {
        /// The setting.
        name: &'static str,
        /// The rejected value.
        value: usize,
        /// The smallest accepted value.
        min: usize,
    },
}

fn validate_speed(speed: f64) -> Result<(), VmConfigError> {
    if speed.is_finite() && speed >= 0.0 {
        Ok(())
    } else {
        Err(VmConfigError::Speed(speed))
    }
}

/// Wall time for something that takes `seconds` on the real machine, at speed factor `speed`
/// (0 = instantaneous).
fn scaled(seconds: f64, speed: f64) -> Duration {
    if speed == 0.0 || !seconds.is_finite() || seconds <= 0.0 {
        return Duration::ZERO;
    }
    Duration::try_from_secs_f64(seconds / speed).unwrap_or(Duration::MAX)
}
