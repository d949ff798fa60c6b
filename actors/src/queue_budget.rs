//! A source's byte budget: what it has handed towards the router and the router has not taken
//! yet. Each message is charged its payload plus a fixed overhead, so the budget bounds both
//! the bytes and the count one source can queue, whatever the other sources do.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Charged per message on top of its payload (topic, token and envelope).
const OVERHEAD: usize = 256;

/// One source's budget.
#[derive(Clone)]
pub struct QueueBudget {
    permits: Arc<Semaphore>,
    max: u32,
}

/// The charge of one message, given back when the router takes it (or it is dropped).
#[derive(Debug)]
pub struct QueueCharge(#[allow(dead_code)] OwnedSemaphorePermit);

impl QueueBudget {
    /// A budget of `bytes` (at least one message's worth).
    pub fn new(bytes: usize) -> Self {
        let max = bytes.clamp(OVERHEAD, Semaphore::MAX_PERMITS.min(u32::MAX as usize)) as u32;
        Self {
            permits: Arc::new(Semaphore::new(max as usize)),
            max,
        }
    }

    fn cost(&self, len: usize) -> u32 {
        (len.saturating_add(OVERHEAD)).min(self.max as usize) as u32
    }

    /// Charges a message of `len` payload bytes if the budget has room now.
    pub fn try_charge(&self, len: usize) -> Option<QueueCharge> {
        self.permits
            .clone()
            .try_acquire_many_owned(self.cost(len))
            .ok()
            .map(QueueCharge)
    }

    /// Charges a message of `len` payload bytes, waiting for room.
    pub async fn charge(&self, len: usize) -> QueueCharge {
        let p = self
            .permits
            .clone()
            .acquire_many_owned(self.cost(len))
            .await
            .expect("the budget's semaphore is never closed");
        QueueCharge(p)
    }

    /// Bytes charged now.
    pub fn used(&self) -> usize {
        self.max as usize - self.permits.available_permits()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_source_queues_at_most_its_budget_and_gets_room_back_as_the_router_takes() {
        let b = QueueBudget::new(10_000);
        let big = b.try_charge(6_000).expect("fits");
        assert!(b.try_charge(6_000).is_none(), "over the bytes");
        let small: Vec<_> = (0..14).map_while(|_| b.try_charge(0)).collect();
        assert_eq!(small.len(), 14, "small messages fill the rest: 14 x 256");
        assert!(b.try_charge(0).is_none(), "the count is bounded too");
        drop(big);
        assert!(b.try_charge(6_000).is_some(), "room again once taken");
        assert!(
            QueueBudget::new(1).try_charge(1 << 20).is_some(),
            "one message always fits an empty budget"
        );
    }
}
