//! The embedded broker: rumqttd on a private loopback port, behind an ACL front on the
//! public address.
//!
//! rumqttd 0.20 authenticates clients but has no topic ACL. The front closes that gap: it
//! reads each client's CONNECT, checks the agent's token against the store itself, and
//! forwards the connection to rumqttd with a password only the front can mint; afterwards
//! it inspects every packet the agent sends and drops the connection on a PUBLISH outside
//! `munifab/v1/agents/{agent}/…` (or to its `commands` topic), a SUBSCRIBE to anything but
//! its own `commands`, or a last will on another topic. Because rumqttd accepts only
//! front-minted passwords (and the coordinator's own per-process secret), a client that
//! dials the private port directly with a real token is refused too.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use bytes::BytesMut;
use munifab_protocol::{AgentId, Topic, TopicKind};
use rumqttc::mqttbytes::v4::{Connect, Packet};
use rumqttc::mqttbytes::{self};
use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio_util::sync::CancellationToken;

use crate::store::Store;

/// MQTT user name the coordinator itself uses on the embedded broker. Not a valid agent id
/// (upper case), so no agent token can ever claim it.
pub const COORDINATOR_USER: &str = "MUNIFAB-COORDINATOR";

/// How long a new connection may take to send its CONNECT.
const CONNECT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(10);

/// Largest MQTT packet the front accepts from an agent.
const MAX_PACKET: usize = 512 * 1024;

/// Bytes the front relays per read (messages are mostly well under this; larger ones take
/// several reads).
const RELAY_CHUNK: usize = 4096;

/// Why the embedded broker could not start.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Binding an address failed.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
    /// rumqttd did not start accepting connections.
    #[error("the embedded broker did not start listening on {0}")]
    NotListening(SocketAddr),
}

/// A running embedded broker.
#[derive(Debug, Clone)]
pub struct EmbeddedBroker {
    public: SocketAddr,
    internal: SocketAddr,
    coordinator_password: String,
}

impl EmbeddedBroker {
    /// The address agents connect to (the ACL front).
    pub fn public_addr(&self) -> SocketAddr {
        self.public
    }

    /// The private rumqttd address the coordinator connects to.
    pub fn internal_addr(&self) -> SocketAddr {
        self.internal
    }

    /// The coordinator's password on the private port (random per process).
    pub fn coordinator_password(&self) -> &str {
        &self.coordinator_password
    }
}

/// The password the front presents to rumqttd for `agent`.
fn minted(secret: &str, agent: &str) -> String {
    hex::encode(Sha256::digest(format!("{secret}\n{agent}").as_bytes()))
}

/// Starts rumqttd on a free loopback port (its own thread; it lives as long as the
/// process) and the ACL front on `listen`, served until `shutdown`.
pub async fn start(
    listen: SocketAddr,
    store: Store,
    shutdown: CancellationToken,
) -> Result<EmbeddedBroker, BrokerError> {
    let front = TcpListener::bind(listen)
        .await
        .map_err(|source| BrokerError::Bind {
            addr: listen,
            source,
        })?;
    let public = front.local_addr().map_err(|source| BrokerError::Bind {
        addr: listen,
        source,
    })?;
    let internal = {
        let probe = std::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).map_err(|source| {
            BrokerError::Bind {
                addr: SocketAddr::from((Ipv4Addr::LOCALHOST, 0)),
                source,
            }
        })?;
        probe.local_addr().map_err(|source| BrokerError::Bind {
            addr: listen,
            source,
        })?
    };
    let front_secret = crate::auth::new_secret();
    let coordinator_password = crate::auth::new_secret();
    let config = rumqttd_config(internal, front_secret.clone(), coordinator_password.clone());
    std::thread::Builder::new()
        .name("mqtt-broker".into())
        .spawn(move || {
            let mut broker = rumqttd::Broker::new(config);
            if let Err(e) = broker.start() {
                tracing::error!(error = %e, "embedded broker stopped");
            }
        })
        .expect("spawn the broker thread");
    wait_listening(internal).await?;
    let front_ctx = Arc::new(Front {
        store,
        upstream: internal,
        secret: front_secret,
    });
    tokio::spawn(serve_front(front, front_ctx, shutdown));
    tracing::info!(%public, %internal, "embedded MQTT broker listening");
    Ok(EmbeddedBroker {
        public,
        internal,
        coordinator_password,
    })
}

async fn wait_listening(addr: SocketAddr) -> Result<(), BrokerError> {
    for _ in 0..1000 {
        if TcpStream::connect(addr).await.is_ok() {
            return Ok(());
        }
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    Err(BrokerError::NotListening(addr))
}

fn rumqttd_config(
    listen: SocketAddr,
    front_secret: String,
    coordinator_password: String,
) -> rumqttd::Config {
    let mut connections = rumqttd::ConnectionSettings {
        connection_timeout_ms: 10_000,
        max_payload_size: MAX_PACKET,
        // Packets read from one connection before the router is told (a batch bound, not
        // an allocation): agents send a few small messages at a time.
        max_inflight_count: 64,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    connections.set_auth_handler(move |_client_id, user: String, pass: String| {
        let ok = if user == COORDINATOR_USER {
            pass == coordinator_password
        } else {
            pass == minted(&front_secret, &user)
        };
        async move { ok }
    });
    let server = rumqttd::ServerSettings {
        name: "v4-internal".into(),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections,
    };
    rumqttd::Config {
        id: 0,
        router: rumqttd::RouterConfig {
            max_connections: 20_000,
            max_outgoing_packet_count: 200,
            // rumqttd keeps every message published to a filter in that filter's in-memory
            // log until `max_segment_count` segments of `max_segment_size` bytes are full:
            // the bound is per filter, and each agent's `commands` subscription is a filter
            // of its own. Commands are kept in the database and re-sent from there, so an
            // agent's log holds only what it has not read yet (one 64 KiB segment; a larger
            // command still fits, alone). The coordinator's own filters carry every agent's
            // messages and get room to lag (see `segments`).
            max_segment_size: 64 * 1024,
            max_segment_count: 1,
            custom_segment: Some(coordinator_segments()),
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        ..rumqttd::Config::default()
    }
}

/// Log bounds for the filters the coordinator subscribes to: status, state and events may
/// lag by a few MiB (a whole fleet reconnecting at once, ~1.3 KiB per agent) before the
/// oldest unread messages are dropped; telemetry is only kept briefly.
fn coordinator_segments() -> HashMap<String, rumqttd::SegmentConfig> {
    munifab_protocol::topic::filter::coordinator()
        .into_iter()
        .map(|f| {
            let (max_segment_size, max_segment_count) = if f.ends_with("/telemetry") {
                (256 * 1024, 2)
            } else {
                (1024 * 1024, 4)
            };
            (
                f,
                rumqttd::SegmentConfig {
                    max_segment_size,
                    max_segment_count,
                },
            )
        })
        .collect()
}

struct Front {
    store: Store,
    upstream: SocketAddr,
    secret: String,
}

async fn serve_front(listener: TcpListener, ctx: Arc<Front>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let ctx = ctx.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        tokio::select! {
                            () = shutdown.cancelled() => {}
                            r = relay(stream, &ctx) => if let Err(why) = r {
                                tracing::warn!(%peer, %why, "MQTT connection refused or dropped");
                            }
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "MQTT front: accept failed"),
            }
        }
    }
}

/// Reads one whole packet's bytes from `stream` into `buf`; returns the frame.
async fn next_frame(
    stream: &mut (impl AsyncReadExt + Unpin),
    buf: &mut BytesMut,
) -> Result<Option<BytesMut>, String> {
    loop {
        match mqttbytes::check(buf.iter(), MAX_PACKET) {
            Ok(header) => return Ok(Some(buf.split_to(header.frame_length()))),
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(format!("malformed MQTT packet: {e}")),
        }
        let n = stream
            .read_buf(buf)
            .await
            .map_err(|e| format!("read: {e}"))?;
        if n == 0 {
            return Ok(None);
        }
    }
}

/// [`next_frame`] for the relay: reads only once the socket is readable, and gives the
/// buffer back when it holds no partial packet, so an idle connection costs no buffer.
async fn next_relayed_frame(
    stream: &mut tokio::net::tcp::OwnedReadHalf,
    buf: &mut BytesMut,
) -> Result<Option<BytesMut>, String> {
    loop {
        match mqttbytes::check(buf.iter(), MAX_PACKET) {
            Ok(header) => {
                let frame = buf.split_to(header.frame_length());
                if buf.is_empty() {
                    *buf = BytesMut::new();
                }
                return Ok(Some(frame));
            }
            Err(mqttbytes::Error::InsufficientBytes(_)) => {}
            Err(e) => return Err(format!("malformed MQTT packet: {e}")),
        }
        stream.readable().await.map_err(|e| format!("read: {e}"))?;
        buf.reserve(RELAY_CHUNK);
        match stream.try_read_buf(buf) {
            Ok(0) => return Ok(None),
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(format!("read: {e}")),
        }
    }
}

fn parse(frame: &BytesMut) -> Result<Packet, String> {
    Packet::read(&mut frame.clone(), MAX_PACKET).map_err(|e| format!("malformed MQTT packet: {e}"))
}

/// What an agent may send after CONNECT; `Err` names the violation.
pub(crate) fn allowed(agent: &AgentId, packet: &Packet) -> Result<(), String> {
    match packet {
        Packet::Publish(p) => match Topic::parse(&p.topic) {
            Ok(t) if t.agent() == agent && t.kind() != TopicKind::Commands => Ok(()),
            _ => Err(format!("agent {agent} may not publish to {:?}", p.topic)),
        },
        Packet::Subscribe(s) => {
            let own = Topic::Commands(agent.clone()).to_string();
            match s.filters.iter().find(|f| f.path != own) {
                None => Ok(()),
                Some(f) => Err(format!("agent {agent} may not subscribe to {:?}", f.path)),
            }
        }
        Packet::Connect(_) => Err("a second CONNECT".into()),
        _ => Ok(()),
    }
}

async fn relay(mut client: TcpStream, ctx: &Front) -> Result<(), String> {
    let mut buf = BytesMut::with_capacity(4096);
    // A client that connects and never sends CONNECT must not hold a task forever.
    let first = tokio::time::timeout(CONNECT_TIMEOUT, next_frame(&mut client, &mut buf))
        .await
        .map_err(|_| format!("no CONNECT within {} s", CONNECT_TIMEOUT.as_secs()))??;
    let Some(first) = first else {
        return Ok(());
    };
    let Packet::Connect(mut connect) = parse(&first)? else {
        return Err("the first packet is not CONNECT".into());
    };
    let agent = check_connect(&connect, &ctx.store).await?;
    connect.set_login(agent.as_str(), minted(&ctx.secret, agent.as_str()));
    let upstream = TcpStream::connect(ctx.upstream)
        .await
        .map_err(|e| format!("upstream broker: {e}"))?;
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    let mut out = BytesMut::new();
    Connect::write(&connect, &mut out).map_err(|e| format!("re-encode CONNECT: {e}"))?;
    let (up_read, mut up_write) = upstream.into_split();
    let (mut client_read, mut client_write) = client.into_split();
    up_write
        .write_all(&out)
        .await
        .map_err(|e| format!("upstream write: {e}"))?;
    // Both directions hold no buffer while idle (an agent's connection is idle nearly
    // always): they wait until the socket is readable and only then take a buffer.
    let downstream = async move {
        loop {
            if up_read.readable().await.is_err() {
                return;
            }
            let mut chunk = Vec::with_capacity(RELAY_CHUNK);
            match up_read.try_read_buf(&mut chunk) {
                Ok(0) => return,
                Ok(_) => {
                    if client_write.write_all(&chunk).await.is_err() {
                        return;
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(_) => return,
            }
        }
    };
    let upstream = async move {
        loop {
            let frame = match next_relayed_frame(&mut client_read, &mut buf).await? {
                Some(f) => f,
                None => return Ok(()),
            };
            allowed(&agent, &parse(&frame)?)?;
            up_write
                .write_all(&frame)
                .await
                .map_err(|e| format!("upstream write: {e}"))?;
        }
    };
    tokio::select! {
        () = downstream => Ok(()),
        r = upstream => r,
    }
}

async fn check_connect(connect: &Connect, store: &Store) -> Result<AgentId, String> {
    let login = connect
        .login
        .as_ref()
        .ok_or("CONNECT without user name and password")?;
    let agent = AgentId::new(login.username.clone())
        .map_err(|e| format!("user name {:?} is not an agent id: {e}", login.username))?;
    let ok = store
        .agent_password_ok(agent.as_str(), &login.password)
        .await
        .map_err(|e| format!("token check failed: {e}"))?;
    if !ok {
        return Err(format!("bad credentials for agent {agent}"));
    }
    if let Some(will) = &connect.last_will
        && will.topic != Topic::Status(agent.clone()).to_string()
    {
        return Err(format!(
            "agent {agent} may not register a last will on {:?}",
            will.topic
        ));
    }
    Ok(agent)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rumqttc::mqttbytes::QoS;
    use rumqttc::mqttbytes::v4::{Publish, Subscribe};

    #[test]
    fn an_agent_may_publish_only_under_its_own_prefix_and_read_only_its_commands() {
        let a = AgentId::new("lab-a").unwrap();
        let publish = |t: &str| Packet::Publish(Publish::new(t, QoS::AtLeastOnce, "x"));
        assert!(allowed(&a, &publish("munifab/v1/agents/lab-a/events")).is_ok());
        assert!(allowed(&a, &publish("munifab/v1/agents/lab-a/machines/m/state")).is_ok());
        assert!(allowed(&a, &publish("munifab/v1/agents/lab-b/events")).is_err());
        assert!(allowed(&a, &publish("munifab/v1/agents/lab-a/commands")).is_err());
        assert!(allowed(&a, &publish("other/topic")).is_err());
        let sub = |f: &str| Packet::Subscribe(Subscribe::new(f, QoS::AtLeastOnce));
        assert!(allowed(&a, &sub("munifab/v1/agents/lab-a/commands")).is_ok());
        assert!(allowed(&a, &sub("munifab/v1/agents/+/commands")).is_err());
        assert!(allowed(&a, &sub("#")).is_err());
        assert!(allowed(&a, &Packet::PingReq).is_ok());
    }
}
