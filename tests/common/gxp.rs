//! A GXP ESP32-CAM firmware stand-in for the black-box tests (`../shared/GXP-FIRMWARE.md`):
//! `GxpDevice` publishes the firmware's JSON exactly (status, metadata, base64 chunks on
//! `/data`) and keeps what the engine answers on `/ack` apart from what it sends on `/cmd`.
//!
//! - `fleet`: a whole device that resends what it is NACKed and, after a silence, its whole
//!   pending image again, as the field firmware does on its next wake.
//! - `db`: the rows a GXP capture leaves (captures, snapshot, errors, commands).

pub mod db;
pub mod fleet;

use std::time::Duration;

use base64::Engine as _;
use bytes::Bytes;
use rumqttc::v5::mqttbytes::v5::{Filter, Packet};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tokio::time::Instant;

use super::{random_hex, TestEnv};

/// The capture time used by the worker's own test scripts.
pub const WORKER_TS: &str = "2025-10-04T18:30:00Z";

/// A raw MQTT client that speaks the GXP firmware's wire format for one device id.
pub struct GxpDevice {
    /// The device id (topic level and `device_id` field).
    pub id: String,
    /// The topic prefix.
    pub prefix: String,
    client: AsyncClient,
    /// JSON published by the engine on `{prefix}/{id}/ack`, with its arrival time.
    acks: mpsc::UnboundedReceiver<(Instant, Value)>,
    /// JSON published by the engine on `{prefix}/{id}/cmd`, with its arrival time.
    cmds: mpsc::UnboundedReceiver<(Instant, Value)>,
    task: tokio::task::JoinHandle<()>,
}

impl GxpDevice {
    /// Connects to the test's broker and subscribes to the device's `/ack` and `/cmd`.
    pub async fn connect(env: &TestEnv, id: &str) -> Self {
        let s = &env.services;
        let mut o = MqttOptions::new(format!("gxp-{}", random_hex(10)), &s.mqtt_host, s.mqtt_port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(Some(1 << 20));
        let (client, mut el) = AsyncClient::new(o, 10_000);
        let (ack_tx, acks) = mpsc::unbounded_channel();
        let (cmd_tx, cmds) = mpsc::unbounded_channel();
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else {
                            continue;
                        };
                        let now = Instant::now();
                        if p.topic.ends_with(b"/cmd") {
                            let _ = cmd_tx.send((now, v));
                        } else {
                            let _ = ack_tx.send((now, v));
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        let prefix = env.prefix.clone();
        client
            .subscribe_many([
                Filter::new(format!("{prefix}/{id}/ack"), QoS::AtLeastOnce),
                Filter::new(format!("{prefix}/{id}/cmd"), QoS::AtLeastOnce),
            ])
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), sub_rx.recv())
            .await
            .expect("SUBACK within 10 s");
        Self {
            id: id.to_string(),
            prefix,
            client,
            acks,
            cmds,
            task,
        }
    }

    /// Publishes `payload` at QoS 1 on `{prefix}/{id}/{suffix}`.
    pub async fn publish(&self, suffix: &str, payload: impl Into<Bytes>) {
        self.client
            .publish(
                format!("{}/{}/{suffix}", self.prefix, self.id),
                QoS::AtLeastOnce,
                false,
                payload.into(),
            )
            .await
            .unwrap();
    }

    /// Publishes a JSON value on `/data`.
    pub async fn data(&self, v: &Value) {
        self.publish("data", v.to_string()).await;
    }

    /// Publishes a JSON value on `/status`.
    pub async fn status(&self, v: &Value) {
        self.publish("status", v.to_string()).await;
    }

    /// The wake-up hello: `{"device_id", "status": "Alive", "pendingImg": n}`.
    pub async fn alive(&self, pending: u32) {
        self.status(&json!({"device_id": self.id, "status": "Alive", "pendingImg": pending}))
            .await;
    }

    /// The worker's standard metadata for `image` (flat sensors, gas in ohms, `error` 0).
    pub async fn meta(&self, name: &str, image: &[u8], chunk_size: usize, ts: &str) {
        self.data(&metadata(&self.id, name, image.len(), chunk_size, ts))
            .await;
    }

    /// Chunk `i` of `image` in the firmware's JSON form.
    pub async fn chunk(&self, name: &str, image: &[u8], chunk_size: usize, i: usize) {
        self.data(&chunk(&self.id, name, image, chunk_size, i))
            .await;
    }

    /// Every chunk of `image`, in order.
    pub async fn chunks(&self, name: &str, image: &[u8], chunk_size: usize) {
        for i in 0..image.len().div_ceil(chunk_size) {
            self.chunk(name, image, chunk_size, i).await;
        }
    }

    /// Metadata, then every chunk.
    pub async fn send_image(&self, name: &str, image: &[u8], chunk_size: usize, ts: &str) {
        self.meta(name, image, chunk_size, ts).await;
        self.chunks(name, image, chunk_size).await;
    }

    /// The next message on `/ack`, or panics after `timeout`.
    pub async fn next_ack(&mut self, timeout: Duration) -> Value {
        self.next_ack_at(timeout).await.1
    }

    /// The next message on `/ack` with its arrival time, or panics after `timeout`.
    pub async fn next_ack_at(&mut self, timeout: Duration) -> (Instant, Value) {
        tokio::time::timeout(timeout, self.acks.recv())
            .await
            .unwrap_or_else(|_| panic!("nothing on {}/ack within {timeout:?}", self.id))
            .expect("ack channel open")
    }

    /// The next message on `/cmd`, or panics after `timeout`.
    pub async fn next_cmd(&mut self, timeout: Duration) -> Value {
        tokio::time::timeout(timeout, self.cmds.recv())
            .await
            .unwrap_or_else(|_| panic!("nothing on {}/cmd within {timeout:?}", self.id))
            .expect("cmd channel open")
            .1
    }

    /// Messages on `/ack` that arrive within `window`.
    pub async fn acks_within(&mut self, window: Duration) -> Vec<Value> {
        drain(&mut self.acks, window).await
    }

    /// Messages on `/cmd` that arrive within `window`.
    pub async fn cmds_within(&mut self, window: Duration) -> Vec<Value> {
        drain(&mut self.cmds, window).await
    }

    /// Waits for the `ACK_OK` of `name`, skipping other answers (NACKs are returned as failures).
    pub async fn ack_ok_for(&mut self, name: &str, timeout: Duration) -> Value {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let v = self.next_ack(left).await;
            if v["image_name"] == name && v.get("ACK_OK").is_some() {
                return v;
            }
            assert!(
                v.get("missing_chunks").is_none() || v["image_name"] != name,
                "a NACK instead of ACK_OK for {name}: {v}"
            );
        }
    }
}

impl Drop for GxpDevice {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn drain(rx: &mut mpsc::UnboundedReceiver<(Instant, Value)>, window: Duration) -> Vec<Value> {
    let mut out = vec![];
    let deadline = Instant::now() + window;
    while let Ok(Some((_, v))) = tokio::time::timeout_at(deadline, rx.recv()).await {
        out.push(v);
    }
    out
}

/// The worker's metadata message (`test_mqtt.py`): flat sensors, gas resistance in ohms.
pub fn metadata(id: &str, name: &str, image_size: usize, chunk_size: usize, ts: &str) -> Value {
    json!({
        "device_id": id,
        "capture_timeStamp": ts,
        "image_name": name,
        "image_size": image_size,
        "max_chunks_size": chunk_size,
        "total_chunk_count": image_size.div_ceil(chunk_size),
        "location": "test_lab",
        "error": 0,
        "temperature": 22.5,
        "humidity": 50.0,
        "pressure": 1013.25,
        "gas_resistance": 54321.0
    })
}

/// Chunk `i` of `image` as the firmware sends it on `/data`.
pub fn chunk(id: &str, name: &str, image: &[u8], chunk_size: usize, i: usize) -> Value {
    let s = i * chunk_size;
    let bytes = &image[s..(s + chunk_size).min(image.len())];
    json!({
        "device_id": id,
        "image_name": name,
        "chunk_id": i,
        "max_chunk_size": chunk_size,
        "payload": base64::engine::general_purpose::STANDARD.encode(bytes)
    })
}

/// Panics unless `v` is exactly a GXP `ACK_OK` for `name`:
/// `{"device_id", "image_name", "ACK_OK": {"next_wake_time"?: "H:MMAM"}}`.
pub fn assert_ack_ok(v: &Value, id: &str, name: &str) {
    if let Some(problem) = ack_ok_problem(v, id, name) {
        panic!("{problem}: {v}");
    }
}

/// What is wrong with `v` as the GXP `ACK_OK` of `id`'s `name`, if anything.
pub fn ack_ok_problem(v: &Value, id: &str, name: &str) -> Option<String> {
    let Some(obj) = v.as_object() else {
        return Some("not a JSON object".into());
    };
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    if keys != ["ACK_OK", "device_id", "image_name"] {
        return Some(format!("keys {keys:?}, want ACK_OK, device_id, image_name"));
    }
    if v["device_id"] != id || v["image_name"] != name {
        return Some(format!("not for {id}/{name}"));
    }
    let Some(ok) = v["ACK_OK"].as_object() else {
        return Some("ACK_OK is not an object".into());
    };
    match ok.get("next_wake_time") {
        Some(t) if !t.as_str().is_some_and(is_clock_time) => {
            Some("next_wake_time is not H:MMAM/PM".into())
        }
        _ => None,
    }
}

/// `H:MMAM` / `HH:MMPM`, the firmware's clock-time format.
pub fn is_clock_time(t: &str) -> bool {
    let Some(hm) = t.strip_suffix("AM").or_else(|| t.strip_suffix("PM")) else {
        return false;
    };
    let Some((h, m)) = hm.split_once(':') else {
        return false;
    };
    let h_ok = matches!(h.parse::<u32>(), Ok(1..=12)) && !h.starts_with('0');
    let m_ok = m.len() == 2 && matches!(m.parse::<u32>(), Ok(0..=59));
    h_ok && m_ok
}

/// Reads a stored object from the engine's local objects directory.
pub fn stored_object(env: &TestEnv, key: &str) -> Option<Vec<u8>> {
    std::fs::read(env.objects_dir.join(key)).ok()
}

/// Panics unless the object `key` holds exactly `want`, saying how it differs (never dumping
/// the bytes).
pub fn assert_stored(env: &TestEnv, key: &str, want: &[u8]) {
    let Some(got) = stored_object(env, key) else {
        panic!("no object {key} under {}", env.objects_dir.display());
    };
    if got != want {
        let first = got.iter().zip(want).position(|(a, b)| a != b);
        panic!(
            "object {key} differs: {} bytes stored, {} sent, first difference at {first:?}",
            got.len(),
            want.len()
        );
    }
}
