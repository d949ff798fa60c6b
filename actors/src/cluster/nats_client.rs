//! Acks and replies over NATS, behind the link's client type ([`crate::link::MqttClient::Nats`]):
//! the rest of the engine acks a JetStream message and publishes to a device exactly as it does
//! over MQTT. Replies to devices go to the subject of their MQTT topic: a plain publish, which
//! NATS's MQTT listener delivers at QoS 0 to every connected subscriber (`reply_qos = 0`, the
//! default), or a store in `$MQTT_msgs` with the `Nmqtt-Pub: 1` header, which reaches a device's
//! persistent QoS 1 session, also while it is offline (`reply_qos = 1`; a clean-session
//! subscriber does not get these).
//!
//! **Ack floors.** The partition consumers ack cumulatively (`AckPolicy::All`): `+ACK` to one
//! message's reply subject acknowledges every message of the partition up to its stream
//! sequence. The partition's link releases acks in delivery order (a message's ack waits for
//! every message delivered before it), and [`AckSlots`] keeps only the newest releasable reply
//! subject: the floor. At most one [`Outgoing::AckFloor`] per partition waits in the writer's
//! queue, and it sends the floor as it is when the writer gets to it, so one `+ACK` covers every
//! message that became durable meanwhile. A message that will never be acknowledged (its token
//! was dropped) must not be passed by the floor: the partition restarts from its floor instead
//! ([`AckSlots::break_era`]); see `partition.rs` for how an era starts.
//!
//! One writer task owns the NATS connection's publishes, from a bounded queue
//! ([`writer_capacity`]): a floor per partition, plus replies. Full, a publish is refused.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use async_nats::Subject;
use bytes::Bytes;
use tokio::sync::mpsc;

use super::subjects::{reply_subject, topic_to_subject};

/// What the writer publishes.
#[derive(Debug)]
pub enum Outgoing {
    /// A reply or command to a device, by MQTT topic.
    Publish {
        /// The device's topic (`{prefix}/{device_id}/ack`).
        topic: String,
        /// The payload.
        payload: Bytes,
    },
    /// The ack floor of one partition: the newest releasable reply subject, taken when sent.
    AckFloor(Arc<AckSlots>),
    /// Answers once everything queued before it is published and flushed.
    Flush(tokio::sync::oneshot::Sender<()>),
}

/// The NATS side of a link: its writer, and the ack slots of one partition's consumer.
#[derive(Clone, Debug)]
pub struct NatsClient {
    tx: mpsc::Sender<Outgoing>,
    slots: Option<Arc<AckSlots>>,
}

/// The writer's queue is full or the writer is gone (the engine is stopping).
#[derive(Debug, thiserror::Error)]
#[error("the NATS writer's queue is full or closed")]
pub struct WriterGone;

/// The writer's queue: a floor for every partition, and room for replies and commands.
pub fn writer_capacity(partitions: u32) -> usize {
    partitions as usize + REPLY_ROOM
}

/// Replies and commands the writer's queue holds besides the floors.
const REPLY_ROOM: usize = 8192;

impl NatsClient {
    /// A client that publishes through `tx`; `slots` when it acks a partition's messages.
    pub fn new(tx: mpsc::Sender<Outgoing>, slots: Option<Arc<AckSlots>>) -> Self {
        Self { tx, slots }
    }

    /// The message in slot `pkid` is durable, and so is every message delivered before it: its
    /// reply subject becomes the partition's ack floor (nothing when the slot is empty, or holds
    /// a replayed message, which has no reply subject of its own).
    pub fn ack(&self, pkid: u16) -> Result<(), WriterGone> {
        let Some(slots) = &self.slots else {
            return Ok(());
        };
        let Some(subject) = slots.take(pkid) else {
            return Ok(());
        };
        if subject.is_empty() || !slots.advance(subject) {
            return Ok(());
        }
        self.tx
            .try_send(Outgoing::AckFloor(slots.clone()))
            .map_err(|_| {
                slots.unqueue();
                WriterGone
            })
    }

    /// The message in slot `pkid` will never be acknowledged: its partition must restart from
    /// its ack floor (answers true: the link must not skip it, or a later floor would pass it).
    /// False for a client without slots.
    pub fn nak(&self, pkid: u16) -> bool {
        let Some(slots) = &self.slots else {
            return false;
        };
        slots.take(pkid);
        slots.break_era();
        true
    }

    /// Whether this client acks a partition's messages (not only publishes).
    pub fn acks(&self) -> bool {
        self.slots.is_some()
    }

    /// Publishes to a device's topic.
    pub fn publish(&self, topic: String, payload: Bytes) -> Result<(), WriterGone> {
        self.tx
            .try_send(Outgoing::Publish { topic, payload })
            .map_err(|_| WriterGone)
    }
}

/// The reply subjects of a partition's unacknowledged messages, by a 16-bit slot number (the
/// link's packet id), and the partition's ack floor. `max_ack_pending` (at most 60,000) keeps
/// fewer than 65,535 in use.
#[derive(Debug, Default)]
pub struct AckSlots {
    inner: Mutex<SlotTable>,
    /// The newest reply subject whose cumulative ack may go (every message before it is durable).
    floor: Mutex<Option<Subject>>,
    /// An [`Outgoing::AckFloor`] of these slots waits in the writer's queue.
    queued: AtomicBool,
    /// A message of this era will never be acknowledged: the partition restarts from its floor.
    broken: AtomicBool,
    restart: tokio::sync::Notify,
}

#[derive(Debug, Default)]
struct SlotTable {
    next: u16,
    subjects: HashMap<u16, Subject>,
}

impl AckSlots {
    /// Keeps `reply` and answers its slot (1..=65535); `None` when every slot is taken. An empty
    /// `reply` marks a replayed message: it holds its place in the order and acks nothing.
    pub fn put(&self, reply: Subject) -> Option<u16> {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if t.subjects.len() >= usize::from(u16::MAX) {
            return None;
        }
        loop {
            t.next = t.next.wrapping_add(1).max(1);
            let slot = t.next;
            if let std::collections::hash_map::Entry::Vacant(v) = t.subjects.entry(slot) {
                v.insert(reply);
                return Some(slot);
            }
        }
    }

    /// Takes the reply subject out of slot `pkid`.
    pub fn take(&self, pkid: u16) -> Option<Subject> {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.subjects.remove(&pkid)
    }

    /// Raises the floor to `subject` (released in delivery order, so always the newest); true
    /// when the caller must queue an [`Outgoing::AckFloor`] (none is queued yet). A broken era
    /// raises it no more: a message without a place in the order (no slot was free) may lie
    /// below `subject`.
    fn advance(&self, subject: Subject) -> bool {
        if self.broken.load(Ordering::Acquire) {
            return false;
        }
        *self.floor.lock().unwrap_or_else(|e| e.into_inner()) = Some(subject);
        !self.queued.swap(true, Ordering::AcqRel)
    }

    /// The queued floor could not be queued after all.
    fn unqueue(&self) {
        self.queued.store(false, Ordering::Release);
    }

    /// The writer's turn: the floor to send now, if it moved since the last one.
    fn take_floor(&self) -> Option<Subject> {
        self.queued.store(false, Ordering::Release);
        self.floor.lock().unwrap_or_else(|e| e.into_inner()).take()
    }

    /// A message of this era will never be acknowledged: wakes [`AckSlots::broken`].
    pub fn break_era(&self) {
        self.broken.store(true, Ordering::Release);
        self.restart.notify_one();
    }

    /// Resolves once a message of this era can no longer be acknowledged.
    pub async fn broken(&self) {
        while !self.broken.load(Ordering::Acquire) {
            self.restart.notified().await;
        }
    }

    /// Forgets every slot (a new era: JetStream keeps what was not acked). A floor not sent yet
    /// is kept: everything up to it is durable, so it may still go.
    pub fn clear(&self) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.subjects.clear();
        self.broken.store(false, Ordering::Release);
    }
}

/// Publishes what the links queue, in order, until every sender is gone; replies at `reply_qos`.
pub async fn run_writer(
    client: async_nats::Client,
    mut rx: mpsc::Receiver<Outgoing>,
    reply_qos: u8,
) {
    let mut qos1 = async_nats::HeaderMap::new();
    qos1.insert("Nmqtt-Pub", "1");
    while let Some(out) = rx.recv().await {
        let sent = match out {
            // Stored for the device's QoS 1 session (delivered once it is connected).
            Outgoing::Publish { topic, payload } if reply_qos > 0 => {
                client
                    .publish_with_headers(reply_subject(&topic), qos1.clone(), payload)
                    .await
            }
            Outgoing::Publish { topic, payload } => {
                client.publish(topic_to_subject(&topic), payload).await
            }
            Outgoing::AckFloor(slots) => match slots.take_floor() {
                Some(subject) => client.publish(subject, Bytes::from_static(b"+ACK")).await,
                None => continue,
            },
            Outgoing::Flush(done) => {
                if let Err(e) = client.flush().await {
                    tracing::warn!(error = %e, "NATS flush failed");
                }
                let _ = done.send(());
                continue;
            }
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "NATS publish failed (a later floor covers an ack; a reply is resent by the device)");
        }
    }
    let _ = client.flush().await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_slot_is_taken_once_and_slots_are_reused_after_the_wrap() {
        let s = AckSlots::default();
        let a = s.put("$JS.ACK.a".into()).unwrap();
        let b = s.put("$JS.ACK.b".into()).unwrap();
        assert_ne!(a, b);
        assert_eq!(s.take(a).as_deref(), Some("$JS.ACK.a"));
        assert_eq!(s.take(a), None, "an ack goes once");
        for i in 0..70_000u32 {
            let p = s.put(format!("r{i}").into()).unwrap();
            assert_ne!(p, 0);
            assert_eq!(s.take(p).as_deref(), Some(format!("r{i}").as_str()));
        }
        assert_eq!(
            s.take(b).as_deref(),
            Some("$JS.ACK.b"),
            "a held slot is never reused"
        );
    }

    #[test]
    fn acks_coalesce_into_one_queued_floor_that_sends_the_newest_subject() {
        let (tx, mut rx) = mpsc::channel(16);
        let slots = Arc::new(AckSlots::default());
        let c = NatsClient::new(tx, Some(slots.clone()));
        let a = slots.put("$JS.ACK.s.c.1.10.1.0.0".into()).unwrap();
        let replayed = slots.put(Subject::from_static("")).unwrap();
        let b = slots.put("$JS.ACK.s.c.1.12.2.0.0".into()).unwrap();
        c.ack(replayed).unwrap();
        assert!(rx.try_recv().is_err(), "a replayed message acks nothing");
        c.ack(a).unwrap();
        c.ack(b).unwrap();
        let Ok(Outgoing::AckFloor(f)) = rx.try_recv() else {
            panic!("no floor queued")
        };
        assert!(rx.try_recv().is_err(), "one floor queued for both acks");
        assert_eq!(f.take_floor().as_deref(), Some("$JS.ACK.s.c.1.12.2.0.0"));
        assert_eq!(f.take_floor(), None, "sent once");
        let d = slots.put("$JS.ACK.s.c.1.13.3.0.0".into()).unwrap();
        c.ack(d).unwrap();
        assert!(
            matches!(rx.try_recv(), Ok(Outgoing::AckFloor(_))),
            "queued again once the writer took the last one"
        );
    }

    #[test]
    fn a_dropped_message_breaks_the_era_and_a_new_era_mends_it() {
        use futures::FutureExt;
        let (tx, mut rx) = mpsc::channel(16);
        let slots = Arc::new(AckSlots::default());
        let c = NatsClient::new(tx, Some(slots.clone()));
        let a = slots.put("$JS.ACK.a".into()).unwrap();
        assert!(
            slots.broken().now_or_never().is_none(),
            "a fresh era is whole"
        );
        assert!(c.nak(a), "handled: the link must not skip it");
        assert!(rx.try_recv().is_err(), "a nak sends nothing");
        assert!(slots.broken().now_or_never().is_some());
        let b = slots.put("$JS.ACK.b".into()).unwrap();
        c.ack(b).unwrap();
        assert!(
            rx.try_recv().is_err(),
            "a broken era moves the floor no more (a message may have no place below it)"
        );
        slots.clear();
        assert!(
            slots.broken().now_or_never().is_none(),
            "mended by the new era"
        );
        let d = slots.put("$JS.ACK.d".into()).unwrap();
        c.ack(d).unwrap();
        assert!(
            matches!(rx.try_recv(), Ok(Outgoing::AckFloor(_))),
            "the new era acks"
        );
        let (tx, _rx) = mpsc::channel(1);
        assert!(
            !NatsClient::new(tx, None).nak(1),
            "a publisher has no slots"
        );
    }
}
