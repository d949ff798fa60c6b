//! Refused admin requests, counted (`fleetflow_admin_refused_total{entry, reason}`) and recorded
//! in `admin_audit` (migration V10): who tried what, from where, and why it was refused. Rows
//! are written off the request path and limited to [`RECORDS_PER_MINUTE`] per entry and reason,
//! so a flood of anonymous bad requests can neither flood the database nor crowd out the
//! `forbidden` refusals of authenticated callers; the counter counts every one, and the warning
//! is logged only for the recorded ones.

use std::collections::HashMap;
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

/// Rows written this minute, by entry and reason.
type RowsByKind = HashMap<(&'static str, &'static str), u32>;

/// Counts and records refusals.
#[derive(Debug)]
pub struct Audit {
    pool: Pool,
    /// The current minute's start and the rows written in it, per entry and reason.
    window: Mutex<(Instant, RowsByKind)>,
}

impl Audit {
    /// An audit trail in `pool`'s database.
    pub fn new(pool: Pool) -> Self {
        Self {
            pool,
            window: Mutex::new((Instant::now(), HashMap::new())),
        }
    }

    /// Counts `r` and records it unless this minute's rows are used up.
    pub fn refused(&self, r: Refusal) {
        metrics::counter!(m::ADMIN_REFUSED_TOTAL, "entry" => r.entry, "reason" => r.reason)
            .increment(1);
        if !self.admit(r.entry, r.reason) {
            return;
        }
        tracing::warn!(entry = r.entry, reason = r.reason, action = %r.action, actor = r.actor.as_deref().unwrap_or(""), remote = r.remote.as_deref().unwrap_or(""), "admin request refused");
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

    /// Whether another row for this entry and reason fits in this minute.
    fn admit(&self, entry: &'static str, reason: &'static str) -> bool {
        let mut w = self.window.lock().unwrap_or_else(|p| p.into_inner());
        if w.0.elapsed() >= Duration::from_secs(60) {
            *w = (Instant::now(), HashMap::new());
        }
        let n = w.1.entry((entry, reason)).or_insert(0);
        *n += 1;
        *n <= RECORDS_PER_MINUTE
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn audit() -> Audit {
        let mut cfg = deadpool_postgres::Config::new();
        cfg.url = Some("postgres://nobody@127.0.0.1:1/none".into());
        let pool = cfg
            .create_pool(None, tokio_postgres::NoTls)
            .expect("a pool is built without connecting");
        Audit::new(pool)
    }

    #[test]
    fn a_flood_of_one_kind_does_not_use_up_another_kinds_rows() {
        let a = audit();
        for _ in 0..RECORDS_PER_MINUTE {
            assert!(a.admit("api", "unauthorized"));
        }
        assert!(
            !a.admit("api", "unauthorized"),
            "the minute's rows are used up"
        );
        assert!(
            a.admit("organization", "forbidden"),
            "forbidden has rows of its own"
        );
        assert!(a.admit("restart_webhook", "unauthorized"));
    }
}
