//! The members bucket and the ownership loop. Every `member_ttl / 4` the instance renews its
//! entry in the `{root}_{prefix}_members` KV bucket (entries expire after `member_ttl`), lists the live
//! members and starts or releases partitions to match the assignment. A release runs beside the
//! loop: it drains, stops the partition's device actors and unpins the consumer for the next
//! owner.

use std::collections::{HashMap, HashSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use actix::Addr;
use async_nats::jetstream::{self, consumer::PullConsumer, kv};
use bytes::Bytes;
use futures::TryStreamExt;
use rumqttc::v5::mqttbytes::QoS;
use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;

use super::nats_client::{run_writer, AckSlots, NatsClient, Outgoing};
use super::partition::{PartitionLoop, GROUP};
use super::{assign, stream, subjects, ClusterError};
use crate::config::ClusterConfig;
use crate::link::{MqttClient, MqttLink, ReplyRoute};
use crate::metrics as m;
use crate::router::{DeviceRouter, RawPublish, ReleaseDevices};
use fleetflow_protocol::ids::DeviceId;

/// What cluster mode needs from the engine.
pub struct ClusterStart {
    /// `[cluster]`.
    pub cfg: ClusterConfig,
    /// The fleet's topic prefix (`mqtt.topic_prefix`).
    pub prefix: String,
    /// The router's queue.
    pub out: mpsc::Sender<RawPublish>,
    /// The router (device actors of released partitions stop through it).
    pub router: Addr<DeviceRouter>,
    /// The product's GXP settings (`mqtt.gxp`).
    pub gxp: Arc<fleetflow_protocol::gxp::GxpSettings>,
    /// The company that owns the fleet (`mqtt.company_id`).
    pub company_id: Option<i64>,
}

/// The running cluster mode.
pub struct Cluster {
    /// Publishes to devices through NATS (commands for devices without a live actor).
    pub publisher: MqttLink,
    /// True once the stream and the members bucket are set up, while NATS is reachable.
    pub connected: Arc<AtomicBool>,
    /// Device state held by the other instances.
    pub queries: super::DeviceQueries,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Cluster {
    /// Releases every partition (drained), leaves the members and stops.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// Starts cluster mode: connects in the background (retrying), then owns partitions.
pub fn start(s: ClusterStart) -> Result<Cluster, ClusterError> {
    validate(&s.cfg)?;
    let (tx, rx) = mpsc::channel(super::nats_client::writer_capacity(s.cfg.partitions));
    let publisher = MqttLink::new(
        MqttClient::Nats(NatsClient::new(tx.clone(), None)),
        QoS::AtLeastOnce,
    )
    .for_source("cluster-out");
    publisher.next_epoch();
    let route = Arc::new(ReplyRoute {
        source_name: Arc::from("default"),
        link: publisher.clone(),
        topics: fleetflow_protocol::topic::TopicParser::new(&s.prefix),
        gxp: s.gxp,
        company_id: s.company_id,
    });
    let connected = Arc::new(AtomicBool::new(false));
    let queries = super::DeviceQueries::default();
    let (stop, stop_rx) = watch::channel(false);
    let owner = Owner {
        cfg: s.cfg,
        prefix: s.prefix,
        out: s.out,
        router: s.router,
        route,
        tx,
        connected: connected.clone(),
        queries: queries.clone(),
        running: HashMap::new(),
        releasing: tokio::task::JoinSet::new(),
        releasing_parts: HashSet::new(),
    };
    let task = tokio::spawn(owner.run(rx, stop_rx));
    Ok(Cluster {
        publisher,
        connected,
        queries,
        stop,
        task,
    })
}

fn validate(cfg: &ClusterConfig) -> Result<(), ClusterError> {
    if !(1..=4096).contains(&cfg.partitions) {
        return Err(ClusterError::Config("partitions must be 1..=4096".into()));
    }
    let key_ok = |c: char| c.is_ascii_alphanumeric() || "-_=".contains(c);
    if cfg.instance_id.is_empty() || !cfg.instance_id.chars().all(key_ok) {
        return Err(ClusterError::Config(format!(
            "instance_id {:?} must be letters, digits, '-', '_' or '='",
            cfg.instance_id
        )));
    }
    if cfg.nats_urls.trim().is_empty() {
        return Err(ClusterError::Config("nats_urls is empty".into()));
    }
    if !(1..=60_000).contains(&cfg.max_ack_pending) {
        return Err(ClusterError::Config(
            "max_ack_pending must be 1..=60000 (acks are named by 16-bit slots)".into(),
        ));
    }
    if cfg.member_ttl_ms < 1000 || cfg.pin_timeout_ms < 1000 {
        return Err(ClusterError::Config(
            "member_ttl_ms and pin_timeout_ms must be at least 1000".into(),
        ));
    }
    Ok(())
}

struct Running {
    stop: watch::Sender<bool>,
    join: JoinHandle<HashSet<String>>,
}

/// What the ownership loop holds once connected.
struct Setup {
    consumers: Vec<PullConsumer>,
    stream: jetstream::stream::Stream,
    members: kv::Store,
}

struct Owner {
    cfg: ClusterConfig,
    prefix: String,
    out: mpsc::Sender<RawPublish>,
    router: Addr<DeviceRouter>,
    route: Arc<ReplyRoute>,
    tx: mpsc::Sender<Outgoing>,
    connected: Arc<AtomicBool>,
    queries: super::DeviceQueries,
    running: HashMap<u32, Running>,
    /// Releases under way, by partition: a partition is not taken again before its release
    /// (which unpins its consumer) is done.
    releasing: tokio::task::JoinSet<u32>,
    releasing_parts: HashSet<u32>,
}

impl Owner {
    async fn run(mut self, rx: mpsc::Receiver<Outgoing>, mut stop: watch::Receiver<bool>) {
        let Some(client) = self.connect(&mut stop).await else {
            return;
        };
        tokio::spawn(run_writer(client.clone(), rx, self.cfg.reply_qos));
        let asked = format!(
            "{}.{}.devices",
            self.cfg.subject_root,
            subjects::name_part(&self.prefix)
        );
        self.queries.connected(client.clone(), asked.clone());
        tokio::spawn(super::queries::serve_restarts(
            client.clone(),
            asked.clone(),
            self.router.clone(),
        ));
        tokio::spawn(super::queries::serve(
            client.clone(),
            asked,
            self.router.clone(),
        ));
        let js = jetstream::new(client);
        let Some(setup) = self.setup(&js, &mut stop).await else {
            return;
        };
        self.connected.store(true, Ordering::Release);
        tracing::info!(instance = %self.cfg.instance_id, stream = %self.cfg.stream, partitions = self.cfg.partitions, "cluster mode: joined");
        let every =
            Duration::from_millis(self.cfg.member_ttl_ms / 4).max(Duration::from_millis(250));
        let ttl = Duration::from_millis(self.cfg.member_ttl_ms);
        let mut renewed = tokio::time::Instant::now();
        let mut tick = tokio::time::interval(every);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                _ = stop.changed() => break,
                _ = tick.tick() => {}
            }
            match self.round(&setup).await {
                Ok(()) => {
                    self.connected.store(true, Ordering::Release);
                    renewed = tokio::time::Instant::now();
                }
                Err(e) => {
                    self.connected.store(false, Ordering::Release);
                    tracing::warn!(error = %e, "cluster: membership round failed");
                    if renewed.elapsed() >= ttl && !self.running.is_empty() {
                        // Our entry has expired: the others own these partitions now. Fence
                        // ourselves: stop pulling and stop their actors here.
                        tracing::warn!(
                            partitions = self.running.len(),
                            "cluster: membership lapsed; releasing every partition"
                        );
                        let owned: Vec<u32> = self.running.keys().copied().collect();
                        for p in owned {
                            self.spawn_release(p, &setup);
                        }
                        metrics::gauge!(m::CLUSTER_PARTITIONS_OWNED).set(0.0);
                    }
                }
            }
        }
        // Leave first, so that the next owners start pulling while these partitions drain.
        let _ = setup.members.delete(&self.cfg.instance_id).await;
        let owned: Vec<u32> = self.running.keys().copied().collect();
        for p in owned {
            self.spawn_release(p, &setup);
        }
        while self.releasing.join_next().await.is_some() {}
        // Acks queued by the drains go out before the process ends.
        let (done, flushed) = tokio::sync::oneshot::channel();
        if self.tx.send(Outgoing::Flush(done)).await.is_ok() {
            let _ = tokio::time::timeout(Duration::from_secs(2), flushed).await;
        }
        self.connected.store(false, Ordering::Release);
        tracing::info!(instance = %self.cfg.instance_id, "cluster mode: left");
    }

    /// Connects to NATS, retrying until it answers or the engine stops.
    async fn connect(&self, stop: &mut watch::Receiver<bool>) -> Option<async_nats::Client> {
        let urls: Vec<&str> = self.cfg.nats_urls.split(',').map(str::trim).collect();
        loop {
            let opts = async_nats::ConnectOptions::new()
                .name(format!("fleetflow {}", self.cfg.instance_id))
                .retry_on_initial_connect();
            match opts.connect(urls.clone()).await {
                Ok(c) => return Some(c),
                Err(e) => tracing::warn!(error = %e, "cluster: cannot connect to NATS; retrying"),
            }
            tokio::select! {
                _ = stop.changed() => return None,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    /// Sets up the stream, the consumers and the members bucket, retrying.
    async fn setup(
        &self,
        js: &jetstream::Context,
        stop: &mut watch::Receiver<bool>,
    ) -> Option<Setup> {
        loop {
            match self.try_setup(js).await {
                Ok(s) => return Some(s),
                Err(e) => tracing::warn!(error = %e, "cluster: setup failed; retrying"),
            }
            tokio::select! {
                _ = stop.changed() => return None,
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    async fn try_setup(&self, js: &jetstream::Context) -> Result<Setup, ClusterError> {
        let (stream, consumers) = stream::ensure(js, &self.cfg, &self.prefix).await?;
        let bucket = stream::members_bucket(&self.cfg, &self.prefix);
        let members = match js.get_key_value(&bucket).await {
            Ok(kv) => kv,
            Err(_) => js
                .create_key_value(kv::Config {
                    bucket: bucket.clone(),
                    history: 1,
                    max_age: Duration::from_millis(self.cfg.member_ttl_ms),
                    num_replicas: self.cfg.replicas,
                    ..Default::default()
                })
                .await
                .map_err(|e| ClusterError::Setup(format!("bucket {bucket}: {e}")))?,
        };
        Ok(Setup {
            consumers,
            stream,
            members,
        })
    }

    /// Renews this member, reads the live ones and moves partitions to match.
    async fn round(&mut self, s: &Setup) -> Result<(), ClusterError> {
        let me = self.cfg.instance_id.clone();
        s.members
            .put(&me, Bytes::from_static(b"{}"))
            .await
            .map_err(|e| ClusterError::Setup(format!("renewing the member entry: {e}")))?;
        let mut members: Vec<String> = s
            .members
            .keys()
            .await
            .map_err(|e| ClusterError::Setup(format!("listing members: {e}")))?
            .try_collect()
            .await
            .map_err(|e| ClusterError::Setup(format!("listing members: {e}")))?;
        if !members.contains(&me) {
            members.push(me.clone());
        }
        members.sort();
        let owned: HashSet<u32> = assign::owned_by(&members, self.cfg.partitions, &me)
            .into_iter()
            .collect();
        metrics::gauge!(m::CLUSTER_MEMBERS).set(members.len() as f64);
        while let Some(done) = self.releasing.try_join_next() {
            if let Ok(p) = done {
                self.releasing_parts.remove(&p);
            }
        }
        let lost: Vec<u32> = self
            .running
            .keys()
            .filter(|p| !owned.contains(p))
            .copied()
            .collect();
        for p in lost {
            self.spawn_release(p, s);
        }
        for p in owned {
            if !self.running.contains_key(&p) && !self.releasing_parts.contains(&p) {
                self.acquire(p, s.consumers[p as usize].clone(), s.stream.clone());
            }
        }
        metrics::gauge!(m::CLUSTER_PARTITIONS_OWNED).set(self.running.len() as f64);
        Ok(())
    }

    fn acquire(&mut self, p: u32, consumer: PullConsumer, stream: jetstream::stream::Stream) {
        let slots = Arc::new(AckSlots::default());
        // In delivery order: a cumulative ack covers every message delivered before it.
        let link = MqttLink::with_order(
            MqttClient::Nats(NatsClient::new(self.tx.clone(), Some(slots.clone()))),
            QoS::AtLeastOnce,
            true,
        )
        .for_source(&format!("partition-{p}"));
        link.next_epoch();
        let looped = PartitionLoop {
            index: p,
            filter: subjects::partition_filter(&self.cfg.subject_root, p, &self.prefix),
            consumer,
            stream,
            fresh: true,
            last_dseq: 0,
            link,
            slots,
            out: self.out.clone(),
            route: self.route.clone(),
            lead: subjects::lead_tokens(&self.cfg.subject_root),
            prefix_tokens: subjects::prefix_tokens(&self.prefix),
            pull_expiry: Duration::from_millis(self.cfg.pin_timeout_ms / 3),
            // The pin outlives the last pull by at least two thirds of its timeout: the drain
            // ends before it, so the next owner cannot start while these actors live.
            drain: Duration::from_millis(self.cfg.drain_ms.min(self.cfg.pin_timeout_ms / 2)),
            devices: HashSet::new(),
        };
        let (stop, stop_rx) = watch::channel(false);
        let join = tokio::spawn(looped.run(stop_rx));
        self.running.insert(p, Running { stop, join });
        metrics::counter!(m::CLUSTER_PARTITION_MOVES_TOTAL, "direction" => "acquired").increment(1);
        tracing::info!(partition = p, instance = %self.cfg.instance_id, "cluster: partition acquired");
    }

    /// Stops pulling `p` and, beside the loop, drains it, stops its devices' actors and unpins
    /// its consumer. The whole release fits in the pin's lifetime (at least two thirds of
    /// `pin_timeout_ms` after the last pull): the drain takes at most half of it, the actors'
    /// stop at most a sixth.
    fn spawn_release(&mut self, p: u32, s: &Setup) {
        let Some(r) = self.running.remove(&p) else {
            return;
        };
        self.releasing_parts.insert(p);
        let router = self.router.clone();
        let stream = s.stream.clone();
        let instance = self.cfg.instance_id.clone();
        let name = stream::consumer_name(&self.cfg, &self.prefix, p);
        let stop_within = Duration::from_millis(self.cfg.pin_timeout_ms / 6);
        self.releasing.spawn(async move {
            let _ = r.stop.send(true);
            let devices = r.join.await.unwrap_or_default();
            let ids: Vec<DeviceId> = devices.iter().filter_map(|d| DeviceId::parse(d).ok()).collect();
            let stopped = match tokio::time::timeout(stop_within, router.send(ReleaseDevices(ids))).await {
                Ok(n) => n.unwrap_or(0),
                Err(_) => {
                    tracing::warn!(partition = p, "device actors still stopping when the pin may lapse; the next owner may start beside them");
                    0
                }
            };
            if let Err(e) = stream.unpin_consumer(&name, GROUP).await {
                tracing::debug!(partition = p, error = %e, "unpin failed (the pin times out instead)");
            }
            metrics::counter!(m::CLUSTER_PARTITION_MOVES_TOTAL, "direction" => "released").increment(1);
            tracing::info!(partition = p, instance = %instance, device_actors_stopped = stopped, "cluster: partition released");
            p
        });
    }
}
