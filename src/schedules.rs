//! Wake schedules in PostgreSQL (`device_schedules`), kept in the engine's in-memory
//! [`ScheduleBook`] so that device actors answer the GXP wake hello without a database round
//! trip: loaded at start, reloaded on NOTIFY when any process edits a schedule (a 30 s poll
//! covers a missed one), and edited through `GET`/`PUT /api/v1/devices/{id}/schedule`.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use deadpool_postgres::Pool;
use fleetflow_protocol::ids::DeviceId;
use fleetflow_protocol::schedule::{Schedule, ScheduleBook, ScheduleMode};

/// The NOTIFY channel of schedule edits (migration V8).
pub const CHANNEL: &str = "fleetflow_device_schedules";

const SELECT: &str = "SELECT device_id, mode, captures_per_day, wake_times, every_minutes, timezone, next_wake_at, updated_at
   FROM device_schedules WHERE updated_at > $1";

/// Why schedules could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum ScheduleStoreError {
    /// The database.
    #[error("database: {0}")]
    Db(#[from] tokio_postgres::Error),
    /// The pool.
    #[error("database pool: {0}")]
    Pool(#[from] deadpool_postgres::PoolError),
}

/// A schedule from its row's columns; `None` when the row holds only a next wake.
pub fn from_columns(
    mode: Option<&str>,
    per_day: Option<i32>,
    times: Option<Vec<String>>,
    minutes: Option<i32>,
    timezone: String,
) -> Option<Schedule> {
    let mode = match mode? {
        "per_day" => ScheduleMode::PerDay {
            captures_per_day: per_day.unwrap_or(2).max(1) as u32,
        },
        "fixed" => ScheduleMode::Fixed {
            times: times.unwrap_or_default(),
        },
        "every_minutes" => ScheduleMode::EveryMinutes {
            minutes: minutes.unwrap_or(5).max(1) as u32,
        },
        _ => return None,
    };
    Some(Schedule { mode, timezone })
}

/// Loads the rows changed since `since` into the book; returns the newest `updated_at` seen.
pub async fn load(
    pool: &Pool,
    book: &ScheduleBook,
    since: DateTime<Utc>,
) -> Result<DateTime<Utc>, ScheduleStoreError> {
    let c = pool.get().await?;
    let mut newest = since;
    for r in c.query(SELECT, &[&since]).await? {
        let raw: String = r.get("device_id");
        let Ok(id) = DeviceId::parse(&raw) else {
            continue;
        };
        let schedule = from_columns(
            r.get("mode"),
            r.get("captures_per_day"),
            r.get("wake_times"),
            r.get("every_minutes"),
            r.get("timezone"),
        );
        let compiled = match schedule.map(Schedule::compile).transpose() {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(device = %raw, error = %e, "invalid schedule row; default used");
                None
            }
        };
        book.set(&id, compiled, r.get("next_wake_at"));
        newest = newest.max(r.get("updated_at"));
    }
    Ok(newest)
}

/// Loads every schedule, then keeps the book current until aborted.
pub async fn spawn(
    pool: Pool,
    pg_url: String,
    book: Arc<ScheduleBook>,
) -> Result<tokio::task::JoinHandle<()>, ScheduleStoreError> {
    let mut since = load(&pool, &book, DateTime::<Utc>::UNIX_EPOCH).await?;
    tracing::info!(devices = book.len(), "wake schedules loaded");
    let (wake_tx, mut wake) = tokio::sync::mpsc::channel(1);
    Ok(tokio::spawn(async move {
        let listener = tokio::spawn(crate::db::listen(pg_url, CHANNEL, wake_tx));
        let mut tick = tokio::time::interval(Duration::from_secs(30));
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                w = wake.recv() => if w.is_none() { break },
            }
            // Overlap by a second: rows committed out of updated_at order are not missed.
            match load(&pool, &book, since - chrono::Duration::seconds(1)).await {
                Ok(t) => since = t,
                Err(e) => tracing::warn!(error = %e, "reloading wake schedules failed"),
            }
        }
        listener.abort();
    }))
}

/// Stores a device's schedule and clears its recorded next wake (the next `"Alive"` captures
/// and schedules the following wake with the new rule). Returns the row's `updated_at`.
pub async fn save(
    pool: &Pool,
    id: &DeviceId,
    s: &Schedule,
) -> Result<DateTime<Utc>, ScheduleStoreError> {
    let (mode, per_day, times, minutes): (&str, Option<i32>, Option<Vec<String>>, Option<i32>) =
        match &s.mode {
            ScheduleMode::PerDay { captures_per_day } => {
                ("per_day", Some(*captures_per_day as i32), None, None)
            }
            ScheduleMode::Fixed { times } => ("fixed", None, Some(times.clone()), None),
            ScheduleMode::EveryMinutes { minutes } => {
                ("every_minutes", None, None, Some(*minutes as i32))
            }
        };
    let c = pool.get().await?;
    let row = c
        .query_one(
            "INSERT INTO device_schedules (device_id, mode, captures_per_day, wake_times, every_minutes, timezone, next_wake_at, updated_at)
             VALUES ($1, $2, $3, $4, $5, $6, NULL, now())
             ON CONFLICT (device_id) DO UPDATE SET mode = EXCLUDED.mode, captures_per_day = EXCLUDED.captures_per_day,
               wake_times = EXCLUDED.wake_times, every_minutes = EXCLUDED.every_minutes, timezone = EXCLUDED.timezone,
               next_wake_at = NULL, updated_at = now()
             RETURNING updated_at",
            &[&id.as_str(), &mode, &per_day, &times, &minutes, &s.timezone],
        )
        .await?;
    Ok(row.get(0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_become_schedules_and_next_wake_only_rows_have_none() {
        let s = from_columns(
            Some("fixed"),
            None,
            Some(vec!["08:00".into()]),
            None,
            "UTC".into(),
        );
        assert_eq!(
            s.unwrap().mode,
            ScheduleMode::Fixed {
                times: vec!["08:00".into()]
            }
        );
        let s = from_columns(Some("every_minutes"), None, None, Some(5), "UTC".into());
        assert_eq!(s.unwrap().mode, ScheduleMode::EveryMinutes { minutes: 5 });
        assert_eq!(from_columns(None, None, None, None, "UTC".into()), None);
    }
}
