//! `POST /api/v1/restarts`: records the request through `request_service_restart` (which
//! enforces the per-target cooldown in the database: 429 with `Retry-After` here), executes it
//! in process and returns the row's final status and result. The row is the audit trail.

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use fleetflow_protocol::ids::DeviceId;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AdminState, ApiError};

/// The request body.
#[derive(Debug, Deserialize)]
pub struct RestartBody {
    target: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/v1/restarts {"target": "device:<id>", "reason": "..."}`
pub async fn create(
    State(s): State<AdminState>,
    body: Result<Json<RestartBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_field("body", e.body_text()))?;
    let target = body.target.ok_or_else(|| {
        ApiError::bad_field("target", "target is required, e.g. \"device:AABBCCDDEEFF\"")
    })?;
    let key = if let Some(raw) = target.strip_prefix("device:") {
        let id = DeviceId::parse(raw)
            .map_err(|e| ApiError::bad_field("target", format!("invalid device id: {e}")))?;
        format!("device:{id}")
    } else if target.starts_with("source:")
        || matches!(
            target.as_str(),
            "sink:postgres" | "sink:objects" | "pipeline"
        )
    {
        target.clone()
    } else {
        return Err(ApiError::bad_field(
            "target",
            format!("unsupported target {target:?}: expected device:<id>, source:<product_id>, sink:postgres, sink:objects or pipeline"),
        ));
    };
    run(&s, &key, body.reason, s.cooldown_secs).await
}

/// Records a restart of `key` through the SQL function (cooldown), runs it, returns the row.
pub async fn run(
    s: &AdminState,
    key: &str,
    reason: Option<String>,
    cooldown_secs: u64,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let body_reason = reason;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let row = c
        .query_one(
            "SELECT request_service_restart($1, $2, 'admin-api', make_interval(secs => $3), true, $4)",
            &[&key, &body_reason, &(cooldown_secs as f64), &i32::try_from(s.restart_max.max(1)).unwrap_or(i32::MAX)],
        )
        .await;
    let request_id: i64 = match row {
        Ok(r) => r.get(0),
        Err(e) => {
            if let Some(db) = e.as_db_error() {
                if db.code().code() == "P0001" {
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
                    return Err(err);
                }
                if db.code().code() == "22023" {
                    return Err(ApiError::bad_field("target", db.message().to_string()));
                }
            }
            return Err(ApiError::internal(e));
        }
    };
    drop(c);
    let (outcome, result) = s
        .restarter
        .execute(request_id, key)
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(target = %key, request_id, reason = body_reason.as_deref().unwrap_or(""), "restart requested over HTTP");
    Ok((
        StatusCode::OK,
        Json(
            json!({"id": request_id, "target": key, "status": outcome.as_str(), "result": result, "reason": body_reason}),
        ),
    ))
}
