//! `/catalog` and `/designs`: sync, errors, search, detail, files by hash, and submitting
//! jobs from a design pinned to a commit.
//!
//! Catalog calls block on git and disk, so each runs in `spawn_blocking`.

use std::sync::Arc;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::http::header::CONTENT_TYPE;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use munifab_protocol::JobId;
use serde::{Deserialize, Serialize};

use super::jobs::{coop_for, may_submit, refused};
use super::{ApiError, AppState, Caller, ErrorBody};
use crate::auth::Grant;
use crate::catalog::{
    Catalog, CatalogError, CommitId, DesignKey, DesignQuery, DesignSpec, Process, ProfileId,
    Sha256, SourceName,
};
use crate::store::{Job, JobDesign, NewJob};
use crate::submission;

/// Most jobs one request may create from a design.
pub const MAX_QUANTITY: u32 = 100;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/catalog/sync", post(sync))
        .route("/catalog/errors", get(errors))
        .route("/catalog/files/{sha256}", get(file))
        .route("/designs", get(search))
        .route("/designs/{source}/{id}", get(detail))
        .route("/jobs/from-design", post(submit))
}

fn catalog(st: &AppState) -> Result<Arc<Catalog>, ApiError> {
    st.catalog.clone().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "catalog_disabled",
            "this coordinator has no design catalog (no [catalog] section in its configuration)",
        )
    })
}

fn members_only(caller: &Caller) -> Result<(), ApiError> {
    match caller.grant() {
        Grant::Agent(_) => Err(ApiError::forbidden("agents cannot read the catalog")),
        _ => Ok(()),
    }
}

/// Runs a blocking catalog call.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, CatalogError> + Send + 'static,
) -> Result<T, ApiError> {
    tokio::task::spawn_blocking(f)
        .await
        .map_err(ApiError::internal)?
        .map_err(catalog_error)
}

fn catalog_error(e: CatalogError) -> ApiError {
    let status = match &e {
        CatalogError::UnknownSource(_)
        | CatalogError::UnknownDesign(_)
        | CatalogError::UnknownCommit { .. }
        | CatalogError::FileNotFound { .. }
        | CatalogError::HashNotFound(_) => StatusCode::NOT_FOUND,
        CatalogError::AmbiguousDesign { .. }
        | CatalogError::NoGcode { .. }
        | CatalogError::InvalidDesign { .. } => StatusCode::UNPROCESSABLE_ENTITY,
        _ => return ApiError::internal(e),
    };
    let code = if status == StatusCode::NOT_FOUND {
        "not_found"
    } else {
        "design_unusable"
    };
    ApiError::new(status, code, e.to_string())
}

/// Fetch every source again and swap in the new index (admins).
#[utoipa::path(post, path = "/api/v1/catalog/sync", tag = "catalog",
    responses((status = 200, description = "the sync report: sources with commits, designs, errors")),
    security(("bearer" = [])))]
pub(super) async fn sync(State(st): State<AppState>, caller: Caller) -> Result<Response, ApiError> {
    if !caller.grant().is_admin() {
        return Err(ApiError::forbidden(format!(
            "{} cannot sync the catalog",
            caller.grant()
        )));
    }
    let catalog = catalog(&st)?;
    let now = time::OffsetDateTime::from_unix_timestamp(st.now().div_euclid(1000))
        .map_err(ApiError::internal)?;
    let report = blocking(move || Ok(catalog.sync(now))).await?;
    // The designs and each source's last sync changed, as far as `/changes` is concerned.
    st.store.bump_revision();
    Ok(Json(report).into_response())
}

/// Sources (commit, last sync, failure) and the designs left out, with their errors.
#[utoipa::path(get, path = "/api/v1/catalog/errors", tag = "catalog",
    responses((status = 200, description = "`{sources, errors}`")),
    security(("bearer" = [])))]
pub(super) async fn errors(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Response, ApiError> {
    members_only(&caller)?;
    let catalog = catalog(&st)?;
    Ok(Json(serde_json::json!({
        "sources": catalog.sources(),
        "errors": catalog.errors(),
    }))
    .into_response())
}

/// Search of the designs served now.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct SearchQuery {
    /// Words that must all appear (id, title, summary, tags, authors).
    q: Option<String>,
    /// `fdm`, `cnc` or `laser`.
    process: Option<String>,
    /// A material the design lists.
    material: Option<String>,
    /// A licence id the expression names.
    licence: Option<String>,
    /// A tag.
    tag: Option<String>,
    /// A source name.
    source: Option<String>,
    /// Page size, 1..=500 (default 50).
    limit: Option<usize>,
    /// Results to skip.
    offset: Option<usize>,
}

/// List and search designs (latest synced commit of each).
#[utoipa::path(get, path = "/api/v1/designs", tag = "catalog", params(SearchQuery),
    responses((status = 200, description = "`{total, offset, limit, items}`"),
        (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn search(
    State(st): State<AppState>,
    caller: Caller,
    query: Result<Query<SearchQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    members_only(&caller)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let catalog = catalog(&st)?;
    let process = q
        .process
        .map(|p| {
            serde_json::from_value::<Process>(serde_json::Value::String(p.clone())).map_err(|_| {
                ApiError::bad_request(format!("`process` must be fdm, cnc or laser, not {p:?}"))
            })
        })
        .transpose()?;
    let source = q
        .source
        .map(|s| {
            s.parse::<SourceName>()
                .map_err(|e| ApiError::bad_request(format!("`source`: {e}")))
        })
        .transpose()?;
    let query = DesignQuery {
        text: q.q,
        process,
        material: q.material,
        licence: q.licence,
        tag: q.tag,
        source,
        offset: q.offset.unwrap_or(0),
        limit: q.limit,
    };
    Ok(Json(catalog.search(&query)).into_response())
}

/// Which revision of a design to show.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct DetailQuery {
    /// A commit (40 hex digits); the latest synced when absent.
    commit: Option<String>,
}

/// One design: manifest, files with size and SHA-256, G-code profiles, provenance chain,
/// licence text and attribution.
#[utoipa::path(get, path = "/api/v1/designs/{source}/{id}", tag = "catalog",
    params(("source" = String, Path), ("id" = String, Path), DetailQuery),
    responses((status = 200, description = "`{design, provenance, attribution}`"),
        (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn detail(
    State(st): State<AppState>,
    caller: Caller,
    Path((source, id)): Path<(String, String)>,
    query: Result<Query<DetailQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    members_only(&caller)?;
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let catalog = catalog(&st)?;
    let key = DesignKey {
        source: source
            .parse()
            .map_err(|e| ApiError::bad_request(format!("source: {e}")))?,
        id: id
            .parse()
            .map_err(|e| ApiError::bad_request(format!("design id: {e}")))?,
    };
    let commit = q
        .commit
        .map(|c| {
            c.parse::<CommitId>()
                .map_err(|e| ApiError::bad_request(format!("`commit`: {e}")))
        })
        .transpose()?;
    let detail = blocking(move || match commit {
        Some(c) => catalog.design_at(&key, c),
        None => catalog.design(&key),
    })
    .await?;
    Ok(Json(detail).into_response())
}

/// Download any file of a synced design by its SHA-256.
#[utoipa::path(get, path = "/api/v1/catalog/files/{sha256}", tag = "catalog",
    params(("sha256" = String, Path)),
    responses((status = 200, description = "the bytes"), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn file(
    State(st): State<AppState>,
    caller: Caller,
    Path(sha): Path<String>,
) -> Result<Response, ApiError> {
    members_only(&caller)?;
    let catalog = catalog(&st)?;
    let sha: Sha256 = sha
        .parse()
        .map_err(|e| ApiError::bad_request(format!("sha256: {e}")))?;
    let bytes = blocking(move || catalog.file_by_hash(&sha)).await?;
    Ok((
        [(CONTENT_TYPE, "application/octet-stream")],
        Bytes::from(bytes),
    )
        .into_response())
}

/// A job (or several) from a design.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct FromDesign {
    /// `source/id@commit`, `source/id` (latest synced) or a bare id unique in the catalog.
    design: String,
    /// Machine profile of the G-code to use (e.g. `generic-marlin-220`).
    profile: String,
    /// How many parts: one job each (default 1, at most 100).
    #[serde(default)]
    quantity: Option<u32>,
    /// Cooperative (required for admins; others submit for their own).
    #[serde(default)]
    cooperative: Option<String>,
    /// Site the parts are delivered to.
    #[serde(default)]
    delivery_site: Option<String>,
    /// Higher runs first (default 0).
    #[serde(default)]
    priority: i64,
}

/// The jobs created.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct FromDesignCreated {
    /// `source/id@commit` as pinned.
    design: String,
    /// Attribution text of the design.
    attribution: String,
    /// One job per part.
    jobs: Vec<Job>,
}

/// Submit jobs from a design: the revision is pinned (commit and file hash stored with
/// each job), the G-code goes through the same analysis and refusal as an upload and is
/// stored content-addressed.
#[utoipa::path(post, path = "/api/v1/jobs/from-design", tag = "jobs",
    request_body = FromDesign,
    responses((status = 201, body = FromDesignCreated),
        (status = 404, body = ErrorBody, description = "unknown design, source or commit"),
        (status = 422, body = ErrorBody, description = "no G-code for the profile, or G-code refused")),
    security(("bearer" = [])))]
pub(super) async fn submit(
    State(st): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<FromDesignCreated>), ApiError> {
    may_submit(caller.grant())?;
    let req: FromDesign = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let coop = coop_for(caller.grant(), req.cooperative)?;
    let quantity = req.quantity.unwrap_or(1);
    if !(1..=MAX_QUANTITY).contains(&quantity) {
        return Err(ApiError::bad_request(format!(
            "`quantity` must be 1..={MAX_QUANTITY}, not {quantity}"
        )));
    }
    if let Some(site) = &req.delivery_site {
        crate::scheduler::SiteId::new(site.as_str())
            .map_err(|e| ApiError::bad_request(format!("`delivery_site`: {e}")))?;
    }
    let spec: DesignSpec = req
        .design
        .parse()
        .map_err(|e| ApiError::bad_request(format!("`design`: {e}")))?;
    let profile: ProfileId = req
        .profile
        .parse()
        .map_err(|e| ApiError::bad_request(format!("`profile`: {e}")))?;
    let catalog = catalog(&st)?;
    let pinned = blocking(move || catalog.resolve(&spec, &profile)).await?;
    let analysed = submission::analyse(pinned.bytes.clone())
        .await
        .map_err(refused)?;
    let sha = st.artifacts.put(&analysed.bytes).await?;
    debug_assert_eq!(sha, pinned.sha256.to_string());
    let design = JobDesign {
        source: pinned.design.source.to_string(),
        id: pinned.design.id.to_string(),
        commit: pinned.commit.to_string(),
        profile: pinned.profile.to_string(),
        path: pinned.path.clone(),
        licence: pinned.licence.clone(),
        authors: pinned.authors.iter().map(|a| a.name.clone()).collect(),
    };
    let name = format!("{}@{} ({})", pinned.design, pinned.commit, pinned.profile);
    let mut jobs = Vec::with_capacity(quantity as usize);
    for _ in 0..quantity {
        let job = st
            .store
            .submit_job(
                NewJob {
                    id: JobId::random(),
                    coop: coop.clone(),
                    name: name.clone(),
                    submitted_by: caller.0.id.clone(),
                    artifact: sha.clone(),
                    size: analysed.bytes.len() as u64,
                    requirements: analysed.requirements.clone(),
                    analysis: analysed.summary.clone(),
                    priority: req.priority,
                    design: Some(design.clone()),
                    delivery_site: req.delivery_site.clone(),
                },
                st.now(),
            )
            .await?;
        jobs.push(job);
    }
    st.kick.notify_one();
    Ok((
        StatusCode::CREATED,
        Json(FromDesignCreated {
            design: format!("{}@{}", pinned.design, pinned.commit),
            attribution: pinned.attribution,
            jobs,
        }),
    ))
}
