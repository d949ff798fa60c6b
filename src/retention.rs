//! Retention (`[retention]`, off by default): every `interval_secs`, in batches of
//! `batch_rows`, deletes what is older than its setting's number of days.
//!
//! - **Captures** (`captures_days`): the image of a stored capture (`storage_path`) and its
//!   cached thumbnail (`thumbnails/{device_id}/{capture_id}.jpg`) are deleted from object
//!   storage, then the row is marked (`deleted_at`); the row itself is kept and nothing else in
//!   it changes. Objects are deleted before the row is marked, so a crash in between leaves an
//!   unmarked row whose object is gone: the next round picks it again, and an object already
//!   missing counts as deleted. A capture that is not `stored`, or already marked, is never
//!   touched. A capture whose delete failed stays unmarked and is retried next round.
//! - **Rows** (`readings_days`, `device_errors_days`, `publish_log_days`): `sensor_readings`,
//!   `device_errors` and `device_publish_log` rows are deleted.
//!
//! Ages count from when the engine wrote the row (`created_at`, `occurred_at`, `received_at`),
//! against the database's clock, never from a device's clock. Each batch is picked with
//! `FOR UPDATE SKIP LOCKED` in its own transaction (for captures, held while their objects are
//! deleted), so several engines on one database share the work and never handle the same row
//! twice. Each batch adds to
//! `fleetflow_retention_deleted_total{kind}`; each round is logged.

use std::sync::Arc;
use std::time::Instant;

use deadpool_postgres::Pool;
use fleetflow_actors::metrics as m;
use futures::StreamExt;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt};
use tokio::task::JoinHandle;

use crate::config::RetentionConfig;

/// Object deletes in flight at once within a batch.
const DELETE_CONCURRENCY: usize = 16;

/// A batch of captures whose images are due: locked until the transaction ends.
const PICK_CAPTURES: &str = "SELECT id, device_id, device_capture_id, storage_path FROM captures
 WHERE ingest_status = 'stored' AND deleted_at IS NULL
   AND created_at < now() - make_interval(days => $1)
 ORDER BY created_at LIMIT $2
 FOR UPDATE SKIP LOCKED";

/// Marks the captures whose objects are gone.
const MARK_CAPTURES: &str = "UPDATE captures SET deleted_at = now() WHERE id = ANY($1)";

/// A table whose old rows are deleted, one batch per statement.
struct TableRule {
    /// The `kind` label value.
    kind: &'static str,
    /// Deletes at most `$2` rows older than `$1` days; skips rows another engine holds.
    sql: &'static str,
    /// The setting that turns it on.
    days: fn(&RetentionConfig) -> Option<std::num::NonZeroU16>,
}

const TABLES: [TableRule; 3] = [
    TableRule {
        kind: "readings",
        sql: "WITH doomed AS (SELECT id FROM sensor_readings
                WHERE created_at < now() - make_interval(days => $1)
                LIMIT $2 FOR UPDATE SKIP LOCKED)
              DELETE FROM sensor_readings t USING doomed WHERE t.id = doomed.id",
        days: |c| c.readings_days,
    },
    TableRule {
        kind: "device_errors",
        sql: "WITH doomed AS (SELECT id FROM device_errors
                WHERE occurred_at < now() - make_interval(days => $1)
                ORDER BY occurred_at LIMIT $2 FOR UPDATE SKIP LOCKED)
              DELETE FROM device_errors t USING doomed WHERE t.id = doomed.id",
        days: |c| c.device_errors_days,
    },
    TableRule {
        kind: "publish_log",
        sql: "WITH doomed AS (SELECT id FROM device_publish_log
                WHERE received_at < now() - make_interval(days => $1)
                LIMIT $2 FOR UPDATE SKIP LOCKED)
              DELETE FROM device_publish_log t USING doomed WHERE t.id = doomed.id",
        days: |c| c.publish_log_days,
    },
];

/// Why a batch failed (the round goes on with the next kind; the next round retries).
#[derive(Debug, thiserror::Error)]
pub enum RetentionError {
    /// No connection from the pool.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A statement failed.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
}

/// What one round did, per kind.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct RoundReport {
    /// Captures whose image is gone and whose row was marked.
    pub capture_objects: u64,
    /// `sensor_readings` rows deleted.
    pub readings: u64,
    /// `device_errors` rows deleted.
    pub device_errors: u64,
    /// `device_publish_log` rows deleted.
    pub publish_log: u64,
    /// Object deletes and batches that failed (retried next round).
    pub failures: u64,
}

impl RoundReport {
    fn add(&mut self, kind: &str, n: u64) {
        match kind {
            "capture_objects" => self.capture_objects += n,
            "readings" => self.readings += n,
            "device_errors" => self.device_errors += n,
            _ => self.publish_log += n,
        }
    }
}

/// The retention task's state: where to delete, and what.
#[derive(Clone)]
pub struct Retention {
    /// The tables.
    pool: Pool,
    /// The images and their cached thumbnails.
    store: Arc<dyn ObjectStore>,
    /// The settings.
    cfg: RetentionConfig,
}

/// Starts the retention task when any `*_days` is set: a round at once, then one every
/// `interval_secs`, until the task is aborted. `None` (and a log line) when retention is off.
pub fn spawn(
    pool: Pool,
    store: Arc<dyn ObjectStore>,
    cfg: RetentionConfig,
) -> Option<JoinHandle<()>> {
    if !cfg.is_enabled() {
        tracing::debug!("retention is off: no [retention] *_days set");
        return None;
    }
    tracing::info!(
        captures_days = cfg.captures_days.map(|d| d.get()),
        readings_days = cfg.readings_days.map(|d| d.get()),
        device_errors_days = cfg.device_errors_days.map(|d| d.get()),
        publish_log_days = cfg.publish_log_days.map(|d| d.get()),
        batch_rows = cfg.batch_rows.get(),
        interval_secs = cfg.interval_secs.get(),
        "retention on"
    );
    let every = cfg.interval();
    let r = Retention::new(pool, store, cfg);
    Some(tokio::spawn(async move {
        loop {
            r.round().await;
            // `sleep` saturates a huge interval instead of overflowing the clock.
            tokio::time::sleep(every).await;
        }
    }))
}

impl Retention {
    /// Retention over `pool` and `store` with these settings.
    pub fn new(pool: Pool, store: Arc<dyn ObjectStore>, cfg: RetentionConfig) -> Self {
        Self { pool, store, cfg }
    }

    /// One round: every kind that has a setting, batch after batch until none is full. A kind
    /// whose batch fails is left for the next round; the others go on. Logged, and returned.
    pub async fn round(&self) -> RoundReport {
        let started = Instant::now();
        let mut report = RoundReport::default();
        if let Some(days) = self.cfg.captures_days {
            self.captures(i32::from(days.get()), &mut report).await;
        }
        for rule in &TABLES {
            if let Some(days) = (rule.days)(&self.cfg) {
                self.table(rule, i32::from(days.get()), &mut report).await;
            }
        }
        let elapsed_ms = started.elapsed().as_millis() as u64;
        if report == RoundReport::default() {
            // Most rounds find nothing; with a short interval an info line each would drown
            // the log.
            tracing::debug!(elapsed_ms, "retention round: nothing to delete");
        } else {
            tracing::info!(
                capture_objects = report.capture_objects,
                readings = report.readings,
                device_errors = report.device_errors,
                publish_log = report.publish_log,
                failures = report.failures,
                elapsed_ms,
                "retention round"
            );
        }
        report
    }

    fn batch_rows(&self) -> i64 {
        i64::from(self.cfg.batch_rows.get())
    }

    /// Captures' images, batch by batch, until a batch is not full or made no progress.
    async fn captures(&self, days: i32, report: &mut RoundReport) {
        const KIND: &str = "capture_objects";
        loop {
            match self.capture_batch(days).await {
                Ok(b) => {
                    metrics::counter!(m::RETENTION_DELETED_TOTAL, "kind" => KIND)
                        .increment(b.marked);
                    metrics::counter!(m::RETENTION_FAILURES_TOTAL, "kind" => KIND)
                        .increment(b.failed);
                    report.add(KIND, b.marked);
                    report.failures += b.failed;
                    // A batch where every delete failed would come back the same: stop.
                    if b.picked < self.batch_rows() || b.marked == 0 {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = KIND, "retention batch failed; retried next round");
                    metrics::counter!(m::RETENTION_FAILURES_TOTAL, "kind" => KIND).increment(1);
                    report.failures += 1;
                    return;
                }
            }
        }
    }

    /// One batch of captures: pick and lock, delete their objects, mark the ones that are
    /// gone, commit. The locks keep another engine off these rows meanwhile.
    async fn capture_batch(&self, days: i32) -> Result<CaptureBatch, RetentionError> {
        let mut c = self.pool.get().await?;
        let tx = c.transaction().await?;
        let rows = tx
            .query(PICK_CAPTURES, &[&days, &self.batch_rows()])
            .await?;
        let picked = rows.len() as i64;
        let due: Vec<DueCapture> = rows
            .iter()
            .map(|r| DueCapture {
                id: r.get("id"),
                device: r.get("device_id"),
                capture: r.get("device_capture_id"),
                path: r.get("storage_path"),
            })
            .collect();
        let gone: Vec<Option<i64>> = futures::stream::iter(due)
            .map(|d| delete_capture_objects(self.store.clone(), d))
            .buffer_unordered(DELETE_CONCURRENCY)
            .collect()
            .await;
        let ids: Vec<i64> = gone.iter().flatten().copied().collect();
        let failed = gone.len() as u64 - ids.len() as u64;
        if !ids.is_empty() {
            tx.execute(MARK_CAPTURES, &[&ids]).await?;
        }
        tx.commit().await?;
        Ok(CaptureBatch {
            picked,
            marked: ids.len() as u64,
            failed,
        })
    }

    /// A table's old rows, batch by batch, until a batch is not full.
    async fn table(&self, rule: &TableRule, days: i32, report: &mut RoundReport) {
        loop {
            let deleted = async {
                let c = self.pool.get().await?;
                Ok::<_, RetentionError>(c.execute(rule.sql, &[&days, &self.batch_rows()]).await?)
            }
            .await;
            match deleted {
                Ok(n) => {
                    metrics::counter!(m::RETENTION_DELETED_TOTAL, "kind" => rule.kind).increment(n);
                    report.add(rule.kind, n);
                    if (n as i64) < self.batch_rows() {
                        return;
                    }
                }
                Err(e) => {
                    tracing::warn!(error = %e, kind = rule.kind, "retention batch failed; retried next round");
                    metrics::counter!(m::RETENTION_FAILURES_TOTAL, "kind" => rule.kind)
                        .increment(1);
                    report.failures += 1;
                    return;
                }
            }
        }
    }
}

/// What one batch of captures did.
struct CaptureBatch {
    /// Rows picked (a full batch means there may be more).
    picked: i64,
    /// Captures whose objects are gone, their rows marked.
    marked: u64,
    /// Captures whose objects could not all be deleted (left unmarked).
    failed: u64,
}

/// A capture whose image is due.
struct DueCapture {
    /// `captures.id`, to mark it.
    id: i64,
    /// Its device.
    device: String,
    /// The device's capture id (names the cached thumbnail).
    capture: String,
    /// The image's key.
    path: Option<String>,
}

/// Deletes a capture's image, then its cached thumbnail; its id when both are gone. The image
/// goes first: once it is gone, no thumbnail can be made from it again.
async fn delete_capture_objects(store: Arc<dyn ObjectStore>, d: DueCapture) -> Option<i64> {
    let image = d.path.map(|p| Path::from(p.as_str()));
    let thumb = Path::from(format!("thumbnails/{}/{}.jpg", d.device, d.capture));
    for p in image.iter().chain(std::iter::once(&thumb)) {
        if let Err(e) = delete_object(&*store, p).await {
            tracing::warn!(error = %e, path = %p, "retention: object not deleted; retried next round");
            return None;
        }
    }
    Some(d.id)
}

/// Deletes one object; one that is already missing counts as deleted (the local filesystem
/// says so, S3 does not).
async fn delete_object(store: &dyn ObjectStore, path: &Path) -> Result<(), object_store::Error> {
    match store.delete(path).await {
        Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
        Err(e) => Err(e),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use object_store::local::LocalFileSystem;
    use object_store::path::Path;
    use object_store::{ObjectStoreExt, PutPayload};

    #[tokio::test]
    async fn an_object_already_missing_counts_as_deleted() {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(LocalFileSystem::new_with_prefix(dir.path()).unwrap());
        let p = Path::from("captures/AABBCCDDEEFF/img_1.jpg");
        store
            .put(&p, PutPayload::from_static(b"\xff\xd8\xff\xd9"))
            .await
            .unwrap();
        super::delete_object(&*store, &p).await.unwrap();
        assert!(store.head(&p).await.is_err(), "the object is gone");
        super::delete_object(&*store, &p).await.unwrap();
    }
}
