//! Meanings of GRBL 1.1 `error:N` and `ALARM:N` codes, in our own words.

/// What `error:code` means.
pub fn error_meaning(code: u16) -> &'static str {
    match code {
        1 => "G-code word without a letter",
        2 => "missing or malformed numeric value",
        3 => "'$' system command not recognised",
        4 => "negative value where a positive one is required",
        5 => "homing cycle is not enabled",
        6 => "step pulse time is shorter than 3 microseconds",
        7 => "EEPROM read failed; defaults restored",
        8 => "'$' command only valid when idle",
        9 => "G-code locked out during alarm or jog",
        10 => "soft limits need homing enabled",
        11 => "line too long; not executed",
        12 => "setting exceeds the maximum step rate",
        13 => "safety door opened",
        14 => "build info or startup line too long",
        15 => "jog target exceeds machine travel",
        16 => "invalid jog command",
        17 => "laser mode needs PWM output",
        20 => "unsupported or invalid G-code command",
        21 => "more than one command from the same modal group",
        22 => "feed rate not set",
        23 => "command needs an integer value",
        24 => "two commands both need axis words",
        25 => "word repeated in the block",
        26 => "axis words required but missing",
        27 => "line number out of range",
        28 => "command is missing a P or L value",
        29 => "G59.1 to G59.3 are not supported",
        30 => "G53 needs G0 or G1 motion mode",
        31 => "axis words left unused",
        32 => "arc without axis words in its plane",
        33 => "invalid motion target",
        34 => "arc radius calculation failed",
        35 => "arc offset word missing",
        36 => "unused words left in the block",
        37 => "tool length offset on a wrong axis",
        38 => "tool number too large",
        _ => "unknown error code",
    }
}

/// What `ALARM:code` means.
pub fn alarm_meaning(code: u16) -> &'static str {
    match code {
        1 => "hard limit triggered; position lost, re-home",
        2 => "soft limit: target beyond travel; position kept",
        3 => "reset while in motion; position lost, re-home",
        4 => "probe not in the expected initial state",
        5 => "probe did not trigger within travel",
        6 => "homing reset",
        7 => "safety door opened during homing",
        8 => "homing pull-off failed to clear the switch",
        9 => "homing switch not found",
        _ => "unknown alarm code",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_documented_code_has_its_own_meaning() {
        for code in (1..=16).chain(20..=38) {
            assert_ne!(error_meaning(code), "unknown error code", "error {code}");
        }
        for code in 1..=9 {
            assert_ne!(alarm_meaning(code), "unknown alarm code", "alarm {code}");
        }
        assert_eq!(error_meaning(99), "unknown error code");
    }
}
