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

use crate::config::MqttConfig;
use crate::router::RawPublish;
use crate::sinks::pg::PgSink;
use crate::source::{self, SourceControl, SourceHandle};
use actix::Addr;
use deadpool_postgres::Pool;
use fleetflow_protocol::topic::TopicParser;
use tokio::sync::{mpsc, watch};

use crate::subscriptions::{self, StatsRegistry, SubscriptionRow, SubscriptionSet};

/// The name of the file/environment source.
pub const DEFAULT_SOURCE: &str = "default";

/// Why the source manager could not do what it was asked.
#[derive(Debug, thiserror::Error)]
pub enum ManagerError {
    /// Reading the configuration tables failed.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// No database connection.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A restart named a source that is not running.
    #[error("no running source {0}")]
    NotRunning(String),
}

/// Opens broker passwords sealed at rest. The control plane owns the key (`FLEETFLOW_SECRET_KEY`);
/// the runtime only asks it to open a product's password.
pub trait PasswordOpener: Send + Sync + 'static {
    /// The plain password sealed for `context` (`product:{id}`).
    fn open(
        &self,
        sealed: &[u8],
        context: &str,
    ) -> Result<String, Box<dyn std::error::Error + Send + Sync>>;
}

/// A started source: its handle, the settings it runs with (to notice a change), and its
/// subscriptions.
struct RunningSource {
    handle: SourceHandle,
    settings: String,
    was_connected: bool,
    /// The subscription rows it runs (empty: the camera profile on its prefix).
    subs: Vec<SubscriptionRow>,
    shared_group: Option<String>,
    pattern: Option<String>,
    /// Set only with subscription rows: the dispatcher's set.
    set: Option<watch::Sender<Arc<SubscriptionSet>>>,
    /// Messages counted into `mqtt_connection_status` so far.
    reported: u64,
}

/// A source's connection settings as one string, to notice a change. In memory only (it
/// holds the password, to notice a change of it); never logged.
fn settings_fingerprint(c: &MqttConfig) -> String {
    format!(
        "{}|{}|{:?}|{}|{}|{}|{}|{}|{:?}|{:?}|{:?}",
        c.url,
        c.verify_cert,
        c.ca_pem,
        c.client_id,
        c.topic_prefix,
        c.qos,
        c.clean_start,
        c.keep_alive_secs,
        c.username,
        c.password,
        c.gxp
    )
}

/// A source's stored password could not be opened (already recorded and logged).
struct PasswordUnavailable;

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
            .entry(r.get(0))
            .or_default()
            .push(SubscriptionRow {
                id: r.get(1),
                name: r.get(2),
                topic: r.get(3),
                enabled: r.get(4),
                actions: r.get(5),
            });
    }
    Ok(subs_by_config)
}

/// One wanted source: its connection settings and its subscriptions.
struct WantedSource {
    cfg: MqttConfig,
    subs: Vec<SubscriptionRow>,
    shared_group: Option<String>,
    /// With no subscription rows: the one filter of the camera profile, instead of the four
    /// `{prefix}/+/...` ones.
    pattern: Option<String>,
}

/// Each running source's connection, by product (`default` for the `[mqtt]` source), for the
/// publish API.
pub type Links = Arc<std::sync::RwLock<HashMap<String, crate::link::MqttLink>>>;

/// Owns the running sources.
pub struct SourceManager {
    pool: Pool,
    pg_url: String,
    default_cfg: MqttConfig,
    tx: mpsc::Sender<RawPublish>,
    pg: Addr<PgSink>,
    secret_key: Option<Arc<dyn PasswordOpener>>,
    running: HashMap<String, RunningSource>,
    stats: StatsRegistry,
    http: reqwest::Client,
    /// True while every source is connected (for `/ready`).
    pub connected: Arc<AtomicBool>,
    /// The running sources' connections.
    pub links: Links,
    /// Told when a source stops for good, so that its devices can move to another source.
    router: Option<Addr<crate::router::DeviceRouter>>,
}

/// Requests to the manager, each answered on its `reply`.
#[derive(Debug)]
pub enum SourceCommand {
    /// Reconnect one source (`default` or a product id); answers whether it came back
    /// connected within 5 s, or why it could not be restarted.
    Restart {
        /// `default` or a product id.
        product: String,
        /// The outcome.
        reply: tokio::sync::oneshot::Sender<Result<bool, ManagerError>>,
    },
    /// Stop forwarding on every source (connections stay up so acks still go out).
    DrainAll {
        /// Answered once every source was told.
        reply: tokio::sync::oneshot::Sender<()>,
    },
    /// Reconnect every source; answers whether all came back connected within 5 s.
    RestartAll {
        /// The outcome.
        reply: tokio::sync::oneshot::Sender<Result<bool, ManagerError>>,
    },
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
        pg: Addr<PgSink>,
        secret_key: Option<Arc<dyn PasswordOpener>>,
    ) -> Self {
        Self {
            pool,
            pg_url,
            default_cfg,
            tx,
            pg,
            secret_key,
            running: HashMap::new(),
            links: Links::default(),
            router: None,
            stats: StatsRegistry::default(),
            http: reqwest::Client::new(),
            connected: Arc::new(AtomicBool::new(false)),
        }
    }

    /// Sets the router (before [`SourceManager::spawn`]).
    pub fn set_router(&mut self, router: Addr<crate::router::DeviceRouter>) {
        self.router = Some(router);
    }

    /// The sources wanted now: enabled database rows, or the default source.
    async fn desired(&self) -> Result<HashMap<String, WantedSource>, ManagerError> {
        let c = self.pool.get().await?;
        let rows = c
            .query(
                "SELECT product_id, host, port, protocol, username, password_encrypted, client_id, keep_alive_secs, clean_session, prefix, qos,
                        id, use_shared, shared_group, use_tls, verify_cert, ca_cert_pem, ws_path, pattern, gxp
                 FROM mqtt_configs WHERE enabled ORDER BY product_id",
                &[],
            )
            .await?;
        let mut subs_by_config = subscriptions_by_config(&c).await?;
        let mut out = HashMap::new();
        let configured = !rows.is_empty();
        for r in rows {
            let product: String = r.get(0);
            let Ok(password) = self.open_password(&product, r.get(5)).await else {
                continue;
            };
            let config_id: i64 = r.get(11);
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
    async fn open_password(
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
    fn desired_from_row(
        &self,
        product: &str,
        r: &tokio_postgres::Row,
        password: Option<String>,
        subs: Vec<SubscriptionRow>,
    ) -> WantedSource {
        let url = broker_url(
            &r.get::<_, String>(3),
            r.get(14),
            &r.get::<_, String>(1),
            r.get(2),
            &r.get::<_, String>(17),
        );
        let qos: i16 = r.get(10);
        let cfg = MqttConfig {
            url,
            verify_cert: r.get(15),
            ca_pem: r.get(16),
            ca_file: None,
            client_id: r.get(6),
            topic_prefix: r.get(9),
            qos: qos.clamp(0, 1) as u8,
            keep_alive_secs: r.get::<_, i32>(7) as u64,
            clean_start: r.get(8),
            username: r.get(4),
            password,
            gxp: gxp_settings(product, r.get(19), &self.default_cfg.gxp),
            ..self.default_cfg.clone()
        };
        let shared_group = r.get::<_, bool>(12).then(|| {
            r.get::<_, Option<String>>(13)
                .unwrap_or_else(|| "fleetflow".into())
        });
        WantedSource {
            cfg,
            subs,
            shared_group,
            pattern: r.get(18),
        }
    }

    /// Starts one source (with its dispatcher when it has subscription rows). `forget` are
    /// filters a previous connection of this product held (see `source::spawn_with_filters`).
    fn start(
        &self,
        name: &str,
        d: &WantedSource,
        mut forget: Vec<String>,
    ) -> Result<RunningSource, source::SourceError> {
        let profile: Vec<String> = TopicParser::new(d.cfg.topic_prefix.clone())
            .subscriptions()
            .into_iter()
            .map(|f| share(&d.shared_group, f))
            .collect();
        let (handle, set) = if d.subs.is_empty() {
            let filters = match &d.pattern {
                Some(p) => vec![share(&d.shared_group, p.clone())],
                None => profile,
            };
            (
                source::spawn_with_filters(name, &d.cfg, filters, forget, self.tx.clone())?,
                None,
            )
        } else {
            // A session of an earlier process may still hold the camera profile's filters.
            forget.extend(profile);
            let set = self.compile_set(name, &d.subs);
            let filters = set.filters(d.shared_group.as_deref());
            let (set_tx, set_rx) = watch::channel(set);
            let (dtx, _task) =
                subscriptions::dispatch::spawn(set_rx, self.tx.clone(), self.pg.clone());
            (
                source::spawn_with_filters(name, &d.cfg, filters, forget, dtx)?,
                Some(set_tx),
            )
        };
        Ok(RunningSource {
            handle,
            settings: String::new(),
            was_connected: false,
            subs: d.subs.clone(),
            shared_group: d.shared_group.clone(),
            pattern: d.pattern.clone(),
            set,
            reported: 0,
        })
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
    pub async fn reconcile(&mut self) -> Result<(), ManagerError> {
        let desired = self.desired().await?;
        let mut held = self.stop_stale(&desired).await;
        for (name, d) in desired {
            if self.running.contains_key(&name) {
                self.reload_subscriptions(&name, d).await;
                continue;
            }
            let forget = held.remove(&name).unwrap_or_default();
            self.start_wanted(name, d, forget).await;
        }
        self.publish_links();
        Ok(())
    }

    /// Stops the running sources that are no longer wanted or whose settings changed (a
    /// change of subscriptions alone is applied in place); returns the filters each one held,
    /// for its replacement to drop from a resumed session. A removed source's devices are
    /// released by the router.
    async fn stop_stale(
        &mut self,
        desired: &HashMap<String, WantedSource>,
    ) -> HashMap<String, Vec<String>> {
        let stale: Vec<String> = self
            .running
            .iter()
            .filter(|(name, r)| {
                desired.get(*name).is_none_or(|d| {
                    settings_fingerprint(&d.cfg) != r.settings
                        || d.shared_group != r.shared_group
                        || d.pattern != r.pattern
                        || d.subs.is_empty() != r.subs.is_empty()
                })
            })
            .map(|(n, _)| n.clone())
            .collect();
        let mut held: HashMap<String, Vec<String>> = HashMap::new();
        for name in stale {
            if let Some(r) = self.running.remove(&name) {
                tracing::info!(source = %name, "stopping MQTT source (config changed or removed)");
                held.insert(name.clone(), r.handle.filters.borrow().clone());
                stop(r.handle).await;
                if !desired.contains_key(&name) {
                    if let Some(router) = &self.router {
                        router.do_send(crate::router::ReleaseSource(name.clone()));
                    }
                }
                self.write_status(&name, false, None, None).await;
            }
        }
        held
    }

    /// A running source whose subscriptions changed: swaps its set and its filters in place.
    /// A source's subscriptions, compiled with the shared statistics and webhook client.
    fn compile_set(&self, name: &str, subs: &[SubscriptionRow]) -> Arc<SubscriptionSet> {
        Arc::new(SubscriptionSet::compile(
            name,
            subs,
            &self.stats,
            &self.http,
        ))
    }

    async fn reload_subscriptions(&mut self, name: &str, d: WantedSource) {
        if self.running.get(name).is_none_or(|r| r.subs == d.subs) {
            return;
        }
        let set = self.compile_set(name, &d.subs);
        let Some(r) = self.running.get_mut(name) else {
            return;
        };
        let filters = set.filters(d.shared_group.as_deref());
        if let Some(tx) = &r.set {
            let _ = tx.send(set);
        }
        tracing::info!(source = %name, subscriptions = d.subs.len(), "subscriptions reloaded in place");
        let count = filters.len() as i32;
        let _ = r.handle.filters.send(filters);
        r.subs = d.subs;
        self.write_topics_count(name, count).await;
    }

    /// Starts a wanted source that is not running; a failure is logged and recorded as the
    /// source's error (the next reconcile tries again).
    async fn start_wanted(&mut self, name: String, d: WantedSource, forget: Vec<String>) {
        match self.start(&name, &d, forget) {
            Ok(mut running) => {
                tracing::info!(source = %name, url = %d.cfg.url, prefix = %d.cfg.topic_prefix, subscriptions = d.subs.len(), "MQTT source started");
                running.settings = settings_fingerprint(&d.cfg);
                self.running.insert(name, running);
            }
            Err(e) => {
                tracing::error!(source = %name, error = %e, "MQTT source not started");
                self.write_error(&name, &e.to_string()).await;
            }
        }
    }

    /// Refreshes [`SourceManager::links`] from the running sources.
    fn publish_links(&self) {
        let map = self
            .running
            .iter()
            .map(|(n, r)| (n.clone(), r.handle.link.clone()))
            .collect();
        *self.links.write().expect("links lock") = map;
    }

    async fn write_broker_info(&self, product: &str, info: serde_json::Value) {
        if let Ok(c) = self.pool.get().await {
            let _ = c
                .execute(
                    "UPDATE mqtt_connection_status SET broker_info = $2 WHERE product_id = $1",
                    &[&product, &info],
                )
                .await;
        }
    }

    async fn write_topics_count(&self, product: &str, count: i32) {
        if let Ok(c) = self.pool.get().await {
            let _ = c
                .execute(
                    "UPDATE mqtt_connection_status SET subscribed_topics_count = $2 WHERE product_id = $1",
                    &[&product, &count],
                )
                .await;
        }
    }

    async fn write_status(
        &self,
        product: &str,
        connected: bool,
        client_id: Option<&str>,
        topics: Option<i32>,
    ) {
        if let Ok(c) = self.pool.get().await {
            let _ = c
                .execute(
                    "INSERT INTO mqtt_connection_status (product_id, connected, client_id, subscribed_topics_count, last_connected_at, last_disconnected_at, connection_error)
                     VALUES ($1, $2, $3, COALESCE($4, 0), CASE WHEN $2 THEN now() END, CASE WHEN NOT $2 THEN now() END, NULL)
                     ON CONFLICT (product_id) DO UPDATE SET connected = $2, client_id = COALESCE($3, mqtt_connection_status.client_id),
                       subscribed_topics_count = COALESCE($4, mqtt_connection_status.subscribed_topics_count),
                       last_connected_at = CASE WHEN $2 THEN now() ELSE mqtt_connection_status.last_connected_at END,
                       last_disconnected_at = CASE WHEN NOT $2 THEN now() ELSE mqtt_connection_status.last_disconnected_at END,
                       connection_error = NULL",
                    &[&product, &connected, &client_id, &topics],
                )
                .await;
        }
    }

    /// Reconnects one source (stop, start from its current settings) and waits up to 5 s for it.
    async fn restart_one(&mut self, product: &str) -> Result<bool, ManagerError> {
        let Some(r) = self.running.remove(product) else {
            return Err(ManagerError::NotRunning(product.to_owned()));
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

    /// Records connection changes, message counts and the aggregate readiness flag.
    async fn refresh_status(&mut self) {
        let mut all = !self.running.is_empty();
        let mut changes = Vec::new();
        let mut counts = Vec::new();
        for (name, r) in self.running.iter_mut() {
            let now = r.handle.connected.load(Ordering::Acquire);
            all &= now;
            if now != r.was_connected {
                r.was_connected = now;
                let topics = r.handle.filters.borrow().len() as i32;
                let info = r.handle.broker_info.borrow().clone();
                changes.push((name.clone(), now, topics, info));
            }
            let received = r.handle.received.load(Ordering::Relaxed);
            if received != r.reported {
                counts.push((name.clone(), (received - r.reported) as i64));
                r.reported = received;
            }
        }
        self.connected.store(all, Ordering::Release);
        for (name, now, topics, info) in changes {
            self.write_status(&name, now, None, Some(topics)).await;
            if let (true, Some(info)) = (now, info) {
                self.write_broker_info(&name, info).await;
            }
        }
        if !counts.is_empty() {
            if let Ok(c) = self.pool.get().await {
                let (names, deltas): (Vec<String>, Vec<i64>) = counts.into_iter().unzip();
                let _ = c
                    .execute(
                        "UPDATE mqtt_connection_status s SET messages_received = s.messages_received + x.n
                         FROM UNNEST($1::text[], $2::int8[]) AS x(p, n) WHERE s.product_id = x.p",
                        &[&names, &deltas],
                    )
                    .await;
            }
        }
    }

    /// Runs the manager: reconcile at start, on every NOTIFY and every `poll_every`.
    pub fn spawn(
        self,
        poll_every: Duration,
    ) -> (
        watch::Sender<ManagerControl>,
        mpsc::Sender<SourceCommand>,
        Arc<AtomicBool>,
        tokio::task::JoinHandle<()>,
    ) {
        let (control, control_rx) = watch::channel(ManagerControl::Run);
        let (restart_tx, restart_rx) = mpsc::channel::<SourceCommand>(16);
        let connected = self.connected.clone();
        let task = tokio::spawn(self.run(poll_every, control_rx, restart_rx));
        (control, restart_tx, connected, task)
    }

    /// The manager's task: the first reconcile, then reconciles (NOTIFY, poll), status and
    /// statistics rounds and commands until told to stop; then every source stops.
    async fn run(
        mut self,
        poll_every: Duration,
        mut control_rx: watch::Receiver<ManagerControl>,
        mut restart_rx: mpsc::Receiver<SourceCommand>,
    ) {
        let (note_tx, mut note_rx) = mpsc::channel::<()>(16);
        let listener = tokio::spawn(crate::pg_listen::listen(
            self.pg_url.clone(),
            "fleetflow_mqtt_config",
            note_tx,
        ));
        self.first_reconcile().await;
        let mut poll = tokio::time::interval(poll_every);
        let mut status = tokio::time::interval(Duration::from_millis(250));
        let mut counts = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                _ = note_rx.recv() => self.reconcile_logged().await,
                _ = poll.tick() => self.reconcile_logged().await,
                _ = status.tick() => self.refresh_status().await,
                _ = counts.tick() => {
                    if let Err(e) = self.stats.flush(&self.pool).await {
                        tracing::warn!(error = %e, "subscription statistics not written; retrying next round");
                    }
                }
                Some(cmd) = restart_rx.recv() => self.handle_command(cmd).await,
                changed = control_rx.changed() => {
                    let state = if changed.is_ok() { *control_rx.borrow() } else { ManagerControl::Stop };
                    match state {
                        ManagerControl::Run => {}
                        ManagerControl::Drain => self.send_to_all(SourceControl::Drain),
                        ManagerControl::Stop => break,
                    }
                }
            }
        }
        listener.abort();
        self.shut_down().await;
    }

    /// The first reconcile; when the database cannot say which sources are wanted, the
    /// `[mqtt]` source starts.
    async fn first_reconcile(&mut self) {
        if let Err(e) = self.reconcile().await {
            tracing::error!(error = %e, "sources not configured from the database; starting the [mqtt] source");
            let d = WantedSource {
                cfg: self.default_cfg.clone(),
                subs: Vec::new(),
                shared_group: None,
                pattern: None,
            };
            if let Ok(r) = self.start(DEFAULT_SOURCE, &d, Vec::new()) {
                self.running.insert(DEFAULT_SOURCE.into(), r);
            }
            self.publish_links();
        }
    }

    /// A reconcile whose failure is only logged (the next NOTIFY or poll tries again).
    async fn reconcile_logged(&mut self) {
        if let Err(e) = self.reconcile().await {
            tracing::warn!(error = %e, "source reconcile failed");
        }
    }

    /// Sends `control` to every running source.
    fn send_to_all(&self, control: SourceControl) {
        for r in self.running.values() {
            let _ = r.handle.control.send(control);
        }
    }

    /// Carries out a restart or drain command and answers it.
    async fn handle_command(&mut self, cmd: SourceCommand) {
        match cmd {
            SourceCommand::Restart { product, reply } => {
                let _ = reply.send(self.restart_one(&product).await);
            }
            SourceCommand::DrainAll { reply } => {
                self.send_to_all(SourceControl::Drain);
                let _ = reply.send(());
            }
            SourceCommand::RestartAll { reply } => {
                let _ = reply.send(self.restart_all().await);
            }
        }
    }

    /// Restarts every running source; `Ok(false)` when one did not reconnect in time, the
    /// last error when one failed. Whatever failed, no source stays drained.
    async fn restart_all(&mut self) -> Result<bool, ManagerError> {
        let names: Vec<String> = self.running.keys().cloned().collect();
        let mut all = Ok(true);
        for name in names {
            match self.restart_one(&name).await {
                Ok(true) => {}
                Ok(false) => all = all.and(Ok(false)),
                Err(e) => all = Err(e),
            }
        }
        self.send_to_all(SourceControl::Run);
        all
    }

    /// Stops every source and writes the last statistics.
    async fn shut_down(&mut self) {
        for (_, r) in self.running.drain() {
            stop(r.handle).await;
        }
        if let Err(e) = self.stats.flush(&self.pool).await {
            tracing::warn!(error = %e, "subscription statistics not written at shutdown");
        }
        self.connected.store(false, Ordering::Release);
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
fn share(group: &Option<String>, filter: String) -> String {
    match group {
        Some(g) => format!("$share/{g}/{filter}"),
        None => filter,
    }
}

/// Drain, then stop and wait for a source.
async fn stop(h: SourceHandle) {
    let _ = h.control.send(SourceControl::Drain);
    let _ = h.control.send(SourceControl::Stop);
    let _ = tokio::time::timeout(Duration::from_secs(5), h.task).await;
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
