//! The coordinator's MQTT client. One task owns the rumqttc event loop; it forwards
//! inbound publishes to the dispatcher over a channel (its inbox) and (re)subscribes after
//! every connection. Publishing goes through the cloneable [`rumqttc::AsyncClient`].
//!
//! With an external broker it subscribes to the agents' topics. With the embedded broker it
//! subscribes to nothing: the front hands what agents publish to the same inbox itself
//! ([`super::front`]), and this client only publishes commands.

use std::time::Duration;

use bytes::Bytes;
use rumqttc::{AsyncClient, Event, EventLoop, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Where and how the coordinator connects.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkSettings {
    /// Broker host.
    pub host: String,
    /// Broker port.
    pub port: u16,
    /// MQTT client id (unique per coordinator replica).
    pub client_id: String,
    /// User name and password, if the broker wants them.
    pub credentials: Option<(String, String)>,
    /// Topic filters to subscribe to after every connection.
    pub filters: Vec<String>,
    /// Whether to send DISCONNECT at shutdown. Off for the embedded broker, which ends
    /// with this process: rumqttd takes a DISCONNECT followed by the socket closing as two
    /// disconnections and logs the second as an error.
    pub disconnect: bool,
}

/// What the link reports to the dispatcher.
#[derive(Debug, Clone, PartialEq)]
pub enum LinkEvent {
    /// (Re)connected and subscribed: commands may have been lost while away.
    Connected,
    /// A message from an agent.
    Message {
        /// Topic name.
        topic: String,
        /// Raw payload.
        payload: Bytes,
    },
}

/// Creates the client and its event loop (not yet running).
pub fn client(settings: &LinkSettings) -> (AsyncClient, EventLoop) {
    let mut o = MqttOptions::new(&settings.client_id, &settings.host, settings.port);
    o.set_keep_alive(Duration::from_secs(15));
    // A persistent session: while this coordinator is down (a crash, a restart, a deploy)
    // an external broker keeps the agents' QoS 1 events for it, and hands them over when it
    // reconnects with the same client id. A clean session would lose them for good: the
    // agents' spools are emptied as soon as the broker acknowledges. (Commands the other
    // way are still re-sent from the database, never left to the agents' session queues.)
    o.set_clean_session(false);
    o.set_max_packet_size(512 * 1024, 512 * 1024);
    if let Some((u, p)) = &settings.credentials {
        o.set_credentials(u, p);
    }
    let (client, mut events) = AsyncClient::new(o, 4096);
    // A command goes out as soon as it is published, not held back by Nagle's algorithm
    // until the broker acknowledges the previous one (rumqttc leaves Nagle on by default).
    let mut network = rumqttc::NetworkOptions::new();
    network.set_tcp_nodelay(true);
    events.set_network_options(network);
    (client, events)
}

/// Runs the event loop until `shutdown`, then disconnects.
pub async fn run(
    client: AsyncClient,
    mut events: EventLoop,
    filters: Vec<String>,
    disconnect: bool,
    to_dispatcher: mpsc::Sender<LinkEvent>,
    shutdown: CancellationToken,
) {
    loop {
        let polled = tokio::select! {
            () = shutdown.cancelled() => break,
            polled = events.poll() => polled,
        };
        match polled {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                tracing::info!("connected to the MQTT broker");
                for f in &filters {
                    if let Err(e) = client.try_subscribe(f.clone(), QoS::AtLeastOnce) {
                        tracing::error!(filter = %f, error = %e, "subscribe failed");
                    }
                }
                if to_dispatcher.send(LinkEvent::Connected).await.is_err() {
                    break;
                }
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                let msg = LinkEvent::Message {
                    topic: p.topic,
                    payload: p.payload,
                };
                if to_dispatcher.send(msg).await.is_err() {
                    break;
                }
            }
            Ok(_) => {}
            Err(e) => {
                tracing::warn!(error = %e, "MQTT connection lost; reconnecting");
                tokio::select! {
                    () = shutdown.cancelled() => break,
                    () = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
            }
        }
    }
    if disconnect {
        let _ = client.try_disconnect();
        // Let the DISCONNECT go out; a broken connection ends this at once.
        let _ = tokio::time::timeout(Duration::from_secs(1), events.poll()).await;
    }
}
