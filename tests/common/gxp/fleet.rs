//! A GXP fleet: devices that each deliver their captures one after another the way the field
//! firmware does, and the checks on what the engine stored for them.

use std::collections::HashMap;
use std::time::Duration;

use bytes::Bytes;
use serde_json::Value;
use tokio::time::Instant;

use super::db::capture_row;
use super::{ack_ok_problem, stored_object, GxpDevice};
use crate::common::TestEnv;
use fleetflow_sim::image::jpeg;

/// The capture time of every fleet image, and the date folder it is stored under.
const FLEET_TS: &str = "2025-10-07T16:48:00Z";
const FLEET_DAY: &str = "2025/10/07";

/// One image a fleet device has to deliver.
#[derive(Clone, Debug)]
pub struct Capture {
    /// The `image_name`.
    pub name: String,
    /// The JPEG bytes.
    pub image: Bytes,
    /// `capture_timeStamp`.
    pub ts: String,
}

/// How a fleet device behaves.
#[derive(Clone, Copy, Debug)]
pub struct Behaviour {
    /// Chunk size in bytes.
    pub chunk_size: usize,
    /// Pause between chunk publishes (spreads captures over time so a crash hits mid-assembly).
    pub pace: Duration,
    /// Silence after which the device sends the whole pending image again (metadata + chunks).
    pub retry_after: Duration,
    /// When the device gives up on all of its images.
    pub deadline: Duration,
}

/// What one fleet device saw.
#[derive(Clone, Debug, Default)]
pub struct DeviceReport {
    /// The device id.
    pub id: String,
    /// Image names that got `ACK_OK`, in order.
    pub acked: Vec<String>,
    /// Image names never acked before the deadline.
    pub unacked: Vec<String>,
    /// NACKs received.
    pub nacks: usize,
    /// Whole-image resends after a silence.
    pub full_resends: usize,
    /// `ACK_OK`s whose shape was wrong (the message itself).
    pub malformed_acks: Vec<Value>,
}

/// Plays one GXP device: an Alive hello, then each capture in turn (metadata and chunks),
/// resending exactly the NACKed chunks and, after `retry_after` of silence, the whole image.
pub async fn run_fleet_device(
    mut dev: GxpDevice,
    captures: Vec<Capture>,
    b: Behaviour,
) -> DeviceReport {
    let end = Instant::now() + b.deadline;
    let mut r = DeviceReport {
        id: dev.id.clone(),
        ..DeviceReport::default()
    };
    dev.alive(captures.len() as u32).await;
    for c in &captures {
        if deliver(&mut dev, c, b, end, &mut r).await {
            r.acked.push(c.name.clone());
        } else {
            r.unacked.push(c.name.clone());
        }
    }
    r
}

/// Sends one capture until it is acked or `end` passes; true when acked.
async fn deliver(
    dev: &mut GxpDevice,
    c: &Capture,
    b: Behaviour,
    end: Instant,
    r: &mut DeviceReport,
) -> bool {
    dev.meta(&c.name, &c.image, b.chunk_size, &c.ts).await;
    send_paced(dev, c, b, 0..c.image.len().div_ceil(b.chunk_size)).await;
    loop {
        let now = Instant::now();
        if now >= end {
            return false;
        }
        let wait = b.retry_after.min(end - now);
        match tokio::time::timeout(wait, dev.acks.recv()).await {
            Ok(Some((_, v))) if v["image_name"] != c.name.as_str() => {}
            Ok(Some((_, v))) if v.get("ACK_OK").is_some() => {
                if ack_ok_problem(&v, &dev.id, &c.name).is_some() {
                    r.malformed_acks.push(v);
                }
                return true;
            }
            Ok(Some((_, v))) => {
                let missing: Vec<usize> = v["missing_chunks"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|i| i.as_u64())
                            .map(|i| i as usize)
                            .collect()
                    })
                    .unwrap_or_default();
                r.nacks += 1;
                send_paced(dev, c, b, missing.into_iter()).await;
            }
            Ok(None) => return false,
            Err(_) => {
                r.full_resends += 1;
                dev.meta(&c.name, &c.image, b.chunk_size, &c.ts).await;
                send_paced(dev, c, b, 0..c.image.len().div_ceil(b.chunk_size)).await;
            }
        }
    }
}

async fn send_paced(
    dev: &GxpDevice,
    c: &Capture,
    b: Behaviour,
    indexes: impl Iterator<Item = usize>,
) {
    let total = c.image.len().div_ceil(b.chunk_size);
    for i in indexes.filter(|i| *i < total) {
        dev.chunk(&c.name, &c.image, b.chunk_size, i).await;
        if !b.pace.is_zero() {
            tokio::time::sleep(b.pace).await;
        }
    }
}

/// `per_device` real JPEGs of 20–60 KB for fleet device number `dev`.
pub fn fleet_captures(dev: usize, per_device: usize, ts: &str) -> Vec<Capture> {
    (0..per_device)
        .map(|k| {
            let seed = (dev * 100 + k) as u64;
            let len = 20_000 + (seed as usize * 7_919) % 40_000;
            Capture {
                name: format!("image_{:03}.jpg", k + 1),
                image: jpeg(len, seed),
                ts: ts.to_string(),
            }
        })
        .collect()
}

/// Starts one GXP fleet device per id; returns the captures each was given and the tasks.
pub async fn spawn_fleet(
    env: &TestEnv,
    ids: &[String],
    per_device: usize,
    b: Behaviour,
) -> (
    HashMap<String, Vec<Capture>>,
    Vec<tokio::task::JoinHandle<DeviceReport>>,
) {
    let mut given = HashMap::new();
    let mut tasks = vec![];
    for (n, id) in ids.iter().enumerate() {
        let captures = fleet_captures(n, per_device, FLEET_TS);
        given.insert(id.clone(), captures.clone());
        let dev = GxpDevice::connect(env, id).await;
        tasks.push(tokio::spawn(run_fleet_device(dev, captures, b)));
    }
    (given, tasks)
}

/// Every ACK_OK'd image is stored byte-identical with a `stored` row; returns how many.
pub async fn assert_acked_are_stored(
    env: &TestEnv,
    given: &HashMap<String, Vec<Capture>>,
    reports: &[DeviceReport],
) -> usize {
    let mut n = 0;
    for r in reports {
        assert!(
            r.malformed_acks.is_empty(),
            "{}: {:?}",
            r.id,
            r.malformed_acks
        );
        for name in &r.acked {
            let c = given[&r.id].iter().find(|c| &c.name == name).unwrap();
            let key = format!("captures/{}/{FLEET_DAY}/{name}", r.id);
            let stored = stored_object(env, &key);
            assert!(
                stored.as_deref() == Some(&c.image[..]),
                "{key} missing or different"
            );
            let row = capture_row(env, &r.id, name).await;
            assert_eq!(
                row.map(|r| (r.status, r.image_bytes)),
                Some(("stored".into(), c.image.len() as i64)),
                "{}/{name}",
                r.id
            );
            n += 1;
        }
    }
    n
}
