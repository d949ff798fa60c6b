//! Receive-order acknowledgement: MQTT 5 §4.6 (MQTT-4.6.0-2) has a client send its PUBACKs in
//! the order the PUBLISH packets arrived. Each packet takes the next slot when it arrives; an
//! ack marks its slot durable, and the durable slots at the head are released in order, the
//! way a log consumer commits offsets. A packet that will never be acknowledged on this
//! connection (a leaked token) is skipped, so that it does not hold back the ones behind it:
//! the broker redelivers it after a reconnect.

use std::collections::VecDeque;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Slot {
    /// Received, not durable yet.
    Waiting(u16),
    /// Durable; its PUBACK waits for the slots before it.
    Durable(u16),
    /// Never acknowledged on this connection.
    Skipped,
}

/// The slots of one connection, oldest first.
#[derive(Debug, Default)]
pub struct AckOrder {
    /// Sequence number of the first slot.
    base: u64,
    slots: VecDeque<Slot>,
}

impl AckOrder {
    /// A packet arrived: its slot's sequence number.
    pub fn push(&mut self, pkid: u16) -> u64 {
        self.slots.push_back(Slot::Waiting(pkid));
        self.base + self.slots.len() as u64 - 1
    }

    /// The packet of slot `seq` is durable; `send` gets every packet id now releasable, in order.
    pub fn durable(&mut self, seq: u64, send: impl FnMut(u16)) {
        if let Some(Slot::Waiting(p)) = self.slot(seq).copied() {
            *self.slot(seq).expect("present") = Slot::Durable(p);
        }
        self.release(send);
    }

    /// The packet of slot `seq` will not be acknowledged on this connection.
    pub fn skip(&mut self, seq: u64, send: impl FnMut(u16)) {
        if let Some(s) = self.slot(seq) {
            *s = Slot::Skipped;
        }
        self.release(send);
    }

    /// Packets received and not released yet.
    #[cfg(test)]
    pub fn held(&self) -> usize {
        self.slots.len()
    }

    /// A new connection: nothing of the old one is acknowledged any more.
    pub fn clear(&mut self) {
        self.base += self.slots.len() as u64;
        self.slots.clear();
    }

    fn slot(&mut self, seq: u64) -> Option<&mut Slot> {
        let i = seq.checked_sub(self.base)?;
        self.slots.get_mut(usize::try_from(i).ok()?)
    }

    fn release(&mut self, mut send: impl FnMut(u16)) {
        while let Some(front) = self.slots.front() {
            match *front {
                Slot::Waiting(_) => break,
                Slot::Durable(p) => send(p),
                Slot::Skipped => {}
            }
            self.slots.pop_front();
            self.base += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sent(o: &mut AckOrder, f: impl FnOnce(&mut AckOrder, &mut Vec<u16>)) -> Vec<u16> {
        let mut out = Vec::new();
        f(o, &mut out);
        out
    }

    #[test]
    fn acks_go_out_in_receive_order_whatever_order_they_become_durable_in() {
        let mut o = AckOrder::default();
        let s: Vec<u64> = [10, 11, 12, 13].iter().map(|&p| o.push(p)).collect();
        assert_eq!(
            sent(&mut o, |o, v| o.durable(s[2], |p| v.push(p))),
            Vec::<u16>::new()
        );
        assert_eq!(
            sent(&mut o, |o, v| o.durable(s[1], |p| v.push(p))),
            Vec::<u16>::new()
        );
        assert_eq!(
            sent(&mut o, |o, v| o.durable(s[0], |p| v.push(p))),
            vec![10, 11, 12]
        );
        assert_eq!(o.held(), 1);
        assert_eq!(
            sent(&mut o, |o, v| o.durable(s[3], |p| v.push(p))),
            vec![13]
        );
        assert_eq!(o.held(), 0);
    }

    #[test]
    fn a_skipped_packet_does_not_hold_back_the_ones_behind_it() {
        let mut o = AckOrder::default();
        let a = o.push(1);
        let b = o.push(2);
        assert_eq!(
            sent(&mut o, |o, v| o.durable(b, |p| v.push(p))),
            Vec::<u16>::new()
        );
        assert_eq!(sent(&mut o, |o, v| o.skip(a, |p| v.push(p))), vec![2]);
    }

    #[test]
    fn after_clear_old_sequence_numbers_touch_nothing() {
        let mut o = AckOrder::default();
        let old = o.push(5);
        o.clear();
        let new = o.push(5);
        assert_ne!(old, new);
        assert_eq!(
            sent(&mut o, |o, v| o.durable(old, |p| v.push(p))),
            Vec::<u16>::new()
        );
        assert_eq!(sent(&mut o, |o, v| o.durable(new, |p| v.push(p))), vec![5]);
        // A slot acknowledged twice is sent once.
        assert_eq!(
            sent(&mut o, |o, v| o.durable(new, |p| v.push(p))),
            Vec::<u16>::new()
        );
    }
}
