//! fleetflow's device protocols as pure logic: what a firmware author reads. Bytes in, typed
//! messages and effects out; no actix, no tokio, no I/O (the runtime in `fleetflow-actors`
//! carries the effects out).
//!
//! # Layout
//! - [`broker_url`]: broker URLs (`mqtt`, `mqtts`, `ws`, `wss`), parsed once for the engine
//!   and the simulator.
//! - [`ids`]: device ids (`[A-Za-z0-9_-]{1,64}`, MACs uppercased) and capture ids.
//! - [`topic`]: `{prefix}/{device_id}/{suffix}` parsing and the engine's outbound topics.
//! - [`message`]: the pure decoder from a topic kind and payload to a [`message::DeviceMsg`],
//!   telling fleetflow's protocol (`PROTOCOL.md`) and the GXP firmware's apart per message.
//! - [`gxp`]: the GXP firmware's format: metadata variants, base64 chunks, its answer shapes
//!   and commands, and the per-product settings of its firmware generations.
//! - [`payload`]: what both decoders share: the measurements and the decode error with its §7
//!   code.
//! - [`assembler`]: one capture's chunk assembly in one buffer (strict v1 and lenient GXP modes).
//! - [`state_machine`]: one device's state machine: captures, timers, NACK rounds, validation,
//!   the wake handshake; messages and ticks in, [`state_machine::Effect`]s out.
//! - [`nack`]: fleetflow v1 ACK/NACK payloads.
//! - [`errors`]: the shared error-code table (§7), `device_errors` records and their per-device
//!   rate limiter.
//! - [`schedule`]: wake schedules, the handshake's decision and the in-memory schedule book.
//! - [`budget`]: the global assembly byte budget.
//! - [`rows`]: the rows the state machine produces, one type per table.
//! - [`config`]: `[assembly]`, the state machine's limits and timeouts.
//! - [`metric_names`]: the names of the metrics the state machine emits.
//! - `test_clock` (tests only): a deterministic clock for the time-dependent unit tests.
//!
//! Must not depend on: actix, tokio, any I/O crate, or the other fleetflow crates.

pub mod assembler;
pub mod broker_url;
pub mod budget;
pub mod config;
pub mod errors;
pub mod gxp;
pub mod ids;
pub mod message;
pub mod metric_names;
pub mod nack;
pub mod payload;
pub mod rows;
pub mod schedule;
pub mod state_machine;
#[cfg(test)]
mod test_clock;
pub mod topic;
