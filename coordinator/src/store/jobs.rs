//! Jobs, their events, and every operation that moves a job.

use munifab_protocol::{
    AgentId, AnalysisSummary, Command, Event, JobCommand, JobId, MachineId, Message, Requirements,
};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AnyConnection, AssertSqlSafe, Row};

use super::ledger;
use super::outbox::{self, QueuedCommand};
use super::{Backend, MachineChange, Store, StoreError, corrupt};
use crate::lifecycle::JobState;

/// A job as submitted (what the API hands the store).
#[derive(Debug, Clone, PartialEq)]
pub struct NewJob {
    /// Fresh id.
    pub id: JobId,
    /// The requesting cooperative.
    pub coop: String,
    /// Human name (the uploaded file's name).
    pub name: String,
    /// Token id of the submitter.
    pub submitted_by: String,
    /// SHA-256 (hex) of the stored G-code.
    pub artifact: String,
    /// Its size in bytes.
    pub size: u64,
    /// What a machine needs to run it, from the analysis.
    pub requirements: Requirements,
    /// Figures from the analysis.
    pub analysis: AnalysisSummary,
    /// Higher runs first.
    pub priority: i64,
    /// The catalog design the G-code came from, pinned; `None` for an upload.
    pub design: Option<JobDesign>,
    /// Site the part is delivered to.
    pub delivery_site: Option<String>,
}

/// The design a job was made from, pinned to a commit and a file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct JobDesign {
    /// Catalog source name.
    pub source: String,
    /// Design id within the source.
    pub id: String,
    /// The exact commit (40 hex digits).
    pub commit: String,
    /// Machine profile of the G-code.
    pub profile: String,
    /// Path of the G-code file in the source at that commit.
    pub path: String,
    /// SPDX licence expression.
    pub licence: String,
    /// Author names.
    pub authors: Vec<String>,
}

/// A stored job.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct Job {
    /// Job id (UUID).
    #[schema(value_type = String)]
    pub id: JobId,
    /// Requesting cooperative.
    pub coop: String,
    /// Human name.
    pub name: String,
    /// Token id of the submitter.
    pub submitted_by: String,
    /// Lifecycle state.
    pub state: JobState,
    /// Assignment epoch (0 until first assigned).
    pub epoch: u64,
    /// Agent of the current or last assignment.
    #[schema(value_type = Option<String>)]
    pub agent: Option<AgentId>,
    /// Machine of the current or last assignment.
    #[schema(value_type = Option<String>)]
    pub machine: Option<MachineId>,
    /// SHA-256 of the G-code artifact.
    pub artifact: String,
    /// Artifact size in bytes.
    pub size: u64,
    /// Derived requirements.
    #[schema(value_type = Object)]
    pub requirements: Requirements,
    /// Analysis figures.
    #[schema(value_type = Object)]
    pub analysis: AnalysisSummary,
    /// Machines (`agent/machine`) that rejected it.
    pub excluded: Vec<String>,
    /// How often agents rejected it.
    pub rejections: u32,
    /// Higher runs first.
    pub priority: i64,
    /// Last reported progress, percent.
    pub progress: Option<f64>,
    /// Last applied agent event sequence number in this epoch (-1: none).
    pub last_seq: i64,
    /// Last reason or message attached to a state change.
    pub detail: Option<String>,
    /// Unix ms.
    pub created_ms: i64,
    /// Unix ms.
    pub updated_ms: i64,
    /// When it last entered the queue (Unix ms).
    pub queued_ms: Option<i64>,
    /// The catalog design it was made from, pinned.
    pub design: Option<JobDesign>,
    /// The pool it was placed through (set at assignment).
    pub pool: Option<String>,
    /// Site the part is delivered to.
    pub delivery_site: Option<String>,
}

/// One state change of a job.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct JobEvent {
    /// Increasing id.
    pub id: i64,
    /// Unix ms.
    pub at_ms: i64,
    /// Previous state (none for the creation row).
    pub from: Option<JobState>,
    /// New state.
    pub to: JobState,
    /// Epoch after the change.
    pub epoch: u64,
    /// Who or what caused it (`api:cancel`, `agent:completed`, `dispatch`, …).
    pub cause: String,
    /// Reason or message.
    pub detail: Option<String>,
}

/// Filters and paging for [`Store::list_jobs`].
#[derive(Debug, Clone, Default, PartialEq)]
pub struct JobFilter {
    /// Only this cooperative's jobs.
    pub coop: Option<String>,
    /// Only jobs assigned to agents of this site.
    pub site: Option<String>,
    /// Only jobs in this state.
    pub state: Option<JobState>,
    /// Page size (capped at 500).
    pub limit: u32,
    /// Rows to skip.
    pub offset: u64,
}

/// A page of results and the total count matching the filter.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Page<T> {
    /// The rows of this page.
    pub items: Vec<T>,
    /// All rows matching the filter.
    pub total: u64,
}

/// What happens to a job whose agent stayed offline beyond the grace period.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum LostPolicy {
    /// Back to the queue for another machine.
    Requeue,
    /// Failed for good.
    Fail,
}

/// Result of a cancel/pause/resume request.
#[derive(Debug, Clone, PartialEq)]
pub enum CommandOutcome {
    /// The job changed state at once (e.g. cancelling a queued job).
    Done(Job),
    /// A command was queued for the job's agent; the agent's event will move the job.
    Sent(Job, QueuedCommand),
}

/// Result of applying one agent event.
#[derive(Debug, Clone, PartialEq)]
pub enum EventOutcome {
    /// This event id was applied before.
    Duplicate,
    /// The event names a job this coordinator does not have.
    UnknownJob(JobId),
    /// The event carries no job (e.g. `command_error`); recorded as seen.
    NoJob,
    /// The report is for an older epoch, another agent or machine: ignored. A cancel for
    /// the stale run is returned when one was queued, so the old machine stops.
    Stale {
        /// The job as stored.
        job: Box<Job>,
        /// Cancel queued for the reporting agent, if the report says it is still running.
        cancel: Option<QueuedCommand>,
    },
    /// Sequence number at or below the last applied one: a replay.
    Replayed,
    /// A move the lifecycle forbids from the current state (e.g. `paused` after
    /// `completed`): ignored.
    Ignored(Box<Job>),
    /// Applied; the job as it is now.
    Applied(Box<Job>),
}

pub(crate) const ON_MACHINE: &str = "('assigned','accepted','transferring','running','paused')";
const COLUMNS: &str = "id, coop, name, submitted_by, state, epoch, agent, machine, artifact, size, \
    requirements, analysis, excluded, rejections, priority, progress, last_seq, detail, \
    created_ms, updated_ms, queued_ms, design, pool, delivery_site";

fn job_from_row(row: &AnyRow) -> Result<Job, StoreError> {
    let id: String = row.try_get("id")?;
    let state: String = row.try_get("state")?;
    let agent: Option<String> = row.try_get("agent")?;
    let machine: Option<String> = row.try_get("machine")?;
    let requirements: String = row.try_get("requirements")?;
    let analysis: String = row.try_get("analysis")?;
    let excluded: String = row.try_get("excluded")?;
    let design: Option<String> = row.try_get("design")?;
    Ok(Job {
        id: id.parse().map_err(|e| corrupt("jobs.id", e))?,
        coop: row.try_get("coop")?,
        name: row.try_get("name")?,
        submitted_by: row.try_get("submitted_by")?,
        state: state.parse().map_err(|e| corrupt("jobs.state", e))?,
        epoch: row.try_get::<i64, _>("epoch")? as u64,
        agent: agent
            .map(AgentId::new)
            .transpose()
            .map_err(|e| corrupt("jobs.agent", e))?,
        machine: machine
            .map(MachineId::new)
            .transpose()
            .map_err(|e| corrupt("jobs.machine", e))?,
        artifact: row.try_get("artifact")?,
        size: row.try_get::<i64, _>("size")? as u64,
        requirements: serde_json::from_str(&requirements)
            .map_err(|e| corrupt("jobs.requirements", e))?,
        analysis: serde_json::from_str(&analysis).map_err(|e| corrupt("jobs.analysis", e))?,
        excluded: serde_json::from_str(&excluded).map_err(|e| corrupt("jobs.excluded", e))?,
        rejections: row.try_get::<i64, _>("rejections")? as u32,
        priority: row.try_get("priority")?,
        progress: row
            .try_get::<Option<i64>, _>("progress")?
            .map(|c| c as f64 / 100.0),
        last_seq: row.try_get("last_seq")?,
        detail: row.try_get("detail")?,
        created_ms: row.try_get("created_ms")?,
        updated_ms: row.try_get("updated_ms")?,
        queued_ms: row.try_get("queued_ms")?,
        design: design
            .map(|d| serde_json::from_str(&d))
            .transpose()
            .map_err(|e| corrupt("jobs.design", e))?,
        pool: row.try_get("pool")?,
        delivery_site: row.try_get("delivery_site")?,
    })
}

fn event_from_row(row: &AnyRow) -> Result<JobEvent, StoreError> {
    let from: Option<String> = row.try_get("from_state")?;
    let to: String = row.try_get("to_state")?;
    Ok(JobEvent {
        id: row.try_get("id")?,
        at_ms: row.try_get("at_ms")?,
        from: from
            .map(|s| s.parse())
            .transpose()
            .map_err(|e| corrupt("job_events.from_state", e))?,
        to: to.parse().map_err(|e| corrupt("job_events.to_state", e))?,
        epoch: row.try_get::<i64, _>("epoch")? as u64,
        cause: row.try_get("cause")?,
        detail: row.try_get("detail")?,
    })
}

pub(super) async fn load(conn: &mut AnyConnection, id: JobId) -> Result<Option<Job>, StoreError> {
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM jobs WHERE id = $1"
    )))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    row.as_ref().map(job_from_row).transpose()
}

/// Claims a job for assignment inside the caller's write transaction. On PostgreSQL the row
/// is locked `FOR UPDATE SKIP LOCKED`: a job another transaction (a second coordinator, a
/// concurrent pass) is claiming is skipped at once as a [`StoreError::Conflict`] instead of
/// waited for and assigned twice. SQLite has one writer at a time: the caller's
/// transaction began `IMMEDIATE`, so the row read here cannot change before the commit.
async fn claim(conn: &mut AnyConnection, backend: Backend, id: JobId) -> Result<Job, StoreError> {
    let lock = match backend {
        Backend::Postgres => " FOR UPDATE SKIP LOCKED",
        Backend::Sqlite => "",
    };
    let row = sqlx::query(AssertSqlSafe(format!(
        "SELECT {COLUMNS} FROM jobs WHERE id = $1{lock}"
    )))
    .bind(id.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    match row {
        Some(row) => job_from_row(&row),
        // Skipped: it exists (another claimer holds it), or it does not.
        None => match load(conn, id).await? {
            Some(_) => Err(StoreError::Conflict(id.to_string())),
            None => Err(StoreError::NotFound {
                what: "job",
                id: id.to_string(),
            }),
        },
    }
}

/// Locks a machine's row for the caller's transaction (PostgreSQL; SQLite's writer lock
/// already covers it) and refuses it when a job is already on it: two placements made from
/// different snapshots never book one machine twice.
async fn claim_machine(
    conn: &mut AnyConnection,
    backend: Backend,
    agent: &AgentId,
    machine: &MachineId,
) -> Result<(), StoreError> {
    if backend == Backend::Postgres {
        sqlx::query("SELECT agent FROM machines WHERE agent = $1 AND machine = $2 FOR UPDATE")
            .bind(agent.to_string())
            .bind(machine.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    }
    match job_on_machine(conn, agent, machine).await? {
        Some(busy) => Err(busy),
        None => Ok(()),
    }
}

/// The job of ours still on a machine, as the `MachineBusy` error that refuses another
/// placement or a readiness confirmation there.
pub(super) async fn job_on_machine(
    conn: &mut AnyConnection,
    agent: &AgentId,
    machine: &MachineId,
) -> Result<Option<StoreError>, StoreError> {
    let holder = sqlx::query(
        "SELECT id, state FROM jobs WHERE agent = $1 AND machine = $2 \
         AND state IN ('assigned','accepted','transferring','running','paused') LIMIT 1",
    )
    .bind(agent.to_string())
    .bind(machine.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    holder
        .map(|row| {
            Ok(StoreError::MachineBusy {
                machine: format!("{agent}/{machine}"),
                job: row.try_get("id")?,
                state: row.try_get("state")?,
            })
        })
        .transpose()
}

/// Refuses a machine that cannot start a job of `process` now: unknown, its agent offline,
/// not reporting `ready`, or its readiness record not admitting the process (the same rule
/// as the scheduler snapshot's, read inside the placement's transaction).
async fn machine_admits(
    conn: &mut AnyConnection,
    agent: &AgentId,
    machine: &MachineId,
    process: munifab_protocol::Process,
) -> Result<(), StoreError> {
    let row = sqlx::query(
        "SELECT m.state AS state, m.readiness AS readiness, a.online AS online \
         FROM machines m JOIN agents a ON a.id = m.agent WHERE m.agent = $1 AND m.machine = $2",
    )
    .bind(agent.to_string())
    .bind(machine.to_string())
    .fetch_optional(&mut *conn)
    .await?;
    let unavailable = |why: &'static str| StoreError::MachineUnavailable {
        machine: format!("{agent}/{machine}"),
        why,
    };
    let Some(row) = row else {
        return Err(unavailable("unknown machine"));
    };
    if row.try_get::<i64, _>("online")? == 0 {
        return Err(unavailable("its agent is offline"));
    }
    if row.try_get::<String, _>("state")? != "ready" {
        return Err(unavailable("it does not report ready"));
    }
    let readiness: Option<String> = row.try_get("readiness")?;
    // Never confirmed nor used since the coordinator first saw it: its agent's word.
    let readiness = match readiness.as_deref() {
        None => crate::scheduler::Readiness::Ready,
        Some(r) => super::coop::readiness_parse(r)?,
    };
    if !readiness.admits(process) {
        return Err(unavailable("nobody confirmed it ready for this job"));
    }
    Ok(())
}

/// A job's estimate as usage counts it: whole seconds, rounded up, never negative.
pub(super) fn estimate_seconds(job: &Job) -> u64 {
    job.analysis.estimated_seconds.max(0.0).ceil() as u64
}

async fn load_required(conn: &mut AnyConnection, id: JobId) -> Result<Job, StoreError> {
    load(conn, id).await?.ok_or_else(|| StoreError::NotFound {
        what: "job",
        id: id.to_string(),
    })
}

/// Writes the mutable fields of `job`, provided the stored row is still in `guard`
/// (state, epoch): a concurrent writer makes this a [`StoreError::Conflict`].
async fn write_job(
    conn: &mut AnyConnection,
    job: &Job,
    guard: (JobState, u64),
) -> Result<(), StoreError> {
    let done = sqlx::query(
        "UPDATE jobs SET state = $1, epoch = $2, agent = $3, machine = $4, excluded = $5, \
         rejections = $6, progress = $7, last_seq = $8, detail = $9, updated_ms = $10, \
         queued_ms = $11, pool = $12 WHERE id = $13 AND state = $14 AND epoch = $15",
    )
    .bind(job.state.as_str())
    .bind(job.epoch as i64)
    .bind(job.agent.as_ref().map(|a| a.to_string()))
    .bind(job.machine.as_ref().map(|m| m.to_string()))
    .bind(serde_json::to_string(&job.excluded).expect("strings serialize"))
    .bind(job.rejections as i64)
    .bind(job.progress.map(|p| (p * 100.0).round() as i64))
    .bind(job.last_seq)
    .bind(job.detail.clone())
    .bind(job.updated_ms)
    .bind(job.queued_ms)
    .bind(job.pool.clone())
    .bind(job.id.to_string())
    .bind(guard.0.as_str())
    .bind(guard.1 as i64)
    .execute(&mut *conn)
    .await?;
    if done.rows_affected() != 1 {
        return Err(StoreError::Conflict(job.id.to_string()));
    }
    Ok(())
}

/// THE state change: checks the lifecycle, writes the job (guarded against concurrent
/// change) and its event row, in the caller's transaction. `guard_epoch` is the epoch the
/// caller read (the job's epoch may have been advanced by an assignment).
async fn move_job(
    conn: &mut AnyConnection,
    job: &mut Job,
    guard_epoch: u64,
    to: JobState,
    cause: &str,
    detail: Option<String>,
    now: i64,
) -> Result<(), StoreError> {
    let from = job.state;
    job.state = from.transition(to)?;
    job.updated_ms = now;
    if to == JobState::Queued {
        job.queued_ms = Some(now);
    }
    if detail.is_some() {
        job.detail = detail.clone();
    }
    write_job(conn, job, (from, guard_epoch)).await?;
    insert_event(conn, job, Some(from), cause, detail, now).await?;
    // A run that reached a machine is production: it is recorded in the same transaction
    // as its end, so a job never ends without its ledger entry (nor the reverse).
    if to.is_terminal() && (from.is_on_machine() || from == JobState::Lost) {
        ledger::record_job_end(conn, job, now).await?;
        // Whatever the outcome, a person looks at the machine before the next job.
        if let (Some(agent), Some(machine)) = (&job.agent, &job.machine) {
            sqlx::query(
                "UPDATE machines SET readiness = 'needs_attention', ready_by = NULL, \
                 ready_ms = $1 WHERE agent = $2 AND machine = $3",
            )
            .bind(now)
            .bind(agent.to_string())
            .bind(machine.to_string())
            .execute(&mut *conn)
            .await?;
        }
    }
    Ok(())
}

async fn insert_event(
    conn: &mut AnyConnection,
    job: &Job,
    from: Option<JobState>,
    cause: &str,
    detail: Option<String>,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "INSERT INTO job_events (job, at_ms, from_state, to_state, epoch, cause, detail) \
         VALUES ($1, $2, $3, $4, $5, $6, $7)",
    )
    .bind(job.id.to_string())
    .bind(now)
    .bind(from.map(|s| s.as_str().to_string()))
    .bind(job.state.as_str())
    .bind(job.epoch as i64)
    .bind(cause.to_string())
    .bind(detail)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

fn job_command(job: &Job) -> Option<JobCommand> {
    Some(JobCommand {
        job: job.id,
        epoch: job.epoch,
        machine: job.machine.clone()?,
    })
}

impl Store {
    /// Stores a new job and queues it (two event rows: submitted, queued), in one transaction.
    pub async fn submit_job(&self, new: NewJob, now: i64) -> Result<Job, StoreError> {
        let mut job = Job {
            id: new.id,
            coop: new.coop,
            name: new.name,
            submitted_by: new.submitted_by,
            state: JobState::Submitted,
            epoch: 0,
            agent: None,
            machine: None,
            artifact: new.artifact,
            size: new.size,
            requirements: new.requirements,
            analysis: new.analysis,
            excluded: Vec::new(),
            rejections: 0,
            priority: new.priority,
            progress: None,
            last_seq: -1,
            detail: None,
            created_ms: now,
            updated_ms: now,
            queued_ms: None,
            design: new.design,
            pool: None,
            delivery_site: new.delivery_site,
        };
        let mut tx = self.pool().begin().await?;
        sqlx::query(AssertSqlSafe(format!(
            "INSERT INTO jobs ({COLUMNS}) VALUES \
             ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, \
              $19, $20, $21, $22, $23, $24)"
        )))
        .bind(job.id.to_string())
        .bind(job.coop.clone())
        .bind(job.name.clone())
        .bind(job.submitted_by.clone())
        .bind(job.state.as_str())
        .bind(0_i64)
        .bind(None::<String>)
        .bind(None::<String>)
        .bind(job.artifact.clone())
        .bind(job.size as i64)
        .bind(serde_json::to_string(&job.requirements).expect("requirements serialize"))
        .bind(serde_json::to_string(&job.analysis).expect("analysis serializes"))
        .bind("[]")
        .bind(0_i64)
        .bind(job.priority)
        .bind(None::<i64>)
        .bind(-1_i64)
        .bind(None::<String>)
        .bind(now)
        .bind(now)
        .bind(None::<i64>)
        .bind(
            job.design
                .as_ref()
                .map(|d| serde_json::to_string(d).expect("a design serializes")),
        )
        .bind(None::<String>)
        .bind(job.delivery_site.clone())
        .execute(&mut *tx)
        .await?;
        insert_event(&mut tx, &job, None, "api:submit", None, now).await?;
        move_job(
            &mut tx,
            &mut job,
            0,
            JobState::Queued,
            "api:submit",
            None,
            now,
        )
        .await?;
        self.commit(tx).await?;
        Ok(job)
    }

    /// One job.
    pub async fn job(&self, id: JobId) -> Result<Job, StoreError> {
        let mut conn = self.pool().acquire().await?;
        load_required(&mut conn, id).await
    }

    /// Jobs matching `filter`, newest first.
    pub async fn list_jobs(&self, filter: &JobFilter) -> Result<Page<Job>, StoreError> {
        let mut clauses = Vec::new();
        let mut args: Vec<String> = Vec::new();
        if let Some(coop) = &filter.coop {
            args.push(coop.clone());
            clauses.push(format!("coop = ${}", args.len()));
        }
        if let Some(state) = filter.state {
            args.push(state.as_str().to_string());
            clauses.push(format!("state = ${}", args.len()));
        }
        if let Some(site) = &filter.site {
            args.push(site.clone());
            clauses.push(format!(
                "agent IN (SELECT id FROM agents WHERE site = ${})",
                args.len()
            ));
        }
        let filter_sql = if clauses.is_empty() {
            String::new()
        } else {
            format!("WHERE {}", clauses.join(" AND "))
        };
        let mut count = sqlx::query(AssertSqlSafe(format!(
            "SELECT COUNT(*) AS n FROM jobs {filter_sql}"
        )));
        for a in &args {
            count = count.bind(a.clone());
        }
        let total: i64 = count.fetch_one(self.pool()).await?.try_get("n")?;
        let limit = filter.limit.clamp(1, 500) as i64;
        let mut page = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobs {filter_sql} ORDER BY created_ms DESC, id \
             LIMIT {limit} OFFSET {}",
            filter.offset
        )));
        for a in &args {
            page = page.bind(a.clone());
        }
        let rows = page.fetch_all(self.pool()).await?;
        Ok(Page {
            items: rows.iter().map(job_from_row).collect::<Result<_, _>>()?,
            total: total as u64,
        })
    }

    /// The state changes of a job, oldest first.
    pub async fn job_events(&self, id: JobId) -> Result<Vec<JobEvent>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, at_ms, from_state, to_state, epoch, cause, detail FROM job_events \
             WHERE job = $1 ORDER BY id",
        )
        .bind(id.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(event_from_row).collect()
    }

    /// Moves a job by hand (operators' and tests' entry to the transition function).
    pub async fn transition_job(
        &self,
        id: JobId,
        to: JobState,
        cause: &str,
        detail: Option<String>,
        now: i64,
    ) -> Result<Job, StoreError> {
        let mut tx = self.pool().begin().await?;
        let mut job = load_required(&mut tx, id).await?;
        let epoch = job.epoch;
        move_job(&mut tx, &mut job, epoch, to, cause, detail, now).await?;
        self.commit(tx).await?;
        self.note_with(|c| {
            c.plan_inputs = true;
            if let (Some(a), Some(m)) = (&job.agent, &job.machine) {
                c.machine(a, m, MachineChange::Reread);
            }
        });
        Ok(job)
    }

    /// Queued jobs in placement order (priority, then age).
    pub async fn queued_jobs(&self, limit: u32) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT {COLUMNS} FROM jobs WHERE state = 'queued' \
             ORDER BY priority DESC, created_ms, id LIMIT {limit}"
        )))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(job_from_row).collect()
    }

    /// Assigns a queued job to a machine under a new epoch and queues the `assign` command
    /// built by `command`, in one transaction, **without** checking that the machine can
    /// start it now (agent online, `ready`, confirmed by a person): the outbox will send the
    /// command all the same. For tests that set up a state; the dispatcher places
    /// through [`Store::place_job`], which checks.
    pub async fn assign_job_unchecked(
        &self,
        id: JobId,
        agent: &AgentId,
        machine: &MachineId,
        now: i64,
        command: impl FnOnce(&Job) -> Message<Command>,
    ) -> Result<(Job, QueuedCommand), StoreError> {
        self.assign_job_in_pool_unchecked(id, agent, machine, None, now, command)
            .await
    }

    /// [`Store::assign_job_unchecked`], recording the pool the machine is used through (the
    /// one its ledger entry will name). Checks no more than it does.
    pub async fn assign_job_in_pool_unchecked(
        &self,
        id: JobId,
        agent: &AgentId,
        machine: &MachineId,
        pool: Option<&str>,
        now: i64,
        command: impl FnOnce(&Job) -> Message<Command>,
    ) -> Result<(Job, QueuedCommand), StoreError> {
        self.assign(id, agent, machine, pool, false, now, command)
            .await
    }

    /// The scheduler's placement: [`Store::assign_job_in_pool_unchecked`], and in the same
    /// transaction the machine must still be able to start this job — its agent online, it
    /// reports `ready`, and its readiness record admits the job's process (a person
    /// confirmed it after its last job; stock loaded and zeroed for CNC) — else
    /// [`StoreError::MachineUnavailable`]. The dispatcher plans over a picture it keeps
    /// between passes; this is what makes a stale picture cost a skipped placement, never
    /// a job on a machine nobody cleared.
    pub async fn place_job(
        &self,
        id: JobId,
        agent: &AgentId,
        machine: &MachineId,
        pool: &str,
        now: i64,
        command: impl FnOnce(&Job) -> Message<Command>,
    ) -> Result<(Job, QueuedCommand), StoreError> {
        self.assign(id, agent, machine, Some(pool), true, now, command)
            .await
    }

    #[allow(clippy::too_many_arguments)]
    async fn assign(
        &self,
        id: JobId,
        agent: &AgentId,
        machine: &MachineId,
        pool: Option<&str>,
        check_machine: bool,
        now: i64,
        command: impl FnOnce(&Job) -> Message<Command>,
    ) -> Result<(Job, QueuedCommand), StoreError> {
        let mut tx = self.begin_write().await?;
        let mut job = claim(&mut tx, self.backend(), id).await?;
        claim_machine(&mut tx, self.backend(), agent, machine).await?;
        if check_machine {
            machine_admits(&mut tx, agent, machine, job.requirements.process).await?;
        }
        job.pool = pool.map(str::to_string);
        let guard = job.epoch;
        job.epoch += 1;
        job.agent = Some(agent.clone());
        job.machine = Some(machine.clone());
        job.last_seq = -1;
        job.progress = None;
        move_job(
            &mut tx,
            &mut job,
            guard,
            JobState::Assigned,
            "dispatch",
            Some(format!("{agent}/{machine}")),
            now,
        )
        .await?;
        let msg = command(&job);
        let queued = outbox::enqueue(
            &mut tx,
            agent,
            "assign",
            Some((job.id, job.epoch)),
            Some(machine),
            &msg,
            now,
        )
        .await?;
        self.commit(tx).await?;
        self.note_with(|c| {
            c.machine(agent, machine, MachineChange::Taken);
            c.running.push((job.coop.clone(), estimate_seconds(&job)));
        });
        Ok((job, queued))
    }

    /// Cancels a job: at once when no machine holds it, else by a `cancel` command.
    pub async fn cancel_job(&self, id: JobId, now: i64) -> Result<CommandOutcome, StoreError> {
        let mut tx = self.pool().begin().await?;
        let mut job = load_required(&mut tx, id).await?;
        let outcome = if job.state.is_on_machine() {
            let cmd = job_command(&job).expect("a job on a machine has a machine");
            let msg = Message::stamped(Command::Cancel(cmd));
            let agent = job.agent.clone().expect("a job on a machine has an agent");
            let q = outbox::enqueue(
                &mut tx,
                &agent,
                "cancel",
                Some((job.id, job.epoch)),
                job.machine.as_ref(),
                &msg,
                now,
            )
            .await?;
            CommandOutcome::Sent(job, q)
        } else {
            let epoch = job.epoch;
            move_job(
                &mut tx,
                &mut job,
                epoch,
                JobState::Cancelled,
                "api:cancel",
                None,
                now,
            )
            .await?;
            outbox::complete_job(&mut tx, job.id, now).await?;
            CommandOutcome::Done(job)
        };
        match &outcome {
            CommandOutcome::Done(_) => self.commit(tx).await?,
            // Only a command in the outbox, as for pause; the agent's event moves the job.
            CommandOutcome::Sent(..) => tx.commit().await?,
        }
        self.note_with(|c| match &outcome {
            CommandOutcome::Sent(..) => c.outbox = true,
            CommandOutcome::Done(job) => {
                c.plan_inputs = true;
                if let (Some(a), Some(m)) = (&job.agent, &job.machine) {
                    c.machine(a, m, MachineChange::Reread);
                }
            }
        });
        Ok(outcome)
    }

    /// Asks the machine to pause (`pause == true`) or resume a job. The job must be running
    /// (to pause) or paused (to resume); the agent's event moves it.
    pub async fn pause_job(
        &self,
        id: JobId,
        pause: bool,
        now: i64,
    ) -> Result<CommandOutcome, StoreError> {
        let mut tx = self.pool().begin().await?;
        let job = load_required(&mut tx, id).await?;
        let (to, kind) = if pause {
            (JobState::Paused, "pause")
        } else {
            (JobState::Running, "resume")
        };
        let allowed = if pause {
            job.state == JobState::Running
        } else {
            job.state == JobState::Paused
        };
        if !allowed {
            return Err(StoreError::IllegalMove(crate::lifecycle::IllegalMove {
                from: job.state,
                to,
            }));
        }
        let cmd = job_command(&job).expect("a running job has a machine");
        let msg = Message::stamped(if pause {
            Command::Pause(cmd)
        } else {
            Command::Resume(cmd)
        });
        let agent = job.agent.clone().expect("a running job has an agent");
        let q = outbox::enqueue(
            &mut tx,
            &agent,
            kind,
            Some((job.id, job.epoch)),
            job.machine.as_ref(),
            &msg,
            now,
        )
        .await?;
        // Only a command in the outbox: the job moves (and the revision with it) when the
        // agent's event says so.
        tx.commit().await?;
        self.note_with(|c| c.outbox = true);
        Ok(CommandOutcome::Sent(job, q))
    }

    /// Applies one job event published by `agent`, exactly once per event id, in one
    /// transaction. A rejected job returns to the queue excluding that machine, or fails
    /// after `max_rejections`.
    pub async fn apply_event(
        &self,
        agent: &AgentId,
        msg: &Message<Event>,
        max_rejections: u32,
        now: i64,
    ) -> Result<EventOutcome, StoreError> {
        let mut moved = false;
        let outcome = self
            .apply_event_tx(agent, msg, max_rejections, now, &mut moved)
            .await?;
        // A duplicate may have been applied by another replica just now: look again too.
        if moved || outcome == EventOutcome::Duplicate {
            let r = msg.body.job_ref();
            self.note_with(|c| {
                // The job left or (reclaimed) entered a machine: the jobs on machines, the
                // ledger and the machine's readiness may have changed.
                c.plan_inputs = true;
                if let Some(r) = r {
                    c.machine(agent, &r.machine, MachineChange::Reread);
                }
                if let EventOutcome::Applied(job) | EventOutcome::Ignored(job) = &outcome
                    && let (Some(a), Some(m)) = (&job.agent, &job.machine)
                {
                    c.machine(a, m, MachineChange::Reread);
                }
            });
        }
        Ok(outcome)
    }

    /// [`Store::apply_event`]'s transaction; sets `moved` when the job entered or left its
    /// machine. The paths that wrote only the message id and outbox rows (no job, an unknown
    /// job, a stale run, a replay) commit without moving the store's revision: nothing the
    /// API shows changed. Those that wrote the job end in [`Store::commit`].
    async fn apply_event_tx(
        &self,
        agent: &AgentId,
        msg: &Message<Event>,
        max_rejections: u32,
        now: i64,
        moved: &mut bool,
    ) -> Result<EventOutcome, StoreError> {
        let mut tx = self.pool().begin().await?;
        let fresh = sqlx::query(
            "INSERT INTO seen_messages (id, agent, at_ms) VALUES ($1, $2, $3) \
             ON CONFLICT (id) DO NOTHING",
        )
        .bind(msg.id.to_string())
        .bind(agent.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?
        .rows_affected()
            == 1;
        if !fresh {
            // End the transaction now rather than leaving the rollback to the pool.
            tx.rollback().await?;
            return Ok(EventOutcome::Duplicate);
        }
        let Some(r) = msg.body.job_ref() else {
            tx.commit().await?;
            return Ok(EventOutcome::NoJob);
        };
        let Some(mut job) = load(&mut tx, r.job).await? else {
            tx.commit().await?;
            return Ok(EventOutcome::UnknownJob(r.job));
        };
        let same_run = job.agent.as_ref() == Some(agent)
            && job.machine.as_ref() == Some(&r.machine)
            && job.epoch == r.epoch;
        if !same_run {
            let mut cancel = None;
            let older = r.epoch < job.epoch || job.agent.as_ref() != Some(agent);
            if msg.body.is_terminal() {
                outbox::complete_run(&mut tx, agent, job.id, r.epoch, now).await?;
            } else if older {
                // The old machine still runs a job that moved on: stop it, so a part is
                // never made twice.
                let stop = Message::stamped(Command::Cancel(JobCommand {
                    job: job.id,
                    epoch: r.epoch,
                    machine: r.machine.clone(),
                }));
                cancel = Some(
                    outbox::enqueue(
                        &mut tx,
                        agent,
                        "cancel",
                        Some((job.id, r.epoch)),
                        Some(&r.machine),
                        &stop,
                        now,
                    )
                    .await?,
                );
            }
            tx.commit().await?;
            return Ok(EventOutcome::Stale {
                job: Box::new(job),
                cancel,
            });
        }
        if (r.seq as i64) <= job.last_seq {
            tx.commit().await?;
            return Ok(EventOutcome::Replayed);
        }
        let guard = (job.state, job.epoch);
        job.last_seq = r.seq as i64;
        let (target, detail) = match &msg.body {
            Event::Accepted(_) => (JobState::Accepted, None),
            Event::Rejected(e) => (JobState::Rejected, Some(e.message.clone())),
            Event::Transferring(_) => (JobState::Transferring, None),
            Event::Started(_) | Event::Resumed(_) => (JobState::Running, None),
            Event::Progress(p) => {
                job.progress = Some(p.percent);
                (JobState::Running, None)
            }
            Event::Paused(_) => (JobState::Paused, None),
            Event::Completed(_) => {
                job.progress = Some(100.0);
                (JobState::Completed, None)
            }
            Event::Failed(f) => (JobState::Failed, Some(f.reason.clone())),
            Event::Cancelled(_) => (JobState::Cancelled, None),
            Event::CommandError(_) | Event::Unknown { .. } => {
                tx.commit().await?;
                return Ok(EventOutcome::NoJob);
            }
        };
        let cause = format!("agent:{}", msg.body_type());
        // Its own agent is back with the same epoch after the job was lost (and maybe
        // requeued but not yet reassigned): its report wins.
        if matches!(job.state, JobState::Queued | JobState::Lost) {
            *moved = true;
            move_job(
                &mut tx,
                &mut job,
                guard.1,
                JobState::Assigned,
                "agent:reclaimed",
                Some("its agent reported the same epoch".into()),
                now,
            )
            .await?;
        }
        if target == job.state {
            write_job(&mut tx, &job, (job.state, job.epoch)).await?;
            outbox::answered(&mut tx, &job, &msg.body, now).await?;
            self.commit(tx).await?;
            return Ok(EventOutcome::Applied(Box::new(job)));
        }
        if !job.state.can_move_to(target) {
            self.commit(tx).await?;
            return Ok(EventOutcome::Ignored(Box::new(job)));
        }
        let epoch = job.epoch;
        let was_on_machine = job.state.is_on_machine();
        move_job(&mut tx, &mut job, epoch, target, &cause, detail, now).await?;
        if target == JobState::Rejected {
            job.rejections += 1;
            job.excluded.push(format!("{agent}/{}", r.machine));
            let (next, why) = if job.rejections >= max_rejections {
                (
                    JobState::Failed,
                    Some(format!("rejected by {} machines", job.rejections)),
                )
            } else {
                (JobState::Queued, None)
            };
            move_job(&mut tx, &mut job, epoch, next, "dispatch:requeue", why, now).await?;
        }
        // Between states on a machine (accepted, running, paused) nothing the scheduler
        // reads changes; leaving the machine does.
        *moved |= was_on_machine != job.state.is_on_machine();
        outbox::answered(&mut tx, &job, &msg.body, now).await?;
        self.commit(tx).await?;
        Ok(EventOutcome::Applied(Box::new(job)))
    }

    /// Marks jobs `lost` whose agent has been offline since before `offline_before` (Unix
    /// ms), then requeues or fails them per `policy`; returns the jobs as they end up.
    pub async fn expire_lost_jobs(
        &self,
        offline_before: i64,
        policy: LostPolicy,
        now: i64,
    ) -> Result<Vec<Job>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "SELECT j.id AS id FROM jobs j JOIN agents a ON a.id = j.agent \
             WHERE j.state IN {ON_MACHINE} AND a.online = 0 AND a.changed_ms <= $1"
        )))
        .bind(offline_before)
        .fetch_all(self.pool())
        .await?;
        let mut out = Vec::new();
        for row in rows {
            let id: String = row.try_get("id")?;
            let id: JobId = id.parse().map_err(|e| corrupt("jobs.id", e))?;
            let mut tx = self.pool().begin().await?;
            let mut job = load_required(&mut tx, id).await?;
            if !job.state.is_on_machine() {
                tx.rollback().await?;
                continue;
            }
            let epoch = job.epoch;
            move_job(
                &mut tx,
                &mut job,
                epoch,
                JobState::Lost,
                "dispatch:grace-expired",
                Some("agent offline beyond the grace period".into()),
                now,
            )
            .await?;
            // Someone asked to cancel it while its agent was away: honour that rather
            // than running it elsewhere.
            let (next, cause) = if outbox::cancel_pending(&mut tx, job.id).await? {
                (JobState::Cancelled, "api:cancel")
            } else {
                match policy {
                    LostPolicy::Requeue => (JobState::Queued, "dispatch:lost-policy"),
                    LostPolicy::Fail => (JobState::Failed, "dispatch:lost-policy"),
                }
            };
            move_job(&mut tx, &mut job, epoch, next, cause, None, now).await?;
            // Commands for the lost run must not reach the agent when it reconnects.
            outbox::complete_job(&mut tx, job.id, now).await?;
            self.commit(tx).await?;
            self.note_with(|c| {
                c.plan_inputs = true;
                if let (Some(a), Some(m)) = (&job.agent, &job.machine) {
                    c.machine(a, m, MachineChange::Reread);
                }
            });
            out.push(job);
        }
        Ok(out)
    }

    /// Number of jobs per state (states without jobs are absent).
    pub async fn count_jobs_by_state(&self) -> Result<Vec<(JobState, u64)>, StoreError> {
        let rows = sqlx::query("SELECT state, COUNT(*) AS n FROM jobs GROUP BY state")
            .fetch_all(self.pool())
            .await?;
        rows.iter()
            .map(|r| {
                let s: String = r.try_get("state")?;
                let n: i64 = r.try_get("n")?;
                Ok((s.parse().map_err(|e| corrupt("jobs.state", e))?, n as u64))
            })
            .collect()
    }
}

trait BodyType {
    fn body_type(&self) -> &str;
}

impl BodyType for Message<Event> {
    fn body_type(&self) -> &str {
        use munifab_protocol::Family;
        self.body.type_name()
    }
}
