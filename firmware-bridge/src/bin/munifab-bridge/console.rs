//! `munifab-bridge console`: type lines to a machine and read its answers.

use anyhow::Context as _;
use clap::Args;
use munifab_firmware_bridge::session::{Command, Event};
use munifab_firmware_bridge::transport::BridgeEvent;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::link::{self, LinkArgs};

#[derive(Debug, Args)]
pub struct ConsoleArgs {
    #[command(flatten)]
    link: LinkArgs,
}

pub async fn run(args: ConsoleArgs) -> anyhow::Result<()> {
    let mut bridge = link::open(&args.link, true)?;
    let info = link::connected(&mut bridge, &args.link).await?;
    eprintln!(
        "connected to {} on {}; type G-code, `!estop` for an emergency stop, Ctrl-D to leave",
        info.name,
        args.link.port.display()
    );
    let mut stdin = BufReader::new(tokio::io::stdin()).lines();
    loop {
        tokio::select! {
            line = stdin.next_line() => {
                let Some(line) = line.context("reading the terminal")? else { break };
                let command = match line.trim() {
                    "" => continue,
                    "!estop" => Command::EmergencyStop,
                    text => Command::Send(text.to_owned()),
                };
                if let Err(e) = bridge.handle.command(command).await {
                    eprintln!("not sent: {e}");
                }
            }
            event = bridge.events.recv() => match event {
                Some(BridgeEvent::Session(Event::Line(line))) => println!("{line}"),
                Some(BridgeEvent::Session(Event::Failed(e))) => anyhow::bail!("{}: {e}", args.link.port.display()),
                Some(BridgeEvent::Disconnected { reason, .. }) => anyhow::bail!("{} disconnected: {reason}", args.link.port.display()),
                Some(other) => tracing::debug!(?other),
                None => break,
            },
        }
    }
    bridge.handle.shutdown().await;
    Ok(())
}
