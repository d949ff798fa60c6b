//! fleetflow's actor crate: everything between the MQTT socket and durable storage.
//!
//! # Layout
//! - [`source`]: the MQTT v5 event loop. A pure forwarder: it turns PUBLISH packets into
//!   [`router::RawPublish`] on a bounded queue and sends acks/publishes queued by others.
//! - [`router`]: the router actor. Parses topics ([`topic`]), owns the map of device actors,
//!   starts one on a device's first message, spreads them over one arbiter per core, and waits
//!   when a device mailbox is full. Sends 2101 error rows for bad topics.
//! - [`device`]: one actor per device. Owns that device's in-flight assemblies ([`assembler`]),
//!   their timers and NACK rounds; decodes payloads ([`protocol`]); sends rows to the Postgres
//!   sink, complete images to the object sink, and ACK/NACK to the device via [`link`].
//!   Supervises itself with the [`supervisor`] policy: a panic is caught, state rebuilt,
//!   processing resumes after a backoff, or the device is quarantined.
//! - [`sinks`]: the Postgres sink (batches per table via [`batcher`], one statement per batch,
//!   acks the broker after commit) and the object sink (uploads, then the captures row).
//! - [`errors`]: protocol error codes and the per-device error-row rate limiter.
//! - [`metrics`]: every metric name, in one place.
//! - [`config`]: the typed config sections these components read.
//!
//! Data flow: `source → router → device → {pg sink, object sink → pg sink} → (ack to broker,
//! ACK_OK to device)`.

pub mod batcher;
pub mod config;
pub mod device;
pub mod link;
pub mod metrics;
pub mod router;
pub mod sinks;
pub mod source;
pub mod supervisor;
pub mod transport;

/// The payload that makes a device actor panic, when built with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
pub const FAULT_PANIC_MARKER: &[u8] = b"__fleetflow_fault_panic__";
