//! `munifab-agent probe` and the port part of `check`: which serial ports exist (by their
//! stable `/dev/serial/by-id/` names where udev made them) and which firmware answers.

use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// What answered on a port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A Marlin-family firmware (`FIRMWARE_NAME:` in its M115 report).
    Marlin(String),
    /// GRBL or a derivative (its banner or `$I` report).
    Grbl(String),
    /// Something answered, but not recognisably.
    Unknown(String),
    /// Nothing answered within the wait.
    Silent,
}

/// Serial ports worth probing: the stable by-id names first, then every port the system
/// lists that no by-id name points to.
pub fn candidate_ports() -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut targets = Vec::new();
    if let Ok(dir) = std::fs::read_dir("/dev/serial/by-id") {
        let mut by_id: Vec<PathBuf> = dir.flatten().map(|e| e.path()).collect();
        by_id.sort();
        for p in by_id {
            targets.extend(std::fs::canonicalize(&p).ok());
            out.push(p);
        }
    }
    if let Ok(ports) = serialport::available_ports() {
        for p in ports {
            let path = PathBuf::from(&p.port_name);
            let real = std::fs::canonicalize(&path).unwrap_or(path.clone());
            if !targets.contains(&real) && !out.contains(&path) {
                out.push(path);
            }
        }
    }
    out
}

/// Opens `port` at `baud`, asks who is there, and classifies the answer. Blocking; at most
/// about `wait` long.
pub fn identify(port: &Path, baud: u32, wait: Duration) -> Result<Answer, String> {
    let mut link = serialport::new(port.to_string_lossy(), baud)
        .timeout(Duration::from_millis(100))
        .open()
        .map_err(|e| e.to_string())?;
    // Opening resets many boards (DTR); give the bootloader a moment, then ask both
    // dialects. M115 on GRBL is a harmless `error:20`; `$I` on Marlin an unknown command.
    std::thread::sleep(Duration::from_millis(300));
    link.write_all(b"\nM115\n$I\n").map_err(|e| e.to_string())?;
    let start = Instant::now();
    let mut seen = String::new();
    let mut buf = [0u8; 512];
    while start.elapsed() < wait {
        match link.read(&mut buf) {
            Ok(n) => seen.push_str(&String::from_utf8_lossy(&buf[..n])),
            Err(e) if e.kind() == std::io::ErrorKind::TimedOut => {}
            Err(e) => return Err(e.to_string()),
        }
        if let Some(a) = classify(&seen) {
            return Ok(a);
        }
    }
    Ok(if seen.trim().is_empty() {
        Answer::Silent
    } else {
        Answer::Unknown(seen.lines().next().unwrap_or_default().trim().to_string())
    })
}

/// Recognises a firmware from what it printed.
pub fn classify(text: &str) -> Option<Answer> {
    for line in text.lines() {
        if let Some(i) = line.find("FIRMWARE_NAME:") {
            let name = line[i + "FIRMWARE_NAME:".len()..]
                .split(" SOURCE_CODE_URL")
                .next()
                .unwrap_or_default()
                .trim()
                .to_string();
            return Some(Answer::Marlin(name));
        }
        let t = line.trim();
        if t.starts_with("Grbl ") || t.starts_with("GrblHAL ") || t.starts_with("[VER:") {
            return Some(Answer::Grbl(t.to_string()));
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn marlin_and_grbl_answers_are_told_apart() {
        assert_eq!(
            classify(
                "ok\nFIRMWARE_NAME:Marlin 2.1.2 (Github) SOURCE_CODE_URL:x PROTOCOL_VERSION:1.0\n"
            ),
            Some(Answer::Marlin("Marlin 2.1.2 (Github)".into()))
        );
        assert_eq!(
            classify("\r\nGrbl 1.1h ['$' for help]\r\n"),
            Some(Answer::Grbl("Grbl 1.1h ['$' for help]".into()))
        );
        assert_eq!(classify("echo:Unknown command\n"), None);
    }
}
