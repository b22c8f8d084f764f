//! A sans-IO GRBL 1.1h: bytes in, bytes out, time passed in.
//!
//! It follows GRBL's own structure where hosts can tell the difference: realtime bytes
//! (`?`, `!`, `~`, `0x18`, `0x80`–`0xFF`) are taken out in the serial interrupt and never
//! reach the 128-byte RX ring; the main loop reads the ring only while no line is being
//! executed, filters each line (spaces, comments, lower case) into an 80-byte buffer, and
//! answers every line with exactly one `ok` or `error:N`. A line waiting for a planner slot
//! stops the reading, so a host that counts characters never overflows the ring.

mod parser;

use std::collections::{BTreeMap, VecDeque};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use super::planner::{Axes, Block, Planner};
use super::{Executed, FirmwareCore, VmConfigError, scaled};
pub use parser::normalize_grbl_line;
use parser::{GcodeBlock, NonModal, ToolLength, Word, axis_index, parse_words, read_float};

/// How the virtual GRBL is built and set up (`config.h` choices and `$` settings).
#[derive(Debug, Clone, PartialEq)]
pub struct GrblConfig {
    /// `RX_BUFFER_SIZE`: bytes the serial ring holds; bytes arriving while it is full are lost.
    pub rx_buffer_size: usize,
    /// `BLOCK_BUFFER_SIZE`: planner ring size (one slot always stays empty).
    pub block_buffer_size: usize,
    /// `LINE_BUFFER_SIZE`: a filtered line longer than this minus one is `error:11`.
    pub line_buffer_size: usize,
    /// `$22`: homing cycle enabled; the machine then powers up locked in alarm.
    pub homing: bool,
    /// `$20`: soft limits (need homing); a target outside the travel raises `ALARM:2`.
    pub soft_limits: bool,
    /// `$130`–`$132`: travel of X, Y, Z in mm; machine coordinates run from `-travel` to 0.
    pub max_travel: [f64; 3],
    /// `$110`–`$112`: maximum rate of X, Y, Z in mm/min (rapids run at these).
    pub max_rate: [f64; 3],
    /// `$10`: status report mask; 1 = machine position, 2 = buffer state (`Bf:`).
    pub status_report_mask: u8,
    /// Moves, dwells and homing run this many times faster than real; 0 = no delay at all.
    pub speed: f64,
    /// Silence after a hardware reset before the banner (the bootloader).
    pub boot_delay: Duration,
}

impl Default for GrblConfig {
    fn default() -> Self {
        GrblConfig {
            rx_buffer_size: 128,
            block_buffer_size: 16,
            line_buffer_size: 80,
            homing: false,
            soft_limits: false,
            max_travel: [200.0; 3],
            max_rate: [500.0; 3],
            status_report_mask: 3,
            speed: 1.0,
            boot_delay: Duration::ZERO,
        }
    }
}

impl GrblConfig {
    fn validate(&self) -> Result<(), VmConfigError> {
        super::validate_speed(self.speed)?;
        let sizes = [
            ("rx_buffer_size", self.rx_buffer_size, 1),
            ("block_buffer_size", self.block_buffer_size, 2),
            ("line_buffer_size", self.line_buffer_size, 8),
        ];
        for (name, value, min) in sizes {
            if value < min {
                return Err(VmConfigError::Size { name, value, min });
            }
        }
        if self.soft_limits && !self.homing {
            return Err(VmConfigError::SoftLimitsNeedHoming);
        }
        Ok(())
    }
}

/// GRBL's state machine, as far as the host can see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    Booting {
        until: Instant,
    },
    Normal,
    Check,
    /// Locked: only `$` commands, `?` and reset. `critical` (hard/soft limit) blocks even
    /// those until a reset.
    Alarm {
        critical: bool,
    },
    Sleep,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Spindle {
    Off,
    Cw,
    Ccw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Motion {
    Rapid,
    Linear,
    ArcCw,
    ArcCcw,
    None,
}

/// The modal state of the g-code parser (`$G`).
#[derive(Debug, Clone, PartialEq)]
struct Modal {
    motion: Motion,
    plane: u8,
    inches: bool,
    relative: bool,
    coordinate_system: u8,
    spindle: Spindle,
    mist: bool,
    flood: bool,
    tool: u8,
    feed: f64,
    rpm: f64,
}

impl Default for Modal {
    fn default() -> Self {
        Modal {
            motion: Motion::Rapid,
            plane: 17,
            inches: false,
            relative: false,
            coordinate_system: 54,
            spindle: Spindle::Off,
            mist: false,
            flood: false,
            tool: 0,
            feed: 0.0,
            rpm: 0.0,
        }
    }
}

/// Feed, rapid and spindle overrides in percent, set by realtime bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Overrides {
    feed: u8,
    rapid: u8,
    spindle: u8,
}

impl Default for Overrides {
    fn default() -> Self {
        Overrides {
            feed: 100,
            rapid: 100,
            spindle: 100,
        }
    }
}

/// One thing a line still has to do before its `ok`.
#[derive(Debug, Clone)]
enum Step {
    Plan(Block),
    Synchronize,
    Dwell(Duration),
    DwellUntil(Instant),
    SetSpindle(Spindle, f64),
    /// `M0`: hold once the planner is empty, and stay there until `~`.
    Pause,
    AwaitResume,
    Home(Duration),
    HomeUntil(Instant),
    ProgramEnd,
}

#[derive(Debug)]
struct Running {
    steps: VecDeque<Step>,
}

/// Output of a line that ran to its end.
enum Reply {
    Ok,
    Error(u8),
    /// The line printed its own answer (or none is due).
    Done,
}

const VERSION_LINE: &str = "[VER:1.1h.20190830:]";
const HOMING_SEEK_RATE: f64 = 500.0;
const HOMING_PULLOFF: f64 = 1.0;
const ARC_TOLERANCE: f64 = 0.002;
const MAX_LINE_NUMBER: f64 = 9_999_999.0;
const MAX_TOOL: f64 = 255.0;

/// A virtual GRBL 1.1h controller.
#[derive(Debug)]
pub struct Grbl {
    config: GrblConfig,
    mode: Mode,
    now: Instant,
    rx: VecDeque<u8>,
    rx_lost: u64,
    line: Vec<u8>,
    overflow: bool,
    comment: Option<u8>,
    running: Option<Running>,
    planner: Planner,
    held: bool,
    jogging: bool,
    homing: bool,
    modal: Modal,
    /// Where the parser believes the tool is, in machine coordinates.
    position: Axes,
    g92: [f64; 3],
    /// G54–G59 offsets, G28 and G30 positions: kept in EEPROM, so they survive resets.
    work_offsets: [[f64; 3]; 6],
    stored: [[f64; 3]; 2],
    tool_length: f64,
    spindle_now: (Spindle, f64),
    overrides: Overrides,
    /// Status reports left until `WCO:` and `Ov:` are shown again (GRBL's refresh counters).
    wco_countdown: u8,
    ov_countdown: u8,
    settings: BTreeMap<u16, f64>,
    startup_lines: [String; 2],
    output: VecDeque<Vec<u8>>,
    record: Vec<Executed>,
}

impl Grbl {
    /// A controller that was just powered on at `now`.
    pub fn new(config: GrblConfig, now: Instant) -> Result<Self, VmConfigError> {
        config.validate()?;
        let settings = default_settings(&config);
        let mut grbl = Grbl {
            mode: Mode::Normal,
            now,
            rx: VecDeque::with_capacity(config.rx_buffer_size),
            rx_lost: 0,
            line: Vec::new(),
            overflow: false,
            comment: None,
            running: None,
            planner: Planner::new(config.block_buffer_size, [0.0; 4]),
            held: false,
            jogging: false,
            homing: false,
            modal: Modal::default(),
            position: [0.0; 4],
            g92: [0.0; 3],
            work_offsets: [[0.0; 3]; 6],
            stored: [[0.0; 3]; 2],
            tool_length: 0.0,
            spindle_now: (Spindle::Off, 0.0),
            overrides: Overrides::default(),
            wco_countdown: 0,
            ov_countdown: 0,
            settings,
            startup_lines: Default::default(),
            output: VecDeque::new(),
            record: Vec::new(),
            config,
        };
        grbl.reset(now);
        Ok(grbl)
    }

    /// Bytes waiting in the RX ring; never more than its size.
    pub fn rx_len(&self) -> usize {
        self.rx.len()
    }

    /// The machine position right now (X, Y, Z).
    pub fn machine_position(&self) -> [f64; 3] {
        let p = self.planner.position(self.now);
        [p[0], p[1], p[2]]
    }

    fn setting(&self, number: u16) -> f64 {
        self.settings.get(&number).copied().unwrap_or(0.0)
    }

    fn flag(&self, number: u16) -> bool {
        self.setting(number) != 0.0
    }

    fn emit(&mut self, line: &str) {
        let mut bytes = Vec::with_capacity(line.len() + 2);
        bytes.extend_from_slice(line.as_bytes());
        bytes.extend_from_slice(b"\r\n");
        self.output.push_back(bytes);
    }

    fn reply(&mut self, reply: Reply) {
        match reply {
            Reply::Ok => self.emit("ok"),
            Reply::Error(code) => self.emit(&format!("error:{code}")),
            Reply::Done => {}
        }
    }

    fn advance(&mut self, now: Instant) {
        self.now = now.max(self.now);
        self.planner.advance(self.now);
        if self.jogging && self.planner.is_empty() {
            self.jogging = false;
        }
    }

    fn in_cycle(&self) -> bool {
        !self.planner.is_empty() || self.homing
    }

    fn is_idle(&self) -> bool {
        self.mode == Mode::Normal && !self.in_cycle() && !self.held && self.running.is_none()
    }

    /// The main loop: finish the running line, then read and execute the next ones.
    fn service(&mut self, now: Instant) {
        self.advance(now);
        match self.mode {
            Mode::Booting { until } if self.now < until => return,
            Mode::Booting { .. } => self.boot(),
            _ => {}
        }
        loop {
            if self.running.is_some() {
                if !self.run_steps() {
                    return;
                }
                self.running = None;
                self.emit("ok");
                continue;
            }
            if matches!(self.mode, Mode::Alarm { critical: true } | Mode::Sleep) {
                return;
            }
            let Some(line) = self.read_line() else { return };
            self.execute_line(line);
        }
    }

    fn boot(&mut self) {
        self.mode = Mode::Normal;
        self.emit("");
        self.emit("Grbl 1.1h ['$' for help]");
        if self.flag(22) {
            self.mode = Mode::Alarm { critical: false };
            self.emit("[MSG:'$H'|'$X' to unlock]");
        } else {
            self.run_startup_lines();
        }
    }

    fn run_startup_lines(&mut self) {
        for index in 0..self.startup_lines.len() {
            let line = self.startup_lines[index].clone();
            if line.is_empty() {
                continue;
            }
            let result = match parse_words(line.as_bytes()) {
                Ok(words) => self.execute_gcode(&words, None),
                Err(code) => Err(code),
            };
            match result {
                // Startup lines must not move the machine; anything to wait for is dropped.
                Ok(_) => self.emit(&format!(">{line}:ok")),
                Err(code) => self.emit(&format!(">{line}:error:{code}")),
            }
        }
    }

    /// Reads bytes from the RX ring until a line is complete; `None` if none is yet.
    fn read_line(&mut self) -> Option<Result<Vec<u8>, u8>> {
        while let Some(byte) = self.rx.pop_front() {
            if byte == b'\n' || byte == b'\r' {
                let line = std::mem::take(&mut self.line);
                self.comment = None;
                return Some(if std::mem::take(&mut self.overflow) {
                    Err(11)
                } else {
                    Ok(line)
                });
            }
            match self.comment {
                Some(b'(') => {
                    if byte == b')' {
                        self.comment = None;
                    }
                    continue;
                }
                Some(_) => continue,
                None => {}
            }
            match byte {
                0..=b' ' | b'/' | b'%' => {}
                b'(' | b';' => self.comment = Some(byte),
                _ if self.line.len() >= self.config.line_buffer_size - 1 => self.overflow = true,
                _ => self.line.push(byte.to_ascii_uppercase()),
            }
        }
        None
    }

    fn execute_line(&mut self, line: Result<Vec<u8>, u8>) {
        let line = match line {
            Ok(line) => line,
            Err(code) => return self.reply(Reply::Error(code)),
        };
        if line.is_empty() {
            return self.reply(Reply::Ok);
        }
        let text = String::from_utf8_lossy(&line).into_owned();
        let reply = if line[0] == b'$' {
            let reply = self.system_command(&text);
            let report = matches!(text.as_str(), "$" | "$$" | "$#" | "$G" | "$I" | "$N");
            if !report && !matches!(reply, Reply::Error(_)) {
                self.record.push(Executed {
                    line: None,
                    command: text,
                });
            }
            reply
        } else if matches!(self.mode, Mode::Alarm { .. }) || self.jogging {
            Reply::Error(9)
        } else {
            match parse_words(&line).and_then(|words| {
                let number = words
                    .iter()
                    .find(|w| w.letter == b'N')
                    .map(|w| w.value as u64);
                self.execute_gcode(&words, number)
                    .map(|steps| (steps, number))
            }) {
                Ok(_) if self.mode == (Mode::Alarm { critical: true }) => Reply::Done,
                Ok((steps, number)) => {
                    if self.mode != Mode::Check {
                        self.record.push(Executed {
                            line: number,
                            command: text,
                        });
                    }
                    self.start(steps)
                }
                Err(code) => Reply::Error(code),
            }
        };
        self.reply(reply);
    }

    fn start(&mut self, steps: VecDeque<Step>) -> Reply {
        if steps.is_empty() {
            return Reply::Ok;
        }
        self.running = Some(Running { steps });
        // The `ok` comes from `service` once the steps are done.
        Reply::Done
    }

    /// Runs the running line's steps; true once they are all done.
    fn run_steps(&mut self) -> bool {
        let Some(mut running) = self.running.take() else {
            return true;
        };
        let done = loop {
            // A block planned by an earlier step may already be due (a zero-length move
            // takes no time): retire it now, or a step waiting on the planner would ask to
            // be woken at an instant that has already passed, and a runner would spin.
            self.planner.advance(self.now);
            let Some(step) = running.steps.front_mut() else {
                break true;
            };
            match step {
                Step::Plan(block) => {
                    if self.mode == (Mode::Alarm { critical: true }) {
                        running.steps.clear();
                        break false;
                    }
                    if self.planner.free() == 0 {
                        break false;
                    }
                    // Overrides apply as a block enters the planner; GRBL also re-plans the
                    // blocks already queued, which this model does not.
                    let percent = if block.rapid {
                        self.overrides.rapid
                    } else {
                        self.overrides.feed
                    };
                    let mut block = block.clone();
                    block.duration = block.duration.mul_f64(100.0 / f64::from(percent));
                    block.feed *= f64::from(percent) / 100.0;
                    self.planner.push(self.now, block);
                }
                Step::Synchronize => {
                    if !self.planner.is_empty() || self.held {
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
                Step::SetSpindle(state, rpm) => self.spindle_now = (*state, *rpm),
                Step::Pause => {
                    self.hold();
                    *step = Step::AwaitResume;
                    continue;
                }
                Step::AwaitResume => {
                    if self.held {
                        break false;
                    }
                }
                Step::Home(duration) => {
                    self.homing = true;
                    *step = Step::HomeUntil(self.now + *duration);
                    continue;
                }
                Step::HomeUntil(until) => {
                    if self.now < *until {
                        break false;
                    }
                    self.homing = false;
                    let home = [-HOMING_PULLOFF, -HOMING_PULLOFF, -HOMING_PULLOFF, 0.0];
                    self.position = home;
                    self.planner.set_rest_position(home);
                    if matches!(self.mode, Mode::Alarm { .. }) {
                        self.mode = Mode::Normal;
                    }
                }
                Step::ProgramEnd => {
                    let tool = self.modal.tool;
                    let feed = self.modal.feed;
                    let rpm = self.modal.rpm;
                    self.modal = Modal {
                        motion: Motion::Linear,
                        tool,
                        feed,
                        rpm,
                        ..Modal::default()
                    };
                    self.spindle_now = (Spindle::Off, 0.0);
                    self.emit("[MSG:Pgm End]");
                }
            }
            running.steps.pop_front();
        };
        if !running.steps.is_empty() || !done {
            self.running = Some(running);
        }
        done
    }

    fn hold(&mut self) {
        if self.jogging {
            // A feed hold cancels a jog: the rest of it is flushed.
            self.position = self.planner.clear(self.now);
            self.jogging = false;
            return;
        }
        self.planner.hold(self.now);
        self.held = true;
    }

    fn resume(&mut self) {
        if self.held {
            self.held = false;
            self.planner.resume(self.now);
        }
    }

    fn soft_reset(&mut self) {
        let moving = self.in_cycle() && !self.planner.is_held();
        if moving {
            self.emit("ALARM:3");
        }
        let keep_alarm = moving || matches!(self.mode, Mode::Alarm { .. } | Mode::Sleep);
        self.position = self.planner.clear(self.now);
        self.planner.set_rest_position(self.position);
        self.rx.clear();
        self.line.clear();
        self.overflow = false;
        self.comment = None;
        self.running = None;
        self.held = false;
        self.jogging = false;
        self.homing = false;
        self.modal = Modal::default();
        self.g92 = [0.0; 3];
        self.tool_length = 0.0;
        self.spindle_now = (Spindle::Off, 0.0);
        self.overrides = Overrides::default();
        self.wco_countdown = 0;
        self.ov_countdown = 0;
        self.mode = Mode::Normal;
        self.emit("");
        self.emit("Grbl 1.1h ['$' for help]");
        if keep_alarm {
            self.mode = Mode::Alarm { critical: false };
            self.emit("[MSG:'$H'|'$X' to unlock]");
        } else {
            self.run_startup_lines();
        }
    }

    fn alarm(&mut self, code: u8) {
        self.position = self.planner.clear(self.now);
        self.planner.set_rest_position(self.position);
        self.running = None;
        self.held = false;
        self.mode = Mode::Alarm { critical: true };
        self.emit(&format!("ALARM:{code}"));
        self.emit("[MSG:Reset to continue]");
    }

    fn status_report(&mut self) {
        let state = match self.mode {
            Mode::Alarm { .. } => "Alarm",
            Mode::Sleep => "Sleep",
            Mode::Check => "Check",
            _ if self.homing => "Home",
            _ if self.held => "Hold:0",
            _ if self.jogging => "Jog",
            _ if !self.planner.is_empty() => "Run",
            _ => "Idle",
        };
        let here = self.planner.position(self.now);
        let mut report = format!("<{state}|");
        let (label, offset) = if self.config.status_report_mask & 1 == 1 {
            ("MPos", [0.0; 3])
        } else {
            (
                "WPos",
                self.wco(self.modal.coordinate_system, self.tool_length),
            )
        };
        let _ = write!(
            report,
            "{label}:{:.3},{:.3},{:.3}",
            here[0] - offset[0],
            here[1] - offset[1],
            here[2] - offset[2]
        );
        if self.config.status_report_mask & 2 == 2 {
            let _ = write!(
                report,
                "|Bf:{},{}",
                self.planner.free(),
                self.config.rx_buffer_size - self.rx.len()
            );
        }
        let moving = self.planner.current().filter(|_| !self.held);
        if let Some(line) = self.planner.current().and_then(|block| block.line) {
            let _ = write!(report, "|Ln:{line}");
        }
        let feed = moving.map_or(0.0, |block| block.feed);
        let rpm = if self.spindle_now.0 == Spindle::Off {
            0.0
        } else {
            self.spindle_now.1 * f64::from(self.overrides.spindle) / 100.0
        };
        let _ = write!(report, "|FS:{:.0},{:.0}", feed, rpm);
        self.refresh_fields(&mut report);
        report.push('>');
        self.emit(&report);
    }

    /// `WCO:` and `Ov:` (with `A:`) appear every few reports, as GRBL's refresh counters
    /// decide: often while idle, rarely while busy, and on the first reports after a reset.
    fn refresh_fields(&mut self, report: &mut String) {
        let busy = self.in_cycle() || self.held || self.homing;
        if self.wco_countdown > 0 {
            self.wco_countdown -= 1;
        } else {
            self.wco_countdown = if busy { 29 } else { 9 };
            if self.ov_countdown == 0 {
                self.ov_countdown = 1;
            }
            let wco = self.wco(self.modal.coordinate_system, self.tool_length);
            let _ = write!(report, "|WCO:{:.3},{:.3},{:.3}", wco[0], wco[1], wco[2]);
        }
        if self.ov_countdown > 0 {
            self.ov_countdown -= 1;
        } else {
            self.ov_countdown = if busy { 19 } else { 9 };
            let o = self.overrides;
            let _ = write!(report, "|Ov:{},{},{}", o.feed, o.rapid, o.spindle);
            let mut accessories = String::new();
            match self.spindle_now.0 {
                Spindle::Cw => accessories.push('S'),
                Spindle::Ccw => accessories.push('C'),
                Spindle::Off => {}
            }
            if self.modal.flood {
                accessories.push('F');
            }
            if self.modal.mist {
                accessories.push('M');
            }
            if !accessories.is_empty() {
                let _ = write!(report, "|A:{accessories}");
            }
        }
    }

    fn set_override(&mut self, byte: u8) {
        let o = &mut self.overrides;
        let step = |value: u8, delta: i16| (i16::from(value) + delta).clamp(10, 200) as u8;
        let before = *o;
        match byte {
            0x90 => o.feed = 100,
            0x91 => o.feed = step(o.feed, 10),
            0x92 => o.feed = step(o.feed, -10),
            0x93 => o.feed = step(o.feed, 1),
            0x94 => o.feed = step(o.feed, -1),
            0x95 => o.rapid = 100,
            0x96 => o.rapid = 50,
            0x97 => o.rapid = 25,
            0x99 => o.spindle = 100,
            0x9A => o.spindle = step(o.spindle, 10),
            0x9B => o.spindle = step(o.spindle, -10),
            0x9C => o.spindle = step(o.spindle, 1),
            0x9D => o.spindle = step(o.spindle, -1),
            0xA0 => self.modal.flood = !self.modal.flood,
            0xA1 => self.modal.mist = !self.modal.mist,
            _ => return,
        }
        if self.overrides != before || matches!(byte, 0xA0 | 0xA1) {
            // A change shows in the very next report.
            self.ov_countdown = 0;
        }
    }

    fn system_command(&mut self, text: &str) -> Reply {
        let idle_or_alarm =
            (self.is_idle() || matches!(self.mode, Mode::Alarm { .. })) && self.running.is_none();
        let busy = self.in_cycle() || self.held;
        match text {
            "$" => {
                self.emit(
                    "[HLP:$$ $# $G $I $N $x=val $Nx=line $J=line $SLP $C $X $H ~ ! ? ctrl-x]",
                );
                Reply::Ok
            }
            "$$" => {
                if busy {
                    return Reply::Error(8);
                }
                let lines: Vec<String> = self
                    .settings
                    .iter()
                    .map(|(number, value)| {
                        if is_integer_setting(*number) {
                            format!("${number}={}", *value as i64)
                        } else {
                            format!("${number}={value:.3}")
                        }
                    })
                    .collect();
                for line in lines {
                    self.emit(&line);
                }
                Reply::Ok
            }
            "$G" => {
                let m = &self.modal;
                let motion = match m.motion {
                    Motion::Rapid => "G0",
                    Motion::Linear => "G1",
                    Motion::ArcCw => "G2",
                    Motion::ArcCcw => "G3",
                    Motion::None => "G80",
                };
                let spindle = match m.spindle {
                    Spindle::Off => "M5",
                    Spindle::Cw => "M3",
                    Spindle::Ccw => "M4",
                };
                let coolant = match (m.mist, m.flood) {
                    (false, false) => "M9",
                    (true, false) => "M7",
                    (false, true) => "M8",
                    (true, true) => "M7 M8",
                };
                let line = format!(
                    "[GC:{motion} G{} G{} {} {} G94 {spindle} {coolant} T{} F{:.0} S{:.0}]",
                    m.coordinate_system,
                    m.plane,
                    if m.inches { "G20" } else { "G21" },
                    if m.relative { "G91" } else { "G90" },
                    m.tool,
                    m.feed / if m.inches { 25.4 } else { 1.0 },
                    m.rpm
                );
                self.emit(&line);
                Reply::Ok
            }
            "$C" => {
                if self.mode == Mode::Check {
                    self.emit("[MSG:Disabled]");
                    self.emit("ok");
                    self.soft_reset();
                    return Reply::Done;
                }
                if !self.is_idle() {
                    return Reply::Error(8);
                }
                self.mode = Mode::Check;
                self.emit("[MSG:Enabled]");
                Reply::Ok
            }
            "$X" => {
                if matches!(self.mode, Mode::Alarm { .. }) {
                    self.emit("[MSG:Caution: Unlocked]");
                    self.mode = Mode::Normal;
                }
                Reply::Ok
            }
            _ if text.starts_with("$J=") => self.jog(&text[3..]),
            _ if !idle_or_alarm => Reply::Error(8),
            "$#" => {
                let point = |p: [f64; 3]| format!("{:.3},{:.3},{:.3}", p[0], p[1], p[2]);
                let mut lines: Vec<String> = (54..=59)
                    .map(|system| format!("[G{system}:{}]", point(self.work_offsets[system - 54])))
                    .collect();
                lines.push(format!("[G28:{}]", point(self.stored[0])));
                lines.push(format!("[G30:{}]", point(self.stored[1])));
                lines.push(format!("[G92:{}]", point(self.g92)));
                lines.push(format!("[TLO:{:.3}]", self.tool_length));
                for line in lines {
                    self.emit(&line);
                }
                self.emit("[PRB:0.000,0.000,0.000:0]");
                Reply::Ok
            }
            "$I" => {
                self.emit(VERSION_LINE);
                let blocks = self.config.block_buffer_size - 1;
                let options = format!("[OPT:V,{blocks},{}]", self.config.rx_buffer_size);
                self.emit(&options);
                Reply::Ok
            }
            "$N" => {
                let lines: Vec<String> = self
                    .startup_lines
                    .iter()
                    .enumerate()
                    .map(|(i, line)| format!("$N{i}={line}"))
                    .collect();
                for line in lines {
                    self.emit(&line);
                }
                Reply::Ok
            }
            "$H" => {
                if !self.flag(22) {
                    return Reply::Error(5);
                }
                let travel = |axis: usize| {
                    let distance = self.position[axis]
                        .abs()
                        .min(self.setting(130 + axis as u16))
                        + 5.0;
                    distance / (HOMING_SEEK_RATE / 60.0) + 0.5
                };
                // Z first, then X and Y together, as GRBL's default homing cycles do.
                let seconds = travel(2) + travel(0).max(travel(1));
                self.start(VecDeque::from([Step::Home(scaled(
                    seconds,
                    self.config.speed,
                ))]))
            }
            "$SLP" => {
                self.emit("ok");
                self.position = self.planner.clear(self.now);
                self.mode = Mode::Sleep;
                self.emit("[MSG:Sleeping]");
                Reply::Done
            }
            _ if text.starts_with("$RST=") => match &text[5..] {
                "$" | "#" | "*" => {
                    if text.ends_with('$') || text.ends_with('*') {
                        self.settings = default_settings(&self.config);
                    }
                    if text.ends_with('#') || text.ends_with('*') {
                        self.work_offsets = [[0.0; 3]; 6];
                        self.stored = [[0.0; 3]; 2];
                    }
                    self.emit("[MSG:Restoring defaults]");
                    self.emit("ok");
                    self.soft_reset();
                    Reply::Done
                }
                _ => Reply::Error(3),
            },
            _ if text.starts_with("$N") => self.store_startup_line(&text[2..]),
            _ => self.store_setting(&text[1..]),
        }
    }

    fn store_startup_line(&mut self, rest: &str) -> Reply {
        let Some((index, line)) = rest.split_once('=') else {
            return Reply::Error(3);
        };
        let Ok(index) = index.parse::<usize>() else {
            return Reply::Error(3);
        };
        if index >= self.startup_lines.len() {
            return Reply::Error(3);
        }
        if let Err(code) = parse_words(line.as_bytes()) {
            return Reply::Error(code);
        }
        self.startup_lines[index] = line.to_owned();
        Reply::Ok
    }

    fn store_setting(&mut self, rest: &str) -> Reply {
        let Some((number, value)) = rest.split_once('=') else {
            return Reply::Error(3);
        };
        let Ok(number) = number.parse::<u16>() else {
            return Reply::Error(3);
        };
        let Some(value) = read_float(value.as_bytes())
            .filter(|(_, used)| *used == value.len())
            .map(|(v, _)| v)
        else {
            return Reply::Error(2);
        };
        if !self.settings.contains_key(&number) {
            return Reply::Error(3);
        }
        if value < 0.0 {
            return Reply::Error(4);
        }
        if number == 20 && value != 0.0 && !self.flag(22) {
            return Reply::Error(10);
        }
        self.settings.insert(number, value);
        match number {
            10 => self.config.status_report_mask = value as u8,
            20 => self.config.soft_limits = value != 0.0,
            22 => self.config.homing = value != 0.0,
            110..=112 => self.config.max_rate[usize::from(number - 110)] = value,
            130..=132 => self.config.max_travel[usize::from(number - 130)] = value,
            _ => {}
        }
        Reply::Ok
    }

    fn jog(&mut self, gcode: &str) -> Reply {
        if !(self.is_idle() || self.jogging) {
            return Reply::Error(8);
        }
        let Ok(words) = parse_words(gcode.as_bytes()) else {
            return Reply::Error(16);
        };
        let mut relative = self.modal.relative;
        let mut inches = self.modal.inches;
        let mut target = self.position;
        let mut feed = None;
        let mut axis_words = false;
        let scale = |inches: bool| if inches { 25.4 } else { 1.0 };
        for word in &words {
            match (word.letter, word.value) {
                (b'G', v) if v == 20.0 || v == 21.0 => inches = v == 20.0,
                (b'G', v) if v == 90.0 || v == 91.0 => relative = v == 91.0,
                (b'F', v) => feed = Some(v * scale(inches)),
                (b'X' | b'Y' | b'Z', _) => axis_words = true,
                _ => return Reply::Error(16),
            }
        }
        for word in &words {
            if let Some(axis) = axis_index(word.letter) {
                let value = word.value * scale(inches);
                let wco = self.wco(self.modal.coordinate_system, self.tool_length);
                target[axis] = if relative {
                    self.position[axis] + value
                } else {
                    value + wco[axis]
                };
            }
        }
        let Some(feed) = feed.filter(|f| *f > 0.0) else {
            return Reply::Error(16);
        };
        if !axis_words {
            return Reply::Error(16);
        }
        if self.config.soft_limits && self.outside_travel(&target) {
            return Reply::Error(15);
        }
        if self.planner.free() == 0 {
            // Jogs are not worth blocking for; GRBL would wait, a host should not overrun.
            return Reply::Error(8);
        }
        let block = self.block(target, Some(feed), None);
        self.position = target;
        self.jogging = true;
        self.planner.push(self.now, block);
        Reply::Ok
    }

    /// The work coordinate offset: the selected G54–G59 offset, G92 and the tool length.
    fn wco(&self, system: u8, tool_length: f64) -> [f64; 3] {
        let base = self.work_offsets[usize::from(system - 54)];
        [
            base[0] + self.g92[0],
            base[1] + self.g92[1],
            base[2] + self.g92[2] + tool_length,
        ]
    }

    fn outside_travel(&self, target: &Axes) -> bool {
        (0..3).any(|axis| target[axis] > 0.0 || target[axis] < -self.config.max_travel[axis])
    }

    /// A straight move to `target`; `feed` None is a rapid.
    fn block(&self, target: Axes, feed: Option<f64>, line: Option<u64>) -> Block {
        let d: Vec<f64> = (0..3)
            .map(|axis| (target[axis] - self.position[axis]).abs())
            .collect();
        let length = (d[0] * d[0] + d[1] * d[1] + d[2] * d[2]).sqrt();
        let by_axes = (0..3)
            .map(|axis| d[axis] / (self.config.max_rate[axis] / 60.0))
            .fold(0.0, f64::max);
        let seconds = match feed {
            Some(feed) => by_axes.max(length / (feed / 60.0)),
            None => by_axes,
        };
        let feed_reported = if seconds > 0.0 {
            length / seconds * 60.0
        } else {
            0.0
        };
        Block {
            start: self.position,
            end: target,
            duration: scaled(seconds, self.config.speed),
            feed: feed_reported,
            line: line.and_then(|n| u32::try_from(n).ok()),
            rapid: feed.is_none(),
        }
    }

    /// Validates a whole block as GRBL's `gc_execute_line` does, then applies it.
    fn execute_gcode(&mut self, words: &[Word], number: Option<u64>) -> Result<VecDeque<Step>, u8> {
        let block = GcodeBlock::parse(words)?;
        let inches = block.units.unwrap_or(self.modal.inches);
        let unit = if inches { 25.4 } else { 1.0 };
        if block.value(b'N').is_some_and(|n| n > MAX_LINE_NUMBER) {
            return Err(27);
        }
        if block.value(b'T').is_some_and(|t| t > MAX_TOOL) {
            return Err(38);
        }
        let feed = block
            .value(b'F')
            .map(|f| f * unit)
            .unwrap_or(self.modal.feed);
        let motion = block.motion.unwrap_or(self.modal.motion);
        let has_axes = block.has_axis_words();
        let axis = |letter: u8| block.value(letter).map(|v| v * unit);

        // Which command the axis words belong to (GRBL's `axis_command`).
        let non_modal_axes = matches!(
            block.non_modal,
            Some(NonModal::SetCoordinates | NonModal::GoStored(_) | NonModal::SetOffset)
        );
        let tool_axes = block.tool_length == Some(ToolLength::Dynamic);
        if non_modal_axes && tool_axes {
            return Err(24);
        }
        if (non_modal_axes || tool_axes) && block.motion.is_some() && has_axes {
            return Err(24);
        }
        let motion_command = !non_modal_axes && !tool_axes && (block.motion.is_some() || has_axes);
        let machine_coordinates = block.non_modal == Some(NonModal::MachineCoordinates);
        if machine_coordinates && !matches!(motion, Motion::Rapid | Motion::Linear) {
            return Err(30);
        }
        if motion_command && motion == Motion::None && has_axes {
            return Err(31);
        }
        if motion_command
            && matches!(motion, Motion::Linear | Motion::ArcCw | Motion::ArcCcw)
            && feed <= 0.0
        {
            return Err(22);
        }
        let dwell = match block.non_modal {
            Some(NonModal::Dwell) => Some(block.value(b'P').ok_or(28)?),
            _ => None,
        };
        let coordinates = if block.non_modal == Some(NonModal::SetCoordinates) {
            let (Some(l), Some(p)) = (block.value(b'L'), block.value(b'P')) else {
                return Err(28);
            };
            if l != 2.0 && l != 20.0 {
                return Err(20);
            }
            if p.trunc() > 6.0 {
                return Err(29);
            }
            if !has_axes {
                return Err(26);
            }
            Some((l == 20.0, p.trunc() as u8))
        } else {
            None
        };
        if block.non_modal == Some(NonModal::SetOffset) && !has_axes {
            return Err(26);
        }
        if tool_axes && (axis(b'X').is_some() || axis(b'Y').is_some() || axis(b'Z').is_none()) {
            return Err(37);
        }
        let is_arc = motion_command && matches!(motion, Motion::ArcCw | Motion::ArcCcw);
        if is_arc && !has_axes {
            return Err(26);
        }
        // Words nothing in this block uses.
        let present = |letter: u8| block.value(letter).is_some();
        if !is_arc && (present(b'I') || present(b'J') || present(b'K') || present(b'R')) {
            return Err(36);
        }
        if dwell.is_none() && coordinates.is_none() && present(b'P') {
            return Err(36);
        }
        if coordinates.is_none() && present(b'L') {
            return Err(36);
        }

        let system = block
            .coordinate_system
            .unwrap_or(self.modal.coordinate_system);
        let tool_length = match block.tool_length {
            Some(ToolLength::Dynamic) => axis(b'Z').unwrap_or(0.0),
            Some(ToolLength::Cancel) => 0.0,
            None => self.tool_length,
        };
        let wco = self.wco(system, tool_length);
        let relative = block.distance.unwrap_or(self.modal.relative);
        let mut target = self.position;
        for (index, letter) in [b'X', b'Y', b'Z'].into_iter().enumerate() {
            if let Some(value) = axis(letter) {
                target[index] = if machine_coordinates {
                    value
                } else if relative {
                    self.position[index] + value
                } else {
                    value + wco[index]
                };
            }
        }
        let mut segments = Vec::new();
        if motion_command && has_axes {
            if is_arc {
                let plane = block.plane.unwrap_or(self.modal.plane);
                segments = self.arc(&block, motion == Motion::ArcCw, plane, unit, target)?;
            } else {
                segments.push(target);
            }
        }
        if let Some(NonModal::GoStored(slot)) = block.non_modal {
            // G28/G30: through the optional intermediate point, then the named axes (all if
            // none is named) to the stored position.
            if has_axes {
                segments.push(target);
            }
            let mut end = target;
            for (index, letter) in [b'X', b'Y', b'Z'].into_iter().enumerate() {
                if !has_axes || present(letter) {
                    end[index] = self.stored[slot][index];
                }
            }
            segments.push(end);
        }
        if self.config.soft_limits && segments.iter().any(|point| self.outside_travel(point)) {
            // The alarm answers for the line: the caller sees the critical alarm, not steps.
            self.alarm(2);
            return Ok(VecDeque::new());
        }

        // Everything checked: apply in GRBL's order of execution.
        let mut steps = VecDeque::new();
        let check = self.mode == Mode::Check;
        self.modal.feed = feed;
        if let Some(rpm) = block.value(b'S') {
            self.modal.rpm = rpm;
        }
        if let Some(tool) = block.value(b'T') {
            self.modal.tool = tool as u8;
        }
        if let Some(spindle) = block.spindle {
            self.modal.spindle = spindle;
        }
        let wanted = (self.modal.spindle, self.modal.rpm);
        if wanted != self.spindle_now && !check {
            steps.push_back(Step::Synchronize);
            steps.push_back(Step::SetSpindle(wanted.0, wanted.1));
        }
        if let Some((mist, flood)) = block.coolant {
            self.modal.mist = mist;
            self.modal.flood = flood;
        }
        if let Some(seconds) = dwell
            && !check
        {
            steps.push_back(Step::Synchronize);
            steps.push_back(Step::Dwell(scaled(seconds, self.config.speed)));
        }
        if let Some(plane) = block.plane {
            self.modal.plane = plane;
        }
        if let Some(inches) = block.units {
            self.modal.inches = inches;
        }
        if let Some(relative) = block.distance {
            self.modal.relative = relative;
        }
        self.modal.coordinate_system = system;
        self.tool_length = tool_length;
        match block.non_modal {
            Some(NonModal::SetCoordinates) => {
                let (relative_to_here, p) = coordinates.unwrap_or((false, 0));
                let index = if p == 0 {
                    usize::from(system - 54)
                } else {
                    usize::from(p - 1)
                };
                for (axis_index, letter) in [b'X', b'Y', b'Z'].into_iter().enumerate() {
                    if let Some(value) = axis(letter) {
                        self.work_offsets[index][axis_index] = if relative_to_here {
                            let tool = if axis_index == 2 { tool_length } else { 0.0 };
                            self.position[axis_index] - self.g92[axis_index] - tool - value
                        } else {
                            value
                        };
                    }
                }
            }
            Some(NonModal::Store(slot)) => {
                self.stored[slot] = [self.position[0], self.position[1], self.position[2]];
            }
            Some(NonModal::SetOffset) => {
                let base = self.work_offsets[usize::from(system - 54)];
                for (index, letter) in [b'X', b'Y', b'Z'].into_iter().enumerate() {
                    if let Some(value) = axis(letter) {
                        let tool = if index == 2 { tool_length } else { 0.0 };
                        self.g92[index] = self.position[index] - base[index] - tool - value;
                    }
                }
            }
            Some(NonModal::ClearOffset) => self.g92 = [0.0; 3],
            _ => {}
        }
        if let Some(motion) = block.motion {
            self.modal.motion = motion;
        }
        let rapid =
            matches!(block.non_modal, Some(NonModal::GoStored(_))) || motion == Motion::Rapid;
        for point in segments {
            if !check {
                steps.push_back(Step::Plan(self.block(
                    point,
                    (!rapid).then_some(feed),
                    number,
                )));
            }
            self.position = point;
        }
        match block.stop {
            Some(0) if !check => {
                steps.push_back(Step::Synchronize);
                steps.push_back(Step::Pause);
            }
            Some(2 | 30) => {
                if !check {
                    steps.push_back(Step::Synchronize);
                }
                steps.push_back(Step::ProgramEnd);
            }
            _ => {}
        }
        Ok(steps)
    }

    /// Splits an arc into chords as `mc_arc` does (arc tolerance `$12` = 0.002 mm).
    fn arc(
        &self,
        block: &GcodeBlock,
        clockwise: bool,
        plane: u8,
        unit: f64,
        target: Axes,
    ) -> Result<Vec<Axes>, u8> {
        let (a, b, offsets) = match plane {
            17 => (0, 1, [b'I', b'J']),
            18 => (2, 0, [b'K', b'I']),
            _ => (1, 2, [b'J', b'K']),
        };
        let in_plane = |axis: usize| block.value([b'X', b'Y', b'Z'][axis]).is_some();
        if !in_plane(a) && !in_plane(b) {
            return Err(32);
        }
        let start = self.position;
        let (dx, dy) = (target[a] - start[a], target[b] - start[b]);
        let center = if let Some(r) = block.value(b'R') {
            let r = r * unit;
            if dx == 0.0 && dy == 0.0 {
                return Err(33);
            }
            let h2 = 4.0 * r * r - dx * dx - dy * dy;
            if h2 < 0.0 {
                return Err(34);
            }
            let mut h = -h2.sqrt() / dx.hypot(dy);
            if !clockwise {
                h = -h;
            }
            if r < 0.0 {
                h = -h;
            }
            [
                start[a] + 0.5 * (dx - dy * h),
                start[b] + 0.5 * (dy + dx * h),
            ]
        } else {
            let i = block.value(offsets[0]).map(|v| v * unit);
            let j = block.value(offsets[1]).map(|v| v * unit);
            if i.is_none() && j.is_none() {
                return Err(35);
            }
            let center = [start[a] + i.unwrap_or(0.0), start[b] + j.unwrap_or(0.0)];
            let r0 = (start[a] - center[0]).hypot(start[b] - center[1]);
            let r1 = (target[a] - center[0]).hypot(target[b] - center[1]);
            let delta = (r1 - r0).abs();
            if delta > 0.005 && (delta > 0.5 || delta > 0.001 * r0) {
                return Err(33);
            }
            center
        };
        let radius = (start[a] - center[0]).hypot(start[b] - center[1]);
        let a0 = (start[b] - center[1]).atan2(start[a] - center[0]);
        let a1 = (target[b] - center[1]).atan2(target[a] - center[0]);
        let tau = std::f64::consts::TAU;
        let mut sweep = if clockwise { a0 - a1 } else { a1 - a0 }.rem_euclid(tau);
        if sweep < 1e-9 {
            sweep = tau;
        }
        let chord = (ARC_TOLERANCE * (2.0 * radius - ARC_TOLERANCE))
            .max(1e-12)
            .sqrt();
        let count = ((0.5 * sweep * radius / chord).floor() as usize).clamp(1, 10_000);
        let direction = if clockwise { -1.0 } else { 1.0 };
        let linear = 3 - a - b;
        Ok((1..=count)
            .map(|k| {
                if k == count {
                    return target;
                }
                let fraction = k as f64 / count as f64;
                let angle = a0 + direction * sweep * fraction;
                let mut point = target;
                point[a] = center[0] + radius * angle.cos();
                point[b] = center[1] + radius * angle.sin();
                point[linear] = start[linear] + (target[linear] - start[linear]) * fraction;
                point
            })
            .collect())
    }

    fn realtime(&mut self, byte: u8) {
        let locked = self.mode == Mode::Check || matches!(self.mode, Mode::Alarm { .. });
        match byte {
            b'?' if !self.homing => self.status_report(),
            b'!' if !self.homing && !locked => self.hold(),
            b'~' => self.resume(),
            0x18 => self.soft_reset(),
            0x85 if self.jogging => {
                self.position = self.planner.clear(self.now);
                self.jogging = false;
            }
            0x90..=0x9D | 0xA0 | 0xA1 => self.set_override(byte),
            // The safety door and debug bytes are not modelled; the rest is ignored in the
            // state the machine is in, as GRBL does.
            _ => {}
        }
    }
}

impl FirmwareCore for Grbl {
    fn handle_input(&mut self, now: Instant, bytes: &[u8]) {
        self.advance(now);
        for &byte in bytes {
            if let Mode::Booting { until } = self.mode {
                if self.now < until {
                    self.rx_lost += 1;
                    continue;
                }
                self.service(now);
            }
            if matches!(byte, b'?' | b'!' | b'~' | 0x18) || byte >= 0x80 {
                self.realtime(byte);
                continue;
            }
            if self.rx.len() >= self.config.rx_buffer_size {
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
        if let Mode::Booting { until } = self.mode {
            return Some(until);
        }
        let running = self.running.as_ref()?;
        match running.steps.front()? {
            Step::Plan(_) | Step::Synchronize => self.planner.next_completion(),
            Step::DwellUntil(until) | Step::HomeUntil(until) => Some(*until),
            Step::AwaitResume => None,
            _ => Some(self.now),
        }
    }

    fn poll_output(&mut self) -> Option<Vec<u8>> {
        self.output.pop_front()
    }

    fn trip(&mut self, now: Instant) {
        self.advance(now);
        if !matches!(
            self.mode,
            Mode::Booting { .. } | Mode::Alarm { critical: true }
        ) {
            self.alarm(1);
        }
    }

    fn line_end(&self) -> &'static [u8] {
        b"\r\n"
    }

    fn reset(&mut self, now: Instant) {
        self.advance(now);
        // Power is gone: so is the position.
        self.planner.clear(now);
        self.position = [0.0; 4];
        self.planner.set_rest_position(self.position);
        self.rx.clear();
        self.line.clear();
        self.overflow = false;
        self.comment = None;
        self.running = None;
        self.held = false;
        self.jogging = false;
        self.homing = false;
        self.modal = Modal::default();
        self.g92 = [0.0; 3];
        self.tool_length = 0.0;
        self.spindle_now = (Spindle::Off, 0.0);
        self.overrides = Overrides::default();
        self.wco_countdown = 0;
        self.ov_countdown = 0;
        self.output.clear();
        self.mode = Mode::Booting {
            until: now + self.config.boot_delay,
        };
        self.service(now);
    }

    fn record(&self) -> &[Executed] {
        &self.record
    }

    fn rx_lost(&self) -> u64 {
        self.rx_lost
    }
}

fn is_integer_setting(number: u16) -> bool {
    !matches!(number, 11 | 12 | 24 | 25 | 27 | 100..=132)
}

fn default_settings(config: &GrblConfig) -> BTreeMap<u16, f64> {
    let flag = |on: bool| if on { 1.0 } else { 0.0 };
    let mut settings = BTreeMap::from([
        (0, 10.0),
        (1, 25.0),
        (2, 0.0),
        (3, 0.0),
        (4, 0.0),
        (5, 0.0),
        (6, 0.0),
        (10, f64::from(config.status_report_mask)),
        (11, 0.010),
        (12, ARC_TOLERANCE),
        (13, 0.0),
        (20, flag(config.soft_limits)),
        (21, 0.0),
        (22, flag(config.homing)),
        (23, 0.0),
        (24, 25.0),
        (25, HOMING_SEEK_RATE),
        (26, 250.0),
        (27, HOMING_PULLOFF),
        (30, 1000.0),
        (31, 0.0),
        (32, 0.0),
    ]);
    for axis in 0..3u16 {
        settings.insert(100 + axis, 250.0);
        settings.insert(110 + axis, config.max_rate[usize::from(axis)]);
        settings.insert(120 + axis, 10.0);
        settings.insert(130 + axis, config.max_travel[usize::from(axis)]);
    }
    settings
}

#[cfg(test)]
mod tests;
