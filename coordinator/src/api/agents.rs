//! `/agents`: workshop PCs and whether they are online.

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};

use super::{ApiError, AppState, Caller};
use crate::auth::Grant;
use crate::store::AgentRecord;

pub(super) fn router() -> Router<AppState> {
    Router::new().route("/agents", get(list))
}

/// Agents with their online state (operators see their site's; makers none).
#[utoipa::path(get, path = "/api/v1/agents", tag = "agents",
    responses((status = 200, body = Vec<AgentRecord>)), security(("bearer" = [])))]
pub(super) async fn list(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<AgentRecord>>, ApiError> {
    let site = match caller.grant() {
        Grant::Admin | Grant::CoopAdmin(_) => None,
        Grant::Operator(s) => Some(s.as_str()),
        g @ (Grant::Maker(_) | Grant::Agent(_)) => {
            return Err(ApiError::forbidden(format!("{g} cannot list agents")));
        }
    };
    Ok(Json(st.store.list_agents(site).await?))
}
