//! `GET`/`PUT /api/v1/devices/{id}/schedule`: a device's wake schedule (captures per day,
//! fixed local wake times, or a test mode of every N minutes) and its recorded next wake.

use axum::extract::{Path as UrlPath, State};
use axum::Json;
use fleetflow_protocol::schedule::Schedule;
use serde_json::{json, Value};

use super::{AdminState, ApiError};

/// `GET /api/v1/devices/{id}/schedule`: `{"device_id", "schedule", "configured", "next_wake_at"}`.
pub async fn get(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let id = super::params::device_id(&raw)?;
    let (schedule, next) = s.book.get(&id);
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let configured = c
        .query_opt(
            "SELECT 1 FROM device_schedules WHERE device_id = $1 AND mode IS NOT NULL",
            &[&id.as_str()],
        )
        .await
        .map_err(ApiError::internal)?
        .is_some();
    Ok(Json(json!({
        "device_id": id.as_str(),
        "schedule": schedule.source,
        "configured": configured,
        "next_wake_at": next,
    })))
}

/// `PUT /api/v1/devices/{id}/schedule` with `{"mode": "per_day", "captures_per_day": 2}`,
/// `{"mode": "fixed", "times": ["08:00", "17:30"], "timezone": "Europe/Paris"}` or
/// `{"mode": "every_minutes", "minutes": 5}`. The recorded next wake is cleared: the device's
/// next wake hello is answered with `capture_image` and the new rule sets the following one.
pub async fn put(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
    body: Result<Json<Schedule>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let id = super::params::device_id(&raw)?;
    let Json(schedule) = body.map_err(|e| ApiError::bad_field("body", e.body_text()))?;
    let compiled = schedule.clone().compile().map_err(|e| {
        let field = match e {
            fleetflow_protocol::schedule::ScheduleError::TimeZone(_) => "timezone",
            fleetflow_protocol::schedule::ScheduleError::Range(f) => f,
            _ => "times",
        };
        ApiError::bad_field(field, e.to_string())
    })?;
    crate::schedules::save(&s.pool, &id, &schedule)
        .await
        .map_err(ApiError::internal)?;
    s.book.set(&id, Some(compiled), None);
    Ok(Json(json!({
        "device_id": id.as_str(),
        "schedule": schedule,
        "configured": true,
        "next_wake_at": null,
    })))
}
