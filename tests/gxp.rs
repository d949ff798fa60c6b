//! The GXP ESP32-CAM firmware already in the field (issue 11, `../shared/GXP-FIRMWARE.md`),
//! black-box: the real engine, raw MQTT clients publishing exactly the firmware's JSON.
//! Section 1 replays the original Python worker's test scripts (`gxp-mqtt-worker/test_*.py`),
//! then the idle-timer NACK, the wake handshake, both formats side by side, kill -9 during a
//! GXP fleet run, and the metadata variants and re-send quirk.

mod common;

use std::collections::HashMap;
use std::time::Duration;

use chrono::{DateTime, Utc};
use common::gxp::{
    assert_ack_ok, chunk, metadata, run_fleet_device, stored_object, Behaviour, Capture,
    DeviceReport, GxpDevice, WORKER_TS,
};
use common::{eventually, random_device, Options, TestEnv};
use fleetflow::sim::image::jpeg;
use serde_json::{json, Value};
use tokio::time::Instant;

const T: Duration = Duration::from_secs(30);

/// The `captures` row of one image.
#[derive(Debug, Clone, PartialEq)]
struct CaptureRow {
    status: String,
    image_bytes: i64,
    total_chunks: i32,
    chunk_size: i32,
    storage_path: Option<String>,
    captured_at: DateTime<Utc>,
}

async fn capture_row(env: &TestEnv, id: &str, name: &str) -> Option<CaptureRow> {
    let r = env
        .db()
        .await
        .query_opt(
            "SELECT ingest_status, image_bytes, total_chunks, chunk_size, storage_path, captured_at FROM captures WHERE device_id = $1 AND device_capture_id = $2",
            &[&id, &name],
        )
        .await
        .unwrap()?;
    Some(CaptureRow {
        status: r.get(0),
        image_bytes: r.get(1),
        total_chunks: r.get(2),
        chunk_size: r.get(3),
        storage_path: r.get(4),
        captured_at: r.get(5),
    })
}

/// Waits for the capture row of `name` to reach `status`.
async fn wait_capture(env: &TestEnv, id: &str, name: &str, status: &str) -> CaptureRow {
    eventually(
        T,
        &format!("captures row {id}/{name} '{status}'"),
        || async {
            capture_row(env, id, name)
                .await
                .filter(|r| r.status == status)
        },
    )
    .await
}

/// Waits for a `device_errors` row of `code` for `id`; returns its message.
async fn wait_error(env: &TestEnv, id: &str, code: i32, within: Duration) -> String {
    eventually(within, &format!("device_errors {code} for {id}"), || async {
        env.db()
            .await
            .query_opt(
                "SELECT message FROM device_errors WHERE device_id = $1 AND error_code = $2 LIMIT 1",
                &[&id, &code],
            )
            .await
            .unwrap()
            .map(|r| r.get::<_, String>(0))
    })
    .await
}

/// The sensor snapshot of a capture: temperature, humidity, pressure, gas (kΩ).
type Snapshot = (Option<f64>, Option<f64>, Option<f64>, Option<f64>);

async fn snapshot(env: &TestEnv, id: &str, name: &str) -> Option<Snapshot> {
    let rows = env
        .db()
        .await
        .query(
            "SELECT temperature_c, humidity_pct, pressure_hpa, gas_kohm FROM sensor_readings WHERE device_id = $1 AND capture_id = $2",
            &[&id, &name],
        )
        .await
        .unwrap();
    assert!(
        rows.len() <= 1,
        "one snapshot per capture, got {}",
        rows.len()
    );
    rows.first()
        .map(|r| (r.get(0), r.get(1), r.get(2), r.get(3)))
}

async fn wait_snapshot(env: &TestEnv, id: &str, name: &str) -> Snapshot {
    eventually(T, &format!("the sensor snapshot of {id}/{name}"), || {
        snapshot(env, id, name)
    })
    .await
}

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
    assert_eq!(stored_object(&env, &key), Some(image.to_vec()), "{key}");
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
    assert_eq!(stored_object(env, &key), Some(image.to_vec()), "{key}");
    let later = dev.acks_within(Duration::from_millis(1500)).await;
    let again: Vec<&Value> = later
        .iter()
        .filter(|a| a["image_name"] == name && a.get("ACK_OK").is_some())
        .collect();
    assert!(
        again.is_empty(),
        "one ACK_OK for {name}, then also {again:?}"
    );
    assert_eq!(
        wait_capture(env, &dev.id, name, "stored").await.image_bytes,
        image.len() as i64
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

fn fleet_captures(dev: usize, per_device: usize, ts: &str) -> Vec<Capture> {
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
async fn spawn_fleet(
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
        let captures = fleet_captures(n, per_device, "2025-10-07T16:48:00Z");
        given.insert(id.clone(), captures.clone());
        let dev = GxpDevice::connect(env, id).await;
        tasks.push(tokio::spawn(run_fleet_device(dev, captures, b)));
    }
    (given, tasks)
}

/// Every ACK_OK'd image is stored byte-identical with a `stored` row; returns how many.
async fn assert_acked_are_stored(
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
            let key = format!("captures/{}/2025/10/07/{name}", r.id);
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

#[tokio::test]
async fn thirty_cameras_sending_two_real_jpegs_each_at_once_are_all_acked_and_stored_byte_identical(
) {
    let env = TestEnv::start(Options::default()).await;
    let ids: Vec<String> = (0..30).map(|_| random_device()).collect();
    let b = Behaviour {
        chunk_size: 1024,
        pace: Duration::ZERO,
        retry_after: Duration::from_secs(60),
        deadline: Duration::from_secs(120),
    };
    let (given, tasks) = spawn_fleet(&env, &ids, 2, b).await;
    let mut reports = vec![];
    for t in tasks {
        reports.push(t.await.unwrap());
    }
    let unacked: Vec<(&str, &Vec<String>)> = reports
        .iter()
        .filter(|r| !r.unacked.is_empty())
        .map(|r| (r.id.as_str(), &r.unacked))
        .collect();
    assert!(unacked.is_empty(), "never acked: {unacked:?}");
    assert_eq!(assert_acked_are_stored(&env, &given, &reports).await, 60);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM captures WHERE ingest_status = 'stored'")
            .await,
        60
    );
}

/// Inserts a command row by plain SQL, as the worker's operators did.
async fn insert_command(env: &TestEnv, id: &str, name: &str, args: &str) {
    env.db()
        .await
        .execute(
            "INSERT INTO device_commands (device_id, name, args, status) VALUES ($1, $2, $3::text::jsonb, 'queued')",
            &[&id, &name, &args],
        )
        .await
        .unwrap_or_else(|e| panic!("insert {name} for {id}: {e}"));
}

async fn wait_all_sent(env: &TestEnv, id: &str, n: i64) {
    eventually(Duration::from_secs(5), "the command rows marked sent", || async {
        let sent = env
            .scalar_i64(&format!(
                "SELECT count(*) FROM device_commands WHERE device_id = '{id}' AND status = 'sent' AND sent_at IS NOT NULL"
            ))
            .await;
        (sent == n).then_some(())
    })
    .await;
}

#[tokio::test]
async fn command_rows_inserted_by_sql_reach_the_device_in_the_firmware_shape_within_2_s_and_become_sent(
) {
    let env = TestEnv::start(Options::default()).await;
    let id = "CMDTEST01";
    let mut dev = GxpDevice::connect(&env, id).await;
    let within = Duration::from_secs(2);

    insert_command(&env, id, "capture_image", "{}").await;
    assert_eq!(
        dev.next_cmd(within).await,
        json!({"device_id": id, "capture_image": true})
    );
    wait_all_sent(&env, id, 1).await;

    insert_command(&env, id, "send_image", r#"{"image_name": "image_001.jpg"}"#).await;
    assert_eq!(
        dev.next_cmd(within).await,
        json!({"device_id": id, "send_image": "image_001.jpg"})
    );
    wait_all_sent(&env, id, 2).await;

    // Three rows at once (test_command_queue_simple.py): all three, in the order inserted.
    insert_command(&env, id, "capture_image", "{}").await;
    insert_command(&env, id, "send_image", r#"{"image_name": "test_002.jpg"}"#).await;
    insert_command(&env, id, "send_image", r#"{"image_name": "test_003.jpg"}"#).await;
    let mut got = vec![];
    for _ in 0..3 {
        got.push(dev.next_cmd(within).await);
    }
    assert_eq!(
        got,
        vec![
            json!({"device_id": id, "capture_image": true}),
            json!({"device_id": id, "send_image": "test_002.jpg"}),
            json!({"device_id": id, "send_image": "test_003.jpg"}),
        ]
    );
    wait_all_sent(&env, id, 5).await;
    assert!(
        dev.cmds_within(Duration::from_secs(1)).await.is_empty(),
        "each row published once"
    );
}

#[tokio::test]
async fn a_next_wake_command_row_is_published_as_next_wake_with_its_wake_time() {
    let env = TestEnv::start(Options::default()).await;
    let id = "CMDTEST02";
    let mut dev = GxpDevice::connect(&env, id).await;
    insert_command(
        &env,
        id,
        "next_wake",
        r#"{"wake_time": "2025-10-07T16:48:00Z"}"#,
    )
    .await;
    assert_eq!(
        dev.next_cmd(Duration::from_secs(2)).await,
        json!({"device_id": id, "next_wake": "2025-10-07T16:48:00Z"})
    );
    wait_all_sent(&env, id, 1).await;
}

// ---- 2. the missing-chunks NACK from the idle timer ----

#[tokio::test]
async fn withheld_chunks_3_and_9_are_nacked_as_a_plain_list_only_after_the_inactivity_timeout_then_resending_them_gets_ack_ok(
) {
    let env = TestEnv::start(Options {
        assembly_timeout_ms: 1500,
        ..Options::default()
    })
    .await;
    let id = random_device();
    let name = "image_123.jpg";
    let mut dev = GxpDevice::connect(&env, &id).await;
    let image = jpeg(12_000, 5); // 12 chunks of 1 KB
    dev.meta(name, &image, 1024, WORKER_TS).await;
    for i in (0..12).filter(|i| *i != 3 && *i != 9) {
        dev.chunk(name, &image, 1024, i).await;
    }
    let last_sent = Instant::now();
    let early = dev.acks_within(Duration::from_millis(1300)).await;
    assert!(
        early.is_empty(),
        "nothing on /ack before the inactivity timeout: {early:?}"
    );
    let (at, nack) = dev.next_ack_at(T).await;
    assert_eq!(
        nack,
        json!({"device_id": id, "image_name": name, "missing_chunks": [3, 9]})
    );
    let idle = at - last_sent;
    assert!(
        idle >= Duration::from_millis(1450) && idle < Duration::from_millis(4500),
        "the NACK comes one inactivity timeout (1.5 s) after the last chunk, not {idle:?}"
    );
    dev.chunk(name, &image, 1024, 3).await;
    dev.chunk(name, &image, 1024, 9).await;
    let ack = dev.ack_ok_for(name, T).await;
    assert_ack_ok(&ack, &id, name);
    let key = format!("captures/{id}/2025/10/04/{name}");
    assert_eq!(stored_object(&env, &key), Some(image.to_vec()));
    assert_eq!(
        wait_capture(&env, &id, name, "stored").await.total_chunks,
        12
    );
}

#[tokio::test]
async fn a_gxp_capture_that_never_completes_is_nacked_max_nack_rounds_times_then_fails_with_2201() {
    let env = TestEnv::start(Options {
        assembly_timeout_ms: 700,
        max_nack_rounds: 2,
        ..Options::default()
    })
    .await;
    let id = random_device();
    let name = "image_lost.jpg";
    let mut dev = GxpDevice::connect(&env, &id).await;
    let image = jpeg(5_000, 3); // 5 chunks
    dev.meta(name, &image, 1024, WORKER_TS).await;
    dev.chunk(name, &image, 1024, 0).await;
    let acks = dev.acks_within(Duration::from_secs(4)).await;
    let want = json!({"device_id": id, "image_name": name, "missing_chunks": [1, 2, 3, 4]});
    assert_eq!(
        acks,
        vec![want.clone(), want],
        "two NACK rounds, then nothing"
    );
    wait_error(&env, &id, 2201, T).await;
    wait_capture(&env, &id, name, "failed").await;
}

// ---- 3. the wake handshake ----

#[tokio::test]
async fn alive_from_a_never_scheduled_device_gets_capture_image_and_the_next_alive_gets_next_wake_in_the_future(
) {
    let env = TestEnv::start(Options::default()).await;
    let id = random_device();
    let mut dev = GxpDevice::connect(&env, &id).await;
    let second = Duration::from_secs(1);
    dev.status(&json!({"device_id": id, "status": "Alive", "pendingImg": 3}))
        .await;
    assert_eq!(
        dev.next_cmd(second).await,
        json!({"device_id": id, "capture_image": true})
    );

    dev.status(&json!({"device_id": id, "status": "Alive", "pending_count": 2}))
        .await;
    let cmd = dev.next_cmd(second).await;
    let obj = cmd.as_object().expect("an object");
    let mut keys: Vec<&str> = obj.keys().map(String::as_str).collect();
    keys.sort_unstable();
    assert_eq!(keys, ["device_id", "next_wake"], "{cmd}");
    assert_eq!(cmd["device_id"], id.as_str());
    let wake = cmd["next_wake"].as_str().expect("next_wake is a string");
    assert!(wake.ends_with('Z'), "ISO 8601 UTC: {wake}");
    let wake: DateTime<Utc> = wake.parse().unwrap_or_else(|e| panic!("{wake}: {e}"));
    assert!(wake > Utc::now(), "next_wake {wake} is in the future");

    let rows = eventually(T, "two device_status rows", || async {
        let rows = env
            .db()
            .await
            .query(
                "SELECT status, pending_count FROM device_status WHERE device_id = $1 ORDER BY created_at, id",
                &[&id],
            )
            .await
            .unwrap();
        (rows.len() == 2).then_some(rows)
    })
    .await;
    let got: Vec<(String, Option<i32>)> = rows.iter().map(|r| (r.get(0), r.get(1))).collect();
    assert_eq!(
        got,
        vec![("Alive".into(), Some(3)), ("Alive".into(), Some(2))]
    );
}

#[tokio::test]
async fn a_lowercase_alive_is_a_wake_hello_too() {
    let env = TestEnv::start(Options::default()).await;
    let id = random_device();
    let mut dev = GxpDevice::connect(&env, &id).await;
    dev.status(&json!({"device_id": id, "status": "alive", "pendingImg": 0}))
        .await;
    assert_eq!(
        dev.next_cmd(Duration::from_secs(1)).await,
        json!({"device_id": id, "capture_image": true})
    );
}

// ---- 4. both formats on one prefix ----

#[tokio::test]
async fn a_v1_device_and_a_gxp_device_on_the_same_prefix_at_once_are_each_answered_in_their_own_format(
) {
    let env = TestEnv::start(Options::default()).await;
    let (v1_id, gxp_id) = (random_device(), random_device());
    let mut v1 = env.device(&v1_id).await;
    let mut gxp = GxpDevice::connect(&env, &gxp_id).await;
    let (a, b) = (jpeg(8_000, 1), jpeg(8_000, 2));
    v1.meta("img_v1", &a, 1024, true).await;
    gxp.meta("image_gxp.jpg", &b, 1024, WORKER_TS).await;
    for i in 0..8 {
        if i % 2 == 0 {
            v1.chunk_json("img_v1", &a, 1024, i).await;
        } else {
            v1.chunk_bin("img_v1", &a, 1024, i).await;
        }
        gxp.chunk("image_gxp.jpg", &b, 1024, i).await;
    }
    let ack = v1.next_ack(T).await;
    assert_eq!(ack["type"], "ACK_OK", "{ack}");
    assert_eq!(ack["capture_id"], "img_v1");
    assert_eq!(ack["image_bytes"], 8_000);
    assert!(
        ack.get("ACK_OK").is_none() && ack.get("image_name").is_none(),
        "{ack}"
    );
    let gack = gxp.ack_ok_for("image_gxp.jpg", T).await;
    assert_ack_ok(&gack, &gxp_id, "image_gxp.jpg");

    let v1_key = format!("captures/{v1_id}/2026/10/04/img_v1.jpg");
    let gxp_key = format!("captures/{gxp_id}/2025/10/04/image_gxp.jpg");
    assert_eq!(stored_object(&env, &v1_key), Some(a.to_vec()));
    assert_eq!(stored_object(&env, &gxp_key), Some(b.to_vec()));
}

#[tokio::test]
async fn a_v1_simulated_fleet_and_a_gxp_fleet_share_the_prefix_and_every_capture_of_both_is_acked()
{
    let env = TestEnv::start(Options::default()).await;
    let sim = fleetflow::sim::SimConfig {
        devices: 20,
        connections: 2,
        duration: Duration::from_secs(4),
        readings_per_sec: 2.0,
        status_per_sec: 0.5,
        captures_per_device: 2,
        image_bytes: 20_000,
        chunk_size: 1024,
        chunk_form: fleetflow::sim::ChunkForm::Mixed,
        drain: Duration::from_secs(60),
        ..env.sim_config()
    };
    let v1_run = tokio::spawn(fleetflow::sim::run(sim));
    let ids: Vec<String> = (0..10).map(|_| random_device()).collect();
    let b = Behaviour {
        chunk_size: 1024,
        pace: Duration::from_millis(20),
        retry_after: Duration::from_secs(60),
        deadline: Duration::from_secs(90),
    };
    let (given, tasks) = spawn_fleet(&env, &ids, 2, b).await;
    let mut reports = vec![];
    for t in tasks {
        reports.push(t.await.unwrap());
    }
    let v1 = v1_run.await.unwrap().expect("simulator");
    assert_eq!((v1.captures_started, v1.captures_acked), (40, 40), "{v1:?}");
    assert!(reports.iter().all(|r| r.unacked.is_empty()), "{reports:?}");
    assert_eq!(assert_acked_are_stored(&env, &given, &reports).await, 20);
}

// ---- 5. kill -9 during a GXP fleet run ----

#[tokio::test]
async fn after_a_kill_9_mid_assembly_every_gxp_capture_is_eventually_acked_and_nothing_acked_is_missing(
) {
    let mut env = TestEnv::start(Options {
        assembly_timeout_ms: 1500,
        ..Options::default()
    })
    .await;
    let ids: Vec<String> = (0..20).map(|_| random_device()).collect();
    let b = Behaviour {
        chunk_size: 1024,
        pace: Duration::from_millis(40),
        retry_after: Duration::from_secs(5),
        deadline: Duration::from_secs(150),
    };
    let (given, tasks) = spawn_fleet(&env, &ids, 3, b).await;
    let wait = rand::random_range(1_500..3_000);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let in_flight = env
        .scalar_i64("SELECT count(*) FROM captures WHERE ingest_status <> 'stored'")
        .await;
    env.kill9();
    eprintln!(
        "killed the engine with SIGKILL after {wait} ms ({in_flight} capture rows not stored)"
    );
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.spawn_engine();
    env.wait_ready(T).await;
    let mut reports = vec![];
    for t in tasks {
        reports.push(t.await.unwrap());
    }
    let (nacks, resends): (usize, usize) = reports
        .iter()
        .fold((0, 0), |(n, r), d| (n + d.nacks, r + d.full_resends));
    eprintln!("NACKs {nacks}, whole-image resends {resends}");
    let unacked: Vec<(&str, &Vec<String>)> = reports
        .iter()
        .filter(|r| !r.unacked.is_empty())
        .map(|r| (r.id.as_str(), &r.unacked))
        .collect();
    assert!(unacked.is_empty(), "announced but never acked: {unacked:?}");
    assert_eq!(assert_acked_are_stored(&env, &given, &reports).await, 60);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM captures WHERE ingest_status = 'stored'")
            .await,
        60
    );
}

// ---- metadata variants and the re-send quirk ----

/// Sends `meta` then every chunk of `image` (chunks in the worker's form) and returns the ACK.
async fn deliver_with(dev: &mut GxpDevice, meta: &Value, name: &str, image: &[u8]) -> Value {
    dev.data(meta).await;
    dev.chunks(name, image, 1024).await;
    dev.ack_ok_for(name, T).await
}

#[tokio::test]
async fn metadata_field_variants_and_both_sensor_forms_are_accepted_with_gas_stored_in_kohm() {
    let env = TestEnv::start(Options::default()).await;
    let image = jpeg(3_000, 4);
    // Older firmware: capture_timestamp, max_chunk_size, total_chunks_count, flat sensors in Ω.
    let old = random_device();
    let mut dev = GxpDevice::connect(&env, &old).await;
    let meta = json!({"device_id": old, "capture_timestamp": "2025-10-06T08:15:00Z",
        "image_name": "image_7.jpg", "image_size": 3_000, "max_chunk_size": 1024,
        "total_chunks_count": 3, "error": 0, "temperature": 19.5, "humidity": 61.0,
        "pressure": 1002.5, "gas_resistance": 54321.0});
    assert_ack_ok(
        &deliver_with(&mut dev, &meta, "image_7.jpg", &image).await,
        &old,
        "image_7.jpg",
    );
    let row = wait_capture(&env, &old, "image_7.jpg", "stored").await;
    assert_eq!(
        (row.total_chunks, row.chunk_size, row.image_bytes),
        (3, 1024, 3_000)
    );
    assert_eq!(
        row.captured_at,
        "2025-10-06T08:15:00Z".parse::<DateTime<Utc>>().unwrap()
    );
    assert_eq!(
        row.storage_path.as_deref(),
        Some(format!("captures/{old}/2025/10/06/image_7.jpg").as_str())
    );
    let (t, h, p, gas) = wait_snapshot(&env, &old, "image_7.jpg").await;
    assert!(
        close(t, 19.5) && close(h, 61.0) && close(p, 1002.5),
        "{t:?} {h:?} {p:?}"
    );
    assert!(close(gas, 54.321), "flat form is Ω: {gas:?}");

    // v3.5.0: timestamp, nested sensor_data in kΩ.
    let new = random_device();
    let mut dev = GxpDevice::connect(&env, &new).await;
    let meta = json!({"device_id": new, "timestamp": "2025-10-06T09:00:00Z",
        "image_name": "image_8.jpg", "image_size": 3_000, "max_chunks_size": 1024,
        "total_chunk_count": 3, "error": 0,
        "sensor_data": {"temperature": 21.25, "humidity": 40.5, "pressure": 1009.5, "gas_resistance": 11.487}});
    assert_ack_ok(
        &deliver_with(&mut dev, &meta, "image_8.jpg", &image).await,
        &new,
        "image_8.jpg",
    );
    let row = wait_capture(&env, &new, "image_8.jpg", "stored").await;
    assert_eq!(
        row.captured_at,
        "2025-10-06T09:00:00Z".parse::<DateTime<Utc>>().unwrap()
    );
    let (t, h, p, gas) = wait_snapshot(&env, &new, "image_8.jpg").await;
    assert!(
        close(t, 21.25) && close(h, 40.5) && close(p, 1009.5),
        "{t:?} {h:?} {p:?}"
    );
    assert!(close(gas, 11.487), "nested form is kΩ: {gas:?}");
}

#[tokio::test]
async fn messages_with_only_an_image_id_name_the_capture_image_id_jpg() {
    let env = TestEnv::start(Options::default()).await;
    let id = random_device();
    let mut dev = GxpDevice::connect(&env, &id).await;
    let image = jpeg(2_500, 6);
    let mut meta = metadata(&id, "x", image.len(), 1024, WORKER_TS);
    meta.as_object_mut().unwrap().remove("image_name");
    meta["image_id"] = json!(42);
    dev.data(&meta).await;
    for i in 0..3 {
        let mut c = chunk(&id, "x", &image, 1024, i);
        c.as_object_mut().unwrap().remove("image_name");
        c["image_id"] = json!(42);
        dev.data(&c).await;
    }
    let ack = dev.ack_ok_for("image_42.jpg", T).await;
    assert_ack_ok(&ack, &id, "image_42.jpg");
    let key = format!("captures/{id}/2025/10/04/image_42.jpg");
    assert_eq!(stored_object(&env, &key), Some(image.to_vec()));
    wait_capture(&env, &id, "image_42.jpg", "stored").await;
}

#[tokio::test]
async fn chunks_that_arrive_before_their_metadata_are_kept_and_the_capture_completes_when_it_comes()
{
    let env = TestEnv::start(Options::default()).await;
    let id = random_device();
    let mut dev = GxpDevice::connect(&env, &id).await;
    let image = jpeg(4_000, 8);
    for i in [2, 0, 3, 1] {
        let mut c = chunk(&id, "early.jpg", &image, 1024, i);
        c["image_size"] = json!(4_000);
        c["total_chunks_count"] = json!(4);
        dev.data(&c).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    dev.meta("early.jpg", &image, 1024, WORKER_TS).await;
    let ack = dev.ack_ok_for("early.jpg", T).await;
    assert_ack_ok(&ack, &id, "early.jpg");
    let key = format!("captures/{id}/2025/10/04/early.jpg");
    assert_eq!(stored_object(&env, &key), Some(image.to_vec()));
}

/// A copy of the metadata of `name` with every field but the ids null (the re-send quirk).
fn null_copy(id: &str, name: &str) -> Value {
    json!({"device_id": id, "capture_timeStamp": null, "image_name": name, "image_size": null,
        "max_chunks_size": null, "total_chunk_count": null, "location": null, "error": null,
        "temperature": null, "humidity": null, "pressure": null, "gas_resistance": null})
}

#[tokio::test]
async fn metadata_resent_thirty_times_some_copies_null_erases_nothing_of_the_capture() {
    let env = TestEnv::start(Options::default()).await;
    let id = random_device();
    let name = "image_123.jpg";
    let mut dev = GxpDevice::connect(&env, &id).await;
    let image = jpeg(6_000, 12); // 6 chunks
    let full = metadata(&id, name, image.len(), 1024, WORKER_TS);
    let null = null_copy(&id, name);
    dev.data(&full).await;
    for _ in 0..10 {
        dev.data(&null).await;
    }
    for i in 0..6 {
        dev.chunk(name, &image, 1024, i).await;
        dev.data(if i % 2 == 0 { &full } else { &null }).await;
    }
    let ack = dev.ack_ok_for(name, T).await;
    assert_ack_ok(&ack, &id, name);
    let want = CaptureRow {
        status: "stored".into(),
        image_bytes: 6_000,
        total_chunks: 6,
        chunk_size: 1024,
        storage_path: Some(format!("captures/{id}/2025/10/04/{name}")),
        captured_at: WORKER_TS.parse().unwrap(),
    };
    assert_eq!(wait_capture(&env, &id, name, "stored").await, want);
    let snap = wait_snapshot(&env, &id, name).await;
    for _ in 0..14 {
        dev.data(&null).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        capture_row(&env, &id, name).await,
        Some(want),
        "null copies after storing"
    );
    assert_eq!(snapshot(&env, &id, name).await, Some(snap));
    let (t, h, p, _) = snap;
    assert!(
        close(t, 22.5) && close(h, 50.0) && close(p, 1013.25),
        "{snap:?}"
    );
    let key = format!("captures/{id}/2025/10/04/{name}");
    assert_eq!(stored_object(&env, &key), Some(image.to_vec()));
}
