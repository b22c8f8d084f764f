//! Agents and their machines, as last reported.

use munifab_protocol::{
    AgentId, AgentStatus, Capabilities, JobId, MachineId, MachineState, MachineStatus, Presence,
};
use serde::Serialize;
use sqlx::any::AnyRow;
use sqlx::{AssertSqlSafe, Row};

use super::jobs::ON_MACHINE;
use super::{MachineChange, Store, StoreError, corrupt};

/// An agent (one workshop PC).
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct AgentRecord {
    /// Agent id.
    #[schema(value_type = String)]
    pub id: AgentId,
    /// Site (fablab) it belongs to.
    pub site: Option<String>,
    /// Whether its last status said online.
    pub online: bool,
    /// Agent software version.
    pub version: Option<String>,
    /// Last status received (Unix ms).
    pub last_seen_ms: i64,
    /// When `online` last changed (Unix ms).
    pub changed_ms: i64,
}

/// A machine and its live state.
#[derive(Debug, Clone, PartialEq, Serialize, utoipa::ToSchema)]
pub struct MachineRecord {
    /// Its agent.
    #[schema(value_type = String)]
    pub agent: AgentId,
    /// Machine id (unique within the agent).
    #[schema(value_type = String)]
    pub machine: MachineId,
    /// Site of its agent.
    pub site: Option<String>,
    /// Whether its agent is online.
    pub agent_online: bool,
    /// Last reported state.
    #[schema(value_type = String)]
    pub state: MachineStatus,
    /// Last reported capabilities.
    #[schema(value_type = Object)]
    pub capabilities: Capabilities,
    /// Job it reported running.
    #[schema(value_type = Option<String>)]
    pub job: Option<JobId>,
    /// Epoch of that job.
    pub epoch: Option<u64>,
    /// Free-text detail from the agent.
    pub detail: Option<String>,
    /// Last report (Unix ms).
    pub updated_ms: i64,
    /// The coordinator's own readiness record, which is what the scheduler trusts:
    /// `ready`, `stock_loaded_and_zeroed` or `needs_attention` (none before the first
    /// confirmation or job end).
    pub readiness: Option<String>,
    /// Who confirmed it ready (none while it needs attention).
    pub ready_by: Option<String>,
    /// When the readiness last changed (Unix ms).
    pub ready_ms: Option<i64>,
}

fn status_str(s: MachineStatus) -> String {
    serde_json::to_value(s)
        .ok()
        .and_then(|v| v.as_str().map(str::to_string))
        .expect("machine states serialize as strings")
}

fn status_parse(s: String) -> Result<MachineStatus, StoreError> {
    serde_json::from_value(serde_json::Value::String(s)).map_err(|e| corrupt("machines.state", e))
}

fn agent_from_row(row: &AnyRow) -> Result<AgentRecord, StoreError> {
    let id: String = row.try_get("id")?;
    Ok(AgentRecord {
        id: AgentId::new(id).map_err(|e| corrupt("agents.id", e))?,
        site: row.try_get("site")?,
        online: row.try_get::<i64, _>("online")? != 0,
        version: row.try_get("version")?,
        last_seen_ms: row.try_get("last_seen_ms")?,
        changed_ms: row.try_get("changed_ms")?,
    })
}

const MACHINE_SELECT: &str = "SELECT m.agent AS agent, m.machine AS machine, m.state AS state, \
    m.capabilities AS capabilities, m.job AS job, m.epoch AS epoch, m.detail AS detail, \
    m.updated_ms AS updated_ms, m.readiness AS readiness, m.ready_by AS ready_by, \
    m.ready_ms AS ready_ms, a.site AS site, a.online AS online \
    FROM machines m JOIN agents a ON a.id = m.agent";

fn machine_from_row(row: &AnyRow) -> Result<MachineRecord, StoreError> {
    let agent: String = row.try_get("agent")?;
    let machine: String = row.try_get("machine")?;
    let caps: String = row.try_get("capabilities")?;
    let job: Option<String> = row.try_get("job")?;
    Ok(MachineRecord {
        agent: AgentId::new(agent).map_err(|e| corrupt("machines.agent", e))?,
        machine: MachineId::new(machine).map_err(|e| corrupt("machines.machine", e))?,
        site: row.try_get("site")?,
        agent_online: row.try_get::<i64, _>("online")? != 0,
        state: status_parse(row.try_get("state")?)?,
        capabilities: serde_json::from_str(&caps)
            .map_err(|e| corrupt("machines.capabilities", e))?,
        job: job
            .map(|j| j.parse())
            .transpose()
            .map_err(|e| corrupt("machines.job", e))?,
        epoch: row.try_get::<Option<i64>, _>("epoch")?.map(|e| e as u64),
        detail: row.try_get("detail")?,
        updated_ms: row.try_get("updated_ms")?,
        readiness: row.try_get("readiness")?,
        ready_by: row.try_get("ready_by")?,
        ready_ms: row.try_get("ready_ms")?,
    })
}

impl Store {
    /// Makes an agent known (offline) before it ever connects; sets its site if given.
    pub async fn register_agent(
        &self,
        agent: &AgentId,
        site: Option<&str>,
        now: i64,
    ) -> Result<(), StoreError> {
        sqlx::query(
            "INSERT INTO agents (id, site, online, version, last_seen_ms, changed_ms) \
             VALUES ($1, $2, 0, NULL, $3, $3) \
             ON CONFLICT (id) DO UPDATE SET site = COALESCE(excluded.site, agents.site)",
        )
        .bind(agent.to_string())
        .bind(site.map(str::to_string))
        .bind(now)
        .execute(self.pool())
        .await?;
        self.note_with(|c| c.agent(agent));
        self.bump_revision();
        Ok(())
    }

    /// Records an agent's status. Returns true when it came online (it was offline or
    /// unknown), which is when its pending commands must be re-sent. The site an agent
    /// announces is taken only if none was registered for it.
    pub async fn set_agent_status(
        &self,
        agent: &AgentId,
        status: &AgentStatus,
        now: i64,
    ) -> Result<bool, StoreError> {
        let online = status.state == Presence::Online;
        let mut tx = self.pool().begin().await?;
        let before: Option<i64> = sqlx::query("SELECT online FROM agents WHERE id = $1")
            .bind(agent.to_string())
            .fetch_optional(&mut *tx)
            .await?
            .map(|r| r.try_get("online"))
            .transpose()?;
        let changed = before.is_none_or(|b| (b != 0) != online);
        sqlx::query(
            "INSERT INTO agents (id, site, online, version, last_seen_ms, changed_ms) \
             VALUES ($1, $2, $3, $4, $5, $5) \
             ON CONFLICT (id) DO UPDATE SET online = excluded.online, \
             version = excluded.version, last_seen_ms = excluded.last_seen_ms, \
             site = COALESCE(agents.site, excluded.site)",
        )
        .bind(agent.to_string())
        .bind(status.site.clone())
        .bind(i64::from(online))
        .bind(status.version.clone())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if changed {
            sqlx::query("UPDATE agents SET changed_ms = $1 WHERE id = $2")
                .bind(now)
                .bind(agent.to_string())
                .execute(&mut *tx)
                .await?;
        }
        self.commit(tx).await?;
        self.note_with(|c| c.agent(agent));
        Ok(changed && online)
    }

    /// Records a machine's reported state.
    pub async fn set_machine_state(
        &self,
        agent: &AgentId,
        state: &MachineState,
        now: i64,
    ) -> Result<(), StoreError> {
        let mut tx = self.pool().begin().await?;
        // A machine is listed through its agent; an agent first heard of here is offline
        // until its status says otherwise.
        sqlx::query(
            "INSERT INTO agents (id, site, online, version, last_seen_ms, changed_ms) \
             VALUES ($1, NULL, 0, NULL, $2, $2) ON CONFLICT (id) DO NOTHING",
        )
        .bind(agent.to_string())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        sqlx::query(
            "INSERT INTO machines (agent, machine, state, capabilities, job, epoch, detail, \
             updated_ms) VALUES ($1, $2, $3, $4, $5, $6, $7, $8) \
             ON CONFLICT (agent, machine) DO UPDATE SET state = excluded.state, \
             capabilities = excluded.capabilities, job = excluded.job, epoch = excluded.epoch, \
             detail = excluded.detail, updated_ms = excluded.updated_ms",
        )
        .bind(agent.to_string())
        .bind(state.machine.to_string())
        .bind(status_str(state.state))
        .bind(serde_json::to_string(&state.capabilities).expect("capabilities serialize"))
        .bind(state.job.as_ref().map(|j| j.job.to_string()))
        .bind(state.job.as_ref().map(|j| j.epoch as i64))
        .bind(state.detail.clone())
        .bind(now)
        .execute(&mut *tx)
        .await?;
        if state.state == MachineStatus::Ready {
            Store::complete_clear(&mut tx, agent, &state.machine, now).await?;
            // An agent configured not to wait for people confirms its machine itself.
            if !state.needs_confirmation {
                sqlx::query(
                    "UPDATE machines SET readiness = 'stock_loaded_and_zeroed', ready_by = $1, \
                     ready_ms = $2 WHERE agent = $3 AND machine = $4",
                )
                .bind(format!("agent:{agent}"))
                .bind(now)
                .bind(agent.to_string())
                .bind(state.machine.to_string())
                .execute(&mut *tx)
                .await?;
            }
        }
        self.commit(tx).await?;
        self.note_with(|c| c.machine(agent, &state.machine, MachineChange::Reread));
        Ok(())
    }

    /// One agent.
    pub async fn agent(&self, id: &AgentId) -> Result<AgentRecord, StoreError> {
        let row = sqlx::query(
            "SELECT id, site, online, version, last_seen_ms, changed_ms FROM agents WHERE id = $1",
        )
        .bind(id.to_string())
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "agent",
            id: id.to_string(),
        })?;
        agent_from_row(&row)
    }

    /// Agents, optionally of one site, by id.
    pub async fn list_agents(&self, site: Option<&str>) -> Result<Vec<AgentRecord>, StoreError> {
        let rows = sqlx::query(
            "SELECT id, site, online, version, last_seen_ms, changed_ms FROM agents \
             WHERE ($1 IS NULL OR site = $1) ORDER BY id",
        )
        .bind(site.map(str::to_string))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(agent_from_row).collect()
    }

    /// Machines with live state, optionally of one site.
    pub async fn list_machines(
        &self,
        site: Option<&str>,
    ) -> Result<Vec<MachineRecord>, StoreError> {
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{MACHINE_SELECT} WHERE ($1 IS NULL OR a.site = $1) ORDER BY m.agent, m.machine"
        )))
        .bind(site.map(str::to_string))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(machine_from_row).collect()
    }

    /// One machine.
    pub async fn machine(
        &self,
        agent: &AgentId,
        machine: &MachineId,
    ) -> Result<MachineRecord, StoreError> {
        let row = sqlx::query(AssertSqlSafe(format!(
            "{MACHINE_SELECT} WHERE m.agent = $1 AND m.machine = $2"
        )))
        .bind(agent.to_string())
        .bind(machine.to_string())
        .fetch_optional(self.pool())
        .await?
        .ok_or_else(|| StoreError::NotFound {
            what: "machine",
            id: format!("{agent}/{machine}"),
        })?;
        machine_from_row(&row)
    }

    /// Machines a job could start on now: agent online, machine reported `ready`, and no
    /// job of ours on it; longest-ready first.
    pub async fn free_machines(&self) -> Result<Vec<MachineRecord>, StoreError> {
        self.free_machines_page(u32::MAX, 0).await
    }

    /// One page of [`Store::free_machines`], so placement reads only as many machines as
    /// it needs (with many idle machines, the first page usually places every job).
    pub async fn free_machines_page(
        &self,
        limit: u32,
        offset: u64,
    ) -> Result<Vec<MachineRecord>, StoreError> {
        let limit = i64::from(limit.min(i32::MAX as u32));
        let rows = sqlx::query(AssertSqlSafe(format!(
            "{MACHINE_SELECT} WHERE a.online = 1 AND m.state = 'ready' AND NOT EXISTS \
             (SELECT 1 FROM jobs j WHERE j.agent = m.agent AND j.machine = m.machine \
              AND (j.state IN {ON_MACHINE} OR j.state = 'lost')) \
             ORDER BY m.updated_ms, m.agent, m.machine LIMIT {limit} OFFSET {offset}"
        )))
        .fetch_all(self.pool())
        .await?;
        rows.iter().map(machine_from_row).collect()
    }

    /// Number of machines per reported state; machines of offline agents count as offline.
    pub async fn count_machines_by_state(&self) -> Result<Vec<(MachineStatus, u64)>, StoreError> {
        let rows = sqlx::query(
            "SELECT CASE WHEN a.online = 1 THEN m.state ELSE 'offline' END AS state, \
             COUNT(*) AS n FROM machines m JOIN agents a ON a.id = m.agent \
             GROUP BY CASE WHEN a.online = 1 THEN m.state ELSE 'offline' END",
        )
        .fetch_all(self.pool())
        .await?;
        rows.iter()
            .map(|r| {
                let n: i64 = r.try_get("n")?;
                Ok((status_parse(r.try_get("state")?)?, n as u64))
            })
            .collect()
    }
}
