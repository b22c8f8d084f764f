//! Why a queued job is waiting: the same rules as [`plan`](super::plan), told for one job,
//! so a maker or a cooperative's coordinator can see what to change.

use munifab_protocol::{JobId, Unmet};
use serde::{Deserialize, Serialize};

use super::snapshot::{MachineKey, MachineSnapshot, Readiness, Snapshot};

/// The first thing that keeps a job from starting, checked in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum WaitReason {
    /// No pool lists the job's cooperative together with any machine.
    NoPool,
    /// Machines are in its pools, but none can run the job (see `closest_misfit`).
    NoMachineFits,
    /// The cooperative's quota left is smaller than the job's estimate.
    QuotaExhausted,
    /// Machines fit, but every one is busy, offline, waiting for its operator, or has
    /// rejected this job.
    MachinesUnavailable,
    /// A fitting machine is free and confirmed: the next plan places the job unless jobs
    /// ahead of it in fair-share order take those machines first.
    ReadyToStart,
}

/// What the scheduler sees for one queued job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Explanation {
    /// The verdict.
    pub reason: WaitReason,
    /// Machines in pools the job's cooperative may use.
    pub in_pools: usize,
    /// Of those, machines whose capabilities fit the job.
    pub fitting: usize,
    /// Fitting machines that are free, online, confirmed and have not rejected the job.
    pub available: usize,
    /// Fitting machines running or assigned a job.
    pub busy: usize,
    /// Fitting machines whose agent is offline.
    pub offline: usize,
    /// Fitting machines waiting for an operator (bed not cleared, or CNC stock not
    /// confirmed).
    pub awaiting_operator: usize,
    /// Fitting machines that rejected the job.
    pub rejected: usize,
    /// Machine-seconds of quota left, if the cooperative has a quota.
    pub quota_left_seconds: Option<u64>,
    /// When nothing fits: the machine in its pools with the fewest unmet requirements
    /// (then the smallest address), and what it lacks.
    pub closest_misfit: Option<(MachineKey, Vec<Unmet>)>,
}

/// Explains why `job` waits, from the same snapshot [`plan`](super::plan) uses. `None` if
/// the job is not in the snapshot's queue.
pub fn explain(snapshot: &Snapshot, job: JobId) -> Option<Explanation> {
    let job = snapshot.jobs.iter().find(|j| j.id == job)?;
    let usable = |m: &MachineSnapshot| {
        snapshot.pools.iter().any(|p| {
            p.machines.contains(&m.key)
                && p.members.iter().any(|c| c.cooperative == job.cooperative)
        })
    };
    let mut e = Explanation {
        reason: WaitReason::NoPool,
        in_pools: 0,
        fitting: 0,
        available: 0,
        busy: 0,
        offline: 0,
        awaiting_operator: 0,
        rejected: 0,
        quota_left_seconds: None,
        closest_misfit: None,
    };
    // Like `plan`, ignore machines at sites the snapshot does not describe.
    let known_site = |m: &MachineSnapshot| snapshot.sites.iter().any(|s| s.id == m.site);
    let mut machines: Vec<&MachineSnapshot> = snapshot
        .machines
        .iter()
        .filter(|m| known_site(m) && usable(m))
        .collect();
    machines.sort_by(|a, b| a.key.cmp(&b.key));
    machines.dedup_by(|a, b| a.key == b.key);
    for m in machines {
        e.in_pools += 1;
        let unmet = job.requirements.unmet_by(&m.capabilities);
        if !unmet.is_empty() {
            if e.closest_misfit
                .as_ref()
                .is_none_or(|(_, best)| unmet.len() < best.len())
            {
                e.closest_misfit = Some((m.key.clone(), unmet));
            }
            continue;
        }
        e.fitting += 1;
        if m.busy {
            e.busy += 1;
        } else if !m.online {
            e.offline += 1;
        } else if m.readiness == Readiness::NeedsAttention
            || !m.readiness.admits(job.requirements.process)
        {
            e.awaiting_operator += 1;
        } else if job.excluded_machines.contains(&m.key) {
            e.rejected += 1;
        } else {
            e.available += 1;
        }
    }
    if e.fitting > 0 {
        e.closest_misfit = None;
    }
    e.quota_left_seconds = snapshot
        .quotas
        .iter()
        .filter(|q| q.cooperative == job.cooperative)
        .map(|q| {
            q.limit_machine_seconds()
                .saturating_sub(q.used_machine_seconds)
        })
        .min();
    e.reason = if e.in_pools == 0 {
        WaitReason::NoPool
    } else if e.fitting == 0 {
        WaitReason::NoMachineFits
    } else if e
        .quota_left_seconds
        .is_some_and(|left| job.estimated_machine_seconds > left)
    {
        WaitReason::QuotaExhausted
    } else if e.available == 0 {
        WaitReason::MachinesUnavailable
    } else {
        WaitReason::ReadyToStart
    };
    Some(e)
}
