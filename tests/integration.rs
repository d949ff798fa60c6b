//! Every integration test of the engine, in one binary: one link instead of one per file keeps
//! a clean build small and quick (each test binary statically links the whole engine). Each
//! module is one capability, tested black-box against the real services (`scripts/services`);
//! nextest still runs every test in its own process.

mod common;

mod admin;
mod alerts;
mod backlog;
mod broker_restarts;
mod cluster;
mod cluster_console;
mod cluster_harness;
mod cluster_resync;
mod compat;
mod compose;
mod console;
mod console_pages;
mod gxp;
mod hosted;
mod images;
mod ingest;
mod load_smoke;
mod mqtt311;
mod mqtt_config;
mod observability;
mod outages;
#[cfg(feature = "fault-injection")]
mod reliability;
mod sim_gxp;
mod subscriptions;
mod tenancy;
mod transports;
mod trends;
