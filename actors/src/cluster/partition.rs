//! One owned partition: pulls its JetStream consumer in the pinned priority group (while this
//! instance pulls, JetStream delivers the partition to no other), hands each message to the
//! router as an MQTT source does, with an ack token that acks JetStream once the message is
//! durable, and on release waits for what it delivered to become durable.

use std::collections::HashSet;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::time::Duration;

use async_nats::jetstream::consumer::PullConsumer;
use bytes::Bytes;
use futures::StreamExt;
use tokio::sync::{mpsc, watch};

use super::nats_client::AckSlots;
use super::subjects::{stored_device, stored_to_topic};
use crate::link::{MqttLink, ReplyRoute};
use crate::router::RawPublish;

/// The priority group every instance pulls in; the server pins one puller per consumer.
pub const GROUP: &str = "fleetflow";

/// A running partition's loop and what it needs.
pub(super) struct PartitionLoop {
    pub(super) index: u32,
    pub(super) consumer: PullConsumer,
    /// Acks of this partition's messages (its own epoch: moved at release).
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

impl PartitionLoop {
    /// Pulls until told to stop (or the router is gone); answers the devices it fed.
    pub(super) async fn run(mut self, mut stop: watch::Receiver<bool>) -> HashSet<String> {
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
                tokio::select! {
                    _ = stop.changed() => {
                        drop(msgs); // stop pulling: the pin starts to run out
                        return self.release().await;
                    }
                    m = msgs.next() => match m {
                        Some(Ok(m)) => {
                            if self.forward(m).await.is_break() {
                                drop(msgs);
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
    }

    /// Hands one message to the router; breaks when the router is gone.
    async fn forward(&mut self, m: async_nats::jetstream::Message) -> ControlFlow<()> {
        // The message itself: its reply subject is the JetStream ack subject (`split` would move
        // it into an `Acker`; the link acks through the slot instead).
        let m = m.message;
        let Some(reply) = m.reply else {
            return ControlFlow::Continue(());
        };
        let Some(pkid) = self.slots.put(reply.to_string()) else {
            tracing::warn!(
                partition = self.index,
                "every ack slot is taken: the message is left for redelivery"
            );
            return ControlFlow::Continue(());
        };
        self.link.received();
        let ack = self.link.token(pkid);
        let Some(topic) = stored_to_topic(m.subject.as_str(), self.lead) else {
            tracing::warn!(subject = %m.subject, "a stored subject without a device: acked and skipped");
            crate::link::ack(Some(ack));
            return ControlFlow::Continue(());
        };
        if let Some(d) = stored_device(m.subject.as_str(), self.lead, self.prefix_tokens) {
            if !self.devices.contains(d) {
                self.devices.insert(d.to_owned());
            }
        }
        let msg = RawPublish {
            topic: Bytes::from(topic),
            payload: m.payload,
            ack: Some(ack),
            reply_route: self.route.clone(),
            charge: None,
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
        self.link.next_epoch();
        self.slots.clear();
        self.devices
    }
}
