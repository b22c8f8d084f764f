//! The coordinator's spine end to end (issue 6): a real coordinator process, real agent
//! processes, virtual printers on ptys.

use std::time::Duration;

use munifab_protocol::{AgentStatus, Message, Presence, SigningKey, StatusBody, Topic};
use munifab_tests::http::Client;
use munifab_tests::stack::{
    Agent, Backend, Coordinator, Firmware, Pace, VirtualMachine, commands_of, eventually,
    is_host_command, unique,
};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{Value, json};
use sha2::Digest;

const COOP: &str = "coop-e2e";
/// Fast enough to keep the suite short, slow enough that a job outlives a coordinator
/// restart: the test file below takes about 4 s at this speed.
const PACE: Pace = Pace {
    speed: 400.0,
    baud: 0,
};
const WAIT: Duration = Duration::from_secs(60);

/// A printer job of zig-zag extrusion moves: about 1,500 s on a real machine.
fn long_print() -> String {
    let mut g = String::from(
        "; e2e long print\nM140 S60\nM104 S200\nM190 S60\nM109 S200\nG28\nG90\nM82\nG92 E0\n\
         G1 Z0.3 F600\n",
    );
    let mut e = 0.0;
    for i in 0..400 {
        let x = if i % 2 == 0 { 200 } else { 20 };
        e += 6.0;
        g.push_str(&format!(
            "G1 X{x} Y{} E{e:.2} F3000 ; pass {i}\n",
            20 + i % 180
        ));
    }
    g.push_str("M104 S0\nM140 S0\nM84\n");
    g
}

/// Coordinator, two agents with one virtual printer each, tokens.
struct Installation {
    dir: tempfile::TempDir,
    coordinator: Coordinator,
    admin: Client,
    maker: Client,
    agents: Vec<Agent>,
    machines: Vec<VirtualMachine>,
}

impl Installation {
    async fn start(backend: &Backend) -> Installation {
        let dir = tempfile::tempdir().expect("a scratch directory");
        let mut coordinator =
            Coordinator::prepare(backend, &dir.path().join("coordinator"), "").await;
        let admin = coordinator.token("admin", None, None);
        let maker = coordinator.token("maker", Some(COOP), None);
        let ids = [format!("lab-a-{}", unique()), format!("lab-b-{}", unique())];
        let tokens: Vec<String> = ids
            .iter()
            .map(|id| coordinator.token("agent", Some(id), Some("site-e2e")))
            .collect();
        coordinator.start().await;
        let admin = coordinator.api(Some(&admin));
        let maker = coordinator.api(Some(&maker));
        let mut machines = Vec::new();
        for m in ["mk3-a", "mk3-b"] {
            machines.push(VirtualMachine::start(dir.path(), m, Firmware::Marlin, PACE).await);
        }
        let mut agents = Vec::new();
        for (i, id) in ids.iter().enumerate() {
            let mut agent = Agent::prepare(
                &coordinator,
                dir.path(),
                id,
                "site-e2e",
                &tokens[i],
                &[&machines[i]],
            );
            agent.start(&admin).await;
            agents.push(agent);
        }
        Installation {
            dir,
            coordinator,
            admin,
            maker,
            agents,
            machines,
        }
    }

    async fn finish(mut self) -> Vec<Vec<String>> {
        for a in &mut self.agents {
            a.stop().await;
            a.clear_retained(&self.coordinator).await;
        }
        let mut records = Vec::new();
        for m in self.machines {
            records.push(m.stop().await);
        }
        self.coordinator.finish().await;
        drop(self.dir);
        records
    }

    async fn job(&self, id: &str) -> Value {
        self.admin.get_json(&format!("/api/v1/jobs/{id}")).await
    }

    async fn confirm_ready(&self, agent: usize) {
        let a = &self.agents[agent];
        let r = self
            .admin
            .post_json(
                &format!("/api/v1/machines/{}/{}/ready", a.id, a.machines[0]),
                &json!({}),
            )
            .await;
        assert_eq!(r.status, 202, "ready {}: {r}", a.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_rejected_upload_runs_on_the_other_machine_and_completes_once_across_a_coordinator_crash()
{
    for backend in Backend::each() {
        rejected_then_crash(&backend).await;
    }
}

async fn rejected_then_crash(backend: &Backend) {
    let mut it = Installation::start(backend).await;
    let file = long_print();
    let sha = hex::encode(sha2::Sha256::digest(file.as_bytes()));

    // Agent A's cache holds a complete but corrupted partial download of this very file
    // (bit rot, a dying SD card): A verifies it, refuses the job with `checksum_mismatch`,
    // and the coordinator must move the job on.
    let partial = it.agents[0].data_dir.join("artifacts/partial");
    let mut rotten = file.clone().into_bytes();
    rotten[100] ^= 0x20;
    std::fs::write(partial.join(format!("{sha}.part")), rotten).expect("plant the bad partial");

    // Only A's machine is confirmed ready, so the job can only go there first.
    it.confirm_ready(0).await;
    let r = it.maker.upload("long.gcode", file.as_bytes(), None).await;
    assert_eq!(r.status, 201, "upload: {r}");
    let job = r.json();
    let id = job["id"].as_str().expect("a job id").to_string();
    assert_eq!(job["artifact"], sha.as_str(), "{job}");
    let machine_a = format!("{}/{}", it.agents[0].id, it.agents[0].machines[0]);
    let rejected = eventually("the job rejected by A", WAIT, &it.admin, async || {
        let j = it.job(&id).await;
        ok_if(j["rejections"] == 1 && j["state"] == "queued", j)
    })
    .await;
    assert_eq!(rejected["excluded"], json!([machine_a]), "{rejected}");

    // B is confirmed: the job goes there and runs.
    it.confirm_ready(1).await;
    let running = eventually("the job running on B", WAIT, &it.admin, async || {
        let j = it.job(&id).await;
        let running = j["state"] == "running" && j["progress"].as_f64().is_some_and(|p| p > 0.0);
        ok_if(running, j)
    })
    .await;
    assert_eq!(running["agent"], it.agents[1].id.as_str(), "{running}");
    assert!(
        running["progress"].as_f64().unwrap() < 50.0,
        "the job must still be running when the coordinator dies: {running}"
    );

    // Crash: no shutdown at all. The job finishes on B while the coordinator is gone (B's
    // log says so), so its last events can only reach a coordinator started again, on the
    // same database and ports.
    it.coordinator.kill();
    let ended = it.agents[1].wait_for_log("job ended", WAIT).await;
    assert!(
        ended.contains("completed") && ended.contains(&id),
        "{ended}"
    );
    it.coordinator.start().await;
    // The probe holds the installation mutably (to check the coordinator is still up).
    let admin = it.admin.clone();
    let done = eventually(
        "the job completed after the restart",
        WAIT,
        &admin,
        async || {
            it.coordinator.assert_running();
            let j = it.job(&id).await;
            match j["state"].as_str() {
                Some("completed") => Ok(j),
                Some("failed" | "cancelled" | "lost") => panic!("the job ended badly: {j}"),
                _ => Err(j.to_string()),
            }
        },
    )
    .await;
    assert_eq!(done["agent"], it.agents[1].id.as_str(), "{done}");
    assert_eq!(done["epoch"], 2, "assigned twice: A, then B: {done}");

    // Every state change once, in order: nothing lost, nothing applied twice.
    let events = it
        .admin
        .get_json(&format!("/api/v1/jobs/{id}/events"))
        .await;
    let path: Vec<(String, u64)> = events
        .as_array()
        .expect("a list of events")
        .iter()
        .map(|e| {
            (
                e["to"].as_str().expect("a state").to_string(),
                e["epoch"].as_u64().expect("an epoch"),
            )
        })
        .collect();
    let expected: Vec<(String, u64)> = [
        ("submitted", 0),
        ("queued", 0),
        ("assigned", 1),
        ("accepted", 1),
        ("transferring", 1),
        ("rejected", 1),
        ("queued", 1),
        ("assigned", 2),
        ("accepted", 2),
        ("transferring", 2),
        ("running", 2),
        ("completed", 2),
    ]
    .into_iter()
    .map(|(s, e)| (s.to_string(), e))
    .collect();
    assert_eq!(path, expected, "{backend}: the job's events: {events}");

    // One ledger entry for the one part made.
    let ledger = it.admin.get_json("/api/v1/ledger").await;
    let entries: Vec<&Value> = ledger_entries(&ledger)
        .iter()
        .filter(|e| entry_job(e) == id)
        .collect();
    assert_eq!(entries.len(), 1, "{backend}: ledger {ledger}");

    let records = it.finish().await;
    // A never ran a line of it; B ran exactly the file, line for line.
    let job_lines = |record: &[String]| -> Vec<String> {
        record
            .iter()
            .filter(|c| !is_host_command(Firmware::Marlin, c))
            .cloned()
            .collect()
    };
    assert_eq!(job_lines(&records[0]), Vec::<String>::new(), "{backend}");
    assert_lines_equal(
        &job_lines(&records[1]),
        &commands_of(Firmware::Marlin, &file),
        &format!("{backend}: machine B"),
    );
}

/// `Ok(v)` if `done`, else `Err` showing `v`, for [`eventually`].
pub fn ok_if(done: bool, v: Value) -> Result<Value, String> {
    if done { Ok(v) } else { Err(v.to_string()) }
}

/// The entries of a `GET /api/v1/ledger` answer.
pub fn ledger_entries(ledger: &Value) -> &Vec<Value> {
    ledger
        .as_array()
        .or_else(|| ledger["items"].as_array())
        .or_else(|| ledger["entries"].as_array())
        .unwrap_or_else(|| panic!("no ledger entries in {ledger}"))
}

/// The job id of a ledger entry.
pub fn entry_job(entry: &Value) -> String {
    entry["job"]
        .as_str()
        .or_else(|| entry["record"]["job"].as_str())
        .unwrap_or_else(|| panic!("no job in ledger entry {entry}"))
        .to_string()
}

/// Equal, or a message naming the first line that differs.
pub fn assert_lines_equal(actual: &[String], expected: &[String], what: &str) {
    if actual == expected {
        return;
    }
    let first = actual
        .iter()
        .zip(expected)
        .position(|(a, e)| a != e)
        .unwrap_or(actual.len().min(expected.len()));
    let around = |v: &[String]| v[first.saturating_sub(2)..(first + 3).min(v.len())].join(" | ");
    panic!(
        "{what}: executed {} commands, the file has {}; first difference at command {}: \
         executed [{}] vs file [{}]",
        actual.len(),
        expected.len(),
        first + 1,
        around(actual),
        around(expected)
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_agent_publishing_under_another_agents_prefix_is_refused_and_ignored() {
    for backend in Backend::each() {
        forged_topic(&backend).await;
    }
}

async fn forged_topic(backend: &Backend) {
    let mut it = Installation::start(backend).await;
    let (a, b) = (&it.agents[0], &it.agents[1]);
    let (host, port) = it.coordinator.broker_addr();
    let key = SigningKey::derive(&a.token);
    let status = |agent: &str, state: Presence, version: &str| {
        let topic = Topic::parse(&format!("munifab/v1/agents/{agent}/status"))
            .expect("a status topic")
            .to_string();
        let msg = Message::stamped(StatusBody::AgentStatus(AgentStatus {
            state,
            version: version.into(),
            site: Some("site-e2e".into()),
            machines: vec![],
            last_will: false,
        }));
        let payload = key.sign(&topic, &msg.to_json());
        (topic, payload)
    };

    // With A's own credentials, say that B went offline.
    let (mut intruder, mut events) = connect(&host, port, &a.id, &a.token).await;
    let (topic, payload) = status(&b.id, Presence::Offline, "forged");
    intruder
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .expect("queue the forged publish");
    let acked = next_ack_or_drop(&mut events).await;
    if it.coordinator.embedded_broker() {
        // The embedded broker's front cuts the connection instead of forwarding it.
        assert!(
            !acked,
            "the embedded broker acknowledged a publish to another agent"
        );
        let refusal = it
            .coordinator
            .wait_for_log("may not publish", Duration::from_secs(10))
            .await;
        assert!(refusal.contains(&b.id), "{refusal}");
        (intruder, events) = connect(&host, port, &a.id, &a.token).await;
    } else {
        // A shared Mosquitto without MuniFab's ACL file delivers it; the coordinator must
        // still drop it, because it is signed with A's key, not B's.
        assert!(acked, "{backend}: the broker did not acknowledge");
    }

    // A barrier: a genuine message from A on its own prefix, sent after the forged one on
    // the same connection where it got through. Once the coordinator shows it, it has
    // handled (or never received) the forged one.
    let barrier = format!("barrier-{}", unique());
    let (topic, payload) = status(&a.id, Presence::Online, &barrier);
    intruder
        .publish(topic, QoS::AtLeastOnce, false, payload)
        .await
        .expect("queue the barrier");
    assert!(
        next_ack_or_drop(&mut events).await,
        "the broker refused a publish on the agent's own prefix"
    );
    eventually("the barrier ingested", WAIT, &it.admin, async || {
        let agents = it.admin.get_json("/api/v1/agents").await;
        let seen = agents
            .as_array()
            .into_iter()
            .flatten()
            .any(|x| x["id"] == a.id.as_str() && x["version"] == barrier.as_str());
        ok_if(seen, agents)
    })
    .await;
    let agents = it.admin.get_json("/api/v1/agents").await;
    let b_now = agents
        .as_array()
        .expect("a list of agents")
        .iter()
        .find(|x| x["id"] == b.id.as_str())
        .unwrap_or_else(|| panic!("agent B listed: {agents}"));
    assert_eq!(
        b_now["online"], true,
        "{backend}: forged offline ingested: {b_now}"
    );
    assert_ne!(b_now["version"], "forged", "{backend}: {b_now}");
    drop(intruder);
    it.finish().await;
}

/// A raw MQTT client logged in as `agent`; returns once the broker accepted it.
async fn connect(
    host: &str,
    port: u16,
    agent: &str,
    token: &str,
) -> (AsyncClient, rumqttc::EventLoop) {
    let mut o = MqttOptions::new(format!("{agent}-intruder-{}", unique()), host, port);
    o.set_credentials(agent, token);
    o.set_keep_alive(Duration::from_secs(5));
    let (client, mut events) = AsyncClient::new(o, 16);
    tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => return,
                Ok(_) => {}
                Err(e) => panic!("connect as {agent}: {e}"),
            }
        }
    })
    .await
    .expect("a CONNACK");
    (client, events)
}

/// `true` when the broker acknowledges the outstanding publish, `false` when it closes the
/// connection instead.
async fn next_ack_or_drop(events: &mut rumqttc::EventLoop) -> bool {
    tokio::time::timeout(WAIT, async {
        loop {
            match events.poll().await {
                Ok(Event::Incoming(Packet::PubAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await
    .expect("an acknowledgement or a closed connection")
}
