//! `/api/v1/products/{id}/mqtt-config`: broker config per product, stored in PostgreSQL with the
//! password sealed (`secrets`), validated on save, always shown masked (`"***"`), plus a
//! connection test that never touches the running source.

use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use fleetflow_actors::config::MqttConfig;
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet};
use rumqttc::v5::{AsyncClient, ConnectionError, Event};
use serde::Deserialize;
use serde_json::{json, Value};

use super::{AdminState, ApiError};
use crate::restart::target::is_product_id;
use crate::restart::RestartTarget;

/// The PUT (and test) body. Absent fields take their defaults; an absent or `"***"` password
/// keeps the stored one.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigBody {
    host: Option<String>,
    port: Option<i64>,
    protocol: Option<String>,
    use_tls: Option<bool>,
    verify_cert: Option<bool>,
    username: Option<String>,
    password: Option<String>,
    client_id: Option<String>,
    keep_alive_secs: Option<i64>,
    clean_session: Option<bool>,
    prefix: Option<String>,
    pattern: Option<String>,
    use_shared: Option<bool>,
    shared_group: Option<String>,
    qos: Option<i64>,
    enabled: Option<bool>,
    ca_cert_pem: Option<String>,
    ws_path: Option<String>,
    /// The GXP firmware profile's settings for this product (nack_topic, next_wake_format,
    /// gas_unit, resend_whole_image_after_retries, nack_max_bytes); absent keeps the file's.
    gxp: Option<Value>,
}

/// Why a text is not an MQTT topic filter.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum FilterError {
    /// Empty, longer than 65535 bytes, or holding a NUL.
    #[error("a topic filter is 1..65535 bytes without NUL")]
    Size,
    /// `#` inside a level, or not in the last one.
    #[error("`#` must be a whole level and the last one")]
    MultiLevel,
    /// `+` inside a level.
    #[error("`+` must be a whole level")]
    SingleLevel,
}

/// Checks an MQTT topic filter: `+` and `#` only as whole levels, `#` only last.
pub fn validate_filter(f: &str) -> Result<(), FilterError> {
    if f.is_empty() || f.len() > 65_535 || f.contains('\0') {
        return Err(FilterError::Size);
    }
    let levels: Vec<&str> = f.split('/').collect();
    for (i, l) in levels.iter().enumerate() {
        if l.contains('#') && (*l != "#" || i + 1 != levels.len()) {
            return Err(FilterError::MultiLevel);
        }
        if l.contains('+') && *l != "+" {
            return Err(FilterError::SingleLevel);
        }
    }
    Ok(())
}

/// Checks a product id from the URL.
pub fn product(raw: &str) -> Result<String, ApiError> {
    if !is_product_id(raw) {
        return Err(ApiError::bad_field(
            "product_id",
            "product id must be 1-64 characters of [A-Za-z0-9._-]",
        ));
    }
    Ok(raw.to_string())
}

/// A validated config ready to store or test.
struct Valid {
    host: String,
    port: i32,
    protocol: String,
    use_tls: bool,
    verify_cert: bool,
    username: Option<String>,
    password: Option<String>,
    client_id: String,
    keep_alive_secs: i32,
    clean_session: bool,
    prefix: String,
    pattern: Option<String>,
    use_shared: bool,
    shared_group: Option<String>,
    qos: i16,
    enabled: bool,
    ca_cert_pem: Option<String>,
    ws_path: String,
    gxp: Option<Value>,
}

fn validate(product_id: &str, b: ConfigBody) -> Result<Valid, ApiError> {
    let host = b
        .host
        .ok_or_else(|| ApiError::bad_field("host", "host is required"))?;
    if host.is_empty()
        || host.len() > 253
        || host.contains(|c: char| c.is_whitespace() || c == '/' || c == '@')
    {
        return Err(ApiError::bad_field(
            "host",
            "host must be a hostname or IP address",
        ));
    }
    let port = b.port.unwrap_or(1883);
    if !(1..=65_535).contains(&port) {
        return Err(ApiError::bad_field(
            "port",
            "port must be between 1 and 65535",
        ));
    }
    let protocol = b.protocol.unwrap_or_else(|| "mqtt".into());
    if !["mqtt", "mqtts", "ws", "wss"].contains(&protocol.as_str()) {
        return Err(ApiError::bad_field(
            "protocol",
            "protocol must be one of mqtt, mqtts, ws, wss",
        ));
    }
    let qos = b.qos.unwrap_or(1);
    if !(0..=2).contains(&qos) {
        return Err(ApiError::bad_field("qos", "qos must be 0, 1 or 2"));
    }
    let keep_alive = b.keep_alive_secs.unwrap_or(30);
    if !(5..=3600).contains(&keep_alive) {
        return Err(ApiError::bad_field(
            "keep_alive_secs",
            "keep_alive_secs must be between 5 and 3600",
        ));
    }
    let prefix = b.prefix.unwrap_or_else(|| "ESP32CAM".into());
    if prefix.is_empty()
        || prefix.contains(['+', '#', '\0'])
        || prefix.starts_with('/')
        || prefix.ends_with('/')
    {
        return Err(ApiError::bad_field(
            "prefix",
            "prefix must be non-empty, without wildcards or leading/trailing '/'",
        ));
    }
    if let Some(p) = &b.pattern {
        validate_filter(p).map_err(|m| ApiError::bad_field("pattern", m))?;
    }
    let use_shared = b.use_shared.unwrap_or(false);
    if let Some(g) = &b.shared_group {
        if g.is_empty()
            || !g
                .bytes()
                .all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b'-')
        {
            return Err(ApiError::bad_field(
                "shared_group",
                "shared_group must be [A-Za-z0-9_-]+",
            ));
        }
    } else if use_shared {
        return Err(ApiError::bad_field(
            "shared_group",
            "shared_group is required when use_shared is true",
        ));
    }
    let ca_cert_pem = b.ca_cert_pem.filter(|p| !p.trim().is_empty());
    if let Some(pem) = &ca_cert_pem {
        fleetflow_actors::transport::tls_config(Some(pem.as_bytes()), true)
            .map_err(|e| ApiError::bad_field("ca_cert_pem", e.to_string()))?;
    }
    let ws_path = b.ws_path.unwrap_or_else(|| "/mqtt".into());
    if !ws_path.starts_with('/')
        || ws_path.len() > 256
        || ws_path.contains(|c: char| c.is_whitespace() || c == '?' || c == '#')
    {
        return Err(ApiError::bad_field(
            "ws_path",
            "ws_path must start with '/' and hold no spaces, '?' or '#'",
        ));
    }
    if let Some(g) = &b.gxp {
        let parsed: fleetflow_protocol::gxp::GxpSettings = serde_json::from_value(g.clone())
            .map_err(|e| ApiError::bad_field("gxp", e.to_string()))?;
        if !(64..=65_535).contains(&parsed.nack_max_bytes) {
            return Err(ApiError::bad_field(
                "gxp",
                "gxp.nack_max_bytes must be between 64 and 65535",
            ));
        }
    }
    Ok(Valid {
        gxp: b.gxp,
        ca_cert_pem,
        ws_path,
        host,
        port: port as i32,
        use_tls: b
            .use_tls
            .unwrap_or(matches!(protocol.as_str(), "mqtts" | "wss")),
        protocol,
        verify_cert: b.verify_cert.unwrap_or(true),
        username: b.username.filter(|u| !u.is_empty()),
        password: b.password.filter(|p| p != "***"),
        client_id: b
            .client_id
            .unwrap_or_else(|| format!("fleetflow-{product_id}")),
        keep_alive_secs: keep_alive as i32,
        clean_session: b.clean_session.unwrap_or(false),
        prefix,
        pattern: b.pattern,
        use_shared,
        shared_group: b.shared_group,
        qos: qos as i16,
        enabled: b.enabled.unwrap_or(true),
    })
}

const SELECT: &str = "SELECT id, host, port, protocol, use_tls, verify_cert, username, password_encrypted IS NOT NULL,
  client_id, keep_alive_secs, clean_session, prefix, pattern, use_shared, shared_group, qos, enabled, created_at, updated_at,
  ca_cert_pem, ws_path, gxp
  FROM mqtt_configs WHERE product_id = $1";

fn masked(product_id: &str, r: &tokio_postgres::Row) -> Value {
    json!({
        "id": r.get::<_, i64>(0),
        "product_id": product_id,
        "host": r.get::<_, String>(1),
        "port": r.get::<_, i32>(2),
        "protocol": r.get::<_, String>(3),
        "use_tls": r.get::<_, bool>(4),
        "verify_cert": r.get::<_, bool>(5),
        "username": r.get::<_, Option<String>>(6),
        "password": if r.get::<_, bool>(7) { json!("***") } else { Value::Null },
        "client_id": r.get::<_, String>(8),
        "keep_alive_secs": r.get::<_, i32>(9),
        "clean_session": r.get::<_, bool>(10),
        "prefix": r.get::<_, String>(11),
        "pattern": r.get::<_, Option<String>>(12),
        "use_shared": r.get::<_, bool>(13),
        "shared_group": r.get::<_, Option<String>>(14),
        "qos": r.get::<_, i16>(15),
        "enabled": r.get::<_, bool>(16),
        "created_at": r.get::<_, chrono::DateTime<chrono::Utc>>(17),
        "updated_at": r.get::<_, chrono::DateTime<chrono::Utc>>(18),
        "ca_cert_pem": r.get::<_, Option<String>>(19),
        "ws_path": r.get::<_, String>(20),
        "gxp": r.get::<_, Option<Value>>(21),
        "url": fleetflow_actors::source_manager::broker_url(&r.get::<_, String>(3), r.get(4), &r.get::<_, String>(1), r.get(2), &r.get::<_, String>(20)),
    })
}

/// `GET /api/v1/products/{id}/mqtt-config`
pub async fn get(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let product_id = product(&raw)?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let Some(r) = c
        .query_opt(SELECT, &[&product_id])
        .await
        .map_err(ApiError::internal)?
    else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_configured",
            format!("product {product_id} has no MQTT config; PUT one to create it"),
        ));
    };
    let config_id: i64 = r.get(0);
    let subs = super::subscriptions::list_for(&c, config_id).await?;
    let status = c
        .query_opt("SELECT connected, last_connected_at, last_disconnected_at, messages_received, connection_error FROM mqtt_connection_status WHERE product_id = $1", &[&product_id])
        .await
        .map_err(ApiError::internal)?
        .map(|r| json!({"connected": r.get::<_, bool>(0), "last_connected_at": r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(1),
                        "last_disconnected_at": r.get::<_, Option<chrono::DateTime<chrono::Utc>>>(2), "messages_received": r.get::<_, i64>(3),
                        "connection_error": r.get::<_, Option<String>>(4)}));
    Ok(Json(
        json!({"config": masked(&product_id, &r), "default_profile_active": subs.is_empty(), "subscriptions": subs, "status": status}),
    ))
}

/// `PUT /api/v1/products/{id}/mqtt-config`: create or update; returns the masked config.
pub async fn put(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
    body: Result<Json<ConfigBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let product_id = product(&raw)?;
    let Json(body) = body.map_err(|e| ApiError::bad_field("body", e.body_text()))?;
    let v = validate(&product_id, body)?;
    let sealed = match &v.password {
        Some(p) => {
            let key = s.secret_key.as_ref().ok_or_else(|| {
                ApiError::bad_field("password", crate::secrets::SecretError::NoKey.to_string())
            })?;
            Some(key.seal(p, &format!("product:{product_id}")))
        }
        None => None,
    };
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    c.execute(
        "INSERT INTO mqtt_configs (product_id, host, port, protocol, use_tls, verify_cert, username, password_encrypted, client_id,
           keep_alive_secs, clean_session, prefix, pattern, use_shared, shared_group, qos, enabled, ca_cert_pem, ws_path, gxp)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20)
         ON CONFLICT (product_id) DO UPDATE SET host = EXCLUDED.host, port = EXCLUDED.port, protocol = EXCLUDED.protocol,
           use_tls = EXCLUDED.use_tls, verify_cert = EXCLUDED.verify_cert, username = EXCLUDED.username,
           password_encrypted = COALESCE(EXCLUDED.password_encrypted, mqtt_configs.password_encrypted),
           client_id = EXCLUDED.client_id, keep_alive_secs = EXCLUDED.keep_alive_secs, clean_session = EXCLUDED.clean_session,
           prefix = EXCLUDED.prefix, pattern = EXCLUDED.pattern, use_shared = EXCLUDED.use_shared,
           shared_group = EXCLUDED.shared_group, qos = EXCLUDED.qos, enabled = EXCLUDED.enabled,
           ca_cert_pem = EXCLUDED.ca_cert_pem, ws_path = EXCLUDED.ws_path, gxp = EXCLUDED.gxp",
        &[&product_id, &v.host, &v.port, &v.protocol, &v.use_tls, &v.verify_cert, &v.username, &sealed, &v.client_id,
          &v.keep_alive_secs, &v.clean_session, &v.prefix, &v.pattern, &v.use_shared, &v.shared_group, &v.qos, &v.enabled,
          &v.ca_cert_pem, &v.ws_path, &v.gxp],
    )
    .await
    .map_err(ApiError::internal)?;
    let r = c
        .query_one(SELECT, &[&product_id])
        .await
        .map_err(ApiError::internal)?;
    let saved_at: chrono::DateTime<chrono::Utc> = r.get(18);
    // The trigger's NOTIFY makes the source manager restart this product's source; wait (up to
    // 5 s) for its connection status to say how that went.
    let mut live_reconnect = false;
    if v.enabled {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            let st = c
                .query_opt(
                    "SELECT connected FROM mqtt_connection_status WHERE product_id = $1 AND updated_at >= $2",
                    &[&product_id, &saved_at],
                )
                .await
                .map_err(ApiError::internal)?;
            if st.is_some_and(|row| row.get::<_, bool>(0)) {
                live_reconnect = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(Json(
        json!({"config": masked(&product_id, &r), "live_reconnect": live_reconnect}),
    ))
}

/// `GET /api/v1/products/{id}/mqtt-config/status`: the live connection status.
pub async fn status(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
) -> Result<Json<Value>, ApiError> {
    let product_id = product(&raw)?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let r = c
        .query_opt(
            "SELECT connected, last_connected_at, last_disconnected_at, messages_received, subscribed_topics_count, client_id, connection_error, updated_at, broker_info
             FROM mqtt_connection_status WHERE product_id = $1",
            &[&product_id],
        )
        .await
        .map_err(ApiError::internal)?
        .ok_or_else(|| ApiError::new(StatusCode::NOT_FOUND, "not_configured", format!("product {product_id} has no source status")))?;
    type Ts = Option<chrono::DateTime<chrono::Utc>>;
    Ok(Json(json!({
        "product_id": product_id,
        "connected": r.get::<_, bool>(0),
        "last_connected_at": r.get::<_, Ts>(1),
        "last_disconnected_at": r.get::<_, Ts>(2),
        "messages_received": r.get::<_, i64>(3),
        "subscribed_topics_count": r.get::<_, i32>(4),
        "client_id": r.get::<_, Option<String>>(5),
        "connection_error": r.get::<_, Option<String>>(6),
        "updated_at": r.get::<_, chrono::DateTime<chrono::Utc>>(7),
        "broker_info": r.get::<_, Option<Value>>(8),
    })))
}

/// `POST /api/v1/products/{id}/mqtt-config/reconnect`: reconnects that source in process
/// (recorded in `service_restart_requests` as `source:<id>`, without a cooldown).
pub async fn reconnect(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
) -> Result<(StatusCode, Json<Value>), ApiError> {
    let product_id = product(&raw)?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let exists = c
        .query_opt(
            "SELECT 1 FROM mqtt_configs WHERE product_id = $1",
            &[&product_id],
        )
        .await
        .map_err(ApiError::internal)?
        .is_some();
    drop(c);
    if !exists {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_configured",
            format!("product {product_id} has no MQTT config"),
        ));
    }
    crate::restart::http::run(
        &s,
        &RestartTarget::Source(product_id),
        Some("reconnect requested over HTTP".into()),
        0,
    )
    .await
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

/// `POST /api/v1/products/{id}/mqtt-config/test`: connects with the given settings (or the saved
/// ones, with the stored password) and reports the CONNACK; never touches the running source.
pub async fn test(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
    body: Option<Json<ConfigBody>>,
) -> Result<Json<Value>, ApiError> {
    let product_id = product(&raw)?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let saved = c
        .query_opt("SELECT host, port, protocol, username, password_encrypted, use_tls, verify_cert, ca_cert_pem, ws_path FROM mqtt_configs WHERE product_id = $1", &[&product_id])
        .await
        .map_err(ApiError::internal)?;
    drop(c);
    let body = body.map(|Json(b)| b);
    let target = match (body, saved) {
        (Some(b), saved) if b.host.is_some() => {
            let keep = b.password.is_none() || b.password.as_deref() == Some("***");
            let v = validate(&product_id, b)?;
            let password = match (keep, &saved) {
                (true, Some(r)) => open_saved(&s, &product_id, r.get::<_, Option<Vec<u8>>>(4))?,
                _ => v.password,
            };
            Target {
                url: fleetflow_actors::source_manager::broker_url(
                    &v.protocol,
                    v.use_tls,
                    &v.host,
                    v.port,
                    &v.ws_path,
                ),
                username: v.username,
                password,
                verify_cert: v.verify_cert,
                ca_pem: v.ca_cert_pem,
            }
        }
        (_, Some(r)) => {
            let password = open_saved(&s, &product_id, r.get::<_, Option<Vec<u8>>>(4))?;
            Target {
                url: fleetflow_actors::source_manager::broker_url(
                    &r.get::<_, String>(2),
                    r.get(5),
                    &r.get::<_, String>(0),
                    r.get(1),
                    &r.get::<_, String>(8),
                ),
                username: r.get(3),
                password,
                verify_cert: r.get(6),
                ca_pem: r.get(7),
            }
        }
        (_, None) => {
            return Err(ApiError::new(
                StatusCode::NOT_FOUND,
                "not_configured",
                format!("product {product_id} has no MQTT config and the body gives none"),
            ))
        }
    };
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
    let mut o = fleetflow_actors::source::options(&cfg)
        .map_err(|e| ApiError::bad_field("host", e.to_string()))?;
    o.set_connection_timeout(10);
    let host = target.url;
    let (client, mut el) = AsyncClient::new(o, 10);
    let started = Instant::now();
    let outcome = tokio::time::timeout(Duration::from_secs(10), async {
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
    let body = match outcome {
        Ok(Ok(code)) => {
            let (n, text) = reason(code);
            json!({"connected": code == ConnectReturnCode::Success, "reason_code": n, "reason": text, "latency_ms": latency_ms, "broker": host})
        }
        Ok(Err(e)) => {
            json!({"connected": false, "reason_code": null, "reason": format!("connection failed: {e}"), "latency_ms": latency_ms, "broker": host})
        }
        Err(_) => {
            json!({"connected": false, "reason_code": null, "reason": "timed out after 10 s", "latency_ms": latency_ms, "broker": host})
        }
    };
    Ok(Json(body))
}

/// Where a connection test goes.
struct Target {
    url: String,
    username: Option<String>,
    password: Option<String>,
    verify_cert: bool,
    ca_pem: Option<String>,
}

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

#[cfg(test)]
mod tests {
    #[test]
    fn topic_filters_allow_wildcards_only_as_whole_levels() {
        use super::validate_filter as v;
        assert!(v("ESP32CAM/+/data").is_ok());
        assert!(v("org_1/devices/#").is_ok());
        assert!(v("#").is_ok());
        assert_eq!(v("a/#/b"), Err(super::FilterError::MultiLevel));
        assert_eq!(v("a/b#"), Err(super::FilterError::MultiLevel));
        assert_eq!(v("a/x+/b"), Err(super::FilterError::SingleLevel));
        assert_eq!(v(""), Err(super::FilterError::Size));
        assert_eq!(v("a\0b"), Err(super::FilterError::Size));
    }
}
