//! `[retention]`: how long images and rows are kept. Off by default: with no `*_days` set,
//! nothing is ever deleted.
//!
//! Ages count from when the engine wrote the row (`created_at`, `occurred_at`, `received_at`),
//! never from a device's clock. Zero is refused by the types (`NonZero*`), so a bad value fails
//! at startup naming the field; days are `u16` (at most 65535, about 179 years) so that every
//! cutoff is a date PostgreSQL can hold.

use std::num::{NonZeroU16, NonZeroU32, NonZeroU64};
use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[retention]`: what the retention task (`crate::retention`) deletes, and how often.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RetentionConfig {
    /// Days a stored capture's image (and its cached thumbnail) is kept in object storage. Older
    /// ones are deleted from the store and their `captures` row is marked (`deleted_at`), not
    /// deleted. Default: none (images are kept forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub captures_days: Option<NonZeroU16>,
    /// Days `sensor_readings` rows are kept. Default: none (kept forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub readings_days: Option<NonZeroU16>,
    /// Days `device_errors` rows are kept. Default: none (kept forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub device_errors_days: Option<NonZeroU16>,
    /// Days `device_publish_log` rows are kept. Default: none (kept forever).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub publish_log_days: Option<NonZeroU16>,
    /// Rows (or captures) handled per statement; each batch is one short transaction. Default
    /// 1000.
    #[serde(default = "default_batch_rows")]
    pub batch_rows: NonZeroU32,
    /// Seconds between two rounds (the first runs at startup). Default 3600.
    #[serde(default = "default_interval_secs")]
    pub interval_secs: NonZeroU64,
}

/// 1000 rows per batch: short locks, few round trips.
const DEFAULT_BATCH_ROWS: NonZeroU32 = match NonZeroU32::new(1000) {
    Some(n) => n,
    None => NonZeroU32::MIN,
};
/// One round an hour: retention counts in days.
const DEFAULT_INTERVAL_SECS: NonZeroU64 = match NonZeroU64::new(3600) {
    Some(n) => n,
    None => NonZeroU64::MIN,
};

fn default_batch_rows() -> NonZeroU32 {
    DEFAULT_BATCH_ROWS
}
fn default_interval_secs() -> NonZeroU64 {
    DEFAULT_INTERVAL_SECS
}

impl Default for RetentionConfig {
    fn default() -> Self {
        Self {
            captures_days: None,
            readings_days: None,
            device_errors_days: None,
            publish_log_days: None,
            batch_rows: default_batch_rows(),
            interval_secs: default_interval_secs(),
        }
    }
}

impl RetentionConfig {
    /// Whether any table or the images have a retention period (else no task runs).
    pub fn is_enabled(&self) -> bool {
        self.captures_days.is_some()
            || self.readings_days.is_some()
            || self.device_errors_days.is_some()
            || self.publish_log_days.is_some()
    }

    /// Time between two rounds.
    pub fn interval(&self) -> Duration {
        Duration::from_secs(self.interval_secs.get())
    }
}

#[cfg(test)]
mod tests {
    use super::RetentionConfig;
    use crate::config::Config;

    #[test]
    fn retention_is_off_by_default_with_named_defaults() {
        let cfg = Config::from_toml("").unwrap();
        assert_eq!(cfg.retention, RetentionConfig::default());
        assert!(!cfg.retention.is_enabled());
        assert_eq!(cfg.retention.batch_rows.get(), 1000);
        assert_eq!(cfg.retention.interval_secs.get(), 3600);
    }

    #[test]
    fn retention_settings_parse_and_turn_the_task_on() {
        let cfg = Config::from_toml(
            "[retention]\ncaptures_days = 30\nreadings_days = 90\nbatch_rows = 50\ninterval_secs = 1\n",
        )
        .unwrap();
        assert!(cfg.retention.is_enabled());
        assert_eq!(cfg.retention.captures_days.map(|d| d.get()), Some(30));
        assert_eq!(cfg.retention.readings_days.map(|d| d.get()), Some(90));
        assert_eq!(cfg.retention.device_errors_days, None);
        assert_eq!(cfg.retention.batch_rows.get(), 50);
        assert_eq!(cfg.retention.interval().as_secs(), 1);
    }

    #[test]
    fn zero_unknown_and_out_of_range_retention_values_name_the_field() {
        for (toml, field) in [
            (
                "[retention]\ncaptures_days = 0\n",
                "retention.captures_days",
            ),
            (
                "[retention]\nreadings_days = 70000\n",
                "retention.readings_days",
            ),
            ("[retention]\nbatch_rows = 0\n", "retention.batch_rows"),
            (
                "[retention]\ninterval_secs = 0\n",
                "retention.interval_secs",
            ),
            ("[retention]\ncapture_days = 3\n", "capture_days"),
        ] {
            let e = Config::from_toml(toml).unwrap_err().to_string();
            assert!(e.contains(field), "{toml}: {e}");
        }
    }
}
