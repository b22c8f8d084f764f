//! `munifab-bridge`: talk G-code to machines, analyse files, or stand in for a machine.

use std::process::ExitCode;

mod analyze;
mod console;
mod link;
mod probe;
mod simulate;
mod stream;

use clap::{Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "munifab-bridge",
    version,
    about = "G-code to Marlin and GRBL machines over serial"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Analyse a G-code file, optionally validating it against a machine profile.
    Analyze(analyze::AnalyzeArgs),
    /// Stream a G-code file to a machine, with a progress bar and a final summary.
    Stream(stream::StreamArgs),
    /// List serial ports by stable name, or identify the firmware on one.
    Probe(probe::ProbeArgs),
    /// Send lines to a machine interactively.
    Console(console::ConsoleArgs),
    /// Run a virtual Marlin or GRBL machine on a pseudo-terminal until interrupted.
    Simulate(simulate::SimulateArgs),
}

#[tokio::main]
async fn main() -> ExitCode {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("MUNIFAB_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    let result = match Cli::parse().command {
        Command::Analyze(args) => return analyze::run(&args),
        Command::Stream(args) => stream::run(args).await,
        Command::Probe(args) => probe::run(args).await,
        Command::Console(args) => console::run(args).await,
        Command::Simulate(args) => simulate::run(args).await,
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("Error: {e:?}");
            ExitCode::FAILURE
        }
    }
}
