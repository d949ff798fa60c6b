//! Refused admin requests, counted (`fleetflow_admin_refused_total{entry, reason}`) and recorded
//! in `admin_audit` (migration V10): who tried what, from where, and why it was refused. Rows
//! are written off the request path and limited to [`RECORDS_PER_MINUTE`], so a flood of bad
//! requests cannot flood the database; the counter counts every one.

use std::sync::Mutex;
use std::time::{Duration, Instant};

use deadpool_postgres::Pool;
use fleetflow_actors::metrics as m;

/// Most `admin_audit` rows written per minute; the rest are only counted.
pub const RECORDS_PER_MINUTE: u32 = 60;

const INSERT: &str =
    "INSERT INTO admin_audit (actor, entry, reason, action, remote) VALUES ($1, $2, $3, $4, $5)";

/// A refused request.
#[derive(Debug, Clone)]
pub struct Refusal {
    /// `api`, `restart`, `restart_webhook` or `organization`.
    pub entry: &'static str,
    /// `unauthorized` or `forbidden`.
    pub reason: &'static str,
    /// Method and path.
    pub action: String,
    /// The token's name, when one matched.
    pub actor: Option<String>,
    /// The client's address, when known.
    pub remote: Option<String>,
}

/// Counts and records refusals.
#[derive(Debug)]
pub struct Audit {
    pool: Pool,
    /// The current minute's start and the rows written in it.
    window: Mutex<(Instant, u32)>,
}

impl Audit {
    /// An audit trail in `pool`'s database.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            window: Mutex::new((Instant::now(), 0)),
        }
    }

    /// Counts `r` and records it unless this minute's rows are used up.
    pub fn refused(&self, r: Refusal) {
        metrics::counter!(m::ADMIN_REFUSED_TOTAL, "entry" => r.entry, "reason" => r.reason)
            .increment(1);
        tracing::warn!(entry = r.entry, reason = r.reason, action = %r.action, actor = r.actor.as_deref().unwrap_or(""), remote = r.remote.as_deref().unwrap_or(""), "admin request refused");
        if !self.admit() {
            return;
        }
        let pool = self.pool.clone();
        tokio::spawn(async move {
            let written = match pool.get().await {
                Ok(c) => c
                    .execute(
                        INSERT,
                        &[&r.actor, &r.entry, &r.reason, &r.action, &r.remote],
                    )
                    .await
                    .map(|_| ())
                    .map_err(|e| e.to_string()),
                Err(e) => Err(e.to_string()),
            };
            if let Err(e) = written {
                tracing::warn!(error = %e, "refused admin request not recorded");
            }
        });
    }

    /// Whether another row fits in this minute.
    fn admit(&self) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.0.elapsed() >= Duration::from_secs(60) {
            *w = (Instant::now(), 0);
        }
        w.1 += 1;
        w.1 <= RECORDS_PER_MINUTE
    }
}
