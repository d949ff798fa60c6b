//! `[hosted]`: the managed broker (Mosquitto with dynamic security) and the defaults of the
//! device credentials fleetflow keeps on it.

use serde::{Deserialize, Serialize};

/// `[hosted]`: the managed broker. Without `broker_url` the credential API answers 503.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostedConfig {
    /// The broker's URL as the engine reaches it (`mqtt://`, `mqtts://`, `ws://`, `wss://`).
    /// Default: none (hosted broker access off).
    #[serde(default)]
    pub broker_url: Option<String>,
    /// URLs devices use, shown with each new credential and in the snippets. Default: the
    /// `broker_url`.
    #[serde(default)]
    pub public_urls: Vec<String>,
    /// The dynamic security admin user. Default `admin`.
    #[serde(default = "default_admin")]
    pub admin_username: String,
    /// Its password (prefer `admin_password_file` or `FLEETFLOW_HOSTED__ADMIN_PASSWORD`).
    /// Never logged.
    #[serde(default, skip_serializing)]
    pub admin_password: Option<secrecy::SecretString>,
    /// File holding the admin password.
    #[serde(default)]
    pub admin_password_file: Option<String>,
    /// Prefix of every broker client and role this engine manages; others are left alone.
    /// Default `ff_`.
    #[serde(default = "default_client_prefix")]
    pub client_prefix: String,
    /// The role that lets the admin user publish anywhere (ACK/NACKs, commands, the publish
    /// API). Default `fleetflow-engine`.
    #[serde(default = "default_engine_role")]
    pub engine_role: String,
    /// Seconds between two reconcile passes (besides startup and changes). Default 30.
    #[serde(default = "default_reconcile_secs")]
    pub reconcile_secs: u64,
    /// The topic filter a new credential may use, `{organization_id}` replaced. Default
    /// `org_{organization_id}/devices/#`.
    #[serde(default = "default_topics")]
    pub default_topics: String,
}

fn default_admin() -> String {
    "admin".into()
}
fn default_client_prefix() -> String {
    "ff_".into()
}
fn default_engine_role() -> String {
    "fleetflow-engine".into()
}
fn default_reconcile_secs() -> u64 {
    30
}
fn default_topics() -> String {
    "org_{organization_id}/devices/#".into()
}

impl Default for HostedConfig {
    fn default() -> Self {
        Self {
            broker_url: None,
            public_urls: Vec::new(),
            admin_username: default_admin(),
            admin_password: None,
            admin_password_file: None,
            client_prefix: default_client_prefix(),
            engine_role: default_engine_role(),
            reconcile_secs: default_reconcile_secs(),
            default_topics: default_topics(),
        }
    }
}

impl HostedConfig {
    /// The admin password from the setting or its file.
    pub fn resolve_password(&self) -> Result<Option<String>, super::admin::SecretFileError> {
        match (&self.admin_password, &self.admin_password_file) {
            (Some(p), _) => Ok(Some(secrecy::ExposeSecret::expose_secret(p).to_string())),
            (None, Some(f)) => std::fs::read_to_string(f)
                .map(|s| Some(s.trim_end().to_string()))
                .map_err(|source| super::admin::SecretFileError::Read {
                    setting: "hosted.admin_password_file".into(),
                    path: f.clone(),
                    source,
                }),
            _ => Ok(None),
        }
    }

    /// The URLs shown to device owners.
    pub fn device_urls(&self) -> Vec<String> {
        if self.public_urls.is_empty() {
            self.broker_url.iter().cloned().collect()
        } else {
            self.public_urls.clone()
        }
    }

    /// The default topic filter of an organisation.
    pub fn topics_for(&self, organization_id: i64) -> String {
        self.default_topics
            .replace("{organization_id}", &organization_id.to_string())
    }
}
