//! `munifab-agent`: run the workshop daemon, probe serial ports, check a configuration.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use munifab_agent::config::{PortSpec, Settings};
use munifab_agent::probe;

#[derive(Parser)]
#[command(
    version,
    about = "MuniFab agent: runs cooperative fabrication jobs on local machines"
)]
struct Cli {
    /// Log as JSON lines (for journald/Loki) instead of human-readable text.
    #[arg(long, global = true)]
    log_json: bool,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the agent until SIGINT/SIGTERM.
    Run {
        /// The agent.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// List serial ports and the firmware answering on each.
    Probe {
        /// Baud rate to try.
        #[arg(long, default_value_t = 115200)]
        baud: u32,
    },
    /// Validate a configuration and open each machine's port.
    Check {
        /// The agent.toml.
        #[arg(long, short)]
        config: PathBuf,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_env("MUNIFAB_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info"));
    let logs = tracing_subscriber::fmt().with_env_filter(filter);
    if cli.log_json {
        logs.json().init();
    } else {
        logs.init();
    }
    // One thread is plenty for a few serial links and one broker connection, and keeps the
    // daemon small on a Raspberry Pi; blocking work (hashing, preflight, serial reads)
    // runs on its own threads.
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    match cli.command {
        Cmd::Run { config } => {
            let settings = Settings::load(&config)?;
            tracing::info!(config = %config.display(), settings = ?settings, "effective configuration");
            runtime.block_on(munifab_agent::run(settings, shutdown_signal()))?;
        }
        Cmd::Probe { baud } => {
            let ports = probe::candidate_ports();
            if ports.is_empty() {
                println!("no serial ports found");
            }
            for port in ports {
                match probe::identify(&port, baud, Duration::from_secs(3)) {
                    Ok(a) => println!("{}\t{a:?}", port.display()),
                    Err(e) => println!("{}\tcannot open: {e}", port.display()),
                }
            }
        }
        Cmd::Check { config } => {
            let settings = Settings::load(&config)?;
            println!(
                "{}: valid; agent {} at {}:{}, {} machine(s)",
                config.display(),
                settings.agent,
                settings.broker.host,
                settings.broker.port,
                settings.machines.len()
            );
            let mut failed = 0;
            for m in &settings.machines {
                match &m.port {
                    PortSpec::Virtual(kind) => {
                        println!("  {}: virtual {kind:?} machine (built in)", m.id)
                    }
                    PortSpec::Serial(path) => {
                        match probe::identify(path, m.baud, Duration::from_secs(3)) {
                            Ok(a) => println!("  {}: {} answers {a:?}", m.id, path.display()),
                            Err(e) => {
                                failed += 1;
                                println!("  {}: cannot open {}: {e}", m.id, path.display());
                            }
                        }
                    }
                }
            }
            anyhow::ensure!(failed == 0, "{failed} machine port(s) could not be opened");
        }
    }
    Ok(())
}

async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).expect("SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => tracing::info!("SIGINT received"),
        _ = term.recv() => tracing::info!("SIGTERM received"),
    }
}
