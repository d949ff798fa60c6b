//! Cluster mode (issue 16): captures in flight when their instance is killed with `kill -9`
//! complete on the instance that takes the partition over, in both device formats. The dead
//! instance had taken the metadata and the first chunks into its assembly (and acknowledged them
//! to JetStream), so the new owner sees the rest of a capture it does not know:
//! - a fleetflow v1 device is answered `NACK need_metadata`, sends its metadata again, and then the
//!   chunks NACKed as missing;
//! - a GXP device re-sends its metadata on its own (the firmware does, often many times); the new
//!   owner has buffered the later chunks, NACKs the first ones as `missing_chunks`, and the device
//!   re-sends exactly those.
//!
//! The devices are played by this test over MQTT 3.1.1 through a NATS node, answering every NACK
//! as the firmware does.

use std::collections::{HashMap, HashSet};
use std::time::{Duration, Instant};

use chrono::Utc;
use rumqttc::QoS;

use crate::cluster_harness::{
    actor_lives, device, gxp_meta, publish, settled, subscriber, two_engines, wait_for,
};
use crate::common::engine::Options;
use fleetflow_sim::gxp::wire as gxp_wire;

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

/// The device firmware a test plays.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Format {
    V1,
    Gxp,
}

const GXP_IMAGE: &str = "image_000001.jpg";

fn meta(f: Format, prefix: &str, id: &str, image: &[u8]) -> (String, Vec<u8>) {
    let body = match f {
        Format::V1 => format!(
            r#"{{"type":"capture_meta","capture_id":"r1","image_bytes":{},"total_chunks":{CHUNKS},"chunk_size":{CHUNK}}}"#,
            image.len()
        )
        .into_bytes(),
        Format::Gxp => gxp_meta(id, GXP_IMAGE, image.len(), CHUNK),
    };
    (format!("{prefix}/{id}/data"), body)
}

fn chunk(f: Format, prefix: &str, id: &str, image: &[u8], i: usize) -> (String, Vec<u8>) {
    let part = image.chunks(CHUNK).nth(i).expect("chunk index");
    match f {
        Format::V1 => (format!("{prefix}/{id}/chunk/r1/{i}"), part.to_vec()),
        Format::Gxp => (
            format!("{prefix}/{id}/data"),
            gxp_wire::chunk(id, GXP_IMAGE, i, CHUNK, part).to_vec(),
        ),
    }
}

/// What the engine answered a device on `/ack`.
#[derive(Debug, PartialEq)]
enum Answer {
    AckOk,
    NeedMetadata,
    Missing(Vec<usize>),
    Other,
}

fn answer(f: Format, v: &serde_json::Value) -> Answer {
    match f {
        Format::V1 => match (v["type"].as_str(), v["reason"].as_str()) {
            (Some("ACK_OK"), _) => Answer::AckOk,
            (Some("NACK"), Some("need_metadata")) => Answer::NeedMetadata,
            (Some("NACK"), _) => Answer::Missing(
                v["missing"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .flat_map(|r| r[0].as_u64().unwrap()..=r[1].as_u64().unwrap())
                    .map(|i| i as usize)
                    .collect(),
            ),
            _ => Answer::Other,
        },
        Format::Gxp if !v["ACK_OK"].is_null() => Answer::AckOk,
        Format::Gxp => match v["missing_chunks"].as_array() {
            Some(m) => Answer::Missing(
                m.iter()
                    .filter_map(|i| i.as_u64())
                    .map(|i| i as usize)
                    .collect(),
            ),
            None => Answer::Other,
        },
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn v1_captures_in_flight_on_a_killed_instance_complete_through_nack_resync() {
    in_flight_across_a_kill(Format::V1).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn gxp_captures_in_flight_on_a_killed_instance_complete_when_the_firmware_sends_its_metadata_again(
) {
    in_flight_across_a_kill(Format::Gxp).await;
}

/// Devices of format `f` send the metadata and half their chunks; the instance holding some of
/// them is killed; the rest of the chunks (and, from GXP firmware, the metadata again) follow, and
/// every NACK is answered. Every capture is stored and ACKed, and only the killed instance's
/// devices had to resynchronise (some of them did).
async fn in_flight_across_a_kill(f: Format) {
    // A short assembly timeout: the missing chunks are NACKed soon after the metadata comes again.
    let opts = Options {
        assembly_timeout_ms: 3_000,
        ..Options::default()
    };
    let (prefix, e0, mut e1) = two_engines("r", opts).await;
    let image = jpeg();
    let ids: Vec<String> = (0..DEVICES).map(device).collect();
    // The devices' side: every `/ack`, as (device, answer).
    let (client, mut answers) = subscriber(format!("{prefix}/+/ack"), 0).await;

    // The metadata and the first half of the chunks, taken into the assemblies of both instances.
    let mut first = Vec::new();
    for id in &ids {
        first.push(meta(f, &prefix, id, &image));
        for i in 0..CHUNKS / 2 {
            first.push(chunk(f, &prefix, id, &image, i));
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

    // The rest of the chunks (GXP firmware: and its metadata again); the devices answer every
    // NACK until every capture is ACKed.
    let mut rest = Vec::new();
    for id in &ids {
        for i in CHUNKS / 2..CHUNKS {
            rest.push(chunk(f, &prefix, id, &image, i));
        }
        if f == Format::Gxp {
            rest.push(meta(f, &prefix, id, &image));
        }
    }
    publish(rest, || {}).await;
    let resync_from = Instant::now();
    let mut acked: HashSet<String> = HashSet::new();
    // Devices whose first chunk the new owner never had: v1 asked for the metadata, GXP NACKed
    // for chunk 0.
    let mut resynced: HashSet<String> = HashSet::new();
    let mut missing_nacks = 0;
    let deadline = Instant::now() + Duration::from_secs(90);
    while acked.len() < DEVICES {
        let left = deadline.saturating_duration_since(Instant::now());
        let Ok(Some((dev, v))) = tokio::time::timeout(left, answers.recv()).await else {
            panic!(
                "{f:?}: {} of {DEVICES} captures ACKed; {} devices resynchronised, missing-chunk NACKs {missing_nacks}",
                acked.len(),
                resynced.len()
            );
        };
        let resend = match answer(f, &v) {
            Answer::AckOk => {
                acked.insert(dev);
                continue;
            }
            Answer::NeedMetadata => {
                resynced.insert(dev.clone());
                vec![meta(f, &prefix, &dev, &image)]
            }
            Answer::Missing(list) => {
                missing_nacks += 1;
                if f == Format::Gxp && list.contains(&0) {
                    resynced.insert(dev.clone());
                }
                list.into_iter()
                    .map(|i| chunk(f, &prefix, &dev, &image, i))
                    .collect()
            }
            Answer::Other => continue,
        };
        for (topic, body) in resend {
            client
                .publish(topic, QoS::AtLeastOnce, false, body)
                .await
                .unwrap();
        }
    }
    let stored = format!(
        "SELECT count(*) FROM captures WHERE ingest_status = 'stored' AND image_bytes = {}",
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
        "{f:?}: devices on the killed instance {:?}, on the survivor {:?}; resynchronised {}, missing-chunk NACKs {missing_nacks}",
        by_instance.get(&true),
        by_instance.get(&false),
        resynced.len()
    );
    assert!(
        !resynced.is_empty(),
        "{f:?}: no device had to resynchronise: the kill lost no assembly"
    );
    for d in &resynced {
        assert!(
            on_killed.contains(d),
            "{d} resynced but its actor was not on the killed instance"
        );
    }
}
