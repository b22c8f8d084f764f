//! Streaming throughput over a real pseudo-terminal to the virtual machines at an emulated
//! baud rate, with zero processing delay, for each flow-control mode. Prints bytes/s and the
//! ratio to the link bound (baud / 10 bytes per second for 8N1).
//!
//! `cargo bench -p munifab-firmware-bridge --bench streaming`

use std::time::Instant;

use munifab_firmware_bridge::session::grbl::{GrblConfig, GrblFlow, GrblSession};
use munifab_firmware_bridge::session::marlin::{MarlinConfig, MarlinFlow, MarlinSession};
use munifab_firmware_bridge::session::{Event, JobOptions, JobOutcome, Stats};
use munifab_firmware_bridge::transport::{self, BridgeEvent, DtrPolicy, PortSettings};
use munifab_firmware_bridge::virtual_machine::{
    self as vm, FaultConfig, FirmwareConfig, VmConfig, spawn_on_pty,
};

#[derive(Debug, Clone, Copy)]
enum Mode {
    MarlinAdvancedOk,
    MarlinWindow,
    MarlinPingPong,
    GrblCharacterCounting,
    GrblSendResponse,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::MarlinAdvancedOk => "Marlin ADVANCED_OK window",
            Mode::MarlinWindow => "Marlin plain ok window",
            Mode::MarlinPingPong => "Marlin one-line ping-pong",
            Mode::GrblCharacterCounting => "GRBL character counting",
            Mode::GrblSendResponse => "GRBL send-response",
        }
    }

    fn windowed(self) -> bool {
        matches!(
            self,
            Mode::MarlinAdvancedOk | Mode::MarlinWindow | Mode::GrblCharacterCounting
        )
    }
}

/// A typical slicer move: 29 bytes with its newline, 35–40 with Marlin's framing. GRBL has
/// no extruder, so its moves carry a feed rate instead.
fn line(i: usize, grbl: bool) -> String {
    let (x, y) = (100 + i % 100, 50 + i % 150);
    if grbl {
        format!(
            "G1 X{x}.{:03} Y{y}.{:03} F{}",
            i % 1000,
            (i * 7) % 1000,
            1000 + i % 5000
        )
    } else {
        format!(
            "G1 X{x}.{:03} Y{y}.{:03} E{}.{:04}",
            i % 1000,
            (i * 7) % 1000,
            i / 1000,
            i % 10000
        )
    }
}

struct Outcome {
    stats: Stats,
    seconds: f64,
}

async fn run(mode: Mode, baud: u32, lines: usize) -> Outcome {
    let firmware = match mode {
        Mode::MarlinAdvancedOk | Mode::MarlinWindow | Mode::MarlinPingPong => {
            FirmwareConfig::Marlin(vm::MarlinConfig {
                speed: 0.0,
                advanced_ok: matches!(mode, Mode::MarlinAdvancedOk),
                ..vm::MarlinConfig::default()
            })
        }
        Mode::GrblCharacterCounting | Mode::GrblSendResponse => {
            FirmwareConfig::Grbl(vm::GrblConfig {
                speed: 0.0,
                ..vm::GrblConfig::default()
            })
        }
    };
    let link = std::env::temp_dir().join(format!("munifab-bench-{}", std::process::id()));
    let machine = spawn_on_pty(
        VmConfig {
            firmware,
            baud,
            faults: FaultConfig::default(),
        },
        Some(&link),
    )
    .expect("a virtual machine on a pty");
    let port = transport::open_serial(&PortSettings {
        path: link,
        baud,
        dtr: DtrPolicy::Raise,
        rts: None,
    })
    .expect("the pty opens");
    let now = tokio::time::Instant::now().into_std();
    let session: Box<dyn FnOnce() -> transport::Bridge> = match mode {
        Mode::MarlinAdvancedOk | Mode::MarlinWindow | Mode::MarlinPingPong => {
            let flow = if matches!(mode, Mode::MarlinPingPong) {
                MarlinFlow::PingPong
            } else {
                MarlinFlow::Windowed
            };
            let config = MarlinConfig {
                flow,
                temperature_interval: None,
                ..MarlinConfig::default()
            };
            Box::new(move || transport::spawn(MarlinSession::new(config, now), port))
        }
        Mode::GrblCharacterCounting | Mode::GrblSendResponse => {
            let flow = if matches!(mode, Mode::GrblSendResponse) {
                GrblFlow::SendResponse
            } else {
                GrblFlow::CharacterCounting
            };
            let config = GrblConfig {
                flow,
                ..GrblConfig::default()
            };
            Box::new(move || transport::spawn(GrblSession::new(config, now), port))
        }
    };
    let mut bridge = session();
    while let Some(e) = bridge.events.recv().await {
        if matches!(e, BridgeEvent::Session(Event::Connected(_))) {
            break;
        }
    }
    let grbl = matches!(mode, Mode::GrblCharacterCounting | Mode::GrblSendResponse);
    let text: String = (0..lines).map(|i| line(i, grbl) + "\n").collect();
    let before = bridge.handle.stats().await.expect("running").bytes_sent;
    let started = Instant::now();
    bridge
        .handle
        .start_job(
            JobOptions::default(),
            Box::new(std::io::Cursor::new(text.into_bytes())),
        )
        .await
        .expect("job starts");
    while let Some(e) = bridge.events.recv().await {
        match e {
            BridgeEvent::Session(Event::JobFinished(JobOutcome::Completed)) => break,
            BridgeEvent::Session(Event::JobFinished(other)) => panic!("{mode:?}: {other:?}"),
            BridgeEvent::Disconnected { reason, .. } => panic!("{mode:?}: {reason}"),
            _ => {}
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut stats = bridge.handle.stats().await.expect("running");
    stats.bytes_sent -= before;
    bridge.handle.shutdown().await;
    let _ = machine.unplug().await;
    Outcome { stats, seconds }
}

fn main() {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a tokio runtime");
    let seconds_per_run: f64 = std::env::var("MUNIFAB_BENCH_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(4.0);
    println!("Firmware bridge streaming over a pty, virtual machines with zero processing delay");
    println!(
        "{:<28} {:>7} {:>7} {:>10} {:>9} {:>8} {:>6}",
        "mode", "baud", "lines", "bytes/s", "lines/s", "bound", "ratio"
    );
    let modes = [
        Mode::MarlinAdvancedOk,
        Mode::MarlinWindow,
        Mode::MarlinPingPong,
        Mode::GrblCharacterCounting,
        Mode::GrblSendResponse,
    ];
    for baud in [115_200u32, 250_000] {
        let bound = f64::from(baud) / 10.0;
        for mode in modes {
            // Enough lines for a few seconds at the bound (about 38 bytes per line).
            let lines = (bound * seconds_per_run / 38.0) as usize;
            let out = runtime.block_on(run(mode, baud, lines));
            let bytes_per_second = out.stats.bytes_sent as f64 / out.seconds;
            let ratio = bytes_per_second / bound;
            println!(
                "{:<28} {:>7} {:>7} {:>10.0} {:>9.0} {:>8.0} {:>6.3}{}",
                mode.name(),
                baud,
                lines,
                bytes_per_second,
                out.stats.job_lines_acked as f64 / out.seconds,
                bound,
                ratio,
                if mode.windowed() && ratio < 0.95 {
                    "  (below the 0.95 goal)"
                } else {
                    ""
                }
            );
        }
    }
}
