//! Metadata field variants and both sensor forms, `image_id`-only messages, chunks before
//! their metadata, and the firmware quirk of re-sending metadata with null fields.

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::{json, Value};

use super::{close, T};
use crate::common::gxp::db::{capture_row, snapshot, wait_capture, wait_snapshot, CaptureRow};
use crate::common::gxp::{assert_ack_ok, assert_stored, chunk, metadata, GxpDevice, WORKER_TS};
use crate::common::{random_device, Options, TestEnv};
use fleetflow_sim::image::jpeg;

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
    assert_stored(&env, &key, &image);
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
    assert_stored(&env, &key, &image);
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
    // Positive control, sent after the copies: another capture of the device completes, so the
    // copies before it were handled.
    dev.send_image("image_124.jpg", &image, 1024, WORKER_TS)
        .await;
    let control = dev.ack_ok_for("image_124.jpg", T).await;
    assert_ack_ok(&control, &id, "image_124.jpg");
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
    assert_stored(&env, &key, &image);
}
