//! Test harness: starts the real `fleetflow` binary on an ephemeral HTTP port against the local
//! PostgreSQL, Mosquitto and S3 server (see `scripts/services`), each test in its own database
//! and topic prefix, plus `TestDevice`, a raw MQTT client that speaks the wire protocol.
//!
//! - `services`: where the services are, random names, free ports.
//! - `engine`: `TestEnv` (the engine process, its config, metrics and log) and `Options`.
//! - `device`: `TestDevice`, a v1 device over MQTT.
//! - `db`: a client and a fresh database.
//! - `servers`: private PostgreSQL and S3 servers for the outage tests.
//! - `broker`: a private Mosquitto with password auth, or with persistence, restartable.
//! - `publisher`: a persistent-session publisher that keeps readings until they are acked.
//! - `gxp`: the GXP firmware stand-in.
//! - `browser`: headless Chromium driven over WebDriver (chromedriver).
//!
//! Everything is re-exported here, so tests name it `common::X`.
#![allow(dead_code)]

pub mod broker;
pub mod browser;
pub mod db;
pub mod device;
pub mod engine;
pub mod gxp;
pub mod publisher;
pub mod servers;
pub mod services;

use std::time::Duration;

// Not every test binary uses every part.
#[allow(unused_imports)]
pub use db::*;
#[allow(unused_imports)]
pub use device::*;
#[allow(unused_imports)]
pub use engine::*;
#[allow(unused_imports)]
pub use servers::*;
#[allow(unused_imports)]
pub use services::*;

/// Waits until `f` returns `Some`, or panics with `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut f: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(v) = f().await {
            return v;
        }
        if tokio::time::Instant::now() > deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
