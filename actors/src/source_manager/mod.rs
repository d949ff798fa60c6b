//! The MQTT sources: one per enabled row of `mqtt_configs`, or the file/environment `[mqtt]`
//! source when the database has none. Every source feeds the same router; each message carries
//! its source, so acks and replies go back on the right connection. A change to the rows
//! (through the API or by hand) is announced with `NOTIFY fleetflow_mqtt_config`; the manager
//! then restarts exactly the sources whose settings changed, in process, and keeps the others and
//! the device actors running. It also polls, in case a notification is missed, and writes each
//! source's state to `mqtt_connection_status`.
//!
//! - this file: the manager's task, its commands, starting and stopping sources;
//! - `wanted`: the sources the database wants, and the fingerprint that tells a change;
//! - `status`: what is recorded in `mqtt_connection_status`.

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

mod status;
mod wanted;

pub use wanted::broker_url;
use wanted::{settings_fingerprint, share, WantedSource};

/// The name of the file/environment source.
pub use crate::router::DEFAULT_SOURCE;

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

/// Each running source's connection, by product (`default` for the `[mqtt]` source), for the
/// publish API.
pub type Links = Arc<std::sync::RwLock<HashMap<String, crate::link::MqttLink>>>;

/// Owns the running sources.
pub struct SourceManager {
    pool: Pool,
    pg_url: String,
    default_cfg: MqttConfig,
    /// Cluster mode: the fleet comes from NATS JetStream and no MQTT source runs here.
    cluster_mode: bool,
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
            cluster_mode: false,
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

    /// Cluster mode: runs no MQTT source (before [`SourceManager::spawn`]).
    pub fn set_cluster_mode(&mut self, on: bool) {
        self.cluster_mode = on;
    }

    /// Sets the router (before [`SourceManager::spawn`]).
    pub fn set_router(&mut self, router: Addr<crate::router::DeviceRouter>) {
        self.router = Some(router);
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
    /// for its replacement to drop from a resumed session. A removed source's devices stay
    /// bound to it (`device_owners`).
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
            .map(|(n, r)| (n.clone(), r.handle.publish_link.clone()))
            .collect();
        *self.links.write().expect("links lock") = map;
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
                _ = status.tick() => {
                    if self.reap_exited().await {
                        self.reconcile_logged().await;
                    }
                    self.refresh_status().await;
                }
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

/// How long a stopping source keeps its connection for the acks of what it forwarded.
const DRAIN_GRACE: Duration = Duration::from_secs(5);

/// Drains a source (it forwards nothing more but keeps its connection) until what it forwarded
/// is acknowledged or [`DRAIN_GRACE`] passes, then stops it and waits for its task; a task that
/// does not end is aborted. (Drain and Stop sent back to back on the watch channel would let
/// the loop see only Stop, dropping the acks still on their way.)
async fn stop(h: SourceHandle) {
    let _ = h.control.send(SourceControl::Drain);
    let deadline = tokio::time::Instant::now() + DRAIN_GRACE;
    let pending = |h: &SourceHandle| h.link.unacked() > h.link.leaks().0 as i64;
    while pending(&h) && tokio::time::Instant::now() < deadline && !h.task.is_finished() {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let _ = h.control.send(SourceControl::Stop);
    if let Some(p) = &h.publisher {
        let _ = p.control.send(SourceControl::Stop);
    }
    let mut task = h.task;
    if tokio::time::timeout(Duration::from_secs(5), &mut task)
        .await
        .is_err()
    {
        tracing::warn!("a source did not stop within 5 s; aborted");
        task.abort();
    }
    if let Some(p) = h.publisher {
        let mut task = p.task;
        if tokio::time::timeout(Duration::from_secs(3), &mut task)
            .await
            .is_err()
        {
            task.abort();
        }
    }
}
