//! One generic batcher for every sink: it collects items and says when to flush, on a count, a
//! byte size or an age, whichever comes first. Pure logic, tested under paused time.

use std::time::Duration;

use tokio::time::Instant;

/// When a batch is flushed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BatchLimits {
    /// Flush at this many items.
    pub max_rows: usize,
    /// Flush at this many bytes (estimated by the caller).
    pub max_bytes: usize,
    /// Flush when the oldest item is this old.
    pub max_age: Duration,
}

/// Collects items until a limit is reached.
#[derive(Debug)]
pub struct Batcher<T> {
    limits: BatchLimits,
    items: Vec<T>,
    bytes: usize,
    oldest: Option<Instant>,
}

impl<T> Batcher<T> {
    /// An empty batcher.
    pub fn new(limits: BatchLimits) -> Self {
        Self {
            limits,
            items: Vec::new(),
            bytes: 0,
            oldest: None,
        }
    }

    /// Adds an item of `bytes` estimated size. Returns the full batch when a size limit is hit.
    pub fn push(&mut self, item: T, bytes: usize, now: Instant) -> Option<Vec<T>> {
        if self.items.is_empty() {
            self.oldest = Some(now);
            self.items.reserve(self.limits.max_rows.min(1024));
        }
        self.items.push(item);
        self.bytes += bytes;
        if self.items.len() >= self.limits.max_rows || self.bytes >= self.limits.max_bytes {
            Some(self.take())
        } else {
            None
        }
    }

    /// When the current batch must be flushed by age, if it holds anything.
    pub fn deadline(&self) -> Option<Instant> {
        self.oldest.map(|t| t + self.limits.max_age)
    }

    /// Takes the batch if its age limit has passed.
    pub fn take_if_due(&mut self, now: Instant) -> Option<Vec<T>> {
        match self.deadline() {
            Some(d) if now >= d => Some(self.take()),
            _ => None,
        }
    }

    /// Takes whatever is buffered.
    pub fn take(&mut self) -> Vec<T> {
        self.bytes = 0;
        self.oldest = None;
        std::mem::take(&mut self.items)
    }

    /// Items buffered.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether nothing is buffered.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limits() -> BatchLimits {
        BatchLimits {
            max_rows: 3,
            max_bytes: 100,
            max_age: Duration::from_millis(50),
        }
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_flushes_when_it_reaches_max_rows() {
        let mut b = Batcher::new(limits());
        let now = Instant::now();
        assert!(b.push(1, 1, now).is_none());
        assert!(b.push(2, 1, now).is_none());
        assert_eq!(b.push(3, 1, now), Some(vec![1, 2, 3]));
        assert!(b.is_empty());
        assert_eq!(b.deadline(), None);
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_flushes_when_it_reaches_max_bytes() {
        let mut b = Batcher::new(limits());
        let now = Instant::now();
        assert!(b.push("a", 60, now).is_none());
        assert_eq!(b.push("b", 40, now), Some(vec!["a", "b"]));
    }

    #[tokio::test(start_paused = true)]
    async fn a_batch_flushes_by_age_counted_from_its_oldest_item() {
        let mut b = Batcher::new(limits());
        b.push(1, 1, Instant::now());
        tokio::time::advance(Duration::from_millis(30)).await;
        b.push(2, 1, Instant::now());
        assert!(b.take_if_due(Instant::now()).is_none());
        tokio::time::advance(Duration::from_millis(20)).await;
        assert_eq!(b.take_if_due(Instant::now()), Some(vec![1, 2]));
        assert!(b.take_if_due(Instant::now()).is_none());
    }
}
