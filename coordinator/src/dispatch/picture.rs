//! The dispatcher's picture of the free fleet and the plan's other inputs, kept between
//! passes so that a pass reads only what changed.
//!
//! Built from the store at start, on every reconnect of the MQTT link and every
//! [`REBUILD_EVERY`]; in between, the store's change notes ([`crate::store::changes`]) name
//! the agents and machines to read again, whether the plan's other inputs must be read
//! again, and the estimates of jobs put on machines. Writers the notes do not see (another
//! replica, a tool on the same database) are caught by the periodic rebuild and, before
//! that, by the placement itself: [`Store::place_job`] re-checks the machine in its
//! transaction, so a stale picture costs a skipped placement, never a wrong one.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use munifab_protocol::AgentId;

use crate::scheduler::{MachineKey, MachineSnapshot, Snapshot};
use crate::store::{ChangeWatch, Changes, Job, MachineChange, PlanInputs, Store, StoreError};

/// How long a picture is trusted without a full rebuild: bounds how long a change made
/// outside this process (and not yet met by a placement) can go unseen.
pub(crate) const REBUILD_EVERY: Duration = Duration::from_secs(30);

/// What one refresh read.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct Refreshed {
    /// The whole picture was read again.
    pub rebuilt: bool,
    /// Agents and single machines read again.
    pub reread: usize,
    /// The plan's other inputs were read again.
    pub inputs: bool,
}

/// Free machines (agent online, reported `ready`, not waiting for a person, no job of ours
/// on them) and the plan's other inputs.
#[derive(Debug)]
pub(crate) struct Picture {
    watch: ChangeWatch,
    pending: Changes,
    machines: Vec<MachineSnapshot>,
    inputs: Option<PlanInputs>,
    built: Option<Instant>,
}

impl Picture {
    /// An empty picture over `store`, built at the first refresh.
    pub(crate) fn new(store: &Store) -> Self {
        Self {
            watch: store.watch(),
            pending: Changes::default(),
            machines: Vec::new(),
            inputs: None,
            built: None,
        }
    }

    fn collect(&mut self) {
        let noted = self.watch.take();
        self.pending.merge(&noted);
    }

    /// Whether commands were put in the outbox outside an assignment since the last call.
    pub(crate) fn take_outbox(&mut self) -> bool {
        self.collect();
        std::mem::take(&mut self.pending.outbox)
    }

    /// Forgets everything: the next refresh rebuilds.
    pub(crate) fn invalidate(&mut self) {
        self.built = None;
    }

    /// Whether the picture is older than `age` (or was never built).
    pub(crate) fn older_than(&self, age: Duration) -> bool {
        self.built.is_none_or(|t| t.elapsed() >= age)
    }

    /// A placement on `key` was refused: read it again before planning with it.
    pub(crate) fn stale(&mut self, key: &MachineKey) {
        self.pending
            .machine(&key.agent, &key.machine, MachineChange::Reread);
    }

    /// Brings the picture up to date: rebuilds it when it is older than `max_age`, was
    /// never built or something unknown changed, else reads again only the noted agents
    /// and machines (and the other inputs if noted). On an error the next refresh rebuilds.
    pub(crate) async fn refresh(
        &mut self,
        store: &Store,
        now_ms: i64,
        window: time::Duration,
        max_age: Duration,
    ) -> Result<Refreshed, StoreError> {
        self.collect();
        let result = self.apply(store, now_ms, window, max_age).await;
        if result.is_err() {
            self.invalidate();
        }
        result
    }

    async fn apply(
        &mut self,
        store: &Store,
        now_ms: i64,
        window: time::Duration,
        max_age: Duration,
    ) -> Result<Refreshed, StoreError> {
        let outbox = self.pending.outbox;
        let changes = std::mem::replace(
            &mut self.pending,
            Changes {
                outbox,
                ..Changes::default()
            },
        );
        if changes.everything || self.older_than(max_age) || self.inputs.is_none() {
            // Taken before reading, so whatever commits from now on is noted again.
            let started = Instant::now();
            self.machines = store.free_machine_snapshots(None).await?;
            self.inputs = Some(store.plan_inputs(now_ms, window).await?);
            self.built = Some(started);
            return Ok(Refreshed {
                rebuilt: true,
                reread: 0,
                inputs: true,
            });
        }
        let mut done = Refreshed::default();
        let mut agents: HashSet<&AgentId> = HashSet::new();
        for agent in &changes.agents {
            self.machines.retain(|m| m.key.agent != *agent);
            let fresh = store.free_machine_snapshots(Some((agent, None))).await?;
            self.machines.extend(fresh);
            agents.insert(agent);
            done.reread += 1;
        }
        for ((agent, machine), change) in &changes.machines {
            if agents.contains(agent) {
                continue;
            }
            self.machines
                .retain(|m| m.key.agent != *agent || m.key.machine != *machine);
            if *change == MachineChange::Reread {
                let fresh = store
                    .free_machine_snapshots(Some((agent, Some(machine))))
                    .await?;
                self.machines.extend(fresh);
                done.reread += 1;
            }
        }
        if changes.plan_inputs {
            self.inputs = Some(store.plan_inputs(now_ms, window).await?);
            done.inputs = true;
        } else if let Some(inputs) = &mut self.inputs {
            // Read after these jobs committed, the inputs would count them: add them. (A
            // job put on a machine by another dispatcher of this process between a read of
            // the inputs and its note is counted twice until the next read: fair-share
            // order only, never a placement the claim would allow wrongly.)
            for (coop, seconds) in &changes.running {
                inputs.add_running(coop, *seconds);
            }
        }
        Ok(done)
    }

    /// The snapshot of `queue` over the picture; hand it back with [`Picture::put_back`].
    pub(crate) fn snapshot(&mut self, queue: &[Job]) -> Snapshot {
        let machines = std::mem::take(&mut self.machines);
        self.inputs
            .get_or_insert_with(PlanInputs::default)
            .snapshot(queue, machines)
    }

    /// Takes the machines back from a snapshot made by [`Picture::snapshot`].
    pub(crate) fn put_back(&mut self, snapshot: Snapshot) {
        self.machines = snapshot.machines;
    }
}
