//! The `fleetflow` binary's library: the control plane. It loads the config, wires the runtime
//! of `fleetflow-actors` together, and serves the HTTP endpoints, the admin API and console;
//! it owns restarts, the hosted broker, wake schedules, the device-command queue and secrets.
//!
//! # Layout
//! - [`config`]: the typed config file, environment overrides and validation.
//! - [`engine`]: wiring of the runtime (storage, sinks, router, sources) and the control plane,
//!   and the coordinated shutdown.
//! - [`db`]: the Postgres pool and the embedded migrations.
//! - [`http`]: `/metrics`, `/health`, `/ready`.
//! - [`admin`]: the token-protected admin API and the operator console.
//! - [`restart`]: in-process restarts requested over HTTP or as database rows, with their audit
//!   trail; [`restart::RestartTarget`] is what a restart acts on.
//! - [`hosted`]: the hosted Mosquitto: per-organisation credentials, its dynamic-security API,
//!   the reconcile loop and connection statistics.
//! - [`schedules`]: wake schedules in `device_schedules`, mirrored into the in-memory book the
//!   device actors answer the GXP wake hello from.
//! - [`command_queue`]: publishes queued `device_commands` rows (from the API or any tool) in
//!   each device's format.
//! - [`fleet_stats`]: fleet-level gauges from the database (devices by last seen).
//! - [`secrets`]: AEAD sealing of broker passwords at rest (it opens them for the runtime's
//!   source manager through `PasswordOpener`).
//! - [`retention`]: deletes old images (marking their `captures` rows) and old rows, per
//!   `[retention]`.
//! - [`rotate`]: re-seals stored broker passwords under a new key.
//! - [`replay`]: re-uploads images kept in the dead-letter directory.
//! - [`telemetry`]: logging and the Prometheus recorder.
//!
//! Must not depend on: the simulator (`fleetflow-sim`). See `ARCHITECTURE.md`.

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
pub mod retention;
pub mod rotate;
pub mod schedules;
pub mod secrets;
pub mod telemetry;
