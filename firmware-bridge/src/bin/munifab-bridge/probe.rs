//! `munifab-bridge probe`: list serial ports by their stable names, or identify a firmware.

use std::path::Path;

use clap::Args;
use munifab_firmware_bridge::transport::list_by_id;

use crate::link::{self, LinkArgs};

#[derive(Debug, Args)]
pub struct ProbeArgs {
    /// Identify the firmware on this port (opening it resets Arduino-style boards).
    #[arg(long)]
    port: Option<std::path::PathBuf>,
    /// Firmware family to try on --port.
    #[arg(long, value_enum, default_value_t = link::FirmwareKind::Marlin)]
    firmware: link::FirmwareKind,
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
    let link = LinkArgs {
        port,
        baud: args.baud,
        firmware: args.firmware,
        flow: link::Flow::Window,
        dtr: link::Dtr::Raise,
    };
    let mut bridge = link::open(&link, false)?;
    let info = link::connected(&mut bridge, &link).await?;
    println!("port:       {}", link.port.display());
    println!("firmware:   {}", info.name);
    println!("advanced ok: {}", info.advanced_ok);
    println!("rx buffer:  {} bytes", info.rx_buffer);
    for (name, on) in &info.capabilities {
        println!("capability: {name} = {}", if *on { "on" } else { "off" });
    }
    bridge.handle.shutdown().await;
    Ok(())
}
