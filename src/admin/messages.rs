//! `GET /api/v1/devices/{id}/messages`: the message log (`device_publish_log`) of one device,
//! newest first, paged by id: what the device published and what the engine sent it.

use axum::extract::{Path as UrlPath, Query, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AdminState, ApiError};

const PAGE: &str = "SELECT id, topic, direction, payload, received_at FROM device_publish_log
 WHERE device_id = $1 AND ($2::int8 IS NULL OR id < $2) AND ($3::text IS NULL OR direction = $3)
 ORDER BY id DESC LIMIT $4";

/// The query string.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MessagesQuery {
    /// Rows per page, 1–500 (default 50).
    limit: Option<i64>,
    /// Only rows older than this id (the previous page's `next_before_id`).
    before_id: Option<i64>,
    /// `in` or `out`.
    direction: Option<String>,
}

/// `GET /api/v1/devices/{id}/messages?limit=&before_id=&direction=`
pub async fn list(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
    q: Result<Query<MessagesQuery>, axum::extract::rejection::QueryRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = super::params::device_id(&raw)?;
    let Query(q) = q.map_err(|e| ApiError::bad_field("query", e.body_text()))?;
    let limit = super::params::page_limit(q.limit)?;
    if let Some(d) = q.direction.as_deref() {
        if d != "in" && d != "out" {
            return Err(ApiError::bad_field("direction", "direction is in or out"));
        }
    }
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let rows = c
        .query(PAGE, &[&id.as_str(), &q.before_id, &q.direction, &limit])
        .await
        .map_err(ApiError::internal)?;
    let messages: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "id": r.get::<_, i64>("id"),
                "topic": r.get::<_, String>("topic"),
                "direction": r.get::<_, String>("direction"),
                "payload": r.get::<_, Option<Value>>("payload"),
                "received_at": r.get::<_, DateTime<Utc>>("received_at"),
            })
        })
        .collect();
    let next = super::params::next_before_id(&messages, limit, "id");
    Ok(Json(json!({
        "device_id": id.as_str(),
        "messages": messages,
        "next_before_id": next,
    })))
}
