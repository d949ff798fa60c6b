//! The actor runtime's integration tests, in one binary (one link instead of one per file):
//! ack tokens, the dispatcher, the PostgreSQL sink against a real server, router placement.

mod common;

mod ack_token;
mod dispatcher;
mod pg_sink;
mod router_placement;
mod source_disconnect;
