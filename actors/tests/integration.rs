//! The actor runtime's integration tests, in one binary (one link instead of one per file):
//! ack tokens, the dispatcher, an idle device's memory, the PostgreSQL sink against a real server, router placement.

mod common;

/// Counts live heap bytes (see `idle_memory`).
#[global_allocator]
static ALLOC: common::alloc_count::Counting = common::alloc_count::Counting;

mod ack_token;
mod dispatcher;
mod idle_memory;
mod pg_sink;
mod router_placement;
mod source_disconnect;
