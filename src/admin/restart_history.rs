//! `GET /api/v1/restarts?limit=&before_id=`: the restart audit trail
//! (`service_restart_requests`), newest first, paged by id (keyset: `before_id` is the previous
//! page's `next_before_id`). Admin token only: the restart-only token cannot read it.

use axum::extract::{Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AdminState, ApiError};

const PAGE: &str = "SELECT id, target, service_name, requested_by, reason, status, requested_at,
  started_at, completed_at, result FROM service_restart_requests
  WHERE ($1::int8 IS NULL OR id < $1) ORDER BY id DESC LIMIT $2";

/// The query string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HistoryQuery {
    /// Rows per page, 1–500 (default 50).
    limit: Option<i64>,
    /// Only rows older than this id (the previous page's `next_before_id`).
    before_id: Option<i64>,
}

/// `GET /api/v1/restarts`: `{"restarts": [...], "next_before_id"}` (null on the last page).
pub async fn list(
    State(s): State<AdminState>,
    q: Result<Query<HistoryQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let Query(q) = q.map_err(|e| ApiError::bad_field("query", e.body_text()))?;
    let limit = super::params::page_limit(q.limit)?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let rows = c
        .query(PAGE, &[&q.before_id, &limit])
        .await
        .map_err(ApiError::internal)?;
    type Ts = Option<DateTime<Utc>>;
    let restarts: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<_, i64>("id"),
                "target": r.get::<_, String>("target"),
                "service_name": r.get::<_, Option<String>>("service_name"),
                "requested_by": r.get::<_, String>("requested_by"),
                "reason": r.get::<_, Option<String>>("reason"),
                "status": r.get::<_, String>("status"),
                "requested_at": r.get::<_, DateTime<Utc>>("requested_at"),
                "started_at": r.get::<_, Ts>("started_at"),
                "completed_at": r.get::<_, Ts>("completed_at"),
                "result": r.get::<_, Option<Value>>("result"),
            })
        })
        .collect();
    let next = super::params::next_before_id(&restarts, limit, "id");
    Ok(Json(json!({
        "restarts": restarts,
        "next_before_id": next,
    })))
}
