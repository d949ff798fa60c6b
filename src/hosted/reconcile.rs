//! Keeps the hosted broker in step with `mqtt_credentials`: every active row has a broker
//! client with its role, and no managed client (one with this engine's prefix) exists without
//! an active row. Runs at startup, on `NOTIFY fleetflow_mqtt_credentials` and every
//! `reconcile_secs`.

use std::collections::{HashMap, HashSet};
use std::time::Duration;

use deadpool_postgres::Pool;
use fleetflow_actors::metrics as m;

use serde_json::{json, Value};

use super::credentials::{
    create_missing, deprovision, ensure_engine_role, seal_context, ACL_TYPES,
};
use super::dynsec::{Dynsec, DynsecError};
use crate::config::HostedConfig;
use crate::secrets::{SecretError, SecretKey};

/// What one pass changed.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Report {
    /// Broker clients created for rows that had none.
    pub created: usize,
    /// Broker clients deleted that had no active row.
    pub deleted: usize,
    /// Existing clients whose role, ACLs or enabled state were put back.
    pub fixed: usize,
}

impl Report {
    /// Counts the repairs in `fleetflow_hosted_repairs_total{kind}`.
    fn count(&self) {
        for (kind, n) in [
            ("created", self.created),
            ("deleted", self.deleted),
            ("fixed", self.fixed),
        ] {
            if n > 0 {
                metrics::counter!(m::HOSTED_REPAIRS_TOTAL, "kind" => kind).increment(n as u64);
            }
        }
    }
}

/// Why a pass, or the repair of one credential, failed.
#[derive(Debug, thiserror::Error)]
pub enum ReconcileError {
    /// The broker refused a command or did not answer.
    #[error("hosted broker: {0}")]
    Broker(#[from] DynsecError),
    /// No connection from the pool.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A query failed.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// A stored password could not be opened with the configured key.
    #[error("the sealed password of {username}: {source}")]
    Sealed {
        /// The credential.
        username: String,
        /// Why it did not open.
        #[source]
        source: SecretError,
    },
}

/// The managed part of the broker (this engine's prefix), read at the start of a pass.
struct BrokerState {
    /// Clients by username, as `listClients` (verbose) describes them.
    clients: HashMap<String, Value>,
    /// Roles by name, with their ACLs.
    roles: HashMap<String, Value>,
}

/// A `mqtt_credentials` row as a pass needs it.
struct Credential {
    /// The broker username (and its role's name).
    username: String,
    /// Whether the credential was revoked.
    revoked: bool,
    /// The topic filters its role allows.
    allowed_topics: Vec<String>,
}

/// The reconcile loop's state.
#[derive(Clone)]
pub struct Reconciler {
    /// The `mqtt_credentials` rows.
    pool: Pool,
    /// The broker's admin connection.
    dynsec: Dynsec,
    /// Prefix, engine role and intervals.
    cfg: HostedConfig,
    /// Opens sealed passwords to re-create missing clients; without it they stay missing.
    key: Option<SecretKey>,
}

impl Reconciler {
    /// A reconciler.
    pub fn new(pool: Pool, dynsec: Dynsec, cfg: HostedConfig, key: Option<SecretKey>) -> Self {
        Self {
            pool,
            dynsec,
            cfg,
            key,
        }
    }

    /// One pass: the engine's own role, then deletions (a revoked credential loses its broker
    /// client even when another row cannot be repaired), then every active credential's client
    /// repaired or re-created; the rows in step are marked synced.
    pub async fn run_once(&self) -> Result<Report, ReconcileError> {
        ensure_engine_role(
            &self.dynsec,
            &self.cfg.engine_role,
            &self.cfg.admin_username,
        )
        .await?;
        // The broker first, then the rows: the API writes a row before it creates the broker
        // client, so every client listed here that belongs to a credential has its row below.
        let broker = self.broker_state().await?;
        let rows = self.credentials().await?;
        let active: HashSet<String> = rows
            .iter()
            .filter(|r| !r.revoked)
            .map(|r| r.username.clone())
            .collect();
        let mut report = Report {
            deleted: self.delete_orphan_clients(&broker, &active).await,
            ..Report::default()
        };
        self.sweep_orphan_roles(&broker, &active).await;
        let synced = self.sync_active(&broker, &rows, &mut report).await;
        report.count();
        self.mark_synced(&synced).await;
        Ok(report)
    }

    /// The managed clients and roles on the broker.
    async fn broker_state(&self) -> Result<BrokerState, DynsecError> {
        let prefix = &self.cfg.client_prefix;
        let managed = |list: Vec<Value>, key: &str| -> HashMap<String, Value> {
            list.into_iter()
                .filter_map(|v| {
                    let name = v[key].as_str()?.to_string();
                    name.starts_with(prefix).then_some((name, v))
                })
                .collect()
        };
        Ok(BrokerState {
            clients: managed(self.dynsec.list_clients_verbose().await?, "username"),
            roles: managed(self.dynsec.list_roles_verbose().await?, "rolename"),
        })
    }

    /// Every credential row, revoked ones included.
    async fn credentials(&self) -> Result<Vec<Credential>, ReconcileError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT username, revoked_at IS NOT NULL AS revoked, allowed_topics FROM mqtt_credentials",
                &[],
            )
            .await?;
        Ok(rows
            .iter()
            .map(|r| Credential {
                username: r.get("username"),
                revoked: r.get("revoked"),
                allowed_topics: r.get("allowed_topics"),
            })
            .collect())
    }

    /// Deletes managed clients without an active row; returns how many went.
    async fn delete_orphan_clients(&self, broker: &BrokerState, active: &HashSet<String>) -> usize {
        let mut deleted = 0;
        for username in broker.clients.keys().filter(|u| !active.contains(*u)) {
            match deprovision(&self.dynsec, username).await {
                Ok(()) => {
                    tracing::warn!(username = %username, "hosted broker: deleted a client with no active credential");
                    deleted += 1;
                }
                Err(e) => {
                    tracing::error!(username = %username, error = %e, "hosted broker: could not delete a client")
                }
            }
        }
        deleted
    }

    /// Managed roles whose credential is gone (a deleteRole that failed, a creation that
    /// failed half-way) are swept too.
    async fn sweep_orphan_roles(&self, broker: &BrokerState, active: &HashSet<String>) {
        for role in broker.roles.keys() {
            if active.contains(role)
                || broker.clients.contains_key(role)
                || *role == self.cfg.engine_role
            {
                continue;
            }
            match self
                .dynsec
                .call_idempotent(json!({"command": "deleteRole", "rolename": role}))
                .await
            {
                Ok(_) => {
                    tracing::info!(role = %role, "hosted broker: removed a role with no credential")
                }
                Err(e) => {
                    tracing::error!(role = %role, error = %e, "hosted broker: could not remove a role")
                }
            }
        }
    }

    /// Repairs the client of every active credential, or re-creates it when missing; returns
    /// the usernames now in step.
    async fn sync_active(
        &self,
        broker: &BrokerState,
        rows: &[Credential],
        report: &mut Report,
    ) -> Vec<String> {
        let mut synced = Vec::new();
        for row in rows.iter().filter(|r| !r.revoked) {
            let in_step = match broker.clients.get(&row.username) {
                Some(client) => {
                    let role = broker.roles.get(&row.username);
                    self.fix_client(row, client, role, report).await
                }
                None => self.recreate_client(&row.username, report).await,
            };
            if in_step {
                synced.push(row.username.clone());
            }
        }
        synced
    }

    /// An existing client put back in step; returns whether it is.
    async fn fix_client(
        &self,
        row: &Credential,
        client: &Value,
        role: Option<&Value>,
        report: &mut Report,
    ) -> bool {
        let username = &row.username;
        match self
            .fix_drift(username, client, role, &row.allowed_topics)
            .await
        {
            Ok(0) => true,
            Ok(n) => {
                tracing::warn!(username = %username, changes = n, "hosted broker: repaired a client's role or ACLs");
                report.fixed += 1;
                true
            }
            Err(e) => {
                tracing::error!(username = %username, error = %e, "hosted broker: could not repair a client");
                false
            }
        }
    }

    /// A missing client re-created from its row; returns whether it was.
    async fn recreate_client(&self, username: &str, report: &mut Report) -> bool {
        let Some(key) = &self.key else {
            tracing::error!(username = %username, "cannot re-create a hosted-broker client: FLEETFLOW_SECRET_KEY is not set");
            return false;
        };
        match self.repair(key, username).await {
            Ok(true) => {
                tracing::warn!(username = %username, "hosted broker: re-created a missing client");
                report.created += 1;
                true
            }
            Ok(false) => false,
            Err(e) => {
                tracing::error!(username = %username, error = %e, "hosted broker: could not re-create a client");
                false
            }
        }
    }

    /// Records that these credentials' clients are in step (best effort: the next pass
    /// records it otherwise).
    async fn mark_synced(&self, synced: &[String]) {
        if let Ok(c) = self.pool.get().await {
            let _ = c
                .execute(
                    "UPDATE mqtt_credentials SET broker_synced_at = now() WHERE username = ANY($1) AND revoked_at IS NULL",
                    &[&synced],
                )
                .await;
        }
    }

    /// Puts back what a credential's client must have: enabled, its role with exactly the
    /// allow ACLs of its topics, and no other role or group. Returns how many changes it made.
    async fn fix_drift(
        &self,
        username: &str,
        client: &Value,
        role: Option<&Value>,
        topics: &[String],
    ) -> Result<usize, DynsecError> {
        let mut changes = 0;
        if client["disabled"].as_bool() == Some(true) {
            self.dynsec
                .call(json!({"command": "enableClient", "username": username}))
                .await?;
            changes += 1;
        }
        changes += self.fix_role_acls(username, role, topics).await?;
        changes += self.fix_memberships(username, client).await?;
        Ok(changes)
    }

    /// The credential's role, holding exactly the allow ACLs of its topics.
    async fn fix_role_acls(
        &self,
        username: &str,
        role: Option<&Value>,
        topics: &[String],
    ) -> Result<usize, DynsecError> {
        let d = &self.dynsec;
        let mut changes = 0;
        let want = wanted_acls(topics);
        let have = allowed_acls(role);
        if role.is_none() {
            d.call_idempotent(json!({"command": "createRole", "rolename": username}))
                .await?;
            changes += 1;
        }
        // Removals first (a hand-made deny entry on a wanted topic would otherwise make the
        // addition look done): anything in the role but the wanted allow entries goes.
        let acls = role.and_then(|r| r["acls"].as_array());
        for a in acls.into_iter().flatten() {
            let (Some(acltype), Some(topic)) = (a["acltype"].as_str(), a["topic"].as_str()) else {
                continue;
            };
            let allowed = a["allow"].as_bool() == Some(true);
            if !(allowed && want.contains(&(acltype.to_string(), topic.to_string()))) {
                d.call_idempotent(json!({"command": "removeRoleACL", "rolename": username,
                                          "acltype": acltype, "topic": topic}))
                    .await?;
                changes += 1;
            }
        }
        for (acltype, topic) in want.difference(&have) {
            d.call_idempotent(json!({"command": "addRoleACL", "rolename": username,
                                      "acltype": acltype, "topic": topic, "allow": true}))
                .await?;
            changes += 1;
        }
        Ok(changes)
    }

    /// Exactly its own role, and no groups (either could widen what the client may do).
    async fn fix_memberships(&self, username: &str, client: &Value) -> Result<usize, DynsecError> {
        let d = &self.dynsec;
        let mut changes = 0;
        let mut has_role = false;
        for r in client["roles"].as_array().into_iter().flatten() {
            let Some(name) = r["rolename"].as_str() else {
                continue;
            };
            if name == username {
                has_role = true;
            } else {
                d.call_idempotent(
                    json!({"command": "removeClientRole", "username": username, "rolename": name}),
                )
                .await?;
                changes += 1;
            }
        }
        for g in client["groups"].as_array().into_iter().flatten() {
            if let Some(name) = g["groupname"].as_str() {
                d.call_idempotent(json!({"command": "removeGroupClient", "groupname": name, "username": username}))
                    .await?;
                changes += 1;
            }
        }
        if !has_role {
            d.call_idempotent(
                json!({"command": "addClientRole", "username": username, "rolename": username}),
            )
            .await?;
            changes += 1;
        }
        Ok(changes)
    }

    /// Re-creates one client from the row as it is now (a revoke or rotation since the pass
    /// began wins). Returns whether it did.
    async fn repair(&self, key: &SecretKey, username: &str) -> Result<bool, ReconcileError> {
        let row = {
            let c = self.pool.get().await?;
            c.query_opt(
                // A credential the API is creating right now (no broker sync yet) is left to it.
                "SELECT password_sealed, allowed_topics FROM mqtt_credentials WHERE username = $1 AND revoked_at IS NULL
                   AND (broker_synced_at IS NOT NULL OR created_at < now() - interval '30 seconds')",
                &[&username],
            )
            .await?
        };
        let Some(row) = row else { return Ok(false) };
        let sealed: Vec<u8> = row.get("password_sealed");
        let password = key
            .open(&sealed, &seal_context(username))
            .map_err(|source| ReconcileError::Sealed {
                username: username.to_string(),
                source,
            })?;
        let topics: Vec<String> = row.get("allowed_topics");
        Ok(create_missing(&self.dynsec, username, &password, &topics).await?)
    }

    /// Runs passes at startup, on every change notification and every `reconcile_secs`.
    pub fn spawn(self, pg_url: String) -> tokio::task::JoinHandle<()> {
        tokio::spawn(async move {
            let (wake, mut woken) = tokio::sync::mpsc::channel::<()>(1);
            let listener = tokio::spawn(crate::db::listen(
                pg_url,
                "fleetflow_mqtt_credentials",
                wake,
            ));
            let mut tick =
                tokio::time::interval(Duration::from_secs(self.cfg.reconcile_secs.max(1)));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    got = woken.recv() => if got.is_none() { break; },
                    _ = tick.tick() => {}
                }
                match self.run_once().await {
                    Ok(r) if r != Report::default() => {
                        tracing::info!(
                            created = r.created,
                            deleted = r.deleted,
                            "hosted broker reconciled"
                        )
                    }
                    Ok(_) => {}
                    Err(e) => {
                        tracing::warn!(error = %e, "hosted broker reconcile failed; retrying next round")
                    }
                }
            }
            listener.abort();
        })
    }
}

/// The (ACL type, topic) pairs a credential's role must allow.
fn wanted_acls(topics: &[String]) -> HashSet<(String, String)> {
    topics
        .iter()
        .flat_map(|t| ACL_TYPES.iter().map(move |a| (a.to_string(), t.clone())))
        .collect()
}

/// The (ACL type, topic) pairs a role allows now.
fn allowed_acls(role: Option<&Value>) -> HashSet<(String, String)> {
    let acls = role.and_then(|r| r["acls"].as_array());
    acls.into_iter()
        .flatten()
        .filter(|a| a["allow"].as_bool() == Some(true))
        .filter_map(|a| {
            Some((
                a["acltype"].as_str()?.to_string(),
                a["topic"].as_str()?.to_string(),
            ))
        })
        .collect()
}
