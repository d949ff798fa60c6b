//! The dispatcher of one database-configured source: it matches each message's topic against
//! the product's enabled subscriptions and carries out their actions. The source's broker ack
//! is split among the actions, so it goes out only when every action is done (durable for
//! `device_profile` and `store_json`, queued on the connection for `republish`, delivered or
//! given up for `webhook`). A message that matches no enabled subscription is acknowledged and
//! skipped: a disabled subscription stops its messages from being processed.
//!
//! The subscription set is swapped in place when the rows change, without reconnecting.

use std::sync::Arc;

use crate::link::{self, AckToken};
use crate::metrics as m;
use crate::router::RawPublish;
use crate::sinks::pg::PgSink;
use crate::sinks::rows::{PendingRow, Row, TelemetryRow};
use actix::Addr;
use bytes::Bytes;
use chrono::Utc;
use fleetflow_protocol::errors::{excerpt, Admit, ErrorCode, ErrorRateLimiter, ErrorRecord};
use fleetflow_protocol::ids::DeviceId;
use rumqttc::v5::mqttbytes::matches;
use serde_json::{json, Value};
use tokio::sync::{mpsc, watch};
use tokio::time::Instant;

use super::model::{default_device_level, parse_actions, Action};
use super::stats::{StatsRegistry, SubStats};
use super::webhook::{Webhook, WebhookJob};

/// A `mqtt_subscriptions` row as the engine reads it.
#[derive(Debug, Clone, PartialEq)]
pub struct SubscriptionRow {
    /// Primary key.
    pub id: i64,
    /// Unique per config.
    pub name: String,
    /// Topic filter.
    pub topic: String,
    /// Whether it runs.
    pub enabled: bool,
    /// The JSON array of actions.
    pub actions: Value,
}

/// An action ready to run: its settings checked, its webhook worker started.
enum CompiledAction {
    DeviceProfile,
    StoreJson {
        level: usize,
    },
    Republish {
        topic: String,
        qos: u8,
        retain: bool,
    },
    Webhook(Webhook),
}

struct CompiledSub {
    /// Only `device_profile` actions: the engine's own ACK/command topics never match it.
    profile_only: bool,
    id: i64,
    name: String,
    filter: String,
    device_level: usize,
    actions: Vec<CompiledAction>,
    stats: Arc<SubStats>,
}

/// A product's enabled subscriptions, ready to match.
pub struct SubscriptionSet {
    product: Arc<str>,
    subs: Vec<CompiledSub>,
}

impl SubscriptionSet {
    /// Compiles the enabled rows. A row whose actions no longer validate (edited by hand) is
    /// skipped and logged; the others run.
    pub fn compile(
        product: &str,
        rows: &[SubscriptionRow],
        registry: &StatsRegistry,
        http: &reqwest::Client,
    ) -> Self {
        let mut subs = Vec::new();
        for r in rows.iter().filter(|r| r.enabled) {
            let actions = match parse_actions(&r.actions, &r.topic) {
                Ok(a) => a,
                Err(e) => {
                    tracing::error!(product, subscription = %r.name, error = %e, "subscription skipped: invalid actions");
                    continue;
                }
            };
            if !rumqttc::v5::mqttbytes::valid_filter(&r.topic) {
                tracing::error!(product, subscription = %r.name, topic = %r.topic, "subscription skipped: invalid topic filter");
                continue;
            }
            let actions: Vec<CompiledAction> = actions
                .into_iter()
                .map(|a| match a {
                    Action::DeviceProfile => CompiledAction::DeviceProfile,
                    Action::StoreJson { device_id_level } => CompiledAction::StoreJson {
                        level: device_id_level.unwrap_or_else(|| default_device_level(&r.topic)),
                    },
                    Action::Republish { topic, qos, retain } => {
                        CompiledAction::Republish { topic, qos, retain }
                    }
                    Action::Webhook(spec) => {
                        CompiledAction::Webhook(Webhook::start(spec, http.clone()))
                    }
                })
                .collect();
            subs.push(CompiledSub {
                profile_only: actions
                    .iter()
                    .all(|a| matches!(a, CompiledAction::DeviceProfile)),
                id: r.id,
                name: r.name.clone(),
                filter: r.topic.clone(),
                device_level: default_device_level(&r.topic),
                actions,
                stats: registry.get(r.id),
            });
        }
        Self {
            product: Arc::from(product),
            subs,
        }
    }

    /// The filters to subscribe to, each once, optionally as `$share/<group>/<filter>`.
    pub fn filters(&self, shared_group: Option<&str>) -> Vec<String> {
        let mut out: Vec<String> = Vec::new();
        for s in &self.subs {
            let f = match shared_group {
                Some(g) => format!("$share/{g}/{}", s.filter),
                None => s.filter.clone(),
            };
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }

    /// The subscriptions a message on `topic` matches. `own` says the topic is one the engine
    /// publishes itself (`{prefix}/{id}/ack` or `/cmd`): a broad device-profile filter such as
    /// `{prefix}/#` receives those too, and they are not device messages.
    fn matching<'a>(
        &'a self,
        topic: &'a str,
        own: bool,
    ) -> impl Iterator<Item = &'a CompiledSub> + 'a {
        self.subs
            .iter()
            .filter(move |s| !(own && s.profile_only) && matches(topic, &s.filter))
    }
}

/// Starts a dispatcher; the source sends into the returned queue, and the task ends when the
/// source (the only sender) is gone and the queue is drained.
pub fn spawn(
    set: watch::Receiver<Arc<SubscriptionSet>>,
    router: mpsc::Sender<RawPublish>,
    pg: Addr<PgSink>,
) -> (mpsc::Sender<RawPublish>, tokio::task::JoinHandle<()>) {
    let (tx, mut rx) = mpsc::channel::<RawPublish>(crate::source::ROUTER_QUEUE_CAPACITY);
    let mut d = Dispatcher {
        set,
        router,
        pg,
        errors: ErrorRateLimiter::new(10),
        admitted: 0,
        company: None,
    };
    let task = tokio::spawn(async move {
        // The set is taken again only when it changed, not under the lock for every message.
        let mut set = d.set.borrow_and_update().clone();
        while let Some(msg) = rx.recv().await {
            if d.set.has_changed().unwrap_or(false) {
                set = d.set.borrow_and_update().clone();
            }
            d.dispatch(&set, msg).await;
        }
    });
    (tx, task)
}

struct Dispatcher {
    set: watch::Receiver<Arc<SubscriptionSet>>,
    router: mpsc::Sender<RawPublish>,
    pg: Addr<PgSink>,
    errors: ErrorRateLimiter<(String, ErrorCode)>,
    admitted: u64,
    /// The company owning the current message's source (written on its rows).
    company: Option<i64>,
}

/// A republish action: publishes the payload on the target topic (its `{device_id}` filled
/// in) over the connection the message came from. A target that an enabled subscription
/// matches would loop: it is refused and counted. A failed publish leaves the share
/// unacknowledged, so that the broker redelivers the message after a reconnect.
fn republish(
    set: &SubscriptionSet,
    sub: &CompiledSub,
    msg: &RawPublish,
    topic: &str,
    target: &str,
    (qos, retain): (u8, bool),
    share: Option<AckToken>,
) {
    let target = match device_at(topic, sub.device_level) {
        Some(d) => target.replace("{device_id}", d),
        None => target.to_string(),
    };
    if set.subs.iter().any(|s| matches(&target, &s.filter)) {
        // A configuration error, not a transient one: counted and skipped.
        failed(&sub.stats, "republish");
        tracing::warn!(subscription = %sub.name, topic = %target, "republish refused: the target matches an enabled subscription (it would loop)");
        link::ack(share);
        return;
    }
    match msg
        .reply_route
        .link
        .publish_with(target, msg.payload.clone(), qos, retain, "republish")
    {
        Ok(()) => {
            executed(&sub.stats, "republish");
            link::ack(share);
        }
        Err(e) => {
            // Not acknowledged: the broker redelivers the message after a reconnect, and the
            // republish is tried again.
            failed(&sub.stats, "republish");
            tracing::warn!(subscription = %sub.name, error = %e, "republish failed");
            drop(share);
        }
    }
}

/// A webhook action: queues the message's envelope for the webhook's worker; a full queue
/// drops it (counted, and its share acknowledged).
fn queue_webhook(
    set: &SubscriptionSet,
    sub: &CompiledSub,
    msg: &RawPublish,
    topic: &str,
    webhook: &Webhook,
    share: Option<AckToken>,
) {
    let body = envelope(&set.product, sub, topic, &msg.payload);
    let job = WebhookJob {
        body,
        ack: share,
        stats: sub.stats.clone(),
        pending: None,
    };
    if let Err(job) = webhook.try_send(job) {
        failed(&sub.stats, "webhook");
        tracing::warn!(subscription = %sub.name, "webhook queue full; message not delivered");
        link::ack(job.ack);
    }
}

fn executed(stats: &SubStats, kind: &'static str) {
    stats.executed();
    metrics::counter!(m::ACTIONS_EXECUTED_TOTAL, "type" => kind).increment(1);
}

fn failed(stats: &SubStats, kind: &'static str) {
    stats.failed();
    metrics::counter!(m::ACTIONS_FAILED_TOTAL, "type" => kind).increment(1);
}

impl Dispatcher {
    /// Runs every action of every subscription the message matches, each with its share of
    /// the message's ack; an unmatched message is acknowledged at once.
    async fn dispatch(&mut self, set: &SubscriptionSet, mut msg: RawPublish) {
        self.company = msg.reply_route.company_id;
        let topic = std::str::from_utf8(&msg.topic).unwrap_or("");
        let own = msg.reply_route.topics.is_outbound(&msg.topic);
        let n: usize = set.matching(topic, own).map(|s| s.actions.len()).sum();
        if n == 0 {
            metrics::counter!(m::SUBSCRIPTION_MESSAGES_TOTAL, "outcome" => "unmatched")
                .increment(1);
            link::ack(msg.ack);
            return;
        }
        metrics::counter!(m::SUBSCRIPTION_MESSAGES_TOTAL, "outcome" => "matched").increment(1);
        let mut shares = msg.ack.take().map(|a| a.split(n).into_iter());
        let mut forwarded = false;
        for sub in set.matching(topic, own) {
            sub.stats.message();
            for action in &sub.actions {
                let share = shares.as_mut().and_then(|s| s.next());
                match action {
                    CompiledAction::DeviceProfile => {
                        self.forward_to_device(sub, &msg, share, &mut forwarded)
                            .await;
                    }
                    CompiledAction::StoreJson { level } => {
                        self.store_json(set, sub, *level, topic, &msg.payload, share)
                            .await;
                    }
                    CompiledAction::Republish {
                        topic: t,
                        qos,
                        retain,
                    } => republish(set, sub, &msg, topic, t, (*qos, *retain), share),
                    CompiledAction::Webhook(w) => queue_webhook(set, sub, &msg, topic, w, share),
                }
            }
        }
    }

    /// A device-profile action: hands the message to the device router once, however many
    /// profile subscriptions matched it (the others just acknowledge their share).
    async fn forward_to_device(
        &mut self,
        sub: &CompiledSub,
        msg: &RawPublish,
        share: Option<AckToken>,
        forwarded: &mut bool,
    ) {
        if *forwarded {
            // Two profile subscriptions on one message: the device actor gets it once.
            link::ack(share);
        } else {
            *forwarded = true;
            let fwd = RawPublish {
                topic: msg.topic.clone(),
                payload: msg.payload.clone(),
                ack: share,
                reply_route: msg.reply_route.clone(),
                charge: None,
                received: msg.received,
            };
            if self.router.send(fwd).await.is_err() {
                failed(&sub.stats, "device_profile");
                return;
            }
        }
        executed(&sub.stats, "device_profile");
    }

    async fn store_json(
        &mut self,
        set: &SubscriptionSet,
        sub: &CompiledSub,
        level: usize,
        topic: &str,
        payload: &Bytes,
        share: Option<AckToken>,
    ) {
        let device = device_at(topic, level).map(DeviceId::parse);
        let (device, parsed) = match (device, serde_json::from_slice::<Value>(payload)) {
            (Some(Ok(d)), Ok(v)) => (d, v),
            (device, parsed) => {
                failed(&sub.stats, "store_json");
                let (code, message, who) = match (device, parsed) {
                    (Some(Ok(d)), Err(e)) => (
                        ErrorCode::Malformed,
                        format!("store_json: payload is not JSON: {e}"),
                        d.to_string(),
                    ),
                    _ => (
                        ErrorCode::InvalidDeviceId,
                        format!("store_json: no valid device id at topic level {level}"),
                        fleetflow_protocol::errors::INVALID_DEVICE.to_string(),
                    ),
                };
                self.error_row(who, code, message, sub, topic, payload, share)
                    .await;
                return;
            }
        };
        let row = Row::Telemetry(TelemetryRow {
            device_id: device,
            product_id: set.product.clone(),
            subscription_id: sub.id,
            topic: topic.to_string(),
            payload: parsed,
            payload_bytes: payload.len(),
            received_at: Utc::now(),
        });
        let row = PendingRow::new(row, share).owned_by(self.company);
        if self.pg.send(row).await.is_ok() {
            executed(&sub.stats, "store_json");
        } else {
            failed(&sub.stats, "store_json");
        }
    }

    #[allow(clippy::too_many_arguments)]
    async fn error_row(
        &mut self,
        device: String,
        code: ErrorCode,
        message: String,
        sub: &CompiledSub,
        topic: &str,
        payload: &Bytes,
        share: Option<AckToken>,
    ) {
        metrics::counter!(m::ERRORS_TOTAL, "code" => code.label()).increment(1);
        self.admitted += 1;
        if self.admitted.is_multiple_of(1024) {
            self.errors.prune(Instant::now().into_std());
        }
        match self
            .errors
            .admit((device.clone(), code), Instant::now().into_std())
        {
            Admit::Write { suppressed } => {
                let row = Row::Error(ErrorRecord {
                    device_id: device,
                    code,
                    message,
                    details: json!({
                        "topic": topic,
                        "subscription": sub.name,
                        "payload_excerpt": excerpt(payload),
                        "payload_bytes": payload.len(),
                        "suppressed_before": suppressed,
                    }),
                    occurred_at: Utc::now(),
                });
                // The message is acknowledged once its error row is durable.
                let row = PendingRow::new(row, share).owned_by(self.company);
                let _ = self.pg.send(row).await;
            }
            Admit::Suppress => {
                metrics::counter!(m::ERROR_ROWS_SUPPRESSED_TOTAL, "code" => code.label())
                    .increment(1);
                link::ack(share);
            }
        }
    }
}

/// The topic level `level`, if the topic has it and it is not empty.
fn device_at(topic: &str, level: usize) -> Option<&str> {
    topic.split('/').nth(level).filter(|s| !s.is_empty())
}

/// The webhook body: the message with where it came from. A JSON payload is embedded as JSON;
/// anything else is base64.
fn envelope(product: &str, sub: &CompiledSub, topic: &str, payload: &[u8]) -> Bytes {
    let device = device_at(topic, sub.device_level);
    let mut body = json!({
        "product_id": product,
        "subscription": sub.name,
        "topic": topic,
        "device_id": device,
        "received_at": Utc::now(),
    });
    match serde_json::from_slice::<Value>(payload) {
        Ok(v) => body["payload"] = v,
        Err(_) => {
            use base64::Engine as _;
            body["payload_base64"] =
                Value::String(base64::engine::general_purpose::STANDARD.encode(payload));
        }
    }
    Bytes::from(serde_json::to_vec(&body).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rows() -> Vec<SubscriptionRow> {
        vec![
            SubscriptionRow {
                id: 1,
                name: "camera".into(),
                topic: "ESP32CAM/#".into(),
                enabled: true,
                actions: json!([{"type": "device_profile", "profile": "gxp-camera"}]),
            },
            SubscriptionRow {
                id: 2,
                name: "plant".into(),
                topic: "plant/+/telemetry".into(),
                enabled: false,
                actions: json!([{"type": "store_json", "table": "telemetry"}]),
            },
            SubscriptionRow {
                id: 3,
                name: "broken".into(),
                topic: "x/#".into(),
                enabled: true,
                actions: json!([{"type": "teleport"}]),
            },
        ]
    }

    #[tokio::test]
    async fn only_enabled_valid_subscriptions_are_matched_and_subscribed() {
        let set = SubscriptionSet::compile(
            "p1",
            &rows(),
            &StatsRegistry::default(),
            &reqwest::Client::new(),
        );
        assert_eq!(set.filters(None), vec!["ESP32CAM/#".to_string()]);
        assert_eq!(
            set.filters(Some("g")),
            vec!["$share/g/ESP32CAM/#".to_string()]
        );
        assert_eq!(set.matching("ESP32CAM/cam-1/data", false).count(), 1);
        assert_eq!(set.matching("ESP32CAM/cam-1/ack", true).count(), 0);
        assert_eq!(set.matching("plant/p-1/telemetry", false).count(), 0);
        assert_eq!(set.matching("x/y", false).count(), 0);
    }

    #[test]
    fn the_envelope_embeds_json_and_base64s_the_rest() {
        let sub = CompiledSub {
            profile_only: false,
            id: 1,
            name: "s".into(),
            filter: "plant/+/t".into(),
            device_level: 1,
            actions: vec![],
            stats: Arc::default(),
        };
        let v: Value =
            serde_json::from_slice(&envelope("p", &sub, "plant/d-1/t", br#"{"t":1}"#)).unwrap();
        assert_eq!(v["payload"]["t"], 1);
        assert_eq!(v["device_id"], "d-1");
        let v: Value =
            serde_json::from_slice(&envelope("p", &sub, "plant/d-1/t", &[0xff, 0])).unwrap();
        assert_eq!(v["payload_base64"], "/wA=");
    }
}
