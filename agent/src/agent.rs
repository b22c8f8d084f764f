//! The agent as a whole: the session, one worker per machine, and the router between them.
//!
//! [`run`] takes validated settings and a shutdown future (the binary passes SIGINT/SIGTERM,
//! tests pass a channel), like mini-redis's `server::run`.

use std::collections::HashMap;
use std::future::Future;
use std::time::Duration;

use munifab_protocol::{
    Command, CommandError, Event, JobId, JobRef, MachineId, Message, RejectReason, Rejected,
    SigningKey,
};
use tokio::sync::{mpsc, oneshot};
use uuid::Uuid;

use crate::artifact::{ArtifactCache, FetchError};
use crate::config::Settings;
use crate::machine;
use crate::session::{self, Incoming, SessionError, SessionHandle, SessionSettings};
use crate::spool::{Spool, SpoolError};
use crate::worker::{Worker, WorkerCommand};

/// Why the agent could not start or stopped abnormally.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The spool could not be opened.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The artifact cache could not be prepared.
    #[error(transparent)]
    Cache(#[from] FetchError),
    /// The MQTT session failed.
    #[error(transparent)]
    Session(#[from] SessionError),
}

/// Runs the agent until `shutdown` completes, then shuts down in order: running jobs to a
/// safe state (per configuration), machines closed, offline status published, spool
/// flushed as far as the broker allows.
pub async fn run(settings: Settings, shutdown: impl Future<Output = ()>) -> Result<(), AgentError> {
    let (spool, pending) = Spool::open(&settings.data_dir.join("spool"))?;
    if !pending.is_empty() {
        tracing::info!(
            events = pending.len(),
            "replaying events spooled by an earlier run"
        );
    }
    let cache = ArtifactCache::new(
        settings.data_dir.join("artifacts"),
        settings.coordinator.clone(),
    )?
    .with_token(settings.broker.token.expose());
    let (cmd_tx, mut cmd_rx) = mpsc::channel(64);
    let (session, session_task) = session::spawn(
        SessionSettings {
            agent: settings.agent.clone(),
            site: settings.site.clone(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            machines: settings.machines.iter().map(|m| m.id.clone()).collect(),
            broker: settings.broker.clone(),
            key: SigningKey::derive(settings.broker.token.expose()),
        },
        spool,
        pending,
        cmd_tx,
    )?;

    let mut workers = HashMap::new();
    let mut worker_tasks = Vec::new();
    for m in &settings.machines {
        let (handle, events) = machine::spawn(m);
        let (tx, rx) = mpsc::channel(16);
        let worker = Worker::new(
            m.clone(),
            handle,
            events,
            rx,
            session.clone(),
            cache.clone(),
            settings.telemetry_interval,
        );
        worker_tasks.push(tokio::spawn(worker.run()));
        workers.insert(m.id.clone(), tx);
    }

    let mut router = Router {
        session: session.clone(),
        workers,
        epochs: EpochBook::open(settings.data_dir.join("epochs.json")),
    };
    tokio::pin!(shutdown);
    let mut session_task = session_task;
    let mut session_result = None;
    loop {
        tokio::select! {
            () = &mut shutdown => break,
            incoming = cmd_rx.recv() => match incoming {
                Some(i) => router.route(i).await,
                None => break,
            },
            // The session only ends early on a spool failure: events could be lost, so
            // the machines are brought to a safe state and the agent stops.
            ended = &mut session_task => {
                tracing::error!("the MQTT session stopped; shutting down");
                session_result = Some(ended);
                break;
            }
        }
    }

    tracing::info!("shutting down");
    let timeout = settings.shutdown.timeout;
    let mut waits = Vec::new();
    for (id, tx) in &router.workers {
        let (done_tx, done_rx) = oneshot::channel();
        if tx
            .send(WorkerCommand::Shutdown(
                settings.shutdown.running_jobs,
                timeout,
                done_tx,
            ))
            .await
            .is_ok()
        {
            waits.push((id.clone(), done_rx));
        }
    }
    for (id, rx) in waits {
        if tokio::time::timeout(timeout + Duration::from_secs(1), rx)
            .await
            .is_err()
        {
            tracing::warn!(machine = %id, "machine did not shut down in time");
        }
    }
    drop(router);
    for t in worker_tasks {
        t.abort();
    }
    let ended = match session_result {
        Some(ended) => ended,
        None => {
            let left = session.shutdown(Duration::from_secs(5).min(timeout)).await;
            tracing::info!(spooled = left, "agent stopped");
            drop(session);
            session_task.await
        }
    };
    match ended {
        Ok(r) => r?,
        Err(e) => tracing::error!("session task failed: {e}"),
    }
    Ok(())
}

struct Router {
    session: SessionHandle,
    workers: HashMap<MachineId, mpsc::Sender<WorkerCommand>>,
    /// Highest epoch seen per job: anything older is refused, also after a restart.
    epochs: EpochBook,
}

/// The highest assignment epoch seen per job, kept on disk so a restarted agent still
/// refuses a stale assignment. Bounded: the oldest jobs are forgotten first.
struct EpochBook {
    path: std::path::PathBuf,
    epochs: HashMap<JobId, u64>,
    order: std::collections::VecDeque<JobId>,
}

const EPOCH_BOOK_JOBS: usize = 4096;

impl EpochBook {
    fn open(path: std::path::PathBuf) -> Self {
        let mut book = Self {
            path,
            epochs: HashMap::new(),
            order: std::collections::VecDeque::new(),
        };
        match std::fs::read(&book.path) {
            Ok(bytes) => match serde_json::from_slice::<Vec<(JobId, u64)>>(&bytes) {
                Ok(entries) => {
                    for (job, epoch) in entries {
                        book.epochs.insert(job, epoch);
                        book.order.push_back(job);
                    }
                }
                Err(e) => {
                    let bad = book.path.with_extension("json.bad");
                    tracing::error!(path = %book.path.display(), error = %e, "unreadable epoch book kept as {}", bad.display());
                    let _ = std::fs::rename(&book.path, bad);
                }
            },
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::error!(path = %book.path.display(), error = %e, "cannot read the epoch book")
            }
        }
        book
    }

    fn get(&self, job: &JobId) -> Option<u64> {
        self.epochs.get(job).copied()
    }

    fn record(&mut self, job: JobId, epoch: u64) {
        if self.epochs.insert(job, epoch).is_none() {
            self.order.push_back(job);
            while self.order.len() > EPOCH_BOOK_JOBS {
                if let Some(old) = self.order.pop_front() {
                    self.epochs.remove(&old);
                }
            }
        }
        let entries: Vec<(JobId, u64)> = self
            .order
            .iter()
            .filter_map(|j| Some((*j, *self.epochs.get(j)?)))
            .collect();
        let tmp = self.path.with_extension("json.tmp");
        let written = serde_json::to_vec(&entries)
            .map_err(std::io::Error::other)
            .and_then(|bytes| {
                use std::io::Write;
                let mut f = std::fs::File::create(&tmp)?;
                f.write_all(&bytes)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &self.path));
        if let Err(e) = written {
            tracing::error!(path = %self.path.display(), error = %e, "cannot save the epoch book");
        }
    }
}

impl Router {
    async fn route(&mut self, incoming: Incoming) {
        let msg: Message<Command> = match incoming {
            Incoming::Command(m) => *m,
            Incoming::Malformed {
                id,
                type_name,
                reason,
            } => {
                self.error(id.unwrap_or(Uuid::nil()), &type_name, &reason)
                    .await;
                return;
            }
        };
        let id = msg.id;
        match msg.body {
            Command::Assign(a) => {
                let seen = self.epochs.get(&a.job);
                if let Some(seen) = seen.filter(|s| a.epoch < *s) {
                    self.reject(
                        &a.job,
                        &a.machine,
                        a.epoch,
                        RejectReason::StaleEpoch,
                        format!("epoch {} is older than epoch {seen} of this job", a.epoch),
                    )
                    .await;
                    return;
                }
                let Some(tx) = self.workers.get(&a.machine) else {
                    self.reject(
                        &a.job,
                        &a.machine,
                        a.epoch,
                        RejectReason::UnknownMachine,
                        format!("this agent has no machine {}", a.machine),
                    )
                    .await;
                    return;
                };
                self.epochs.record(a.job, a.epoch);
                let _ = tx.send(WorkerCommand::Assign(id, Box::new(a))).await;
            }
            Command::Pause(c) | Command::Resume(c) | Command::Cancel(c)
                if self.epochs.get(&c.job).is_some_and(|seen| c.epoch < seen) =>
            {
                let seen = self.epochs.get(&c.job).unwrap_or_default();
                let reason = format!("epoch {} is older than epoch {seen} of this job", c.epoch);
                self.error(id, "job command", &reason).await;
            }
            Command::Pause(c) => {
                self.forward(id, &c.machine.clone(), "pause", WorkerCommand::Pause(id, c))
                    .await
            }
            Command::Resume(c) => {
                self.forward(
                    id,
                    &c.machine.clone(),
                    "resume",
                    WorkerCommand::Resume(id, c),
                )
                .await
            }
            Command::Cancel(c) => {
                self.forward(
                    id,
                    &c.machine.clone(),
                    "cancel",
                    WorkerCommand::Cancel(id, c),
                )
                .await
            }
            Command::Clear(c) => {
                self.forward(id, &c.machine.clone(), "clear", WorkerCommand::Clear(id, c))
                    .await
            }
            Command::EmergencyStop(c) => {
                self.forward(
                    id,
                    &c.machine.clone(),
                    "emergency_stop",
                    WorkerCommand::EmergencyStop(id, c),
                )
                .await
            }
            Command::Unknown { type_name } => {
                self.error(id, &type_name, "unknown command type").await;
            }
        }
    }

    async fn forward(&self, id: Uuid, machine: &MachineId, what: &str, cmd: WorkerCommand) {
        match self.workers.get(machine) {
            Some(tx) => {
                let _ = tx.send(cmd).await;
            }
            None => {
                self.error(id, what, &format!("this agent has no machine {machine}"))
                    .await;
            }
        }
    }

    async fn reject(
        &self,
        job: &JobId,
        machine: &MachineId,
        epoch: u64,
        reason: RejectReason,
        message: String,
    ) {
        tracing::info!(%job, %machine, epoch, ?reason, "assignment refused");
        self.session
            .event(Event::Rejected(Rejected {
                job: JobRef {
                    job: *job,
                    machine: machine.clone(),
                    epoch,
                    seq: 0,
                },
                reason,
                message,
                findings: Vec::new(),
            }))
            .await;
    }

    async fn error(&self, id: Uuid, type_name: &str, reason: &str) {
        tracing::warn!(command = %id, type_name, reason, "command not acted on");
        self.session
            .event(Event::CommandError(CommandError {
                command: id,
                command_type: type_name.to_string(),
                reason: reason.to_string(),
            }))
            .await;
    }
}
