//! fleetflow's runtime: everything between the MQTT socket and durable storage, running the
//! pure device state machine of `fleetflow-protocol`.
//!
//! # Layout
//! - [`source`]: one MQTT event loop per broker connection, v5 or 3.1.1 (`protocol_version`,
//!   chosen once in `source/options.rs`; `source/events.rs` turns either client's events into
//!   the same ones, and [`link`] holds either client). A pure forwarder: it turns PUBLISH
//!   packets into [`router::RawPublish`] on a bounded queue and sends acks and publishes queued
//!   by others.
//! - [`source_manager`]: runs one source per enabled `mqtt_configs` row (else the `[mqtt]` file
//!   source), hot-reloaded on NOTIFY; restarts exactly the sources whose settings changed.
//! - [`cluster`]: cluster mode (`[cluster]`): the partitions this instance owns among the live
//!   members, pulled from NATS JetStream in place of the MQTT sources; acks and replies go
//!   through NATS behind the same [`link`].
//! - [`subscriptions`]: a product's subscriptions and the dispatcher that runs their actions
//!   (`device_profile`, `store_json`, `republish`, `webhook`) between its source and the router,
//!   splitting each message's broker ack among them.
//! - [`router`]: the device router actor. Parses topics, owns the map of device actors, starts
//!   one on a device's first message, spreads them over one arbiter per core, and waits when a
//!   device mailbox is full. Sends 2104/2105 error rows for bad topics.
//! - [`device`]: one actor per device. Runs that device's state machine
//!   (`fleetflow_protocol::state_machine`), carries out its effects (rows to the Postgres sink,
//!   images to the object sink, ACK/NACK and commands to the device via [`link`]), runs its
//!   timer, passivates when idle and supervises itself with the [`supervisor`] policy.
//! - [`sinks`]: the Postgres sink (batches per table via [`batcher`], one statement per batch,
//!   acks the broker after commit), the object sink (uploads, then the captures row), the
//!   object-store builder and the dead-letter directory.
//! - [`pipeline`]: starts all of the above in order and hands the control plane its one handle,
//!   [`pipeline::Pipeline`] (device queries and restarts, reply routes, source and sink
//!   restarts, drain and flush); [`pipeline::RunningPipeline::shutdown`] stops it in order.
//! - [`link`]: ack tokens and the publishing half of a connection.
//! - [`queue_budget`]: the bytes (and, through a per-message overhead, the count) one source may
//!   have queued towards the router.
//! - [`transport`]: mqtt, mqtts, ws and wss options.
//! - [`pg_listen`]: a reconnecting Postgres LISTEN.
//! - [`metrics`]: every metric name and help text, in one place.
//! - [`config`]: the typed config sections these components read.
//!
//! Data flow: `source → (dispatcher) → router → device → {pg sink, object sink → pg sink} →
//! (ack to broker, ACK_OK to device)`.
//!
//! Must not depend on: the control plane (`fleetflow`: HTTP, admin, secrets); what it needs from
//! it comes in through traits such as [`source_manager::PasswordOpener`].

pub mod batcher;
pub mod cluster;
pub mod config;
pub mod device;
pub mod link;
pub mod metrics;
pub mod pg_listen;
pub mod pipeline;
pub mod queue_budget;
pub mod router;
pub mod sinks;
pub mod source;
pub mod source_manager;
pub mod subscriptions;
pub mod supervisor;
pub mod transport;

/// The payload that makes a device actor panic, when built with the `fault-injection` feature.
#[cfg(feature = "fault-injection")]
pub const FAULT_PANIC_MARKER: &[u8] = b"__fleetflow_fault_panic__";
