//! The envelope that carries a row to the Postgres sink with its broker ack and its durability
//! waiter.

use std::sync::Arc;

use tokio::sync::oneshot;

use super::SinkError;
use crate::link::AckToken;
pub use fleetflow_protocol::rows::*;

/// The outcome reported to whoever waits for a row to be durable.
pub type Durable = Result<(), RowNotStored>;

/// Why a row did not become durable.
#[derive(Debug, Clone, thiserror::Error)]
pub enum RowNotStored {
    /// Postgres refused the row for good (shared by every waiter of the failed write).
    #[error(transparent)]
    Rejected(Arc<SinkError>),
    /// The sink went away before answering.
    #[error("postgres sink dropped the row")]
    Dropped,
}

/// Two outcomes are equal when they are the same failure (one rejection) or both `Dropped`.
impl PartialEq for RowNotStored {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Self::Rejected(a), Self::Rejected(b)) => Arc::ptr_eq(a, b),
            (Self::Dropped, Self::Dropped) => true,
            _ => false,
        }
    }
}

/// A row on its way to the sink, with its broker ack and an optional waiter.
#[derive(Debug)]
pub struct PendingRow {
    /// The row.
    pub row: Row,
    /// Acked to the broker after commit.
    pub ack: Option<AckToken>,
    /// Told after commit (or permanent failure).
    pub done: Option<oneshot::Sender<Durable>>,
    /// The company that owns the device (its product's `company_id`), written with the row so
    /// that row-level security on `app.company_id` applies to it.
    pub company_id: Option<i64>,
}

impl PendingRow {
    /// A row with a broker ack and no waiter.
    pub fn new(row: Row, ack: Option<AckToken>) -> Self {
        Self {
            row,
            ack,
            done: None,
            company_id: None,
        }
    }

    /// The same row, owned by `company_id`.
    pub fn owned_by(mut self, company_id: Option<i64>) -> Self {
        self.company_id = company_id;
        self
    }
}
