//! Live progress: one bar per machine on a terminal, plain lines otherwise (a log, a pipe,
//! CI), so the output stays readable wherever it goes.

use std::collections::BTreeMap;
use std::io::IsTerminal;

use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

/// What a machine is doing, as the demo shows it.
#[derive(Debug, Clone, PartialEq)]
pub struct MachineLine {
    /// The job's short name, if it has one.
    pub job: Option<String>,
    /// The machine's or job's state word.
    pub state: String,
    /// Job progress, 0–100.
    pub percent: f64,
}

/// The progress display.
#[derive(Debug)]
pub struct Display {
    bars: Option<(MultiProgress, BTreeMap<String, ProgressBar>)>,
    /// Plain mode: what was last printed per machine (job, state, quarter reached).
    last: BTreeMap<String, (Option<String>, String, u8)>,
}

impl Display {
    /// Bars for `machines` when stdout is a terminal, plain lines otherwise.
    pub fn new(machines: &[String]) -> Self {
        let bars = std::io::stdout().is_terminal().then(|| {
            let multi = MultiProgress::with_draw_target(ProgressDrawTarget::stdout_with_hz(8));
            let style =
                ProgressStyle::with_template("{prefix:>15} [{bar:30.cyan/blue}] {pos:>3}% {msg}")
                    .expect("a valid template")
                    .progress_chars("=> ");
            let width = machines.iter().map(|m| m.len()).max().unwrap_or(0);
            let bars = machines
                .iter()
                .map(|m| {
                    let bar = multi.add(ProgressBar::new(100));
                    bar.set_style(style.clone());
                    bar.set_prefix(format!("{m:>width$}"));
                    bar.set_message("waiting");
                    (m.clone(), bar)
                })
                .collect();
            (multi, bars)
        });
        Self {
            bars,
            last: BTreeMap::new(),
        }
    }

    /// Prints a line above the bars (or just a line).
    pub fn println(&self, line: &str) {
        match &self.bars {
            Some((multi, _)) => {
                let _ = multi.println(line);
            }
            None => println!("{line}"),
        }
    }

    /// Shows `machine`'s current line.
    pub fn update(&mut self, machine: &str, line: &MachineLine) {
        if let Some((_, bars)) = &self.bars {
            if let Some(bar) = bars.get(machine) {
                bar.set_position(line.percent.clamp(0.0, 100.0) as u64);
                bar.set_message(match &line.job {
                    Some(job) => format!("{} ({})", job, line.state),
                    None => line.state.clone(),
                });
            }
            return;
        }
        let quarter = (line.percent.clamp(0.0, 100.0) / 25.0) as u8;
        let now = (line.job.clone(), line.state.clone(), quarter);
        if self.last.get(machine) == Some(&now) {
            return;
        }
        self.last.insert(machine.to_string(), now);
        match &line.job {
            Some(job) => println!(
                "  {machine}: {job} {} {:.0}%",
                line.state,
                line.percent.clamp(0.0, 100.0)
            ),
            None => println!("  {machine}: {}", line.state),
        }
    }

    /// Leaves the bars at their end (before the summary).
    pub fn finish(&mut self) {
        if let Some((multi, bars)) = self.bars.take() {
            for bar in bars.values() {
                bar.finish_with_message("all jobs done");
            }
            drop(multi);
        }
    }
}
