//! Subscriptions of database-configured sources (`mqtt_subscriptions`): which topics a product's
//! connection holds and what happens to matching messages (`device_profile`, `store_json`,
//! `republish`, `webhook`), with statistics written back in batches.
//!
//! A product with no subscription rows runs the camera profile on its prefix, as the
//! file-configured source does; once it has rows, exactly its enabled subscriptions run.

pub mod dispatch;
pub mod model;
pub mod stats;
pub mod webhook;

pub use dispatch::{SubscriptionRow, SubscriptionSet};
pub use stats::StatsRegistry;
