//! The restarter: executes a [`RestartTarget`], checks the health of what it rebuilt, and
//! records the outcome on the request's `service_restart_requests` row (the audit trail). The
//! worker claims `pending` rows with `FOR UPDATE SKIP LOCKED`, so each row moves through its
//! statuses exactly once even with several engines; it wakes on
//! `LISTEN fleetflow_restart_requests` and also polls.

use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use fleetflow_actors::pipeline::{Pipeline, PipelineError};
use fleetflow_actors::sinks::object_store::{self, ObjectsError};
use fleetflow_protocol::ids::DeviceId;
use serde_json::{json, Value};

use super::target::RestartTarget;
use crate::config::{ObjectsConfig, PostgresConfig};

const CLAIM: &str = "UPDATE service_restart_requests SET status = 'running', started_at = now()
 WHERE id = (SELECT id FROM service_restart_requests WHERE status = 'pending' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
 RETURNING id, target";
/// Rows left `running` by an engine that stopped mid-restart (no restart takes this long; a row
/// another engine is still running is younger).
const ABANDONED: &str = "UPDATE service_restart_requests SET status = 'failed', completed_at = now(),
   result = COALESCE(result, '{}'::jsonb) || '{\"error\": \"abandoned: the engine running it stopped\"}'::jsonb
 WHERE status = 'running' AND started_at < now() - interval '10 minutes'";
const FINISH: &str = "UPDATE service_restart_requests SET status = $2, completed_at = now(), result = $3 WHERE id = $1 AND status = 'running'";

/// How long a restarted device actor has to answer its health check.
const DEVICE_ANSWER: Duration = Duration::from_secs(5);
/// How long the device actors' drain and the Postgres sink's flush may each take in `pipeline`.
const PIPELINE_STEP: Duration = Duration::from_secs(30);

/// How a restart ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done and healthy.
    Completed,
    /// Tried and unhealthy.
    Failed,
    /// Not executable here.
    Rejected,
}

impl Outcome {
    /// The status text.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Completed => "completed",
            Self::Failed => "failed",
            Self::Rejected => "rejected",
        }
    }
}

/// Why restart rows could not be claimed or their outcome recorded.
#[derive(Debug, thiserror::Error)]
pub enum RestartError {
    /// No connection from the pool.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
    /// A query failed.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// The task running the restart panicked or was cancelled.
    #[error("restart task: {0}")]
    Task(#[from] tokio::task::JoinError),
}

/// Why a sink failed its rebuild or its health check (shown in the row's `result.error`).
#[derive(Debug, thiserror::Error)]
enum SinkCheckError {
    /// A new Postgres pool could not be built.
    #[error(transparent)]
    Pool(#[from] crate::db::DbError),
    /// A new object-store client could not be built.
    #[error(transparent)]
    Store(#[from] ObjectsError),
    /// The sink refused the new client or failed its probe.
    #[error(transparent)]
    Pipeline(#[from] PipelineError),
}

/// Executes restart targets and records the outcome.
#[derive(Clone)]
pub struct Restarter {
    /// The audit rows.
    pool: Pool,
    /// The runtime: device actors, sources and sinks.
    pipeline: Pipeline,
    /// To build a new pool for `sink:postgres`.
    postgres: PostgresConfig,
    /// To build a new store client for `sink:objects`.
    objects: ObjectsConfig,
    /// Held while a restart runs: the worker, the API and the webhook take turns, so that two
    /// restarts never interleave their drains and reconnects.
    one_at_a_time: std::sync::Arc<tokio::sync::Mutex<()>>,
}

impl Restarter {
    /// A restarter over the audit pool and the runtime, rebuilding sinks from these settings.
    pub fn new(
        pool: Pool,
        pipeline: Pipeline,
        postgres: PostgresConfig,
        objects: ObjectsConfig,
    ) -> Self {
        Self {
            pool,
            pipeline,
            postgres,
            objects,
            one_at_a_time: Default::default(),
        }
    }

    /// The audit table's pool.
    pub(super) fn pool(&self) -> &Pool {
        &self.pool
    }

    /// Runs the target of a `running` row and records its outcome.
    pub async fn execute(
        &self,
        id: i64,
        target: &RestartTarget,
    ) -> Result<(Outcome, Value), RestartError> {
        let started = Instant::now();
        let (outcome, result) = {
            let _turn = self.one_at_a_time.lock().await;
            self.run_target(target).await
        };
        self.finish(id, &target.to_string(), started, outcome, result)
            .await
    }

    /// A claimed row as written by whoever inserted it: executed when its text is a target,
    /// else recorded as rejected with the reason.
    async fn execute_text(&self, id: i64, text: &str) -> Result<(Outcome, Value), RestartError> {
        match text.parse::<RestartTarget>() {
            Ok(target) => self.execute(id, &target).await,
            Err(e) => {
                let result = json!({"error": e.to_string()});
                self.finish(id, text, Instant::now(), Outcome::Rejected, result)
                    .await
            }
        }
    }

    /// Records the outcome on the row (the time taken included) and logs it.
    async fn finish(
        &self,
        id: i64,
        target: &str,
        started: Instant,
        outcome: Outcome,
        mut result: Value,
    ) -> Result<(Outcome, Value), RestartError> {
        result["took_ms"] = json!(started.elapsed().as_millis() as u64);
        match self.pool.get().await {
            Ok(c) => {
                c.execute(FINISH, &[&id, &outcome.as_str(), &result])
                    .await?;
            }
            Err(e) => tracing::error!(error = %e, id, "restart outcome not recorded"),
        }
        tracing::info!(
            id,
            target,
            status = outcome.as_str(),
            "restart request finished"
        );
        Ok((outcome, result))
    }

    async fn run_target(&self, target: &RestartTarget) -> (Outcome, Value) {
        match target {
            RestartTarget::Device(id) => self.restart_device(id).await,
            RestartTarget::Source(product) => {
                sources_outcome(self.pipeline.restart_source(product).await)
            }
            RestartTarget::SinkPostgres => health(self.rebuild_pg().await),
            RestartTarget::SinkObjects => health(self.rebuild_objects().await),
            RestartTarget::Pipeline => self.restart_pipeline().await,
        }
    }

    /// `device:<id>`: a fresh actor, which must answer a snapshot. A device the engine has
    /// never seen (no `devices` row and no live actor) fails without spawning anything.
    async fn restart_device(&self, id: &DeviceId) -> (Outcome, Value) {
        match self.device_known(id).await {
            Ok(true) => {}
            Ok(false) => {
                return (
                    Outcome::Failed,
                    json!({"healthy": false, "error": format!("unknown device {id}")}),
                )
            }
            Err(e) => return (Outcome::Failed, json!({"error": e.to_string()})),
        }
        let was_running = match self.pipeline.restart_device(id).await {
            Ok(w) => w,
            Err(e) => return (Outcome::Failed, json!({"error": e.to_string()})),
        };
        let snapshot = tokio::time::timeout(DEVICE_ANSWER, self.pipeline.device(id)).await;
        match snapshot {
            Ok(Ok(Some(s))) => (
                Outcome::Completed,
                json!({"was_running": was_running, "healthy": true, "state": s.state}),
            ),
            // Cluster mode starts no actor for a device another instance may own. Silence does not
            // tell "no actor anywhere" from "its holder did not answer in time": not claimed done.
            Ok(Ok(None)) if !was_running && self.pipeline.is_cluster() => (
                Outcome::Failed,
                json!({"was_running": false, "healthy": false,
                       "error": "no instance answered for a live actor of this device within 500 ms: \
                                 it has none (its next message starts a fresh one), or its holder is unreachable"}),
            ),
            _ => (
                Outcome::Failed,
                json!({"was_running": was_running, "healthy": false}),
            ),
        }
    }

    /// Whether the device has a live actor or a `devices` row.
    async fn device_known(&self, id: &DeviceId) -> Result<bool, RestartError> {
        if matches!(
            tokio::time::timeout(DEVICE_ANSWER, self.pipeline.device(id)).await,
            Ok(Ok(Some(_)))
        ) {
            return Ok(true);
        }
        let c = self.pool.get().await?;
        Ok(c.query_opt(
            "SELECT 1 FROM devices WHERE device_id = $1",
            &[&id.as_str()],
        )
        .await?
        .is_some())
    }

    /// `pipeline`: the graceful-shutdown order inside the running process, then everything
    /// rebuilt and checked. What the broker delivered meanwhile and was not acknowledged is
    /// redelivered after the sources reconnect.
    async fn restart_pipeline(&self) -> (Outcome, Value) {
        let p = &self.pipeline;
        if let Err(e) = p.drain_sources().await {
            return (Outcome::Failed, json!({"error": e.to_string()}));
        }
        let drained = p.stop_devices(PIPELINE_STEP).await.ok();
        let flushed = p.flush(PIPELINE_STEP).await.is_ok();
        let (pg, pg_result) = health(self.rebuild_pg().await);
        let (objects, objects_result) = health(self.rebuild_objects().await);
        let (sources, sources_result) = sources_outcome(p.restart_sources().await);
        let healthy = drained.is_some()
            && flushed
            && [pg, objects, sources]
                .iter()
                .all(|o| *o == Outcome::Completed);
        (
            if healthy {
                Outcome::Completed
            } else {
                Outcome::Failed
            },
            json!({
                "healthy": healthy,
                "device_actors_drained": drained,
                "postgres_flushed": flushed,
                "sink_postgres": pg_result,
                "sink_objects": objects_result,
                "sources": sources_result,
            }),
        )
    }

    /// `sink:postgres`: a new pool, then a round trip through it.
    async fn rebuild_pg(&self) -> Result<Duration, SinkCheckError> {
        let pool = crate::db::pool(&self.postgres)?;
        Ok(self.pipeline.replace_pool(pool).await?)
    }

    /// `sink:objects`: a new store client, then a probe object written, read back and deleted.
    async fn rebuild_objects(&self) -> Result<Duration, SinkCheckError> {
        let store = object_store::build(&self.objects)?;
        Ok(self.pipeline.replace_store(store).await?)
    }

    /// Marks abandoned `running` rows failed, then claims and executes pending rows until none
    /// is left.
    pub async fn drain(&self) -> Result<usize, RestartError> {
        let abandoned = self.pool.get().await?.execute(ABANDONED, &[]).await?;
        if abandoned > 0 {
            tracing::warn!(
                rows = abandoned,
                "restart requests left running by a stopped engine marked failed"
            );
        }
        let mut n = 0;
        while let Some((id, target)) = self.claim().await? {
            self.execute_text(id, &target).await?;
            n += 1;
        }
        Ok(n)
    }

    /// Marks the oldest pending row `running` and returns its id and target text.
    async fn claim(&self) -> Result<Option<(i64, String)>, RestartError> {
        let c = self.pool.get().await?;
        let row = c.query_opt(CLAIM, &[]).await?;
        Ok(row.map(|r| (r.get("id"), r.get("target"))))
    }
}

/// The outcome of a source restart: connected again within 5 s, or not, or refused.
fn sources_outcome(r: Result<bool, PipelineError>) -> (Outcome, Value) {
    match r {
        Ok(true) => (
            Outcome::Completed,
            json!({"healthy": true, "connected": true}),
        ),
        Ok(false) => (
            Outcome::Failed,
            json!({"healthy": false, "connected": false}),
        ),
        Err(e @ PipelineError::Sources(_)) => (Outcome::Rejected, json!({"error": e.to_string()})),
        Err(e) => (Outcome::Failed, json!({"error": e.to_string()})),
    }
}

/// The outcome of a sink rebuild from its probe's round trip.
fn health(probe: Result<Duration, SinkCheckError>) -> (Outcome, Value) {
    match probe {
        Ok(d) => (
            Outcome::Completed,
            json!({"healthy": true, "round_trip_ms": d.as_secs_f64() * 1000.0}),
        ),
        Err(e) => (
            Outcome::Failed,
            json!({"healthy": false, "error": e.to_string()}),
        ),
    }
}

/// Runs the worker: LISTEN for new rows, poll every `poll_every`, reconnect on errors.
pub fn spawn_worker(
    restarter: Restarter,
    pg_url: String,
    poll_every: Duration,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let (wake, mut woken) = tokio::sync::mpsc::channel::<()>(1);
        let listener = tokio::spawn(crate::db::listen(
            pg_url,
            "fleetflow_restart_requests",
            wake,
        ));
        let mut tick = tokio::time::interval(poll_every);
        loop {
            tokio::select! {
                got = woken.recv() => if got.is_none() { break; },
                _ = tick.tick() => {}
            }
            if let Err(e) = restarter.drain().await {
                tracing::warn!(error = %e, "restart requests not processed");
            }
        }
        listener.abort();
    })
}
