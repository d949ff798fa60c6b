//! The object-storage sink actor: writes complete images through `object_store` with bounded
//! concurrency and retries, then hands the `captures` row to the Postgres sink and waits for it
//! to commit, so that the device actor sends ACK_OK only when both are durable.

use std::sync::Arc;
use std::time::{Duration, Instant as StdInstant};

use actix::prelude::*;
use chrono::Utc;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload};
use tokio::sync::{oneshot, Semaphore};

use super::dead_letter::DeadLetterDir;
use super::pg::PgSink;
use super::rows::{IngestStatus, PendingRow, Row, RowNotStored};
use crate::config::ObjectsConfig;
use crate::metrics as m;
use fleetflow_protocol::errors::ErrorCode;
use fleetflow_protocol::state_machine::{StoreOutcome, StoreRequest};

/// Store one image and its row (owned by the company, when known).
#[derive(Debug, Message)]
#[rtype(result = "StoreOutcome")]
pub struct Store(pub StoreRequest, pub Option<i64>);

/// The object sink.
pub struct ObjectSink {
    store: Arc<dyn ObjectStore>,
    pg: Addr<PgSink>,
    cfg: ObjectsConfig,
    permits: Arc<Semaphore>,
    dead_letters: DeadLetterDir,
    /// Store requests taken and not finished (uploading, waiting for a permit, or keeping a
    /// dead letter).
    outstanding: Arc<std::sync::atomic::AtomicUsize>,
}

/// Counts one store request as outstanding while it lives.
struct Outstanding(Arc<std::sync::atomic::AtomicUsize>);

impl Outstanding {
    fn new(n: &Arc<std::sync::atomic::AtomicUsize>) -> Self {
        n.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        Self(n.clone())
    }
}

impl Drop for Outstanding {
    fn drop(&mut self) {
        self.0.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Waits (up to the duration) until no store request is outstanding; answers whether none is.
/// Shutdown uses it so that images being uploaded finish before the engine stops.
#[derive(Message)]
#[rtype(result = "bool")]
pub struct WaitIdle(pub Duration);

impl Handler<WaitIdle> for ObjectSink {
    type Result = ResponseFuture<bool>;

    fn handle(&mut self, WaitIdle(within): WaitIdle, _ctx: &mut Self::Context) -> Self::Result {
        let n = self.outstanding.clone();
        Box::pin(async move {
            let deadline = tokio::time::Instant::now() + within;
            loop {
                if n.load(std::sync::atomic::Ordering::Acquire) == 0 {
                    return true;
                }
                if tokio::time::Instant::now() >= deadline {
                    return false;
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        })
    }
}

impl ObjectSink {
    /// A sink writing to `store`, and rows to `pg`.
    pub fn new(store: Arc<dyn ObjectStore>, pg: Addr<PgSink>, cfg: ObjectsConfig) -> Self {
        let permits = Arc::new(Semaphore::new(cfg.upload_concurrency.max(1)));
        let dead_letters = DeadLetterDir::new(&cfg.dead_letter_dir, cfg.dead_letter_max_bytes);
        Self {
            store,
            pg,
            cfg,
            permits,
            dead_letters,
            outstanding: Arc::default(),
        }
    }
}

impl Actor for ObjectSink {
    type Context = Context<Self>;

    fn started(&mut self, ctx: &mut Self::Context) {
        ctx.set_mailbox_capacity(self.cfg.mailbox_capacity);
    }
}

impl Handler<Store> for ObjectSink {
    type Result = ResponseFuture<StoreOutcome>;

    fn handle(&mut self, Store(req, company): Store, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        let pg = self.pg.clone();
        let permits = self.permits.clone();
        let attempts = self.cfg.upload_attempts.max(1);
        let backoff = Duration::from_millis(self.cfg.upload_backoff_ms);
        let dead_letters = self.dead_letters.clone();
        let outstanding = Outstanding::new(&self.outstanding);
        Box::pin(async move {
            let _outstanding = outstanding;
            let upload = {
                let _permit = permits.acquire().await;
                upload(&*store, &req, attempts, backoff).await
            };
            if let Err(reason) = &upload {
                // Keep the bytes so that an admin can replay them; never just throw them away.
                let (dl, r, reason) = (dead_letters, req.clone(), reason.to_string());
                match tokio::task::spawn_blocking(move || dl.put(&r, &reason)).await {
                    Ok(Ok(path)) => {
                        tracing::warn!(device = %req.device_id, capture = %req.capture_id, path = %path.display(), "upload failed after retries; image kept in the dead-letter directory")
                    }
                    Ok(Err(e)) => {
                        tracing::error!(device = %req.device_id, capture = %req.capture_id, error = %e, "upload failed after retries and the image could not be dead-lettered; the device keeps it")
                    }
                    Err(e) => tracing::error!(error = %e, "dead-letter task failed"),
                }
            }
            let (status, stored_at) = match &upload {
                Ok(()) => (IngestStatus::Stored, Some(Utc::now())),
                Err(_) => (IngestStatus::Failed, None),
            };
            let (tx, rx) = oneshot::channel();
            let pending = PendingRow {
                row: Row::Capture(req.row(status, stored_at)),
                ack: None,
                done: Some(tx),
                company_id: company,
            };
            if pg.send(pending).await.is_err() {
                return StoreOutcome::Failed {
                    reason: "postgres sink unavailable".into(),
                    code: ErrorCode::FinaliseFailed,
                };
            }
            let committed = rx.await.unwrap_or(Err(RowNotStored::Dropped));
            match (upload, committed) {
                (Ok(()), Ok(())) => {
                    metrics::histogram!(m::CAPTURE_E2E_SECONDS)
                        .record(req.completed_at.elapsed().as_secs_f64());
                    StoreOutcome::Stored {
                        stored_at: stored_at.unwrap_or_else(Utc::now),
                    }
                }
                (Err(e), _) => StoreOutcome::Failed {
                    reason: e.to_string(),
                    code: ErrorCode::StorageFailed,
                },
                (Ok(()), Err(e)) => StoreOutcome::Failed {
                    reason: format!("captures row: {e}"),
                    code: ErrorCode::CaptureRowFailed,
                },
            }
        })
    }
}

/// An upload that failed on every attempt; shows the last attempt's error.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct UploadFailed(#[source] object_store::Error);

/// Puts the image at its object key, retrying with a doubling delay; the last error after
/// `attempts` failures.
async fn upload(
    store: &dyn ObjectStore,
    req: &StoreRequest,
    attempts: u32,
    backoff: Duration,
) -> Result<(), UploadFailed> {
    let path = Path::from(req.object_key());
    let started = StdInstant::now();
    let mut delay = backoff;
    let mut attempt = 1;
    loop {
        // `Bytes` clone: a reference count, not a copy of the image.
        match store
            .put(&path, PutPayload::from_bytes(req.image.clone()))
            .await
        {
            Ok(_) => {
                metrics::counter!(m::OBJECTS_UPLOADED_TOTAL).increment(1);
                metrics::counter!(m::OBJECTS_BYTES_TOTAL).increment(req.image.len() as u64);
                metrics::histogram!(m::OBJECT_UPLOAD_SECONDS)
                    .record(started.elapsed().as_secs_f64());
                return Ok(());
            }
            Err(e) => {
                tracing::warn!(device = %req.device_id, capture = %req.capture_id, attempt, error = %e, "object upload failed");
                if attempt >= attempts {
                    metrics::counter!(m::OBJECT_FAILURES_TOTAL).increment(1);
                    return Err(UploadFailed(e));
                }
                metrics::counter!(m::SINK_RETRIES_TOTAL, "sink" => "objects").increment(1);
                tokio::time::sleep(delay).await;
                delay *= 2;
                attempt += 1;
            }
        }
    }
}

/// Replaces the sink's object-store client (`sink:objects` restart). Uploads in flight finish
/// on the client they hold.
#[derive(Message)]
#[rtype(result = "()")]
pub struct ReplaceStore(pub Arc<dyn ObjectStore>);

impl Handler<ReplaceStore> for ObjectSink {
    type Result = ();

    fn handle(&mut self, msg: ReplaceStore, _ctx: &mut Self::Context) {
        self.store = msg.0;
        tracing::info!("object sink: store client replaced");
    }
}

/// A round trip through the sink's store: write, read back and delete a small object under
/// `_fleetflow/health/`. Answers the time it took.
#[derive(Debug, Message)]
#[rtype(result = "Result<Duration, StoreProbeError>")]
pub struct ProbeStore;

/// Why the object sink's probe failed.
#[derive(Debug, thiserror::Error)]
pub enum StoreProbeError {
    /// Writing the probe object failed.
    #[error("write: {0}")]
    Write(#[source] object_store::Error),
    /// Reading it back failed.
    #[error("read: {0}")]
    Read(#[source] object_store::Error),
    /// It read back different bytes.
    #[error("read back different bytes")]
    Mismatch,
}

impl Handler<ProbeStore> for ObjectSink {
    type Result = ResponseFuture<Result<Duration, StoreProbeError>>;

    fn handle(&mut self, _: ProbeStore, _ctx: &mut Self::Context) -> Self::Result {
        let store = self.store.clone();
        Box::pin(async move {
            let started = StdInstant::now();
            let path = Path::from(format!(
                "_fleetflow/health/{}",
                Utc::now().timestamp_nanos_opt().unwrap_or_default()
            ));
            let body = bytes::Bytes::from_static(b"fleetflow health probe");
            store
                .put(&path, PutPayload::from_bytes(body.clone()))
                .await
                .map_err(StoreProbeError::Write)?;
            let got = store
                .get(&path)
                .await
                .map_err(StoreProbeError::Read)?
                .bytes()
                .await
                .map_err(StoreProbeError::Read)?;
            let _ = store.delete(&path).await;
            if got != body {
                return Err(StoreProbeError::Mismatch);
            }
            Ok(started.elapsed())
        })
    }
}
