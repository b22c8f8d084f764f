//! Lines in both directions: cleaning job lines, Marlin framing, and splitting received bytes.

/// XOR of every byte, as Marlin and RepRapFirmware check it.
pub fn checksum(payload: &[u8]) -> u8 {
    payload.iter().fold(0, |cs, b| cs ^ b)
}

/// Frame a command as `N<n> <command>*<checksum>\n`.
pub fn frame_numbered(n: u32, command: &str) -> String {
    let payload = format!("N{n} {command}");
    let cs = checksum(payload.as_bytes());
    format!("{payload}*{cs}\n")
}

/// Strip a job line down to what the firmware needs: no `;` comment, no surrounding
/// whitespace, no line number or checksum the file may already carry (we add our own).
/// Returns `None` for lines with nothing left to send.
pub fn clean(raw: &str) -> Option<&str> {
    let text = match raw.find(';') {
        Some(i) => &raw[..i],
        None => raw,
    };
    let mut text = text.trim();
    if let Some(rest) = text.strip_prefix(['N', 'n']) {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits > 0 {
            text = rest[digits..].trim_start();
        }
    }
    if let Some(star) = text.rfind('*')
        && text[star + 1..].bytes().all(|b| b.is_ascii_digit())
    {
        text = text[..star].trim_end();
    }
    (!text.is_empty()).then_some(text)
}

/// Collects received bytes into lines. `\n` and `\r` both end a line (so `\r\n` yields one
/// line and an ignored empty one); overlong garbage is cut so a noisy link cannot grow memory.
#[derive(Debug, Default)]
pub struct LineSplitter {
    partial: Vec<u8>,
}

/// Longest line kept; longer input is split here.
const MAX_RECEIVED_LINE: usize = 512;

impl LineSplitter {
    /// Append bytes and call `each` with every completed, non-empty line (lossy UTF-8).
    pub fn push(&mut self, bytes: &[u8], mut each: impl FnMut(&str)) {
        for &b in bytes {
            if b == b'\n' || b == b'\r' || self.partial.len() >= MAX_RECEIVED_LINE {
                if !self.partial.is_empty() {
                    let line = String::from_utf8_lossy(&self.partial).into_owned();
                    self.partial.clear();
                    each(line.trim());
                }
                if b == b'\n' || b == b'\r' {
                    continue;
                }
            }
            self.partial.push(b);
        }
    }

    /// Forget a partial line (after a reset of the firmware).
    pub fn clear(&mut self) {
        self.partial.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checksums_match_ones_seen_in_real_logs() {
        assert_eq!(frame_numbered(0, "M110 N0"), "N0 M110 N0*125\n");
        assert_eq!(frame_numbered(1, "M115"), "N1 M115*39\n");
        assert_eq!(frame_numbered(2, "M21"), "N2 M21*18\n");
        assert_eq!(frame_numbered(19, "M105"), "N19 M105*31\n");
        assert_eq!(frame_numbered(124, "M25"), "N124 M25*19\n");
        assert_eq!(frame_numbered(1, "M575 P1 S0"), "N1 M575 P1 S0*39\n");
    }

    #[test]
    fn cleaning_drops_comments_numbers_and_checksums() {
        assert_eq!(clean("G1 X1 ; move"), Some("G1 X1"));
        assert_eq!(clean("  ; only a comment"), None);
        assert_eq!(clean(""), None);
        assert_eq!(clean("N12 G1 X2*99"), Some("G1 X2"));
        assert_eq!(clean("M117 Hello*world"), Some("M117 Hello*world"));
        assert_eq!(clean("NOTE"), Some("NOTE"));
    }

    #[test]
    fn splitter_handles_both_terminators_and_partial_input() {
        let mut s = LineSplitter::default();
        let mut out = Vec::new();
        s.push(b"ok\r\nok T:2", |l| out.push(l.to_owned()));
        s.push(b"0.0\nwait\r", |l| out.push(l.to_owned()));
        assert_eq!(out, ["ok", "ok T:20.0", "wait"]);
    }

    #[test]
    fn splitter_cuts_endless_garbage() {
        let mut s = LineSplitter::default();
        let mut n = 0;
        s.push(&[b'x'; 2000], |_| n += 1);
        assert_eq!(n, 3);
    }
}
