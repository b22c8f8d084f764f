//! A sans-IO Marlin 2.x: bytes in, bytes out, time passed in.
//!
//! It follows `Marlin/src/gcode/queue.cpp` where hosts can tell the difference: the RX ring
//! is read only while the command queue has a free slot and no handler is running, a bad
//! line prints `Error:…`, discards what waits in the RX ring and asks `Resend:`; a numbered
//! line must be `last + 1`; lines without `N` are not checked at all (Marlin 2.x) unless
//! [`MarlinConfig::reject_checksum_without_line_number`] asks for the 1.x behaviour.

mod command;

use std::collections::VecDeque;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::planner::{Axes, Block, Planner};
use super::thermal::{Heater, HeaterId};
use super::{Executed, FirmwareCore, VmConfigError, scaled};
use command::{Command, emergency_command, find, split_line_number, strtol};

/// How the virtual Marlin was built (the `Configuration*.h` choices a host can observe).
#[derive(Debug, Clone, PartialEq)]
pub struct MarlinConfig {
    /// `RX_BUFFER_SIZE`: bytes the serial ring holds; bytes arriving while it is full are lost.
    pub rx_buffer_size: usize,
    /// `BUFSIZE`: command queue slots, the running command included.
    pub bufsize: usize,
    /// `BLOCK_BUFFER_SIZE`: planner ring size (one slot always stays empty).
    pub block_buffer_size: usize,
    /// `MAX_CMD_SIZE`: the rest of a longer line is dropped.
    pub max_cmd_size: usize,
    /// `ADVANCED_OK`: acknowledge with `ok N<line> P<planner free> B<queue free>`.
    pub advanced_ok: bool,
    /// `EMERGENCY_PARSER`: `M112`, `M108`, `M410` act as their bytes arrive.
    pub emergency_parser: bool,
    /// `AUTO_REPORT_TEMPERATURES`: `M155` exists.
    pub autoreport_temp: bool,
    /// Print `ok` after `Resend:` (Marlin 1.1.x) instead of not (the stored 2.x source).
    pub ok_after_resend: bool,
    /// Reject an unnumbered line carrying `*` with `Error:No Line Number with checksum`
    /// and no resend (Marlin 1.1.x); 2.x executes such a line unchecked.
    pub reject_checksum_without_line_number: bool,
    /// Silence after a reset before `start` (the bootloader on DTR-reset boards).
    pub boot_delay: Duration,
    /// `DEFAULT_KEEPALIVE_INTERVAL`: `echo:busy: processing` period while a command blocks.
    pub keepalive_interval: Duration,
    /// `NO_TIMEOUTS`: print `wait` after this long with an empty queue and nothing arriving.
    pub no_timeouts: Option<Duration>,
    /// Moves, dwells and heating run this many times faster than real; 0 = no delay at all.
    pub speed: f64,
    /// Room temperature in °C.
    pub ambient: f64,
    /// `TEMP_RESIDENCY_TIME`: how long `M109`/`M190` wait once the target is reached.
    pub residency: Duration,
}

impl Default for MarlinConfig {
    fn default() -> Self {
        MarlinConfig {
            rx_buffer_size: 128,
            bufsize: 4,
            block_buffer_size: 16,
            max_cmd_size: 96,
            advanced_ok: false,
            emergency_parser: false,
            autoreport_temp: true,
            ok_after_resend: false,
            reject_checksum_without_line_number: false,
            boot_delay: Duration::ZERO,
            keepalive_interval: Duration::from_secs(2),
            no_timeouts: None,
            speed: 1.0,
            ambient: 21.3,
            residency: Duration::from_secs(10),
        }
    }
}

impl MarlinConfig {
    fn validate(&self) -> Result<(), VmConfigError> {
        super::validate_speed(self.speed)?;
        let sizes = [
            ("rx_buffer_size", self.rx_buffer_size, 1),
            ("bufsize", self.bufsize, 1),
            ("block_buffer_size", self.block_buffer_size, 2),
            ("max_cmd_size", self.max_cmd_size, 8),
        ];
        for (name, value, min) in sizes {
            if value < min {
                return Err(VmConfigError::Size { name, value, min });
            }
        }
        if self.keepalive_interval.is_zero() {
            return Err(VmConfigError::Size {
                name: "keepalive_interval",
                value: 0,
                min: 1,
            });
        }
        Ok(())
    }
}

/// Marlin's overall state; only a reset leaves `Killed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Booting { until: Instant },
    Running,
    Killed,
}

/// What the emergency parser or the early check of queue.cpp acts on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Emergency {
    Kill,
    BreakWait,
    Quickstop,
}

/// A heat-up wait of `M109`/`M190`.
#[derive(Debug, Clone)]
struct HeatWait {
    heater: HeaterId,
    wait_for_cooling: bool,
    settled_since: Option<Instant>,
    next_report: Instant,
}

/// One thing a running command still has to do before its `ok`.
#[derive(Debug, Clone)]
enum Step {
    Plan(Block),
    Synchronize,
    Dwell(Duration),
    DwellUntil(Instant),
    Heat(HeatWait),
}

/// The command at the head of the queue, once its handler has started.
#[derive(Debug)]
struct Running {
    /// The digits after `N`, echoed by `ADVANCED_OK`.
    line: Option<String>,
    steps: VecDeque<Step>,
    send_ok: bool,
}

const TEMP_WINDOW: f64 = 1.0;
const TEMP_HYSTERESIS: f64 = 3.0;
const HEAT_REPORT_INTERVAL: Duration = Duration::from_secs(1);
const HEAT_CHECK_INTERVAL: Duration = Duration::from_millis(100);
const MAX_FEEDRATE: Axes = [300.0, 300.0, 5.0, 25.0];
const HOMING_FEEDRATE: [f64; 3] = [50.0, 50.0, 4.0];
const STEPS_PER_MM: [f64; 3] = [80.0, 80.0, 400.0];
const MM_PER_ARC_SEGMENT: f64 = 1.0;
const EMERGENCY_LINE_MAX: usize = 24;

/// A virtual Marlin 2.x controller.
#[derive(Debug)]
pub struct Marlin {
    config: MarlinConfig,
    state: State,
    now: Instant,
    rx: VecDeque<u8>,
    rx_lost: u64,
    line: Vec<u8>,
    skip_to_eol: bool,
    emergency_line: Vec<u8>,
    last_n: i64,
    queue: VecDeque<String>,
    running: Option<Running>,
    planner: Planner,
    position: Axes,
    relative: bool,
    relative_e: bool,
    feedrate: f64,
    hotend: Heater,
    bed: Heater,
    autoreport: Option<(Duration, Instant)>,
    busy_next: Option<Instant>,
    /// `M113`: the keepalive period now in force; `None` after `M113 S0`.
    keepalive: Option<Duration>,
    last_command: Instant,
    output: VecDeque<Vec<u8>>,
    record: Vec<Executed>,
}

impl Marlin {
    /// A controller that was just powered on at `now`.
    pub fn new(config: MarlinConfig, now: Instant) -> Result<Self, VmConfigError> {
        config.validate()?;
        let mut marlin = Marlin {
            state: State::Running,
            now,
            rx: VecDeque::with_capacity(config.rx_buffer_size),
            rx_lost: 0,
            line: Vec::with_capacity(config.max_cmd_size),
            skip_to_eol: false,
            emergency_line: Vec::new(),
            last_n: 0,
            queue: VecDeque::with_capacity(config.bufsize),
            running: None,
            planner: Planner::new(config.block_buffer_size, [0.0; 4]),
            position: [0.0; 4],
            relative: false,
            relative_e: false,
            feedrate: 1500.0,
            hotend: Heater::hotend(config.ambient),
            bed: Heater::bed(config.ambient),
            autoreport: None,
            busy_next: None,
            keepalive: Some(config.keepalive_interval),
            last_command: now,
            output: VecDeque::new(),
            record: Vec::new(),
            config,
        };
        marlin.reset(now);
        Ok(marlin)
    }

    /// True after `M112` (or any kill) until the next reset.
    pub fn is_killed(&self) -> bool {
        self.state == State::Killed
    }

    /// The last line number accepted (`last_N`).
    pub fn last_line_number(&self) -> i64 {
        self.last_n
    }

    /// Bytes waiting in the RX ring.
    pub fn rx_len(&self) -> usize {
        self.rx.len()
    }

    /// Current hotend and bed temperatures in °C.
    pub fn temperatures(&self) -> (f64, f64) {
        (self.hotend.temp(), self.bed.temp())
    }

    fn emit(&mut self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 1);
        bytes.extend_from_slice(line.as_bytes());
        bytes.push(b'\n');
        self.output.push_back(bytes);
    }

    fn advance_physics(&mut self, now: Instant) {
        let now = now.max(self.now);
        let elapsed = now.duration_since(self.now).as_secs_f64();
        let simulated = (self.config.speed > 0.0).then_some(elapsed * self.config.speed);
        self.hotend.advance(simulated);
        self.bed.advance(simulated);
        self.planner.advance(now);
        self.now = now;
    }

    /// The firmware main loop: read lines while there is room, run commands, keep alive.
    fn service(&mut self, now: Instant) {
        self.advance_physics(now);
        match self.state {
            State::Killed => return,
            State::Booting { until } if self.now < until => return,
            State::Booting { .. } => self.boot(),
            State::Running => {}
        }
        loop {
            if self.running.is_none() {
                self.read_serial();
                if self.state == State::Killed {
                    return;
                }
                let Some(raw) = self.queue.front().cloned() else {
                    break;
                };
                let running = self.start_command(&raw);
                if self.state == State::Killed {
                    return;
                }
                self.running = Some(running);
            }
            if !self.run_head() {
                break;
            }
            self.finish_head();
        }
        self.periodic();
    }

    fn boot(&mut self) {
        self.state = State::Running;
        for line in [
            "start",
            "echo:Marlin 2.1.2",
            "echo: Last Updated: 2023-06-30 | Author: (MuniFab, virtual machine)",
            "echo:Compiled: Nov 21 2026",
            "echo: Free Memory: 4522  PlannerBufferBytes: 1568",
            "echo:Hardcoded Default Settings Loaded",
        ] {
            self.emit(line);
        }
    }

    fn periodic(&mut self) {
        let now = self.now;
        match (self.running.is_some(), self.keepalive, self.busy_next) {
            (true, Some(interval), None) => self.busy_next = Some(now + interval),
            (true, Some(interval), Some(next)) if now >= next => {
                self.emit("echo:busy: processing");
                self.busy_next = Some(now + interval);
            }
            (true, Some(_), Some(_)) => {}
            _ => self.busy_next = None,
        }
        if let Some(quiet) = self.config.no_timeouts
            && self.queue.is_empty()
            && self.rx.is_empty()
            && now >= self.last_command + quiet
        {
            self.emit("wait");
            self.last_command = now;
        }
        if let Some((interval, next)) = self.autoreport
            && now >= next
        {
            let report = self.heater_states();
            self.emit(&report);
            self.autoreport = Some((interval, now + interval));
        }
    }

    fn heater_states(&self) -> String {
        format!(
            " T:{:.2} /{:.2} B:{:.2} /{:.2} @:{} B@:{}",
            self.hotend.temp(),
            self.hotend.target(),
            self.bed.temp(),
            self.bed.target(),
            self.hotend.pwm(),
            self.bed.pwm()
        )
    }

    fn read_serial(&mut self) {
        while self.queue.len() < self.config.bufsize {
            let Some(byte) = self.rx.pop_front() else {
                break;
            };
            if byte == b'\n' || byte == b'\r' {
                self.line_done();
                if self.state == State::Killed {
                    return;
                }
            } else {
                self.stream_char(byte);
            }
        }
    }

    fn stream_char(&mut self, byte: u8) {
        if self.skip_to_eol {
            return;
        }
        match byte {
            b';' => self.skip_to_eol = true,
            0x08 => {
                self.line.pop();
            }
            _ => {
                self.line.push(byte);
                if self.line.len() >= self.config.max_cmd_size - 1 {
                    self.skip_to_eol = true;
                }
            }
        }
    }

    fn line_done(&mut self) {
        self.skip_to_eol = false;
        if self.line.is_empty() {
            return;
        }
        let raw = std::mem::take(&mut self.line);
        let start = raw.iter().take_while(|b| **b == b' ').count();
        let command = &raw[start..];
        if command.first() == Some(&b'N') {
            let m110 = find(command, b"M110").is_some();
            let mut npos = 0;
            if m110
                && let Some(second) = command
                    .get(4..)
                    .and_then(|rest| rest.iter().position(|b| *b == b'N'))
            {
                npos = 4 + second;
            }
            let gcode_n = strtol(&command[npos + 1..]);
            if gcode_n != self.last_n + 1 && !m110 {
                return self.line_error("Line Number is not Last Line Number+1, Last Line: ");
            }
            match command.iter().rposition(|b| *b == b'*') {
                Some(star) => {
                    let checksum = command[..star].iter().fold(0u8, |cs, b| cs ^ b);
                    if strtol(&command[star + 1..]) != i64::from(checksum) {
                        return self.line_error("checksum mismatch, Last Line: ");
                    }
                }
                None => return self.line_error("No Checksum with line number, Last Line: "),
            }
            self.last_n = gcode_n;
        } else if self.config.reject_checksum_without_line_number && command.contains(&b'*') {
            let message = format!(
                "Error:No Line Number with checksum, Last Line: {}",
                self.last_n
            );
            self.emit(&message);
            return;
        }
        if !self.config.emergency_parser && command.first() == Some(&b'M') {
            // queue.cpp looks at exactly these bytes, so "M1120" matches too, "N5 M112" does not.
            match command.get(1..4) {
                Some(b"108") => self.emergency(Emergency::BreakWait),
                Some(b"112") => self.emergency(Emergency::Kill),
                Some(b"410") => self.emergency(Emergency::Quickstop),
                _ => {}
            }
            if self.state == State::Killed {
                return;
            }
        }
        self.last_command = self.now;
        self.queue
            .push_back(String::from_utf8_lossy(command).into_owned());
    }

    fn line_error(&mut self, message: &str) {
        let error = format!("Error:{message}{}", self.last_n);
        self.emit(&error);
        self.rx.clear();
        let resend = format!("Resend: {}", self.last_n + 1);
        self.emit(&resend);
        if self.config.ok_after_resend {
            self.emit("ok");
        }
        self.line.clear();
        self.skip_to_eol = false;
    }

    fn emergency(&mut self, what: Emergency) {
        match what {
            Emergency::Kill => self.kill(),
            Emergency::BreakWait => {
                if let Some(running) = &mut self.running {
                    running.steps.retain(|step| !matches!(step, Step::Heat(_)));
                }
            }
            Emergency::Quickstop => {
                let here = self.planner.clear(self.now);
                self.position = here;
                if let Some(running) = &mut self.running {
                    running.steps.retain(|step| !matches!(step, Step::Plan(_)));
                }
            }
        }
    }

    fn kill(&mut self) {
        if self.state == State::Killed {
            return;
        }
        self.emit("Error:Printer halted. kill() called!");
        self.hotend.switch_off();
        self.bed.switch_off();
        self.position = self.planner.clear(self.now);
        self.queue.clear();
        self.running = None;
        self.autoreport = None;
        self.busy_next = None;
        self.state = State::Killed;
    }

    /// Runs the head command's remaining steps; true once it is done.
    fn run_head(&mut self) -> bool {
        let Some(mut running) = self.running.take() else {
            return true;
        };
        let done = loop {
            let Some(step) = running.steps.front_mut() else {
                break true;
            };
            match step {
                Step::Plan(block) => {
                    if self.planner.free() == 0 {
                        break false;
                    }
                    self.planner.push(self.now, block.clone());
                }
                Step::Synchronize => {
                    if !self.planner.is_empty() {
                        break false;
                    }
                }
                Step::Dwell(duration) => {
                    *step = Step::DwellUntil(self.now + *duration);
                    continue;
                }
                Step::DwellUntil(until) => {
                    if self.now < *until {
                        break false;
                    }
                }
                Step::Heat(wait) => {
                    let mut wait = wait.clone();
                    let finished = self.heat_wait(&mut wait);
                    if !finished {
                        running.steps[0] = Step::Heat(wait);
                        break false;
                    }
                }
            }
            running.steps.pop_front();
        };
        self.running = Some(running);
        done
    }

    fn heat_wait(&mut self, wait: &mut HeatWait) -> bool {
        let heater = match wait.heater {
            HeaterId::Hotend => &self.hotend,
            HeaterId::Bed => &self.bed,
        };
        let (temp, target) = (heater.temp(), heater.target());
        let reached = if wait.wait_for_cooling {
            (temp - target).abs() <= TEMP_WINDOW
        } else {
            temp >= target - TEMP_WINDOW
        };
        if reached {
            wait.settled_since.get_or_insert(self.now);
        } else if (temp - target).abs() > TEMP_HYSTERESIS {
            wait.settled_since = None;
        }
        let residency = scaled(self.config.residency.as_secs_f64(), self.config.speed);
        let remaining = wait
            .settled_since
            .map(|since| residency.saturating_sub(self.now.duration_since(since)));
        if remaining == Some(Duration::ZERO) {
            return true;
        }
        if self.now >= wait.next_report {
            let w = remaining.map_or_else(|| "?".to_owned(), |left| left.as_secs().to_string());
            let report = format!("{} W:{w}", self.heater_states());
            self.emit(&report);
            wait.next_report = self.now + HEAT_REPORT_INTERVAL;
        }
        false
    }

    fn finish_head(&mut self) {
        let Some(running) = self.running.take() else {
            return;
        };
        if running.send_ok {
            if self.config.advanced_ok {
                let mut ok = String::from("ok");
                if let Some(line) = &running.line {
                    let _ = write!(ok, " N{line}");
                }
                let _ = write!(
                    ok,
                    " P{} B{}",
                    self.planner.free(),
                    self.config.bufsize - self.queue.len()
                );
                self.emit(&ok);
            } else {
                self.emit("ok");
            }
        }
        self.queue.pop_front();
        self.busy_next = None;
    }

    /// Starts the handler of a queued line, as `process_next_command` would.
    fn start_command(&mut self, raw: &str) -> Running {
        let (line, text) = split_line_number(raw);
        let command = Command::parse(text);
        // Every line taken off the queue is recorded, unknown ones too: an accepted numbered
        // line consumed its number whatever it said (a corrupted text can pass the XOR check).
        self.record.push(Executed {
            line: line.as_deref().and_then(|n| n.parse().ok()),
            command: text.to_owned(),
        });
        let mut running = Running {
            line,
            steps: VecDeque::new(),
            send_ok: true,
        };
        match (command.letter, command.code) {
            (Some('G'), Some(0 | 1)) => self.linear_move(&command, &mut running),
            (Some('G'), Some(code @ (2 | 3))) => self.arc_move(&command, code == 2, &mut running),
            (Some('G'), Some(4)) => {
                let seconds = command
                    .value('P')
                    .map(|ms| ms / 1000.0)
                    .or_else(|| command.value('S'))
                    .unwrap_or(0.0)
                    .max(0.0);
                running.steps.push_back(Step::Synchronize);
                running
                    .steps
                    .push_back(Step::Dwell(scaled(seconds, self.config.speed)));
            }
            (Some('G'), Some(21)) => {}
            (Some('G'), Some(28)) => self.home(&command, &mut running),
            (Some('G'), Some(90)) => (self.relative, self.relative_e) = (false, false),
            (Some('G'), Some(91)) => (self.relative, self.relative_e) = (true, true),
            (Some('G'), Some(92)) => {
                for (axis, letter) in ['X', 'Y', 'Z', 'E'].into_iter().enumerate() {
                    if let Some(value) = command.value(letter) {
                        self.position[axis] = value;
                    }
                }
                if self.planner.is_empty() {
                    self.planner.set_rest_position(self.position);
                }
            }
            (Some('M'), Some(17 | 18 | 84 | 400)) => running.steps.push_back(Step::Synchronize),
            (Some('M'), Some(82)) => self.relative_e = false,
            (Some('M'), Some(83)) => self.relative_e = true,
            (Some('M'), Some(104)) => {
                if let Some(target) = command.value('S') {
                    self.hotend.set_target(target);
                }
            }
            (Some('M'), Some(140)) => {
                if let Some(target) = command.value('S') {
                    self.bed.set_target(target);
                }
            }
            (Some('M'), Some(109)) => self.heat_and_wait(&command, HeaterId::Hotend, &mut running),
            (Some('M'), Some(190)) => self.heat_and_wait(&command, HeaterId::Bed, &mut running),
            (Some('M'), Some(105)) => {
                let report = format!("ok{}", self.heater_states());
                self.emit(&report);
                running.send_ok = false;
            }
            (Some('M'), Some(73 | 106 | 107 | 108 | 117 | 201 | 203 | 204 | 205 | 220 | 221)) => {}
            (Some('M'), Some(110)) => {
                if let Some(n) = command.value('N') {
                    self.last_n = n as i64;
                }
            }
            (Some('M'), Some(112)) => {
                self.kill();
                running.send_ok = false;
            }
            (Some('M'), Some(114)) => self.report_position(),
            (Some('M'), Some(115)) => self.report_firmware(),
            (Some('M'), Some(118)) => {
                let message = text.get(4..).unwrap_or("").trim_start().to_owned();
                self.emit(&message);
            }
            (Some('M'), Some(155)) if self.config.autoreport_temp => {
                if let Some(seconds) = command.value('S') {
                    let seconds = seconds.clamp(0.0, 255.0) as u64;
                    self.autoreport = (seconds > 0).then(|| {
                        let interval = Duration::from_secs(seconds);
                        (interval, self.now + interval)
                    });
                }
            }
            (Some('M'), Some(410)) => self.emergency(Emergency::Quickstop),
            (Some('M'), Some(113)) => match command.value('S') {
                Some(seconds) => {
                    let seconds = seconds.clamp(0.0, 60.0);
                    self.keepalive = (seconds > 0.0).then(|| Duration::from_secs_f64(seconds));
                }
                None => {
                    let seconds = self.keepalive.map_or(0, |d| d.as_secs());
                    self.emit(&format!("echo:M113 S{seconds}"));
                }
            },
            (Some('M'), Some(999)) => {
                if command.value('S').is_none_or(|s| s == 0.0) {
                    let resend = format!("Resend: {}", self.last_n + 1);
                    self.emit(&resend);
                }
            }
            (Some('T'), Some(0)) => {}
            (Some('T'), Some(tool)) => {
                let message = format!("echo:T{tool} Invalid extruder");
                self.emit(&message);
            }
            _ => {
                let message = format!("echo:Unknown command: \"{text}\"");
                self.emit(&message);
            }
        }
        running
    }

    fn target(&self, command: &Command) -> Axes {
        let mut target = self.position;
        for (axis, letter) in ['X', 'Y', 'Z', 'E'].into_iter().enumerate() {
            if let Some(value) = command.value(letter) {
                let relative = if axis == 3 {
                    self.relative_e
                } else {
                    self.relative
                };
                target[axis] = if relative {
                    self.position[axis] + value
                } else {
                    value
                };
            }
        }
        target
    }

    fn take_feedrate(&mut self, command: &Command) {
        if let Some(feed) = command.value('F')
            && feed > 0.0
        {
            self.feedrate = feed;
        }
    }

    fn linear_move(&mut self, command: &Command, running: &mut Running) {
        self.take_feedrate(command);
        let target = self.target(command);
        if target == self.position {
            return;
        }
        let seconds = move_seconds(&self.position, &target, self.feedrate);
        running.steps.push_back(Step::Plan(Block {
            start: self.position,
            end: target,
            duration: scaled(seconds, self.config.speed),
            feed: self.feedrate,
            line: None,
            rapid: false,
        }));
        self.position = target;
    }

    fn arc_move(&mut self, command: &Command, clockwise: bool, running: &mut Running) {
        self.take_feedrate(command);
        let start = self.position;
        let target = self.target(command);
        let Some(center) = arc_center(command, &start, &target, clockwise) else {
            self.emit("Error:G2/G3 bad parameters");
            return;
        };
        let radius = (start[0] - center[0]).hypot(start[1] - center[1]);
        let a0 = (start[1] - center[1]).atan2(start[0] - center[0]);
        let a1 = (target[1] - center[1]).atan2(target[0] - center[0]);
        let tau = std::f64::consts::TAU;
        let mut sweep = if clockwise { a0 - a1 } else { a1 - a0 };
        sweep = sweep.rem_euclid(tau);
        if sweep < 1e-9 {
            sweep = tau;
        }
        let planar = radius * sweep;
        let length = planar.hypot(target[2] - start[2]);
        let segments = ((length / MM_PER_ARC_SEGMENT).floor() as usize).clamp(1, 10_000);
        let direction = if clockwise { -1.0 } else { 1.0 };
        let mut from = start;
        for k in 1..=segments {
            let fraction = k as f64 / segments as f64;
            let to = if k == segments {
                target
            } else {
                let angle = a0 + direction * sweep * fraction;
                [
                    center[0] + radius * angle.cos(),
                    center[1] + radius * angle.sin(),
                    start[2] + (target[2] - start[2]) * fraction,
                    start[3] + (target[3] - start[3]) * fraction,
                ]
            };
            let seconds = move_seconds(&from, &to, self.feedrate);
            running.steps.push_back(Step::Plan(Block {
                start: from,
                end: to,
                duration: scaled(seconds, self.config.speed),
                feed: self.feedrate,
                line: None,
                rapid: false,
            }));
            from = to;
        }
        self.position = target;
    }

    fn home(&mut self, command: &Command, running: &mut Running) {
        let named: Vec<usize> = ['X', 'Y', 'Z']
            .into_iter()
            .enumerate()
            .filter(|(_, letter)| command.has(*letter))
            .map(|(axis, _)| axis)
            .collect();
        let axes = if named.is_empty() {
            vec![0, 1, 2]
        } else {
            named
        };
        let mut target = self.position;
        let mut seconds = 0.0;
        for axis in axes {
            // Travel to the switch, then the 5 mm bump Marlin does on every homed axis.
            seconds += (self.position[axis].abs() + 5.0) / HOMING_FEEDRATE[axis];
            target[axis] = 0.0;
        }
        running.steps.push_back(Step::Synchronize);
        running.steps.push_back(Step::Plan(Block {
            start: self.position,
            end: target,
            duration: scaled(seconds, self.config.speed),
            feed: HOMING_FEEDRATE[0] * 60.0,
            line: None,
            rapid: false,
        }));
        running.steps.push_back(Step::Synchronize);
        self.position = target;
    }

    fn heat_and_wait(&mut self, command: &Command, id: HeaterId, running: &mut Running) {
        let (target, wait_for_cooling) = match (command.value('S'), command.value('R')) {
            (Some(s), _) => (s, false),
            (None, Some(r)) => (r, true),
            (None, None) => return,
        };
        let heater = match id {
            HeaterId::Hotend => &mut self.hotend,
            HeaterId::Bed => &mut self.bed,
        };
        heater.set_target(target);
        if !wait_for_cooling
            && heater.temp() >= heater.target() - TEMP_WINDOW
            && heater.target() <= heater.temp()
        {
            return;
        }
        running.steps.push_back(Step::Heat(HeatWait {
            heater: id,
            wait_for_cooling,
            settled_since: None,
            next_report: self.now + HEAT_REPORT_INTERVAL,
        }));
    }

    fn report_position(&mut self) {
        let p = self.position;
        let stepper = self.planner.position(self.now);
        let count = |axis: usize| (stepper[axis] * STEPS_PER_MM[axis]).round() as i64;
        let line = format!(
            "X:{:.2} Y:{:.2} Z:{:.2} E:{:.2} Count X:{} Y:{} Z:{}",
            p[0],
            p[1],
            p[2],
            p[3],
            count(0),
            count(1),
            count(2)
        );
        self.emit(&line);
    }

    fn report_firmware(&mut self) {
        self.emit(
            "FIRMWARE_NAME:Marlin 2.1.2 (MuniFab virtual machine) SOURCE_CODE_URL:github.com/MarlinFirmware/Marlin \
             PROTOCOL_VERSION:1.0 MACHINE_TYPE:MuniFab Virtual Marlin EXTRUDER_COUNT:1 \
             UUID:cede2a2f-41a2-4748-9b12-c55c62f367ff",
        );
        let flag = |on: bool| if on { 1 } else { 0 };
        let caps = [
            ("SERIAL_XON_XOFF", 0),
            ("BINARY_FILE_TRANSFER", 0),
            ("EEPROM", 0),
            ("VOLUMETRIC", 1),
            ("AUTOREPORT_POS", 0),
            ("AUTOREPORT_TEMP", flag(self.config.autoreport_temp)),
            ("PROGRESS", 0),
            ("PRINT_JOB", 1),
            ("AUTOLEVEL", 0),
            ("RUNOUT", 0),
            ("Z_PROBE", 0),
            ("LEVELING_DATA", 0),
            ("BUILD_PERCENT", 0),
            ("SOFTWARE_POWER", 0),
            ("TOGGLE_LIGHTS", 0),
            ("CASE_LIGHT_BRIGHTNESS", 0),
            ("EMERGENCY_PARSER", flag(self.config.emergency_parser)),
            ("HOST_ACTION_COMMANDS", 0),
            ("PROMPT_SUPPORT", 0),
            ("SDCARD", 0),
            ("REPEAT", 0),
            ("SD_WRITE", 0),
            ("AUTOREPORT_SD_STATUS", 0),
            ("LONG_FILENAME", 0),
            ("THERMAL_PROTECTION", 1),
            ("MOTION_MODES", 0),
            ("ARCS", 1),
            ("BABYSTEPPING", 0),
            ("CHAMBER_TEMPERATURE", 0),
            ("COOLER_TEMPERATURE", 0),
            ("MEATPACK", 0),
        ];
        for (name, value) in caps {
            self.emit(&format!("Cap:{name}:{value}"));
        }
    }

    fn feed_emergency_parser(&mut self, byte: u8) {
        if byte == b'\n' || byte == b'\r' {
            let line = std::mem::take(&mut self.emergency_line);
            if let Some(what) = emergency_command(&line) {
                self.emergency(what);
            }
        } else if self.emergency_line.len() < EMERGENCY_LINE_MAX {
            self.emergency_line.push(byte);
        }
    }
}

impl FirmwareCore for Marlin {
    fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        self.advance_physics(now);
        for &byte in bytes {
            match self.state {
                // The bootloader owns the UART: what arrives now is gone.
                State::Booting { .. } => {
                    self.service(now);
                    if matches!(self.state, State::Booting { .. }) {
                        self.rx_lost += 1;
                        continue;
                    }
                }
                State::Running if self.config.emergency_parser => self.feed_emergency_parser(byte),
                State::Running | State::Killed => {}
            }
            if self.rx.len() >= self.config.rx_buffer_size {
                // The firmware drains the ring as bytes keep coming in, if it can.
                self.service(now);
            }
            if self.rx.len() >= self.config.rx_buffer_size {
                self.rx_lost += 1;
            } else {
                self.rx.push_back(byte);
            }
        }
        self.service(now);
    }

    fn handle_timeout(&mut self, now: Instant) {
        self.service(now);
    }

    fn poll_timeout(&self) -> Option<Instant> {
        match self.state {
            State::Booting { until } => return Some(until),
            State::Killed => return None,
            State::Running => {}
        }
        let mut next: Option<Instant> = self.autoreport.map(|(_, at)| at);
        let mut consider = |at: Option<Instant>| {
            if let Some(at) = at {
                next = Some(next.map_or(at, |n| n.min(at)));
            }
        };
        if let Some(quiet) = self.config.no_timeouts
            && self.queue.is_empty()
            && self.rx.is_empty()
        {
            consider(Some(self.last_command + quiet));
        }
        if let Some(running) = &self.running {
            consider(self.busy_next);
            match running.steps.front() {
                Some(Step::Plan(_) | Step::Synchronize) => consider(self.planner.next_completion()),
                Some(Step::DwellUntil(until)) => consider(Some(*until)),
                Some(Step::Heat(wait)) => {
                    consider(Some(wait.next_report));
                    consider(Some(self.now + HEAT_CHECK_INTERVAL));
                }
                Some(Step::Dwell(_)) | None => consider(Some(self.now)),
            }
        }
        next
    }

    fn poll_output(&mut self) -> Option<Vec<u8>> {
        self.output.pop_front()
    }

    fn trip(&mut self, now: Instant) {
        self.advance_physics(now);
        if self.state == State::Running {
            self.emit("Error:Thermal Runaway, system stopped! Heater_ID: 0");
            self.kill();
        }
    }

    fn line_end(&self) -> &'static [u8] {
        b"\n"
    }

    fn reset(&mut self, now: Instant) {
        self.advance_physics(now);
        self.state = State::Booting {
            until: now + self.config.boot_delay,
        };
        self.rx.clear();
        self.line.clear();
        self.skip_to_eol = false;
        self.emergency_line.clear();
        self.last_n = 0;
        self.queue.clear();
        self.running = None;
        self.planner.clear(now);
        self.position = [0.0; 4];
        self.planner.set_rest_position(self.position);
        self.relative = false;
        self.relative_e = false;
        self.feedrate = 1500.0;
        self.hotend.switch_off();
        self.bed.switch_off();
        self.autoreport = None;
        self.busy_next = None;
        self.keepalive = Some(self.config.keepalive_interval);
        self.last_command = now;
        self.output.clear();
        self.service(now);
    }

    fn record(&self) -> &[Executed] {
        &self.record
    }

    fn rx_lost(&self) -> u64 {
        self.rx_lost
    }
}

fn move_seconds(from: &Axes, to: &Axes, feedrate_mm_min: f64) -> f64 {
    let d: Axes = std::array::from_fn(|i| (to[i] - from[i]).abs());
    let xyz = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
    let length = if xyz > 0.0 { xyz } else { d[3] };
    let by_feed = length / (feedrate_mm_min / 60.0);
    (0..4)
        .map(|i| d[i] / MAX_FEEDRATE[i])
        .fold(by_feed, f64::max)
}

fn arc_center(command: &Command, start: &Axes, target: &Axes, clockwise: bool) -> Option<[f64; 2]> {
    if let Some(r) = command.value('R') {
        let (dx, dy) = (target[0] - start[0], target[1] - start[1]);
        let d = dx.hypot(dy);
        let h2 = r * r - (d / 2.0) * (d / 2.0);
        if d == 0.0 || h2 < 0.0 {
            return None;
        }
        let e = if clockwise ^ (r < 0.0) { -1.0 } else { 1.0 };
        let (mx, my) = ((start[0] + target[0]) / 2.0, (start[1] + target[1]) / 2.0);
        let h = h2.sqrt();
        return Some([mx + e * h * (-dy / d), my + e * h * (dx / d)]);
    }
    let (i, j) = (command.value('I'), command.value('J'));
    if i.is_none() && j.is_none() {
        return None;
    }
    Some([start[0] + i.unwrap_or(0.0), start[1] + j.unwrap_or(0.0)])
}

#[cfg(test)]
mod tests;
