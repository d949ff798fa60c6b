//! `[admin]`: the admin API's tokens, and the restart rate limit and poll.

use serde::{Deserialize, Serialize};

/// `[admin]`: the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The bearer token (prefer `FLEETFLOW_ADMIN__TOKEN` or `token_file`). Without a token the
    /// API answers 503 and the console cannot log in. Never logged.
    #[serde(default, skip_serializing)]
    pub token: Option<String>,
    /// File holding the token.
    #[serde(default)]
    pub token_file: Option<String>,
    /// The restart rate limit's window per target, in seconds. Default 300.
    #[serde(default = "default_cooldown")]
    pub restart_cooldown_secs: u64,
    /// Restarts allowed per target within the window. Default 1.
    #[serde(default = "default_restart_max")]
    pub restart_max_per_window: u32,
    /// A token that may only request restarts (`X-Restart-Token` header on
    /// `POST /api/v1/restarts`), for automation that should not hold the admin token. Prefer
    /// `FLEETFLOW_ADMIN__RESTART_TOKEN` or `restart_token_file`. Never logged.
    #[serde(default, skip_serializing)]
    pub restart_token: Option<String>,
    /// File holding the restart token.
    #[serde(default)]
    pub restart_token_file: Option<String>,
    /// How often the restart worker polls `service_restart_requests` besides LISTEN/NOTIFY, in
    /// seconds. Default 30.
    #[serde(default = "default_restart_poll")]
    pub restart_poll_secs: u64,
}

fn default_restart_poll() -> u64 {
    30
}

fn default_restart_max() -> u32 {
    1
}

fn default_cooldown() -> u64 {
    300
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            token: None,
            token_file: None,
            restart_cooldown_secs: default_cooldown(),
            restart_max_per_window: default_restart_max(),
            restart_token: None,
            restart_token_file: None,
            restart_poll_secs: default_restart_poll(),
        }
    }
}

/// `[restart_webhook]`: the old restart webhook's calls (`GET /health`, `POST /restart` with
/// `X-Restart-Token`) on a listener of their own. Off unless `bind` is set; the token is
/// `[admin] restart_token`, and the cooldown and limit are `[admin]`'s.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RestartWebhookConfig {
    /// Where to listen, e.g. `0.0.0.0:9999` (the old webhook's port). Unset: off.
    #[serde(default)]
    pub bind: Option<String>,
}

/// A token or password that could not be read from its setting or file (the value itself is
/// never part of the message).
#[derive(Debug, thiserror::Error)]
pub enum SecretFileError {
    /// The file named by a `*_file` setting cannot be read.
    #[error("{setting} {path}: {source}")]
    Read {
        /// The setting, e.g. `admin.token_file`.
        setting: String,
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A token shorter than 16 characters (an empty one would match a request without one).
    #[error("{0} must be at least 16 characters")]
    TooShort(String),
}

impl AdminConfig {
    /// The configured token, from the value or the file.
    pub fn resolve_token(&self) -> Result<Option<String>, SecretFileError> {
        resolve(&self.token, &self.token_file, "admin.token")
    }

    /// The restart-only token, from the setting or its file.
    pub fn resolve_restart_token(&self) -> Result<Option<String>, SecretFileError> {
        resolve(
            &self.restart_token,
            &self.restart_token_file,
            "admin.restart_token",
        )
    }
}

/// A token from its setting or file; at least 16 characters (an empty one would match a request
/// without one).
fn resolve(
    value: &Option<String>,
    file: &Option<String>,
    name: &str,
) -> Result<Option<String>, SecretFileError> {
    let token = match (value, file) {
        (Some(t), _) if !t.trim().is_empty() => t.trim().to_string(),
        (_, Some(f)) => std::fs::read_to_string(f)
            .map(|s| s.trim().to_string())
            .map_err(|source| SecretFileError::Read {
                setting: format!("{name}_file"),
                path: f.clone(),
                source,
            })?,
        _ => return Ok(None),
    };
    if token.len() < 16 {
        return Err(SecretFileError::TooShort(name.to_string()));
    }
    Ok(Some(token))
}
