//! A small HTTP/1.1 client for the coordinator's API over a real TCP connection (one
//! request per connection), with bearer tokens, JSON and multipart uploads.

use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use serde_json::Value;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long one request may take before the test fails.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

/// An answer: status, headers and body.
#[derive(Debug, Clone)]
pub struct Response {
    /// HTTP status code.
    pub status: u16,
    /// The raw header block.
    pub headers: String,
    /// The body.
    pub body: Vec<u8>,
}

impl Response {
    /// The body as JSON (fails the test with the body if it is not).
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).unwrap_or_else(|e| panic!("not JSON ({e}): {self}"))
    }

    /// The body as text.
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.body).into_owned()
    }
}

impl fmt::Display for Response {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "HTTP {}: {}", self.status, self.text())
    }
}

/// The API of one coordinator, called as one token holder.
#[derive(Debug, Clone)]
pub struct Client {
    addr: SocketAddr,
    token: Option<String>,
}

impl Client {
    /// A client for the API at `addr`; `token` is sent as `Authorization: Bearer`.
    pub fn new(addr: SocketAddr, token: Option<&str>) -> Client {
        Client {
            addr,
            token: token.map(str::to_string),
        }
    }

    /// The same API as another token holder.
    pub fn as_token(&self, token: &str) -> Client {
        Client::new(self.addr, Some(token))
    }

    /// Where the API listens.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `GET path`.
    pub async fn get(&self, path: &str) -> Response {
        self.request("GET", path, None, b"").await
    }

    /// `GET path`, expecting 200 and JSON.
    pub async fn get_json(&self, path: &str) -> Value {
        let r = self.get(path).await;
        assert_eq!(r.status, 200, "GET {path}: {r}");
        r.json()
    }

    /// `POST path` with a JSON body.
    pub async fn post_json(&self, path: &str, body: &Value) -> Response {
        let bytes = serde_json::to_vec(body).expect("JSON encodes");
        self.request("POST", path, Some("application/json"), &bytes)
            .await
    }

    /// `POST /api/v1/jobs`: uploads `file` as `name` (multipart), with `coop` if given.
    pub async fn upload(&self, name: &str, file: &[u8], coop: Option<&str>) -> Response {
        const BOUNDARY: &str = "munifab-e2e-3f9a1c";
        let mut body = Vec::new();
        if let Some(coop) = coop {
            body.extend_from_slice(
                format!(
                    "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"coop\"\r\n\r\n{coop}\r\n"
                )
                .as_bytes(),
            );
        }
        body.extend_from_slice(
            format!(
                "--{BOUNDARY}\r\nContent-Disposition: form-data; name=\"file\"; \
                 filename=\"{name}\"\r\nContent-Type: text/x-gcode\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(file);
        body.extend_from_slice(format!("\r\n--{BOUNDARY}--\r\n").as_bytes());
        self.request(
            "POST",
            "/api/v1/jobs",
            Some(&format!("multipart/form-data; boundary={BOUNDARY}")),
            &body,
        )
        .await
    }

    /// `GET /api/v1/changes`: the coordinator's revision, at once without `after`, else once
    /// it differs from `after` or `wait` has passed (then equal to `after`). `Err` when the
    /// coordinator gave no answer (it is down or restarting); an answer other than 200 fails
    /// the test.
    pub async fn changes(&self, after: Option<u64>, wait: Duration) -> Result<u64, String> {
        let path = match after {
            Some(after) => format!("/api/v1/changes?after={after}&wait_ms={}", wait.as_millis()),
            None => "/api/v1/changes".to_string(),
        };
        let r = match tokio::time::timeout(
            wait + REQUEST_TIMEOUT,
            self.exchange("GET", &path, None, b""),
        )
        .await
        {
            Ok(Ok(r)) => r,
            Ok(Err(e)) => return Err(format!("GET {path} at {}: {e}", self.addr)),
            Err(_) => return Err(format!("GET {path}: no answer")),
        };
        assert_eq!(r.status, 200, "GET {path}: {r}");
        let revision = r.json()["revision"]
            .as_u64()
            .unwrap_or_else(|| panic!("GET {path}: no revision in {r}"));
        Ok(revision)
    }

    /// One request on a fresh connection.
    pub async fn request(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> Response {
        tokio::time::timeout(
            REQUEST_TIMEOUT,
            self.exchange(method, path, content_type, body),
        )
        .await
        .unwrap_or_else(|_| panic!("{method} {path}: no answer within {REQUEST_TIMEOUT:?}"))
        .unwrap_or_else(|e| panic!("{method} {path} at {}: {e}", self.addr))
    }

    async fn exchange(
        &self,
        method: &str,
        path: &str,
        content_type: Option<&str>,
        body: &[u8],
    ) -> std::io::Result<Response> {
        let mut s = tokio::net::TcpStream::connect(self.addr).await?;
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        if let Some(t) = &self.token {
            head.push_str(&format!("Authorization: Bearer {t}\r\n"));
        }
        if let Some(ct) = content_type {
            head.push_str(&format!("Content-Type: {ct}\r\n"));
        }
        head.push_str("\r\n");
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut raw = Vec::new();
        s.read_to_end(&mut raw).await?;
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .ok_or_else(|| std::io::Error::other("no complete HTTP header in the answer"))?;
        let headers = String::from_utf8_lossy(&raw[..split]).to_string();
        let status = headers
            .split_whitespace()
            .nth(1)
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("no status in {headers:?}")))?;
        let mut body = raw[split + 4..].to_vec();
        if headers
            .to_ascii_lowercase()
            .contains("transfer-encoding: chunked")
        {
            body = dechunk(&body)?;
        }
        Ok(Response {
            status,
            headers,
            body,
        })
    }
}

fn dechunk(mut raw: &[u8]) -> std::io::Result<Vec<u8>> {
    let bad = || std::io::Error::other("malformed chunked body");
    let mut out = Vec::new();
    loop {
        let line_end = raw.windows(2).position(|w| w == b"\r\n").ok_or_else(bad)?;
        let size_text = std::str::from_utf8(&raw[..line_end]).map_err(|_| bad())?;
        let size = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16)
            .map_err(|_| bad())?;
        raw = &raw[line_end + 2..];
        if size == 0 {
            return Ok(out);
        }
        if raw.len() < size + 2 {
            return Err(bad());
        }
        out.extend_from_slice(&raw[..size]);
        raw = &raw[size + 2..];
    }
}
