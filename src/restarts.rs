//! Restarts done in process, requested over HTTP or as `service_restart_requests` rows. The
//! table is the audit trail for both paths; the SQL function `request_service_restart`
//! enforces the per-target cooldown, so it holds across engine processes. The worker wakes on
//! `LISTEN fleetflow_restart_requests` and also polls; each row is claimed with
//! `FOR UPDATE SKIP LOCKED`, so it moves through its statuses exactly once even with several
//! engines. Targets, each followed by a health check recorded in `result`:
//! - `device:<id>`: a fresh actor (in-flight assemblies resync through NACKs); it must answer;
//! - `source:<product_id>`: reconnect; it must be connected within 5 s;
//! - `sink:postgres`: a new connection pool for the sink; a `SELECT 1` round trip through it;
//! - `sink:objects`: a new object-store client; write, read back and delete a probe object;
//! - `pipeline`: everything, in graceful-shutdown order (sources stop forwarding, device actors
//!   drain, the Postgres sink flushes), then new sinks and reconnected sources; all checks.

use std::time::{Duration, Instant};

use actix::Addr;
use deadpool_postgres::Pool;
use fleetflow_actors::router::{QueryDevice, RestartDevice, Router, StopAll};
use fleetflow_actors::sinks::objects::{ObjectSink, ProbeStore, ReplaceStore};
use fleetflow_actors::sinks::pg::{Flush, PgSink, Probe, ReplacePool};
use fleetflow_protocol::ids::DeviceId;
use serde_json::{json, Value};
use tokio::sync::{mpsc, oneshot};

use crate::config::{ObjectsConfig, PostgresConfig};
use crate::sources::SourceCommand;

const CLAIM: &str = "UPDATE service_restart_requests SET status = 'running', started_at = now()
 WHERE id = (SELECT id FROM service_restart_requests WHERE status = 'pending' ORDER BY id FOR UPDATE SKIP LOCKED LIMIT 1)
 RETURNING id, target";
const FINISH: &str = "UPDATE service_restart_requests SET status = $2, completed_at = now(), result = $3 WHERE id = $1 AND status = 'running'";

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

/// The sinks and the settings to rebuild them from.
#[derive(Clone)]
pub struct Sinks {
    /// The Postgres sink.
    pub pg: Addr<PgSink>,
    /// The object sink.
    pub objects: Addr<ObjectSink>,
    /// To build a new pool.
    pub postgres: PostgresConfig,
    /// To build a new store client.
    pub objects_cfg: ObjectsConfig,
}

/// Executes restart targets and records the outcome.
#[derive(Clone)]
pub struct Restarter {
    pool: Pool,
    router: Addr<Router>,
    sources: Option<mpsc::Sender<SourceCommand>>,
    sinks: Option<Sinks>,
}

impl Restarter {
    /// A restarter over the pool and the device router.
    pub fn new(pool: Pool, router: Addr<Router>) -> Self {
        Self {
            pool,
            router,
            sources: None,
            sinks: None,
        }
    }

    /// Also restarts `source:<product_id>` targets through the source manager.
    pub fn with_sources(mut self, sources: mpsc::Sender<SourceCommand>) -> Self {
        self.sources = Some(sources);
        self
    }

    /// Also restarts `sink:postgres`, `sink:objects` and `pipeline`.
    pub fn with_sinks(mut self, sinks: Sinks) -> Self {
        self.sinks = Some(sinks);
        self
    }

    async fn restart_source(&self, product: &str) -> (Outcome, Value) {
        self.ask_sources(|reply| SourceCommand::Restart {
            product: product.to_string(),
            reply,
        })
        .await
    }

    async fn ask_sources(
        &self,
        cmd: impl FnOnce(oneshot::Sender<Result<bool, String>>) -> SourceCommand,
    ) -> (Outcome, Value) {
        let Some(tx) = &self.sources else {
            return (Outcome::Rejected, json!({"error": "no source manager"}));
        };
        let (reply, rx) = oneshot::channel();
        if tx.send(cmd(reply)).await.is_err() {
            return (
                Outcome::Failed,
                json!({"error": "source manager unavailable"}),
            );
        }
        match rx.await {
            Ok(Ok(true)) => (
                Outcome::Completed,
                json!({"healthy": true, "connected": true}),
            ),
            Ok(Ok(false)) => (
                Outcome::Failed,
                json!({"healthy": false, "connected": false}),
            ),
            Ok(Err(e)) => (Outcome::Rejected, json!({"error": e})),
            Err(_) => (
                Outcome::Failed,
                json!({"error": "source manager dropped the request"}),
            ),
        }
    }

    /// Runs the target of a `running` row and records its outcome.
    pub async fn execute(
        &self,
        id: i64,
        target: &str,
    ) -> Result<(Outcome, Value), tokio_postgres::Error> {
        let started = Instant::now();
        let (outcome, mut result) = self.run_target(target).await;
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

    /// `sink:postgres`: a new pool, then a round trip through it.
    async fn restart_pg(&self, s: &Sinks) -> (Outcome, Value) {
        let replaced = match crate::db::pool(&s.postgres) {
            Ok(pool) => {
                s.pg.send(ReplacePool(pool))
                    .await
                    .map_err(|_| "postgres sink unavailable".to_string())
            }
            Err(e) => Err(e.to_string()),
        };
        let probe = match replaced {
            Ok(()) => s.pg.send(Probe).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        health(probe)
    }

    /// `sink:objects`: a new store client, then a probe object written, read back and deleted.
    async fn restart_objects(&self, s: &Sinks) -> (Outcome, Value) {
        let replaced = match crate::objects::build(&s.objects_cfg) {
            Ok(store) => s
                .objects
                .send(ReplaceStore(store))
                .await
                .map_err(|_| "object sink unavailable".to_string()),
            Err(e) => Err(e.to_string()),
        };
        let probe = match replaced {
            Ok(()) => s.objects.send(ProbeStore).await.map_err(|e| e.to_string()),
            Err(e) => Err(e),
        };
        health(probe)
    }

    /// `pipeline`: the graceful-shutdown order inside the running process, then everything
    /// rebuilt and checked. What the broker delivered meanwhile and was not acknowledged is
    /// redelivered after the sources reconnect.
    async fn restart_pipeline(&self, s: &Sinks) -> (Outcome, Value) {
        let Some(tx) = &self.sources else {
            return (Outcome::Rejected, json!({"error": "no source manager"}));
        };
        let (reply, rx) = oneshot::channel();
        let _ = tx.send(SourceCommand::DrainAll { reply }).await;
        let _ = rx.await;
        let drained = tokio::time::timeout(Duration::from_secs(30), self.router.send(StopAll))
            .await
            .ok()
            .and_then(Result::ok);
        let flushed = tokio::time::timeout(Duration::from_secs(30), s.pg.send(Flush))
            .await
            .is_ok_and(|r| r.is_ok());
        let (pg, pg_result) = self.restart_pg(s).await;
        let (objects, objects_result) = self.restart_objects(s).await;
        let (sources, sources_result) = self
            .ask_sources(|reply| SourceCommand::RestartAll { reply })
            .await;
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

    async fn run_target(&self, target: &str) -> (Outcome, Value) {
        if let Some(product) = target.strip_prefix("source:") {
            return self.restart_source(product).await;
        }
        if let Some(sinks) = &self.sinks {
            match target {
                "sink:postgres" => return self.restart_pg(sinks).await,
                "sink:objects" => return self.restart_objects(sinks).await,
                "pipeline" => return self.restart_pipeline(sinks).await,
                _ => {}
            }
        }
        let Some(raw) = target.strip_prefix("device:") else {
            return (
                Outcome::Rejected,
                json!({"error": format!("unknown restart target {target}; expected device:<id>, source:<product_id>, sink:postgres, sink:objects or pipeline")}),
            );
        };
        let Ok(id) = DeviceId::parse(raw) else {
            return (Outcome::Rejected, json!({"error": "invalid device id"}));
        };
        let was_running = match self.router.send(RestartDevice(id.clone())).await {
            Ok(w) => w,
            Err(e) => {
                return (
                    Outcome::Failed,
                    json!({"error": format!("router unavailable: {e}")}),
                )
            }
        };
        // Health check: the fresh actor answers a snapshot.
        let snapshot =
            tokio::time::timeout(Duration::from_secs(5), self.router.send(QueryDevice(id))).await;
        match snapshot {
            Ok(Ok(Some(s))) => (
                Outcome::Completed,
                json!({"was_running": was_running, "healthy": true, "state": s.state}),
            ),
            _ => (
                Outcome::Failed,
                json!({"was_running": was_running, "healthy": false}),
            ),
        }
    }

    /// Claims and executes pending rows until none is left.
    pub async fn drain(&self) -> Result<usize, String> {
        let mut n = 0;
        loop {
            let row = {
                let c = self.pool.get().await.map_err(|e| e.to_string())?;
                c.query_opt(CLAIM, &[]).await.map_err(|e| e.to_string())?
            };
            let Some(row) = row else { return Ok(n) };
            let (id, target): (i64, String) = (row.get(0), row.get(1));
            self.execute(id, &target).await.map_err(|e| e.to_string())?;
            n += 1;
        }
    }
}

/// The outcome of a sink rebuild from its probe: the sink's answer inside the send's.
fn health(probe: Result<Result<Duration, String>, String>) -> (Outcome, Value) {
    match probe {
        Ok(Ok(d)) => (
            Outcome::Completed,
            json!({"healthy": true, "round_trip_ms": d.as_secs_f64() * 1000.0}),
        ),
        Ok(Err(e)) | Err(e) => (Outcome::Failed, json!({"healthy": false, "error": e})),
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
