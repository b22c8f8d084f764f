//! `munifab-bridge probe`: list serial ports by their stable names, or identify a firmware.

use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use clap::Args;
use munifab_firmware_bridge::session::detect::{DetectConfig, Family};
use munifab_firmware_bridge::transport::{identify_family, list_by_id};

use crate::link::{self, LinkArgs};

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Identify the firmware on this port (opening it resets Arduino-style boards).
    #[arg(long)]
    port: Option<std::path::PathBuf>,
    /// Firmware family on --port; without it the family is found out (a greeting, or an
    /// `M115` and `$I` probe that both families answer harmlessly).
    #[arg(long, value_enum)]
    firmware: Option<link::FirmwareKind>,
    /// Baud rate for --port.
    #[arg(long, default_value_t = 115_200)]
    baud: u32,
}

pub async fn run(args: ProbeArgs) -> anyhow::Result<()> {
    let Some(port) = args.port else {
        let dir = Path::new("/dev/serial/by-id");
        let ports =
            list_by_id(dir).map_err(|e| anyhow::anyhow!("listing {}: {e}", dir.display()))?;
        if ports.is_empty() {
            println!("no USB serial devices under {}", dir.display());
        }
        for p in ports {
            println!("{}\t{}", p.by_id.display(), p.device.display());
        }
        return Ok(());
    };
    let mut link = LinkArgs {
        port,
        baud: args.baud,
        firmware: args.firmware.unwrap_or(link::FirmwareKind::Marlin),
        flow: link::Flow::Window,
        dtr: link::Dtr::Raise,
    };
    let mut bridge = match args.firmware {
        Some(_) => link::open(&link, false)?,
        None => {
            let mut port = link::open_port(&link)?;
            let family = identify_family(&mut port, DetectConfig::default())
                .await
                .with_context(|| format!("{}: identifying the firmware", link.port.display()))?;
            link.firmware = match family {
                Family::Marlin => link::FirmwareKind::Marlin,
                Family::Grbl => link::FirmwareKind::Grbl,
            };
            // The board has spoken already: no need to wait for a `start`.
            link::spawn_session(&link, port, false, Some(Duration::ZERO))
        }
    };
    let info = link::connected(&mut bridge, &link).await?;
    println!("port:       {}", link.port.display());
    println!(
        "family:     {}",
        match link.firmware {
            link::FirmwareKind::Marlin => "marlin",
            link::FirmwareKind::Grbl => "grbl",
        }
    );
    println!("firmware:   {}", info.name);
    println!("advanced ok: {}", info.advanced_ok);
    println!("rx buffer:  {} bytes", info.rx_buffer);
    for (name, on) in &info.capabilities {
        println!("capability: {name} = {}", if *on { "on" } else { "off" });
    }
    bridge.handle.shutdown().await;
    Ok(())
}
