//! The token-protected admin API (`/api/v1/...`) and the operator console (`/`).
//!
//! - `auth`: the token checks, and the JSON error shape.
//! - [`tokens`]: named tokens, compared as digests in constant time.
//! - `audit`: refused requests, counted and recorded in `admin_audit`.
//! - `devices`: device list and detail, capture thumbnails.
//! - `images`: a capture's full-size image, and links to it (presigned on S3).
//! - `commands`: device commands (§6).
//! - `command_history`: a device's commands and their status, newest first.
//! - `mqtt_config`: broker config per product (sealed passwords, masked output, connection test).
//! - `subscriptions`: a product's subscriptions and their actions.
//! - `publish`: publishing through a product's own connection.
//! - `organizations`: hosted-broker credentials per organisation, organisation tokens and
//!   publishing.
//! - `schedules`: a device's wake schedule.
//! - `messages`: a device's message log (`device_publish_log`), paged.
//! - `owners`: the source a device id is bound to (`device_owners`), and moving it.
//! - `restarts`: `POST /api/v1/restarts`, the HTTP face of [`crate::restart::request`].
//! - `restart_history`: `GET /api/v1/restarts`, the restart audit trail, paged.
//! - `products`: `GET /api/v1/products`, every product's config with its live status.
//! - [`restart_webhook`]: the old restart webhook's `GET /health` and `POST /restart`, on a
//!   listener of their own (`[restart_webhook] bind`).
//! - `params`: checks several handlers share (product ids, topic filters).
//! - `console`: the embedded web page and its scripts.
//! - `readings`: a device's sensor trends and the fleet's captures per day or week.
//! - `vendor`: uPlot, embedded for the console's charts.
//!
//! The `[admin]` settings are [`crate::config::AdminConfig`].

pub mod audit;
mod auth;
mod command_history;
mod commands;
mod console;
mod devices;
mod images;
mod messages;
mod mqtt_config;
mod organizations;
mod owners;
mod params;
mod products;
mod publish;
mod readings;
mod restart_history;
pub mod restart_webhook;
mod restarts;
mod schedules;
mod subscriptions;
pub mod tokens;
mod vendor;

use std::sync::Arc;

use axum::routing::{get, post};
use axum::Router;
use deadpool_postgres::Pool;
use fleetflow_actors::pipeline::Pipeline;
use metrics_exporter_prometheus::PrometheusHandle;
use object_store::ObjectStore;

pub use auth::ApiError;

/// What the admin handlers share.
#[derive(Clone)]
pub struct AdminState {
    /// Devices and captures.
    pub pool: Pool,
    /// Images and the thumbnail cache.
    pub store: Arc<dyn ObjectStore>,
    /// Signs image links when the store can (S3); `None` on the local filesystem.
    pub signer: Option<Arc<dyn object_store::signer::Signer>>,
    /// The runtime: live actor state, the sources' connections.
    pub pipeline: Pipeline,
    /// The named admin and restart-only tokens.
    pub tokens: Arc<tokens::AdminTokens>,
    /// Refused requests, counted and recorded.
    pub audit: Arc<audit::Audit>,
    /// Totals for the console.
    pub prometheus: PrometheusHandle,
    /// Executes restarts and records them.
    pub restarter: crate::restart::Restarter,
    /// Cooldown per restart target, in seconds.
    pub cooldown_secs: u64,
    /// Restarts allowed per target within the cooldown window.
    pub restart_max: u32,
    /// Publishes commands in each device's format.
    pub commands: crate::command_queue::CommandSender,
    /// Wake schedules (shared with the device actors).
    pub book: Arc<fleetflow_protocol::schedule::ScheduleBook>,
    /// Seals broker passwords (`FLEETFLOW_SECRET_KEY`).
    pub secret_key: Option<crate::secrets::SecretKey>,
    /// The hosted broker, when configured.
    pub hosted: Option<crate::hosted::Hosted>,
}

/// The admin routes and the console.
pub fn routes(state: AdminState) -> Router {
    let api = device_routes()
        .merge(product_routes())
        .route("/api/v1/restarts", get(restart_history::list))
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            auth::require_token,
        ))
        .with_state(state.clone());
    let orgs = organization_routes()
        .route_layer(axum::middleware::from_fn_with_state(
            state.clone(),
            organizations::require_org_access,
        ))
        .with_state(state.clone());
    let restart = Router::new()
        .route("/api/v1/restarts", post(restarts::create))
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
        .route("/console/pages.js", get(console::pages_js))
        .route("/console/device.js", get(console::device_js))
        .route("/console/main.js", get(console::main_js))
        .route("/vendor/uPlot.iife.min.js", get(vendor::uplot_js))
        .route("/vendor/uPlot.min.css", get(vendor::uplot_css))
        .route("/vendor/uPlot.LICENSE", get(vendor::uplot_license))
}

/// Devices, their captures, schedules, messages and commands, and fleet statistics (admin token).
fn device_routes() -> Router<AdminState> {
    Router::new()
        .route("/api/v1/stats", get(devices::stats))
        .route("/api/v1/sources", get(devices::sources))
        .route("/api/v1/devices", get(devices::list))
        .route("/api/v1/devices/{device_id}", get(devices::detail))
        .route(
            "/api/v1/devices/{device_id}/readings",
            get(readings::device_readings),
        )
        .route("/api/v1/stats/captures", get(readings::captures))
        .route(
            "/api/v1/devices/{device_id}/captures/{capture_id}/thumbnail",
            get(devices::thumbnail),
        )
        .route(
            "/api/v1/devices/{device_id}/captures/{capture_id}/image",
            get(images::image),
        )
        .route(
            "/api/v1/devices/{device_id}/captures/{capture_id}/link",
            get(images::link),
        )
        .route(
            "/api/v1/devices/{device_id}/schedule",
            get(schedules::get).put(schedules::put),
        )
        .route("/api/v1/devices/{device_id}/messages", get(messages::list))
        .route(
            "/api/v1/devices/{device_id}/owner",
            get(owners::get).delete(owners::delete),
        )
        .route(
            "/api/v1/devices/{device_id}/commands",
            get(command_history::list).post(commands::create),
        )
}

/// Broker config, subscriptions and publishing per product (admin token).
fn product_routes() -> Router<AdminState> {
    Router::new()
        .route("/api/v1/products", get(products::list))
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
}

/// Hosted-broker credentials, organisation tokens and publishing (admin or organisation token).
fn organization_routes() -> Router<AdminState> {
    Router::new()
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
}
