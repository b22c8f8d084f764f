//! The coordinator's database: one API over SQLite (default) and PostgreSQL.
//!
//! Everything goes through sqlx's `Any` driver with portable SQL (`$n` placeholders, which
//! SQLite also understands; TEXT and BIGINT columns only; times as Unix
//! milliseconds; JSON as TEXT), so one code path serves both backends and the same test
//! suite proves both. Migrations are embedded in the binary and applied by [`Store::migrate`].
//!
//! Job state changes go through one function, [`jobs`]' `move_job`, which checks the
//! lifecycle ([`crate::lifecycle`]), guards against a concurrent change, and writes the
//! event row in the caller's transaction.
//!
//! Two ways to learn of committed writes made through a store handle and its clones: the
//! dispatcher's change notes ([`changes`]: what changed among the scheduler's inputs), and
//! the revision ([`revision`]: *that* something the HTTP API shows changed, awaited by
//! `GET /api/v1/changes`). Transactions that write what the API shows end in
//! [`Store::commit`], which moves the revision after the commit.

mod changes;
mod coop;
mod fleet;
mod jobs;
mod ledger;
mod outbox;
mod revision;
mod tokens;

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::str::FromStr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use sqlx::any::{AnyConnectOptions, AnyPoolOptions};
use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::{AnyPool, AssertSqlSafe, SqlSafeStr};

pub use changes::{ChangeWatch, Changes, MachineChange};
pub use coop::{AuditRecord, CooperativeRecord, PlanInputs, PoolRecord, QuotaRecord, SiteRecord};
pub use fleet::{AgentRecord, MachineRecord};
pub use jobs::JobDesign;
pub use jobs::{CommandOutcome, EventOutcome, Job, JobEvent, JobFilter, LostPolicy, NewJob, Page};
pub use ledger::{DEFAULT_POOL, LedgerCheck, LedgerPage, UNKNOWN_SITE, default_watts};
pub use outbox::{OutboxCommand, QueuedCommand};
pub use tokens::{NewToken, TokenRecord};

use crate::lifecycle::IllegalMove;

/// Which database a [`Store`] talks to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// A SQLite file (WAL mode).
    Sqlite,
    /// A PostgreSQL server.
    Postgres,
}

/// Why a store operation failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    /// The database URL names no supported backend.
    #[error("unsupported database URL {0:?}: use sqlite://PATH or postgres://…")]
    UnsupportedUrl(String),
    /// The database refused or failed a statement.
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    /// Applying the embedded migrations failed.
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    /// The named row does not exist.
    #[error("{what} {id} not found")]
    NotFound {
        /// Kind of row (`job`, `token`, `machine`).
        what: &'static str,
        /// Its id.
        id: String,
    },
    /// The lifecycle forbids the requested move.
    #[error(transparent)]
    IllegalMove(#[from] IllegalMove),
    /// The row changed under this operation (another writer won); retry with fresh data.
    #[error("job {0} changed concurrently")]
    Conflict(String),
    /// The machine still holds a job in the coordinator's view: a placement from an outdated
    /// picture, or a readiness confirmation before the job's end was applied.
    #[error("machine {machine} still holds job {job} ({state})")]
    MachineBusy {
        /// `agent/machine`.
        machine: String,
        /// The job on it.
        job: String,
        /// That job's state.
        state: String,
    },
    /// The machine cannot start the job now (agent offline, not reporting `ready`, or not
    /// confirmed by a person): a placement from an outdated picture of the fleet.
    #[error("machine {machine} cannot take the job now: {why}")]
    MachineUnavailable {
        /// `agent/machine`.
        machine: String,
        /// Why not.
        why: &'static str,
    },
    /// A ledger entry could not be sealed (its figures are out of range).
    #[error("ledger: {0}")]
    Ledger(#[from] crate::ledger::DraftError),
    /// Appending to the ledger kept colliding with other writers.
    #[error("ledger: gave up after {0} colliding appends")]
    LedgerContention(u32),
    /// A stored value could not be read back (a bug or a hand-edited database).
    #[error("corrupt {column} in the database: {detail}")]
    Corrupt {
        /// The column that failed to decode.
        column: &'static str,
        /// What was wrong.
        detail: String,
    },
}

/// The database handle: cheap to clone, shared by the API, the MQTT link and the dispatcher.
#[derive(Debug, Clone)]
pub struct Store {
    pool: AnyPool,
    backend: Backend,
    /// Decoded machine capabilities by their stored JSON text: the scheduler's snapshot
    /// reads every free machine on every pass, and a fleet has few distinct capability
    /// sets. Keyed by the text itself, so it can never answer for a changed machine.
    capabilities: Arc<Mutex<HashMap<String, munifab_protocol::Capabilities>>>,
    /// Who is told about committed changes to the scheduler's inputs ([`changes`]).
    watchers: Arc<changes::Watchers>,
    /// The revision every committed write the API shows moves ([`revision`]).
    revision: Arc<tokio::sync::watch::Sender<u64>>,
    /// The URL the pool connects to (for [`Store::checkpoint_periodically`]'s own
    /// connection).
    url: Arc<str>,
}

/// WAL pages after which SQLite itself checkpoints at the end of a commit. Large, because
/// the server checkpoints from a connection of its own ([`Store::checkpoint_periodically`]):
/// SQLite's automatic checkpoint runs inside whichever commit crosses the threshold (about
/// one assignment in a hundred) and syncs the database file there, which was most of the
/// dispatch latency's tail. It stays on as a bound for processes that run no checkpointer
/// (the command-line tools, tests).
const WAL_AUTOCHECKPOINT_PAGES: u32 = 16_384;

/// Distinct capability texts kept decoded before the cache starts over.
const CAPABILITIES_CACHED: usize = 4096;

const CORE_SQL: &str = include_str!("../../migrations/0001_core.sql");
const LEDGER_SQL: &str = include_str!("../../migrations/0002_ledger.sql");
const COOP_SQL: &str = include_str!("../../migrations/0003_cooperatives.sql");

impl Store {
    /// Connects to `url` (`sqlite://path`, created if missing, or `postgres://…`). Does not
    /// migrate; call [`Store::migrate`].
    pub async fn connect(url: &str) -> Result<Store, StoreError> {
        sqlx::any::install_default_drivers();
        let backend = if url.starts_with("sqlite:") {
            Backend::Sqlite
        } else if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            Backend::Postgres
        } else {
            return Err(StoreError::UnsupportedUrl(url.to_string()));
        };
        let url = match backend {
            Backend::Sqlite if !url.contains('?') => format!("{url}?mode=rwc"),
            _ => url.to_string(),
        };
        let options = AnyConnectOptions::from_str(&url)?;
        let shared_url: Arc<str> = Arc::from(url.as_str());
        // SQLite allows one writer; a single connection serialises writers in the pool
        // instead of failing a transaction that upgrades from read to write under WAL.
        let max = match backend {
            Backend::Sqlite => 1,
            Backend::Postgres => 8,
        };
        let mut pool_options = AnyPoolOptions::new()
            .max_connections(max)
            .acquire_timeout(Duration::from_secs(30));
        if backend == Backend::Sqlite {
            // Per-connection settings, so a connection the pool replaces gets them too. WAL
            // lets readers (`migrate`, a second process) work beside the writer; NORMAL
            // syncs at checkpoints rather than on every commit (in WAL mode a crash of the
            // process loses no committed transaction; a power cut may lose the last ones).
            pool_options = pool_options.after_connect(|conn, _| {
                Box::pin(async move {
                    sqlx::query("PRAGMA journal_mode=WAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA synchronous=NORMAL")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query("PRAGMA busy_timeout=5000")
                        .execute(&mut *conn)
                        .await?;
                    sqlx::query(AssertSqlSafe(format!(
                        "PRAGMA wal_autocheckpoint={WAL_AUTOCHECKPOINT_PAGES}"
                    )))
                    .execute(&mut *conn)
                    .await?;
                    Ok(())
                })
            });
        }
        let pool = pool_options.connect_with(options).await?;
        Ok(Store {
            pool,
            backend,
            capabilities: Arc::default(),
            watchers: Arc::default(),
            revision: Arc::new(revision::channel()),
            url: shared_url,
        })
    }

    /// SQLite only (returns at once for PostgreSQL): until `shutdown`, copies the
    /// write-ahead log back into the database file every `every`, from a connection of its
    /// own. A passive checkpoint neither waits for nor blocks the pool's writer, so the
    /// file sync it ends with is never paid inside a job's transaction. A failed
    /// checkpoint is logged and tried again at the next turn; SQLite's own threshold
    /// ([`WAL_AUTOCHECKPOINT_PAGES`]) still bounds the log meanwhile.
    pub async fn checkpoint_periodically(
        &self,
        every: Duration,
        shutdown: tokio_util::sync::CancellationToken,
    ) {
        use sqlx::Connection;
        if self.backend != Backend::Sqlite {
            return;
        }
        let mut conn: Option<sqlx::AnyConnection> = None;
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                () = shutdown.cancelled() => break,
                _ = tick.tick() => {}
            }
            if conn.is_none() {
                match sqlx::AnyConnection::connect(&self.url).await {
                    Ok(c) => conn = Some(c),
                    Err(e) => {
                        tracing::warn!(error = %e, "cannot open the checkpoint connection");
                        continue;
                    }
                }
            }
            let Some(c) = conn.as_mut() else { continue };
            let started = std::time::Instant::now();
            match sqlx::query_as::<_, (i64, i64, i64)>("PRAGMA wal_checkpoint(PASSIVE)")
                .fetch_one(&mut *c)
                .await
            {
                Ok((busy, log, copied)) => tracing::trace!(
                    busy,
                    log,
                    copied,
                    took_us = started.elapsed().as_micros() as u64,
                    "WAL checkpoint"
                ),
                Err(e) => {
                    tracing::warn!(error = %e, "WAL checkpoint failed; trying again later");
                    conn = None;
                }
            }
        }
        if let Some(c) = conn {
            let _ = c.close().await;
        }
    }

    /// Opens (creating if needed) the SQLite file at `path`.
    pub async fn open_sqlite(path: &Path) -> Result<Store, StoreError> {
        Store::connect(&format!("sqlite://{}", path.display())).await
    }

    /// The backend in use.
    pub fn backend(&self) -> Backend {
        self.backend
    }

    /// Applies the embedded migrations that have not run yet.
    pub async fn migrate(&self) -> Result<(), StoreError> {
        let serial = match self.backend {
            Backend::Sqlite => "INTEGER PRIMARY KEY AUTOINCREMENT",
            Backend::Postgres => "BIGSERIAL PRIMARY KEY",
        };
        let core = CORE_SQL.replace("__SERIAL__", serial);
        let migration = |version, name, sql: String| {
            Migration::new(
                version,
                Cow::Borrowed(name),
                MigrationType::Simple,
                AssertSqlSafe(sql).into_sql_str(),
                false,
            )
        };
        let migrator = Migrator::with_migrations(vec![
            migration(1, "core", core),
            migration(2, "ledger", LEDGER_SQL.to_string()),
            migration(3, "cooperatives", COOP_SQL.replace("__SERIAL__", serial)),
        ]);
        migrator.run(&self.pool).await?;
        Ok(())
    }

    /// Closes every connection (at shutdown).
    pub async fn close(&self) {
        self.pool.close().await;
    }

    /// A cheap query proving the database answers (for `/healthz`).
    pub async fn ping(&self) -> Result<(), StoreError> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Runs one statement as given (administration and test set-up, e.g. creating a schema).
    /// Watchers rebuild everything afterwards: the statement may have changed anything.
    pub async fn execute_raw(&self, sql: &str) -> Result<(), StoreError> {
        sqlx::query(AssertSqlSafe(sql.to_string()))
            .execute(&self.pool)
            .await?;
        self.note_with(|c| c.everything = true);
        self.bump_revision();
        Ok(())
    }

    pub(crate) fn pool(&self) -> &AnyPool {
        &self.pool
    }

    /// Decodes a machine's stored capabilities, from the cache when the same text was
    /// decoded before.
    pub(crate) fn decode_capabilities(
        &self,
        text: &str,
    ) -> Result<munifab_protocol::Capabilities, StoreError> {
        let mut cache = self.capabilities.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(c) = cache.get(text) {
            return Ok(c.clone());
        }
        let c: munifab_protocol::Capabilities =
            serde_json::from_str(text).map_err(|e| corrupt("machines.capabilities", e))?;
        if cache.len() >= CAPABILITIES_CACHED {
            cache.clear();
        }
        cache.insert(text.to_string(), c.clone());
        Ok(c)
    }

    /// Begins a transaction that will write. On SQLite it takes the write lock at once
    /// (`BEGIN IMMEDIATE`, waiting up to the busy timeout), so what it reads stays current
    /// until it commits, even with a second process on the same file; a deferred
    /// transaction that read before another writer committed could not upgrade.
    pub(crate) async fn begin_write(
        &self,
    ) -> Result<sqlx::Transaction<'static, sqlx::Any>, StoreError> {
        Ok(match self.backend {
            Backend::Sqlite => self.pool.begin_with("BEGIN IMMEDIATE").await?,
            Backend::Postgres => self.pool.begin().await?,
        })
    }
}

fn corrupt(column: &'static str, detail: impl ToString) -> StoreError {
    StoreError::Corrupt {
        column,
        detail: detail.to_string(),
    }
}
