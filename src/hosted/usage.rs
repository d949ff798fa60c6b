//! Connection statistics of hosted-broker credentials: the broker's connection notices (read
//! by the admin connection from `$SYS/broker/log/N`) are counted per username and written to
//! `mqtt_credentials` (`connections_total`, `last_used_at`) in one statement per second.

use std::collections::HashMap;
use std::time::Duration;

use deadpool_postgres::Pool;
use tokio::sync::mpsc;

/// Counts connections of managed usernames (those starting with `prefix`) and writes them
/// back every second. Ends when the sender is gone.
pub fn spawn(pool: Pool, mut seen: mpsc::Receiver<String>, prefix: String) {
    tokio::spawn(async move {
        let mut counts: HashMap<String, i64> = HashMap::new();
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tokio::select! {
                user = seen.recv() => match user {
                    Some(u) if u.starts_with(&prefix) => *counts.entry(u).or_default() += 1,
                    Some(_) => {}
                    None => break,
                },
                _ = tick.tick() => {
                    if counts.is_empty() {
                        continue;
                    }
                    let (users, n): (Vec<String>, Vec<i64>) = counts.drain().unzip();
                    let written = async {
                        let c = pool.get().await.map_err(|e| e.to_string())?;
                        c.execute(
                            "UPDATE mqtt_credentials m SET connections_total = m.connections_total + x.n, last_used_at = now()
                             FROM UNNEST($1::text[], $2::int8[]) AS x(u, n) WHERE m.username = x.u",
                            &[&users, &n],
                        )
                        .await
                        .map_err(|e| e.to_string())
                    }
                    .await;
                    if let Err(e) = written {
                        tracing::warn!(error = %e, "credential statistics not written; kept for the next round");
                        for (u, k) in users.into_iter().zip(n) {
                            *counts.entry(u).or_default() += k;
                        }
                    }
                }
            }
        }
    });
}
