//! The router actor: takes raw PUBLISH packets from the MQTT source, parses the topic, and hands
//! each message to its device's actor, starting one on a device's first message. Device actors
//! are spread over one arbiter per core by a hash of the device id. When a device mailbox is
//! full the router waits (it never uses `do_send` on the data path), which stops it reading from
//! the source; the broker's receive maximum then holds the rest.

use std::collections::HashMap;
use std::hash::BuildHasher;
use std::sync::Arc;

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
use fleetflow_protocol::ids::DeviceId;
use fleetflow_protocol::topic::{TopicError, TopicParser};

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

/// A source stopped for good (removed, or replaced by another product's config): the devices
/// it fed are no longer bound to it, so their next message binds them to whichever source
/// carries them now.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct ReleaseSource(pub String);

impl Handler<ReleaseSource> for DeviceRouter {
    type Result = ();

    fn handle(&mut self, msg: ReleaseSource, _ctx: &mut Self::Context) {
        let mut n = 0usize;
        for e in self.devices.values_mut() {
            if *e.owner == *msg.0 {
                e.owner = Arc::from("");
                n += 1;
            }
        }
        if n > 0 {
            tracing::info!(source = %msg.0, devices = n, "devices released from a stopped source");
        }
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
    /// The source (product) the device's messages arrive from. While its actor lives, messages
    /// for the same device id from another source (another product or organisation) are
    /// refused, so a tenant cannot feed or redirect another tenant's device. Empty: not bound
    /// yet (bound by the next message).
    owner: Arc<str>,
}

/// The router actor: hands each message to its device's actor (see the module doc).
pub struct DeviceRouter {
    arbiters: Arc<Vec<ArbiterHandle>>,
    deps: Option<DeviceDeps>,
    devices: HashMap<DeviceId, LiveDevice>,
    next_generation: u64,
    invalid: ErrorRateLimiter<ErrorCode>,
    hasher: std::collections::hash_map::RandomState,
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
        }
    }

    /// Sets what device actors need (done once, before the first message).
    pub fn set_deps(&mut self, deps: DeviceDeps) {
        self.deps = Some(deps);
    }

    fn arbiter_for(&self, id: &DeviceId) -> &ArbiterHandle {
        let h = self.hasher.hash_one(id);
        &self.arbiters[(h % self.arbiters.len() as u64) as usize]
    }

    fn spawn(&mut self, id: DeviceId, owner: Arc<str>) -> Addr<DeviceActor> {
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
        self.devices.insert(
            id,
            LiveDevice {
                addr: addr.clone(),
                generation,
                owner: owner.clone(),
            },
        );
        addr
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
                let pending = PendingRow::new(row, msg.ack);
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
        let parsed = match msg.reply_route.topics.parse(&msg.topic) {
            Ok(p) => p,
            Err(e) => return self.reject(msg, e, ctx),
        };
        metrics::counter!(m::MQTT_MESSAGES_TOTAL, "kind" => parsed.kind.label()).increment(1);
        metrics::counter!(m::ROUTER_ROUTED_TOTAL).increment(1);
        let inbound = Inbound {
            topic: msg.topic,
            kind: parsed.kind,
            payload: msg.payload,
            ack: msg.ack,
            reply_route: msg.reply_route,
        };
        let owner = &inbound.reply_route.source_name;
        let addr = match self.devices.get_mut(&parsed.device_id) {
            Some(e) if !e.owner.is_empty() && *e.owner != **owner => {
                let claimed = TopicError::Claimed(e.owner.to_string());
                let msg = RawPublish {
                    topic: inbound.topic,
                    payload: inbound.payload,
                    ack: inbound.ack,
                    reply_route: inbound.reply_route,
                };
                return self.reject(msg, claimed, ctx);
            }
            Some(e) if e.addr.connected() => {
                if e.owner.is_empty() {
                    e.owner = owner.clone();
                }
                e.addr.clone()
            }
            Some(_) => {
                // The actor died without being asked to (its arbiter failed): restart it.
                metrics::counter!(m::DEVICE_ACTORS_RESTARTED_TOTAL).increment(1);
                self.spawn(parsed.device_id, owner.clone())
            }
            None => self.spawn(parsed.device_id, owner.clone()),
        };
        metrics::counter!(m::DEVICE_MAILBOX_PUSHED_TOTAL).increment(1);
        match addr.try_send(inbound) {
            Ok(()) => {}
            Err(SendError::Full(inbound)) => {
                metrics::counter!(m::ROUTER_MAILBOX_WAITS_TOTAL).increment(1);
                ctx.wait(addr.send(inbound).into_actor(self).map(|_, _, _| ()));
            }
            Err(SendError::Closed(_)) => {
                tracing::warn!("device actor closed while routing; the broker will redeliver");
            }
        }
    }
}

impl Handler<DeviceExited> for DeviceRouter {
    type Result = ();

    fn handle(&mut self, msg: DeviceExited, _ctx: &mut Self::Context) {
        if let Some(e) = self.devices.get(&msg.device_id) {
            if e.generation == msg.generation {
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
            match addr {
                Some(a) => a.send(Snapshot).await.ok(),
                None => None,
            }
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
        Box::pin(async move {
            let mut out = HashMap::new();
            for (id, a) in addrs {
                if let Ok(s) = a.send(Snapshot).await {
                    out.insert(id, s);
                }
            }
            out
        })
    }
}

impl Handler<RestartDevice> for DeviceRouter {
    type Result = bool;

    fn handle(&mut self, msg: RestartDevice, _ctx: &mut Self::Context) -> bool {
        let was_running = match self.devices.remove(&msg.0) {
            Some(e) => {
                // Control message: the old actor drains its mailbox, then stops.
                e.addr.do_send(Stop);
                true
            }
            None => false,
        };
        metrics::counter!(m::DEVICE_ACTORS_RESTARTED_TOTAL).increment(1);
        // A restart also clears the binding to a source: the next message binds it again.
        self.spawn(msg.0, Arc::from(""));
        was_running
    }
}

impl Handler<StopAll> for DeviceRouter {
    type Result = ResponseFuture<usize>;

    fn handle(&mut self, _: StopAll, _ctx: &mut Self::Context) -> Self::Result {
        let entries: Vec<_> = self.devices.drain().map(|(_, e)| e.addr).collect();
        Box::pin(async move {
            let n = entries.len();
            // `send` queues behind what each mailbox holds, so this drains them.
            for a in entries {
                let _ = a.send(Stop).await;
            }
            n
        })
    }
}
