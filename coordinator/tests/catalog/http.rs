//! Git sources over http: a real git HTTP server (git's own `git http-backend`, the CGI
//! program behind most self-hosted git servers, run by a small axum server on a local
//! port) and gix's reqwest transport. Nothing about git is mocked.

use std::io::Write as _;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use munifab_coordinator::catalog::{Catalog, DesignKey, DesignSpec, ProfileId, SyncReport};

use crate::util::{GitRepo, Setup, assert_clean, at, design};

/// Requests the test server accepts, at most: the sample is a few kilobytes.
const MAX_REQUEST: usize = 16 * 1024 * 1024;

/// Serve the bare repositories under `root` over git's smart HTTP protocol on a free
/// local port, until the test's runtime ends.
async fn serve_git(root: PathBuf) -> SocketAddr {
    let root = Arc::new(root);
    let app = axum::Router::new().fallback(move |req: Request| {
        let root = root.clone();
        async move { cgi(&root, req).await }
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
        .await
        .expect("a local port");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Run `git http-backend` for one request, as a web server runs a CGI program.
async fn cgi(root: &Path, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let body = axum::body::to_bytes(body, MAX_REQUEST)
        .await
        .expect("the request body");
    let header = |name: &str| {
        parts
            .headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned()
    };
    let mut cmd = Command::new("git");
    cmd.arg("http-backend")
        .env("GIT_PROJECT_ROOT", root)
        .env("GIT_HTTP_EXPORT_ALL", "1")
        .env("GIT_CONFIG_NOSYSTEM", "1")
        .env("REQUEST_METHOD", parts.method.as_str())
        .env("PATH_INFO", parts.uri.path())
        .env("QUERY_STRING", parts.uri.query().unwrap_or(""))
        .env("CONTENT_TYPE", header("content-type"))
        .env("CONTENT_LENGTH", body.len().to_string())
        .env("GIT_PROTOCOL", header("git-protocol"))
        .env("HTTP_CONTENT_ENCODING", header("content-encoding"))
        .env("REMOTE_ADDR", "127.0.0.1")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let output = tokio::task::spawn_blocking(move || {
        let mut child = cmd.spawn().expect("git http-backend starts");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(&body)
            .expect("the request goes to git http-backend");
        child.wait_with_output().expect("git http-backend ends")
    })
    .await
    .expect("the CGI task");
    let out = output.stdout;
    let split = out
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map(|p| (p, p + 4))
        .or_else(|| {
            out.windows(2)
                .position(|w| w == b"\n\n")
                .map(|p| (p, p + 2))
        })
        .unwrap_or_else(|| {
            panic!(
                "git http-backend wrote no headers: {}",
                String::from_utf8_lossy(&output.stderr)
            )
        });
    let head = String::from_utf8_lossy(&out[..split.0]).into_owned();
    let mut response = Response::new(Body::from(out[split.1..].to_vec()));
    for line in head.lines() {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let value = value.trim();
        if name.eq_ignore_ascii_case("status") {
            let code = value.split_whitespace().next().unwrap_or("500");
            *response.status_mut() = code.parse().unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        } else if let (Ok(n), Ok(v)) = (
            HeaderName::try_from(name.trim()),
            HeaderValue::from_str(value),
        ) {
            response.headers_mut().insert(n, v);
        }
    }
    response
}

/// A work repository and the bare repository the server publishes it as.
struct Published {
    work: GitRepo,
    bare: PathBuf,
}

impl Published {
    fn new(root: &Path, name: &str) -> Self {
        let work = GitRepo::new();
        Self {
            work,
            bare: root.join(name),
        }
    }

    /// Commit the work repository and publish it.
    fn publish(&self, message: &str) -> munifab_coordinator::catalog::CommitId {
        let commit = self.work.commit(message);
        if !self.bare.exists() {
            self.work.git(&[
                "clone",
                "-q",
                "--bare",
                &self.work.path().display().to_string(),
                &self.bare.display().to_string(),
            ]);
        } else {
            self.work.git(&[
                "push",
                "-q",
                "--force",
                &self.bare.display().to_string(),
                "main",
            ]);
        }
        commit
    }
}

async fn sync(catalog: &Arc<Catalog>, seconds: i64) -> SyncReport {
    let c = catalog.clone();
    tokio::task::spawn_blocking(move || c.sync(at(seconds)))
        .await
        .expect("sync does not panic")
}

fn cube() -> DesignKey {
    DesignKey {
        source: "web".parse().unwrap(),
        id: "cube".parse().unwrap(),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_http_source_syncs_new_revisions_and_keeps_serving_pinned_ones() {
    let served = tempfile::tempdir().expect("temporary folder");
    let addr = serve_git(served.path().to_owned()).await;
    let upstream = Published::new(served.path(), "designs.git");
    design(upstream.work.path(), "cube", "cube", "G28\nG1 X1\n");
    let first = upstream.publish("first");

    let url = format!("http://{addr}/designs.git");
    let setup = Setup::new().git("web", &url, None);
    let catalog = Arc::new(Catalog::open(setup.config.clone()).expect("catalog opens"));
    let report = sync(&catalog, 0).await;
    assert_clean(&report);
    assert_eq!(report.sources[0].commit, Some(first));
    assert_eq!(report.designs, 1);

    design(upstream.work.path(), "cube", "cube", "G28\nG1 X2\n");
    design(upstream.work.path(), "clip", "clip", "G28\n");
    let second = upstream.publish("second");
    let report = sync(&catalog, 60).await;
    assert_clean(&report);
    assert_eq!(report.sources[0].commit, Some(second));
    assert_eq!(report.designs, 2);

    let profile: ProfileId = "generic-marlin-220".parse().unwrap();
    let now = catalog
        .resolve(&"web/cube".parse::<DesignSpec>().unwrap(), &profile)
        .unwrap();
    assert_eq!(now.commit, second);
    assert_eq!(now.bytes, b"G28\nG1 X2\n");
    let old = catalog
        .resolve(
            &format!("web/cube@{first}").parse::<DesignSpec>().unwrap(),
            &profile,
        )
        .unwrap();
    assert_eq!(
        old.bytes, b"G28\nG1 X1\n",
        "the pinned revision keeps its bytes"
    );
    assert_eq!(catalog.design(&cube()).unwrap().design.commit, second);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unreachable_or_missing_http_source_is_a_clear_error_and_the_others_still_sync() {
    let served = tempfile::tempdir().expect("temporary folder");
    let addr = serve_git(served.path().to_owned()).await;
    let upstream = Published::new(served.path(), "designs.git");
    design(upstream.work.path(), "cube", "cube", "G28\n");
    let commit = upstream.publish("first");
    // A port nobody listens on: bound, then closed.
    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port");

    let down = format!("http://{closed}/designs.git");
    let missing = format!("http://{addr}/nothing-here.git");
    let setup = Setup::new()
        .git("web", &format!("http://{addr}/designs.git"), None)
        .git("down", &down, None)
        .git("missing", &missing, None);
    let catalog = Arc::new(Catalog::open(setup.config.clone()).expect("catalog opens"));
    let report = sync(&catalog, 0).await;
    let status = |name: &str| {
        report
            .sources
            .iter()
            .find(|s| s.name.as_str() == name)
            .unwrap_or_else(|| panic!("no source {name}"))
    };
    assert_eq!(status("web").commit, Some(commit));
    assert_eq!(status("web").error, None);
    assert_eq!(report.designs, 1);

    let down_error = status("down").error.clone().expect("down fails");
    assert!(
        down_error.contains(&down) && down_error.contains("source `down`"),
        "{down_error}"
    );
    assert!(
        down_error.contains("cannot connect to the server") && !down_error.contains('\n'),
        "one line saying the server could not be reached: {down_error}"
    );
    let missing_error = status("missing").error.clone().expect("missing fails");
    assert!(missing_error.contains(&missing), "{missing_error}");
    assert!(
        missing_error.contains("HTTP 404 Not Found")
            && missing_error.contains("no git repository")
            && !missing_error.contains('\n'),
        "one line saying there is no repository there: {missing_error}"
    );
    for e in [&down_error, &missing_error] {
        assert!(
            report.errors.iter().any(|x| &x.message == e),
            "listed by errors(): {e}"
        );
    }
}
