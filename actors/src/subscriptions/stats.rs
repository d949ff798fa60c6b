//! Subscription statistics: counted in memory with atomics on the message path, and written back
//! to `mqtt_subscriptions` in one batched `UPDATE ... FROM UNNEST` at most once a second, never
//! one statement per message. A failed write keeps its deltas for the next round, so the stored
//! counts end up exact.

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;

/// One subscription's counters since the last write.
#[derive(Debug, Default)]
pub struct SubStats {
    received: AtomicU64,
    executed: AtomicU64,
    failed: AtomicU64,
    /// Unix milliseconds of the latest message; 0 for none.
    last_ms: AtomicI64,
}

impl SubStats {
    /// A message matched.
    pub fn message(&self) {
        self.received.fetch_add(1, Ordering::Relaxed);
        self.last_ms
            .fetch_max(Utc::now().timestamp_millis(), Ordering::Relaxed);
    }

    /// An action was carried out.
    pub fn executed(&self) {
        self.executed.fetch_add(1, Ordering::Relaxed);
    }

    /// An action failed.
    pub fn failed(&self) {
        self.failed.fetch_add(1, Ordering::Relaxed);
    }

    fn take(&self) -> Delta {
        Delta {
            received: self.received.swap(0, Ordering::AcqRel),
            executed: self.executed.swap(0, Ordering::AcqRel),
            failed: self.failed.swap(0, Ordering::AcqRel),
            last_ms: self.last_ms.load(Ordering::Acquire),
        }
    }

    fn give_back(&self, d: &Delta) {
        self.received.fetch_add(d.received, Ordering::AcqRel);
        self.executed.fetch_add(d.executed, Ordering::AcqRel);
        self.failed.fetch_add(d.failed, Ordering::AcqRel);
    }
}

struct Delta {
    received: u64,
    executed: u64,
    failed: u64,
    last_ms: i64,
}

impl Delta {
    fn is_empty(&self) -> bool {
        self.received == 0 && self.executed == 0 && self.failed == 0
    }
}

/// Every subscription's counters, by subscription id. Entries outlive config reloads, so a
/// reload never loses counts that were not written yet.
#[derive(Debug, Clone, Default)]
pub struct StatsRegistry(Arc<Mutex<HashMap<i64, Arc<SubStats>>>>);

impl StatsRegistry {
    /// The counters of subscription `id` (created on first use).
    pub fn get(&self, id: i64) -> Arc<SubStats> {
        self.0
            .lock()
            .expect("stats registry lock")
            .entry(id)
            .or_default()
            .clone()
    }

    /// Writes every non-zero delta in one statement. Rows that were deleted meanwhile are
    /// simply not matched. Returns how many subscriptions were updated.
    pub async fn flush(&self, pool: &Pool) -> Result<usize, StatsFlushError> {
        let taken: Vec<(i64, Arc<SubStats>, Delta)> = {
            let map = self.0.lock().expect("stats registry lock");
            map.iter()
                .map(|(id, s)| (*id, s.clone(), s.take()))
                .filter(|(_, _, d)| !d.is_empty())
                .collect()
        };
        if taken.is_empty() {
            return Ok(0);
        }
        let ids: Vec<i64> = taken.iter().map(|t| t.0).collect();
        let rec: Vec<i64> = taken.iter().map(|t| t.2.received as i64).collect();
        let exe: Vec<i64> = taken.iter().map(|t| t.2.executed as i64).collect();
        let fail: Vec<i64> = taken.iter().map(|t| t.2.failed as i64).collect();
        let last: Vec<Option<DateTime<Utc>>> = taken
            .iter()
            .map(|t| {
                (t.2.last_ms > 0)
                    .then(|| DateTime::from_timestamp_millis(t.2.last_ms))
                    .flatten()
            })
            .collect();
        let result = async {
            let c = pool.get().await?;
            c.execute(
                "UPDATE mqtt_subscriptions s SET
                   messages_received = s.messages_received + x.r,
                   actions_executed = s.actions_executed + x.e,
                   actions_failed = s.actions_failed + x.f,
                   last_message_at = GREATEST(s.last_message_at, x.t)
                 FROM UNNEST($1::int8[], $2::int8[], $3::int8[], $4::int8[], $5::timestamptz[]) AS x(id, r, e, f, t)
                 WHERE s.id = x.id",
                &[&ids, &rec, &exe, &fail, &last],
            )
            .await
            .map_err(StatsFlushError::from)
        }
        .await;
        match result {
            Ok(n) => Ok(n as usize),
            Err(e) => {
                for (_, s, d) in &taken {
                    s.give_back(d);
                }
                Err(e)
            }
        }
    }
}

/// Why the statistics could not be written (the deltas are given back for the next round).
#[derive(Debug, thiserror::Error)]
pub enum StatsFlushError {
    /// No connection from the pool.
    #[error("{0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The update failed.
    #[error("{0}")]
    Update(#[from] tokio_postgres::Error),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn taking_resets_and_giving_back_restores() {
        let s = SubStats::default();
        s.message();
        s.message();
        s.executed();
        s.failed();
        let d = s.take();
        assert_eq!((d.received, d.executed, d.failed), (2, 1, 1));
        assert!(s.take().is_empty());
        s.give_back(&d);
        s.message();
        let d = s.take();
        assert_eq!((d.received, d.executed, d.failed), (3, 1, 1));
        assert!(d.last_ms > 0);
    }
}
