//! The MQTT session: one task owns the rumqttc event loop, the spool and every publish.
//!
//! Everyone else holds a [`SessionHandle`] and sends requests over a channel: an event to
//! spool and publish, a retained machine state, a telemetry sample, shutdown. Commands
//! arriving on the agent's own commands topic are verified, decoded and handed out on a
//! channel.
//!
//! ## Acknowledgements and order
//!
//! rumqttc reports `Outgoing::Publish(pkid)` in the order publishes were handed to it and
//! `Incoming::PubAck(pkid)` when the broker has the message. The task keeps a FIFO of what
//! it handed over, so it knows which spool entry a packet id belongs to and deletes the
//! entry only on its PUBACK.
//!
//! The session is clean (no broker-side state), and the task hands nothing to rumqttc while
//! disconnected: rumqttc drops its own unacknowledged publishes when a clean session
//! starts, and after every CONNACK this task republishes the whole unacknowledged spool in
//! key order. So a subscriber sees the events in order, some possibly twice; the message id
//! makes the second copy recognisable.
//!
//! The poll future is never cancelled: requests are served while it is pending, inside one
//! `select!` that only ever completes the poll future or receives from a channel.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;
use std::time::Duration;

use munifab_protocol::{
    AgentId, AgentStatus, Command, Event, Family, MachineId, MachineState, Message, Presence,
    SigningKey, StateBody, StatusBody, Telemetry, TelemetryBody, Topic,
};
use rumqttc::{
    AsyncClient, ConnectionError, EventLoop, LastWill, MqttOptions, Outgoing, Packet, QoS,
    TlsConfiguration, Transport,
};
use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;

use crate::backoff::Backoff;
use crate::config::BrokerSettings;
use crate::spool::{Spool, SpoolEntry, SpoolError};

/// Spooled events handed to rumqttc and not yet acknowledged, at most. Bounds the client
/// channel's use, so `try_publish` from the owning task never finds it full.
const WINDOW: usize = 32;
const CLIENT_CAPACITY: usize = 256;

/// Why the session stopped.
#[derive(Debug, thiserror::Error)]
pub enum SessionError {
    /// The spool could not be written or cleaned: events could be lost, so the session stops.
    #[error(transparent)]
    Spool(#[from] SpoolError),
    /// The TLS configuration could not be built.
    #[error("broker TLS: {0}")]
    Tls(String),
}

/// What the session needs to know.
#[derive(Debug, Clone)]
pub struct SessionSettings {
    /// This agent.
    pub agent: AgentId,
    /// Its site.
    pub site: Option<String>,
    /// Software version announced in the status.
    pub version: String,
    /// Machines announced in the status.
    pub machines: Vec<MachineId>,
    /// The broker.
    pub broker: BrokerSettings,
    /// Key that signs what the agent publishes and verifies commands.
    pub key: SigningKey,
}

/// A decoded, verified command, or one the agent cannot act on.
#[derive(Debug, Clone)]
pub enum Incoming {
    /// A verified command (possibly of an unknown type: `Command::Unknown`).
    Command(Box<Message<Command>>),
    /// A correctly signed message that is not a valid command.
    Malformed {
        /// The message id, when it could be read.
        id: Option<uuid::Uuid>,
        /// The `type`, when it could be read.
        type_name: String,
        /// What was wrong.
        reason: String,
    },
}

enum Request {
    Event(Event, Option<oneshot::Sender<()>>),
    State(MachineState),
    Telemetry(Telemetry),
    Shutdown(Duration, oneshot::Sender<usize>),
}

/// Cloneable handle to the session task.
#[derive(Debug, Clone)]
pub struct SessionHandle {
    tx: mpsc::Sender<Request>,
}

impl std::fmt::Debug for Request {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Request::Event(..) => "Event",
            Request::State(_) => "State",
            Request::Telemetry(_) => "Telemetry",
            Request::Shutdown(..) => "Shutdown",
        })
    }
}

impl SessionHandle {
    /// Spools `event` (durably) and publishes it. Returns once it is on disk.
    pub async fn event(&self, event: Event) {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Event(event, Some(tx))).await.is_ok() {
            let _ = rx.await;
        }
    }

    /// Publishes the retained state of a machine (the latest wins; republished on reconnect).
    pub async fn state(&self, state: MachineState) {
        let _ = self.tx.send(Request::State(state)).await;
    }

    /// Publishes a telemetry sample if connected; dropped otherwise (QoS 0).
    pub fn telemetry(&self, sample: Telemetry) {
        let _ = self.tx.try_send(Request::Telemetry(sample));
    }

    /// Publishes the offline status, waits up to `timeout` for the spool to drain, and
    /// disconnects. Returns the number of events left in the spool for the next start.
    pub async fn shutdown(&self, timeout: Duration) -> usize {
        let (tx, rx) = oneshot::channel();
        if self.tx.send(Request::Shutdown(timeout, tx)).await.is_err() {
            return 0;
        }
        rx.await.unwrap_or(0)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Tag {
    Spooled(u64),
    Offline,
    Other,
}

/// Starts the session task. `pending` are the spooled events of earlier runs (from
/// [`Spool::open`]); commands are delivered on `commands`.
pub fn spawn(
    settings: SessionSettings,
    spool: Spool,
    pending: Vec<SpoolEntry>,
    commands: mpsc::Sender<Incoming>,
) -> Result<
    (
        SessionHandle,
        tokio::task::JoinHandle<Result<(), SessionError>>,
    ),
    SessionError,
> {
    let options = mqtt_options(&settings)?;
    let (client, eventloop) = AsyncClient::new(options, CLIENT_CAPACITY);
    let (tx, rx) = mpsc::channel(1024);
    let backoff = Backoff::new(settings.broker.reconnect_min, settings.broker.reconnect_max);
    let task = Task {
        commands_topic: Topic::Commands(settings.agent.clone()).to_string(),
        events_topic: Topic::Events(settings.agent.clone()).to_string(),
        settings,
        client,
        inbox: rx,
        commands,
        spool,
        pending: pending.into_iter().map(|e| (e.key, e)).collect(),
        cursor: 0,
        fifo: VecDeque::new(),
        pkids: HashMap::new(),
        states: BTreeMap::new(),
        connected: false,
        backoff,
        shutdown: None,
    };
    let handle = tokio::spawn(task.run(eventloop));
    Ok((SessionHandle { tx }, handle))
}

fn mqtt_options(s: &SessionSettings) -> Result<MqttOptions, SessionError> {
    let b = &s.broker;
    let mut o = MqttOptions::new(s.agent.as_str(), b.host.clone(), b.port);
    o.set_keep_alive(b.keep_alive);
    o.set_clean_session(true);
    o.set_credentials(b.username.clone(), b.token.expose());
    o.set_max_packet_size(512 * 1024, 512 * 1024);
    let status_topic = Topic::Status(s.agent.clone()).to_string();
    let will = Message::stamped(StatusBody::AgentStatus(AgentStatus::last_will(
        s.version.clone(),
        s.site.clone(),
    )));
    let payload = s.key.sign(&status_topic, &will.to_json());
    o.set_last_will(LastWill::new(status_topic, payload, QoS::AtLeastOnce, true));
    if let Some(tls) = &b.tls {
        o.set_transport(Transport::Tls(TlsConfiguration::Rustls(Arc::new(
            crate::tls::client_config(tls.ca_file.as_deref()).map_err(SessionError::Tls)?,
        ))));
    }
    Ok(o)
}

struct Shutdown {
    deadline: Instant,
    reply: oneshot::Sender<usize>,
    offline_acked: bool,
}

struct Task {
    settings: SessionSettings,
    commands_topic: String,
    events_topic: String,
    client: AsyncClient,
    inbox: mpsc::Receiver<Request>,
    commands: mpsc::Sender<Incoming>,
    spool: Spool,
    /// Unacknowledged spooled events by key.
    pending: BTreeMap<u64, SpoolEntry>,
    /// Entries with a key below this were handed to rumqttc in this connection.
    cursor: u64,
    fifo: VecDeque<Tag>,
    pkids: HashMap<u16, Tag>,
    states: BTreeMap<MachineId, MachineState>,
    connected: bool,
    backoff: Backoff,
    shutdown: Option<Shutdown>,
}

impl Task {
    async fn run(mut self, mut eventloop: EventLoop) -> Result<(), SessionError> {
        let mut delay: Option<Duration> = None;
        loop {
            let outcome = {
                let wait = delay.take();
                let poll = async {
                    if let Some(d) = wait {
                        tokio::time::sleep(d).await;
                    }
                    eventloop.poll().await
                };
                tokio::pin!(poll);
                loop {
                    let deadline = self.shutdown.as_ref().map(|s| s.deadline);
                    tokio::select! {
                        r = &mut poll => break Some(r),
                        req = self.inbox.recv(), if self.shutdown.is_none() => match req {
                            Some(req) => self.request(req)?,
                            // Every handle is gone: shut down with a short grace.
                            None => self.begin_shutdown(Duration::from_secs(5), oneshot::channel().0),
                        },
                        _ = sleep_until_opt(deadline) => break None,
                    }
                    if self.shutdown_complete() {
                        break None;
                    }
                }
            };
            match outcome {
                None => return self.finish(&mut eventloop).await,
                Some(Ok(event)) => self.handle(event).await?,
                Some(Err(e)) => {
                    let d = self.backoff.next_delay(fastrand::f64());
                    if self.connected {
                        tracing::warn!(error = %e, retry_in = ?d, "broker connection lost");
                    } else {
                        tracing::debug!(error = %e, retry_in = ?d, "broker connection failed");
                    }
                    self.disconnected();
                    if matches!(e, ConnectionError::RequestsDone) {
                        return Ok(());
                    }
                    delay = Some(d);
                }
            }
            if self.shutdown_complete() {
                return self.finish(&mut eventloop).await;
            }
        }
    }

    fn request(&mut self, req: Request) -> Result<(), SessionError> {
        match req {
            Request::Event(event, done) => {
                let msg = Message::stamped(event);
                let payload = self.settings.key.sign(&self.events_topic, &msg.to_json());
                let entry = self.spool.append(&self.events_topic, &payload)?;
                tracing::debug!(key = entry.key, id = %msg.id, kind = msg.body.type_name(), "event spooled");
                self.pending.insert(entry.key, entry);
                if let Some(done) = done {
                    let _ = done.send(());
                }
                self.pump();
            }
            Request::State(state) => {
                let machine = state.machine.clone();
                self.states.insert(machine.clone(), state);
                if self.connected {
                    self.publish_state(&machine);
                }
            }
            Request::Telemetry(sample) => {
                if self.connected {
                    let topic =
                        Topic::Telemetry(self.settings.agent.clone(), sample.machine.clone())
                            .to_string();
                    let msg = Message::stamped(TelemetryBody::Telemetry(sample));
                    let payload = self.settings.key.sign(&topic, &msg.to_json());
                    if self
                        .client
                        .try_publish(topic, QoS::AtMostOnce, false, payload)
                        .is_ok()
                    {
                        self.fifo.push_back(Tag::Other);
                    }
                }
            }
            Request::Shutdown(timeout, reply) => self.begin_shutdown(timeout, reply),
        }
        Ok(())
    }

    fn begin_shutdown(&mut self, timeout: Duration, reply: oneshot::Sender<usize>) {
        self.shutdown = Some(Shutdown {
            deadline: Instant::now() + timeout,
            reply,
            offline_acked: false,
        });
        if self.connected {
            self.publish_offline();
        }
    }

    fn shutdown_complete(&self) -> bool {
        self.shutdown
            .as_ref()
            .is_some_and(|s| s.offline_acked && self.pending.is_empty())
    }

    async fn finish(mut self, eventloop: &mut EventLoop) -> Result<(), SessionError> {
        if self.connected && self.client.try_disconnect().is_ok() {
            // Drive the loop until the DISCONNECT is written (or the connection is gone),
            // so the broker does not publish the last will over our clean offline status.
            let until = Instant::now() + Duration::from_secs(2);
            while let Ok(Ok(ev)) = tokio::time::timeout_at(until, eventloop.poll()).await {
                if matches!(ev, rumqttc::Event::Outgoing(Outgoing::Disconnect)) {
                    break;
                }
            }
        }
        let left = self.pending.len();
        if left > 0 {
            tracing::warn!(
                events = left,
                "shutting down with unacknowledged events; they stay spooled for the next start"
            );
        }
        if let Some(s) = self.shutdown.take() {
            let _ = s.reply.send(left);
        }
        Ok(())
    }

    async fn handle(&mut self, event: rumqttc::Event) -> Result<(), SessionError> {
        match event {
            rumqttc::Event::Incoming(Packet::ConnAck(ack)) => {
                tracing::info!(
                    broker = %format!("{}:{}", self.settings.broker.host, self.settings.broker.port),
                    code = ?ack.code,
                    spooled = self.pending.len(),
                    "connected to broker"
                );
                self.connected = true;
                self.backoff.reset();
                self.fifo.clear();
                self.pkids.clear();
                self.cursor = 0;
                if self
                    .client
                    .try_subscribe(self.commands_topic.clone(), QoS::AtLeastOnce)
                    .is_err()
                {
                    tracing::error!("could not queue the commands subscription");
                }
                if self.shutdown.is_some() {
                    self.publish_offline();
                } else {
                    self.publish_status(Presence::Online, Tag::Other);
                    let machines: Vec<_> = self.states.keys().cloned().collect();
                    for m in machines {
                        self.publish_state(&m);
                    }
                }
                self.pump();
            }
            rumqttc::Event::Outgoing(Outgoing::Publish(pkid)) => {
                let tag = self.fifo.pop_front().unwrap_or(Tag::Other);
                tracing::trace!(pkid, ?tag, "published");
                if tag != Tag::Other {
                    self.pkids.insert(pkid, tag);
                }
            }
            rumqttc::Event::Incoming(Packet::PubAck(ack)) => match self.pkids.remove(&ack.pkid) {
                Some(Tag::Spooled(key)) => {
                    self.spool.remove(key)?;
                    self.pending.remove(&key);
                    self.pump();
                }
                Some(Tag::Offline) => {
                    if let Some(s) = &mut self.shutdown {
                        s.offline_acked = true;
                    }
                }
                _ => {}
            },
            rumqttc::Event::Incoming(Packet::Publish(p)) => {
                if p.topic != self.commands_topic {
                    tracing::warn!(topic = %p.topic, "message on a topic this agent did not subscribe to; dropped");
                    return Ok(());
                }
                if let Some(incoming) = self.decode_command(&p.topic, &p.payload) {
                    let _ = self.commands.send(incoming).await;
                }
            }
            rumqttc::Event::Incoming(Packet::SubAck(ack)) => {
                tracing::debug!(codes = ?ack.return_codes, "subscribed to commands");
            }
            _ => {}
        }
        Ok(())
    }

    fn decode_command(&self, topic: &str, payload: &[u8]) -> Option<Incoming> {
        if let Err(e) = self.settings.key.verify(topic, payload) {
            // Not from our coordinator: answering would let anyone on the broker make the
            // agent talk. Log and drop.
            tracing::warn!(error = %e, "command dropped: signature does not verify");
            return None;
        }
        match Message::<Command>::from_json(payload) {
            Ok(msg) => Some(Incoming::Command(Box::new(msg))),
            Err(e) => {
                let value: Option<serde_json::Value> = serde_json::from_slice(payload).ok();
                let id = value
                    .as_ref()
                    .and_then(|v| v.get("id")?.as_str()?.parse().ok());
                let type_name = value
                    .as_ref()
                    .and_then(|v| Some(v.get("type")?.as_str()?.to_string()))
                    .unwrap_or_default();
                Some(Incoming::Malformed {
                    id,
                    type_name,
                    reason: e.to_string(),
                })
            }
        }
    }

    fn disconnected(&mut self) {
        self.connected = false;
        self.fifo.clear();
        self.pkids.clear();
        self.cursor = 0;
    }

    /// Hands spooled events to rumqttc, oldest first, up to the window.
    fn pump(&mut self) {
        if !self.connected {
            return;
        }
        let in_flight = self.pending.range(..self.cursor).count();
        let mut room = WINDOW.saturating_sub(in_flight);
        let next: Vec<(u64, String, Vec<u8>)> = self
            .pending
            .range(self.cursor..)
            .take(room)
            .map(|(k, e)| (*k, e.topic.clone(), e.payload.clone()))
            .collect();
        for (key, topic, payload) in next {
            if room == 0 {
                break;
            }
            if let Err(e) = self
                .client
                .try_publish(topic, QoS::AtLeastOnce, false, payload)
            {
                tracing::debug!(error = %e, "publish queue full; retrying on the next acknowledgement");
                break;
            }
            self.fifo.push_back(Tag::Spooled(key));
            self.cursor = key + 1;
            room -= 1;
        }
    }

    fn publish_status(&mut self, state: Presence, tag: Tag) -> bool {
        let topic = Topic::Status(self.settings.agent.clone()).to_string();
        let msg = Message::stamped(StatusBody::AgentStatus(AgentStatus {
            state,
            version: self.settings.version.clone(),
            site: self.settings.site.clone(),
            machines: if state == Presence::Online {
                self.settings.machines.clone()
            } else {
                Vec::new()
            },
            last_will: false,
        }));
        let payload = self.settings.key.sign(&topic, &msg.to_json());
        let ok = self
            .client
            .try_publish(topic, QoS::AtLeastOnce, true, payload)
            .is_ok();
        if ok {
            self.fifo.push_back(tag);
        }
        ok
    }

    fn publish_offline(&mut self) {
        // Machines go offline first, so a coordinator reading the retained states after the
        // agent left does not see a ready machine.
        let machines: Vec<_> = self.states.keys().cloned().collect();
        for m in machines {
            if let Some(s) = self.states.get_mut(&m) {
                s.state = munifab_protocol::MachineStatus::Offline;
            }
            self.publish_state(&m);
        }
        self.publish_status(Presence::Offline, Tag::Offline);
    }

    fn publish_state(&mut self, machine: &MachineId) {
        let Some(state) = self.states.get(machine) else {
            return;
        };
        let topic = Topic::MachineState(self.settings.agent.clone(), machine.clone()).to_string();
        let msg = Message::stamped(StateBody::MachineState(state.clone()));
        let payload = self.settings.key.sign(&topic, &msg.to_json());
        if self
            .client
            .try_publish(topic, QoS::AtLeastOnce, true, payload)
            .is_ok()
        {
            self.fifo.push_back(Tag::Other);
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
