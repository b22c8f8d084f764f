//! A small client of the coordinator's HTTP API, as any user or script would call it:
//! bearer tokens, JSON bodies, multipart uploads (reqwest's own form encoding).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use reqwest::{Method, StatusCode};
use serde::de::DeserializeOwned;
use serde_json::Value;

/// The API of one coordinator.
#[derive(Debug, Clone)]
pub struct Api {
    http: reqwest::Client,
    base: String,
}

/// An answer outside 2xx: status and the API's error body.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// HTTP status.
    pub status: StatusCode,
    /// The `{"error":{…}}` body (or the text, wrapped).
    pub body: Value,
}

impl Refusal {
    /// `error.code`.
    pub fn code(&self) -> &str {
        self.body["error"]["code"].as_str().unwrap_or("")
    }
    /// `error.message`.
    pub fn message(&self) -> &str {
        self.body["error"]["message"].as_str().unwrap_or("")
    }
}

impl std::fmt::Display for Refusal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.code(), self.message())
    }
}

/// What a request carries.
enum Body {
    None,
    Json(Vec<u8>),
    Form(reqwest::multipart::Form),
}

impl Api {
    /// A client of the API at `base` (`http://host:port`).
    pub fn new(base: &str) -> anyhow::Result<Self> {
        // Plain http only, but reqwest's rustls backend wants a configuration anyway: the
        // ring provider (as everywhere in MuniFab) with no trust roots.
        let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
            rustls::crypto::ring::default_provider(),
        ))
        .with_safe_default_protocol_versions()
        .context("TLS configuration")?
        .with_root_certificates(rustls::RootCertStore::empty())
        .with_no_client_auth();
        let http = reqwest::Client::builder()
            .timeout(Duration::from_secs(30))
            .tls_backend_preconfigured(tls)
            .build()
            .context("building the HTTP client")?;
        Ok(Self {
            http,
            base: base.trim_end_matches('/').to_string(),
        })
    }

    /// The base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends a request; `Ok(Err(refusal))` for an answer outside 2xx.
    async fn send(
        &self,
        method: Method,
        token: &str,
        path: &str,
        body: Body,
    ) -> anyhow::Result<Result<Value, Refusal>> {
        let url = format!("{}{path}", self.base);
        let mut req = self.http.request(method.clone(), &url).bearer_auth(token);
        req = match body {
            Body::None => req,
            Body::Json(bytes) => req
                .header(reqwest::header::CONTENT_TYPE, "application/json")
                .body(bytes),
            Body::Form(form) => req.multipart(form),
        };
        let resp = req
            .send()
            .await
            .with_context(|| format!("{method} {url}"))?;
        let status = resp.status();
        let bytes = resp
            .bytes()
            .await
            .with_context(|| format!("{method} {url}: reading the answer"))?;
        let value = serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into_owned()));
        if status.is_success() {
            Ok(Ok(value))
        } else {
            Ok(Err(Refusal {
                status,
                body: value,
            }))
        }
    }

    /// Sends and expects 2xx, decoding the answer as `T`.
    async fn expect<T: DeserializeOwned>(
        &self,
        method: Method,
        token: &str,
        path: &str,
        body: Body,
    ) -> anyhow::Result<T> {
        let what = format!("{method} {path}");
        let value = self
            .send(method, token, path, body)
            .await?
            .map_err(|r| anyhow::anyhow!("{what}: {r}"))?;
        serde_json::from_value(value).with_context(|| format!("{what}: unexpected answer"))
    }

    /// `GET path`.
    pub async fn get<T: DeserializeOwned>(&self, token: &str, path: &str) -> anyhow::Result<T> {
        self.expect(Method::GET, token, path, Body::None).await
    }

    /// `GET /api/v1/changes`: the coordinator's revision, at once without `after`, else once
    /// it differs from `after` or `wait` has passed (then equal to `after`).
    pub async fn changes(
        &self,
        token: &str,
        after: Option<u64>,
        wait: Duration,
    ) -> anyhow::Result<u64> {
        #[derive(serde::Deserialize)]
        struct Revision {
            revision: u64,
        }
        let path = match after {
            Some(after) => format!("/api/v1/changes?after={after}&wait_ms={}", wait.as_millis()),
            None => "/api/v1/changes".to_string(),
        };
        let r: Revision = self.get(token, &path).await?;
        Ok(r.revision)
    }

    /// `method path` with a JSON body, expecting 2xx.
    pub async fn json<T: DeserializeOwned>(
        &self,
        method: Method,
        token: &str,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<T> {
        let bytes = serde_json::to_vec(body)?;
        self.expect(method, token, path, Body::Json(bytes)).await
    }

    /// `method path` with a JSON body; `Ok(Err(refusal))` for an answer outside 2xx.
    pub async fn try_json(
        &self,
        method: Method,
        token: &str,
        path: &str,
        body: &Value,
    ) -> anyhow::Result<Result<Value, Refusal>> {
        let bytes = serde_json::to_vec(body)?;
        self.send(method, token, path, Body::Json(bytes)).await
    }

    /// `POST /api/v1/jobs`: uploads a G-code file (with an optional machine profile to check
    /// it against); `Ok(Err(refusal))` when the coordinator refuses it.
    pub async fn upload(
        &self,
        token: &str,
        file_name: &str,
        bytes: &[u8],
        profile: Option<&str>,
    ) -> anyhow::Result<Result<Value, Refusal>> {
        let file = reqwest::multipart::Part::bytes(bytes.to_vec())
            .file_name(file_name.to_string())
            .mime_str("text/x-gcode")
            .context("the upload's content type")?;
        let mut form = reqwest::multipart::Form::new();
        if let Some(p) = profile {
            form = form.text("profile", p.to_string());
        }
        form = form.part("file", file);
        self.send(Method::POST, token, "/api/v1/jobs", Body::Form(form))
            .await
    }
}

/// A loop's view of the coordinator's revision: read what you await, and if it is not there
/// yet, wait for the next change (`GET /api/v1/changes`) rather than a timer.
#[derive(Debug)]
pub struct Changes<'a> {
    api: &'a Api,
    token: &'a str,
    seen: Option<u64>,
}

impl<'a> Changes<'a> {
    /// Follows the revision of `api` as the holder of `token` (any role).
    pub fn new(api: &'a Api, token: &'a str) -> Self {
        Self {
            api,
            token,
            seen: None,
        }
    }

    /// Call before each read: notes the current revision (unless the last wait returned
    /// it), so a change made during the read answers the next wait at once.
    pub async fn before_read(&mut self) -> anyhow::Result<()> {
        if self.seen.is_none() {
            self.seen = Some(self.api.changes(self.token, None, Duration::ZERO).await?);
        }
        Ok(())
    }

    /// After a read that did not find what it awaits: returns at the next change, or after
    /// `at_most`, or at `deadline`, whichever comes first.
    pub async fn wait(&mut self, deadline: Instant, at_most: Duration) -> anyhow::Result<()> {
        let wait = deadline
            .saturating_duration_since(Instant::now())
            .min(at_most);
        self.seen = Some(self.api.changes(self.token, self.seen, wait).await?);
        Ok(())
    }
}
