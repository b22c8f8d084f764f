//! `munifab-bridge simulate`: a virtual machine on a pty, reachable at a stable path.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use clap::{Args, ValueEnum};
use munifab_firmware_bridge::virtual_machine::{
    Executed, FaultConfig, FirmwareConfig, GrblConfig, MarlinConfig, PtyOptions, VmConfig,
    spawn_on_pty_with,
};
use tokio::signal::unix::{SignalKind, signal};

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Firmware {
    /// Marlin 2.x (3D printers).
    Marlin,
    /// GRBL 1.1h (CNC routers, lasers).
    Grbl,
}

#[derive(Debug, Args)]
pub struct SimulateArgs {
    /// Which firmware the machine runs.
    #[arg(long, value_enum)]
    firmware: Firmware,
    /// Where to symlink the pty slave; hosts open this path as their serial port.
    #[arg(long)]
    link: PathBuf,
    /// Emulated baud rate: bytes move at baud/10 per second each way (0 = unpaced).
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
    /// Run moves, dwells and heating this many times faster than real (0 = no delay).
    #[arg(long, default_value_t = 1.0)]
    speed: f64,
    /// Probability that a byte is corrupted, in each direction.
    #[arg(long, default_value_t = 0.0)]
    corrupt: f64,
    /// Seed of the fault generator.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Marlin built with ADVANCED_OK (`ok N.. P.. B..`).
    #[arg(long)]
    advanced_ok: bool,
    /// Marlin built with EMERGENCY_PARSER (M112/M108/M410 act at once).
    #[arg(long)]
    emergency_parser: bool,
    /// Reboot whenever a host opens the port, like an Arduino-style board reset by DTR.
    #[arg(long)]
    reset_on_open: bool,
    /// Bootloader silence after a reset, in milliseconds.
    #[arg(long, default_value_t = 0)]
    boot_ms: u64,
    /// When the machine stops, write every command it executed to this file, one per line
    /// in order (the text as the firmware saw it: no line number, checksum or comment), so
    /// another process can compare what ran with the file it sent.
    #[arg(long)]
    record: Option<PathBuf>,
}

impl SimulateArgs {
    fn config(&self) -> VmConfig {
        let firmware = match self.firmware {
            Firmware::Marlin => FirmwareConfig::Marlin(MarlinConfig {
                speed: self.speed,
                boot_delay: Duration::from_millis(self.boot_ms),
                advanced_ok: self.advanced_ok,
                emergency_parser: self.emergency_parser,
                ..MarlinConfig::default()
            }),
            Firmware::Grbl => FirmwareConfig::Grbl(GrblConfig {
                speed: self.speed,
                boot_delay: Duration::from_millis(self.boot_ms),
                ..GrblConfig::default()
            }),
        };
        let faults = FaultConfig {
            seed: self.seed,
            corrupt_to_machine: self.corrupt,
            corrupt_to_host: self.corrupt,
            ..FaultConfig::default()
        };
        VmConfig {
            firmware,
            baud: self.baud,
            faults,
        }
    }
}

pub async fn run(args: SimulateArgs) -> anyhow::Result<()> {
    let options = PtyOptions {
        link: Some(args.link.clone()),
        reset_on_open: args.reset_on_open,
    };
    // Listen before announcing the port, so a Ctrl-C right after the announcement still
    // unplugs cleanly; SIGTERM (a service manager stopping us) does the same.
    let mut interrupt = signal(SignalKind::interrupt()).context("listening for Ctrl-C")?;
    let mut terminate = signal(SignalKind::terminate()).context("listening for SIGTERM")?;
    let handle = spawn_on_pty_with(args.config(), &options).with_context(|| {
        format!(
            "starting a virtual {:?} machine at {}",
            args.firmware,
            args.link.display()
        )
    })?;
    let slave = handle
        .slave_path()
        .map(|p| p.display().to_string())
        .unwrap_or_default();
    eprintln!(
        "virtual {:?} on {slave}, linked at {}; {} baud, speed x{}, corruption {}; Ctrl-C unplugs it",
        args.firmware,
        args.link.display(),
        args.baud,
        args.speed,
        args.corrupt
    );
    tokio::select! {
        _ = interrupt.recv() => {}
        _ = terminate.recv() => {}
    }
    let record = handle
        .unplug()
        .await
        .context("stopping the virtual machine")?;
    if let Some(path) = &args.record {
        write_record(path, &record)
            .with_context(|| format!("writing the record to {}", path.display()))?;
    }
    eprintln!(
        "stopped after executing {} commands; {} removed",
        record.len(),
        args.link.display()
    );
    Ok(())
}

/// One executed command per line; written to a temporary name and renamed, so a reader
/// never sees half a record.
fn write_record(path: &std::path::Path, record: &[Executed]) -> std::io::Result<()> {
    use std::io::Write as _;
    let partial = path.with_extension("partial");
    let mut out = std::io::BufWriter::new(std::fs::File::create(&partial)?);
    for executed in record {
        writeln!(out, "{}", executed.command)?;
    }
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(&partial, path)
}
