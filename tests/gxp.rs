//! The GXP ESP32-CAM firmware already in the field (issue 11, `../shared/GXP-FIRMWARE.md`),
//! black-box: the real engine, raw MQTT clients publishing exactly the firmware's JSON.
//! Section 1 replays the original Python worker's test scripts (`gxp-mqtt-worker/test_*.py`),
//! then the idle-timer NACK, the wake handshake, both formats side by side, kill -9 during a
//! GXP fleet run, and the metadata variants and re-send quirk.
//!
//! - this file: the worker's capture scenarios (section 1 a–e);
//! - `commands_and_timing`: command rows (1 g), the idle-timer NACK (2), the wake handshake (3);
//! - `fleets`: 30 cameras at once (1 f), both formats on one prefix (4), kill -9 (5);
//! - `variants`: metadata field variants, `image_id`, early chunks, the null re-send quirk.

#[path = "gxp/commands_and_timing.rs"]
mod commands_and_timing;
use crate::common;
#[path = "gxp/fleets.rs"]
mod fleets;
#[path = "gxp/variants.rs"]
mod variants;

use std::time::Duration;

use common::gxp::db::{capture_row, wait_capture, wait_error, wait_snapshot, CaptureRow};
use common::gxp::{assert_ack_ok, assert_stored, metadata, GxpDevice, WORKER_TS};
use common::{random_device, Options, TestEnv};
use fleetflow_sim::image::jpeg;
use serde_json::{json, Value};

/// How long an answer or a row may take.
const T: Duration = Duration::from_secs(30);

/// Whether `a` is `b` (floats stored from JSON numbers).
fn close(a: Option<f64>, b: f64) -> bool {
    a.is_some_and(|a| (a - b).abs() < 1e-9)
}

/// Panics if any message in `acks` is an `ACK_OK`.
fn assert_no_ack_ok(acks: &[Value], who: &str) {
    let oks: Vec<&Value> = acks.iter().filter(|a| a.get("ACK_OK").is_some()).collect();
    assert!(oks.is_empty(), "{who} must not get ACK_OK: {oks:?}");
}

/// A small valid capture on another device, acked: the positive control that shows the engine
/// answers in time, so that an absent ACK_OK elsewhere is a decision, not slowness.
async fn control_capture_is_acked(env: &TestEnv) {
    let id = random_device();
    let mut dev = GxpDevice::connect(env, &id).await;
    dev.send_image("control.jpg", &[0xFF, 0xD8, 0xFF, 0xD9], 2, WORKER_TS)
        .await;
    let ack = dev.ack_ok_for("control.jpg", T).await;
    assert_ack_ok(&ack, &id, "control.jpg");
}

// ---- 1. the original worker's scenarios ----

#[tokio::test]
async fn status_metadata_and_a_4_byte_image_in_two_chunks_get_ack_ok_an_object_a_stored_row_and_the_sensor_snapshot(
) {
    let env = TestEnv::start(Options::default()).await;
    let id = random_device();
    let name = "test_image_001.jpg";
    let mut dev = GxpDevice::connect(&env, &id).await;
    dev.status(&json!({"device_id": id, "status": "Alive", "pendingImg": 0}))
        .await;
    let image = [0xFF, 0xD8, 0xFF, 0xD9];
    dev.send_image(name, &image, 2, WORKER_TS).await;
    let ack = dev.ack_ok_for(name, T).await;
    assert_ack_ok(&ack, &id, name);

    // ACK_OK comes after the object and the row: both are there now.
    let key = format!("captures/{id}/2025/10/04/{name}");
    assert_stored(&env, &key, &image);
    let row = capture_row(&env, &id, name).await.expect("captures row");
    assert_eq!(
        row,
        CaptureRow {
            status: "stored".into(),
            image_bytes: 4,
            total_chunks: 2,
            chunk_size: 2,
            storage_path: Some(key),
            captured_at: WORKER_TS.parse().unwrap(),
        }
    );
    let (t, h, p, gas) = wait_snapshot(&env, &id, name).await;
    assert!(
        close(t, 22.5) && close(h, 50.0) && close(p, 1013.25),
        "{t:?} {h:?} {p:?}"
    );
    assert!(
        close(gas, 54.321),
        "flat gas_resistance 54321.0 Ω is 54.321 kΩ: {gas:?}"
    );
}

/// Sends chunk indexes in `order` and expects exactly one ACK_OK and `image` stored.
async fn scrambled_delivery_gives_one_ack_ok(
    env: &TestEnv,
    dev: &mut GxpDevice,
    name: &str,
    image: &[u8],
    chunk_size: usize,
    order: &[usize],
) {
    dev.meta(name, image, chunk_size, "2025-10-04T22:00:00Z")
        .await;
    for &i in order {
        dev.chunk(name, image, chunk_size, i).await;
    }
    let ack = dev.ack_ok_for(name, T).await;
    assert_ack_ok(&ack, &dev.id, name);
    let key = format!("captures/{}/2025/10/04/{name}", dev.id);
    assert_stored(env, &key, image);
    // Positive control on the same device (its actor handles messages in order): a second
    // capture sent now is acked, and nothing before that ACK_OK is another one for `name`.
    let control = format!("control_{name}");
    dev.send_image(&control, &[0xFF, 0xD8, 0xFF, 0xD9], 2, WORKER_TS)
        .await;
    loop {
        let a = dev.next_ack(T).await;
        assert!(
            !(a["image_name"] == name && a.get("ACK_OK").is_some()),
            "one ACK_OK for {name}, then also {a}"
        );
        if a["image_name"] == control.as_str() && a.get("ACK_OK").is_some() {
            break;
        }
    }
    assert_eq!(
        wait_capture(env, &dev.id, name, "stored").await.image_bytes,
        image.len() as i64
    );
}

#[tokio::test]
async fn the_message_log_shows_a_gxp_captures_messages_in_and_its_ack_out() {
    let token = "log-test-token-0123456789abcdef";
    let env = TestEnv::start(Options {
        extra: format!("[admin]\ntoken = \"{token}\"\n[publish_log]\nchunk_sample_every = 2\n"),
        ..Options::default()
    })
    .await;
    let id = random_device();
    let name = "log_me.jpg";
    let mut dev = GxpDevice::connect(&env, &id).await;
    dev.status(&json!({"device_id": id, "status": "Alive", "pendingImg": 1}))
        .await;
    let image = jpeg(3000, 3);
    dev.send_image(name, &image, 1000, WORKER_TS).await;
    assert_ack_ok(&dev.ack_ok_for(name, T).await, &id, name);

    // The old guide's first troubleshooting query, as written (for this device).
    let q = format!(
        "SELECT topic, direction, payload->>'image_name', payload->>'chunk_id', payload ? 'payload', payload->>'payload_length'
         FROM device_publish_log WHERE device_id = '{id}' ORDER BY id"
    );
    // Log batches may commit in any order: wait for every row expected (the ACK_OK out, the
    // status, the metadata and chunks 0 and 2 in).
    let rows = common::eventually(T, "the capture's rows in the message log", || async {
        let rows = env.db().await.query(&q, &[]).await.unwrap();
        let has = |dir: &str, chunk: Option<&str>| {
            rows.iter().any(|r| {
                r.get::<_, &str>(1) == dir
                    && r.get::<_, Option<&str>>(2) == Some(name)
                    && r.get::<_, Option<&str>>(3) == chunk
            })
        };
        let all =
            has("out", None) && has("in", None) && has("in", Some("0")) && has("in", Some("2"));
        (all && rows
            .iter()
            .any(|r| r.get::<_, &str>(0).ends_with("/status")))
        .then_some(rows)
    })
    .await;
    let seen: Vec<(String, String, Option<String>, Option<String>)> = rows
        .iter()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
        .collect();
    let data = format!("{}/{id}/data", env.prefix);
    let topic_in = |suffix: &str| format!("{}/{id}/{suffix}", env.prefix);
    // In: the wake hello, the metadata, and chunks 0 and 2 of 0..=2 (1 in 2); out: ACK_OK.
    assert!(
        seen.iter()
            .any(|s| s.0 == topic_in("status") && s.1 == "in"),
        "{seen:?}"
    );
    assert!(
        seen.contains(&(data.clone(), "in".into(), Some(name.into()), None)),
        "{seen:?}"
    );
    for chunk in ["0", "2"] {
        assert!(
            seen.contains(&(
                data.clone(),
                "in".into(),
                Some(name.into()),
                Some(chunk.into())
            )),
            "chunk {chunk}: {seen:?}"
        );
    }
    assert!(
        !seen.iter().any(|s| s.3.as_deref() == Some("1")),
        "chunk 1 is sampled out: {seen:?}"
    );
    assert!(
        seen.contains(&(topic_in("ack"), "out".into(), Some(name.into()), None)),
        "{seen:?}"
    );
    // Chunks are logged without their data, with its length.
    for r in rows
        .iter()
        .filter(|r| r.get::<_, Option<String>>(3).is_some())
    {
        assert!(!r.get::<_, bool>(4), "a logged chunk keeps no payload");
        assert!(
            r.get::<_, Option<String>>(5)
                .unwrap()
                .parse::<usize>()
                .unwrap()
                > 1000
        );
    }

    // The API pages through the same rows, newest first.
    let page: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/devices/{id}/messages?limit=2", env.http))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let msgs = page["messages"].as_array().unwrap();
    assert_eq!(msgs.len(), 2, "{page}");
    assert_eq!(msgs[0]["direction"], "out");
    assert!(msgs[0]["id"].as_i64() > msgs[1]["id"].as_i64());
    let next = page["next_before_id"].as_i64().unwrap();
    let older: Value = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/devices/{id}/messages?before_id={next}&direction=in",
            env.http
        ))
        .bearer_auth(token)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let older = older["messages"].as_array().unwrap();
    assert!(
        !older.is_empty()
            && older
                .iter()
                .all(|m| m["direction"] == "in" && m["id"].as_i64().unwrap() < next)
    );
}

#[tokio::test]
async fn duplicated_and_out_of_order_chunks_give_one_ack_ok_and_a_byte_identical_object() {
    let env = TestEnv::start(Options::default()).await;
    // test_duplicate_chunks.py: 10 bytes in 5 chunks; 1 and 4 twice, 2 three times.
    let mut dup = GxpDevice::connect(&env, "DUPLICATE01").await;
    let ten = [0xFF, 0xD8, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF, 0xFF, 0xD9];
    let order = [0, 1, 1, 2, 2, 2, 3, 4, 4];
    scrambled_delivery_gives_one_ack_ok(&env, &mut dup, "duplicate_test.jpg", &ten, 2, &order)
        .await;
    // test_out_of_order.py: 12 bytes in 4 chunks of 3, four arrival orders.
    let mut ooo = GxpDevice::connect(&env, "OUTOFORDER01").await;
    let twelve = [
        0xFF, 0xD8, 0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0x11, 0x22, 0x33, 0xFF, 0xD9,
    ];
    let patterns: [[usize; 4]; 4] = [[3, 2, 1, 0], [2, 1, 3, 0], [1, 3, 0, 2], [3, 0, 1, 2]];
    for (n, p) in patterns.iter().enumerate() {
        let name = format!("scrambled_{n}.jpg");
        scrambled_delivery_gives_one_ack_ok(&env, &mut ooo, &name, &twelve, 3, p).await;
    }
    // A real 30 KB JPEG, reversed, with every third chunk twice.
    let big = jpeg(30_000, 9);
    let order: Vec<usize> = (0..30)
        .rev()
        .flat_map(|i| vec![i; 1 + usize::from(i % 3 == 0)])
        .collect();
    scrambled_delivery_gives_one_ack_ok(&env, &mut ooo, "big_scrambled.jpg", &big, 1024, &order)
        .await;
}

#[tokio::test]
async fn an_invalid_jpeg_is_error_2203_and_a_failed_capture_with_no_ack_ok_while_a_valid_one_is_acked(
) {
    let env = TestEnv::start(Options::default()).await;
    // test_invalid_jpeg.py's cases.
    let cases: [(&str, &str, &[u8]); 3] = [
        (
            "INVALID101",
            "missing_soi.jpg",
            &[0xAA, 0xBB, 0xCC, 0xDD, 0xFF, 0xD9],
        ),
        (
            "INVALID102",
            "missing_eoi.jpg",
            &[0xFF, 0xD8, 0xAA, 0xBB, 0xCC, 0xDD],
        ),
        (
            "INVALID103",
            "not_jpeg.jpg",
            &[0x89, 0x50, 0x4E, 0x47, 0x0D, 0x0A],
        ),
    ];
    let mut devs = vec![];
    for (id, name, data) in cases {
        let dev = GxpDevice::connect(&env, id).await;
        dev.alive(1).await;
        dev.send_image(name, data, 2, "2025-10-04T21:00:00Z").await;
        devs.push(dev);
    }
    control_capture_is_acked(&env).await;
    for ((id, name, _), dev) in cases.iter().zip(devs.iter_mut()) {
        wait_error(&env, id, 2203, T).await;
        wait_capture(&env, id, name, "failed").await;
        let acks = dev.acks_within(Duration::from_secs(1)).await;
        assert_no_ack_ok(&acks, id);
        assert!(
            !env.objects_dir.join(format!("captures/{id}")).exists(),
            "nothing stored for {id}"
        );
    }
}

#[tokio::test]
async fn a_declared_size_that_differs_from_the_assembled_bytes_is_error_2202_and_failed_with_no_ack_ok(
) {
    let env = TestEnv::start(Options::default()).await;
    // image_size 10 declared, 2 chunks of 2 bytes sent; and the worker's own case (100 vs 6).
    let cases: [(&str, &str, usize, &[u8]); 2] = [
        ("SIZEMISMATCH01", "short.jpg", 10, &[0xFF, 0xD8, 0xFF, 0xD9]),
        (
            "INVALID104",
            "size_mismatch.jpg",
            100,
            &[0xFF, 0xD8, 0xAA, 0xBB, 0xFF, 0xD9],
        ),
    ];
    let mut devs = vec![];
    for (id, name, declared, data) in cases {
        let dev = GxpDevice::connect(&env, id).await;
        let mut m = metadata(id, name, declared, 2, "2025-10-04T21:00:00Z");
        m["total_chunk_count"] = json!(data.len().div_ceil(2));
        dev.data(&m).await;
        dev.chunks(name, data, 2).await;
        devs.push(dev);
    }
    control_capture_is_acked(&env).await;
    for ((id, name, _, _), dev) in cases.iter().zip(devs.iter_mut()) {
        wait_error(&env, id, 2202, T).await;
        wait_capture(&env, id, name, "failed").await;
        let acks = dev.acks_within(Duration::from_secs(1)).await;
        assert_no_ack_ok(&acks, id);
        assert!(!env.objects_dir.join(format!("captures/{id}")).exists());
    }
}

#[tokio::test]
async fn device_reported_errors_1_to_4_and_99_become_codes_1001_to_1004_and_1099_naming_the_cause_and_failed_captures(
) {
    let env = TestEnv::start(Options::default()).await;
    // test_error_codes.py's cases.
    let cases = [
        ("ERROR101", 1, "cam_init_fail.jpg", "camera init"),
        ("ERROR102", 2, "capture_fail.jpg", "capture"),
        ("ERROR103", 3, "sensor_fail.jpg", "sensor read"),
        ("ERROR104", 4, "memory_fail.jpg", "memory"),
        ("ERROR105", 99, "unknown_error.jpg", "unknown"),
    ];
    let mut devs = vec![];
    for (id, e, name, _) in cases {
        let dev = GxpDevice::connect(&env, id).await;
        dev.alive(1).await;
        let mut m = metadata(id, name, 0, 1024, "2025-10-05T17:30:00Z");
        m["error"] = json!(e);
        m["location"] = json!("error_test_lab");
        m["temperature"] = json!(23.5);
        m["humidity"] = json!(55.0);
        m["pressure"] = json!(1012.0);
        m["gas_resistance"] = json!(52000.0);
        dev.data(&m).await;
        devs.push(dev);
    }
    for ((id, e, name, cause), dev) in cases.iter().zip(devs.iter_mut()) {
        // "At once": well before any assembly timeout (30 s here).
        let msg = wait_error(&env, id, 1000 + e, Duration::from_secs(10)).await;
        assert!(
            msg.to_lowercase().contains(cause),
            "the message for error {e} names '{cause}': {msg}"
        );
        wait_capture(&env, id, name, "failed").await;
        assert_no_ack_ok(&dev.acks_within(Duration::from_millis(500)).await, id);
        assert!(!env.objects_dir.join(format!("captures/{id}")).exists());
    }
}
