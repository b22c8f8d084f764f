//! `/artifacts/{sha256}`: uploaded files for agents, with Range support.

use axum::Router;
use axum::body::Body;
use axum::extract::{Path, State};
use axum::http::{HeaderMap, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;

use super::{ApiError, AppState, Caller, ErrorBody};
use crate::artifacts::resolve_range;
use crate::auth::Grant;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/artifacts/{sha256}", get(download))
}

/// Download an artifact (agents and admins). `Range: bytes=…` gives 206.
#[utoipa::path(get, path = "/api/v1/artifacts/{sha256}", tag = "artifacts",
    params(("sha256" = String, Path, description = "SHA-256, lower-case hex")),
    responses((status = 200, description = "the file"), (status = 206, description = "a range"),
        (status = 416, body = ErrorBody), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn download(
    State(st): State<AppState>,
    caller: Caller,
    Path(sha): Path<String>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    if !matches!(caller.grant(), Grant::Admin | Grant::Agent(_)) {
        return Err(ApiError::forbidden(format!(
            "{} cannot download artifacts",
            caller.grant()
        )));
    }
    let len = st.artifacts.size(&sha).await?;
    let range = headers.get(header::RANGE).and_then(|h| h.to_str().ok());
    let resolved = resolve_range(range, len).map_err(|()| {
        ApiError::new(
            StatusCode::RANGE_NOT_SATISFIABLE,
            "range_not_satisfiable",
            format!("range {range:?} is not satisfiable for {len} bytes"),
        )
    })?;
    let etag = format!("\"{sha}\"");
    let common = [
        (header::CONTENT_TYPE, "text/x-gcode".to_string()),
        (header::ACCEPT_RANGES, "bytes".to_string()),
        (header::ETAG, etag),
    ];
    Ok(match resolved {
        None => {
            let bytes = if len == 0 {
                Vec::new()
            } else {
                st.artifacts.read(&sha, 0, len - 1).await?
            };
            (StatusCode::OK, common, Body::from(bytes)).into_response()
        }
        Some((start, end)) => {
            let bytes = st.artifacts.read(&sha, start, end).await?;
            (
                StatusCode::PARTIAL_CONTENT,
                common,
                [(header::CONTENT_RANGE, format!("bytes {start}-{end}/{len}"))],
                Body::from(bytes),
            )
                .into_response()
        }
    })
}
