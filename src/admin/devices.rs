//! Device list and detail for the API and console, and capture thumbnails: generated on first
//! request with the `image` crate and cached in object storage under `thumbnails/`.

use axum::extract::{Path as UrlPath, Query, State};
use axum::http::header;
use axum::response::{IntoResponse, Response};
use axum::Json;
use chrono::{DateTime, Utc};
use fleetflow_protocol::ids::{is_valid_capture_id, DeviceId};
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AdminState, ApiError};

/// Thumbnail width in pixels.
const THUMB_PX: u32 = 160;

/// `?limit=&offset=&status=&battery_below=&not_seen_for_s=`
#[derive(Debug, Deserialize)]
pub struct ListQuery {
    #[serde(default)]
    limit: Option<i64>,
    #[serde(default)]
    offset: Option<i64>,
    #[serde(default)]
    status: Option<String>,
    /// Only devices whose latest `battery_v` is below this many volts (the low-battery alert's
    /// listing).
    #[serde(default)]
    battery_below: Option<f64>,
    /// Only devices not heard from for at least this many seconds (the offline alert's
    /// listing: 86400).
    #[serde(default)]
    not_seen_for_s: Option<i64>,
}

/// `GET /api/v1/devices`: newest first, with the live actor state.
pub async fn list(
    State(s): State<AdminState>,
    Query(q): Query<ListQuery>,
) -> Result<Json<Value>, ApiError> {
    let limit = q.limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::bad_field(
            "limit",
            "limit must be between 1 and 1000",
        ));
    }
    let offset = q.offset.unwrap_or(0).max(0);
    if q.battery_below.is_some_and(|v| !v.is_finite()) {
        return Err(ApiError::bad_field(
            "battery_below",
            "battery_below must be a number of volts",
        ));
    }
    if q.not_seen_for_s.is_some_and(|s| s < 0) {
        return Err(ApiError::bad_field(
            "not_seen_for_s",
            "not_seen_for_s must be 0 or more seconds",
        ));
    }
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let rows = c
        .query(
            "SELECT device_id, last_seen_at, status, battery_v, rssi, fw, first_seen_at FROM devices
             WHERE ($3::text IS NULL OR status = $3) AND ($4::float8 IS NULL OR battery_v < $4)
               AND ($5::bigint IS NULL OR last_seen_at < now() - $5::bigint::float8 * interval '1 second')
             ORDER BY last_seen_at DESC LIMIT $1 OFFSET $2",
            &[&limit, &offset, &q.status, &q.battery_below, &q.not_seen_for_s],
        )
        .await
        .map_err(ApiError::internal)?;
    let total: i64 = c
        .query_one(
            "SELECT count(*) FROM devices
             WHERE ($1::text IS NULL OR status = $1) AND ($2::float8 IS NULL OR battery_v < $2)
               AND ($3::bigint IS NULL OR last_seen_at < now() - $3::bigint::float8 * interval '1 second')",
            &[&q.status, &q.battery_below, &q.not_seen_for_s],
        )
        .await
        .map_err(ApiError::internal)?
        .get(0);
    let ids: Vec<DeviceId> = rows
        .iter()
        .filter_map(|r| DeviceId::parse(r.get::<_, &str>("device_id")).ok())
        .collect();
    let states = s.pipeline.devices(ids).await.map_err(ApiError::internal)?;
    let devices: Vec<Value> = rows
        .iter()
        .map(|r| {
            let id: String = r.get("device_id");
            let st = states.get(&id);
            json!({
                "device_id": id,
                "last_seen_at": r.get::<_, DateTime<Utc>>("last_seen_at"),
                "status": r.get::<_, Option<String>>("status"),
                "battery_v": r.get::<_, Option<f64>>("battery_v"),
                "rssi": r.get::<_, Option<i32>>("rssi"),
                "fw": r.get::<_, Option<String>>("fw"),
                "first_seen_at": r.get::<_, DateTime<Utc>>("first_seen_at"),
                "actor": st.map(|s| s.state).unwrap_or("idle"),
                "in_flight": st.map(|s| s.in_flight).unwrap_or(0),
                "restarts": st.map(|s| s.restarts).unwrap_or(0),
            })
        })
        .collect();
    Ok(Json(
        json!({"devices": devices, "total": total, "limit": limit, "offset": offset}),
    ))
}

/// `GET /api/v1/devices/{id}`: latest status, recent captures and errors, actor state.
pub async fn detail(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let id = super::params::device_id(&raw)?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let dev = c
        .query_opt("SELECT last_seen_at, status, battery_v, rssi, uptime_s, fw, first_seen_at FROM devices WHERE device_id = $1", &[&id.as_str()])
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::not_found(format!("device {id} is unknown")))?;
    let captures: Vec<Value> = c
        .query(
            "SELECT device_capture_id, captured_at, image_bytes, ingest_status, storage_path, nack_rounds, stored_at, deleted_at
             FROM captures WHERE device_id = $1 ORDER BY created_at DESC LIMIT 12",
            &[&id.as_str()],
        )
        .await
        .map_err(ApiError::internal)?
        .iter()
        .map(|r| {
            json!({
                "capture_id": r.get::<_, String>("device_capture_id"),
                "captured_at": r.get::<_, DateTime<Utc>>("captured_at"),
                "image_bytes": r.get::<_, i64>("image_bytes"),
                "ingest_status": r.get::<_, String>("ingest_status"),
                "storage_path": r.get::<_, Option<String>>("storage_path"),
                "deleted_at": r.get::<_, Option<DateTime<Utc>>>("deleted_at"),
                "nack_rounds": r.get::<_, i32>("nack_rounds"),
                "stored_at": r.get::<_, Option<DateTime<Utc>>>("stored_at"),
            })
        })
        .collect();
    let errors: Vec<Value> = c
        .query(
            "SELECT error_code, message, details, occurred_at FROM device_errors WHERE device_id = $1 ORDER BY occurred_at DESC LIMIT 20",
            &[&id.as_str()],
        )
        .await
        .map_err(ApiError::internal)?
        .iter()
        .map(|r| json!({"error_code": r.get::<_, i32>("error_code"), "message": r.get::<_, String>("message"),
                        "details": r.get::<_, Option<Value>>("details"), "occurred_at": r.get::<_, DateTime<Utc>>("occurred_at")}))
        .collect();
    let snapshot = s.pipeline.device(&id).await.map_err(ApiError::internal)?;
    Ok(Json(json!({
        "device_id": id.as_str(),
        "last_seen_at": dev.get::<_, DateTime<Utc>>("last_seen_at"),
        "status": dev.get::<_, Option<String>>("status"),
        "battery_v": dev.get::<_, Option<f64>>("battery_v"),
        "rssi": dev.get::<_, Option<i32>>("rssi"),
        "uptime_s": dev.get::<_, Option<i64>>("uptime_s"),
        "fw": dev.get::<_, Option<String>>("fw"),
        "first_seen_at": dev.get::<_, DateTime<Utc>>("first_seen_at"),
        "actor": {
            "state": snapshot.as_ref().map(|s| s.state).unwrap_or("idle"),
            "in_flight": snapshot.as_ref().map(|s| s.in_flight).unwrap_or(0),
            "held_bytes": snapshot.as_ref().map(|s| s.held_bytes).unwrap_or(0),
            "restarts": snapshot.as_ref().map(|s| s.restarts).unwrap_or(0),
        },
        "captures": captures,
        "errors": errors,
    })))
}

/// `GET /api/v1/devices/{id}/captures/{capture_id}/thumbnail`: a small JPEG.
pub async fn thumbnail(
    State(s): State<AdminState>,
    UrlPath((raw, capture)): UrlPath<(String, String)>,
) -> Result<Response, ApiError> {
    let id = super::params::device_id(&raw)?;
    if !is_valid_capture_id(&capture) {
        return Err(ApiError::bad_field("capture_id", "invalid capture id"));
    }
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let path: String = c
        .query_opt(
            "SELECT storage_path FROM captures WHERE device_id = $1 AND device_capture_id = $2 AND ingest_status = 'stored' AND deleted_at IS NULL",
            &[&id.as_str(), &capture],
        )
        .await
        .map_err(ApiError::internal)?
        .and_then(|r| r.get::<_, Option<String>>(0))
        .ok_or_else(|| ApiError::not_found(format!("no stored capture {capture} for {id}")))?;
    let cache = Path::from(format!("thumbnails/{id}/{capture}.jpg"));
    let bytes = match s.store.get(&cache).await {
        Ok(r) => r.bytes().await.map_err(ApiError::internal)?,
        Err(_) => {
            let original = s
                .store
                .get(&Path::from(path.as_str()))
                .await
                .map_err(ApiError::internal)?
                .bytes()
                .await
                .map_err(ApiError::internal)?;
            let thumb = tokio::task::spawn_blocking(move || make_thumbnail(&original))
                .await
                .map_err(ApiError::internal)?
                .map_err(|e| {
                    ApiError::new(
                        axum::http::StatusCode::UNPROCESSABLE_ENTITY,
                        "not_an_image",
                        format!("the capture is not a decodable JPEG: {e}"),
                    )
                })?;
            let thumb = bytes::Bytes::from(thumb);
            if let Err(e) = s
                .store
                .put(&cache, PutPayload::from_bytes(thumb.clone()))
                .await
            {
                tracing::warn!(error = %e, "thumbnail not cached");
            }
            thumb
        }
    };
    Ok((
        [
            (header::CONTENT_TYPE, "image/jpeg"),
            (header::CACHE_CONTROL, "private, max-age=3600"),
        ],
        bytes,
    )
        .into_response())
}

/// Decodes a JPEG and encodes a `THUMB_PX`-wide JPEG thumbnail.
pub fn make_thumbnail(jpeg: &[u8]) -> Result<Vec<u8>, image::ImageError> {
    let img = image::load_from_memory_with_format(jpeg, image::ImageFormat::Jpeg)?;
    let thumb = img.thumbnail(THUMB_PX, THUMB_PX * 3 / 4);
    let mut out = Vec::new();
    let mut enc = image::codecs::jpeg::JpegEncoder::new_with_quality(&mut out, 75);
    enc.encode_image(&thumb.to_rgb8())?;
    Ok(out)
}

/// `GET /api/v1/sources`: every MQTT source's connection status (`default` is the `[mqtt]` one).
pub async fn sources(State(s): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let rows = c
        .query("SELECT product_id, connected, last_connected_at, connection_error FROM mqtt_connection_status ORDER BY product_id", &[])
        .await
        .map_err(ApiError::internal)?;
    let list: Vec<Value> = rows
        .iter()
        .map(|r| json!({"source": r.get::<_, String>("product_id"), "connected": r.get::<_, bool>("connected"),
                        "last_connected_at": r.get::<_, Option<DateTime<Utc>>>("last_connected_at"),
                        "connection_error": r.get::<_, Option<String>>("connection_error")}))
        .collect();
    Ok(Json(json!({"sources": list})))
}

/// `GET /api/v1/stats`: totals for the console, read from this engine's own metrics.
pub async fn stats(State(s): State<AdminState>) -> Json<Value> {
    let text = s.prometheus.render();
    let sum = |prefix: &str| -> f64 {
        text.lines()
            .filter(|l| {
                l.starts_with(prefix)
                    && (l.as_bytes().get(prefix.len()) == Some(&b' ')
                        || l.as_bytes().get(prefix.len()) == Some(&b'{'))
            })
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    };
    Json(json!({
        "messages": sum("fleetflow_mqtt_messages_total"),
        "readings": sum("fleetflow_sink_rows_total{table=\"sensor_readings\"}"),
        "captures_stored": sum("fleetflow_captures_stored_total"),
        "captures_failed": sum("fleetflow_captures_failed_total"),
        "nacks": sum("fleetflow_nacks_total"),
        "errors": sum("fleetflow_device_errors_total"),
        "device_actors": sum("fleetflow_device_actors"),
        "mqtt_connected": sum("fleetflow_mqtt_connected") > 0.0,
        "at": Utc::now(),
    }))
}

#[cfg(test)]
mod tests {
    #[test]
    fn thumbnails_are_small_jpegs_of_the_capture() {
        let img = fleetflow_sim::image::jpeg(51_200, 4);
        let t = super::make_thumbnail(&img).unwrap();
        let d = image::load_from_memory(&t).unwrap();
        assert_eq!(d.width(), 160);
        assert!(t.len() < img.len());
        assert!(super::make_thumbnail(b"not a jpeg").is_err());
    }
}
