//! `POST /api/v1/products/{id}/mqtt-config/test`: connects with the given settings (or the
//! saved ones, with the stored password) and reports the CONNACK; never touches the running
//! source. It speaks the configured `protocol_version` (MQTT 5 or 3.1.1); a refusal's
//! `reason_code` is in MQTT 5 numbering either way.

use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use fleetflow_actors::config::{MqttConfig, MqttVersion};
use fleetflow_actors::source::SourceEvent;
use fleetflow_actors::source_manager::broker_url;
use serde_json::{json, Value};
use tokio_postgres::Row;

use super::super::params::product;
use super::super::{AdminState, ApiError};
use super::validate::{validate, ConfigBody};

/// How long the test may take to get a CONNACK.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// Where a connection test goes.
struct Target {
    url: String,
    username: Option<String>,
    password: Option<String>,
    verify_cert: bool,
    ca_pem: Option<String>,
    protocol_version: MqttVersion,
}

/// `POST /api/v1/products/{id}/mqtt-config/test`
pub async fn test(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
    body: Option<Json<Value>>,
) -> Result<Json<Value>, ApiError> {
    let product_id = product(&raw)?;
    let body = body.map(|Json(b)| ConfigBody::from_json(b)).transpose()?;
    let saved = saved_config(&s, &product_id).await?;
    let target = match (body, saved) {
        (Some(b), saved) if b.names_a_broker() => from_body(&s, &product_id, b, saved)?,
        (_, Some(r)) => from_saved(&s, &product_id, &r)?,
        (_, None) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_configured",
                format!("product {product_id} has no MQTT config and the body gives none"),
            ))
        }
    };
    Ok(Json(connect(target).await?))
}

/// The saved config's connection settings, if there is one.
async fn saved_config(s: &AdminState, product_id: &str) -> Result<Option<Row>, ApiError> {
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    c.query_opt("SELECT host, port, protocol, username, password_encrypted, use_tls, verify_cert, ca_cert_pem, ws_path, protocol_version FROM mqtt_configs WHERE product_id = $1", &[&product_id])
        .await
        .map_err(ApiError::internal)
}

/// The body's settings, with the stored password when the body keeps it.
fn from_body(
    s: &AdminState,
    product_id: &str,
    b: ConfigBody,
    saved: Option<Row>,
) -> Result<Target, ApiError> {
    let keep = b.keeps_stored_password();
    let v = validate(product_id, b)?;
    // The stored password goes only to the broker it was saved for: a test of another host
    // (a typo, or someone fishing for it) gets none.
    let same_broker =
        |r: &Row| r.get::<_, &str>("host") == v.host && r.get::<_, i32>("port") == v.port;
    let password = match (keep, &saved) {
        (true, Some(r)) if same_broker(r) => {
            open_saved(s, product_id, r.get("password_encrypted"))?
        }
        (true, _) => None,
        _ => v.password,
    };
    Ok(Target {
        url: broker_url(&v.protocol, v.use_tls, &v.host, v.port, &v.ws_path),
        username: v.username,
        password,
        verify_cert: v.verify_cert,
        ca_pem: v.ca_cert_pem,
        protocol_version: MqttVersion::parse(&v.protocol_version).unwrap_or_default(),
    })
}

/// The saved settings and password.
fn from_saved(s: &AdminState, product_id: &str, r: &Row) -> Result<Target, ApiError> {
    Ok(Target {
        url: broker_url(
            r.get("protocol"),
            r.get("use_tls"),
            r.get("host"),
            r.get("port"),
            r.get("ws_path"),
        ),
        username: r.get("username"),
        password: open_saved(s, product_id, r.get("password_encrypted"))?,
        verify_cert: r.get("verify_cert"),
        ca_pem: r.get("ca_cert_pem"),
        protocol_version: MqttVersion::parse(r.get("protocol_version")).unwrap_or_default(),
    })
}

/// Connects once with a throwaway client id and describes the broker's answer.
async fn connect(target: Target) -> Result<Value, ApiError> {
    let cfg = MqttConfig {
        url: target.url.clone(),
        client_id: format!("fleetflow-test-{}", rand::random::<u32>()),
        username: target.username,
        password: target.password.map(secrecy::SecretString::from),
        verify_cert: target.verify_cert,
        ca_pem: target.ca_pem,
        clean_start: true,
        keep_alive_secs: 10,
        protocol_version: target.protocol_version,
        ..MqttConfig::default()
    };
    let (client, mut el) =
        fleetflow_actors::source::connect(&cfg, 10).map_err(|e| ApiError::bad_field("host", e))?;
    el.set_connection_timeout(CONNECT_TIMEOUT.as_secs());
    let host = target.url;
    let started = Instant::now();
    let outcome = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match el.poll().await {
                Ok(SourceEvent::ConnAck { .. }) => return Ok((0, "connected")),
                Ok(_) => continue,
                Err(e) => return e.refusal().ok_or_else(|| e.to_string()),
            }
        }
    })
    .await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let _ = client.disconnect();
    let (connected, code, text) = match outcome {
        Ok(Ok((n, text))) => (n == 0, Some(n), text.to_string()),
        Ok(Err(e)) => (false, None, format!("connection failed: {e}")),
        Err(_) => (false, None, "timed out after 10 s".to_string()),
    };
    // Today's fields, and the old API's (`status`, `error`, `details`) beside them.
    Ok(json!({
        "connected": connected,
        "reason_code": code,
        "reason": text,
        "latency_ms": latency_ms,
        "broker": host,
        "status": if connected { "success" } else { "error" },
        "error": if connected { Value::Null } else { json!(text) },
        "details": if connected { "Connected successfully".to_string() } else { text.clone() },
    }))
}

/// Opens the stored password (409 without the key or when it does not open).
fn open_saved(
    s: &AdminState,
    product_id: &str,
    sealed: Option<Vec<u8>>,
) -> Result<Option<String>, ApiError> {
    let Some(sealed) = sealed else {
        return Ok(None);
    };
    let key = s.secret_key.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::CONFLICT,
            "no_secret_key",
            crate::secrets::SecretError::NoKey.to_string(),
        )
    })?;
    key.open(&sealed, &format!("product:{product_id}"))
        .map(Some)
        .map_err(|e| ApiError::new(StatusCode::CONFLICT, "cannot_decrypt", e.to_string()))
}
