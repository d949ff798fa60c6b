//! Restarts done in process, requested over HTTP or as `service_restart_requests` rows. The
//! table is the audit trail for both paths; the SQL function `request_service_restart`
//! enforces the per-target cooldown, so it holds across engine processes. The worker wakes on
//! `LISTEN fleetflow_restart_requests` and also polls; each row is claimed with
//! `FOR UPDATE SKIP LOCKED`, so it moves through its statuses exactly once even with several
//! engines. Targets executed here: `device:<id>` (fresh actor, then a health check) and
//! `source:<product_id>` (reconnect, then: connected within 5 s). `sink:*` and `pipeline` are
//! recorded as `rejected` with the reason.

use std::time::{Duration, Instant};

use actix::Addr;
use deadpool_postgres::Pool;
use fleetflow_actors::ids::DeviceId;
use fleetflow_actors::router::{QueryDevice, RestartDevice, Router};
use serde_json::{json, Value};

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

/// Executes restart targets and records the outcome.
#[derive(Clone)]
pub struct Restarter {
    pool: Pool,
    router: Addr<Router>,
    sources: Option<tokio::sync::mpsc::Sender<crate::sources::RestartSource>>,
}

impl Restarter {
    /// A restarter over the pool and the device router.
    pub fn new(pool: Pool, router: Addr<Router>) -> Self {
        Self {
            pool,
            router,
            sources: None,
        }
    }

    /// Also restarts `source:<product_id>` targets through the source manager.
    pub fn with_sources(
        mut self,
        sources: tokio::sync::mpsc::Sender<crate::sources::RestartSource>,
    ) -> Self {
        self.sources = Some(sources);
        self
    }

    async fn restart_source(&self, product: &str) -> (Outcome, Value) {
        let Some(tx) = &self.sources else {
            return (Outcome::Rejected, json!({"error": "no source manager"}));
        };
        let (reply, rx) = tokio::sync::oneshot::channel();
        if tx
            .send(crate::sources::RestartSource {
                product: product.to_string(),
                reply,
            })
            .await
            .is_err()
        {
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

    async fn run_target(&self, target: &str) -> (Outcome, Value) {
        if let Some(product) = target.strip_prefix("source:") {
            return self.restart_source(product).await;
        }
        let Some(raw) = target.strip_prefix("device:") else {
            return (
                Outcome::Rejected,
                json!({"error": format!("target {target} is not executable by this engine version; it restarts device:<id>")}),
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
