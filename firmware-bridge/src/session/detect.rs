//! Telling Marlin from GRBL on a port nobody has described (`munifab-bridge probe`).
//!
//! Sans-IO like the sessions: bytes and time in, bytes to write and a verdict out.
//!
//! The detector first listens: a board that resets when the port opens greets the host
//! (`start` from Marlin, `Grbl 1.1h ['$' for help]` from GRBL), and one that does not may
//! still have its power-on greeting waiting in the pty or USB buffer. Silence until the
//! listening time is up gets one probe of two lines, each harmless to both families:
//!
//! ```text
//! > M115            Marlin: FIRMWARE_NAME:… Cap:… ok      GRBL: error:20
//! > $I              Marlin: echo:Unknown command… ok      GRBL: [VER:…] [OPT:…] ok
//! ```
//!
//! Either firmware answers each line exactly once (`ok` or `error:`), in order, so the
//! detector waits for the answer to `$I`, the last line, before it hands the port over: a
//! late answer would otherwise be taken by the session as the answer to its own first line.
//! It knows that answer by what comes before its `ok` (`[VER:`/`[OPT:` from GRBL, Marlin's
//! unknown-command echo naming `$I`), not by counting `ok`s: an `ok` left over from an
//! earlier host may still be waiting in the buffers.

use std::time::{Duration, Instant};

use crate::session::line::LineSplitter;

/// A firmware family the sessions speak.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// Marlin 2.x and firmwares in Marlin mode (`start`, `FIRMWARE_NAME:`, `echo:`).
    Marlin,
    /// GRBL 1.1, grblHAL, FluidNC (`Grbl …` banner, `[VER:…]`, `error:N`).
    Grbl,
}

/// How long to wait. Plain data.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DetectConfig {
    /// How long to listen for a greeting before probing (an Arduino-style bootloader takes
    /// one to two seconds after the reset that opening the port causes).
    pub listen: Duration,
    /// How long to wait for the answers to a probe.
    pub answer_timeout: Duration,
    /// Probes before giving up.
    pub attempts: u32,
}

impl Default for DetectConfig {
    fn default() -> Self {
        Self {
            listen: Duration::from_millis(2500),
            answer_timeout: Duration::from_secs(2),
            attempts: 2,
        }
    }
}

/// Why no firmware family could be told.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DetectError {
    /// Nothing recognisable came back.
    #[error("no Marlin or GRBL answer after {attempts} probes; last line heard: {last_line:?}")]
    NoAnswer {
        /// Probes sent.
        attempts: u32,
        /// The last line received, if any (a wrong baud rate shows up here as garbage).
        last_line: Option<String>,
    },
}

/// The probe: two lines, one answer each from either family.
const PROBE: &[u8] = b"M115\n$I\n";

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Listening { until: Instant },
    Probing { attempt: u32, until: Instant },
    Done,
    Failed,
}

/// Host side of the identification. See the module documentation.
#[derive(Debug)]
pub struct Detector {
    config: DetectConfig,
    phase: Phase,
    splitter: LineSplitter,
    family: Option<Family>,
    /// The reply to `$I` has begun; its `ok` (or `error:`) ends the probe.
    last_reply_seen: bool,
    transmit: bool,
    last_line: Option<String>,
    error: Option<DetectError>,
}

impl Detector {
    /// A detector for a port opened at `now`.
    pub fn new(config: DetectConfig, now: Instant) -> Self {
        Self {
            phase: Phase::Listening {
                until: now + config.listen,
            },
            config,
            splitter: LineSplitter::default(),
            family: None,
            last_reply_seen: false,
            transmit: false,
            last_line: None,
            error: None,
        }
    }

    /// Feed bytes received from the port.
    pub fn handle_input(&mut self, _now: Instant, bytes: &[u8]) {
        let mut lines = Vec::new();
        self.splitter.push(bytes, |l| lines.push(l.to_owned()));
        for line in lines {
            self.on_line(&line);
        }
    }

    /// Let time pass; call at or after [`Detector::poll_timeout`].
    pub fn handle_timeout(&mut self, now: Instant) {
        match self.phase {
            Phase::Listening { until } if now >= until => self.probe(now, 1),
            Phase::Probing { attempt, until } if now >= until => {
                if self.family.is_some() {
                    // Recognised, but an answer went missing: do not wait forever for it.
                    self.phase = Phase::Done;
                } else if attempt >= self.config.attempts {
                    self.phase = Phase::Failed;
                    self.error = Some(DetectError::NoAnswer {
                        attempts: attempt,
                        last_line: self.last_line.clone(),
                    });
                } else {
                    self.probe(now, attempt + 1);
                }
            }
            _ => {}
        }
    }

    /// Bytes to write now.
    pub fn poll_transmit(&mut self) -> Option<Vec<u8>> {
        std::mem::take(&mut self.transmit).then(|| PROBE.to_vec())
    }

    /// When [`Detector::handle_timeout`] is next due.
    pub fn poll_timeout(&self) -> Option<Instant> {
        match self.phase {
            Phase::Listening { until } | Phase::Probing { until, .. } => Some(until),
            Phase::Done | Phase::Failed => None,
        }
    }

    /// The verdict, once there is one.
    pub fn outcome(&self) -> Option<Result<Family, DetectError>> {
        match self.phase {
            Phase::Done => self.family.map(Ok),
            Phase::Failed => self.error.clone().map(Err),
            _ => None,
        }
    }

    fn probe(&mut self, now: Instant, attempt: u32) {
        self.last_reply_seen = false;
        self.transmit = true;
        self.phase = Phase::Probing {
            attempt,
            until: now + self.config.answer_timeout,
        };
    }

    fn on_line(&mut self, line: &str) {
        self.last_line = Some(line.to_owned());
        if self.family.is_none() {
            self.family = classify(line);
        }
        let answer = line == "ok" || line.starts_with("ok ") || line.starts_with("error:");
        match self.phase {
            Phase::Listening { .. } if self.family.is_some() => self.phase = Phase::Done,
            Phase::Probing { .. } => {
                if answer && self.last_reply_seen && self.family.is_some() {
                    self.phase = Phase::Done;
                }
                if line.starts_with("[VER:")
                    || line.starts_with("[OPT:")
                    || (line.starts_with("echo:") || line.starts_with("Error:"))
                        && line.contains("$I")
                {
                    self.last_reply_seen = true;
                }
            }
            _ => {}
        }
    }
}

/// The family a line gives away, if any. `ok` alone does not: both say it.
fn classify(line: &str) -> Option<Family> {
    const GRBL: [&str; 7] = ["Grbl ", "[VER:", "[OPT:", "[MSG:", "error:", "ALARM:", "<"];
    const MARLIN: [&str; 6] = [
        "start",
        "FIRMWARE_NAME:",
        "Cap:",
        "echo:",
        "Error:",
        "//action:",
    ];
    if GRBL.iter().any(|p| line.starts_with(p)) {
        Some(Family::Grbl)
    } else if MARLIN.iter().any(|p| line.starts_with(p)) {
        Some(Family::Marlin)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn detector() -> (Detector, Instant) {
        let now = Instant::now();
        (Detector::new(DetectConfig::default(), now), now)
    }

    #[test]
    fn a_marlin_greeting_is_enough_and_nothing_is_sent() {
        let (mut d, now) = detector();
        d.handle_input(now, b"start\necho:Marlin 2.1.2\n");
        assert_eq!(d.outcome(), Some(Ok(Family::Marlin)));
        assert_eq!(d.poll_transmit(), None);
    }

    #[test]
    fn a_grbl_banner_is_enough_and_nothing_is_sent() {
        let (mut d, now) = detector();
        d.handle_input(now, b"\r\nGrbl 1.1h ['$' for help]\r\n");
        assert_eq!(d.outcome(), Some(Ok(Family::Grbl)));
        assert_eq!(d.poll_transmit(), None);
    }

    #[test]
    fn silence_gets_a_probe_and_the_verdict_waits_for_the_last_answer() {
        let (mut d, now) = detector();
        assert_eq!(d.poll_transmit(), None);
        let later = d.poll_timeout().unwrap();
        assert!(later > now);
        d.handle_timeout(later);
        assert_eq!(d.poll_transmit().as_deref(), Some(&b"M115\n$I\n"[..]));
        d.handle_input(
            later,
            b"error:20\r\n[VER:1.1h.20190830:]\r\n[OPT:V,15,128]\r\n",
        );
        assert_eq!(d.outcome(), None, "the `$I` is not answered yet");
        d.handle_input(later, b"ok\r\n");
        assert_eq!(d.outcome(), Some(Ok(Family::Grbl)));
    }

    #[test]
    fn an_ok_left_over_from_an_earlier_host_does_not_end_the_probe_early() {
        let (mut d, now) = detector();
        let later = d.poll_timeout().unwrap();
        d.handle_timeout(later);
        d.poll_transmit().unwrap();
        d.handle_input(now, b"ok\nFIRMWARE_NAME:Marlin 2.1.2\nCap:EEPROM:1\nok\n");
        assert_eq!(d.outcome(), None, "two `ok`s, but `$I` is not answered yet");
        d.handle_input(now, b"echo:Unknown command: \"$I\"\nok\n");
        assert_eq!(d.outcome(), Some(Ok(Family::Marlin)));
    }

    #[test]
    fn a_recognised_firmware_whose_last_answer_is_lost_is_still_reported_after_the_wait() {
        let (mut d, now) = detector();
        let later = d.poll_timeout().unwrap();
        d.handle_timeout(later);
        d.poll_transmit().unwrap();
        d.handle_input(now, b"error:20\n");
        assert_eq!(d.outcome(), None);
        let end = d.poll_timeout().unwrap();
        d.handle_timeout(end);
        assert_eq!(d.outcome(), Some(Ok(Family::Grbl)));
    }

    #[test]
    fn marlin_answers_the_probe_with_its_name_and_an_unknown_command() {
        let (mut d, now) = detector();
        let later = d.poll_timeout().unwrap();
        d.handle_timeout(later);
        d.poll_transmit().unwrap();
        d.handle_input(
            now,
            b"FIRMWARE_NAME:Marlin 2.1.2\nCap:EEPROM:1\nok\necho:Unknown command: \"$I\"\nok\n",
        );
        assert_eq!(d.outcome(), Some(Ok(Family::Marlin)));
    }

    #[test]
    fn nothing_recognisable_is_a_clear_error_naming_what_was_heard() {
        let (mut d, now) = detector();
        let mut at = now;
        while let Some(next) = d.poll_timeout() {
            at = next;
            d.handle_timeout(at);
            if d.poll_transmit().is_some() {
                d.handle_input(at, b"\xf0\x0f garbage\n");
            }
        }
        assert!(at > now);
        assert_eq!(
            d.outcome(),
            Some(Err(DetectError::NoAnswer {
                attempts: 2,
                last_line: Some("\u{fffd}\u{f} garbage".to_owned())
            }))
        );
    }
}
