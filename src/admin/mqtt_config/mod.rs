//! `/api/v1/products/{id}/mqtt-config`: broker config per product, stored in PostgreSQL with the
//! password sealed (`secrets`), validated on save, always shown masked (`"***"`), plus a
//! connection test that never touches the running source.
//!
//! - `validate`: the body checked field by field; product ids; topic filters.
//! - `connect_test`: `POST .../test`, a one-off connection reporting the CONNACK.

mod connect_test;
mod validate;

use std::time::{Duration, Instant};

use axum::extract::{Path as UrlPath, State};
use axum::http::StatusCode;
use axum::Json;
use chrono::{DateTime, Utc};
use fleetflow_actors::source_manager::broker_url;
use serde_json::{json, Value};
use tokio_postgres::Row;

use super::params::product;
use super::{AdminState, ApiError};
use crate::restart::RestartTarget;
pub use connect_test::test;
pub use validate::ConfigBody;
use validate::{validate, Valid};

/// How long `PUT` waits for the source to report its reconnection.
const RECONNECT_WAIT: Duration = Duration::from_secs(5);

const SELECT: &str = "SELECT id, host, port, protocol, use_tls, verify_cert, username,
  password_encrypted IS NOT NULL AS has_password,
  client_id, keep_alive_secs, clean_session, prefix, pattern, use_shared, shared_group, qos, enabled, created_at, updated_at,
  ca_cert_pem, ws_path, gxp, protocol_version, company_id
  FROM mqtt_configs WHERE product_id = $1";

/// A row of [`SELECT`] as the API shows it: the password only as `"***"` when set.
fn masked(product_id: &str, r: &Row) -> Value {
    json!({
        "id": r.get::<_, i64>("id"),
        "product_id": product_id,
        "host": r.get::<_, String>("host"),
        "port": r.get::<_, i32>("port"),
        "protocol": r.get::<_, String>("protocol"),
        "protocol_version": r.get::<_, String>("protocol_version"),
        "company_id": r.get::<_, Option<i64>>("company_id"),
        "use_tls": r.get::<_, bool>("use_tls"),
        "verify_cert": r.get::<_, bool>("verify_cert"),
        "username": r.get::<_, Option<String>>("username"),
        "password": if r.get::<_, bool>("has_password") { json!("***") } else { Value::Null },
        "client_id": r.get::<_, String>("client_id"),
        "keep_alive_secs": r.get::<_, i32>("keep_alive_secs"),
        "clean_session": r.get::<_, bool>("clean_session"),
        "prefix": r.get::<_, String>("prefix"),
        "pattern": r.get::<_, Option<String>>("pattern"),
        "use_shared": r.get::<_, bool>("use_shared"),
        "shared_group": r.get::<_, Option<String>>("shared_group"),
        "qos": r.get::<_, i16>("qos"),
        "enabled": r.get::<_, bool>("enabled"),
        "created_at": r.get::<_, DateTime<Utc>>("created_at"),
        "updated_at": r.get::<_, DateTime<Utc>>("updated_at"),
        "ca_cert_pem": r.get::<_, Option<String>>("ca_cert_pem"),
        "ws_path": r.get::<_, String>("ws_path"),
        "gxp": r.get::<_, Option<Value>>("gxp"),
        "url": broker_url(r.get("protocol"), r.get("use_tls"), r.get("host"), r.get("port"), r.get("ws_path")),
    })
}

/// The masked config in the old API's nested shape (`broker`, `topics`), for its clients.
fn nested(flat: &Value) -> Value {
    let f = |k: &str| flat[k].clone();
    json!({
        "id": f("id"),
        "product_id": f("product_id"),
        "broker": {
            "host": f("host"), "port": f("port"), "protocol": f("protocol"), "use_tls": f("use_tls"),
            "verify_cert": f("verify_cert"), "username": f("username"), "password": f("password"),
            "client_id": f("client_id"), "keep_alive": f("keep_alive_secs"), "clean_session": f("clean_session"),
            "protocol_version": f("protocol_version"),
        },
        "topics": {
            "prefix": f("prefix"), "pattern": f("pattern"), "use_shared": f("use_shared"),
            "shared_group": f("shared_group"), "qos": f("qos"),
        },
        "enabled": f("enabled"),
        "created_at": f("created_at"),
        "updated_at": f("updated_at"),
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
        // The old API's answer: 200 with nulls, so clients can tell "not yet" from an error.
        return Ok(Json(json!({
            "product_id": product_id,
            "config": null,
            "mqtt_config": null,
            "subscriptions": null,
            "status": null,
            "message": "MQTT not configured for this product",
        })));
    };
    let config_id: i64 = r.get("id");
    let subs = super::subscriptions::list_for(&c, config_id).await?;
    let status = c
        .query_opt("SELECT connected, last_connected_at, last_disconnected_at, messages_received, connection_error FROM mqtt_connection_status WHERE product_id = $1", &[&product_id])
        .await
        .map_err(ApiError::internal)?
        .map(|r| json!({"connected": r.get::<_, bool>("connected"), "last_connected_at": r.get::<_, Option<DateTime<Utc>>>("last_connected_at"),
                        "last_disconnected_at": r.get::<_, Option<DateTime<Utc>>>("last_disconnected_at"), "messages_received": r.get::<_, i64>("messages_received"),
                        "connection_error": r.get::<_, Option<String>>("connection_error")}));
    let config = masked(&product_id, &r);
    Ok(Json(json!({
        "product_id": product_id,
        "mqtt_config": nested(&config),
        "config": config,
        "default_profile_active": subs.is_empty(),
        "subscriptions": subs,
        "status": status,
    })))
}

/// `PUT /api/v1/products/{id}/mqtt-config`: create or update; returns the masked config.
pub async fn put(
    State(s): State<AdminState>,
    UrlPath(raw): UrlPath<String>,
    body: Result<Json<Value>, axum::extract::rejection::JsonRejection>,
) -> Result<Json<Value>, ApiError> {
    let product_id = product(&raw)?;
    let Json(body) = body.map_err(|e| ApiError::bad_field("body", e.body_text()))?;
    let v = validate(&product_id, ConfigBody::from_json(body)?)?;
    let sealed = seal_password(&s, &product_id, v.password.as_deref())?;
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    upsert(&c, &product_id, &v, &sealed).await?;
    let r = c
        .query_one(SELECT, &[&product_id])
        .await
        .map_err(ApiError::internal)?;
    // The trigger's NOTIFY makes the source manager restart this product's source; wait for its
    // connection status to say how that went.
    let live_reconnect =
        v.enabled && reconnected_since(&c, &product_id, r.get("updated_at")).await?;
    let config = masked(&product_id, &r);
    // The old API's fields beside today's: the source is reconnected in process, so no restart
    // is ever required.
    Ok(Json(json!({
        "status": "success",
        "message": "MQTT configuration updated successfully",
        "requires_restart": false,
        "mqtt_config": nested(&config),
        "config": config,
        "live_reconnect": live_reconnect,
    })))
}

/// The new password sealed under the secret key (400 naming `password` without one).
fn seal_password(
    s: &AdminState,
    product_id: &str,
    password: Option<&str>,
) -> Result<Option<Vec<u8>>, ApiError> {
    let Some(p) = password else { return Ok(None) };
    let key = s
        .secret_key
        .as_ref()
        .ok_or_else(|| ApiError::bad_field("password", crate::secrets::SecretError::NoKey))?;
    Ok(Some(key.seal(p, &format!("product:{product_id}"))))
}

/// Inserts or updates the product's row; without a new password the stored one stays.
async fn upsert(
    c: &deadpool_postgres::Client,
    product_id: &str,
    v: &Valid,
    sealed: &Option<Vec<u8>>,
) -> Result<(), ApiError> {
    c.execute(
        "INSERT INTO mqtt_configs (product_id, host, port, protocol, use_tls, verify_cert, username, password_encrypted, client_id,
           keep_alive_secs, clean_session, prefix, pattern, use_shared, shared_group, qos, enabled, ca_cert_pem, ws_path, gxp, protocol_version, company_id)
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19, $20, $21, $22)
         ON CONFLICT (product_id) DO UPDATE SET host = EXCLUDED.host, port = EXCLUDED.port, protocol = EXCLUDED.protocol,
           use_tls = EXCLUDED.use_tls, verify_cert = EXCLUDED.verify_cert, username = EXCLUDED.username,
           password_encrypted = COALESCE(EXCLUDED.password_encrypted, mqtt_configs.password_encrypted),
           client_id = EXCLUDED.client_id, keep_alive_secs = EXCLUDED.keep_alive_secs, clean_session = EXCLUDED.clean_session,
           prefix = EXCLUDED.prefix, pattern = EXCLUDED.pattern, use_shared = EXCLUDED.use_shared,
           shared_group = EXCLUDED.shared_group, qos = EXCLUDED.qos, enabled = EXCLUDED.enabled,
           ca_cert_pem = EXCLUDED.ca_cert_pem, ws_path = EXCLUDED.ws_path, gxp = EXCLUDED.gxp,
           protocol_version = EXCLUDED.protocol_version, company_id = EXCLUDED.company_id",
        &[&product_id, &v.host, &v.port, &v.protocol, &v.use_tls, &v.verify_cert, &v.username, sealed, &v.client_id,
          &v.keep_alive_secs, &v.clean_session, &v.prefix, &v.pattern, &v.use_shared, &v.shared_group, &v.qos, &v.enabled,
          &v.ca_cert_pem, &v.ws_path, &v.gxp, &v.protocol_version, &v.company_id],
    )
    .await
    .map_err(ApiError::internal)?;
    Ok(())
}

/// Whether the product's source reported itself connected since `saved_at`, polled for up to
/// [`RECONNECT_WAIT`].
async fn reconnected_since(
    c: &deadpool_postgres::Client,
    product_id: &str,
    saved_at: DateTime<Utc>,
) -> Result<bool, ApiError> {
    let deadline = Instant::now() + RECONNECT_WAIT;
    while Instant::now() < deadline {
        let st = c
            .query_opt(
                "SELECT connected FROM mqtt_connection_status WHERE product_id = $1 AND updated_at >= $2",
                &[&product_id, &saved_at],
            )
            .await
            .map_err(ApiError::internal)?;
        if st.is_some_and(|row| row.get::<_, bool>("connected")) {
            return Ok(true);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(false)
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
    type Ts = Option<DateTime<Utc>>;
    Ok(Json(json!({
        "product_id": product_id,
        "connected": r.get::<_, bool>("connected"),
        "last_connected_at": r.get::<_, Ts>("last_connected_at"),
        "last_disconnected_at": r.get::<_, Ts>("last_disconnected_at"),
        "messages_received": r.get::<_, i64>("messages_received"),
        "subscribed_topics_count": r.get::<_, i32>("subscribed_topics_count"),
        "client_id": r.get::<_, Option<String>>("client_id"),
        "connection_error": r.get::<_, Option<String>>("connection_error"),
        "updated_at": r.get::<_, DateTime<Utc>>("updated_at"),
        "broker_info": r.get::<_, Option<Value>>("broker_info"),
    })))
}

/// `POST /api/v1/products/{id}/mqtt-config/reconnect`: reconnects that source in process
/// (recorded in `service_restart_requests` as `source:<id>`, without a cooldown).
pub async fn reconnect(
    State(s): State<AdminState>,
    axum::Extension(caller): axum::Extension<crate::admin::tokens::Caller>,
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
    crate::admin::restarts::run(
        &s,
        RestartTarget::Source(product_id),
        Some("reconnect requested over HTTP".into()),
        0,
        &caller,
    )
    .await
}
