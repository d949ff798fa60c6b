//! `POST /api/v1/devices/{id}/commands`: stores a command in `device_commands` (status
//! `queued`), publishes it on the device's command topic in the device's own format (the GXP
//! firmware's `{"device_id", "capture_image": true}` and the like, or `PROTOCOL.md` §6) through
//! the connection the device's messages arrive on, and marks it `sent`, all in one transaction,
//! so the row queue ([`crate::command_queue`]) never sends it a second time. The device's reply
//! on `.../cmd/result` moves it to `succeeded` or `failed` (written by the Postgres sink).

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AdminState, ApiError};
use crate::command_queue::Queued;

/// Longest command name.
const MAX_NAME: usize = 64;

/// The request body.
#[derive(Debug, Deserialize)]
pub struct CommandBody {
    name: Option<String>,
    #[serde(default)]
    args: Option<Value>,
}

fn validate(body: CommandBody) -> Result<(String, Value), ApiError> {
    let name = body
        .name
        .ok_or_else(|| ApiError::bad_field("name", "name is required"))?;
    if name.is_empty()
        || name.len() > MAX_NAME
        || !name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'_' || b == b'-')
    {
        return Err(ApiError::bad_field(
            "name",
            "name must be 1-64 characters of [A-Za-z0-9_-]",
        ));
    }
    let args = body.args.unwrap_or_else(|| json!({}));
    if !args.is_object() {
        return Err(ApiError::bad_field("args", "args must be a JSON object"));
    }
    Ok((name, args))
}

/// `POST /api/v1/devices/{id}/commands {"name": "capture_image", "args": {}}`
pub async fn create(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
    body: Result<Json<CommandBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_field("body", e.body_text()))?;
    let id = super::params::device_id(&raw)?;
    let (name, args) = validate(body)?;
    let mut c = s.pool.get().await.map_err(ApiError::internal)?;
    let tx = c.transaction().await.map_err(ApiError::internal)?;
    let Some(known) = tx
        .query_opt(
            "SELECT wire_format FROM devices WHERE device_id = $1",
            &[&id.as_str()],
        )
        .await
        .map_err(ApiError::internal)?
    else {
        return Err(ApiError::not_found(format!("device {id} is unknown")));
    };
    let q = Queued {
        id: format!("c-{:012x}", rand::rng().random::<u64>() >> 16),
        device_id: id.to_string(),
        name,
        args,
        wire_format: known.get(0),
    };
    // Refused before anything is stored: a GXP device only understands its firmware's commands.
    crate::command_queue::payload(&q).map_err(|why| ApiError::bad_field("name", why))?;
    tx.execute(
        "INSERT INTO device_commands (id, device_id, name, args, status) VALUES ($1, $2, $3, $4, 'queued')",
        &[&q.id, &q.device_id, &q.name, &q.args],
    )
    .await
    .map_err(ApiError::internal)?;
    let sent = s
        .commands
        .send(&q)
        .await
        .map_err(|why| ApiError::bad_field("name", why))?;
    tx.execute(
        "UPDATE device_commands SET status = 'sent', sent_at = now(), wire_format = $2 WHERE id = $1",
        &[&q.id, &sent.format],
    )
    .await
    .map_err(ApiError::internal)?;
    tx.commit().await.map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(json!({
            "command_id": q.id, "device_id": id.as_str(), "topic": sent.topic,
            "via": sent.via, "format": sent.format, "status": "sent",
        })),
    ))
}
