//! `/changes`: a long poll on the store's revision, so a client awaits the next change
//! instead of asking again on a timer ([`crate::store::Store::changed_since`]).
//!
//! The answer says only *that* something changed, never what: the client reads again what
//! it cares about (under its own role's view), so any token may ask.

use std::time::Duration;

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Caller, ErrorBody};

/// How long a request waits for a change when it names no `wait_ms`.
pub const DEFAULT_WAIT_MS: u64 = 25_000;
/// The longest wait a request may ask for.
pub const MAX_WAIT_MS: u64 = 60_000;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/changes", get(changes))
}

/// Query of a long poll.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ChangesQuery {
    /// The revision the client last saw. Absent: answer the current revision at once.
    after: Option<u64>,
    /// How long to wait for a change, in milliseconds (default 25000, at most 60000).
    wait_ms: Option<u64>,
}

/// The store's revision.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct Revision {
    /// Moves on every committed change the API shows; compare it for equality only.
    pub revision: u64,
}

/// Waits for a change: answers at once when the revision differs from `after` (or `after`
/// is absent), else at the next change or after `wait_ms`, when an answer equal to `after`
/// means nothing changed. Any role; it reveals only a counter. The revision belongs to
/// this coordinator process: it starts anew, at a random value, when the process does, and
/// does not move for writes made by another replica.
#[utoipa::path(get, path = "/api/v1/changes", tag = "changes", params(ChangesQuery),
    responses((status = 200, body = Revision),
        (status = 400, description = "a malformed `after` or `wait_ms`, or `wait_ms` over 60000", body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn changes(
    State(st): State<AppState>,
    _caller: Caller,
    query: Result<Query<ChangesQuery>, QueryRejection>,
) -> Result<Json<Revision>, ApiError> {
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let wait_ms = q.wait_ms.unwrap_or(DEFAULT_WAIT_MS);
    if wait_ms > MAX_WAIT_MS {
        return Err(ApiError::bad_request(format!(
            "wait_ms must be at most {MAX_WAIT_MS}, not {wait_ms}"
        )));
    }
    let revision = match q.after {
        None => st.store.revision(),
        Some(after) => {
            tokio::select! {
                r = st.store.changed_since(after, Duration::from_millis(wait_ms)) => r,
                // Graceful shutdown waits for every request: a waiting one answers now.
                () = st.shutdown.cancelled() => st.store.revision(),
            }
        }
    };
    Ok(Json(Revision { revision }))
}
