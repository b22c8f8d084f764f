//! One task per machine: takes the machine's commands, runs its job from download to the
//! last line, and reports events and state through the session.
//!
//! The task never blocks on a long operation: the download and the preflight run in their
//! own tasks and report back on a channel, so a `cancel` or an emergency stop is served at
//! any moment.

use std::path::PathBuf;
use std::time::Duration;

use munifab_firmware_bridge::gcode::analyze_reader;
use munifab_protocol::{
    Assign, Clear, CommandError, Completed, EmergencyStop, Event, Failed, JobCommand, MachineState,
    MachineStatus, Progress, RejectReason, Rejected, Severity, Telemetry, Transferring,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use uuid::Uuid;

use crate::artifact::{ArtifactCache, FetchError};
use crate::config::{MachineSettings, OnShutdown};
use crate::job::{self, Phase, Run};
use crate::machine::{MachineEvent, MachineHandle, Outcome, Snapshot};
use crate::session::SessionHandle;

/// What a worker is asked to do.
#[derive(Debug)]
pub enum WorkerCommand {
    /// Run a job (epoch already checked against older ones by the router).
    Assign(Uuid, Box<Assign>),
    /// Pause the running job.
    Pause(Uuid, JobCommand),
    /// Resume it.
    Resume(Uuid, JobCommand),
    /// Cancel it.
    Cancel(Uuid, JobCommand),
    /// An operator confirmed the machine ready.
    Clear(Uuid, Clear),
    /// Stop now.
    EmergencyStop(Uuid, EmergencyStop),
    /// Agent shutdown: bring the job to a safe state, then stop.
    Shutdown(OnShutdown, Duration, oneshot::Sender<()>),
}

enum Prepared {
    Ready(PathBuf),
    Refused(RejectReason, String, Vec<munifab_protocol::Finding>),
}

/// A machine's worker task.
pub struct Worker {
    settings: MachineSettings,
    machine: MachineHandle,
    machine_events: mpsc::Receiver<MachineEvent>,
    commands: mpsc::Receiver<WorkerCommand>,
    session: SessionHandle,
    cache: ArtifactCache,
    telemetry_every: Duration,
    status: MachineStatus,
    detail: Option<String>,
    run: Option<Run>,
    prepare: Option<(tokio::task::JoinHandle<()>, oneshot::Receiver<Prepared>)>,
    snapshot: Snapshot,
    connected: bool,
    /// An operator cleared an error; the machine becomes ready when it reconnects.
    clear_pending: Option<String>,
    /// An emergency stop happened and no operator cleared it yet: survives reconnects.
    held: bool,
}

impl std::fmt::Debug for Worker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Worker")
            .field("machine", &self.settings.id)
            .field("status", &self.status)
            .finish_non_exhaustive()
    }
}

impl Worker {
    /// A worker for one machine.
    pub fn new(
        settings: MachineSettings,
        machine: MachineHandle,
        machine_events: mpsc::Receiver<MachineEvent>,
        commands: mpsc::Receiver<WorkerCommand>,
        session: SessionHandle,
        cache: ArtifactCache,
        telemetry_every: Duration,
    ) -> Self {
        Self {
            settings,
            machine,
            machine_events,
            commands,
            session,
            cache,
            telemetry_every,
            status: MachineStatus::Offline,
            detail: None,
            run: None,
            prepare: None,
            snapshot: Snapshot::default(),
            connected: false,
            clear_pending: None,
            held: false,
        }
    }

    /// Runs until shutdown.
    pub async fn run(mut self) {
        self.publish_state().await;
        let mut tick = tokio::time::interval(self.telemetry_every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                cmd = self.commands.recv() => match cmd {
                    Some(WorkerCommand::Shutdown(how, timeout, done)) => {
                        self.shutdown(how, timeout).await;
                        let _ = done.send(());
                        return;
                    }
                    Some(cmd) => self.command(cmd).await,
                    None => return,
                },
                ev = self.machine_events.recv() => match ev {
                    Some(ev) => self.machine_event(ev).await,
                    None => {
                        self.machine_gone("machine task stopped").await;
                        // Nothing more will come from the machine; serve commands only.
                        self.machine_events = mpsc::channel(1).1;
                    }
                },
                prepared = recv_prepared(&mut self.prepare) => {
                    self.prepare = None;
                    self.prepared(prepared).await;
                }
                _ = tick.tick() => self.telemetry(),
            }
        }
    }

    async fn command(&mut self, cmd: WorkerCommand) {
        match cmd {
            WorkerCommand::Assign(id, assign) => self.assign(id, *assign).await,
            WorkerCommand::Pause(id, c) => {
                if self.check_job(id, &c, "pause").await {
                    let res = self.machine.pause().await;
                    self.control_result(id, "pause", res).await;
                }
            }
            WorkerCommand::Resume(id, c) => {
                if self.check_job(id, &c, "resume").await {
                    let res = self.machine.resume().await;
                    self.control_result(id, "resume", res).await;
                }
            }
            WorkerCommand::Cancel(id, c) => {
                if !self.check_job(id, &c, "cancel").await {
                    return;
                }
                let phase = self.run.as_ref().map(Run::phase);
                if phase == Some(Phase::Transferring) {
                    // Nothing reached the machine yet: stop the download, no cleanup needed.
                    if let Some((task, _)) = self.prepare.take() {
                        task.abort();
                    }
                    let mut run = self.run.take().expect("checked");
                    self.session.event(Event::Cancelled(run.next_ref())).await;
                    self.status = MachineStatus::Ready;
                    self.publish_state().await;
                } else {
                    let res = self.machine.cancel().await;
                    self.control_result(id, "cancel", res).await;
                }
            }
            WorkerCommand::Clear(id, clear) => match self.status {
                _ if self.run.is_some() => {
                    self.command_error(id, "clear", "machine is running a job; cancel it first")
                        .await;
                }
                MachineStatus::Offline => {
                    self.command_error(id, "clear", "machine is not connected")
                        .await;
                }
                MachineStatus::Error => {
                    // A halted controller only recovers from a reset: reconnect, and become
                    // ready once the firmware answers again.
                    tracing::info!(machine = %self.settings.id, by = %clear.confirmed_by, "clearing an error: resetting the machine");
                    self.clear_pending = Some(clear.confirmed_by);
                    if let Err(e) = self.machine.reconnect().await {
                        self.command_error(id, "clear", &e.to_string()).await;
                    }
                }
                _ => {
                    self.held = false;
                    tracing::info!(machine = %self.settings.id, by = %clear.confirmed_by, "machine confirmed ready");
                    self.status = MachineStatus::Ready;
                    self.detail = Some(format!("confirmed ready by {}", clear.confirmed_by));
                    self.publish_state().await;
                }
            },
            WorkerCommand::EmergencyStop(id, stop) => {
                tracing::warn!(machine = %self.settings.id, by = %stop.requested_by, "emergency stop");
                if let Some((task, _)) = self.prepare.take() {
                    task.abort();
                    if let Some(mut run) = self.run.take() {
                        let r = run.next_ref();
                        self.session
                            .event(Event::Failed(Failed {
                                job: r,
                                reason: format!("emergency stop by {}", stop.requested_by),
                                line: None,
                                summary: None,
                            }))
                            .await;
                    }
                }
                let res = self.machine.emergency_stop().await;
                self.held = true;
                self.status = MachineStatus::Error;
                self.detail = Some(format!("emergency stop by {}", stop.requested_by));
                self.publish_state().await;
                if let Err(e) = res {
                    self.command_error(id, "emergency_stop", &e.to_string())
                        .await;
                }
            }
            WorkerCommand::Shutdown(..) => unreachable!("handled by run"),
        }
    }

    /// Whether a job command names the running job with its current epoch; answers a
    /// `command_error` otherwise.
    async fn check_job(&mut self, id: Uuid, c: &JobCommand, what: &str) -> bool {
        let problem = match &self.run {
            None => Some("no job is running on this machine".to_string()),
            Some(run) if run.job() != c.job => Some(format!(
                "job {} is not the running job {}",
                c.job,
                run.job()
            )),
            Some(run) if run.epoch() != c.epoch => Some(format!(
                "epoch {} does not match the running assignment's epoch {}",
                c.epoch,
                run.epoch()
            )),
            Some(_) => None,
        };
        match problem {
            Some(p) => {
                self.command_error(id, what, &p).await;
                false
            }
            None => true,
        }
    }

    async fn control_result(
        &mut self,
        id: Uuid,
        what: &str,
        res: Result<(), crate::machine::MachineError>,
    ) {
        if let Err(e) = res {
            self.command_error(id, what, &e.to_string()).await;
        }
    }

    async fn command_error(&self, id: Uuid, what: &str, reason: &str) {
        tracing::warn!(machine = %self.settings.id, command = what, reason, "command not acted on");
        self.session
            .event(Event::CommandError(CommandError {
                command: id,
                command_type: what.to_string(),
                reason: reason.to_string(),
            }))
            .await;
    }

    async fn assign(&mut self, _id: Uuid, assign: Assign) {
        let caps = &self.settings.profile.capabilities;
        if let Err(refusal) = job::admit(&assign, self.status, self.run.as_ref(), caps) {
            let mut run = Run::new(assign.job, self.settings.id.clone(), assign.epoch);
            tracing::info!(machine = %self.settings.id, job = %assign.job, reason = ?refusal.reason, "assignment refused");
            self.session
                .event(Event::Rejected(Rejected {
                    job: run.next_ref(),
                    reason: refusal.reason,
                    message: refusal.message,
                    findings: refusal.findings,
                }))
                .await;
            return;
        }
        let mut run = Run::new(assign.job, self.settings.id.clone(), assign.epoch);
        tracing::info!(machine = %self.settings.id, job = %assign.job, epoch = assign.epoch, "assignment accepted");
        self.session.event(Event::Accepted(run.next_ref())).await;
        self.session
            .event(Event::Transferring(Transferring {
                job: run.next_ref(),
                bytes: self.cache.cached_bytes(&assign.artifact),
                total: assign.artifact.size,
            }))
            .await;
        self.run = Some(run);
        self.status = MachineStatus::Busy;
        self.detail = None;
        self.publish_state().await;

        let (tx, rx) = oneshot::channel();
        let cache = self.cache.clone();
        let profile = self.settings.profile.clone();
        let task = tokio::spawn(async move {
            let _ = tx.send(prepare(&cache, &assign, &profile).await);
        });
        self.prepare = Some((task, rx));
    }

    async fn prepared(&mut self, prepared: Prepared) {
        let Some(run) = self.run.as_mut() else {
            return;
        };
        match prepared {
            Prepared::Refused(reason, message, findings) => {
                tracing::info!(machine = %self.settings.id, job = %run.job(), ?reason, message, "job refused after transfer");
                let r = run.next_ref();
                self.session
                    .event(Event::Rejected(Rejected {
                        job: r,
                        reason,
                        message,
                        findings,
                    }))
                    .await;
                self.run = None;
                self.status = MachineStatus::Ready;
                self.publish_state().await;
            }
            Prepared::Ready(path) => match self
                .machine
                .start(path, self.settings.scripts.clone())
                .await
            {
                Ok(()) => {
                    run.set_phase(Phase::Running);
                    let r = run.next_ref();
                    self.session.event(Event::Started(r)).await;
                }
                Err(e) => {
                    let r = run.next_ref();
                    self.session
                        .event(Event::Failed(Failed {
                            job: r,
                            reason: format!("could not start streaming: {e}"),
                            line: None,
                            summary: None,
                        }))
                        .await;
                    self.run = None;
                    self.status = job::after_job(self.settings.needs_confirmation);
                    self.publish_state().await;
                }
            },
        }
    }

    async fn machine_event(&mut self, ev: MachineEvent) {
        match ev {
            MachineEvent::Connected { firmware } => {
                tracing::info!(machine = %self.settings.id, firmware, "machine connected");
                self.connected = true;
                if matches!(self.status, MachineStatus::Offline | MachineStatus::Error) {
                    self.status = if let Some(by) = self.clear_pending.take() {
                        self.held = false;
                        self.detail = Some(format!("confirmed ready by {by}"));
                        MachineStatus::Ready
                    } else if self.held {
                        MachineStatus::Error
                    } else {
                        self.detail = Some(firmware);
                        if self.settings.needs_confirmation {
                            MachineStatus::Idle
                        } else {
                            MachineStatus::Ready
                        }
                    };
                    self.publish_state().await;
                }
            }
            MachineEvent::Disconnected { reason } => self.machine_gone(&reason).await,
            MachineEvent::Telemetry(s) => self.snapshot = s,
            MachineEvent::Progress {
                line,
                bytes,
                percent,
            } => {
                self.snapshot.line = Some(line);
                self.snapshot.percent = Some(percent);
                if let Some(run) = self.run.as_mut()
                    && run.progress_due(percent, Instant::now().into_std())
                {
                    let r = run.next_ref();
                    self.session
                        .event(Event::Progress(Progress {
                            job: r,
                            line,
                            bytes,
                            percent,
                        }))
                        .await;
                }
            }
            MachineEvent::Paused => {
                if let Some(run) = self.run.as_mut() {
                    run.set_phase(Phase::Paused);
                    let r = run.next_ref();
                    self.session.event(Event::Paused(r)).await;
                    self.status = MachineStatus::Paused;
                    self.publish_state().await;
                }
            }
            MachineEvent::Resumed => {
                if let Some(run) = self.run.as_mut() {
                    run.set_phase(Phase::Running);
                    let r = run.next_ref();
                    self.session.event(Event::Resumed(r)).await;
                    self.status = MachineStatus::Busy;
                    self.publish_state().await;
                }
            }
            MachineEvent::Finished(outcome) => self.finished(outcome).await,
        }
    }

    async fn finished(&mut self, outcome: Outcome) {
        let Some(mut run) = self.run.take() else {
            return;
        };
        let r = run.next_ref();
        let stopped = self.held;
        let event = match outcome {
            Outcome::Completed(summary) => Event::Completed(Completed { job: r, summary }),
            Outcome::Cancelled => Event::Cancelled(r),
            Outcome::Failed {
                reason,
                line,
                summary,
            } => {
                self.detail = Some(reason.clone());
                Event::Failed(Failed {
                    job: r,
                    reason,
                    line,
                    summary,
                })
            }
        };
        tracing::info!(machine = %self.settings.id, job = %run.job(), outcome = %event_name(&event), "job ended");
        self.session.event(event).await;
        self.status = if !self.connected {
            MachineStatus::Offline
        } else if stopped {
            MachineStatus::Error
        } else {
            job::after_job(self.settings.needs_confirmation)
        };
        self.snapshot.percent = None;
        self.publish_state().await;
    }

    async fn machine_gone(&mut self, reason: &str) {
        tracing::warn!(machine = %self.settings.id, reason, "machine disconnected");
        self.connected = false;
        self.status = MachineStatus::Offline;
        self.detail = Some(reason.to_string());
        self.publish_state().await;
    }

    fn telemetry(&self) {
        if !self.connected {
            return;
        }
        let s = &self.snapshot;
        self.session.telemetry(Telemetry {
            machine: self.settings.id.clone(),
            job: self.run.as_ref().map(Run::job),
            temperatures: s.temperatures.clone(),
            position: s.position,
            progress_percent: s.percent,
            feed_mm_min: s.feed_mm_min,
            spindle_rpm: s.spindle_rpm,
            line: s.line,
            firmware_state: s.firmware_state.clone(),
        });
    }

    async fn publish_state(&self) {
        self.session
            .state(MachineState {
                machine: self.settings.id.clone(),
                state: self.status,
                capabilities: self.settings.profile.capabilities.clone(),
                job: self.run.as_ref().map(Run::current),
                needs_confirmation: self.settings.needs_confirmation,
                detail: self.detail.clone(),
            })
            .await;
    }

    async fn shutdown(&mut self, how: OnShutdown, timeout: Duration) {
        if let Some((task, _)) = self.prepare.take() {
            task.abort();
            if let Some(mut run) = self.run.take() {
                self.session.event(Event::Cancelled(run.next_ref())).await;
            }
        }
        let deadline = Instant::now() + timeout;
        if self.run.is_some() {
            tracing::info!(machine = %self.settings.id, ?how, "shutdown with a running job");
            let first = match how {
                OnShutdown::Pause => self.machine.pause().await,
                OnShutdown::Cancel => self.machine.cancel().await,
                OnShutdown::Finish => Ok(()),
            };
            if let Err(e) = first {
                tracing::warn!(machine = %self.settings.id, error = %e, "could not bring the job to a safe state");
            }
            let mut paused_fallback = how != OnShutdown::Finish;
            loop {
                let settled = match how {
                    OnShutdown::Pause => {
                        self.run.as_ref().is_none_or(|r| r.phase() == Phase::Paused)
                    }
                    _ => self.run.is_none(),
                };
                if settled {
                    break;
                }
                let until = if paused_fallback {
                    deadline
                } else {
                    // Keep a fifth of the time to pause safely when finishing takes too long.
                    deadline - timeout / 5
                };
                match tokio::time::timeout_at(until, self.machine_events.recv()).await {
                    Ok(Some(ev)) => self.machine_event(ev).await,
                    Ok(None) => break,
                    Err(_) if !paused_fallback => {
                        tracing::warn!(machine = %self.settings.id, "job did not finish in time; pausing it");
                        let _ = self.machine.pause().await;
                        paused_fallback = true;
                    }
                    Err(_) => {
                        tracing::warn!(machine = %self.settings.id, "job did not reach a safe state in time");
                        break;
                    }
                }
            }
        }
        self.machine.close().await;
    }
}

async fn recv_prepared(
    slot: &mut Option<(tokio::task::JoinHandle<()>, oneshot::Receiver<Prepared>)>,
) -> Prepared {
    match slot {
        Some((_, rx)) => match rx.await {
            Ok(p) => p,
            Err(_) => Prepared::Refused(
                RejectReason::DownloadFailed,
                "preparation task ended unexpectedly".into(),
                Vec::new(),
            ),
        },
        None => std::future::pending().await,
    }
}

/// Download, verify, and preflight against the machine's profile.
async fn prepare(
    cache: &ArtifactCache,
    assign: &Assign,
    profile: &munifab_firmware_bridge::gcode::MachineProfile,
) -> Prepared {
    let path = match cache.fetch(&assign.artifact).await {
        Ok(p) => p,
        Err(e) => {
            let reason = if e.is_integrity() {
                RejectReason::ChecksumMismatch
            } else {
                RejectReason::DownloadFailed
            };
            if let FetchError::Io { .. } = e {
                tracing::error!(error = %e, "artifact cache failure");
            }
            return Prepared::Refused(reason, e.to_string(), Vec::new());
        }
    };
    let file = path.clone();
    let profile = profile.clone();
    let analysis = tokio::task::spawn_blocking(move || {
        let f = std::fs::File::open(&file)?;
        analyze_reader(
            std::io::BufReader::with_capacity(64 * 1024, f),
            Some(&profile),
        )
    })
    .await;
    match analysis {
        Ok(Ok(a)) if a.is_refused() => {
            let findings: Vec<_> = a
                .wire_findings()
                .into_iter()
                .filter(|f| f.severity == Severity::Error)
                .collect();
            let message = findings
                .first()
                .map(|f| format!("line {}: {}", f.line, f.message))
                .unwrap_or_else(|| "the file does not pass validation".into());
            Prepared::Refused(RejectReason::PreflightFailed, message, findings)
        }
        Ok(Ok(_)) => Prepared::Ready(path),
        Ok(Err(e)) => Prepared::Refused(
            RejectReason::DownloadFailed,
            format!("cannot read the cached artifact: {e}"),
            Vec::new(),
        ),
        Err(e) => Prepared::Refused(
            RejectReason::PreflightFailed,
            format!("preflight crashed: {e}"),
            Vec::new(),
        ),
    }
}

fn event_name(e: &Event) -> &str {
    use munifab_protocol::Family;
    e.type_name()
}
