//! `/cooperatives`, `/sites`, `/pools`, `/quotas`, `/audit`: the cooperative model the
//! scheduler reads. Admins change everything; a coop-admin renames its own cooperative and
//! reads the rest. Every change is audited with the caller's token.

use axum::extract::{Path, Query, State};
use axum::routing::{get, put};
use axum::{Json, Router};
use bytes::Bytes;
use serde::Deserialize;
use serde::de::DeserializeOwned;

use super::{ApiError, AppState, Caller, ErrorBody};
use crate::auth::Grant;
use crate::scheduler::{CoopId, MachineKey, PoolId, RegionId, SiteId};
use crate::store::{AuditRecord, CooperativeRecord, PoolRecord, QuotaRecord, SiteRecord};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/cooperatives", get(list_cooperatives))
        .route("/cooperatives/{id}", put(put_cooperative))
        .route("/sites", get(list_sites))
        .route("/sites/{id}", put(put_site))
        .route("/pools", get(list_pools))
        .route("/pools/{id}", put(put_pool))
        .route("/quotas", get(list_quotas))
        .route("/quotas/{cooperative}", put(put_quota))
        .route("/audit", get(list_audit))
}

fn actor(caller: &Caller) -> String {
    if caller.0.label.is_empty() {
        caller.0.id.clone()
    } else {
        format!("{} ({})", caller.0.id, caller.0.label)
    }
}

fn admin(caller: &Caller, what: &str) -> Result<(), ApiError> {
    if caller.grant().is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "{} cannot {what}",
            caller.grant()
        )))
    }
}

fn coop_reader(caller: &Caller) -> Result<(), ApiError> {
    match caller.grant() {
        Grant::Admin | Grant::CoopAdmin(_) => Ok(()),
        g => Err(ApiError::forbidden(format!(
            "{g} cannot read the cooperative model"
        ))),
    }
}

fn body<T: DeserializeOwned>(bytes: &Bytes) -> Result<T, ApiError> {
    serde_json::from_slice(bytes)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))
}

fn slug<T>(
    what: &str,
    s: &str,
    parse: impl Fn(String) -> Result<T, munifab_protocol::IdError>,
) -> Result<T, ApiError> {
    parse(s.to_string()).map_err(|e| ApiError::bad_request(format!("{what} {s:?}: {e}")))
}

/// Body of a cooperative change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CooperativeBody {
    /// Display name.
    name: String,
}

/// Cooperatives (admins and coop-admins).
#[utoipa::path(get, path = "/api/v1/cooperatives", tag = "cooperatives",
    responses((status = 200, body = Vec<CooperativeRecord>)), security(("bearer" = [])))]
pub(super) async fn list_cooperatives(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<CooperativeRecord>>, ApiError> {
    coop_reader(&caller)?;
    Ok(Json(st.store.list_cooperatives().await?))
}

/// Create or rename a cooperative (admins; a coop-admin its own).
#[utoipa::path(put, path = "/api/v1/cooperatives/{id}", tag = "cooperatives",
    params(("id" = String, Path)), request_body = CooperativeBody,
    responses((status = 200, body = CooperativeRecord), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn put_cooperative(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<CooperativeRecord>, ApiError> {
    match caller.grant() {
        Grant::Admin => {}
        Grant::CoopAdmin(c) if *c == id => {}
        g => {
            return Err(ApiError::forbidden(format!(
                "{g} cannot change cooperative {id}"
            )));
        }
    }
    slug("cooperative", &id, CoopId::new)?;
    let b: CooperativeBody = body(&bytes)?;
    let rec = CooperativeRecord { id, name: b.name };
    st.store
        .put_cooperative(&rec, &actor(&caller), st.now())
        .await?;
    Ok(Json(rec))
}

/// Body of a site change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct SiteBody {
    /// Display name.
    name: String,
    /// Region id.
    region: String,
    /// Latitude, degrees (-90..=90).
    lat: f64,
    /// Longitude, degrees (-180..=180).
    lon: f64,
}

/// Sites (every member role).
#[utoipa::path(get, path = "/api/v1/sites", tag = "cooperatives",
    responses((status = 200, body = Vec<SiteRecord>)), security(("bearer" = [])))]
pub(super) async fn list_sites(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<SiteRecord>>, ApiError> {
    if let Grant::Agent(_) = caller.grant() {
        return Err(ApiError::forbidden("agents cannot list sites"));
    }
    Ok(Json(st.store.list_sites().await?))
}

/// Create or change a site (admins).
#[utoipa::path(put, path = "/api/v1/sites/{id}", tag = "cooperatives",
    params(("id" = String, Path)), request_body = SiteBody,
    responses((status = 200, body = SiteRecord), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn put_site(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<SiteRecord>, ApiError> {
    admin(&caller, "change sites")?;
    slug("site", &id, SiteId::new)?;
    let b: SiteBody = body(&bytes)?;
    slug("region", &b.region, RegionId::new)?;
    if !((-90.0..=90.0).contains(&b.lat) && (-180.0..=180.0).contains(&b.lon)) {
        return Err(ApiError::bad_request(
            "lat must be within -90..=90 and lon within -180..=180 degrees",
        ));
    }
    let rec = SiteRecord {
        id,
        name: b.name,
        region: b.region,
        lat: b.lat,
        lon: b.lon,
    };
    st.store.put_site(&rec, &actor(&caller), st.now()).await?;
    // The plan depends on these: let the dispatcher look again.
    st.kick.notify_one();
    Ok(Json(rec))
}

/// Body of a pool change: replaces its machines and members.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PoolBody {
    /// Display name.
    name: String,
    /// Machines contributed, `agent/machine`.
    machines: Vec<String>,
    /// Member cooperatives and their whole-number weights.
    members: std::collections::BTreeMap<String, u32>,
}

/// Pools (admins and coop-admins).
#[utoipa::path(get, path = "/api/v1/pools", tag = "cooperatives",
    responses((status = 200, body = Vec<PoolRecord>)), security(("bearer" = [])))]
pub(super) async fn list_pools(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<PoolRecord>>, ApiError> {
    coop_reader(&caller)?;
    Ok(Json(st.store.list_pools().await?))
}

/// Create or replace a pool (admins).
#[utoipa::path(put, path = "/api/v1/pools/{id}", tag = "cooperatives",
    params(("id" = String, Path)), request_body = PoolBody,
    responses((status = 200, body = PoolRecord), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn put_pool(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
    bytes: Bytes,
) -> Result<Json<PoolRecord>, ApiError> {
    admin(&caller, "change pools")?;
    slug("pool", &id, PoolId::new)?;
    let b: PoolBody = body(&bytes)?;
    for m in &b.machines {
        m.parse::<MachineKey>()
            .map_err(|e| ApiError::bad_request(e.to_string()))?;
    }
    for c in b.members.keys() {
        slug("member cooperative", c, CoopId::new)?;
    }
    let rec = PoolRecord {
        id,
        name: b.name,
        machines: b.machines,
        members: b.members,
    };
    st.store.put_pool(&rec, &actor(&caller), st.now()).await?;
    // The plan depends on these: let the dispatcher look again.
    st.kick.notify_one();
    Ok(Json(rec))
}

/// Body of a quota change.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct QuotaBody {
    /// Machine-hours per period.
    machine_hours: u64,
    /// Period length in days (default 30).
    #[serde(default)]
    period_days: Option<u32>,
    /// Start of the first period (Unix ms; default now).
    #[serde(default)]
    period_start_ms: Option<i64>,
}

/// Quotas (admins and coop-admins).
#[utoipa::path(get, path = "/api/v1/quotas", tag = "cooperatives",
    responses((status = 200, body = Vec<QuotaRecord>)), security(("bearer" = [])))]
pub(super) async fn list_quotas(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<QuotaRecord>>, ApiError> {
    coop_reader(&caller)?;
    Ok(Json(st.store.list_quotas().await?))
}

/// Set a cooperative's quota (admins).
#[utoipa::path(put, path = "/api/v1/quotas/{cooperative}", tag = "cooperatives",
    params(("cooperative" = String, Path)), request_body = QuotaBody,
    responses((status = 200, body = QuotaRecord), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn put_quota(
    State(st): State<AppState>,
    caller: Caller,
    Path(cooperative): Path<String>,
    bytes: Bytes,
) -> Result<Json<QuotaRecord>, ApiError> {
    admin(&caller, "change quotas")?;
    slug("cooperative", &cooperative, CoopId::new)?;
    let b: QuotaBody = body(&bytes)?;
    let period_days = b.period_days.unwrap_or(30);
    if period_days == 0 {
        return Err(ApiError::bad_request("period_days must be at least 1"));
    }
    let rec = QuotaRecord {
        cooperative,
        machine_hours: b.machine_hours,
        period_days,
        period_start_ms: b.period_start_ms.unwrap_or_else(|| st.now()),
    };
    st.store.put_quota(&rec, &actor(&caller), st.now()).await?;
    // The plan depends on these: let the dispatcher look again.
    st.kick.notify_one();
    Ok(Json(rec))
}

/// Query of the audit trail.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct AuditQuery {
    /// Only changes of this subject (`pool:valley`, `machine:lab-a/mk3`).
    subject: Option<String>,
    /// Rows, newest first (1..=1000, default 100).
    limit: Option<u32>,
}

/// Who changed what, when (admins and coop-admins).
#[utoipa::path(get, path = "/api/v1/audit", tag = "cooperatives", params(AuditQuery),
    responses((status = 200, body = Vec<AuditRecord>)), security(("bearer" = [])))]
pub(super) async fn list_audit(
    State(st): State<AppState>,
    caller: Caller,
    query: Result<Query<AuditQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<AuditRecord>>, ApiError> {
    coop_reader(&caller)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    Ok(Json(
        st.store
            .list_audit(q.subject.as_deref(), q.limit.unwrap_or(100))
            .await?,
    ))
}
