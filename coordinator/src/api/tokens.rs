//! `/tokens`: create, list and revoke API tokens (admins only).

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::routing::{delete, get};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

use super::{ApiError, AppState, Caller, ErrorBody};
use crate::auth::{Grant, Role};
use crate::store::{NewToken, TokenRecord};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/tokens", get(list).post(create))
        .route("/tokens/{id}", delete(revoke))
}

fn admin_only(caller: &Caller) -> Result<(), ApiError> {
    if caller.grant().is_admin() {
        Ok(())
    } else {
        Err(ApiError::forbidden(format!(
            "{} cannot manage tokens",
            caller.grant()
        )))
    }
}

/// All tokens (never their secrets).
#[utoipa::path(get, path = "/api/v1/tokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenRecord>)), security(("bearer" = [])))]
pub(super) async fn list(
    State(st): State<AppState>,
    caller: Caller,
) -> Result<Json<Vec<TokenRecord>>, ApiError> {
    admin_only(&caller)?;
    Ok(Json(st.store.list_tokens().await?))
}

/// A token to create.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct CreateToken {
    /// `admin`, `coop-admin`, `maker`, `operator` or `agent`.
    role: String,
    /// Cooperative, site or agent id (none for admin).
    scope: Option<String>,
    /// Who or what holds it.
    #[serde(default)]
    label: String,
    /// For agent tokens: the site the agent belongs to.
    site: Option<String>,
}

/// A created token: the secret is shown this once.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct CreatedToken {
    /// The bearer token (and, for agents, the MQTT password).
    token: String,
    /// The stored record.
    record: TokenRecord,
}

/// Create a token; its secret is in the response only.
#[utoipa::path(post, path = "/api/v1/tokens", tag = "tokens", request_body = CreateToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn create(
    State(st): State<AppState>,
    caller: Caller,
    body: Bytes,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    admin_only(&caller)?;
    let req: CreateToken = serde_json::from_slice(&body)
        .map_err(|e| ApiError::bad_request(format!("invalid JSON body: {e}")))?;
    let role: Role = req
        .role
        .parse()
        .map_err(|e: crate::auth::GrantError| ApiError::bad_request(e.to_string()))?;
    let grant =
        Grant::new(role, req.scope.as_deref()).map_err(|e| ApiError::bad_request(e.to_string()))?;
    let now = st.now();
    if let Grant::Agent(agent) = &grant {
        st.store
            .register_agent(agent, req.site.as_deref(), now)
            .await?;
    } else if req.site.is_some() {
        return Err(ApiError::bad_request("`site` applies to agent tokens only"));
    }
    let (record, token) = st
        .store
        .create_token(
            &NewToken {
                grant,
                label: req.label,
            },
            now,
        )
        .await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { token, record })))
}

/// Revoke a token (idempotent).
#[utoipa::path(delete, path = "/api/v1/tokens/{id}", tag = "tokens",
    params(("id" = String, Path)),
    responses((status = 200, body = TokenRecord), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn revoke(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<TokenRecord>, ApiError> {
    admin_only(&caller)?;
    Ok(Json(st.store.revoke_token(&id, st.now()).await?))
}
