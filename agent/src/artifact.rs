//! Artifact downloads into a content-addressed cache.
//!
//! ```text
//! {data_dir}/artifacts/sha256/{hex}        verified content; never rewritten
//! {data_dir}/artifacts/partial/{hex}.part  a download in progress; resumed with Range
//! ```
//!
//! A file reaches `sha256/` only after its size and SHA-256 matched the assignment, by an
//! atomic rename, so whatever is there can be streamed to a machine without re-checking.
//! An interrupted download keeps its `.part` file and continues from its length with a
//! `Range` request, on the next attempt or the next assignment of the same content.

use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use munifab_protocol::Artifact;
use sha2::{Digest, Sha256};
use tokio::io::AsyncWriteExt;
use url::Url;

/// Attempts per fetch; each continues where the previous one stopped.
const ATTEMPTS: u32 = 3;

/// Why an artifact could not be made available.
#[derive(Debug, thiserror::Error)]
pub enum FetchError {
    /// The assignment's digest is not 64 lower-case hex digits.
    #[error("artifact digest {0:?} is not a SHA-256 in lower-case hex")]
    BadDigest(String),
    /// The artifact URL is not usable.
    #[error("artifact URL {url:?}: {problem}")]
    BadUrl {
        /// The URL as given.
        url: String,
        /// What is wrong.
        problem: String,
    },
    /// The server could not be reached or the transfer broke off, on every attempt.
    #[error("downloading {url}: {message}")]
    Http {
        /// The URL.
        url: String,
        /// What went wrong last.
        message: String,
    },
    /// The server answered with an error status.
    #[error("downloading {url}: HTTP {status}")]
    Status {
        /// The URL.
        url: String,
        /// The status code.
        status: u16,
    },
    /// The content is larger than the assignment says.
    #[error("artifact is larger than the announced {expected} bytes")]
    TooLarge {
        /// Announced size.
        expected: u64,
    },
    /// The complete content does not hash to the announced digest.
    #[error("artifact SHA-256 is {actual}, expected {expected}")]
    ChecksumMismatch {
        /// Announced digest.
        expected: String,
        /// Digest of what arrived.
        actual: String,
    },
    /// The cache could not be written.
    #[error("artifact cache {path}: {source}")]
    Io {
        /// File or directory.
        path: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
}

impl FetchError {
    /// Whether the content itself was wrong (as opposed to the transfer failing).
    pub fn is_integrity(&self) -> bool {
        matches!(
            self,
            FetchError::TooLarge { .. } | FetchError::ChecksumMismatch { .. }
        )
    }
}

/// The agent's token, sent as `Authorization: Bearer` to the coordinator (which serves
/// artifacts to agents only); never shown in logs.
#[derive(Clone)]
struct Bearer(String);

impl std::fmt::Debug for Bearer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Bearer(<redacted>)")
    }
}

/// The content-addressed artifact cache and its HTTP client.
#[derive(Debug, Clone)]
pub struct ArtifactCache {
    root: PathBuf,
    base: Url,
    token: Option<Bearer>,
    http: reqwest::Client,
    /// Built on the first https URL: loading the system's trust roots costs about a
    /// megabyte of memory, which a workshop fetching over plain http never needs.
    https: Arc<OnceLock<Result<reqwest::Client, String>>>,
}

fn io_at(path: &Path) -> impl FnOnce(std::io::Error) -> FetchError + '_ {
    move |source| FetchError::Io {
        path: path.to_path_buf(),
        source,
    }
}

impl ArtifactCache {
    /// A cache under `root`, resolving relative artifact URLs against `base`.
    pub fn new(root: PathBuf, base: Url) -> Result<Self, FetchError> {
        // Plain http needs no trust roots; an empty store keeps this client small.
        let http = client(rustls_config(rustls::RootCertStore::empty())).map_err(|message| {
            FetchError::Http {
                url: base.to_string(),
                message,
            }
        })?;
        for sub in ["sha256", "partial"] {
            let dir = root.join(sub);
            std::fs::create_dir_all(&dir).map_err(io_at(&dir))?;
        }
        Ok(Self {
            root,
            base,
            token: None,
            http,
            https: Arc::new(OnceLock::new()),
        })
    }

    fn client_for(&self, url: &Url) -> Result<&reqwest::Client, FetchError> {
        if url.scheme() != "https" {
            return Ok(&self.http);
        }
        self.https
            .get_or_init(|| crate::tls::client_config(None).and_then(client))
            .as_ref()
            .map_err(|message| FetchError::Http {
                url: url.to_string(),
                message: message.clone(),
            })
    }

    /// Sends `token` as a bearer token with every download from the coordinator, i.e. from
    /// the scheme, host and port of `base`; URLs elsewhere (a mirror) get no credentials.
    pub fn with_token(mut self, token: &str) -> Self {
        self.token = Some(Bearer(token.to_string()));
        self
    }

    fn token_for(&self, url: &Url) -> Option<&str> {
        let same_origin = url.scheme() == self.base.scheme()
            && url.host_str() == self.base.host_str()
            && url.port_or_known_default() == self.base.port_or_known_default();
        self.token
            .as_ref()
            .filter(|_| same_origin)
            .map(|t| t.0.as_str())
    }

    /// Where verified content with this digest lives.
    pub fn path_of(&self, sha256: &str) -> PathBuf {
        self.root.join("sha256").join(sha256)
    }

    /// Bytes of `artifact` already on disk (complete or partial).
    pub fn cached_bytes(&self, artifact: &Artifact) -> u64 {
        if self.path_of(&artifact.sha256).exists() {
            return artifact.size;
        }
        std::fs::metadata(self.partial_of(&artifact.sha256)).map_or(0, |m| m.len())
    }

    fn partial_of(&self, sha256: &str) -> PathBuf {
        self.root.join("partial").join(format!("{sha256}.part"))
    }

    /// Makes `artifact` available in the cache and returns its path. Downloads what is
    /// missing (resuming a partial file), then verifies size and SHA-256.
    pub async fn fetch(&self, artifact: &Artifact) -> Result<PathBuf, FetchError> {
        let digest = &artifact.sha256;
        if digest.len() != 64
            || !digest
                .bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
        {
            return Err(FetchError::BadDigest(digest.clone()));
        }
        let done = self.path_of(digest);
        if done.exists() {
            return Ok(done);
        }
        let url = self
            .base
            .join(&artifact.url)
            .map_err(|e| FetchError::BadUrl {
                url: artifact.url.clone(),
                problem: e.to_string(),
            })?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(FetchError::BadUrl {
                url: artifact.url.clone(),
                problem: "only http and https are fetched".into(),
            });
        }
        let part = self.partial_of(digest);
        let mut last = None;
        for attempt in 1..=ATTEMPTS {
            match self.download(&url, &part, artifact.size).await {
                Ok(()) => {
                    last = None;
                    break;
                }
                Err(e @ (FetchError::Http { .. } | FetchError::Status { .. })) => {
                    tracing::warn!(%url, attempt, error = %e, "artifact download interrupted");
                    last = Some(e);
                    if attempt < ATTEMPTS {
                        tokio::time::sleep(Duration::from_millis(200 * u64::from(attempt))).await;
                    }
                }
                Err(e) => {
                    if e.is_integrity() {
                        let _ = tokio::fs::remove_file(&part).await;
                    }
                    return Err(e);
                }
            }
        }
        if let Some(e) = last {
            return Err(e);
        }
        let actual = hash_file(&part).await?;
        if &actual != digest {
            let _ = tokio::fs::remove_file(&part).await;
            return Err(FetchError::ChecksumMismatch {
                expected: digest.clone(),
                actual,
            });
        }
        tokio::fs::rename(&part, &done)
            .await
            .map_err(io_at(&done))?;
        Ok(done)
    }

    /// One attempt: continue `part` up to `size` bytes.
    async fn download(&self, url: &Url, part: &Path, size: u64) -> Result<(), FetchError> {
        let mut have = tokio::fs::metadata(part).await.map_or(0, |m| m.len());
        if have > size {
            tokio::fs::remove_file(part).await.map_err(io_at(part))?;
            have = 0;
        }
        if have == size {
            return Ok(());
        }
        let http = |e: reqwest::Error| FetchError::Http {
            url: url.to_string(),
            message: e.to_string(),
        };
        let mut req = self.client_for(url)?.get(url.clone());
        if let Some(token) = self.token_for(url) {
            req = req.bearer_auth(token);
        }
        if have > 0 {
            req = req.header(reqwest::header::RANGE, format!("bytes={have}-"));
        }
        let mut resp = req.send().await.map_err(http)?;
        let status = resp.status();
        let append = match status.as_u16() {
            206 if have > 0 => true,
            200 => false,
            // The server no longer agrees with our partial file: start over.
            416 => {
                tokio::fs::remove_file(part).await.map_err(io_at(part))?;
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status: 416,
                });
            }
            s => {
                return Err(FetchError::Status {
                    url: url.to_string(),
                    status: s,
                });
            }
        };
        let mut file = tokio::fs::OpenOptions::new()
            .create(true)
            .write(true)
            .append(append)
            .truncate(!append)
            .open(part)
            .await
            .map_err(io_at(part))?;
        let mut written = if append { have } else { 0 };
        while let Some(chunk) = resp.chunk().await.map_err(http)? {
            written += chunk.len() as u64;
            if written > size {
                return Err(FetchError::TooLarge { expected: size });
            }
            file.write_all(&chunk).await.map_err(io_at(part))?;
        }
        file.flush().await.map_err(io_at(part))?;
        file.sync_all().await.map_err(io_at(part))?;
        if written < size {
            return Err(FetchError::Http {
                url: url.to_string(),
                message: format!("transfer ended after {written} of {size} bytes"),
            });
        }
        Ok(())
    }
}

fn rustls_config(roots: rustls::RootCertStore) -> rustls::ClientConfig {
    rustls::ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .expect("ring supports the default protocol versions")
        .with_root_certificates(roots)
        .with_no_client_auth()
}

fn client(tls: rustls::ClientConfig) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .connect_timeout(Duration::from_secs(10))
        .read_timeout(Duration::from_secs(30))
        .user_agent(concat!("munifab-agent/", env!("CARGO_PKG_VERSION")))
        .tls_backend_preconfigured(tls)
        .build()
        .map_err(|e| e.to_string())
}

/// SHA-256 of a file in lower-case hex, read in blocks (files can be hundreds of MB).
pub async fn hash_file(path: &Path) -> Result<String, FetchError> {
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || {
        use std::io::Read;
        let mut file = std::fs::File::open(&path).map_err(io_at(&path))?;
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            let n = file.read(&mut buf).map_err(io_at(&path))?;
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
        }
        Ok(hex::encode(hasher.finalize()))
    })
    .await
    .unwrap_or_else(|e| {
        Err(FetchError::Io {
            path: PathBuf::new(),
            source: std::io::Error::other(e),
        })
    })
}

#[cfg(test)]
mod token_tests {
    use super::*;

    #[test]
    fn the_token_goes_to_the_coordinators_origin_only() {
        let dir = std::env::temp_dir().join(format!("munifab-artifact-{}", uuid::Uuid::new_v4()));
        let cache = ArtifactCache::new(dir.clone(), "http://coord.example:8080/".parse().unwrap())
            .unwrap()
            .with_token("mft_secret");
        let url = |u: &str| u.parse::<Url>().unwrap();
        assert_eq!(
            cache.token_for(&url("http://coord.example:8080/api/v1/artifacts/ab")),
            Some("mft_secret")
        );
        assert_eq!(cache.token_for(&url("http://mirror.example:8080/ab")), None);
        assert_eq!(cache.token_for(&url("http://coord.example:9090/ab")), None);
        assert_eq!(cache.token_for(&url("https://coord.example:8080/ab")), None);
        assert!(!format!("{cache:?}").contains("mft_secret"), "redacted");
        std::fs::remove_dir_all(dir).unwrap();
    }
}
