//! Fleet-level gauges computed from the database, without a device id label: how many known
//! devices were last seen within an hour, within a day, or longer ago (for the offline alert),
//! how many report a battery below `[alerts] low_battery_v` (the low-battery alert), and the
//! bytes of the stored images (the storage-growth alert).

use std::time::Duration;

use deadpool_postgres::Pool;
use fleetflow_actors::metrics as m;

use crate::config::AlertsConfig;

/// One column per `bucket` label value, named after it.
const QUERY: &str = "SELECT count(*) FILTER (WHERE last_seen_at >= now() - interval '1 hour') AS lt_1h,
        count(*) FILTER (WHERE last_seen_at < now() - interval '1 hour' AND last_seen_at >= now() - interval '24 hours') AS \"1h_24h\",
        count(*) FILTER (WHERE last_seen_at < now() - interval '24 hours') AS gt_24h
 FROM devices";

/// Devices whose latest battery reading is below `$1` volts (no reading: not counted), and the
/// bytes of the stored images. The sum reads every stored `captures` row once per refresh.
const ALERT_QUERY: &str = "SELECT (SELECT count(*) FROM devices WHERE battery_v < $1) AS low_battery,
        (SELECT coalesce(sum(image_bytes), 0)::float8 FROM captures WHERE ingest_status = 'stored' AND deleted_at IS NULL) AS stored_bytes";

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
pub async fn refresh(pool: &Pool, alerts: &AlertsConfig) -> Result<(), StatsError> {
    let c = pool.get().await?;
    let r = c.query_one(QUERY, &[]).await?;
    for bucket in BUCKETS {
        let n: i64 = r.get(bucket);
        metrics::gauge!(m::DEVICES_LAST_SEEN, "bucket" => bucket).set(n as f64);
    }
    let r = c.query_one(ALERT_QUERY, &[&alerts.low_battery_v]).await?;
    let low: i64 = r.get("low_battery");
    // The threshold is the label's one value (it changes only with the config), so that the
    // alert can link to the same listing: `/api/v1/devices?battery_below={below_v}`.
    metrics::gauge!(m::DEVICES_LOW_BATTERY, "below_v" => alerts.low_battery_v.to_string())
        .set(low as f64);
    metrics::gauge!(m::CAPTURES_STORED_BYTES).set(r.get::<_, f64>("stored_bytes"));
    Ok(())
}

/// Refreshes the gauges every `every`, with the thresholds of `alerts`, until the task is
/// aborted.
pub fn spawn(pool: Pool, every: Duration, alerts: AlertsConfig) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut tick = tokio::time::interval(every);
        loop {
            tick.tick().await;
            if let Err(e) = refresh(&pool, &alerts).await {
                tracing::debug!(error = %e, "fleet stats not refreshed");
            }
        }
    })
}
