//! The runtime's one door for the control plane.
//!
//! [`Pipeline::start`] builds the data path in dependency order: the Postgres sink, the object
//! sink, the device router with its arbiters, the source manager (which starts the sources that
//! feed the router), and the `[mqtt]` publisher that carries commands for devices with no live
//! actor. It returns a [`RunningPipeline`], which owns the tasks and threads and shuts them down
//! in order, and hands out [`Pipeline`], a cheap, cloneable handle with typed requests: device
//! snapshots and restarts, a device's reply route, a product's connection, source restarts,
//! sink rebuilds and the drain/flush steps of a `pipeline` restart.
//!
//! The control plane (`fleetflow`: admin API, restarts, command queue) holds only this handle;
//! it never sees the actors' addresses or the manager's channels.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use deadpool_postgres::Pool;
use fleetflow_protocol::budget::GlobalBudget;
use fleetflow_protocol::ids::DeviceId;
use fleetflow_protocol::schedule::ScheduleBook;
use object_store::ObjectStore;
use tokio::sync::{mpsc, oneshot, watch};

use crate::config::{
    AssemblyConfig, DevicesConfig, MqttConfig, ObjectsConfig, PublishLogConfig, SinksConfig,
};
use crate::device::{DeviceDeps, DeviceSnapshot};
use crate::link::{MqttLink, ReplyRoute};
use crate::router::{
    DeviceRouter, ForgetOwner, QueryDevice, QueryDevices, RawPublish, ReplyRouteOf, RestartDevice,
    RestartRunning, StopAll,
};
use crate::sinks::objects::{ObjectSink, ProbeStore, ReplaceStore, StoreProbeError};
use crate::sinks::pg::{Flush, PgProbeError, PgSink, Probe, ReplacePool};
use crate::source::{self, SourceControl, SourceError, SourceHandle};
use crate::source_manager::{
    Links, ManagerControl, ManagerError, PasswordOpener, SourceCommand, SourceManager,
};

/// What the runtime needs to start: storage clients built by the caller, and its config sections.
pub struct PipelineSettings {
    /// The Postgres pool the sinks and the source manager use.
    pub pool: Pool,
    /// The connection string, for the source manager's LISTEN.
    pub pg_url: String,
    /// The object store the object sink writes to.
    pub store: Arc<dyn ObjectStore>,
    /// `[mqtt]`: the default source, and the publisher for commands.
    pub mqtt: MqttConfig,
    /// `[sinks]`.
    pub sinks: SinksConfig,
    /// `[objects]`.
    pub objects: ObjectsConfig,
    /// `[assembly]`.
    pub assembly: AssemblyConfig,
    /// `[devices]` (arbiters: 0 = one per core).
    pub devices: DevicesConfig,
    /// `[publish_log]`: the message log.
    pub publish_log: PublishLogConfig,
    /// Wake schedules, shared with whoever keeps them current.
    pub book: Arc<ScheduleBook>,
    /// Opens sealed broker passwords from `mqtt_configs`.
    pub passwords: Option<Arc<dyn PasswordOpener>>,
    /// How often the source manager re-reads `mqtt_configs` besides NOTIFY.
    pub reconcile_every: Duration,
    /// `[cluster]`: when enabled, the fleet comes from NATS JetStream and no MQTT source runs.
    pub cluster: crate::config::ClusterConfig,
}

/// Why the data path could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Bad `[mqtt]` settings for the command publisher.
    #[error(transparent)]
    Source(#[from] SourceError),
    /// Bad `[cluster]` settings.
    #[error(transparent)]
    Cluster(#[from] crate::cluster::ClusterError),
}

/// Why a request through the handle failed.
#[derive(Debug, thiserror::Error)]
pub enum PipelineError {
    /// An actor of the pipeline did not take the request (it stopped).
    #[error("{part} unavailable")]
    Unavailable {
        /// Which part.
        part: &'static str,
        /// The mailbox's answer.
        #[source]
        source: MailboxError,
    },
    /// The source manager has stopped.
    #[error("source manager unavailable")]
    ManagerGone,
    /// The source manager refused the request.
    #[error(transparent)]
    Sources(#[from] ManagerError),
    /// The Postgres sink's probe failed.
    #[error(transparent)]
    PgProbe(#[from] PgProbeError),
    /// The object sink's probe failed.
    #[error(transparent)]
    StoreProbe(#[from] StoreProbeError),
    /// A step did not finish in time.
    #[error("{0} did not finish in time")]
    TimedOut(&'static str),
}

/// The control plane's handle on the running data path.
#[derive(Clone)]
pub struct Pipeline {
    router: Addr<DeviceRouter>,
    pg: Addr<PgSink>,
    objects: Addr<ObjectSink>,
    sources: mpsc::Sender<SourceCommand>,
    links: Links,
    connected: Arc<AtomicBool>,
    default_link: MqttLink,
    /// Cluster mode: device state held by the other instances.
    peers: Option<crate::cluster::DeviceQueries>,
}

/// The started runtime: the handle, plus what only shutdown touches.
pub struct RunningPipeline {
    /// The handle to give to the control plane.
    pub handle: Pipeline,
    control: watch::Sender<ManagerControl>,
    manager_task: tokio::task::JoinHandle<()>,
    /// The `[mqtt]` command publisher (none in cluster mode: commands go through NATS).
    publisher: Option<SourceHandle>,
    /// Cluster mode's partitions, released first at shutdown.
    cluster: Option<crate::cluster::Cluster>,
    arbiters: Arc<Vec<ArbiterHandle>>,
}

/// An error of the mailbox kind, named for the part that raised it.
fn gone(part: &'static str) -> impl FnOnce(MailboxError) -> PipelineError {
    move |source| PipelineError::Unavailable { part, source }
}

impl Pipeline {
    /// Starts the data path; must run inside an actix `System`. Fails on bad `[mqtt]`
    /// settings for the command publisher, or bad `[cluster]` settings.
    pub fn start(s: PipelineSettings) -> Result<RunningPipeline, StartError> {
        let clustered = s.cluster.enabled;
        let publisher = if clustered {
            None
        } else {
            Some(start_publisher(&s.mqtt)?)
        };
        let pg = {
            let (pool, cfg) = (s.pool.clone(), s.sinks.clone());
            PgSink::create(move |_| PgSink::new(pool, cfg))
        };
        let objects = {
            let (store, pg, cfg) = (s.store.clone(), pg.clone(), s.objects.clone());
            ObjectSink::create(move |_| ObjectSink::new(store, pg, cfg))
        };
        let arbiters = start_arbiters(s.devices.arbiters);
        let (tx, rx) = mpsc::channel::<RawPublish>(source::ROUTER_QUEUE_CAPACITY);
        let router = start_router(&s, rx, &pg, objects.clone(), arbiters.clone());
        let cluster = clustered
            .then(|| {
                crate::cluster::start(crate::cluster::ClusterStart {
                    cfg: s.cluster.clone(),
                    prefix: s.mqtt.topic_prefix.clone(),
                    out: tx.clone(),
                    router: router.clone(),
                    gxp: Arc::new(s.mqtt.gxp.clone()),
                    company_id: s.mqtt.company_id,
                })
            })
            .transpose()?;
        let mut manager = SourceManager::new(s.pool, s.pg_url, s.mqtt, tx, pg.clone(), s.passwords);
        manager.set_router(router.clone());
        manager.set_cluster_mode(clustered);
        let links = manager.links.clone();
        let (control, sources, connected, manager_task) = manager.spawn(s.reconcile_every);
        let (connected, default_link) = match (&cluster, &publisher) {
            (Some(c), _) => (c.connected.clone(), c.publisher.clone()),
            (None, Some(p)) => (connected, p.link.clone()),
            (None, None) => unreachable!("a publisher or the cluster is started"),
        };
        let handle = Pipeline {
            router,
            pg,
            objects,
            sources,
            links,
            connected,
            default_link,
            peers: cluster.as_ref().map(|c| c.queries.clone()),
        };
        Ok(RunningPipeline {
            handle,
            control,
            manager_task,
            publisher,
            cluster,
            arbiters,
        })
    }

    /// True while every source is connected (for `/ready`).
    pub fn connected(&self) -> Arc<AtomicBool> {
        self.connected.clone()
    }

    /// Whether every source is connected now.
    pub fn is_connected(&self) -> bool {
        self.connected.load(Ordering::Acquire)
    }

    /// A device's actor state (`None` when it has no live actor here, or in cluster mode on any
    /// instance).
    pub async fn device(&self, id: &DeviceId) -> Result<Option<DeviceSnapshot>, PipelineError> {
        let local = self
            .router
            .send(QueryDevice(id.clone()))
            .await
            .map_err(gone("device router"))?;
        match (local, &self.peers) {
            (Some(s), _) => Ok(Some(s)),
            (None, Some(peers)) => Ok(peers
                .ask(std::slice::from_ref(id))
                .await
                .remove(id.as_str())),
            (None, None) => Ok(None),
        }
    }

    /// The actor state of several devices, by id (those without a live actor are left out); in
    /// cluster mode the other instances answer for the devices they hold.
    pub async fn devices(
        &self,
        ids: Vec<DeviceId>,
    ) -> Result<HashMap<String, DeviceSnapshot>, PipelineError> {
        let mut found = self
            .router
            .send(QueryDevices(ids.clone()))
            .await
            .map_err(gone("device router"))?;
        if let Some(peers) = &self.peers {
            let missing: Vec<DeviceId> = ids
                .into_iter()
                .filter(|i| !found.contains_key(i.as_str()))
                .collect();
            if !missing.is_empty() {
                found.extend(peers.ask(&missing).await);
            }
        }
        Ok(found)
    }

    /// Forgets a device's binding to its source (its `device_owners` row was deleted).
    pub async fn forget_owner(&self, id: &DeviceId) -> Result<(), PipelineError> {
        self.router
            .send(ForgetOwner(id.clone()))
            .await
            .map_err(gone("device router"))
    }

    /// Restarts a device's actor; answers whether one was running. In cluster mode only the
    /// instance that holds the actor restarts it (asked over NATS when it is another one), and a
    /// device with no live actor anywhere is left alone: its partition's owner starts a fresh
    /// actor with its next message.
    pub async fn restart_device(&self, id: &DeviceId) -> Result<bool, PipelineError> {
        let Some(peers) = &self.peers else {
            return self
                .router
                .send(RestartDevice(id.clone()))
                .await
                .map_err(gone("device router"));
        };
        let here = self
            .router
            .send(RestartRunning(id.clone()))
            .await
            .map_err(gone("device router"))?;
        Ok(here || peers.restart(id).await)
    }

    /// Whether this engine runs in cluster mode (devices may live on other instances).
    pub fn is_cluster(&self) -> bool {
        self.peers.is_some()
    }

    /// The connection and topic layout a device's latest message came from, if it has a live
    /// actor and answers within `within`.
    pub async fn reply_route(&self, id: &DeviceId, within: Duration) -> Option<Arc<ReplyRoute>> {
        let ask = self.router.send(ReplyRouteOf(id.clone()));
        tokio::time::timeout(within, ask)
            .await
            .ok()
            .and_then(Result::ok)
            .flatten()
    }

    /// The `[mqtt]` broker's publisher, for devices with no live actor.
    pub fn default_link(&self) -> &MqttLink {
        &self.default_link
    }

    /// A running source's connection (`default` for the `[mqtt]` source).
    pub fn link(&self, product: &str) -> Option<MqttLink> {
        self.links
            .read()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
            .get(product)
            .cloned()
    }

    /// Reconnects one source (`default` or a product id); answers whether it came back
    /// connected within 5 s.
    pub async fn restart_source(&self, product: &str) -> Result<bool, PipelineError> {
        let product = product.to_string();
        self.ask_sources(|reply| SourceCommand::Restart { product, reply })
            .await?
            .map_err(PipelineError::from)
    }

    /// Reconnects every source; answers whether all came back connected within 5 s.
    pub async fn restart_sources(&self) -> Result<bool, PipelineError> {
        self.ask_sources(|reply| SourceCommand::RestartAll { reply })
            .await?
            .map_err(PipelineError::from)
    }

    /// Stops forwarding on every source (connections stay up so acks still go out).
    pub async fn drain_sources(&self) -> Result<(), PipelineError> {
        self.ask_sources(|reply| SourceCommand::DrainAll { reply })
            .await
    }

    async fn ask_sources<T>(
        &self,
        cmd: impl FnOnce(oneshot::Sender<T>) -> SourceCommand,
    ) -> Result<T, PipelineError> {
        let (reply, rx) = oneshot::channel();
        self.sources
            .send(cmd(reply))
            .await
            .map_err(|_| PipelineError::ManagerGone)?;
        rx.await.map_err(|_| PipelineError::ManagerGone)
    }

    /// Stops every device actor after its mailbox drained; answers how many there were.
    pub async fn stop_devices(&self, within: Duration) -> Result<usize, PipelineError> {
        tokio::time::timeout(within, self.router.send(StopAll))
            .await
            .map_err(|_| PipelineError::TimedOut("draining the device actors"))?
            .map_err(gone("device router"))
    }

    /// Waits until the object sink has no upload left (or `within` passes); answers whether
    /// it is idle.
    pub async fn objects_idle(&self, within: Duration) -> Result<bool, PipelineError> {
        self.objects
            .send(crate::sinks::objects::WaitIdle(within))
            .await
            .map_err(gone("object sink"))
    }

    /// Writes every buffered row now (their acks follow the commit).
    pub async fn flush(&self, within: Duration) -> Result<(), PipelineError> {
        tokio::time::timeout(within, self.pg.send(Flush))
            .await
            .map_err(|_| PipelineError::TimedOut("flushing the postgres sink"))?
            .map_err(gone("postgres sink"))
    }

    /// Gives the Postgres sink a new pool, then probes it; answers the probe's round trip.
    pub async fn replace_pool(&self, pool: Pool) -> Result<Duration, PipelineError> {
        let unavailable = gone("postgres sink");
        self.pg
            .send(ReplacePool(pool))
            .await
            .map_err(gone("postgres sink"))?;
        Ok(self.pg.send(Probe).await.map_err(unavailable)??)
    }

    /// Gives the object sink a new store client, then writes, reads back and deletes a probe
    /// object; answers the round trip.
    pub async fn replace_store(
        &self,
        store: Arc<dyn ObjectStore>,
    ) -> Result<Duration, PipelineError> {
        let unavailable = gone("object sink");
        self.objects
            .send(ReplaceStore(store))
            .await
            .map_err(gone("object sink"))?;
        Ok(self.objects.send(ProbeStore).await.map_err(unavailable)??)
    }
}

impl RunningPipeline {
    /// Graceful shutdown before `deadline`: stop forwarding, drain device actors, flush the
    /// Postgres sink (acks follow each commit), disconnect. Answers whether every step finished
    /// in time; what was not acknowledged is redelivered by the broker.
    pub async fn shutdown(mut self, deadline: tokio::time::Instant) -> bool {
        let _ = self.control.send(ManagerControl::Drain);
        let left = || deadline.saturating_duration_since(tokio::time::Instant::now());
        if let Some(c) = self.cluster.take() {
            // Uploads under way write their captures rows and answer ACK_OK while their device
            // actors still live; releasing the partitions stops those actors.
            if !matches!(self.handle.objects_idle(left()).await, Ok(true)) {
                tracing::warn!("object uploads still running when the partitions are released");
            }
            // Stops pulling, drains each partition's messages into durable rows, stops its
            // device actors and hands the partitions over (within `cluster.drain_ms`).
            if tokio::time::timeout_at(deadline, c.stop()).await.is_err() {
                tracing::warn!(
                    "cluster partitions not released before the deadline; JetStream redelivers"
                );
            }
        }
        let p = &self.handle;
        let mut clean = true;
        // Uploads under way finish while their device actors still live (they write the
        // captures rows and answer ACK_OK), then again after the mailboxes drained.
        let objects_idle = |within| async move {
            match p.objects_idle(within).await {
                Ok(true) => true,
                _ => {
                    tracing::warn!("object uploads still running at the deadline");
                    false
                }
            }
        };
        clean &= objects_idle(left()).await;
        match p.stop_devices(left()).await {
            Ok(n) => tracing::info!(device_actors = n, "device actors drained"),
            Err(e) => {
                clean = false;
                tracing::warn!(error = %e, "device actors not drained");
            }
        }
        clean &= objects_idle(left()).await;
        match p.flush(left()).await {
            Ok(()) => tracing::info!("postgres sink flushed"),
            Err(e) => {
                clean = false;
                tracing::warn!(error = %e, "postgres sink not flushed; unacknowledged messages will be redelivered");
            }
        }
        // Webhook deliveries under way finish (or give up) while their connections still live,
        // after the rows are safe: a slow endpoint cannot cost the flush its time.
        if !crate::subscriptions::webhook::wait_idle(left()).await {
            clean = false;
            tracing::warn!(
                "webhook deliveries still running at the deadline; the broker redelivers them"
            );
        }
        let _ = self.control.send(ManagerControl::Stop);
        if let Some(publisher) = &self.publisher {
            let _ = publisher.control.send(SourceControl::Stop);
        }
        let stop_by = deadline + Duration::from_secs(3);
        if tokio::time::timeout_at(stop_by, self.manager_task)
            .await
            .is_err()
        {
            clean = false;
            tracing::warn!("MQTT sources did not stop before the deadline");
        }
        for a in self.arbiters.iter() {
            a.stop();
        }
        clean
    }
}

/// The `[mqtt]` publisher: a connection of its own (clean start, `-admin` client id) that
/// carries commands for devices with no live actor.
fn start_publisher(mqtt: &MqttConfig) -> Result<SourceHandle, SourceError> {
    source::options(mqtt)?;
    let mut cfg = mqtt.clone();
    cfg.client_id = format!("{}-admin", mqtt.client_id);
    cfg.clean_start = true;
    source::spawn_publisher(&cfg)
}

/// One arbiter (thread) per core, or `n` when set, for the device actors.
fn start_arbiters(n: usize) -> Arc<Vec<ArbiterHandle>> {
    let n = match n {
        0 => std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2),
        n => n,
    };
    Arc::new((0..n).map(|_| Arbiter::new().handle()).collect())
}

/// The device router, fed by the sources' queue, with what every device actor shares.
fn start_router(
    s: &PipelineSettings,
    rx: mpsc::Receiver<RawPublish>,
    pg: &Addr<PgSink>,
    objects: Addr<ObjectSink>,
    arbiters: Arc<Vec<ArbiterHandle>>,
) -> Addr<DeviceRouter> {
    let budget = Arc::new(GlobalBudget::new(s.assembly.global_budget_bytes));
    let assembly = Arc::new(s.assembly.clone());
    let devices = Arc::new(s.devices.clone());
    let publish_log = Arc::new(s.publish_log.clone());
    let (pg, book, pool) = (pg.clone(), s.book.clone(), s.pool.clone());
    DeviceRouter::create(move |ctx| {
        let deps = DeviceDeps {
            assembly,
            devices,
            budget,
            pg,
            objects,
            router: ctx.address().recipient(),
            book,
            publish_log,
        };
        let stream =
            futures::stream::unfold(rx, |mut rx| async move { rx.recv().await.map(|m| (m, rx)) });
        ctx.add_stream(stream);
        let mut r = DeviceRouter::new(arbiters);
        r.set_deps(deps);
        r.set_owner_store(pool);
        r
    })
}
