//! How Marlin reads a line: the command word and its parameters, the `N…` prefix and `*…`
//! suffix, C's `strtol`, and what the emergency parser recognises.

use super::Emergency;

/// A G-code line split into Marlin's command letter, number and parameters.
#[derive(Debug)]
pub(super) struct Command {
    pub(super) letter: Option<char>,
    pub(super) code: Option<u32>,
    params: Vec<(char, Option<f64>)>,
}

impl Command {
    pub(super) fn parse(text: &str) -> Command {
        let bytes = text.as_bytes();
        let mut i = 0;
        let mut letter = None;
        let mut code = None;
        // Stock builds lack GCODE_CASE_INSENSITIVE: `g1` is an unknown command.
        if let Some(&first @ (b'G' | b'M' | b'T')) = bytes.first() {
            let digits = bytes[1..].iter().take_while(|b| b.is_ascii_digit()).count();
            if digits > 0 || first == b'T' {
                letter = Some(char::from(first));
                code = Some(
                    std::str::from_utf8(&bytes[1..1 + digits])
                        .ok()
                        .and_then(|d| d.parse().ok())
                        .unwrap_or(0),
                );
                i = 1 + digits;
                // A subcode such as G29.1 is not supported by this machine.
                if bytes.get(i) == Some(&b'.') {
                    letter = None;
                }
            }
        }
        let mut params = Vec::new();
        while i < bytes.len() {
            let byte = bytes[i];
            i += 1;
            if !byte.is_ascii_uppercase() {
                continue;
            }
            let len = bytes[i..]
                .iter()
                .take_while(|b| b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'+'))
                .count();
            let value = std::str::from_utf8(&bytes[i..i + len])
                .ok()
                .and_then(|v| v.parse::<f64>().ok());
            params.push((char::from(byte), value));
            i += len;
        }
        Command {
            letter,
            code,
            params,
        }
    }

    pub(super) fn value(&self, letter: char) -> Option<f64> {
        self.params
            .iter()
            .find(|(l, _)| *l == letter)
            .and_then(|(_, v)| *v)
    }

    pub(super) fn has(&self, letter: char) -> bool {
        self.params.iter().any(|(l, _)| *l == letter)
    }
}

/// Splits `N<digits> <text>*<checksum>` into the digits and the text the handler sees.
pub(super) fn split_line_number(raw: &str) -> (Option<String>, &str) {
    let mut text = raw;
    let mut line = None;
    if let Some(rest) = raw.strip_prefix('N') {
        let digits = rest
            .bytes()
            .take_while(|b| b.is_ascii_digit() || *b == b'-')
            .count();
        line = Some(rest[..digits].to_owned());
        text = rest[digits..].trim_start();
    }
    if let Some(star) = text.find('*') {
        text = &text[..star];
    }
    (line, text.trim_end())
}

/// What the emergency parser recognises: the command, optionally after `N<digits>`.
pub(super) fn emergency_command(line: &[u8]) -> Option<Emergency> {
    let mut rest = line.trim_ascii_start();
    if let Some(after_n) = rest.strip_prefix(b"N") {
        let digits = after_n.iter().take_while(|b| b.is_ascii_digit()).count();
        rest = after_n[digits..].trim_ascii_start();
    }
    let what = match rest.get(..4) {
        Some(b"M112") => Emergency::Kill,
        Some(b"M108") => Emergency::BreakWait,
        Some(b"M410") => Emergency::Quickstop,
        _ => return None,
    };
    match rest.get(4) {
        None | Some(b' ' | b'*') => Some(what),
        Some(_) => None,
    }
}

/// C `strtol` base 10: leading spaces, a sign, digits; nothing parsable gives 0.
pub(super) fn strtol(bytes: &[u8]) -> i64 {
    let bytes = bytes.trim_ascii_start();
    let (negative, digits) = match bytes.first() {
        Some(b'-') => (true, &bytes[1..]),
        Some(b'+') => (false, &bytes[1..]),
        _ => (false, bytes),
    };
    let value = digits
        .iter()
        .take_while(|b| b.is_ascii_digit())
        .fold(0i64, |acc, b| {
            acc.saturating_mul(10).saturating_add(i64::from(b - b'0'))
        });
    if negative { -value } else { value }
}

pub(super) fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack
        .windows(needle.len())
        .position(|window| window == needle)
}
