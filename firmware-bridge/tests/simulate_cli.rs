//! `munifab-bridge simulate` as a user runs it: a real process, a real pty, Ctrl-C.

#![cfg(feature = "serial")]

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

fn link_path(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("munifab-cli-{}-{test}", std::process::id()))
}

fn bridge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_munifab-bridge"))
}

#[test]
fn simulate_serves_a_grbl_at_the_link_until_ctrl_c_removes_it() {
    let link = link_path("grbl");
    let mut child = bridge()
        .args([
            "simulate",
            "--firmware",
            "grbl",
            "--baud",
            "0",
            "--speed",
            "0",
            "--link",
        ])
        .arg(&link)
        .stderr(Stdio::piped())
        .spawn()
        .expect("munifab-bridge runs");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut banner = String::new();
    // The first line is printed once the link exists.
    stderr.read_line(&mut banner).unwrap();
    assert!(banner.contains("linked at"), "{banner}");

    let mut port = serialport::new(link.to_str().unwrap(), 115_200)
        .timeout(Duration::from_secs(20))
        .open()
        .expect("the link opens as a serial port");
    port.write_all(b"$I\n").unwrap();
    let mut replies = BufReader::new(port);
    let mut lines = Vec::new();
    while lines.last().is_none_or(|l: &String| l != "ok") {
        let mut line = String::new();
        replies.read_line(&mut line).unwrap();
        lines.push(line.trim_end().to_owned());
    }
    assert!(
        lines.contains(&"[VER:1.1h.20190830:]".to_owned()),
        "{lines:?}"
    );

    let interrupted = Command::new("kill")
        .args(["-INT", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(interrupted.success());
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "Ctrl-C removes the link"
    );
}

#[test]
fn simulate_refuses_to_replace_a_file_that_is_not_a_link() {
    let path = link_path("occupied");
    std::fs::write(&path, "precious").unwrap();
    let output = bridge()
        .args(["simulate", "--firmware", "marlin", "--link"])
        .arg(&path)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("not a symlink"), "{message}");
    assert_eq!(std::fs::read_to_string(&path).unwrap(), "precious");
    std::fs::remove_file(&path).unwrap();
}

#[test]
fn simulate_rejects_a_corruption_rate_that_is_not_a_probability() {
    let link = link_path("rate");
    let output = bridge()
        .args([
            "simulate",
            "--firmware",
            "marlin",
            "--corrupt",
            "1.5",
            "--link",
        ])
        .arg(&link)
        .output()
        .unwrap();
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(message.contains("must be between 0 and 1"), "{message}");
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "nothing was created"
    );
}
