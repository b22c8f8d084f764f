//! The coordinator as `serve` runs it (HTTP, embedded broker with its ACL front, dispatcher,
//! real database), with agents played by plain rumqttc clients over real TCP. Each scenario
//! runs on SQLite, and the marked ones on PostgreSQL and through Mosquitto too when CI sets
//! `MUNIFAB_TEST_DATABASE_URL` / `MUNIFAB_TEST_MQTT_URL`.

mod common;

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::{Duration, Instant};

use common::agent::{Seen, TestAgent};
use common::fixtures::*;
use common::{each_db_url, http};
use munifab_coordinator::auth::{Grant, Role};
use munifab_coordinator::config::Settings;
use munifab_coordinator::lifecycle::JobState;
use munifab_coordinator::server::{self, Server};
use munifab_coordinator::store::{Job, NewToken, Store};
use munifab_protocol::{
    AgentId, Command, Completed, Event, JobId, JobSummary, MachineStatus, RejectReason, Rejected,
};
use munifab_tests::services;
use tokio_util::sync::CancellationToken;

const CUBE: &str = "; test cube\nM140 S60\nM104 S210\nG28\nG90\nM82\nG92 E0\nG1 Z0.2 F3000\n\
                    G1 X10 Y10 E1 F1500\nG1 X20 Y10 E2\nG1 X20 Y20 E3\nM104 S0\nM140 S0\n";
const GRACE_S: i64 = 60;

/// A coordinator under test, with a clock the test moves.
struct Coord {
    server: Server,
    shutdown: CancellationToken,
}

async fn start(
    db_url: &str,
    dir: &Path,
    mqtt_listen: &str,
    external_mqtt: Option<&str>,
    clock: Arc<AtomicI64>,
) -> Coord {
    let mut env = vec![
        ("MUNIFAB_DATA_DIR", dir.display().to_string()),
        ("MUNIFAB_DATABASE_URL", db_url.to_string()),
        ("MUNIFAB_HTTP_LISTEN", "127.0.0.1:0".into()),
        ("MUNIFAB_DISPATCH_TICK_MS", "20".into()),
        ("MUNIFAB_DISPATCH_OFFLINE_GRACE_SECS", GRACE_S.to_string()),
        ("MUNIFAB_DISPATCH_MAX_REJECTIONS", "3".into()),
        (
            "MUNIFAB_MQTT_CLIENT_ID",
            format!("coord-{}", uuid::Uuid::new_v4().simple()),
        ),
    ];
    match external_mqtt {
        Some(url) => {
            env.push(("MUNIFAB_MQTT_MODE", "external".into()));
            env.push(("MUNIFAB_MQTT_URL", url.into()));
        }
        None => env.push(("MUNIFAB_MQTT_LISTEN", mqtt_listen.into())),
    }
    let settings = Settings::load(None, env.into_iter().map(|(k, v)| (k.to_string(), v))).unwrap();
    let shutdown = CancellationToken::new();
    let c = clock.clone();
    let server = server::start(
        settings,
        Arc::new(move || c.load(Ordering::SeqCst)),
        shutdown.clone(),
    )
    .await
    .expect("the coordinator starts");
    Coord { server, shutdown }
}

fn wall_ms() -> i64 {
    (time::OffsetDateTime::now_utc().unix_timestamp_nanos() / 1_000_000) as i64
}

impl Coord {
    fn store(&self) -> &Store {
        self.server.store()
    }

    fn http(&self) -> SocketAddr {
        self.server.http_addr()
    }

    /// Host and port agents connect to.
    fn mqtt(&self, external: Option<&str>) -> (String, u16) {
        match external {
            Some(url) => services::host_port(url).unwrap(),
            None => {
                let a = self.server.mqtt_addr().expect("embedded broker");
                ("127.0.0.1".into(), a.port())
            }
        }
    }

    async fn token(&self, role: Role, scope: Option<&str>, site: Option<&str>) -> String {
        let grant = Grant::new(role, scope).unwrap();
        if let Grant::Agent(a) = &grant {
            self.store().register_agent(a, site, 1).await.unwrap();
        }
        self.store()
            .create_token(
                &NewToken {
                    grant,
                    label: "e2e".into(),
                },
                1,
            )
            .await
            .unwrap()
            .1
    }

    async fn stop(self) {
        self.shutdown.cancel();
        self.server.wait().await;
    }
}

fn unique_agent(prefix: &str) -> AgentId {
    AgentId::new(format!(
        "{prefix}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    ))
    .unwrap()
}

/// Awaits a job state by reading the store (the outcome of messages the test already
/// published); fails with the state it is stuck in.
async fn wait_state(store: &Store, id: JobId, want: JobState) -> Job {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let job = store.job(id).await.unwrap();
        if job.state == want {
            return job;
        }
        assert!(
            Instant::now() < deadline,
            "job {id} is {} after 20 s, expected {want}",
            job.state
        );
        tokio::task::yield_now().await;
    }
}

async fn wait_offline(store: &Store, agent: &AgentId) {
    let deadline = Instant::now() + Duration::from_secs(20);
    while store.agent(agent).await.unwrap().online {
        assert!(
            Instant::now() < deadline,
            "agent {agent} still online after 20 s"
        );
        tokio::task::yield_now().await;
    }
}

fn assign_of(cmd: &munifab_protocol::Message<Command>) -> &munifab_protocol::Assign {
    match &cmd.body {
        Command::Assign(a) => a,
        other => panic!("expected assign, got {other:?}"),
    }
}

fn ready(m: &str) -> munifab_protocol::MachineState {
    machine_state(m, MachineStatus::Ready)
}

async fn submit(c: &Coord, maker: &str) -> JobId {
    let resp = http::upload(c.http(), maker, CUBE.as_bytes()).await;
    assert_eq!(resp.status, 201, "{}", String::from_utf8_lossy(&resp.body));
    resp.json()["id"].as_str().unwrap().parse().unwrap()
}

async fn happy_path(db_url: &str, dir: &Path, external: Option<&str>) {
    let c = start(
        db_url,
        dir,
        "127.0.0.1:0",
        external,
        Arc::new(AtomicI64::new(wall_ms())),
    )
    .await;
    let id = unique_agent("lab");
    let agent_token = c
        .token(Role::Agent, Some(id.as_str()), Some("site-a"))
        .await;
    let maker = c.token(Role::Maker, Some("coop-a"), None).await;
    let (host, port) = c.mqtt(external);
    let mut agent =
        TestAgent::connect(&host, port, &id, &agent_token, "site-a", vec![ready("mk3")]).await;

    let job = submit(&c, &maker).await;
    let cmd = agent.next_command().await;
    let assign = assign_of(&cmd);
    assert_eq!(
        (assign.job, assign.epoch, assign.machine.as_str()),
        (job, 1, "mk3")
    );
    assert_eq!(assign.requirements.hotend_temp_c, Some(210.0));
    // the artifact URL works for the agent, with a range
    let path = assign
        .artifact
        .url
        .split_once("/api/")
        .map(|(_, p)| format!("/api/{p}"))
        .unwrap();
    let got = http::request(
        c.http(),
        "GET",
        &path,
        Some(&agent_token),
        &[("Range", "bytes=0-3".into())],
        b"",
    )
    .await;
    assert_eq!(got.status, 206);
    assert_eq!(got.body, b"; te");

    let r = |seq| job_ref(job, "mk3", 1, seq);
    agent.event(Event::Accepted(r(0))).await;
    agent.event(Event::Started(r(1))).await;
    agent
        .event(Event::Completed(Completed {
            job: r(2),
            summary: JobSummary::default(),
        }))
        .await;
    wait_state(c.store(), job, JobState::Completed).await;
    let events = http::request(
        c.http(),
        "GET",
        &format!("/api/v1/jobs/{job}/events"),
        Some(&maker),
        &[],
        b"",
    )
    .await;
    let tos: Vec<String> = events
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        tos,
        [
            "submitted",
            "queued",
            "assigned",
            "accepted",
            "running",
            "completed"
        ]
    );
    let metrics = http::request(c.http(), "GET", "/metrics", None, &[], b"").await;
    let text = String::from_utf8(metrics.body).unwrap();
    assert!(
        text.contains("munifab_dispatch_latency_seconds_count 1"),
        "{text}"
    );
    assert!(
        text.contains("munifab_jobs{state=\"completed\"} 1"),
        "{text}"
    );
    agent.forget(&["mk3"]).await;
    c.stop().await;
}

#[tokio::test]
async fn an_uploaded_job_is_assigned_over_mqtt_and_completed_by_the_agents_events() {
    for (url, dir) in each_db_url().await {
        happy_path(&url, &dir, None).await;
    }
}

#[tokio::test]
async fn the_same_chain_works_through_an_external_broker() {
    // Mosquitto when CI configured it; the embedded broker's chain is covered above.
    if let Some(mqtt) = services::mqtt_url() {
        let dir = common::scratch_dir();
        happy_path(
            &format!("sqlite://{}", dir.join("m.db").display()),
            &dir,
            Some(&mqtt),
        )
        .await;
    }
}

#[tokio::test]
async fn a_rejected_job_is_reassigned_to_the_other_machine() {
    let dir = common::scratch_dir();
    let c = start(
        &format!("sqlite://{}", dir.join("m.db").display()),
        &dir,
        "127.0.0.1:0",
        None,
        Arc::new(AtomicI64::new(wall_ms())),
    )
    .await;
    let id = unique_agent("lab");
    let token = c
        .token(Role::Agent, Some(id.as_str()), Some("site-a"))
        .await;
    let maker = c.token(Role::Maker, Some("coop-a"), None).await;
    let (host, port) = c.mqtt(None);
    let mut agent = TestAgent::connect(
        &host,
        port,
        &id,
        &token,
        "site-a",
        vec![ready("mk3"), ready("mini")],
    )
    .await;
    // both machines must be known before the job arrives
    let deadline = Instant::now() + Duration::from_secs(20);
    while c.store().free_machines().await.unwrap().len() < 2 {
        assert!(Instant::now() < deadline, "machines not announced");
        tokio::task::yield_now().await;
    }
    let job = submit(&c, &maker).await;
    let first = agent.next_command().await;
    let first = assign_of(&first).clone();
    agent
        .event(Event::Rejected(Rejected {
            job: job_ref(job, first.machine.as_str(), 1, 0),
            reason: RejectReason::NotReady,
            message: "bed not cleared".into(),
            findings: vec![],
        }))
        .await;
    let second = agent.next_command().await;
    let second = assign_of(&second);
    assert_eq!(second.epoch, 2);
    assert_ne!(
        second.machine, first.machine,
        "the rejecting machine is excluded"
    );
    let stored = wait_state(c.store(), job, JobState::Assigned).await;
    assert_eq!(stored.excluded, vec![format!("{id}/{}", first.machine)]);
    c.stop().await;
}

#[tokio::test]
async fn commands_for_an_offline_agent_are_resent_from_the_database_when_it_reconnects() {
    let dir = common::scratch_dir();
    let c = start(
        &format!("sqlite://{}", dir.join("m.db").display()),
        &dir,
        "127.0.0.1:0",
        None,
        Arc::new(AtomicI64::new(wall_ms())),
    )
    .await;
    let id = unique_agent("lab");
    let token = c
        .token(Role::Agent, Some(id.as_str()), Some("site-a"))
        .await;
    let maker = c.token(Role::Maker, Some("coop-a"), None).await;
    let (host, port) = c.mqtt(None);
    let mut agent =
        TestAgent::connect(&host, port, &id, &token, "site-a", vec![ready("mk3")]).await;
    let job = submit(&c, &maker).await;
    let assign = agent.next_command().await;
    agent.crash();
    wait_offline(c.store(), &id).await;
    let cancel = http::request(
        c.http(),
        "POST",
        &format!("/api/v1/jobs/{job}/cancel"),
        Some(&maker),
        &[],
        b"",
    )
    .await;
    assert_eq!(
        cancel.status,
        202,
        "{}",
        String::from_utf8_lossy(&cancel.body)
    );

    let mut back = TestAgent::connect(&host, port, &id, &token, "site-a", vec![]).await;
    let again = back.next_command().await;
    assert_eq!(
        again.id, assign.id,
        "the unanswered assign comes again, same message id"
    );
    let cancel = back.next_command().await;
    assert!(
        matches!(&cancel.body, Command::Cancel(j) if j.job == job && j.epoch == 1),
        "{cancel:?}"
    );
    back.event(Event::Cancelled(job_ref(job, "mk3", 1, 0)))
        .await;
    wait_state(c.store(), job, JobState::Cancelled).await;
    assert!(c.store().pending_commands(&id).await.unwrap().is_empty());
    c.stop().await;
}

#[tokio::test]
async fn a_job_whose_agent_stays_offline_beyond_the_grace_period_is_placed_elsewhere() {
    let dir = common::scratch_dir();
    let clock = Arc::new(AtomicI64::new(wall_ms()));
    let c = start(
        &format!("sqlite://{}", dir.join("m.db").display()),
        &dir,
        "127.0.0.1:0",
        None,
        clock.clone(),
    )
    .await;
    let (a, b) = (unique_agent("lab-a"), unique_agent("lab-b"));
    let ta = c.token(Role::Agent, Some(a.as_str()), Some("site-a")).await;
    let tb = c.token(Role::Agent, Some(b.as_str()), Some("site-b")).await;
    let maker = c.token(Role::Maker, Some("coop-a"), None).await;
    let (host, port) = c.mqtt(None);
    let mut agent_a = TestAgent::connect(&host, port, &a, &ta, "site-a", vec![ready("mk3")]).await;
    let job = submit(&c, &maker).await;
    assert_eq!(assign_of(&agent_a.next_command().await).epoch, 1);
    agent_a
        .event(Event::Started(job_ref(job, "mk3", 1, 0)))
        .await;
    wait_state(c.store(), job, JobState::Running).await;

    let mut agent_b = TestAgent::connect(&host, port, &b, &tb, "site-b", vec![ready("mk3")]).await;
    agent_a.crash();
    wait_offline(c.store(), &a).await;
    // within the grace period the job stays with its agent
    clock.fetch_add((GRACE_S - 1) * 1000, Ordering::SeqCst);
    assert_eq!(c.store().job(job).await.unwrap().state, JobState::Running);
    clock.fetch_add(2_000, Ordering::SeqCst);
    let cmd = agent_b.next_command().await;
    let assign = assign_of(&cmd);
    assert_eq!((assign.job, assign.epoch), (job, 2));
    let events = c.store().job_events(job).await.unwrap();
    assert!(events.iter().any(|e| e.to == JobState::Lost));
    c.stop().await;
}

#[tokio::test]
async fn an_agent_publishing_on_another_agents_topic_is_cut_off_by_the_embedded_broker() {
    let dir = common::scratch_dir();
    let c = start(
        &format!("sqlite://{}", dir.join("m.db").display()),
        &dir,
        "127.0.0.1:0",
        None,
        Arc::new(AtomicI64::new(wall_ms())),
    )
    .await;
    let (a, b) = (unique_agent("lab-a"), unique_agent("lab-b"));
    let ta = c.token(Role::Agent, Some(a.as_str()), Some("site-a")).await;
    let tb = c.token(Role::Agent, Some(b.as_str()), Some("site-b")).await;
    let maker = c.token(Role::Maker, Some("coop-a"), None).await;
    let (host, port) = c.mqtt(None);
    let mut agent_a = TestAgent::connect(&host, port, &a, &ta, "site-a", vec![ready("mk3")]).await;
    let job = submit(&c, &maker).await;
    agent_a.next_command().await;

    let mut agent_b = TestAgent::connect(&host, port, &b, &tb, "site-b", vec![]).await;
    // b forges a completion on a's topic, even signed with a's key
    let forged = munifab_protocol::Message::stamped(Event::Completed(Completed {
        job: job_ref(job, "mk3", 1, 0),
        summary: JobSummary::default(),
    }));
    let topic = munifab_protocol::Topic::Events(a.clone()).to_string();
    agent_b
        .publish_raw(&topic, agent_a.key().sign(&topic, &forged.to_json()))
        .await;
    match agent_b.next_seen().await {
        Seen::Disconnected(_) => {}
        other => panic!("the broker must cut b off, saw {other:?}"),
    }
    // a's own messages still flow; the forged completion never arrived
    agent_a
        .event(Event::Accepted(job_ref(job, "mk3", 1, 0)))
        .await;
    let j = wait_state(c.store(), job, JobState::Accepted).await;
    assert_eq!(j.last_seq, 0);
    // a wrong password is refused at CONNECT
    let mut intruder = TestAgent::connect(&host, port, &a, "mft_wrong", "site-a", vec![]).await;
    assert!(matches!(intruder.next_seen().await, Seen::Disconnected(_)));
    c.stop().await;
}

#[tokio::test]
async fn restarting_the_coordinator_mid_job_loses_and_duplicates_nothing() {
    for (url, dir) in each_db_url().await {
        let clock = Arc::new(AtomicI64::new(wall_ms()));
        let c = start(&url, &dir, "127.0.0.1:0", None, clock.clone()).await;
        let mqtt_addr = c.server.mqtt_addr().unwrap();
        let id = unique_agent("lab");
        let token = c
            .token(Role::Agent, Some(id.as_str()), Some("site-a"))
            .await;
        let maker = c.token(Role::Maker, Some("coop-a"), None).await;
        let mut agent = TestAgent::connect(
            "127.0.0.1",
            mqtt_addr.port(),
            &id,
            &token,
            "site-a",
            vec![ready("mk3")],
        )
        .await;
        let job = submit(&c, &maker).await;
        assign_of(&agent.next_command().await);
        agent
            .event(Event::Accepted(job_ref(job, "mk3", 1, 0)))
            .await;
        wait_state(c.store(), job, JobState::Accepted).await;

        agent.wait_connections(1).await;
        c.stop().await;
        let c = start(&url, &dir, &mqtt_addr.to_string(), None, clock).await;
        // the agent kept working while the coordinator was down; like the real agent's
        // spool, it publishes what happened once it is connected again
        agent.wait_connections(2).await;
        agent.event(Event::Started(job_ref(job, "mk3", 1, 1))).await;
        agent
            .event(Event::Completed(Completed {
                job: job_ref(job, "mk3", 1, 2),
                summary: JobSummary::default(),
            }))
            .await;
        let done = wait_state(c.store(), job, JobState::Completed).await;
        assert_eq!(done.epoch, 1, "never reassigned");
        let tos: Vec<_> = c
            .store()
            .job_events(job)
            .await
            .unwrap()
            .iter()
            .map(|e| e.to)
            .collect();
        assert_eq!(
            tos,
            [
                JobState::Submitted,
                JobState::Queued,
                JobState::Assigned,
                JobState::Accepted,
                JobState::Running,
                JobState::Completed
            ],
            "{url}"
        );
        assert!(c.store().pending_commands(&id).await.unwrap().is_empty());
        c.stop().await;
    }
}
