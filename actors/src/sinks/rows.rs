//! The envelope that carries a row to the Postgres sink with its broker ack and its durability
//! waiter.

use tokio::sync::oneshot;

use crate::link::AckToken;
pub use fleetflow_protocol::rows::*;

/// The outcome reported to whoever waits for a row to be durable.
pub type Durable = Result<(), String>;

/// A row on its way to the sink, with its broker ack and an optional waiter.
#[derive(Debug)]
pub struct PendingRow {
    /// The row.
    pub row: Row,
    /// Acked to the broker after commit.
    pub ack: Option<AckToken>,
    /// Told after commit (or permanent failure).
    pub done: Option<oneshot::Sender<Durable>>,
}

impl PendingRow {
    /// A row with a broker ack and no waiter.
    pub fn new(row: Row, ack: Option<AckToken>) -> Self {
        Self {
            row,
            ack,
            done: None,
        }
    }
}
