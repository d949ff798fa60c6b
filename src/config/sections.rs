//! The binary's own sections: `[postgres]`, `[http]`, `[log]` and `[shutdown]`.

use serde::{Deserialize, Serialize};

/// `[postgres]` (`Debug` shows the URL without its password).
#[derive(Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PostgresConfig {
    /// Connection URL. Default `postgres://fleetflow:fleetflow@127.0.0.1:55432/fleetflow`
    /// (what `scripts/services up` starts). Never logged with its password.
    #[serde(default = "default_pg_url")]
    pub url: String,
    /// Pool size. Default 8.
    #[serde(default = "default_pool_size")]
    pub pool_size: usize,
    /// Connect and checkout timeout, in ms. Default 5000.
    #[serde(default = "default_pg_timeout_ms")]
    pub connect_timeout_ms: u64,
    /// Apply `migrations/` at startup. Default true.
    #[serde(default = "default_true")]
    pub migrate_on_start: bool,
}

impl std::fmt::Debug for PostgresConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PostgresConfig")
            .field("url", &super::redact_url(&self.url))
            .field("pool_size", &self.pool_size)
            .field("connect_timeout_ms", &self.connect_timeout_ms)
            .field("migrate_on_start", &self.migrate_on_start)
            .finish()
    }
}

fn default_pg_url() -> String {
    "postgres://fleetflow:fleetflow@127.0.0.1:55432/fleetflow".into()
}
fn default_pool_size() -> usize {
    8
}
fn default_pg_timeout_ms() -> u64 {
    5000
}
fn default_true() -> bool {
    true
}

impl Default for PostgresConfig {
    fn default() -> Self {
        Self {
            url: default_pg_url(),
            pool_size: default_pool_size(),
            connect_timeout_ms: default_pg_timeout_ms(),
            migrate_on_start: true,
        }
    }
}

/// `[http]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HttpConfig {
    /// Address for `/metrics`, `/health` and `/ready`. Default `127.0.0.1:9464`.
    #[serde(default = "default_bind")]
    pub bind: String,
    /// How often the fleet gauges (devices by last seen) are recomputed, in ms. Default 60000.
    #[serde(default = "default_fleet_stats_interval_ms")]
    pub fleet_stats_interval_ms: u64,
}

fn default_fleet_stats_interval_ms() -> u64 {
    60_000
}

fn default_bind() -> String {
    "127.0.0.1:9464".into()
}

impl Default for HttpConfig {
    fn default() -> Self {
        Self {
            bind: default_bind(),
            fleet_stats_interval_ms: default_fleet_stats_interval_ms(),
        }
    }
}

/// Log output format.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable.
    #[default]
    Pretty,
    /// One JSON object per line.
    Json,
}

/// `[log]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    /// `pretty` or `json`. Default `pretty`.
    #[serde(default)]
    pub format: LogFormat,
    /// An `EnvFilter` directive such as `info` or `fleetflow=debug`. Default `info`.
    #[serde(default = "default_level")]
    pub level: String,
}

fn default_level() -> String {
    "info".into()
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Pretty,
            level: default_level(),
        }
    }
}

/// `[runtime]`: the engine's threads.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RuntimeConfig {
    /// Worker threads of the tokio runtime that drives the sources, sinks, uploads and the HTTP
    /// server. 0 (the default): one fewer than the cores, at least one, since the actix hub
    /// thread and the device arbiters (`devices.arbiters`, one per core) run beside them. On 2
    /// cores one worker cut the p99 capture latency at half load from 315–503 ms to 131–166 ms
    /// (docs/performance.md).
    #[serde(default)]
    pub io_threads: usize,
}

impl RuntimeConfig {
    /// The worker threads to start.
    pub fn io_threads(&self) -> usize {
        match self.io_threads {
            0 => std::thread::available_parallelism()
                .map_or(1, |n| n.get().saturating_sub(1))
                .max(1),
            n => n,
        }
    }
}

/// `[shutdown]`
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ShutdownConfig {
    /// How long a graceful shutdown may take before what is left is abandoned, in ms.
    /// Default 20000.
    #[serde(default = "default_deadline_ms")]
    pub deadline_ms: u64,
}

fn default_deadline_ms() -> u64 {
    20_000
}

impl Default for ShutdownConfig {
    fn default() -> Self {
        Self {
            deadline_ms: default_deadline_ms(),
        }
    }
}
