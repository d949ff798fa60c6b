//! The hosted broker: a Mosquitto with the dynamic security plugin whose clients, roles and
//! ACLs fleetflow keeps in step with the `mqtt_credentials` table. Each credential is a broker
//! client with a role of its own that allows publish and subscribe only under its organisation's
//! topics (`org_{id}/devices/#` by default). A reconcile loop repairs drift at startup, on every
//! change and every `reconcile_secs`. Its settings are [`crate::config::HostedConfig`].
//!
//! - `dynsec`: the dynamic-security client (commands and their answers).
//! - `credentials`: random credentials, argon2id hashes, the broker-side client and role.
//! - `reconcile`: the loop that repairs drift between the table and the broker.
//! - `usage`: connection statistics per credential.
//! - `snippets`: ready-to-paste connection snippets for a new credential.

pub mod credentials;
pub mod dynsec;
pub mod reconcile;
pub mod snippets;
pub mod usage;

use crate::config::HostedConfig;

/// The running hosted-broker integration, shared with the API.
#[derive(Clone)]
pub struct Hosted {
    /// The admin connection.
    pub dynsec: dynsec::Dynsec,
    /// Its settings.
    pub cfg: HostedConfig,
}
