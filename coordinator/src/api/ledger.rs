//! `/ledger`: the production ledger's entries and reports, as JSON or CSV.
//!
//! Every member role may read the whole ledger (agents may not): the chain is only
//! verifiable by someone who can read all of it, and the pool's members are exactly who
//! should be able to check it.

use axum::extract::{Query, State};
use axum::http::header::{ACCEPT, CONTENT_TYPE};
use axum::http::{HeaderMap, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde::Deserialize;
use time::OffsetDateTime;
use time::format_description::well_known::Rfc3339;

use super::{ApiError, AppState, Caller, ErrorBody};
use crate::auth::Grant;
use crate::ledger::{Filter, Report, entries_to_csv};
use crate::scheduler::{CoopId, PoolId, SiteId};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/ledger", get(list))
        .route("/ledger/report", get(report))
}

/// Filters, paging and format of a ledger request.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct LedgerQuery {
    /// Only this cooperative's jobs.
    cooperative: Option<String>,
    /// Only jobs run through this pool.
    pool: Option<String>,
    /// Only jobs run at this site.
    site: Option<String>,
    /// Only jobs that ended at or after this instant (RFC 3339).
    from: Option<String>,
    /// Only jobs that ended before this instant (RFC 3339).
    until: Option<String>,
    /// Page size, 1..=1000 (default 100); the CSV export is never paged.
    limit: Option<u32>,
    /// Entries to skip.
    offset: Option<u64>,
    /// `json` (default) or `csv`; `Accept: text/csv` asks for CSV too.
    format: Option<String>,
}

fn id<T>(
    field: &str,
    v: Option<String>,
    parse: impl Fn(String) -> Result<T, munifab_protocol::IdError>,
) -> Result<Option<T>, ApiError> {
    v.map(|s| parse(s).map_err(|e| ApiError::bad_request(format!("`{field}`: {e}"))))
        .transpose()
}

fn instant(field: &str, v: Option<String>) -> Result<Option<OffsetDateTime>, ApiError> {
    v.map(|s| {
        OffsetDateTime::parse(&s, &Rfc3339).map_err(|e| {
            ApiError::bad_request(format!(
                "`{field}` must be an RFC 3339 time like 2026-11-01T00:00:00Z: {e}"
            ))
        })
    })
    .transpose()
}

/// What a request asked for, checked.
struct Asked {
    filter: Filter,
    limit: u32,
    offset: u64,
    csv: bool,
}

fn check(
    caller: &Caller,
    headers: &HeaderMap,
    query: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Asked, ApiError> {
    if let Grant::Agent(_) = caller.grant() {
        return Err(ApiError::forbidden("agents cannot read the ledger"));
    }
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let csv = match q.format.as_deref() {
        Some("csv") => true,
        Some("json") => false,
        Some(other) => {
            return Err(ApiError::bad_request(format!(
                "`format` must be json or csv, not {other:?}"
            )));
        }
        None => headers
            .get(ACCEPT)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.contains("text/csv")),
    };
    let filter = Filter {
        cooperative: id("cooperative", q.cooperative, CoopId::new)?,
        pool: id("pool", q.pool, PoolId::new)?,
        site: id("site", q.site, SiteId::new)?,
        from: instant("from", q.from)?,
        until: instant("until", q.until)?,
    };
    Ok(Asked {
        filter,
        limit: q.limit.unwrap_or(100),
        offset: q.offset.unwrap_or(0),
        csv,
    })
}

fn csv_response(body: String) -> Response {
    (
        [(
            CONTENT_TYPE,
            HeaderValue::from_static("text/csv; charset=utf-8"),
        )],
        body,
    )
        .into_response()
}

/// Ledger entries in `seq` order, filtered and paged: JSON `{items, total}`, or every
/// matching entry as CSV.
#[utoipa::path(get, path = "/api/v1/ledger", tag = "ledger", params(LedgerQuery),
    responses((status = 200, description = "entries (JSON page or CSV)"),
        (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn list(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let asked = check(&caller, &headers, query)?;
    if asked.csv {
        let entries = st.store.ledger_all(&asked.filter).await?;
        return Ok(csv_response(entries_to_csv(&entries)));
    }
    let page = st
        .store
        .ledger_entries(&asked.filter, asked.limit, asked.offset)
        .await?;
    Ok(Json(page).into_response())
}

/// Totals of the matching entries, overall and grouped by cooperative, pool, site and
/// month (UTC): JSON, or CSV.
#[utoipa::path(get, path = "/api/v1/ledger/report", tag = "ledger", params(LedgerQuery),
    responses((status = 200, description = "report (JSON or CSV)"),
        (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn report(
    State(st): State<AppState>,
    caller: Caller,
    headers: HeaderMap,
    query: Result<Query<LedgerQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Response, ApiError> {
    let asked = check(&caller, &headers, query)?;
    let entries = st.store.ledger_all(&asked.filter).await?;
    let report = Report::build(&entries, &asked.filter);
    if asked.csv {
        return Ok(csv_response(report.to_csv()));
    }
    Ok(Json(report).into_response())
}
