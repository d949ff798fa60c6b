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

/// Listens on a Postgres notification `channel` and signals `wake` on each notification,
/// reconnecting after any failure until the task is aborted. Signals are coalesced (a full
/// `wake` channel means a wake-up is already pending), so the queue stays bounded.
pub async fn listen(pg_url: String, channel: &'static str, wake: tokio::sync::mpsc::Sender<()>) {
    use futures::StreamExt;
    loop {
        match tokio_postgres::connect(&pg_url, NoTls).await {
            Ok((client, mut conn)) => {
                let tx = wake.clone();
                let driver = tokio::spawn(async move {
                    let mut messages = futures::stream::poll_fn(move |cx| conn.poll_message(cx));
                    while let Some(m) = messages.next().await {
                        match m {
                            Ok(tokio_postgres::AsyncMessage::Notification(_)) => {
                                let _ = tx.try_send(());
                            }
                            Ok(_) => {}
                            Err(e) => {
                                tracing::warn!(error = %e, channel, "LISTEN connection failed");
                                break;
                            }
                        }
                    }
                });
                match client.batch_execute(&format!("LISTEN {channel}")).await {
                    // A reconnect may have missed notifications: wake the consumer once.
                    Ok(()) => {
                        let _ = wake.try_send(());
                        let _ = driver.await;
                    }
                    Err(e) => {
                        tracing::warn!(error = %e, channel, "LISTEN failed");
                        driver.abort();
                    }
                }
            }
            Err(e) => tracing::debug!(error = %e, channel, "LISTEN connection failed"),
        }
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
    }
}
