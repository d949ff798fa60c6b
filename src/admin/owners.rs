//! `GET` and `DELETE /api/v1/devices/{id}/owner`: the source (product) a device id is bound to
//! (`device_owners`, written at its first message). Messages for the device from any other
//! source are refused; deleting the binding moves the device: its next message binds it to the
//! source that delivers it.

use axum::extract::{Path as UrlPath, State};
use axum::Json;
use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{AdminState, ApiError};

/// `GET /api/v1/devices/{id}/owner`: `{"device_id", "source", "bound_at"}`, 404 when unbound.
pub async fn get(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let id = super::params::device_id(&raw)?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let row = c
        .query_opt(
            "SELECT source, bound_at FROM device_owners WHERE device_id = $1",
            &[&id.as_str()],
        )
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("device {id} is not bound to a source")))?;
    Ok(Json(json!({
        "device_id": id.as_str(),
        "source": row.get::<_, String>("source"),
        "bound_at": row.get::<_, DateTime<Utc>>("bound_at"),
    })))
}

/// `DELETE /api/v1/devices/{id}/owner`: removes the binding (answers the one removed), so
/// that the device's next message binds it to the source it comes from.
pub async fn delete(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let id = super::params::device_id(&raw)?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let row = c
        .query_opt(
            "DELETE FROM device_owners WHERE device_id = $1 RETURNING source",
            &[&id.as_str()],
        )
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("device {id} is not bound to a source")))?;
    s.pipeline
        .forget_owner(&id)
        .await
        .map_err(ApiError::internal)?;
    let source: String = row.get("source");
    tracing::info!(device = %id, source = %source, "device binding removed by an admin");
    Ok(Json(
        json!({"device_id": id.as_str(), "released_from": source}),
    ))
}
