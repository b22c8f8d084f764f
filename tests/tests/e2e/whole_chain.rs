//! The whole chain (issue 9), as the demo runs it but through public interfaces only: the
//! catalog synced from a git repository built from this repository's `designs/`, one pool
//! with two sites (A: two Marlin printers; B: a Marlin printer and a GRBL mill), two
//! cooperatives with weights, design jobs from both plus an upload, and an unsafe file
//! refused with its findings.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use munifab_tests::http::Client;
use munifab_tests::process::workspace_root;
use munifab_tests::stack::{
    Agent, Backend, Coordinator, Firmware, Pace, VirtualMachine, commands_of, eventually,
    is_host_command, started_ms, unique,
};
use serde_json::{Value, json};
use sha2::Digest;

use crate::coordinator_core::{assert_lines_equal, entry_job, ledger_entries};

const PACE: Pace = Pace {
    speed: 2000.0,
    baud: 0,
};
const WAIT: Duration = Duration::from_secs(120);

/// (design, machine profile, cooperative)
const DESIGN_JOBS: [(&str, Firmware, &str); 6] = [
    ("calibration-cube", Firmware::Marlin, "bike-kitchen"),
    ("wall-bracket", Firmware::Marlin, "toy-library"),
    ("bike-cable-clip", Firmware::Marlin, "bike-kitchen"),
    ("wall-bracket-m4", Firmware::Marlin, "toy-library"),
    ("pocket-tray", Firmware::Grbl, "bike-kitchen"),
    ("engraved-sign", Firmware::Grbl, "toy-library"),
];

/// A small print a maker slices themselves and uploads, with the slicer's filament settings
/// (its own density; the shipped designs, sliced with `filament_density = 0`, are weighed by
/// their filament type).
const UPLOAD: &str = "; uploaded by a maker\n; filament_type = PLA\n; filament_diameter = 1.75\n\
                      ; filament_density = 1.24\nM140 S55\nM104 S205\nM190 S55\nM109 S205\nG28\n\
                      G90\nM82\nG92 E0\nG1 Z0.2 F600\nG1 X30 Y30 F3000\nG1 X60 Y30 E2.5 F1200\n\
                      G1 X60 Y60 E5.0\nG1 X30 Y60 E7.5\nG1 X30 Y30 E10.0\nM104 S0\nM140 S0\nM84\n";

/// A file that would factory-reset the printer: refused at submission.
const UNSAFE: &str = "; not a print\nG28\nM502 ; factory reset\nM500\nG1 X10 Y10 F3000\n";

/// A git repository holding a copy of this repository's `designs/`, committed on `main`.
fn designs_repository(dir: &Path) -> std::path::PathBuf {
    let repo = dir.join("designs-repo");
    copy_tree(&workspace_root().join("designs"), &repo.join("designs"));
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args([
                "-c",
                "user.name=e2e",
                "-c",
                "user.email=e2e@example.invalid",
            ])
            .args(["-c", "commit.gpgsign=false"])
            .args(args)
            .current_dir(&repo)
            .env("GIT_CONFIG_NOSYSTEM", "1")
            .output()
            .expect("git runs");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "designs"]);
    repo
}

fn copy_tree(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).expect("create a folder");
    for entry in std::fs::read_dir(from).expect("read designs/") {
        let entry = entry.expect("a directory entry");
        let target = to.join(entry.file_name());
        if entry.file_type().expect("a file type").is_dir() {
            copy_tree(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).expect("copy a design file");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn designs_from_git_run_on_two_sites_line_for_line_and_the_ledger_adds_up() {
    for backend in Backend::each() {
        whole_chain(&backend).await;
    }
}

async fn whole_chain(backend: &Backend) {
    let dir = tempfile::tempdir().expect("a scratch directory");
    let repo = designs_repository(dir.path());
    let catalog = format!(
        "[catalog]\nprofiles_dir = {:?}\n\n[[catalog.sources]]\nname = \"commons\"\n\
         url = \"file://{}\"\nref = \"main\"\nsubdir = \"designs\"\n",
        workspace_root().join("profiles").display().to_string(),
        repo.display()
    );
    let mut coordinator =
        Coordinator::prepare(backend, &dir.path().join("coordinator"), &catalog).await;

    // The cooperative model, set by an administrator on the command line.
    let (lab_a, lab_b) = (format!("lab-a-{}", unique()), format!("lab-b-{}", unique()));
    let machines = [
        (lab_a.as_str(), "mk4-a1", Firmware::Marlin),
        (lab_a.as_str(), "mk4-a2", Firmware::Marlin),
        (lab_b.as_str(), "mk3-b1", Firmware::Marlin),
        (lab_b.as_str(), "router-b", Firmware::Grbl),
    ];
    for (coop, name) in [
        ("bike-kitchen", "Bike Kitchen"),
        ("toy-library", "Toy Library"),
    ] {
        coordinator.cli(&["coop", "cooperative", coop, "--name", name]);
    }
    for (site, lat) in [("site-a", "47.37"), ("site-b", "47.50")] {
        coordinator.cli(&[
            "coop", "site", site, "--name", site, "--region", "valley", "--lat", lat, "--lon",
            "8.54",
        ]);
    }
    let mut pool = vec!["coop", "pool", "valley", "--name", "Valley pool"];
    let keys: Vec<String> = machines
        .iter()
        .map(|(a, m, _)| format!("{a}/{m}"))
        .collect();
    for k in &keys {
        pool.extend(["--machine", k.as_str()]);
    }
    pool.extend(["--member", "bike-kitchen=2", "--member", "toy-library=1"]);
    coordinator.cli(&pool);

    let admin = coordinator.token("admin", None, None);
    let makers: BTreeMap<&str, String> = ["bike-kitchen", "toy-library"]
        .into_iter()
        .map(|c| (c, coordinator.token("maker", Some(c), None)))
        .collect();
    let agent_tokens = [
        coordinator.token("agent", Some(&lab_a), Some("site-a")),
        coordinator.token("agent", Some(&lab_b), Some("site-b")),
    ];
    coordinator.start().await;
    let api = coordinator.api(Some(&admin));
    let designs = api.get_json("/api/v1/designs?limit=100").await;
    for (design, _, _) in DESIGN_JOBS {
        assert!(
            designs.to_string().contains(&format!("\"{design}\"")),
            "{design} synced from git: {designs}"
        );
    }

    let mut vms = Vec::new();
    for (_, m, fw) in machines {
        vms.push(VirtualMachine::start(dir.path(), m, fw, PACE).await);
    }
    let mut agents = vec![
        Agent::prepare(
            &coordinator,
            dir.path(),
            &lab_a,
            "site-a",
            &agent_tokens[0],
            &[&vms[0], &vms[1]],
        ),
        Agent::prepare(
            &coordinator,
            dir.path(),
            &lab_b,
            "site-b",
            &agent_tokens[1],
            &[&vms[2], &vms[3]],
        ),
    ];
    for a in &mut agents {
        a.start(&api).await;
    }
    for (agent, machine, fw) in machines {
        confirm_ready(&api, agent, machine, fw).await;
    }

    // Jobs from both cooperatives: designs (FDM and CNC), an upload, and an unsafe file.
    let mut submitted = Vec::new();
    for (design, fw, coop) in DESIGN_JOBS {
        let maker = api.as_token(&makers[coop]);
        let r = maker
            .post_json(
                "/api/v1/jobs/from-design",
                &json!({"design": format!("commons/{design}"), "profile": fw.profile()}),
            )
            .await;
        assert_eq!(r.status, 201, "{design}: {r}");
        for job in r.json()["jobs"].as_array().expect("created jobs") {
            submitted.push(job["id"].as_str().expect("an id").to_string());
        }
    }
    let r = api
        .as_token(&makers["toy-library"])
        .upload("coaster.gcode", UPLOAD.as_bytes(), None)
        .await;
    assert_eq!(r.status, 201, "upload: {r}");
    let upload_id = r.json()["id"].as_str().expect("an id").to_string();
    submitted.push(upload_id.clone());
    let r = api
        .as_token(&makers["bike-kitchen"])
        .upload("reset.gcode", UNSAFE.as_bytes(), None)
        .await;
    assert_eq!(r.status, 422, "the unsafe file: {r}");
    let refusal = r.json();
    assert_eq!(refusal["error"]["code"], "gcode_refused", "{refusal}");
    let findings = refusal["error"]["details"]["findings"]
        .as_array()
        .unwrap_or_else(|| panic!("findings in {refusal}"));
    assert!(
        findings
            .iter()
            .any(|f| f["line"] == 3 && f["message"].as_str().unwrap_or("").contains("M502")),
        "the finding names the line and the command: {refusal}"
    );
    assert_eq!(submitted.len(), DESIGN_JOBS.len() + 1);

    // Operators clear each machine after every job until every job has ended.
    let jobs = run_to_the_end(&api, &submitted, &mut coordinator).await;
    let listed = api.get_json("/api/v1/jobs?limit=100").await;
    assert_eq!(
        listed["total"],
        submitted.len(),
        "the refused file made no job: {listed}"
    );
    for j in &jobs {
        assert_eq!(
            j["pool"], "valley",
            "placed through the cooperatives' pool: {j}"
        );
    }
    let coops: Vec<&str> = jobs.iter().filter_map(|j| j["coop"].as_str()).collect();
    assert!(coops.contains(&"bike-kitchen") && coops.contains(&"toy-library"));
    let sites_used: Vec<&str> = jobs.iter().filter_map(|j| j["agent"].as_str()).collect();
    assert!(
        sites_used.contains(&lab_a.as_str()) && sites_used.contains(&lab_b.as_str()),
        "both sites worked: {sites_used:?}"
    );

    // What each machine executed, against the files of its jobs in the order they ran.
    let mut expected = Vec::new();
    for (agent, machine, fw) in machines {
        let mut lines = Vec::new();
        for job in munifab_tests::stack::jobs_on(&api, &jobs, agent, machine).await {
            let file = job_file(&job, &repo, &upload_id);
            lines.extend(commands_of(fw, &file));
        }
        expected.push(lines);
    }
    let ledger_check = coordinator.cli(&["ledger", "verify"]);
    check_ledger(&api, &jobs, &ledger_check).await;

    for a in &mut agents {
        a.stop().await;
        a.clear_retained(&coordinator).await;
    }
    for ((vm, want), (_, machine, fw)) in vms.into_iter().zip(&expected).zip(machines) {
        let record: Vec<String> = vm
            .stop()
            .await
            .into_iter()
            .filter(|c| !is_host_command(fw, c))
            .collect();
        assert_lines_equal(&record, want, &format!("{backend}: {machine}"));
    }
    coordinator.finish().await;
}

async fn confirm_ready(api: &Client, agent: &str, machine: &str, fw: Firmware) {
    let body = json!({ "stock_loaded": fw == Firmware::Grbl });
    let r = api
        .post_json(&format!("/api/v1/machines/{agent}/{machine}/ready"), &body)
        .await;
    assert_eq!(r.status, 202, "ready {agent}/{machine}: {r}");
}

/// Confirms machines that need attention (as the operators would after removing a part),
/// until every job has ended; returns the jobs. Any job that fails ends the test.
async fn run_to_the_end(api: &Client, ids: &[String], coordinator: &mut Coordinator) -> Vec<Value> {
    let mut confirmed: BTreeMap<String, i64> = BTreeMap::new();
    eventually("every job completed", WAIT, api, async || {
        coordinator.assert_running();
        let mut jobs = Vec::new();
        for id in ids {
            let j = api.get_json(&format!("/api/v1/jobs/{id}")).await;
            if matches!(j["state"].as_str(), Some("failed" | "cancelled" | "lost")) {
                panic!("job {id} ended badly: {j}");
            }
            jobs.push(j);
        }
        if jobs.iter().all(|j| j["state"] == "completed") {
            return Ok(jobs);
        }
        // Machines whose job the coordinator has not seen end yet. An operator confirms a
        // machine once the dashboard shows its job ended: a confirmation that reaches the
        // coordinator before the job's end event is reset by that event.
        let busy: Vec<String> = jobs
            .iter()
            .filter(|j| {
                matches!(
                    j["state"].as_str(),
                    Some("assigned" | "accepted" | "transferring" | "running" | "paused")
                )
            })
            .map(|j| {
                let on = |k: &str| j[k].as_str().unwrap_or("").to_string();
                format!("{}/{}", on("agent"), on("machine"))
            })
            .collect();
        let machines = api.get_json("/api/v1/machines").await;
        for m in machines.as_array().into_iter().flatten() {
            let (Some(agent), Some(machine)) = (m["agent"].as_str(), m["machine"].as_str()) else {
                continue;
            };
            let key = format!("{agent}/{machine}");
            let seen = m["updated_ms"].as_i64().unwrap_or_default();
            if m["state"] == "needs_attention"
                && !busy.contains(&key)
                && confirmed.get(&key) != Some(&seen)
            {
                let fw = if m["capabilities"]["process"] == "cnc" {
                    Firmware::Grbl
                } else {
                    Firmware::Marlin
                };
                confirm_ready(api, agent, machine, fw).await;
                confirmed.insert(key, seen);
            }
        }
        let states: Vec<String> = jobs
            .iter()
            .map(|j| {
                format!(
                    "{} {} on {}/{}",
                    j["name"], j["state"], j["agent"], j["machine"]
                )
            })
            .collect();
        Err(format!("jobs {states:?}; machines {machines}"))
    })
    .await
}

/// The G-code a job ran: its design's file from the git repository (whose hash must be the
/// job's artifact), or the uploaded file.
fn job_file(job: &Value, repo: &Path, upload_id: &str) -> String {
    let text = if job["id"] == upload_id {
        UPLOAD.to_string()
    } else {
        let path = job["design"]["path"]
            .as_str()
            .unwrap_or_else(|| panic!("a design job has a path: {job}"));
        let at_root = repo.join(path);
        let file = if at_root.exists() {
            at_root
        } else {
            repo.join("designs").join(path)
        };
        std::fs::read_to_string(&file).unwrap_or_else(|e| panic!("{}: {e}", file.display()))
    };
    assert_eq!(
        job["artifact"].as_str(),
        Some(hex::encode(sha2::Sha256::digest(text.as_bytes())).as_str()),
        "the coordinator sent the file it was given: {job}"
    );
    text
}

/// `ledger verify` said ok for every job; the ledger's entries and totals equal what the
/// analyses and the job histories say.
async fn check_ledger(api: &Client, jobs: &[Value], verify: &str) {
    assert!(
        verify.starts_with(&format!("ok {} entries", jobs.len())),
        "ledger verify: {verify}"
    );
    let ledger = api.get_json("/api/v1/ledger?limit=1000").await;
    let entries = ledger_entries(&ledger);
    assert_eq!(entries.len(), jobs.len(), "one entry per part: {ledger}");
    let mut want = Totals::default();
    let mut per_coop: BTreeMap<String, Totals> = BTreeMap::new();
    for job in jobs {
        let id = job["id"].as_str().expect("an id");
        let entry = entries
            .iter()
            .find(|e| entry_job(e) == id)
            .unwrap_or_else(|| panic!("no ledger entry for {id}: {ledger}"));
        let field = |name: &str| {
            entry[name]
                .as_u64()
                .or_else(|| entry["record"][name].as_u64())
                .unwrap_or_else(|| panic!("{name} in {entry}"))
        };
        // Material: the analysis' grams (in mg) for a completed part.
        let grams = job["analysis"]["material_grams"].as_f64().unwrap_or(0.0);
        if job["requirements"]["process"] == "fdm" {
            // Every print weighs something, the shipped designs included (sliced with
            // `filament_density = 0`: the analysis weighs PLA by its typical density).
            assert!(grams > 0.0, "a print without a mass: {job}");
        }
        let material_mg = (grams * 1000.0).round() as u64;
        assert_eq!(field("material_mg"), material_mg, "{job}\n{entry}");
        // Machine time: first `running` of the final run to the end, in whole seconds.
        let started = started_ms(api, job).await.div_euclid(1000) as u64;
        let ended = ended_ms(api, job).await.div_euclid(1000) as u64;
        assert_eq!(field("machine_seconds"), ended - started, "{job}\n{entry}");
        // Energy: the shipped generic profiles' draw (120 W printers, 400 W mills).
        let watts = if job["requirements"]["process"] == "cnc" {
            400.0
        } else {
            120.0
        };
        let energy = (watts * (ended - started) as f64 / 3600.0).round() as u64;
        assert_eq!(field("energy_wh"), energy, "{job}\n{entry}");
        let t = Totals {
            entries: 1,
            machine_seconds: ended - started,
            material_mg,
            energy_wh: energy,
        };
        want.add(&t);
        per_coop
            .entry(job["coop"].as_str().expect("a coop").to_string())
            .or_default()
            .add(&t);
    }
    assert!(
        want.material_mg > 0,
        "at least the uploaded print weighs something"
    );
    let report = api.get_json("/api/v1/ledger/report").await;
    assert_eq!(Totals::from_json(&report["total"]), want, "{report}");
    for (coop, totals) in per_coop {
        let row = report["rows"]
            .as_array()
            .expect("report rows")
            .iter()
            .find(|r| r["group"] == "cooperative" && r["key"] == coop.as_str())
            .unwrap_or_else(|| panic!("a row for {coop}: {report}"));
        assert_eq!(
            Totals::from_json(&row["totals"]),
            totals,
            "{coop}: {report}"
        );
    }
}

async fn ended_ms(api: &Client, job: &Value) -> i64 {
    let events = api
        .get_json(&format!(
            "/api/v1/jobs/{}/events",
            job["id"].as_str().unwrap()
        ))
        .await;
    let ends: Vec<i64> = events
        .as_array()
        .expect("a list of events")
        .iter()
        .filter(|e| e["to"] == "completed")
        .filter_map(|e| e["at_ms"].as_i64())
        .collect();
    assert_eq!(ends.len(), 1, "completed exactly once: {events}");
    ends[0]
}

#[derive(Debug, Default, PartialEq, Eq)]
struct Totals {
    entries: u64,
    machine_seconds: u64,
    material_mg: u64,
    energy_wh: u64,
}

impl Totals {
    fn add(&mut self, o: &Totals) {
        self.entries += o.entries;
        self.machine_seconds += o.machine_seconds;
        self.material_mg += o.material_mg;
        self.energy_wh += o.energy_wh;
    }

    fn from_json(v: &Value) -> Totals {
        let n = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("{k} in {v}"));
        Totals {
            entries: n("entries"),
            machine_seconds: n("machine_seconds"),
            material_mg: n("material_mg"),
            energy_wh: n("energy_wh"),
        }
    }
}
