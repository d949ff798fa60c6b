//! Restarts done in process, requested over HTTP or as `service_restart_requests` rows. The
//! table is the audit trail for both paths; the SQL function `request_service_restart`
//! enforces the per-target cooldown, so it holds across engine processes.
//!
//! # Layout
//! - [`target`]: [`RestartTarget`], the one parser of target texts, and its canonical text.
//! - [`restarter`]: executes a target with its health check and records the outcome; the
//!   worker that claims pending rows (the entry point for rows).
//! - [`request`]: the entry point for a restart requested now (over HTTP): recorded through
//!   the SQL function's cooldown, then executed. `crate::admin::restarts` maps it to HTTP; the
//!   admin API depends on this module, never the reverse.
//!
//! Targets, each followed by a health check recorded in `result`:
//! - `device:<id>`: a fresh actor (in-flight assemblies resync through NACKs); it must answer;
//! - `source:<product_id>`: reconnect; it must be connected within 5 s;
//! - `sink:postgres`: a new connection pool for the sink; a `SELECT 1` round trip through it;
//! - `sink:objects`: a new object-store client; write, read back and delete a probe object;
//! - `pipeline`: everything, in graceful-shutdown order (sources stop forwarding, device actors
//!   drain, the Postgres sink flushes), then new sinks and reconnected sources; all checks.

pub mod request;
pub mod restarter;
pub mod target;

pub use request::{Executed, RequestError, RestartRequest};
pub use restarter::{spawn_worker, Outcome, RestartError, Restarter};
pub use target::{RestartTarget, TargetError};
