//! A whole MuniFab installation made of separate processes, for end-to-end tests:
//! `munifab-coordinator serve` with its config file in a scratch directory, one
//! `munifab-agent run` per site, and virtual machines from `munifab-bridge simulate` on
//! real pseudo-terminals. Tests drive it only through public interfaces: the HTTP API with
//! bearer tokens from `munifab-coordinator token create`, MQTT, the ptys, and the
//! command-line tools.
//!
//! Backends follow the environment (see [`Backend::each`]): the embedded broker and SQLite
//! always, plus the broker at `MUNIFAB_TEST_MQTT_URL` and a fresh schema on the PostgreSQL
//! at `MUNIFAB_TEST_DATABASE_URL` when they are set (and reachable: otherwise the test fails).

use std::fmt;
use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tokio::time::Instant;

use crate::http::Client;
use crate::process::{self, Process, command, workspace_root};
use crate::services;

/// How long a process may take to say it is ready (a debug build on a busy 2-core machine).
const START_PATIENCE: Duration = Duration::from_secs(60);
/// The longest single wait for a change in [`eventually`]: below the coordinator's cap
/// (60 s) and well inside the client's request timeout.
const LONGEST_WAIT: Duration = Duration::from_secs(20);
/// Long polls in a row that may get no answer before [`eventually`] fails: the probe runs
/// again after each, so a coordinator that is gone fails the probe's own checks first.
const NO_ANSWER_LIMIT: u32 = 3;

/// Which broker and database an installation uses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Backend {
    /// `None`: the coordinator's embedded broker; `Some(url)`: that external broker.
    pub broker: Option<String>,
    /// `None`: SQLite in the data directory; `Some(url)`: PostgreSQL at that URL.
    pub database: Option<String>,
}

impl fmt::Display for Backend {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let broker = self.broker.as_deref().unwrap_or("embedded broker");
        let database = match &self.database {
            Some(_) => "PostgreSQL",
            None => "SQLite",
        };
        write!(f, "{broker} + {database}")
    }
}

impl Backend {
    /// The embedded broker with SQLite, then — when either variable is set — the external
    /// broker and/or PostgreSQL configured by `MUNIFAB_TEST_MQTT_URL` and
    /// `MUNIFAB_TEST_DATABASE_URL` (a set but unreachable service fails the test).
    pub fn each() -> Vec<Backend> {
        let mut all = vec![Backend {
            broker: None,
            database: None,
        }];
        let broker = services::mqtt_url();
        let database = services::database_url();
        if broker.is_some() || database.is_some() {
            all.push(Backend { broker, database });
        }
        all
    }
}

/// A free loopback port (reserved by binding, then released for the child to take).
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free loopback port")
}

/// A short unique suffix for ids and names, so runs on a shared broker or database never
/// see each other's agents, retained messages or rows.
pub fn unique() -> String {
    uuid::Uuid::new_v4().simple().to_string()[..10].to_string()
}

/// Runs `probe` until it returns `Ok`; after `within` fails with `what` and the last `Err`
/// (what the probe saw instead).
///
/// Between probes it awaits the coordinator's next change through `api` (any token:
/// `GET /api/v1/changes`, a long poll on the revision every write through the coordinator's
/// store moves) instead of asking again on a timer. The revision is read before each probe,
/// so a change made while the probe runs answers the next wait at once. A condition a probe
/// awaits must therefore be one such a write signals — a job's state or progress, a
/// machine's state or readiness, an agent's presence or version — never something outside
/// the coordinator's store (a process's log or exit: race those against this, as
/// [`Agent::start`] does). Each wait ends by the deadline, which turns a hang into a failure
/// that names what was awaited.
///
/// When the coordinator gives no answer to the long poll (a test killed it) that alone does
/// not fail the test: the probe runs again at once, so its own checks (e.g.
/// [`Coordinator::assert_running`]) decide and report. Only [`NO_ANSWER_LIMIT`] unanswered
/// polls in a row fail here, naming the error.
pub async fn eventually<T>(
    what: &str,
    within: Duration,
    api: &Client,
    mut probe: impl AsyncFnMut() -> Result<T, String>,
) -> T {
    let deadline = Instant::now() + within;
    let mut revision: Option<u64> = None;
    let mut unanswered = 0;
    loop {
        if revision.is_none() {
            revision = api.changes(None, Duration::ZERO).await.ok();
        }
        let seen = match probe().await {
            Ok(v) => return v,
            Err(seen) => seen,
        };
        let left = deadline.saturating_duration_since(Instant::now());
        assert!(
            !left.is_zero(),
            "{what}: not within {within:?}; last seen: {seen}"
        );
        // Without a revision to wait from, this asks for the current one (at once).
        match api.changes(revision, left.min(LONGEST_WAIT)).await {
            Ok(r) => {
                revision = Some(r);
                unanswered = 0;
            }
            Err(e) => {
                unanswered += 1;
                assert!(
                    unanswered < NO_ANSWER_LIMIT,
                    "{what}: the coordinator gave no answer to {unanswered} long polls in a row: {e}; last seen: {seen}"
                );
                revision = None;
            }
        }
    }
}

/// The coordinator: its config, data directory and (while running) its `serve` process.
#[derive(Debug)]
pub struct Coordinator {
    backend: Backend,
    dir: PathBuf,
    config: PathBuf,
    http: SocketAddr,
    mqtt_port: u16,
    client_id: String,
    schema: Option<String>,
    process: Option<Process>,
}

impl Coordinator {
    /// Writes the config file (HTTP and, for the embedded broker, MQTT on fixed free ports,
    /// so a restarted coordinator is found where agents expect it), creates a fresh
    /// PostgreSQL schema when the backend asks for one, and applies the migrations with
    /// `munifab-coordinator migrate`. `extra` is appended to the config (e.g. `[catalog]`).
    pub async fn prepare(backend: &Backend, dir: &Path, extra: &str) -> Coordinator {
        std::fs::create_dir_all(dir).expect("create the coordinator's directory");
        let http = SocketAddr::from((Ipv4Addr::LOCALHOST, free_port()));
        let client_id = format!("e2e-coordinator-{}", unique());
        let (database, schema) = match &backend.database {
            None => (
                format!("sqlite://{}", dir.join("munifab.db").display()),
                None,
            ),
            Some(url) => {
                let schema = format!("e2e_{}", unique());
                postgres_execute(url, &format!("CREATE SCHEMA {schema}")).await;
                let sep = if url.contains('?') { '&' } else { '?' };
                (
                    format!("{url}{sep}options[search_path]={schema}"),
                    Some(schema),
                )
            }
        };
        let (mqtt, mqtt_port) = match &backend.broker {
            None => {
                let port = free_port();
                (
                    format!("mode = \"embedded\"\nlisten = \"127.0.0.1:{port}\""),
                    port,
                )
            }
            Some(url) => {
                let (_, port) = services::host_port(url).expect("checked by services");
                (format!("mode = \"external\"\nurl = \"{url}\""), port)
            }
        };
        let config = dir.join("coordinator.toml");
        std::fs::write(
            &config,
            format!(
                "data_dir = {data:?}\n\n[http]\nlisten = \"{http}\"\n\n[database]\nurl = {database:?}\n\n\
                 [mqtt]\n{mqtt}\nclient_id = \"{client_id}\"\n\n\
                 [dispatch]\ntick_ms = 100\noffline_grace_secs = 300\n\n{extra}",
                data = dir.display().to_string(),
            ),
        )
        .expect("write the coordinator's config");
        let coordinator = Coordinator {
            backend: backend.clone(),
            dir: dir.to_path_buf(),
            config,
            http,
            mqtt_port,
            client_id,
            schema,
            process: None,
        };
        coordinator.cli(&["migrate"]);
        coordinator
    }

    /// Runs `munifab-coordinator --config FILE args…` and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> String {
        let mut c = command("munifab-coordinator");
        c.arg("--config").arg(&self.config).args(args);
        process::run(&format!("munifab-coordinator {}", args.join(" ")), &mut c)
    }

    /// `munifab-coordinator token create`: a new token for `role` (with `scope`, and the
    /// agent's `site`), as printed once.
    pub fn token(&self, role: &str, scope: Option<&str>, site: Option<&str>) -> String {
        let mut args = vec!["token", "create", "--role", role, "--label", "e2e"];
        if let Some(s) = scope {
            args.extend(["--scope", s]);
        }
        if let Some(s) = site {
            args.extend(["--site", s]);
        }
        let out = self.cli(&args);
        let token = out.trim().to_string();
        assert!(
            !token.is_empty() && !token.contains(char::is_whitespace),
            "token create printed {out:?}"
        );
        token
    }

    /// Starts `serve` and returns once it printed that it is ready and `/healthz` answers.
    pub async fn start(&mut self) {
        assert!(self.process.is_none(), "the coordinator is already running");
        let mut c = command("munifab-coordinator");
        c.arg("--config").arg(&self.config).arg("serve");
        let mut p = Process::spawn("munifab-coordinator serve", c);
        p.wait_for_line("coordinator ready", START_PATIENCE).await;
        let health = self.api(None).get("/healthz").await;
        assert_eq!(health.status, 200, "/healthz: {health}");
        self.process = Some(p);
    }

    /// Kills `serve` with SIGKILL: no shutdown, no goodbye, as in a crash.
    pub fn kill(&mut self) {
        self.process
            .take()
            .expect("the coordinator is running")
            .kill();
    }

    /// Stops `serve` with SIGTERM and checks that it exits cleanly.
    pub async fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            let status = p.terminate(Duration::from_secs(30)).await;
            assert!(status.success(), "the coordinator exited with {status}");
        }
    }

    /// Fails the test with the coordinator's log if `serve` has exited.
    pub fn assert_running(&mut self) {
        if let Some(p) = &mut self.process {
            p.assert_running();
        }
    }

    /// Waits until `serve` logs a line containing `needle`; returns it.
    pub async fn wait_for_log(&mut self, needle: &str, within: Duration) -> String {
        self.process
            .as_mut()
            .expect("the coordinator is running")
            .wait_for_line(needle, within)
            .await
    }

    /// The last lines `serve` printed.
    pub fn tail(&self, n: usize) -> String {
        self.process.as_ref().map(|p| p.tail(n)).unwrap_or_default()
    }

    /// The API as the holder of `token`.
    pub fn api(&self, token: Option<&str>) -> Client {
        Client::new(self.http, token)
    }

    /// `http://127.0.0.1:PORT`.
    pub fn http_url(&self) -> String {
        format!("http://{}", self.http)
    }

    /// The broker agents connect to.
    pub fn broker_url(&self) -> String {
        match &self.backend.broker {
            Some(url) => url.clone(),
            None => format!("mqtt://127.0.0.1:{}", self.mqtt_port),
        }
    }

    /// Host and port of the broker agents connect to.
    pub fn broker_addr(&self) -> (String, u16) {
        services::host_port(&self.broker_url()).expect("a broker URL")
    }

    /// Whether agents go through the coordinator's embedded broker (and its ACL front).
    pub fn embedded_broker(&self) -> bool {
        self.backend.broker.is_none()
    }

    /// The coordinator's data directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The backend it runs on.
    pub fn backend(&self) -> &Backend {
        &self.backend
    }

    /// Stops `serve` and, on an external broker, removes the session a coordinator left
    /// there; on PostgreSQL, drops the test's schema.
    pub async fn finish(mut self) {
        self.stop().await;
        if let Some(broker) = &self.backend.broker {
            forget_session(broker, &self.client_id).await;
        }
        if let (Some(url), Some(schema)) = (&self.backend.database, &self.schema) {
            postgres_execute(url, &format!("DROP SCHEMA {schema} CASCADE")).await;
        }
    }
}

async fn postgres_execute(url: &str, sql: &str) {
    use sqlx::{Connection, Executor};
    let mut conn = sqlx::PgConnection::connect(url)
        .await
        .unwrap_or_else(|e| panic!("connect to PostgreSQL at {url}: {e}"));
    conn.execute(sqlx::AssertSqlSafe(sql.to_string()))
        .await
        .unwrap_or_else(|e| panic!("{sql}: {e}"));
    let _ = conn.close().await;
}

/// Connects once with `client_id` and a clean session, which makes the broker drop any
/// session state kept for that id.
async fn forget_session(broker: &str, client_id: &str) {
    let (host, port) = services::host_port(broker).expect("a broker URL");
    let mut o = rumqttc::MqttOptions::new(client_id, host, port);
    o.set_clean_session(true);
    let (client, mut events) = rumqttc::AsyncClient::new(o, 4);
    let connected = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match events.poll().await {
                Ok(rumqttc::Event::Incoming(rumqttc::Packet::ConnAck(_))) => return true,
                Ok(_) => {}
                Err(_) => return false,
            }
        }
    })
    .await;
    if connected == Ok(true) {
        let _ = client.disconnect().await;
        let _ = tokio::time::timeout(Duration::from_secs(2), events.poll()).await;
    }
}

/// The firmware a virtual machine runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Firmware {
    /// Marlin 2 (printers).
    Marlin,
    /// GRBL 1.1 (mills).
    Grbl,
}

impl Firmware {
    fn as_str(self) -> &'static str {
        match self {
            Firmware::Marlin => "marlin",
            Firmware::Grbl => "grbl",
        }
    }

    /// The shipped machine profile this test uses for the firmware.
    pub fn profile(self) -> &'static str {
        match self {
            Firmware::Marlin => "generic-marlin-220",
            Firmware::Grbl => "generic-grbl-300x200",
        }
    }
}

/// How fast the virtual machines run: moves, dwells and heating `speed` times faster than
/// real, bytes paced at `baud` (0: unpaced).
#[derive(Debug, Clone, Copy)]
pub struct Pace {
    /// Speed factor (0 = no delays).
    pub speed: f64,
    /// Emulated baud rate (0 = unpaced).
    pub baud: u32,
}

/// A `munifab-bridge simulate` process: a virtual machine on a pty, linked at a path.
#[derive(Debug)]
pub struct VirtualMachine {
    /// Machine id the agent gives it.
    pub id: String,
    /// What it runs.
    pub firmware: Firmware,
    link: PathBuf,
    record: PathBuf,
    process: Process,
}

impl VirtualMachine {
    /// Starts a virtual machine whose port appears at `dir/tty-{id}`; returns once it is
    /// listening.
    pub async fn start(dir: &Path, id: &str, firmware: Firmware, pace: Pace) -> VirtualMachine {
        let link = dir.join(format!("tty-{id}"));
        let record = dir.join(format!("{id}.record"));
        let mut c = command("munifab-bridge");
        c.args(["simulate", "--firmware", firmware.as_str()])
            .arg("--link")
            .arg(&link)
            .arg("--record")
            .arg(&record)
            .args(["--speed", &pace.speed.to_string()])
            .args(["--baud", &pace.baud.to_string()]);
        let mut process = Process::spawn(format!("virtual {id}"), c);
        process.wait_for_line("linked at", START_PATIENCE).await;
        VirtualMachine {
            id: id.to_string(),
            firmware,
            link,
            record,
            process,
        }
    }

    /// The port path agents open.
    pub fn port(&self) -> &Path {
        &self.link
    }

    /// Unplugs it (SIGTERM) and returns every command it executed, in order.
    pub async fn stop(self) -> Vec<String> {
        let status = self.process.terminate(Duration::from_secs(30)).await;
        assert!(status.success(), "virtual {} exited with {status}", self.id);
        std::fs::read_to_string(&self.record)
            .unwrap_or_else(|e| panic!("the record of {}: {e}", self.id))
            .lines()
            .map(str::to_string)
            .collect()
    }
}

/// A `munifab-agent run` process with its config and data directory.
#[derive(Debug)]
pub struct Agent {
    /// Agent id.
    pub id: String,
    /// Its token (broker password and signing secret).
    pub token: String,
    /// Its data directory (spool, artifact cache).
    pub data_dir: PathBuf,
    /// Machine ids it drives.
    pub machines: Vec<String>,
    config: PathBuf,
    process: Option<Process>,
}

impl Agent {
    /// Writes the agent's config: its machines on the given virtual machines' ports, each
    /// with the shipped profile for its firmware, confirmation needed after every job.
    pub fn prepare(
        coordinator: &Coordinator,
        dir: &Path,
        id: &str,
        site: &str,
        token: &str,
        machines: &[&VirtualMachine],
    ) -> Agent {
        let data_dir = dir.join(format!("agent-{id}"));
        std::fs::create_dir_all(&data_dir).expect("create the agent's data directory");
        let mut text = format!(
            "agent_id = \"{id}\"\nsite = \"{site}\"\ndata_dir = {data:?}\ntelemetry_interval_ms = 500\n\n\
             [broker]\nurl = \"{broker}\"\ntoken = \"{token}\"\nkeep_alive_s = 5\n\
             reconnect_min_ms = 50\nreconnect_max_ms = 300\n\n\
             [coordinator]\nurl = \"{http}\"\n\n[shutdown]\nrunning_jobs = \"pause\"\ntimeout_s = 5\n",
            data = data_dir.display().to_string(),
            broker = coordinator.broker_url(),
            http = coordinator.http_url(),
        );
        for m in machines {
            text.push_str(&format!(
                "\n[[machines]]\nid = \"{}\"\nport = {:?}\nbaud = 115200\nfirmware = \"{}\"\n\
                 needs_confirmation = true\nprofile = {:?}\n",
                m.id,
                m.port().display().to_string(),
                m.firmware.as_str(),
                workspace_root()
                    .join("profiles")
                    .join(format!("{}.toml", m.firmware.profile()))
                    .display()
                    .to_string(),
            ));
        }
        let config = dir.join(format!("agent-{id}.toml"));
        std::fs::write(&config, text).expect("write the agent's config");
        Agent {
            id: id.to_string(),
            token: token.to_string(),
            data_dir,
            machines: machines.iter().map(|m| m.id.clone()).collect(),
            config,
            process: None,
        }
    }

    /// Starts `munifab-agent run` and waits until the coordinator lists all its machines
    /// (so it is connected and announced them). An agent that exits first fails the test
    /// with its log at once: its exit is no write to the coordinator's store (before it
    /// connected, nothing there notices), so it is watched on the process itself.
    pub async fn start(&mut self, api: &Client) {
        let mut c = command("munifab-agent");
        c.arg("run").arg("--config").arg(&self.config);
        let process = self
            .process
            .insert(Process::spawn(format!("agent {}", self.id), c));
        let (id, want) = (self.id.clone(), self.machines.len());
        let what = format!("agent {id} online with {want} machines");
        let online = eventually(&what, START_PATIENCE, api, async || {
            let machines = api.get_json("/api/v1/machines").await;
            let mine = machines
                .as_array()
                .into_iter()
                .flatten()
                .filter(|m| m["agent"] == id.as_str() && m["agent_online"] == true)
                .filter(|m| m["state"] != "offline")
                .count();
            if mine == want {
                Ok(())
            } else {
                Err(machines.to_string())
            }
        });
        tokio::select! {
            () = online => {}
            () = process.fail_on_exit() => {}
        }
    }

    /// Waits until the agent logs a line containing `needle`; returns it.
    pub async fn wait_for_log(&mut self, needle: &str, within: Duration) -> String {
        self.process
            .as_mut()
            .expect("the agent is running")
            .wait_for_line(needle, within)
            .await
    }

    /// Stops the agent with SIGTERM.
    pub async fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            let status = p.terminate(Duration::from_secs(30)).await;
            assert!(status.success(), "agent {} exited with {status}", self.id);
        }
    }

    /// The agent's retained topics on a shared broker, emptied so later runs start clean.
    pub async fn clear_retained(&self, coordinator: &Coordinator) {
        if coordinator.embedded_broker() {
            return;
        }
        let (host, port) = coordinator.broker_addr();
        let mut o = rumqttc::MqttOptions::new(format!("{}-cleanup", self.id), host, port);
        o.set_credentials(&self.id, &self.token);
        let (client, mut events) = rumqttc::AsyncClient::new(o, 16);
        let mut topics = vec![format!("munifab/v1/agents/{}/status", self.id)];
        for m in &self.machines {
            topics.push(format!("munifab/v1/agents/{}/machines/{m}/state", self.id));
        }
        let count = topics.len();
        for t in topics {
            client
                .publish(t, rumqttc::QoS::AtLeastOnce, true, Vec::new())
                .await
                .expect("queue a retained clear");
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), async {
            let mut acked = 0;
            while acked < count {
                match events.poll().await {
                    Ok(rumqttc::Event::Incoming(rumqttc::Packet::PubAck(_))) => acked += 1,
                    Ok(_) => {}
                    Err(_) => return,
                }
            }
        })
        .await;
    }
}

/// The commands a firmware executes for `file`, as the agent streams it: comments, blank
/// lines, line numbers and checksums dropped (the streamer's cleaning); GRBL additionally
/// drops spaces and upper-cases, as its parser does.
pub fn commands_of(firmware: Firmware, file: &str) -> Vec<String> {
    use munifab_firmware_bridge::session::line::clean;
    use munifab_firmware_bridge::virtual_machine::normalize_grbl_line;
    file.lines()
        .filter_map(clean)
        .map(|l| match firmware {
            Firmware::Marlin => l.to_string(),
            Firmware::Grbl => normalize_grbl_line(l),
        })
        .filter(|l| !l.is_empty())
        .collect()
}

/// Whether a recorded command is one the agent's session sends on its own, outside any
/// job: Marlin's handshake (`M110 N0`, `M115`), temperature auto-report (`M155 S…`) and
/// polls or probes (`M105`); GRBL's build-info query (`$I`) is a report the virtual
/// machine does not record.
pub fn is_host_command(firmware: Firmware, command: &str) -> bool {
    match firmware {
        Firmware::Marlin => {
            command == "M110 N0"
                || command == "M115"
                || command == "M105"
                || command.starts_with("M155 S")
        }
        Firmware::Grbl => false,
    }
}

/// Jobs (JSON from the API) that ran on `agent/machine`, in the order they started.
pub async fn jobs_on(api: &Client, jobs: &[Value], agent: &str, machine: &str) -> Vec<Value> {
    let mut mine = Vec::new();
    for job in jobs {
        if job["agent"] == agent && job["machine"] == machine && job["state"] == "completed" {
            let started = started_ms(api, job).await;
            mine.push((started, job.clone()));
        }
    }
    mine.sort_by_key(|(t, _)| *t);
    mine.into_iter().map(|(_, j)| j).collect()
}

/// When the job's final run started: its first `running` event in its last epoch (ms).
pub async fn started_ms(api: &Client, job: &Value) -> i64 {
    let events = api
        .get_json(&format!(
            "/api/v1/jobs/{}/events",
            job["id"].as_str().unwrap()
        ))
        .await;
    events
        .as_array()
        .expect("events are a list")
        .iter()
        .filter(|e| e["to"] == "running" && e["epoch"] == job["epoch"])
        .filter_map(|e| e["at_ms"].as_i64())
        .min()
        .unwrap_or_else(|| panic!("job {} never ran: {events}", job["id"]))
}
