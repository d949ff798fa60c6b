//! The restart policy for device actors, written as explicit, pure logic: exponential backoff
//! with jitter, a restart intensity limit per window, and quarantine once it is exceeded.
//! Device actors are *transient* children (restarted after a failure, not after a normal stop);
//! sinks are *permanent* (see `sinks`).

use std::collections::VecDeque;
use std::time::Duration;

use rand::Rng;
use tokio::time::Instant;

use crate::config::DevicesConfig;

/// What the supervisor decided after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Rebuild the state and resume after this delay.
    Restart {
        /// Backoff before processing resumes.
        after: Duration,
    },
    /// Too many restarts in the window: quarantine until the given instant.
    Quarantine {
        /// When the quarantine ends by itself.
        until: Instant,
    },
}

/// Per-device restart bookkeeping.
#[derive(Debug, Clone)]
pub struct RestartPolicy {
    max_restarts: u32,
    window: Duration,
    backoff_min: Duration,
    backoff_max: Duration,
    quarantine: Duration,
    recent: VecDeque<Instant>,
    total: u64,
}

impl RestartPolicy {
    /// A policy from the `[devices]` config.
    pub fn new(cfg: &DevicesConfig) -> Self {
        Self {
            max_restarts: cfg.max_restarts,
            window: Duration::from_millis(cfg.restart_window_ms),
            backoff_min: Duration::from_millis(cfg.restart_backoff_min_ms),
            backoff_max: Duration::from_millis(cfg.restart_backoff_max_ms),
            quarantine: Duration::from_millis(cfg.quarantine_ms),
            recent: VecDeque::new(),
            total: 0,
        }
    }

    /// Restarts so far, ever.
    pub fn total_restarts(&self) -> u64 {
        self.total
    }

    /// Records a failure at `now` and decides what happens.
    pub fn on_failure(&mut self, now: Instant) -> Decision {
        while let Some(&t) = self.recent.front() {
            if now.duration_since(t) > self.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        if self.recent.len() as u32 >= self.max_restarts {
            self.recent.clear();
            return Decision::Quarantine {
                until: now + self.quarantine,
            };
        }
        self.recent.push_back(now);
        self.total += 1;
        let exp = (self.recent.len() as u32).saturating_sub(1).min(20);
        let base = self
            .backoff_min
            .saturating_mul(1 << exp)
            .min(self.backoff_max);
        // Full jitter in [base/2, base].
        let jitter = rand::rng().random_range(0.5..=1.0);
        Decision::Restart {
            after: base.mul_f64(jitter),
        }
    }

    /// Forgets past failures (after an admin release).
    pub fn reset(&mut self) {
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg() -> DevicesConfig {
        DevicesConfig {
            max_restarts: 3,
            restart_window_ms: 60_000,
            restart_backoff_min_ms: 100,
            restart_backoff_max_ms: 1_000,
            quarantine_ms: 600_000,
            ..DevicesConfig::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn backoff_doubles_then_quarantine_follows_too_many_restarts_in_the_window() {
        let mut p = RestartPolicy::new(&cfg());
        let now = Instant::now();
        let mut delays = Vec::new();
        for _ in 0..3 {
            match p.on_failure(now) {
                Decision::Restart { after } => delays.push(after),
                d => panic!("unexpected {d:?}"),
            }
        }
        assert!(delays[0] >= Duration::from_millis(50) && delays[0] <= Duration::from_millis(100));
        assert!(delays[1] >= Duration::from_millis(100) && delays[1] <= Duration::from_millis(200));
        assert!(delays[2] >= Duration::from_millis(200) && delays[2] <= Duration::from_millis(400));
        assert_eq!(
            p.on_failure(now),
            Decision::Quarantine {
                until: now + Duration::from_secs(600)
            }
        );
        assert_eq!(p.total_restarts(), 3);
    }

    #[tokio::test(start_paused = true)]
    async fn failures_outside_the_window_do_not_count_towards_quarantine() {
        let mut p = RestartPolicy::new(&cfg());
        for _ in 0..10 {
            assert!(matches!(
                p.on_failure(Instant::now()),
                Decision::Restart { .. }
            ));
            tokio::time::advance(Duration::from_secs(31)).await;
        }
    }
}
