//! `POST /api/v1/restarts`: the HTTP face of [`crate::restart::request`]. Parses the body,
//! records and runs the restart there, and maps its outcome: the row's final status and result,
//! 429 with `Retry-After` within the cooldown, 400 for a bad target. The row is the audit trail.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Extension;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::tokens::Caller;
use super::{AdminState, ApiError};
use crate::restart::{RequestError, RestartRequest, RestartTarget};

/// The request body.
#[derive(Debug, Deserialize)]
pub struct RestartBody {
    /// The target's text, parsed as a [`RestartTarget`].
    target: Option<String>,
    /// Why, for the audit row.
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/v1/restarts {"target": "device:<id>", "reason": "..."}`
pub async fn create(
    State(s): State<AdminState>,
    Extension(caller): Extension<Caller>,
    body: Result<Json<RestartBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_field("body", e.body_text()))?;
    let text = body.target.ok_or_else(|| {
        ApiError::bad_field("target", "target is required, e.g. \"device:AABBCCDDEEFF\"")
    })?;
    let target: RestartTarget = text.parse().map_err(|e| ApiError::bad_field("target", e))?;
    run(&s, target, body.reason, s.cooldown_secs, &caller).await
}

/// Records a restart of `target` (the limit from `[admin]`), runs it, returns the row.
pub async fn run(
    s: &AdminState,
    target: RestartTarget,
    reason: Option<String>,
    cooldown_secs: u64,
    caller: &Caller,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let req = RestartRequest {
        target,
        reason,
        requested_by: caller.0.to_string(),
        via: "api",
        cooldown_secs,
        max_per_window: s.restart_max,
    };
    let done = s.restarter.request(&req).await.map_err(api_error)?;
    Ok((
        StatusCode::OK,
        Json(json!({
            "id": done.id,
            "target": req.target.to_string(),
            "status": done.outcome.as_str(),
            "result": done.result,
            "reason": req.reason,
        })),
    ))
}

/// The HTTP answer for a restart that was not executed.
fn api_error(e: RequestError) -> ApiError {
    match e {
        RequestError::Cooldown {
            message,
            retry_after_secs,
        } => {
            let mut err = ApiError::new(StatusCode::TOO_MANY_REQUESTS, "cooldown", message);
            err.retry_after = Some(retry_after_secs);
            err
        }
        RequestError::InvalidTarget(m) => ApiError::bad_field("target", m),
        RequestError::Store(e) => ApiError::internal(e),
    }
}
