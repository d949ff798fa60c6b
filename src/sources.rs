//! The MQTT sources: one per enabled row of `mqtt_configs`, or the file/environment `[mqtt]`
//! source when the database has none. Every source feeds the same router; each message carries
//! its source, so acks and replies go back on the right connection. A change to the rows
//! (through the API or by hand) is announced with `NOTIFY fleetflow_mqtt_config`; the manager
//! then restarts exactly the sources whose settings changed, in process, and keeps the others and
//! the device actors running. It also polls, in case a notification is missed, and writes each
//! source's state to `mqtt_connection_status`.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use deadpool_postgres::Pool;
use fleetflow_actors::config::MqttConfig;
use fleetflow_actors::router::RawPublish;
use fleetflow_actors::source::{self, SourceControl, SourceHandle};
use tokio::sync::{mpsc, watch};

use crate::secrets::SecretKey;

/// The name of the file/environment source.
pub const DEFAULT_SOURCE: &str = "default";

struct Running {
    handle: SourceHandle,
    settings: String,
    was_connected: bool,
}

/// Owns the running sources.
pub struct SourceManager {
    pool: Pool,
    pg_url: String,
    default_cfg: MqttConfig,
    tx: mpsc::Sender<RawPublish>,
    secret_key: Option<SecretKey>,
    running: HashMap<String, Running>,
    /// True while every source is connected (for `/ready`).
    pub connected: Arc<AtomicBool>,
}

/// Asks the manager to reconnect one source; the answer says whether it came back connected.
#[derive(Debug)]
pub struct RestartSource {
    /// `default` or a product id.
    pub product: String,
    /// The outcome: `Ok(connected within 5 s)`, or why it could not be restarted.
    pub reply: tokio::sync::oneshot::Sender<Result<bool, String>>,
}

/// Commands for the manager.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ManagerControl {
    /// Keep sources in step with the database.
    Run,
    /// Stop forwarding on every source (shutdown, first step).
    Drain,
    /// Disconnect every source and end.
    Stop,
}

impl SourceManager {
    /// A manager; call [`SourceManager::spawn`] to start it.
    pub fn new(
        pool: Pool,
        pg_url: String,
        default_cfg: MqttConfig,
        tx: mpsc::Sender<RawPublish>,
        secret_key: Option<SecretKey>,
    ) -> Self {
        Self {
            pool,
            pg_url,
            default_cfg,
            tx,
            secret_key,
            running: HashMap::new(),
            connected: Arc::new(AtomicBool::new(false)),
        }
    }

    /// The sources wanted now: enabled database rows, or the default source.
    async fn desired(&self) -> Result<HashMap<String, MqttConfig>, String> {
        let c = self.pool.get().await.map_err(|e| e.to_string())?;
        let rows = c
            .query(
                "SELECT product_id, host, port, protocol, username, password_encrypted, client_id, keep_alive_secs, clean_session, prefix, qos
                 FROM mqtt_configs WHERE enabled ORDER BY product_id",
                &[],
            )
            .await
            .map_err(|e| e.to_string())?;
        let mut out = HashMap::new();
        for r in rows {
            let product: String = r.get(0);
            let protocol: String = r.get(3);
            if protocol != "mqtt" {
                self.write_error(
                    &product,
                    &format!("protocol {protocol} is not supported by this version"),
                )
                .await;
                continue;
            }
            let password = match r.get::<_, Option<Vec<u8>>>(5) {
                None => None,
                Some(sealed) => {
                    match &self.secret_key {
                        None => {
                            self.write_error(&product, "cannot decrypt the stored password: FLEETFLOW_SECRET_KEY is not set").await;
                            tracing::error!(product = %product, "source not started: FLEETFLOW_SECRET_KEY is not set");
                            continue;
                        }
                        Some(k) => match k.open(&sealed, &format!("product:{product}")) {
                            Ok(p) => Some(p),
                            Err(e) => {
                                self.write_error(&product, &e.to_string()).await;
                                tracing::error!(product = %product, error = %e, "source not started");
                                continue;
                            }
                        },
                    }
                }
            };
            let qos: i16 = r.get(10);
            let cfg = MqttConfig {
                url: format!("mqtt://{}:{}", r.get::<_, String>(1), r.get::<_, i32>(2)),
                client_id: r.get(6),
                topic_prefix: r.get(9),
                qos: qos.clamp(0, 1) as u8,
                keep_alive_secs: r.get::<_, i32>(7) as u64,
                clean_start: r.get(8),
                username: r.get(4),
                password,
                ..self.default_cfg.clone()
            };
            out.insert(product, cfg);
        }
        if out.is_empty() {
            out.insert(DEFAULT_SOURCE.to_string(), self.default_cfg.clone());
        }
        Ok(out)
    }

    async fn write_error(&self, product: &str, error: &str) {
        if let Ok(c) = self.pool.get().await {
            let _ = c
                .execute(
                    "INSERT INTO mqtt_connection_status (product_id, connected, connection_error) VALUES ($1, false, $2)
                     ON CONFLICT (product_id) DO UPDATE SET connected = false, connection_error = EXCLUDED.connection_error",
                    &[&product, &error],
                )
                .await;
        }
    }

    /// Starts and stops sources to match the database.
    pub async fn reconcile(&mut self) -> Result<(), String> {
        let desired = self.desired().await?;
        // In memory only (it holds the password to notice a change of it); never logged.
        let fingerprint = |c: &MqttConfig| {
            format!(
                "{}|{}|{}|{}|{}|{}|{:?}|{:?}",
                c.url,
                c.client_id,
                c.topic_prefix,
                c.qos,
                c.clean_start,
                c.keep_alive_secs,
                c.username,
                c.password
            )
        };
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| {
                desired
                    .get(*name)
                    .is_none_or(|c| fingerprint(c) != r.settings)
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in stale {
            if let Some(r) = self.running.remove(&name) {
                tracing::info!(source = %name, "stopping MQTT source (config changed or removed)");
                stop(r.handle).await;
                self.write_status(&name, false, None).await;
            }
        }
        for (name, cfg) in desired {
            if self.running.contains_key(&name) {
                continue;
            }
            match source::spawn(&cfg, self.tx.clone()) {
                Ok(handle) => {
                    tracing::info!(source = %name, url = %cfg.url, prefix = %cfg.topic_prefix, "MQTT source started");
                    self.running.insert(
                        name,
                        Running {
                            handle,
                            settings: fingerprint(&cfg),
                            was_connected: false,
                        },
                    );
                }
                Err(e) => {
                    tracing::error!(source = %name, error = %e, "MQTT source not started");
                    self.write_error(&name, &e.to_string()).await;
                }
            }
        }
        Ok(())
    }

    async fn write_status(&self, product: &str, connected: bool, client_id: Option<&str>) {
        if let Ok(c) = self.pool.get().await {
            let _ = c
                .execute(
                    "INSERT INTO mqtt_connection_status (product_id, connected, client_id, subscribed_topics_count, last_connected_at, last_disconnected_at, connection_error)
                     VALUES ($1, $2, $3, 4, CASE WHEN $2 THEN now() END, CASE WHEN NOT $2 THEN now() END, NULL)
                     ON CONFLICT (product_id) DO UPDATE SET connected = $2, client_id = COALESCE($3, mqtt_connection_status.client_id),
                       last_connected_at = CASE WHEN $2 THEN now() ELSE mqtt_connection_status.last_connected_at END,
                       last_disconnected_at = CASE WHEN NOT $2 THEN now() ELSE mqtt_connection_status.last_disconnected_at END,
                       connection_error = NULL",
                    &[&product, &connected, &client_id],
                )
                .await;
        }
    }

    /// Reconnects one source (stop, start from its current settings) and waits up to 5 s for it.
    async fn restart_one(&mut self, product: &str) -> Result<bool, String> {
        let Some(r) = self.running.remove(product) else {
            return Err(format!("no running source {product}"));
        };
        tracing::info!(source = %product, "reconnecting MQTT source on request");
        stop(r.handle).await;
        self.reconcile().await?;
        let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
        while tokio::time::Instant::now() < deadline {
            if let Some(r) = self.running.get(product) {
                if r.handle.connected.load(Ordering::Acquire) {
                    self.refresh_status().await;
                    return Ok(true);
                }
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        self.refresh_status().await;
        Ok(false)
    }

    /// Records connection changes and the aggregate readiness flag.
    async fn refresh_status(&mut self) {
        let mut all = !self.running.is_empty();
        let mut changes = Vec::new();
        for (name, r) in self.running.iter_mut() {
            let now = r.handle.connected.load(Ordering::Acquire);
            all &= now;
            if now != r.was_connected {
                r.was_connected = now;
                changes.push((name.clone(), now));
            }
        }
        self.connected.store(all, Ordering::Release);
        for (name, now) in changes {
            self.write_status(&name, now, None).await;
        }
    }

    /// Runs the manager: reconcile at start, on every NOTIFY and every `poll_every`.
    pub fn spawn(
        mut self,
        poll_every: Duration,
    ) -> (
        watch::Sender<ManagerControl>,
        mpsc::Sender<RestartSource>,
        Arc<AtomicBool>,
        tokio::task::JoinHandle<()>,
    ) {
        let (control, mut control_rx) = watch::channel(ManagerControl::Run);
        let (restart_tx, mut restart_rx) = mpsc::channel::<RestartSource>(16);
        let connected = self.connected.clone();
        let task = tokio::spawn(async move {
            let (note_tx, mut note_rx) = mpsc::channel::<()>(16);
            let listener = tokio::spawn(crate::db::listen(
                self.pg_url.clone(),
                "fleetflow_mqtt_config",
                note_tx,
            ));
            if let Err(e) = self.reconcile().await {
                tracing::error!(error = %e, "sources not configured from the database; starting the [mqtt] source");
                if let Ok(h) = source::spawn(&self.default_cfg, self.tx.clone()) {
                    self.running.insert(
                        DEFAULT_SOURCE.into(),
                        Running {
                            handle: h,
                            settings: String::new(),
                            was_connected: false,
                        },
                    );
                }
            }
            let mut poll = tokio::time::interval(poll_every);
            let mut status = tokio::time::interval(Duration::from_millis(250));
            loop {
                tokio::select! {
                    _ = note_rx.recv() => {
                        if let Err(e) = self.reconcile().await { tracing::warn!(error = %e, "source reconcile failed"); }
                    }
                    _ = poll.tick() => {
                        if let Err(e) = self.reconcile().await { tracing::warn!(error = %e, "source reconcile failed"); }
                    }
                    _ = status.tick() => self.refresh_status().await,
                    Some(cmd) = restart_rx.recv() => {
                        let outcome = self.restart_one(&cmd.product).await;
                        let _ = cmd.reply.send(outcome);
                    }
                    changed = control_rx.changed() => {
                        let state = if changed.is_ok() { *control_rx.borrow() } else { ManagerControl::Stop };
                        match state {
                            ManagerControl::Run => {}
                            ManagerControl::Drain => {
                                for r in self.running.values() {
                                    let _ = r.handle.control.send(SourceControl::Drain);
                                }
                            }
                            ManagerControl::Stop => break,
                        }
                    }
                }
            }
            listener.abort();
            for (_, r) in self.running.drain() {
                stop(r.handle).await;
            }
            self.connected.store(false, Ordering::Release);
        });
        (control, restart_tx, connected, task)
    }
}

/// Drain, then stop and wait for a source.
async fn stop(h: SourceHandle) {
    let _ = h.control.send(SourceControl::Drain);
    let _ = h.control.send(SourceControl::Stop);
    let _ = tokio::time::timeout(Duration::from_secs(5), h.task).await;
}
