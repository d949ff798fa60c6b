//! Device actors: one per device, owning that device's in-flight assemblies and timers.
//!
//! - `actor`: the actix actor that runs the device state machine
//!   ([`fleetflow_protocol::state_machine`]), carries out its effects and supervises it.
//! - [`publish_log`]: the message log's rows for what a device published and was sent.

pub mod actor;
pub mod publish_log;

use actix::prelude::*;
use bytes::Bytes;
use fleetflow_protocol::ids::DeviceId;

use crate::link::AckToken;
use fleetflow_protocol::topic::TopicKind;

pub use actor::{DeviceActor, DeviceDeps};

/// Sent by a device actor that wants to stop (idle) to whoever placed it (the router, which
/// drops its entry).
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct DeviceExited {
    /// The device.
    pub device_id: DeviceId,
    /// The incarnation that asked.
    pub generation: u64,
}

/// One message for a device, as routed from MQTT.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Inbound {
    /// The topic as received (for the message log).
    pub topic: Bytes,
    /// What the topic said it is.
    pub kind: TopicKind,
    /// The raw payload (shared with the MQTT buffer: no copy).
    pub payload: Bytes,
    /// Set for QoS 1 messages.
    pub ack: Option<AckToken>,
    /// Where replies (ACK/NACK) to this device go.
    pub reply_route: std::sync::Arc<crate::link::ReplyRoute>,
    /// When the source read it from the broker.
    pub received: std::time::Instant,
}

impl Inbound {
    /// The message as a `dead_letters` row, carrying its ack: acknowledged once it is durable.
    pub fn into_dead_letter(
        self,
        device_id: DeviceId,
        reason: &'static str,
    ) -> crate::sinks::rows::PendingRow {
        use crate::sinks::rows::{DeadLetterRow, PendingRow, Row};
        metrics::counter!(crate::metrics::DEAD_LETTERED_TOTAL, "reason" => reason).increment(1);
        let row = Row::DeadLetter(DeadLetterRow {
            device_id: device_id.to_string(),
            topic: self.topic,
            payload: self.payload,
            reason,
            source: self.reply_route.source_name.clone(),
            received_at: chrono::Utc::now(),
        });
        PendingRow::new(row, self.ack)
    }
}

/// Asks a device actor to stop after what is already in its mailbox.
#[derive(Debug, Message)]
#[rtype(result = "()")]
pub struct Stop;

/// Asks a device actor for the connection its latest message came from (where commands to it
/// should go); `None` before its first message.
#[derive(Debug, Message)]
#[rtype(result = "Option<std::sync::Arc<crate::link::ReplyRoute>>")]
pub struct GetReplyRoute;

/// Actor state, for the admin API and tests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceSnapshot {
    /// Captures in flight.
    pub in_flight: usize,
    /// Bytes held.
    pub held_bytes: usize,
    /// Restarts so far.
    pub restarts: u64,
    /// `running`, `restarting` or `quarantined`.
    pub state: &'static str,
}

/// Asks for a [`DeviceSnapshot`].
#[derive(Debug, Message)]
#[rtype(result = "DeviceSnapshot")]
pub struct Snapshot;
