//! One owned partition: pulls its JetStream consumer in the pinned priority group (while this
//! instance pulls, JetStream delivers the partition to no other), hands each message to the
//! router as an MQTT source does, with an ack token that raises the partition's cumulative ack
//! floor once the message and all before it are durable, and on release waits for what it
//! delivered to become durable.
//!
//! **Eras.** A cumulative ack (`AckPolicy::All`) acknowledges every message of the partition up
//! to its stream sequence, including messages delivered to a previous owner (or to this one
//! before a restart) that JetStream has not redelivered yet. So each era (a pull stream and a
//! link epoch) starts by reading those again: once the first message arrives (the consumer is
//! pinned to this instance, so nobody else is delivered anything), the consumer's ack floor and
//! delivered sequence bound what may be outstanding, and the stream's message API reads that range
//! from the stream by subject, one message after another ([`replay_end`]). The replayed messages take their places in the delivery
//! order first, so no ack of this era can pass one before it is durable. Duplicates this makes
//! are the redeliveries of before (the database keeps one row per reading). A message that can
//! never be acked (its token was dropped) ends the era: the next one starts from the floor.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use async_nats::jetstream::stream::{RawMessageErrorKind, Stream};
use async_nats::Subject;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::nats_client::AckSlots;
use super::subjects::{stored_device, stored_to_topic};
use crate::link::{MqttLink, ReplyRoute};
use crate::metrics as m;
use crate::router::RawPublish;

/// The reply subject of a replayed message: it holds its place in the order and acks nothing.
const NO_REPLY: Subject = Subject::from_static("");

/// The priority group every instance pulls in; the server pins one puller per consumer.
pub const GROUP: &str = "fleetflow";

/// A running partition's loop and what it needs.
pub(super) struct PartitionLoop {
    pub(super) index: u32,
    pub(super) consumer: PullConsumer,
    /// The stream (replays read their messages from it).
    pub(super) stream: Stream,
    /// The partition's filter subject.
    pub(super) filter: String,
    /// No message of this era has arrived yet (the replay runs before the first).
    pub(super) fresh: bool,
    /// The consumer sequence of the last delivery (each delivery takes the next one).
    pub(super) last_dseq: u64,
    /// Acks of this partition's messages (in delivery order; its epoch is the era).
    pub(super) link: MqttLink,
    pub(super) slots: Arc<AckSlots>,
    pub(super) out: mpsc::Sender<RawPublish>,
    pub(super) route: Arc<ReplyRoute>,
    /// Tokens of a stored subject before the device's topic.
    pub(super) lead: usize,
    /// Tokens of the topic prefix.
    pub(super) prefix_tokens: usize,
    /// How long a pull waits; well below the consumer's pin timeout.
    pub(super) pull_expiry: Duration,
    /// How long the release waits for delivered messages to become durable.
    pub(super) drain: Duration,
    /// Devices this partition has delivered messages of (their actors stop at release).
    pub(super) devices: HashSet<String>,
}

/// The end (exclusive) of the stream range a new era must read again, given its first
/// message (`first_seq`, delivered `delivered` times) and the consumer's delivered stream
/// sequence read after it. A first delivery comes after everything delivered before it, so what
/// was outstanding lies below it; a redelivery may have outstanding messages on both sides, up
/// to the last delivered one.
pub fn replay_end(first_seq: u64, delivered: i64, consumer_delivered: u64) -> u64 {
    if delivered <= 1 {
        first_seq
    } else {
        consumer_delivered.max(first_seq) + 1
    }
}

impl PartitionLoop {
    /// Pulls until told to stop (or the router is gone); answers the devices it fed.
    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) -> HashSet<String> {
        let slots = self.slots.clone();
        loop {
            let pulled = self
                .consumer
                .stream()
                .group(GROUP)
                .expires(self.pull_expiry)
                .heartbeat(self.pull_expiry / 2)
                .max_messages_per_batch(256)
                .messages()
                .await;
            let mut msgs = match pulled {
                Ok(m) => m,
                Err(e) => {
                    tracing::warn!(partition = self.index, error = %e, "cannot pull the partition; retrying");
                    tokio::select! {
                        _ = stop.changed() => return self.release().await,
                        _ = tokio::time::sleep(Duration::from_secs(1)) => continue,
                    }
                }
            };
            loop {
                let next = tokio::select! {
                    // Dropping `msgs` stops pulling: the pin starts to run out.
                    _ = stop.changed() => return self.release().await,
                    _ = slots.broken(), if !self.fresh => {
                        self.next_era("a message cannot be acknowledged");
                        continue;
                    }
                    m = msgs.next() => m,
                };
                match next {
                    Some(Ok(m)) => {
                        if self.on_message(m, &mut stop).await.is_break() {
                            return self.release().await;
                        }
                    }
                    Some(Err(e)) => {
                        tracing::debug!(partition = self.index, error = %e, "pull interrupted; pulling again");
                        break;
                    }
                    None => break,
                }
            }
        }
    }

    /// A pulled message: a new era when a delivery before it went missing (its consumer
    /// sequence is not the next one), the replay first when it opens an era, then the message.
    async fn on_message(
        &mut self,
        m: async_nats::jetstream::Message,
        stop: &mut watch::Receiver<bool>,
    ) -> ControlFlow<()> {
        let Ok((seq, dseq, delivered)) = m
            .info()
            .map(|i| (i.stream_sequence, i.consumer_sequence, i.delivered))
        else {
            tracing::warn!(partition = self.index, subject = %m.subject, "a message without JetStream metadata: skipped");
            return ControlFlow::Continue(());
        };
        if !self.fresh && dseq != self.last_dseq + 1 {
            self.next_era("a delivery went missing (lost in transit or to an old pull)");
        }
        self.last_dseq = dseq;
        if self.fresh {
            match self.replay(seq, delivered, stop).await {
                Ok(ControlFlow::Continue(())) => self.fresh = false,
                Ok(ControlFlow::Break(())) => return ControlFlow::Break(()),
                Err(e) => {
                    // This message stays unacked (JetStream redelivers it); the era starts
                    // with the next delivery.
                    tracing::warn!(partition = self.index, error = %e, "cannot read the partition's outstanding messages again; retrying with the next delivery");
                    return tokio::select! {
                        _ = stop.changed() => ControlFlow::Break(()),
                        _ = tokio::time::sleep(Duration::from_secs(1)) => ControlFlow::Continue(()),
                    };
                }
            }
        }
        // The reply subject is the JetStream ack subject, kept as is (no copy).
        let Some(reply) = m.message.reply else {
            return ControlFlow::Continue(());
        };
        self.forward(m.message.subject.as_str(), m.message.payload, reply)
            .await
    }

    /// Reads again what may be outstanding below the era's first message (see the module doc)
    /// and hands it on, each holding its place in the delivery order without a reply subject.
    async fn replay(
        &mut self,
        first_seq: u64,
        delivered: i64,
        stop: &mut watch::Receiver<bool>,
    ) -> Result<ControlFlow<()>, String> {
        let info = self.consumer.info().await.map_err(|e| e.to_string())?;
        let start = info.ack_floor.stream_sequence + 1;
        let end = replay_end(first_seq, delivered, info.delivered.stream_sequence);
        if start >= end {
            return Ok(ControlFlow::Continue(()));
        }
        let mut replayed = 0u64;
        let mut next = start;
        while next < end {
            if stop.has_changed().unwrap_or(true) {
                return Ok(ControlFlow::Break(())); // released: the next owner reads them
            }
            let m = match self
                .stream
                .get_first_raw_message_by_subject(&self.filter, next)
                .await
            {
                Ok(m) => m,
                Err(e) if e.kind() == RawMessageErrorKind::NoMessageFound => break,
                Err(e) => return Err(e.to_string()),
            };
            if m.sequence >= end {
                break;
            }
            next = m.sequence + 1;
            replayed += 1;
            if self
                .forward(m.subject.as_str(), m.payload, NO_REPLY)
                .await
                .is_break()
            {
                return Ok(ControlFlow::Break(()));
            }
        }
        metrics::counter!(m::CLUSTER_REPLAYED_MESSAGES_TOTAL).increment(replayed);
        tracing::info!(
            partition = self.index,
            from = start,
            to = end,
            replayed,
            "cluster: read the partition's outstanding messages again"
        );
        Ok(ControlFlow::Continue(()))
    }

    /// A new era, from the consumer's floor, because of `why`: what the old era still has in
    /// flight is acked on an epoch that is gone, so it acks nothing, and the next delivery
    /// replays what may be outstanding.
    fn next_era(&mut self, why: &str) {
        metrics::counter!(m::CLUSTER_PARTITION_RESTARTS_TOTAL).increment(1);
        tracing::warn!(
            partition = self.index,
            reason = why,
            "cluster: the partition starts a new era from its ack floor"
        );
        self.new_epoch();
        self.fresh = true;
    }

    /// Acks of the messages delivered so far will not go any more (JetStream keeps those).
    fn new_epoch(&self) {
        self.link.next_epoch();
        self.slots.clear();
    }

    /// Hands one message to the router with a token for `reply` (empty for a replayed message:
    /// [`NO_REPLY`]);
    /// breaks when the router is gone.
    async fn forward(&mut self, subject: &str, payload: Bytes, reply: Subject) -> ControlFlow<()> {
        let Some(pkid) = self.slots.put(reply) else {
            // Only with more than 65,535 unacked (replayed and redelivered copies on top of
            // max_ack_pending); the era is broken at once, so that no later ack passes it.
            tracing::warn!(
                partition = self.index,
                "every ack slot is taken: restarting the partition"
            );
            self.slots.break_era();
            return ControlFlow::Continue(());
        };
        self.link.received();
        let ack = self.link.token(pkid);
        let Some(topic) = stored_to_topic(subject, self.lead) else {
            tracing::warn!(
                subject,
                "a stored subject without a device: acked and skipped"
            );
            crate::link::ack(Some(ack));
            return ControlFlow::Continue(());
        };
        if let Some(d) = stored_device(subject, self.lead, self.prefix_tokens) {
            if !self.devices.contains(d) {
                self.devices.insert(d.to_owned());
            }
        }
        let msg = RawPublish {
            topic: Bytes::from(topic),
            payload,
            ack: Some(ack),
            reply_route: self.route.clone(),
            charge: None,
            received: std::time::Instant::now(),
        };
        match self.out.send(msg).await {
            Ok(()) => ControlFlow::Continue(()),
            Err(_) => ControlFlow::Break(()),
        }
    }

    /// After the pull stream was dropped (no more pulls), waits up to `drain` for the
    /// delivered messages to be acknowledged, then moves the epoch: what is still unacked is
    /// redelivered to the next owner.
    async fn release(self) -> HashSet<String> {
        let deadline = tokio::time::Instant::now() + self.drain;
        while self.link.unacked() > 0 && tokio::time::Instant::now() < deadline {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        let left = self.link.unacked();
        if left > 0 {
            tracing::warn!(
                partition = self.index,
                unacked = left,
                "released with messages in flight: JetStream redelivers them to the next owner"
            );
        }
        self.new_epoch();
        self.devices
    }
}

#[cfg(test)]
mod tests {
    use super::replay_end;

    #[test]
    fn an_era_replays_below_a_first_delivery_and_up_to_the_last_delivered_for_a_redelivery() {
        // A first delivery: everything outstanding was delivered before it, so lies below it.
        assert_eq!(replay_end(100, 1, 150), 100);
        // A redelivery: outstanding messages may lie above it, up to the last delivered.
        assert_eq!(replay_end(40, 2, 150), 151);
        // Never short of the message itself.
        assert_eq!(replay_end(200, 3, 150), 201);
    }
}
