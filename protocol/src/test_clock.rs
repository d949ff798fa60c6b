//! A deterministic clock for unit tests of time-dependent logic: a fixed base plus what
//! [`advance`] added, per test thread (the state machine takes its time as an argument).

use std::cell::Cell;
use std::time::{Duration, Instant};

thread_local! {
    static BASE: Instant = Instant::now();
    static OFFSET: Cell<Duration> = const { Cell::new(Duration::ZERO) };
}

/// The test thread's current instant.
pub fn now() -> Instant {
    BASE.with(|b| *b) + OFFSET.with(|o| o.get())
}

/// Moves the test thread's clock forward.
pub fn advance(d: Duration) {
    OFFSET.with(|o| o.set(o.get() + d));
}
