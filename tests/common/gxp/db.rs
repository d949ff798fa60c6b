//! Queries on the rows a GXP capture or command leaves behind, with waits for batched writes.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::common::{eventually, TestEnv};

/// How long a row may take to appear.
const T: Duration = Duration::from_secs(30);

/// The `captures` row of one image.
#[derive(Debug, Clone, PartialEq)]
pub struct CaptureRow {
    /// `ingest_status`: assembling, stored or failed.
    pub status: String,
    /// `image_bytes`.
    pub image_bytes: i64,
    /// `total_chunks`.
    pub total_chunks: i32,
    /// `chunk_size`.
    pub chunk_size: i32,
    /// `storage_path`, the object key.
    pub storage_path: Option<String>,
    /// `captured_at`.
    pub captured_at: DateTime<Utc>,
}

/// The `captures` row of `id`'s image `name`, if any.
pub async fn capture_row(env: &TestEnv, id: &str, name: &str) -> Option<CaptureRow> {
    let r = env
        .db()
        .await
        .query_opt(
            "SELECT ingest_status, image_bytes, total_chunks, chunk_size, storage_path, captured_at FROM captures WHERE device_id = $1 AND device_capture_id = $2",
            &[&id, &name],
        )
        .await
        .unwrap()?;
    Some(CaptureRow {
        status: r.get(0),
        image_bytes: r.get(1),
        total_chunks: r.get(2),
        chunk_size: r.get(3),
        storage_path: r.get(4),
        captured_at: r.get(5),
    })
}

/// Waits for the capture row of `name` to reach `status`.
pub async fn wait_capture(env: &TestEnv, id: &str, name: &str, status: &str) -> CaptureRow {
    eventually(
        T,
        &format!("captures row {id}/{name} '{status}'"),
        || async {
            capture_row(env, id, name)
                .await
                .filter(|r| r.status == status)
        },
    )
    .await
}

/// Waits for a `device_errors` row of `code` for `id`; returns its message.
pub async fn wait_error(env: &TestEnv, id: &str, code: i32, within: Duration) -> String {
    eventually(within, &format!("device_errors {code} for {id}"), || async {
        env.db()
            .await
            .query_opt(
                "SELECT message FROM device_errors WHERE device_id = $1 AND error_code = $2 LIMIT 1",
                &[&id, &code],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, String>(0))
    })
    .await
}

/// The sensor snapshot of a capture: temperature, humidity, pressure, gas (kΩ).
pub type Snapshot = (Option<f64>, Option<f64>, Option<f64>, Option<f64>);

/// The `sensor_readings` row of the capture `name` (there is at most one).
pub async fn snapshot(env: &TestEnv, id: &str, name: &str) -> Option<Snapshot> {
    let rows = env
        .db()
        .await
        .query(
            "SELECT temperature_c, humidity_pct, pressure_hpa, gas_kohm FROM sensor_readings WHERE device_id = $1 AND capture_id = $2",
            &[&id, &name],
        )
        .await
        .unwrap();
    assert!(
        rows.len() <= 1,
        "one snapshot per capture, got {}",
        rows.len()
    );
    rows.first()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

/// Waits for the sensor snapshot of the capture `name`.
pub async fn wait_snapshot(env: &TestEnv, id: &str, name: &str) -> Snapshot {
    eventually(T, &format!("the sensor snapshot of {id}/{name}"), || {
        snapshot(env, id, name)
    })
    .await
}

/// Inserts a command row by plain SQL, as the worker's operators did.
pub async fn insert_command(env: &TestEnv, id: &str, name: &str, args: &str) {
    env.db()
        .await
        .execute(
            "INSERT INTO device_commands (device_id, name, args, status) VALUES ($1, $2, $3::text::jsonb, 'queued')",
            &[&id, &name, &args],
        )
        .await
        .unwrap_or_else(|e| panic!("insert {name} for {id}: {e}"));
}

/// Waits until `n` command rows of `id` are `sent` with a `sent_at`.
pub async fn wait_all_sent(env: &TestEnv, id: &str, n: i64) {
    eventually(Duration::from_secs(5), "the command rows marked sent", || async {
        let sent = env
            .scalar_i64(&format!(
                "SELECT count(*) FROM device_commands WHERE device_id = '{id}' AND status = 'sent' AND sent_at IS NOT NULL"
            ))
            .await;
        (sent == n).then_some(())
    })
    .await;
}
