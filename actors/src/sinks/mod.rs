//! Sinks: permanent children that make data durable.
//!
//! - `rows`: the row types per table.
//! - `pg`: the Postgres sink actor (batching, retries, acks after commit).
//! - `pg_write`: one-round-trip batch statements per table.
//! - `objects`: the object-storage sink actor.
//! - `object_store`: builds the store it writes to from `[objects]` (local filesystem or S3).
//! - `signer`: signs object URLs (presigned GETs) when the store is S3.
//! - `dead_letter`: images kept on disk when every upload attempt failed.
//!
//! Retry rules: Postgres connection, pool and transient server errors are retried with backoff
//! until they succeed (the broker holds what is not acknowledged); permanent errors (a row the
//! schema refuses) are retried row by row, the bad rows counted and rejected. Object uploads are
//! retried `upload_attempts` times, then the capture fails with 2204.

pub mod dead_letter;
pub mod object_store;
pub mod objects;
pub mod pg;
pub mod pg_write;
pub mod rows;
pub mod signer;

/// A sink error, classified for the retry rule when it is built (from the Postgres error or
/// the pool's), keeping that error as its source.
#[derive(Debug, thiserror::Error)]
pub enum SinkError {
    /// Worth retrying: connection lost, pool exhausted, server shutting down, serialization.
    #[error("retriable: {0}")]
    Retriable(#[source] SinkCause),
    /// Retrying the same rows cannot help.
    #[error("permanent: {0}")]
    Permanent(#[source] SinkCause),
}

/// What made a sink write fail.
#[derive(Debug, thiserror::Error)]
pub enum SinkCause {
    /// Postgres answered with an error, or the connection failed. Shown as `SQLSTATE: message`
    /// for a server error.
    #[error("{}", postgres_detail(.0))]
    Postgres(#[source] tokio_postgres::Error),
    /// The pool had no connection to give (timeout, closed, hook failure).
    #[error("{0}")]
    Pool(#[source] deadpool_postgres::PoolError),
}

/// A Postgres error as `SQLSTATE: message` when the server sent it, else its own text.
fn postgres_detail(e: &tokio_postgres::Error) -> String {
    match e.as_db_error() {
        Some(db) => format!("{}: {}", db.code().code(), db.message()),
        None => format!("{e}"),
    }
}

impl SinkError {
    /// Whether the write should be retried.
    pub fn is_retriable(&self) -> bool {
        matches!(self, SinkError::Retriable(_))
    }
}

impl From<tokio_postgres::Error> for SinkError {
    fn from(e: tokio_postgres::Error) -> Self {
        let retriable = match e.code() {
            None => true,
            Some(code) => {
                let c = code.code();
                c.starts_with("08")
                    || c.starts_with("53")
                    || c.starts_with("57")
                    || c == "40001"
                    || c == "40P01"
                    || c.starts_with("58")
            }
        };
        if retriable {
            SinkError::Retriable(SinkCause::Postgres(e))
        } else {
            SinkError::Permanent(SinkCause::Postgres(e))
        }
    }
}

impl From<deadpool_postgres::PoolError> for SinkError {
    fn from(e: deadpool_postgres::PoolError) -> Self {
        match e {
            deadpool_postgres::PoolError::Backend(e) => e.into(),
            other => SinkError::Retriable(SinkCause::Pool(other)),
        }
    }
}
