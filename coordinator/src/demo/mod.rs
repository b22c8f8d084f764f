//! `munifab-coordinator demo`: the whole chain in one process, with nothing installed.
//!
//! A real coordinator (SQLite in a temporary folder, the embedded broker, the HTTP API on
//! free ports) syncs the repository's `designs/` as a git source; two real agents (the
//! `munifab-agent` library, connecting over MQTT/TCP with their tokens like any agent)
//! drive virtual Marlin and GRBL machines on real pseudo-terminals at two fablabs. The demo
//! then does what people do, through the HTTP API: sets up two cooperatives sharing a
//! pool, submits design jobs and uploads, confirms machines ready (the one step a person
//! does at the machine, automated here and said so), follows progress, and prints the
//! production ledger with its verification.
//!
//! # Layout
//!
//! - [`world`]: the cooperatives, sites, machines and jobs, and each agent's `agent.toml`.
//! - [`client`]: the HTTP API client.
//! - [`progress`]: one bar per machine, or plain lines.
//! - [`summary`]: the end-of-run tables, from plain data.

pub mod client;
pub mod progress;
pub mod summary;
pub mod world;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use munifab_protocol::MachineStatus;
use reqwest::Method;
use serde::Deserialize;
use serde_json::{Value, json};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::auth::Grant;
use crate::config::Settings;
use crate::ledger::Entry;
use crate::lifecycle::JobState;
use crate::store::{LedgerCheck, NewToken};
use crate::{catalog, clock, server};
use client::{Api, Changes};
use progress::{Display, MachineLine};
use summary::{JobRow, Verification};

/// Speed factor of the virtual machines unless `--speed` says otherwise: the whole run
/// takes well under two minutes on two cores (docs/getting-started.md has the figures).
pub const DEFAULT_SPEED: f64 = 40.0;

/// How long the jobs may take before the demo gives up.
const JOBS_DEADLINE: Duration = Duration::from_secs(5 * 60);
/// The longest single wait for a change (`GET /api/v1/changes`) while machines come online:
/// within the coordinator's cap and the client's request timeout.
const LONGEST_WAIT: Duration = Duration::from_secs(20);
/// A confirmation the agent has not answered (its machine still needs attention) is given
/// again after this; so the demo also reads again this long after the last change at most,
/// as that retry is due without any write to wake it.
const CONFIRM_AGAIN: Duration = Duration::from_secs(2);

/// What the demo runs with.
#[derive(Debug, Clone)]
pub struct Options {
    /// Speed factor of the virtual machines (moves, dwells, heating).
    pub speed: f64,
    /// Keep the API and the broker up after the summary, until the stop signal.
    pub keep_running: bool,
    /// The designs folder committed as the catalog's git source.
    pub designs: PathBuf,
    /// The machine profiles folder.
    pub profiles: PathBuf,
}

impl Options {
    /// The repository this binary was built from (`designs/` and `profiles/` are there).
    pub fn repository() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
    }
}

/// A job the demo submitted, and how to name it.
#[derive(Debug, Clone)]
struct Submitted {
    label: String,
    coop: String,
}

#[derive(Debug, Deserialize)]
struct JobView {
    id: String,
    state: JobState,
    agent: Option<String>,
    machine: Option<String>,
    progress: Option<f64>,
    detail: Option<String>,
}

#[derive(Debug, Deserialize)]
struct JobPage {
    items: Vec<JobView>,
}

#[derive(Debug, Deserialize)]
struct MachineView {
    agent: String,
    machine: String,
    agent_online: bool,
    state: MachineStatus,
}

#[derive(Debug, Deserialize)]
struct LedgerPage {
    items: Vec<Entry>,
}

fn say(line: impl AsRef<str>) {
    println!("{}", line.as_ref());
}

/// Runs the demo to its summary (and, with `keep_running`, until `stop`). Errors say what
/// went wrong; a job that did not complete is an error, after the summary.
pub async fn run(opts: Options, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    tokio::pin!(stop);
    let began = Instant::now();
    anyhow::ensure!(
        opts.speed.is_finite() && opts.speed > 0.0,
        "--speed must be a positive factor, not {}",
        opts.speed
    );
    for (what, dir) in [("designs", &opts.designs), ("profiles", &opts.profiles)] {
        anyhow::ensure!(
            dir.is_dir(),
            "no {what} folder at {} (run from a clone of the repository, or pass --{what})",
            dir.display()
        );
    }
    let tmp = tempfile::Builder::new()
        .prefix("munifab-demo-")
        .tempdir()
        .context("creating a temporary folder")?;
    say(format!(
        "MuniFab demo: a coordinator, two fablabs and four virtual machines in this process; data in {}",
        tmp.path().display()
    ));

    // The designs as a git repository, as a cooperative would publish them.
    let repo_dir = tmp.path().join("designs.git");
    let (designs, dest) = (opts.designs.clone(), repo_dir.clone());
    // Two commits, originals then adaptations, so `wall-bracket-m4`'s `derived_from` names a
    // commit this source really has and its provenance resolves. A fixed time gives the same
    // commit ids on every run.
    let seeded = tokio::task::spawn_blocking(move || {
        let source = world::SOURCE.parse().expect("a valid source name");
        let at = time::OffsetDateTime::from_unix_timestamp(1_800_000_000).expect("a valid time");
        catalog::commit_designs_as_git_source(&designs, &dest, &source, at)
    })
    .await?
    .with_context(|| format!("committing {} to a git repository", opts.designs.display()))?;
    let commit = seeded.head.to_string();

    let settings = coordinator_settings(tmp.path(), &repo_dir, &opts.profiles)?;
    let now = clock::system();
    let shutdown = CancellationToken::new();
    let server = server::start(settings, now.clone(), shutdown.clone())
        .await
        .context("starting the coordinator")?;
    let base = format!("http://{}", server.http_addr());
    let broker = server
        .mqtt_addr()
        .context("the embedded broker did not start")?;
    let (_, admin) = server
        .store()
        .create_token(
            &NewToken {
                grant: Grant::Admin,
                label: "demo admin".into(),
            },
            now(),
        )
        .await
        .context("creating the admin token")?;
    say(format!(
        "coordinator: API {base}/api/v1, broker mqtt://{broker}, SQLite in {}",
        tmp.path().join("coordinator").display()
    ));

    let agents = CancellationToken::new();
    let mut agent_tasks = Vec::new();
    let api = Api::new(&base)?;
    let ctx = Ctx {
        api: &api,
        admin: &admin,
        broker,
        base: &base,
        tmp: tmp.path(),
        opts: &opts,
        commit: &commit,
    };
    let outcome = tokio::select! {
        r = ctx.run(&agents, &mut agent_tasks) => r,
        () = &mut stop => Err(anyhow::anyhow!("interrupted")),
    };
    let finished = began.elapsed();

    let outcome = match outcome {
        Ok(rows) => {
            let check = server
                .store()
                .verify_ledger()
                .await
                .context("verifying the ledger")?;
            let verification = match check {
                LedgerCheck::Ok { entries, head } => Verification::Ok {
                    entries,
                    head: head.to_string(),
                },
                LedgerCheck::Broken { seq, why } => Verification::Broken { seq, why },
            };
            say("");
            print!("{}", summary::render(&rows, &verification));
            say(format!(
                "\nDemo finished in {:.1} s.",
                finished.as_secs_f64()
            ));
            judge(&rows, &verification)
        }
        Err(e) => Err(e),
    };

    if opts.keep_running && outcome.is_ok() {
        say(format!(
            "\nThe coordinator keeps running; Ctrl-C stops it.\n  \
             API       {base}/api/v1\n  \
             OpenAPI   {base}/api/v1/openapi.json\n  \
             metrics   {base}/metrics\n  \
             broker    mqtt://{broker} (agents)\n  \
             admin token (shown once): {admin}\n  \
             try:      curl -H \"Authorization: Bearer {admin}\" {base}/api/v1/ledger/report"
        ));
        stop.await;
        say("stopping");
    }

    agents.cancel();
    for task in agent_tasks {
        match tokio::time::timeout(Duration::from_secs(10), task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => tracing::warn!(error = %e, "an agent stopped with an error"),
            Ok(Err(e)) => tracing::warn!(error = %e, "an agent task failed"),
            Err(_) => tracing::warn!("an agent did not stop in time"),
        }
    }
    shutdown.cancel();
    server.wait().await;
    drop(tmp);
    outcome
}

/// Success means: every job completed, one ledger entry each, and the ledger verifies.
fn judge(rows: &[JobRow], verification: &Verification) -> anyhow::Result<()> {
    let wrong: Vec<String> = rows
        .iter()
        .filter(|r| r.outcome != "completed")
        .map(|r| format!("{} ({})", r.design, r.outcome))
        .collect();
    if !wrong.is_empty() {
        bail!("jobs did not complete: {}", wrong.join(", "));
    }
    if let Verification::Broken { seq, why } = verification {
        bail!("the ledger does not verify at entry {seq}: {why}");
    }
    Ok(())
}

/// The coordinator's configuration: written to a file in the data folder (to read, or to
/// start the same coordinator again with `serve --config`) and loaded like any other.
fn coordinator_settings(tmp: &Path, repo: &Path, profiles: &Path) -> anyhow::Result<Settings> {
    let q = |p: &Path| toml::Value::String(p.display().to_string()).to_string();
    let text = format!(
        "# Written by `munifab-coordinator demo`.\n\
         data_dir = {data}\n\n\
         [http]\nlisten = \"127.0.0.1:0\"\n\n\
         [mqtt]\nmode = \"embedded\"\nlisten = \"127.0.0.1:0\"\n\n\
         [dispatch]\ntick_ms = 250\n\n\
         [catalog]\nprofiles_dir = {profiles}\nsync_on_start = true\n\n\
         [[catalog.sources]]\nname = \"{source}\"\nurl = {repo}\nref = \"{branch}\"\n",
        data = q(&tmp.join("coordinator")),
        profiles = q(profiles),
        repo = q(repo),
        source = world::SOURCE,
        branch = "main",
    );
    let path = tmp.join("coordinator.toml");
    std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    // No environment: the demo must not pick up a MUNIFAB_* meant for a real coordinator.
    Settings::load(Some(&path), std::iter::empty()).context("the demo's coordinator settings")
}

struct Ctx<'a> {
    api: &'a Api,
    admin: &'a str,
    broker: std::net::SocketAddr,
    base: &'a str,
    tmp: &'a Path,
    opts: &'a Options,
    commit: &'a str,
}

impl Ctx<'_> {
    async fn run(
        &self,
        agents: &CancellationToken,
        agent_tasks: &mut Vec<JoinHandle<Result<(), munifab_agent::AgentError>>>,
    ) -> anyhow::Result<Vec<JobRow>> {
        let api = self.api;
        let admin = self.admin;
        self.show_catalog().await?;

        // The cooperative model, as an admin sets it up.
        for c in world::COOPS {
            api.json::<Value>(
                Method::PUT,
                admin,
                &format!("/api/v1/cooperatives/{}", c.id),
                &json!({ "name": c.name }),
            )
            .await?;
        }
        let mut operators = BTreeMap::new();
        for s in world::SITES {
            api.json::<Value>(
                Method::PUT,
                admin,
                &format!("/api/v1/sites/{}", s.id),
                &json!({ "name": s.name, "region": s.region, "lat": s.lat, "lon": s.lon }),
            )
            .await?;
            operators.insert(s.agent, self.token("operator", s.id, None).await?);
        }
        let members: BTreeMap<&str, u32> = world::COOPS.iter().map(|c| (c.id, c.weight)).collect();
        api.json::<Value>(
            Method::PUT,
            admin,
            &format!("/api/v1/pools/{}", world::POOL),
            &json!({
                "name": "Valley pool",
                "machines": world::machine_keys(),
                "members": members,
            }),
        )
        .await?;
        say(format!(
            "pool {}: {}, shared by {}",
            world::POOL,
            world::SITES
                .iter()
                .map(|s| format!("{} ({} machines)", s.name, s.machines.len()))
                .collect::<Vec<_>>()
                .join(" and "),
            world::COOPS
                .iter()
                .map(|c| format!("{} (weight {})", c.name, c.weight))
                .collect::<Vec<_>>()
                .join(" and "),
        ));

        // One agent per site, with its own token, over MQTT like any workshop PC.
        for s in world::SITES {
            let token = self.token("agent", s.agent, Some(s.id)).await?;
            let dir = self.tmp.join("agents").join(s.agent);
            std::fs::create_dir_all(&dir)?;
            let path = dir.join("agent.toml");
            let text = world::agent_toml(
                &s,
                &world::AgentEnv {
                    broker: self.broker,
                    coordinator: self.base,
                    token: &token,
                    data_dir: &dir.join("data"),
                    profiles_dir: &self.opts.profiles,
                    speed: self.opts.speed,
                },
            );
            std::fs::write(&path, &text)?;
            let settings = munifab_agent::config::Settings::parse(&text, &path, &|_| None)
                .with_context(|| format!("the configuration of agent {}", s.agent))?;
            agent_tasks.push(tokio::spawn(munifab_agent::run(
                settings,
                agents.clone().cancelled_owned(),
            )));
        }
        let keys = world::machine_keys();
        self.wait_for_machines(&keys).await?;
        say(format!(
            "agents online: {} — virtual Marlin and GRBL machines on pseudo-terminals, speed x{}",
            keys.join(", "),
            self.opts.speed
        ));
        say("demo: auto-confirming readiness — a real operator does this at the machine");
        for s in world::SITES {
            for m in s.machines {
                // No job has run yet, so nothing can be on the machine.
                if !self.confirm(&operators[s.agent], s.agent, m.id).await? {
                    bail!(
                        "{}/{} holds a job before the demo submitted any",
                        s.agent,
                        m.id
                    );
                }
            }
        }

        let submitted = self.submit().await?;
        let rows = self.follow(&submitted, &operators, &keys).await?;
        Ok(rows)
    }

    async fn token(&self, role: &str, scope: &str, site: Option<&str>) -> anyhow::Result<String> {
        let mut body =
            json!({ "role": role, "scope": scope, "label": format!("demo {role} {scope}") });
        if let Some(site) = site {
            body["site"] = json!(site);
        }
        let created: Value = self
            .api
            .json(Method::POST, self.admin, "/api/v1/tokens", &body)
            .await?;
        created["token"]
            .as_str()
            .map(str::to_string)
            .context("the token answer has no token")
    }

    async fn show_catalog(&self) -> anyhow::Result<()> {
        let page: Value = self
            .api
            .get(self.admin, "/api/v1/designs?limit=100")
            .await?;
        let items = page["items"].as_array().cloned().unwrap_or_default();
        let errors: Value = self.api.get(self.admin, "/api/v1/catalog/errors").await?;
        say(format!(
            "catalog: {} designs synced from the git source {} at commit {} ({} problems)",
            items.len(),
            world::SOURCE,
            &self.commit[..self.commit.len().min(12)],
            errors.as_array().map_or(0, Vec::len),
        ));
        for d in &items {
            say(format!(
                "  {:<26} {:<4} {:<16} {}{}",
                format!(
                    "{}/{}",
                    d["key"]["source"].as_str().unwrap_or("?"),
                    d["key"]["id"].as_str().unwrap_or("?")
                ),
                d["process"].as_str().unwrap_or("?"),
                d["licence"].as_str().unwrap_or("?"),
                d["title"].as_str().unwrap_or(""),
                d["derived_from"]
                    .as_str()
                    .map(|o| format!(" (adapted from {})", short_spec(o)))
                    .unwrap_or_default(),
            ));
        }
        anyhow::ensure!(
            !items.is_empty(),
            "the catalog is empty: is {} a designs folder?",
            self.opts.designs.display()
        );
        Ok(())
    }

    async fn wait_for_machines(&self, keys: &[String]) -> anyhow::Result<()> {
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut changes = Changes::new(self.api, self.admin);
        loop {
            changes.before_read().await?;
            let machines: Vec<MachineView> = self.api.get(self.admin, "/api/v1/machines").await?;
            let up: BTreeSet<String> = machines
                .iter()
                .filter(|m| m.agent_online && m.state != MachineStatus::Offline)
                .map(|m| format!("{}/{}", m.agent, m.machine))
                .collect();
            if keys.iter().all(|k| up.contains(k)) {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!(
                    "machines not online after 60 s: {}",
                    keys.iter()
                        .filter(|k| !up.contains(*k))
                        .cloned()
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            // An agent's presence and its machines' states are writes the revision signals.
            changes.wait(deadline, LONGEST_WAIT).await?;
        }
    }

    /// `POST /machines/{agent}/{machine}/ready` with the site operator's token: bed
    /// cleared and, for the mill, stock loaded and zeroed. `false` when the coordinator has
    /// not applied the end of the machine's job yet (`409 machine_busy`): asked again when
    /// the next change (that end, applied) wakes the loop.
    async fn confirm(&self, operator: &str, agent: &str, machine: &str) -> anyhow::Result<bool> {
        let path = format!("/api/v1/machines/{agent}/{machine}/ready");
        match self
            .api
            .try_json(
                Method::POST,
                operator,
                &path,
                &json!({ "stock_loaded": true }),
            )
            .await?
        {
            Ok(_) => Ok(true),
            Err(r) if r.code() == "machine_busy" => Ok(false),
            Err(r) => bail!("POST {path}: {r}"),
        }
    }

    async fn submit(&self) -> anyhow::Result<BTreeMap<String, Submitted>> {
        let api = self.api;
        let mut makers = BTreeMap::new();
        for c in world::COOPS {
            makers.insert(c.id, self.token("maker", c.id, None).await?);
        }
        let mut submitted = BTreeMap::new();
        for j in world::DESIGN_JOBS {
            let created: Value = api
                .json(
                    Method::POST,
                    &makers[j.coop],
                    "/api/v1/jobs/from-design",
                    &json!({
                        "design": format!("{}/{}", world::SOURCE, j.design),
                        "profile": j.profile,
                        "quantity": 1,
                        "delivery_site": j.delivery_site,
                    }),
                )
                .await?;
            let label = format!("{}/{}", world::SOURCE, j.design);
            for job in created["jobs"].as_array().into_iter().flatten() {
                let id = job["id"].as_str().context("a job without id")?;
                submitted.insert(
                    id.to_string(),
                    Submitted {
                        label: label.clone(),
                        coop: j.coop.to_string(),
                    },
                );
            }
            say(format!(
                "submitted  {:<13} {:<34} {:<15} for {}",
                j.coop,
                short_spec(created["design"].as_str().unwrap_or(&label)),
                created["jobs"][0]["design"]["licence"]
                    .as_str()
                    .unwrap_or(""),
                j.delivery_site,
            ));
        }

        let (coop, name, text) = world::UPLOAD;
        let job = api
            .upload(&makers[coop], name, text.as_bytes(), None)
            .await?
            .map_err(|r| anyhow::anyhow!("uploading {name}: {r}"))?;
        let id = job["id"].as_str().context("a job without id")?;
        submitted.insert(
            id.to_string(),
            Submitted {
                label: name.to_string(),
                coop: coop.to_string(),
            },
        );
        say(format!(
            "uploaded   {coop:<13} {name:<26} (the maker's own G-code)"
        ));

        let (coop, name, profile, text) = world::UNSAFE_UPLOAD;
        match api
            .upload(&makers[coop], name, text.as_bytes(), Some(profile))
            .await?
        {
            Ok(job) => bail!(
                "the unsafe file {name} was accepted as job {}: it must be refused",
                job["id"]
            ),
            Err(refusal) => {
                say(format!(
                    "REFUSED    {coop:<13} {name:<26} checked against {profile}: {}",
                    refusal
                ));
                let findings = refusal.body["error"]["details"]["findings"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default();
                anyhow::ensure!(
                    refusal.code() == "gcode_refused" && !findings.is_empty(),
                    "the unsafe file was refused for another reason: {refusal}"
                );
                for f in findings {
                    say(format!(
                        "             line {}:{} {} [{}]: {}",
                        f["line"],
                        f["column"],
                        f["severity"].as_str().unwrap_or("?"),
                        f["code"].as_str().unwrap_or("?"),
                        f["message"].as_str().unwrap_or(""),
                    ));
                }
            }
        }
        Ok(submitted)
    }

    /// Follows the jobs to their end: progress per machine, readiness confirmed after
    /// each job, and the ledger rows at the end.
    async fn follow(
        &self,
        submitted: &BTreeMap<String, Submitted>,
        operators: &BTreeMap<&str, String>,
        keys: &[String],
    ) -> anyhow::Result<Vec<JobRow>> {
        let mut display = Display::new(keys);
        let deadline = Instant::now() + JOBS_DEADLINE;
        let mut placed: BTreeMap<String, String> = BTreeMap::new();
        let mut ended: BTreeSet<String> = BTreeSet::new();
        let mut confirmed_at: BTreeMap<String, Instant> = BTreeMap::new();
        let mut changes = Changes::new(self.api, self.admin);
        loop {
            changes.before_read().await?;
            let jobs: JobPage = self.api.get(self.admin, "/api/v1/jobs?limit=500").await?;
            let machines: Vec<MachineView> = self.api.get(self.admin, "/api/v1/machines").await?;
            let ours: Vec<&JobView> = jobs
                .items
                .iter()
                .filter(|j| submitted.contains_key(&j.id))
                .collect();
            for j in &ours {
                let s = &submitted[&j.id];
                if let (Some(a), Some(m)) = (&j.agent, &j.machine) {
                    let key = format!("{a}/{m}");
                    if placed.get(&j.id) != Some(&key) {
                        display.println(&format!(
                            "assigned   {:<13} {:<26} -> {key}",
                            s.coop, s.label
                        ));
                        placed.insert(j.id.clone(), key);
                    }
                }
                if j.state.is_terminal() && ended.insert(j.id.clone()) {
                    display.println(&format!(
                        "{:<10} {:<13} {:<26}{}",
                        j.state.to_string(),
                        s.coop,
                        s.label,
                        j.detail
                            .as_deref()
                            .filter(|_| j.state != JobState::Completed)
                            .map(|d| format!(" ({d})"))
                            .unwrap_or_default()
                    ));
                }
            }
            for m in &machines {
                let key = format!("{}/{}", m.agent, m.machine);
                if !keys.contains(&key) {
                    continue;
                }
                let running = ours.iter().find(|j| {
                    !j.state.is_terminal()
                        && j.agent.as_deref() == Some(m.agent.as_str())
                        && j.machine.as_deref() == Some(m.machine.as_str())
                });
                let line = match running {
                    Some(j) => MachineLine {
                        job: Some(submitted[&j.id].label.clone()),
                        state: j.state.to_string(),
                        percent: j.progress.unwrap_or(0.0),
                    },
                    None => MachineLine {
                        job: None,
                        state: status_word(m.state).to_string(),
                        percent: 0.0,
                    },
                };
                display.update(&key, &line);
                // After a job the machine waits for a person: the demo plays the operator.
                let recently = confirmed_at
                    .get(&key)
                    .is_some_and(|t| t.elapsed() < CONFIRM_AGAIN);
                if m.state == MachineStatus::NeedsAttention
                    && running.is_none()
                    && !recently
                    && let Some(op) = operators.get(m.agent.as_str())
                    && self.confirm(op, &m.agent, &m.machine).await?
                {
                    confirmed_at.insert(key.clone(), Instant::now());
                    display.println(&format!(
                        "demo       confirmed {key} ready (part removed, stock loaded)"
                    ));
                }
            }
            if ours.len() == submitted.len() && ours.iter().all(|j| j.state.is_terminal()) {
                break;
            }
            if Instant::now() > deadline {
                display.finish();
                let open: Vec<String> = ours
                    .iter()
                    .filter(|j| !j.state.is_terminal())
                    .map(|j| format!("{} ({})", submitted[&j.id].label, j.state))
                    .collect();
                bail!(
                    "jobs not finished after {} s: {}",
                    JOBS_DEADLINE.as_secs(),
                    open.join(", ")
                );
            }
            // Jobs' moves and progress, machines' states: writes the revision signals. The
            // one thing due without a write is a confirmation given again.
            changes.wait(deadline, CONFIRM_AGAIN).await?;
        }
        display.finish();

        let ledger: LedgerPage = self
            .api
            .get(self.admin, "/api/v1/ledger?limit=1000")
            .await?;
        let mut rows = Vec::new();
        for id in submitted.keys() {
            let s = &submitted[id];
            let entry = ledger
                .items
                .iter()
                .find(|e| e.record.job.to_string() == *id);
            match entry {
                Some(e) => rows.push(JobRow {
                    design: s.label.clone(),
                    cooperative: e.record.cooperative.to_string(),
                    site: e.record.site.to_string(),
                    machine: e.record.machine.to_string(),
                    outcome: serde_json::to_value(e.record.outcome)?
                        .as_str()
                        .unwrap_or("?")
                        .to_string(),
                    machine_seconds: e.record.machine_seconds,
                    material: e.record.material.clone(),
                    material_mg: e.record.material_mg,
                }),
                None => rows.push(JobRow {
                    design: s.label.clone(),
                    cooperative: s.coop.clone(),
                    site: "-".into(),
                    machine: "-".into(),
                    outcome: "no ledger entry".into(),
                    machine_seconds: 0,
                    material: None,
                    material_mg: 0,
                }),
            }
        }
        rows.sort_by(|a, b| (&a.site, &a.machine).cmp(&(&b.site, &b.machine)));
        Ok(rows)
    }
}

fn status_word(s: MachineStatus) -> &'static str {
    match s {
        MachineStatus::Offline => "offline",
        MachineStatus::Idle => "idle",
        MachineStatus::NeedsAttention => "needs attention",
        MachineStatus::Ready => "ready",
        MachineStatus::Busy => "busy",
        MachineStatus::Paused => "paused",
        MachineStatus::Error => "error",
    }
}

/// `source/id@commit` with the commit cut to 7 digits.
fn short_spec(spec: &str) -> String {
    match spec.split_once('@') {
        Some((key, commit)) => format!("{key}@{}", &commit[..commit.len().min(7)]),
        None => spec.to_string(),
    }
}
