//! `[admin]`: the admin API's tokens, and the restart rate limit and poll.

use secrecy::{ExposeSecret, SecretString};
use serde::{Deserialize, Serialize};

/// `[admin]`: the admin API.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdminConfig {
    /// The bearer token (prefer `FLEETFLOW_ADMIN__TOKEN` or `token_file`). Without a token the
    /// API answers 503 and the console cannot log in. Never logged.
    #[serde(default, skip_serializing)]
    pub token: Option<SecretString>,
    /// File holding the token (named `admin` in the audit trail).
    #[serde(default)]
    pub token_file: Option<String>,
    /// File of more admin tokens, one `name token` per line (`#` starts a comment), so that the
    /// audit trail says who asked (`requested_by`). Names are 1-64 of `[A-Za-z0-9._@-]`.
    #[serde(default)]
    pub tokens_file: Option<String>,
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
    pub restart_token: Option<SecretString>,
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
            tokens_file: None,
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
    /// A line of `admin.tokens_file` that is not `name token` (the line, not its content).
    #[error("admin.tokens_file line {0}: expected `name token`, the name 1-64 of [A-Za-z0-9._@-]")]
    TokensLine(usize),
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

impl AdminConfig {
    /// The named admin tokens: `admin` (the token setting) and those of `tokens_file`.
    pub fn resolve_named_tokens(&self) -> Result<Vec<(String, String)>, SecretFileError> {
        let mut out: Vec<(String, String)> = self
            .resolve_token()?
            .map(|t| ("admin".to_string(), t))
            .into_iter()
            .collect();
        let Some(path) = &self.tokens_file else {
            return Ok(out);
        };
        let text = std::fs::read_to_string(path).map_err(|source| SecretFileError::Read {
            setting: "admin.tokens_file".into(),
            path: path.clone(),
            source,
        })?;
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = || SecretFileError::TokensLine(n + 1);
            let (name, token) = line.split_once(char::is_whitespace).ok_or_else(bad)?;
            let token = token.trim();
            let name_ok = !name.is_empty()
                && name.len() <= 64
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"._@-".contains(&b));
            if !name_ok || token.contains(char::is_whitespace) {
                return Err(bad());
            }
            if token.len() < 16 {
                return Err(SecretFileError::TooShort(format!(
                    "admin.tokens_file line {}",
                    n + 1
                )));
            }
            out.push((name.to_string(), token.to_string()));
        }
        Ok(out)
    }
}

/// A token from its setting or file; at least 16 characters (an empty one would match a request
/// without one).
fn resolve(
    value: &Option<SecretString>,
    file: &Option<String>,
    name: &str,
) -> Result<Option<String>, SecretFileError> {
    let token = match (value.as_ref().map(|t| t.expose_secret().trim()), file) {
        (Some(t), _) if !t.is_empty() => t.to_string(),
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

#[cfg(test)]
mod tests {
    use super::*;

    fn with_file(text: &str) -> (tempfile::TempDir, AdminConfig) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("tokens");
        std::fs::write(&path, text).unwrap();
        let cfg = AdminConfig {
            token: Some("admin-token-0123456789".into()),
            tokens_file: Some(path.display().to_string()),
            ..AdminConfig::default()
        };
        (dir, cfg)
    }

    #[test]
    fn the_tokens_file_names_each_token_after_the_admin_one() {
        let (_d, cfg) = with_file(
            "# who\n\nops-alice  alice-token-0123456789\nci.bot@x ci-token-0123456789abc\n",
        );
        let names: Vec<String> = cfg
            .resolve_named_tokens()
            .unwrap()
            .into_iter()
            .map(|(n, _)| n)
            .collect();
        assert_eq!(names, ["admin", "ops-alice", "ci.bot@x"]);
    }

    #[test]
    fn a_bad_line_is_refused_by_its_number_without_its_content() {
        let (_d, cfg) = with_file("ok-name ok-token-0123456789ab\nno_token_here\n");
        let e = cfg.resolve_named_tokens().unwrap_err().to_string();
        assert!(e.contains("line 2") && !e.contains("no_token_here"), "{e}");
        let (_d, cfg) = with_file("short tiny\n");
        assert!(cfg
            .resolve_named_tokens()
            .unwrap_err()
            .to_string()
            .contains("16"));
    }
}
