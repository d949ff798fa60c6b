//! Acks and replies over NATS, behind the link's client type ([`crate::link::MqttClient::Nats`]):
//! the rest of the engine acks a JetStream message and publishes to a device exactly as it does
//! over MQTT. A JetStream message is acknowledged by publishing `+ACK` to its reply subject; the
//! link's packet id names a slot holding that subject. Replies to devices go to the subject of
//! their MQTT topic: a plain publish, which NATS's MQTT listener delivers at QoS 0 to every
//! connected subscriber (`reply_qos = 0`, the default), or a store in `$MQTT_msgs` with the
//! `Nmqtt-Pub: 1` header, which reaches a device's persistent QoS 1 session, also while it is
//! offline (`reply_qos = 1`; a clean-session subscriber does not get these).
//!
//! One writer task owns the NATS connection's publishes, from a bounded queue
//! ([`writer_capacity`]): room for an ack of every message the partitions may hold unacknowledged,
//! plus replies. Full, an ack fails (the message is redelivered) and a publish is refused.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

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
    /// The ack of one JetStream message, to its reply subject.
    Ack(String),
    /// A negative ack: JetStream redelivers the message now (its token was dropped).
    Nak(String),
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

/// The writer's queue: an ack for every message `partitions` may hold unacknowledged, and as
/// many replies and commands again on top, at least 4096.
pub fn writer_capacity(partitions: u32, max_ack_pending: i64) -> usize {
    let acks = partitions as usize * max_ack_pending.max(1) as usize;
    acks + acks.max(4096)
}

impl NatsClient {
    /// A client that publishes through `tx`; `slots` when it acks a partition's messages.
    pub fn new(tx: mpsc::Sender<Outgoing>, slots: Option<Arc<AckSlots>>) -> Self {
        Self { tx, slots }
    }

    /// Acks the message in slot `pkid` (nothing when the slot is empty: already acked).
    pub fn ack(&self, pkid: u16) -> Result<(), WriterGone> {
        let Some(subject) = self.slots.as_ref().and_then(|s| s.take(pkid)) else {
            return Ok(());
        };
        self.tx
            .try_send(Outgoing::Ack(subject))
            .map_err(|_| WriterGone)
    }

    /// Naks the message in slot `pkid`; false for a client without slots.
    pub fn nak(&self, pkid: u16) -> bool {
        let Some(subject) = self.slots.as_ref().and_then(|s| s.take(pkid)) else {
            return false;
        };
        self.tx.try_send(Outgoing::Nak(subject)).is_ok()
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
/// link's packet id). `max_ack_pending` (at most 60,000) keeps fewer than 65,535 in use.
#[derive(Debug, Default)]
pub struct AckSlots {
    inner: Mutex<SlotTable>,
}

#[derive(Debug, Default)]
struct SlotTable {
    next: u16,
    subjects: HashMap<u16, String>,
}

impl AckSlots {
    /// Keeps `reply` and answers its slot (1..=65535); `None` when every slot is taken.
    pub fn put(&self, reply: String) -> Option<u16> {
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
    pub fn take(&self, pkid: u16) -> Option<String> {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.subjects.remove(&pkid)
    }

    /// Forgets every slot (the partition was released: JetStream redelivers those).
    pub fn clear(&self) {
        let mut t = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        t.subjects.clear();
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
            Outgoing::Ack(subject) => client.publish(subject, Bytes::from_static(b"+ACK")).await,
            Outgoing::Nak(subject) => client.publish(subject, Bytes::from_static(b"-NAK")).await,
            Outgoing::Flush(done) => {
                if let Err(e) = client.flush().await {
                    tracing::warn!(error = %e, "NATS flush failed");
                }
                let _ = done.send(());
                continue;
            }
        };
        if let Err(e) = sent {
            tracing::warn!(error = %e, "NATS publish failed (an ack is redelivered, a reply resent by the device)");
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
            let p = s.put(format!("r{i}")).unwrap();
            assert_ne!(p, 0);
            assert_eq!(s.take(p).as_deref(), Some(format!("r{i}").as_str()));
        }
        assert_eq!(
            s.take(b).as_deref(),
            Some("$JS.ACK.b"),
            "a held slot is never reused"
        );
    }
}
