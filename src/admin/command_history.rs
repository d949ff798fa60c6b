//! `GET /api/v1/devices/{id}/commands?limit=`: a device's commands (`device_commands`), newest
//! first, with their status (`queued`, `sent`, `succeeded`, `failed`, `expired`) and the
//! device's result, for the console's device page.

use axum::extract::{Path as UrlPath, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AdminState, ApiError};

const LIST: &str = "SELECT id, name, args, status, wire_format, created_at, sent_at, completed_at,
  result, error FROM device_commands WHERE device_id = $1
  ORDER BY created_at DESC, id DESC LIMIT $2";

/// The query string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CommandsQuery {
    /// Rows, 1–500 (default 50).
    limit: Option<i64>,
}

/// `GET /api/v1/devices/{id}/commands`: `{"device_id", "commands": [{command_id, name, args,
/// status, format, created_at, sent_at, completed_at, result, error}]}`.
pub async fn list(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
    q: Result<Query<CommandsQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = super::params::device_id(&raw)?;
    let Query(q) = q.map_err(|e| ApiError::bad_field("query", e.body_text()))?;
    let limit = super::params::page_limit(q.limit)?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let rows = c
        .query(LIST, &[&id.as_str(), &limit])
        .await
        .map_err(ApiError::internal)?;
    type Ts = Option<DateTime<Utc>>;
    let commands: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "command_id": r.get::<_, String>("id"),
                "name": r.get::<_, String>("name"),
                "args": r.get::<_, Value>("args"),
                "status": r.get::<_, String>("status"),
                "format": r.get::<_, Option<String>>("wire_format"),
                "created_at": r.get::<_, DateTime<Utc>>("created_at"),
                "sent_at": r.get::<_, Ts>("sent_at"),
                "completed_at": r.get::<_, Ts>("completed_at"),
                "result": r.get::<_, Option<Value>>("result"),
                "error": r.get::<_, Option<String>>("error"),
            })
        })
        .collect();
    Ok(Json(
        json!({ "device_id": id.as_str(), "commands": commands }),
    ))
}
