//! The device actor: runs [`DeviceCore`] for one device, carries out its effects (rows to the
//! Postgres sink with backpressure, images to the object sink, ACK/NACK publishes, broker acks),
//! runs its inactivity timer, passivates when idle, and supervises itself: a panic in the state
//! machine is caught here, the state is rebuilt from the actor's arguments, and processing
//! resumes after the policy's backoff, or the device is quarantined.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;
use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use serde_json::json;
use tokio::time::Instant;

/// The state machine's clock: tokio's (so that paused test time applies), as a std instant.
fn clock() -> std::time::Instant {
    Instant::now().into_std()
}

use super::publish_log;
use super::DeviceExited;
use super::{DeviceSnapshot, GetReplyRoute, Inbound, Snapshot, Stop};
use crate::config::{AssemblyConfig, DevicesConfig, PublishLogConfig};
use crate::link::{AckToken, ReplyRoute};
use crate::metrics as m;
use crate::sinks::objects::{ObjectSink, Store};
use crate::sinks::pg::PgSink;
use crate::sinks::rows::{PendingRow, Row};
use crate::supervisor::{Decision, RestartPolicy};
use fleetflow_protocol::budget::GlobalBudget;
use fleetflow_protocol::errors::{ErrorCode, ErrorRecord};
use fleetflow_protocol::ids::DeviceId;
use fleetflow_protocol::state_machine::{DeviceCore, Effect, MessageAck, StoreOutcome};

/// What every device actor shares.
#[derive(Clone)]
pub struct DeviceDeps {
    /// Assembly limits.
    pub assembly: Arc<AssemblyConfig>,
    /// Actor limits and restart policy.
    pub devices: Arc<DevicesConfig>,
    /// Global byte budget.
    pub budget: Arc<GlobalBudget>,
    /// Rows.
    pub pg: Addr<PgSink>,
    /// Images.
    pub objects: Addr<ObjectSink>,
    /// Told when this actor passivates (the router that placed it).
    pub router: Recipient<DeviceExited>,
    /// Wake schedules and next wakes (the GXP handshake answers from memory).
    pub book: Arc<fleetflow_protocol::schedule::ScheduleBook>,
    /// The message log's settings.
    pub publish_log: Arc<PublishLogConfig>,
}

enum Health {
    Running,
    /// In restart backoff until then: messages are set aside (`dead_letters`), not held in
    /// the mailbox, so that a device that fails on every message never fills it.
    Restarting {
        until: Instant,
    },
    Quarantined {
        until: Instant,
    },
}

/// The effects buffer, one per arbiter thread instead of one per actor: an idle actor then
/// holds no effects capacity (8 effects are about 1.5 KiB, more than the rest of the actor).
mod scratch {
    use std::cell::Cell;

    use fleetflow_protocol::state_machine::Effect;

    thread_local! {
        static SCRATCH: Cell<Vec<Effect>> = const { Cell::new(Vec::new()) };
    }

    /// `pending` when it holds effects already, else this thread's empty buffer.
    pub(super) fn take_or(pending: Vec<Effect>) -> Vec<Effect> {
        if pending.is_empty() {
            SCRATCH.take()
        } else {
            pending
        }
    }

    /// Returns a drained buffer to this thread, keeping the larger of the two.
    pub(super) fn give_back(mut v: Vec<Effect>) {
        v.clear();
        let kept = SCRATCH.take();
        SCRATCH.set(if kept.capacity() > v.capacity() {
            kept
        } else {
            v
        });
    }
}

/// One device's actor.
pub struct DeviceActor {
    core: DeviceCore,
    deps: Arc<DeviceDeps>,
    generation: u64,
    /// The source this device's messages come from, and its ack and command topics there.
    reply_route: Option<(Arc<ReplyRoute>, String, String)>,
    effects: Vec<Effect>,
    timer: Option<(SpawnHandle, std::time::Instant)>,
    /// The broker ack of the message being handled; the state machine says when it may go.
    msg_ack: Option<AckToken>,
    last_msg: Instant,
    policy: RestartPolicy,
    health: Health,
}

impl DeviceActor {
    /// A fresh actor for `id`; `generation` tells the router which incarnation it is.
    pub fn new(id: DeviceId, generation: u64, deps: Arc<DeviceDeps>) -> Self {
        let policy = RestartPolicy::new(&deps.devices);
        Self {
            core: DeviceCore::new(
                id,
                deps.assembly.clone(),
                deps.budget.clone(),
                deps.book.clone(),
            ),
            deps,
            generation,
            reply_route: None,
            effects: Vec::new(),
            timer: None,
            msg_ack: None,
            last_msg: Instant::now(),
            policy,
            health: Health::Running,
        }
    }

    /// Carries out the effects of a step. `started`: when the source handed on the message of
    /// that step (`None` for timers and store outcomes), the start of a capture's answer time.
    fn run_effects(&mut self, ctx: &mut Context<Self>, started: Option<std::time::Instant>) {
        let mut blocked: Vec<PendingRow> = Vec::new();
        let mut effects = std::mem::take(&mut self.effects);
        for effect in effects.drain(..) {
            match effect {
                Effect::Ack(_) => crate::link::ack(self.msg_ack.take()),
                Effect::Publish { payload, kind } => self.publish(payload, kind),
                Effect::Command { payload, kind } => self.publish_command(payload, kind),
                Effect::Row(row, ack) => {
                    let ack = ack.and_then(|_| self.msg_ack.take());
                    let company = self.reply_route.as_ref().and_then(|(r, _, _)| r.company_id);
                    let p = PendingRow::new(row, ack).owned_by(company);
                    if !blocked.is_empty() {
                        blocked.push(p);
                        continue;
                    }
                    match self.deps.pg.try_send(p) {
                        Ok(()) => {}
                        Err(SendError::Full(p)) => blocked.push(p),
                        Err(SendError::Closed(_)) => {
                            tracing::error!(device = %self.core.id(), "postgres sink is gone; row dropped unacked")
                        }
                    }
                }
                Effect::Store(req) => {
                    let capture_id = req.capture_id.clone();
                    let company = self.reply_route.as_ref().and_then(|(r, _, _)| r.company_id);
                    let fut = self.deps.objects.send(Store(req, company));
                    ctx.spawn(fut.into_actor(self).map(move |res, act, ctx| {
                        let outcome = res.unwrap_or_else(|e| StoreOutcome::Failed {
                            reason: format!("object sink unavailable: {e}"),
                            code: ErrorCode::FinaliseFailed,
                        });
                        let mut answered = false;
                        act.guarded(ctx, |core, out| {
                            let from = out.len();
                            core.on_stored(&capture_id, outcome, clock(), out);
                            answered = out[from..]
                                .iter()
                                .any(|e| matches!(e, Effect::Publish { kind: "ack", .. }));
                        });
                        if let (true, Some(t)) = (answered, started) {
                            // Its ACK_OK is in the MQTT client's queue now.
                            metrics::histogram!(m::CAPTURE_ANSWER_SECONDS)
                                .record(t.elapsed().as_secs_f64());
                        }
                    }));
                }
            }
        }
        scratch::give_back(effects);
        if !blocked.is_empty() {
            // The sink is full: stop taking messages until it has room (backpressure).
            let pg = self.deps.pg.clone();
            ctx.wait(
                async move {
                    for p in blocked {
                        if pg.send(p).await.is_err() {
                            tracing::error!("postgres sink is gone; row dropped unacked");
                        }
                    }
                }
                .into_actor(self),
            );
        }
        self.schedule_timer(ctx);
    }

    /// Runs a state-machine step, catching a panic at the actor boundary.
    fn guarded(
        &mut self,
        ctx: &mut Context<Self>,
        f: impl FnOnce(&mut DeviceCore, &mut Vec<Effect>),
    ) {
        self.guarded_at(ctx, None, f)
    }

    /// [`Self::guarded`] for the step of a message the source handed on at `started`.
    fn guarded_at(
        &mut self,
        ctx: &mut Context<Self>,
        started: Option<std::time::Instant>,
        f: impl FnOnce(&mut DeviceCore, &mut Vec<Effect>),
    ) {
        let mut out = scratch::take_or(std::mem::take(&mut self.effects));
        let result = catch_unwind(AssertUnwindSafe(|| f(&mut self.core, &mut out)));
        self.effects = out;
        match result {
            Ok(()) => self.run_effects(ctx, started),
            Err(panic) => {
                scratch::give_back(std::mem::take(&mut self.effects));
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_else(|| "unknown panic".into());
                self.on_failure(ctx, what);
            }
        }
    }

    fn on_failure(&mut self, ctx: &mut Context<Self>, what: String) {
        let id = self.core.id().clone();
        // The message that failed is acknowledged (rejected), so that the broker does not
        // redeliver a poison message for ever; its data was not stored.
        crate::link::ack(self.msg_ack.take());
        // Rebuild the state from the actor's arguments; the old state (and its bytes) is
        // dropped. Lost assemblies resync with the device through need_metadata/missing NACKs.
        self.core = DeviceCore::new(
            id.clone(),
            self.deps.assembly.clone(),
            self.deps.budget.clone(),
            self.deps.book.clone(),
        );
        if let Some((r, _, _)) = &self.reply_route {
            self.core.set_gxp_settings(r.gxp.clone());
        }
        if let Some((h, _)) = self.timer.take() {
            ctx.cancel_future(h);
        }
        match self.policy.on_failure(Instant::now()) {
            Decision::Restart { after } => {
                metrics::counter!(m::DEVICE_ACTORS_RESTARTED_TOTAL).increment(1);
                tracing::warn!(device = %id, panic = %what, backoff_ms = after.as_millis() as u64, "device actor failed; restarting");
                self.health = Health::Restarting {
                    until: Instant::now() + after,
                };
            }
            Decision::Quarantine { until } => {
                metrics::counter!(m::DEVICE_ACTORS_QUARANTINED_TOTAL).increment(1);
                tracing::error!(device = %id, panic = %what, "device actor failed too often; quarantined");
                self.health = Health::Quarantined { until };
                let row = Row::Error(ErrorRecord {
                    device_id: id.to_string(),
                    code: ErrorCode::Quarantined,
                    message: format!("quarantined after repeated failures: {what}"),
                    details: json!({"restarts": self.policy.total_restarts(), "quarantine_until_ms": self.deps.devices.quarantine_ms}),
                    occurred_at: Utc::now(),
                });
                metrics::counter!(m::ERRORS_TOTAL, "code" => ErrorCode::Quarantined.label())
                    .increment(1);
                self.effects.push(Effect::Row(row, None));
                self.run_effects(ctx, None);
            }
        }
    }

    fn schedule_timer(&mut self, ctx: &mut Context<Self>) {
        let Some(deadline) = self.core.next_deadline() else {
            return;
        };
        if let Some((_, at)) = self.timer {
            if at <= deadline {
                return;
            }
        }
        if let Some((h, _)) = self.timer.take() {
            ctx.cancel_future(h);
        }
        let delay = deadline.saturating_duration_since(clock());
        let h = ctx.run_later(delay, |act, ctx| {
            act.timer = None;
            act.guarded(ctx, |core, out| {
                core.tick(clock(), out);
            });
        });
        self.timer = Some((h, deadline));
    }

    fn schedule_idle_check(&mut self, ctx: &mut Context<Self>) {
        let idle = Duration::from_millis(self.deps.devices.idle_passivate_ms);
        let due = (self.last_msg + idle).saturating_duration_since(Instant::now());
        ctx.run_later(due.max(Duration::from_millis(10)), move |act, ctx| {
            if act.last_msg.elapsed() >= idle
                && act.core.is_idle()
                && !matches!(act.health, Health::Quarantined { .. })
            {
                act.deps.router.do_send(DeviceExited {
                    device_id: act.core.id().clone(),
                    generation: act.generation,
                });
            }
            // Again later: the router may refuse the exit (messages wait for this actor), and
            // when it accepts, its Stop ends the actor before the next check.
            act.schedule_idle_check(ctx);
        });
    }
}

impl Actor for DeviceActor {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.deps.devices.mailbox_capacity);
        metrics::gauge!(m::DEVICE_ACTORS).increment(1.0);
        metrics::counter!(m::DEVICE_ACTORS_SPAWNED_TOTAL).increment(1);
        tracing::debug!(device = %self.core.id(), generation = self.generation, "device actor started");
        self.schedule_idle_check(ctx);
    }

    fn stopped(&mut self, _ctx: &mut Self::Context) {
        metrics::gauge!(m::DEVICE_ACTORS).decrement(1.0);
        tracing::debug!(device = %self.core.id(), generation = self.generation, "device actor stopped");
    }
}

impl Handler<Inbound> for DeviceActor {
    type Result = ();

    fn handle(&mut self, msg: Inbound, ctx: &mut Self::Context) {
        fleetflow_protocol::hot_counter!(m::DEVICE_MAILBOX_POPPED_TOTAL).increment(1);
        self.last_msg = Instant::now();
        self.note_reply_route(&msg.reply_route);
        match self.health {
            Health::Running => {}
            Health::Restarting { until } if Instant::now() < until => {
                return self.set_aside(msg, "restarting", ctx);
            }
            Health::Quarantined { until } if Instant::now() < until => {
                metrics::counter!(m::ERRORS_TOTAL, "code" => ErrorCode::Quarantined.label())
                    .increment(1);
                return self.set_aside(msg, "quarantined", ctx);
            }
            Health::Restarting { .. } => self.health = Health::Running,
            Health::Quarantined { .. } => {
                tracing::info!(device = %self.core.id(), "quarantine over");
                self.policy.reset();
                self.health = Health::Running;
            }
        }
        #[cfg(feature = "fault-injection")]
        if msg.payload.as_ref() == crate::FAULT_PANIC_MARKER {
            // Ack first, as a poison message is deliberately rejected.
            crate::link::ack(msg.ack);
            self.guarded(ctx, |_, _| panic!("fault injection: panic marker received"));
            return;
        }
        let wall = Utc::now();
        let now = clock();
        let ack = msg.ack.as_ref().map(|_| MessageAck);
        self.msg_ack = msg.ack;
        let mut reading_seq = None;
        self.guarded_at(ctx, Some(msg.received), |core, out| {
            let from = out.len();
            core.handle(&msg.kind, &msg.payload, ack, now, wall, out);
            reading_seq = out[from..].iter().find_map(|e| match e {
                Effect::Row(Row::Reading(r), _) => r.seq,
                _ => None,
            });
        });
        // After the message's own rows, so that the log never takes their place in the sink.
        let logged = publish_log::inbound_decoded(
            &self.deps.publish_log,
            self.core.id(),
            &msg.topic,
            &msg.kind,
            &msg.payload,
            wall,
            reading_seq,
        );
        self.log(logged);
        if let Some(t) = self.msg_ack.take() {
            // Every path of the state machine says when to ack; none may forget it.
            tracing::warn!(device = %self.core.id(), "message left unacknowledged by the state machine; acked");
            crate::link::ack(Some(t));
        }
    }
}

impl DeviceActor {
    /// Remembers where this device's messages come from (a source may be replaced at run time).
    fn note_reply_route(&mut self, route: &Arc<ReplyRoute>) {
        if self
            .reply_route
            .as_ref()
            .is_some_and(|(r, _, _)| Arc::ptr_eq(r, route))
        {
            return;
        }
        let ack = route.topics.ack_topic(self.core.id());
        let cmd = route.topics.cmd_topic(self.core.id());
        self.core.set_gxp_settings(route.gxp.clone());
        self.reply_route = Some((route.clone(), ack, cmd));
    }

    fn publish(&self, payload: bytes::Bytes, kind: &'static str) {
        match &self.reply_route {
            Some((r, topic, _)) => self.send_logged(r, topic, payload, kind),
            None => tracing::warn!(device = %self.core.id(), "no source to reply on"),
        }
    }

    fn publish_command(&self, payload: bytes::Bytes, kind: &'static str) {
        match &self.reply_route {
            Some((r, _, topic)) => self.send_logged(r, topic, payload, kind),
            None => tracing::warn!(device = %self.core.id(), "no source to send commands on"),
        }
    }

    /// Publishes to the device and logs what was sent.
    fn send_logged(&self, r: &ReplyRoute, topic: &str, payload: bytes::Bytes, kind: &'static str) {
        let row = publish_log::outbound(
            &self.deps.publish_log,
            self.core.id(),
            topic,
            &payload,
            Utc::now(),
        );
        self.log(row);
        r.link.publish(topic.to_string(), payload, kind);
    }

    /// Hands a message-log row to the Postgres sink, without waiting: a full sink drops it
    /// (counted), since the log must never hold up the data.
    fn log(&self, row: Option<fleetflow_protocol::rows::PublishLogRow>) {
        let Some(row) = row else { return };
        if self
            .deps
            .pg
            .try_send(PendingRow::new(Row::PublishLog(row), None))
            .is_err()
        {
            metrics::counter!(m::PUBLISH_LOG_DROPPED_TOTAL).increment(1);
        }
    }

    /// A message for a device in restart backoff or quarantine: a chunk is NACKed (the device
    /// keeps the image and tries again later) and acknowledged; anything else goes to
    /// `dead_letters`, acknowledged once it is durable there, for a replay after the cause is
    /// fixed (`fleetflow replay-dead-letters`).
    fn set_aside(&mut self, msg: Inbound, reason: &'static str, ctx: &mut Context<Self>) {
        if let fleetflow_protocol::topic::TopicKind::Chunk { capture_id, .. } = &msg.kind {
            // Tell the device to keep the image and try again later.
            self.publish(fleetflow_protocol::nack::storage(capture_id), "nack");
            crate::link::ack(msg.ack);
            return;
        }
        let p = msg.into_dead_letter(self.core.id().clone(), reason);
        self.msg_ack = p.ack;
        self.effects.push(Effect::Row(p.row, Some(MessageAck)));
        self.run_effects(ctx, None);
    }
}

impl Handler<Stop> for DeviceActor {
    type Result = ();

    fn handle(&mut self, _: Stop, ctx: &mut Self::Context) {
        ctx.stop();
    }
}

impl Handler<GetReplyRoute> for DeviceActor {
    type Result = Option<Arc<ReplyRoute>>;

    fn handle(&mut self, _: GetReplyRoute, _ctx: &mut Self::Context) -> Self::Result {
        self.reply_route.as_ref().map(|(r, _, _)| r.clone())
    }
}

impl Handler<Snapshot> for DeviceActor {
    type Result = MessageResult<Snapshot>;

    fn handle(&mut self, _: Snapshot, _ctx: &mut Self::Context) -> Self::Result {
        MessageResult(DeviceSnapshot {
            in_flight: self.core.in_flight(),
            held_bytes: self.core.held_bytes(),
            restarts: self.policy.total_restarts(),
            state: match self.health {
                Health::Running => "running",
                Health::Restarting { .. } => "restarting",
                Health::Quarantined { .. } => "quarantined",
            },
        })
    }
}
