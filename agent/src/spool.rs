//! The durable outbox: every event is on disk before it is published, and leaves the disk
//! only after the broker acknowledged it (QoS 1 PUBACK).
//!
//! One file per event, named by a monotonically increasing key, written to a temporary
//! name, fsync'd, renamed into place and the directory fsync'd. Rename is atomic on POSIX
//! file systems, so after a crash a file is either complete or absent (a leftover `.tmp`
//! is an unfinished write and is discarded); order is the key order. Per-event files make
//! removal after an acknowledgement a single `unlink` with no compaction, and events are a
//! few per second at most, so the file count stays small.
//!
//! Payloads are stored exactly as published (signed), so a replay is byte-identical and the
//! coordinator deduplicates it by the message id inside.

use std::fs::{self, File};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

/// Why the spool failed. Any of these means events could be lost, so callers stop intake.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    /// A file system operation failed.
    #[error("spool {path}: {op}: {source}")]
    Io {
        /// What was being done.
        op: &'static str,
        /// The file or directory.
        path: PathBuf,
        /// What the OS said.
        source: io::Error,
    },
}

/// One spooled event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpoolEntry {
    /// Position in the spool; replay order.
    pub key: u64,
    /// MQTT topic.
    pub topic: String,
    /// Payload exactly as it is published.
    pub payload: Vec<u8>,
}

/// The spool directory.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    next_key: u64,
}

const EXT: &str = "evt";

fn io_err<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(io::Error) -> SpoolError + 'a {
    move |source| SpoolError::Io {
        op,
        path: path.to_path_buf(),
        source,
    }
}

impl Spool {
    /// Opens (creating) the spool in `dir` and returns the events still waiting, in order.
    /// Unreadable entries are renamed `*.bad` and reported in the log, never deleted.
    pub fn open(dir: &Path) -> Result<(Spool, Vec<SpoolEntry>), SpoolError> {
        fs::create_dir_all(dir).map_err(io_err("create", dir))?;
        let mut keys = Vec::new();
        for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
            let entry = entry.map_err(io_err("list", dir))?;
            let path = entry.path();
            let name = entry.file_name().to_string_lossy().into_owned();
            if name.ends_with(".tmp") {
                // An unfinished write: its event was never handed to the broker either.
                fs::remove_file(&path).map_err(io_err("remove unfinished", &path))?;
                continue;
            }
            if let Some(key) = name
                .strip_suffix(".evt")
                .and_then(|k| k.parse::<u64>().ok())
            {
                keys.push(key);
            }
        }
        keys.sort_unstable();
        let mut pending = Vec::with_capacity(keys.len());
        for key in &keys {
            let path = dir.join(format!("{key:020}.{EXT}"));
            let bytes = fs::read(&path).map_err(io_err("read", &path))?;
            match bytes.iter().position(|b| *b == b'\n') {
                Some(nl) if std::str::from_utf8(&bytes[..nl]).is_ok() => pending.push(SpoolEntry {
                    key: *key,
                    topic: String::from_utf8_lossy(&bytes[..nl]).into_owned(),
                    payload: bytes[nl + 1..].to_vec(),
                }),
                _ => {
                    let bad = path.with_extension("bad");
                    tracing::error!(path = %path.display(), "unreadable spool entry kept as {}", bad.display());
                    fs::rename(&path, &bad).map_err(io_err("quarantine", &path))?;
                }
            }
        }
        let next_key = keys.last().map_or(0, |k| k + 1);
        Ok((
            Spool {
                dir: dir.to_path_buf(),
                next_key,
            },
            pending,
        ))
    }

    /// Writes an event durably and returns it with its key.
    pub fn append(&mut self, topic: &str, payload: &[u8]) -> Result<SpoolEntry, SpoolError> {
        let key = self.next_key;
        let path = self.path(key);
        let tmp = path.with_extension("tmp");
        let mut file = File::create(&tmp).map_err(io_err("create", &tmp))?;
        file.write_all(topic.as_bytes())
            .and_then(|()| file.write_all(b"\n"))
            .and_then(|()| file.write_all(payload))
            .map_err(io_err("write", &tmp))?;
        file.sync_all().map_err(io_err("fsync", &tmp))?;
        drop(file);
        fs::rename(&tmp, &path).map_err(io_err("rename", &path))?;
        sync_dir(&self.dir)?;
        self.next_key += 1;
        Ok(SpoolEntry {
            key,
            topic: topic.to_string(),
            payload: payload.to_vec(),
        })
    }

    /// Forgets an acknowledged event. Removing twice is fine (the second is a no-op).
    pub fn remove(&self, key: u64) -> Result<(), SpoolError> {
        let path = self.path(key);
        match fs::remove_file(&path) {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        }
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn path(&self, key: u64) -> PathBuf {
        self.dir.join(format!("{key:020}.{EXT}"))
    }
}

fn sync_dir(dir: &Path) -> Result<(), SpoolError> {
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(io_err("fsync directory", dir))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn temp_dir() -> PathBuf {
        let dir = std::env::temp_dir().join(format!("munifab-spool-{}", uuid::Uuid::new_v4()));
        fs::create_dir_all(&dir).unwrap();
        dir
    }

    #[test]
    fn appended_events_survive_a_reopen_in_order_until_removed() {
        let dir = temp_dir();
        let (mut spool, pending) = Spool::open(&dir).unwrap();
        assert!(pending.is_empty());
        let a = spool.append("t/events", b"{\"n\":1}").unwrap();
        let b = spool.append("t/events", b"{\"n\":2}").unwrap();
        let c = spool.append("t/events", b"line\nbreak").unwrap();
        spool.remove(b.key).unwrap();
        spool.remove(b.key).unwrap();
        drop(spool);

        let (mut spool, pending) = Spool::open(&dir).unwrap();
        assert_eq!(pending, vec![a, c.clone()]);
        let d = spool.append("t/events", b"{}").unwrap();
        assert!(d.key > c.key, "keys keep increasing after a restart");
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unfinished_write_is_discarded_and_a_corrupt_entry_is_kept_aside() {
        let dir = temp_dir();
        fs::write(dir.join("00000000000000000007.tmp"), b"half").unwrap();
        fs::write(dir.join("00000000000000000003.evt"), b"no newline").unwrap();
        fs::write(dir.join("00000000000000000004.evt"), b"t/x\n{}").unwrap();
        let (spool, pending) = Spool::open(&dir).unwrap();
        assert_eq!(pending.len(), 1);
        assert_eq!(pending[0].key, 4);
        assert!(!dir.join("00000000000000000007.tmp").exists());
        assert!(dir.join("00000000000000000003.bad").exists());
        assert_eq!(spool.next_key, 5);
        fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_unwritable_directory_is_an_error_naming_the_path() {
        let file = temp_dir().join("not-a-dir");
        fs::write(&file, b"x").unwrap();
        let err = Spool::open(&file).unwrap_err().to_string();
        assert!(err.contains("not-a-dir"), "{err}");
    }
}
