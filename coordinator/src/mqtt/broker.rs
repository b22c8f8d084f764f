//! The embedded broker: a front on the public address that terminates the agents' MQTT
//! connections itself ([`super::front`]), and rumqttd on a private loopback port for the
//! coordinator's commands.
//!
//! rumqttd 0.20 authenticates clients but has no topic ACL, it reserves about 145 KiB per
//! client connection, and it keeps every message in an in-memory log per subscribed filter.
//! The front closes those gaps: it checks each agent's CONNECT against the store, enforces
//! the topic ACL on every packet ([`allowed`]), hands what agents publish straight to the
//! coordinator's inbox, and takes every agent's commands from rumqttd over one connection.
//! rumqttd accepts only two logins: the front's and the coordinator's, each with a secret
//! minted per process, so a client that dials the private port directly with a real agent
//! token is refused.

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::sync::Arc;

use munifab_protocol::{AgentId, Topic, TopicKind};
use rumqttc::mqttbytes::v4::Packet;
use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use super::front::{FRONT_USER, Front, MAX_PACKET, Upstream};
use super::link::LinkEvent;
use crate::store::Store;

/// MQTT user name the coordinator itself uses on the embedded broker. Not a valid agent id
/// (upper case), so no agent token can ever claim it.
pub const COORDINATOR_USER: &str = "MUNIFAB-COORDINATOR";

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
    /// The front could not connect to rumqttd.
    #[error("the MQTT front cannot connect to the embedded broker: {0}")]
    Upstream(String),
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

/// Starts rumqttd on a free loopback port (its own thread; it lives as long as the
/// process) and the ACL front on `listen`, served until `shutdown`. What agents publish goes
/// to `inbox`, the channel the coordinator's dispatcher reads (as its MQTT client feeds it
/// with an external broker); the coordinator's commands go through rumqttd.
pub async fn start(
    listen: SocketAddr,
    store: Store,
    inbox: mpsc::Sender<LinkEvent>,
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
    let front_ctx = Front::start(
        store,
        Upstream {
            addr: internal,
            password: front_secret,
        },
        inbox,
        shutdown.clone(),
    )
    .await
    .map_err(BrokerError::Upstream)?;
    tokio::spawn(serve_front(front, front_ctx, shutdown));
    tracing::info!(%public, %internal, "embedded MQTT broker listening");
    Ok(EmbeddedBroker {
        public,
        internal,
        coordinator_password,
    })
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
        // an allocation): the coordinator's commands, and the front's acknowledgements.
        max_inflight_count: 128,
        auth: None,
        external_auth: None,
        dynamic_filters: true,
    };
    connections.set_auth_handler(move |_client_id, user: String, pass: String| {
        // Two logins only: the front (carrying every agent) and the coordinator.
        let ok = match user.as_str() {
            COORDINATOR_USER => pass == coordinator_password,
            FRONT_USER => pass == front_secret,
            _ => false,
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
            // The front and the coordinator (and a replaced connection of either, briefly).
            max_connections: 16,
            max_outgoing_packet_count: 200,
            // rumqttd keeps every message published to a filter in that filter's in-memory
            // log until `max_segment_count` segments of `max_segment_size` bytes are full.
            // Only the front's `commands` filter is ever subscribed (see `segments`);
            // anything else gets one small segment.
            max_segment_size: 64 * 1024,
            max_segment_count: 1,
            custom_segment: Some(segments()),
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        ..rumqttd::Config::default()
    }
}

/// Log bounds for the one subscribed filter: the front's, on every agent's `commands`. The
/// front reads it at once (it queues per agent), so it needs room for a burst of commands
/// only; commands live in the database anyway.
fn segments() -> HashMap<String, rumqttd::SegmentConfig> {
    HashMap::from([(
        super::front::commands_filter(),
        rumqttd::SegmentConfig {
            max_segment_size: 256 * 1024,
            max_segment_count: 2,
        },
    )])
}

async fn serve_front(listener: TcpListener, front: Arc<Front>, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            () = shutdown.cancelled() => break,
            accepted = listener.accept() => match accepted {
                Ok((stream, peer)) => {
                    let front = front.clone();
                    let shutdown = shutdown.clone();
                    tokio::spawn(async move {
                        if let Err(why) = front.serve(stream, &shutdown).await {
                            tracing::warn!(%peer, %why, "MQTT connection refused or dropped");
                        }
                    });
                }
                Err(e) => tracing::warn!(error = %e, "MQTT front: accept failed"),
            }
        }
    }
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
