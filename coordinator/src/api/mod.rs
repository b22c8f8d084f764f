//! The HTTP API under `/api/v1`: one `router()` per resource, merged in [`app`]; one
//! [`ApiError`]; bearer-token [`Caller`] checked by every handler against its role and
//! scope; the OpenAPI document generated from the handlers.

mod agents;
mod artifacts;
mod catalog;
mod changes;
mod coop;
mod error;
mod jobs;
mod ledger;
mod machines;
mod ops;
mod tokens;

use std::sync::Arc;

use axum::Router;
use axum::extract::FromRequestParts;
use axum::http::header::AUTHORIZATION;
use axum::http::request::Parts;
use tokio::sync::Notify;
use tokio_util::sync::CancellationToken;
use utoipa::OpenApi;

pub use changes::{DEFAULT_WAIT_MS, MAX_WAIT_MS};
pub use error::{ApiError, ErrorBody, ErrorDetail};

use crate::artifacts::ArtifactStore;
use crate::auth::Grant;
use std::collections::BTreeMap;

use crate::catalog::{Catalog, MachineProfile, ProfileId};
use crate::clock::Clock;
use crate::metrics::Metrics;
use crate::store::{Store, TokenRecord};

/// API limits and settings.
#[derive(Debug, Clone)]
pub struct ApiSettings {
    /// Largest accepted G-code upload, bytes.
    pub max_upload_bytes: u64,
}

impl Default for ApiSettings {
    fn default() -> Self {
        Self {
            max_upload_bytes: 64 * 1024 * 1024,
        }
    }
}

/// What every handler can reach. Cheap to clone.
#[derive(Clone)]
pub struct AppState {
    /// The database.
    pub store: Store,
    /// Uploaded files.
    pub artifacts: ArtifactStore,
    /// Limits.
    pub settings: ApiSettings,
    /// Counters for `/metrics`.
    pub metrics: Arc<Metrics>,
    /// Woken when there is new work for the dispatcher (a job queued, a command queued).
    pub kick: Arc<Notify>,
    /// Time source.
    pub clock: Clock,
    /// The design catalog, when configured.
    pub catalog: Option<Arc<Catalog>>,
    /// Machine profiles (`[catalog] profiles_dir`), for binding machines to a profile.
    pub profiles: Arc<BTreeMap<ProfileId, MachineProfile>>,
    /// Fires when the server shuts down: a waiting `GET /changes` answers then, so it does
    /// not hold up the graceful shutdown.
    pub shutdown: CancellationToken,
}

impl std::fmt::Debug for AppState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AppState")
            .field("store", &self.store)
            .field("artifacts", &self.artifacts)
            .field("settings", &self.settings)
            .finish_non_exhaustive()
    }
}

impl AppState {
    fn now(&self) -> i64 {
        (self.clock)()
    }

    /// The machine profile `id` of the profiles folder; the error names the known ones.
    fn profile(&self, id: &str) -> Result<&MachineProfile, String> {
        self.profiles
            .iter()
            .find(|(k, _)| k.as_str() == id)
            .map(|(_, p)| p)
            .ok_or_else(|| {
                let known: Vec<&str> = self.profiles.keys().map(|k| k.as_str()).collect();
                format!("no machine profile {id:?} (known: {})", known.join(", "))
            })
    }
}

/// The whole HTTP application. Tests call it without a server.
pub fn app(state: AppState) -> Router {
    let api = Router::new()
        .merge(jobs::router(&state.settings))
        .merge(machines::router())
        .merge(agents::router())
        .merge(tokens::router())
        .merge(artifacts::router())
        .merge(ledger::router())
        .merge(catalog::router())
        .merge(coop::router())
        .merge(changes::router())
        .route(
            "/openapi.json",
            axum::routing::get(|| async { axum::Json(ApiDoc::openapi()) }),
        );
    Router::new()
        .nest("/api/v1", api)
        .merge(ops::router())
        .with_state(state)
}

/// The authenticated caller of a request.
#[derive(Debug, Clone)]
pub struct Caller(pub TokenRecord);

impl Caller {
    /// Role and scope.
    pub fn grant(&self) -> &Grant {
        &self.0.grant
    }
}

impl FromRequestParts<AppState> for Caller {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, ApiError> {
        let header = parts
            .headers
            .get(AUTHORIZATION)
            .ok_or_else(|| ApiError::unauthorized("missing Authorization: Bearer <token>"))?;
        let token = header
            .to_str()
            .ok()
            .and_then(|h| h.strip_prefix("Bearer "))
            .map(str::trim)
            .filter(|t| !t.is_empty())
            .ok_or_else(|| ApiError::unauthorized("Authorization must be Bearer <token>"))?;
        let record = state
            .store
            .token_by_secret(token)
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown or revoked token"))?;
        Ok(Caller(record))
    }
}

/// The OpenAPI 3 document of the API.
#[derive(OpenApi)]
#[openapi(
    info(title = "MuniFab coordinator API", version = "1"),
    paths(
        jobs::submit,
        jobs::list,
        jobs::get_job,
        jobs::cancel,
        jobs::pause,
        jobs::resume,
        jobs::events,
        machines::list,
        machines::ready,
        machines::set_profile,
        agents::list,
        tokens::list,
        tokens::create,
        tokens::revoke,
        artifacts::download,
        ledger::list,
        ledger::report,
        catalog::sync,
        catalog::errors,
        catalog::search,
        catalog::detail,
        catalog::file,
        catalog::submit,
        coop::list_cooperatives,
        coop::put_cooperative,
        coop::list_sites,
        coop::put_site,
        coop::list_pools,
        coop::put_pool,
        coop::list_quotas,
        coop::put_quota,
        coop::list_audit,
        changes::changes,
    ),
    components(schemas(ErrorBody, ErrorDetail)),
    modifiers(&BearerAuth)
)]
#[derive(Debug)]
pub struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}
