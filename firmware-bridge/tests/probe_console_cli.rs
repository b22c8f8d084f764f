//! `munifab-bridge probe` and `munifab-bridge console` as a user runs them: real processes,
//! a virtual machine from `munifab-bridge simulate` on a real pty, text on stdin and stdout.

#![cfg(feature = "serial")]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// Generous bound so a broken build fails with a message instead of hanging CI.
const PATIENCE: Duration = Duration::from_secs(120);

fn link_path(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("munifab-cli-{}-{test}", std::process::id()))
}

fn bridge() -> Command {
    Command::new(env!("CARGO_BIN_EXE_munifab-bridge"))
}

/// A `munifab-bridge simulate` process; interrupted (which unplugs the machine and removes
/// the link) when dropped.
struct Simulator {
    child: Child,
    link: PathBuf,
}

impl Simulator {
    fn start(firmware: &str, test: &str) -> Simulator {
        let link = link_path(test);
        let mut child = bridge()
            .args([
                "simulate",
                "--firmware",
                firmware,
                "--baud",
                "0",
                "--speed",
                "0",
            ])
            .arg("--link")
            .arg(&link)
            .stderr(Stdio::piped())
            .spawn()
            .expect("munifab-bridge runs");
        let mut stderr = BufReader::new(child.stderr.take().unwrap());
        let mut announcement = String::new();
        // The first line is printed once the link exists.
        stderr.read_line(&mut announcement).unwrap();
        assert!(announcement.contains("linked at"), "{announcement}");
        Simulator { child, link }
    }
}

impl Drop for Simulator {
    fn drop(&mut self) {
        let _ = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status();
        let _ = self.child.wait();
    }
}

/// Runs `command` to its end, or kills it after [`PATIENCE`].
fn output_within_patience(mut command: Command) -> Output {
    let child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("munifab-bridge runs");
    let pid = child.id();
    let (done, finished) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = done.send(child.wait_with_output());
    });
    match finished.recv_timeout(PATIENCE) {
        Ok(output) => output.expect("the output is readable"),
        Err(_) => {
            let _ = Command::new("kill")
                .args(["-KILL", &pid.to_string()])
                .status();
            panic!("munifab-bridge did not finish within {PATIENCE:?}");
        }
    }
}

fn probe(port: &Path) -> Output {
    let mut command = bridge();
    command.args(["probe", "--port"]).arg(port);
    output_within_patience(command)
}

fn stdout_of(output: &Output) -> String {
    assert!(
        output.status.success(),
        "{}\n{}",
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8(output.stdout.clone()).unwrap()
}

#[test]
fn probe_identifies_a_marlin_by_its_greeting_and_then_by_asking() {
    let machine = Simulator::start("marlin", "probe-marlin");
    // The virtual board printed `start` at power-on; it waits in the pty for the first host.
    let first = stdout_of(&probe(&machine.link));
    assert!(first.contains("family:     marlin"), "{first}");
    assert!(
        first.contains("firmware:   FIRMWARE_NAME:Marlin"),
        "{first}"
    );
    assert!(
        first.contains("capability: EMERGENCY_PARSER"),
        "the M115 report is listed: {first}"
    );
    // It does not reset when the port opens, so the second probe hears nothing and asks.
    let second = stdout_of(&probe(&machine.link));
    assert!(second.contains("family:     marlin"), "{second}");
    assert!(
        second.contains("firmware:   FIRMWARE_NAME:Marlin"),
        "{second}"
    );
}

#[test]
fn probe_identifies_a_grbl_by_its_banner_and_then_by_asking() {
    let machine = Simulator::start("grbl", "probe-grbl");
    let first = stdout_of(&probe(&machine.link));
    assert!(first.contains("family:     grbl"), "{first}");
    assert!(first.contains("firmware:   Grbl 1.1h"), "{first}");
    assert!(first.contains("capability: [VER:1.1h"), "{first}");
    let second = stdout_of(&probe(&machine.link));
    assert!(second.contains("family:     grbl"), "{second}");
    assert!(second.contains("capability: OPT:V = on"), "{second}");
}

#[test]
fn probe_of_a_port_that_does_not_exist_is_a_clear_error() {
    let missing = link_path("no-such-port");
    let output = probe(&missing);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains(&missing.display().to_string()) && message.contains("No such file"),
        "{message}"
    );
}

#[test]
fn console_of_a_port_that_does_not_exist_is_a_clear_error() {
    let missing = link_path("no-such-console");
    let mut command = bridge();
    command
        .args(["console", "--firmware", "grbl", "--port"])
        .arg(&missing)
        .stdin(Stdio::null());
    let output = output_within_patience(command);
    assert!(!output.status.success());
    let message = String::from_utf8_lossy(&output.stderr);
    assert!(
        message.contains(&missing.display().to_string()) && message.contains("No such file"),
        "{message}"
    );
}

/// Reads the console's stdout a line at a time on a thread, so the test can wait for a line
/// with a patience bound.
fn lines_of(stdout: impl Read + Send + 'static) -> mpsc::Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

fn wait_for_line(lines: &mpsc::Receiver<String>, wanted: impl Fn(&str) -> bool) -> Vec<String> {
    let mut seen = Vec::new();
    loop {
        match lines.recv_timeout(PATIENCE) {
            Ok(line) => {
                let done = wanted(&line);
                seen.push(line);
                if done {
                    return seen;
                }
            }
            Err(e) => panic!("no wanted line ({e}); saw {seen:?}"),
        }
    }
}

#[test]
fn console_sends_a_typed_line_and_prints_the_machines_reply() {
    let machine = Simulator::start("marlin", "console-marlin");
    let mut console = bridge()
        .args(["console", "--firmware", "marlin", "--port"])
        .arg(&machine.link)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("munifab-bridge runs");
    let lines = lines_of(console.stdout.take().unwrap());
    let mut stdin = console.stdin.take().unwrap();
    // Typed before the handshake ends: the console reads stdin only once connected.
    stdin.write_all(b"G1 X12 Y7 F3000\nM114\n").unwrap();
    let seen = wait_for_line(&lines, |l| l.starts_with("X:"));
    assert!(
        seen.last().unwrap().starts_with("X:12.00 Y:7.00"),
        "the position after the typed move: {seen:?}"
    );
    // Ctrl-D leaves.
    drop(stdin);
    let status = console.wait().unwrap();
    let mut stderr = String::new();
    console
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert!(status.success(), "{status}: {stderr}");
    assert!(
        stderr.contains("connected to FIRMWARE_NAME:Marlin"),
        "{stderr}"
    );
}

#[test]
fn console_talks_to_grbl_too() {
    let machine = Simulator::start("grbl", "console-grbl");
    let mut console = bridge()
        .args(["console", "--firmware", "grbl", "--port"])
        .arg(&machine.link)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("munifab-bridge runs");
    let lines = lines_of(console.stdout.take().unwrap());
    let mut stdin = console.stdin.take().unwrap();
    stdin.write_all(b"$G\n").unwrap();
    let seen = wait_for_line(&lines, |l| l.starts_with("[GC:"));
    assert!(seen.last().unwrap().contains("G54"), "{seen:?}");
    drop(stdin);
    assert!(console.wait().unwrap().success());
}
