//! The old restart webhook's calls, served as they were (`[restart_webhook] bind`, off by
//! default): `GET /health`, and `POST /restart` with `X-Restart-Token` and either no body or
//! `{"service": "mqtt" | "all" | "mqtt-subscriber"}`. Every old service name means a `pipeline`
//! restart, done in process through [`crate::restart::request`] with the same cooldown and the
//! same audit row as `POST /api/v1/restarts` (`requested_by` is `restart-webhook:<token name>`). Answers keep
//! the old shape: `{"success", "message", "details"}`, `401 {"error": "Unauthorized"}`.

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use chrono::Utc;
use serde::Deserialize;
use serde_json::{json, Value};

use std::net::SocketAddr;

use axum::extract::ConnectInfo;

use super::audit::Refusal;
use super::AdminState;
use crate::restart::{Outcome, RequestError, RestartRequest, RestartTarget};

/// Who the audit row names (with the token's name: `restart-webhook:restart`).
const REQUESTED_BY: &str = "restart-webhook";

/// The old body; absent means `mqtt`.
#[derive(Debug, Default, Deserialize)]
struct WebhookBody {
    /// `mqtt`, `all`, `mqtt-subscriber`, or any restart target text.
    #[serde(default)]
    service: Option<String>,
}

/// The webhook's routes: `/health`, `/restart`, and the old 404 for anything else.
pub fn routes(state: AdminState) -> Router {
    Router::new()
        .route("/health", get(health))
        .route("/restart", post(restart))
        .fallback(not_found)
        .with_state(state)
}

/// `GET /health`, as the old webhook answered it.
async fn health() -> Json<Value> {
    Json(json!({
        "status": "healthy",
        "service": "mqtt-restart-webhook",
        "timestamp": Utc::now(),
    }))
}

async fn not_found() -> (StatusCode, Json<Value>) {
    (StatusCode::NOT_FOUND, Json(json!({"error": "Not found"})))
}

/// `POST /restart`.
async fn restart(
    State(s): State<AdminState>,
    ConnectInfo(remote): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Bytes,
) -> Response {
    let presented = headers
        .get("x-restart-token")
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let Some(caller) = s.tokens.restart(presented) else {
        s.audit.refused(Refusal {
            entry: "restart_webhook",
            reason: "unauthorized",
            action: "POST /restart".into(),
            actor: None,
            remote: Some(remote.ip().to_string()),
        });
        return (
            StatusCode::UNAUTHORIZED,
            Json(json!({"success": false, "error": "Unauthorized"})),
        )
            .into_response();
    };
    let service = match service_of(&body) {
        Ok(s) => s,
        Err(e) => return refused(StatusCode::BAD_REQUEST, &e.to_string(), "", Value::Null),
    };
    let Some(target) = RestartTarget::for_service(&service) else {
        let message = format!(
            "unknown service {service:?}; use mqtt, all or mqtt-subscriber (the whole pipeline), or a restart target"
        );
        return refused(StatusCode::BAD_REQUEST, &message, &service, Value::Null);
    };
    run(&s, target, service, &caller.0).await
}

/// A webhook body that is neither empty nor the old JSON.
#[derive(Debug, thiserror::Error)]
#[error("the body must be empty or JSON such as {{\"service\": \"mqtt\"}}: {0}")]
struct BadBody(serde_json::Error);

/// The body's `service`: `mqtt` when the body is empty or has none.
fn service_of(body: &[u8]) -> Result<String, BadBody> {
    if body.iter().all(u8::is_ascii_whitespace) {
        return Ok("mqtt".into());
    }
    let b: WebhookBody = serde_json::from_slice(body).map_err(BadBody)?;
    Ok(b.service.unwrap_or_else(|| "mqtt".into()))
}

/// Records and runs the restart, and answers in the old shape.
async fn run(s: &AdminState, target: RestartTarget, service: String, token: &str) -> Response {
    let req = RestartRequest {
        target,
        reason: Some(format!("restart webhook, service {service:?}")),
        requested_by: format!("{REQUESTED_BY}:{token}"),
        via: "restart_webhook",
        cooldown_secs: s.cooldown_secs,
        max_per_window: s.restart_max,
    };
    match s.restarter.request(&req).await {
        Ok(done) => {
            let details = json!({
                "service": service,
                "target": req.target.to_string(),
                "request_id": done.id,
                "status": done.outcome.as_str(),
                "result": done.result,
                "timestamp": Utc::now(),
            });
            if done.outcome == Outcome::Completed {
                let message = match req.target {
                    RestartTarget::Pipeline => "MQTT subscriber restarted successfully".to_string(),
                    ref t => format!("{t} restarted successfully"),
                };
                (
                    StatusCode::OK,
                    Json(json!({"success": true, "message": message, "details": details})),
                )
                    .into_response()
            } else {
                let error = format!("the restart ended {}", done.outcome.as_str());
                refused(StatusCode::INTERNAL_SERVER_ERROR, &error, &service, details)
            }
        }
        Err(RequestError::Cooldown {
            message,
            retry_after_secs,
        }) => {
            let details = json!({"service": service, "retry_after_secs": retry_after_secs});
            let mut r = refused(StatusCode::TOO_MANY_REQUESTS, &message, &service, details);
            r.headers_mut()
                .insert(header::RETRY_AFTER, retry_after_secs.into());
            r
        }
        Err(RequestError::InvalidTarget(m)) => {
            refused(StatusCode::BAD_REQUEST, &m, &service, Value::Null)
        }
        Err(RequestError::Store(e)) => {
            tracing::error!(error = %e, "restart webhook: request not recorded");
            let m = "the restart could not be recorded; see the engine log";
            refused(StatusCode::INTERNAL_SERVER_ERROR, m, &service, Value::Null)
        }
    }
}

/// `{"success": false, "error", "message", "details"}` with `status`.
fn refused(status: StatusCode, error: &str, service: &str, details: Value) -> Response {
    let details = if details.is_null() {
        json!({"service": service})
    } else {
        details
    };
    (
        status,
        Json(json!({
            "success": false,
            "error": error,
            "message": "MQTT subscriber not restarted",
            "details": details,
        })),
    )
        .into_response()
}
