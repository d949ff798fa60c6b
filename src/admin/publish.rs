//! `POST /api/v1/products/{product_id}/publish`: publishes through that product's own running
//! connection (`default` is the `[mqtt]` source), after the same checks as organisation
//! publishing (no wildcards, topic length, payload size, QoS 0 or 1).

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use serde_json::{json, Value};

use super::organizations::{validate_publish, PublishBody};
use super::params::product;
use super::{AdminState, ApiError};

/// The handler.
pub async fn product_publish(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
    body: Result<Json<PublishBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let product_id = product(&raw)?;
    let Json(b) = body.map_err(|e| ApiError::bad_field("body", e.body_text()))?;
    let p = validate_publish(b)?;
    let link = s.pipeline.link(&product_id).ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "no_source",
            format!("product {product_id} has no running MQTT source"),
        )
    })?;
    let bytes = p.payload.len();
    link.publish_with(p.topic.clone(), p.payload, p.qos, p.retain, "publish")
        .map_err(|e| {
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "not_connected",
                e.to_string(),
            )
        })?;
    Ok(Json(
        json!({"published": true, "product_id": product_id, "topic": p.topic, "bytes": bytes, "qos": p.qos, "retain": p.retain}),
    ))
}
