//! The HTTP entry point's core: a restart requested now, recorded through the SQL function
//! `request_service_restart` (which enforces the per-target cooldown and the request limit in
//! the database, so it holds across engine processes), then executed in this process. The
//! admin API (`crate::admin::restarts`) only maps its outcome to HTTP.

use fleetflow_actors::metrics as m;
use serde_json::Value;

use super::restarter::{Outcome, RestartError, Restarter};
use super::target::RestartTarget;

/// SQLSTATE of the cooldown refusal (`RAISE EXCEPTION` without a code).
const COOLDOWN: &str = "P0001";
/// SQLSTATE of the database's own target check (`invalid_parameter_value`).
const INVALID_TARGET: &str = "22023";

/// A restart to record and run now.
#[derive(Debug, Clone)]
pub struct RestartRequest {
    /// What to restart.
    pub target: RestartTarget,
    /// Why, for the audit row.
    pub reason: Option<String>,
    /// Who asked, for the audit row: the admin token's name, or `restart-webhook:<name>`.
    pub requested_by: String,
    /// Which entry point it came through (`api`, `restart_webhook`), for the refusal count.
    pub via: &'static str,
    /// Least time between two restarts of one target, in seconds.
    pub cooldown_secs: u64,
    /// Restarts of one target allowed within the cooldown window.
    pub max_per_window: u32,
}

/// A restart that was recorded and executed.
#[derive(Debug, Clone)]
pub struct Executed {
    /// The `service_restart_requests` row.
    pub id: i64,
    /// How it ended.
    pub outcome: Outcome,
    /// The health check's details, as recorded on the row.
    pub result: Value,
}

/// Why a restart was not executed.
#[derive(Debug, thiserror::Error)]
pub enum RequestError {
    /// The target was restarted too often within the cooldown window.
    #[error("{message}")]
    Cooldown {
        /// The database's explanation.
        message: String,
        /// Seconds until the target may be restarted again.
        retry_after_secs: u64,
    },
    /// The database refused the target text.
    #[error("{0}")]
    InvalidTarget(String),
    /// The request could not be recorded, or its outcome not written.
    #[error(transparent)]
    Store(#[from] RestartError),
}

impl Restarter {
    /// Records `req` as a `running` row (unless the database's rate limit refuses it), runs it
    /// and records its outcome.
    pub async fn request(&self, req: &RestartRequest) -> Result<Executed, RequestError> {
        let id = self.record(req).await?;
        // In a task of its own: a client that disconnects drops this future, not the restart,
        // which finishes and records its outcome (a half-done `pipeline` would stay drained).
        let (this, target) = (self.clone(), req.target.clone());
        let run = tokio::spawn(async move { this.execute(id, &target).await });
        let (outcome, result) = run.await.map_err(RestartError::from)??;
        tracing::info!(target = %req.target, id, reason = req.reason.as_deref().unwrap_or(""), by = %req.requested_by, "restart requested");
        Ok(Executed {
            id,
            outcome,
            result,
        })
    }

    async fn record(&self, req: &RestartRequest) -> Result<i64, RequestError> {
        let max = i32::try_from(req.max_per_window.max(1)).unwrap_or(i32::MAX);
        let c = self.pool().get().await.map_err(RestartError::from)?;
        let row = c
            .query_one(
                "SELECT request_service_restart($1, $2, $3, make_interval(secs => $4), true, $5) AS id",
                &[
                    &req.target.to_string(),
                    &req.reason,
                    &req.requested_by,
                    &(req.cooldown_secs as f64),
                    &max,
                ],
            )
            .await;
        match row {
            Ok(r) => Ok(r.get("id")),
            Err(e) => {
                let refused = refusal(&e, req.cooldown_secs)
                    .unwrap_or_else(|| RequestError::Store(RestartError::Db(e)));
                if let RequestError::Cooldown { message, .. } = &refused {
                    self.record_refused(req, message).await;
                }
                Err(refused)
            }
        }
    }

    /// A restart refused by the cooldown, counted, and recorded as a `rejected` row (which the
    /// cooldown does not count; at most one a minute per caller and target).
    async fn record_refused(&self, req: &RestartRequest, message: &str) {
        metrics::counter!(m::ADMIN_REFUSED_TOTAL, "entry" => req.via, "reason" => "cooldown")
            .increment(1);
        let result = serde_json::json!({"error": message, "refused": "cooldown"});
        let recorded = match self.pool().get().await {
            Ok(c) => c
                .execute(
                    // At most one row a minute per caller and target: a script retrying in a
                    // loop is counted each time but does not fill the table.
                    "INSERT INTO service_restart_requests (target, requested_by, reason, status, completed_at, result)
                     SELECT $1, $2, $3, 'rejected', now(), $4
                     WHERE NOT EXISTS (SELECT 1 FROM service_restart_requests
                        WHERE target = $1 AND requested_by = $2 AND status = 'rejected'
                          AND requested_at > now() - interval '1 minute')",
                    &[&req.target.to_string(), &req.requested_by, &req.reason, &result],
                )
                .await
                .map(|_| ())
                .map_err(|e| e.to_string()),
            Err(e) => Err(e.to_string()),
        };
        if let Err(e) = recorded {
            tracing::warn!(error = %e, "refused restart not recorded");
        }
    }
}

/// The database's refusals: the cooldown (the wait is the error's detail) or its own target
/// check. `None` for any other failure.
fn refusal(e: &tokio_postgres::Error, cooldown_secs: u64) -> Option<RequestError> {
    let db = e.as_db_error()?;
    match db.code().code() {
        COOLDOWN => Some(RequestError::Cooldown {
            message: db.message().to_string(),
            retry_after_secs: db
                .detail()
                .and_then(|d| d.parse().ok())
                .unwrap_or(cooldown_secs)
                .max(1),
        }),
        INVALID_TARGET => Some(RequestError::InvalidTarget(db.message().to_string())),
        _ => None,
    }
}
