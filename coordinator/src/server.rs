//! `serve`: the store, the broker (embedded or external), the MQTT link, the dispatcher
//! and the HTTP API, started in order and stopped in order.
//!
//! Shutdown (one cancellation token): HTTP stops accepting and finishes in-flight
//! requests (a waiting `GET /api/v1/changes` answers at once); the dispatcher stops
//! between two steps; the link disconnects (with a DISCONNECT to an external broker; the
//! embedded one just sees the socket close); the database closes. The embedded rumqttd
//! thread ends with the process.

use std::net::SocketAddr;
use std::sync::Arc;

use tokio::sync::{Notify, mpsc};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use crate::api::{self, ApiSettings, AppState};
use crate::artifacts::ArtifactStore;
use crate::catalog::{Catalog, MachineProfile};
use crate::clock::Clock;
use crate::config::{CatalogSettings, MqttMode, Settings};
use crate::dispatch::Dispatcher;
use crate::metrics::Metrics;
use crate::mqtt::{broker, link};
use crate::store::{Store, StoreError};

/// Why the coordinator could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The data directory could not be created.
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        /// The directory.
        path: std::path::PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The database could not be opened or migrated.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The embedded broker did not start.
    #[error(transparent)]
    Broker(#[from] broker::BrokerError),
    /// The design catalog could not be opened.
    #[error("design catalog: {0}")]
    Catalog(#[from] crate::catalog::CatalogError),
    /// The machine profiles could not be loaded.
    #[error("machine profiles: {0}")]
    Profiles(#[from] crate::catalog::ProfileError),
    /// The HTTP address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Http {
        /// The address.
        addr: SocketAddr,
        /// The IO error.
        source: std::io::Error,
    },
}

/// A running coordinator.
#[derive(Debug)]
pub struct Server {
    http_addr: SocketAddr,
    mqtt_addr: Option<SocketAddr>,
    store: Store,
    kick: Arc<Notify>,
    http: JoinHandle<()>,
    dispatcher: JoinHandle<()>,
    link: JoinHandle<()>,
    catalog_sync: Option<JoinHandle<()>>,
    checkpoints: JoinHandle<()>,
}

/// How often the SQLite write-ahead log is copied back into the database file
/// ([`Store::checkpoint_periodically`]).
const WAL_CHECKPOINT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

/// Messages from agents waiting for the dispatcher. When it is full, the embedded broker's
/// front holds agents' connections back, and the MQTT client stops reading from an external
/// broker (which keeps them in the coordinator's session).
const INBOX: usize = 4096;

impl Server {
    /// Where the HTTP API listens.
    pub fn http_addr(&self) -> SocketAddr {
        self.http_addr
    }

    /// Where agents connect (embedded broker only).
    pub fn mqtt_addr(&self) -> Option<SocketAddr> {
        self.mqtt_addr
    }

    /// The store (for tests and tools running beside the server).
    pub fn store(&self) -> &Store {
        &self.store
    }

    /// Wakes the dispatcher (after writing to the store beside the API, e.g. in a
    /// benchmark or an import tool).
    pub fn kick(&self) {
        self.kick.notify_one();
    }

    /// Waits until everything stopped (after the shutdown token fired).
    pub async fn wait(self) {
        let _ = self.http.await;
        let _ = self.dispatcher.await;
        let _ = self.link.await;
        if let Some(sync) = self.catalog_sync {
            let _ = sync.await;
        }
        let _ = self.checkpoints.await;
        self.store.close().await;
        tracing::info!("coordinator stopped");
    }
}

/// Opens the database and applies migrations (also what `migrate` runs alone).
pub async fn open_store(settings: &Settings) -> Result<Store, ServeError> {
    if settings.database_url.starts_with("sqlite:") {
        std::fs::create_dir_all(&settings.data_dir).map_err(|source| ServeError::DataDir {
            path: settings.data_dir.clone(),
            source,
        })?;
    }
    let store = Store::connect(&settings.database_url).await?;
    store.migrate().await?;
    Ok(store)
}

/// Opens the design catalog (its mirrors, and the machine profiles its G-code is checked
/// against) and, if `sync` is set, fetches every source. Blocks: call it off the runtime.
pub fn open_catalog(
    settings: &CatalogSettings,
    sync: bool,
    now: i64,
) -> Result<Catalog, ServeError> {
    let mut catalog = Catalog::open(settings.config.clone())?;
    if let Some(dir) = &settings.profiles_dir {
        let profiles = MachineProfile::load_dir(dir)?;
        catalog = catalog.with_profiles(profiles.values());
    }
    if sync {
        let now = time::OffsetDateTime::from_unix_timestamp(now.div_euclid(1000))
            .unwrap_or(time::OffsetDateTime::UNIX_EPOCH);
        let report = catalog.sync(now);
        for s in &report.sources {
            match &s.error {
                None => {
                    tracing::info!(source = %s.name, commit = ?s.commit.map(|c| c.to_string()), designs = s.designs, "catalog source synced")
                }
                Some(e) => {
                    tracing::warn!(source = %s.name, error = %e, "catalog source failed to sync")
                }
            }
        }
        for e in &report.errors {
            tracing::warn!(source = %e.source, "{}", e.message);
        }
    }
    Ok(catalog)
}

/// Starts everything; returns once the coordinator accepts HTTP and MQTT.
pub async fn start(
    settings: Settings,
    clock: Clock,
    shutdown: CancellationToken,
) -> Result<Server, ServeError> {
    tracing::info!(
        data_dir = %settings.data_dir.display(),
        database = %settings.redacted_database_url(),
        http = %settings.http_listen,
        mqtt = ?settings.mqtt,
        grace_s = settings.dispatch.offline_grace.as_secs(),
        lost_policy = ?settings.dispatch.lost_policy,
        "starting coordinator"
    );
    let store = open_store(&settings).await?;
    let profiles = match settings
        .catalog
        .as_ref()
        .and_then(|c| c.profiles_dir.as_ref())
    {
        Some(dir) => MachineProfile::load_dir(dir)?,
        None => Default::default(),
    };
    let catalog = match settings.catalog.clone() {
        None => None,
        Some(c) => {
            let now = clock();
            let opened =
                tokio::task::spawn_blocking(move || open_catalog(&c, c.sync_on_start, now))
                    .await
                    .expect("opening the catalog does not panic")?;
            Some(Arc::new(opened))
        }
    };
    let catalog_sync = match (
        &catalog,
        settings.catalog.as_ref().and_then(|c| c.sync_interval),
    ) {
        (Some(catalog), Some(every)) => Some(tokio::spawn(crate::catalog::sync_periodically(
            catalog.clone(),
            every.duration(),
            clock.clone(),
            shutdown.clone(),
            {
                // Every sync records when each source was synced, which the API shows.
                let store = store.clone();
                move |_| store.bump_revision()
            },
        ))),
        _ => None,
    };
    std::fs::create_dir_all(settings.data_dir.join("artifacts")).map_err(|source| {
        ServeError::DataDir {
            path: settings.data_dir.join("artifacts"),
            source,
        }
    })?;
    let listener = tokio::net::TcpListener::bind(settings.http_listen)
        .await
        .map_err(|source| ServeError::Http {
            addr: settings.http_listen,
            source,
        })?;
    let http_addr = listener.local_addr().map_err(|source| ServeError::Http {
        addr: settings.http_listen,
        source,
    })?;
    let public_url = settings
        .public_url
        .clone()
        .unwrap_or_else(|| format!("http://{http_addr}"));

    // The dispatcher's inbox: what agents publish, from the embedded broker's front or from
    // the MQTT client subscribed to an external broker.
    let (tx, rx) = mpsc::channel(INBOX);
    let (link_settings, mqtt_addr) = match &settings.mqtt {
        MqttMode::Embedded { listen } => {
            let b = broker::start(*listen, store.clone(), tx.clone(), shutdown.clone()).await?;
            let internal = b.internal_addr();
            (
                link::LinkSettings {
                    host: internal.ip().to_string(),
                    port: internal.port(),
                    client_id: settings.mqtt_client_id.clone(),
                    credentials: Some((
                        broker::COORDINATOR_USER.to_string(),
                        b.coordinator_password().to_string(),
                    )),
                    filters: Vec::new(),
                    disconnect: false,
                },
                Some(b.public_addr()),
            )
        }
        MqttMode::External {
            host,
            port,
            credentials,
        } => (
            link::LinkSettings {
                host: host.clone(),
                port: *port,
                client_id: settings.mqtt_client_id.clone(),
                credentials: credentials.clone(),
                filters: munifab_protocol::topic::filter::coordinator().to_vec(),
                disconnect: true,
            },
            None,
        ),
    };

    let metrics = Arc::new(Metrics::default());
    let kick = Arc::new(Notify::new());
    let (client, events) = link::client(&link_settings);
    let link = tokio::spawn(link::run(
        client.clone(),
        events,
        link_settings.filters.clone(),
        link_settings.disconnect,
        tx,
        shutdown.clone(),
    ));
    let mut dispatch_settings = settings.dispatch.clone();
    dispatch_settings.public_url = public_url;
    let dispatcher = Dispatcher::new(
        store.clone(),
        client,
        metrics.clone(),
        clock.clone(),
        dispatch_settings,
    );
    let dispatcher = tokio::spawn(dispatcher.run(rx, kick.clone(), shutdown.clone()));
    let checkpoints = {
        let (store, stop) = (store.clone(), shutdown.clone());
        tokio::spawn(async move {
            store
                .checkpoint_periodically(WAL_CHECKPOINT_EVERY, stop)
                .await
        })
    };

    let state = AppState {
        catalog,
        profiles: Arc::new(profiles),
        store: store.clone(),
        artifacts: ArtifactStore::new(settings.data_dir.join("artifacts")),
        settings: ApiSettings {
            max_upload_bytes: settings.max_upload_bytes,
        },
        metrics,
        kick: kick.clone(),
        clock,
        shutdown: shutdown.clone(),
    };
    let app = api::app(state);
    let stop = shutdown.clone();
    let http = tokio::spawn(async move {
        if let Err(e) = axum::serve(listener, app)
            .with_graceful_shutdown(async move { stop.cancelled().await })
            .await
        {
            tracing::error!(error = %e, "HTTP server failed");
        }
    });
    tracing::info!(%http_addr, mqtt = ?mqtt_addr, "coordinator ready");
    Ok(Server {
        http_addr,
        mqtt_addr,
        store,
        kick,
        http,
        dispatcher,
        link,
        catalog_sync,
        checkpoints,
    })
}
