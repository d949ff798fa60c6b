//! The `fleetflow` binary's library: everything between the command line and the actor crate.
//!
//! # Layout
//! - [`admin`]: the token-protected admin API and the operator console.
//! - [`config`]: the typed config file, environment overrides and validation.
//! - [`db`]: the Postgres pool and the embedded migrations.
//! - [`telemetry`]: logging and the Prometheus recorder.
//! - [`http`]: `/metrics`, `/health`, `/ready`.
//! - [`restart`]: in-process restarts requested over HTTP or as database rows, with their audit
//!   trail; [`restart::RestartTarget`] is what a restart acts on.
//! - [`rotate`]: re-seals stored broker passwords under a new key.
//! - [`secrets`]: AEAD sealing of broker passwords at rest.
//! - [`replay`]: re-uploads images kept in the dead-letter directory.
//! - [`fleet_stats`]: fleet-level gauges from the database (devices by last seen).
//! - [`sources`]: the MQTT sources, from the database (hot-reloaded) or the `[mqtt]` section.
//! - [`engine`]: wiring of source, router, device actors and sinks, and graceful shutdown.
//! - [`schedules`]: wake schedules in `device_schedules`, mirrored into the in-memory book the
//!   device actors answer the GXP wake hello from.
//! - [`command_queue`]: publishes queued `device_commands` rows (from the API or any tool) in
//!   each device's format.

pub mod admin;
pub mod command_queue;
pub mod config;
pub mod db;
pub mod engine;
pub mod fleet_stats;
pub mod hosted;
pub mod http;
pub mod replay;
pub mod restart;
pub mod rotate;
pub mod schedules;
pub mod secrets;
pub mod telemetry;
