//! Cooperatives, sites, pools, quotas — each change written with its audit row in one
//! transaction — and the scheduler's [`Snapshot`] built from them and the fleet.

use std::collections::{BTreeMap, BTreeSet};

use munifab_protocol::{AgentId, MachineId, MachineStatus};
use serde::{Deserialize, Serialize};
use sqlx::{AnyConnection, Row};
use time::OffsetDateTime;

use super::{Store, StoreError, corrupt};
use crate::scheduler::{
    CoopId, GeoPoint, MachineKey, MachineSnapshot, Policy, Pool, PoolId, PoolMember, QueuedJob,
    Quota, Readiness, RegionId, Site, SiteId, Snapshot,
};

/// A cooperative.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct CooperativeRecord {
    /// Id (slug).
    pub id: String,
    /// Display name.
    pub name: String,
}

/// A site (fablab).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct SiteRecord {
    /// Id (slug).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Region id (slug).
    pub region: String,
    /// Latitude, degrees.
    pub lat: f64,
    /// Longitude, degrees.
    pub lon: f64,
}

/// A pool: machines contributed and the cooperatives that may use them, with weights.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct PoolRecord {
    /// Id (slug).
    pub id: String,
    /// Display name.
    pub name: String,
    /// Machines, `agent/machine`.
    pub machines: Vec<String>,
    /// Member cooperatives and their weights.
    pub members: BTreeMap<String, u32>,
}

/// A cooperative's quota.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct QuotaRecord {
    /// The cooperative.
    pub cooperative: String,
    /// Machine-hours per period.
    pub machine_hours: u64,
    /// Period length in days.
    pub period_days: u32,
    /// Start of the first period (Unix ms); periods follow back to back.
    pub period_start_ms: i64,
}

/// One audited change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, utoipa::ToSchema)]
pub struct AuditRecord {
    /// Increasing id.
    pub id: i64,
    /// When (Unix ms).
    pub at_ms: i64,
    /// Who (token id and label, or `cli`).
    pub actor: String,
    /// What (`put_pool`, `confirm_ready`, …).
    pub action: String,
    /// The thing changed (`pool:valley`).
    pub subject: String,
    /// The new value, as JSON.
    pub detail: String,
}

async fn audit(
    conn: &mut AnyConnection,
    actor: &str,
    action: &str,
    subject: &str,
    detail: &impl Serialize,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO audit (at_ms, actor, action, subject, detail) VALUES ($1, $2, $3, $4, $5)",
    )
    .bind(now)
    .bind(actor.to_string())
    .bind(action.to_string())
    .bind(subject.to_string())
    .bind(serde_json::to_string(detail).expect("records serialize"))
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn e6(deg: f64) -> i64 {
    (deg * 1e6).round() as i64
}

/// Jobs read into one scheduling snapshot at most (oldest first within the queue order).
const SNAPSHOT_JOBS: u32 = 5000;

impl Store {
    /// Creates or renames a cooperative; audited.
    pub async fn put_cooperative(
        &self,
        rec: &CooperativeRecord,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO cooperatives (id, name, updated_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, updated_ms = excluded.updated_ms",
        )
        .bind(rec.id.clone())
        .bind(rec.name.clone())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            actor,
            "put_cooperative",
            &format!("cooperative:{}", rec.id),
            rec,
            now,
        )
        .await?;
        self.commit(tx).await?;
        self.note_with(|c| c.plan_inputs = true);
        Ok(())
    }

    /// All cooperatives.
    pub async fn list_cooperatives(&self) -> Result<Vec<CooperativeRecord>, StoreError> {
        let rows = sqlx::query("SELECT id, name FROM cooperatives ORDER BY id")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(CooperativeRecord {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                })
            })
            .collect()
    }

    /// Creates or updates a site; audited.
    pub async fn put_site(
        &self,
        rec: &SiteRecord,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO sites (id, name, region, lat_e6, lon_e6, updated_ms) \
             VALUES ($1, $2, $3, $4, $5, $6) ON CONFLICT (id) DO UPDATE SET name = excluded.name, \
             region = excluded.region, lat_e6 = excluded.lat_e6, lon_e6 = excluded.lon_e6, \
             updated_ms = excluded.updated_ms",
        )
        .bind(rec.id.clone())
        .bind(rec.name.clone())
        .bind(rec.region.clone())
        .bind(e6(rec.lat))
        .bind(e6(rec.lon))
        .bind(now)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            actor,
            "put_site",
            &format!("site:{}", rec.id),
            rec,
            now,
        )
        .await?;
        self.commit(tx).await?;
        self.note_with(|c| c.plan_inputs = true);
        Ok(())
    }

    /// All sites.
    pub async fn list_sites(&self) -> Result<Vec<SiteRecord>, StoreError> {
        let rows = sqlx::query("SELECT id, name, region, lat_e6, lon_e6 FROM sites ORDER BY id")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                Ok(SiteRecord {
                    id: r.try_get("id")?,
                    name: r.try_get("name")?,
                    region: r.try_get("region")?,
                    lat: r.try_get::<i64, _>("lat_e6")? as f64 / 1e6,
                    lon: r.try_get::<i64, _>("lon_e6")? as f64 / 1e6,
                })
            })
            .collect()
    }

    /// Creates or replaces a pool (its machines and members wholesale); audited.
    pub async fn put_pool(
        &self,
        rec: &PoolRecord,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO pools (id, name, updated_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO UPDATE SET name = excluded.name, updated_ms = excluded.updated_ms",
        )
        .bind(rec.id.clone())
        .bind(rec.name.clone())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        for table in ["pool_machines", "pool_members"] {
            sqlx::query(sqlx::AssertSqlSafe(format!(
                "DELETE FROM {table} WHERE pool = $1"
            )))
            .bind(rec.id.clone())
            .execute(&mut *tx)
            .await?;
        }
        let machines: BTreeSet<&String> = rec.machines.iter().collect();
        for m in machines {
            let (agent, machine) = m.split_once('/').unwrap_or((m, ""));
            sqlx::query("INSERT INTO pool_machines (pool, agent, machine) VALUES ($1, $2, $3)")
                .bind(rec.id.clone())
                .bind(agent.to_string())
                .bind(machine.to_string())
                .execute(&mut *tx)
                .await?;
        }
        for (coop, weight) in &rec.members {
            sqlx::query("INSERT INTO pool_members (pool, cooperative, weight) VALUES ($1, $2, $3)")
                .bind(rec.id.clone())
                .bind(coop.clone())
                .bind(i64::from(*weight))
                .execute(&mut *tx)
                .await?;
        }
        audit(
            &mut tx,
            actor,
            "put_pool",
            &format!("pool:{}", rec.id),
            rec,
            now,
        )
        .await?;
        self.commit(tx).await?;
        self.note_with(|c| c.plan_inputs = true);
        Ok(())
    }

    /// All pools with their machines and members.
    pub async fn list_pools(&self) -> Result<Vec<PoolRecord>, StoreError> {
        let mut pools: BTreeMap<String, PoolRecord> = BTreeMap::new();
        for r in sqlx::query("SELECT id, name FROM pools")
            .fetch_all(self.pool())
            .await?
        {
            let id: String = r.try_get("id")?;
            pools.insert(
                id.clone(),
                PoolRecord {
                    id,
                    name: r.try_get("name")?,
                    machines: Vec::new(),
                    members: BTreeMap::new(),
                },
            );
        }
        for r in
            sqlx::query("SELECT pool, agent, machine FROM pool_machines ORDER BY agent, machine")
                .fetch_all(self.pool())
                .await?
        {
            let pool: String = r.try_get("pool")?;
            let agent: String = r.try_get("agent")?;
            let machine: String = r.try_get("machine")?;
            if let Some(p) = pools.get_mut(&pool) {
                p.machines.push(format!("{agent}/{machine}"));
            }
        }
        for r in sqlx::query("SELECT pool, cooperative, weight FROM pool_members")
            .fetch_all(self.pool())
            .await?
        {
            let pool: String = r.try_get("pool")?;
            if let Some(p) = pools.get_mut(&pool) {
                p.members.insert(
                    r.try_get("cooperative")?,
                    r.try_get::<i64, _>("weight")?.max(0) as u32,
                );
            }
        }
        Ok(pools.into_values().collect())
    }

    /// Sets a cooperative's quota; audited.
    pub async fn put_quota(
        &self,
        rec: &QuotaRecord,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        sqlx::query(
            "INSERT INTO quotas (cooperative, machine_hours, period_days, period_start_ms, updated_ms) \
             VALUES ($1, $2, $3, $4, $5) ON CONFLICT (cooperative) DO UPDATE SET \
             machine_hours = excluded.machine_hours, period_days = excluded.period_days, \
             period_start_ms = excluded.period_start_ms, updated_ms = excluded.updated_ms",
        )
        .bind(rec.cooperative.clone())
        .bind(rec.machine_hours as i64)
        .bind(i64::from(rec.period_days))
        .bind(rec.period_start_ms)
        .bind(now)
        .execute(&mut *tx)
        .await?;
        audit(
            &mut tx,
            actor,
            "put_quota",
            &format!("quota:{}", rec.cooperative),
            rec,
            now,
        )
        .await?;
        self.commit(tx).await?;
        self.note_with(|c| c.plan_inputs = true);
        Ok(())
    }

    /// All quotas.
    pub async fn list_quotas(&self) -> Result<Vec<QuotaRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT cooperative, machine_hours, period_days, period_start_ms FROM quotas \
             ORDER BY cooperative",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(QuotaRecord {
                    cooperative: r.try_get("cooperative")?,
                    machine_hours: r.try_get::<i64, _>("machine_hours")?.max(0) as u64,
                    period_days: r.try_get::<i64, _>("period_days")?.max(1) as u32,
                    period_start_ms: r.try_get("period_start_ms")?,
                })
            })
            .collect()
    }

    /// The audit trail, newest first, optionally for one subject (`pool:valley`).
    pub async fn list_audit(
        &self,
        subject: Option<&str>,
        limit: u32,
    ) -> Result<Vec<AuditRecord>, StoreError> {
        let limit = limit.clamp(1, 1000);
        let rows = sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT id, at_ms, actor, action, subject, detail FROM audit \
             WHERE ($1 = '' OR subject = $1) ORDER BY id DESC LIMIT {limit}"
        )))
        .bind(subject.unwrap_or("").to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                Ok(AuditRecord {
                    id: r.try_get("id")?,
                    at_ms: r.try_get("at_ms")?,
                    actor: r.try_get("actor")?,
                    action: r.try_get("action")?,
                    subject: r.try_get("subject")?,
                    detail: r.try_get("detail")?,
                })
            })
            .collect()
    }

    /// Records a person's confirmation that a machine is ready (bed cleared), and for
    /// `stock_loaded` that stock is loaded and zeroed; audited with who and when.
    pub async fn confirm_ready(
        &self,
        agent: &AgentId,
        machine: &MachineId,
        stock_loaded: bool,
        actor: &str,
        now: i64,
    ) -> Result<(), StoreError> {
        let readiness = if stock_loaded {
            Readiness::StockLoadedAndZeroed
        } else {
            Readiness::Ready
        };
        let mut tx = self.pool().begin().await?;
        // A confirmation must not race the end of the job on the machine: once the job's
        // end is applied the machine is reset to `needs_attention`, which would silently undo
        // a confirmation given before it. Refuse instead; the operator confirms again.
        if let Some(busy) = super::jobs::job_on_machine(&mut tx, agent, machine).await? {
            return Err(busy);
        }
        let done = sqlx::query(
            "UPDATE machines SET readiness = $1, ready_by = $2, ready_ms = $3 \
             WHERE agent = $4 AND machine = $5",
        )
        .bind(readiness_str(readiness))
        .bind(actor.to_string())
        .bind(now)
        .bind(agent.to_string())
        .bind(machine.to_string())
        .execute(&mut *tx)
        .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound {
                what: "machine",
                id: format!("{agent}/{machine}"),
            });
        }
        audit(
            &mut tx,
            actor,
            "confirm_ready",
            &format!("machine:{agent}/{machine}"),
            &readiness,
            now,
        )
        .await?;
        self.commit(tx).await?;
        self.note_with(|c| c.machine(agent, machine, super::MachineChange::Reread));
        Ok(())
    }

    /// The scheduler's picture of now: queued jobs, the machines that could take one (online,
    /// reported ready, not waiting for a person, no job on them) with their readiness, sites,
    /// pools, fair-share usage (ledger entries in the window plus the estimates of jobs on
    /// machines) and quotas.
    ///
    /// With no pool configured, every machine forms one implicit pool `default` open to
    /// every cooperative with weight 1 (a fresh install dispatches like before). Sites a
    /// machine or job names but nobody configured are included at 0°/0° in region
    /// `unknown`, so they still take part (nearest-site ordering is then meaningless).
    pub async fn scheduler_snapshot(
        &self,
        now_ms: i64,
        window: time::Duration,
    ) -> Result<Snapshot, StoreError> {
        let queue = self.queued_jobs(SNAPSHOT_JOBS).await?;
        self.scheduler_snapshot_of(queue, now_ms, window).await
    }

    /// [`Store::scheduler_snapshot`] for a queue already read (in placement order).
    pub async fn scheduler_snapshot_of(
        &self,
        queue: Vec<super::Job>,
        now_ms: i64,
        window: time::Duration,
    ) -> Result<Snapshot, StoreError> {
        let machines = self.free_machine_snapshots(None).await?;
        let inputs = self.plan_inputs(now_ms, window).await?;
        Ok(inputs.snapshot(&queue, machines))
    }

    /// The machines that could take a job now, as the scheduler sees them: agent online,
    /// reported `ready`, not waiting for a person, no job of ours on them (the plan drops
    /// offline, busy and unconfirmed machines first, so a pass costs what the free part of
    /// the fleet costs). `only`: the machines of one agent, or one machine — the same rule,
    /// to refresh part of a picture kept between passes.
    pub async fn free_machine_snapshots(
        &self,
        only: Option<(&AgentId, Option<&MachineId>)>,
    ) -> Result<Vec<MachineSnapshot>, StoreError> {
        let filter = match only {
            None => "",
            Some((_, None)) => " AND m.agent = $1",
            Some((_, Some(_))) => " AND m.agent = $1 AND m.machine = $2",
        };
        let sql = format!(
            "SELECT m.agent AS agent, m.machine AS machine, m.state AS state, \
             m.capabilities AS capabilities, m.readiness AS readiness, a.site AS site, \
             a.online AS online, \
             (SELECT MAX(l.ended_s) FROM ledger l WHERE l.agent = m.agent \
              AND l.machine = m.machine) AS last_end \
             FROM machines m JOIN agents a ON a.id = m.agent \
             WHERE a.online = 1 AND m.state = 'ready' \
             AND (m.readiness IS NULL OR m.readiness <> 'needs_attention') \
             AND NOT EXISTS (SELECT 1 FROM jobs j WHERE j.agent = m.agent \
              AND j.machine = m.machine \
              AND j.state IN ('assigned','accepted','transferring','running','paused')){filter} \
             ORDER BY m.agent, m.machine"
        );
        let mut q = sqlx::query(sqlx::AssertSqlSafe(sql));
        if let Some((agent, machine)) = only {
            q = q.bind(agent.to_string());
            if let Some(m) = machine {
                q = q.bind(m.to_string());
            }
        }
        let rows = q.fetch_all(self.pool()).await?;
        let unknown = SiteId::new(super::ledger::UNKNOWN_SITE).expect("a valid id");
        let mut machines = Vec::with_capacity(rows.len());
        for r in &rows {
            let agent: String = r.try_get("agent")?;
            let machine: String = r.try_get("machine")?;
            let key = MachineKey {
                agent: AgentId::new(agent).map_err(|e| corrupt("machines.agent", e))?,
                machine: MachineId::new(machine).map_err(|e| corrupt("machines.machine", e))?,
            };
            let state: String = r.try_get("state")?;
            let reported_ready =
                serde_json::from_value::<MachineStatus>(serde_json::Value::String(state))
                    .is_ok_and(|s| s == MachineStatus::Ready);
            let confirmed: Option<String> = r.try_get("readiness")?;
            let readiness = match (reported_ready, confirmed.as_deref()) {
                (false, _) => Readiness::NeedsAttention,
                (true, None) => Readiness::Ready,
                (true, Some(c)) => readiness_parse(c)?,
            };
            let caps: String = r.try_get("capabilities")?;
            let capabilities = self.decode_capabilities(&caps)?;
            let site: Option<String> = r.try_get("site")?;
            let site = site
                .and_then(|s| SiteId::new(s).ok())
                .unwrap_or(unknown.clone());
            let last_end: Option<i64> = r.try_get("last_end")?;
            machines.push(MachineSnapshot {
                key,
                site,
                online: r.try_get::<i64, _>("online")? != 0,
                readiness,
                loaded_material: capabilities.materials.first().cloned(),
                capabilities,
                last_job_ended_at: last_end
                    .and_then(|s| OffsetDateTime::from_unix_timestamp(s).ok()),
                busy: false,
            });
        }
        Ok(machines)
    }

    /// The scheduler's inputs besides the queue and the machines: configured sites and
    /// pools, ledger use in the fair-share `window` and in each quota's current period, and
    /// the estimates of the jobs on machines now.
    pub async fn plan_inputs(
        &self,
        now_ms: i64,
        window: time::Duration,
    ) -> Result<PlanInputs, StoreError> {
        let now = at_ms(now_ms)?;
        let mut sites = Vec::new();
        for s in self.list_sites().await? {
            sites.push(Site {
                id: SiteId::new(s.id).map_err(|e| corrupt("sites.id", e))?,
                region: RegionId::new(s.region).map_err(|e| corrupt("sites.region", e))?,
                location: GeoPoint {
                    lat_deg: s.lat,
                    lon_deg: s.lon,
                },
            });
        }

        // The database sums the estimates (each rounded up to whole seconds, as the ledger
        // counts) per cooperative: one row per cooperative, not one per running job.
        let estimate = match self.backend() {
            super::Backend::Sqlite => {
                "MAX(COALESCE(CAST(json_extract(analysis, '$.estimated_seconds') \
                 AS DOUBLE PRECISION), 0), 0)"
            }
            super::Backend::Postgres => {
                "GREATEST(COALESCE(CAST(CAST(analysis AS jsonb)->>'estimated_seconds' \
                 AS DOUBLE PRECISION), 0), 0)"
            }
        };
        let rounded_up = match self.backend() {
            super::Backend::Sqlite => {
                format!("CAST({estimate} AS INTEGER) + ({estimate} > CAST({estimate} AS INTEGER))")
            }
            super::Backend::Postgres => format!("CEIL({estimate})"),
        };
        let mut running: BTreeMap<CoopId, u64> = BTreeMap::new();
        for r in sqlx::query(sqlx::AssertSqlSafe(format!(
            "SELECT coop, CAST(SUM({rounded_up}) AS BIGINT) AS estimate FROM jobs \
             WHERE state IN ('assigned','accepted','transferring','running','paused') \
             GROUP BY coop"
        )))
        .fetch_all(self.pool())
        .await?
        {
            let coop: String = r.try_get("coop")?;
            let estimate: i64 = r.try_get("estimate")?;
            if let Ok(c) = CoopId::new(coop) {
                *running.entry(c).or_default() += estimate.max(0) as u64;
            }
        }

        let mut pools = Vec::new();
        for p in self.list_pools().await? {
            pools.push(Pool {
                id: PoolId::new(p.id).map_err(|e| corrupt("pools.id", e))?,
                machines: p.machines.iter().filter_map(|m| m.parse().ok()).collect(),
                members: p
                    .members
                    .into_iter()
                    .filter_map(|(c, weight)| {
                        CoopId::new(c).ok().map(|cooperative| PoolMember {
                            cooperative,
                            weight,
                        })
                    })
                    .collect(),
            });
        }

        let since = now - window;
        let mut window_usage: BTreeMap<CoopId, u64> = BTreeMap::new();
        for (c, s) in self.ledger_usage(None, since).await? {
            if let Ok(c) = CoopId::new(c) {
                window_usage.insert(c, s);
            }
        }

        let mut quotas = Vec::new();
        for q in self.list_quotas().await? {
            let Ok(cooperative) = CoopId::new(q.cooperative.clone()) else {
                continue;
            };
            let period_ms = i64::from(q.period_days) * 86_400_000;
            let elapsed = (now_ms - q.period_start_ms).max(0);
            let start = q.period_start_ms + elapsed / period_ms * period_ms;
            let used: u64 = self
                .ledger_usage(Some(cooperative.as_str()), at_ms(start)?)
                .await?
                .into_iter()
                .map(|(_, s)| s)
                .sum::<u64>();
            quotas.push(Quota {
                cooperative,
                machine_hours_per_period: q.machine_hours,
                used_machine_seconds: used,
            });
        }
        Ok(PlanInputs {
            sites,
            pools,
            window_usage,
            quotas,
            running,
        })
    }
}

/// The scheduler's inputs besides the queue and the free machines ([`Store::plan_inputs`]).
///
/// Running estimates are kept apart from the ledger's figures so that a job put on a
/// machine can be added ([`PlanInputs::add_running`]) without reading the rest again.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanInputs {
    /// Configured sites.
    pub sites: Vec<Site>,
    /// Configured pools (none: one implicit pool of every machine).
    pub pools: Vec<Pool>,
    /// Ledger machine-seconds per cooperative in the fair-share window.
    pub window_usage: BTreeMap<CoopId, u64>,
    /// Quotas, their use the ledger's in the current period (running estimates not added).
    pub quotas: Vec<Quota>,
    /// Estimates of the jobs on machines, per cooperative.
    pub running: BTreeMap<CoopId, u64>,
}

impl PlanInputs {
    /// Counts a job just put on a machine: `seconds` more for `cooperative`.
    pub fn add_running(&mut self, cooperative: &str, seconds: u64) {
        if let Ok(c) = CoopId::new(cooperative) {
            *self.running.entry(c).or_default() += seconds;
        }
    }

    /// The snapshot of `queue` (in placement order) over `machines`.
    ///
    /// With no pool configured, every machine forms one implicit pool `default` open to
    /// every cooperative with weight 1 (a fresh install dispatches like before). Sites a
    /// machine or job names but nobody configured are included at 0°/0° in region
    /// `unknown`, so they still take part (nearest-site ordering is then meaningless).
    pub fn snapshot(&self, queue: &[super::Job], machines: Vec<MachineSnapshot>) -> Snapshot {
        let unknown = SiteId::new(super::ledger::UNKNOWN_SITE).expect("a valid id");
        let mut sites: BTreeMap<SiteId, Site> = self
            .sites
            .iter()
            .map(|s| (s.id.clone(), s.clone()))
            .collect();
        let need_site = |id: &SiteId, sites: &mut BTreeMap<SiteId, Site>| {
            if !sites.contains_key(id) {
                sites.insert(
                    id.clone(),
                    Site {
                        id: id.clone(),
                        region: RegionId::new("unknown").expect("a valid id"),
                        location: GeoPoint {
                            lat_deg: 0.0,
                            lon_deg: 0.0,
                        },
                    },
                );
            }
        };
        for m in &machines {
            need_site(&m.site, &mut sites);
        }
        let mut jobs = Vec::with_capacity(queue.len());
        for job in queue {
            let Ok(cooperative) = CoopId::new(job.coop.clone()) else {
                continue;
            };
            let delivery_site = job
                .delivery_site
                .as_ref()
                .and_then(|s| SiteId::new(s.as_str()).ok())
                .unwrap_or(unknown.clone());
            need_site(&delivery_site, &mut sites);
            jobs.push(QueuedJob {
                id: job.id,
                cooperative,
                requirements: job.requirements.clone(),
                priority: job.priority.clamp(i64::from(i32::MIN), i64::from(i32::MAX)) as i32,
                submitted_at: at_ms(job.created_ms).unwrap_or(OffsetDateTime::UNIX_EPOCH),
                estimated_machine_seconds: super::jobs::estimate_seconds(job),
                delivery_site,
                excluded_machines: job.excluded.iter().filter_map(|x| x.parse().ok()).collect(),
            });
        }

        let mut pools = self.pools.clone();
        if pools.is_empty() {
            let coops: BTreeSet<CoopId> = jobs
                .iter()
                .map(|j| j.cooperative.clone())
                .chain(self.running.keys().cloned())
                .collect();
            pools.push(Pool {
                id: PoolId::new(super::ledger::DEFAULT_POOL).expect("a valid id"),
                machines: machines.iter().map(|m| m.key.clone()).collect(),
                members: coops
                    .into_iter()
                    .map(|cooperative| PoolMember {
                        cooperative,
                        weight: 1,
                    })
                    .collect(),
            });
        }

        let mut usage = self.window_usage.clone();
        for (c, s) in &self.running {
            *usage.entry(c.clone()).or_default() += s;
        }
        let quotas = self
            .quotas
            .iter()
            .map(|q| Quota {
                used_machine_seconds: q.used_machine_seconds
                    + self.running.get(&q.cooperative).copied().unwrap_or(0),
                ..q.clone()
            })
            .collect();

        Snapshot {
            jobs,
            machines,
            sites: sites.into_values().collect(),
            pools,
            usage: usage
                .into_iter()
                .map(|(cooperative, machine_seconds)| crate::scheduler::Usage {
                    cooperative,
                    machine_seconds,
                })
                .collect(),
            quotas,
            policy: Policy::default(),
        }
    }
}

fn at_ms(ms: i64) -> Result<OffsetDateTime, StoreError> {
    OffsetDateTime::from_unix_timestamp(ms.div_euclid(1000)).map_err(|e| corrupt("time", e))
}

pub(super) fn readiness_str(r: Readiness) -> &'static str {
    match r {
        Readiness::NeedsAttention => "needs_attention",
        Readiness::Ready => "ready",
        Readiness::StockLoadedAndZeroed => "stock_loaded_and_zeroed",
    }
}

pub(super) fn readiness_parse(s: &str) -> Result<Readiness, StoreError> {
    match s {
        "needs_attention" => Ok(Readiness::NeedsAttention),
        "ready" => Ok(Readiness::Ready),
        "stock_loaded_and_zeroed" => Ok(Readiness::StockLoadedAndZeroed),
        other => Err(corrupt("machines.readiness", other)),
    }
}
