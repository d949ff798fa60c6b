//! `POST /api/v1/restarts`: in-process restarts, limited to one per target per cooldown
//! (429 with `Retry-After` otherwise). This session implements the `device:<id>` target; the
//! other targets of the control-plane issue answer 400 naming the field.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use axum::Json;
use fleetflow_actors::ids::DeviceId;
use fleetflow_actors::router::RestartDevice;
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AdminState, ApiError};

/// Last restart per target.
#[derive(Debug)]
pub struct Cooldowns {
    every: Duration,
    last: Mutex<HashMap<String, Instant>>,
}

impl Cooldowns {
    /// One restart per target per `every`.
    pub fn new(every: Duration) -> Self {
        Self {
            every,
            last: Mutex::new(HashMap::new()),
        }
    }

    /// Takes the slot for `target`, or says how long until it is free.
    pub fn take(&self, target: &str, now: Instant) -> Result<(), Duration> {
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(t) = last.get(target) {
            let since = now.duration_since(*t);
            if since < self.every {
                return Err(self.every - since);
            }
        }
        last.insert(target.to_string(), now);
        Ok(())
    }
}

/// The request body.
#[derive(Debug, Deserialize)]
pub struct RestartBody {
    target: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

/// `POST /api/v1/restarts {"target": "device:<id>", "reason": "..."}`
pub async fn create(
    State(s): State<AdminState>,
    body: Result<Json<RestartBody>, axum::extract::rejection::JsonRejection>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let Json(body) = body.map_err(|e| ApiError::bad_field("body", e.body_text()))?;
    let target = body.target.ok_or_else(|| {
        ApiError::bad_field("target", "target is required, e.g. \"device:AABBCCDDEEFF\"")
    })?;
    let Some(raw) = target.strip_prefix("device:") else {
        return Err(ApiError::bad_field(
            "target",
            format!("unsupported target {target:?}: this engine restarts device:<id>"),
        ));
    };
    let id = DeviceId::parse(raw)
        .map_err(|e| ApiError::bad_field("target", format!("invalid device id: {e}")))?;
    let key = format!("device:{id}");
    if let Err(wait) = s.restarts.take(&key, Instant::now()) {
        let mut e = ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "cooldown",
            format!(
                "{key} was restarted recently; try again in {} s",
                wait.as_secs() + 1
            ),
        );
        e.retry_after = Some(wait.as_secs() + 1);
        return Err(e);
    }
    let started = Instant::now();
    let was_running = s
        .router
        .send(RestartDevice(id.clone()))
        .await
        .map_err(ApiError::internal)?;
    // Health check: the fresh actor answers.
    let snapshot = s
        .router
        .send(fleetflow_actors::router::QueryDevice(id.clone()))
        .await
        .map_err(ApiError::internal)?;
    tracing::info!(target = %key, reason = body.reason.as_deref().unwrap_or(""), was_running, "device restarted by the admin API");
    Ok((
        StatusCode::OK,
        Json(json!({
            "target": key,
            "status": if snapshot.is_some() { "completed" } else { "failed" },
            "result": {
                "was_running": was_running,
                "healthy": snapshot.is_some(),
                "state": snapshot.as_ref().map(|s| s.state),
                "took_ms": started.elapsed().as_millis() as u64,
            },
            "reason": body.reason,
        })),
    ))
}
