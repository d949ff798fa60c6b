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
use super::dynsec::Dynsec;
use crate::config::HostedConfig;
use crate::secrets::SecretKey;

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

/// The reconcile loop's state.
#[derive(Clone)]
pub struct Reconciler {
    pool: Pool,
    dynsec: Dynsec,
    cfg: HostedConfig,
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

    /// One pass.
    pub async fn run_once(&self) -> Result<Report, String> {
        ensure_engine_role(
            &self.dynsec,
            &self.cfg.engine_role,
            &self.cfg.admin_username,
        )
        .await
        .map_err(|e| e.to_string())?;
        // The broker first, then the rows: the API writes a row before it creates the broker
        // client, so every client listed here that belongs to a credential has its row below.
        let clients: HashMap<String, Value> = self
            .dynsec
            .list_clients_verbose()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter_map(|c| {
                let u = c["username"].as_str()?.to_string();
                u.starts_with(&self.cfg.client_prefix).then_some((u, c))
            })
            .collect();
        let roles: HashMap<String, Value> = self
            .dynsec
            .list_roles_verbose()
            .await
            .map_err(|e| e.to_string())?
            .into_iter()
            .filter_map(|r| {
                let n = r["rolename"].as_str()?.to_string();
                n.starts_with(&self.cfg.client_prefix).then_some((n, r))
            })
            .collect();
        let broker: HashSet<String> = clients.keys().cloned().collect();
        let rows = {
            let c = self.pool.get().await.map_err(|e| e.to_string())?;
            c.query(
                "SELECT username, revoked_at IS NOT NULL, allowed_topics FROM mqtt_credentials",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?
        };
        let active: HashSet<String> = rows
            .iter()
            .filter(|r| !r.get::<_, bool>(1))
            .map(|r| r.get(0))
            .collect();
        let mut report = Report::default();
        // Deletions first: a revoked credential loses its broker client even when another
        // row cannot be repaired.
        for username in broker.difference(&active) {
            match deprovision(&self.dynsec, username).await {
                Ok(()) => {
                    tracing::warn!(username = %username, "hosted broker: deleted a client with no active credential");
                    report.deleted += 1;
                }
                Err(e) => {
                    tracing::error!(username = %username, error = %e, "hosted broker: could not delete a client")
                }
            }
        }
        // Managed roles whose credential is gone (a deleteRole that failed, a creation that
        // failed half-way) are swept too.
        for role in roles.keys() {
            if active.contains(role) || broker.contains(role) || *role == self.cfg.engine_role {
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
        let mut synced: Vec<String> = Vec::new();
        for r in &rows {
            let username: String = r.get(0);
            if r.get::<_, bool>(1) {
                continue;
            }
            if let Some(client) = clients.get(&username) {
                let topics: Vec<String> = r.get(2);
                match self
                    .fix_drift(&username, client, roles.get(&username), &topics)
                    .await
                {
                    Ok(0) => synced.push(username),
                    Ok(n) => {
                        tracing::warn!(username = %username, changes = n, "hosted broker: repaired a client's role or ACLs");
                        report.fixed += 1;
                        synced.push(username);
                    }
                    Err(e) => {
                        tracing::error!(username = %username, error = %e, "hosted broker: could not repair a client")
                    }
                }
                continue;
            }
            let Some(key) = &self.key else {
                tracing::error!(username = %username, "cannot re-create a hosted-broker client: FLEETFLOW_SECRET_KEY is not set");
                continue;
            };
            match self.repair(key, &username).await {
                Ok(true) => {
                    tracing::warn!(username = %username, "hosted broker: re-created a missing client");
                    report.created += 1;
                    synced.push(username);
                }
                Ok(false) => {}
                Err(e) => {
                    tracing::error!(username = %username, error = %e, "hosted broker: could not re-create a client")
                }
            }
        }
        if report.created > 0 {
            metrics::counter!(m::HOSTED_REPAIRS_TOTAL, "kind" => "created")
                .increment(report.created as u64);
        }
        if report.deleted > 0 {
            metrics::counter!(m::HOSTED_REPAIRS_TOTAL, "kind" => "deleted")
                .increment(report.deleted as u64);
        }
        if report.fixed > 0 {
            metrics::counter!(m::HOSTED_REPAIRS_TOTAL, "kind" => "fixed")
                .increment(report.fixed as u64);
        }
        if let Ok(c) = self.pool.get().await {
            let _ = c
                .execute(
                    "UPDATE mqtt_credentials SET broker_synced_at = now() WHERE username = ANY($1) AND revoked_at IS NULL",
                    &[&synced],
                )
                .await;
        }
        Ok(report)
    }

    /// Puts back what a credential's client must have: enabled, its role, and exactly the
    /// allow ACLs of its topics. Returns how many changes it made.
    async fn fix_drift(
        &self,
        username: &str,
        client: &Value,
        role: Option<&Value>,
        topics: &[String],
    ) -> Result<usize, String> {
        let d = &self.dynsec;
        let err = |e: super::dynsec::DynsecError| e.to_string();
        let mut changes = 0;
        if client["disabled"].as_bool() == Some(true) {
            d.call(json!({"command": "enableClient", "username": username}))
                .await
                .map_err(err)?;
            changes += 1;
        }
        let want: HashSet<(String, String)> = topics
            .iter()
            .flat_map(|t| ACL_TYPES.iter().map(move |a| (a.to_string(), t.clone())))
            .collect();
        let have: HashSet<(String, String)> = role
            .and_then(|r| r["acls"].as_array())
            .map(|acls| {
                acls.iter()
                    .filter(|a| a["allow"].as_bool() == Some(true))
                    .filter_map(|a| {
                        Some((
                            a["acltype"].as_str()?.to_string(),
                            a["topic"].as_str()?.to_string(),
                        ))
                    })
                    .collect()
            })
            .unwrap_or_default();
        if role.is_none() {
            d.call_idempotent(json!({"command": "createRole", "rolename": username}))
                .await
                .map_err(err)?;
            changes += 1;
        }
        // Removals first (a hand-made deny entry on a wanted topic would otherwise make the
        // addition look done): anything in the role but the wanted allow entries goes.
        if let Some(acls) = role.and_then(|r| r["acls"].as_array()) {
            for a in acls {
                let (Some(acltype), Some(topic)) = (a["acltype"].as_str(), a["topic"].as_str())
                else {
                    continue;
                };
                let allowed = a["allow"].as_bool() == Some(true);
                if !(allowed && want.contains(&(acltype.to_string(), topic.to_string()))) {
                    d.call_idempotent(json!({"command": "removeRoleACL", "rolename": username,
                                              "acltype": acltype, "topic": topic}))
                        .await
                        .map_err(err)?;
                    changes += 1;
                }
            }
        }
        for (acltype, topic) in want.difference(&have) {
            d.call_idempotent(json!({"command": "addRoleACL", "rolename": username,
                                      "acltype": acltype, "topic": topic, "allow": true}))
                .await
                .map_err(err)?;
            changes += 1;
        }
        // Exactly its own role, and no groups (either could widen what it may do).
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
                .await
                .map_err(err)?;
                changes += 1;
            }
        }
        for g in client["groups"].as_array().into_iter().flatten() {
            if let Some(name) = g["groupname"].as_str() {
                d.call_idempotent(json!({"command": "removeGroupClient", "groupname": name, "username": username}))
                    .await
                    .map_err(err)?;
                changes += 1;
            }
        }
        if !has_role {
            d.call_idempotent(
                json!({"command": "addClientRole", "username": username, "rolename": username}),
            )
            .await
            .map_err(err)?;
            changes += 1;
        }
        Ok(changes)
    }

    /// Re-creates one client from the row as it is now (a revoke or rotation since the pass
    /// began wins). Returns whether it did.
    async fn repair(&self, key: &SecretKey, username: &str) -> Result<bool, String> {
        let row = {
            let c = self.pool.get().await.map_err(|e| e.to_string())?;
            c.query_opt(
                // A credential the API is creating right now (no broker sync yet) is left to it.
                "SELECT password_sealed, allowed_topics FROM mqtt_credentials WHERE username = $1 AND revoked_at IS NULL
                   AND (broker_synced_at IS NOT NULL OR created_at < now() - interval '30 seconds')",
                &[&username],
            )
            .await
            .map_err(|e| e.to_string())?
        };
        let Some(row) = row else { return Ok(false) };
        let password = key
            .open(&row.get::<_, Vec<u8>>(0), &seal_context(username))
            .map_err(|e| e.to_string())?;
        let topics: Vec<String> = row.get(1);
        create_missing(&self.dynsec, username, &password, &topics)
            .await
            .map_err(|e| e.to_string())
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
