//! `POST /api/v1/restarts`: records the request through `request_service_restart` (which
//! enforces the per-target cooldown in the database: 429 with `Retry-After` here), executes it
//! in process and returns the row's final status and result. The row is the audit trail.

use axum::extract::rejection::JsonRejection;
use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AdminState, ApiError};
use crate::restart::RestartTarget;

/// SQLSTATE of the cooldown refusal (`RAISE EXCEPTION` without a code).
const COOLDOWN: &str = "P0001";
/// SQLSTATE of the database's own target check (`invalid_parameter_value`).
const INVALID_TARGET: &str = "22023";

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
    body: Result<Json<RestartBody>, JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_field("body", e.body_text()))?;
    let text = body.target.ok_or_else(|| {
        ApiError::bad_field("target", "target is required, e.g. \"device:AABBCCDDEEFF\"")
    })?;
    let target: RestartTarget = text.parse().map_err(|e| ApiError::bad_field("target", e))?;
    run(&s, &target, body.reason, s.cooldown_secs).await
}

/// Records a restart of `target` through the SQL function (cooldown), runs it, returns the row.
pub async fn run(
    s: &AdminState,
    target: &RestartTarget,
    reason: Option<String>,
    cooldown_secs: u64,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let key = target.to_string();
    let request_id = record(s, &key, &reason, cooldown_secs).await?;
    let (outcome, result) = s
        .restarter
        .execute(request_id, target)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(target = %key, request_id, reason = reason.as_deref().unwrap_or(""), "restart requested over HTTP");
    Ok((
        StatusCode::OK,
        Json(
            json!({"id": request_id, "target": key, "status": outcome.as_str(), "result": result, "reason": reason}),
        ),
    ))
}

/// Inserts the request row as `running` (this process executes it) unless the rate limit
/// refuses it; returns the row's id.
async fn record(
    s: &AdminState,
    key: &str,
    reason: &Option<String>,
    cooldown_secs: u64,
) -> Result<i64, ApiError> {
    let max = i32::try_from(s.restart_max.max(1)).unwrap_or(i32::MAX);
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let row = c
        .query_one(
            "SELECT request_service_restart($1, $2, 'admin-api', make_interval(secs => $3), true, $4) AS id",
            &[&key, reason, &(cooldown_secs as f64), &max],
        )
        .await;
    match row {
        Ok(r) => Ok(r.get("id")),
        Err(e) => Err(refusal(s, &e).unwrap_or_else(|| ApiError::internal(e))),
    }
}

/// The API error for the database's refusals: the cooldown (429 with `Retry-After`, from the
/// error's detail) or its own target check (400). `None` for any other failure.
fn refusal(s: &AdminState, e: &tokio_postgres::Error) -> Option<ApiError> {
    let db = e.as_db_error()?;
    match db.code().code() {
        COOLDOWN => {
            let wait: u64 = db
                .detail()
                .and_then(|d| d.parse().ok())
                .unwrap_or(s.cooldown_secs);
            let mut err = ApiError::new(
                StatusCode::TOO_MANY_REQUESTS,
                "cooldown",
                db.message().to_string(),
            );
            err.retry_after = Some(wait.max(1));
            Some(err)
        }
        INVALID_TARGET => Some(ApiError::bad_field("target", db.message().to_string())),
        _ => None,
    }
}
