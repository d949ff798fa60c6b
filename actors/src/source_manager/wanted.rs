//! The sources the database wants: enabled `mqtt_configs` rows (their sealed passwords opened)
//! with their subscription rows, each as a [`WantedSource`] over the `[mqtt]` defaults, and the
//! fingerprint that tells whether a running source's settings changed.

use std::collections::HashMap;

use super::{ManagerError, SourceManager, DEFAULT_SOURCE};
use crate::config::{MqttConfig, MqttVersion};
use crate::subscriptions::SubscriptionRow;
use fleetflow_protocol::topic::pattern_filter;

/// A source's connection settings as one string, to notice a change. In memory only (it
/// holds the password, to notice a change of it); never logged.
pub(super) fn settings_fingerprint(c: &MqttConfig) -> String {
    format!(
        "{}|{}|{}|{:?}|{}|{}|{}|{}|{}|{:?}|{:?}|{:?}|{}|{}|{}|{:?}",
        c.url,
        c.protocol_version.as_str(),
        c.verify_cert,
        c.ca_pem,
        c.client_id,
        c.topic_prefix,
        c.qos,
        c.clean_start,
        c.keep_alive_secs,
        c.username,
        c.password
            .as_ref()
            .map(secrecy::ExposeSecret::expose_secret),
        c.gxp,
        c.ordered_acks,
        c.leak_max_count,
        c.leak_max_age_ms,
        c.company_id
    )
}

/// A source's stored password could not be opened (already recorded and logged).
pub(super) struct PasswordUnavailable;

/// The subscription rows, grouped by the `mqtt_configs` row they belong to.
async fn subscriptions_by_config(
    c: &deadpool_postgres::Client,
) -> Result<HashMap<i64, Vec<SubscriptionRow>>, ManagerError> {
    let sub_rows = c
        .query(
            "SELECT mqtt_config_id, id, name, topic, enabled, actions FROM mqtt_subscriptions ORDER BY mqtt_config_id, id",
            &[],
        )
        .await?;
    let mut subs_by_config: HashMap<i64, Vec<SubscriptionRow>> = HashMap::new();
    for r in sub_rows {
        subs_by_config
            .entry(r.get("mqtt_config_id"))
            .or_default()
            .push(SubscriptionRow {
                id: r.get("id"),
                name: r.get("name"),
                topic: r.get("topic"),
                enabled: r.get("enabled"),
                actions: r.get("actions"),
            });
    }
    Ok(subs_by_config)
}

/// One wanted source: its connection settings and its subscriptions.
pub(super) struct WantedSource {
    /// Connection settings: the row's over the `[mqtt]` defaults.
    pub(super) cfg: MqttConfig,
    /// Its subscription rows (empty: the camera profile on its prefix).
    pub(super) subs: Vec<SubscriptionRow>,
    /// `$share/<group>/` for every filter, when the row uses shared subscriptions.
    pub(super) shared_group: Option<String>,
    /// With no subscription rows: the one filter of the camera profile, instead of the four
    /// `{prefix}/+/...` ones.
    pub(super) pattern: Option<String>,
}

impl SourceManager {
    /// The sources wanted now: enabled database rows, or the default source.
    pub(super) async fn desired(&self) -> Result<HashMap<String, WantedSource>, ManagerError> {
        if self.cluster_mode {
            return Ok(HashMap::new());
        }
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT product_id, host, port, protocol, username, password_encrypted, client_id, keep_alive_secs, clean_session, prefix, qos,
                        id, use_shared, shared_group, use_tls, verify_cert, ca_cert_pem, ws_path, pattern, gxp, protocol_version, company_id
                 FROM mqtt_configs WHERE enabled ORDER BY product_id",
                &[],
            )
            .await?;
        let mut subs_by_config = subscriptions_by_config(&c).await?;
        let mut out = HashMap::new();
        let configured = !rows.is_empty();
        for r in rows {
            let product: String = r.get("product_id");
            let Ok(password) = self
                .open_password(&product, r.get("password_encrypted"))
                .await
            else {
                continue;
            };
            let config_id: i64 = r.get("id");
            let subs = subs_by_config.remove(&config_id).unwrap_or_default();
            let desired = self.desired_from_row(&product, &r, password, subs);
            out.insert(product, desired);
        }
        if !configured {
            out.insert(
                DEFAULT_SOURCE.to_string(),
                WantedSource {
                    cfg: self.default_cfg.clone(),
                    subs: Vec::new(),
                    shared_group: None,
                    pattern: None,
                },
            );
        }
        Ok(out)
    }

    /// Opens a product's sealed broker password (`None` when it has none). A password that
    /// cannot be opened (no key, or a wrong one) is recorded as the source's error and logged;
    /// the source is then not started.
    pub(super) async fn open_password(
        &self,
        product: &str,
        sealed: Option<Vec<u8>>,
    ) -> Result<Option<String>, PasswordUnavailable> {
        let Some(sealed) = sealed else {
            return Ok(None);
        };
        match &self.secret_key {
            None => {
                self.write_error(
                    product,
                    "cannot decrypt the stored password: FLEETFLOW_SECRET_KEY is not set",
                )
                .await;
                tracing::error!(product = %product, "source not started: FLEETFLOW_SECRET_KEY is not set");
                Err(PasswordUnavailable)
            }
            Some(k) => match k.open(&sealed, &format!("product:{product}")) {
                Ok(p) => Ok(Some(p)),
                Err(e) => {
                    self.write_error(product, &e.to_string()).await;
                    tracing::error!(product = %product, error = %e, "source not started");
                    Err(PasswordUnavailable)
                }
            },
        }
    }

    /// One `mqtt_configs` row (the columns of [`SourceManager::desired`]'s query) as a wanted
    /// source: its connection settings over the `[mqtt]` defaults, and its subscriptions.
    pub(super) fn desired_from_row(
        &self,
        product: &str,
        r: &tokio_postgres::Row,
        password: Option<String>,
        subs: Vec<SubscriptionRow>,
    ) -> WantedSource {
        let url = broker_url(
            r.get("protocol"),
            r.get("use_tls"),
            r.get("host"),
            r.get("port"),
            r.get("ws_path"),
        );
        let qos: i16 = r.get("qos");
        let prefix: String = r.get("prefix");
        let cfg = MqttConfig {
            url,
            verify_cert: r.get("verify_cert"),
            ca_pem: r.get("ca_cert_pem"),
            ca_file: None,
            client_id: r.get("client_id"),
            topic_prefix: prefix.clone(),
            qos: qos.clamp(0, 1) as u8,
            keep_alive_secs: r.get::<_, i32>("keep_alive_secs") as u64,
            clean_start: r.get("clean_session"),
            // The column's CHECK allows only '5' and '3.1.1'.
            protocol_version: MqttVersion::parse(r.get("protocol_version")).unwrap_or_default(),
            username: r.get("username"),
            password: password.map(secrecy::SecretString::from),
            gxp: gxp_settings(product, r.get("gxp"), &self.default_cfg.gxp),
            company_id: r.get("company_id"),
            ..self.default_cfg.clone()
        };
        let shared_group = r.get::<_, bool>("use_shared").then(|| {
            r.get::<_, Option<String>>("shared_group")
                .unwrap_or_else(|| "fleetflow".into())
        });
        WantedSource {
            cfg,
            subs,
            shared_group,
            pattern: r
                .get::<_, Option<String>>("pattern")
                .map(|p| pattern_filter(&prefix, &p)),
        }
    }
}

/// The broker URL of a `mqtt_configs` row: `protocol` (upgraded to TLS by `use_tls`), host,
/// port and, for websockets, the path.
pub fn broker_url(protocol: &str, use_tls: bool, host: &str, port: i32, ws_path: &str) -> String {
    let scheme = match (protocol, use_tls) {
        ("mqtt", true) => "mqtts",
        ("ws", true) => "wss",
        (p, _) => p,
    };
    let host = if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]")
    } else {
        host.to_string()
    };
    match scheme {
        "ws" | "wss" => format!("{scheme}://{host}:{port}{ws_path}"),
        _ => format!("{scheme}://{host}:{port}"),
    }
}

/// `$share/<group>/<filter>` when the config uses shared subscriptions.
pub(super) fn share(group: &Option<String>, filter: String) -> String {
    match group {
        Some(g) => format!("$share/{g}/{filter}"),
        None => filter,
    }
}

/// A product's GXP profile settings: its `mqtt_configs.gxp` JSON over the file defaults; a
/// bad value is logged and the defaults are used.
fn gxp_settings(
    product: &str,
    raw: Option<serde_json::Value>,
    default: &fleetflow_protocol::gxp::GxpSettings,
) -> fleetflow_protocol::gxp::GxpSettings {
    match raw {
        None => default.clone(),
        Some(v) => serde_json::from_value(v).unwrap_or_else(|e| {
            tracing::error!(product, error = %e, "mqtt_configs.gxp is invalid; using the defaults");
            default.clone()
        }),
    }
}
