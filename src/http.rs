//! The HTTP server: `/metrics` (Prometheus text), `/health` (the process is up) and `/ready`
//! (MQTT connected, Postgres and object storage reachable).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use deadpool_postgres::Pool;
use metrics_exporter_prometheus::PrometheusHandle;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use serde_json::json;

/// What the handlers read.
#[derive(Clone)]
pub struct HttpState {
    /// Renders `/metrics`.
    pub prometheus: PrometheusHandle,
    /// For the readiness round trip.
    pub pool: Pool,
    /// For the readiness probe.
    pub store: Arc<dyn ObjectStore>,
    /// Set by the MQTT source.
    pub mqtt_connected: Arc<AtomicBool>,
}

/// The routes.
pub fn router(state: HttpState) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/health", get(health))
        .route("/ready", get(ready))
        .with_state(state)
}

async fn metrics(State(s): State<HttpState>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.prometheus.render(),
    )
        .into_response()
}

async fn health() -> Json<serde_json::Value> {
    Json(json!({"status": "ok"}))
}

async fn ready(State(s): State<HttpState>) -> Response {
    let probe = Duration::from_secs(2);
    let mqtt = s.mqtt_connected.load(Ordering::Acquire);
    let pg = tokio::time::timeout(probe, async {
        let c = s.pool.get().await.map_err(|e| e.to_string())?;
        c.simple_query("SELECT 1")
            .await
            .map_err(|e| e.to_string())?;
        Ok::<_, String>(())
    })
    .await
    .unwrap_or_else(|_| Err("timed out".into()));
    let objects = tokio::time::timeout(probe, s.store.head(&Path::from("_fleetflow_ready_probe")))
        .await
        .map_err(|_| "timed out".to_string())
        .and_then(|r| match r {
            Ok(_) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(e.to_string()),
        });
    let ok = mqtt && pg.is_ok() && objects.is_ok();
    let body = json!({
        "ready": ok,
        "mqtt": {"connected": mqtt},
        "postgres": {"ok": pg.is_ok(), "error": pg.err()},
        "objects": {"ok": objects.is_ok(), "error": objects.err()},
    });
    let code = if ok {
        StatusCode::OK
    } else {
        StatusCode::SERVICE_UNAVAILABLE
    };
    (code, Json(body)).into_response()
}
