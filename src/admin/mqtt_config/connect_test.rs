//! `POST /api/v1/products/{id}/mqtt-config/test`: connects with the given settings (or the
//! saved ones, with the stored password) and reports the CONNACK; never touches the running
//! source.

use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use fleetflow_actors::config::MqttConfig;
use fleetflow_actors::source_manager::broker_url;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
use rumqttc::v5::{AsyncClient, ConnectionError, Event};
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
    c.query_opt("SELECT host, port, protocol, username, password_encrypted, use_tls, verify_cert, ca_cert_pem, ws_path FROM mqtt_configs WHERE product_id = $1", &[&product_id])
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
    let password = match (keep, &saved) {
        (true, Some(r)) => open_saved(s, product_id, r.get("password_encrypted"))?,
        _ => v.password,
    };
    Ok(Target {
        url: broker_url(&v.protocol, v.use_tls, &v.host, v.port, &v.ws_path),
        username: v.username,
        password,
        verify_cert: v.verify_cert,
        ca_pem: v.ca_cert_pem,
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
    })
}

/// Connects once with a throwaway client id and describes the broker's answer.
async fn connect(target: Target) -> Result<Value, ApiError> {
    let cfg = MqttConfig {
        url: target.url.clone(),
        client_id: format!("fleetflow-test-{}", rand::random::<u32>()),
        username: target.username,
        password: target.password,
        verify_cert: target.verify_cert,
        ca_pem: target.ca_pem,
        clean_start: true,
        keep_alive_secs: 10,
        ..MqttConfig::default()
    };
    let mut o =
        fleetflow_actors::source::options(&cfg).map_err(|e| ApiError::bad_field("host", e))?;
    o.set_connection_timeout(CONNECT_TIMEOUT.as_secs());
    let host = target.url;
    let (client, mut el) = AsyncClient::new(o, 10);
    let started = Instant::now();
    let outcome = tokio::time::timeout(CONNECT_TIMEOUT, async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(a))) => return Ok(a.code),
                Ok(_) => continue,
                Err(ConnectionError::ConnectionRefused(code)) => return Ok(code),
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    let latency_ms = started.elapsed().as_millis() as u64;
    let _ = client.try_disconnect();
    let (connected, code, text) = match outcome {
        Ok(Ok(code)) => {
            let (n, text) = reason(code);
            (
                code == ConnectReturnCode::Success,
                Some(n),
                text.to_string(),
            )
        }
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

/// Human-readable CONNACK reasons.
fn reason(code: ConnectReturnCode) -> (u8, &'static str) {
    match code {
        ConnectReturnCode::Success => (0, "connected"),
        ConnectReturnCode::BadUserNamePassword => (134, "bad username or password"),
        ConnectReturnCode::NotAuthorized => (135, "not authorized"),
        ConnectReturnCode::ClientIdentifierNotValid => (133, "client identifier not valid"),
        ConnectReturnCode::ServerUnavailable => (136, "server unavailable"),
        ConnectReturnCode::ServerBusy => (137, "server busy"),
        ConnectReturnCode::Banned => (138, "banned"),
        ConnectReturnCode::BadAuthenticationMethod => (140, "bad authentication method"),
        ConnectReturnCode::UnsupportedProtocolVersion => (132, "unsupported protocol version"),
        _ => (128, "refused by the broker"),
    }
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
