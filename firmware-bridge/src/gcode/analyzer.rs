//! The streaming analyzer: bytes in, one [`Analysis`] out, memory bounded by the longest
//! line kept (capped) rather than by the file.
//!
//! Semantics follow Marlin where dialects differ and say so: `G90`/`G91` also switch the
//! extruder (Marlin), `G0` without `F` runs at the machine's rapid rate, `G4 P` is
//! milliseconds unless the file already looked like GRBL, `G92` shifts the logical origin
//! so that bounds stay in the coordinates the file started in.

use std::f64::consts::{FRAC_PI_2, TAU};
use std::io::Read;

use munifab_protocol::{Capabilities, Flavour, Process};

use super::analysis::{Analysis, BoundsAcc, Evidence, LayerHeights, Temperatures, ToolReport};
use super::commands::{self, Class};
use super::finding::{FindingCode, FindingSink};
use super::lexer::{AXES_XYZE, AXIS_E, AXIS_F, Axes, Lexer, PlainMove, Token, Word, plain_move};
use super::motion::{MotionLimits, Planner};
use super::profile::MachineProfile;
use super::slicer::SlicerScanner;

/// Longest line analysed; the rest of a longer line is dropped with an error, so that a
/// file without newlines cannot make the analyzer hold it whole.
pub const MAX_LINE_BYTES: usize = 1 << 20;
/// Longest command part (before any comment) a firmware accepts.
const MAX_CODE_BYTES: usize = 255;
/// Highest tool number tracked.
const MAX_TOOLS: u32 = 64;
/// Most distinct spindle speeds kept.
const MAX_SPINDLE_SPEEDS: usize = 32;
const EPS: f64 = 1e-9;

/// Slot of each letter in [`Params`]; only the letters the analysis reads have one, which
/// keeps the per-line state small enough to clear with a few stores.
const SLOT: [u8; 26] = {
    let mut slots = [NO_SLOT; 26];
    let letters = *b"XYZEFIJKRSPT";
    let mut i = 0;
    while i < letters.len() {
        slots[(letters[i] - b'A') as usize] = i as u8;
        i += 1;
    }
    slots
};
const NO_SLOT: u8 = u8::MAX;

/// Parameters of one line, by letter.
#[derive(Debug, Clone, Copy)]
struct Params {
    values: [f64; 12],
    /// Columns beyond 65535 are clamped: a size that keeps clearing this struct inline.
    columns: [u16; 12],
    /// Letters with a number, bit `letter - 'A'`.
    mask: u32,
    /// Letters written without a number (`G28 X Y`), or that the analysis does not read.
    flags: u32,
}

impl Params {
    const EMPTY: Params = Params {
        values: [0.0; 12],
        columns: [0; 12],
        mask: 0,
        flags: 0,
    };

    #[inline]
    fn get(&self, letter: u8) -> Option<f64> {
        let i = letter - b'A';
        (self.mask & (1 << i) != 0).then(|| self.values[SLOT[i as usize] as usize])
    }

    #[inline]
    fn column(&self, letter: u8) -> u32 {
        match SLOT[(letter - b'A') as usize] {
            NO_SLOT => 1,
            slot => u32::from(self.columns[slot as usize]),
        }
    }

    #[inline]
    fn set(&mut self, w: &Word) {
        let i = w.letter - b'A';
        match SLOT[i as usize] {
            NO_SLOT => self.flags |= 1 << i,
            slot => {
                self.values[slot as usize] = w.value;
                self.columns[slot as usize] = u16::try_from(w.column).unwrap_or(u16::MAX);
                self.mask |= 1 << i;
            }
        }
    }

    fn has_any(&self, letters: &[u8]) -> bool {
        letters.iter().any(|&l| self.mask & (1 << (l - b'A')) != 0)
    }

    fn named(&self, letter: u8) -> bool {
        (self.mask | self.flags) & (1 << (letter - b'A')) != 0
    }

    /// The move words, in the form the motion code reads.
    fn axes(&self) -> Axes {
        let mut axes = Axes::EMPTY;
        for (i, letter) in b"XYZEF".iter().enumerate() {
            if let Some(v) = self.get(*letter) {
                axes.values[i] = v;
                axes.columns[i] = self.columns[SLOT[(letter - b'A') as usize] as usize];
                axes.mask |= 1 << i;
            }
        }
        axes
    }
}

/// A G, M or T command on a line.
#[derive(Debug, Clone, Copy)]
struct Cmd {
    letter: u8,
    minor: u8,
    major: u32,
    column: u32,
}

impl Cmd {
    const EMPTY: Cmd = Cmd {
        letter: 0,
        minor: 0,
        major: 0,
        column: 0,
    };
}

const MAX_CMDS: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Motion {
    Rapid,
    Linear,
    ArcCw,
    ArcCcw,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Plane {
    Xy,
    Zx,
    Yz,
}

impl Plane {
    /// Axes (first, second, normal) and the offset letters for the first two.
    fn axes(self) -> (usize, usize, usize, u8, u8) {
        match self {
            Plane::Xy => (0, 1, 2, b'I', b'J'),
            Plane::Zx => (2, 0, 1, b'K', b'I'),
            Plane::Yz => (1, 2, 0, b'J', b'K'),
        }
    }
}

/// Kinds of evidence for the dialect, each recorded once.
#[derive(Debug, Clone, Copy)]
enum Clue {
    Extrusion,
    Hotend,
    Bed,
    ExtruderMode,
    Fan,
    FdmSlicer,
    Spindle,
    Dollar,
    WorkOffsets,
    Coolant,
    Cam,
    Laser,
}

impl Clue {
    fn describe(self) -> (Flavour, u32, &'static str) {
        match self {
            Clue::Extrusion => (Flavour::Reprap, 3, "moves extrude on E"),
            Clue::Hotend => (Flavour::Reprap, 3, "hotend temperature (M104/M109)"),
            Clue::Bed => (Flavour::Reprap, 2, "bed temperature (M140/M190)"),
            Clue::ExtruderMode => (Flavour::Reprap, 2, "extruder mode (M82/M83)"),
            Clue::Fan => (Flavour::Reprap, 1, "part cooling fan (M106/M107)"),
            Clue::FdmSlicer => (Flavour::Reprap, 2, "header of an FDM slicer"),
            Clue::Spindle => (
                Flavour::Grbl,
                3,
                "spindle or laser on with a speed (M3/M4 S)",
            ),
            Clue::Dollar => (Flavour::Grbl, 3, "GRBL system command ($)"),
            Clue::WorkOffsets => (Flavour::Grbl, 1, "work coordinate systems (G54–G59)"),
            Clue::Coolant => (Flavour::Grbl, 1, "coolant (M7/M8/M9)"),
            Clue::Cam => (Flavour::Grbl, 2, "header of a CAM post-processor"),
            Clue::Laser => (Flavour::Grbl, 2, "header of a laser program"),
        }
    }
}

/// Per-tool accumulation.
#[derive(Debug, Clone, Default)]
struct ToolAcc {
    used: bool,
    extrusion: f64,
    all: BoundsAcc,
    work: BoundsAcc,
    hotend: Option<f64>,
}

/// Limits checked while streaming, from a profile.
#[derive(Debug, Clone)]
struct Limits {
    caps: Capabilities,
    /// The build volume, per axis, with a micrometre of tolerance.
    lo: [f64; 3],
    hi: [f64; 3],
}

impl Limits {
    fn new(caps: Capabilities) -> Self {
        let v = caps.build_volume;
        Self {
            lo: [v.min.x - 1e-6, v.min.y - 1e-6, v.min.z - 1e-6],
            hi: [v.max.x + 1e-6, v.max.y + 1e-6, v.max.z + 1e-6],
            caps,
        }
    }
}

/// Reads G-code in chunks of any size and produces an [`Analysis`].
///
/// ```
/// use munifab_firmware_bridge::gcode::Analyzer;
/// let mut a = Analyzer::new();
/// a.feed(b"G21\nG90\nG1 X10 Y0 F600\nG1 X1");
/// a.feed(b"0 Y10\n");
/// let analysis = a.finish();
/// assert_eq!(analysis.bounds.unwrap().max.y, 10.0);
/// ```
#[derive(Debug, Clone)]
pub struct Analyzer {
    // streaming
    carry: Vec<u8>,
    carry_len: usize,
    line_no: u64,
    bytes: u64,
    // modal state
    pos: [f64; 3],
    shift: [f64; 3],
    known: [bool; 3],
    e_pos: f64,
    absolute: bool,
    e_relative: bool,
    arc_absolute: bool,
    /// Millimetres per file unit: 25.4 after `G20`, 1 after `G21` (kept as a number rather
    /// than a flag: every coordinate is multiplied by it).
    scale: f64,
    plane: Plane,
    motion: Option<Motion>,
    feed_mm_min: f64,
    /// `feed_mm_min.min(max_feed)`, kept up to date when either changes: the feed changes
    /// on few lines, and every move needs the limit.
    feed_limit: f64,
    tool: u32,
    spindle_on: bool,
    spindle_s: f64,
    // limits for the estimate
    max_feed: f64,
    max_z_feed: f64,
    profile_accel: f64,
    planner: Planner,
    // accumulation
    /// Every tool a file may name, allocated once: a move reaches its tool's entry without
    /// a length check. Entries never used are not reported.
    tools: Box<[ToolAcc; MAX_TOOLS as usize]>,
    extrusion: f64,
    layers: u32,
    layer_z: f64,
    layer_min: f64,
    layer_max: f64,
    first_layer_z: f64,
    temps: Temperatures,
    fan: Option<f64>,
    spindle_speeds: Vec<f64>,
    clues: [Option<u64>; 12],
    m4_used: bool,
    z_moved: bool,
    unknown_seen: Vec<(u8, u32, u8)>,
    /// Tool and work state of the last move whose end point went into the bounds.
    chain: Option<(u32, bool)>,
    slicer: SlicerScanner,
    findings: FindingSink,
    limits: Option<Limits>,
}

impl Default for Analyzer {
    fn default() -> Self {
        Self::new()
    }
}

impl Analyzer {
    /// An analyzer with typical printer motion limits and no machine to validate against.
    pub fn new() -> Self {
        Self::build(MotionLimits::DEFAULT, None)
    }

    /// An analyzer that also validates against `profile` and uses its motion limits.
    pub fn with_profile(profile: &MachineProfile) -> Self {
        Self::build(
            profile.motion,
            Some(Limits::new(profile.capabilities.clone())),
        )
    }

    fn build(motion: MotionLimits, limits: Option<Limits>) -> Self {
        Self {
            carry: Vec::new(),
            carry_len: 0,
            line_no: 0,
            bytes: 0,
            pos: [0.0; 3],
            shift: [0.0; 3],
            known: [false; 3],
            e_pos: 0.0,
            absolute: true,
            e_relative: false,
            arc_absolute: false,
            scale: 1.0,
            plane: Plane::Xy,
            motion: None,
            feed_mm_min: motion.max_feed_mm_min,
            feed_limit: motion.max_feed_mm_min,
            tool: 0,
            spindle_on: false,
            spindle_s: 0.0,
            max_feed: motion.max_feed_mm_min,
            max_z_feed: motion.max_z_feed_mm_min,
            profile_accel: motion.acceleration_mm_s2,
            planner: Planner::new(motion.acceleration_mm_s2),
            tools: Box::new(std::array::from_fn(|_| ToolAcc::default())),
            extrusion: 0.0,
            layers: 0,
            layer_z: f64::NAN,
            layer_min: f64::INFINITY,
            layer_max: 0.0,
            first_layer_z: 0.0,
            temps: Temperatures::default(),
            fan: None,
            spindle_speeds: Vec::new(),
            clues: [None; 12],
            m4_used: false,
            z_moved: false,
            unknown_seen: Vec::new(),
            chain: None,
            slicer: SlicerScanner::default(),
            findings: FindingSink::new(),
            limits,
        }
    }

    /// Feeds the next bytes of the file; lines may be split anywhere.
    pub fn feed(&mut self, mut chunk: &[u8]) {
        self.bytes += chunk.len() as u64;
        if self.carry_len > 0 {
            match memchr::memchr(b'\n', chunk) {
                None => {
                    self.append_carry(chunk);
                    return;
                }
                Some(i) => {
                    self.append_carry(&chunk[..i]);
                    let carry = std::mem::take(&mut self.carry);
                    self.line(&carry, self.carry_len);
                    self.carry = carry;
                    self.carry.clear();
                    self.carry_len = 0;
                    chunk = &chunk[i + 1..];
                }
            }
        }
        let mut m = PlainMove::EMPTY;
        while !chunk.is_empty() {
            // Plain moves are read in one pass that also finds the end of the line; a line
            // that runs to the end of the chunk may continue in the next one, so it waits.
            if plain_move(chunk, MAX_CODE_BYTES, &mut m) && m.end < chunk.len() {
                self.line_no += 1;
                self.plain(&m, chunk);
                chunk = &chunk[m.end + 1..];
                continue;
            }
            match memchr::memchr(b'\n', chunk) {
                Some(nl) => {
                    let line = &chunk[..nl];
                    self.line(&line[..line.len().min(MAX_LINE_BYTES)], line.len());
                    chunk = &chunk[nl + 1..];
                }
                None => {
                    self.append_carry(chunk);
                    return;
                }
            }
        }
    }

    fn append_carry(&mut self, bytes: &[u8]) {
        let room = MAX_LINE_BYTES.saturating_sub(self.carry.len());
        self.carry
            .extend_from_slice(&bytes[..bytes.len().min(room)]);
        self.carry_len += bytes.len();
    }

    /// Reads `reader` to the end in 64 KiB chunks.
    pub fn read_from(&mut self, mut reader: impl Read) -> std::io::Result<()> {
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match reader.read(&mut buf) {
                Ok(0) => return Ok(()),
                Ok(n) => self.feed(&buf[..n]),
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
    }

    fn clue(&mut self, clue: Clue) {
        let slot = &mut self.clues[clue as usize];
        if slot.is_none() {
            *slot = Some(self.line_no);
        }
    }

    fn tool_acc(&mut self, tool: u32) -> &mut ToolAcc {
        &mut self.tools[tool.min(MAX_TOOLS - 1) as usize]
    }

    /// One line without its `\n`; `full_len` is its length before any truncation.
    fn line(&mut self, raw: &[u8], full_len: usize) {
        self.line_no += 1;
        let line_no = self.line_no;
        if full_len > MAX_LINE_BYTES {
            self.findings.push(FindingCode::LineTooLong, line_no, 1, || {
                format!("line is {full_len} bytes long; only the first {MAX_LINE_BYTES} were analysed and no firmware accepts it")
            });
        }
        let mut m = PlainMove::EMPTY;
        if plain_move(raw, MAX_CODE_BYTES, &mut m) {
            self.plain(&m, raw);
            return;
        }
        let mut params = Params::EMPTY;
        let mut cmds = [Cmd::EMPTY; MAX_CMDS];
        let mut n_cmds = 0;
        let mut code_end = 0usize;
        let mut text_arg = false;
        for token in Lexer::new(raw) {
            match token {
                Token::Word(w) => {
                    code_end = w.column as usize;
                    // After an M command, T is its tool parameter (`M104 T1 S240`).
                    let t_param =
                        w.letter == b'T' && cmds[..n_cmds].iter().any(|c| c.letter == b'M');
                    match w.letter {
                        b'G' | b'M' | b'T' if !t_param => {
                            if n_cmds < MAX_CMDS {
                                cmds[n_cmds] = Cmd {
                                    letter: w.letter,
                                    major: w.major,
                                    minor: w.minor,
                                    column: w.column,
                                };
                                n_cmds += 1;
                            }
                        }
                        b'N' | b'O' => {}
                        _ => params.set(&w),
                    }
                }
                Token::Flag(letter, _) => params.flags |= 1 << (letter - b'A'),
                Token::Comment(text, _) => self.slicer.comment(text, line_no, &mut self.findings),
                Token::Text(_, column) => {
                    text_arg = true;
                    code_end = column as usize;
                }
                Token::Dollar(text, column) => self.dollar(text, column),
                Token::Macro(text, column) => {
                    let name_end = text.iter().position(|b| *b == b' ').unwrap_or(text.len());
                    let name = String::from_utf8_lossy(&text[..name_end]).into_owned();
                    self.findings.push(FindingCode::UnknownCommand, line_no, column, || {
                        format!("`{name}` is not a G-code command (a Klipper or host macro?); Marlin and GRBL will reject it")
                    });
                }
                Token::Junk(column) => self.malformed(raw, column),
            }
        }
        let code_len = if raw.len() > MAX_CODE_BYTES {
            memchr::memchr(b';', raw).unwrap_or(raw.len())
        } else {
            0
        };
        if code_end > 0 && code_len > MAX_CODE_BYTES && full_len <= MAX_LINE_BYTES {
            self.findings.push(FindingCode::LineTooLong, line_no, 1, || {
                format!("the command is {code_len} characters long; firmware accepts at most {MAX_CODE_BYTES}")
            });
        }
        if n_cmds == 0 && params.mask == 0 && params.flags == 0 {
            return;
        }
        self.execute(&cmds[..n_cmds], &params, text_arg);
    }

    /// The hot path for the lines that make up most of a sliced file (see [`plain_move`]);
    /// `buf` is what the move was read from, for its comment. Does what the general path
    /// does with the same line.
    #[inline(always)]
    fn plain(&mut self, m: &PlainMove, buf: &[u8]) {
        if let Some((start, end)) = m.comment {
            self.slicer
                .comment(&buf[start..end], self.line_no, &mut self.findings);
        }
        let f = m.axes.values[4];
        if m.axes.has(AXIS_F) && f > 0.0 {
            self.set_feed(f * self.scale());
        }
        self.motion = Some(if m.rapid {
            Motion::Rapid
        } else {
            Motion::Linear
        });
        if m.axes.has(AXES_XYZE) {
            self.linear(m.rapid, &m.axes);
        }
    }

    fn malformed(&mut self, raw: &[u8], column: u32) {
        let line_no = self.line_no;
        let (column, message) = diagnose(raw, column);
        self.findings
            .push(FindingCode::MalformedLine, line_no, column, || message);
    }

    fn dollar(&mut self, text: &[u8], column: u32) {
        self.clue(Clue::Dollar);
        let line_no = self.line_no;
        let shown = String::from_utf8_lossy(text).into_owned();
        match commands::dollar(text) {
            Class::Forbidden(why) => {
                self.findings
                    .push(FindingCode::ForbiddenCommand, line_no, column, || {
                        format!("`{shown}` {why}")
                    })
            }
            Class::Attention(why) => {
                self.findings
                    .push(FindingCode::AttentionCommand, line_no, column, || {
                        format!("`{shown}` {why}")
                    })
            }
            Class::Known | Class::Unknown => {}
        }
    }

    /// Sets the modal feed, mm/min.
    #[inline(always)]
    fn set_feed(&mut self, feed_mm_min: f64) {
        self.feed_mm_min = feed_mm_min;
        self.feed_limit = feed_mm_min.min(self.max_feed);
    }

    fn scale(&self) -> f64 {
        self.scale
    }

    fn execute(&mut self, cmds: &[Cmd], p: &Params, text_arg: bool) {
        // Units first: they decide how every number on the line reads.
        for c in cmds {
            if c.letter == b'G' {
                match c.major {
                    20 => self.scale = 25.4,
                    21 => self.scale = 1.0,
                    _ => {}
                }
            }
        }
        let scale = self.scale();
        if let Some(f) = p.get(b'F')
            && f > 0.0
        {
            self.set_feed(f * scale);
        }
        let has_m = cmds.iter().any(|c| c.letter == b'M');
        let has_other_m = cmds
            .iter()
            .any(|c| c.letter == b'M' && !matches!(c.major, 3..=5));
        if let Some(s) = p.get(b'S')
            && !has_other_m
            && !cmds.iter().any(|c| c.letter == b'G' && c.major == 4)
        {
            self.spindle_s = s;
            if self.spindle_on {
                self.record_spindle(s, p.column(b'S'));
            }
        }
        let mut axis_consumer = false;
        let mut line_motion = None;
        for c in cmds {
            match c.letter {
                b'T' => self.select_tool(c),
                b'M' => self.m_code(c, p, text_arg),
                b'G' => {
                    if let Some(m) = self.g_code(c, p) {
                        line_motion = Some(m);
                    }
                    if matches!(c.major, 4 | 10 | 28 | 29 | 30 | 38 | 43 | 92) {
                        axis_consumer = true;
                    }
                }
                _ => {}
            }
        }
        if line_motion.is_some() {
            self.motion = line_motion;
        }
        if axis_consumer || (has_m && line_motion.is_none()) {
            return;
        }
        if !p.has_any(b"XYZEIJKR") {
            return;
        }
        let Some(motion) = line_motion.or(self.motion) else {
            return;
        };
        match motion {
            Motion::Rapid | Motion::Linear => self.linear(motion == Motion::Rapid, &p.axes()),
            Motion::ArcCw | Motion::ArcCcw => self.arc(motion == Motion::ArcCw, p),
        }
    }

    fn select_tool(&mut self, c: &Cmd) {
        let line_no = self.line_no;
        if c.major >= MAX_TOOLS {
            self.findings
                .push(FindingCode::ToolMissing, line_no, c.column, || {
                    format!("tool T{} is beyond any machine this system drives", c.major)
                });
            return;
        }
        self.tool = c.major;
        self.tool_acc(c.major).used = true;
        // CNC tool numbers name a cutter in the tool table, changed by hand; only
        // printers' tool numbers are extruders that must exist.
        if let Some(l) = &self.limits
            && l.caps.process == Process::Fdm
            && c.major >= l.caps.tool_count
        {
            let have = l.caps.tool_count;
            self.findings
                .push(FindingCode::ToolMissing, line_no, c.column, || {
                    format!(
                        "selects tool T{}, but this machine has {have} tool(s) (T0–T{})",
                        c.major,
                        have - 1
                    )
                });
        }
    }

    fn record_spindle(&mut self, s: f64, column: u32) {
        if s <= 0.0 {
            return;
        }
        if !self.spindle_speeds.contains(&s) && self.spindle_speeds.len() < MAX_SPINDLE_SPEEDS {
            self.spindle_speeds.push(s);
        } else if self.spindle_speeds.len() == MAX_SPINDLE_SPEEDS {
            // Keep the maximum exact even when the list is full.
            if let Some(last) = self.spindle_speeds.iter_mut().max_by(|a, b| a.total_cmp(b))
                && s > *last
            {
                *last = s;
            }
        }
        let line_no = self.line_no;
        if let Some(l) = &self.limits
            && let Some(max) = l.caps.spindle_max_rpm
            && s > max
        {
            self.findings
                .push(FindingCode::SpindleTooFast, line_no, column, || {
                    format!(
                        "spindle speed S{} is above this machine's maximum of {max} rpm",
                        shown(s)
                    )
                });
        }
    }

    fn m_code(&mut self, c: &Cmd, p: &Params, text_arg: bool) {
        let line_no = self.line_no;
        let name = || format!("M{}", c.major);
        match c.major {
            3 | 4 => {
                self.clue(Clue::Spindle);
                self.spindle_on = true;
                self.m4_used |= c.major == 4;
                if let Some(s) = p.get(b'S') {
                    self.spindle_s = s;
                }
                self.record_spindle(
                    self.spindle_s,
                    if p.get(b'S').is_some() {
                        p.column(b'S')
                    } else {
                        c.column
                    },
                );
            }
            5 => self.spindle_on = false,
            7..=9 => self.clue(Clue::Coolant),
            82 => {
                self.clue(Clue::ExtruderMode);
                self.e_relative = false;
            }
            83 => {
                self.clue(Clue::ExtruderMode);
                self.e_relative = true;
            }
            104 | 109 => {
                self.clue(Clue::Hotend);
                let tool = p.get(b'T').map_or(self.tool, |t| t.max(0.0) as u32);
                let temp = p.get(b'S').or_else(|| p.get(b'R'));
                if let Some(t) = temp {
                    self.hotend(
                        tool,
                        t,
                        p.column(if p.get(b'S').is_some() { b'S' } else { b'R' }),
                    );
                }
                if c.major == 109 {
                    self.planner.stop();
                }
            }
            140 | 190 => {
                self.clue(Clue::Bed);
                if let Some(t) = p.get(b'S').or_else(|| p.get(b'R')) {
                    self.bed(t, p.column(if p.get(b'S').is_some() { b'S' } else { b'R' }));
                }
                if c.major == 190 {
                    self.planner.stop();
                }
            }
            141 | 191 => {
                if let Some(t) = p.get(b'S').or_else(|| p.get(b'R'))
                    && t > 0.0
                {
                    self.temps.chamber_c = Some(self.temps.chamber_c.map_or(t, |c| c.max(t)));
                }
            }
            106 => {
                self.clue(Clue::Fan);
                let s = p.get(b'S').unwrap_or(255.0).clamp(0.0, 255.0);
                let pct = s / 255.0 * 100.0;
                self.fan = Some(self.fan.map_or(pct, |f| f.max(pct)));
            }
            107 => self.clue(Clue::Fan),
            203 => {
                // Marlin: mm/s per axis; the file may lower the profile's limits, never raise.
                if let Some(v) = p.get(b'X').into_iter().chain(p.get(b'Y')).reduce(f64::min)
                    && v > 0.0
                {
                    self.max_feed = self.max_feed.min(v * 60.0);
                    self.feed_limit = self.feed_mm_min.min(self.max_feed);
                }
                if let Some(v) = p.get(b'Z')
                    && v > 0.0
                {
                    self.max_z_feed = self.max_z_feed.min(v * 60.0);
                }
            }
            204 => {
                if let Some(a) = p.get(b'P').or_else(|| p.get(b'S'))
                    && a > 0.0
                {
                    self.planner.set_acceleration(a.min(self.profile_accel));
                }
            }
            400 => self.planner.stop(),
            30 if text_arg => {
                self.findings
                    .push(FindingCode::ForbiddenCommand, line_no, c.column, || {
                        "`M30` with a file name deletes a file from the machine's SD card"
                            .to_string()
                    })
            }
            major => match commands::m(major, |l| p.get(l)) {
                Class::Known => {}
                Class::Forbidden(why) => {
                    self.findings
                        .push(FindingCode::ForbiddenCommand, line_no, c.column, || {
                            format!("`{}` {why}", name())
                        })
                }
                Class::Attention(why) => {
                    self.findings
                        .push(FindingCode::AttentionCommand, line_no, c.column, || {
                            format!("`{}` {why}", name())
                        })
                }
                Class::Unknown => self.unknown(c),
            },
        }
    }

    fn unknown(&mut self, c: &Cmd) {
        // One warning per distinct command: a file repeating it a thousand times says it once.
        let key = (c.letter, c.major, c.minor);
        if self.unknown_seen.contains(&key) {
            return;
        }
        if self.unknown_seen.len() < 256 {
            self.unknown_seen.push(key);
        }
        let line_no = self.line_no;
        self.findings.push(FindingCode::UnknownCommand, line_no, c.column, || {
            let minor = if c.minor > 0 { format!(".{}", c.minor) } else { String::new() };
            format!(
                "`{}{}{minor}` is not a command this analysis knows; the firmware may ignore or reject it",
                c.letter as char, c.major
            )
        });
    }

    fn hotend(&mut self, tool: u32, t: f64, column: u32) {
        if t <= 0.0 {
            return;
        }
        self.temps.hotend_c = Some(self.temps.hotend_c.map_or(t, |h| h.max(t)));
        let acc = self.tool_acc(tool);
        acc.hotend = Some(acc.hotend.map_or(t, |h| h.max(t)));
        let line_no = self.line_no;
        if let Some(l) = &self.limits {
            match l.caps.max_hotend_temp_c {
                Some(max) if t > max => {
                    self.findings
                        .push(FindingCode::HotendTooHot, line_no, column, || {
                            format!(
                                "hotend set to {} °C; this machine allows at most {max} °C",
                                shown(t)
                            )
                        })
                }
                None => self
                    .findings
                    .push(FindingCode::HotendTooHot, line_no, column, || {
                        format!(
                            "hotend set to {} °C, but this machine has no hotend",
                            shown(t)
                        )
                    }),
                _ => {}
            }
        }
    }

    fn bed(&mut self, t: f64, column: u32) {
        if t <= 0.0 {
            return;
        }
        self.temps.bed_c = Some(self.temps.bed_c.map_or(t, |b| b.max(t)));
        let line_no = self.line_no;
        if let Some(l) = &self.limits {
            match l.caps.max_bed_temp_c {
                Some(max) if t > max => {
                    self.findings
                        .push(FindingCode::BedTooHot, line_no, column, || {
                            format!(
                                "bed set to {} °C; this machine allows at most {max} °C",
                                shown(t)
                            )
                        })
                }
                None => self
                    .findings
                    .push(FindingCode::BedTooHot, line_no, column, || {
                        format!(
                            "bed set to {} °C, but this machine has no heated bed",
                            shown(t)
                        )
                    }),
                _ => {}
            }
        }
    }

    /// Applies a G command; returns the motion mode it selects, if any.
    fn g_code(&mut self, c: &Cmd, p: &Params) -> Option<Motion> {
        let scale = self.scale();
        match (c.major, c.minor) {
            (0, _) => return Some(Motion::Rapid),
            (1, _) => return Some(Motion::Linear),
            (2, _) => return Some(Motion::ArcCw),
            (3, _) => return Some(Motion::ArcCcw),
            (4, _) => {
                let grbl = self.clues[Clue::Dollar as usize].is_some()
                    || self.clues[Clue::Spindle as usize].is_some();
                let seconds = match (p.get(b'P'), p.get(b'S')) {
                    (Some(v), _) if grbl => v,
                    (Some(ms), _) => ms / 1000.0,
                    (None, Some(s)) => s,
                    (None, None) => 0.0,
                };
                self.planner.dwell(seconds);
            }
            (17, _) => self.plane = Plane::Xy,
            (18, _) => self.plane = Plane::Zx,
            (19, _) => self.plane = Plane::Yz,
            (20 | 21, _) => {}
            (28, _) => {
                // Homing: named axes (or all) go to the origin; Marlin also drops G92 shifts.
                let all = !(p.named(b'X') || p.named(b'Y') || p.named(b'Z'));
                self.planner.stop();
                for a in (0..3).filter(|&a| all || p.named(b"XYZ"[a])) {
                    self.pos[a] = 0.0;
                    self.chain = None;
                    self.shift[a] = 0.0;
                    self.known[a] = true;
                }
            }
            (54..=59, _) => self.clue(Clue::WorkOffsets),
            (90, 0) => {
                self.absolute = true;
                self.e_relative = false;
            }
            (91, 0) => {
                self.absolute = false;
                self.e_relative = true;
            }
            (90, 1) => self.arc_absolute = true,
            (91, 1) => self.arc_absolute = false,
            (92, 0) => {
                self.chain = None;
                for a in 0..3 {
                    if let Some(v) = p.get(b"XYZ"[a]) {
                        self.shift[a] = v * scale - self.pos[a];
                        self.known[a] = true;
                    }
                }
                if let Some(e) = p.get(b'E') {
                    self.e_pos = e * scale;
                }
                if !p.has_any(b"XYZE") {
                    self.shift = [0.0; 3];
                    self.e_pos = 0.0;
                }
            }
            (major, minor) => match commands::g(major, minor) {
                Class::Known | Class::Forbidden(_) => {}
                Class::Attention(why) => {
                    let line_no = self.line_no;
                    self.findings
                        .push(FindingCode::AttentionCommand, line_no, c.column, || {
                            format!("`G{major}` {why}")
                        });
                }
                Class::Unknown => self.unknown(c),
            },
        }
        None
    }

    /// Target of a move in physical coordinates, and the extruder delta.
    #[inline(always)]
    fn target(&mut self, m: &Axes) -> ([f64; 3], f64) {
        let scale = self.scale();
        let mut to = self.pos;
        for (a, slot) in to.iter_mut().enumerate() {
            if m.has(1 << a) {
                let v = m.values[a] * scale;
                if self.absolute {
                    *slot = v - self.shift[a];
                } else {
                    *slot += v;
                }
            }
        }
        let de = if m.has(AXIS_E) {
            let v = m.values[3] * scale;
            if self.e_relative {
                self.e_pos += v;
                v
            } else {
                let de = v - self.e_pos;
                self.e_pos = v;
                de
            }
        } else {
            0.0
        };
        (to, de)
    }

    /// Highest speed of a move, mm/s; `f_given` when the line has its own F.
    #[inline(always)]
    fn speed_limit(&self, rapid: bool, f_given: bool, length: f64, dz: f64) -> f64 {
        let mut v = if rapid && !f_given {
            self.max_feed
        } else {
            self.feed_limit
        };
        if dz.abs() > EPS && length > EPS {
            v = v.min(self.max_z_feed * length / dz.abs());
        }
        v * (1.0 / 60.0)
    }

    #[inline(always)]
    fn linear(&mut self, rapid: bool, m: &Axes) {
        let from = self.pos;
        let known_before = self.known;
        let (to, de) = self.target(m);
        for a in 0..3 {
            if m.has(1 << a) {
                self.known[a] = true;
            }
        }
        let d = [to[0] - from[0], to[1] - from[1], to[2] - from[2]];
        let length2 = d[0] * d[0] + d[1] * d[1] + d[2] * d[2];
        let length = length2.sqrt();
        if length > EPS {
            let v = self.speed_limit(rapid, m.has(AXIS_F), length, d[2]);
            self.planner.push(length, v, d, d, length2);
        } else if de.abs() > EPS {
            let v = self.feed_limit / 60.0;
            self.planner.push(de.abs(), v, [0.0; 3], [0.0; 3], 1.0);
        }
        let xy_moved = d[0].abs() > EPS || d[1].abs() > EPS;
        let work = (de > EPS && xy_moved) || (self.spindle_on && !rapid && length > EPS);
        self.finish_move(from, known_before, to, de, work, None, m);
    }

    fn arc(&mut self, clockwise: bool, p: &Params) {
        let line_no = self.line_no;
        let (a, b, n, la, lb) = self.plane.axes();
        let from = self.pos;
        let known_before = self.known;
        let axes = p.axes();
        let (to, de) = self.target(&axes);
        let scale = self.scale();
        let center = if let Some(r) = p.get(b'R') {
            let r = r * scale;
            let (dx, dy) = (to[a] - from[a], to[b] - from[b]);
            let chord = dx.hypot(dy);
            let h2 = r * r - chord * chord / 4.0;
            if chord < EPS || h2 < -1e-6 * r * r {
                self.findings
                    .push(FindingCode::InvalidArc, line_no, p.column(b'R'), || {
                        format!(
                            "arc radius {:.3} mm cannot reach an end point {chord:.3} mm away",
                            r.abs()
                        )
                    });
                self.known = [true; 3];
                self.pos = to;
                self.chain = None;
                return;
            }
            let h = h2.max(0.0).sqrt();
            // Left of the chord for a short counter-clockwise arc; negative R takes the long way.
            let mut side = if clockwise { -1.0 } else { 1.0 };
            if r < 0.0 {
                side = -side;
            }
            let (nx, ny) = (-dy / chord, dx / chord);
            (
                from[a] + dx / 2.0 + side * h * nx,
                from[b] + dy / 2.0 + side * h * ny,
            )
        } else {
            let (oi, oj) = (p.get(la), p.get(lb));
            if oi.is_none() && oj.is_none() {
                self.findings.push(FindingCode::InvalidArc, line_no, 1, || {
                    "arc without a centre (I/J/K) or radius (R)".to_string()
                });
                self.pos = to;
                self.chain = None;
                return;
            }
            let (oi, oj) = (oi.unwrap_or(0.0) * scale, oj.unwrap_or(0.0) * scale);
            if self.arc_absolute {
                (oi - self.shift[a], oj - self.shift[b])
            } else {
                (from[a] + oi, from[b] + oj)
            }
        };
        let r = (from[a] - center.0).hypot(from[b] - center.1);
        let r_end = (to[a] - center.0).hypot(to[b] - center.1);
        if (r - r_end).abs() > 0.005_f64.max(0.001 * r) {
            self.findings.push(FindingCode::InvalidArc, line_no, 1, || {
                format!("arc end point is {r_end:.3} mm from the centre but the start is {r:.3} mm: the firmware will reject it")
            });
        }
        let a0 = (from[b] - center.1).atan2(from[a] - center.0);
        let a1 = (to[b] - center.1).atan2(to[a] - center.0);
        let mut sweep = if clockwise { a0 - a1 } else { a1 - a0 };
        if sweep <= 1e-9 {
            sweep += TAU;
        }
        let dn = to[n] - from[n];
        let length = (r * sweep).hypot(dn);
        // Extremes of the circle (0°, 90°, 180°, 270°) that the sweep passes.
        let mut extents = [[0.0f64; 3]; 4];
        let mut n_ext = 0;
        for k in 0..4 {
            let theta = k as f64 * FRAC_PI_2;
            let delta = if clockwise { a0 - theta } else { theta - a0 };
            if delta.rem_euclid(TAU) < sweep {
                let mut pt = from;
                pt[a] = center.0 + r * theta.cos();
                pt[b] = center.1 + r * theta.sin();
                extents[n_ext] = pt;
                n_ext += 1;
            }
        }
        for k in 0..3 {
            if axes.has(1 << k) {
                self.known[k] = true;
            }
        }
        if length > EPS {
            let v = self.speed_limit(false, axes.has(AXIS_F), length, dn);
            let tangent = |angle: f64| {
                let mut t = [0.0; 3];
                let s = if clockwise { -1.0 } else { 1.0 };
                t[a] = -angle.sin() * s;
                t[b] = angle.cos() * s;
                t
            };
            self.planner.push(
                length,
                v,
                tangent(a0),
                tangent(a0 + if clockwise { -sweep } else { sweep }),
                1.0,
            );
        }
        let work = de > EPS || self.spindle_on;
        self.finish_move(
            from,
            known_before,
            to,
            de,
            work,
            Some(&extents[..n_ext]),
            &axes,
        );
    }

    /// Bounds, extrusion, layers and limit checks common to every move.
    #[allow(clippy::too_many_arguments)]
    #[inline(always)]
    fn finish_move(
        &mut self,
        from: [f64; 3],
        known_before: [bool; 3],
        to: [f64; 3],
        de: f64,
        work: bool,
        extents: Option<&[[f64; 3]]>,
        p: &Axes,
    ) {
        let known = self.known;
        let tool = self.tool;
        // The start of a move is the end of the previous one: already in the bounds when
        // that move was by the same tool (and, for work bounds, also working).
        let chain = self.chain;
        self.chain = Some((tool, work));
        let acc = self.tool_acc(tool);
        acc.used = true;
        acc.extrusion += de;
        if chain.is_none_or(|(t, _)| t != tool) {
            acc.all.add_point(&from, &known_before);
        }
        // After the first moves every axis is known: no per-axis test.
        let all_known = known[0] & known[1] & known[2];
        if all_known {
            acc.all.add_known_point(&to);
        } else {
            acc.all.add_point(&to, &known);
        }
        if work {
            if chain != Some((tool, true)) {
                acc.work.add_point(&from, &known_before);
            }
            if all_known {
                acc.work.add_known_point(&to);
            } else {
                acc.work.add_point(&to, &known);
            }
        }
        if let Some(ext) = extents {
            for pt in ext {
                acc.all.add_point(pt, &known);
                if work {
                    acc.work.add_point(pt, &known);
                }
            }
        }
        self.extrusion += de;
        if (to[2] - from[2]).abs() > EPS {
            self.z_moved = true;
        }
        if de > EPS && (to[0] - from[0]).abs() + (to[1] - from[1]).abs() > EPS {
            self.clue(Clue::Extrusion);
            let z = to[2];
            if self.layers == 0 {
                self.layers = 1;
                self.first_layer_z = z;
                self.layer_z = z;
            } else if (z - self.layer_z).abs() > 1e-4 {
                let rise = z - self.layer_z;
                if rise > 0.0 {
                    self.layer_min = self.layer_min.min(rise);
                    self.layer_max = self.layer_max.max(rise);
                }
                self.layers += 1;
                self.layer_z = z;
            }
        }
        self.pos = to;
        if let Some(l) = &self.limits {
            // Only axes this line moves: a machine already out of range was reported on
            // the line that took it there.
            let mut moved = [false; 3];
            for (axis, m) in moved.iter_mut().enumerate() {
                *m = known[axis] && (p.has(1 << axis) || extents.is_some());
            }
            let (lo, hi) = (l.lo, l.hi);
            let outside =
                |pt: &[f64; 3]| (0..3).find(|&a| moved[a] && (pt[a] < lo[a] || pt[a] > hi[a]));
            for pt in std::iter::once(&to).chain(extents.unwrap_or_default()) {
                if let Some(axis) = outside(pt) {
                    self.out_of_volume(pt[axis], axis, p);
                }
            }
        }
    }

    #[cold]
    fn out_of_volume(&mut self, v: f64, axis: usize, p: &Axes) {
        let Some(l) = &self.limits else {
            return;
        };
        let vol = l.caps.build_volume;
        let (min, max) = match axis {
            0 => (vol.min.x, vol.max.x),
            1 => (vol.min.y, vol.max.y),
            _ => (vol.min.z, vol.max.z),
        };
        let letter = b"XYZ"[axis];
        let column = if p.has(1 << axis) {
            u32::from(p.columns[axis])
        } else {
            1
        };
        let line_no = self.line_no;
        self.findings.push(FindingCode::OutOfVolume, line_no, column, || {
            format!(
                "moves to {} {v:.3} mm, outside this machine's {} range {min:.1} to {max:.1} mm",
                letter as char, letter as char
            )
        });
    }

    /// Ends the stream and returns the analysis.
    pub fn finish(mut self) -> Analysis {
        if self.carry_len > 0 {
            let carry = std::mem::take(&mut self.carry);
            let len = self.carry_len;
            self.line(&carry, len);
        }
        let lines = self.line_no;
        let hints = self.slicer.hints;
        if let Some(l) = hints.fdm_slicer {
            self.clues[Clue::FdmSlicer as usize].get_or_insert(l);
        }
        if let Some(l) = hints.cam {
            self.clues[Clue::Cam as usize].get_or_insert(l);
        }
        if let Some(l) = hints.laser {
            self.clues[Clue::Laser as usize].get_or_insert(l);
        }
        let (slicer, thumbnails) = self.slicer.finish(lines, &mut self.findings);
        let all_clues = [
            Clue::Extrusion,
            Clue::Hotend,
            Clue::Bed,
            Clue::ExtruderMode,
            Clue::Fan,
            Clue::FdmSlicer,
            Clue::Spindle,
            Clue::Dollar,
            Clue::WorkOffsets,
            Clue::Coolant,
            Clue::Cam,
            Clue::Laser,
        ];
        let mut evidence = Vec::new();
        let (mut reprap, mut grbl) = (0, 0);
        for clue in all_clues {
            if let Some(line) = self.clues[clue as usize] {
                let (flavour, weight, what) = clue.describe();
                match flavour {
                    Flavour::Reprap => reprap += weight,
                    Flavour::Grbl => grbl += weight,
                }
                evidence.push(Evidence {
                    line,
                    flavour,
                    what,
                });
            }
        }
        evidence.sort_by_key(|e| e.line);
        let flavour = if grbl > reprap {
            Flavour::Grbl
        } else {
            Flavour::Reprap
        };
        let laser = hints.laser.is_some() || (self.m4_used && !self.z_moved);
        let process = match flavour {
            Flavour::Reprap if self.extrusion > EPS || self.temps.hotend_c.is_some() => {
                Process::Fdm
            }
            Flavour::Reprap if self.spindle_speeds.is_empty() => Process::Fdm,
            _ if laser => Process::Laser,
            _ => Process::Cnc,
        };
        let mut all = BoundsAcc::default();
        let mut work = BoundsAcc::default();
        let mut tools = Vec::new();
        for (i, t) in self.tools.iter().enumerate() {
            all.merge(&t.all);
            work.merge(&t.work);
            if t.used || t.hotend.is_some() {
                tools.push(ToolReport {
                    tool: i as u32,
                    extrusion_mm: t.extrusion,
                    bounds: t.all.to_box(),
                    work_bounds: t.work.to_box(),
                    hotend_c: t.hotend,
                });
            }
        }
        self.spindle_speeds.sort_by(f64::total_cmp);
        if let Some(l) = self.limits.take() {
            check_machine(
                &mut self.findings,
                &l.caps,
                flavour,
                process,
                &evidence,
                slicer.as_ref(),
            );
        }
        let (findings, suppressed_findings) = self.findings.finish();
        Analysis {
            lines,
            bytes: self.bytes,
            flavour,
            process,
            flavour_evidence: evidence,
            bounds: all.to_box(),
            work_bounds: work.to_box(),
            extrusion_mm: self.extrusion,
            layers: self.layers,
            layer_heights: (self.layers > 0).then(|| LayerHeights {
                first_z: self.first_layer_z,
                last_z: self.layer_z,
                min_mm: if self.layers > 1 {
                    self.layer_min
                } else {
                    self.first_layer_z
                },
                max_mm: if self.layers > 1 {
                    self.layer_max.max(self.first_layer_z)
                } else {
                    self.first_layer_z
                },
            }),
            estimated_seconds: self.planner.finish(),
            temperatures: self.temps,
            fan_max_percent: self.fan,
            spindle_rpm: self.spindle_speeds,
            tools,
            slicer,
            thumbnails,
            findings,
            suppressed_findings,
        }
    }
}

/// Checks that need the whole file: dialect, process, and the slicer header.
fn check_machine(
    findings: &mut FindingSink,
    caps: &Capabilities,
    flavour: Flavour,
    process: Process,
    evidence: &[Evidence],
    slicer: Option<&super::slicer::SlicerInfo>,
) {
    let first_line = |f: Flavour| {
        evidence
            .iter()
            .find(|e| e.flavour == f)
            .map_or(1, |e| e.line)
    };
    if process != caps.process {
        let have = caps.process;
        findings.push(FindingCode::WrongProcess, first_line(flavour), 1, || {
            format!("this file is for {process:?}, but the machine does {have:?}")
        });
    }
    let have = caps.firmware.flavour();
    if flavour != have {
        findings.push(FindingCode::WrongFlavour, first_line(flavour), 1, || {
            format!(
                "this file is written for {flavour:?}-style firmware, but the machine runs {:?}",
                caps.firmware
            )
        });
    }
    let Some(s) = slicer else {
        return;
    };
    if let (Some(need), Some(have)) = (s.nozzle_diameter_mm, caps.nozzle_diameter_mm)
        && (need - have).abs() > 1e-3
    {
        findings.push(
            FindingCode::NozzleMismatch,
            s.nozzle_line.unwrap_or(1),
            1,
            || format!("sliced for a {need} mm nozzle, but this machine has a {have} mm nozzle"),
        );
    }
    if let Some(need) = &s.filament_type
        && !caps.materials.iter().any(|m| m.eq_ignore_ascii_case(need))
    {
        let have = if caps.materials.is_empty() {
            "none".to_string()
        } else {
            caps.materials.join(", ")
        };
        findings.push(
            FindingCode::MaterialMismatch,
            s.filament_type_line.unwrap_or(1),
            1,
            || format!("sliced for {need}, but this machine has {have} loaded"),
        );
    }
}

/// A number as a maker wrote it, without binary noise (`S240.00000000000003`).
fn shown(v: f64) -> f64 {
    (v * 1e4).round() / 1e4
}

/// Analyses a whole file held in memory.
pub fn analyze_bytes(bytes: &[u8], profile: Option<&MachineProfile>) -> Analysis {
    let mut a = profile.map_or_else(Analyzer::new, Analyzer::with_profile);
    a.feed(bytes);
    a.finish()
}

/// Analyses everything `reader` yields, in constant memory.
pub fn analyze_reader(
    reader: impl Read,
    profile: Option<&MachineProfile>,
) -> std::io::Result<Analysis> {
    let mut a = profile.map_or_else(Analyzer::new, Analyzer::with_profile);
    a.read_from(reader)?;
    Ok(a.finish())
}

/// The slow path for a line the fast lexer could not read: the `gcode` crate's parser
/// gives a precise diagnostic with a span. Returns the column and a message.
fn diagnose(raw: &[u8], fallback_column: u32) -> (u32, String) {
    use gcode::core::{
        BlockVisitor, ControlFlow, Diagnostics, HasDiagnostics, ProgramVisitor, Span, TokenType,
    };

    #[derive(Default)]
    struct Collector {
        first: Option<(usize, String)>,
    }
    impl Diagnostics for Collector {
        fn emit_unknown_content(&mut self, text: &str, span: Span) {
            self.first
                .get_or_insert_with(|| (span.start, format!("cannot read `{text}`")));
        }
        fn emit_unexpected(&mut self, actual: &str, expected: &[TokenType], span: Span) {
            self.first.get_or_insert_with(|| {
                let expected: Vec<&str> = expected.iter().map(|t| t.as_str()).collect();
                (
                    span.start,
                    format!(
                        "found `{actual}` where {} was expected",
                        expected.join(" or ")
                    ),
                )
            });
        }
    }
    struct Block<'a>(&'a mut Collector);
    impl HasDiagnostics for Block<'_> {
        fn diagnostics(&mut self) -> &mut dyn Diagnostics {
            self.0
        }
    }
    impl BlockVisitor for Block<'_> {}
    impl ProgramVisitor for Collector {
        fn start_block(&mut self) -> ControlFlow<impl BlockVisitor + '_> {
            ControlFlow::Continue(Block(self))
        }
    }

    let text = String::from_utf8_lossy(raw);
    let mut collector = Collector::default();
    gcode::core::parse(&text, &mut collector);
    let shown: String = text.chars().take(60).collect();
    match collector.first {
        Some((start, message)) => (
            u32::try_from(start + 1).unwrap_or(fallback_column),
            format!(
                "{message} in `{}`: the firmware will reject this line",
                shown.trim()
            ),
        ),
        None => (
            fallback_column,
            format!(
                "cannot read `{}` from column {fallback_column} (variables and expressions are not supported by Marlin or GRBL)",
                shown.trim()
            ),
        ),
    }
}
