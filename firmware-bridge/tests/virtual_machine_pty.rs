//! Virtual machines on real pseudo-terminals, opened by a host with the `serialport` crate
//! exactly as a USB serial adapter would be.

#![cfg(feature = "serial")]

use std::io::{BufRead, BufReader, ErrorKind, Read, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use munifab_firmware_bridge::virtual_machine::{
    Executed, Fault, FaultConfig, FirmwareConfig, GrblConfig, MarlinConfig, PtyOptions, VmConfig,
    normalize_grbl_line, spawn_in_memory, spawn_on_pty, spawn_on_pty_with,
};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};

/// A fresh path for a symlink, unique per test and process.
fn link_path(test: &str) -> PathBuf {
    std::env::temp_dir().join(format!("munifab-vm-{}-{test}", std::process::id()))
}

fn marlin(speed: f64, baud: u32) -> VmConfig {
    VmConfig {
        firmware: FirmwareConfig::Marlin(MarlinConfig {
            speed,
            ..MarlinConfig::default()
        }),
        baud,
        faults: FaultConfig::default(),
    }
}

fn numbered(n: u64, command: &str) -> String {
    let payload = format!("N{n} {command}");
    let checksum = payload.bytes().fold(0u8, |cs, b| cs ^ b);
    format!("{payload}*{checksum}\n")
}

/// A blocking host on the pty: one line out, lines in until the `ok` that answers it.
struct Host {
    port: BufReader<Box<dyn serialport::SerialPort>>,
}

impl Host {
    fn open(path: &Path) -> Host {
        let port = serialport::new(path.to_str().expect("UTF-8 path"), 115_200)
            .timeout(Duration::from_secs(20))
            .open()
            .unwrap_or_else(|e| panic!("opening {} as a serial port: {e}", path.display()));
        Host {
            port: BufReader::new(port),
        }
    }

    fn line(&mut self) -> String {
        let mut line = String::new();
        self.port
            .read_line(&mut line)
            .expect("a line from the machine before the timeout");
        line.trim_end().to_owned()
    }

    fn exchange(&mut self, line: &str) -> Vec<String> {
        self.port
            .get_mut()
            .write_all(line.as_bytes())
            .expect("writing to the port");
        let mut replies = Vec::new();
        loop {
            let reply = self.line();
            let done = reply.starts_with("ok");
            replies.push(reply);
            if done {
                return replies;
            }
        }
    }
}

fn commands(record: &[Executed]) -> Vec<&str> {
    record.iter().map(|e| e.command.as_str()).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_completes_the_m115_handshake_and_moves_over_a_linked_pty() {
    let link = link_path("handshake");
    let handle = spawn_on_pty(marlin(0.0, 115_200), Some(&link)).expect("a pty");
    assert_eq!(
        std::fs::read_link(&link).unwrap(),
        handle.slave_path().unwrap()
    );
    let host_link = link.clone();
    let replies = tokio::task::spawn_blocking(move || {
        let mut host = Host::open(&host_link);
        let mut replies = host.exchange(&numbered(0, "M110 N0"));
        replies.extend(host.exchange(&numbered(1, "M115")));
        for (n, command) in [
            (2, "G28"),
            (3, "G1 X10 Y10 F3000"),
            (4, "G1 X20"),
            (5, "M400"),
            (6, "M114"),
        ] {
            replies.extend(host.exchange(&numbered(n, command)));
        }
        replies
    })
    .await
    .unwrap();
    assert!(
        replies
            .iter()
            .any(|l| l.starts_with("FIRMWARE_NAME:Marlin")),
        "{replies:?}"
    );
    assert!(replies.contains(&"Cap:AUTOREPORT_TEMP:1".to_owned()));
    assert!(
        replies
            .iter()
            .any(|l| l.starts_with("X:20.00 Y:10.00 Z:0.00")),
        "{replies:?}"
    );
    let record = handle.unplug().await.unwrap();
    assert_eq!(
        commands(&record),
        [
            "M110 N0",
            "M115",
            "G28",
            "G1 X10 Y10 F3000",
            "G1 X20",
            "M400",
            "M114"
        ]
    );
    assert_eq!(record[3].line, Some(3));
    assert!(
        std::fs::symlink_metadata(&link).is_err(),
        "unplugging removes the link"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unplugging_the_machine_ends_the_hosts_reads_instead_of_timing_out() {
    let link = link_path("unplug");
    let handle = spawn_on_pty(marlin(0.0, 0), Some(&link)).expect("a pty");
    let host_link = link.clone();
    let (opened, is_open) = tokio::sync::oneshot::channel();
    let host = tokio::task::spawn_blocking(move || {
        let mut host = Host::open(&host_link);
        host.exchange("M105\n");
        opened.send(()).unwrap();
        let mut rest = Vec::new();
        host.port.read_to_end(&mut rest)
    });
    is_open.await.unwrap();
    handle.unplug().await.unwrap();
    match host.await.unwrap() {
        Ok(_) => {}
        Err(e) => assert_ne!(
            e.kind(),
            ErrorKind::TimedOut,
            "the host must see the unplug, got {e}"
        ),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_disconnect_fault_pulls_the_cable_by_itself() {
    let mut config = marlin(0.0, 0);
    config.faults.disconnect_after_commands = Some(2);
    let handle = spawn_on_pty(config, None).expect("a pty");
    let slave = handle.slave_path().unwrap().to_owned();
    let host = tokio::task::spawn_blocking(move || {
        let mut host = Host::open(&slave);
        host.exchange("M105\n");
        host.port
            .get_mut()
            .write_all(b"M105\nM105\nM105\n")
            .unwrap();
        let mut rest = Vec::new();
        host.port.read_to_end(&mut rest).map(|_| rest)
    });
    let record = handle.finished().await.unwrap();
    assert_eq!(record.len(), 2);
    if let Err(e) = host.await.unwrap() {
        assert_ne!(e.kind(), ErrorKind::TimedOut);
    }
}

#[tokio::test(start_paused = true)]
async fn an_in_memory_machine_paces_bytes_and_answers_in_order() {
    let (handle, host) = spawn_in_memory(marlin(1.0, 115_200)).unwrap();
    let (read, mut write) = tokio::io::split(host);
    let mut lines = tokio::io::BufReader::new(read).lines();
    write
        .write_all(numbered(1, "G1 X50 F3000").as_bytes())
        .await
        .unwrap();
    write
        .write_all(numbered(2, "M400").as_bytes())
        .await
        .unwrap();
    write
        .write_all(numbered(3, "M114").as_bytes())
        .await
        .unwrap();
    let mut replies = Vec::new();
    while replies.len() < 4 {
        let line = lines.next_line().await.unwrap().expect("a line");
        // The machine powered on with the cable plugged in: its boot lines come first.
        if line != "start" && !line.starts_with("echo:") {
            replies.push(line);
        }
    }
    assert_eq!(replies[..2], ["ok", "ok"]);
    assert!(
        replies[2].starts_with("X:50.00 Y:0.00 Z:0.00 E:0.00 Count X:4000"),
        "{replies:?}"
    );
    handle.inject(Fault::Reset).await.unwrap();
    assert_eq!(lines.next_line().await.unwrap().as_deref(), Some("start"));
    drop(write);
    drop(lines);
    let record = handle.finished().await.unwrap();
    assert_eq!(commands(&record), ["G1 X50 F3000", "M400", "M114"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_character_counting_host_streams_to_grbl_over_a_pty_and_polls_status() {
    let config = VmConfig {
        firmware: FirmwareConfig::Grbl(GrblConfig {
            speed: 0.0,
            ..GrblConfig::default()
        }),
        baud: 115_200,
        faults: FaultConfig::default(),
    };
    let handle = spawn_on_pty(config, None).expect("a pty");
    let slave = handle.slave_path().unwrap().to_owned();
    let job: Vec<String> = (0..300)
        .map(|i| {
            format!(
                "G1 X-{}.{} Y-{} F{} ; segment {i}",
                i % 90,
                i % 10,
                i % 50,
                500 + i
            )
        })
        .collect();
    let sent = job.clone();
    let status = tokio::task::spawn_blocking(move || {
        let mut host = Host::open(&slave);
        // Learn the RX size the way a host would: from the buffer field of a status report.
        host.port.get_mut().write_all(b"?").unwrap();
        let status = loop {
            let line = host.line();
            if line.starts_with('<') {
                break line;
            }
        };
        let mut in_flight = std::collections::VecDeque::new();
        let mut next = 0;
        let mut answered = 0;
        while answered < sent.len() {
            let room = |in_flight: &std::collections::VecDeque<usize>, len: usize| {
                in_flight.iter().sum::<usize>() + len <= 128
            };
            while next < sent.len() && room(&in_flight, sent[next].len() + 1) {
                host.port
                    .get_mut()
                    .write_all(format!("{}\n", sent[next]).as_bytes())
                    .unwrap();
                in_flight.push_back(sent[next].len() + 1);
                next += 1;
            }
            let reply = host.line();
            if reply == "ok" {
                in_flight.pop_front();
                answered += 1;
            } else {
                assert!(
                    !reply.starts_with("error") && !reply.starts_with("ALARM"),
                    "{reply}"
                );
            }
        }
        status
    })
    .await
    .unwrap();
    assert!(
        status.starts_with("<Idle|MPos:0.000,0.000,0.000|Bf:15,128|FS:0,0"),
        "{status}"
    );
    assert_eq!(handle.stats().await.unwrap().rx_lost, 0);
    let record = handle.unplug().await.unwrap();
    let expected: Vec<String> = job.iter().map(|l| normalize_grbl_line(l)).collect();
    assert_eq!(commands(&record), expected);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_machine_that_resets_on_open_greets_every_host_with_start() {
    let options = PtyOptions {
        link: None,
        reset_on_open: true,
    };
    let handle = spawn_on_pty_with(marlin(0.0, 115_200), &options).expect("a pty");
    let slave = handle.slave_path().unwrap().to_owned();
    let first_lines = tokio::task::spawn_blocking(move || {
        let mut first_lines = Vec::new();
        for session in 0..2 {
            let mut host = Host::open(&slave);
            first_lines.push(host.line());
            // The host waits for the boot to finish, as it must after a DTR reset.
            while host.line() != "echo:Hardcoded Default Settings Loaded" {}
            host.exchange(&numbered(1, &format!("G1 X{session}")));
        }
        first_lines
    })
    .await
    .unwrap();
    assert_eq!(first_lines, ["start", "start"]);
    let record = handle.unplug().await.unwrap();
    assert_eq!(
        commands(&record),
        ["G1 X0", "G1 X1"],
        "line 1 twice: the reset zeroed last_N"
    );
}
