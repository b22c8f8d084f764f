//! The dispatcher: the one task that turns what agents say and what the API queued into
//! decisions. It ingests agent messages, places queued jobs on free machines (each
//! assignment one transaction with its `assign` command in the outbox), publishes the
//! outbox, re-sends an agent's pending commands whenever it comes online, and expires
//! jobs whose agent stayed offline beyond the grace period.
//!
//! Placement plans over a picture of the free fleet kept between passes
//! ([`picture`]), refreshed from the store's change notes: a pass reads the queue and
//! whatever changed since the last pass, not the whole fleet.

mod picture;

use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use munifab_protocol::{AgentId, Artifact, Assign, Command, Message};
use rumqttc::{AsyncClient, QoS};
use tokio::sync::{Notify, mpsc};
use tokio_util::sync::CancellationToken;

use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::mqtt::ingest::{Ingested, ingest};
use crate::mqtt::link::LinkEvent;
use crate::scheduler;
use crate::store::{EventOutcome, LostPolicy, QueuedCommand, Store, StoreError};
use picture::{Picture, REBUILD_EVERY};

/// Machine time used in this window counts towards a cooperative's fair share.
const FAIR_SHARE_WINDOW: time::Duration = time::Duration::days(7);
/// Queued jobs one plan considers at most.
const SNAPSHOT_JOBS: u32 = 5000;
/// How long applied message ids and answered commands are kept: far longer than an agent
/// can spool events while offline and still have them mean anything.
const KEEP_ANSWERED: Duration = Duration::from_secs(30 * 24 * 3600);
/// How often the tick looks for ids and commands older than that.
const PRUNE_EVERY: Duration = Duration::from_secs(3600);
/// Plans per pass at most: when placements from the picture are refused (another
/// replica took the machine, or it changed unnoticed), the refused machines are read
/// again and the rest of the queue planned again at once, rather than at the next wake-up.
const PLAN_ROUNDS: usize = 3;
/// Agent messages already waiting that are ingested before one placement pass, rather
/// than a pass after each (a kick — a new job — cuts the batch short).
const INGEST_BATCH: usize = 64;

/// Dispatch policy.
#[derive(Debug, Clone, PartialEq)]
pub struct DispatchSettings {
    /// How long an agent may be offline before its job is lost.
    pub offline_grace: Duration,
    /// What happens to a lost job.
    pub lost_policy: LostPolicy,
    /// Rejections after which a job fails instead of returning to the queue.
    pub max_rejections: u32,
    /// How often the grace period is checked.
    pub tick: Duration,
    /// Base URL agents download artifacts from (`{base}/api/v1/artifacts/{sha256}`).
    pub public_url: String,
}

/// The dispatcher and what it needs.
pub struct Dispatcher {
    store: Store,
    client: AsyncClient,
    metrics: Arc<Metrics>,
    clock: Clock,
    settings: DispatchSettings,
    /// The fleet picture; the lock also keeps two passes of this dispatcher apart.
    picture: tokio::sync::Mutex<Picture>,
    /// When the last prune ran (clock milliseconds; 0: never).
    last_prune_ms: AtomicI64,
}

impl std::fmt::Debug for Dispatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dispatcher")
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl Dispatcher {
    /// A dispatcher publishing through `client`.
    pub fn new(
        store: Store,
        client: AsyncClient,
        metrics: Arc<Metrics>,
        clock: Clock,
        settings: DispatchSettings,
    ) -> Self {
        Self {
            picture: tokio::sync::Mutex::new(Picture::new(&store)),
            last_prune_ms: AtomicI64::new(0),
            store,
            client,
            metrics,
            clock,
            settings,
        }
    }

    fn now(&self) -> i64 {
        (self.clock)()
    }

    /// Runs until `shutdown` (or the link closes), stopping between two steps.
    pub async fn run(
        self,
        mut inbound: mpsc::Receiver<LinkEvent>,
        kick: Arc<Notify>,
        shutdown: CancellationToken,
    ) {
        let mut tick = tokio::time::interval(self.settings.tick);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            // Biased: a kick (a job queued, a machine confirmed) is served before agent
            // messages waiting in the channel, so a burst of reports does not delay a new
            // job; kicks coalesce, so they cannot starve the messages.
            let work = tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                () = kick.notified() => Ok(Pass::Placement),
                _ = tick.tick() => self.on_tick().await.map(|()| Pass::Sweep),
                ev = inbound.recv() => match ev {
                    None => break,
                    Some(ev) => self.on_link_event(ev, &mut inbound, &kick).await,
                },
            };
            let result = match work {
                Ok(Pass::Placement) => self.pass(false).await,
                Ok(Pass::Sweep) => self.pass(true).await,
                Ok(Pass::None) => Ok(()),
                Err(e) => Err(e),
            };
            if let Err(e) = result {
                tracing::error!(error = %e, "dispatcher step failed; continuing");
            }
        }
        tracing::info!("dispatcher stopped");
    }

    /// Expires lost jobs, and rebuilds the fleet picture when it is due (here rather than
    /// in a pass a new job waits for).
    async fn on_tick(&self) -> Result<(), StoreError> {
        self.expire_lost().await?;
        self.prune().await?;
        let mut picture = self.picture.lock().await;
        if picture.older_than(REBUILD_EVERY) {
            picture
                .refresh(&self.store, self.now(), FAIR_SHARE_WINDOW, REBUILD_EVERY)
                .await?;
        }
        Ok(())
    }

    /// Handles one link event and the messages already waiting behind it (up to
    /// [`INGEST_BATCH`], fewer when a kick arrives); returns which pass should follow.
    async fn on_link_event(
        &self,
        first: LinkEvent,
        inbound: &mut mpsc::Receiver<LinkEvent>,
        kick: &Notify,
    ) -> Result<Pass, StoreError> {
        let mut pass = Pass::None;
        let mut next = Some(first);
        let mut handled = 0;
        while let Some(ev) = next.take() {
            let step = match ev {
                LinkEvent::Connected => {
                    // Reconnected: whatever happened while the link was down is read anew.
                    self.picture.lock().await.invalidate();
                    self.resend_to_online_agents().await.map(|()| Pass::Sweep)
                }
                LinkEvent::Message { topic, payload } => self
                    .on_message(&topic, &payload)
                    .await
                    .map(|place| if place { Pass::Placement } else { Pass::None }),
            };
            match step {
                Ok(p) => pass = pass.max(p),
                Err(e) => tracing::error!(error = %e, "dispatcher step failed; continuing"),
            }
            handled += 1;
            if handled >= INGEST_BATCH {
                break;
            }
            if kicked(kick).await {
                pass = pass.max(Pass::Placement);
                break;
            }
            next = inbound.try_recv().ok();
        }
        Ok(pass)
    }

    /// Handles one agent message; returns whether placement should run.
    async fn on_message(&self, topic: &str, payload: &[u8]) -> Result<bool, StoreError> {
        self.metrics.mqtt_in();
        let now = self.now();
        match ingest(
            &self.store,
            topic,
            payload,
            self.settings.max_rejections,
            now,
        )
        .await
        {
            Ok(Ingested::AgentOnline(agent)) => {
                self.resend(&agent).await?;
                Ok(true)
            }
            Ok(Ingested::AgentOffline(agent)) => {
                tracing::info!(%agent, "agent offline");
                Ok(false)
            }
            Ok(Ingested::MachineState) => Ok(true),
            Ok(Ingested::Event(outcome)) => {
                match &outcome {
                    EventOutcome::Stale {
                        job,
                        cancel: Some(c),
                    } => {
                        tracing::warn!(job = %job.id, agent = %c.agent, "stale run reported; cancelling it");
                        self.publish(c).await?;
                    }
                    EventOutcome::Applied(job) => {
                        tracing::debug!(job = %job.id, state = %job.state, "job event applied")
                    }
                    other => tracing::debug!(?other, "job event not applied"),
                }
                Ok(true)
            }
            Ok(Ingested::Nothing) => Ok(false),
            Err(crate::mqtt::ingest::Dropped::Store(e)) => Err(e),
            Err(why) => {
                self.metrics.mqtt_dropped();
                tracing::warn!(%topic, %why, "dropped an MQTT message");
                Ok(false)
            }
        }
    }

    /// Places queued jobs with the cooperative scheduler ([`crate::scheduler::plan`] over the
    /// dispatcher's picture of the fleet, brought up to date from the store) and publishes
    /// whatever the outbox holds for online agents.
    pub async fn dispatch(&self) -> Result<(), StoreError> {
        self.pass(true).await
    }

    /// One placement pass; `sweep`: publish every unsent command of online agents, not
    /// only when the store noted new ones (the tick does, for commands whose publication
    /// failed and for other writers).
    async fn pass(&self, sweep: bool) -> Result<(), StoreError> {
        let mut picture = self.picture.lock().await;
        let started = Instant::now();
        let mut queue = self.store.queued_jobs(SNAPSHOT_JOBS).await?;
        // Most passes (telemetry, state reports) find nothing queued: no picture then.
        for round in 0..PLAN_ROUNDS {
            if queue.is_empty() {
                break;
            }
            let now = self.now();
            let round_started = Instant::now();
            let queued = queue.len();
            let read_queue = if round == 0 {
                round_started - started
            } else {
                Duration::ZERO
            };
            let queued_ms: std::collections::HashMap<_, _> =
                queue.iter().map(|j| (j.id, j.queued_ms)).collect();
            // A picture this old is rebuilt here only if the tick could not do it.
            let refreshed = picture
                .refresh(&self.store, now, FAIR_SHARE_WINDOW, 2 * REBUILD_EVERY)
                .await?;
            let snapshot = picture.snapshot(&queue);
            let machines = snapshot.machines.len();
            let snapshotted = round_started.elapsed();
            let at = time::OffsetDateTime::from_unix_timestamp(now.div_euclid(1000))
                .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
            let plan = scheduler::plan(&snapshot, at);
            picture.put_back(snapshot);
            let planned = round_started.elapsed();
            let placed = plan.len();
            let mut refused = 0;
            for a in plan {
                let queued = queued_ms.get(&a.job).copied().flatten();
                if !self.assign(&a, queued).await? {
                    picture.stale(&a.machine);
                    refused += 1;
                }
            }
            tracing::debug!(
                round,
                queued,
                machines,
                placed,
                refused,
                rebuilt = refreshed.rebuilt,
                reread = refreshed.reread,
                inputs = refreshed.inputs,
                queue_us = read_queue.as_micros() as u64,
                snapshot_us = snapshotted.as_micros() as u64,
                plan_us = (planned - snapshotted).as_micros() as u64,
                assign_publish_us = (round_started.elapsed() - planned).as_micros() as u64,
                "dispatch pass"
            );
            if refused == 0 {
                break;
            }
            queue = self.store.queued_jobs(SNAPSHOT_JOBS).await?;
        }
        let noted = picture.take_outbox();
        drop(picture);
        if sweep || noted {
            for agent in self.store.agents_with_unsent_commands().await? {
                for cmd in self.store.unsent_commands(&agent).await? {
                    self.publish(&cmd).await?;
                }
            }
        }
        Ok(())
    }

    /// Assigns one placement and publishes its command; false when the placement was
    /// refused (the picture was outdated).
    async fn assign(
        &self,
        a: &scheduler::Assignment,
        queued_ms: Option<i64>,
    ) -> Result<bool, StoreError> {
        let now = self.now();
        let base = self.settings.public_url.trim_end_matches('/').to_string();
        let (agent, machine) = (&a.machine.agent, &a.machine.machine);
        let started = Instant::now();
        let assigned = self
            .store
            .place_job(a.job, agent, machine, a.pool.as_str(), now, |job| {
                Message::stamped(Command::Assign(Assign {
                    job: job.id,
                    epoch: job.epoch,
                    machine: machine.clone(),
                    artifact: Artifact {
                        url: format!("{base}/api/v1/artifacts/{}", job.artifact),
                        sha256: job.artifact.clone(),
                        size: job.size,
                    },
                    requirements: job.requirements.clone(),
                    analysis: job.analysis.clone(),
                }))
            })
            .await;
        let (job, cmd) = match assigned {
            Ok(x) => x,
            // Someone else moved it or took the machine first (cancelled meanwhile, another
            // replica), or the machine changed since the picture was read: the caller reads
            // it again.
            Err(
                e @ (StoreError::Conflict(_)
                | StoreError::IllegalMove(_)
                | StoreError::MachineBusy { .. }
                | StoreError::MachineUnavailable { .. }),
            ) => {
                tracing::debug!(job = %a.job, %agent, %machine, error = %e, "placement overtaken; skipped");
                return Ok(false);
            }
            Err(e) => return Err(e),
        };
        let stored = started.elapsed();
        self.publish(&cmd).await?;
        self.metrics
            .dispatch_latency((self.now() - queued_ms.unwrap_or(now)).max(0) as u64);
        tracing::info!(
            job = %job.id, %agent, %machine, pool = %a.pool, epoch = job.epoch,
            store_us = stored.as_micros() as u64,
            publish_us = (started.elapsed() - stored).as_micros() as u64,
            "assigned"
        );
        Ok(true)
    }

    async fn resend(&self, agent: &AgentId) -> Result<(), StoreError> {
        for cmd in self.store.pending_commands(agent).await? {
            self.publish(&cmd).await?;
        }
        Ok(())
    }

    async fn resend_to_online_agents(&self) -> Result<(), StoreError> {
        for a in self.store.list_agents(None).await? {
            if a.online {
                self.resend(&a.id).await?;
            }
        }
        Ok(())
    }

    /// At most once per [`PRUNE_EVERY`], forgets applied message ids and answered commands
    /// older than [`KEEP_ANSWERED`].
    async fn prune(&self) -> Result<(), StoreError> {
        let now = self.now();
        let every = PRUNE_EVERY.as_millis() as i64;
        let last = self.last_prune_ms.load(Ordering::Relaxed);
        if last != 0 && now - last < every {
            return Ok(());
        }
        self.last_prune_ms.store(now, Ordering::Relaxed);
        let (seen, answered) = self
            .store
            .prune_answered(now - KEEP_ANSWERED.as_millis() as i64)
            .await?;
        if seen + answered > 0 {
            tracing::info!(
                seen,
                answered,
                "forgot old message ids and answered commands"
            );
        }
        Ok(())
    }

    async fn expire_lost(&self) -> Result<(), StoreError> {
        let now = self.now();
        let cutoff = now - self.settings.offline_grace.as_millis() as i64;
        for job in self
            .store
            .expire_lost_jobs(cutoff, self.settings.lost_policy, now)
            .await?
        {
            tracing::warn!(job = %job.id, state = %job.state, "job lost: its agent stayed offline");
        }
        Ok(())
    }

    /// Signs and publishes one outbox command, and records it as sent.
    async fn publish(&self, cmd: &QueuedCommand) -> Result<(), StoreError> {
        let Some(key) = self
            .store
            .agent_signing_keys(&cmd.agent)
            .await?
            .into_iter()
            .next()
        else {
            tracing::warn!(agent = %cmd.agent, "no live token for agent; command kept in the outbox");
            return Ok(());
        };
        let topic = cmd.topic().to_string();
        let payload = key.sign(&topic, &cmd.json);
        if let Err(e) = self
            .client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
        {
            // The link is gone (shutting down); the outbox keeps the command.
            tracing::warn!(agent = %cmd.agent, error = %e, "publish failed; kept in the outbox");
            return Ok(());
        }
        self.metrics.mqtt_out();
        self.store.mark_sent(cmd.id, self.now()).await
    }
}

/// What follows a step of the run loop (ordered: a sweep includes placement).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Pass {
    /// Nothing to place.
    None,
    /// Place queued jobs; publish commands the store noted.
    Placement,
    /// Place, and publish every unsent command.
    Sweep,
}

/// Consumes a pending kick without waiting for one.
async fn kicked(kick: &Notify) -> bool {
    tokio::select! {
        biased;
        () = kick.notified() => true,
        () = std::future::ready(()) => false,
    }
}
