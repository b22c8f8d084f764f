//! GRBL's g-code line parsing: the pre-filter, words, and the sorting of a block's words
//! into modal groups with the checks GRBL makes before executing anything.

use super::{Motion, Spindle};

/// A line as GRBL filters it: no spaces or control characters, no comments, upper case.
/// Use it to compare a file with the record of a virtual GRBL.
pub fn normalize_grbl_line(line: &str) -> String {
    let mut out = String::new();
    let mut comment = None;
    for c in line.chars() {
        match comment {
            Some('(') => {
                if c == ')' {
                    comment = None;
                }
                continue;
            }
            Some(_) => continue,
            None => {}
        }
        match c {
            '(' | ';' => comment = Some(c),
            c if c <= ' ' || c == '/' || c == '%' => {}
            c => out.push(c.to_ascii_uppercase()),
        }
    }
    out
}

#[derive(Debug, Clone, Copy)]
pub(super) struct Word {
    pub(super) letter: u8,
    pub(super) value: f64,
}

pub(super) fn parse_words(line: &[u8]) -> Result<Vec<Word>, u8> {
    let mut words = Vec::new();
    let mut i = 0;
    while i < line.len() {
        let letter = line[i];
        if !letter.is_ascii_uppercase() {
            return Err(1);
        }
        i += 1;
        let (value, used) = read_float(&line[i..]).ok_or(2)?;
        i += used;
        words.push(Word { letter, value });
    }
    Ok(words)
}

/// GRBL's `read_float`: a sign, digits and one point; at least one digit.
pub(super) fn read_float(bytes: &[u8]) -> Option<(f64, usize)> {
    let mut end = 0;
    if matches!(bytes.first(), Some(b'-' | b'+')) {
        end = 1;
    }
    let mut digits = 0;
    let mut point = false;
    while let Some(&b) = bytes.get(end) {
        if b.is_ascii_digit() {
            digits += 1;
        } else if b == b'.' && !point {
            point = true;
        } else {
            break;
        }
        end += 1;
    }
    if digits == 0 {
        return None;
    }
    std::str::from_utf8(&bytes[..end])
        .ok()?
        .parse()
        .ok()
        .map(|v| (v, end))
}

pub(super) fn axis_index(letter: u8) -> Option<usize> {
    match letter {
        b'X' => Some(0),
        b'Y' => Some(1),
        b'Z' => Some(2),
        _ => None,
    }
}

/// GRBL's non-modal group 0.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum NonModal {
    /// G4
    Dwell,
    /// G10 (L2 / L20)
    SetCoordinates,
    /// G28 (0) and G30 (1)
    GoStored(usize),
    /// G28.1 (0) and G30.1 (1)
    Store(usize),
    /// G53
    MachineCoordinates,
    /// G92
    SetOffset,
    /// G92.1
    ClearOffset,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum ToolLength {
    /// G43.1
    Dynamic,
    /// G49
    Cancel,
}

/// One block's words sorted into GRBL's modal groups, with the group checks done.
#[derive(Debug, Default)]
pub(super) struct GcodeBlock {
    pub(super) motion: Option<Motion>,
    pub(super) plane: Option<u8>,
    pub(super) distance: Option<bool>,
    pub(super) units: Option<bool>,
    pub(super) coordinate_system: Option<u8>,
    pub(super) non_modal: Option<NonModal>,
    pub(super) tool_length: Option<ToolLength>,
    pub(super) stop: Option<u8>,
    pub(super) spindle: Option<Spindle>,
    pub(super) coolant: Option<(bool, bool)>,
    pub(super) values: Vec<(u8, f64)>,
}

impl GcodeBlock {
    pub(super) fn parse(words: &[Word]) -> Result<GcodeBlock, u8> {
        fn set<T>(slot: &mut Option<T>, value: T) -> Result<(), u8> {
            if slot.is_some() {
                return Err(21);
            }
            *slot = Some(value);
            Ok(())
        }
        let mut block = GcodeBlock::default();
        let mut other_g = None;
        for word in words {
            let int = word.value.trunc();
            let mantissa = ((word.value - int) * 100.0).round() as i64;
            match word.letter {
                b'G' => match (int as i64, mantissa) {
                    (0, 0) => set(&mut block.motion, Motion::Rapid)?,
                    (1, 0) => set(&mut block.motion, Motion::Linear)?,
                    (2, 0) => set(&mut block.motion, Motion::ArcCw)?,
                    (3, 0) => set(&mut block.motion, Motion::ArcCcw)?,
                    (80, 0) => set(&mut block.motion, Motion::None)?,
                    (4, 0) => set(&mut block.non_modal, NonModal::Dwell)?,
                    (10, 0) => set(&mut block.non_modal, NonModal::SetCoordinates)?,
                    (28, 0) => set(&mut block.non_modal, NonModal::GoStored(0))?,
                    (30, 0) => set(&mut block.non_modal, NonModal::GoStored(1))?,
                    (28, 10) => set(&mut block.non_modal, NonModal::Store(0))?,
                    (30, 10) => set(&mut block.non_modal, NonModal::Store(1))?,
                    (53, 0) => set(&mut block.non_modal, NonModal::MachineCoordinates)?,
                    (92, 0) => set(&mut block.non_modal, NonModal::SetOffset)?,
                    (92, 10) => set(&mut block.non_modal, NonModal::ClearOffset)?,
                    (code @ 17..=19, 0) => set(&mut block.plane, code as u8)?,
                    (90, 0) => set(&mut block.distance, false)?,
                    (91, 0) => set(&mut block.distance, true)?,
                    (20, 0) => set(&mut block.units, true)?,
                    (21, 0) => set(&mut block.units, false)?,
                    (code @ 54..=59, 0) => set(&mut block.coordinate_system, code as u8)?,
                    // Modes this machine only ever runs in: accepted, nothing to change.
                    (94, 0) => set(&mut other_g, 94)?,
                    (43, 10) => set(&mut block.tool_length, ToolLength::Dynamic)?,
                    (49, 0) => set(&mut block.tool_length, ToolLength::Cancel)?,
                    (40 | 61, 0) => {}
                    _ => return Err(20),
                },
                b'M' => {
                    if mantissa != 0 {
                        return Err(23);
                    }
                    match int as i64 {
                        code @ (0 | 1 | 2 | 30) => set(&mut block.stop, code as u8)?,
                        3 => set(&mut block.spindle, Spindle::Cw)?,
                        4 => set(&mut block.spindle, Spindle::Ccw)?,
                        5 => set(&mut block.spindle, Spindle::Off)?,
                        7 => set(&mut block.coolant, (true, false))?,
                        8 => set(&mut block.coolant, (false, true))?,
                        9 => set(&mut block.coolant, (false, false))?,
                        _ => return Err(20),
                    }
                }
                letter @ (b'F' | b'I' | b'J' | b'K' | b'L' | b'N' | b'P' | b'R' | b'S' | b'T'
                | b'X' | b'Y' | b'Z') => {
                    if block.values.iter().any(|(l, _)| *l == letter) {
                        return Err(25);
                    }
                    if matches!(letter, b'F' | b'N' | b'P' | b'S' | b'T') && word.value < 0.0 {
                        return Err(4);
                    }
                    block.values.push((letter, word.value));
                }
                _ => return Err(20),
            }
        }
        Ok(block)
    }

    pub(super) fn value(&self, letter: u8) -> Option<f64> {
        self.values
            .iter()
            .find(|(l, _)| *l == letter)
            .map(|(_, v)| *v)
    }

    pub(super) fn has_axis_words(&self) -> bool {
        self.values
            .iter()
            .any(|(l, _)| matches!(l, b'X' | b'Y' | b'Z'))
    }
}
