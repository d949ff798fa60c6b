//! The names of the metrics the device state machine emits (the full list, with help texts and
//! label sets, is `fleetflow_actors::metrics::SPEC`; see `docs/metrics.md`).

/// Counter.
pub const ASSEMBLIES_STARTED_TOTAL: &str = "fleetflow_assemblies_started_total";
/// Gauge.
pub const ASSEMBLY_BYTES: &str = "fleetflow_assembly_bytes";
/// Counter; label `reason`.
pub const CAPTURES_FAILED_TOTAL: &str = "fleetflow_captures_failed_total";
/// Counter.
pub const CAPTURES_STORED_TOTAL: &str = "fleetflow_captures_stored_total";
/// Counter; label `outcome`.
pub const CHUNKS_TOTAL: &str = "fleetflow_chunks_total";
/// Counter; label `code`.
pub const ERRORS_TOTAL: &str = "fleetflow_device_errors_total";
/// Counter; label `code`.
pub const ERROR_ROWS_SUPPRESSED_TOTAL: &str = "fleetflow_device_error_rows_suppressed_total";
/// Counter; label `kind`.
pub const MESSAGES_TOTAL: &str = "fleetflow_device_messages_total";
/// Counter; label `reason`.
pub const NACKS_TOTAL: &str = "fleetflow_nacks_total";
/// Counter; label `answer`.
pub const WAKE_ANSWERS_TOTAL: &str = "fleetflow_wake_answers_total";
