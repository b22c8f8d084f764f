//! The `munifab-coordinator` binary: migrate, tokens, and `serve` with a graceful stop.

mod common;

use std::net::{Ipv4Addr, TcpListener};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::http;

fn bin(dir: &std::path::Path) -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_munifab-coordinator"));
    c.env("MUNIFAB_DATA_DIR", dir)
        .env_remove("MUNIFAB_DATABASE_URL")
        .env("MUNIFAB_LOG", "warn");
    c
}

#[test]
fn token_create_prints_the_secret_once_and_list_never_shows_it() {
    let dir = common::scratch_dir();
    let out = bin(&dir).arg("migrate").output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(dir.join("munifab.db").exists());

    let out = bin(&dir)
        .args([
            "token", "create", "--role", "agent", "--scope", "lab-a", "--site", "fablab-a",
        ])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let secret = stdout.trim();
    assert_eq!(
        stdout.lines().count(),
        1,
        "only the token on stdout: {stdout}"
    );
    assert!(secret.starts_with("mft_") && secret.len() == 68, "{secret}");

    let out = bin(&dir).args(["token", "list"]).output().unwrap();
    let listed = String::from_utf8(out.stdout).unwrap();
    assert!(listed.contains("agent:lab-a"), "{listed}");
    assert!(!listed.contains(secret), "the secret is never shown again");
}

#[test]
fn a_bad_role_or_config_key_fails_with_a_clear_message() {
    let dir = common::scratch_dir();
    let out = bin(&dir)
        .args(["token", "create", "--role", "wizard"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("unknown role \"wizard\""));

    let cfg = dir.join("c.toml");
    std::fs::write(&cfg, "[http]\nlisen = \"127.0.0.1:1\"\n").unwrap();
    let out = bin(&dir)
        .args(["--config", cfg.to_str().unwrap(), "migrate"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("lisen"), "{err}");
}

fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

#[tokio::test]
async fn serve_answers_health_checks_and_stops_cleanly_on_sigterm() {
    let dir = common::scratch_dir();
    let (http_port, mqtt_port) = (free_port(), free_port());
    let mut child = bin(&dir)
        .arg("serve")
        .env("MUNIFAB_HTTP_LISTEN", format!("127.0.0.1:{http_port}"))
        .env("MUNIFAB_MQTT_LISTEN", format!("127.0.0.1:{mqtt_port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let addr = std::net::SocketAddr::from((Ipv4Addr::LOCALHOST, http_port));
    let deadline = Instant::now() + Duration::from_secs(30);
    while tokio::net::TcpStream::connect(addr).await.is_err() {
        assert!(
            Instant::now() < deadline,
            "serve did not listen within 30 s"
        );
        assert!(child.try_wait().unwrap().is_none(), "serve exited early");
        tokio::task::yield_now().await;
    }
    let health = http::request(addr, "GET", "/healthz", None, &[], b"").await;
    assert_eq!(health.status, 200);
    let doc = http::request(addr, "GET", "/api/v1/openapi.json", None, &[], b"").await;
    assert_eq!(doc.status, 200);
    let killed = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    let out = tokio::task::spawn_blocking(move || child.wait_with_output().unwrap())
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "serve exits 0 after SIGTERM: {:?}",
        out.status
    );
    // Logged at `warn`: a start and a stop with nothing wrong say nothing. (rumqttd used to
    // log an error for the probe of its port at start, and for the coordinator's DISCONNECT
    // at stop; operators learn to ignore a log that cries wolf.)
    let log = String::from_utf8_lossy(&out.stderr);
    assert!(
        !log.contains("WARN") && !log.contains("ERROR"),
        "a clean start and stop logged:\n{log}"
    );
}

/// A SQLite store in `dir` holding `n` completed jobs in its ledger.
async fn ledger_with_entries(dir: &std::path::Path, n: usize) {
    use common::fixtures::*;
    use munifab_protocol::{Completed, Event, JobSummary, MachineStatus};
    let s = munifab_coordinator::store::Store::open_sqlite(&dir.join("munifab.db"))
        .await
        .unwrap();
    s.migrate().await.unwrap();
    for i in 0..n {
        let t = 1_000_000 * (i as i64 + 1);
        s.set_agent_status(&agent("lab-a"), &online("lab"), t)
            .await
            .unwrap();
        s.set_machine_state(
            &agent("lab-a"),
            &machine_state("mk3", MachineStatus::Ready),
            t,
        )
        .await
        .unwrap();
        let job = s.submit_job(new_job("coop-a"), t).await.unwrap();
        let (job, _) = s
            .assign_job_unchecked(job.id, &agent("lab-a"), &machine("mk3"), t, assign_command)
            .await
            .unwrap();
        for (seq, ev) in [
            Event::Started(job_ref(job.id, "mk3", 1, 0)),
            Event::Completed(Completed {
                job: job_ref(job.id, "mk3", 1, 1),
                summary: JobSummary::default(),
            }),
        ]
        .into_iter()
        .enumerate()
        {
            s.apply_event(&agent("lab-a"), &event(ev), 5, t + 60_000 * seq as i64)
                .await
                .unwrap();
        }
    }
    s.close().await;
}

#[tokio::test]
async fn ledger_verify_says_ok_with_the_count_or_names_the_edited_entry_and_fails() {
    let dir = common::scratch_dir();
    ledger_with_entries(&dir, 3).await;
    let out = bin(&dir).args(["ledger", "verify"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(stdout.starts_with("ok 3 entries\nhead "), "{stdout}");

    let s = munifab_coordinator::store::Store::open_sqlite(&dir.join("munifab.db"))
        .await
        .unwrap();
    s.execute_raw("UPDATE ledger SET machine_seconds = 1 WHERE seq = 2")
        .await
        .unwrap();
    s.close().await;
    let out = bin(&dir).args(["ledger", "verify"]).output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{stdout}");
    assert!(stdout.starts_with("broken at entry 2: "), "{stdout}");
}

#[test]
fn catalog_sync_lists_each_source_with_its_commit_and_the_designs_left_out() {
    let dir = common::scratch_dir();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let repo = dir.join("repo");
    let cube = repo.join("designs/calibration-cube");
    std::fs::create_dir_all(&cube).unwrap();
    for f in std::fs::read_dir(root.join("designs/calibration-cube")).unwrap() {
        let f = f.unwrap();
        std::fs::copy(f.path(), cube.join(f.file_name())).unwrap();
    }
    // a second design whose manifest names a file that is not there
    let broken = repo.join("designs/broken");
    std::fs::create_dir_all(&broken).unwrap();
    std::fs::write(
        broken.join("design.toml"),
        std::fs::read_to_string(cube.join("design.toml"))
            .unwrap()
            .replace("\"calibration-cube\"", "\"broken\"")
            .replace("calibration-cube.scad", "missing.scad"),
    )
    .unwrap();
    let git = |args: &[&str]| {
        let out = Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(&repo)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    };
    git(&["init", "-q", "-b", "main"]);
    git(&["add", "-A"]);
    git(&["commit", "-q", "-m", "designs"]);
    let head = git(&["rev-parse", "HEAD"]);
    let cfg = dir.join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[catalog]\nprofiles_dir = {:?}\n[[catalog.sources]]\nname = \"commons\"\n\
             url = {:?}\nsubdir = \"designs\"\n",
            root.join("profiles").display().to_string(),
            repo.display().to_string()
        ),
    )
    .unwrap();
    let out = bin(&dir)
        .args(["--config", cfg.to_str().unwrap(), "catalog", "sync"])
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.contains(&format!("commons\t{head}\t1 designs")),
        "{stdout}"
    );
    assert!(stdout.contains("missing.scad"), "{stdout}");
    assert!(stdout.contains("1 designs served, 3 problems"), "{stdout}");

    // a source that is not a repository fails the command
    std::fs::write(
        &cfg,
        "[catalog]\n[[catalog.sources]]\nname = \"gone\"\nurl = \"/nonexistent/repo\"\n",
    )
    .unwrap();
    let out = bin(&dir)
        .args(["--config", cfg.to_str().unwrap(), "catalog", "sync"])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(1),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(String::from_utf8_lossy(&out.stdout).contains("gone\t-\tFAILED"));
}

#[test]
fn the_cooperative_model_is_set_from_the_command_line_and_audited() {
    let dir = common::scratch_dir();
    let run = |args: &[&str]| {
        let out = bin(&dir).args(args).output().unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).to_string(),
            String::from_utf8_lossy(&out.stderr).to_string(),
        )
    };
    for args in [
        &[
            "coop",
            "cooperative",
            "bike-kitchen",
            "--name",
            "Bike Kitchen",
        ][..],
        &[
            "coop",
            "site",
            "lab-south",
            "--name",
            "South",
            "--region",
            "lower-valley",
            "--lat",
            "-33.9",
            "--lon",
            "18.4",
        ],
        &[
            "coop",
            "pool",
            "valley",
            "--name",
            "Valley",
            "--machine",
            "north-pc/mk4-a",
            "--member",
            "bike-kitchen=2",
            "--member",
            "toy-library=1",
        ],
        &["coop", "quota", "toy-library", "--hours", "40"],
    ] {
        let (ok, out, err) = run(args);
        assert!(ok, "{args:?}: {out}{err}");
    }
    let (ok, shown, _) = run(&["coop", "show"]);
    assert!(ok);
    let v: serde_json::Value = serde_json::from_str(&shown).unwrap();
    assert_eq!(v["pools"][0]["members"]["bike-kitchen"], 2);
    assert_eq!(v["sites"][0]["lat"], -33.9);
    assert_eq!(v["quotas"][0]["machine_hours"], 40);
    let (_, audit, _) = run(&["coop", "audit", "--subject", "pool:valley"]);
    assert_eq!(audit.lines().count(), 1, "{audit}");
    assert!(audit.contains("\tcli\tput_pool\tpool:valley\t"), "{audit}");

    let (ok, _, err) = run(&[
        "coop",
        "pool",
        "p",
        "--name",
        "P",
        "--member",
        "bike-kitchen",
    ]);
    assert!(!ok);
    assert!(err.contains("cooperative=weight"), "{err}");
    let (ok, _, err) = run(&[
        "coop", "site", "s", "--name", "S", "--region", "r", "--lat", "95", "--lon", "0",
    ]);
    assert!(!ok);
    assert!(err.contains("--lat"), "{err}");
}
