//! A real MQTT broker for a test.
//!
//! [`TestBroker::embedded`] starts rumqttd in this process on a free loopback port: no
//! installation needed, so `cargo test` works on a bare machine. [`TestBroker::external`]
//! returns the broker CI configured with `MUNIFAB_TEST_MQTT_URL` (Mosquitto), failing the
//! test if it is configured but unreachable. [`TestBroker::each`] gives both, so a test can
//! prove the same behaviour through every broker it can have.

use std::collections::HashMap;
use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::time::{Duration, Instant};

use rumqttd::{Broker, Config, ConnectionSettings, RouterConfig, ServerSettings};

use crate::services;

/// Which broker a [`TestBroker`] is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BrokerKind {
    /// rumqttd inside the test process.
    Embedded,
    /// The broker at `MUNIFAB_TEST_MQTT_URL`.
    External,
}

/// A running broker a test can connect to over TCP.
#[derive(Debug, Clone)]
pub struct TestBroker {
    kind: BrokerKind,
    host: String,
    port: u16,
}

impl fmt::Display for TestBroker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:?} broker at {}", self.kind, self.url())
    }
}

impl TestBroker {
    /// Starts an embedded rumqttd (MQTT 3.1.1, no authentication) on a free loopback port and
    /// returns once it accepts connections.
    pub async fn embedded() -> TestBroker {
        // rumqttd binds the address itself and does not report the port it got, so reserve
        // a free port first. Another process could take it in between; on a loopback test
        // machine that is rare, and the readiness wait below then fails loudly.
        let port = free_port();
        let listen = SocketAddr::from((Ipv4Addr::LOCALHOST, port));
        let config = embedded_config(listen);
        std::thread::Builder::new()
            .name(format!("test-broker-{port}"))
            .spawn(move || {
                let mut broker = Broker::new(config);
                if let Err(e) = broker.start() {
                    eprintln!("embedded test broker on port {port} stopped: {e}");
                }
            })
            .expect("spawn the broker thread");
        wait_until_listening(listen).await;
        TestBroker {
            kind: BrokerKind::Embedded,
            host: "127.0.0.1".into(),
            port,
        }
    }

    /// The broker at `MUNIFAB_TEST_MQTT_URL`, when set (panics if set but unreachable).
    pub fn external() -> Option<TestBroker> {
        let url = services::mqtt_url()?;
        let (host, port) = services::host_port(&url).expect("checked by services::mqtt_url");
        Some(TestBroker {
            kind: BrokerKind::External,
            host,
            port,
        })
    }

    /// The embedded broker, plus the external one when CI configured it.
    pub async fn each() -> Vec<TestBroker> {
        let mut brokers = vec![TestBroker::embedded().await];
        brokers.extend(TestBroker::external());
        brokers
    }

    /// Which broker this is.
    pub fn kind(&self) -> BrokerKind {
        self.kind
    }

    /// Host name or address.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// TCP port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `mqtt://host:port`.
    pub fn url(&self) -> String {
        format!("mqtt://{}:{}", self.host, self.port)
    }
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

fn embedded_config(listen: SocketAddr) -> Config {
    let server = ServerSettings {
        name: format!("test-v4-{}", listen.port()),
        listen,
        tls: None,
        next_connection_delay_ms: 0,
        connections: ConnectionSettings {
            connection_timeout_ms: 10_000,
            max_payload_size: 1024 * 1024,
            max_inflight_count: 200,
            auth: None,
            external_auth: None,
            dynamic_filters: true,
        },
    };
    Config {
        id: 0,
        router: RouterConfig {
            max_connections: 2_000,
            max_outgoing_packet_count: 200,
            max_segment_size: 16 * 1024 * 1024,
            max_segment_count: 10,
            custom_segment: None,
            initialized_filters: None,
            shared_subscriptions_strategy: Default::default(),
        },
        v4: Some(HashMap::from([("v4".to_string(), server)])),
        ..Config::default()
    }
}

/// Waits until something accepts TCP connections at `addr`. A refused connect on loopback
/// answers at once, so this yields between attempts rather than sleeping; it gives up
/// after ten seconds with a message.
async fn wait_until_listening(addr: SocketAddr) {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if tokio::net::TcpStream::connect(addr).await.is_ok() {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "embedded test broker did not start listening on {addr}"
        );
        tokio::task::yield_now().await;
    }
}
