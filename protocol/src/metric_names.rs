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

/// A counter whose handle is looked up once per call site and then reused: for the counters
/// that every message touches, where `metrics::counter!` would hash the name and labels and
/// search the registry each time. Label values must be constant at the call site (match on
/// the value and give each arm its own `hot_counter!`).
///
/// The handle binds to the recorder installed when the call site first runs, so the engine
/// installs its recorder before any message flows (as `fleetflow::telemetry` does).
#[macro_export]
macro_rules! hot_counter {
    ($name:expr $(, $k:literal => $v:literal)* $(,)?) => {{
        static HANDLE: ::std::sync::OnceLock<::metrics::Counter> = ::std::sync::OnceLock::new();
        HANDLE.get_or_init(|| ::metrics::counter!($name $(, $k => $v)*))
    }};
}
