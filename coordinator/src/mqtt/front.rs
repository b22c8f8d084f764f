//! The embedded broker's front: it terminates every agent's MQTT 3.1.1 connection itself,
//! hands what agents publish straight to the coordinator in this process, and takes the
//! coordinator's commands from rumqttd over **one** connection for all agents.
//!
//! rumqttd 0.20 reserves about 145 KiB per client connection through constants its
//! configuration does not reach (packet queues, read/write buffers, ack logs, a filter log
//! per `commands` subscription), about 70 MiB resident per 1,000 agents, and it keeps every
//! message in an in-memory log per subscribed filter, delivered or not, with no
//! backpressure on publishers. Here rumqttd holds two connections whatever the fleet (the
//! coordinator's and this front's) and carries commands only. An agent costs a task, its
//! socket and a small [`Session`].
//!
//! Per agent connection the front does what a broker does for a clean session:
//!
//! - CONNECT: the agent's token is checked against the store (user name = agent id); the
//!   will may only be on the agent's own `status` topic. No session is kept (CONNACK's
//!   session-present flag is always 0): commands are re-sent by the coordinator from its
//!   database when the agent says it is online, never from a broker session.
//! - PUBLISH QoS 0/1: checked against the ACL ([`super::broker::allowed`]) and handed to
//!   the coordinator's inbox (the channel its MQTT client feeds with an external broker),
//!   in order per connection. A QoS 1 PUBLISH is acknowledged to the agent once the inbox
//!   holds it, so the agent empties its spool only when the coordinator has the message; a
//!   full inbox holds the agent's connection back (TCP backpressure), it never drops. The
//!   retain flag is not kept: an agent's retained status and state only ever serve the
//!   coordinator, which gets them live, and from every agent again when it restarts, as
//!   the agents reconnect and republish. QoS 2 is refused (no agent uses it).
//! - SUBSCRIBE: only the agent's own `commands` topic; anything else closes the connection.
//!   The front holds one upstream subscription to every agent's `commands` and delivers each
//!   message to the subscribed connections of the agent in the topic, with packet ids of
//!   that connection, at most [`AGENT_INFLIGHT`] unacknowledged and [`AGENT_QUEUE`] queued.
//!   An agent that falls further behind is disconnected (its commands are re-sent from the
//!   database when it comes back), so a slow agent never holds up the others. No retained
//!   message is ever delivered on subscription: only the coordinator can publish on a
//!   `commands` topic, and it never sets the retain flag.
//! - PINGREQ, UNSUBSCRIBE, DISCONNECT; the keep-alive (1.5 × the agent's interval without a
//!   packet closes the connection).
//! - The last will is handed to the coordinator when the connection ends any way but DISCONNECT
//!   or a takeover: a drop, a keep-alive expiry, a protocol or ACL violation, a slow
//!   consumer.
//! - A second connection of the same agent with the same client id takes over: the old one
//!   is closed without its will (the agent is not gone; its new connection announces it).
//!   Another agent can never take over, whatever client id it sends.

use std::collections::{HashMap, VecDeque};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use munifab_protocol::{AgentId, Topic};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PingReq, PingResp, PubAck, Publish,
    SubAck, Subscribe, SubscribeReasonCode, UnsubAck,
};
use rumqttc::mqttbytes::{self, QoS};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::sync::{Notify, mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use super::link::LinkEvent;
use crate::store::Store;

/// Largest MQTT packet accepted from an agent or from rumqttd.
pub(crate) const MAX_PACKET: usize = 512 * 1024;

/// How long a new connection may take to send its CONNECT.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// How long one write to an agent may take before the agent counts as gone.
const WRITE_TIMEOUT: Duration = Duration::from_secs(20);

/// How long a takeover waits for the old connection to wind down (its last packets
/// handed over) before answering the new one.
const TAKEOVER_WAIT: Duration = Duration::from_secs(5);

/// Bytes reserved per read from a socket (agents' messages are mostly under this; larger
/// ones take several reads).
const READ_CHUNK: usize = 4096;

/// Commands sent to one agent connection and not yet acknowledged.
pub const AGENT_INFLIGHT: usize = 16;

/// Commands waiting for one agent connection behind those in flight; one more and the
/// connection is closed as a slow consumer.
pub const AGENT_QUEUE: usize = 64;

/// Keep-alive of the upstream connection, and how often it pings.
const UPSTREAM_KEEP_ALIVE_S: u16 = 60;
const UPSTREAM_PING: Duration = Duration::from_secs(20);
/// How long the first upstream connection waits for rumqttd to listen.
const UPSTREAM_START_PATIENCE: Duration = Duration::from_secs(10);

/// MQTT user name of the front on rumqttd's private port. Not a valid agent id (upper
/// case), so no agent token can claim it.
pub const FRONT_USER: &str = "MUNIFAB-FRONT";

/// The front's upstream subscription: every agent's `commands` topic.
pub(crate) fn commands_filter() -> String {
    format!("{}/+/commands", munifab_protocol::topic::PREFIX)
}

/// How a refused CONNECT is answered.
#[derive(Debug, thiserror::Error)]
pub(crate) enum Refusal {
    /// User name or password missing or wrong.
    #[error("{0}")]
    Credentials(String),
    /// Authenticated, but asking for something the agent may not have.
    #[error("{0}")]
    NotAuthorized(String),
    /// The store could not answer.
    #[error("{0}")]
    Unavailable(String),
}

impl Refusal {
    fn code(&self) -> ConnectReturnCode {
        match self {
            Refusal::Credentials(_) => ConnectReturnCode::BadUserNamePassword,
            Refusal::NotAuthorized(_) => ConnectReturnCode::NotAuthorized,
            Refusal::Unavailable(_) => ConnectReturnCode::ServiceUnavailable,
        }
    }
}

/// Why an agent connection ended.
#[derive(Debug)]
enum End {
    /// DISCONNECT: no will.
    Disconnect,
    /// A newer connection with the same agent and client id: no will.
    TakenOver,
    /// Shutdown of the coordinator: no will (the process is going).
    Shutdown,
    /// Anything else (drop, keep-alive, violation, slow consumer, upstream lost): the
    /// will is published.
    Unclean(String),
}

/// What the rest of the front shares with one agent connection's task.
struct Session {
    agent: AgentId,
    client_id: String,
    state: Mutex<Shared>,
    /// Wakes the connection's task: something was queued for it, or it must end.
    wake: Notify,
    /// Cancelled once the connection's task has handed over its last packet (and its will).
    done: CancellationToken,
}

#[derive(Default)]
struct Shared {
    /// Commands for this connection, not yet written: payload and QoS.
    commands: VecDeque<(Bytes, QoS)>,
    /// The QoS of the agent's `commands` subscription, if it has one.
    subscribed: Option<QoS>,
    /// Set by others to make the connection end.
    end: Option<End>,
}

impl Session {
    fn state(&self) -> std::sync::MutexGuard<'_, Shared> {
        // A panic while holding this lock leaves plain data behind; keep going.
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn end(&self, why: End) {
        let mut s = self.state();
        if s.end.is_none() {
            s.end = Some(why);
        }
        drop(s);
        self.wake.notify_one();
    }
}

/// The front: sessions by agent, and the upstream connection's shared parts.
pub(crate) struct Front {
    store: Store,
    sessions: Mutex<HashMap<AgentId, Vec<Arc<Session>>>>,
    /// The coordinator's inbox: what agents publish.
    inbox: mpsc::Sender<LinkEvent>,
    /// PUBACKs owed to rumqttd for the commands it delivered; written by the upstream
    /// writer (the reader never waits on the writer, so neither side can stall the other).
    up_acks: Mutex<Vec<u16>>,
    up_wake: Notify,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Where and how the front reaches rumqttd.
pub(crate) struct Upstream {
    pub addr: SocketAddr,
    pub password: String,
}

impl Front {
    /// Creates the front and starts its upstream connection; returns once it is connected
    /// and subscribed (or with the reason it could not).
    pub(crate) async fn start(
        store: Store,
        upstream: Upstream,
        inbox: mpsc::Sender<LinkEvent>,
        shutdown: CancellationToken,
    ) -> Result<Arc<Front>, String> {
        let front = Arc::new(Front {
            store,
            sessions: Mutex::new(HashMap::new()),
            inbox,
            up_acks: Mutex::new(Vec::new()),
            up_wake: Notify::new(),
        });
        let (ready, connected) = oneshot::channel();
        tokio::spawn(upstream_loop(
            front.clone(),
            upstream,
            ready,
            shutdown.clone(),
        ));
        connected
            .await
            .map_err(|_| "the upstream task ended".to_string())??;
        Ok(front)
    }

    /// Serves one agent connection until it ends; `Err` says why it was refused or cut.
    pub(crate) async fn serve(
        self: &Arc<Self>,
        stream: TcpStream,
        shutdown: &CancellationToken,
    ) -> Result<(), String> {
        let _ = stream.set_nodelay(true);
        let (mut read, mut write) = stream.into_split();
        // The CONNECT phase and the will are boxed: their futures exist only while they run,
        // so the task of a connected agent keeps only what it needs while idle.
        let Some((connect, agent, buf)) = Box::pin(self.accept(&mut read, &mut write)).await?
        else {
            return Ok(());
        };
        let session = Arc::new(Session {
            agent: agent.clone(),
            client_id: connect.client_id,
            state: Mutex::new(Shared::default()),
            wake: Notify::new(),
            done: CancellationToken::new(),
        });
        let old = self.register(&session);
        if let Some(old) = old {
            old.end(End::TakenOver);
            // Its last packets reach the coordinator before anything of the new connection.
            let _ = Box::pin(tokio::time::timeout(TAKEOVER_WAIT, old.done.cancelled())).await;
        }
        // The will's payload is a slice of the read buffer the CONNECT arrived in: copied,
        // so it does not keep that whole buffer for the life of the connection.
        let will = connect.last_will.map(|mut w| {
            w.message = Bytes::copy_from_slice(&w.message);
            w
        });
        // Likewise an empty read buffer is dropped rather than kept with its allocation: the
        // old buffer is replaced (and so freed), not shadowed, which would keep it alive, 4 KiB
        // per agent, for as long as the connection lasts.
        let mut buf = buf;
        if buf.is_empty() {
            buf = BytesMut::new();
        }
        let mut conn = AgentConn {
            front: self,
            session: &session,
            will,
            commands_topic: Topic::Commands(agent).to_string(),
            inflight: VecDeque::new(),
            next_pkid: 0,
            out: BytesMut::new(),
        };
        let _ = ConnAck::new(ConnectReturnCode::Success, false).write(&mut conn.out);
        let end = tokio::select! {
            () = shutdown.cancelled() => End::Shutdown,
            end = conn.run(&mut read, &mut write, buf, connect.keep_alive) => end,
        };
        let result = match &end {
            End::Unclean(why) => Err(why.clone()),
            _ => Ok(()),
        };
        if let End::Unclean(_) = end
            && let Some(will) = conn.will.take()
        {
            Box::pin(self.publish_will(will)).await;
        }
        self.unregister(&session);
        session.done.cancel();
        result
    }

    /// Reads the CONNECT and checks it; a refusal is answered here. `None`: the client left
    /// before sending anything.
    async fn accept(
        &self,
        read: &mut OwnedReadHalf,
        write: &mut OwnedWriteHalf,
    ) -> Result<Option<(Connect, AgentId, BytesMut)>, String> {
        let mut buf = BytesMut::new();
        // A client that connects and never sends CONNECT must not hold a task forever.
        let first = tokio::time::timeout(CONNECT_TIMEOUT, next_packet(read, &mut buf))
            .await
            .map_err(|_| format!("no CONNECT within {} s", CONNECT_TIMEOUT.as_secs()))??;
        let Some(first) = first else {
            return Ok(None);
        };
        let Packet::Connect(connect) = first else {
            return Err("the first packet is not CONNECT".into());
        };
        match check_connect(&connect, &self.store).await {
            Ok(agent) => Ok(Some((connect, agent, buf))),
            Err(refusal) => {
                let mut out = BytesMut::new();
                let _ = ConnAck::new(refusal.code(), false).write(&mut out);
                let _ = tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&out)).await;
                Err(refusal.to_string())
            }
        }
    }

    /// Adds `session`; returns the one it takes over, if any.
    fn register(&self, session: &Arc<Session>) -> Option<Arc<Session>> {
        let mut sessions = lock(&self.sessions);
        let list = sessions.entry(session.agent.clone()).or_default();
        // An empty client id asks the broker for a unique one: it never takes over.
        let old = if session.client_id.is_empty() {
            None
        } else {
            list.iter()
                .position(|s| s.client_id == session.client_id)
                .map(|i| list.swap_remove(i))
        };
        list.push(session.clone());
        old
    }

    fn unregister(&self, session: &Arc<Session>) {
        let mut sessions = lock(&self.sessions);
        if let Some(list) = sessions.get_mut(&session.agent) {
            list.retain(|s| !Arc::ptr_eq(s, session));
            if list.is_empty() {
                sessions.remove(&session.agent);
            }
        }
    }

    async fn publish_will(&self, will: LastWill) {
        let publish = Publish::from_bytes(will.topic, will.qos, will.message);
        // Nobody to acknowledge: the connection is gone.
        let _ = self.hand_over(publish).await;
    }

    /// Puts `publish` in the coordinator's inbox, waiting while it is full; `Err` once the
    /// coordinator is gone (shutting down).
    async fn hand_over(&self, publish: Publish) -> Result<(), String> {
        // Copied out of the connection's read buffer, so a queued message keeps only itself.
        let payload = Bytes::copy_from_slice(&publish.payload);
        self.inbox
            .send(LinkEvent::Message {
                topic: publish.topic,
                payload,
            })
            .await
            .map_err(|_| "the coordinator is gone".to_string())
    }

    /// A message rumqttd delivered on some agent's `commands` topic.
    fn deliver(&self, publish: Publish) {
        let Ok(Topic::Commands(agent)) = Topic::parse(&publish.topic) else {
            tracing::warn!(topic = %publish.topic, "MQTT front: unexpected upstream message");
            return;
        };
        let targets: Vec<Arc<Session>> = match lock(&self.sessions).get(&agent) {
            Some(list) => list.clone(),
            // Not connected: the coordinator re-sends from its database when it is back.
            None => return,
        };
        // Copied out of the upstream read buffer, so a queued command keeps only itself.
        let payload = Bytes::copy_from_slice(&publish.payload);
        for s in targets {
            let mut state = s.state();
            let Some(sub) = state.subscribed else {
                continue;
            };
            if state.commands.len() >= AGENT_QUEUE {
                if state.end.is_none() {
                    state.end = Some(End::Unclean(format!(
                        "agent {agent} does not read its commands ({AGENT_QUEUE} queued)"
                    )));
                }
            } else {
                state
                    .commands
                    .push_back((payload.clone(), lower(sub, publish.qos)));
            }
            drop(state);
            s.wake.notify_one();
        }
    }

    /// The upstream connection broke: every agent connection is closed (so no command can
    /// be missed while it is down: they are re-sent from the database when the agents are
    /// back) and acks owed upstream are forgotten.
    fn upstream_lost(&self) {
        lock(&self.up_acks).clear();
        let all: Vec<Arc<Session>> = lock(&self.sessions).values().flatten().cloned().collect();
        for s in all {
            s.end(End::Unclean(
                "the upstream broker connection was lost".into(),
            ));
        }
    }
}

/// One agent connection's own state (lives in its task).
struct AgentConn<'a> {
    front: &'a Arc<Front>,
    session: &'a Arc<Session>,
    will: Option<LastWill>,
    commands_topic: String,
    /// Packet ids of commands written and not yet acknowledged.
    inflight: VecDeque<u16>,
    next_pkid: u16,
    /// Bytes to write to the agent, sent in one write after each wake-up.
    out: BytesMut,
}

impl AgentConn<'_> {
    async fn run(
        &mut self,
        read: &mut OwnedReadHalf,
        write: &mut OwnedWriteHalf,
        mut buf: BytesMut,
        keep_alive_s: u16,
    ) -> End {
        // MQTT 3.1.1: the server closes a connection silent for 1.5 × its keep-alive.
        let keep_alive =
            (keep_alive_s > 0).then(|| Duration::from_millis(keep_alive_s as u64 * 1500));
        let far = Duration::from_secs(365 * 24 * 3600);
        let expiry = tokio::time::sleep(keep_alive.unwrap_or(far));
        tokio::pin!(expiry);
        // Handling packets and writing are boxed: their futures exist only while they run,
        // so an idle connection's task keeps only this loop's state (a few hundred bytes
        // instead of about 2 KiB, per agent).
        // The CONNECT may have come with more packets behind it.
        if let Err(e) = Box::pin(self.handle_buffered(&mut buf)).await {
            return e;
        }
        loop {
            if let Err(e) = Box::pin(self.flush(write)).await {
                return e;
            }
            tokio::select! {
                r = read.readable() => {
                    if let Err(e) = r {
                        return End::Unclean(format!("read: {e}"));
                    }
                    buf.reserve(READ_CHUNK);
                    match read.try_read_buf(&mut buf) {
                        Ok(0) => return End::Unclean("connection closed without DISCONNECT".into()),
                        Ok(_) => {
                            if let Some(k) = keep_alive {
                                expiry.as_mut().reset(tokio::time::Instant::now() + k);
                            }
                            if let Err(e) = Box::pin(self.handle_buffered(&mut buf)).await {
                                return e;
                            }
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => return End::Unclean(format!("read: {e}")),
                    }
                    // An idle connection holds no read buffer.
                    if buf.is_empty() {
                        buf = BytesMut::new();
                    }
                }
                () = self.session.wake.notified() => {}
                () = &mut expiry => {
                    return End::Unclean(format!("no packet within 1.5 × keep-alive ({keep_alive_s} s)"));
                }
            }
        }
    }

    /// Handles every whole packet in `buf`.
    async fn handle_buffered(&mut self, buf: &mut BytesMut) -> Result<(), End> {
        loop {
            match mqttbytes::check(buf.iter(), MAX_PACKET) {
                Ok(_) => {}
                Err(mqttbytes::Error::InsufficientBytes(_)) => return Ok(()),
                Err(e) => return Err(End::Unclean(format!("malformed MQTT packet: {e}"))),
            }
            let packet = Packet::read(buf, MAX_PACKET)
                .map_err(|e| End::Unclean(format!("malformed MQTT packet: {e}")))?;
            self.handle(packet).await?;
        }
    }

    async fn handle(&mut self, packet: Packet) -> Result<(), End> {
        let agent = &self.session.agent;
        super::broker::allowed(agent, &packet).map_err(End::Unclean)?;
        match packet {
            Packet::Publish(p) => match p.qos {
                QoS::AtMostOnce => self.front.hand_over(p).await.map_err(End::Unclean),
                QoS::AtLeastOnce => {
                    let pkid = p.pkid;
                    self.front.hand_over(p).await.map_err(End::Unclean)?;
                    let _ = PubAck::new(pkid).write(&mut self.out);
                    Ok(())
                }
                QoS::ExactlyOnce => Err(End::Unclean(format!(
                    "agent {agent} published with QoS 2, which this broker does not support"
                ))),
            },
            Packet::PubAck(ack) => {
                if let Some(i) = self.inflight.iter().position(|&p| p == ack.pkid) {
                    self.inflight.remove(i);
                }
                Ok(())
            }
            Packet::Subscribe(s) => {
                // `allowed` let through only the agent's own commands topic.
                // Granted: what was asked, at most QoS 1.
                let granted: Vec<QoS> = s
                    .filters
                    .iter()
                    .map(|f| lower(f.qos, QoS::AtLeastOnce))
                    .collect();
                if let Some(&q) = granted.last() {
                    self.session.state().subscribed = Some(q);
                }
                let codes = granted
                    .into_iter()
                    .map(SubscribeReasonCode::Success)
                    .collect();
                let _ = SubAck::new(s.pkid, codes).write(&mut self.out);
                Ok(())
            }
            Packet::Unsubscribe(u) => {
                if u.topics.contains(&self.commands_topic) {
                    let mut state = self.session.state();
                    state.subscribed = None;
                    state.commands.clear();
                }
                let _ = UnsubAck::new(u.pkid).write(&mut self.out);
                Ok(())
            }
            Packet::PingReq => {
                let _ = PingResp.write(&mut self.out);
                Ok(())
            }
            Packet::Disconnect => Err(End::Disconnect),
            other => Err(End::Unclean(format!(
                "agent {agent} sent an unexpected {:?}",
                packet_name(&other)
            ))),
        }
    }

    /// Moves what others queued for this connection into `out` and writes it all at once.
    async fn flush(&mut self, write: &mut OwnedWriteHalf) -> Result<(), End> {
        {
            let mut state = self.session.state();
            if let Some(end) = state.end.take() {
                return Err(end);
            }
            while self.inflight.len() < AGENT_INFLIGHT {
                let Some((payload, qos)) = state.commands.pop_front() else {
                    break;
                };
                let mut p = Publish::from_bytes(self.commands_topic.as_str(), qos, payload);
                if qos != QoS::AtMostOnce {
                    p.pkid = self.pkid();
                    self.inflight.push_back(p.pkid);
                }
                let _ = p.write(&mut self.out);
            }
            if state.commands.is_empty() && state.commands.capacity() > 0 {
                state.commands = VecDeque::new();
            }
        }
        if self.out.is_empty() {
            return Ok(());
        }
        match tokio::time::timeout(WRITE_TIMEOUT, write.write_all(&self.out)).await {
            Ok(Ok(())) => {
                // An idle connection holds no write buffer either.
                self.out = BytesMut::new();
                Ok(())
            }
            Ok(Err(e)) => Err(End::Unclean(format!("write: {e}"))),
            Err(_) => Err(End::Unclean(format!(
                "write blocked for {} s",
                WRITE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// The next free packet id of this connection (never 0).
    fn pkid(&mut self) -> u16 {
        loop {
            self.next_pkid = self.next_pkid.wrapping_add(1);
            if self.next_pkid != 0 && !self.inflight.contains(&self.next_pkid) {
                return self.next_pkid;
            }
        }
    }
}

/// The lower of two QoS levels (`QoS` is only `PartialOrd`).
fn lower(a: QoS, b: QoS) -> QoS {
    if (a as u8) <= (b as u8) { a } else { b }
}

fn packet_name(p: &Packet) -> &'static str {
    match p {
        Packet::Connect(_) => "CONNECT",
        Packet::ConnAck(_) => "CONNACK",
        Packet::Publish(_) => "PUBLISH",
        Packet::PubAck(_) => "PUBACK",
        Packet::PubRec(_) => "PUBREC",
        Packet::PubRel(_) => "PUBREL",
        Packet::PubComp(_) => "PUBCOMP",
        Packet::Subscribe(_) => "SUBSCRIBE",
        Packet::SubAck(_) => "SUBACK",
        Packet::Unsubscribe(_) => "UNSUBSCRIBE",
        Packet::UnsubAck(_) => "UNSUBACK",
        Packet::PingReq => "PINGREQ",
        Packet::PingResp => "PINGRESP",
        Packet::Disconnect => "DISCONNECT",
    }
}

/// Reads until `buf` holds one whole packet and decodes it; `None` at end of stream.
async fn next_packet(
    read: &mut OwnedReadHalf,
    buf: &mut BytesMut,
) -> Result<Option<Packet>, String> {
    loop {
        match mqttbytes::check(buf.iter(), MAX_PACKET) {
            Ok(_) => {
                return Packet::read(buf, MAX_PACKET)
                    .map(Some)
                    .map_err(|e| format!("malformed MQTT packet: {e}"));
            }
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(format!("malformed MQTT packet: {e}")),
        }
        buf.reserve(READ_CHUNK);
        let n = tokio::io::AsyncReadExt::read_buf(read, buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Ok(None);
        }
    }
}

async fn check_connect(connect: &Connect, store: &Store) -> Result<AgentId, Refusal> {
    let login = connect
        .login
        .as_ref()
        .ok_or_else(|| Refusal::Credentials("CONNECT without user name and password".into()))?;
    let agent = AgentId::new(login.username.clone()).map_err(|e| {
        Refusal::Credentials(format!(
            "user name {:?} is not an agent id: {e}",
            login.username
        ))
    })?;
    let ok = store
        .agent_password_ok(agent.as_str(), &login.password)
        .await
        .map_err(|e| Refusal::Unavailable(format!("token check failed: {e}")))?;
    if !ok {
        return Err(Refusal::Credentials(format!(
            "bad credentials for agent {agent}"
        )));
    }
    if let Some(will) = &connect.last_will
        && will.topic != Topic::Status(agent.clone()).to_string()
    {
        return Err(Refusal::NotAuthorized(format!(
            "agent {agent} may not register a last will on {:?}",
            will.topic
        )));
    }
    Ok(agent)
}

/// Keeps the one upstream connection: connects, subscribes, runs it, and on failure closes
/// every agent connection and connects again, until `shutdown`.
async fn upstream_loop(
    front: Arc<Front>,
    upstream: Upstream,
    ready: oneshot::Sender<Result<(), String>>,
    shutdown: CancellationToken,
) {
    let mut ready = Some(ready);
    loop {
        // At start rumqttd may still be binding its listener on its own thread.
        let patience = if ready.is_some() {
            UPSTREAM_START_PATIENCE
        } else {
            Duration::ZERO
        };
        let connected = tokio::select! {
            () = shutdown.cancelled() => return,
            c = connect_upstream(&upstream, patience) => c,
        };
        match connected {
            Ok((read, write, buf)) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Ok(()));
                }
                let why = tokio::select! {
                    () = shutdown.cancelled() => return,
                    why = run_upstream(&front, read, write, buf) => why,
                };
                tracing::error!(%why, "MQTT front: upstream connection to rumqttd lost");
            }
            Err(why) => {
                if let Some(r) = ready.take() {
                    let _ = r.send(Err(why));
                    return;
                }
                tracing::error!(%why, "MQTT front: cannot reconnect to rumqttd");
            }
        }
        front.upstream_lost();
        tokio::select! {
            () = shutdown.cancelled() => return,
            () = tokio::time::sleep(Duration::from_millis(500)) => {}
        }
    }
}

/// Connects to rumqttd as [`FRONT_USER`] and subscribes to every agent's commands; a
/// refused connection is tried again for up to `patience`.
async fn connect_upstream(
    upstream: &Upstream,
    patience: Duration,
) -> Result<(OwnedReadHalf, OwnedWriteHalf, BytesMut), String> {
    let deadline = tokio::time::Instant::now() + patience;
    // A real CONNECT is the probe: a bare TCP probe is logged by rumqttd as an error.
    let stream = loop {
        match TcpStream::connect(upstream.addr).await {
            Ok(s) => break s,
            Err(e)
                if e.kind() == std::io::ErrorKind::ConnectionRefused
                    && tokio::time::Instant::now() < deadline =>
            {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            Err(e) => return Err(format!("connect: {e}")),
        }
    };
    let _ = stream.set_nodelay(true);
    let (mut read, mut write) = stream.into_split();
    let mut connect = Connect::new(FRONT_USER);
    connect.keep_alive = UPSTREAM_KEEP_ALIVE_S;
    connect.clean_session = true;
    connect.set_login(FRONT_USER, upstream.password.as_str());
    let mut out = BytesMut::new();
    connect
        .write(&mut out)
        .map_err(|e| format!("encode CONNECT: {e}"))?;
    Subscribe::new(commands_filter(), QoS::AtLeastOnce)
        .write(&mut out)
        .map_err(|e| format!("encode SUBSCRIBE: {e}"))?;
    write
        .write_all(&out)
        .await
        .map_err(|e| format!("write: {e}"))?;
    let mut buf = BytesMut::new();
    let handshake = async {
        match next_packet(&mut read, &mut buf).await? {
            Some(Packet::ConnAck(a)) if a.code == ConnectReturnCode::Success => {}
            other => return Err(format!("refused: {other:?}")),
        }
        match next_packet(&mut read, &mut buf).await? {
            Some(Packet::SubAck(a))
                if a.return_codes
                    .iter()
                    .all(|c| *c != SubscribeReasonCode::Failure) => {}
            other => return Err(format!("subscription refused: {other:?}")),
        }
        Ok(())
    };
    tokio::time::timeout(CONNECT_TIMEOUT, handshake)
        .await
        .map_err(|_| "no CONNACK/SUBACK in time".to_string())??;
    Ok((read, write, buf))
}

/// Runs an established upstream connection until it fails; returns why.
async fn run_upstream(
    front: &Front,
    mut read: OwnedReadHalf,
    mut write: OwnedWriteHalf,
    mut buf: BytesMut,
) -> String {
    let reader = async {
        loop {
            let packet = match next_packet(&mut read, &mut buf).await {
                Ok(Some(p)) => p,
                Ok(None) => return "closed by rumqttd".to_string(),
                Err(e) => return e,
            };
            // Commands; anything else from rumqttd (PINGRESP, SUBACK) needs no answer.
            if let Packet::Publish(p) = packet {
                if p.qos != QoS::AtMostOnce {
                    lock(&front.up_acks).push(p.pkid);
                    front.up_wake.notify_one();
                }
                front.deliver(p);
            }
            if buf.is_empty() {
                buf = BytesMut::new();
            }
        }
    };
    let writer = async {
        let mut ping = tokio::time::interval(UPSTREAM_PING);
        ping.reset();
        let mut out = BytesMut::new();
        loop {
            tokio::select! {
                () = front.up_wake.notified() => {}
                _ = ping.tick() => {
                    let _ = PingReq.write(&mut out);
                }
            }
            for pkid in lock(&front.up_acks).drain(..) {
                let _ = PubAck::new(pkid).write(&mut out);
            }
            if out.is_empty() {
                continue;
            }
            if let Err(e) = write.write_all(&out).await {
                return format!("write: {e}");
            }
            out.clear();
        }
    };
    tokio::select! {
        why = reader => why,
        why = writer => why,
    }
}
