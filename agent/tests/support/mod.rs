//! Real parts for the agent's integration tests: a coordinator played by a plain rumqttc
//! client, an artifact server over real HTTP with Range, a TCP proxy that can cut the
//! agent off its broker, and an agent started in this process.

#![allow(dead_code)]

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use munifab_agent::config::Settings;
use munifab_protocol::{
    AgentId, Command, Event, Family, Inbound, Message, SigningKey, StateBody, StatusBody, Topic,
};
use munifab_tests::broker::TestBroker;
use rumqttc::{AsyncClient, MqttOptions, Packet, QoS};
use sha2::Digest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{mpsc, oneshot, watch};

pub const TOKEN: &str = "test-token";

/// A fresh agent id, so retained messages on a shared Mosquitto never leak between runs.
pub fn agent_id() -> AgentId {
    AgentId::new(format!(
        "t-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    ))
    .unwrap()
}

pub fn temp_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("munifab-agent-test-{}", uuid::Uuid::new_v4()));
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// What the coordinator received, decoded and verified.
#[derive(Debug, Clone)]
pub enum Seen {
    Status(Message<StatusBody>, bool),
    State(Message<StateBody>),
    Event(Message<Event>),
    Telemetry,
}

/// The coordinator side: subscribes to everything the agent publishes, verifies each
/// signature, and publishes signed commands.
pub struct Coordinator {
    pub agent: AgentId,
    client: AsyncClient,
    rx: mpsc::UnboundedReceiver<Seen>,
    key: SigningKey,
    seen_ids: HashSet<uuid::Uuid>,
    pub duplicates: usize,
    telemetry: tokio::sync::watch::Receiver<usize>,
}

impl Coordinator {
    pub async fn connect(broker: &TestBroker, agent: &AgentId) -> Coordinator {
        let mut o = MqttOptions::new(format!("{agent}-coord"), broker.host(), broker.port());
        o.set_keep_alive(Duration::from_secs(5));
        let (client, mut eventloop) = AsyncClient::new(o, 64);
        let prefix = format!("munifab/v1/agents/{agent}/#");
        client.subscribe(&prefix, QoS::AtLeastOnce).await.unwrap();
        let key = SigningKey::derive(TOKEN);
        let (tx, rx) = mpsc::unbounded_channel();
        let (ready_tx, ready_rx) = oneshot::channel();
        let vkey = key.clone();
        let (tcount, telemetry) = tokio::sync::watch::channel(0usize);
        tokio::spawn(async move {
            let mut ready = Some(ready_tx);
            loop {
                match eventloop.poll().await {
                    Ok(rumqttc::Event::Incoming(Packet::SubAck(_))) => {
                        if let Some(r) = ready.take() {
                            let _ = r.send(());
                        }
                    }
                    Ok(rumqttc::Event::Incoming(Packet::Publish(p))) => {
                        if p.payload.is_empty() {
                            continue;
                        }
                        let topic = Topic::parse(&p.topic).unwrap();
                        if topic.kind() == munifab_protocol::TopicKind::Commands {
                            continue;
                        }
                        vkey.verify(&p.topic, &p.payload)
                            .unwrap_or_else(|e| panic!("bad signature on {}: {e}", p.topic));
                        let seen = match Inbound::decode(&topic, &p.payload).unwrap() {
                            Inbound::Status(m) => Seen::Status(m, p.retain),
                            Inbound::State(m) => Seen::State(m),
                            Inbound::Event(m) => Seen::Event(m),
                            Inbound::Telemetry(_) => {
                                tcount.send_modify(|n| *n += 1);
                                Seen::Telemetry
                            }
                            Inbound::Command(_) => continue,
                        };
                        if tx.send(seen).is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
                }
            }
        });
        ready_rx.await.unwrap();
        Coordinator {
            agent: agent.clone(),
            client,
            rx,
            key,
            seen_ids: HashSet::new(),
            duplicates: 0,
            telemetry,
        }
    }

    /// Waits (up to 30 s) until at least `n` telemetry samples have arrived; returns the count.
    pub async fn telemetry_reaches(&mut self, n: usize) -> usize {
        let seen = tokio::time::timeout(
            Duration::from_secs(30),
            self.telemetry.wait_for(|count| *count >= n),
        )
        .await
        .unwrap_or_else(|_| panic!("fewer than {n} telemetry samples within 30 s"))
        .expect("coordinator client stopped");
        *seen
    }

    /// Publishes a command signed with the agent's key.
    pub async fn send(&self, command: Command) -> uuid::Uuid {
        let msg = Message::stamped(command);
        self.send_raw(msg.to_json(), true).await;
        msg.id
    }

    pub async fn send_raw(&self, json: Vec<u8>, sign: bool) {
        let topic = Topic::Commands(self.agent.clone()).to_string();
        let payload = if sign {
            self.key.sign(&topic, &json)
        } else {
            json
        };
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    /// The next message the agent published (telemetry skipped).
    pub async fn next(&mut self) -> Seen {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
        loop {
            let seen = tokio::time::timeout_at(deadline, self.rx.recv())
                .await
                .expect("nothing but telemetry from the agent within 30 s")
                .expect("coordinator client stopped");
            if !matches!(seen, Seen::Telemetry) {
                if std::env::var("DEBUG_COORD").is_ok() {
                    match &seen {
                        Seen::Event(m) => eprintln!(
                            "coord: event {} {:?}",
                            m.body.type_name(),
                            m.body.job_ref().map(|r| r.seq)
                        ),
                        Seen::State(m) => eprintln!("coord: state {:?}", m.body),
                        Seen::Status(m, r) => eprintln!("coord: status {:?} {r}", m.body),
                        Seen::Telemetry => {}
                    }
                }
                return seen;
            }
        }
    }

    /// The next event not seen before (duplicates by message id are counted and skipped).
    pub async fn next_event(&mut self) -> Message<Event> {
        loop {
            if let Seen::Event(m) = self.next().await {
                if self.seen_ids.insert(m.id) {
                    return m;
                }
                self.duplicates += 1;
            }
        }
    }

    /// Events until (and including) the first whose type is `last`.
    pub async fn events_until(&mut self, last: &str) -> Vec<Message<Event>> {
        let mut out = Vec::new();
        loop {
            let e = self.next_event().await;
            let done = e.body.type_name() == last;
            out.push(e);
            if done {
                return out;
            }
        }
    }

    /// Events of one job until it ends (completed, failed, cancelled or rejected).
    pub async fn events_until_terminal(&mut self) -> Vec<Message<Event>> {
        let mut out = Vec::new();
        loop {
            let e = self.next_event().await;
            let done = e.body.is_terminal() || matches!(e.body, Event::Rejected(_));
            out.push(e);
            if done {
                return out;
            }
        }
    }

    /// Waits for a machine state with `pred`.
    pub async fn state_where(
        &mut self,
        pred: impl Fn(&munifab_protocol::MachineState) -> bool,
    ) -> munifab_protocol::MachineState {
        loop {
            if let Seen::State(m) = self.next().await
                && let StateBody::MachineState(s) = m.body
                && pred(&s)
            {
                return s;
            }
        }
    }

    /// Waits for an agent status with `pred`.
    pub async fn status_where(
        &mut self,
        pred: impl Fn(&munifab_protocol::AgentStatus, bool) -> bool,
    ) -> munifab_protocol::AgentStatus {
        loop {
            if let Seen::Status(m, retained) = self.next().await
                && let StatusBody::AgentStatus(s) = m.body
                && pred(&s, retained)
            {
                return s;
            }
        }
    }

    /// Removes the agent's retained messages from a shared broker.
    pub async fn clean_retained(&self, machines: &[&str]) {
        let mut topics = vec![Topic::Status(self.agent.clone()).to_string()];
        for m in machines {
            topics.push(
                Topic::MachineState(
                    self.agent.clone(),
                    munifab_protocol::MachineId::new(*m).unwrap(),
                )
                .to_string(),
            );
        }
        for t in topics {
            let _ = self
                .client
                .publish(t, QoS::AtLeastOnce, true, Vec::new())
                .await;
        }
    }
}

/// Config text for an agent with `machines` (TOML `[[machines]]` blocks).
pub fn config(
    agent: &AgentId,
    broker: &str,
    coordinator: &str,
    data: &std::path::Path,
    machines: &str,
) -> String {
    format!(
        r#"
agent_id = "{agent}"
site = "test-lab"
data_dir = "{data}"
telemetry_interval_ms = 200
[broker]
url = "{broker}"
token = "{TOKEN}"
keep_alive_s = 5
reconnect_min_ms = 50
reconnect_max_ms = 400
[coordinator]
url = "{coordinator}"
[shutdown]
running_jobs = "pause"
timeout_s = 3
{machines}
"#,
        data = data.display()
    )
}

pub const MARLIN_MACHINE: &str = r#"
[[machines]]
id = "mk3"
port = "virtual:marlin"
firmware = "marlin"
needs_confirmation = true
[machines.capabilities]
process = "fdm"
firmware = "marlin"
build_volume = { min = { x = 0.0, y = 0.0, z = 0.0 }, max = { x = 220.0, y = 220.0, z = 250.0 } }
nozzle_diameter_mm = 0.4
materials = ["PLA"]
max_hotend_temp_c = 260.0
max_bed_temp_c = 100.0
"#;

/// An agent running in this process.
pub struct RunningAgent {
    stop: Option<oneshot::Sender<()>>,
    task: tokio::task::JoinHandle<Result<(), munifab_agent::AgentError>>,
}

impl RunningAgent {
    pub fn start(config_text: &str) -> RunningAgent {
        let settings = Settings::parse(
            config_text,
            std::path::Path::new("test-agent.toml"),
            &|_| None,
        )
        .unwrap_or_else(|e| panic!("test config: {e}"));
        let (tx, rx) = oneshot::channel();
        let task = tokio::spawn(munifab_agent::run(settings, async {
            let _ = rx.await;
        }));
        RunningAgent {
            stop: Some(tx),
            task,
        }
    }

    /// Graceful shutdown, as on SIGTERM.
    pub async fn stop(mut self) {
        let _ = self.stop.take().unwrap().send(());
        tokio::time::timeout(Duration::from_secs(20), self.task)
            .await
            .expect("agent did not stop within 20 s")
            .unwrap()
            .unwrap();
    }
}

// ---------------------------------------------------------------------------------------
// artifact server

#[derive(Clone, Default)]
pub struct ArtifactLog {
    pub ranges: Arc<Mutex<Vec<Option<String>>>>,
}

/// An HTTP server with `/artifacts/{name}`, honouring `Range: bytes=N-`.
pub struct ArtifactServer {
    pub base: String,
    pub log: ArtifactLog,
    files: Arc<Mutex<std::collections::HashMap<String, Vec<u8>>>>,
}

pub fn sha256_hex(data: &[u8]) -> String {
    hex::encode(sha2::Sha256::digest(data))
}

impl ArtifactServer {
    pub async fn start() -> ArtifactServer {
        use axum::extract::{Path, State};
        use axum::http::{HeaderMap, StatusCode, header};
        use axum::response::{IntoResponse, Response};

        type Shared = (
            Arc<Mutex<std::collections::HashMap<String, Vec<u8>>>>,
            ArtifactLog,
        );
        async fn get(
            State((files, log)): State<Shared>,
            Path(name): Path<String>,
            headers: HeaderMap,
        ) -> Response {
            let range = headers
                .get(header::RANGE)
                .and_then(|v| v.to_str().ok())
                .map(str::to_string);
            log.ranges.lock().unwrap().push(range.clone());
            let Some(data) = files.lock().unwrap().get(&name).cloned() else {
                return StatusCode::NOT_FOUND.into_response();
            };
            if let Some(r) = range {
                let start: usize = r
                    .trim_start_matches("bytes=")
                    .trim_end_matches('-')
                    .parse()
                    .unwrap();
                if start >= data.len() {
                    return StatusCode::RANGE_NOT_SATISFIABLE.into_response();
                }
                let body = data[start..].to_vec();
                return (
                    StatusCode::PARTIAL_CONTENT,
                    [(
                        header::CONTENT_RANGE,
                        format!("bytes {start}-{}/{}", data.len() - 1, data.len()),
                    )],
                    body,
                )
                    .into_response();
            }
            (StatusCode::OK, data).into_response()
        }

        let files = Arc::new(Mutex::new(std::collections::HashMap::new()));
        let log = ArtifactLog::default();
        let app = axum::Router::new()
            .route("/artifacts/{name}", axum::routing::get(get))
            .with_state((files.clone(), log.clone()));
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        ArtifactServer {
            base: format!("http://{addr}"),
            log,
            files,
        }
    }

    /// Serves `data` and returns its artifact description.
    pub fn add(&self, name: &str, data: &[u8]) -> munifab_protocol::Artifact {
        self.files
            .lock()
            .unwrap()
            .insert(name.to_string(), data.to_vec());
        munifab_protocol::Artifact {
            url: format!("{}/artifacts/{name}", self.base),
            sha256: sha256_hex(data),
            size: data.len() as u64,
        }
    }
}

// ---------------------------------------------------------------------------------------
// proxy

/// A TCP proxy between the agent and the broker. `down()` drops every connection and
/// refuses new ones (the broker is gone, as far as the agent can tell); `up()` restores it.
/// `freeze_upstream()` stops forwarding what the agent sends while still delivering what
/// the broker sends (the agent's publishes are never acknowledged).
pub struct Proxy {
    pub url: String,
    state: watch::Sender<ProxyState>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ProxyState {
    Up,
    Down,
    FrozenUpstream,
}

impl Proxy {
    pub async fn start(target: SocketAddr) -> Proxy {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (state, _) = watch::channel(ProxyState::Up);
        let st = state.clone();
        tokio::spawn(async move {
            loop {
                let Ok((client, _)) = listener.accept().await else {
                    return;
                };
                let mut rx = st.subscribe();
                if *rx.borrow() == ProxyState::Down {
                    drop(client);
                    continue;
                }
                tokio::spawn(async move {
                    let Ok(server) = TcpStream::connect(target).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.into_split();
                    let (mut sr, mut sw) = server.into_split();
                    let mut rx_up = rx.clone();
                    let up = async move {
                        let mut buf = vec![0u8; 16 * 1024];
                        loop {
                            if *rx_up.borrow() == ProxyState::FrozenUpstream {
                                // Hold everything the agent sends.
                                let _ = rx_up.wait_for(|s| *s != ProxyState::FrozenUpstream).await;
                                continue;
                            }
                            let n = tokio::select! {
                                r = tokio::io::AsyncReadExt::read(&mut cr, &mut buf) => match r { Ok(0) | Err(_) => return, Ok(n) => n },
                                _ = rx_up.changed() => continue,
                            };
                            if *rx_up.borrow() == ProxyState::FrozenUpstream {
                                // Bytes read as the freeze began are dropped with the
                                // connection later; they were never acknowledged.
                                let _ = rx_up.wait_for(|s| *s != ProxyState::FrozenUpstream).await;
                                if *rx_up.borrow() == ProxyState::Down {
                                    return;
                                }
                            }
                            if tokio::io::AsyncWriteExt::write_all(&mut sw, &buf[..n])
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    };
                    let down = async move {
                        let _ = tokio::io::copy(&mut sr, &mut cw).await;
                    };
                    tokio::select! {
                        _ = up => {}
                        _ = down => {}
                        _ = rx.wait_for(|s| *s == ProxyState::Down) => {}
                    }
                });
            }
        });
        Proxy {
            url: format!("mqtt://{addr}"),
            state,
        }
    }

    pub fn down(&self) {
        self.state.send_replace(ProxyState::Down);
    }

    pub fn up(&self) {
        self.state.send_replace(ProxyState::Up);
    }

    pub fn freeze_upstream(&self) {
        self.state.send_replace(ProxyState::FrozenUpstream);
    }
}

pub async fn broker_addr(broker: &TestBroker) -> SocketAddr {
    tokio::net::lookup_host((broker.host(), broker.port()))
        .await
        .unwrap()
        .next()
        .unwrap()
}

// ---------------------------------------------------------------------------------------
// jobs

/// A small FDM print inside a 220 mm bed: `moves` extruding moves on a square.
pub fn marlin_gcode(moves: usize, max_x: f64) -> Vec<u8> {
    let mut s =
        String::from("; test print\nM140 S60\nM104 S210\nG28\nG90\nM82\nG92 E0\nG1 Z0.3 F600\n");
    let mut e = 0.0;
    for i in 0..moves {
        let t = i as f64 / moves.max(1) as f64;
        let x = 20.0 + (max_x - 20.0) * t;
        let y = if i % 2 == 0 { 20.0 } else { 60.0 };
        e += 0.05;
        s.push_str(&format!("G1 X{x:.2} Y{y:.2} E{e:.4} F1800\n"));
    }
    s.push_str("M104 S0\nM140 S0\n");
    s.into_bytes()
}

/// A small CNC pocket inside a 300x200 router bed.
pub fn grbl_gcode(moves: usize) -> Vec<u8> {
    let mut s = String::from("G21\nG90\nM3 S10000\nG0 Z5\nG0 X10 Y10\nG1 Z-1 F300\n");
    for i in 0..moves {
        let x = 10.0 + (i % 50) as f64;
        let y = if i % 2 == 0 { 10.0 } else { 40.0 };
        s.push_str(&format!("G1 X{x:.2} Y{y:.2} F800\n"));
    }
    s.push_str("G0 Z5\nM5\n");
    s.into_bytes()
}

pub fn fdm_requirements() -> munifab_protocol::Requirements {
    munifab_protocol::Requirements {
        process: munifab_protocol::Process::Fdm,
        flavour: munifab_protocol::Flavour::Reprap,
        bounds: None,
        hotend_temp_c: Some(210.0),
        bed_temp_c: Some(60.0),
        spindle_rpm: None,
        nozzle_diameter_mm: None,
        material: None,
        tools: 1,
    }
}

pub fn cnc_requirements() -> munifab_protocol::Requirements {
    munifab_protocol::Requirements {
        process: munifab_protocol::Process::Cnc,
        flavour: munifab_protocol::Flavour::Grbl,
        bounds: None,
        hotend_temp_c: None,
        bed_temp_c: None,
        spindle_rpm: Some(10000.0),
        nozzle_diameter_mm: None,
        material: None,
        tools: 1,
    }
}

pub fn assign_cmd(
    job: munifab_protocol::JobId,
    epoch: u64,
    machine: &str,
    artifact: munifab_protocol::Artifact,
    requirements: munifab_protocol::Requirements,
) -> Command {
    Command::Assign(munifab_protocol::Assign {
        job,
        epoch,
        machine: munifab_protocol::MachineId::new(machine).unwrap(),
        artifact,
        requirements,
        analysis: munifab_protocol::AnalysisSummary::default(),
    })
}

pub fn clear_cmd(machine: &str) -> Command {
    Command::Clear(munifab_protocol::Clear {
        machine: munifab_protocol::MachineId::new(machine).unwrap(),
        confirmed_by: "operator:test".into(),
        stock_loaded: true,
    })
}

pub fn job_cmd(kind: &str, job: munifab_protocol::JobId, epoch: u64, machine: &str) -> Command {
    let c = munifab_protocol::JobCommand {
        job,
        epoch,
        machine: munifab_protocol::MachineId::new(machine).unwrap(),
    };
    match kind {
        "pause" => Command::Pause(c),
        "resume" => Command::Resume(c),
        "cancel" => Command::Cancel(c),
        other => panic!("no job command {other}"),
    }
}

/// Asserts the events belong to one job run and are numbered 0, 1, 2 … without gaps.
pub fn assert_sequence(events: &[Message<Event>]) -> Vec<String> {
    let mut names = Vec::new();
    for (i, e) in events.iter().enumerate() {
        let r = e.body.job_ref().expect("a job event");
        assert_eq!(
            r.seq,
            i as u64,
            "event {i} ({}) out of sequence",
            e.body.type_name()
        );
        names.push(e.body.type_name().to_string());
    }
    names
}

/// Waits until the machine reports `state`, sending `clear` first when asked.
pub async fn machine_ready(coord: &mut Coordinator, machine: &str) {
    coord
        .state_where(|s| {
            s.machine.as_str() == machine && s.state == munifab_protocol::MachineStatus::Idle
        })
        .await;
    coord.send(clear_cmd(machine)).await;
    coord
        .state_where(|s| {
            s.machine.as_str() == machine && s.state == munifab_protocol::MachineStatus::Ready
        })
        .await;
}

pub const GRBL_MACHINE: &str = r#"
[[machines]]
id = "router"
port = "virtual:grbl"
firmware = "grbl"
[machines.virtual]
speed = 0.0
paced = false
[machines.capabilities]
process = "cnc"
firmware = "grbl"
build_volume = { min = { x = 0.0, y = 0.0, z = -40.0 }, max = { x = 300.0, y = 200.0, z = 40.0 } }
spindle_max_rpm = 12000.0
"#;

/// The Marlin machine without delays (speed 0, unpaced).
pub fn fast_marlin() -> String {
    MARLIN_MACHINE.replace(
        "needs_confirmation = true\n",
        "needs_confirmation = true\n[machines.virtual]\nspeed = 0.0\npaced = false\n",
    )
}

/// Marlin with no motion delays but a paced 115200-baud cable (about 11 kB/s), so a job of
/// a few thousand lines runs for seconds: long enough to pause, cancel, unplug.
pub fn paced_marlin() -> String {
    MARLIN_MACHINE.replace(
        "needs_confirmation = true\n",
        "needs_confirmation = true\n[machines.virtual]\nspeed = 0.0\npaced = true\n",
    )
}

/// Waits until a spooled (not yet published) event of type `kind` is on disk. The spool
/// renames each entry into place, so an inotify watch on its directory wakes this up when
/// one lands; nothing polls.
pub async fn spooled(data: &std::path::Path, kind: &str) {
    use nix::sys::inotify::{AddWatchFlags, InitFlags, Inotify};

    let dir = data.join("spool");
    let needle = format!("\"type\":\"{kind}\"");
    let wait = tokio::task::spawn_blocking(move || {
        let inotify = Inotify::init(InitFlags::IN_CLOEXEC).expect("inotify");
        inotify
            .add_watch(
                &dir,
                AddWatchFlags::IN_MOVED_TO | AddWatchFlags::IN_CLOSE_WRITE,
            )
            .unwrap_or_else(|e| panic!("watch {}: {e}", dir.display()));
        let spooled = || {
            std::fs::read_dir(&dir).ok().is_some_and(|d| {
                d.flatten().any(|e| {
                    std::fs::read(e.path())
                        .map(|b| String::from_utf8_lossy(&b).contains(&needle))
                        .unwrap_or(false)
                })
            })
        };
        // Look only once the watch is in place, so an entry landing in between is not missed.
        while !spooled() {
            inotify.read_events().expect("read inotify events");
        }
    });
    tokio::time::timeout(Duration::from_secs(60), wait)
        .await
        .unwrap_or_else(|_| panic!("no {kind} event was spooled within 60 s"))
        .expect("the spool watcher ran");
}

/// Logs to the test's output when `MUNIFAB_LOG` is set (e.g. `MUNIFAB_LOG=debug`).
pub fn logs() {
    if let Ok(filter) = std::env::var("MUNIFAB_LOG") {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::new(filter))
            .with_test_writer()
            .try_init();
    }
}
