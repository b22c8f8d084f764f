//! Commands to agents, kept in the database until the agent answers them.

use munifab_protocol::{AgentId, Command, Event, JobId, MachineId, Message, Topic};
use sqlx::{AnyConnection, Row};

use super::jobs::Job;
use super::{Store, StoreError, corrupt};

/// A command waiting in the outbox: published when its agent is online, again on every
/// reconnect, until the agent's answer marks it done.
#[derive(Debug, Clone, PartialEq)]
pub struct QueuedCommand {
    /// Outbox row id (increasing).
    pub id: i64,
    /// Addressee.
    pub agent: AgentId,
    /// The unsigned message JSON (signed at publication with the agent's key).
    pub json: Vec<u8>,
}

impl QueuedCommand {
    /// The topic it is published on.
    pub fn topic(&self) -> Topic {
        Topic::Commands(self.agent.clone())
    }
}

/// A command to put in the outbox without a job transition (e.g. `clear`).
#[derive(Debug, Clone, PartialEq)]
pub struct OutboxCommand {
    /// Addressee.
    pub agent: AgentId,
    /// The machine it concerns.
    pub machine: MachineId,
    /// The message.
    pub message: Message<Command>,
}

pub(super) async fn enqueue(
    conn: &mut AnyConnection,
    agent: &AgentId,
    kind: &str,
    run: Option<(JobId, u64)>,
    machine: Option<&MachineId>,
    msg: &Message<Command>,
    now: i64,
) -> Result<QueuedCommand, StoreError> {
    let json = msg.to_json();
    let row = sqlx::query(
        "INSERT INTO outbox (agent, kind, job, epoch, machine, message, created_ms) \
         VALUES ($1, $2, $3, $4, $5, $6, $7) RETURNING id",
    )
    .bind(agent.to_string())
    .bind(kind.to_string())
    .bind(run.map(|(j, _)| j.to_string()))
    .bind(run.map(|(_, e)| e as i64))
    .bind(machine.map(|m| m.to_string()))
    .bind(String::from_utf8(json.clone()).expect("JSON is UTF-8"))
    .bind(now)
    .fetch_one(&mut *conn)
    .await?;
    Ok(QueuedCommand {
        id: row.try_get("id")?,
        agent: agent.clone(),
        json,
    })
}

/// Everything for a job is settled (it ended, or was lost and moved on).
/// Whether a cancel for `job` is waiting for its agent.
pub(super) async fn cancel_pending(
    conn: &mut AnyConnection,
    job: JobId,
) -> Result<bool, StoreError> {
    let row =
        sqlx::query("SELECT id FROM outbox WHERE job = $1 AND kind = 'cancel' AND done_ms IS NULL")
            .bind(job.to_string())
            .fetch_optional(&mut *conn)
            .await?;
    Ok(row.is_some())
}

pub(super) async fn complete_job(
    conn: &mut AnyConnection,
    job: JobId,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query("UPDATE outbox SET done_ms = $1 WHERE job = $2 AND done_ms IS NULL")
        .bind(now)
        .bind(job.to_string())
        .execute(&mut *conn)
        .await?;
    Ok(())
}

/// Everything sent to `agent` for one run (job, epoch) is settled.
pub(super) async fn complete_run(
    conn: &mut AnyConnection,
    agent: &AgentId,
    job: JobId,
    epoch: u64,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE outbox SET done_ms = $1 WHERE agent = $2 AND job = $3 AND epoch = $4 \
         AND done_ms IS NULL",
    )
    .bind(now)
    .bind(agent.to_string())
    .bind(job.to_string())
    .bind(epoch as i64)
    .execute(&mut *conn)
    .await?;
    Ok(())
}

async fn complete_kind(
    conn: &mut AnyConnection,
    job: &Job,
    kind: &str,
    now: i64,
) -> Result<(), StoreError> {
    sqlx::query(
        "UPDATE outbox SET done_ms = $1 WHERE job = $2 AND epoch = $3 AND kind = $4 \
         AND done_ms IS NULL",
    )
    .bind(now)
    .bind(job.id.to_string())
    .bind(job.epoch as i64)
    .bind(kind.to_string())
    .execute(&mut *conn)
    .await?;
    Ok(())
}

/// Marks the commands an agent event answers: any event of the run answers its
/// `assign`; `paused`/`resumed` answer `pause`/`resume`; an end answers everything.
pub(super) async fn answered(
    conn: &mut AnyConnection,
    job: &Job,
    event: &Event,
    now: i64,
) -> Result<(), StoreError> {
    if event.is_terminal() || job.state.is_terminal() {
        return complete_job(conn, job.id, now).await;
    }
    complete_kind(conn, job, "assign", now).await?;
    match event {
        Event::Paused(_) => complete_kind(conn, job, "pause", now).await,
        Event::Resumed(_) => complete_kind(conn, job, "resume", now).await,
        _ => Ok(()),
    }
}

impl Store {
    /// Forgets what only guards against very late repeats, older than `before_ms`: the ids
    /// of agent messages already applied and the commands agents answered. Returns how many
    /// of each were deleted. A message repeated after its id is forgotten is still checked
    /// by the job lifecycle (a finished job cannot finish again; an older epoch moves
    /// nothing), so forgetting costs no double count; it only keeps both tables from
    /// growing for ever.
    pub async fn prune_answered(&self, before_ms: i64) -> Result<(u64, u64), StoreError> {
        let mut tx = self.pool().begin().await?;
        let seen = sqlx::query("DELETE FROM seen_messages WHERE at_ms < $1")
            .bind(before_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        let answered = sqlx::query("DELETE FROM outbox WHERE done_ms IS NOT NULL AND done_ms < $1")
            .bind(before_ms)
            .execute(&mut *tx)
            .await?
            .rows_affected();
        // Bookkeeping no answer of the API shows: the revision stays.
        tx.commit().await?;
        Ok((seen, answered))
    }

    /// Puts a command that moves no job (e.g. `clear`) in the outbox. The API does not show
    /// the outbox, so the store's revision stays.
    pub async fn enqueue_command(
        &self,
        cmd: &OutboxCommand,
        kind: &str,
        now: i64,
    ) -> Result<QueuedCommand, StoreError> {
        let mut conn = self.pool().acquire().await?;
        enqueue(
            &mut conn,
            &cmd.agent,
            kind,
            None,
            Some(&cmd.machine),
            &cmd.message,
            now,
        )
        .await
    }

    /// Commands for `agent` not yet answered, oldest first.
    pub async fn pending_commands(
        &self,
        agent: &AgentId,
    ) -> Result<Vec<QueuedCommand>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, message FROM outbox WHERE agent = $1 AND done_ms IS NULL ORDER BY id",
        )
        .bind(agent.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let json: String = r.try_get("message")?;
                Ok(QueuedCommand {
                    id: r.try_get("id")?,
                    agent: agent.clone(),
                    json: json.into_bytes(),
                })
            })
            .collect()
    }

    /// Commands for `agent` not yet answered and never published, oldest first.
    pub async fn unsent_commands(&self, agent: &AgentId) -> Result<Vec<QueuedCommand>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, message FROM outbox WHERE agent = $1 AND done_ms IS NULL \
             AND sent_ms IS NULL ORDER BY id",
        )
        .bind(agent.to_string())
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let json: String = r.try_get("message")?;
                Ok(QueuedCommand {
                    id: r.try_get("id")?,
                    agent: agent.clone(),
                    json: json.into_bytes(),
                })
            })
            .collect()
    }

    /// Records that a command went out to the broker (not shown by the API: the store's
    /// revision stays).
    pub async fn mark_sent(&self, id: i64, now: i64) -> Result<(), StoreError> {
        sqlx::query("UPDATE outbox SET sent_ms = $1 WHERE id = $2")
            .bind(now)
            .bind(id)
            .execute(self.pool())
            .await?;
        Ok(())
    }

    /// Marks `clear` commands for a machine answered (it reported ready).
    pub(super) async fn complete_clear(
        conn: &mut AnyConnection,
        agent: &AgentId,
        machine: &MachineId,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "UPDATE outbox SET done_ms = $1 WHERE agent = $2 AND machine = $3 \
             AND kind = 'clear' AND done_ms IS NULL",
        )
        .bind(now)
        .bind(agent.to_string())
        .bind(machine.to_string())
        .execute(&mut *conn)
        .await?;
        Ok(())
    }

    /// Agents that are online and have unanswered commands never published.
    pub async fn agents_with_unsent_commands(&self) -> Result<Vec<AgentId>, StoreError> {
        let rows = sqlx::query(
            "SELECT DISTINCT o.agent AS agent FROM outbox o JOIN agents a ON a.id = o.agent \
             WHERE o.done_ms IS NULL AND o.sent_ms IS NULL AND a.online = 1",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let a: String = r.try_get("agent")?;
                AgentId::new(a).map_err(|e| corrupt("outbox.agent", e))
            })
            .collect()
    }
}
