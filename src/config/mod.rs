//! The engine's configuration: one serde struct per section, loaded from defaults, then the
//! TOML file, then `FLEETFLOW_SECTION__KEY` environment variables. Bad config fails at startup
//! with a message naming the field.
//!
//! The config depends on nothing else in this crate: the admin API, the hosted broker and the
//! wiring import their sections from here.
//!
//! - `sections`: `[postgres]`, `[http]`, `[log]`, `[shutdown]`.
//! - `admin`: `[admin]`, the admin API's tokens and the restart rate limit.
//! - `hosted`: `[hosted]`, the managed broker.
//! - `alerts`: `[alerts]`, thresholds behind the alert gauges.
//! - `retention`: `[retention]`, how long images and rows are kept.
//! - The runtime's sections (`[mqtt]`, `[objects]`, `[assembly]`, `[devices]`, `[sinks]`) are
//!   the actor crate's, re-exported here.

use std::path::Path;

use figment::providers::{Env, Format, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

mod admin;
mod alerts;
mod hosted;
mod retention;
mod sections;

pub use admin::{AdminConfig, RestartWebhookConfig, SecretFileError};
pub use alerts::AlertsConfig;
pub use fleetflow_actors::config::{
    AssemblyConfig, ClusterConfig, DevicesConfig, MqttConfig, ObjectsConfig, PublishLogConfig,
    SinksConfig,
};
pub use hosted::HostedConfig;
pub use retention::RetentionConfig;
pub use sections::{
    HttpConfig, LogConfig, LogFormat, PostgresConfig, RuntimeConfig, ShutdownConfig,
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
    /// The message log (`device_publish_log`).
    #[serde(default)]
    pub publish_log: PublishLogConfig,
    /// Metrics and health endpoints.
    #[serde(default)]
    pub http: HttpConfig,
    /// Logging.
    #[serde(default)]
    pub log: LogConfig,
    /// Shutdown.
    #[serde(default)]
    pub shutdown: ShutdownConfig,
    /// The engine's threads.
    #[serde(default)]
    pub runtime: RuntimeConfig,
    /// Admin API and console.
    #[serde(default)]
    pub admin: AdminConfig,
    /// The hosted broker (dynamic security) and its device credentials.
    #[serde(default)]
    pub hosted: HostedConfig,
    /// The old restart webhook's calls, on a listener of their own (off by default).
    #[serde(default)]
    pub restart_webhook: RestartWebhookConfig,
    /// Thresholds behind the alert gauges (`fleet_stats`).
    #[serde(default)]
    pub alerts: AlertsConfig,
    /// How long images and rows are kept (off by default; `crate::retention`).
    #[serde(default)]
    pub retention: RetentionConfig,
    /// Cluster mode: several engines share one fleet through NATS JetStream (off by default;
    /// `docs/scale-out.md`).
    #[serde(default)]
    pub cluster: ClusterConfig,
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

    /// The I/O runtime leaves a core to the actix thread and the arbiters, keeps at least one
    /// worker, and takes an explicit count as it is; so does `[objects] fsync` default on.
    #[test]
    fn io_threads_default_to_one_fewer_than_the_cores_and_objects_to_fsync() {
        let cfg = Config::from_toml("").unwrap();
        let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
        assert_eq!(cfg.runtime.io_threads(), cores.saturating_sub(1).max(1));
        assert!(cfg.objects.fsync);
        let cfg = Config::from_toml("[runtime]\nio_threads = 3\n[objects]\nfsync = false").unwrap();
        assert_eq!(cfg.runtime.io_threads(), 3);
        assert!(!cfg.objects.fsync);
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
    fn the_mqtt_protocol_version_is_5_or_3_1_1_and_anything_else_names_the_field() {
        use fleetflow_actors::config::MqttVersion;
        assert_eq!(
            Config::from_toml("").unwrap().mqtt.protocol_version,
            MqttVersion::V5
        );
        let cfg = Config::from_toml("[mqtt]\nprotocol_version = \"3.1.1\"\n").unwrap();
        assert_eq!(cfg.mqtt.protocol_version, MqttVersion::V311);
        assert!(cfg
            .to_redacted_toml()
            .contains(r#"protocol_version = "3.1.1""#));
        for bad in ["\"4\"", "\"3.1\"", "311", "true"] {
            let e = Config::from_toml(&format!("[mqtt]\nprotocol_version = {bad}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.contains("mqtt.protocol_version"), "{bad}: {e}");
            assert!(e.contains(r#""5" or "3.1.1""#), "{bad}: {e}");
        }
    }

    #[test]
    fn the_admin_and_hosted_sections_live_here_with_their_defaults() {
        let cfg = Config::from_toml(
            "[admin]\nrestart_max_per_window = 3\n[hosted]\nreconcile_secs = 5\n",
        )
        .unwrap();
        assert_eq!(cfg.admin.restart_max_per_window, 3);
        assert_eq!(cfg.admin.restart_cooldown_secs, 300);
        assert_eq!(cfg.hosted.reconcile_secs, 5);
        assert_eq!(cfg.hosted.topics_for(7), "org_7/devices/#");
        let e = Config::from_toml("[hosted]\nbroker = \"mqtt://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("broker"), "{e}");
    }

    #[test]
    fn passwords_are_redacted_from_urls() {
        assert_eq!(
            redact_url("postgres://u:secret@h:5/db"),
            "postgres://u:***@h:5/db"
        );
        assert_eq!(redact_url("postgres://h/db"), "postgres://h/db");
    }

    #[test]
    fn debug_output_holds_no_secret() {
        let toml = r#"
            [mqtt]
            password = "mqtt-pass-a1b2c3"
            [postgres]
            url = "postgres://u:pg-pass-d4e5f6@h:5/db"
            [objects]
            secret_access_key = "s3-secret-g7h8i9"
            [admin]
            token = "admin-token-j0k1l2m3n4"
            restart_token = "restart-token-o5p6q7r8"
            [hosted]
            admin_password = "dynsec-pass-s9t0u1"
        "#;
        let cfg = Config::from_toml(toml).unwrap();
        let secrets = [
            "mqtt-pass-a1b2c3",
            "pg-pass-d4e5f6",
            "s3-secret-g7h8i9",
            "admin-token-j0k1l2m3n4",
            "restart-token-o5p6q7r8",
            "dynsec-pass-s9t0u1",
        ];
        // Positive control: the secrets were read, each where the engine uses it.
        assert_eq!(
            cfg.admin.resolve_token().unwrap().as_deref(),
            Some(secrets[3])
        );
        assert_eq!(
            cfg.hosted.resolve_password().unwrap().as_deref(),
            Some(secrets[5])
        );
        assert!(cfg.postgres.url.contains(secrets[1]));
        for shown in [format!("{cfg:?}"), format!("{cfg:#?}")] {
            for secret in secrets {
                assert!(!shown.contains(secret), "{secret} in Debug output");
            }
            assert!(shown.contains("REDACTED"), "{shown}");
        }
    }
}
