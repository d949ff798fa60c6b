//! The token-protected admin API (`/api/v1/...`) and the operator console (`/`).
//!
//! - `auth`: bearer-token check in constant time, and the JSON error shape.
//! - `devices`: device list and detail, capture thumbnails.
//! - `commands`: device commands (§6).
//! - `mqtt_config`: broker config per product (sealed passwords, masked output, connection test).
//! - `console`: the embedded web page.

mod auth;
mod commands;
mod console;
mod devices;
mod mqtt_config;
mod organizations;
mod publish;
mod schedules;
mod subscriptions;

use std::sync::Arc;

use actix::Addr;
use axum::routing::{get, post};
use axum::Router;
use deadpool_postgres::Pool;
use fleetflow_actors::router::Router as DeviceRouter;
use metrics_exporter_prometheus::PrometheusHandle;
use object_store::ObjectStore;
use serde::{Deserialize, Serialize};

pub use auth::ApiError;

/// `[admin]`: the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The bearer token (prefer `FLEETFLOW_ADMIN__TOKEN` or `token_file`). Without a token the
    /// API answers 503 and the console cannot log in. Never logged.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// File holding the token.
    #[serde(default)]
    pub token_file: Option<String>,
    /// The restart rate limit's window per target, in seconds. Default 300.
    #[serde(default = "default_cooldown")]
    pub restart_cooldown_secs: u64,
    /// Restarts allowed per target within the window. Default 1.
    #[serde(default = "default_restart_max")]
    pub restart_max_per_window: u32,
    /// A token that may only request restarts (`X-Restart-Token` header on
    /// `POST /api/v1/restarts`), for automation that should not hold the admin token. Prefer
    /// `FLEETFLOW_ADMIN__RESTART_TOKEN` or `restart_token_file`. Never logged.
    #[serde(default, skip_serializing)]
    pub restart_token: Option<String>,
    /// File holding the restart token.
    #[serde(default)]
    pub restart_token_file: Option<String>,
    /// How often the restart worker polls `service_restart_requests` besides LISTEN/NOTIFY, in
    /// seconds. Default 30.
    #[serde(default = "default_restart_poll")]
    pub restart_poll_secs: u64,
}

fn default_restart_poll() -> u64 {
    30
}

fn default_restart_max() -> u32 {
    1
}

fn default_cooldown() -> u64 {
    300
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token: None,
            token_file: None,
            restart_cooldown_secs: default_cooldown(),
            restart_max_per_window: default_restart_max(),
            restart_token: None,
            restart_token_file: None,
            restart_poll_secs: default_restart_poll(),
        }
    }
}

impl AdminConfig {
    /// The configured token, from the value or the file.
    pub fn resolve_token(&self) -> Result<Option<String>, String> {
        resolve(&self.token, &self.token_file, "admin.token")
    }

    /// The restart-only token, from the setting or its file.
    pub fn resolve_restart_token(&self) -> Result<Option<String>, String> {
        resolve(
            &self.restart_token,
            &self.restart_token_file,
            "admin.restart_token",
        )
    }
}

/// A token from its setting or file; at least 16 characters (an empty one would match a request
/// without one).
fn resolve(
    value: &Option<String>,
    file: &Option<String>,
    name: &str,
) -> Result<Option<String>, String> {
    let token = match (value, file) {
        (Some(t), _) if !t.trim().is_empty() => t.trim().to_string(),
        (_, Some(f)) => std::fs::read_to_string(f)
            .map(|s| s.trim().to_string())
            .map_err(|e| format!("{name}_file {f}: {e}"))?,
        _ => return Ok(None),
    };
    if token.len() < 16 {
        return Err(format!("{name} must be at least 16 characters"));
    }
    Ok(Some(token))
}

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Devices and captures.
    pub pool: Pool,
    /// Images and the thumbnail cache.
    pub store: Arc<dyn ObjectStore>,
    /// Live actor state and restarts.
    pub router: Addr<DeviceRouter>,
    /// The token, if configured.
    pub token: Option<Arc<str>>,
    /// Totals for the console.
    pub prometheus: PrometheusHandle,
    /// Executes restarts and records them.
    pub restarter: crate::restart::Restarter,
    /// Cooldown per restart target, in seconds.
    pub cooldown_secs: u64,
    /// Restarts allowed per target within the cooldown window.
    pub restart_max: u32,
    /// The restart-only token, if configured.
    pub restart_token: Option<Arc<str>>,
    /// Publishes commands in each device's format.
    pub commands: crate::command_queue::CommandSender,
    /// Wake schedules (shared with the device actors).
    pub book: Arc<fleetflow_protocol::schedule::ScheduleBook>,
    /// Seals broker passwords (`FLEETFLOW_SECRET_KEY`).
    pub secret_key: Option<crate::secrets::SecretKey>,
    /// The running sources' connections (publish API).
    pub links: fleetflow_actors::source_manager::Links,
    /// The hosted broker, when configured.
    pub hosted: Option<crate::hosted::Hosted>,
}

/// The admin routes and the console.
pub fn routes(state: AdminState) -> Router {
    let api = Router::new()
        .route("/api/v1/stats", get(devices::stats))
        .route("/api/v1/sources", get(devices::sources))
        .route("/api/v1/devices", get(devices::list))
        .route("/api/v1/devices/{device_id}", get(devices::detail))
        .route(
            "/api/v1/devices/{device_id}/captures/{capture_id}/thumbnail",
            get(devices::thumbnail),
        )
        .route(
            "/api/v1/devices/{device_id}/schedule",
            get(schedules::get).put(schedules::put),
        )
        .route(
            "/api/v1/devices/{device_id}/commands",
            post(commands::create),
        )
        .route(
            "/api/v1/products/{product_id}/mqtt-config",
            get(mqtt_config::get).put(mqtt_config::put),
        )
        .route(
            "/api/v1/products/{product_id}/mqtt-config/test",
            post(mqtt_config::test),
        )
        .route(
            "/api/v1/products/{product_id}/mqtt-config/status",
            get(mqtt_config::status),
        )
        .route(
            "/api/v1/products/{product_id}/mqtt-config/reconnect",
            post(mqtt_config::reconnect),
        )
        .route(
            "/api/v1/products/{product_id}/mqtt-config/subscriptions",
            get(subscriptions::list).post(subscriptions::create),
        )
        .route(
            "/api/v1/products/{product_id}/mqtt-config/subscriptions/{sub_id}",
            axum::routing::put(subscriptions::update).delete(subscriptions::delete),
        )
        .route(
            "/api/v1/products/{product_id}/publish",
            post(publish::product_publish),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .with_state(state.clone());
    let orgs = Router::new()
        .route(
            "/api/v1/organizations/{org_id}/mqtt-credentials",
            get(organizations::list).post(organizations::create),
        )
        .route(
            "/api/v1/organizations/{org_id}/mqtt-credentials/{credential_id}",
            axum::routing::delete(organizations::revoke),
        )
        .route(
            "/api/v1/organizations/{org_id}/mqtt-credentials/{credential_id}/rotate",
            post(organizations::rotate),
        )
        .route(
            "/api/v1/organizations/{org_id}/tokens",
            post(organizations::create_token),
        )
        .route(
            "/api/v1/organizations/{org_id}/publish",
            post(organizations::publish),
        )
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            organizations::require_org_access,
        ))
        .with_state(state.clone());
    let restart = Router::new()
        .route("/api/v1/restarts", post(crate::restart::http::create))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_restart_access,
        ))
        .with_state(state);
    Router::new()
        .merge(api)
        .merge(orgs)
        .merge(restart)
        .route("/", get(console::page))
}
