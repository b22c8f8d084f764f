//! The Marlin host session (also Prusa firmware and RepRapFirmware in Marlin mode).
//!
//! # How lines travel
//!
//! Every line the session sends, job or control, is numbered and checksummed
//! (`N<n> <cmd>*<cs>`), so the firmware itself guarantees that no line runs twice: it accepts
//! `N<k>` only right after `N<k-1>`. Our part is to always, eventually, send the line it asks
//! for. Emergency commands (`M112`) are the one exception: unnumbered, so the firmware's
//! emergency parser recognises them, and handed out before anything else.
//!
//! The numbered lines live in one bounded `history` deque, split by two indices:
//!
//! ```text
//! [0, acked)        acknowledged, kept so a late resend request can still be served
//! [acked, cursor)   on the wire or in the firmware's buffers, waiting for `ok`
//! [cursor, len)     to be sent again after a resend request
//! ```
//!
//! New lines enter the history only when the send window has room, so it never holds more than
//! the window plus the kept tail; the job file is pulled a few lines at a time.
//!
//! # Why the window is safe
//!
//! Marlin reads its RX ring into the command queue only while the queue has a free slot (and
//! no handler is running), so every unacknowledged line is either in the queue, in the RX
//! ring or on the wire, and only the RX ring can overflow. A plain `ok` does not say where
//! the lines behind it are, so the session counts every unacknowledged byte against the RX
//! ring (127 bytes unless configured) and, conservatively, at most `command_buffer` lines.
//!
//! With `ADVANCED_OK`, `ok N<k> P<p> B<b>` is the firmware's exact view: `b` command slots are
//! free while line `k` still holds one, so the `BUFSIZE - b - 1` lines after `k` have already
//! left the RX ring for the queue (`BUFSIZE` is the largest `b + 1` seen). Those lines are no
//! longer counted against the RX budget, which is then the only limit: the firmware itself
//! keeps its queue from overflowing. Between two `ok`s the firmware can only move more lines
//! out of the ring, so the count errs on the safe side. `P` (free planner blocks) is kept for
//! the owner ([`MarlinSession::firmware_buffers`]); planned moves occupy neither buffer, so
//! the window does not need it. Counting acknowledged-late bytes as still buffered can only
//! make us wait, never overflow.
//!
//! # Acknowledgements that go missing
//!
//! A plain `ok` says nothing about which line it acknowledges, so a corrupted `ok` leaves us
//! thinking a line is still buffered. With `ADVANCED_OK` the next `ok N<k>` repairs that. In any
//! mode, `ok T:` can only answer an `M105`, so it acknowledges everything up to that `M105`.
//! After silence the session sends a numbered `M105` probe: the firmware answers `ok T:` when in
//! sync, or `Resend:` when it missed a line. No answer to the probe is a clear error.
//!
//! # Resend cascades
//!
//! Marlin drops everything in its RX buffer after a bad line, and every pipelined line behind
//! it fails the line-number check and asks for the same line again. After acting on
//! `Resend: m` the session ignores as many repeats of `m` as lines were behind it on the wire;
//! should that swallow a real request, the shortened probe timer recovers.

pub mod reply;

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use self::reply::Reply;
use crate::session::line::{self, LineSplitter, frame_numbered};
use crate::session::telemetry::{parse_position, parse_temperatures};
use crate::session::{
    Command, CommandError, Event, FirmwareInfo, JobOutcome, RttEstimate, STAGE_DEPTH, Session,
    SessionError, Stats, Telemetry,
};

/// How many lines may be unacknowledged at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MarlinFlow {
    /// As many as the firmware's buffers hold (command slots and RX bytes).
    Windowed,
    /// One line at a time, like OctoPrint's default; for comparison and very old firmware.
    PingPong,
}

/// Settings of a Marlin session. Plain data; `Default` matches stock Marlin 2.
#[derive(Debug, Clone, PartialEq)]
pub struct MarlinConfig {
    /// Window policy.
    pub flow: MarlinFlow,
    /// Command slots (`BUFSIZE`) assumed until `ADVANCED_OK` tells the real number.
    pub command_buffer: usize,
    /// Usable bytes of the firmware's RX ring; bytes that may still be in it never exceed
    /// this. Marlin's ring keeps one of its `RX_BUFFER_SIZE` bytes empty, so the stock 128
    /// holds 127.
    pub rx_buffer: usize,
    /// How long to wait for `start` after opening (DTR reset) before probing with a hello.
    pub wait_for_start: Duration,
    /// Time between hellos while nothing answers.
    pub hello_interval: Duration,
    /// Hellos before giving up.
    pub hello_attempts: u32,
    /// Silence with lines in flight before a probe is sent (a `busy:` keepalive restarts it).
    pub silence_timeout: Duration,
    /// Silence after a probe before the next probe.
    pub probe_timeout: Duration,
    /// Unanswered probes in a row before the link is declared stalled (a probe's own line end
    /// can be lost to noise, so one is not enough).
    pub probe_attempts: u32,
    /// Acknowledged lines kept for late resend requests.
    pub resend_history: usize,
    /// Temperature reports: `M155 S<n>` when the firmware can auto-report, else `M105` polls.
    pub temperature_interval: Option<Duration>,
    /// Lines sent after a cancel or failure to bring the machine to a safe state.
    pub end_script: Vec<String>,
    /// Whether this firmware sends an `ok` right after `Resend:` (Marlin 1.x); that `ok` is
    /// then not counted as an acknowledgement.
    pub ok_after_resend: bool,
    /// Report every received line as [`Event::Line`] (for a console).
    pub report_lines: bool,
}

impl Default for MarlinConfig {
    fn default() -> Self {
        Self {
            flow: MarlinFlow::Windowed,
            command_buffer: 4,
            rx_buffer: 127,
            wait_for_start: Duration::from_secs(3),
            hello_interval: Duration::from_secs(2),
            hello_attempts: 5,
            silence_timeout: Duration::from_secs(6),
            probe_timeout: Duration::from_secs(4),
            probe_attempts: 3,
            resend_history: 64,
            temperature_interval: Some(Duration::from_secs(2)),
            end_script: ["M104 S0", "M140 S0", "M107", "M84"]
                .map(String::from)
                .to_vec(),
            ok_after_resend: false,
            report_lines: false,
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    AwaitingStart { until: Instant },
    Hello { attempts: u32, retry_at: Instant },
    Identifying,
    Ready,
    Halted,
    Failed,
}

#[derive(Debug, Clone, PartialEq)]
enum Job {
    Idle,
    Streaming {
        paused: bool,
        input_done: bool,
    },
    EndScript {
        outcome: JobOutcome,
        remaining: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Hello,
    Identify,
    Job {
        source_line: u64,
    },
    EndScript,
    /// An `M105` after the last job line: its `ok T:` proves every line before it was taken.
    Fence,
    Control,
}

#[derive(Debug)]
struct Entry {
    n: u32,
    wire: Box<[u8]>,
    kind: Kind,
    m105: bool,
    sends: u32,
    sent_at: Option<Instant>,
    counted: bool,
}

#[derive(Debug, Clone, Copy, Default)]
struct Repeats {
    line: u32,
    left: usize,
}

/// Host side of the Marlin protocol. See the module documentation for the design.
#[derive(Debug)]
pub struct MarlinSession {
    config: MarlinConfig,
    phase: Phase,
    job: Job,
    splitter: LineSplitter,
    history: VecDeque<Entry>,
    acked: usize,
    cursor: usize,
    next_n: u32,
    /// Lines below this are never sent again: resending an acknowledged `M110` would let
    /// the firmware run every later line a second time.
    resend_floor: u32,
    control: VecDeque<(String, Kind)>,
    staged: VecDeque<(String, u64)>,
    source_lines: u64,
    urgent: Option<&'static [u8]>,
    events: VecDeque<Event>,
    info: FirmwareInfo,
    learned_buffer: Option<usize>,
    /// With `ADVANCED_OK`: the last line the firmware had taken out of its RX ring into its
    /// command queue, as its latest `ok N P B` showed.
    queued_through: Option<u32>,
    /// `P` and `B` of the latest `ok N P B`: free planner blocks and command slots.
    firmware_free: Option<(u32, u32)>,
    repeats: Repeats,
    implausible: Option<(u32, u32)>,
    swallow_ok: bool,
    quiet_since: Instant,
    probe_sent: Option<Instant>,
    probe_line: Option<u32>,
    probes_unanswered: u32,
    probe_now: bool,
    recovering: bool,
    rtt: RttEstimate,
    next_temp_poll: Option<Instant>,
    last_acked_job: Option<u64>,
    job_entries: u64,
    fence: Fence,
    stats: Stats,
}

/// Progress of the end-of-job check in plain-`ok` mode.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fence {
    NotSent,
    Queued,
    Acknowledged,
}

impl MarlinSession {
    /// A session for a port that was just opened at `now`.
    pub fn new(config: MarlinConfig, now: Instant) -> Self {
        let until = now + config.wait_for_start;
        Self {
            info: FirmwareInfo {
                rx_buffer: config.rx_buffer,
                ..FirmwareInfo::default()
            },
            config,
            phase: Phase::AwaitingStart { until },
            job: Job::Idle,
            splitter: LineSplitter::default(),
            history: VecDeque::new(),
            acked: 0,
            cursor: 0,
            next_n: 0,
            resend_floor: 0,
            control: VecDeque::new(),
            staged: VecDeque::new(),
            source_lines: 0,
            urgent: None,
            events: VecDeque::new(),
            learned_buffer: None,
            queued_through: None,
            firmware_free: None,
            repeats: Repeats::default(),
            implausible: None,
            swallow_ok: false,
            quiet_since: now,
            probe_sent: None,
            probe_line: None,
            probes_unanswered: 0,
            probe_now: false,
            recovering: false,
            rtt: RttEstimate::new(),
            next_temp_poll: None,
            last_acked_job: None,
            job_entries: 0,
            fence: Fence::NotSent,
            stats: Stats::default(),
        }
    }

    /// What the handshake learned (empty until [`Event::Connected`]).
    pub fn firmware(&self) -> &FirmwareInfo {
        &self.info
    }

    /// Lines currently unacknowledged.
    pub fn in_flight(&self) -> usize {
        self.cursor - self.acked
    }

    /// Free planner blocks and command slots the firmware reported in its latest
    /// `ok N P B` (`ADVANCED_OK` only).
    pub fn firmware_buffers(&self) -> Option<(u32, u32)> {
        self.firmware_free
    }

    /// Unacknowledged bytes that may still be in the firmware's RX ring or on the wire: all of
    /// them, less the lines `ADVANCED_OK` showed in the command queue.
    pub fn rx_bytes_in_flight(&self) -> usize {
        self.history
            .range(self.acked..self.cursor)
            .filter(|e| self.queued_through.is_none_or(|q| e.n > q))
            .map(|e| e.wire.len())
            .sum()
    }

    /// Whether acknowledgements carry the command slots (`ok N P B`), so the window can
    /// follow the firmware's own view instead of a configured line count.
    fn exact_window(&self) -> bool {
        self.info.advanced_ok && self.learned_buffer.is_some()
    }

    fn line_window(&self) -> usize {
        match self.config.flow {
            MarlinFlow::PingPong => 1,
            MarlinFlow::Windowed => self
                .learned_buffer
                .unwrap_or(self.config.command_buffer)
                .max(1),
        }
    }

    fn window_allows(&self, len: usize) -> bool {
        let lines = self.in_flight();
        if lines == 0 {
            return true;
        }
        let rx_fits = self.rx_bytes_in_flight() + len <= self.config.rx_buffer;
        match self.config.flow {
            MarlinFlow::PingPong => false,
            MarlinFlow::Windowed if self.exact_window() => rx_fits,
            MarlinFlow::Windowed => lines < self.line_window() && rx_fits,
        }
    }

    fn first_n(&self) -> u32 {
        self.history.front().map_or(self.next_n, |e| e.n)
    }

    /// Index in `history` of line `n`; `len` for the next line not yet created.
    fn locate(&self, n: u32) -> Option<usize> {
        let first = self.first_n();
        (n >= first && n <= self.next_n).then(|| (n - first) as usize)
    }

    fn start_hello(&mut self, now: Instant, attempts: u32) {
        self.history.clear();
        self.acked = 0;
        self.cursor = 0;
        self.control.clear();
        self.next_n = 0;
        self.resend_floor = 0;
        self.repeats = Repeats::default();
        self.queued_through = None;
        self.firmware_free = None;
        self.probe_sent = None;
        self.probe_now = false;
        self.push_entry("M110 N0", Kind::Hello);
        self.phase = Phase::Hello {
            attempts,
            retry_at: now + self.config.hello_interval,
        };
    }

    fn push_entry(&mut self, text: &str, kind: Kind) {
        let wire = frame_numbered(self.next_n, text)
            .into_bytes()
            .into_boxed_slice();
        let m105 = text.starts_with("M105") && !text[4..].starts_with(|c: char| c.is_ascii_digit());
        self.history.push_back(Entry {
            n: self.next_n,
            wire,
            kind,
            m105,
            sends: 0,
            sent_at: None,
            counted: false,
        });
        if matches!(kind, Kind::Job { .. }) {
            self.job_entries += 1;
        }
        self.next_n += 1;
    }

    fn trim_history(&mut self) {
        while self.acked > self.config.resend_history {
            self.history.pop_front();
            self.acked -= 1;
            self.cursor -= 1;
        }
    }

    /// Mark everything before `upto` acknowledged.
    fn ack_through(&mut self, now: Instant, upto: usize) {
        if upto <= self.acked {
            return;
        }
        for i in self.acked..upto {
            let entry = &mut self.history[i];
            if let (Some(sent), true) = (entry.sent_at, entry.sends == 1) {
                self.rtt.sample(now.saturating_duration_since(sent));
            }
            if entry.counted {
                continue;
            }
            entry.counted = true;
            let kind = entry.kind;
            self.on_acked(now, kind);
        }
        self.acked = upto;
        self.cursor = self.cursor.max(upto);
        self.recovering = false;
        self.implausible = None;
        self.trim_history();
        self.check_job_end();
    }

    fn on_acked(&mut self, now: Instant, kind: Kind) {
        match kind {
            Kind::Hello => {
                self.resend_floor = 1;
                self.phase = Phase::Identifying;
                self.control.push_back(("M115".into(), Kind::Identify));
            }
            Kind::Identify => self.finish_handshake(now),
            Kind::Job { source_line } => {
                self.stats.job_lines_acked += 1;
                self.last_acked_job = Some(source_line);
            }
            Kind::EndScript => {
                if let Job::EndScript { remaining, .. } = &mut self.job {
                    *remaining = remaining.saturating_sub(1);
                }
            }
            Kind::Fence => self.fence = Fence::Acknowledged,
            Kind::Control => {}
        }
    }

    fn finish_handshake(&mut self, now: Instant) {
        self.phase = Phase::Ready;
        if let Some(interval) = self.config.temperature_interval {
            if self.info.has("AUTOREPORT_TEMP") {
                let secs = interval.as_secs().max(1);
                self.control
                    .push_back((format!("M155 S{secs}"), Kind::Control));
            } else {
                self.next_temp_poll = Some(now + interval);
            }
        }
        self.events.push_back(Event::Connected(self.info.clone()));
    }

    fn check_job_end(&mut self) {
        match &self.job {
            Job::Streaming {
                input_done: true, ..
            } if self.staged.is_empty() && self.stats.job_lines_acked == self.job_entries => {
                // A plain `ok` cannot say which line it acknowledges, an extra one (after a
                // resend, or for a fragment of a broken line) or a mangled `ok N` would end the
                // job early; the fence's `ok T:` can only come after every line before it.
                if self.fence == Fence::Acknowledged {
                    self.job = Job::Idle;
                    self.events
                        .push_back(Event::JobFinished(JobOutcome::Completed));
                } else if self.fence == Fence::NotSent {
                    self.fence = Fence::Queued;
                    self.control.push_back(("M105".into(), Kind::Fence));
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

    /// Stop feeding the job and run the end script; `outcome` is reported once it has run.
    fn end_job(&mut self, outcome: JobOutcome) {
        self.staged.clear();
        let script = self.config.end_script.clone();
        let remaining = script.len();
        for text in script {
            self.control.push_back((text, Kind::EndScript));
        }
        self.job = Job::EndScript { outcome, remaining };
        self.check_job_end();
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
        let reply = reply::classify(text);
        let after_resend = std::mem::take(&mut self.swallow_ok);
        match reply {
            Reply::Start => self.on_start(now),
            Reply::Ok {
                line,
                planner,
                buffer,
                temperatures,
            } => {
                if temperatures && let Some(h) = parse_temperatures(text) {
                    self.events
                        .push_back(Event::Telemetry(Telemetry::Temperatures(h)));
                }
                if line.is_some() || planner.is_some() || buffer.is_some() {
                    self.info.advanced_ok = true;
                }
                if let Some(free) = buffer {
                    // `B` counts free slots while the acknowledged command still holds one.
                    let slots = free as usize + 1;
                    self.learned_buffer = Some(self.learned_buffer.unwrap_or(1).max(slots));
                }
                if let (Some(p), Some(b)) = (planner, buffer) {
                    self.firmware_free = Some((p, b));
                }
                if after_resend && line.is_none() && self.config.ok_after_resend {
                    return;
                }
                self.on_ok(now, line, buffer, temperatures);
            }
            Reply::Resend(n) => self.on_resend(now, n),
            Reply::Error(message) => self.on_error(message),
            Reply::Busy => {}
            Reply::Wait => {
                if self.in_flight() > 0 && self.probe_sent.is_none() {
                    self.probe_now = true;
                }
            }
            Reply::Action(action) => self.events.push_back(Event::HostAction(action)),
            Reply::FirmwareName(name) => self.info.name = name.to_owned(),
            Reply::Capability(name, on) => {
                self.info.capabilities.push((name.to_owned(), on));
                if name == "ADVANCED_OK" && on {
                    self.info.advanced_ok = true;
                }
            }
            Reply::Temperatures => {
                if let Some(h) = parse_temperatures(text) {
                    self.events
                        .push_back(Event::Telemetry(Telemetry::Temperatures(h)));
                }
            }
            Reply::Position => {
                if let Some(p) = parse_position(text) {
                    self.events
                        .push_back(Event::Telemetry(Telemetry::Position(p)));
                }
            }
            Reply::Other(other) => {
                if self.phase == Phase::Ready && !other.is_empty() {
                    self.events.push_back(Event::Message(other.to_owned()));
                }
            }
        }
    }

    fn on_start(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitingStart { .. } => self.start_hello(now, 1),
            Phase::Hello { .. } => {}
            Phase::Identifying | Phase::Ready | Phase::Halted => {
                let was_running = !matches!(self.job, Job::Idle);
                self.events.push_back(Event::FirmwareReset);
                if was_running {
                    self.job = Job::Idle;
                    self.staged.clear();
                    self.events.push_back(Event::JobFinished(JobOutcome::Failed(
                        "the firmware restarted during the job".into(),
                    )));
                }
                self.info = FirmwareInfo {
                    rx_buffer: self.config.rx_buffer,
                    ..FirmwareInfo::default()
                };
                self.learned_buffer = None;
                self.start_hello(now, 1);
            }
            Phase::Failed => {}
        }
    }

    fn on_ok(&mut self, now: Instant, line: Option<u32>, free: Option<u32>, temperatures: bool) {
        if let Some(k) = line {
            if let Some(i) = self.locate(k)
                && i < self.history.len()
                && self.history[i].sends > 0
            {
                if let (Some(free), Some(slots)) = (free, self.learned_buffer) {
                    // Line `k` still holds a slot; the lines behind it in the queue are the
                    // next ones we sent (never more than are on the wire after `k`).
                    let behind = slots.saturating_sub(free as usize + 1);
                    let sent_after = self.cursor.saturating_sub(i + 1);
                    self.queued_through = Some(k + behind.min(sent_after) as u32);
                }
                // Only the fence's own `ok T:` proves the end of a job; a digit mangled on
                // the way back must not complete it early.
                let upto = (self.acked..=i)
                    .find(|&j| self.history[j].kind == Kind::Fence)
                    .unwrap_or(i + 1);
                self.ack_through(now, upto);
            }
            return;
        }
        // After silence, every answer to what went before the probe has arrived or was lost,
        // so an `ok T:` now answers the probe; otherwise it answers the oldest `M105`.
        let probe = self
            .probe_line
            .and_then(|n| self.locate(n))
            .filter(|&i| i >= self.acked && i < self.cursor);
        let answered = probe.or_else(|| (self.acked..self.cursor).find(|&i| self.history[i].m105));
        if temperatures && let Some(i) = answered {
            self.probe_line = None;
            // Exact: this proves every line before the `M105`, so it serves as the fence.
            let jobs_before = self.job_entries - self.stats.job_lines_acked
                == self
                    .history
                    .range(self.acked..=i)
                    .filter(|e| matches!(e.kind, Kind::Job { .. }) && !e.counted)
                    .count() as u64;
            if jobs_before
                && matches!(
                    self.job,
                    Job::Streaming {
                        input_done: true,
                        ..
                    }
                )
                && self.staged.is_empty()
            {
                self.fence = Fence::Acknowledged;
                self.control.retain(|(_, k)| *k != Kind::Fence);
            }
            self.ack_through(now, i + 1);
            return;
        }
        // The fence is proven only by its own `ok T:`; a plain `ok` arriving while it is next
        // in line is an extra (or its answer arrived mangled: a later probe settles that).
        if self.acked < self.cursor && self.history[self.acked].kind != Kind::Fence {
            self.ack_through(now, self.acked + 1);
        }
    }

    fn on_resend(&mut self, now: Instant, n: u32) {
        self.swallow_ok = true;
        if let Phase::Hello { .. } = self.phase {
            self.cursor = self.acked;
            return;
        }
        let Some(i) = self.locate(n).filter(|_| n >= self.resend_floor) else {
            let count = match self.implausible {
                Some((line, c)) if line == n => c + 1,
                _ => 1,
            };
            self.implausible = Some((n, count));
            if count >= 3 {
                self.fail(SessionError::HistoryExhausted { line: n });
            }
            return;
        };
        if self.repeats.line == n && self.repeats.left > 0 {
            self.repeats.left -= 1;
            return;
        }
        let behind = self.cursor.saturating_sub(i);
        self.repeats = Repeats {
            line: n,
            left: behind.saturating_sub(1),
        };
        // Its last accepted line is `n - 1`: nothing from `n` on is in its queue.
        self.queued_through = self.queued_through.map(|q| q.min(n.saturating_sub(1)));
        if i < self.acked {
            // The firmware says it never got lines we took as acknowledged (an extra `ok`).
            for entry in self.history.range_mut(i..self.acked) {
                if entry.counted {
                    entry.counted = false;
                    if matches!(entry.kind, Kind::Job { .. }) {
                        self.stats.job_lines_acked -= 1;
                    }
                }
            }
            self.acked = i;
        }
        self.cursor = i;
        // The probe, if any, was answered by this request or will be resent in order.
        self.probe_line = None;
        self.recovering = true;
        self.stats.resends += 1;
        self.events.push_back(Event::Resend { line: n });
        let _ = now;
    }

    fn on_error(&mut self, message: &str) {
        self.stats.errors += 1;
        let lower = message.to_ascii_lowercase();
        let halted = [
            "kill() called",
            "halted",
            "thermal runaway",
            "maxtemp",
            "mintemp",
        ]
        .iter()
        .any(|p| lower.contains(p));
        if halted {
            if self.phase == Phase::Halted {
                // The firmware confirms our emergency stop.
                self.events
                    .push_back(Event::Message(format!("Error:{message}")));
            } else {
                self.fail(SessionError::Halted(message.to_owned()));
            }
            return;
        }
        let line_error = ["checksum", "line number", "last line"]
            .iter()
            .any(|p| lower.contains(p));
        if !line_error {
            self.events
                .push_back(Event::Message(format!("Error:{message}")));
        }
    }

    fn probe_deadline(&self) -> Option<Instant> {
        if self.phase != Phase::Ready && self.phase != Phase::Identifying {
            return None;
        }
        if let Some(sent) = self.probe_sent {
            return Some(sent + self.config.probe_timeout);
        }
        if self.in_flight() == 0 && self.cursor == self.history.len() {
            return None;
        }
        let wait = if self.recovering {
            let short = self.rtt.get().map_or(Duration::from_millis(50), |r| r * 4);
            short.clamp(Duration::from_millis(5), self.config.silence_timeout)
        } else {
            self.config.silence_timeout
        };
        Some(self.quiet_since + wait)
    }

    fn send_entry(&mut self, now: Instant, index: usize) -> Vec<u8> {
        if self.in_flight() == 0 {
            self.quiet_since = now;
        }
        let entry = &mut self.history[index];
        entry.sends += 1;
        entry.sent_at = Some(now);
        if entry.sends > 1 {
            self.stats.retransmitted_lines += 1;
        } else if matches!(entry.kind, Kind::Job { .. }) {
            self.stats.job_lines_sent += 1;
        }
        let bytes = entry.wire.to_vec();
        self.stats.bytes_sent += bytes.len() as u64;
        bytes
    }

    fn send_probe(&mut self, now: Instant) -> Vec<u8> {
        self.probe_now = false;
        self.probe_sent = Some(now);
        self.probes_unanswered += 1;
        self.stats.probes += 1;
        self.repeats = Repeats::default();
        if self.cursor == self.history.len() {
            self.push_entry("M105", Kind::Control);
        }
        let index = self.cursor;
        if self.history[index].m105 {
            self.probe_line = Some(self.history[index].n);
        }
        self.cursor += 1;
        // A lost line end leaves the firmware holding a partial line; close it first. Marlin
        // ignores an empty line.
        let mut bytes = vec![b'\n'];
        bytes.extend(self.send_entry(now, index));
        self.stats.bytes_sent += 1;
        bytes
    }

    fn next_text(&mut self) -> Option<(String, Kind)> {
        if let Some(c) = self.control.front() {
            return Some(c.clone());
        }
        if self.phase != Phase::Ready {
            return None;
        }
        if let Job::Streaming { paused: false, .. } = self.job {
            return self
                .staged
                .front()
                .map(|(t, s)| (t.clone(), Kind::Job { source_line: *s }));
        }
        None
    }
}

impl Session for MarlinSession {
    fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        if bytes.is_empty() {
            return;
        }
        self.quiet_since = now;
        let mut lines = Vec::new();
        self.splitter.push(bytes, |l| lines.push(l.to_owned()));
        if !lines.is_empty() {
            self.probe_sent = None;
            self.probes_unanswered = 0;
        }
        for l in lines {
            self.on_line(now, &l);
        }
    }

    fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::AwaitingStart { until } if now >= until => self.start_hello(now, 1),
            Phase::Hello { attempts, retry_at } if now >= retry_at => {
                if attempts >= self.config.hello_attempts {
                    self.fail(SessionError::NoHandshake { attempts });
                } else {
                    self.start_hello(now, attempts + 1);
                }
            }
            Phase::Identifying | Phase::Ready => {
                if let Some(deadline) = self.probe_deadline()
                    && now >= deadline
                {
                    if self.probes_unanswered >= self.config.probe_attempts {
                        self.fail(SessionError::Stalled {
                            last_acked: self.last_acked_job,
                        });
                        return;
                    }
                    self.probe_now = true;
                }
                if let (Some(at), Some(interval)) =
                    (self.next_temp_poll, self.config.temperature_interval)
                    && now >= at
                {
                    self.next_temp_poll = Some(now + interval);
                    let pending = self.control.iter().any(|(t, _)| t == "M105")
                        || self.history.range(self.acked..).any(|e| e.m105);
                    if !pending {
                        self.control.push_back(("M105".into(), Kind::Control));
                    }
                }
            }
            _ => {}
        }
    }

    fn handle_command(&mut self, now: Instant, command: Command) -> Result<(), CommandError> {
        let _ = now;
        match command {
            Command::EmergencyStop => {
                self.urgent = Some(b"M112\n");
                self.staged.clear();
                self.control.clear();
                self.history.clear();
                self.acked = 0;
                self.cursor = 0;
                self.queued_through = None;
                self.probe_sent = None;
                self.probe_now = false;
                if !matches!(self.job, Job::Idle) {
                    self.events
                        .push_back(Event::JobFinished(JobOutcome::EmergencyStopped));
                }
                self.job = Job::Idle;
                self.phase = Phase::Halted;
                Ok(())
            }
            Command::StartJob(_) => {
                if self.phase != Phase::Ready {
                    return Err(CommandError::NotReady("handshake not finished"));
                }
                if !matches!(self.job, Job::Idle) {
                    return Err(CommandError::JobRunning);
                }
                self.job = Job::Streaming {
                    paused: false,
                    input_done: false,
                };
                self.source_lines = 0;
                self.job_entries = 0;
                self.fence = Fence::NotSent;
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
                    self.end_job(JobOutcome::Cancelled);
                    Ok(())
                }
                _ => Err(CommandError::NoJob),
            },
            Command::Send(text) => {
                if self.phase != Phase::Ready {
                    return Err(CommandError::NotReady("handshake not finished"));
                }
                let cleaned = line::clean(&text).ok_or_else(|| CommandError::BadLine {
                    source_line: 0,
                    reason: "nothing to send".into(),
                })?;
                check_sendable(cleaned, 0)?;
                self.control.push_back((cleaned.to_owned(), Kind::Control));
                Ok(())
            }
        }
    }

    fn poll_transmit(&mut self, now: Instant) -> Option<Vec<u8>> {
        if let Some(bytes) = self.urgent.take() {
            self.stats.bytes_sent += bytes.len() as u64;
            return Some(bytes.to_vec());
        }
        match self.phase {
            Phase::Hello { .. } | Phase::Identifying | Phase::Ready => {}
            _ => return None,
        }
        if self.probe_now {
            if matches!(self.phase, Phase::Identifying | Phase::Ready) {
                return Some(self.send_probe(now));
            }
            self.probe_now = false;
        }
        if self.cursor < self.history.len() {
            let len = self.history[self.cursor].wire.len();
            if !self.window_allows(len) {
                return None;
            }
            let index = self.cursor;
            self.cursor += 1;
            return Some(self.send_entry(now, index));
        }
        let (text, kind) = self.next_text()?;
        let len = frame_numbered(self.next_n, &text).len();
        if !self.window_allows(len) {
            return None;
        }
        if matches!(kind, Kind::Job { .. }) {
            self.staged.pop_front();
        } else {
            self.control.pop_front();
        }
        self.push_entry(&text, kind);
        let index = self.cursor;
        self.cursor += 1;
        Some(self.send_entry(now, index))
    }

    fn poll_event(&mut self) -> Option<Event> {
        self.events.pop_front()
    }

    fn poll_timeout(&self) -> Option<Instant> {
        let phase = match self.phase {
            Phase::AwaitingStart { until } => Some(until),
            Phase::Hello { retry_at, .. } => Some(retry_at),
            Phase::Identifying | Phase::Ready => self.probe_deadline(),
            Phase::Halted | Phase::Failed => None,
        };
        let temp = if self.phase == Phase::Ready {
            self.next_temp_poll
        } else {
            None
        };
        match (phase, temp) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    fn wants_job_line(&self) -> bool {
        matches!(
            self.job,
            Job::Streaming {
                paused: false,
                input_done: false
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
        check_sendable(cleaned, source_line)?;
        self.staged.push_back((cleaned.to_owned(), source_line));
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

/// Longest command that still fits Marlin's 96-byte line buffer with a 9-digit line number
/// and a checksum around it.
const MAX_COMMAND: usize = 96 - 1 - "N123456789 *255".len();

fn check_sendable(text: &str, source_line: u64) -> Result<(), CommandError> {
    let bad = |reason: &str| CommandError::BadLine {
        source_line,
        reason: reason.to_owned(),
    };
    if text.len() > MAX_COMMAND {
        return Err(bad("longer than Marlin's 96-byte line buffer allows"));
    }
    if !text.is_ascii() || text.bytes().any(|b| b.is_ascii_control()) {
        return Err(bad("contains control or non-ASCII bytes"));
    }
    let upper = text.to_ascii_uppercase();
    if upper.starts_with("M110") {
        return Err(bad(
            "M110 would reset the line numbers the session relies on",
        ));
    }
    if upper.starts_with("M112") {
        return Err(bad(
            "M112 goes through the emergency stop command, not the stream",
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod properties;

#[cfg(test)]
mod with_vm;
