//! What the manager records about its sources in `mqtt_connection_status`: connection changes,
//! errors, the broker's CONNACK details, subscribed-filter counts and message counts, and the
//! aggregate readiness flag.

use std::sync::atomic::Ordering;

use super::SourceManager;

impl SourceManager {
    pub(super) async fn write_error(&self, product: &str, error: &str) {
        if let Ok(c) = self.pool.get().await {
            let _ = c
                .execute(
                    "INSERT INTO mqtt_connection_status (product_id, connected, connection_error) VALUES ($1, false, $2)
                     ON CONFLICT (product_id) DO UPDATE SET connected = false, connection_error = EXCLUDED.connection_error",
                    &[&product, &error],
                )
                .await;
        }
    }

    pub(super) async fn write_broker_info(&self, product: &str, info: serde_json::Value) {
        if let Ok(c) = self.pool.get().await {
            let _ = c
                .execute(
                    "UPDATE mqtt_connection_status SET broker_info = $2 WHERE product_id = $1",
                    &[&product, &info],
                )
                .await;
        }
    }

    pub(super) async fn write_topics_count(&self, product: &str, count: i32) {
        if let Ok(c) = self.pool.get().await {
            let _ = c
                .execute(
                    "UPDATE mqtt_connection_status SET subscribed_topics_count = $2 WHERE product_id = $1",
                    &[&product, &count],
                )
                .await;
        }
    }

    pub(super) async fn write_status(
        &self,
        product: &str,
        connected: bool,
        client_id: Option<&str>,
        topics: Option<i32>,
    ) {
        if let Ok(c) = self.pool.get().await {
            let _ = c
                .execute(
                    "INSERT INTO mqtt_connection_status (product_id, connected, client_id, subscribed_topics_count, last_connected_at, last_disconnected_at, connection_error)
                     VALUES ($1, $2, $3, COALESCE($4, 0), CASE WHEN $2 THEN now() END, CASE WHEN NOT $2 THEN now() END, NULL)
                     ON CONFLICT (product_id) DO UPDATE SET connected = $2, client_id = COALESCE($3, mqtt_connection_status.client_id),
                       subscribed_topics_count = COALESCE($4, mqtt_connection_status.subscribed_topics_count),
                       last_connected_at = CASE WHEN $2 THEN now() ELSE mqtt_connection_status.last_connected_at END,
                       last_disconnected_at = CASE WHEN NOT $2 THEN now() ELSE mqtt_connection_status.last_disconnected_at END,
                       connection_error = NULL",
                    &[&product, &connected, &client_id, &topics],
                )
                .await;
        }
    }

    /// Takes out the sources whose task ended without being stopped (the loop broke or
    /// panicked), records it, and answers whether there were any: the next reconcile starts
    /// the wanted ones again.
    pub(super) async fn reap_exited(&mut self) -> bool {
        let exited: Vec<String> = self
            .running
            .iter()
            .filter(|(_, r)| {
                r.handle.task.is_finished()
                    || (r.handle.publisher.as_ref()).is_some_and(|p| p.task.is_finished())
            })
            .map(|(n, _)| n.clone())
            .collect();
        for name in &exited {
            if let Some(r) = self.running.remove(name) {
                // The half still running says goodbye before its replacement connects.
                let _ = r.handle.control.send(crate::source::SourceControl::Stop);
                if let Some(p) = &r.handle.publisher {
                    let _ = p.control.send(crate::source::SourceControl::Stop);
                }
            }
            tracing::error!(source = %name, "an MQTT source's task ended by itself; starting it again");
            metrics::counter!(crate::metrics::SOURCE_EXITS_TOTAL).increment(1);
            metrics::gauge!(crate::metrics::MQTT_CONNECTED, "source" => name.clone()).set(0.0);
            self.write_error(name, "the source's task ended; restarting it")
                .await;
        }
        !exited.is_empty()
    }

    /// Records connection changes, message counts and the aggregate readiness flag.
    pub(super) async fn refresh_status(&mut self) {
        let mut all = !self.running.is_empty();
        let mut changes = Vec::new();
        let mut counts = Vec::new();
        for (name, r) in self.running.iter_mut() {
            let now = r.handle.connected.load(Ordering::Acquire);
            all &= now;
            if now != r.was_connected {
                r.was_connected = now;
                let topics = r.handle.filters.borrow().len() as i32;
                let info = r.handle.broker_info.borrow().clone();
                changes.push((name.clone(), now, topics, info));
            }
            let received = r.handle.received.load(Ordering::Relaxed);
            if received != r.reported {
                counts.push((name.clone(), (received - r.reported) as i64));
                r.reported = received;
            }
        }
        self.connected.store(all, Ordering::Release);
        for (name, now, topics, info) in changes {
            self.write_status(&name, now, None, Some(topics)).await;
            if let (true, Some(info)) = (now, info) {
                self.write_broker_info(&name, info).await;
            }
        }
        if !counts.is_empty() {
            if let Ok(c) = self.pool.get().await {
                let (names, deltas): (Vec<String>, Vec<i64>) = counts.into_iter().unzip();
                let _ = c
                    .execute(
                        "UPDATE mqtt_connection_status s SET messages_received = s.messages_received + x.n
                         FROM UNNEST($1::text[], $2::int8[]) AS x(p, n) WHERE s.product_id = x.p",
                        &[&names, &deltas],
                    )
                    .await;
            }
        }
    }
}
