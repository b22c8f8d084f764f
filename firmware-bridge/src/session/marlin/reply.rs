//! Lines a Marlin-family firmware sends, classified.

use crate::session::HostAction;

/// One received line, classified.
#[derive(Debug, Clone, PartialEq)]
pub enum Reply<'a> {
    /// `start`: the firmware just booted.
    Start,
    /// An acknowledgement, with the `ADVANCED_OK` fields when present.
    Ok {
        /// `N`: the line number acknowledged.
        line: Option<u32>,
        /// `P`: free planner blocks.
        planner: Option<u32>,
        /// `B`: free command slots.
        buffer: Option<u32>,
        /// Whether temperatures follow (`ok T:…`), i.e. this answers an `M105`.
        temperatures: bool,
    },
    /// `Resend: n`, `rs n` and their spellings.
    Resend(u32),
    /// `Error:…` (the text after the colon).
    Error(&'a str),
    /// `echo:busy: …` or `busy: …` keepalive.
    Busy,
    /// `wait`: idle with an empty queue.
    Wait,
    /// `//action:…`.
    Action(HostAction),
    /// The `M115` identification line.
    FirmwareName(&'a str),
    /// A `Cap:NAME:0|1` line.
    Capability(&'a str, bool),
    /// A temperature auto-report line.
    Temperatures,
    /// An `M114` position line.
    Position,
    /// `echo:…` and anything else.
    Other(&'a str),
}

fn strict_number(text: &str) -> Option<u32> {
    let digits = text.trim_start_matches([' ', ':', 'N']).trim_end();
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok()
}

/// Classify one line (already trimmed).
pub fn classify(line: &str) -> Reply<'_> {
    if line == "start" {
        return Reply::Start;
    }
    if line == "ok" || line.starts_with("ok ") {
        return parse_ok(&line[2..]);
    }
    for prefix in ["Resend", "rs "] {
        if let Some(rest) = line.strip_prefix(prefix) {
            return strict_number(rest).map_or(Reply::Other(line), Reply::Resend);
        }
    }
    if let Some(rest) = line
        .strip_prefix("Error:")
        .or_else(|| line.strip_prefix("Error: "))
    {
        return Reply::Error(rest.trim());
    }
    if line.starts_with("echo:busy:") || line.starts_with("busy:") {
        return Reply::Busy;
    }
    if line == "wait" {
        return Reply::Wait;
    }
    if let Some(rest) = line.strip_prefix("//") {
        if let Some(action) = rest.trim_start().strip_prefix("action:") {
            let action = action.trim();
            return Reply::Action(match action {
                "pause" => HostAction::Pause,
                "paused" => HostAction::Paused,
                "resume" => HostAction::Resume,
                "resumed" => HostAction::Resumed,
                "cancel" => HostAction::Cancel,
                other => HostAction::Other(other.to_owned()),
            });
        }
        return Reply::Other(line);
    }
    if line.starts_with("FIRMWARE_NAME:") {
        return Reply::FirmwareName(line);
    }
    if let Some(cap) = line.strip_prefix("Cap:")
        && let Some((name, value)) = cap.rsplit_once(':')
    {
        return Reply::Capability(name, value.trim() == "1");
    }
    if line.starts_with("T:") || line.starts_with("B:") || line.starts_with("T0:") {
        return Reply::Temperatures;
    }
    if line.starts_with("X:") {
        return Reply::Position;
    }
    Reply::Other(line)
}

fn parse_ok(rest: &str) -> Reply<'_> {
    let mut reply_line = None;
    let mut planner = None;
    let mut buffer = None;
    let mut temperatures = false;
    for token in rest.split_whitespace() {
        // Noise can put any character here, so split on bytes only after an ASCII letter.
        let head = token.as_bytes()[0];
        let number = match head.is_ascii_alphabetic() {
            true => token[1..].parse::<u32>().ok(),
            false => None,
        };
        match (head, number) {
            (b'N', Some(n)) => reply_line = Some(n),
            (b'P', Some(n)) => planner = Some(n),
            (b'B', Some(n)) => buffer = Some(n),
            _ if token.contains(':') => temperatures |= token.starts_with(['T', 'B']),
            _ => {}
        }
    }
    Reply::Ok {
        line: reply_line,
        planner,
        buffer,
        temperatures,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_resend_spelling_in_the_wild_is_understood() {
        for text in [
            "Resend: 123",
            "Resend:123",
            "rs 123",
            "rs N123",
            "Resend: N:123",
        ] {
            assert_eq!(classify(text), Reply::Resend(123), "{text}");
        }
        assert_eq!(classify("Resend: 1x3"), Reply::Other("Resend: 1x3"));
    }

    #[test]
    fn acknowledgements_carry_advanced_fields_and_temperatures() {
        assert_eq!(
            classify("ok N1645 P57 B63"),
            Reply::Ok {
                line: Some(1645),
                planner: Some(57),
                buffer: Some(63),
                temperatures: false
            }
        );
        assert_eq!(
            classify("ok T:21.0 /0.0 B:20.0 /0.0 @:0"),
            Reply::Ok {
                line: None,
                planner: None,
                buffer: None,
                temperatures: true
            }
        );
        assert_eq!(classify("okk"), Reply::Other("okk"));
        // Mangled bytes arrive as multi-byte replacement characters.
        assert!(matches!(
            classify("ok \u{fffd}:0 N\u{fffd}"),
            Reply::Ok { line: None, .. }
        ));
    }

    #[test]
    fn host_actions_accept_an_optional_space() {
        assert_eq!(classify("//action:pause"), Reply::Action(HostAction::Pause));
        assert_eq!(
            classify("// action:cancel"),
            Reply::Action(HostAction::Cancel)
        );
        assert_eq!(
            classify("//action:notification Hi"),
            Reply::Action(HostAction::Other("notification Hi".into()))
        );
    }

    #[test]
    fn capabilities_keepalives_and_errors_are_recognised() {
        assert_eq!(
            classify("Cap:AUTOREPORT_TEMP:1"),
            Reply::Capability("AUTOREPORT_TEMP", true)
        );
        assert_eq!(classify("Cap:EEPROM:0"), Reply::Capability("EEPROM", false));
        assert_eq!(classify("echo:busy: processing"), Reply::Busy);
        assert_eq!(classify("wait"), Reply::Wait);
        assert_eq!(
            classify("Error:checksum mismatch, Last Line: 4"),
            Reply::Error("checksum mismatch, Last Line: 4")
        );
    }
}
