//! The scheduler's input: a plain-data picture of the queue, the fleet, the pools and the
//! accounting at one instant. The store builds it from its tables; nothing here reads a
//! database or a clock.

use std::collections::HashSet;

use munifab_protocol::{AgentId, Capabilities, JobId, MachineId, Process, Requirements};
use serde::{Deserialize, Serialize};
use time::{Duration, OffsetDateTime};

use super::ids::{CoopId, PoolId, RegionId, SiteId};

/// Everything [`plan`](super::plan) looks at.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Jobs in state `queued`.
    pub jobs: Vec<QueuedJob>,
    /// Machines, busy or not (the plan itself skips offline, busy and unconfirmed ones;
    /// the store's snapshot for dispatch leaves them out in the first place).
    pub machines: Vec<MachineSnapshot>,
    /// Every site referenced by machines or jobs.
    pub sites: Vec<Site>,
    /// Every pool.
    pub pools: Vec<Pool>,
    /// Machine-seconds each cooperative used in the fair-share window (see [`Usage`]).
    pub usage: Vec<Usage>,
    /// Per-cooperative quotas; a cooperative without one is not limited.
    pub quotas: Vec<Quota>,
    /// Tunables.
    pub policy: Policy,
}

/// A machine is addressed by its agent and its id within that agent.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct MachineKey {
    /// The agent (workshop PC) the machine is plugged into.
    pub agent: AgentId,
    /// The machine's id within its agent.
    pub machine: MachineId,
}

impl std::fmt::Display for MachineKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.agent, self.machine)
    }
}

/// Why a string is not a machine address `agent/machine`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MachineKeyError {
    /// No `/` between agent and machine.
    #[error("machine address {0:?} is not of the form agent/machine")]
    NoSeparator(String),
    /// The agent part is not a valid id.
    #[error("agent in {text:?}: {source}")]
    Agent {
        /// The whole address.
        text: String,
        /// What is wrong with the agent id.
        source: munifab_protocol::IdError,
    },
    /// The machine part is not a valid id.
    #[error("machine in {text:?}: {source}")]
    Machine {
        /// The whole address.
        text: String,
        /// What is wrong with the machine id.
        source: munifab_protocol::IdError,
    },
}

impl std::str::FromStr for MachineKey {
    type Err = MachineKeyError;

    /// Parses the `agent/machine` form that [`Display`](std::fmt::Display) writes.
    fn from_str(s: &str) -> Result<Self, MachineKeyError> {
        let (agent, machine) = s
            .split_once('/')
            .ok_or_else(|| MachineKeyError::NoSeparator(s.to_string()))?;
        Ok(Self {
            agent: AgentId::new(agent).map_err(|source| MachineKeyError::Agent {
                text: s.to_string(),
                source,
            })?,
            machine: MachineId::new(machine).map_err(|source| MachineKeyError::Machine {
                text: s.to_string(),
                source,
            })?,
        })
    }
}

/// A job waiting for a machine.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct QueuedJob {
    /// The job.
    pub id: JobId,
    /// The cooperative that submitted it (and is charged for it).
    pub cooperative: CoopId,
    /// What it needs, from the analysis of its G-code.
    pub requirements: Requirements,
    /// Higher runs first within the cooperative's share.
    pub priority: i32,
    /// When it entered the queue (age breaks priority ties; see [`Policy::starvation_after`]).
    #[serde(with = "time::serde::rfc3339")]
    pub submitted_at: OffsetDateTime,
    /// Expected machine time, from the analysis; charged to the cooperative's fair share and
    /// quota when the job is assigned.
    pub estimated_machine_seconds: u64,
    /// Where the part is wanted: machines at or near this site are preferred.
    pub delivery_site: SiteId,
    /// Machines whose agent rejected this job in preflight; never offered again.
    pub excluded_machines: Vec<MachineKey>,
}

/// Whether an operator has cleared a machine for the next job.
///
/// After every job a machine is `NeedsAttention` until an operator of its site confirms it
/// (or its agent is configured not to need confirmation). CNC jobs need more: the operator
/// must also confirm that stock is loaded and the work origin zeroed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Readiness {
    /// The last part may still be on the bed; nothing may start.
    NeedsAttention,
    /// Bed cleared: FDM and laser jobs may start.
    Ready,
    /// Bed cleared, stock loaded and zeroed: any job may start, CNC included.
    StockLoadedAndZeroed,
}

impl Readiness {
    /// Whether a job of `process` may start on a machine in this state.
    pub fn admits(self, process: Process) -> bool {
        match self {
            Readiness::NeedsAttention => false,
            Readiness::Ready => process != Process::Cnc,
            Readiness::StockLoadedAndZeroed => true,
        }
    }
}

/// One machine as the scheduler sees it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct MachineSnapshot {
    /// Its address.
    pub key: MachineKey,
    /// Where it stands.
    pub site: SiteId,
    /// Its agent is connected and the machine reports a usable state.
    pub online: bool,
    /// Operator confirmation.
    pub readiness: Readiness,
    /// What it can do (from its retained state).
    pub capabilities: Capabilities,
    /// The material physically on it now (spool, sheet), upper case; preferred for jobs
    /// that need exactly this material, to save a change-over.
    pub loaded_material: Option<String>,
    /// When its last job ended; machines idle the longest are preferred. `None`: never used.
    #[serde(default, with = "time::serde::rfc3339::option")]
    pub last_job_ended_at: Option<OffsetDateTime>,
    /// It has a job assigned or running.
    pub busy: bool,
}

/// A site (fablab).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Site {
    /// Its id.
    pub id: SiteId,
    /// The region it belongs to.
    pub region: RegionId,
    /// Where it is.
    pub location: GeoPoint,
}

/// A point on the earth in degrees (WGS 84).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct GeoPoint {
    /// Latitude, degrees north.
    pub lat_deg: f64,
    /// Longitude, degrees east.
    pub lon_deg: f64,
}

impl GeoPoint {
    /// Great-circle distance in kilometres (haversine, mean earth radius).
    pub fn distance_km(self, other: GeoPoint) -> f64 {
        const EARTH_RADIUS_KM: f64 = 6371.0088;
        let (la1, la2) = (self.lat_deg.to_radians(), other.lat_deg.to_radians());
        let dla = la2 - la1;
        let dlo = (other.lon_deg - self.lon_deg).to_radians();
        let h = (dla / 2.0).sin().powi(2) + la1.cos() * la2.cos() * (dlo / 2.0).sin().powi(2);
        2.0 * EARTH_RADIUS_KM * h.sqrt().min(1.0).asin()
    }
}

/// A pool: machines shared by cooperatives, each with a weight.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pool {
    /// Its id.
    pub id: PoolId,
    /// Machines contributed to it.
    pub machines: Vec<MachineKey>,
    /// Cooperatives that may use it.
    pub members: Vec<PoolMember>,
}

/// A cooperative's membership in a pool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PoolMember {
    /// The member.
    pub cooperative: CoopId,
    /// Its share of the pool relative to the other members' weights. Zero means "may use
    /// idle machines, entitled to nothing": such a member always queues behind the others.
    pub weight: u32,
}

/// Machine time a cooperative used recently.
///
/// The store sums the ledger's machine-seconds of the cooperative's jobs that ended in the
/// fair-share window, plus the estimates of its jobs assigned or running now (they are not in
/// the ledger yet, but they occupy machines). The window slides, so old use is forgiven.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Usage {
    /// The cooperative.
    pub cooperative: CoopId,
    /// Machine-seconds in the window.
    pub machine_seconds: u64,
}

/// A cooperative's budget of machine time for the current period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Quota {
    /// The cooperative.
    pub cooperative: CoopId,
    /// The budget.
    pub machine_hours_per_period: u64,
    /// Machine-seconds used in the current period, running jobs' estimates included.
    pub used_machine_seconds: u64,
}

impl Quota {
    /// The budget in machine-seconds.
    pub fn limit_machine_seconds(&self) -> u64 {
        self.machine_hours_per_period.saturating_mul(3600)
    }
}

/// Scheduler tunables.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Policy {
    /// A job that has waited this long is considered before every younger job, whatever
    /// its cooperative's share or its priority (see the starvation argument on
    /// [`plan`](super::plan)).
    #[serde(rename = "starvation_after_secs", with = "whole_seconds")]
    pub starvation_after: Duration,
}

/// Durations in configuration and JSON are whole seconds.
mod whole_seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_i64(d.whole_seconds())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        i64::deserialize(d).map(Duration::seconds)
    }
}

impl Default for Policy {
    fn default() -> Self {
        Self {
            starvation_after: Duration::hours(48),
        }
    }
}

/// An inconsistency in a snapshot: the store built it wrong.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SnapshotError {
    /// Two machines share an address.
    #[error("machine {0} appears twice")]
    DuplicateMachine(MachineKey),
    /// Two jobs share an id.
    #[error("job {0} appears twice")]
    DuplicateJob(JobId),
    /// Two sites share an id.
    #[error("site {0} appears twice")]
    DuplicateSite(SiteId),
    /// Two pools share an id.
    #[error("pool {0} appears twice")]
    DuplicatePool(PoolId),
    /// A machine stands at a site the snapshot does not describe.
    #[error("machine {machine} stands at unknown site {site}")]
    UnknownMachineSite {
        /// The machine.
        machine: MachineKey,
        /// The missing site.
        site: SiteId,
    },
    /// A job is to be delivered to a site the snapshot does not describe.
    #[error("job {job} is to be delivered to unknown site {site}")]
    UnknownDeliverySite {
        /// The job.
        job: JobId,
        /// The missing site.
        site: SiteId,
    },
    /// A site's coordinates are not a point on the earth.
    #[error("site {0} has coordinates outside -90..=90 / -180..=180 degrees")]
    BadCoordinates(SiteId),
}

impl Snapshot {
    /// Checks that ids are unique and references resolve.
    ///
    /// [`plan`](super::plan) tolerates a snapshot that fails this (machines at unknown sites
    /// are never chosen, unknown delivery sites lose the locality preference), but a store
    /// should call it in its tests so that such a snapshot is never built.
    pub fn validate(&self) -> Result<(), SnapshotError> {
        let mut sites = HashSet::new();
        for s in &self.sites {
            if !sites.insert(&s.id) {
                return Err(SnapshotError::DuplicateSite(s.id.clone()));
            }
            let GeoPoint { lat_deg, lon_deg } = s.location;
            if !(-90.0..=90.0).contains(&lat_deg) || !(-180.0..=180.0).contains(&lon_deg) {
                return Err(SnapshotError::BadCoordinates(s.id.clone()));
            }
        }
        let mut machines = HashSet::new();
        for m in &self.machines {
            if !machines.insert(&m.key) {
                return Err(SnapshotError::DuplicateMachine(m.key.clone()));
            }
            if !sites.contains(&m.site) {
                return Err(SnapshotError::UnknownMachineSite {
                    machine: m.key.clone(),
                    site: m.site.clone(),
                });
            }
        }
        let mut jobs = HashSet::new();
        for j in &self.jobs {
            if !jobs.insert(j.id) {
                return Err(SnapshotError::DuplicateJob(j.id));
            }
            if !sites.contains(&j.delivery_site) {
                return Err(SnapshotError::UnknownDeliverySite {
                    job: j.id,
                    site: j.delivery_site.clone(),
                });
            }
        }
        let mut pools = HashSet::new();
        for p in &self.pools {
            if !pools.insert(&p.id) {
                return Err(SnapshotError::DuplicatePool(p.id.clone()));
            }
        }
        Ok(())
    }
}
