//! `POST /api/v1/devices/{id}/commands`: stores a command in `device_commands` (status
//! `queued`), publishes it on the device's command topic (§6) through the connection the
//! device's messages arrive on, and marks it `sent`. The
//! device's reply on `.../cmd/result` moves it to `succeeded` or `failed` (written by the
//! Postgres sink).

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use fleetflow_actors::ids::DeviceId;
use rand::Rng;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AdminState, ApiError};

/// Longest command name.
const MAX_NAME: usize = 64;

/// The request body.
#[derive(Debug, Deserialize)]
pub struct CommandBody {
    name: Option<String>,
    #[serde(default)]
    args: Option<Value>,
}

/// `POST /api/v1/devices/{id}/commands {"name": "capture_now", "args": {}}`
pub async fn create(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
    body: Result<Json<CommandBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_field("body", e.body_text()))?;
    let id = DeviceId::parse(&raw)
        .map_err(|e| ApiError::bad_field("device_id", format!("invalid device id: {e}")))?;
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
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let known: i64 = c
        .query_one(
            "SELECT count(*) FROM devices WHERE device_id = $1",
            &[&id.as_str()],
        )
        .await
        .map_err(ApiError::internal)?
        .get(0);
    if known == 0 {
        return Err(ApiError::not_found(format!("device {id} is unknown")));
    }
    let command_id = format!("c-{:012x}", rand::rng().random::<u64>() >> 16);
    c.execute(
        "INSERT INTO device_commands (id, device_id, name, args, status) VALUES ($1, $2, $3, $4, 'queued')",
        &[&command_id, &id.as_str(), &name, &args],
    )
    .await
    .map_err(ApiError::internal)?;
    let payload = json!({"type": "command", "command_id": command_id, "name": name, "args": args});
    // Through the connection (and topic layout) the device's latest message came from; the
    // `[mqtt]` broker's publishing connection when the device has no live actor.
    let route = s
        .router
        .send(fleetflow_actors::router::RouteOf(id.clone()))
        .await
        .ok()
        .flatten();
    let (topic, via) = match &route {
        Some(r) => {
            let topic = r.topics.cmd_topic(&id);
            r.link
                .publish(topic.clone(), Bytes::from(payload.to_string()), "command");
            (topic, "device_source")
        }
        None => {
            let topic = s.topics.cmd_topic(&id);
            s.link
                .publish(topic.clone(), Bytes::from(payload.to_string()), "command");
            (topic, "default_broker")
        }
    };
    c.execute("UPDATE device_commands SET status = 'sent', sent_at = now() WHERE id = $1 AND status = 'queued'", &[&command_id])
        .await
        .map_err(ApiError::internal)?;
    Ok((
        StatusCode::CREATED,
        Json(
            json!({"command_id": command_id, "device_id": id.as_str(), "topic": topic, "via": via, "status": "sent"}),
        ),
    ))
}
