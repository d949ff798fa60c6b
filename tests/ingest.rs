//! End-to-end ingestion against real PostgreSQL, Mosquitto and the S3 server (issue: core
//! ingest engine, acceptance 1–7).

use crate::common;

use std::time::Duration;

use common::{eventually, random_device, Options, Store, TestEnv};
use fleetflow_sim::image::jpeg;
use object_store::{path::Path, ObjectStoreExt};
use serde_json::json;

const T: Duration = Duration::from_secs(20);

async fn one_capture_is_stored_byte_identical_and_acked_after(store: Store) {
    let env = TestEnv::start(Options {
        store,
        ..Options::default()
    })
    .await;
    let id = random_device();
    let mut dev = env.device(&id).await;
    let image = jpeg(51_234, 42);
    dev.meta("img_000183", &image, 1024, true).await;
    for i in 0..51 {
        dev.chunk_bin("img_000183", &image, 1024, i).await;
    }
    let ack = dev.next_ack(T).await;
    assert_eq!(ack["type"], "ACK_OK", "{ack}");
    assert_eq!(ack["capture_id"], "img_000183");
    assert_eq!(ack["image_bytes"], 51_234);

    // ACK_OK came after both the object and the row: both are there now.
    let key = format!("captures/{id}/2026/10/04/img_000183.jpg");
    let stored = match store {
        Store::Local => std::fs::read(env.objects_dir.join(&key)).expect("object file"),
        Store::S3 => env
            .services
            .s3_store()
            .get(&Path::from(key.as_str()))
            .await
            .expect("S3 object")
            .bytes()
            .await
            .unwrap()
            .to_vec(),
    };
    assert_eq!(stored, image.to_vec(), "object is byte-identical");
    let db = env.db().await;
    let row = db
        .query_one(
            "SELECT ingest_status, image_bytes, total_chunks, chunk_size, storage_path, stored_at IS NOT NULL FROM captures WHERE device_id = $1 AND device_capture_id = 'img_000183'",
            &[&id],
        )
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "stored");
    assert_eq!(row.get::<_, i64>(1), 51_234);
    assert_eq!(row.get::<_, i32>(2), 51);
    assert_eq!(row.get::<_, i32>(3), 1024);
    assert_eq!(row.get::<_, String>(4), key);
    assert!(row.get::<_, bool>(5));
}

#[tokio::test]
async fn a_51_chunk_capture_is_stored_byte_identical_then_acked_on_the_local_filesystem() {
    one_capture_is_stored_byte_identical_and_acked_after(Store::Local).await;
}

#[tokio::test]
async fn a_51_chunk_capture_is_stored_byte_identical_then_acked_on_s3() {
    one_capture_is_stored_byte_identical_and_acked_after(Store::S3).await;
}

#[tokio::test]
async fn withheld_chunks_are_nacked_as_ranges_and_the_capture_completes_after_resend() {
    let env = TestEnv::start(Options {
        assembly_timeout_ms: 1500,
        ..Options::default()
    })
    .await;
    let id = random_device();
    let mut dev = env.device(&id).await;
    let image = jpeg(51_234, 7);
    dev.meta("img_1", &image, 1024, true).await;
    let withheld = |i: usize| i == 3 || (17..=20).contains(&i);
    for i in (0..51).filter(|i| !withheld(*i)) {
        dev.chunk_bin("img_1", &image, 1024, i).await;
    }
    let nack = dev.next_ack(T).await;
    assert_eq!(
        nack,
        json!({"type":"NACK","capture_id":"img_1","missing":[[3,3],[17,20]],"reason":"missing_chunks","round":1})
    );
    for i in (0..51).filter(|i| withheld(*i)) {
        dev.chunk_bin("img_1", &image, 1024, i).await;
    }
    let ack = dev.next_ack(T).await;
    assert_eq!(ack["type"], "ACK_OK", "{ack}");
    let rounds = env
        .scalar_i64(&format!("SELECT nack_rounds::int8 FROM captures WHERE device_id = '{id}' AND ingest_status = 'stored'"))
        .await;
    assert_eq!(rounds, 1);
}

#[tokio::test]
async fn a_capture_that_never_completes_fails_with_2201_after_the_nack_rounds_and_frees_its_memory()
{
    let env = TestEnv::start(Options {
        assembly_timeout_ms: 700,
        max_nack_rounds: 2,
        ..Options::default()
    })
    .await;
    let id = random_device();
    let mut dev = env.device(&id).await;
    let image = jpeg(20_000, 3);
    dev.meta("img_lost", &image, 1024, false).await;
    dev.chunk_bin("img_lost", &image, 1024, 0).await;
    eventually(T, "assembly bytes to be held", || async {
        (env.metric("fleetflow_assembly_bytes").await > 0.0).then_some(())
    })
    .await;
    let acks = dev.acks_within(Duration::from_secs(4)).await;
    let rounds: Vec<i64> = acks
        .iter()
        .filter(|a| a["reason"] == "missing_chunks")
        .map(|a| a["round"].as_i64().unwrap())
        .collect();
    assert_eq!(
        rounds,
        vec![1, 2],
        "two NACK rounds, then give up: {acks:?}"
    );
    assert_eq!(acks[0]["missing"], json!([[1, 19]]));
    eventually(T, "the failed captures row", || async {
        let c = env.db().await;
        let r = c
            .query_opt("SELECT ingest_status, nack_rounds FROM captures WHERE device_id = $1 AND device_capture_id = 'img_lost'", &[&id])
            .await
            .unwrap()?;
        Some((r.get::<_, String>(0), r.get::<_, i32>(1)))
    })
    .await
    .eq(&("failed".to_string(), 2))
    .then_some(())
    .expect("captures row says failed after 2 rounds");
    eventually(T, "the 2201 error row", || async {
        let n = env
            .scalar_i64(&format!(
                "SELECT count(*) FROM device_errors WHERE device_id = '{id}' AND error_code = 2201"
            ))
            .await;
        (n == 1).then_some(())
    })
    .await;
    assert_eq!(
        env.metric("fleetflow_assembly_bytes").await,
        0.0,
        "memory released"
    );
    assert_eq!(
        env.metric("fleetflow_captures_failed_total{reason=\"timeout\"}")
            .await,
        1.0
    );
}

#[tokio::test]
async fn reordered_duplicated_json_and_binary_chunks_assemble_and_a_conflicting_duplicate_is_2207()
{
    let env = TestEnv::start(Options::default()).await;
    let id = random_device();
    let mut dev = env.device(&id).await;
    let image = jpeg(10_000, 11);
    dev.meta("img_mix", &image, 1024, true).await;
    let order = [9, 3, 0, 7, 1, 1, 5, 8, 2, 6, 4, 9, 0];
    for (n, &i) in order.iter().enumerate() {
        if n % 2 == 0 {
            dev.chunk_bin("img_mix", &image, 1024, i).await;
        } else {
            dev.chunk_json("img_mix", &image, 1024, i).await;
        }
        if n == 4 {
            // A duplicate of chunk 3 with different bytes: rejected, the first copy kept.
            dev.publish("chunk/img_mix/3", vec![0u8; 1024]).await;
        }
    }
    let ack = dev.next_ack(T).await;
    assert_eq!(ack["type"], "ACK_OK", "{ack}");
    let stored = std::fs::read(
        env.objects_dir
            .join(format!("captures/{id}/2026/10/04/img_mix.jpg")),
    )
    .unwrap();
    assert_eq!(stored, image.to_vec());
    eventually(T, "the 2207 error row", || async {
        (env.scalar_i64(&format!(
            "SELECT count(*) FROM device_errors WHERE device_id = '{id}' AND error_code = 2207"
        ))
        .await
            == 1)
            .then_some(())
    })
    .await;
    assert!(
        env.metric("fleetflow_chunks_total{outcome=\"duplicate\"}")
            .await
            >= 3.0
    );
}

#[tokio::test]
async fn readings_land_once_even_when_replayed_and_status_updates_device_status_and_devices() {
    let env = TestEnv::start(Options::default()).await;
    let id = random_device();
    let dev = env.device(&id).await;
    for round in 0..2 {
        for seq in 1..=50 {
            dev.publish(
                "data",
                format!(r#"{{"type":"reading","seq":{seq},"ts":"2026-10-04T12:00:00Z","temperature_c":21.5,"humidity_pct":40.2,"fw_note":"r{round}"}}"#),
            )
            .await;
        }
    }
    dev.publish("status", r#"{"status":"online","battery_v":3.92,"rssi":-61,"uptime_s":12345,"pending_count":2,"fw":"1.4.2","ts":"2026-10-04T12:00:00Z","mode":"eco"}"#)
        .await;
    eventually(T, "50 readings and a status row", || async {
        let n = env
            .scalar_i64(&format!(
                "SELECT count(*) FROM sensor_readings WHERE device_id = '{id}'"
            ))
            .await;
        let s = env
            .scalar_i64(&format!(
                "SELECT count(*) FROM device_status WHERE device_id = '{id}'"
            ))
            .await;
        // 100 messages, 50 readings: one row per reading. The unique index on (device_id, seq)
        // rules out a second copy; what this checks is that none of the 50 is missing.
        (n == 50 && s == 1).then_some(())
    })
    .await;
    let c = env.db().await;
    let extra: serde_json::Value = c
        .query_one(
            "SELECT extra FROM sensor_readings WHERE device_id = $1 AND seq = 1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        extra["fw_note"], "r0",
        "unknown fields are kept in extra, and the first copy wins"
    );
    let s = c
        .query_one("SELECT status, battery_v, rssi, pending_count, extra->>'mode' FROM device_status WHERE device_id = $1", &[&id])
        .await
        .unwrap();
    assert_eq!(s.get::<_, String>(0), "online");
    assert_eq!(s.get::<_, f64>(1), 3.92);
    assert_eq!(s.get::<_, i32>(2), -61);
    assert_eq!(s.get::<_, i32>(3), 2);
    assert_eq!(s.get::<_, String>(4), "eco");
    let d = c
        .query_one("SELECT last_seen_at >= '2026-10-04T12:00:00Z', status, fw, battery_v FROM devices WHERE device_id = $1", &[&id])
        .await
        .unwrap();
    assert!(d.get::<_, bool>(0));
    assert_eq!(d.get::<_, String>(1), "online");
    assert_eq!(d.get::<_, String>(2), "1.4.2");
    assert_eq!(d.get::<_, f64>(3), 3.92);
}

#[tokio::test]
async fn bad_input_gets_its_error_code_and_metric_while_other_devices_keep_ingesting() {
    let env = TestEnv::start(Options::default()).await;
    let bad = random_device();
    let good = random_device();
    let bad_dev = env.device(&bad).await;
    let mut good_dev = env.device(&good).await;
    let image = jpeg(3000, 5);
    good_dev.meta("img_ok", &image, 1024, true).await;

    bad_dev.publish("data", "{not json").await;
    bad_dev.publish("data", r#"{"type":"selfie"}"#).await;
    bad_dev.publish("data", r#"{"type":"reading"}"#).await;
    bad_dev
        .publish_raw(
            &format!("{}/AA:BB:CC/status", env.prefix),
            r#"{"status":"online"}"#,
        )
        .await;
    bad_dev
        .publish_raw(
            &format!("{}/{}/status", env.prefix, "F".repeat(65)),
            r#"{"status":"online"}"#,
        )
        .await;
    bad_dev.meta("img_bad", &image, 1024, false).await;
    bad_dev.chunk_bin("img_bad", &image, 1024, 0).await;
    bad_dev.publish("chunk/img_bad/99", vec![1u8; 1024]).await;
    for i in 0..3 {
        good_dev.chunk_bin("img_ok", &image, 1024, i).await;
    }
    good_dev
        .publish("data", r#"{"type":"reading","seq":1,"temperature_c":20.0}"#)
        .await;

    let ack = good_dev.next_ack(T).await;
    assert_eq!(ack["type"], "ACK_OK", "the good device is served: {ack}");
    let count = |code: i32, device: String| {
        let env = &env;
        async move {
            env.scalar_i64(&format!("SELECT count(*) FROM device_errors WHERE device_id = '{device}' AND error_code = {code}")).await
        }
    };
    eventually(T, "all error rows", || async {
        (count(2105, bad.clone()).await == 2
            && count(2101, bad.clone()).await == 1
            && count(2207, bad.clone()).await == 1
            && count(2104, "INVALID".into()).await >= 2)
            .then_some(())
    })
    .await;
    let m = env.metrics().await;
    for (code, n) in [("2104", 2.0), ("2105", 2.0), ("2101", 1.0), ("2207", 1.0)] {
        let v = common::metric_value(
            &m,
            &format!("fleetflow_device_errors_total{{code=\"{code}\"}}"),
        );
        assert!(v >= n, "errors {code}: {v}");
    }
    let details: serde_json::Value = env
        .db()
        .await
        .query_one(
            "SELECT details FROM device_errors WHERE device_id = $1 AND error_code = 2207",
            &[&bad],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(details["capture_id"], "img_bad");
    eventually(T, "the good reading", || async {
        (count_readings(&env, &good).await == 1).then_some(())
    })
    .await;
}

async fn count_readings(env: &TestEnv, id: &str) -> i64 {
    env.scalar_i64(&format!(
        "SELECT count(*) FROM sensor_readings WHERE device_id = '{id}'"
    ))
    .await
}

#[tokio::test]
async fn two_hundred_devices_times_five_captures_are_all_stored_and_acked_with_no_errors() {
    let env = TestEnv::start(Options::default()).await;
    let cfg = fleetflow_sim::SimConfig {
        devices: 200,
        connections: 4,
        duration: Duration::from_secs(5),
        readings_per_sec: 0.0,
        readings_per_device: 0,
        status_per_sec: 0.0,
        captures_per_device: 5,
        image_bytes: 50 * 1024,
        chunk_size: 1024,
        chunk_form: fleetflow_sim::ChunkForm::Mixed,
        loss_rate: 0.0,
        drain: Duration::from_secs(90),
        with_sha256: true,
        seed: 3,
        retry_after: Duration::from_secs(30),
        ..env.sim_config()
    };
    let report = fleetflow_sim::run(cfg).await.expect("simulator");
    assert_eq!(report.captures_started, 1000);
    assert_eq!(report.captures_acked, 1000, "{report:?}");
    let stored = env
        .scalar_i64("SELECT count(*) FROM captures WHERE ingest_status = 'stored'")
        .await;
    assert_eq!(stored, 1000);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM device_errors").await,
        0
    );
    assert_eq!(env.metric("fleetflow_captures_stored_total").await, 1000.0);
}
