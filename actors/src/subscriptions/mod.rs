//! Subscriptions of database-configured sources (`mqtt_subscriptions`): which topics a product's
//! connection holds and what happens to matching messages (`device_profile`, `store_json`,
//! `republish`, `webhook`), with statistics written back in batches.
//!
//! A product with no subscription rows runs the camera profile on its prefix, as the
//! file-configured source does; once it has rows, exactly its enabled subscriptions run.
//!
//! - `model`: the stored actions, parsed and validated in one place (for the API and the engine).
//! - `dispatch`: the dispatcher between a source and the router; splits each message's broker
//!   ack among the actions it matched.
//! - `webhook`: the bounded webhook sender.
//! - `stats`: per-subscription counters, written back in batches.

pub mod dispatch;
pub mod model;
pub mod stats;
pub mod webhook;

pub use dispatch::{SubscriptionRow, SubscriptionSet};
pub use stats::StatsRegistry;
