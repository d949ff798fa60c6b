//! Fleet-level gauges computed from the database, without a device id label: how many known
//! devices were last seen within an hour, within a day, or longer ago (for the offline alert).

use std::time::Duration;

use deadpool_postgres::Pool;
use fleetflow_actors::metrics as m;

/// One column per `bucket` label value, named after it.
const QUERY: &str = "SELECT count(*) FILTER (WHERE last_seen_at >= now() - interval '1 hour') AS lt_1h,
        count(*) FILTER (WHERE last_seen_at < now() - interval '1 hour' AND last_seen_at >= now() - interval '24 hours') AS \"1h_24h\",
        count(*) FILTER (WHERE last_seen_at < now() - interval '24 hours') AS gt_24h
 FROM devices";

/// The gauge's `bucket` label values.
const BUCKETS: [&str; 3] = ["lt_1h", "1h_24h", "gt_24h"];

/// Why the gauges were not refreshed.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    /// No connection from the pool.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// The query failed.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// Refreshes the gauges once.
pub async fn refresh(pool: &Pool) -> Result<(), StatsError> {
    let c = pool.get().await?;
    let r = c.query_one(QUERY, &[]).await?;
    for bucket in BUCKETS {
        let n: i64 = r.get(bucket);
        metrics::gauge!(m::DEVICES_LAST_SEEN, "bucket" => bucket).set(n as f64);
    }
    Ok(())
}

/// Refreshes the gauges every `every` until the task is aborted.
pub fn spawn(pool: Pool, every: Duration) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = refresh(&pool).await {
                tracing::debug!(error = %e, "fleet stats not refreshed");
            }
        }
    })
}
