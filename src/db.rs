//! Postgres: the connection pool and the migrations in `migrations/`, applied under an advisory
//! lock so that several engine processes can start at once.

use std::str::FromStr;
use std::time::Duration;

use deadpool_postgres::{Manager, ManagerConfig, Pool, RecyclingMethod, Runtime};
use tokio_postgres::NoTls;

use crate::config::{redact_url, PostgresConfig};

mod embedded {
    refinery::embed_migrations!("migrations");
}

/// Database errors at startup.
#[derive(Debug, thiserror::Error)]
pub enum DbError {
    /// Bad URL.
    #[error("postgres.url is invalid: {0}")]
    Url(String),
    /// Could not connect.
    #[error("cannot connect to PostgreSQL at {url}: {source}")]
    Connect {
        /// Redacted URL.
        url: String,
        /// Cause.
        source: tokio_postgres::Error,
    },
    /// Pool build failure.
    #[error("cannot build the connection pool: {0}")]
    Pool(String),
    /// Migration failure.
    #[error("migration failed: {0}")]
    Migrate(String),
}

/// Builds the pool (connections are opened lazily).
pub fn pool(cfg: &PostgresConfig) -> Result<Pool, DbError> {
    let mut pg =
        tokio_postgres::Config::from_str(&cfg.url).map_err(|e| DbError::Url(e.to_string()))?;
    pg.connect_timeout(Duration::from_millis(cfg.connect_timeout_ms));
    pg.application_name("fleetflow");
    let mgr = Manager::from_config(
        pg,
        NoTls,
        ManagerConfig {
            recycling_method: RecyclingMethod::Fast,
        },
    );
    let timeout = Some(Duration::from_millis(cfg.connect_timeout_ms));
    Pool::builder(mgr)
        .max_size(cfg.pool_size)
        .runtime(Runtime::Tokio1)
        .wait_timeout(timeout)
        .create_timeout(timeout)
        .recycle_timeout(timeout)
        .build()
        .map_err(|e| DbError::Pool(e.to_string()))
}

/// Applies pending migrations; returns how many ran.
pub async fn migrate(cfg: &PostgresConfig) -> Result<usize, DbError> {
    let (mut client, conn) = tokio_postgres::connect(&cfg.url, NoTls)
        .await
        .map_err(|source| DbError::Connect {
            url: redact_url(&cfg.url),
            source,
        })?;
    let conn_task = tokio::spawn(async move {
        if let Err(e) = conn.await {
            tracing::warn!(error = %e, "migration connection ended");
        }
    });
    let lock = "SELECT pg_advisory_lock(727274)";
    client
        .batch_execute(lock)
        .await
        .map_err(|e| DbError::Migrate(e.to_string()))?;
    let report = embedded::migrations::runner()
        .run_async(&mut client)
        .await
        .map_err(|e| DbError::Migrate(e.to_string()));
    let _ = client
        .batch_execute("SELECT pg_advisory_unlock(727274)")
        .await;
    drop(client);
    let _ = conn_task.await;
    let report = report?;
    for m in report.applied_migrations() {
        tracing::info!(migration = %m, "applied migration");
    }
    Ok(report.applied_migrations().len())
}

pub use fleetflow_actors::pg_listen::listen;
