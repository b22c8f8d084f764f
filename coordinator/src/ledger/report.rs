//! Filters, totals and CSV over ledger entries.

use std::collections::BTreeMap;
use std::fmt::Write as _;

use serde::{Deserialize, Serialize};
use time::{OffsetDateTime, UtcOffset};

use super::entry::{Entry, Outcome};
use crate::scheduler::{CoopId, PoolId, SiteId, Usage};

/// Which entries a listing or report covers; `None` fields match everything.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Filter {
    /// Only this cooperative's jobs.
    pub cooperative: Option<CoopId>,
    /// Only jobs run through this pool.
    pub pool: Option<PoolId>,
    /// Only jobs run at this site.
    pub site: Option<SiteId>,
    /// Only jobs that ended at or after this instant.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub from: Option<OffsetDateTime>,
    /// Only jobs that ended before this instant.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub until: Option<OffsetDateTime>,
}

impl Filter {
    /// Whether `entry` is covered.
    pub fn matches(&self, entry: &Entry) -> bool {
        let r = &entry.record;
        self.cooperative
            .as_ref()
            .is_none_or(|c| *c == r.cooperative)
            && self.pool.as_ref().is_none_or(|p| *p == r.pool)
            && self.site.as_ref().is_none_or(|s| *s == r.site)
            && self.from.is_none_or(|t| r.ended_at >= t)
            && self.until.is_none_or(|t| r.ended_at < t)
    }
}

/// Sums over a set of entries, in the ledger's exact integer units.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Totals {
    /// Number of entries.
    pub entries: u64,
    /// Of which completed.
    pub completed: u64,
    /// Of which failed.
    pub failed: u64,
    /// Of which cancelled.
    pub cancelled: u64,
    /// Machine time.
    pub machine_seconds: u64,
    /// Material, milligrams.
    pub material_mg: u64,
    /// Energy estimate, watt-hours.
    pub energy_wh: u64,
}

impl Totals {
    /// Adds one entry.
    pub fn add(&mut self, entry: &Entry) {
        let r = &entry.record;
        self.entries += 1;
        match r.outcome {
            Outcome::Completed => self.completed += 1,
            Outcome::Failed => self.failed += 1,
            Outcome::Cancelled => self.cancelled += 1,
        }
        self.machine_seconds = self.machine_seconds.saturating_add(r.machine_seconds);
        self.material_mg = self.material_mg.saturating_add(r.material_mg);
        self.energy_wh = self.energy_wh.saturating_add(r.energy_wh);
    }

    /// Machine-hours.
    pub fn machine_hours(&self) -> f64 {
        self.machine_seconds as f64 / 3600.0
    }

    /// Grams of material.
    pub fn grams(&self) -> f64 {
        self.material_mg as f64 / 1000.0
    }

    /// Kilowatt-hours.
    pub fn kwh(&self) -> f64 {
        self.energy_wh as f64 / 1000.0
    }
}

/// The dimension a report row is grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GroupBy {
    /// Requesting cooperative.
    Cooperative,
    /// Pool the machine was used through.
    Pool,
    /// Site of the machine.
    Site,
    /// Calendar month (UTC) of the job's end, `YYYY-MM`.
    Month,
}

impl GroupBy {
    /// Every dimension, in report order.
    pub const ALL: [GroupBy; 4] = [
        GroupBy::Cooperative,
        GroupBy::Pool,
        GroupBy::Site,
        GroupBy::Month,
    ];

    /// The name used in JSON and CSV.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupBy::Cooperative => "cooperative",
            GroupBy::Pool => "pool",
            GroupBy::Site => "site",
            GroupBy::Month => "month",
        }
    }

    /// The group `entry` falls into.
    pub fn key_of(self, entry: &Entry) -> String {
        let r = &entry.record;
        match self {
            GroupBy::Cooperative => r.cooperative.to_string(),
            GroupBy::Pool => r.pool.to_string(),
            GroupBy::Site => r.site.to_string(),
            GroupBy::Month => {
                let t = r.ended_at.to_offset(UtcOffset::UTC);
                format!("{:04}-{:02}", t.year(), u8::from(t.month()))
            }
        }
    }
}

/// Totals for one group.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReportRow {
    /// The dimension.
    pub group: GroupBy,
    /// The group's key (cooperative id, pool id, site id or `YYYY-MM`).
    pub key: String,
    /// Its totals.
    pub totals: Totals,
}

/// Totals of a set of entries, overall and grouped by cooperative, pool, site and month.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Everything covered.
    pub total: Totals,
    /// One row per group, ordered by dimension ([`GroupBy::ALL`]) then key.
    pub rows: Vec<ReportRow>,
}

impl Report {
    /// Totals of the entries `filter` covers.
    pub fn build<'a>(entries: impl IntoIterator<Item = &'a Entry>, filter: &Filter) -> Self {
        let mut total = Totals::default();
        let mut groups: BTreeMap<(GroupBy, String), Totals> = BTreeMap::new();
        for e in entries.into_iter().filter(|e| filter.matches(e)) {
            total.add(e);
            for g in GroupBy::ALL {
                groups.entry((g, g.key_of(e))).or_default().add(e);
            }
        }
        let rows = groups
            .into_iter()
            .map(|((group, key), totals)| ReportRow { group, key, totals })
            .collect();
        Self { total, rows }
    }

    /// The rows of one dimension.
    pub fn rows_by(&self, group: GroupBy) -> impl Iterator<Item = &ReportRow> {
        self.rows.iter().filter(move |r| r.group == group)
    }

    /// CSV (RFC 4180, `\r\n` line ends): a header, one line per row, and a final line with
    /// group `total` and an empty key. Quantities are in hours, grams and kWh with exactly
    /// three decimals, computed from the integer units without rounding drift.
    pub fn to_csv(&self) -> String {
        let mut out = String::from(
            "group,key,entries,completed,failed,cancelled,machine_hours,material_grams,energy_kwh\r\n",
        );
        let line = |out: &mut String, group: &str, key: &str, t: &Totals| {
            let _ = write!(
                out,
                "{},{},{},{},{},{},{},{},{}\r\n",
                group,
                csv_field(key),
                t.entries,
                t.completed,
                t.failed,
                t.cancelled,
                milli(t.machine_seconds, 3600),
                milli(t.material_mg, 1000),
                milli(t.energy_wh, 1000)
            );
        };
        for r in &self.rows {
            line(&mut out, r.group.as_str(), &r.key, &r.totals);
        }
        line(&mut out, "total", "", &self.total);
        out
    }
}

/// Machine-seconds per cooperative of the entries that ended at or after `since`, sorted by
/// cooperative: the ledger's part of the scheduler's fair-share [`Usage`] (the store adds
/// the estimates of jobs still running).
pub fn usage_since<'a>(
    entries: impl IntoIterator<Item = &'a Entry>,
    since: OffsetDateTime,
) -> Vec<Usage> {
    let mut sums: BTreeMap<&CoopId, u64> = BTreeMap::new();
    for e in entries.into_iter().filter(|e| e.record.ended_at >= since) {
        let sum = sums.entry(&e.record.cooperative).or_default();
        *sum = sum.saturating_add(e.record.machine_seconds);
    }
    sums.into_iter()
        .map(|(c, machine_seconds)| Usage {
            cooperative: c.clone(),
            machine_seconds,
        })
        .collect()
}

/// `value / unit` with exactly three decimals, rounded half up, by integer arithmetic.
fn milli(value: u64, unit: u64) -> String {
    let thousandths = (u128::from(value) * 1000 + u128::from(unit) / 2) / u128::from(unit);
    format!("{}.{:03}", thousandths / 1000, thousandths % 1000)
}

/// A CSV field, quoted when it holds a comma, quote or line break.
fn csv_field(s: &str) -> String {
    if s.contains([',', '"', '\r', '\n']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s.to_string()
    }
}

/// The entries as CSV (RFC 4180, `\r\n` line ends), one line each, for export.
/// Design authors are joined with `; `.
pub fn entries_to_csv<'a>(entries: impl IntoIterator<Item = &'a Entry>) -> String {
    let mut out = String::from(
        "seq,job,design,licence,authors,cooperative,maker,pool,site,agent,machine,started_at,ended_at,machine_seconds,material,material_grams,energy_kwh,outcome,prev_hash,hash\r\n",
    );
    let when = |t: OffsetDateTime| {
        t.to_offset(UtcOffset::UTC)
            .format(&time::format_description::well_known::Rfc3339)
            .unwrap_or_default()
    };
    for e in entries {
        let r = &e.record;
        let (design, licence, authors) = r.design.as_ref().map_or_else(
            || (String::new(), String::new(), String::new()),
            |d| (d.to_string(), d.licence.clone(), d.authors.join("; ")),
        );
        let fields = [
            e.seq.to_string(),
            r.job.to_string(),
            design,
            licence,
            authors,
            r.cooperative.to_string(),
            r.maker.clone(),
            r.pool.to_string(),
            r.site.to_string(),
            r.machine.agent.to_string(),
            r.machine.machine.to_string(),
            when(r.started_at),
            when(r.ended_at),
            r.machine_seconds.to_string(),
            r.material.clone().unwrap_or_default(),
            milli(r.material_mg, 1000),
            milli(r.energy_wh, 1000),
            r.outcome.as_str().to_string(),
            e.prev_hash.to_string(),
            e.hash.to_string(),
        ];
        let line: Vec<String> = fields.iter().map(|f| csv_field(f)).collect();
        out.push_str(&line.join(","));
        out.push_str("\r\n");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milli_rounds_half_up_exactly() {
        assert_eq!(milli(0, 3600), "0.000");
        assert_eq!(milli(5400, 3600), "1.500");
        assert_eq!(milli(1, 3600), "0.000");
        assert_eq!(milli(2, 3600), "0.001");
        assert_eq!(milli(12_345, 1000), "12.345");
        assert_eq!(milli(u64::MAX, 1), format!("{}.000", u64::MAX));
    }

    #[test]
    fn csv_fields_with_separators_are_quoted() {
        assert_eq!(csv_field("plain"), "plain");
        assert_eq!(csv_field("a,b"), "\"a,b\"");
        assert_eq!(csv_field("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_field("two\nlines"), "\"two\nlines\"");
    }
}
