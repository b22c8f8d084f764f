//! `munifab-bridge stream`: send a G-code file to a machine, with progress and a summary.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};
use clap::Args;
use indicatif::{ProgressBar, ProgressStyle};
use munifab_firmware_bridge::session::{Command, Event, HostAction, JobOptions, JobOutcome, Stats};
use munifab_firmware_bridge::transport::BridgeEvent;
use tokio::io::{AsyncBufReadExt, BufReader};

use crate::link::{self, LinkArgs};

#[derive(Debug, Args)]
pub struct StreamArgs {
    #[command(flatten)]
    link: LinkArgs,
    /// Print one JSON object with the summary on stdout instead of text.
    #[arg(long)]
    json: bool,
    /// GRBL only: run the file in check mode ($C), parsing without moving.
    #[arg(long)]
    dry_run: bool,
    /// The G-code file.
    file: PathBuf,
}

/// How the stream ended, for the summary.
struct Summary {
    outcome: Result<(), String>,
    stats: Stats,
    seconds: f64,
    last_acked_line: Option<u64>,
}

impl Summary {
    fn print(&self, json: bool) {
        let s = &self.stats;
        let bytes_per_second = s.bytes_sent as f64 / self.seconds.max(1e-9);
        let lines_per_second = s.job_lines_acked as f64 / self.seconds.max(1e-9);
        if json {
            let value = serde_json::json!({
                "ok": self.outcome.is_ok(),
                "error": self.outcome.as_ref().err(),
                "lines_sent": s.job_lines_sent,
                "lines_acked": s.job_lines_acked,
                "last_acked_line": self.last_acked_line,
                "bytes_sent": s.bytes_sent,
                "resends": s.resends,
                "retransmitted_lines": s.retransmitted_lines,
                "errors": s.errors,
                "probes": s.probes,
                "seconds": self.seconds,
                "bytes_per_second": bytes_per_second,
                "lines_per_second": lines_per_second,
            });
            println!("{value}");
        } else {
            eprintln!(
                "{}: {} lines, {} bytes, {} resends, {} errors in {:.2} s ({:.0} bytes/s, {:.0} lines/s)",
                if self.outcome.is_ok() {
                    "done"
                } else {
                    "FAILED"
                },
                s.job_lines_acked,
                s.bytes_sent,
                s.resends,
                s.errors,
                self.seconds,
                bytes_per_second,
                lines_per_second,
            );
        }
    }
}

/// Lines in the file, counted without keeping it in memory (for the progress bar).
async fn count_lines(path: &PathBuf) -> anyhow::Result<u64> {
    let file = tokio::fs::File::open(path)
        .await
        .with_context(|| format!("opening {}", path.display()))?;
    let mut lines = BufReader::new(file).lines();
    let mut n = 0;
    while lines
        .next_line()
        .await
        .with_context(|| format!("reading {}", path.display()))?
        .is_some()
    {
        n += 1;
    }
    Ok(n)
}

pub async fn run(args: StreamArgs) -> anyhow::Result<()> {
    let total = count_lines(&args.file).await?;
    let file = tokio::fs::File::open(&args.file)
        .await
        .with_context(|| format!("opening {}", args.file.display()))?;
    let mut bridge = link::open(&args.link, false)?;
    let info = link::connected(&mut bridge, &args.link).await?;
    tracing::info!(firmware = %info.name, port = %args.link.port.display(), "connected");

    let bar = if !args.json && std::io::IsTerminal::is_terminal(&std::io::stderr()) {
        let bar = ProgressBar::new(total);
        bar.set_style(
            ProgressStyle::with_template("{bar:40} {pos}/{len} lines  {per_sec}  eta {eta}  {msg}")
                .expect("a valid template"),
        );
        bar
    } else {
        ProgressBar::hidden()
    };

    let started = Instant::now();
    bridge
        .handle
        .start_job(
            JobOptions {
                dry_run: args.dry_run,
            },
            Box::new(BufReader::new(file)),
        )
        .await
        .with_context(|| format!("starting the job on {}", args.link.port.display()))?;

    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let mut interrupts = 0;
    let mut last_acked_line = None;
    let outcome: Result<(), String> = loop {
        tokio::select! {
            event = bridge.events.recv() => {
                let Some(event) = event else { break Err("the link task stopped".into()) };
                match event {
                    BridgeEvent::Session(Event::JobFinished(outcome)) => break match outcome {
                        JobOutcome::Completed => Ok(()),
                        other => Err(format!("{other:?}")),
                    },
                    BridgeEvent::Session(Event::Failed(e)) => break Err(e.to_string()),
                    BridgeEvent::Disconnected { last_acked_line: line, reason } => {
                        last_acked_line = line;
                        break Err(format!("{} disconnected ({reason}); last acknowledged line {line:?}", args.link.port.display()));
                    }
                    BridgeEvent::JobSourceFailed(e) => bar.println(format!("job file: {e}")),
                    BridgeEvent::Session(Event::HostAction(action)) => {
                        let command = match action {
                            HostAction::Pause => Some(Command::Pause),
                            HostAction::Resume => Some(Command::Resume),
                            HostAction::Cancel => Some(Command::Cancel),
                            _ => None,
                        };
                        if let Some(command) = command {
                            bar.println(format!("firmware asks: {command:?}"));
                            let _ = bridge.handle.command(command).await;
                        }
                    }
                    BridgeEvent::Session(Event::LineRejected { source_line, code, meaning }) => {
                        bar.println(format!("line {source_line}: error:{code} ({meaning})"));
                    }
                    BridgeEvent::Session(Event::Alarm { code, meaning }) => {
                        bar.println(format!("ALARM:{code} ({meaning})"));
                    }
                    BridgeEvent::Session(Event::Message(m)) => bar.println(m),
                    BridgeEvent::Session(other) => tracing::debug!(?other),
                }
            }
            _ = tick.tick() => {
                if let Ok(stats) = bridge.handle.stats().await {
                    bar.set_position(stats.job_lines_acked);
                    bar.set_message(format!("{} resends", stats.resends));
                }
            }
            _ = tokio::signal::ctrl_c() => {
                interrupts += 1;
                let command = if interrupts == 1 { Command::Cancel } else { Command::EmergencyStop };
                bar.println(format!("interrupted: {command:?} (press again for an emergency stop)"));
                let _ = bridge.handle.command(command).await;
            }
        }
    };
    let seconds = started.elapsed().as_secs_f64();
    bar.finish_and_clear();
    bridge.handle.shutdown().await;
    let stats = bridge.task.await.context("the link task panicked")?;
    let summary = Summary {
        outcome,
        stats,
        seconds,
        last_acked_line,
    };
    summary.print(args.json);
    if let Err(e) = summary.outcome {
        bail!(
            "streaming {} to {} failed: {e}",
            args.file.display(),
            args.link.port.display()
        );
    }
    Ok(())
}
