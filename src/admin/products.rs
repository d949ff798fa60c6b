//! `GET /api/v1/products`: every product with a broker config (`mqtt_configs`), with its live
//! connection status (`mqtt_connection_status`) and its number of subscriptions, for the
//! console's products page. Passwords are never read here.

use axum::extract::State;
use axum::Json;
use chrono::{DateTime, Utc};
use fleetflow_actors::source_manager::broker_url;
use serde_json::{json, Value};

use super::{AdminState, ApiError};

const LIST: &str =
    "SELECT c.product_id, c.host, c.port, c.protocol, c.use_tls, c.ws_path, c.prefix, c.enabled,
  c.updated_at, s.connected, s.connection_error, s.last_connected_at, s.messages_received,
  (SELECT count(*) FROM mqtt_subscriptions m WHERE m.mqtt_config_id = c.id) AS subscriptions
  FROM mqtt_configs c LEFT JOIN mqtt_connection_status s ON s.product_id = c.product_id
  ORDER BY c.product_id";

/// `GET /api/v1/products`: `{"products": [{product_id, host, port, protocol, url, prefix,
/// enabled, connected, connection_error, last_connected_at, messages_received, subscriptions,
/// updated_at}]}`, by product id. `connected` is false until the source reports a status.
pub async fn list(State(s): State<AdminState>) -> Result<Json<Value>, ApiError> {
    let c = s.pool.get().await.map_err(ApiError::internal)?;
    let rows = c.query(LIST, &[]).await.map_err(ApiError::internal)?;
    let products: Vec<Value> = rows
        .iter()
        .map(|r| {
            json!({
                "product_id": r.get::<_, String>("product_id"),
                "host": r.get::<_, String>("host"),
                "port": r.get::<_, i32>("port"),
                "protocol": r.get::<_, String>("protocol"),
                "url": broker_url(r.get("protocol"), r.get("use_tls"), r.get("host"), r.get("port"), r.get("ws_path")),
                "prefix": r.get::<_, String>("prefix"),
                "enabled": r.get::<_, bool>("enabled"),
                "connected": r.get::<_, Option<bool>>("connected").unwrap_or(false),
                "connection_error": r.get::<_, Option<String>>("connection_error"),
                "last_connected_at": r.get::<_, Option<DateTime<Utc>>>("last_connected_at"),
                "messages_received": r.get::<_, Option<i64>>("messages_received").unwrap_or(0),
                "subscriptions": r.get::<_, i64>("subscriptions"),
                "updated_at": r.get::<_, DateTime<Utc>>("updated_at"),
            })
        })
        .collect();
    Ok(Json(json!({ "products": products })))
}
