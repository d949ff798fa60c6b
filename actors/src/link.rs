//! The engine's handle on its MQTT connection for everything but reading: acknowledging QoS 1
//! messages once what they produced is durable, and publishing ACK/NACK and commands to devices.
//! Acks are tagged with the connection epoch, so a packet id from a closed connection is never
//! acknowledged on a new one (the broker redelivers those instead). The epoch moves when the
//! connection is lost, not only at the next CONNACK, and an ack is checked and queued under a
//! gate the epoch change waits for: an ack queued in between cannot reach the next session.
//!
//! A token dropped without being acknowledged (a closed mailbox, a gone sink, a refused
//! message) is a *leak*: its packet holds a slot of the broker's in-flight window until the
//! connection closes. Leaks are counted through `Drop`; past a bound in count or age the
//! source reconnects so that the broker redelivers them ([`MqttLink::leaks_exceed`]).
//!
//! With `mqtt.ordered_acks` (the default) PUBACKs go out in the order the packets arrived on
//! their connection (MQTT-4.6.0-2): a durable packet's ack waits for those before it (`order`).
//!
//! An ack that finds the client's request queue full is *held*, not leaked: it and every ack
//! after it wait in the link, in order, and the source loop moves them on as the queue drains
//! ([`MqttLink::flush_held`]). A broker that ignores the receive maximum (Mosquitto 2.0 does once
//! acks flow) can have more packets in flight than the queue holds; counting those acks as leaks
//! made the source reconnect and the broker redeliver everything in flight.
//!
//! - `client`: [`MqttClient`], the v5 or the 3.1.1 client behind one type.
//! - `order`: the receive-order slots of one connection.

pub mod client;
mod order;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use bytes::Bytes;
use rumqttc::v5::mqttbytes::QoS;

pub use client::MqttClient;

use crate::metrics as m;

/// Identifies one received QoS 1 PUBLISH on one connection, and that connection.
///
/// A token may be [split](AckToken::split) among the several actions one message feeds; the
/// packet is then acknowledged when the last share is. Dropping a token (or any share) without
/// acknowledging it leaves the packet for the broker to redeliver, and counts a leak.
#[derive(Debug)]
pub struct AckToken {
    /// The connection the packet arrived on (acks must go back on it).
    link: MqttLink,
    /// Connection epoch the packet arrived on.
    epoch: u64,
    /// Packet id.
    pkid: u16,
    /// Receive-order slot (ordered acks only).
    seq: u64,
    /// Shares not yet acknowledged, when split; [`LEAKED`] is set once a share was dropped.
    shares: Option<Arc<AtomicUsize>>,
    /// Acknowledged, skipped as stale or split: nothing for `Drop` to count.
    settled: bool,
}

/// Set in a split token's share count when one share was dropped unacknowledged: the packet
/// can then never be acknowledged, and the leak was counted once.
const LEAKED: usize = 1 << (usize::BITS - 1);

impl AckToken {
    /// Splits the token into `n` shares (`n >= 1`); the broker ack goes out with the last one.
    pub fn split(mut self, n: usize) -> Vec<AckToken> {
        if n <= 1 {
            return vec![self];
        }
        debug_assert!(self.shares.is_none(), "a share is not split again");
        self.settled = true;
        let shares = Arc::new(AtomicUsize::new(n));
        (0..n)
            .map(|_| AckToken {
                link: self.link.clone(),
                epoch: self.epoch,
                pkid: self.pkid,
                seq: self.seq,
                shares: Some(shares.clone()),
                settled: false,
            })
            .collect()
    }

    /// The connection the packet arrived on.
    pub fn link(&self) -> &MqttLink {
        &self.link
    }

    /// The connection epoch the packet arrived in: it can be acknowledged only while the
    /// link's [`MqttLink::epoch`] is still this.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Cluster mode: the message's partition was released since it arrived (JetStream
    /// redelivers it to the partition's next owner, so it must not start a device actor here).
    pub fn is_released(&self) -> bool {
        self.link.is_partition() && self.epoch != self.link.epoch()
    }
}

impl Drop for AckToken {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        if let Some(shares) = &self.shares {
            if shares.fetch_or(LEAKED, Ordering::AcqRel) & LEAKED != 0 {
                return; // another share of this packet already counted it
            }
        }
        self.link.leaked(self.epoch, self.pkid, self.seq);
    }
}

/// Why a publish could not be queued.
#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    /// The link has no client to publish with.
    #[error("no MQTT connection")]
    NotConnected,
    /// The connection's request queue is full or closed.
    #[error(transparent)]
    Queue(client::ClientError),
}

/// Where replies to a device go: the broker its messages came from (through that source's
/// publishing connection), and that source's topic layout (for `{prefix}/{device_id}/ack` and
/// `/cmd`).
#[derive(Debug, Clone)]
pub struct ReplyRoute {
    /// The source's name (`default` or a product id): the owner of the devices it feeds.
    pub source_name: std::sync::Arc<str>,
    /// The source's publishing connection (not the one its acks go out on).
    pub link: MqttLink,
    /// The source's topics.
    pub topics: fleetflow_protocol::topic::TopicParser,
    /// The product's GXP profile settings (answer shapes of the firmware generation).
    pub gxp: std::sync::Arc<fleetflow_protocol::gxp::GxpSettings>,
    /// The company that owns the source's devices (written on their rows).
    pub company_id: Option<i64>,
}

/// Acknowledges tokens, each on its own connection. Tokens from a closed connection are
/// skipped and counted (the broker redelivers those).
pub fn ack_all(tokens: impl IntoIterator<Item = AckToken>) {
    let (mut acked, mut stale) = (0u64, 0u64);
    for mut t in tokens {
        t.settled = true;
        if let Some(shares) = &t.shares {
            // Not the last share, or a share was dropped (the packet waits for redelivery).
            if shares.fetch_sub(1, Ordering::AcqRel) != 1 {
                continue;
            }
        }
        t.link.settled();
        match t.link.ack_one(t.epoch, t.pkid, t.seq) {
            Some(sent) => acked += sent,
            None => stale += 1,
        }
    }
    if acked > 0 {
        fleetflow_protocol::hot_counter!(m::MQTT_ACKS_TOTAL).increment(acked);
    }
    if stale > 0 {
        metrics::counter!(m::MQTT_ACKS_STALE_TOTAL).increment(stale);
    }
}

/// Acknowledges one token, if any.
pub fn ack(token: Option<AckToken>) {
    if let Some(t) = token {
        ack_all([t]);
    }
}

/// A cloneable handle to the MQTT client for acks and publishes. Every QoS 1 message's
/// [`AckToken`] holds one, so a clone is a single reference-count increment.
#[derive(Clone)]
pub struct MqttLink(Arc<LinkInner>);

struct LinkInner {
    /// Either protocol's client: acks and publishes do not depend on which.
    client: Option<MqttClient>,
    epoch: AtomicU64,
    /// Read-held while an ack is checked against the epoch and queued; write-held while the
    /// epoch moves, so no ack of the old epoch is queued after the move.
    gate: RwLock<()>,
    publish_qos: QoS,
    /// QoS 1 messages received and not yet acknowledged (or given up on).
    unacked: AtomicI64,
    /// Tokens alive, whatever their epoch: messages in the pipeline, not yet durable (nor
    /// given up on). The source's read bound (`mqtt.max_in_flight`) counts these.
    in_pipeline: AtomicI64,
    /// Set while the source waits for `in_pipeline` to fall ([`MqttLink::pipeline_below`]):
    /// only then does a settled token wake it.
    read_paused: AtomicBool,
    pipeline_freed: tokio::sync::Notify,
    /// Packets of the current epoch whose token was dropped unacknowledged.
    leaked: AtomicU64,
    /// When the oldest of those leaked, in ms after `born` (plus one; 0 = none).
    first_leak_ms: AtomicU64,
    born: Instant,
    /// Receive-order slots, when acks go out in receive order.
    order: Option<Mutex<order::AckOrder>>,
    /// Packet ids of durable messages whose PUBACK found the request queue full, oldest first
    /// (current epoch only); every later ack queues behind them. At most the connection's
    /// unacknowledged messages, which `mqtt.max_in_flight` bounds.
    held: Mutex<VecDeque<u16>>,
    /// `held.len()`, read without the lock on every poll of the source loop.
    held_len: AtomicUsize,
    /// `fleetflow_mqtt_unacked` and `fleetflow_mqtt_acks_held` of this link's source (see
    /// [`MqttLink::for_source`]), looked up once.
    unacked_gauge: metrics::Gauge,
    held_gauge: metrics::Gauge,
}

impl Drop for LinkInner {
    fn drop(&mut self) {
        // A source task aborted before its goodbye: its held acks leave its source's gauge.
        let n = self.held.get_mut().map(|h| h.len()).unwrap_or(0);
        if n > 0 {
            self.held_gauge.decrement(n as f64);
        }
    }
}

impl std::fmt::Debug for MqttLink {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MqttLink")
            .field("epoch", &self.0.epoch.load(Ordering::Relaxed))
            .finish()
    }
}

impl MqttLink {
    /// A link over a connected client (v5 or 3.1.1) that sends each ack as soon as its packet
    /// is durable.
    pub fn new(client: impl Into<MqttClient>, publish_qos: QoS) -> Self {
        Self::with_order(client, publish_qos, false)
    }

    /// A link whose acks go out in receive order when `ordered` (`mqtt.ordered_acks`).
    pub fn with_order(client: impl Into<MqttClient>, publish_qos: QoS, ordered: bool) -> Self {
        Self(Arc::new(LinkInner {
            client: Some(client.into()),
            epoch: AtomicU64::new(0),
            gate: RwLock::new(()),
            publish_qos,
            unacked: AtomicI64::new(0),
            in_pipeline: AtomicI64::new(0),
            read_paused: AtomicBool::new(false),
            pipeline_freed: tokio::sync::Notify::new(),
            leaked: AtomicU64::new(0),
            first_leak_ms: AtomicU64::new(0),
            born: Instant::now(),
            order: ordered.then(|| Mutex::new(order::AckOrder::default())),
            held: Mutex::new(VecDeque::new()),
            held_len: AtomicUsize::new(0),
            unacked_gauge: metrics::gauge!(m::MQTT_UNACKED),
            held_gauge: metrics::gauge!(m::MQTT_ACKS_HELD),
        }))
    }

    /// The same link, its gauges labelled `source` (a source's name, its `-out` connection, or
    /// a cluster partition): several connections would otherwise overwrite one series. Call it
    /// before the link is shared; a shared link keeps its gauges.
    pub fn for_source(mut self, source: &str) -> Self {
        match Arc::get_mut(&mut self.0) {
            Some(inner) => {
                inner.unacked_gauge =
                    metrics::gauge!(m::MQTT_UNACKED, "source" => source.to_owned());
                inner.held_gauge =
                    metrics::gauge!(m::MQTT_ACKS_HELD, "source" => source.to_owned());
            }
            None => debug_assert!(false, "for_source on a shared link"),
        }
        self
    }

    /// Whether this link acks a cluster partition's JetStream messages.
    pub fn is_partition(&self) -> bool {
        self.0.client.as_ref().is_some_and(MqttClient::is_partition)
    }

    /// Whether both handles are the same connection.
    pub fn same_connection(&self, other: &MqttLink) -> bool {
        Arc::ptr_eq(&self.0, &other.0)
    }

    /// The current connection epoch.
    pub fn epoch(&self) -> u64 {
        self.0.epoch.load(Ordering::Acquire)
    }

    /// Called by the source on every CONNACK and whenever the connection is lost or dropped:
    /// packets of the old connection will be redelivered, and no ack for one is queued after
    /// this returns (it waits for acks being queued now).
    pub fn next_epoch(&self) -> u64 {
        let _moving = self.0.gate.write().unwrap_or_else(|e| e.into_inner());
        if let Some(o) = &self.0.order {
            o.lock().unwrap_or_else(|e| e.into_inner()).clear();
        }
        let dropped = self.drop_held();
        if dropped > 0 {
            // Their connection is gone: the broker redelivers them.
            metrics::counter!(m::MQTT_ACKS_STALE_TOTAL).increment(dropped as u64);
        }
        self.0.unacked.store(0, Ordering::Release);
        self.0.leaked.store(0, Ordering::Release);
        self.0.first_leak_ms.store(0, Ordering::Release);
        self.0.unacked_gauge.set(0.0);
        self.0.epoch.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// A token of `epoch` dropped unacknowledged: counted, and its receive-order slot skipped
    /// so that it holds back no later ack. In cluster mode its partition's era ends instead:
    /// its slot keeps holding back the acks behind it (`cluster/partition.rs`).
    fn leaked(&self, epoch: u64, pkid: u16, seq: u64) {
        self.settled();
        let _gate = self.0.gate.read().unwrap_or_else(|e| e.into_inner());
        if epoch == self.epoch() && self.0.client.as_ref().is_some_and(|c| c.nak(pkid)) {
            self.0.unacked.fetch_sub(1, Ordering::AcqRel);
            metrics::counter!(m::MQTT_ACKS_LEAKED_TOTAL).increment(1);
            return;
        }
        if epoch == self.epoch() {
            if let Some(o) = &self.0.order {
                let mut o = o.lock().unwrap_or_else(|e| e.into_inner());
                o.skip(seq, |p| {
                    self.send_ack(epoch, p);
                });
            }
        }
        self.count_leak(epoch);
    }

    /// Counts a packet of `epoch` that will not be acknowledged on this connection.
    fn count_leak(&self, epoch: u64) {
        metrics::counter!(m::MQTT_ACKS_LEAKED_TOTAL).increment(1);
        if epoch != self.epoch() {
            return; // its connection is gone already: the broker redelivers it
        }
        self.0.leaked.fetch_add(1, Ordering::AcqRel);
        let now = self.0.born.elapsed().as_millis() as u64 + 1;
        let _ = self
            .0
            .first_leak_ms
            .compare_exchange(0, now, Ordering::AcqRel, Ordering::Acquire);
    }

    /// Packets of the current connection that leaked, and how long ago the first did.
    pub fn leaks(&self) -> (u64, Option<Duration>) {
        let n = self.0.leaked.load(Ordering::Acquire);
        let first = self.0.first_leak_ms.load(Ordering::Acquire);
        let age = (first != 0).then(|| {
            let now = self.0.born.elapsed().as_millis() as u64 + 1;
            Duration::from_millis(now.saturating_sub(first))
        });
        (n, age)
    }

    /// True when the current connection holds at least `max_count` leaked packets, or one that
    /// leaked more than `max_age` ago: time to reconnect so that the broker redelivers them.
    pub fn leaks_exceed(&self, max_count: u64, max_age: Duration) -> bool {
        match self.leaks() {
            (0, _) => false,
            (n, age) => n >= max_count || age.is_some_and(|a| a >= max_age),
        }
    }

    /// QoS 1 messages of the current connection not acknowledged yet.
    pub fn unacked(&self) -> i64 {
        self.0.unacked.load(Ordering::Acquire)
    }

    /// Called by the source for each QoS 1 message received; returns the count now unacknowledged.
    pub fn received(&self) -> i64 {
        self.0.unacked.fetch_add(1, Ordering::AcqRel) + 1
    }

    /// A token for a packet received now on this connection.
    pub fn token(&self, pkid: u16) -> AckToken {
        self.0.in_pipeline.fetch_add(1, Ordering::AcqRel);
        let seq = match &self.0.order {
            Some(o) => o.lock().unwrap_or_else(|e| e.into_inner()).push(pkid),
            None => 0,
        };
        AckToken {
            link: self.clone(),
            epoch: self.epoch(),
            pkid,
            seq,
            shares: None,
            settled: false,
        }
    }

    /// Marks one packet durable and queues the PUBACKs that may go now (in receive order, that
    /// one and any held behind it); answers how many went, or `None` when the packet belongs to
    /// an earlier connection or the connection is going away.
    fn ack_one(&self, epoch: u64, pkid: u16, seq: u64) -> Option<u64> {
        self.0.client.as_ref()?;
        let _gate = self.0.gate.read().unwrap_or_else(|e| e.into_inner());
        if epoch != self.epoch() {
            return None;
        }
        match &self.0.order {
            None => self.send_ack(epoch, pkid).then_some(1),
            Some(o) => {
                // Sent under the lock, so that two threads releasing slots keep their order.
                let mut o = o.lock().unwrap_or_else(|e| e.into_inner());
                let mut sent = 0;
                o.durable(seq, |p| {
                    sent += u64::from(self.send_ack(epoch, p));
                });
                Some(sent)
            }
        }
    }

    /// Queues the PUBACK of `pkid` (the caller holds the gate for `epoch`); on an MQTT
    /// connection whose request queue is full, or while earlier acks are held, holds it for
    /// [`MqttLink::flush_held`]. True when it was queued now.
    fn send_ack(&self, epoch: u64, pkid: u16) -> bool {
        let Some(client) = &self.0.client else {
            return false;
        };
        if client.is_partition() {
            // A partition's acks fail only when its writer's bounded queue is full: JetStream
            // redelivers the message (`cluster/partition.rs` ends the era).
            return match client.ack(pkid) {
                Ok(()) => {
                    self.0.unacked.fetch_sub(1, Ordering::AcqRel);
                    true
                }
                Err(e) => {
                    tracing::warn!(error = %e, "could not queue a JetStream ack");
                    self.count_leak(epoch);
                    false
                }
            };
        }
        // Nothing held: straight to the queue. Ordered acks come here one at a time (under the
        // order lock); unordered ones need no order among themselves.
        let tried = self.held() == 0;
        if tried && client.ack(pkid).is_ok() {
            self.acked(1);
            return true;
        }
        let mut held = self.0.held.lock().unwrap_or_else(|e| e.into_inner());
        // Held a moment ago, but a flush may have emptied it since: try once, in order.
        if !tried && held.is_empty() && client.ack(pkid).is_ok() {
            self.acked(1);
            return true;
        }
        // Full (or closing: then the epoch moves and drops what is held). Not a leak: the ack
        // goes out once the event loop has taken what is queued before it.
        held.push_back(pkid);
        self.0.held_len.store(held.len(), Ordering::Release);
        self.0.held_gauge.increment(1.0);
        false
    }

    /// Empties the held acks (their connection is gone); answers how many there were.
    fn drop_held(&self) -> usize {
        let mut held = self.0.held.lock().unwrap_or_else(|e| e.into_inner());
        let n = held.len();
        held.clear();
        self.0.held_len.store(0, Ordering::Release);
        if n > 0 {
            self.0.held_gauge.decrement(n as f64);
        }
        n
    }

    /// A token's packet left the pipeline (durable, given up on, or of a closed connection).
    fn settled(&self) {
        // SeqCst with `pipeline_below`: either it sees this decrement, or this sees its flag.
        self.0.in_pipeline.fetch_sub(1, Ordering::SeqCst);
        if self.0.read_paused.load(Ordering::SeqCst) {
            self.0.pipeline_freed.notify_one();
        }
    }

    /// Returns once fewer than `max` messages of this link are in the pipeline, woken by the
    /// tokens that leave it (one waiter: the link's source loop).
    pub async fn pipeline_below(&self, max: i64) {
        struct Paused<'a>(&'a AtomicBool);
        impl Drop for Paused<'_> {
            fn drop(&mut self) {
                self.0.store(false, Ordering::SeqCst);
            }
        }
        self.0.read_paused.store(true, Ordering::SeqCst);
        let _paused = Paused(&self.0.read_paused);
        // A token settled between the check and the wait leaves a permit: no wake-up is lost.
        while self.0.in_pipeline.load(Ordering::SeqCst) >= max {
            self.0.pipeline_freed.notified().await;
        }
    }

    /// Messages of this link in the pipeline and not yet durable, across connections (their
    /// tokens are alive).
    pub fn in_pipeline(&self) -> i64 {
        self.0.in_pipeline.load(Ordering::Acquire)
    }

    /// `n` PUBACKs queued: that many fewer unacknowledged messages on this connection.
    fn acked(&self, n: i64) {
        let left = self.0.unacked.fetch_sub(n, Ordering::AcqRel) - n;
        self.0.unacked_gauge.set(left.max(0) as f64);
    }

    /// Acks held because the request queue was full (see the module doc).
    pub fn held(&self) -> usize {
        self.0.held_len.load(Ordering::Acquire)
    }

    /// Queues the held acks, oldest first, while the request queue takes them; answers how many
    /// went. Called by the source loop between polls (one atomic load when nothing is held).
    pub fn flush_held(&self) -> usize {
        if self.held() == 0 {
            return 0;
        }
        let Some(client) = &self.0.client else {
            return 0;
        };
        let _gate = self.0.gate.read().unwrap_or_else(|e| e.into_inner());
        let mut held = self.0.held.lock().unwrap_or_else(|e| e.into_inner());
        let mut sent = 0;
        while let Some(&pkid) = held.front() {
            if client.ack(pkid).is_err() {
                break;
            }
            held.pop_front();
            sent += 1;
        }
        self.0.held_len.store(held.len(), Ordering::Release);
        if sent > 0 {
            self.acked(sent as i64);
            self.0.held_gauge.decrement(sent as f64);
            fleetflow_protocol::hot_counter!(m::MQTT_ACKS_TOTAL).increment(sent as u64);
        }
        sent
    }

    /// Publishes with a chosen QoS (0 or 1; 2 is sent as 1) and retain flag, without waiting.
    /// `kind` labels the metric. Fails when the connection's request queue is full or closed.
    pub fn publish_with(
        &self,
        topic: String,
        payload: Bytes,
        qos: u8,
        retain: bool,
        kind: &'static str,
    ) -> Result<(), PublishError> {
        let Some(client) = &self.0.client else {
            return Err(PublishError::NotConnected);
        };
        let qos = if qos == 0 {
            QoS::AtMostOnce
        } else {
            QoS::AtLeastOnce
        };
        client
            .publish(topic, qos, retain, payload)
            .map_err(PublishError::Queue)?;
        metrics::counter!(m::MQTT_PUBLISHES_TOTAL, "kind" => kind).increment(1);
        Ok(())
    }

    /// Publishes to a device, without waiting. `kind` labels the metric.
    pub fn publish(&self, topic: String, payload: Bytes, kind: &'static str) {
        let Some(client) = &self.0.client else { return };
        match client.publish(topic, self.0.publish_qos, false, payload) {
            Ok(()) => metrics::counter!(m::MQTT_PUBLISHES_TOTAL, "kind" => kind).increment(1),
            Err(e) => tracing::warn!(error = %e, kind, "could not queue an MQTT publish"),
        }
    }
}
