//! The end-of-run summary, rendered from plain data: one row per job (from its ledger
//! entry), totals per cooperative, and the ledger verification.

use std::collections::BTreeMap;
use std::fmt::Write as _;

/// One finished job, as its ledger entry records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JobRow {
    /// The design (`source/id`), or the uploaded file's name.
    pub design: String,
    /// The requesting cooperative.
    pub cooperative: String,
    /// The site that made it.
    pub site: String,
    /// The machine (`agent/machine`).
    pub machine: String,
    /// `completed`, `failed` or `cancelled`.
    pub outcome: String,
    /// Machine time charged, seconds.
    pub machine_seconds: u64,
    /// Material, upper case, if known.
    pub material: Option<String>,
    /// Material consumed, milligrams.
    pub material_mg: u64,
}

/// What a cooperative used.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CoopTotal {
    /// The cooperative.
    pub cooperative: String,
    /// Jobs recorded.
    pub jobs: u64,
    /// Machine time, seconds.
    pub machine_seconds: u64,
    /// Material, milligrams.
    pub material_mg: u64,
}

/// The ledger check's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verification {
    /// Every entry's hash and link recomputed and matched.
    Ok {
        /// Entries checked.
        entries: u64,
        /// The head hash.
        head: String,
    },
    /// The first entry that does not verify.
    Broken {
        /// Its sequence number.
        seq: i64,
        /// Why.
        why: String,
    },
}

/// Totals per cooperative, by cooperative id.
pub fn coop_totals(rows: &[JobRow]) -> Vec<CoopTotal> {
    let mut by: BTreeMap<&str, CoopTotal> = BTreeMap::new();
    for r in rows {
        let t = by.entry(&r.cooperative).or_insert_with(|| CoopTotal {
            cooperative: r.cooperative.clone(),
            jobs: 0,
            machine_seconds: 0,
            material_mg: 0,
        });
        t.jobs += 1;
        t.machine_seconds += r.machine_seconds;
        t.material_mg += r.material_mg;
    }
    by.into_values().collect()
}

fn duration(seconds: u64) -> String {
    format!("{}:{:02}", seconds / 60, seconds % 60)
}

fn grams(mg: u64) -> String {
    format!("{:.1} g", mg as f64 / 1000.0)
}

fn material(r: &JobRow) -> String {
    match (&r.material, r.material_mg) {
        // Stock is cut, not consumed by weight: name it.
        (Some(m), 0) => m.clone(),
        (Some(m), mg) => format!("{} {m}", grams(mg)),
        (None, 0) => "-".into(),
        (None, mg) => grams(mg),
    }
}

/// A text table; columns listed in `right` are right-aligned.
fn table(out: &mut String, head: &[&str], rows: &[Vec<String>], right: &[usize]) {
    let mut widths: Vec<usize> = head.iter().map(|h| h.chars().count()).collect();
    for row in rows {
        for (i, cell) in row.iter().enumerate() {
            widths[i] = widths[i].max(cell.chars().count());
        }
    }
    let line = |out: &mut String, cells: &[String]| {
        let mut text = String::new();
        for (i, cell) in cells.iter().enumerate() {
            let pad = widths[i] - cell.chars().count();
            if i > 0 {
                text.push_str("  ");
            }
            if right.contains(&i) {
                text.push_str(&" ".repeat(pad));
                text.push_str(cell);
            } else {
                text.push_str(cell);
                text.push_str(&" ".repeat(pad));
            }
        }
        let _ = writeln!(out, "  {}", text.trim_end());
    };
    line(out, &head.iter().map(|h| h.to_string()).collect::<Vec<_>>());
    line(
        out,
        &widths.iter().map(|w| "-".repeat(*w)).collect::<Vec<_>>(),
    );
    for row in rows {
        line(out, row);
    }
}

/// The whole summary as printed at the end of the demo.
pub fn render(rows: &[JobRow], verification: &Verification) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Jobs (from the production ledger)");
    let job_rows: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            vec![
                r.design.clone(),
                r.cooperative.clone(),
                r.site.clone(),
                r.machine.clone(),
                r.outcome.clone(),
                duration(r.machine_seconds),
                material(r),
            ]
        })
        .collect();
    table(
        &mut out,
        &[
            "design",
            "cooperative",
            "site",
            "machine",
            "outcome",
            "duration",
            "material",
        ],
        &job_rows,
        &[5],
    );
    let _ = writeln!(out, "\nCooperatives");
    let coop_rows: Vec<Vec<String>> = coop_totals(rows)
        .iter()
        .map(|t| {
            vec![
                t.cooperative.clone(),
                t.jobs.to_string(),
                format!("{:.4} h", t.machine_seconds as f64 / 3600.0),
                grams(t.material_mg),
            ]
        })
        .collect();
    table(
        &mut out,
        &["cooperative", "jobs", "machine-hours", "material"],
        &coop_rows,
        &[1, 2, 3],
    );
    let _ = writeln!(out);
    match verification {
        Verification::Ok { entries, head } => {
            let _ = writeln!(
                out,
                "Ledger verified: {entries} entries, every hash and link recomputed; head {head}"
            );
        }
        Verification::Broken { seq, why } => {
            let _ = writeln!(out, "Ledger BROKEN at entry {seq}: {why}");
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(design: &str, coop: &str, seconds: u64, mg: u64, material: &str) -> JobRow {
        JobRow {
            design: design.into(),
            cooperative: coop.into(),
            site: "lab-north".into(),
            machine: "north-pc/mk-1".into(),
            outcome: "completed".into(),
            machine_seconds: seconds,
            material: Some(material.into()),
            material_mg: mg,
        }
    }

    #[test]
    fn cooperative_totals_add_up_machine_time_and_material_per_cooperative() {
        let rows = [
            row("commons/a", "toy-library", 30, 1500, "PLA"),
            row("commons/b", "bike-kitchen", 100, 0, "PLYWOOD"),
            row("commons/c", "toy-library", 45, 2250, "PLA"),
        ];
        let totals = coop_totals(&rows);
        assert_eq!(
            totals,
            vec![
                CoopTotal {
                    cooperative: "bike-kitchen".into(),
                    jobs: 1,
                    machine_seconds: 100,
                    material_mg: 0
                },
                CoopTotal {
                    cooperative: "toy-library".into(),
                    jobs: 2,
                    machine_seconds: 75,
                    material_mg: 3750
                },
            ]
        );
    }

    #[test]
    fn the_summary_aligns_its_columns_and_states_the_ledger_result() {
        let rows = [
            row("commons/calibration-cube", "toy-library", 75, 2345, "PLA"),
            row("commons/pocket-tray", "bike-kitchen", 605, 0, "PLYWOOD"),
        ];
        let text = render(
            &rows,
            &Verification::Ok {
                entries: 2,
                head: "ab12".into(),
            },
        );
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines[0], "Jobs (from the production ledger)");
        assert_eq!(
            lines[1],
            "  design                    cooperative   site       machine        outcome    duration  material"
        );
        assert_eq!(
            lines[3],
            "  commons/calibration-cube  toy-library   lab-north  north-pc/mk-1  completed      1:15  2.3 g PLA"
        );
        assert_eq!(
            lines[4],
            "  commons/pocket-tray       bike-kitchen  lab-north  north-pc/mk-1  completed     10:05  PLYWOOD"
        );
        assert!(
            text.contains("  bike-kitchen     1       0.1681 h     0.0 g\n"),
            "{text}"
        );
        assert!(
            text.contains("  toy-library      1       0.0208 h     2.3 g\n"),
            "{text}"
        );
        assert!(
            text.ends_with(
                "Ledger verified: 2 entries, every hash and link recomputed; head ab12\n"
            )
        );

        let broken = render(
            &rows,
            &Verification::Broken {
                seq: 2,
                why: "hash mismatch".into(),
            },
        );
        assert!(broken.ends_with("Ledger BROKEN at entry 2: hash mismatch\n"));
    }
}
