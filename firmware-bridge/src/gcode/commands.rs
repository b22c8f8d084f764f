//! Which commands a job file may contain: known, needing attention, forbidden, or unknown.
//!
//! A job is streamed unattended into a machine that someone else set up. Anything that
//! changes what survives a reset (EEPROM), the firmware itself, the connection, the safety
//! limits, or that stops the machine in a way only a person can clear, is forbidden: the
//! agent and the operator own those, not the file.

/// How a command is classified.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Understood and harmless.
    Known,
    /// Refuses the job; the reason completes "`M500` …".
    Forbidden(&'static str),
    /// Reported as a warning; the reason completes "`M0` …".
    Attention(&'static str),
    /// Not known to this analysis.
    Unknown,
}

const CHANGES_SETTINGS: &str =
    "changes machine settings until the next reset; check they suit this machine";
const WAITS: &str = "waits for an operator at the machine";

/// Classifies `G<major>.<minor>`.
pub(crate) fn g(major: u32, _minor: u8) -> Class {
    match major {
        0..=4
        | 10..=12
        | 17..=21
        | 26..=34
        | 38
        | 40
        | 43
        | 49
        | 53..=61
        | 64
        | 76
        | 80
        | 90..=94
        | 425 => Class::Known,
        41 | 42 => Class::Attention(
            "uses cutter radius compensation, which this analysis does not model: bounds may be off by the tool radius",
        ),
        81..=89 => Class::Attention(
            "is a canned cycle, which this analysis does not model and GRBL does not support",
        ),
        _ => Class::Unknown,
    }
}

/// Classifies `M<major>` given whether the line carries each parameter letter.
pub(crate) fn m(major: u32, has: impl Fn(u8) -> Option<f64>) -> Class {
    match major {
        500 => Class::Forbidden(
            "saves settings to EEPROM; a job must not change the machine's stored configuration",
        ),
        501 => Class::Forbidden(
            "reloads settings from EEPROM, discarding the settings the operator has in effect",
        ),
        502 => Class::Forbidden("resets every setting to the firmware's factory defaults"),
        997 => Class::Forbidden("starts a firmware update"),
        112 => Class::Forbidden(
            "is an emergency stop that halts the machine until it is reset; stopping belongs to the operator and the agent, not to a file",
        ),
        303 => Class::Forbidden("runs a PID autotune, heating the machine unattended"),
        999 => Class::Forbidden(
            "restarts the firmware after a halt, clearing the error that caused it",
        ),
        410 => Class::Forbidden("quick-stops every motor, losing the machine's position"),
        110 => Class::Forbidden("resets the line numbers the host uses to stream the job"),
        575 => Class::Forbidden("changes the serial baud rate and cuts the connection"),
        28 | 29 => Class::Forbidden("writes a file to the machine's SD card"),
        42 => Class::Forbidden("drives a controller pin directly"),
        43 => Class::Forbidden("runs pin debugging, which can toggle any pin"),
        121 => Class::Forbidden("disables the endstops"),
        211 if has(b'S') == Some(0.0) => Class::Forbidden(
            "disables the software endstops, letting moves leave the machine's limits",
        ),
        302 if has(b'P') == Some(1.0) || has(b'S').is_some() => Class::Forbidden(
            "allows extrusion below the safe temperature (cold extrusion protection)",
        ),
        0 | 1 | 6 | 226 | 600 | 601 | 1601 => Class::Attention(WAITS),
        92 | 149 | 206 | 301 | 304 | 350 | 351 | 421 | 428 | 569 | 665 | 666 | 851 | 906 | 913
        | 914 => Class::Attention(CHANGES_SETTINGS),
        260 | 261 => Class::Attention("sends raw bytes on the I2C bus"),
        524 => Class::Attention("aborts the SD card print"),
        510..=512 => Class::Attention("locks or unlocks the machine's control panel"),
        928 => Class::Attention("starts logging to the SD card"),
        2..=5
        | 7..=9
        | 17
        | 18
        | 20..=27
        | 30..=32
        | 73
        | 75..=78
        | 80..=86
        | 104..=109
        | 111
        | 113..=120
        | 122..=125
        | 140
        | 141
        | 150
        | 155
        | 163..=166
        | 190
        | 191
        | 200..=205
        | 207..=211
        | 220
        | 221
        | 240
        | 250
        | 256
        | 280
        | 290
        | 300
        | 302
        | 355
        | 380
        | 381
        | 400..=407
        | 412
        | 413
        | 420
        | 422
        | 425
        | 486
        | 503
        | 504
        | 540
        | 603
        | 605
        | 701
        | 702
        | 710
        | 852
        | 860..=862
        | 871
        | 876
        | 900
        | 907
        | 911
        | 912
        | 915
        | 916 => Class::Known,
        _ => Class::Unknown,
    }
}

/// Classifies a GRBL system command line (`$…`).
pub(crate) fn dollar(text: &[u8]) -> Class {
    let body = &text[1..];
    let upper = |p: &[u8]| body.len() >= p.len() && body[..p.len()].eq_ignore_ascii_case(p);
    if body.is_empty()
        || body == b"$"
        || body == b"#"
        || upper(b"G") && body.len() == 1
        || upper(b"I") && body.len() == 1
    {
        return Class::Attention("is a GRBL query; it does nothing useful inside a job");
    }
    if upper(b"H") {
        return Class::Attention("homes the machine; make sure the work area is clear");
    }
    if upper(b"X") {
        return Class::Forbidden(
            "unlocks a GRBL alarm, bypassing the lock that protects a machine in an unknown position",
        );
    }
    if upper(b"J=") {
        return Class::Forbidden("is an interactive jog command");
    }
    if upper(b"RST") {
        return Class::Forbidden("resets GRBL's stored settings");
    }
    if upper(b"SLP") {
        return Class::Forbidden("puts GRBL to sleep, disabling the motors");
    }
    if upper(b"C") {
        return Class::Forbidden(
            "toggles GRBL's check mode, which changes whether the job moves the machine at all",
        );
    }
    if upper(b"N") {
        return Class::Forbidden("changes the startup blocks GRBL runs on every reset");
    }
    if body[0].is_ascii_digit() {
        return Class::Forbidden("changes a stored GRBL setting");
    }
    Class::Forbidden("is a GRBL system command, which belongs to the operator, not to a job")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn eeprom_and_firmware_commands_are_forbidden() {
        for major in [500, 501, 502, 997, 112, 303] {
            assert!(
                matches!(m(major, |_| None), Class::Forbidden(_)),
                "M{major}"
            );
        }
    }

    #[test]
    fn software_endstops_may_be_enabled_but_not_disabled() {
        assert_eq!(m(211, |l| (l == b'S').then_some(1.0)), Class::Known);
        assert!(matches!(
            m(211, |l| (l == b'S').then_some(0.0)),
            Class::Forbidden(_)
        ));
    }

    #[test]
    fn grbl_settings_are_forbidden_and_queries_only_noted() {
        assert!(matches!(dollar(b"$32=1"), Class::Forbidden(_)));
        assert!(matches!(dollar(b"$X"), Class::Forbidden(_)));
        assert!(matches!(dollar(b"$G"), Class::Attention(_)));
        assert!(matches!(dollar(b"$H"), Class::Attention(_)));
    }
}
