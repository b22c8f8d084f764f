//! What `stream`, `probe` and `console` share: opening a port and starting a session on it.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context as _, bail};
use clap::{Args, ValueEnum};
use munifab_firmware_bridge::session::grbl::{GrblConfig, GrblFlow, GrblSession};
use munifab_firmware_bridge::session::marlin::{MarlinConfig, MarlinFlow, MarlinSession};
use munifab_firmware_bridge::session::{Event, FirmwareInfo};
use munifab_firmware_bridge::transport::{self, Bridge, BridgeEvent, DtrPolicy, PortSettings};
use tokio_serial::SerialStream;

/// Firmware family on the other end of the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum FirmwareKind {
    /// Marlin 2.x, Prusa firmware, RepRapFirmware in Marlin mode.
    Marlin,
    /// GRBL 1.1, grblHAL, FluidNC.
    Grbl,
}

/// How many lines may be unacknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Flow {
    /// Fill the firmware's buffers (Marlin window, GRBL character counting).
    Window,
    /// One line per acknowledgement (Marlin ping-pong, GRBL send-response).
    PingPong,
}

/// DTR after opening the port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Dtr {
    /// Leave DTR raised (Arduino-style boards reset on open either way).
    Raise,
    /// Lower DTR once the port is open.
    Lower,
}

/// Port options shared by the subcommands that talk to a machine.
#[derive(Debug, Clone, Args)]
pub struct LinkArgs {
    /// Serial port; prefer a stable /dev/serial/by-id/… name.
    #[arg(long)]
    pub port: PathBuf,
    /// Baud rate.
    #[arg(long, default_value_t = 115_200)]
    pub baud: u32,
    /// Firmware family.
    #[arg(long, value_enum)]
    pub firmware: FirmwareKind,
    /// Flow control of the stream.
    #[arg(long, value_enum, default_value_t = Flow::Window)]
    pub flow: Flow,
    /// DTR after opening.
    #[arg(long, value_enum, default_value_t = Dtr::Raise)]
    pub dtr: Dtr,
}

/// Open the port and start the session task.
pub fn open(args: &LinkArgs, report_lines: bool) -> anyhow::Result<Bridge> {
    let port = open_port(args)?;
    Ok(spawn_session(args, port, report_lines, None))
}

/// Open the port raw, naming the port and firmware in the error.
pub fn open_port(args: &LinkArgs) -> anyhow::Result<SerialStream> {
    if args.baud == 0 {
        bail!("--baud must be greater than 0");
    }
    let settings = PortSettings {
        path: args.port.clone(),
        baud: args.baud,
        dtr: match args.dtr {
            Dtr::Raise => DtrPolicy::Raise,
            Dtr::Lower => DtrPolicy::Lower,
        },
        rts: None,
    };
    transport::open_serial(&settings)
        .with_context(|| format!("opening the {:?} machine", args.firmware))
}

/// Start the session task of `args.firmware` on an open port. `wait_for_start` overrides
/// how long a Marlin session waits for `start` (zero when the board is known to be up).
pub fn spawn_session(
    args: &LinkArgs,
    port: SerialStream,
    report_lines: bool,
    wait_for_start: Option<Duration>,
) -> Bridge {
    let now = tokio::time::Instant::now().into_std();
    match args.firmware {
        FirmwareKind::Marlin => {
            let defaults = MarlinConfig::default();
            transport::spawn(
                MarlinSession::new(
                    MarlinConfig {
                        flow: match args.flow {
                            Flow::Window => MarlinFlow::Windowed,
                            Flow::PingPong => MarlinFlow::PingPong,
                        },
                        report_lines,
                        wait_for_start: wait_for_start.unwrap_or(defaults.wait_for_start),
                        ..defaults
                    },
                    now,
                ),
                port,
            )
        }
        FirmwareKind::Grbl => transport::spawn(
            GrblSession::new(
                GrblConfig {
                    flow: match args.flow {
                        Flow::Window => GrblFlow::CharacterCounting,
                        Flow::PingPong => GrblFlow::SendResponse,
                    },
                    report_lines,
                    ..GrblConfig::default()
                },
                now,
            ),
            port,
        ),
    }
}

/// Wait for the handshake; anything else that fails the link is an error naming the port.
pub async fn connected(bridge: &mut Bridge, args: &LinkArgs) -> anyhow::Result<FirmwareInfo> {
    let port = args.port.display();
    let wait = tokio::time::timeout(Duration::from_secs(30), async {
        while let Some(event) = bridge.events.recv().await {
            match event {
                BridgeEvent::Session(Event::Connected(info)) => return Ok(info),
                BridgeEvent::Session(Event::Failed(e)) => {
                    bail!("{port}: {e}");
                }
                BridgeEvent::Disconnected { reason, .. } => bail!("{port}: {reason}"),
                other => tracing::debug!(?other, "before the handshake"),
            }
        }
        bail!("{port}: the link closed during the handshake")
    });
    wait.await
        .with_context(|| format!("{port}: no handshake within 30 s"))?
}
