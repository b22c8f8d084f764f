//! An agent played by a plain rumqttc client: signs what it publishes with its token's key,
//! verifies the coordinator's commands, and re-announces itself after every (re)connect.

#![allow(dead_code)]

use std::time::Duration;

use munifab_protocol::{
    AgentId, AgentStatus, Command, Event, MachineState, Message, Presence, SigningKey, StateBody,
    StatusBody, Topic,
};
use rumqttc::{AsyncClient, LastWill, MqttOptions, Packet, QoS};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

/// What the agent's connection saw.
#[derive(Debug)]
pub enum Seen {
    /// A command that verified with the agent's key.
    Command(Box<Message<Command>>),
    /// The connection broke (refused, closed by the broker…).
    Disconnected(String),
}

pub struct TestAgent {
    pub id: AgentId,
    key: SigningKey,
    client: AsyncClient,
    seen: mpsc::UnboundedReceiver<Seen>,
    connections: watch::Receiver<u64>,
    task: JoinHandle<()>,
}

impl Drop for TestAgent {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn signed<B: munifab_protocol::message::Family>(
    key: &SigningKey,
    topic: &Topic,
    msg: &Message<B>,
) -> Vec<u8> {
    key.sign(&topic.to_string(), &msg.to_json())
}

impl TestAgent {
    /// Connects as `id` with `token` (user name = agent id, password = token) and announces
    /// `machines` on every connection.
    pub async fn connect(
        host: &str,
        port: u16,
        id: &AgentId,
        token: &str,
        site: &str,
        machines: Vec<MachineState>,
    ) -> TestAgent {
        let key = SigningKey::derive(token);
        let mut o = MqttOptions::new(id.as_str(), host, port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_clean_session(true);
        o.set_credentials(id.as_str(), token);
        let status_topic = Topic::Status(id.clone());
        let will = Message::stamped(StatusBody::AgentStatus(AgentStatus::last_will(
            "test",
            Some(site.into()),
        )));
        o.set_last_will(LastWill::new(
            status_topic.to_string(),
            signed(&key, &status_topic, &will),
            QoS::AtLeastOnce,
            true,
        ));
        let (client, mut events) = AsyncClient::new(o, 100);
        let (tx, seen) = mpsc::unbounded_channel();
        let (connected, connections) = watch::channel(0_u64);
        let (c, k, agent, site) = (client.clone(), key.clone(), id.clone(), site.to_string());
        let task = tokio::spawn(async move {
            loop {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(Packet::ConnAck(_))) => {
                        let cmds = Topic::Commands(agent.clone()).to_string();
                        c.try_subscribe(cmds, QoS::AtLeastOnce).unwrap();
                        let status = Message::stamped(StatusBody::AgentStatus(AgentStatus {
                            state: Presence::Online,
                            version: "test".into(),
                            site: Some(site.clone()),
                            machines: machines.iter().map(|m| m.machine.clone()).collect(),
                            last_will: false,
                        }));
                        let t = Topic::Status(agent.clone());
                        c.try_publish(
                            t.to_string(),
                            QoS::AtLeastOnce,
                            true,
                            signed(&k, &t, &status),
                        )
                        .unwrap();
                        for m in &machines {
                            let t = Topic::MachineState(agent.clone(), m.machine.clone());
                            let msg = Message::stamped(StateBody::MachineState(m.clone()));
                            c.try_publish(
                                t.to_string(),
                                QoS::AtLeastOnce,
                                true,
                                signed(&k, &t, &msg),
                            )
                            .unwrap();
                        }
                        connected.send_modify(|n| *n += 1);
                    }
                    Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                        k.verify(&p.topic, &p.payload)
                            .expect("the coordinator signs commands with this agent's key");
                        let msg =
                            Message::<Command>::from_json(&p.payload).expect("a valid command");
                        if tx.send(Seen::Command(Box::new(msg))).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if tx.send(Seen::Disconnected(e.to_string())).is_err() {
                            return;
                        }
                        // rumqttc reconnects on the next poll; do not spin on a refusal.
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        });
        TestAgent {
            id: id.clone(),
            key,
            client,
            seen,
            connections,
            task,
        }
    }

    /// Waits until the agent has connected `n` times in all (like the real agent, which
    /// replays its spool only once it is connected again).
    pub async fn wait_connections(&mut self, n: u64) {
        tokio::time::timeout(
            Duration::from_secs(20),
            self.connections.wait_for(|c| *c >= n),
        )
        .await
        .unwrap_or_else(|_| panic!("agent {} did not connect {n} times within 20 s", self.id))
        .expect("agent task alive");
    }

    /// The next command (skipping disconnect notices), or a panic after 20 s.
    pub async fn next_command(&mut self) -> Message<Command> {
        loop {
            match tokio::time::timeout(Duration::from_secs(20), self.seen.recv()).await {
                Ok(Some(Seen::Command(c))) => return *c,
                Ok(Some(Seen::Disconnected(_))) => continue,
                Ok(None) => panic!("agent {} task ended", self.id),
                Err(_) => panic!("agent {} received no command within 20 s", self.id),
            }
        }
    }

    /// The next thing seen.
    pub async fn next_seen(&mut self) -> Seen {
        tokio::time::timeout(Duration::from_secs(20), self.seen.recv())
            .await
            .unwrap_or_else(|_| panic!("agent {} saw nothing within 20 s", self.id))
            .expect("agent task alive")
    }

    /// Publishes a signed job event.
    pub async fn event(&self, ev: Event) {
        let t = Topic::Events(self.id.clone());
        let msg = Message::stamped(ev);
        self.client
            .publish(
                t.to_string(),
                QoS::AtLeastOnce,
                false,
                signed(&self.key, &t, &msg),
            )
            .await
            .unwrap();
    }

    /// Publishes a machine state.
    pub async fn machine(&self, state: MachineState) {
        let t = Topic::MachineState(self.id.clone(), state.machine.clone());
        let msg = Message::stamped(StateBody::MachineState(state));
        self.client
            .publish(
                t.to_string(),
                QoS::AtLeastOnce,
                true,
                signed(&self.key, &t, &msg),
            )
            .await
            .unwrap();
    }

    /// Publishes raw bytes on any topic (to try what the ACL forbids).
    pub async fn publish_raw(&self, topic: &str, payload: Vec<u8>) {
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// Removes the retained status and machine states this agent left on the broker and
    /// disconnects cleanly (no last will), so a shared broker does not collect test agents.
    pub async fn forget(mut self, machines: &[&str]) {
        let mut topics = vec![Topic::Status(self.id.clone()).to_string()];
        for m in machines {
            let m = munifab_protocol::MachineId::new(*m).unwrap();
            topics.push(Topic::MachineState(self.id.clone(), m).to_string());
        }
        for t in topics {
            self.client
                .publish(t, QoS::AtLeastOnce, true, Vec::new())
                .await
                .unwrap();
        }
        self.client.disconnect().await.unwrap();
        // requests go out in order: the clearing publishes precede the DISCONNECT
        while !matches!(self.next_seen().await, Seen::Disconnected(_)) {}
    }

    /// The agent's signing key.
    pub fn key(&self) -> &SigningKey {
        &self.key
    }

    /// Drops the TCP connection without DISCONNECT, so the broker publishes the last will.
    pub fn crash(self) {
        self.task.abort();
    }
}
