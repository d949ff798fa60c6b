//! The state machine's own config section, `[assembly]`: chunk assembly limits and timeouts.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// `[assembly]`: chunk assembly limits and timeouts (§4).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AssemblyConfig {
    /// Inactivity before a NACK round, in milliseconds. Default 30000.
    #[serde(default = "default_assembly_timeout_ms")]
    pub assembly_timeout_ms: u64,
    /// NACK rounds before a capture fails with 2201. Default 3.
    #[serde(default = "default_max_nack_rounds")]
    pub max_nack_rounds: u32,
    /// Largest image a capture may announce, in bytes. Default 4 MiB.
    #[serde(default = "default_max_image_bytes")]
    pub max_image_bytes: u64,
    /// Captures one device may have in flight at once. Default 4.
    #[serde(default = "default_max_captures_in_flight")]
    pub max_captures_in_flight: usize,
    /// Bytes one device may hold in assemblies and early chunks. Default 16 MiB.
    #[serde(default = "default_device_budget_bytes")]
    pub device_budget_bytes: usize,
    /// Bytes all devices together may hold. Default 1 GiB.
    #[serde(default = "default_global_budget_bytes")]
    pub global_budget_bytes: usize,
    /// `device_errors` rows per device and code per minute; the rest are counted. Default 10.
    #[serde(default = "default_error_rows_per_minute")]
    pub error_rows_per_minute: u32,
    /// Recently stored capture ids remembered per device, to answer repeated metadata with
    /// ACK_OK at once. Default 32.
    #[serde(default = "default_recent_captures")]
    pub recent_captures: usize,
}

fn default_assembly_timeout_ms() -> u64 {
    30_000
}
fn default_max_nack_rounds() -> u32 {
    3
}
fn default_max_image_bytes() -> u64 {
    4 * 1024 * 1024
}
fn default_max_captures_in_flight() -> usize {
    4
}
fn default_device_budget_bytes() -> usize {
    16 * 1024 * 1024
}
fn default_global_budget_bytes() -> usize {
    1024 * 1024 * 1024
}
fn default_error_rows_per_minute() -> u32 {
    10
}
fn default_recent_captures() -> usize {
    32
}

impl Default for AssemblyConfig {
    fn default() -> Self {
        Self {
            assembly_timeout_ms: default_assembly_timeout_ms(),
            max_nack_rounds: default_max_nack_rounds(),
            max_image_bytes: default_max_image_bytes(),
            max_captures_in_flight: default_max_captures_in_flight(),
            device_budget_bytes: default_device_budget_bytes(),
            global_budget_bytes: default_global_budget_bytes(),
            error_rows_per_minute: default_error_rows_per_minute(),
            recent_captures: default_recent_captures(),
        }
    }
}

impl AssemblyConfig {
    /// The inactivity timeout.
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.assembly_timeout_ms)
    }
}
