//! Fleet-level gauges computed from the database, without a device id label: how many known
//! devices were last seen within an hour, within a day, or longer ago (for the offline alert).

use std::time::Duration;

use deadpool_postgres::Pool;
use fleetflow_actors::metrics as m;

const QUERY: &str = "SELECT count(*) FILTER (WHERE last_seen_at >= now() - interval '1 hour'),
        count(*) FILTER (WHERE last_seen_at < now() - interval '1 hour' AND last_seen_at >= now() - interval '24 hours'),
        count(*) FILTER (WHERE last_seen_at < now() - interval '24 hours')
 FROM devices";

/// Refreshes the gauges once.
pub async fn refresh(pool: &Pool) -> Result<(), String> {
    let c = pool.get().await.map_err(|e| e.to_string())?;
    let r = c.query_one(QUERY, &[]).await.map_err(|e| e.to_string())?;
    for (i, bucket) in ["lt_1h", "1h_24h", "gt_24h"].into_iter().enumerate() {
        let n: i64 = r.get(i);
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
