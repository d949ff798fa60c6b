//! `fleetflow replay-dead-letters`: uploads images kept in the dead-letter directory and marks
//! their captures `stored`, removing each dead letter once both are done; then publishes the
//! dead-lettered messages of one source again (`messages`).
//!
//! - `messages`: the `dead_letters` table, republished through the broker.

mod messages;

pub use messages::replay_messages;

use fleetflow_actors::sinks::dead_letter::DeadLetterDir;
use object_store::path::Path;
use object_store::{ObjectStoreExt, PutPayload};
use tokio_postgres::NoTls;

use crate::config::Config;
use fleetflow_actors::sinks::object_store as objects;

/// What a replay did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    /// Uploaded and marked stored.
    pub replayed: usize,
    /// Still failing (left in place).
    pub failed: usize,
}

/// Replay failures that stop the whole run.
#[derive(Debug, thiserror::Error)]
pub enum ReplayError {
    /// Object store settings.
    #[error(transparent)]
    Objects(#[from] objects::ObjectsError),
    /// Database.
    #[error("postgres: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// Directory.
    #[error(transparent)]
    DeadLetter(#[from] fleetflow_actors::sinks::dead_letter::DeadLetterError),
    /// The `[mqtt]` settings.
    #[error("mqtt: {0}")]
    Mqtt(fleetflow_actors::source::SourceError),
}

/// Replays every dead-lettered image, then the dead-lettered messages of `source`.
pub async fn replay(cfg: &Config, source: &str) -> Result<ReplayReport, ReplayError> {
    let (client, conn) = tokio_postgres::connect(&cfg.postgres.url, NoTls).await?;
    tokio::spawn(async move {
        let _ = conn.await;
    });
    let images = replay_images(cfg, &client).await?;
    let messages = replay_messages(&cfg.mqtt, &client, source).await?;
    Ok(ReplayReport {
        replayed: images.replayed + messages.replayed,
        failed: images.failed + messages.failed,
    })
}

/// Replays the images of the dead-letter directory.
async fn replay_images(
    cfg: &Config,
    client: &tokio_postgres::Client,
) -> Result<ReplayReport, ReplayError> {
    let store = objects::build(&cfg.objects)?;
    let dir = DeadLetterDir::new(
        &cfg.objects.dead_letter_dir,
        cfg.objects.dead_letter_max_bytes,
    );
    let mut report = ReplayReport::default();
    for (meta, image) in dir.list()? {
        let bytes = match tokio::fs::read(&image).await {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(path = %image.display(), error = %e, "cannot read dead letter");
                report.failed += 1;
                continue;
            }
        };
        if let Err(e) = store
            .put(
                &Path::from(meta.object_key.as_str()),
                PutPayload::from(bytes),
            )
            .await
        {
            tracing::error!(key = %meta.object_key, error = %e, "replay upload failed; left in place");
            report.failed += 1;
            continue;
        }
        client
            .execute(
                "INSERT INTO captures (device_id, device_capture_id, captured_at, image_bytes, total_chunks, chunk_size, sha256, ingest_status, storage_path, stored_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, 'stored', $8, now())
                 ON CONFLICT (device_id, device_capture_id) DO UPDATE SET ingest_status = 'stored', storage_path = EXCLUDED.storage_path, stored_at = now()",
                &[
                    &meta.device_id,
                    &meta.capture_id,
                    &meta.captured_at,
                    &i64::from(meta.image_bytes),
                    &(meta.total_chunks as i32),
                    &(meta.chunk_size as i32),
                    &meta.sha256,
                    &meta.object_key,
                ],
            )
            .await?;
        dir.remove(&image)?;
        tracing::info!(device = %meta.device_id, capture = %meta.capture_id, "dead letter replayed");
        report.replayed += 1;
    }
    Ok(report)
}
