//! `POST /api/v1/organizations/{org_id}/publish`: publishes through the hosted broker, only
//! under `org_{org_id}/`; and the publish body's checks, shared with the product publish API.

use std::collections::HashMap;

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use bytes::Bytes;
use fleetflow_actors::subscriptions::model::validate_publish_topic;
use serde::Deserialize;
use serde_json::{json, Value};

use super::super::{AdminState, ApiError};
use super::{broker_error, hosted, org_id};

/// The body of both publish endpoints.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PublishBody {
    topic: Option<String>,
    payload: Option<Value>,
    payload_base64: Option<String>,
    qos: Option<i64>,
    retain: Option<bool>,
}

/// A validated publish.
pub struct Publish {
    /// Topic.
    pub topic: String,
    /// Bytes.
    pub payload: Bytes,
    /// 0 or 1.
    pub qos: u8,
    /// Retain flag.
    pub retain: bool,
}

/// Largest payload the publish API sends, in bytes.
pub const MAX_PUBLISH_BYTES: usize = 256 * 1024;

/// Checks a publish body: a topic without wildcards (≤ 1024 bytes), a payload given as JSON
/// (a JSON string is sent as its text) or base64, QoS 0 or 1.
pub fn validate_publish(b: PublishBody) -> Result<Publish, ApiError> {
    let topic = b
        .topic
        .ok_or_else(|| ApiError::bad_field("topic", "topic is required"))?;
    validate_publish_topic(&topic).map_err(|m| ApiError::bad_field("topic", m))?;
    let payload = match (b.payload, b.payload_base64) {
        (Some(_), Some(_)) => {
            return Err(ApiError::bad_field(
                "payload",
                "give payload or payload_base64, not both",
            ))
        }
        (Some(Value::String(s)), None) => Bytes::from(s),
        (Some(v), None) => Bytes::from(v.to_string()),
        (None, Some(b64)) => {
            use base64::Engine as _;
            Bytes::from(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| ApiError::bad_field("payload_base64", e.to_string()))?,
            )
        }
        (None, None) => Bytes::new(),
    };
    if payload.len() > MAX_PUBLISH_BYTES {
        return Err(ApiError::bad_field(
            "payload",
            format!("at most {MAX_PUBLISH_BYTES} bytes"),
        ));
    }
    let qos = match b.qos.unwrap_or(1) {
        q @ (0 | 1) => q as u8,
        _ => return Err(ApiError::bad_field("qos", "qos must be 0 or 1")),
    };
    Ok(Publish {
        topic,
        payload,
        qos,
        retain: b.retain.unwrap_or(false),
    })
}

/// `POST /api/v1/organizations/{org_id}/publish`: through the hosted broker, only under
/// `org_{org_id}/`.
pub async fn publish(
    State(s): State<AdminState>,
    UrlPath(params): UrlPath<HashMap<String, String>>,
    body: Result<Json<PublishBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let org = org_id(&params)?;
    let Json(b) = body.map_err(|e| ApiError::bad_field("body", e.body_text()))?;
    let p = validate_publish(b)?;
    let own = format!("org_{org}/");
    if !p.topic.starts_with(&own) {
        let mut e = ApiError::new(
            StatusCode::FORBIDDEN,
            "forbidden",
            format!("organisation {org} may only publish under {own}"),
        );
        e.field = Some("topic".into());
        return Err(e);
    }
    let h = hosted(&s)?;
    let bytes = p.payload.len();
    h.dynsec
        .publish(p.topic.clone(), p.payload, p.qos, p.retain)
        .await
        .map_err(broker_error)?;
    metrics::counter!(fleetflow_actors::metrics::MQTT_PUBLISHES_TOTAL, "kind" => "publish")
        .increment(1);
    Ok(Json(
        json!({"published": true, "topic": p.topic, "bytes": bytes, "qos": p.qos, "retain": p.retain}),
    ))
}
