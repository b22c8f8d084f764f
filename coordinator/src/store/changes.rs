//! What changed: store methods that commit a change the scheduler's picture depends on note
//! it here, after the commit, for every watcher of that store handle (and its clones). The
//! dispatcher keeps its picture of the free fleet between passes and re-reads only what the
//! notes name ([`crate::dispatch`]).
//!
//! Notes cover writers in this process that go through [`Store`]. A second process on the
//! same database (another replica, a command-line tool, hand-written SQL) leaves no note;
//! the dispatcher's periodic rebuild and the placement's own re-check of the machine
//! ([`Store::place_job`]) cover those.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, Weak};

use munifab_protocol::{AgentId, MachineId};

use super::Store;

/// Past this many noted machines or agents a watcher rebuilds everything instead: reading
/// the free fleet at once is cheaper than hundreds of single-machine reads, and the notes of
/// a watcher that stopped looking do not grow without bound.
const MAX_NOTED: usize = 256;

/// What happened to one machine.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MachineChange {
    /// Anything: read it again.
    Reread,
    /// A job of ours was just put on it: it is busy, no need to read it.
    Taken,
}

/// Changes noted since a watcher last took them.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Changes {
    /// Something not described below: rebuild the whole picture.
    pub everything: bool,
    /// Agents whose presence or site changed (all their machines may have).
    pub agents: Vec<AgentId>,
    /// Machines whose state, readiness, jobs or capabilities changed.
    pub machines: HashMap<(AgentId, MachineId), MachineChange>,
    /// Sites, pools, quotas, the ledger or the set of jobs on machines changed beyond the
    /// estimates in `running`: read the plan's other inputs again.
    pub plan_inputs: bool,
    /// Jobs put on machines: their cooperative and estimate (whole seconds, rounded up as
    /// the ledger counts), which add to that cooperative's usage and quota use.
    pub running: Vec<(String, u64)>,
    /// Commands were put in the outbox outside an assignment (cancel, pause, clear).
    pub outbox: bool,
}

impl Changes {
    /// Whether nothing was noted.
    pub fn is_empty(&self) -> bool {
        !self.everything
            && self.agents.is_empty()
            && self.machines.is_empty()
            && !self.plan_inputs
            && self.running.is_empty()
            && !self.outbox
    }

    /// Notes that `agent`'s machines may have changed.
    pub(crate) fn agent(&mut self, agent: &AgentId) {
        if !self.agents.contains(agent) {
            self.agents.push(agent.clone());
        }
    }

    /// Notes a change to one machine; a re-read wins over `Taken`.
    pub(crate) fn machine(&mut self, agent: &AgentId, machine: &MachineId, change: MachineChange) {
        let slot = self
            .machines
            .entry((agent.clone(), machine.clone()))
            .or_insert(change);
        if change == MachineChange::Reread {
            *slot = MachineChange::Reread;
        }
    }

    /// Adds `other`'s notes to these.
    pub fn merge(&mut self, other: &Changes) {
        self.everything |= other.everything;
        self.plan_inputs |= other.plan_inputs;
        self.outbox |= other.outbox;
        for a in &other.agents {
            self.agent(a);
        }
        for ((a, m), c) in &other.machines {
            self.machine(a, m, *c);
        }
        self.running.extend(other.running.iter().cloned());
        if self.agents.len() + self.machines.len() > MAX_NOTED || self.running.len() > MAX_NOTED {
            // Everything is read again anyway: the details are not needed.
            *self = Changes {
                everything: true,
                outbox: self.outbox,
                ..Changes::default()
            };
        }
    }
}

/// A watcher's notes; dropped, it stops receiving them.
#[derive(Debug)]
pub struct ChangeWatch {
    pending: Arc<Mutex<Changes>>,
}

impl ChangeWatch {
    /// Takes the changes noted since the last call (the first call: everything).
    pub fn take(&self) -> Changes {
        std::mem::take(&mut *self.pending.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

/// The watchers of one store handle and its clones.
#[derive(Debug, Default)]
pub(super) struct Watchers {
    list: Mutex<Vec<Weak<Mutex<Changes>>>>,
}

impl Store {
    /// Starts watching changes made through this store handle and its clones. The first
    /// [`ChangeWatch::take`] says `everything`.
    pub fn watch(&self) -> ChangeWatch {
        let pending = Arc::new(Mutex::new(Changes {
            everything: true,
            ..Changes::default()
        }));
        let mut list = self.watchers.list.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| w.strong_count() > 0);
        list.push(Arc::downgrade(&pending));
        ChangeWatch { pending }
    }

    /// Hands `changes` to every watcher. Call after the commit, so a watcher that reads
    /// because of the note reads the committed state.
    pub(crate) fn note(&self, changes: Changes) {
        if changes.is_empty() {
            return;
        }
        let mut list = self.watchers.list.lock().unwrap_or_else(|e| e.into_inner());
        list.retain(|w| match w.upgrade() {
            Some(p) => {
                p.lock().unwrap_or_else(|e| e.into_inner()).merge(&changes);
                true
            }
            None => false,
        });
    }

    /// Notes one change built by `f`.
    pub(crate) fn note_with(&self, f: impl FnOnce(&mut Changes)) {
        let mut c = Changes::default();
        f(&mut c);
        self.note(c);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(a: &str, m: &str) -> (AgentId, MachineId) {
        (AgentId::new(a).unwrap(), MachineId::new(m).unwrap())
    }

    #[test]
    fn a_reread_wins_over_taken_whatever_the_order() {
        let (a, m) = key("lab-a", "mk3");
        let mut c = Changes::default();
        c.machine(&a, &m, MachineChange::Taken);
        c.machine(&a, &m, MachineChange::Reread);
        c.machine(&a, &m, MachineChange::Taken);
        assert_eq!(c.machines[&(a, m)], MachineChange::Reread);
    }

    #[test]
    fn too_many_notes_become_a_rebuild_and_keep_the_outbox_flag() {
        let mut c = Changes::default();
        let mut more = Changes {
            outbox: true,
            ..Changes::default()
        };
        for i in 0..=MAX_NOTED {
            let (a, m) = key(&format!("lab-{i}"), "mk3");
            more.machine(&a, &m, MachineChange::Reread);
        }
        c.merge(&more);
        assert!(c.everything && c.outbox);
        assert!(c.machines.is_empty() && c.agents.is_empty());
    }

    #[tokio::test]
    async fn every_live_watcher_gets_each_note_once_and_starts_with_everything() {
        let dir =
            std::env::temp_dir().join(format!("munifab-changes-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        let store = Store::open_sqlite(&dir.join("db")).await.unwrap();
        let first = store.watch();
        let second = store.clone().watch();
        assert!(first.take().everything);
        let dropped = store.watch();
        drop(dropped);
        let (a, m) = key("lab-a", "mk3");
        store.note_with(|c| c.machine(&a, &m, MachineChange::Taken));
        let got = first.take();
        assert!(!got.everything);
        assert_eq!(got.machines.len(), 1);
        assert!(first.take().is_empty(), "taken once");
        let got = second.take();
        assert!(got.everything && got.machines.len() == 1);
        assert_eq!(store.watchers.list.lock().unwrap().len(), 2);
        store.close().await;
        let _ = std::fs::remove_dir_all(&dir);
    }
}
