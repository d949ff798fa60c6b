//! The global byte budget shared by every device's assemblies, with the gauge it feeds.

use std::sync::atomic::{AtomicUsize, Ordering};

use crate::metric_names as m;

/// Bytes held by assemblies across all devices, against a limit.
#[derive(Debug)]
pub struct GlobalBudget {
    used: AtomicUsize,
    limit: usize,
}

impl GlobalBudget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Self {
            used: AtomicUsize::new(0),
            limit,
        }
    }

    /// Reserves `n` bytes if they fit.
    pub fn try_reserve(&self, n: usize) -> bool {
        let mut cur = self.used.load(Ordering::Relaxed);
        loop {
            let Some(next) = cur.checked_add(n).filter(|v| *v <= self.limit) else {
                return false;
            };
            match self
                .used
                .compare_exchange_weak(cur, next, Ordering::AcqRel, Ordering::Relaxed)
            {
                Ok(_) => {
                    metrics::gauge!(m::ASSEMBLY_BYTES).set(next as f64);
                    return true;
                }
                Err(actual) => cur = actual,
            }
        }
    }

    /// Returns `n` bytes.
    pub fn release(&self, n: usize) {
        if n == 0 {
            return;
        }
        let prev = self.used.fetch_sub(n, Ordering::AcqRel);
        metrics::gauge!(m::ASSEMBLY_BYTES).set(prev.saturating_sub(n) as f64);
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}
