//! `TestDevice`: a raw MQTT client for one device that publishes what the test says (v1 wire
//! protocol) and collects what the engine answers on `/ack` and `/cmd`.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::Value;
use tokio::sync::mpsc;

use super::services::{random_hex, Services};

/// A raw protocol client for one device: publishes what the test says and collects ACK/NACKs.
pub struct TestDevice {
    pub id: String,
    pub prefix: String,
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<Value>,
    task: tokio::task::JoinHandle<()>,
    /// QoS 1 publishes handed to the client, and PUBACKs received, for [`TestDevice::settle`].
    published: Arc<AtomicUsize>,
    pubacked: Arc<AtomicUsize>,
}

impl TestDevice {
    pub async fn connect(s: &Services, prefix: &str, id: &str) -> Self {
        Self::connect_as(&s.mqtt_host, s.mqtt_port, prefix, id, None).await
    }

    /// Connects to any broker, optionally with a username and password.
    pub async fn connect_as(
        host: &str,
        port: u16,
        prefix: &str,
        id: &str,
        credentials: Option<(&str, &str)>,
    ) -> Self {
        let mut o = MqttOptions::new(format!("dev-{}", random_hex(10)), host, port);
        if let Some((u, p)) = credentials {
            o.set_credentials(u, p);
        }
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(Some(1 << 20));
        let (client, mut el) = AsyncClient::new(o, 10_000);
        let (tx, acks) = mpsc::unbounded_channel();
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        let pubacked = Arc::new(AtomicUsize::new(0));
        let counted = pubacked.clone();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                            let _ = tx.send(v);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counted.fetch_add(1, Ordering::Release);
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        // ACK/NACKs and commands (§5, §6) arrive on one channel, in order.
        client
            .subscribe_many([
                rumqttc::v5::mqttbytes::v5::Filter::new(
                    format!("{prefix}/{id}/ack"),
                    QoS::AtLeastOnce,
                ),
                rumqttc::v5::mqttbytes::v5::Filter::new(
                    format!("{prefix}/{id}/cmd"),
                    QoS::AtLeastOnce,
                ),
            ])
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), sub_rx.recv())
            .await
            .expect("SUBACK within 10 s");
        Self {
            id: id.to_string(),
            prefix: prefix.to_string(),
            client,
            acks,
            task,
            published: Arc::new(AtomicUsize::new(0)),
            pubacked,
        }
    }

    /// Waits until the broker acknowledged every publish so far. `publish` only queues in the
    /// client: dropping the device before this aborts its connection with the tail unsent.
    pub async fn settle(&self) {
        let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
        while self.pubacked.load(Ordering::Acquire) < self.published.load(Ordering::Acquire) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the broker did not acknowledge {} of {} publishes within 20 s",
                self.published.load(Ordering::Acquire) - self.pubacked.load(Ordering::Acquire),
                self.published.load(Ordering::Acquire)
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    pub async fn publish(&self, suffix: &str, payload: impl Into<Bytes>) {
        self.publish_raw(&format!("{}/{}/{suffix}", self.prefix, self.id), payload)
            .await;
    }

    pub async fn publish_raw(&self, topic: &str, payload: impl Into<Bytes>) {
        self.published.fetch_add(1, Ordering::Release);
        self.client
            .publish(topic.to_string(), QoS::AtLeastOnce, false, payload.into())
            .await
            .unwrap();
    }

    pub async fn meta(&self, capture_id: &str, image: &[u8], chunk_size: usize, sha: bool) {
        let total = image.len().div_ceil(chunk_size);
        let sha = if sha {
            use sha2::Digest;
            format!(
                r#","sha256":"{}""#,
                hex::encode(sha2::Sha256::digest(image))
            )
        } else {
            String::new()
        };
        let m = format!(
            r#"{{"type":"capture_meta","capture_id":"{capture_id}","captured_at":"2026-10-04T12:00:00Z","image_bytes":{},"total_chunks":{total},"chunk_size":{chunk_size}{sha}}}"#,
            image.len()
        );
        self.publish("data", m).await;
    }

    pub async fn chunk_bin(&self, capture_id: &str, image: &[u8], chunk_size: usize, i: usize) {
        let s = i * chunk_size;
        let data = Bytes::copy_from_slice(&image[s..(s + chunk_size).min(image.len())]);
        self.publish(&format!("chunk/{capture_id}/{i}"), data).await;
    }

    pub async fn chunk_json(&self, capture_id: &str, image: &[u8], chunk_size: usize, i: usize) {
        use base64::Engine as _;
        let s = i * chunk_size;
        let b64 = base64::engine::general_purpose::STANDARD
            .encode(&image[s..(s + chunk_size).min(image.len())]);
        self.publish(
            "data",
            format!(r#"{{"type":"chunk","capture_id":"{capture_id}","index":{i},"data":"{b64}"}}"#),
        )
        .await;
    }

    /// The next ACK/NACK, or panics after `timeout`.
    pub async fn next_ack(&mut self, timeout: Duration) -> Value {
        tokio::time::timeout(timeout, self.acks.recv())
            .await
            .unwrap_or_else(|_| panic!("no ACK/NACK for {} within {timeout:?}", self.id))
            .expect("ack channel open")
    }

    /// ACK/NACKs that arrive within `window`.
    pub async fn acks_within(&mut self, window: Duration) -> Vec<Value> {
        let mut out = vec![];
        let deadline = tokio::time::Instant::now() + window;
        while let Ok(Some(v)) = tokio::time::timeout_at(deadline, self.acks.recv()).await {
            out.push(v);
        }
        out
    }
}

impl Drop for TestDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}
