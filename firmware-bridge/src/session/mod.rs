//! Sans-IO host sessions: the host side of the Marlin and GRBL serial protocols.
//!
//! A session never touches a port, a task or a clock. The caller feeds it received bytes
//! (`handle_input`), expired deadlines (`handle_timeout`), job lines and commands, and drains
//! what it wants written (`poll_transmit`), what happened (`poll_event`) and when it next needs
//! to be woken (`poll_timeout`). The same driver loop serves both firmware families through the
//! [`Session`] trait.

pub mod detect;
pub mod grbl;
pub mod line;
pub mod marlin;
pub mod telemetry;
#[cfg(test)]
mod testkit;

use std::time::{Duration, Instant};

pub use telemetry::{GrblStatus, Heater, MachineState, Position, Telemetry};

/// A job or control command for a session, as sent over the transport's channel.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Begin streaming a job; lines then arrive through [`Session::push_job_line`].
    StartJob(JobOptions),
    /// Stop feeding job lines (GRBL also holds the motion with `!`).
    Pause,
    /// Continue a paused job.
    Resume,
    /// Stop feeding, then run the machine's end script.
    Cancel,
    /// Halt the machine now, ahead of everything queued.
    EmergencyStop,
    /// Send one line outside any job (console, probes).
    Send(String),
}

/// Per-job choices.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct JobOptions {
    /// GRBL only: run the job in check mode (`$C`), parsing without motion.
    pub dry_run: bool,
}

/// Something a session reports to its owner.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// The handshake finished; the firmware is ready for lines.
    Connected(FirmwareInfo),
    /// Temperatures, positions or a machine status report.
    Telemetry(Telemetry),
    /// A free-form firmware message (`echo:…`, `[MSG:…]`, `Error:…` that needs no action).
    Message(String),
    /// Every received line, only when the session is configured to report them (console).
    Line(String),
    /// The firmware asked for a host action (`//action:…`).
    HostAction(HostAction),
    /// The firmware asked for lines again from `line` (Marlin); a normal outcome on noisy links.
    Resend {
        /// The requested line number.
        line: u32,
    },
    /// The firmware refused a job line (GRBL `error:N`).
    LineRejected {
        /// Line of the job file (1-based), counting every line pushed.
        source_line: u64,
        /// The firmware's error code.
        code: u16,
        /// What the code means.
        meaning: &'static str,
    },
    /// A GRBL alarm (`ALARM:N`).
    Alarm {
        /// The alarm code.
        code: u16,
        /// What the code means.
        meaning: &'static str,
    },
    /// Feeding stopped on request.
    Paused,
    /// Feeding continued on request.
    Resumed,
    /// The firmware restarted on its own (`start` or a GRBL banner) while it was in use.
    FirmwareReset,
    /// The job reached its end, one way or another.
    JobFinished(JobOutcome),
    /// The link failed: no answer, or the firmware's requests can no longer be served.
    Failed(SessionError),
}

/// How a job ended.
#[derive(Debug, Clone, PartialEq)]
pub enum JobOutcome {
    /// Every line was acknowledged.
    Completed,
    /// Cancelled on request; the end script ran.
    Cancelled,
    /// The firmware rejected a line, alarmed or reset; the end script ran where possible.
    Failed(String),
    /// Stopped by an emergency stop.
    EmergencyStopped,
}

/// Host actions a Marlin firmware can request (`//action:<name>`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HostAction {
    /// The firmware asks the host to pause streaming.
    Pause,
    /// The firmware paused itself.
    Paused,
    /// The firmware asks the host to resume.
    Resume,
    /// The firmware resumed itself.
    Resumed,
    /// The firmware asks the host to cancel the job.
    Cancel,
    /// Any other action, with its text.
    Other(String),
}

/// What the handshake learned about the firmware.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct FirmwareInfo {
    /// Firmware name and version as reported (`FIRMWARE_NAME:` or the GRBL banner).
    pub name: String,
    /// Capability flags (`Cap:NAME:1`), GRBL option letters as `OPT:<letter>`.
    pub capabilities: Vec<(String, bool)>,
    /// Whether acknowledgements carry line numbers and buffer space (`ok N P B`).
    pub advanced_ok: bool,
    /// Receive buffer size in bytes the session uses.
    pub rx_buffer: usize,
}

impl FirmwareInfo {
    /// Whether the firmware reported capability `name` as enabled.
    pub fn has(&self, name: &str) -> bool {
        self.capabilities.iter().any(|(n, on)| *on && n == name)
    }
}

/// Why a session gave up on the link.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SessionError {
    /// Nothing answered the handshake.
    #[error("no answer from the firmware after {attempts} attempts")]
    NoHandshake {
        /// How many hellos or probes went unanswered.
        attempts: u32,
    },
    /// The firmware went silent and did not answer a probe.
    #[error("link stalled: no answer to a probe; last acknowledged job line {last_acked:?}")]
    Stalled {
        /// The last job line (file line) the firmware acknowledged.
        last_acked: Option<u64>,
    },
    /// The firmware keeps asking for a line that is no longer in the bounded history.
    #[error("firmware requested line {line}, which is older than the resend history")]
    HistoryExhausted {
        /// The requested line number.
        line: u32,
    },
    /// The firmware halted itself (kill, thermal runaway, M112).
    #[error("firmware halted: {0}")]
    Halted(String),
}

/// Why a job line or command was refused before reaching the wire.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CommandError {
    /// The link is not ready for that yet.
    #[error("the firmware is not ready: {0}")]
    NotReady(&'static str),
    /// A job is already running.
    #[error("a job is already running")]
    JobRunning,
    /// There is no job to pause, resume or cancel.
    #[error("no job is running")]
    NoJob,
    /// A line cannot be sent as is.
    #[error("line {source_line}: {reason}")]
    BadLine {
        /// Line of the job file (1-based), 0 for console lines.
        source_line: u64,
        /// Why it was refused.
        reason: String,
    },
}

/// Counters of one session, for summaries and benchmarks.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Stats {
    /// Job lines put on the wire at least once.
    pub job_lines_sent: u64,
    /// Job lines the firmware acknowledged.
    pub job_lines_acked: u64,
    /// Every byte handed out by `poll_transmit`, retransmissions included.
    pub bytes_sent: u64,
    /// Resend requests acted upon (Marlin).
    pub resends: u64,
    /// Lines put on the wire again after a resend request or a probe.
    pub retransmitted_lines: u64,
    /// Error lines received.
    pub errors: u64,
    /// Probes sent after silence.
    pub probes: u64,
}

/// The common face of the Marlin and GRBL sessions, for drivers that serve both.
pub trait Session {
    /// Feed bytes received from the firmware.
    fn handle_input(&mut self, now: Instant, bytes: &[u8]);
    /// Tell the session that time has passed (call at or after [`Session::poll_timeout`]).
    fn handle_timeout(&mut self, now: Instant);
    /// Apply a job or control command.
    fn handle_command(&mut self, now: Instant, command: Command) -> Result<(), CommandError>;
    /// Next bytes to write, most urgent first (an emergency stop beats anything queued).
    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>>;
    /// Next event for the owner.
    fn poll_event(&mut self) -> Option<Event>;
    /// When the session next needs [`Session::handle_timeout`].
    fn poll_timeout(&self) -> Option<Instant>;
    /// Whether the running job wants another line now.
    fn wants_job_line(&self) -> bool;
    /// Add the next line of the running job (raw file text, comments allowed).
    fn push_job_line(&mut self, raw: &str) -> Result<(), CommandError>;
    /// Say that the job file has no more lines.
    fn end_job_input(&mut self);
    /// Counters so far.
    fn stats(&self) -> Stats;
    /// Whether the handshake finished and the link is usable.
    fn is_ready(&self) -> bool;
    /// The last job line (file line) the firmware acknowledged.
    fn last_acked_job_line(&self) -> Option<u64>;
}

/// How many staged job lines a session keeps ahead of the wire: enough to refill the window
/// at once, small enough that the file is never held in memory.
pub(crate) const STAGE_DEPTH: usize = 32;

/// Smoothed round-trip estimate used to shorten the probe timer after a resend.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RttEstimate {
    smoothed: Option<Duration>,
}

impl RttEstimate {
    pub(crate) const fn new() -> Self {
        Self { smoothed: None }
    }

    pub(crate) fn sample(&mut self, rtt: Duration) {
        self.smoothed = Some(match self.smoothed {
            None => rtt,
            Some(s) => (s * 7 + rtt) / 8,
        });
    }

    pub(crate) fn get(&self) -> Option<Duration> {
        self.smoothed
    }
}
