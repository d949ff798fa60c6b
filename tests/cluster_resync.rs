//! Cluster mode (issue 16): captures in flight when their instance is killed with `kill -9`
//! complete through NACK resync. The dead instance had taken the metadata and the first chunks
//! into its assembly (and acknowledged them to JetStream); the instance that takes the partition
//! over sees the remaining chunks of a capture it does not know, answers `NACK need_metadata`,
//! and the device's answers (metadata again, then the chunks NACKed as missing) complete it.
//! The devices are played by this test over MQTT 3.1.1 through a NATS node, answering every
//! NACK as the firmware does.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use crate::cluster::{actor_lives, device, engine_with, mqtt_ports, publish, settled, wait_for};
use crate::common::engine::Options;
use crate::common::services::random_hex;

/// Devices with a capture in flight.
const DEVICES: usize = 40;
const CHUNK: usize = 256;
const CHUNKS: usize = 4;

/// A valid JPEG of four 256-byte chunks (SOI, padding, EOI).
fn jpeg() -> Vec<u8> {
    let mut j = vec![0x11u8; CHUNK * CHUNKS - 24];
    j[..2].copy_from_slice(&[0xff, 0xd8]);
    let n = j.len();
    j[n - 2..].copy_from_slice(&[0xff, 0xd9]);
    j
}

fn meta(prefix: &str, id: &str, image: &[u8]) -> (String, Vec<u8>) {
    let body = format!(
        r#"{{"type":"capture_meta","capture_id":"r1","image_bytes":{},"total_chunks":{CHUNKS},"chunk_size":{CHUNK}}}"#,
        image.len()
    );
    (format!("{prefix}/{id}/data"), body.into_bytes())
}

fn chunk(prefix: &str, id: &str, image: &[u8], i: usize) -> (String, Vec<u8>) {
    let part = image.chunks(CHUNK).nth(i).expect("chunk index").to_vec();
    (format!("{prefix}/{id}/chunk/r1/{i}"), part)
}

/// The devices' side: subscribed to every `/ack`, forwarding (device, answer) to the test.
async fn devices_side(
    prefix: &str,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, serde_json::Value)>,
) {
    let mut o = MqttOptions::new(
        format!("resync-{}", random_hex(6)),
        "127.0.0.1",
        mqtt_ports()[0],
    );
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(o, 1000);
    client
        .subscribe(format!("{prefix}/+/ack"), QoS::AtMostOnce)
        .await
        .unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        while let Ok(e) = ev.poll().await {
            match e {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(t) = subscribed_tx.take() {
                        let _ = t.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let dev = p.topic.split('/').nth(1).unwrap_or_default().to_string();
                    if let Ok(v) = serde_json::from_slice(&p.payload) {
                        let _ = tx.send((dev, v));
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("no SUBACK from NATS's MQTT listener")
        .unwrap();
    (client, rx)
}

#[tokio::test(flavor = "multi_thread")]
async fn captures_in_flight_on_a_killed_instance_complete_through_nack_resync() {
    let prefix = format!("r{}", random_hex(8));
    // A short assembly timeout: the missing chunks are NACKed soon after the metadata comes again.
    let opts = || Options {
        assembly_timeout_ms: 3_000,
        ..Options::default()
    };
    let e0 = engine_with("r0", &prefix, None, opts()).await;
    let mut e1 = engine_with("r1", &prefix, Some(e0.db_url.clone()), opts()).await;
    settled(&[&e0, &e1], Duration::from_secs(30)).await;
    let image = jpeg();
    let ids: Vec<String> = (0..DEVICES).map(device).collect();
    let (client, mut answers) = devices_side(&prefix).await;

    // The metadata and the first half of the chunks, taken into the assemblies of both instances.
    let mut first = Vec::new();
    for id in &ids {
        first.push(meta(&prefix, id, &image));
        for i in 0..CHUNKS / 2 {
            first.push(chunk(&prefix, id, &image, i));
        }
    }
    publish(first, || {}).await;
    let accepted = r#"fleetflow_chunks_total{outcome="accepted"}"#;
    let want = (DEVICES * CHUNKS / 2) as f64;
    let deadline = Instant::now() + Duration::from_secs(20);
    while e0.metric(accepted).await + e1.metric(accepted).await < want {
        assert!(Instant::now() < deadline, "the first chunks were not taken");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // Their JetStream acks are on their way; then the instance dies.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let killed_at = Utc::now();
    e1.kill9();
    settled(&[&e0], Duration::from_secs(10)).await;

    // The rest of the chunks; the devices answer every NACK until every capture is ACKed.
    let mut rest = Vec::new();
    for id in &ids {
        for i in CHUNKS / 2..CHUNKS {
            rest.push(chunk(&prefix, id, &image, i));
        }
    }
    publish(rest, || {}).await;
    let resync_from = Instant::now();
    let mut acked: HashSet<String> = HashSet::new();
    let mut asked_metadata: HashSet<String> = HashSet::new();
    let mut missing_nacks = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while acked.len() < DEVICES {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((dev, v))) = tokio::time::timeout(left, answers.recv()).await else {
            panic!(
                "{} of {DEVICES} captures ACKed; NACKs: need_metadata from {}, missing {missing_nacks}",
                acked.len(),
                asked_metadata.len()
            );
        };
        let mut resend = Vec::new();
        match (v["type"].as_str(), v["reason"].as_str()) {
            (Some("ACK_OK"), _) => {
                acked.insert(dev);
            }
            (Some("NACK"), Some("need_metadata")) => {
                asked_metadata.insert(dev.clone());
                resend.push(meta(&prefix, &dev, &image));
            }
            (Some("NACK"), _) => {
                missing_nacks += 1;
                for r in v["missing"].as_array().into_iter().flatten() {
                    let (s, e) = (r[0].as_u64().unwrap(), r[1].as_u64().unwrap());
                    for i in s..=e {
                        resend.push(chunk(&prefix, &dev, &image, i as usize));
                    }
                }
            }
            _ => {}
        }
        for (topic, body) in resend {
            client
                .publish(topic, QoS::AtLeastOnce, false, body)
                .await
                .unwrap();
        }
    }
    let stored = format!(
        "SELECT count(*) FROM captures WHERE ingest_status = 'stored' AND device_id LIKE 'CC00%' \
         AND device_capture_id = 'r1' AND image_bytes = {}",
        image.len()
    );
    wait_for(&e0, &stored, DEVICES as i64, Duration::from_secs(20)).await;
    eprintln!(
        "every capture ACKed {:?} after the last chunks",
        resync_from.elapsed()
    );

    // Which instance held each device's actor when e1 died: only e1's devices had to resync,
    // and some did (the positive control: the kill did lose assemblies).
    let lives = actor_lives(&[
        ("r0".into(), e0.log(), None),
        ("r1".into(), e1.log(), Some(killed_at)),
    ]);
    let on_killed: HashSet<&String> = lives
        .iter()
        .filter(|(_, l)| l.iter().any(|(i, _, to)| i == "r1" && *to == killed_at))
        .map(|(d, _)| d)
        .collect();
    let by_instance: HashMap<bool, usize> = ids.iter().fold(HashMap::new(), |mut m, d| {
        *m.entry(on_killed.contains(d)).or_default() += 1;
        m
    });
    eprintln!(
        "devices on the killed instance {:?}, on the survivor {:?}; need_metadata from {}, missing-chunk NACKs {missing_nacks}",
        by_instance.get(&true),
        by_instance.get(&false),
        asked_metadata.len()
    );
    assert!(
        !asked_metadata.is_empty(),
        "no device was asked for its metadata again: the kill lost no assembly"
    );
    for d in &asked_metadata {
        assert!(
            on_killed.contains(d),
            "{d} resynced but its actor was not on the killed instance"
        );
    }
}
