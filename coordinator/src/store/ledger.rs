//! The production ledger's table: appending an entry when a job ends, listing, verifying.
//!
//! Sealing, hashing and verification are [`crate::ledger`]'s pure functions; this module
//! gathers a job's facts inside the transaction that ends it and stores the sealed entry.

use munifab_protocol::{AgentId, Capabilities, MachineId, Process};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row};
use time::OffsetDateTime;

use super::jobs::Job;
use super::{Store, StoreError, corrupt};
use crate::ledger::{
    self, ChainVerifier, DesignRef, Entry, EntryDraft, EntryHash, Filter, Outcome,
};
use crate::lifecycle::JobState;
use crate::scheduler::{CoopId, MachineKey, PoolId, SiteId};

/// Pool recorded for jobs placed outside any configured pool (no pools set up yet).
pub const DEFAULT_POOL: &str = "default";
/// Site recorded when the machine's agent has no site (or one that is not an id).
pub const UNKNOWN_SITE: &str = "unknown";

/// Average draw assumed for a machine that has no profile bound (`machines.watts`), by
/// process; the figures of the shipped generic profiles (`profiles/`), and 40 W for a
/// small diode laser.
pub fn default_watts(process: Process) -> u64 {
    match process {
        Process::Fdm => 120,
        Process::Cnc => 400,
        Process::Laser => 40,
    }
}

/// A page of ledger entries (in `seq` order) and how many match the filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct LedgerPage {
    /// Entries of this page.
    pub items: Vec<Entry>,
    /// All entries matching the filter.
    pub total: u64,
}

/// Result of walking the whole ledger.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerCheck {
    /// Every link holds.
    Ok {
        /// Number of entries.
        entries: u64,
        /// Hash of the last entry (genesis for an empty ledger): publish it.
        head: EntryHash,
    },
    /// The first entry that breaks the chain.
    Broken {
        /// Its `seq` as stored.
        seq: i64,
        /// Why, in words.
        why: String,
    },
}

const COLUMNS: &str = "seq, job, design, cooperative, maker, pool, site, agent, machine, \
    started_s, ended_s, machine_seconds, material, material_mg, energy_wh, outcome, \
    prev_hash, hash";

fn outcome_of(state: JobState) -> Option<Outcome> {
    match state {
        JobState::Completed => Some(Outcome::Completed),
        JobState::Failed => Some(Outcome::Failed),
        JobState::Cancelled => Some(Outcome::Cancelled),
        _ => None,
    }
}

fn outcome_parse(s: &str) -> Result<Outcome, StoreError> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|e| corrupt("ledger.outcome", e))
}

fn at_seconds(s: i64, column: &'static str) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp(s).map_err(|e| corrupt(column, e))
}

fn non_negative(v: i64, column: &'static str) -> Result<u64, StoreError> {
    u64::try_from(v).map_err(|_| corrupt(column, format!("{v} is negative")))
}

fn entry_from_row(row: &AnyRow) -> Result<Entry, StoreError> {
    let design: Option<String> = row.try_get("design")?;
    let job: String = row.try_get("job")?;
    let outcome: String = row.try_get("outcome")?;
    let prev: String = row.try_get("prev_hash")?;
    let hash: String = row.try_get("hash")?;
    let agent: String = row.try_get("agent")?;
    let machine: String = row.try_get("machine")?;
    Ok(Entry {
        seq: non_negative(row.try_get("seq")?, "ledger.seq")?,
        record: EntryDraft {
            job: job.parse().map_err(|e| corrupt("ledger.job", e))?,
            design: design
                .map(|d| serde_json::from_str(&d))
                .transpose()
                .map_err(|e| corrupt("ledger.design", e))?,
            cooperative: CoopId::new(row.try_get::<String, _>("cooperative")?)
                .map_err(|e| corrupt("ledger.cooperative", e))?,
            maker: row.try_get("maker")?,
            pool: PoolId::new(row.try_get::<String, _>("pool")?)
                .map_err(|e| corrupt("ledger.pool", e))?,
            site: SiteId::new(row.try_get::<String, _>("site")?)
                .map_err(|e| corrupt("ledger.site", e))?,
            machine: MachineKey {
                agent: AgentId::new(agent).map_err(|e| corrupt("ledger.agent", e))?,
                machine: MachineId::new(machine).map_err(|e| corrupt("ledger.machine", e))?,
            },
            started_at: at_seconds(row.try_get("started_s")?, "ledger.started_s")?,
            ended_at: at_seconds(row.try_get("ended_s")?, "ledger.ended_s")?,
            machine_seconds: non_negative(
                row.try_get("machine_seconds")?,
                "ledger.machine_seconds",
            )?,
            material: row.try_get("material")?,
            material_mg: non_negative(row.try_get("material_mg")?, "ledger.material_mg")?,
            energy_wh: non_negative(row.try_get("energy_wh")?, "ledger.energy_wh")?,
            outcome: outcome_parse(&outcome)?,
        },
        prev_hash: prev.parse().map_err(|e| corrupt("ledger.prev_hash", e))?,
        hash: hash.parse().map_err(|e| corrupt("ledger.hash", e))?,
    })
}

async fn last_entry(conn: &mut AnyConnection) -> Result<Option<Entry>, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM ledger ORDER BY seq DESC LIMIT 1"
    )))
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(entry_from_row).transpose()
}

async fn insert(conn: &mut AnyConnection, e: &Entry) -> Result<(), sqlx::Error> {
    let r = &e.record;
    sqlx::query(AssertSqlSafe(format!(
        "INSERT INTO ledger ({COLUMNS}) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, \
         $12, $13, $14, $15, $16, $17, $18)"
    )))
    .bind(e.seq as i64)
    .bind(r.job.to_string())
    .bind(
        r.design
            .as_ref()
            .map(|d| serde_json::to_string(d).expect("a design serializes")),
    )
    .bind(r.cooperative.to_string())
    .bind(r.maker.clone())
    .bind(r.pool.to_string())
    .bind(r.site.to_string())
    .bind(r.machine.agent.to_string())
    .bind(r.machine.machine.to_string())
    .bind(r.started_at.unix_timestamp())
    .bind(r.ended_at.unix_timestamp())
    .bind(r.machine_seconds as i64)
    .bind(r.material.clone())
    .bind(r.material_mg as i64)
    .bind(r.energy_wh as i64)
    .bind(r.outcome.as_str())
    .bind(e.prev_hash.to_string())
    .bind(e.hash.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn is_seq_collision(e: &sqlx::Error) -> bool {
    e.as_database_error()
        .is_some_and(|d| d.is_unique_violation())
}

/// How often an append retries after colliding with another coordinator's append.
const MAX_APPEND_ATTEMPTS: u32 = 16;

/// Builds and appends the entry for `job`, which has just ended (`job.state` terminal) on
/// its last machine, in the caller's transaction.
pub(super) async fn record_job_end(
    conn: &mut AnyConnection,
    job: &Job,
    now: i64,
) -> Result<Entry, StoreError> {
    let outcome = outcome_of(job.state).expect("called for ended jobs only");
    let (Some(agent), Some(machine)) = (job.agent.clone(), job.machine.clone()) else {
        return Err(corrupt("jobs.machine", "an ended run has no machine"));
    };
    let site: Option<String> = sqlx::query("SELECT site FROM agents WHERE id = $1")
        .bind(agent.to_string())
        .fetch_optional(&mut *conn)
        .await?
        .map(|r| r.try_get("site"))
        .transpose()?
        .flatten();
    let site = site
        .and_then(|s| SiteId::new(s).ok())
        .unwrap_or_else(|| SiteId::new(UNKNOWN_SITE).expect("a valid id"));
    let power =
        sqlx::query("SELECT watts, capabilities FROM machines WHERE agent = $1 AND machine = $2")
            .bind(agent.to_string())
            .bind(machine.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    let watts = match power {
        Some(row) => match row.try_get::<Option<i64>, _>("watts")? {
            Some(w) => w.max(0) as u64,
            None => {
                let caps: String = row.try_get("capabilities")?;
                let caps: Capabilities =
                    serde_json::from_str(&caps).map_err(|e| corrupt("machines.capabilities", e))?;
                default_watts(caps.process)
            }
        },
        None => default_watts(job.requirements.process),
    };
    // The run started when its machine first reported `running` in this epoch; a run
    // that never started (cancelled while transferring) used no machine time.
    let started_ms: Option<i64> = sqlx::query(
        "SELECT MIN(at_ms) AS t FROM job_events WHERE job = $1 AND epoch = $2 \
         AND to_state = 'running'",
    )
    .bind(job.id.to_string())
    .bind(job.epoch as i64)
    .fetch_one(&mut *conn)
    .await?
    .try_get("t")?;
    let ended_s = now.div_euclid(1000);
    let started_s = started_ms.map_or(ended_s, |t| t.div_euclid(1000).min(ended_s));
    let machine_seconds = (ended_s - started_s) as u64;
    let progress = job.progress.unwrap_or(0.0) / 100.0;
    let material_mg = ledger::prorated_material_mg(
        job.analysis.material_grams.unwrap_or(0.0),
        outcome,
        progress,
    );
    let draft = EntryDraft {
        job: job.id,
        design: job.design.as_ref().map(|d| DesignRef {
            source: d.source.clone(),
            id: d.id.clone(),
            commit: d.commit.clone(),
            licence: d.licence.clone(),
            authors: d.authors.clone(),
        }),
        cooperative: CoopId::new(job.coop.clone()).map_err(|e| corrupt("jobs.coop", e))?,
        maker: job.submitted_by.clone(),
        pool: PoolId::new(job.pool.clone().unwrap_or_else(|| DEFAULT_POOL.into()))
            .map_err(|e| corrupt("jobs.pool", e))?,
        site,
        machine: MachineKey { agent, machine },
        started_at: at_seconds(started_s, "job_events.at_ms")?,
        ended_at: at_seconds(ended_s, "now")?,
        machine_seconds,
        material: job.requirements.material.clone(),
        material_mg,
        energy_wh: ledger::energy_wh(watts as f64, machine_seconds),
        outcome,
    };
    // Another coordinator may append between our read of the head and our insert; the
    // `seq` primary key makes that a collision, and we retry on the new head. The
    // savepoint keeps the caller's transaction usable after the failed insert (PostgreSQL
    // aborts a transaction on any error otherwise).
    for _ in 0..MAX_APPEND_ATTEMPTS {
        sqlx::query("SAVEPOINT ledger_append")
            .execute(&mut *conn)
            .await?;
        let prev = last_entry(conn).await?;
        let entry = ledger::append(prev.as_ref(), draft.clone())?;
        match insert(conn, &entry).await {
            Ok(()) => {
                sqlx::query("RELEASE SAVEPOINT ledger_append")
                    .execute(&mut *conn)
                    .await?;
                return Ok(entry);
            }
            Err(e) if is_seq_collision(&e) => {
                sqlx::query("ROLLBACK TO SAVEPOINT ledger_append")
                    .execute(&mut *conn)
                    .await?;
                tracing::debug!(job = %job.id, "ledger append collided; retrying on the new head");
            }
            Err(e) => return Err(e.into()),
        }
    }
    Err(StoreError::LedgerContention(MAX_APPEND_ATTEMPTS))
}

/// SQL `WHERE` clause and its text arguments for a filter (times bound separately).
fn filter_sql(filter: &Filter) -> (String, Vec<FilterArg>) {
    let mut clauses = Vec::new();
    let mut args = Vec::new();
    let mut push = |clause: &str, arg: FilterArg| {
        args.push(arg);
        clauses.push(format!("{clause} ${}", args.len()));
    };
    if let Some(c) = &filter.cooperative {
        push("cooperative =", FilterArg::Text(c.to_string()));
    }
    if let Some(p) = &filter.pool {
        push("pool =", FilterArg::Text(p.to_string()));
    }
    if let Some(s) = &filter.site {
        push("site =", FilterArg::Text(s.to_string()));
    }
    // Entries keep whole seconds: an instant inside a second compares like the filter's
    // `ended_at >= from` / `ended_at < until` on the entries themselves.
    if let Some(t) = filter.from {
        let s = t.unix_timestamp() + i64::from(t.nanosecond() > 0);
        push("ended_s >=", FilterArg::Int(s));
    }
    if let Some(t) = filter.until {
        let s = t.unix_timestamp() + i64::from(t.nanosecond() > 0);
        push("ended_s <", FilterArg::Int(s));
    }
    let sql = if clauses.is_empty() {
        String::new()
    } else {
        format!("WHERE {}", clauses.join(" AND "))
    };
    (sql, args)
}

enum FilterArg {
    Text(String),
    Int(i64),
}

fn bind_all<'q>(
    mut q: sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments>,
    args: &[FilterArg],
) -> sqlx::query::Query<'q, sqlx::Any, sqlx::any::AnyArguments> {
    for a in args {
        q = match a {
            FilterArg::Text(s) => q.bind(s.clone()),
            FilterArg::Int(i) => q.bind(*i),
        };
    }
    q
}

/// Rows read per round trip when walking the whole ledger.
const WALK_PAGE: i64 = 1000;

impl Store {
    /// Entries matching `filter`, in `seq` order, a page at a time (`limit` capped at 1000).
    pub async fn ledger_entries(
        &self,
        filter: &Filter,
        limit: u32,
        offset: u64,
    ) -> Result<LedgerPage, StoreError> {
        let (sql, args) = filter_sql(filter);
        let count = bind_all(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT COUNT(*) AS n FROM ledger {sql}"
            ))),
            &args,
        );
        let total: i64 = count.fetch_one(self.pool()).await?.try_get("n")?;
        let limit = limit.clamp(1, 1000);
        let page = bind_all(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM ledger {sql} ORDER BY seq LIMIT {limit} OFFSET {offset}"
            ))),
            &args,
        );
        let rows = page.fetch_all(self.pool()).await?;
        Ok(LedgerPage {
            items: rows.iter().map(entry_from_row).collect::<Result<_, _>>()?,
            total: total as u64,
        })
    }

    /// Every entry matching `filter`, in `seq` order (for reports and exports).
    pub async fn ledger_all(&self, filter: &Filter) -> Result<Vec<Entry>, StoreError> {
        let (sql, args) = filter_sql(filter);
        let rows = bind_all(
            sqlx::query(AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM ledger {sql} ORDER BY seq"
            ))),
            &args,
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(entry_from_row).collect()
    }

    /// Machine-seconds per cooperative of the entries that ended at or after `since`
    /// (only `cooperative` when given), summed by the database: the scheduler asks on every
    /// pass, and decoding a week of entries each time would cost as much as the ledger is long.
    pub async fn ledger_usage(
        &self,
        cooperative: Option<&str>,
        since: time::OffsetDateTime,
    ) -> Result<Vec<(String, u64)>, StoreError> {
        let from = since.unix_timestamp() + i64::from(since.nanosecond() > 0);
        let (coop_sql, coop) = match cooperative {
            Some(c) => (" AND cooperative = $2", Some(c.to_string())),
            None => ("", None),
        };
        let mut q = sqlx::query(AssertSqlSafe(format!(
            "SELECT cooperative, CAST(SUM(machine_seconds) AS BIGINT) AS used FROM ledger \
             WHERE ended_s >= $1{coop_sql} GROUP BY cooperative"
        )))
        .bind(from);
        if let Some(c) = coop {
            q = q.bind(c);
        }
        q.fetch_all(self.pool())
            .await?
            .iter()
            .map(|r| {
                let used: i64 = r.try_get("used")?;
                Ok((r.try_get("cooperative")?, used.max(0) as u64))
            })
            .collect()
    }

    /// The entry recorded for a job, if it has one.
    pub async fn ledger_entry_of_job(
        &self,
        job: munifab_protocol::JobId,
    ) -> Result<Option<Entry>, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM ledger WHERE job = $1"
        )))
        .bind(job.to_string())
        .fetch_optional(self.pool())
        .await?;
        row.as_ref().map(entry_from_row).transpose()
    }

    /// Walks the whole ledger from its first entry, recomputing every hash from the stored
    /// columns: the first broken link, or the count and head.
    pub async fn verify_ledger(&self) -> Result<LedgerCheck, StoreError> {
        let mut verifier = ChainVerifier::new();
        let mut after = 0_i64;
        loop {
            let rows = sqlx::query(AssertSqlSafe(format!(
                "SELECT {COLUMNS} FROM ledger WHERE seq > $1 ORDER BY seq LIMIT {WALK_PAGE}"
            )))
            .bind(after)
            .fetch_all(self.pool())
            .await?;
            if rows.is_empty() {
                break;
            }
            for row in &rows {
                let seq: i64 = row.try_get("seq")?;
                after = seq;
                let entry = match entry_from_row(row) {
                    Ok(e) => e,
                    Err(e) => {
                        return Ok(LedgerCheck::Broken {
                            seq,
                            why: format!("cannot be read: {e}"),
                        });
                    }
                };
                if let Err(broken) = verifier.push(&entry) {
                    return Ok(LedgerCheck::Broken {
                        seq,
                        why: broken.why.to_string(),
                    });
                }
            }
        }
        Ok(LedgerCheck::Ok {
            entries: verifier.count() as u64,
            head: verifier.head(),
        })
    }

    /// Binds a machine to a profile: its name and average draw (W) are used for the
    /// ledger's energy estimate.
    pub async fn set_machine_profile(
        &self,
        agent: &AgentId,
        machine: &MachineId,
        profile: &str,
        watts: u64,
    ) -> Result<(), StoreError> {
        let done = sqlx::query(
            "UPDATE machines SET profile = $1, watts = $2 WHERE agent = $3 AND machine = $4",
        )
        .bind(profile.to_string())
        .bind(watts as i64)
        .bind(agent.to_string())
        .bind(machine.to_string())
        .execute(self.pool())
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "machine",
                id: format!("{agent}/{machine}"),
            });
        }
        self.bump_revision();
        Ok(())
    }
}
