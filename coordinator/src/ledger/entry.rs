//! Ledger entries, the hash chain, and its verification.

use std::fmt;
use std::str::FromStr;

use munifab_protocol::JobId;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};
use time::format_description::well_known::Rfc3339;
use time::{OffsetDateTime, UtcOffset};

use super::canonical::Canon;
use crate::scheduler::{CoopId, MachineKey, PoolId, SiteId};

/// Version of the canonical encoding; part of every hashed entry.
pub const ENCODING_VERSION: u64 = 1;

/// Largest integer the canonical form admits (2^53 - 1), so every JSON reader agrees.
pub const MAX_CANONICAL_INT: u64 = (1 << 53) - 1;

/// A SHA-256 digest, written as 64 lower-case hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct EntryHash(pub [u8; 32]);

impl EntryHash {
    /// The `prev_hash` of the first entry: 32 zero bytes.
    pub const GENESIS: EntryHash = EntryHash([0; 32]);

    /// SHA-256 of `bytes`.
    pub fn of(bytes: &[u8]) -> Self {
        Self(Sha256::digest(bytes).into())
    }
}

impl fmt::Display for EntryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for EntryHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "EntryHash({self})")
    }
}

/// A string that is not 64 hex digits.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a SHA-256 hash (64 hex digits): {0:?}")]
pub struct BadHash(pub String);

impl FromStr for EntryHash {
    type Err = BadHash;
    fn from_str(s: &str) -> Result<Self, BadHash> {
        let mut out = [0u8; 32];
        if s.len() != 64 || s.bytes().any(|b| b.is_ascii_uppercase()) {
            return Err(BadHash(s.to_string()));
        }
        hex::decode_to_slice(s, &mut out).map_err(|_| BadHash(s.to_string()))?;
        Ok(Self(out))
    }
}

impl TryFrom<String> for EntryHash {
    type Error = BadHash;
    fn try_from(s: String) -> Result<Self, BadHash> {
        s.parse()
    }
}

impl From<EntryHash> for String {
    fn from(h: EntryHash) -> String {
        h.to_string()
    }
}

/// How a job ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The part was made.
    Completed,
    /// The machine or the job failed part-way.
    Failed,
    /// Someone stopped it.
    Cancelled,
}

impl Outcome {
    /// The name used in JSON and CSV.
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Completed => "completed",
            Outcome::Failed => "failed",
            Outcome::Cancelled => "cancelled",
        }
    }
}

/// The open design a job was made from, pinned to a commit.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct DesignRef {
    /// The design source (repository) name, as configured in the catalog.
    pub source: String,
    /// The design's id within the source.
    pub id: String,
    /// The exact git commit the job was made from.
    pub commit: String,
    /// SPDX licence expression.
    pub licence: String,
    /// Authors, as listed in the manifest.
    pub authors: Vec<String>,
}

impl fmt::Display for DesignRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}@{}", self.source, self.id, self.commit)
    }
}

/// What the coordinator knows when a job ends; [`append`] turns it into an [`Entry`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EntryDraft {
    /// The job.
    pub job: JobId,
    /// The design it was made from; `None` for a maker's own G-code.
    pub design: Option<DesignRef>,
    /// The requesting cooperative.
    pub cooperative: CoopId,
    /// The maker who submitted it (user id).
    pub maker: String,
    /// The pool the machine was used through.
    pub pool: PoolId,
    /// The machine's site.
    pub site: SiteId,
    /// The machine.
    pub machine: MachineKey,
    /// Start of the run (recorded to the whole second, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub started_at: OffsetDateTime,
    /// End of the run (recorded to the whole second, UTC).
    #[serde(with = "time::serde::rfc3339")]
    pub ended_at: OffsetDateTime,
    /// Machine time charged.
    pub machine_seconds: u64,
    /// Material used, upper case (`PLA`, `PLYWOOD`), if known.
    pub material: Option<String>,
    /// Material consumed in milligrams; see [`prorated_material_mg`].
    pub material_mg: u64,
    /// Energy estimate in watt-hours; see [`energy_wh`].
    pub energy_wh: u64,
    /// How it ended.
    pub outcome: Outcome,
}

/// One ledger entry: a draft sealed into the chain.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Position in the chain, from 1; the entry's id.
    pub seq: u64,
    /// The recorded facts.
    #[serde(flatten)]
    pub record: EntryDraft,
    /// `hash` of the previous entry, [`EntryHash::GENESIS`] for the first.
    pub prev_hash: EntryHash,
    /// SHA-256 of [`Entry::canonical_json`].
    pub hash: EntryHash,
}

/// Why a draft cannot be sealed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum DraftError {
    /// The run ends before it starts.
    #[error("job {job} ends ({ended}) before it starts ({started})")]
    EndsBeforeStart {
        /// The job.
        job: JobId,
        /// Its start, RFC 3339.
        started: String,
        /// Its end, RFC 3339.
        ended: String,
    },
    /// No maker named.
    #[error("job {0}: the maker is empty")]
    EmptyMaker(JobId),
    /// A quantity too large for the canonical form.
    #[error("job {job}: {field} = {value} exceeds 2^53 - 1")]
    TooLarge {
        /// The job.
        job: JobId,
        /// The field.
        field: &'static str,
        /// Its value.
        value: u64,
    },
    /// A time outside what RFC 3339 can write (years 0000..=9999).
    #[error("job {job}: {field} is outside the years 0000..=9999")]
    TimeOutOfRange {
        /// The job.
        job: JobId,
        /// The field.
        field: &'static str,
    },
    /// The previous entry's sequence number is already the largest allowed.
    #[error("the ledger is full (sequence {0})")]
    SequenceExhausted(u64),
}

/// Material consumed by a job, in milligrams.
///
/// `full_grams` comes from the G-code analysis; a failed or cancelled job is charged the
/// fraction it got through (`progress`, 0..=1, clamped; a non-finite value counts as 0).
/// Negative or non-finite grams count as 0.
pub fn prorated_material_mg(full_grams: f64, outcome: Outcome, progress: f64) -> u64 {
    let full = if full_grams.is_finite() {
        full_grams.max(0.0)
    } else {
        0.0
    };
    let fraction = match outcome {
        Outcome::Completed => 1.0,
        Outcome::Failed | Outcome::Cancelled if progress.is_finite() => progress.clamp(0.0, 1.0),
        Outcome::Failed | Outcome::Cancelled => 0.0,
    };
    ((full * fraction * 1000.0).round() as u64).min(MAX_CANONICAL_INT)
}

/// Energy estimate in watt-hours: the machine profile's average power × machine time,
/// rounded to the nearest watt-hour. Negative or non-finite watts count as 0.
pub fn energy_wh(profile_watts: f64, machine_seconds: u64) -> u64 {
    let watts = if profile_watts.is_finite() {
        profile_watts.max(0.0)
    } else {
        0.0
    };
    ((watts * machine_seconds as f64 / 3600.0).round() as u64).min(MAX_CANONICAL_INT)
}

fn utc_seconds(t: OffsetDateTime) -> OffsetDateTime {
    t.to_offset(UtcOffset::UTC)
        .replace_nanosecond(0)
        .expect("zero nanoseconds is always valid")
}

fn rfc3339(t: OffsetDateTime) -> Option<String> {
    t.to_offset(UtcOffset::UTC).format(&Rfc3339).ok()
}

/// Seals `draft` as the entry after `prev` (`None`: the first entry of the ledger).
///
/// Times are recorded in UTC to the whole second, so that what a database stores and gives
/// back is exactly what was hashed.
pub fn append(prev: Option<&Entry>, draft: EntryDraft) -> Result<Entry, DraftError> {
    let mut record = draft;
    let job = record.job;
    record.started_at = utc_seconds(record.started_at);
    record.ended_at = utc_seconds(record.ended_at);
    for (field, t) in [
        ("started_at", record.started_at),
        ("ended_at", record.ended_at),
    ] {
        if !(0..=9999).contains(&t.year()) {
            return Err(DraftError::TimeOutOfRange { job, field });
        }
    }
    if record.ended_at < record.started_at {
        return Err(DraftError::EndsBeforeStart {
            job,
            started: rfc3339(record.started_at).unwrap_or_default(),
            ended: rfc3339(record.ended_at).unwrap_or_default(),
        });
    }
    if record.maker.is_empty() {
        return Err(DraftError::EmptyMaker(job));
    }
    for (field, value) in [
        ("machine_seconds", record.machine_seconds),
        ("material_mg", record.material_mg),
        ("energy_wh", record.energy_wh),
    ] {
        if value > MAX_CANONICAL_INT {
            return Err(DraftError::TooLarge { job, field, value });
        }
    }
    let (seq, prev_hash) = match prev {
        None => (1, EntryHash::GENESIS),
        Some(p) if p.seq >= MAX_CANONICAL_INT => {
            return Err(DraftError::SequenceExhausted(p.seq));
        }
        Some(p) => (p.seq + 1, p.hash),
    };
    let mut entry = Entry {
        seq,
        record,
        prev_hash,
        hash: EntryHash::GENESIS,
    };
    entry.hash = entry
        .compute_hash()
        .expect("a validated entry always encodes");
    Ok(entry)
}

/// Why an entry's content cannot be put in canonical form (only possible for an entry
/// that was altered outside [`append`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{field} cannot be written canonically")]
pub struct Unencodable {
    /// The offending field.
    pub field: &'static str,
}

impl Entry {
    /// The canonical JSON of this entry without its `hash` member (see
    /// [`canonical`](super::canonical) for the rules); `hash` is its SHA-256.
    pub fn canonical_json(&self) -> Result<String, Unencodable> {
        let r = &self.record;
        let int = |field: &'static str, v: u64| {
            if v > MAX_CANONICAL_INT {
                Err(Unencodable { field })
            } else {
                Ok(Canon::Int(v))
            }
        };
        let time = |field: &'static str, t: OffsetDateTime| {
            rfc3339(t).map(Canon::Str).ok_or(Unencodable { field })
        };
        let design = r.design.as_ref().map(|d| {
            Canon::Obj(vec![
                ("source", Canon::str(&d.source)),
                ("id", Canon::str(&d.id)),
                ("commit", Canon::str(&d.commit)),
                ("licence", Canon::str(&d.licence)),
                (
                    "authors",
                    Canon::Arr(d.authors.iter().map(Canon::str).collect()),
                ),
            ])
        });
        let value = Canon::Obj(vec![
            ("v", Canon::Int(ENCODING_VERSION)),
            ("seq", int("seq", self.seq)?),
            ("job", Canon::str(r.job.to_string())),
            ("design", Canon::opt(design)),
            ("cooperative", Canon::str(r.cooperative.as_str())),
            ("maker", Canon::str(&r.maker)),
            ("pool", Canon::str(r.pool.as_str())),
            ("site", Canon::str(r.site.as_str())),
            (
                "machine",
                Canon::Obj(vec![
                    ("agent", Canon::str(r.machine.agent.as_str())),
                    ("machine", Canon::str(r.machine.machine.as_str())),
                ]),
            ),
            ("started_at", time("started_at", r.started_at)?),
            ("ended_at", time("ended_at", r.ended_at)?),
            (
                "machine_seconds",
                int("machine_seconds", r.machine_seconds)?,
            ),
            (
                "material",
                Canon::opt(r.material.as_deref().map(Canon::str)),
            ),
            ("material_mg", int("material_mg", r.material_mg)?),
            ("energy_wh", int("energy_wh", r.energy_wh)?),
            ("outcome", Canon::str(r.outcome.as_str())),
            ("prev_hash", Canon::str(self.prev_hash.to_string())),
        ]);
        let mut out = String::with_capacity(768);
        value.write(&mut out);
        Ok(out)
    }

    /// SHA-256 of the canonical JSON: what `hash` must be.
    pub fn compute_hash(&self) -> Result<EntryHash, Unencodable> {
        Ok(EntryHash::of(self.canonical_json()?.as_bytes()))
    }
}

/// Where and why a chain stops verifying.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("ledger broken at entry {seq} (position {index}): {why}")]
pub struct BrokenLink {
    /// Position in the list given to the verifier, from 0.
    pub index: usize,
    /// The `seq` (id) stored in that entry.
    pub seq: u64,
    /// What is wrong.
    pub why: LinkFault,
}

/// What is wrong with an entry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkFault {
    /// The entry is not the next in sequence: one was deleted, inserted or moved.
    #[error("expected sequence number {expected}, found {found}")]
    OutOfSequence {
        /// The number that should be here.
        expected: u64,
        /// The number stored.
        found: u64,
    },
    /// `prev_hash` does not name the entry before it.
    #[error("prev_hash is {found}, but the previous entry's hash is {expected}")]
    WrongPrevious {
        /// Hash of the previous entry (or genesis).
        expected: EntryHash,
        /// `prev_hash` stored.
        found: EntryHash,
    },
    /// The content was changed after sealing: it no longer hashes to `hash`.
    #[error("content hashes to {computed}, but the entry says {stored}")]
    Tampered {
        /// `hash` stored.
        stored: EntryHash,
        /// Hash of the content as it is now.
        computed: EntryHash,
    },
    /// The content cannot even be encoded (an out-of-range number or time).
    #[error("{0}")]
    Unencodable(Unencodable),
}

/// Checks entries one at a time, so a store can stream a long ledger through it.
#[derive(Debug, Clone)]
pub struct ChainVerifier {
    next_seq: u64,
    prev_hash: EntryHash,
    index: usize,
}

impl Default for ChainVerifier {
    fn default() -> Self {
        Self::new()
    }
}

impl ChainVerifier {
    /// A verifier expecting the first entry of a ledger.
    pub fn new() -> Self {
        Self {
            next_seq: 1,
            prev_hash: EntryHash::GENESIS,
            index: 0,
        }
    }

    /// A verifier expecting the entry after `anchor`, an entry already trusted (for example
    /// the last one verified before, or one whose hash a member published).
    pub fn after(anchor: &Entry) -> Self {
        Self {
            next_seq: anchor.seq.saturating_add(1),
            prev_hash: anchor.hash,
            index: 0,
        }
    }

    /// Checks the next entry.
    pub fn push(&mut self, entry: &Entry) -> Result<(), BrokenLink> {
        let fail = |why| BrokenLink {
            index: self.index,
            seq: entry.seq,
            why,
        };
        if entry.seq != self.next_seq {
            return Err(fail(LinkFault::OutOfSequence {
                expected: self.next_seq,
                found: entry.seq,
            }));
        }
        if entry.prev_hash != self.prev_hash {
            return Err(fail(LinkFault::WrongPrevious {
                expected: self.prev_hash,
                found: entry.prev_hash,
            }));
        }
        let computed = entry
            .compute_hash()
            .map_err(|e| fail(LinkFault::Unencodable(e)))?;
        if computed != entry.hash {
            return Err(fail(LinkFault::Tampered {
                stored: entry.hash,
                computed,
            }));
        }
        self.next_seq = entry.seq.saturating_add(1);
        self.prev_hash = entry.hash;
        self.index += 1;
        Ok(())
    }

    /// Entries verified so far.
    pub fn count(&self) -> usize {
        self.index
    }

    /// Hash of the last verified entry ([`EntryHash::GENESIS`] if none): publish it, and a
    /// later truncation of the ledger is caught by comparing.
    pub fn head(&self) -> EntryHash {
        self.prev_hash
    }
}

/// Verifies a whole ledger from its first entry; `Ok(n)` is the number of entries.
pub fn verify(entries: &[Entry]) -> Result<usize, BrokenLink> {
    let mut v = ChainVerifier::new();
    for e in entries {
        v.push(e)?;
    }
    Ok(v.count())
}
