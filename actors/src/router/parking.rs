//! Messages the router holds for one device whose mailbox is full (a slow device, or one in
//! restart backoff), oldest first, bounded in count and bytes, so that the router goes on with
//! every other device instead of waiting. What does not fit goes to `dead_letters` (the
//! router's `dead_letter`). Messages dropped with their parking (the device's actor gone for
//! good) leak their ack tokens: counted, and redelivered by the broker after a reconnect.

use std::collections::VecDeque;

use crate::device::Inbound;
use crate::metrics as m;

/// One device's parked messages.
#[derive(Default)]
pub(super) struct Parking {
    queue: VecDeque<Inbound>,
    bytes: usize,
    /// A send of the oldest parked message is in flight (it waits for room in the mailbox).
    pub(super) pumping: bool,
}

/// The bounds of one device's parking.
#[derive(Debug, Clone, Copy)]
pub(super) struct ParkLimits {
    /// Messages.
    pub(super) count: usize,
    /// Payload bytes.
    pub(super) bytes: usize,
}

impl Parking {
    /// True when nothing is parked: a new message may go straight to the mailbox.
    pub(super) fn is_empty(&self) -> bool {
        self.queue.is_empty()
    }

    /// Whether a message of `len` payload bytes fits. One message always fits, however large,
    /// so that a device is never refused for good.
    pub(super) fn has_room(&self, len: usize, limits: ParkLimits) -> bool {
        self.queue.is_empty()
            || (self.queue.len() < limits.count && self.bytes + len <= limits.bytes)
    }

    /// Parks a message behind the others (check [`Parking::has_room`] first).
    pub(super) fn push(&mut self, msg: Inbound) {
        self.bytes += msg.payload.len();
        self.queue.push_back(msg);
        metrics::gauge!(m::ROUTER_PARKED).increment(1.0);
        metrics::counter!(m::ROUTER_MAILBOX_WAITS_TOTAL).increment(1);
    }

    /// Puts back a message taken with [`Parking::pop`] that still did not fit.
    pub(super) fn unpop(&mut self, msg: Inbound) {
        self.bytes += msg.payload.len();
        self.queue.push_front(msg);
        metrics::gauge!(m::ROUTER_PARKED).increment(1.0);
    }

    /// Takes the oldest parked message.
    pub(super) fn pop(&mut self) -> Option<Inbound> {
        let msg = self.queue.pop_front()?;
        self.bytes -= msg.payload.len();
        metrics::gauge!(m::ROUTER_PARKED).decrement(1.0);
        Some(msg)
    }

    /// Moves everything parked into `other` (a device's new actor), behind what it holds.
    pub(super) fn move_into(&mut self, other: &mut Parking) {
        other.bytes += std::mem::take(&mut self.bytes);
        other.queue.append(&mut self.queue);
    }
}

impl Drop for Parking {
    fn drop(&mut self) {
        if !self.queue.is_empty() {
            // Their tokens count as leaks as they drop; the broker redelivers them.
            metrics::gauge!(m::ROUTER_PARKED).decrement(self.queue.len() as f64);
            metrics::counter!(m::ROUTER_REFUSED_TOTAL, "reason" => "device_gone")
                .increment(self.queue.len() as u64);
        }
    }
}
