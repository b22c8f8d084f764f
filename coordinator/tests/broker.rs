//! The embedded broker's front over real TCP: raw MQTT 3.1.1 clients (encoded with
//! rumqttc's codec) as agents on the public port; the coordinator's inbox, where the front
//! hands what agents publish; and a raw client logged in as the coordinator on rumqttd's
//! private port, publishing commands.

mod common;

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use munifab_coordinator::auth::Grant;
use munifab_coordinator::mqtt::broker::{self, COORDINATOR_USER, EmbeddedBroker};
use munifab_coordinator::mqtt::front::{AGENT_INFLIGHT, AGENT_QUEUE};
use munifab_coordinator::mqtt::link::LinkEvent;
use munifab_coordinator::store::{NewToken, Store};
use munifab_protocol::{AgentId, Topic};
use rumqttc::mqttbytes::v4::{
    ConnAck, Connect, ConnectReturnCode, LastWill, Packet, PubAck, Publish, Subscribe,
};
use rumqttc::mqttbytes::{self, QoS};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

const WAIT: Duration = Duration::from_secs(20);

/// A raw MQTT connection.
struct Raw {
    stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    async fn open(addr: std::net::SocketAddr, connect: Connect) -> (Raw, ConnAck) {
        let stream = TcpStream::connect(addr).await.expect("connect");
        let mut raw = Raw {
            stream,
            buf: BytesMut::new(),
        };
        raw.send(Packet::Connect(connect)).await;
        match raw.next().await {
            Some(Packet::ConnAck(ack)) => (raw, ack),
            other => panic!("expected CONNACK, got {other:?}"),
        }
    }

    async fn send(&mut self, packet: Packet) {
        let mut out = BytesMut::new();
        packet.write(&mut out, 1 << 20).expect("encode");
        self.send_bytes(&out).await;
    }

    async fn send_bytes(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("write");
    }

    /// The next packet, or `None` once the peer closed the connection.
    async fn next(&mut self) -> Option<Packet> {
        tokio::time::timeout(WAIT, async {
            loop {
                match mqttbytes::check(self.buf.iter(), 1 << 20) {
                    Ok(_) => return Some(Packet::read(&mut self.buf, 1 << 20).expect("decode")),
                    Err(mqttbytes::Error::InsufficientBytes(_)) => {}
                    Err(e) => panic!("bad frame from the broker: {e}"),
                }
                match self.stream.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("a packet or the end of the connection within 20 s")
    }

    /// The next PUBLISH, answering it with a PUBACK if it is QoS 1.
    async fn next_publish(&mut self) -> Publish {
        loop {
            match self.next().await {
                Some(Packet::Publish(p)) => {
                    if p.qos == QoS::AtLeastOnce {
                        self.send(Packet::PubAck(PubAck::new(p.pkid))).await;
                    }
                    return p;
                }
                Some(_) => {}
                None => panic!("connection closed while waiting for a PUBLISH"),
            }
        }
    }

    /// Reads until the peer closes the connection; returns the PUBLISHes seen on the way.
    async fn until_closed(&mut self) -> Vec<Publish> {
        let mut seen = Vec::new();
        while let Some(p) = self.next().await {
            if let Packet::Publish(p) = p {
                seen.push(p);
            }
        }
        seen
    }

    async fn subscribe(&mut self, filter: &str, pkid: u16) {
        let mut s = Subscribe::new(filter, QoS::AtLeastOnce);
        s.pkid = pkid;
        self.send(Packet::Subscribe(s)).await;
        loop {
            match self.next().await {
                Some(Packet::SubAck(a)) if a.pkid == pkid => return,
                Some(_) => {}
                None => panic!("connection closed while subscribing to {filter}"),
            }
        }
    }

    async fn publish(&mut self, topic: &str, qos: QoS, retain: bool, payload: &str, pkid: u16) {
        let mut p = Publish::new(topic, qos, payload.as_bytes().to_vec());
        p.retain = retain;
        p.pkid = pkid;
        self.send(Packet::Publish(p)).await;
    }
}

struct Fixture {
    db: common::TestDb,
    broker: EmbeddedBroker,
    inbox: mpsc::Receiver<LinkEvent>,
    shutdown: CancellationToken,
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

async fn agent(store: &Store, name: &str) -> (AgentId, String) {
    let id = AgentId::new(name).unwrap();
    store.register_agent(&id, Some("site"), 0).await.unwrap();
    let token = store
        .create_token(
            &NewToken {
                grant: Grant::Agent(id.clone()),
                label: "broker test".into(),
            },
            0,
        )
        .await
        .unwrap()
        .1;
    (id, token)
}

async fn fixture() -> Fixture {
    let db = common::sqlite().await;
    let shutdown = CancellationToken::new();
    let (tx, inbox) = mpsc::channel(64);
    let broker = broker::start(
        "127.0.0.1:0".parse().unwrap(),
        db.store.clone(),
        tx,
        shutdown.clone(),
    )
    .await
    .expect("the embedded broker starts");
    Fixture {
        db,
        broker,
        inbox,
        shutdown,
    }
}

impl Fixture {
    fn store(&self) -> &Store {
        &self.db.store
    }

    /// Connects as `agent` on the public port; panics unless accepted.
    async fn agent(
        &self,
        id: &AgentId,
        token: &str,
        client_id: &str,
        keep_alive: u16,
        will: Option<&str>,
    ) -> Raw {
        let mut c = Connect::new(client_id);
        c.keep_alive = keep_alive;
        c.set_login(id.as_str(), token);
        c.last_will = will.map(|w| {
            LastWill::new(
                Topic::Status(id.clone()).to_string(),
                w.as_bytes().to_vec(),
                QoS::AtLeastOnce,
                false,
            )
        });
        let (raw, ack) = Raw::open(self.broker.public_addr(), c).await;
        assert_eq!(ack.code, ConnectReturnCode::Success);
        assert!(!ack.session_present, "the front keeps no session");
        raw
    }

    /// The coordinator publishing commands: a client on rumqttd's private port.
    async fn commander(&self) -> Raw {
        let mut c = Connect::new(format!("commander-{}", uuid::Uuid::new_v4().simple()));
        c.keep_alive = 60;
        c.set_login(COORDINATOR_USER, self.broker.coordinator_password());
        let (raw, ack) = Raw::open(self.broker.internal_addr(), c).await;
        assert_eq!(ack.code, ConnectReturnCode::Success);
        raw
    }

    /// Agents `lab-a` and `lab-b`, each connected and subscribed to its `commands` topic,
    /// and the coordinator that publishes commands: `(coordinator, (a, a's commands topic),
    /// (b, b's commands topic))`.
    async fn two_subscribed_agents(&self) -> (Raw, (Raw, String), (Raw, String)) {
        let commander = self.commander().await;
        let mut both = Vec::new();
        for name in ["lab-a", "lab-b"] {
            let (id, token) = agent(self.store(), name).await;
            let mut raw = self.agent(&id, &token, name, 30, None).await;
            let commands = Topic::Commands(id).to_string();
            raw.subscribe(&commands, 1).await;
            both.push((raw, commands));
        }
        let b = both.pop().unwrap();
        let a = both.pop().unwrap();
        (commander, a, b)
    }

    /// The next message the front handed to the coordinator: topic and payload.
    async fn received(&mut self) -> (String, String) {
        match tokio::time::timeout(WAIT, self.inbox.recv()).await {
            Ok(Some(LinkEvent::Message { topic, payload })) => {
                (topic, String::from_utf8(payload.to_vec()).unwrap())
            }
            Ok(other) => panic!("expected a message in the inbox, got {other:?}"),
            Err(_) => panic!("nothing reached the coordinator's inbox within {WAIT:?}"),
        }
    }
}

fn payload(p: &Publish) -> &str {
    std::str::from_utf8(&p.payload).unwrap()
}

#[tokio::test]
async fn a_publish_reaches_the_coordinator_in_order_and_a_qos1_one_is_acknowledged_once_it_has_it()
{
    let mut f = fixture().await;
    let (a, token) = agent(f.store(), "lab-a").await;
    let status = Topic::Status(a.clone()).to_string();
    let events = Topic::Events(a.clone()).to_string();
    let mut agent = f.agent(&a, &token, "lab-a", 30, None).await;

    agent
        .publish(&events, QoS::AtMostOnce, false, "qos0", 0)
        .await;
    agent
        .publish(&status, QoS::AtLeastOnce, true, "online", 7)
        .await;
    assert_eq!(f.received().await, (events.clone(), "qos0".to_string()));
    assert_eq!(f.received().await, (status.clone(), "online".to_string()));
    match agent.next().await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.pkid, 7, "the agent's own packet id"),
        other => panic!("expected PUBACK, got {other:?}"),
    }

    // While the inbox is full the agent is held back, not dropped: nothing is lost, and
    // its QoS 1 publish is acknowledged only once the coordinator has it.
    let mut held = 0;
    while f.inbox.capacity() > 0 {
        agent
            .publish(
                &events,
                QoS::AtLeastOnce,
                false,
                &format!("e{held}"),
                100 + held,
            )
            .await;
        match agent.next().await {
            Some(Packet::PubAck(ack)) => assert_eq!(ack.pkid, 100 + held),
            other => panic!("expected PUBACK, got {other:?}"),
        }
        held += 1;
    }
    agent
        .publish(&events, QoS::AtLeastOnce, false, "waits", 999)
        .await;
    for i in 0..held {
        assert_eq!(f.received().await, (events.clone(), format!("e{i}")));
    }
    assert_eq!(f.received().await, (events.clone(), "waits".to_string()));
    match agent.next().await {
        Some(Packet::PubAck(ack)) => assert_eq!(ack.pkid, 999),
        other => panic!("expected PUBACK, got {other:?}"),
    }

    // rumqttd's private port refuses the agent's real token
    let mut c = Connect::new("lab-a-direct");
    c.set_login(a.as_str(), token.as_str());
    let stream = TcpStream::connect(f.broker.internal_addr()).await.unwrap();
    let mut direct = Raw {
        stream,
        buf: BytesMut::new(),
    };
    direct.send(Packet::Connect(c)).await;
    match direct.next().await {
        None => {}
        Some(Packet::ConnAck(ack)) => assert_ne!(ack.code, ConnectReturnCode::Success),
        Some(other) => panic!("unexpected {other:?}"),
    }
}

#[tokio::test]
async fn a_wrong_token_is_refused_with_a_connack_code() {
    let f = fixture().await;
    let (a, _) = agent(f.store(), "lab-a").await;
    let mut c = Connect::new("lab-a");
    c.set_login(a.as_str(), "mft_wrong");
    let (mut raw, ack) = Raw::open(f.broker.public_addr(), c).await;
    assert_eq!(ack.code, ConnectReturnCode::BadUserNamePassword);
    assert!(raw.next().await.is_none(), "closed after the refusal");
}

#[tokio::test]
async fn commands_reach_only_the_agent_they_are_for() {
    let f = fixture().await;
    let (mut coord, (mut agent_a, ca), (mut agent_b, cb)) = f.two_subscribed_agents().await;

    coord
        .publish(&ca, QoS::AtLeastOnce, false, "for a", 1)
        .await;
    coord
        .publish(&cb, QoS::AtLeastOnce, false, "for b", 2)
        .await;
    let got = agent_a.next_publish().await;
    assert_eq!((got.topic.as_str(), payload(&got)), (ca.as_str(), "for a"));
    assert_eq!(got.qos, QoS::AtLeastOnce);
    assert_ne!(got.pkid, 0);
    // published after a's: had a's leaked to b, b would see it first
    let got = agent_b.next_publish().await;
    assert_eq!((got.topic.as_str(), payload(&got)), (cb.as_str(), "for b"));

    // after UNSUBSCRIBE nothing more arrives; the next thing b sees is its PINGRESP
    let mut u = rumqttc::mqttbytes::v4::Unsubscribe::new(cb.as_str());
    u.pkid = 3;
    agent_b.send(Packet::Unsubscribe(u)).await;
    assert!(matches!(agent_b.next().await, Some(Packet::UnsubAck(_))));
    coord
        .publish(&cb, QoS::AtLeastOnce, false, "unheard", 3)
        .await;
    coord
        .publish(&ca, QoS::AtLeastOnce, false, "for a again", 4)
        .await;
    assert_eq!(payload(&agent_a.next_publish().await), "for a again");
    agent_b.send(Packet::PingReq).await;
    assert!(matches!(agent_b.next().await, Some(Packet::PingResp)));
}

#[tokio::test]
async fn the_will_is_published_on_a_drop_and_not_after_disconnect() {
    let mut f = fixture().await;
    let (a, token) = agent(f.store(), "lab-a").await;

    let mut first = f.agent(&a, &token, "lab-a", 30, Some("will 1")).await;
    first.send(Packet::Disconnect).await;
    assert!(first.until_closed().await.is_empty());
    let second = f.agent(&a, &token, "lab-a", 30, Some("will 2")).await;
    drop(second);
    // the first will would have been handed over before the first connection closed
    assert_eq!(
        f.received().await,
        (Topic::Status(a).to_string(), "will 2".to_string())
    );
}

#[tokio::test]
async fn a_silent_agent_is_closed_after_its_keep_alive_and_its_will_published() {
    let mut f = fixture().await;
    let (a, token) = agent(f.store(), "lab-a").await;
    let mut silent = f.agent(&a, &token, "lab-a", 1, Some("gone")).await;
    assert!(
        silent.until_closed().await.is_empty(),
        "closed by the front"
    );
    assert_eq!(
        f.received().await,
        (Topic::Status(a).to_string(), "gone".to_string())
    );
}

#[tokio::test]
async fn a_second_connection_with_the_same_client_id_takes_over() {
    let mut f = fixture().await;
    let (a, ta) = agent(f.store(), "lab-a").await;
    let (b, tb) = agent(f.store(), "lab-b").await;
    let status = Topic::Status(a.clone()).to_string();
    let commands = Topic::Commands(a.clone()).to_string();
    let mut coord = f.commander().await;

    let mut old = f.agent(&a, &ta, "shared-id", 30, Some("old will")).await;
    old.subscribe(&commands, 1).await;
    let mut new = f.agent(&a, &ta, "shared-id", 30, Some("new will")).await;
    assert!(old.until_closed().await.is_empty(), "the old one is closed");
    // another agent presenting the same client id takes nothing over
    let _b = f.agent(&b, &tb, "shared-id", 30, None).await;
    new.subscribe(&commands, 1).await;
    coord
        .publish(&commands, QoS::AtLeastOnce, false, "cmd", 1)
        .await;
    assert_eq!(payload(&new.next_publish().await), "cmd");
    // the agent is not gone: the old will is not published, the new one on a drop
    drop(new);
    assert_eq!(f.received().await, (status, "new will".to_string()));
}

#[tokio::test]
async fn a_malformed_packet_closes_the_connection_and_nothing_behind_it_is_forwarded() {
    let mut f = fixture().await;
    let (a, token) = agent(f.store(), "lab-a").await;
    let status = Topic::Status(a.clone()).to_string();
    let mut agent = f.agent(&a, &token, "lab-a", 30, Some("will")).await;

    // A QoS 1 PUBLISH whose topic claims 16 bytes of a 4-byte body, then a valid one.
    let mut bytes = BytesMut::from(&[0x32_u8, 0x04, 0x00, 0x10, b'a', b'b'][..]);
    let mut behind = Publish::new(status.as_str(), QoS::AtMostOnce, b"behind".to_vec());
    behind.pkid = 0;
    Packet::Publish(behind).write(&mut bytes, 1 << 20).unwrap();
    agent.send_bytes(&bytes).await;
    assert!(agent.until_closed().await.is_empty(), "closed by the front");

    // a barrier on a fresh connection: what came before it on the status topic is all
    let mut again = f.agent(&a, &token, "lab-a", 30, None).await;
    again
        .publish(&status, QoS::AtLeastOnce, false, "barrier", 1)
        .await;
    let seen = [f.received().await.1, f.received().await.1];
    assert_eq!(seen, ["will", "barrier"], "the packet behind was dropped");
}

#[tokio::test]
async fn an_agent_that_does_not_take_its_commands_is_cut_off_and_holds_up_no_one() {
    let f = fixture().await;
    let (mut coord, (mut stuck, ca), (mut fine, cb)) = f.two_subscribed_agents().await;

    // `stuck` never acknowledges: AGENT_INFLIGHT go out, AGENT_QUEUE wait, one more is
    // too many
    let mut batch = BytesMut::new();
    for i in 0..AGENT_INFLIGHT + AGENT_QUEUE + 1 {
        let mut p = Publish::new(ca.as_str(), QoS::AtLeastOnce, format!("a{i}").into_bytes());
        p.pkid = i as u16 + 1;
        Packet::Publish(p).write(&mut batch, 1 << 20).unwrap();
    }
    coord.send_bytes(&batch).await;
    coord
        .publish(&cb, QoS::AtLeastOnce, false, "for b", 999)
        .await;
    assert_eq!(payload(&fine.next_publish().await), "for b");

    let got = stuck.until_closed().await;
    assert!(
        got.len() <= AGENT_INFLIGHT,
        "{} sent unacknowledged",
        got.len()
    );
    let expected: Vec<Bytes> = (0..got.len())
        .map(|i| Bytes::from(format!("a{i}")))
        .collect();
    assert_eq!(
        got.iter().map(|p| p.payload.clone()).collect::<Vec<_>>(),
        expected,
        "in order, then the connection was closed"
    );
}
