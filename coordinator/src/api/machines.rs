//! `/machines`: the fleet with live state; an operator marks a machine ready.

use axum::body::Bytes;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post, put};
use axum::{Json, Router};
use munifab_protocol::{AgentId, Clear, Command, MachineId, Message};
use serde::Deserialize;

use super::{ApiError, AppState, Caller, ErrorBody};
use crate::auth::Grant;
use crate::store::{MachineRecord, OutboxCommand};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/machines", get(list))
        .route("/machines/{agent}/{machine}/ready", post(ready))
        .route("/machines/{agent}/{machine}/profile", put(set_profile))
}

/// Query of the machine list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct MachineQuery {
    /// Only machines of this site.
    site: Option<String>,
}

/// Machines with live state (operators see their site's).
#[utoipa::path(get, path = "/api/v1/machines", tag = "machines", params(MachineQuery),
    responses((status = 200, body = Vec<MachineRecord>)), security(("bearer" = [])))]
pub(super) async fn list(
    State(st): State<AppState>,
    caller: Caller,
    query: Result<Query<MachineQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Vec<MachineRecord>>, ApiError> {
    let site = match caller.grant() {
        Grant::Agent(_) => return Err(ApiError::forbidden("agents cannot list machines")),
        Grant::Operator(s) => Some(s.clone()),
        _ => {
            let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
            q.site
        }
    };
    Ok(Json(st.store.list_machines(site.as_deref()).await?))
}

/// Body of a ready confirmation.
#[derive(Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReadyBody {
    /// Stock or filament was loaded too.
    #[serde(default)]
    stock_loaded: bool,
}

/// Confirm that a machine's bed is cleared (and stock loaded): sends `clear` to its agent,
/// which reports the machine `ready`. Operators of its site and admins only.
#[utoipa::path(post, path = "/api/v1/machines/{agent}/{machine}/ready", tag = "machines",
    params(("agent" = String, Path), ("machine" = String, Path)),
    request_body(content = Option<ReadyBody>),
    responses((status = 202, body = MachineRecord), (status = 404, body = ErrorBody),
        (status = 409, description = "a job is still on the machine (`machine_busy`)", body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn ready(
    State(st): State<AppState>,
    caller: Caller,
    Path((agent, machine)): Path<(String, String)>,
    body: Bytes,
) -> Result<(StatusCode, Json<MachineRecord>), ApiError> {
    if !matches!(caller.grant(), Grant::Admin | Grant::Operator(_)) {
        return Err(ApiError::forbidden(format!(
            "{} cannot confirm machines ready",
            caller.grant()
        )));
    }
    let agent = AgentId::new(agent).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let machine = MachineId::new(machine).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let record = st.store.machine(&agent, &machine).await?;
    if !caller.grant().may_run_site(record.site.as_deref()) {
        return Err(ApiError::forbidden(format!(
            "{} does not run site {}",
            caller.grant(),
            record.site.as_deref().unwrap_or("(none)")
        )));
    }
    let body: ReadyBody = if body.is_empty() {
        ReadyBody::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?
    };
    let label = if caller.0.label.is_empty() {
        caller.0.id.clone()
    } else {
        caller.0.label.clone()
    };
    // Recorded here, with who and when: the scheduler trusts this, not the agent's word.
    st.store
        .confirm_ready(
            &agent,
            &machine,
            body.stock_loaded,
            &format!("{} ({label})", caller.0.id),
            st.now(),
        )
        .await?;
    let cmd = OutboxCommand {
        agent: agent.clone(),
        machine: machine.clone(),
        message: Message::stamped(Command::Clear(Clear {
            machine: machine.clone(),
            confirmed_by: label,
            stock_loaded: body.stock_loaded,
        })),
    };
    st.store.enqueue_command(&cmd, "clear", st.now()).await?;
    st.kick.notify_one();
    let record = st.store.machine(&agent, &machine).await?;
    Ok((StatusCode::ACCEPTED, Json(record)))
}

/// Body of a profile binding.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ProfileBody {
    /// A machine profile id from the coordinator's profiles folder.
    profile: String,
}

/// Bind a machine to a machine profile: its average draw (`[power] watts`) is what the
/// ledger's energy estimate uses. Admins and operators of its site.
#[utoipa::path(put, path = "/api/v1/machines/{agent}/{machine}/profile", tag = "machines",
    params(("agent" = String, Path), ("machine" = String, Path)),
    request_body = ProfileBody,
    responses((status = 200, body = MachineRecord), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn set_profile(
    State(st): State<AppState>,
    caller: Caller,
    Path((agent, machine)): Path<(String, String)>,
    body: Bytes,
) -> Result<Json<MachineRecord>, ApiError> {
    if !matches!(caller.grant(), Grant::Admin | Grant::Operator(_)) {
        return Err(ApiError::forbidden(format!(
            "{} cannot bind machine profiles",
            caller.grant()
        )));
    }
    let agent = AgentId::new(agent).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let machine = MachineId::new(machine).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let record = st.store.machine(&agent, &machine).await?;
    if !caller.grant().may_run_site(record.site.as_deref()) {
        return Err(ApiError::forbidden(format!(
            "{} does not run site {}",
            caller.grant(),
            record.site.as_deref().unwrap_or("(none)")
        )));
    }
    let body: ProfileBody = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let profile = st.profile(&body.profile).map_err(ApiError::not_found)?;
    let watts = profile.power.watts.max(0.0).round() as u64;
    st.store
        .set_machine_profile(&agent, &machine, profile.id.as_str(), watts)
        .await?;
    Ok(Json(record))
}
