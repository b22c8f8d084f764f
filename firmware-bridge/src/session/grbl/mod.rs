//! The GRBL 1.1 host session (grblHAL and FluidNC speak the same protocol).
//!
//! # Character counting
//!
//! GRBL answers every line with exactly one `ok` or `error:N`, in order, and keeps unparsed
//! bytes in an RX ring (128 bytes, 127 usable, on the classic AVR build). The session records
//! the raw length of every line it writes and never lets the sum of unanswered lengths exceed
//! the RX capacity — learned from `Bf:` when a status report arrives with nothing in flight, or
//! from `[OPT:…]`. Real-time bytes (`?`, `!`, `~`, `0x18`) are picked out of the stream by
//! GRBL's interrupt and never occupy the ring, so they bypass the count and go out first.
//!
//! Commands that write EEPROM (`$x=`, `G10 L2`, `G28.1`…) stall GRBL's serial interrupt on AVR,
//! so they go out alone: the session waits for everything before them to be answered and sends
//! nothing after them until they are.
//!
//! # Stopping
//!
//! An `error:N` on a job line stops the feed, reports the file line and runs the end script.
//! Cancel holds the motion (`!`), waits for the hold to complete, soft-resets (`0x18`, which also
//! stops the spindle and flushes GRBL's buffers) and then runs the end script. An emergency stop
//! is the soft reset alone, handed out before anything else.

pub mod codes;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use self::codes::{alarm_meaning, error_meaning};
use crate::session::line::{self, LineSplitter};
use crate::session::telemetry::{MachineState, parse_grbl_status};
use crate::session::{
    Command, CommandError, Event, FirmwareInfo, JobOutcome, STAGE_DEPTH, Session, SessionError,
    Stats, Telemetry,
};

/// Soft reset, GRBL's emergency stop.
pub const SOFT_RESET: u8 = 0x18;

/// How lines are metered into GRBL.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GrblFlow {
    /// Fill the RX buffer, counting bytes (fast).
    CharacterCounting,
    /// One line, then its answer (GRBL's simple protocol).
    SendResponse,
}

/// Settings of a GRBL session. Plain data; `Default` matches GRBL 1.1 on an AVR.
#[derive(Debug, Clone, PartialEq)]
pub struct GrblConfig {
    /// Streaming protocol.
    pub flow: GrblFlow,
    /// Usable RX buffer bytes until the firmware tells otherwise.
    pub rx_buffer: usize,
    /// Longest line GRBL accepts (79 on GRBL, 255 on grblHAL).
    pub max_line: usize,
    /// Send a soft reset at connect instead of trusting whatever state the machine is in.
    pub reset_on_connect: bool,
    /// How long to wait for the welcome banner before probing with `$I`.
    pub wait_for_banner: Duration,
    /// `$I` probes before giving up.
    pub probe_attempts: u32,
    /// Status poll interval; GRBL advises at most 5 Hz, so shorter values are raised to 200 ms.
    pub status_interval: Option<Duration>,
    /// Silence before a `?` probe, and after it before the link is declared stalled.
    pub silence_timeout: Duration,
    /// How long a cancel waits for the feed hold to complete before resetting anyway.
    pub hold_timeout: Duration,
    /// Lines sent after a cancel or failure (spindle and coolant off).
    pub end_script: Vec<String>,
    /// Report every received line as [`Event::Line`] (for a console).
    pub report_lines: bool,
}

impl Default for GrblConfig {
    fn default() -> Self {
        Self {
            flow: GrblFlow::CharacterCounting,
            rx_buffer: 127,
            max_line: 79,
            reset_on_connect: true,
            wait_for_banner: Duration::from_millis(2500),
            probe_attempts: 3,
            status_interval: Some(Duration::from_millis(200)),
            silence_timeout: Duration::from_secs(3),
            hold_timeout: Duration::from_secs(10),
            end_script: ["M5", "M9"].map(String::from).to_vec(),
            report_lines: false,
        }
    }
}

/// Fastest status polling GRBL's documentation advises.
const MIN_STATUS_INTERVAL: Duration = Duration::from_millis(200);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    /// Waiting for the welcome banner (after open or after our own reset).
    AwaitingBanner {
        until: Instant,
        identify: bool,
    },
    /// `$I` sent, waiting for its answer.
    Identifying {
        attempts: u32,
        retry_at: Instant,
    },
    Ready,
    Failed,
}

#[derive(Debug, Clone, PartialEq)]
enum Job {
    Idle,
    Streaming {
        paused: bool,
        input_done: bool,
        dry_run: bool,
    },
    /// Cancel: `!` sent, waiting for the hold to complete.
    Holding {
        outcome: JobOutcome,
        until: Instant,
    },
    /// `0x18` sent, waiting for the banner.
    Resetting {
        outcome: JobOutcome,
        until: Instant,
    },
    /// Leaving check mode: the second `$C` soft-resets GRBL.
    LeavingCheck {
        outcome: JobOutcome,
        until: Instant,
    },
    EndScript {
        outcome: JobOutcome,
        remaining: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Identify,
    Job { source_line: u64 },
    CheckMode,
    EndScript,
    Control,
}

#[derive(Debug, Clone, Copy)]
struct InFlight {
    len: usize,
    kind: Kind,
    eeprom: bool,
    sent_at: Instant,
}

/// Host side of the GRBL protocol. See the module documentation for the design.
#[derive(Debug)]
pub struct GrblSession {
    config: GrblConfig,
    phase: Phase,
    job: Job,
    splitter: LineSplitter,
    in_flight: VecDeque<InFlight>,
    used: usize,
    capacity: usize,
    control: VecDeque<(String, Kind)>,
    staged: VecDeque<(String, u64)>,
    source_lines: u64,
    reset_now: bool,
    realtime: VecDeque<u8>,
    events: VecDeque<Event>,
    info: FirmwareInfo,
    last_rx: Instant,
    probe_sent: Option<Instant>,
    next_status: Option<Instant>,
    last_acked_job: Option<u64>,
    job_lines: u64,
    clock: Instant,
    stats: Stats,
}

impl GrblSession {
    /// A session for a port that was just opened at `now`.
    pub fn new(config: GrblConfig, now: Instant) -> Self {
        let capacity = config.rx_buffer;
        Self {
            phase: Phase::AwaitingBanner {
                until: now + config.wait_for_banner,
                identify: true,
            },
            reset_now: config.reset_on_connect,
            config,
            job: Job::Idle,
            splitter: LineSplitter::default(),
            in_flight: VecDeque::new(),
            used: 0,
            capacity,
            control: VecDeque::new(),
            staged: VecDeque::new(),
            source_lines: 0,
            realtime: VecDeque::new(),
            events: VecDeque::new(),
            info: FirmwareInfo {
                rx_buffer: capacity,
                ..FirmwareInfo::default()
            },
            last_rx: now,
            probe_sent: None,
            next_status: None,
            last_acked_job: None,
            job_lines: 0,
            clock: now,
            stats: Stats::default(),
        }
    }

    /// What the handshake learned.
    pub fn firmware(&self) -> &FirmwareInfo {
        &self.info
    }

    /// Bytes written and not yet answered; never more than the RX capacity.
    pub fn unacknowledged_bytes(&self) -> usize {
        self.used
    }

    /// The RX capacity in use.
    pub fn rx_capacity(&self) -> usize {
        self.capacity
    }

    fn status_interval(&self) -> Option<Duration> {
        self.config
            .status_interval
            .map(|i| i.max(MIN_STATUS_INTERVAL))
    }

    fn forget_in_flight(&mut self) {
        self.in_flight.clear();
        self.used = 0;
    }

    /// After a reset the firmware lost everything buffered; what was ours is gone too.
    fn on_banner(&mut self, now: Instant, banner: &str) {
        self.forget_in_flight();
        self.splitter.clear();
        self.info.name = banner.to_owned();
        match self.phase {
            Phase::AwaitingBanner { identify: true, .. } | Phase::Identifying { .. } => {
                self.control.clear();
                self.control.push_back(("$I".into(), Kind::Identify));
                self.phase = Phase::Identifying {
                    attempts: 1,
                    retry_at: now + self.config.wait_for_banner,
                };
                return;
            }
            Phase::AwaitingBanner {
                identify: false, ..
            } => {
                self.phase = Phase::Ready;
                return;
            }
            Phase::Failed => return,
            Phase::Ready => {}
        }
        match std::mem::replace(&mut self.job, Job::Idle) {
            Job::Resetting { outcome, .. } => self.run_end_script(outcome),
            Job::LeavingCheck { outcome, .. } => {
                self.events.push_back(Event::JobFinished(outcome));
            }
            Job::Idle => self.events.push_back(Event::FirmwareReset),
            Job::EndScript { .. } | Job::Streaming { .. } | Job::Holding { .. } => {
                self.staged.clear();
                self.control.clear();
                self.events.push_back(Event::FirmwareReset);
                self.events.push_back(Event::JobFinished(JobOutcome::Failed(
                    "the controller reset during the job".into(),
                )));
            }
        }
    }

    fn run_end_script(&mut self, outcome: JobOutcome) {
        let script = self.config.end_script.clone();
        let remaining = script.len();
        for text in script {
            self.control.push_back((text, Kind::EndScript));
        }
        self.job = Job::EndScript { outcome, remaining };
        self.check_job_end();
    }

    fn check_job_end(&mut self) {
        let now = self.clock;
        match &self.job {
            Job::Streaming {
                input_done: true,
                dry_run,
                ..
            } if self.staged.is_empty() && self.stats.job_lines_acked == self.job_lines => {
                if *dry_run {
                    self.control.push_back(("$C".into(), Kind::CheckMode));
                    self.job = Job::LeavingCheck {
                        outcome: JobOutcome::Completed,
                        until: now + self.config.wait_for_banner,
                    };
                } else {
                    self.job = Job::Idle;
                    self.events
                        .push_back(Event::JobFinished(JobOutcome::Completed));
                }
            }
            Job::EndScript {
                outcome,
                remaining: 0,
            } => {
                let outcome = outcome.clone();
                self.job = Job::Idle;
                self.events.push_back(Event::JobFinished(outcome));
            }
            _ => {}
        }
    }

    /// A job line was refused or the machine alarmed: stop feeding and make it safe.
    fn fail_job(&mut self, now: Instant, reason: String) {
        self.staged.clear();
        let outcome = JobOutcome::Failed(reason);
        match self.job {
            Job::Streaming { dry_run: true, .. } => {
                self.control.push_back(("$C".into(), Kind::CheckMode));
                self.job = Job::LeavingCheck {
                    outcome,
                    until: now + self.config.wait_for_banner,
                };
            }
            Job::Streaming { .. } => self.run_end_script(outcome),
            _ => {}
        }
    }

    fn fail(&mut self, error: SessionError) {
        if self.phase == Phase::Failed {
            return;
        }
        self.phase = Phase::Failed;
        if !matches!(self.job, Job::Idle) {
            self.job = Job::Idle;
            self.events
                .push_back(Event::JobFinished(JobOutcome::Failed(error.to_string())));
        }
        self.events.push_back(Event::Failed(error));
    }

    fn on_line(&mut self, now: Instant, text: &str) {
        if self.config.report_lines {
            self.events.push_back(Event::Line(text.to_owned()));
        }
        if text == "ok" {
            self.on_answer(now, None);
        } else if let Some(code) = text.strip_prefix("error:") {
            self.stats.errors += 1;
            self.on_answer(now, Some(code.trim().parse().unwrap_or(0)));
        } else if let Some(code) = text.strip_prefix("ALARM:") {
            self.on_alarm(now, code.trim().parse().unwrap_or(0));
        } else if text.starts_with('<') {
            if let Some(status) = parse_grbl_status(text) {
                self.on_status(now, &status);
                self.events
                    .push_back(Event::Telemetry(Telemetry::Status(status)));
            }
        } else if text.starts_with("Grbl") {
            self.on_banner(now, text);
        } else if let Some(opt) = text.strip_prefix("[OPT:").and_then(|t| t.strip_suffix(']')) {
            self.on_options(opt);
        } else if let Some(msg) = text.strip_prefix("[MSG:").and_then(|t| t.strip_suffix(']')) {
            self.events.push_back(Event::Message(msg.to_owned()));
        } else if text.starts_with("[VER:") {
            self.info.capabilities.push((text.to_owned(), true));
        } else if self.phase == Phase::Ready {
            self.events.push_back(Event::Message(text.to_owned()));
        }
    }

    fn on_options(&mut self, opt: &str) {
        let mut parts = opt.split(',');
        if let Some(letters) = parts.next() {
            for c in letters.chars() {
                self.info.capabilities.push((format!("OPT:{c}"), true));
            }
        }
        // 1.1f+ appends planner blocks and RX bytes; one byte of the ring stays unused.
        if let (Some(_), Some(Ok(rx))) = (parts.next(), parts.next().map(str::parse::<usize>))
            && rx > 1
        {
            self.capacity = rx - 1;
            self.info.rx_buffer = self.capacity;
        }
    }

    fn on_answer(&mut self, now: Instant, error: Option<u16>) {
        let Some(done) = self.in_flight.pop_front() else {
            return;
        };
        self.used -= done.len;
        match done.kind {
            Kind::Identify => {
                self.phase = Phase::Ready;
                self.next_status = self.status_interval().map(|i| now + i);
                self.events.push_back(Event::Connected(self.info.clone()));
            }
            Kind::Job { source_line } => {
                self.stats.job_lines_acked += 1;
                match error {
                    None => self.last_acked_job = Some(source_line),
                    Some(code) => {
                        let meaning = error_meaning(code);
                        self.events.push_back(Event::LineRejected {
                            source_line,
                            code,
                            meaning,
                        });
                        if matches!(self.job, Job::Streaming { .. }) {
                            self.fail_job(
                                now,
                                format!("line {source_line}: error:{code} ({meaning})"),
                            );
                        }
                    }
                }
            }
            Kind::EndScript => {
                if let Job::EndScript { remaining, .. } = &mut self.job {
                    *remaining = remaining.saturating_sub(1);
                }
            }
            Kind::CheckMode | Kind::Control => {
                if let Some(code) = error {
                    self.events.push_back(Event::Message(format!(
                        "error:{code} ({})",
                        error_meaning(code)
                    )));
                }
            }
        }
        self.check_job_end();
    }

    fn on_alarm(&mut self, now: Instant, code: u16) {
        let meaning = alarm_meaning(code);
        self.events.push_back(Event::Alarm { code, meaning });
        // An alarm resets GRBL's buffers: whatever was unanswered will never be answered.
        self.forget_in_flight();
        match self.job {
            Job::Streaming { .. } | Job::EndScript { .. } => {
                self.staged.clear();
                self.control.retain(|(_, k)| *k != Kind::EndScript);
                self.job = Job::Idle;
                self.events
                    .push_back(Event::JobFinished(JobOutcome::Failed(format!(
                        "ALARM:{code} ({meaning})"
                    ))));
            }
            _ => {}
        }
        let _ = now;
    }

    fn on_status(&mut self, now: Instant, status: &crate::session::GrblStatus) {
        if let Some((_, rx)) = status.buffer {
            let rx = rx as usize;
            if self.in_flight.is_empty() && rx > 0 {
                self.capacity = rx;
                self.info.rx_buffer = rx;
            } else if status.state == MachineState::Idle
                && rx >= self.capacity
                && self.in_flight.front().is_some_and(|f| {
                    now.saturating_duration_since(f.sent_at) > self.config.silence_timeout
                })
            {
                // Idle with an empty RX ring long after we sent: the answers were lost on the way.
                let lost = self.in_flight.len();
                self.forget_in_flight();
                self.events.push_back(Event::Message(format!(
                    "{lost} answers lost on the link; buffer accounting resynchronised"
                )));
            }
        }
        if let Job::Holding { outcome, .. } = &self.job
            && matches!(
                status.state,
                MachineState::Hold { complete: true } | MachineState::Idle
            )
        {
            let outcome = outcome.clone();
            self.soft_reset_for(now, outcome);
        }
    }

    fn soft_reset_for(&mut self, now: Instant, outcome: JobOutcome) {
        self.reset_now = true;
        self.forget_in_flight();
        self.control.clear();
        self.job = Job::Resetting {
            outcome,
            until: now + self.config.wait_for_banner,
        };
    }

    fn window_allows(&self, len: usize, eeprom: bool) -> bool {
        if self.in_flight.iter().any(|f| f.eeprom) {
            return false;
        }
        if self.in_flight.is_empty() {
            return true;
        }
        if eeprom || self.config.flow == GrblFlow::SendResponse {
            return false;
        }
        self.used + len <= self.capacity
    }

    fn next_text(&self) -> Option<(String, Kind)> {
        if let Some(c) = self.control.front() {
            return Some(c.clone());
        }
        if self.phase != Phase::Ready {
            return None;
        }
        match self.job {
            Job::Streaming { paused: false, .. } => self
                .staged
                .front()
                .map(|(t, s)| (t.clone(), Kind::Job { source_line: *s })),
            _ => None,
        }
    }

    fn silence_deadline(&self) -> Option<Instant> {
        if self.phase != Phase::Ready {
            return None;
        }
        if let Some(sent) = self.probe_sent {
            return Some(sent + self.config.silence_timeout);
        }
        let waiting = !self.in_flight.is_empty() || self.next_status.is_some();
        waiting.then_some(self.last_rx + self.config.silence_timeout)
    }

    fn job_deadline(&self) -> Option<Instant> {
        match self.job {
            Job::Holding { until, .. }
            | Job::Resetting { until, .. }
            | Job::LeavingCheck { until, .. } => Some(until),
            _ => None,
        }
    }
}

/// Whether GRBL writes EEPROM for this line (send it alone, never character-counted).
pub fn writes_eeprom(text: &str) -> bool {
    let compact: String = text
        .chars()
        .filter(|c| !c.is_whitespace())
        .map(|c| c.to_ascii_uppercase())
        .collect();
    if compact.starts_with('$') {
        return compact.contains('=') && !compact.starts_with("$J=");
    }
    let g10 = compact.contains("G10") && (compact.contains("L2") || compact.contains("L20"));
    g10 || compact.contains("G28.1") || compact.contains("G30.1")
}

/// The line without its `( … )` comments (an unclosed one runs to the end of the line), as
/// GRBL itself would drop them. CAM programs put long ones in their headers: sent as they
/// are, they would overflow the line limit and waste the character-counted RX buffer.
fn without_comments(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut in_comment = false;
    for c in text.chars() {
        match c {
            '(' if !in_comment => in_comment = true,
            ')' if in_comment => in_comment = false,
            _ if in_comment => {}
            c => out.push(c),
        }
    }
    out.trim().to_string()
}

fn check_sendable(text: &str, max_line: usize, source_line: u64) -> Result<(), CommandError> {
    let bad = |reason: String| CommandError::BadLine {
        source_line,
        reason,
    };
    if text.len() > max_line {
        return Err(bad(format!(
            "longer than the controller's {max_line}-character line buffer"
        )));
    }
    if let Some(c) = text
        .bytes()
        .find(|b| matches!(b, b'?' | b'!' | b'~') || b.is_ascii_control() || !b.is_ascii())
    {
        return Err(bad(format!(
            "contains byte 0x{c:02x}, which GRBL would take as a real-time command"
        )));
    }
    Ok(())
}

impl Session for GrblSession {
    fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        self.clock = self.clock.max(now);
        if bytes.is_empty() {
            return;
        }
        self.last_rx = now;
        self.probe_sent = None;
        let mut lines = Vec::new();
        self.splitter.push(bytes, |l| lines.push(l.to_owned()));
        for l in lines {
            self.on_line(now, &l);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.clock = self.clock.max(now);
        match self.phase {
            Phase::AwaitingBanner { until, identify } if now >= until => {
                if identify {
                    self.control.clear();
                    self.control.push_back(("$I".into(), Kind::Identify));
                    self.phase = Phase::Identifying {
                        attempts: 1,
                        retry_at: now + self.config.wait_for_banner,
                    };
                } else {
                    self.phase = Phase::Ready;
                }
            }
            Phase::Identifying { attempts, retry_at } if now >= retry_at => {
                if attempts >= self.config.probe_attempts {
                    self.fail(SessionError::NoHandshake { attempts });
                } else {
                    // GRBL answers every line, so a second `$I` while the first is unanswered
                    // would leave one `ok` too many and shift every later answer onto the
                    // wrong line. Ask for a status report instead: it needs no answer slot.
                    if self.in_flight.is_empty() && self.control.is_empty() {
                        self.control.push_back(("$I".into(), Kind::Identify));
                    } else {
                        self.realtime.push_back(b'?');
                    }
                    self.phase = Phase::Identifying {
                        attempts: attempts + 1,
                        retry_at: now + self.config.wait_for_banner,
                    };
                }
            }
            Phase::Ready => {
                if let Some(deadline) = self.silence_deadline()
                    && now >= deadline
                {
                    if self.probe_sent.is_some() {
                        self.fail(SessionError::Stalled {
                            last_acked: self.last_acked_job,
                        });
                        return;
                    }
                    self.stats.probes += 1;
                    self.probe_sent = Some(now);
                    self.realtime.push_back(b'?');
                }
                if let Some(at) = self.next_status
                    && now >= at
                {
                    if !self.realtime.contains(&b'?') {
                        self.realtime.push_back(b'?');
                    }
                    self.next_status = self.status_interval().map(|i| now + i);
                }
                if let Some(until) = self.job_deadline()
                    && now >= until
                {
                    match std::mem::replace(&mut self.job, Job::Idle) {
                        Job::Holding { outcome, .. } => self.soft_reset_for(now, outcome),
                        Job::Resetting { outcome, .. } => self.run_end_script(outcome),
                        Job::LeavingCheck { outcome, .. } => {
                            self.events.push_back(Event::JobFinished(outcome));
                        }
                        other => self.job = other,
                    }
                }
                if matches!(self.job, Job::Holding { .. }) && self.next_status.is_none() {
                    self.realtime.push_back(b'?');
                }
            }
            _ => {}
        }
    }

    fn handle_command(&mut self, now: Instant, command: Command) -> Result<(), CommandError> {
        self.clock = self.clock.max(now);
        match command {
            Command::EmergencyStop => {
                let was_running = !matches!(self.job, Job::Idle);
                self.staged.clear();
                self.control.clear();
                self.realtime.clear();
                self.forget_in_flight();
                self.reset_now = true;
                self.job = Job::Idle;
                if was_running {
                    self.events
                        .push_back(Event::JobFinished(JobOutcome::EmergencyStopped));
                }
                if self.phase == Phase::Ready {
                    self.phase = Phase::AwaitingBanner {
                        until: now + self.config.wait_for_banner,
                        identify: false,
                    };
                }
                Ok(())
            }
            Command::StartJob(options) => {
                if self.phase != Phase::Ready {
                    return Err(CommandError::NotReady("handshake not finished"));
                }
                if !matches!(self.job, Job::Idle) {
                    return Err(CommandError::JobRunning);
                }
                if options.dry_run {
                    self.control.push_back(("$C".into(), Kind::CheckMode));
                }
                self.job = Job::Streaming {
                    paused: false,
                    input_done: false,
                    dry_run: options.dry_run,
                };
                self.source_lines = 0;
                self.job_lines = 0;
                self.stats.job_lines_acked = 0;
                self.stats.job_lines_sent = 0;
                self.last_acked_job = None;
                Ok(())
            }
            Command::Pause | Command::Resume => {
                let pause = command == Command::Pause;
                match &mut self.job {
                    Job::Streaming { paused, .. } => {
                        if *paused != pause {
                            *paused = pause;
                            self.realtime.push_back(if pause { b'!' } else { b'~' });
                            self.events.push_back(if pause {
                                Event::Paused
                            } else {
                                Event::Resumed
                            });
                        }
                        Ok(())
                    }
                    _ => Err(CommandError::NoJob),
                }
            }
            Command::Cancel => match self.job {
                Job::Streaming { .. } => {
                    self.staged.clear();
                    self.realtime.push_back(b'!');
                    self.realtime.push_back(b'?');
                    self.job = Job::Holding {
                        outcome: JobOutcome::Cancelled,
                        until: now + self.config.hold_timeout,
                    };
                    Ok(())
                }
                _ => Err(CommandError::NoJob),
            },
            Command::Send(text) => {
                if self.phase != Phase::Ready {
                    return Err(CommandError::NotReady("handshake not finished"));
                }
                match text.trim() {
                    "?" => self.realtime.push_back(b'?'),
                    "!" => self.realtime.push_back(b'!'),
                    "~" => self.realtime.push_back(b'~'),
                    _ => {
                        let cleaned = line::clean(&text).ok_or_else(|| CommandError::BadLine {
                            source_line: 0,
                            reason: "nothing to send".into(),
                        })?;
                        check_sendable(cleaned, self.config.max_line, 0)?;
                        self.control.push_back((cleaned.to_owned(), Kind::Control));
                    }
                }
                Ok(())
            }
        }
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        self.clock = self.clock.max(now);
        if std::mem::take(&mut self.reset_now) {
            self.stats.bytes_sent += 1;
            return Some(vec![SOFT_RESET]);
        }
        if !self.realtime.is_empty() {
            let bytes: Vec<u8> = self.realtime.drain(..).collect();
            self.stats.bytes_sent += bytes.len() as u64;
            return Some(bytes);
        }
        if matches!(self.phase, Phase::Failed | Phase::AwaitingBanner { .. }) {
            return None;
        }
        let (text, kind) = self.next_text()?;
        let len = text.len() + 1;
        let eeprom = writes_eeprom(&text) || kind == Kind::CheckMode;
        if !self.window_allows(len, eeprom) {
            return None;
        }
        if matches!(kind, Kind::Job { .. }) {
            self.staged.pop_front();
            self.job_lines += 1;
            self.stats.job_lines_sent += 1;
        } else {
            self.control.pop_front();
        }
        self.in_flight.push_back(InFlight {
            len,
            kind,
            eeprom,
            sent_at: now,
        });
        self.used += len;
        self.stats.bytes_sent += len as u64;
        let mut bytes = text.into_bytes();
        bytes.push(b'\n');
        Some(bytes)
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::AwaitingBanner { until, .. } => Some(until),
            Phase::Identifying { retry_at, .. } => Some(retry_at),
            Phase::Ready => self.silence_deadline(),
            Phase::Failed => None,
        };
        let ready = self.phase == Phase::Ready;
        [
            phase,
            self.next_status.filter(|_| ready),
            self.job_deadline().filter(|_| ready),
        ]
        .into_iter()
        .flatten()
        .min()
    }

    fn wants_job_line(&self) -> bool {
        matches!(
            self.job,
            Job::Streaming {
                paused: false,
                input_done: false,
                ..
            }
        ) && self.staged.len() < STAGE_DEPTH
    }

    fn push_job_line(&mut self, raw: &str) -> Result<(), CommandError> {
        if !matches!(
            self.job,
            Job::Streaming {
                input_done: false,
                ..
            }
        ) {
            return Err(CommandError::NoJob);
        }
        self.source_lines += 1;
        let source_line = self.source_lines;
        let Some(cleaned) = line::clean(raw) else {
            return Ok(());
        };
        let cleaned = without_comments(cleaned);
        if cleaned.is_empty() {
            return Ok(());
        }
        check_sendable(&cleaned, self.config.max_line, source_line)?;
        self.staged.push_back((cleaned, source_line));
        Ok(())
    }

    fn end_job_input(&mut self) {
        if let Job::Streaming { input_done, .. } = &mut self.job {
            *input_done = true;
        }
        self.check_job_end();
    }

    fn stats(&self) -> Stats {
        self.stats
    }

    fn is_ready(&self) -> bool {
        self.phase == Phase::Ready
    }

    fn last_acked_job_line(&self) -> Option<u64> {
        self.last_acked_job
    }
}

#[cfg(test)]
mod tests;
