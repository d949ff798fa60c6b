//! The engine's configuration: one serde struct per section, loaded from defaults, then the
//! TOML file, then `FLEETFLOW_SECTION__KEY` environment variables. Bad config fails at startup
//! with a message naming the field.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use fleetflow_actors::config::{
    AssemblyConfig, DevicesConfig, MqttConfig, ObjectsConfig, SinksConfig,
};

/// The whole config file.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Broker connection.
    #[serde(default)]
    pub mqtt: MqttConfig,
    /// Database.
    #[serde(default)]
    pub postgres: PostgresConfig,
    /// Object storage.
    #[serde(default)]
    pub objects: ObjectsConfig,
    /// Chunk assembly.
    #[serde(default)]
    pub assembly: AssemblyConfig,
    /// Device actors and supervision.
    #[serde(default)]
    pub devices: DevicesConfig,
    /// Postgres batching.
    #[serde(default)]
    pub sinks: SinksConfig,
    /// Metrics and health endpoints.
    #[serde(default)]
    pub http: HttpConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Shutdown.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// Admin API and console.
    #[serde(default)]
    pub admin: crate::admin::AdminConfig,
    /// The hosted broker (dynamic security) and its device credentials.
    #[serde(default)]
    pub hosted: crate::hosted::HostedConfig,
}

/// `[postgres]`
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// A config error, naming the field.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// Parsing or type error from a file or variable.
    #[error("invalid configuration: {0}")]
    Parse(String),
    /// A value that parsed but makes no sense.
    #[error("invalid configuration: {field}: {message}")]
    Invalid {
        /// Dotted field path.
        field: &'static str,
        /// Why.
        message: String,
    },
}

impl Config {
    /// Loads defaults, then `path` (if given; it must exist), then the environment.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        let mut fig = Figment::from(Serialized::defaults(Config::default()));
        if let Some(p) = path {
            if !p.exists() {
                return Err(ConfigError::Parse(format!(
                    "config file {} does not exist",
                    p.display()
                )));
            }
            fig = fig.merge(Toml::file(p));
        }
        fig = fig.merge(
            // Only `FLEETFLOW_SECTION__KEY` names: others (FLEETFLOW_TEST_*) are not config.
            Env::prefixed("FLEETFLOW_")
                .split("__")
                .filter(|k| k.as_str().contains('.')),
        );
        let cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::Parse(render_figment_error(e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Parses a TOML string on top of the defaults (no environment), for tests and tools.
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let cfg: Config = Figment::from(Serialized::defaults(Config::default()))
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Parse(render_figment_error(e)))?;
        cfg.validate()?;
        Ok(cfg)
    }

    /// Checks values that types alone cannot.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let bad = |field, message: &str| {
            Err(ConfigError::Invalid {
                field,
                message: message.into(),
            })
        };
        if fleetflow_actors::transport::parse_url(&self.mqtt.url).is_err() {
            return bad(
                "mqtt.url",
                "must look like mqtt://host:port, mqtts://host:port, ws://host:port/path or wss://host:port/path",
            );
        }
        if self.mqtt.qos > 1 {
            return bad("mqtt.qos", "must be 0 or 1");
        }
        if self.mqtt.client_id.is_empty() {
            return bad("mqtt.client_id", "must not be empty");
        }
        if self.mqtt.topic_prefix.is_empty() || self.mqtt.topic_prefix.contains(['+', '#']) {
            return bad(
                "mqtt.topic_prefix",
                "must be non-empty and contain no wildcards",
            );
        }
        if self.mqtt.receive_maximum == 0 {
            return bad("mqtt.receive_maximum", "must be at least 1");
        }
        if !self.postgres.url.starts_with("postgres://")
            && !self.postgres.url.starts_with("postgresql://")
        {
            return bad("postgres.url", "must start with postgres://");
        }
        if self.postgres.pool_size == 0 {
            return bad("postgres.pool_size", "must be at least 1");
        }
        if !self.objects.url.starts_with("file://") && !self.objects.url.starts_with("s3://") {
            return bad("objects.url", "must start with file:// or s3://");
        }
        if self.assembly.assembly_timeout_ms == 0 {
            return bad("assembly.assembly_timeout_ms", "must be positive");
        }
        if self.assembly.max_image_bytes == 0 || self.assembly.max_image_bytes > u32::MAX as u64 {
            return bad(
                "assembly.max_image_bytes",
                "must be between 1 and 4294967295",
            );
        }
        if self.assembly.max_captures_in_flight == 0 {
            return bad("assembly.max_captures_in_flight", "must be at least 1");
        }
        if self.sinks.max_batch_rows == 0 {
            return bad("sinks.max_batch_rows", "must be at least 1");
        }
        if self.sinks.concurrency == 0 {
            return bad("sinks.concurrency", "must be at least 1");
        }
        if self.devices.mailbox_capacity == 0 {
            return bad("devices.mailbox_capacity", "must be at least 1");
        }
        if self.http.bind.parse::<std::net::SocketAddr>().is_err() {
            return bad("http.bind", "must be an address like 127.0.0.1:9464");
        }
        Ok(())
    }

    /// The config as TOML with secrets removed (for `fleetflow config`).
    pub fn to_redacted_toml(&self) -> String {
        let mut c = self.clone();
        c.postgres.url = redact_url(&c.postgres.url);
        toml::to_string_pretty(&c).unwrap_or_default()
    }
}

/// Replaces the password in a URL with `***`.
pub fn redact_url(url: &str) -> String {
    match (url.find("://"), url.rfind('@')) {
        (Some(s), Some(at)) if at > s => {
            let creds = &url[s + 3..at];
            match creds.find(':') {
                Some(c) => format!("{}{}:***{}", &url[..s + 3], &creds[..c], &url[at..]),
                None => url.to_string(),
            }
        }
        _ => url.to_string(),
    }
}

fn render_figment_error(e: figment::Error) -> String {
    e.into_iter()
        .map(|e| {
            let path = e.path.join(".");
            let src = e
                .metadata
                .as_ref()
                .map(|m| m.name.to_string())
                .unwrap_or_default();
            if path.is_empty() {
                format!("{} ({src})", e.kind)
            } else {
                format!("field `{path}`: {} ({src})", e.kind)
            }
        })
        .collect::<Vec<_>>()
        .join("; ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_example_config_parses_and_validates() {
        let text = std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/fleetflow.example.toml"
        ))
        .unwrap();
        let cfg = Config::from_toml(&text).unwrap();
        assert_eq!(cfg.mqtt.topic_prefix, "ESP32CAM");
        assert_eq!(cfg.assembly.assembly_timeout_ms, 30_000);
    }

    #[test]
    fn unknown_fields_are_refused_with_their_name() {
        let e = Config::from_toml("[assembly]\nassembly_timeout = 5\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("assembly_timeout"), "{e}");
    }

    #[test]
    fn wrong_types_name_the_field() {
        let e = Config::from_toml("[sinks]\nmax_batch_rows = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("sinks.max_batch_rows"), "{e}");
    }

    #[test]
    fn invalid_values_name_the_field() {
        let e = Config::from_toml("[mqtt]\nqos = 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("mqtt.qos"), "{e}");
        let e = Config::from_toml("[objects]\nurl = \"gs://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("objects.url"), "{e}");
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }
}
