//! Uploaded files on disk, content-addressed by SHA-256 (`root/ab/abcdef…`).

use std::io;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};
use tokio::io::{AsyncReadExt, AsyncSeekExt};

/// Why an artifact operation failed.
#[derive(Debug, thiserror::Error)]
pub enum ArtifactError {
    /// The name is not 64 lower-case hex digits.
    #[error("{0:?} is not a SHA-256 in lower-case hex")]
    BadName(String),
    /// No artifact with that hash.
    #[error("artifact {0} not found")]
    NotFound(String),
    /// Reading or writing the file failed.
    #[error("artifact storage at {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The IO error.
        source: io::Error,
    },
}

/// A content-addressed file store.
#[derive(Debug, Clone)]
pub struct ArtifactStore {
    root: PathBuf,
}

fn valid_name(sha: &str) -> bool {
    sha.len() == 64
        && sha
            .bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

impl ArtifactStore {
    /// A store rooted at `root` (created on first write).
    pub fn new(root: impl Into<PathBuf>) -> Self {
        Self { root: root.into() }
    }

    fn path(&self, sha: &str) -> Result<PathBuf, ArtifactError> {
        if !valid_name(sha) {
            return Err(ArtifactError::BadName(sha.chars().take(80).collect()));
        }
        Ok(self.root.join(&sha[..2]).join(sha))
    }

    /// Stores `bytes`; returns their SHA-256 (hex). Writing is atomic (temp file, then
    /// rename) and idempotent: the same content is stored once.
    pub async fn put(&self, bytes: &[u8]) -> Result<String, ArtifactError> {
        let sha = hex::encode(Sha256::digest(bytes));
        let path = self.path(&sha)?;
        if tokio::fs::try_exists(&path).await.unwrap_or(false) {
            return Ok(sha);
        }
        let dir = path.parent().expect("artifact paths have a parent");
        let io = |p: &Path| {
            let p = p.to_path_buf();
            move |source| ArtifactError::Io { path: p, source }
        };
        tokio::fs::create_dir_all(dir).await.map_err(io(dir))?;
        let tmp = dir.join(format!(".{sha}.{}.tmp", uuid::Uuid::new_v4().simple()));
        tokio::fs::write(&tmp, bytes).await.map_err(io(&tmp))?;
        tokio::fs::rename(&tmp, &path).await.map_err(io(&path))?;
        Ok(sha)
    }

    /// Size of a stored artifact.
    pub async fn size(&self, sha: &str) -> Result<u64, ArtifactError> {
        let path = self.path(sha)?;
        match tokio::fs::metadata(&path).await {
            Ok(m) => Ok(m.len()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Err(ArtifactError::NotFound(sha.to_string()))
            }
            Err(source) => Err(ArtifactError::Io { path, source }),
        }
    }

    /// Bytes `start..=end` of a stored artifact.
    pub async fn read(&self, sha: &str, start: u64, end: u64) -> Result<Vec<u8>, ArtifactError> {
        let path = self.path(sha)?;
        let io = |source| ArtifactError::Io {
            path: path.clone(),
            source,
        };
        let mut file = tokio::fs::File::open(&path).await.map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                ArtifactError::NotFound(sha.to_string())
            } else {
                io(e)
            }
        })?;
        file.seek(io::SeekFrom::Start(start)).await.map_err(io)?;
        let mut buf = vec![0; (end + 1 - start) as usize];
        file.read_exact(&mut buf).await.map_err(io)?;
        Ok(buf)
    }
}

/// A single byte range resolved against a length: `Ok(None)` is the whole file,
/// `Err(())` an unsatisfiable or malformed range (416).
#[allow(clippy::result_unit_err)]
pub fn resolve_range(header: Option<&str>, len: u64) -> Result<Option<(u64, u64)>, ()> {
    let Some(h) = header else { return Ok(None) };
    let spec = h.trim().strip_prefix("bytes=").ok_or(())?;
    if spec.contains(',') {
        // One range is all an agent resuming a download needs.
        return Err(());
    }
    let (a, b) = spec.split_once('-').ok_or(())?;
    let (a, b) = (a.trim(), b.trim());
    let (start, end) = if a.is_empty() {
        let n: u64 = b.parse().map_err(|_| ())?;
        if n == 0 || len == 0 {
            return Err(());
        }
        (len.saturating_sub(n), len - 1)
    } else {
        let start: u64 = a.parse().map_err(|_| ())?;
        let end = if b.is_empty() {
            len.checked_sub(1).ok_or(())?
        } else {
            b.parse::<u64>().map_err(|_| ())?.min(len.saturating_sub(1))
        };
        (start, end)
    };
    if start >= len || end < start {
        return Err(());
    }
    Ok(Some((start, end)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_follow_rfc_9110() {
        assert_eq!(resolve_range(None, 10), Ok(None));
        assert_eq!(resolve_range(Some("bytes=0-3"), 10), Ok(Some((0, 3))));
        assert_eq!(resolve_range(Some("bytes=4-"), 10), Ok(Some((4, 9))));
        assert_eq!(resolve_range(Some("bytes=-3"), 10), Ok(Some((7, 9))));
        assert_eq!(resolve_range(Some("bytes=5-100"), 10), Ok(Some((5, 9))));
        assert_eq!(resolve_range(Some("bytes=10-"), 10), Err(()));
        assert_eq!(resolve_range(Some("bytes=3-1"), 10), Err(()));
        assert_eq!(resolve_range(Some("bytes=0-1,4-5"), 10), Err(()));
        assert_eq!(resolve_range(Some("items=0-1"), 10), Err(()));
    }

    #[tokio::test]
    async fn the_same_content_is_stored_once_under_its_hash() {
        let dir = std::env::temp_dir().join(format!("mf-art-{}", uuid::Uuid::new_v4()));
        let store = ArtifactStore::new(&dir);
        let a = store.put(b"G28\nG1 X1\n").await.unwrap();
        assert_eq!(store.put(b"G28\nG1 X1\n").await.unwrap(), a);
        assert_eq!(store.size(&a).await.unwrap(), 10);
        assert_eq!(store.read(&a, 4, 6).await.unwrap(), b"G1 ");
        assert!(matches!(
            store.size("../../etc/passwd").await,
            Err(ArtifactError::BadName(_))
        ));
        assert!(matches!(
            store.size(&"0".repeat(64)).await,
            Err(ArtifactError::NotFound(_))
        ));
        std::fs::remove_dir_all(dir).unwrap();
    }
}
