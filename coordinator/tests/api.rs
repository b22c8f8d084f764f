//! The HTTP API through `app()` without a server (tower `oneshot`), on a real SQLite store.

mod common;

use std::sync::Arc;

use axum::Router;
use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use common::fixtures::*;
use common::{TestDb, sqlite};
use munifab_coordinator::api::{ApiSettings, AppState, app};
use munifab_coordinator::artifacts::ArtifactStore;
use munifab_coordinator::auth::{Grant, Role};
use munifab_coordinator::catalog::{Catalog, CatalogConfig, GitSourceConfig, MachineProfile};
use munifab_coordinator::clock;
use munifab_coordinator::metrics::Metrics;
use munifab_coordinator::store::{Job, NewToken};
use munifab_protocol::{JobId, MachineStatus};
use serde_json::Value;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

const LIMIT: u64 = 4096;

/// A valid FDM file (no forbidden command).
const CUBE: &str = "; test cube\nM140 S60\nM104 S210\nG28\nG90\nM82\nG92 E0\nG1 Z0.2 F3000\n\
                    G1 X10 Y10 E1 F1500\nG1 X20 Y10 E2\nG1 X20 Y20 E3\nM104 S0\nM140 S0\n";

struct Harness {
    db: TestDb,
    app: Router,
    artifacts: ArtifactStore,
    catalog: Option<Arc<Catalog>>,
    /// The server's shutdown signal, as `serve` would fire it.
    shutdown: CancellationToken,
}

/// A git repository of designs made in the test: the sample repository's calibration cube
/// and engraved sign under `designs/`.
struct DesignRepo {
    dir: std::path::PathBuf,
}

impl DesignRepo {
    fn new(under: &std::path::Path) -> DesignRepo {
        let dir = under.join("designs-repo");
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
        for d in ["calibration-cube", "engraved-sign"] {
            let to = dir.join("designs").join(d);
            std::fs::create_dir_all(&to).unwrap();
            for f in std::fs::read_dir(root.join("designs").join(d)).unwrap() {
                let f = f.unwrap();
                std::fs::copy(f.path(), to.join(f.file_name())).unwrap();
            }
        }
        let repo = DesignRepo { dir };
        repo.git(&["init", "-q", "-b", "main"]);
        repo
    }

    fn git(&self, args: &[&str]) -> String {
        let out = std::process::Command::new("git")
            .args(["-c", "user.name=t", "-c", "user.email=t@example.invalid"])
            .args(args)
            .current_dir(&self.dir)
            .output()
            .expect("run git");
        assert!(
            out.status.success(),
            "git {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8(out.stdout).unwrap().trim().to_string()
    }

    fn commit(&self, message: &str) -> String {
        self.git(&["add", "-A"]);
        self.git(&["commit", "-q", "-m", message]);
        self.git(&["rev-parse", "HEAD"])
    }

    fn path(&self, rel: &str) -> std::path::PathBuf {
        self.dir.join(rel)
    }
}

const CUBE_GCODE: &str = "designs/calibration-cube/calibration-cube.generic-marlin-220.gcode";

impl Harness {
    async fn new() -> Harness {
        Harness::build(false).await
    }

    /// With a catalog whose source `commons` is a fresh [`DesignRepo`] at its first commit
    /// (synced).
    async fn with_catalog() -> (Harness, DesignRepo, String) {
        let h = Harness::build(true).await;
        let repo = DesignRepo::new(&h.db.dir);
        let first = repo.commit("first designs");
        let catalog = h.catalog.clone().unwrap();
        let report =
            tokio::task::spawn_blocking(move || catalog.sync(time::OffsetDateTime::now_utc()))
                .await
                .unwrap();
        assert!(report.errors.is_empty(), "{:?}", report.errors);
        assert_eq!(report.designs, 2);
        (h, repo, first)
    }

    async fn build(with_catalog: bool) -> Harness {
        let db = sqlite().await;
        let catalog = with_catalog.then(|| {
            let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
            let config = CatalogConfig {
                cache_dir: db.dir.join("catalog"),
                sources: vec![GitSourceConfig {
                    name: "commons".parse().unwrap(),
                    url: db.dir.join("designs-repo").display().to_string(),
                    git_ref: "main".into(),
                    subdir: Some("designs".into()),
                }],
                overlays: vec![],
                max_file_bytes: 1 << 24,
            };
            let profiles = MachineProfile::load_dir(&root.join("profiles")).unwrap();
            Arc::new(
                Catalog::open(config)
                    .unwrap()
                    .with_profiles(profiles.values()),
            )
        });
        let artifacts = ArtifactStore::new(db.dir.join("artifacts"));
        let shutdown = CancellationToken::new();
        let state = AppState {
            store: db.store.clone(),
            artifacts: artifacts.clone(),
            settings: ApiSettings {
                max_upload_bytes: LIMIT,
            },
            metrics: Arc::new(Metrics::default()),
            kick: Arc::new(tokio::sync::Notify::new()),
            clock: clock::system(),
            catalog: catalog.clone(),
            profiles: Arc::new(
                MachineProfile::load_dir(
                    &std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../profiles"),
                )
                .unwrap(),
            ),
            shutdown: shutdown.clone(),
        };
        Harness {
            app: app(state),
            db,
            artifacts,
            catalog,
            shutdown,
        }
    }

    async fn token(&self, role: Role, scope: Option<&str>) -> String {
        let grant = Grant::new(role, scope).unwrap();
        if let Grant::Agent(a) = &grant {
            let site = if a.as_str() == "lab-a" {
                "site-a"
            } else {
                "site-b"
            };
            self.db
                .store
                .register_agent(a, Some(site), 1)
                .await
                .unwrap();
        }
        self.db
            .store
            .create_token(
                &NewToken {
                    grant,
                    label: "test".into(),
                },
                1,
            )
            .await
            .unwrap()
            .1
    }

    async fn call(&self, req: Request<Body>) -> (StatusCode, Vec<u8>) {
        let resp = self.app.clone().oneshot(req).await.unwrap();
        let status = resp.status();
        let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
            .await
            .unwrap();
        (status, body.to_vec())
    }

    async fn json(&self, req: Request<Body>) -> (StatusCode, Value) {
        let (status, body) = self.call(req).await;
        let value = serde_json::from_slice(&body).unwrap_or_else(|e| {
            panic!(
                "{status}: not JSON ({e}): {}",
                String::from_utf8_lossy(&body)
            )
        });
        (status, value)
    }

    /// A job of coop-a assigned to lab-a/mk3 at site-a.
    async fn assigned_job(&self) -> Job {
        let s = &self.db.store;
        s.register_agent(&agent("lab-a"), Some("site-a"), 1)
            .await
            .unwrap();
        s.set_agent_status(&agent("lab-a"), &online("ignored"), 2)
            .await
            .unwrap();
        s.set_machine_state(
            &agent("lab-a"),
            &machine_state("mk3", MachineStatus::Ready),
            2,
        )
        .await
        .unwrap();
        let mut new = new_job("coop-a");
        new.artifact = self.artifacts.put(CUBE.as_bytes()).await.unwrap();
        new.size = CUBE.len() as u64;
        let job = s.submit_job(new, 3).await.unwrap();
        s.assign_job_unchecked(job.id, &agent("lab-a"), &machine("mk3"), 4, assign_command)
            .await
            .unwrap()
            .0
    }
}

fn req(method: &str, uri: &str, token: Option<&str>) -> axum::http::request::Builder {
    let b = Request::builder().method(method).uri(uri);
    match token {
        Some(t) => b.header(header::AUTHORIZATION, format!("Bearer {t}")),
        None => b,
    }
}

const BOUNDARY: &str = "munifab-test-boundary";

fn multipart(file: &[u8], coop: Option<&str>) -> Body {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"cube.gcode\"\r\nContent-Type: text/x-gcode\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(b"\r\n");
    if let Some(c) = coop {
        body.extend_from_slice(
            format!("--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"coop\"\r\n\r\n{c}\r\n")
                .as_bytes(),
        );
    }
    body.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    Body::from(body)
}

fn upload(token: Option<&str>, file: &[u8], coop: Option<&str>) -> Request<Body> {
    req("POST", "/api/v1/jobs", token)
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(multipart(file, coop))
        .unwrap()
}

#[tokio::test]
async fn every_route_checks_role_and_scope() {
    let (h, _repo, _) = Harness::with_catalog().await;
    let cube_sha = hex_sha(&std::fs::read(_repo.path(CUBE_GCODE)).unwrap());
    let job = h.assigned_job().await;
    let sha = job.artifact.clone();
    let callers = [
        ("admin", Role::Admin, None),
        ("coop-admin:a", Role::CoopAdmin, Some("coop-a")),
        ("maker:a", Role::Maker, Some("coop-a")),
        ("operator:a", Role::Operator, Some("site-a")),
        ("agent:a", Role::Agent, Some("lab-a")),
        ("coop-admin:b", Role::CoopAdmin, Some("coop-b")),
        ("maker:b", Role::Maker, Some("coop-b")),
        ("operator:b", Role::Operator, Some("site-b")),
        ("agent:b", Role::Agent, Some("lab-b")),
    ];
    let mut tokens = Vec::new();
    for (name, role, scope) in callers {
        tokens.push((name, h.token(role, scope).await));
    }
    let throwaway =
        h.db.store
            .create_token(
                &NewToken {
                    grant: Grant::Admin,
                    label: "x".into(),
                },
                1,
            )
            .await
            .unwrap()
            .0
            .id;
    let id = job.id;
    // (method, uri, body, callers allowed)
    let everyone_but_agents = &[
        "admin",
        "coop-admin:a",
        "maker:a",
        "operator:a",
        "coop-admin:b",
        "maker:b",
        "operator:b",
    ][..];
    let job_access = &["admin", "coop-admin:a", "maker:a", "operator:a"][..];
    let everyone: Vec<&str> = tokens.iter().map(|(name, _)| *name).collect();
    let routes: Vec<(&str, String, &str, &[&str])> = vec![
        (
            "POST",
            "/api/v1/jobs".into(),
            "upload",
            &["admin", "coop-admin:a", "maker:a"],
        ),
        ("GET", "/api/v1/jobs".into(), "", everyone_but_agents),
        ("GET", format!("/api/v1/jobs/{id}"), "", job_access),
        ("GET", format!("/api/v1/jobs/{id}/events"), "", job_access),
        ("POST", format!("/api/v1/jobs/{id}/pause"), "", job_access),
        ("POST", format!("/api/v1/jobs/{id}/resume"), "", job_access),
        ("POST", format!("/api/v1/jobs/{id}/cancel"), "", job_access),
        ("GET", "/api/v1/machines".into(), "", everyone_but_agents),
        (
            "POST",
            "/api/v1/machines/lab-a/mk3/ready".into(),
            "",
            &["admin", "operator:a"],
        ),
        (
            "PUT",
            "/api/v1/machines/lab-a/mk3/profile".into(),
            r#"{"profile":"generic-marlin-220"}"#,
            &["admin", "operator:a"],
        ),
        (
            "GET",
            "/api/v1/agents".into(),
            "",
            &[
                "admin",
                "coop-admin:a",
                "operator:a",
                "coop-admin:b",
                "operator:b",
            ],
        ),
        ("GET", "/api/v1/tokens".into(), "", &["admin"]),
        (
            "POST",
            "/api/v1/tokens".into(),
            r#"{"role":"maker","scope":"coop-z"}"#,
            &["admin"],
        ),
        (
            "DELETE",
            format!("/api/v1/tokens/{throwaway}"),
            "",
            &["admin"],
        ),
        (
            "GET",
            format!("/api/v1/artifacts/{sha}"),
            "",
            &["admin", "agent:a", "agent:b"],
        ),
        ("GET", "/api/v1/ledger".into(), "", everyone_but_agents),
        (
            "GET",
            "/api/v1/ledger?format=csv".into(),
            "",
            everyone_but_agents,
        ),
        (
            "GET",
            "/api/v1/ledger/report".into(),
            "",
            everyone_but_agents,
        ),
        ("POST", "/api/v1/catalog/sync".into(), "", &["admin"]),
        (
            "GET",
            "/api/v1/catalog/errors".into(),
            "",
            everyone_but_agents,
        ),
        (
            "GET",
            "/api/v1/designs?q=cube".into(),
            "",
            everyone_but_agents,
        ),
        (
            "GET",
            "/api/v1/designs/commons/calibration-cube".into(),
            "",
            everyone_but_agents,
        ),
        (
            "GET",
            format!("/api/v1/catalog/files/{cube_sha}"),
            "",
            everyone_but_agents,
        ),
        (
            "POST",
            "/api/v1/jobs/from-design".into(),
            r#"{"design":"commons/calibration-cube","profile":"generic-marlin-220","cooperative":"coop-a"}"#,
            &["admin", "coop-admin:a", "maker:a"],
        ),
        (
            "GET",
            "/api/v1/cooperatives".into(),
            "",
            &["admin", "coop-admin:a", "coop-admin:b"],
        ),
        (
            "PUT",
            "/api/v1/cooperatives/coop-a".into(),
            r#"{"name":"Coop A"}"#,
            &["admin", "coop-admin:a"],
        ),
        ("GET", "/api/v1/sites".into(), "", everyone_but_agents),
        (
            "PUT",
            "/api/v1/sites/site-a".into(),
            r#"{"name":"Lab A","region":"valley","lat":47.5,"lon":8.7}"#,
            &["admin"],
        ),
        (
            "GET",
            "/api/v1/pools".into(),
            "",
            &["admin", "coop-admin:a", "coop-admin:b"],
        ),
        (
            "PUT",
            "/api/v1/pools/valley".into(),
            r#"{"name":"Valley","machines":["lab-a/mk3"],"members":{"coop-a":2,"coop-b":1}}"#,
            &["admin"],
        ),
        (
            "GET",
            "/api/v1/quotas".into(),
            "",
            &["admin", "coop-admin:a", "coop-admin:b"],
        ),
        (
            "PUT",
            "/api/v1/quotas/coop-a".into(),
            r#"{"machine_hours":100}"#,
            &["admin"],
        ),
        (
            "GET",
            "/api/v1/audit".into(),
            "",
            &["admin", "coop-admin:a", "coop-admin:b"],
        ),
        // It reveals only a counter; `wait_ms=0` answers at once whatever the revision.
        (
            "GET",
            "/api/v1/changes?after=0&wait_ms=0".into(),
            "",
            &everyone,
        ),
    ];
    let mut checked = 0;
    for (method, uri, body, allowed) in &routes {
        let make = |token: Option<&str>| {
            if *body == "upload" {
                upload(token, CUBE.as_bytes(), Some("coop-a"))
            } else {
                req(method, uri, token)
                    .header(header::CONTENT_TYPE, "application/json")
                    .body(Body::from(body.to_string()))
                    .unwrap()
            }
        };
        let (status, _) = h.call(make(None)).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {uri} without a token"
        );
        let (status, _) = h.call(make(Some("mft_not-a-token"))).await;
        assert_eq!(
            status,
            StatusCode::UNAUTHORIZED,
            "{method} {uri} with a bad token"
        );
        for (name, token) in &tokens {
            let (status, body) = h.call(make(Some(token))).await;
            let text = String::from_utf8_lossy(&body);
            if allowed.contains(name) {
                assert!(
                    status.is_success() || status == StatusCode::CONFLICT,
                    "{method} {uri} as {name} must be allowed, got {status}: {text}"
                );
            } else {
                assert_eq!(
                    status,
                    StatusCode::FORBIDDEN,
                    "{method} {uri} as {name} must be forbidden: {text}"
                );
                let v: Value = serde_json::from_slice(&body).unwrap();
                assert_eq!(v["error"]["code"], "forbidden");
            }
            checked += 1;
        }
    }
    assert_eq!(checked, routes.len() * tokens.len());
}

#[tokio::test]
async fn an_upload_is_analysed_stored_by_hash_and_queued_with_its_requirements() {
    let h = Harness::new().await;
    let maker = h.token(Role::Maker, Some("coop-a")).await;
    let (status, job) = h.json(upload(Some(&maker), CUBE.as_bytes(), None)).await;
    assert_eq!(status, StatusCode::CREATED, "{job}");
    assert_eq!(job["state"], "queued");
    assert_eq!(job["coop"], "coop-a");
    assert_eq!(job["name"], "cube.gcode");
    assert_eq!(job["requirements"]["process"], "fdm");
    assert_eq!(job["requirements"]["flavour"], "reprap");
    assert_eq!(job["requirements"]["hotend_temp_c"], 210.0);
    assert_eq!(job["requirements"]["bed_temp_c"], 60.0);
    let sha = job["artifact"].as_str().unwrap();
    assert_eq!(sha, hex_sha(CUBE.as_bytes()));
    assert_eq!(h.artifacts.size(sha).await.unwrap(), CUBE.len() as u64);

    let id = job["id"].as_str().unwrap();
    let (status, got) = h
        .json(
            req("GET", &format!("/api/v1/jobs/{id}"), Some(&maker))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(got, job);
    let (_, events) = h
        .json(
            req("GET", &format!("/api/v1/jobs/{id}/events"), Some(&maker))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let tos: Vec<_> = events
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["to"].clone())
        .collect();
    assert_eq!(tos, vec!["submitted", "queued"]);
}

fn hex_sha(bytes: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(bytes))
}

#[tokio::test]
async fn a_file_with_error_findings_is_refused_with_them_and_nothing_is_stored() {
    let h = Harness::new().await;
    let maker = h.token(Role::Maker, Some("coop-a")).await;
    let bad = "G28\nM502\nM500\nG1 X10 Y10\n";
    let (status, body) = h.json(upload(Some(&maker), bad.as_bytes(), None)).await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    assert_eq!(body["error"]["code"], "gcode_refused");
    let findings = body["error"]["details"]["findings"].as_array().unwrap();
    assert!(!findings.is_empty());
    assert!(
        findings.iter().all(|f| f["severity"] == "error"),
        "{findings:?}"
    );
    assert!(matches!(
        h.artifacts.size(&hex_sha(bad.as_bytes())).await,
        Err(munifab_coordinator::artifacts::ArtifactError::NotFound(_))
    ));
    let (_, list) = h
        .json(
            req("GET", "/api/v1/jobs", Some(&maker))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(list["total"], 0);
}

fn upload_for_profile(token: &str, file: &[u8], profile: &str) -> Request<Body> {
    let mut body = Vec::new();
    body.extend_from_slice(
        format!(
            "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"profile\"\r\n\r\n{profile}\r\n\
             --{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; \
             filename=\"hot.gcode\"\r\n\r\n"
        )
        .as_bytes(),
    );
    body.extend_from_slice(file);
    body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
    req("POST", "/api/v1/jobs", Some(token))
        .header(
            header::CONTENT_TYPE,
            format!("multipart/form-data; boundary={BOUNDARY}"),
        )
        .body(Body::from(body))
        .unwrap()
}

#[tokio::test]
async fn an_upload_for_a_machine_profile_is_refused_beyond_its_limits_and_accepted_within() {
    let h = Harness::new().await;
    let maker = h.token(Role::Maker, Some("coop-a")).await;
    let hot = "M82\nM104 S300\nG28\nG1 Z0.3 F600\nG1 X250 Y10 E5 F1200\n";
    let (status, body) = h.json(upload(Some(&maker), hot.as_bytes(), None)).await;
    assert_eq!(status, StatusCode::CREATED, "no profile, no limits: {body}");

    let (status, body) = h
        .json(upload_for_profile(
            &maker,
            hot.as_bytes(),
            "generic-marlin-220",
        ))
        .await;
    assert_eq!(status, StatusCode::UNPROCESSABLE_ENTITY, "{body}");
    let codes: Vec<&str> = body["error"]["details"]["findings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["code"].as_str().unwrap())
        .collect();
    assert!(codes.contains(&"hotend_too_hot"), "{codes:?}");
    assert!(codes.contains(&"out_of_volume"), "{codes:?}");

    let fine = "M82\nM104 S210\nG28\nG1 Z0.3 F600\nG1 X50 Y10 E5 F1200\n";
    let (status, body) = h
        .json(upload_for_profile(
            &maker,
            fine.as_bytes(),
            "generic-marlin-220",
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{body}");

    let (status, body) = h
        .json(upload_for_profile(
            &maker,
            fine.as_bytes(),
            "no-such-printer",
        ))
        .await;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("generic-marlin-220"),
        "{body}"
    );
}

#[tokio::test]
async fn an_upload_over_the_limit_is_413_with_a_clear_error() {
    let h = Harness::new().await;
    let maker = h.token(Role::Maker, Some("coop-a")).await;
    let mut big = CUBE.repeat(1 + LIMIT as usize / CUBE.len());
    big.truncate(LIMIT as usize + 1);
    let (status, body) = h.json(upload(Some(&maker), big.as_bytes(), None)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
    assert!(body["error"]["message"].as_str().unwrap().contains("4096"));
    // far beyond the limit, the body limit itself answers the same way
    let huge = "G1 X1\n".repeat(100_000);
    let (status, body) = h.json(upload(Some(&maker), huge.as_bytes(), None)).await;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert_eq!(body["error"]["code"], "payload_too_large");
}

#[tokio::test]
async fn bad_requests_get_json_errors_with_the_right_status() {
    let h = Harness::new().await;
    let admin = h.token(Role::Admin, None).await;
    let get = |uri: &str| req("GET", uri, Some(&admin)).body(Body::empty()).unwrap();
    let (s, b) = h.json(get("/api/v1/jobs/not-a-uuid")).await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::BAD_REQUEST, Some("bad_request"))
    );
    let (s, b) = h
        .json(get(&format!("/api/v1/jobs/{}", uuid::Uuid::new_v4())))
        .await;
    assert_eq!(
        (s, b["error"]["code"].as_str()),
        (StatusCode::NOT_FOUND, Some("not_found"))
    );
    let (s, b) = h.json(get("/api/v1/jobs?state=flying")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = h.json(get("/api/v1/artifacts/..%2f..%2fetc")).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    // an admin must say which cooperative a job is for
    let (s, b) = h.json(upload(Some(&admin), CUBE.as_bytes(), None)).await;
    assert_eq!(s, StatusCode::BAD_REQUEST, "{b}");
    let (s, b) = h
        .json(
            req("POST", "/api/v1/tokens", Some(&admin))
                .body(Body::from(r#"{"role":"wizard"}"#))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::BAD_REQUEST);
    assert!(b["error"]["message"].as_str().unwrap().contains("wizard"));
}

#[tokio::test]
async fn artifacts_are_served_whole_or_by_range() {
    let h = Harness::new().await;
    let job = h.assigned_job().await;
    let agent = h.token(Role::Agent, Some("lab-a")).await;
    let uri = format!("/api/v1/artifacts/{}", job.artifact);
    let (s, body) = h
        .call(req("GET", &uri, Some(&agent)).body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(body, CUBE.as_bytes());
    let resp = h
        .app
        .clone()
        .oneshot(
            req("GET", &uri, Some(&agent))
                .header(header::RANGE, "bytes=2-5")
                .body(Body::empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        resp.headers()[header::CONTENT_RANGE],
        format!("bytes 2-5/{}", CUBE.len())
    );
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    assert_eq!(&body[..], &CUBE.as_bytes()[2..=5]);
    let (s, b) = h
        .json(
            req("GET", &uri, Some(&agent))
                .header(header::RANGE, format!("bytes={}-", CUBE.len()))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(b["error"]["code"], "range_not_satisfiable");
}

#[tokio::test]
async fn a_token_created_over_the_api_works_until_revoked() {
    let h = Harness::new().await;
    let admin = h.token(Role::Admin, None).await;
    let (s, created) = h
        .json(
            req("POST", "/api/v1/tokens", Some(&admin))
                .body(Body::from(
                    r#"{"role":"operator","scope":"site-a","label":"ana"}"#,
                ))
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::CREATED, "{created}");
    let token = created["token"].as_str().unwrap();
    assert_eq!(created["record"]["grant"]["role"], "operator");
    let list = |t: &str| {
        req("GET", "/api/v1/machines", Some(t))
            .body(Body::empty())
            .unwrap()
    };
    assert_eq!(h.call(list(token)).await.0, StatusCode::OK);
    let id = created["record"]["id"].as_str().unwrap();
    let (s, _) = h
        .json(
            req("DELETE", &format!("/api/v1/tokens/{id}"), Some(&admin))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert_eq!(h.call(list(token)).await.0, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn operators_see_their_sites_machines_and_jobs_only() {
    let h = Harness::new().await;
    h.assigned_job().await;
    let op_a = h.token(Role::Operator, Some("site-a")).await;
    let op_b = h.token(Role::Operator, Some("site-b")).await;
    let get = |uri: &str, t: &str| req("GET", uri, Some(t)).body(Body::empty()).unwrap();
    let (_, machines) = h.json(get("/api/v1/machines", &op_a)).await;
    assert_eq!(machines.as_array().unwrap().len(), 1);
    assert_eq!(machines[0]["state"], "ready");
    assert_eq!(machines[0]["agent_online"], true);
    let (_, machines) = h.json(get("/api/v1/machines", &op_b)).await;
    assert!(machines.as_array().unwrap().is_empty());
    let (_, jobs) = h.json(get("/api/v1/jobs", &op_a)).await;
    assert_eq!(jobs["total"], 1);
    let (_, jobs) = h.json(get("/api/v1/jobs", &op_b)).await;
    assert_eq!(jobs["total"], 0);
}

#[tokio::test]
async fn the_openapi_document_describes_every_route() {
    let h = Harness::new().await;
    let (s, doc) = h
        .json(
            req("GET", "/api/v1/openapi.json", None)
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(s, StatusCode::OK);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let paths = doc["paths"].as_object().unwrap();
    for p in [
        "/api/v1/jobs",
        "/api/v1/jobs/{id}",
        "/api/v1/jobs/{id}/cancel",
        "/api/v1/jobs/{id}/pause",
        "/api/v1/jobs/{id}/resume",
        "/api/v1/jobs/{id}/events",
        "/api/v1/machines",
        "/api/v1/machines/{agent}/{machine}/ready",
        "/api/v1/machines/{agent}/{machine}/profile",
        "/api/v1/agents",
        "/api/v1/tokens",
        "/api/v1/tokens/{id}",
        "/api/v1/artifacts/{sha256}",
        "/api/v1/ledger",
        "/api/v1/ledger/report",
        "/api/v1/catalog/sync",
        "/api/v1/catalog/errors",
        "/api/v1/catalog/files/{sha256}",
        "/api/v1/designs",
        "/api/v1/designs/{source}/{id}",
        "/api/v1/jobs/from-design",
        "/api/v1/cooperatives",
        "/api/v1/cooperatives/{id}",
        "/api/v1/sites",
        "/api/v1/sites/{id}",
        "/api/v1/pools",
        "/api/v1/pools/{id}",
        "/api/v1/quotas",
        "/api/v1/quotas/{cooperative}",
        "/api/v1/audit",
        "/api/v1/changes",
    ] {
        assert!(
            paths.contains_key(p),
            "{p} missing from the OpenAPI document"
        );
    }
    assert!(doc["components"]["securitySchemes"]["bearer"].is_object());
    let changes = &doc["paths"]["/api/v1/changes"]["get"];
    let params: Vec<&str> = changes["parameters"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|p| p["name"].as_str())
        .collect();
    assert_eq!(params, ["after", "wait_ms"], "{changes}");
    assert!(
        doc["components"]["schemas"]["Revision"].is_object(),
        "the answer's schema: {}",
        doc["components"]["schemas"]
    );
}

#[tokio::test]
async fn health_and_metrics_answer_without_a_token() {
    let h = Harness::new().await;
    h.assigned_job().await;
    let (s, body) = h
        .call(req("GET", "/healthz", None).body(Body::empty()).unwrap())
        .await;
    assert_eq!((s, &body[..]), (StatusCode::OK, &b"ok\n"[..]));
    let (s, body) = h
        .call(req("GET", "/metrics", None).body(Body::empty()).unwrap())
        .await;
    assert_eq!(s, StatusCode::OK);
    let text = String::from_utf8(body).unwrap();
    assert!(
        text.contains("munifab_jobs{state=\"assigned\"} 1"),
        "{text}"
    );
    assert!(
        text.contains("munifab_machines{state=\"ready\"} 1"),
        "{text}"
    );
}

/// Carries an assigned job through started to completed (or failed) via agent events.
async fn finish(h: &Harness, job: &Job, completed: bool, at_ms: i64) {
    use munifab_protocol::{Completed, Event, Failed, JobSummary};
    let s = &h.db.store;
    let a = agent("lab-a");
    let r = |seq| job_ref(job.id, "mk3", job.epoch, seq);
    s.apply_event(&a, &event(Event::Started(r(0))), 5, at_ms - 3_600_000)
        .await
        .unwrap();
    let end = if completed {
        Event::Completed(Completed {
            job: r(1),
            summary: JobSummary::default(),
        })
    } else {
        Event::Failed(Failed {
            job: r(1),
            reason: "nozzle clog".into(),
            line: None,
            summary: None,
        })
    };
    s.apply_event(&a, &event(end), 5, at_ms).await.unwrap();
}

#[tokio::test]
async fn the_ledger_lists_filters_pages_reports_and_exports_csv() {
    let h = Harness::new().await;
    let maker = h.token(Role::Maker, Some("coop-b")).await;
    // 2026-11-20T12:00:00Z, one hour of printing each
    let noon = 1_795_176_000_000_i64;
    let first = h.assigned_job().await;
    let (status, body) = h
        .call(
            req(
                "PUT",
                "/api/v1/machines/lab-a/mk3/profile",
                Some(&h.token(Role::Admin, None).await),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"profile":"generic-grbl-300x200"}"#))
            .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{}", String::from_utf8_lossy(&body));
    let (status, body) = h
        .json(
            req(
                "PUT",
                "/api/v1/machines/lab-a/mk3/profile",
                Some(&h.token(Role::Admin, None).await),
            )
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(r#"{"profile":"no-such-profile"}"#))
            .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND, "{body}");
    assert!(
        body["error"]["message"]
            .as_str()
            .unwrap()
            .contains("generic-marlin-220")
    );
    finish(&h, &first, true, noon).await;
    h.db.store
        .set_machine_state(
            &agent("lab-a"),
            &machine_state("mk3", MachineStatus::Ready),
            noon + 1,
        )
        .await
        .unwrap();
    let second = h.assigned_job().await;
    finish(&h, &second, false, noon + 86_400_000).await;

    let (status, page) = h
        .json(
            req("GET", "/api/v1/ledger", Some(&maker))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK, "{page}");
    assert_eq!(page["total"], 2);
    assert_eq!(page["items"][0]["seq"], 1);
    assert_eq!(page["items"][0]["job"], first.id.to_string());
    assert_eq!(page["items"][0]["outcome"], "completed");
    assert_eq!(page["items"][0]["cooperative"], "coop-a");
    assert_eq!(page["items"][0]["site"], "site-a");
    assert_eq!(page["items"][0]["machine_seconds"], 3600);
    // one hour each on a machine bound to the 400 W router profile
    assert_eq!(page["items"][0]["energy_wh"], 400);
    assert_eq!(page["items"][1]["energy_wh"], 400);
    assert_eq!(page["items"][1]["outcome"], "failed");
    assert_eq!(page["items"][1]["prev_hash"], page["items"][0]["hash"]);

    let get = |uri: &str| req("GET", uri, Some(&maker)).body(Body::empty()).unwrap();
    let (_, paged) = h.json(get("/api/v1/ledger?limit=1&offset=1")).await;
    assert_eq!(paged["total"], 2);
    assert_eq!(paged["items"].as_array().unwrap().len(), 1);
    assert_eq!(paged["items"][0]["seq"], 2);
    let (_, none) = h.json(get("/api/v1/ledger?cooperative=coop-b")).await;
    assert_eq!(none["total"], 0);
    let (_, day2) = h
        .json(get(
            "/api/v1/ledger?from=2026-11-21T00:00:00Z&site=site-a&pool=default",
        ))
        .await;
    assert_eq!(day2["total"], 1);
    assert_eq!(day2["items"][0]["job"], second.id.to_string());

    let resp = h
        .app
        .clone()
        .oneshot(get("/api/v1/ledger?format=csv"))
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        resp.headers()[header::CONTENT_TYPE]
            .to_str()
            .unwrap()
            .starts_with("text/csv")
    );
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap();
    let csv = String::from_utf8(body.to_vec()).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), 3, "{csv}");
    assert!(lines[0].starts_with("seq,job,design"), "{csv}");
    assert!(lines[1].starts_with(&format!("1,{}", first.id)), "{csv}");

    let (status, report) = h.json(get("/api/v1/ledger/report")).await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["total"]["entries"], 2);
    assert_eq!(report["total"]["completed"], 1);
    assert_eq!(report["total"]["failed"], 1);
    assert_eq!(report["total"]["machine_seconds"], 7200);
    let months: Vec<&Value> = report["rows"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|r| r["group"] == "month")
        .collect();
    assert_eq!(months.len(), 1);
    assert_eq!(months[0]["key"], "2026-11");

    let (status, body) = h
        .call(
            req("GET", "/api/v1/ledger/report", Some(&maker))
                .header(header::ACCEPT, "text/csv")
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(status, StatusCode::OK);
    let csv = String::from_utf8(body).unwrap();
    assert!(csv.starts_with("group,key,entries"), "{csv}");
    assert!(csv.contains("cooperative,coop-a,2,1,1,0,2.000,"), "{csv}");
    assert!(
        csv.trim_end().ends_with(",0.800"),
        "two hours at 400 W: {csv}"
    );

    for bad in [
        "/api/v1/ledger?from=yesterday",
        "/api/v1/ledger?format=xml",
        "/api/v1/ledger?cooperative=Not%20An%20Id",
        "/api/v1/ledger/report?colour=red",
    ] {
        let (status, body) = h.json(get(bad)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{bad}: {body}");
        assert_eq!(body["error"]["code"], "bad_request", "{bad}");
    }
}

#[tokio::test]
async fn designs_are_synced_searched_shown_downloaded_and_jobs_pin_their_revision() {
    let (h, repo, first) = Harness::with_catalog().await;
    let admin = h.token(Role::Admin, None).await;
    let maker = h.token(Role::Maker, Some("coop-a")).await;
    let get = |uri: &str| req("GET", uri, Some(&maker)).body(Body::empty()).unwrap();
    let post = |uri: &str, token: &str, body: Value| {
        req("POST", uri, Some(token))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let old_gcode = std::fs::read(repo.path(CUBE_GCODE)).unwrap();

    // search: text, process, paging
    let (status, found) = h.json(get("/api/v1/designs?q=cube")).await;
    assert_eq!(status, StatusCode::OK, "{found}");
    assert_eq!(found["total"], 1);
    assert_eq!(
        found["items"][0]["key"],
        serde_json::json!({"source": "commons", "id": "calibration-cube"})
    );
    assert_eq!(found["items"][0]["commit"], first);
    let (_, cnc) = h.json(get("/api/v1/designs?process=cnc")).await;
    assert_eq!(cnc["total"], 1);
    assert_eq!(cnc["items"][0]["key"]["id"], "engraved-sign");
    let (_, all) = h.json(get("/api/v1/designs?limit=1&offset=1")).await;
    assert_eq!(
        (
            all["total"].as_u64(),
            all["items"].as_array().unwrap().len()
        ),
        (Some(2), 1)
    );
    let (status, _) = h.json(get("/api/v1/designs?process=weaving")).await;
    assert_eq!(status, StatusCode::BAD_REQUEST);

    // one design: files with hashes, profiles, licence, attribution, provenance
    let (status, detail) = h
        .json(get("/api/v1/designs/commons/calibration-cube"))
        .await;
    assert_eq!(status, StatusCode::OK, "{detail}");
    assert_eq!(detail["design"]["manifest"]["licence"], "CERN-OHL-S-2.0");
    assert!(
        detail["attribution"]
            .as_str()
            .unwrap()
            .contains("CERN-OHL-S-2.0")
    );
    assert_eq!(detail["provenance"], serde_json::json!([]));
    let gcode = detail["design"]["files"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["repo_path"] == CUBE_GCODE)
        .unwrap_or_else(|| panic!("no G-code file in {detail}"));
    assert_eq!(gcode["sha256"], hex_sha(&old_gcode));
    let (status, bytes) = h
        .call(get(&format!(
            "/api/v1/catalog/files/{}",
            hex_sha(&old_gcode)
        )))
        .await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(bytes, old_gcode);
    let (status, _) = h
        .call(get(&format!("/api/v1/catalog/files/{}", "0".repeat(64))))
        .await;
    assert_eq!(status, StatusCode::NOT_FOUND);
    let (status, _) = h.json(get("/api/v1/designs/commons/no-such-design")).await;
    assert_eq!(status, StatusCode::NOT_FOUND);

    // the source moves on: new G-code for the cube, and a design with a closed licence
    let mut new_gcode = old_gcode.clone();
    new_gcode.extend_from_slice(b"; revision 2\n");
    std::fs::write(repo.path(CUBE_GCODE), &new_gcode).unwrap();
    let bad = repo.path("designs/closed-cube");
    std::fs::create_dir_all(&bad).unwrap();
    let manifest = std::fs::read_to_string(repo.path("designs/calibration-cube/design.toml"))
        .unwrap()
        .replace("id = \"calibration-cube\"", "id = \"closed-cube\"")
        .replace("CERN-OHL-S-2.0", "CC-BY-NC-4.0");
    std::fs::write(bad.join("design.toml"), manifest).unwrap();
    for f in ["LICENSE", "calibration-cube.scad", "calibration-cube.stl"] {
        std::fs::copy(
            repo.path(&format!("designs/calibration-cube/{f}")),
            bad.join(f),
        )
        .unwrap();
    }
    std::fs::write(
        bad.join("calibration-cube.generic-marlin-220.gcode"),
        &new_gcode,
    )
    .unwrap();
    let second = repo.commit("cube revision 2, a closed design");
    let (status, report) = h
        .json(post("/api/v1/catalog/sync", &admin, Value::Null))
        .await;
    assert_eq!(status, StatusCode::OK, "{report}");
    assert_eq!(report["sources"][0]["commit"], second);
    assert_eq!(report["designs"], 2);
    let (status, errors) = h.json(get("/api/v1/catalog/errors")).await;
    assert_eq!(status, StatusCode::OK);
    let errors = errors["errors"].as_array().unwrap();
    assert_eq!(errors.len(), 1, "{errors:?}");
    assert!(
        errors[0]["message"]
            .as_str()
            .unwrap()
            .contains("CC-BY-NC-4.0"),
        "{errors:?}"
    );

    // a job pinned to the old commit gets the old file; the latest gets the new one
    let (status, made) = h
        .json(post(
            "/api/v1/jobs/from-design",
            &maker,
            serde_json::json!({
                "design": format!("commons/calibration-cube@{first}"),
                "profile": "generic-marlin-220",
                "quantity": 2,
                "delivery_site": "site-a",
            }),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{made}");
    assert_eq!(made["design"], format!("commons/calibration-cube@{first}"));
    let jobs = made["jobs"].as_array().unwrap();
    assert_eq!(jobs.len(), 2);
    for j in jobs {
        assert_eq!(j["coop"], "coop-a");
        assert_eq!(j["state"], "queued");
        assert_eq!(j["artifact"], hex_sha(&old_gcode));
        assert_eq!(j["design"]["commit"], first);
        assert_eq!(j["design"]["path"], CUBE_GCODE);
        assert_eq!(j["design"]["licence"], "CERN-OHL-S-2.0");
        assert_eq!(j["delivery_site"], "site-a");
    }
    let sha = hex_sha(&old_gcode);
    let len = h.artifacts.size(&sha).await.unwrap();
    assert_eq!(h.artifacts.read(&sha, 0, len - 1).await.unwrap(), old_gcode);
    let (status, latest) = h
        .json(post(
            "/api/v1/jobs/from-design",
            &maker,
            serde_json::json!({"design": "calibration-cube", "profile": "generic-marlin-220"}),
        ))
        .await;
    assert_eq!(status, StatusCode::CREATED, "{latest}");
    assert_eq!(latest["jobs"][0]["design"]["commit"], second);
    assert_eq!(latest["jobs"][0]["artifact"], hex_sha(&new_gcode));

    // refusals
    for (body, want) in [
        (
            serde_json::json!({"design": "commons/nothing", "profile": "generic-marlin-220"}),
            StatusCode::NOT_FOUND,
        ),
        (
            serde_json::json!({"design": "calibration-cube", "profile": "generic-grbl-300x200"}),
            StatusCode::UNPROCESSABLE_ENTITY,
        ),
        (
            serde_json::json!({"design": format!("commons/calibration-cube@{}", "1".repeat(40)), "profile": "generic-marlin-220"}),
            StatusCode::NOT_FOUND,
        ),
        (
            serde_json::json!({"design": "calibration-cube", "profile": "generic-marlin-220", "quantity": 0}),
            StatusCode::BAD_REQUEST,
        ),
        (
            serde_json::json!({"design": "calibration-cube", "profile": "generic-marlin-220", "colour": "red"}),
            StatusCode::BAD_REQUEST,
        ),
    ] {
        let (status, err) = h
            .json(post("/api/v1/jobs/from-design", &maker, body.clone()))
            .await;
        assert_eq!(status, want, "{body}: {err}");
    }

    // the pinned job, run to the end, puts its design, licence and authors in the ledger
    let pinned: JobId = jobs[0]["id"].as_str().unwrap().parse().unwrap();
    let s = &h.db.store;
    s.register_agent(&agent("lab-a"), Some("site-a"), 1)
        .await
        .unwrap();
    s.set_agent_status(&agent("lab-a"), &online("x"), 2)
        .await
        .unwrap();
    s.set_machine_state(
        &agent("lab-a"),
        &machine_state("mk3", MachineStatus::Ready),
        2,
    )
    .await
    .unwrap();
    let (job, _) = s
        .assign_job_unchecked(pinned, &agent("lab-a"), &machine("mk3"), 3, assign_command)
        .await
        .unwrap();
    finish(&h, &job, true, 7_200_000).await;
    let (_, ledger) = h.json(get("/api/v1/ledger")).await;
    assert_eq!(ledger["total"], 1);
    let design = &ledger["items"][0]["design"];
    assert_eq!(design["source"], "commons");
    assert_eq!(design["id"], "calibration-cube");
    assert_eq!(design["commit"], first);
    assert_eq!(design["licence"], "CERN-OHL-S-2.0");
    assert_eq!(
        design["authors"],
        serde_json::json!(["MuniFab contributors"])
    );
}

#[tokio::test]
async fn the_cooperative_model_is_managed_validated_and_audited() {
    let h = Harness::new().await;
    let admin = h.token(Role::Admin, None).await;
    let put = |uri: &str, body: &str| {
        req("PUT", uri, Some(&admin))
            .header(header::CONTENT_TYPE, "application/json")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let (status, site) = h
        .json(put(
            "/api/v1/sites/lab-north",
            r#"{"name":"North","region":"upper-valley","lat":47.37,"lon":8.54}"#,
        ))
        .await;
    assert_eq!(status, StatusCode::OK, "{site}");
    let (status, pool) = h
        .json(put("/api/v1/pools/valley", r#"{"name":"Valley","machines":["north-pc/mk4-a"],"members":{"bike-kitchen":2,"toy-library":1}}"#))
        .await;
    assert_eq!(status, StatusCode::OK, "{pool}");
    let (_, pools) = h
        .json(
            req("GET", "/api/v1/pools", Some(&admin))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(pools[0]["members"]["bike-kitchen"], 2);
    assert_eq!(pools[0]["machines"], serde_json::json!(["north-pc/mk4-a"]));
    let (_, sites) = h
        .json(
            req("GET", "/api/v1/sites", Some(&admin))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    assert_eq!(sites[0]["lat"], 47.37);
    for (uri, body) in [
        (
            "/api/v1/sites/Bad%20Id",
            r#"{"name":"x","region":"r","lat":0,"lon":0}"#,
        ),
        (
            "/api/v1/sites/s",
            r#"{"name":"x","region":"r","lat":91,"lon":0}"#,
        ),
        (
            "/api/v1/pools/p",
            r#"{"name":"x","machines":["no-slash"],"members":{}}"#,
        ),
        (
            "/api/v1/pools/p",
            r#"{"name":"x","machines":[],"members":{"Bad Coop":1}}"#,
        ),
        ("/api/v1/quotas/c", r#"{"machine_hours":1,"period_days":0}"#),
        ("/api/v1/quotas/c", r#"{"hours":1}"#),
    ] {
        let (status, err) = h.json(put(uri, body)).await;
        assert_eq!(status, StatusCode::BAD_REQUEST, "{uri} {body}: {err}");
    }
    let (_, audit) = h
        .json(
            req("GET", "/api/v1/audit?subject=pool:valley", Some(&admin))
                .body(Body::empty())
                .unwrap(),
        )
        .await;
    let audit = audit.as_array().unwrap();
    assert_eq!(audit.len(), 1, "{audit:?}");
    assert_eq!(audit[0]["action"], "put_pool");
    assert!(
        audit[0]["actor"].as_str().unwrap().contains("test"),
        "{audit:?}"
    );
}

fn changes(token: Option<&str>, query: &str) -> Request<Body> {
    req("GET", &format!("/api/v1/changes{query}"), token)
        .body(Body::empty())
        .unwrap()
}

fn revision_of(status: StatusCode, body: &Value) -> u64 {
    assert_eq!(status, StatusCode::OK, "{body}");
    body["revision"]
        .as_u64()
        .unwrap_or_else(|| panic!("no revision in {body}"))
}

/// Starts `GET /changes?after={after}&wait_ms=60000` and returns once it waits in the store.
async fn waiting_request(
    h: &Harness,
    token: &str,
    after: u64,
) -> tokio::task::JoinHandle<Result<axum::response::Response, std::convert::Infallible>> {
    let request = changes(Some(token), &format!("?after={after}&wait_ms=60000"));
    let pending = tokio::spawn(h.app.clone().oneshot(request));
    // The request looks its token up first; it waits once it subscribed to the revision.
    while h.db.store.revision_waiters() == 0 {
        if pending.is_finished() {
            let answer = pending.await.unwrap().unwrap();
            panic!("answered {} before anything changed", answer.status());
        }
        tokio::task::yield_now().await;
    }
    pending
}

async fn body_json(response: axum::response::Response) -> (StatusCode, Value) {
    let status = response.status();
    let body = axum::body::to_bytes(response.into_body(), usize::MAX)
        .await
        .unwrap();
    (status, serde_json::from_slice(&body).unwrap())
}

#[tokio::test]
async fn changes_answers_at_once_when_the_revision_is_not_the_one_the_client_saw() {
    let h = Harness::new().await;
    let maker = h.token(Role::Maker, Some("coop-a")).await;
    // Without `after`: the current revision.
    let (s, b) = h.json(changes(Some(&maker), "")).await;
    let seen = revision_of(s, &b);
    assert_eq!(seen, h.db.store.revision());

    h.db.store.submit_job(new_job("coop-a"), 5).await.unwrap();
    // The full minute is asked for; the moved revision answers it without waiting (the
    // bound only turns a wrong wait into a failure instead of a slow pass).
    let asked = changes(Some(&maker), &format!("?after={seen}&wait_ms=60000"));
    let (s, b) = tokio::time::timeout(std::time::Duration::from_secs(30), h.json(asked))
        .await
        .expect("answered without waiting for a change");
    let now = revision_of(s, &b);
    assert_ne!(now, seen, "a write moved it");
    assert_eq!(now, h.db.store.revision());

    // A number from a coordinator that has since restarted is answered at once as well.
    let stale = now.wrapping_add(12_345);
    let asked = changes(Some(&maker), &format!("?after={stale}&wait_ms=60000"));
    let (s, b) = tokio::time::timeout(std::time::Duration::from_secs(30), h.json(asked))
        .await
        .expect("answered without waiting for a change");
    assert_eq!(revision_of(s, &b), now);
}

#[tokio::test]
async fn a_waiting_changes_request_is_answered_by_a_write_made_after_it_started() {
    let h = Harness::new().await;
    let operator = h.token(Role::Operator, Some("site-a")).await;
    let seen = h.db.store.revision();
    let pending = waiting_request(&h, &operator, seen).await;
    h.db.store
        .put_cooperative(
            &munifab_coordinator::store::CooperativeRecord {
                id: "coop-w".into(),
                name: "Woken".into(),
            },
            "test",
            7,
        )
        .await
        .unwrap();
    let (s, b) = body_json(pending.await.unwrap().unwrap()).await;
    let now = revision_of(s, &b);
    assert_ne!(now, seen, "{b}");
    assert_eq!(now, h.db.store.revision());
}

#[tokio::test]
async fn a_changes_request_that_sees_no_change_answers_its_own_revision_when_its_wait_ends() {
    let h = Harness::new().await;
    let agent = h.token(Role::Agent, Some("lab-a")).await;
    let seen = h.db.store.revision();
    for wait in ["0", "1", "20"] {
        let (s, b) = h
            .json(changes(
                Some(&agent),
                &format!("?after={seen}&wait_ms={wait}"),
            ))
            .await;
        assert_eq!(revision_of(s, &b), seen, "wait_ms={wait}: nothing changed");
    }
}

#[tokio::test]
async fn a_waiting_changes_request_answers_when_the_server_shuts_down() {
    let h = Harness::new().await;
    let admin = h.token(Role::Admin, None).await;
    let seen = h.db.store.revision();
    let pending = waiting_request(&h, &admin, seen).await;
    h.shutdown.cancel();
    // It asked for a minute; the bound only turns waiting it out into a failure.
    let answer = tokio::time::timeout(std::time::Duration::from_secs(30), pending)
        .await
        .expect("answered at the shutdown, not at the end of its wait");
    let (s, b) = body_json(answer.unwrap().unwrap()).await;
    assert_eq!(
        revision_of(s, &b),
        seen,
        "nothing changed; the server is going away"
    );
}

#[tokio::test]
async fn changes_refuses_bad_parameters_and_callers_without_a_token() {
    let h = Harness::new().await;
    let admin = h.token(Role::Admin, None).await;
    for query in [
        "?after=abc",
        "?after=-1",
        "?after=1.5",
        "?wait_ms=soon",
        "?wait_ms=-5",
        "?after=1&wait_ms=60001",
        "?since=3",
    ] {
        let (s, b) = h.json(changes(Some(&admin), query)).await;
        assert_eq!(s, StatusCode::BAD_REQUEST, "{query}: {b}");
        assert_eq!(b["error"]["code"], "bad_request", "{query}: {b}");
        assert!(
            !b["error"]["message"].as_str().unwrap_or("").is_empty(),
            "{query}: {b}"
        );
    }
    let (_, b) = h
        .json(changes(Some(&admin), "?after=1&wait_ms=60001"))
        .await;
    assert!(
        b["error"]["message"].as_str().unwrap().contains("60000"),
        "the limit is named: {b}"
    );
    // The longest wait is accepted (and answered at once, the revision being another).
    let other = h.db.store.revision().wrapping_add(1);
    let (s, b) = h
        .json(changes(
            Some(&admin),
            &format!("?after={other}&wait_ms=60000"),
        ))
        .await;
    assert_eq!(revision_of(s, &b), h.db.store.revision());
    let (s, b) = h.json(changes(None, "?after=1&wait_ms=0")).await;
    assert_eq!(s, StatusCode::UNAUTHORIZED, "{b}");
    assert_eq!(b["error"]["code"], "unauthorized", "{b}");
}
