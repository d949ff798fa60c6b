//! The router actor: takes raw PUBLISH packets from the MQTT source, parses the topic, and hands
//! each message to its device's actor, starting one on a device's first message. Device actors
//! are spread over one arbiter per core by a hash of the device id. When a device mailbox is
//! full the router parks that device's messages and goes on with the others (`parking`); what
//! does not fit goes to `dead_letters`, acknowledged once durable there, so one slow or
//! failing device never holds up the fleet. Past `devices.max_actors` live actors, a new
//! device's messages go to `dead_letters` too.
//!
//! Each device id belongs to the source (product) that first delivered it (`owners`, persisted
//! in `device_owners`): a message for it from another source is refused with an error row,
//! whether or not the device has a live actor.
//!
//! - `parking`: the bounded per-device queue in front of a full mailbox.
//! - `owners`: the device-to-source bindings, in memory and in the database.

mod owners;
mod parking;

pub use owners::{OwnersError, DEFAULT_SOURCE};

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use bytes::Bytes;
use chrono::Utc;
use serde_json::json;
use tokio::time::Instant;

use crate::device::{
    DeviceActor, DeviceDeps, DeviceExited, DeviceSnapshot, GetReplyRoute, Inbound, Snapshot, Stop,
};
use crate::link::{AckToken, ReplyRoute};
use crate::metrics as m;
use crate::sinks::rows::{PendingRow, Row};
use fleetflow_protocol::errors::{
    excerpt, Admit, ErrorCode, ErrorRateLimiter, ErrorRecord, INVALID_DEVICE,
};
use fleetflow_protocol::hot_counter;
use fleetflow_protocol::ids::DeviceId;
use fleetflow_protocol::topic::{TopicError, TopicKind, TopicParser};
use owners::Owners;
use parking::{ParkLimits, Parking};

/// How often new device bindings are written.
const SAVE_OWNERS_EVERY: Duration = Duration::from_millis(200);

/// How long an admin query waits for one device's answer.
const SNAPSHOT_TIMEOUT: Duration = Duration::from_secs(2);

/// A PUBLISH as the source received it.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct RawPublish {
    /// Topic bytes.
    pub topic: Bytes,
    /// Payload bytes.
    pub payload: Bytes,
    /// Set for QoS 1.
    pub ack: Option<AckToken>,
    /// The source it came from: its topic layout, and where replies and acks go.
    pub reply_route: Arc<ReplyRoute>,
    /// Its charge against the source's queue budget, given back when the router takes it.
    pub charge: Option<crate::queue_budget::QueueCharge>,
    /// When the source read it from the broker (the start of a capture's answer latency).
    pub received: std::time::Instant,
}

/// Asks the router for a device's actor state (`None` when it has no live actor).
#[derive(Debug, Message)]
#[rtype(result = "Option<DeviceSnapshot>")]
pub struct QueryDevice(pub DeviceId);

/// Asks for the connection a device's latest message came from, so that a command goes back
/// through the same broker and topic layout (`None` when the device has no live actor).
#[derive(Debug, Message)]
#[rtype(result = "Option<Arc<ReplyRoute>>")]
pub struct ReplyRouteOf(pub DeviceId);

/// Asks for the actor state of several devices (those without a live actor are left out).
#[derive(Debug, Message)]
#[rtype(result = "std::collections::HashMap<String, DeviceSnapshot>")]
pub struct QueryDevices(pub Vec<DeviceId>);

/// Restarts a device's actor: the old one finishes its mailbox and stops, a fresh one (state
/// rebuilt, restart policy reset) takes the device's next messages. In-flight assemblies are
/// resynchronised with the device through NACKs. Returns whether an actor was running.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct RestartDevice(pub DeviceId);

/// Cluster mode: restarts a device's actor only if it lives on this instance (another instance
/// may own the device's partition); answers whether it did.
#[derive(Debug, Message)]
#[rtype(result = "bool")]
pub struct RestartRunning(pub DeviceId);

/// An operator moved a device to another product: its binding is forgotten (the caller
/// deleted its `device_owners` row), and its next message binds it to the source it comes from.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ForgetOwner(pub DeviceId);

impl Handler<ForgetOwner> for DeviceRouter {
    type Result = ();

    fn handle(&mut self, msg: ForgetOwner, _ctx: &mut Self::Context) {
        self.owners.forget(&msg.0);
    }
}

/// Stops every device actor (shutdown); resolves when their mailboxes were drained.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct StopAll;

/// The router's record of a device with a live actor.
struct LiveDevice {
    addr: Addr<DeviceActor>,
    generation: u64,
    /// Messages waiting for room in the actor's mailbox.
    parked: Parking,
}

/// The router actor: hands each message to its device's actor (see the module doc).
pub struct DeviceRouter {
    arbiters: Arc<Vec<ArbiterHandle>>,
    /// Shared by every device actor (one pointer each, not a copy of the addresses).
    deps: Option<Arc<DeviceDeps>>,
    devices: HashMap<DeviceId, LiveDevice>,
    next_generation: u64,
    invalid: ErrorRateLimiter<ErrorCode>,
    hasher: std::collections::hash_map::RandomState,
    /// Which source owns each device id.
    owners: Owners,
    /// Where the bindings are persisted (none in tests that need no database).
    owner_store: Option<deadpool_postgres::Pool>,
}

impl DeviceRouter {
    /// A router; call [`DeviceRouter::set_deps`] before it receives messages.
    pub fn new(arbiters: Arc<Vec<ArbiterHandle>>) -> Self {
        Self {
            arbiters,
            deps: None,
            devices: HashMap::new(),
            next_generation: 0,
            invalid: ErrorRateLimiter::new(10),
            hasher: Default::default(),
            owners: Owners::default(),
            owner_store: None,
        }
    }

    /// Persists device bindings in `device_owners` through `pool` (loaded when the router
    /// starts, before its first message).
    pub fn set_owner_store(&mut self, pool: deadpool_postgres::Pool) {
        self.owner_store = Some(pool);
    }

    /// Writes the bindings made since the last call; a device another process bound first
    /// takes that binding.
    fn save_owners(&mut self, ctx: &mut Context<Self>) {
        let Some(pool) = self.owner_store.clone() else {
            return;
        };
        let batch = self.owners.take_unsaved();
        if batch.is_empty() {
            return;
        }
        ctx.spawn(owners::save(pool, batch.clone()).into_actor(self).map(
            move |res, act, _| match res {
                Ok(taken) => {
                    for (id, source) in &taken {
                        tracing::warn!(device = %id, owner = %source, "device id already bound to another source (by another engine)");
                    }
                    act.owners.merge(taken);
                }
                Err(e) => {
                    tracing::warn!(error = %e, "device bindings not saved; retried");
                    for (id, source) in batch {
                        if act.owners.get(&id).is_some_and(|s| *s == source) {
                            act.owners.bind(id, source);
                        }
                    }
                }
            },
        ));
    }

    /// Sets what device actors need (done once, before the first message).
    pub fn set_deps(&mut self, deps: DeviceDeps) {
        self.deps = Some(Arc::new(deps));
    }

    fn arbiter_for(&self, id: &DeviceId) -> &ArbiterHandle {
        let h = self.hasher.hash_one(id);
        &self.arbiters[(h % self.arbiters.len() as u64) as usize]
    }

    fn spawn(&mut self, id: DeviceId) -> Addr<DeviceActor> {
        let deps = self
            .deps
            .clone()
            .expect("router dependencies are set before start");
        self.next_generation += 1;
        let generation = self.next_generation;
        let arbiter = self.arbiter_for(&id).clone();
        let actor_id = id.clone();
        let addr = DeviceActor::start_in_arbiter(&arbiter, move |_ctx| {
            DeviceActor::new(actor_id, generation, deps)
        });
        let mut parked = Parking::default();
        if let Some(mut old) = self.devices.remove(&id) {
            // What waited for the old actor goes to the new one, in order.
            old.parked.move_into(&mut parked);
        }
        self.devices.insert(
            id,
            LiveDevice {
                addr: addr.clone(),
                generation,
                parked,
            },
        );
        addr
    }

    fn park_limits(&self) -> ParkLimits {
        let d = &self
            .deps
            .as_ref()
            .expect("router dependencies are set")
            .devices;
        ParkLimits {
            count: d.park_capacity.max(1),
            bytes: d.park_bytes,
        }
    }

    /// Hands a message to its device's actor, or parks it behind the device's parked ones.
    fn deliver(&mut self, id: DeviceId, inbound: Inbound, ctx: &mut Context<Self>) {
        let limits = self.park_limits();
        let Some(e) = self.devices.get_mut(&id) else {
            return;
        };
        hot_counter!(m::DEVICE_MAILBOX_PUSHED_TOTAL).increment(1);
        // While a parked message waits for room (pumping), later ones queue behind it.
        let inbound = if e.parked.is_empty() && !e.parked.pumping {
            match e.addr.try_send(inbound) {
                Ok(()) => return,
                Err(SendError::Full(inbound)) => inbound,
                Err(SendError::Closed(_)) => {
                    metrics::counter!(m::ROUTER_REFUSED_TOTAL, "reason" => "device_gone")
                        .increment(1);
                    tracing::warn!(device = %id, "device actor closed while routing; the broker will redeliver");
                    return;
                }
            }
        } else {
            inbound
        };
        if !e.parked.has_room(inbound.payload.len(), limits) {
            tracing::debug!(device = %id, "device busy, parking full: message dead-lettered");
            return self.dead_letter(id, inbound, "device_busy", ctx);
        }
        e.parked.push(inbound);
        if !e.parked.pumping {
            e.parked.pumping = true;
            self.pump(id, ctx);
        }
    }

    /// Moves a device's parked messages into its mailbox while there is room; when it is full,
    /// waits for room for the oldest in a spawned future (the router goes on) and comes back.
    fn pump(&mut self, id: DeviceId, ctx: &mut Context<Self>) {
        let Some(e) = self.devices.get_mut(&id) else {
            return;
        };
        while let Some(msg) = e.parked.pop() {
            match e.addr.try_send(msg) {
                Ok(()) => {}
                Err(SendError::Full(msg)) => {
                    let (addr, generation) = (e.addr.clone(), e.generation);
                    let wait = async move {
                        if let Err(MailboxError::Closed) = addr.send(msg).await {
                            tracing::debug!("device actor stopped while a parked message waited");
                        }
                    };
                    ctx.spawn(wait.into_actor(self).map(move |(), act, ctx| {
                        if act
                            .devices
                            .get(&id)
                            .is_some_and(|e| e.generation == generation)
                        {
                            act.pump(id, ctx);
                        }
                    }));
                    return;
                }
                Err(SendError::Closed(msg)) => {
                    // The actor is gone; its replacement (next message) takes the rest.
                    e.parked.unpop(msg);
                    break;
                }
            }
        }
        e.parked.pumping = false;
    }

    fn reject(&mut self, msg: RawPublish, err: TopicError, ctx: &mut Context<Self>) {
        if msg.reply_route.topics.is_outbound(&msg.topic) {
            // The engine's own ACK/NACK or command, seen through a broad filter such as
            // `{prefix}/#`: not a device message and not an error.
            metrics::counter!(m::MQTT_MESSAGES_TOTAL, "kind" => "own").increment(1);
            crate::link::ack(msg.ack);
            return;
        }
        let (code, device) = match &err {
            TopicError::BadDeviceId(_) | TopicError::OutsidePrefix => {
                (ErrorCode::InvalidDeviceId, INVALID_DEVICE.to_string())
            }
            TopicError::UnknownSuffix(_) => (
                ErrorCode::BadField,
                device_level(&msg.reply_route.topics, &msg.topic),
            ),
            TopicError::Claimed(_) => (
                ErrorCode::InvalidDeviceId,
                device_level(&msg.reply_route.topics, &msg.topic),
            ),
            TopicError::BadChunkTopic(_) => (
                ErrorCode::BadField,
                device_level(&msg.reply_route.topics, &msg.topic),
            ),
        };
        metrics::counter!(m::MQTT_MESSAGES_TOTAL, "kind" => "invalid").increment(1);
        metrics::counter!(m::ERRORS_TOTAL, "code" => code.label()).increment(1);
        tracing::debug!(topic = %String::from_utf8_lossy(&msg.topic), error = %err, "rejected topic");
        let deps = self
            .deps
            .as_ref()
            .expect("router dependencies are set before start");
        match self.invalid.admit(code, Instant::now().into_std()) {
            Admit::Write { suppressed } => {
                let row = Row::Error(ErrorRecord {
                    device_id: device,
                    code,
                    message: err.to_string(),
                    details: json!({
                        "topic": excerpt(&msg.topic),
                        "payload_excerpt": excerpt(&msg.payload),
                        "payload_bytes": msg.payload.len(),
                        "suppressed_before": suppressed,
                    }),
                    occurred_at: Utc::now(),
                });
                // The reject is durable once its error row is; if the row was rate-limited,
                // there is nothing to keep and the ack goes now.
                let pending = PendingRow::new(row, msg.ack).owned_by(msg.reply_route.company_id);
                let pg = deps.pg.clone();
                if let Err(SendError::Full(p)) = pg.try_send(pending) {
                    ctx.wait(
                        async move {
                            let _ = pg.send(p).await;
                        }
                        .into_actor(self),
                    );
                }
            }
            Admit::Suppress => {
                metrics::counter!(m::ERROR_ROWS_SUPPRESSED_TOTAL, "code" => code.label())
                    .increment(1);
                crate::link::ack(msg.ack);
            }
        }
    }
}

/// The device level of a topic that could not be parsed further, normalised, or `INVALID`.
fn device_level(parser: &TopicParser, topic: &[u8]) -> String {
    let p = parser.prefix().len() + 1;
    topic
        .get(p..)
        .and_then(|rest| rest.split(|&b| b == b'/').next())
        .and_then(|raw| DeviceId::parse_bytes(raw).ok())
        .map(|d| d.to_string())
        .unwrap_or_else(|| INVALID_DEVICE.to_string())
}

impl Actor for DeviceRouter {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        // Control messages only: data arrives through the stream.
        ctx.set_mailbox_capacity(4096);
        let Some(pool) = self.owner_store.clone() else {
            return;
        };
        // The bindings are in memory before the first message is routed; until the database
        // answers, messages wait (at the broker, for what does not fit in the queues).
        let load = async move {
            let mut delay = Duration::from_millis(200);
            loop {
                match owners::load(pool.clone()).await {
                    Ok(rows) => return rows,
                    Err(e) => {
                        tracing::error!(error = %e, retry_in_ms = delay.as_millis() as u64, "device bindings not loaded; retrying before routing");
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(10));
                    }
                }
            }
        };
        ctx.wait(load.into_actor(self).map(|rows, act, _| {
            act.owners.merge(rows);
            tracing::info!(devices = act.owners.len(), "device bindings loaded");
        }));
        ctx.run_interval(SAVE_OWNERS_EVERY, |act, ctx| act.save_owners(ctx));
    }
}

impl StreamHandler<RawPublish> for DeviceRouter {
    fn handle(&mut self, msg: RawPublish, ctx: &mut Self::Context) {
        self.route(msg, ctx);
    }

    fn finished(&mut self, _ctx: &mut Self::Context) {
        tracing::info!("MQTT source stream ended");
    }
}

impl Handler<RawPublish> for DeviceRouter {
    type Result = ();
    fn handle(&mut self, msg: RawPublish, ctx: &mut Self::Context) {
        self.route(msg, ctx);
    }
}

impl DeviceRouter {
    fn route(&mut self, msg: RawPublish, ctx: &mut Context<Self>) {
        if msg.ack.as_ref().is_some_and(AckToken::is_released) {
            // Its partition moved while it queued: the new owner gets it again from JetStream,
            // and no actor may start for its device here.
            hot_counter!(m::CLUSTER_RELEASED_MESSAGES_TOTAL).increment(1);
            return;
        }
        let parsed = match msg.reply_route.topics.parse(&msg.topic) {
            Ok(p) => p,
            Err(e) => return self.reject(msg, e, ctx),
        };
        count_received(&parsed.kind);
        hot_counter!(m::ROUTER_ROUTED_TOTAL).increment(1);
        let inbound = Inbound {
            topic: msg.topic,
            kind: parsed.kind,
            payload: msg.payload,
            ack: msg.ack,
            reply_route: msg.reply_route,
            received: msg.received,
        };
        drop(msg.charge); // taken off the source's queue
        let source = &inbound.reply_route.source_name;
        match self.owners.get(&parsed.device_id) {
            Some(owner) if **owner != **source && Owners::may_claim(owner, source) => {
                tracing::info!(device = %parsed.device_id, from = %owner, to = %source, "a product claimed a device of the default source");
                self.owners.bind(parsed.device_id.clone(), source.clone());
            }
            Some(owner) if **owner != **source => {
                let claimed = TopicError::Claimed(owner.to_string());
                let msg = RawPublish {
                    topic: inbound.topic,
                    payload: inbound.payload,
                    ack: inbound.ack,
                    reply_route: inbound.reply_route,
                    charge: None,
                    received: inbound.received,
                };
                return self.reject(msg, claimed, ctx);
            }
            Some(_) => {}
            None => self.owners.bind(parsed.device_id.clone(), source.clone()),
        }
        match self.devices.get(&parsed.device_id) {
            Some(e) if e.addr.connected() => {}
            Some(_) => {
                // The actor died without being asked to (its arbiter failed): restart it.
                metrics::counter!(m::DEVICE_ACTORS_RESTARTED_TOTAL).increment(1);
                self.spawn(parsed.device_id.clone());
            }
            None if self.devices.len() >= self.max_actors() => {
                tracing::debug!(device = %parsed.device_id, "max_device_actors reached: message dead-lettered");
                return self.dead_letter(parsed.device_id, inbound, "max_device_actors", ctx);
            }
            None => {
                self.spawn(parsed.device_id.clone());
            }
        }
        self.deliver(parsed.device_id, inbound, ctx);
    }

    /// Writes a message that cannot go to its device now to `dead_letters`, acknowledged once
    /// durable there (replayed later by `fleetflow replay-dead-letters`). A full Postgres sink
    /// holds the router, as any row does; a gone one leaves the message unacknowledged.
    fn dead_letter(
        &mut self,
        id: DeviceId,
        inbound: Inbound,
        reason: &'static str,
        ctx: &mut Context<Self>,
    ) {
        let pg = self
            .deps
            .as_ref()
            .expect("router dependencies are set")
            .pg
            .clone();
        match pg.try_send(inbound.into_dead_letter(id, reason)) {
            Ok(()) => {}
            Err(SendError::Full(p)) => ctx.wait(
                async move {
                    let _ = pg.send(p).await;
                }
                .into_actor(self),
            ),
            Err(SendError::Closed(_)) => {
                metrics::counter!(m::ROUTER_REFUSED_TOTAL, "reason" => "sink_gone").increment(1);
            }
        }
    }

    fn max_actors(&self) -> usize {
        let d = &self
            .deps
            .as_ref()
            .expect("router dependencies are set")
            .devices;
        d.max_actors.max(1)
    }
}

impl Handler<DeviceExited> for DeviceRouter {
    type Result = ();

    fn handle(&mut self, msg: DeviceExited, _ctx: &mut Self::Context) {
        if let Some(e) = self.devices.get(&msg.device_id) {
            // Not idle after all while messages wait for it (the actor asks again later).
            if e.generation == msg.generation && e.parked.is_empty() && !e.parked.pumping {
                let e = self.devices.remove(&msg.device_id).expect("entry exists");
                metrics::counter!(m::DEVICE_ACTORS_PASSIVATED_TOTAL).increment(1);
                // Control message: the actor finishes its mailbox, then stops.
                e.addr.do_send(Stop);
            }
        }
    }
}

impl Handler<QueryDevice> for DeviceRouter {
    type Result = ResponseFuture<Option<DeviceSnapshot>>;

    fn handle(&mut self, msg: QueryDevice, _ctx: &mut Self::Context) -> Self::Result {
        let addr = self.devices.get(&msg.0).map(|e| e.addr.clone());
        Box::pin(async move {
            let a = addr?;
            tokio::time::timeout(SNAPSHOT_TIMEOUT, a.send(Snapshot))
                .await
                .ok()?
                .ok()
        })
    }
}

impl Handler<ReplyRouteOf> for DeviceRouter {
    type Result = ResponseFuture<Option<Arc<ReplyRoute>>>;

    fn handle(&mut self, msg: ReplyRouteOf, _ctx: &mut Self::Context) -> Self::Result {
        let addr = self.devices.get(&msg.0).map(|e| e.addr.clone());
        Box::pin(async move {
            match addr {
                Some(a) => a.send(GetReplyRoute).await.ok().flatten(),
                None => None,
            }
        })
    }
}

impl Handler<QueryDevices> for DeviceRouter {
    type Result = ResponseFuture<HashMap<String, DeviceSnapshot>>;

    fn handle(&mut self, msg: QueryDevices, _ctx: &mut Self::Context) -> Self::Result {
        let addrs: Vec<(String, Addr<DeviceActor>)> = msg
            .0
            .into_iter()
            .filter_map(|id| {
                self.devices
                    .get(&id)
                    .map(|e| (id.to_string(), e.addr.clone()))
            })
            .collect();
        // Many at once (at most 64 in flight), each within a timeout: a busy device is left
        // out rather than waited on.
        Box::pin(async move {
            use futures::StreamExt;
            let asks = addrs.into_iter().map(|(id, a)| async move {
                match tokio::time::timeout(SNAPSHOT_TIMEOUT, a.send(Snapshot)).await {
                    Ok(Ok(s)) => Some((id, s)),
                    _ => None,
                }
            });
            futures::stream::iter(asks)
                .buffer_unordered(64)
                .filter_map(|r| async move { r })
                .collect()
                .await
        })
    }
}

impl Handler<RestartDevice> for DeviceRouter {
    type Result = bool;

    fn handle(&mut self, msg: RestartDevice, ctx: &mut Self::Context) -> bool {
        let was_running = match self.devices.get(&msg.0) {
            Some(e) => {
                // Control message: the old actor drains its mailbox, then stops.
                e.addr.do_send(Stop);
                true
            }
            None => false,
        };
        metrics::counter!(m::DEVICE_ACTORS_RESTARTED_TOTAL).increment(1);
        // Messages parked for the old actor go to the new one. The device stays bound to its
        // source.
        self.spawn(msg.0.clone());
        if let Some(e) = self.devices.get_mut(&msg.0) {
            if !e.parked.is_empty() && !e.parked.pumping {
                e.parked.pumping = true;
                self.pump(msg.0, ctx);
            }
        }
        was_running
    }
}

impl Handler<RestartRunning> for DeviceRouter {
    type Result = bool;

    fn handle(&mut self, msg: RestartRunning, ctx: &mut Self::Context) -> bool {
        if !self.devices.contains_key(&msg.0) {
            return false;
        }
        <Self as Handler<RestartDevice>>::handle(self, RestartDevice(msg.0), ctx)
    }
}

/// Stops the actors of these devices after what their mailboxes hold (cluster mode: their
/// partition moved to another instance); answers how many were running.
#[derive(Debug, Message)]
#[rtype(result = "usize")]
pub struct ReleaseDevices(pub Vec<DeviceId>);

impl Handler<ReleaseDevices> for DeviceRouter {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, msg: ReleaseDevices, _ctx: &mut Self::Context) -> Self::Result {
        let addrs: Vec<_> = msg
            .0
            .iter()
            .filter_map(|id| self.devices.remove(id))
            .map(|e| e.addr)
            .collect();
        Box::pin(async move {
            let n = addrs.len();
            // All at once: each finishes its mailbox, and the partition's pin is running out.
            futures::future::join_all(addrs.iter().map(|a| a.send(Stop))).await;
            n
        })
    }
}

impl Handler<StopAll> for DeviceRouter {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, _: StopAll, _ctx: &mut Self::Context) -> Self::Result {
        let entries: Vec<_> = self.devices.drain().map(|(_, e)| e.addr).collect();
        // Bindings made since the last save are written before the engine stops.
        let unsaved = self.owners.take_unsaved();
        let store = self.owner_store.clone().filter(|_| !unsaved.is_empty());
        Box::pin(async move {
            let n = entries.len();
            // `send` queues behind what each mailbox holds, so this drains them.
            for a in entries {
                let _ = a.send(Stop).await;
            }
            if let Some(pool) = store {
                let save = owners::save(pool, unsaved);
                match tokio::time::timeout(Duration::from_secs(2), save).await {
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => tracing::warn!(error = %e, "device bindings not saved at shutdown"),
                    Err(_) => tracing::warn!("device bindings not saved at shutdown: the database did not answer within 2 s"),
                }
            }
            n
        })
    }
}

/// `fleetflow_mqtt_messages_total` by topic kind, through cached handles (every message).
fn count_received(kind: &TopicKind) {
    let c = match kind {
        TopicKind::Status => hot_counter!(m::MQTT_MESSAGES_TOTAL, "kind" => "status"),
        TopicKind::Data => hot_counter!(m::MQTT_MESSAGES_TOTAL, "kind" => "data"),
        TopicKind::Chunk { .. } => hot_counter!(m::MQTT_MESSAGES_TOTAL, "kind" => "chunk"),
        TopicKind::CmdResult => hot_counter!(m::MQTT_MESSAGES_TOTAL, "kind" => "cmd_result"),
    };
    c.increment(1);
}
