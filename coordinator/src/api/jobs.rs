//! `/jobs`: submit by G-code upload, list, get, cancel, pause, resume, events.

use axum::extract::{DefaultBodyLimit, Multipart, Path, Query, State};
use axum::http::StatusCode;
use axum::routing::{get, post};
use axum::{Json, Router};
use munifab_protocol::JobId;
use serde::{Deserialize, Serialize};

use super::{ApiError, ApiSettings, AppState, Caller, ErrorBody};
use crate::auth::Grant;
use crate::lifecycle::JobState;
use crate::store::{CommandOutcome, Job, JobEvent, JobFilter, NewJob};
use crate::submission;

/// Multipart overhead allowed on top of the file limit (boundaries, other fields).
const FORM_OVERHEAD: u64 = 64 * 1024;

pub(super) fn router(settings: &ApiSettings) -> Router<AppState> {
    let limit = (settings.max_upload_bytes + FORM_OVERHEAD) as usize;
    Router::new()
        .route(
            "/jobs",
            post(submit).get(list).layer(DefaultBodyLimit::max(limit)),
        )
        .route("/jobs/{id}", get(get_job))
        .route("/jobs/{id}/cancel", post(cancel))
        .route("/jobs/{id}/pause", post(pause))
        .route("/jobs/{id}/resume", post(resume))
        .route("/jobs/{id}/events", get(events))
}

/// The multipart form of a submission (for the OpenAPI document).
#[derive(Debug, utoipa::ToSchema)]
#[allow(dead_code)]
pub struct SubmitForm {
    /// The G-code file.
    #[schema(format = Binary, value_type = String)]
    file: Vec<u8>,
    /// Cooperative (required for admins; others submit for their own).
    coop: Option<String>,
    /// Priority, higher first (default 0).
    priority: Option<i64>,
    /// A machine profile id (`GET /designs` lists the profiles G-code is made for): the
    /// file is also checked against its limits (build volume, temperatures, spindle).
    profile: Option<String>,
}

pub(super) fn refused(r: submission::Refused) -> ApiError {
    let details = match &r {
        submission::Refused::Findings(f) => serde_json::json!({ "findings": f }),
        submission::Refused::Empty => serde_json::json!({ "findings": [] }),
    };
    ApiError::new(
        StatusCode::UNPROCESSABLE_ENTITY,
        "gcode_refused",
        r.to_string(),
    )
    .with_details(details)
}

/// The cooperative a submission is for: admins must name one (an id); others submit for
/// their own, and naming another is forbidden.
pub(super) fn coop_for(grant: &Grant, coop: Option<String>) -> Result<String, ApiError> {
    match (grant, coop) {
        (Grant::Admin, Some(c)) if !c.is_empty() => {
            // The cooperative ends up in URLs, reports and the ledger: an id, like scopes.
            crate::scheduler::CoopId::new(c.as_str())
                .map_err(|e| ApiError::bad_request(format!("`coop`: {e}")))?;
            Ok(c)
        }
        (Grant::Admin, _) => Err(ApiError::bad_request(
            "admins must name the cooperative (`coop` field)",
        )),
        (g, Some(c)) if !c.is_empty() && g.coop() != Some(c.as_str()) => Err(ApiError::forbidden(
            format!("{g} cannot submit for cooperative {c}"),
        )),
        (g, _) => Ok(g.coop().expect("checked by may_submit").to_string()),
    }
}

pub(super) fn may_submit(grant: &Grant) -> Result<(), ApiError> {
    match grant {
        Grant::Admin | Grant::CoopAdmin(_) | Grant::Maker(_) => Ok(()),
        _ => Err(ApiError::forbidden(format!("{grant} cannot submit jobs"))),
    }
}

/// Submit a job: upload G-code; it is analysed, refused with its findings if it has
/// errors, stored by hash, and queued.
#[utoipa::path(post, path = "/api/v1/jobs", tag = "jobs",
    request_body(content = SubmitForm, content_type = "multipart/form-data"),
    responses(
        (status = 201, body = Job, description = "queued"),
        (status = 413, body = ErrorBody, description = "file over the size limit"),
        (status = 422, body = ErrorBody, description = "G-code refused; findings in details"),
    ),
    security(("bearer" = [])))]
pub(super) async fn submit(
    State(st): State<AppState>,
    caller: Caller,
    mut form: Multipart,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    may_submit(caller.grant())?;
    let limit = st.settings.max_upload_bytes;
    let too_large = |e: axum::extract::multipart::MultipartError| {
        if e.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::too_large(limit)
        } else {
            ApiError::bad_request(format!("invalid multipart body: {}", e.body_text()))
        }
    };
    let mut file: Option<(String, Vec<u8>)> = None;
    let mut coop: Option<String> = None;
    let mut priority = 0_i64;
    let mut profile: Option<String> = None;
    while let Some(mut field) = form.next_field().await.map_err(too_large)? {
        match field.name().unwrap_or_default() {
            "file" => {
                let name = field.file_name().unwrap_or("upload.gcode").to_string();
                let mut bytes = Vec::new();
                while let Some(chunk) = field.chunk().await.map_err(too_large)? {
                    if (bytes.len() + chunk.len()) as u64 > limit {
                        return Err(ApiError::too_large(limit));
                    }
                    bytes.extend_from_slice(&chunk);
                }
                file = Some((name, bytes));
            }
            "coop" => coop = Some(field.text().await.map_err(too_large)?.trim().to_string()),
            "priority" => {
                let text = field.text().await.map_err(too_large)?;
                priority = text.trim().parse().map_err(|_| {
                    ApiError::bad_request(format!("priority must be an integer, not {text:?}"))
                })?;
            }
            "profile" => profile = Some(field.text().await.map_err(too_large)?.trim().to_string()),
            other => {
                return Err(ApiError::bad_request(format!(
                    "unknown form field {other:?} (file, coop, priority, profile)"
                )));
            }
        }
    }
    let (name, bytes) =
        file.ok_or_else(|| ApiError::bad_request("the form has no `file` field"))?;
    let coop = coop_for(caller.grant(), coop)?;
    let profile = profile.map(|p| analysis_profile(&st, &p)).transpose()?;
    let analysed = submission::analyse_against(bytes, profile)
        .await
        .map_err(refused)?;
    let sha = st.artifacts.put(&analysed.bytes).await?;
    let job = st
        .store
        .submit_job(
            NewJob {
                id: JobId::random(),
                coop,
                name,
                submitted_by: caller.0.id.clone(),
                artifact: sha,
                size: analysed.bytes.len() as u64,
                requirements: analysed.requirements,
                analysis: analysed.summary,
                priority,
                design: None,
                delivery_site: None,
            },
            st.now(),
        )
        .await?;
    st.kick.notify_one();
    Ok((StatusCode::CREATED, Json(job)))
}

/// The machine profile `id` of the coordinator's profiles folder, as the analysis reads it.
fn analysis_profile(
    st: &AppState,
    id: &str,
) -> Result<munifab_firmware_bridge::gcode::MachineProfile, ApiError> {
    let p = st
        .profile(id)
        .map_err(|e| ApiError::bad_request(format!("`profile`: {e}")))?;
    Ok(munifab_firmware_bridge::gcode::MachineProfile {
        id: p.id.to_string(),
        name: p.name.clone(),
        capabilities: p.capabilities.clone(),
        motion: munifab_firmware_bridge::gcode::MotionLimits {
            max_feed_mm_min: p.motion.max_feed_mm_min,
            max_z_feed_mm_min: p.motion.max_z_feed_mm_min,
            acceleration_mm_s2: p.motion.acceleration_mm_s2,
        },
        power: munifab_firmware_bridge::gcode::Power {
            watts: p.power.watts,
        },
    })
}

/// Query of a job list.
#[derive(Debug, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Only this state.
    state: Option<JobState>,
    /// Only this cooperative (admins, or your own).
    coop: Option<String>,
    /// Page size, 1..=500 (default 50).
    limit: Option<u32>,
    /// Rows to skip.
    offset: Option<u64>,
}

/// A page of jobs.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct JobPage {
    /// Jobs, newest first.
    items: Vec<Job>,
    /// Jobs matching the filter.
    total: u64,
    /// Page size used.
    limit: u32,
    /// Rows skipped.
    offset: u64,
}

/// List jobs (makers and coop admins see their cooperative's, operators their site's).
#[utoipa::path(get, path = "/api/v1/jobs", tag = "jobs", params(ListQuery),
    responses((status = 200, body = JobPage)), security(("bearer" = [])))]
pub(super) async fn list(
    State(st): State<AppState>,
    caller: Caller,
    query: Result<Query<ListQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<JobPage>, ApiError> {
    let grant = caller.grant();
    if matches!(grant, Grant::Agent(_)) {
        return Err(ApiError::forbidden("agents cannot list jobs"));
    }
    let Query(q) = query.map_err(|e| ApiError::bad_request(e.body_text()))?;
    let mut filter = JobFilter {
        state: q.state,
        coop: q.coop.clone(),
        limit: q.limit.unwrap_or(50).clamp(1, 500),
        offset: q.offset.unwrap_or(0),
        ..Default::default()
    };
    match grant {
        Grant::Admin => {}
        Grant::CoopAdmin(c) | Grant::Maker(c) => {
            if q.coop.as_ref().is_some_and(|q| q != c) {
                return Err(ApiError::forbidden(format!(
                    "{grant} cannot list another cooperative's jobs"
                )));
            }
            filter.coop = Some(c.clone());
        }
        Grant::Operator(site) => filter.site = Some(site.clone()),
        Grant::Agent(_) => return Err(ApiError::forbidden("agents cannot list jobs")),
    }
    let page = st.store.list_jobs(&filter).await?;
    Ok(Json(JobPage {
        items: page.items,
        total: page.total,
        limit: filter.limit,
        offset: filter.offset,
    }))
}

fn parse_id(id: &str) -> Result<JobId, ApiError> {
    id.parse()
        .map_err(|_| ApiError::bad_request(format!("{id:?} is not a job id (UUID)")))
}

/// Loads a job the caller may see and act on: its cooperative's makers and admins, the
/// operators of the site it runs at, admins.
async fn job_for(st: &AppState, caller: &Caller, id: &str) -> Result<Job, ApiError> {
    if matches!(caller.grant(), Grant::Agent(_)) {
        return Err(ApiError::forbidden(
            "agents have no access to jobs over HTTP",
        ));
    }
    let job = st.store.job(parse_id(id)?).await?;
    let grant = caller.grant();
    if grant.may_manage_coop(&job.coop) {
        return Ok(job);
    }
    if let (Grant::Operator(_), Some(agent)) = (grant, &job.agent) {
        let site = st.store.agent(agent).await.ok().and_then(|a| a.site);
        if grant.may_run_site(site.as_deref()) {
            return Ok(job);
        }
    }
    Err(ApiError::forbidden(format!(
        "{grant} has no access to job {}",
        job.id
    )))
}

/// One job.
#[utoipa::path(get, path = "/api/v1/jobs/{id}", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = Job), (status = 404, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn get_job(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Job>, ApiError> {
    Ok(Json(job_for(&st, &caller, &id).await?))
}

fn command_response(out: CommandOutcome) -> (StatusCode, Json<Job>) {
    match out {
        CommandOutcome::Done(job) => (StatusCode::OK, Json(job)),
        CommandOutcome::Sent(job, _) => (StatusCode::ACCEPTED, Json(job)),
    }
}

/// Cancel a job: at once if no machine holds it (200), else by a command to its agent
/// (202; the job moves when the agent confirms).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/cancel", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = Job), (status = 202, body = Job),
        (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn cancel(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let job = job_for(&st, &caller, &id).await?;
    if job.state.is_terminal() {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "illegal_state",
            format!("job {} is already {}", job.id, job.state),
        ));
    }
    let out = st.store.cancel_job(job.id, st.now()).await?;
    st.kick.notify_one();
    Ok(command_response(out))
}

/// Pause a running job (202; it moves when the agent confirms).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/pause", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 202, body = Job), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn pause(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let job = job_for(&st, &caller, &id).await?;
    let out = st.store.pause_job(job.id, true, st.now()).await?;
    st.kick.notify_one();
    Ok(command_response(out))
}

/// Resume a paused job (202; it moves when the agent confirms).
#[utoipa::path(post, path = "/api/v1/jobs/{id}/resume", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 202, body = Job), (status = 409, body = ErrorBody)),
    security(("bearer" = [])))]
pub(super) async fn resume(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<(StatusCode, Json<Job>), ApiError> {
    let job = job_for(&st, &caller, &id).await?;
    let out = st.store.pause_job(job.id, false, st.now()).await?;
    st.kick.notify_one();
    Ok(command_response(out))
}

/// The state changes of a job, oldest first.
#[utoipa::path(get, path = "/api/v1/jobs/{id}/events", tag = "jobs",
    params(("id" = String, Path, description = "job id")),
    responses((status = 200, body = Vec<JobEvent>)),
    security(("bearer" = [])))]
pub(super) async fn events(
    State(st): State<AppState>,
    caller: Caller,
    Path(id): Path<String>,
) -> Result<Json<Vec<JobEvent>>, ApiError> {
    let job = job_for(&st, &caller, &id).await?;
    Ok(Json(st.store.job_events(job.id).await?))
}
