//! Command rows published in the firmware's shape (1 g), the missing-chunks NACK from the idle
//! timer (2), and the wake handshake (3).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::json;
use tokio::time::Instant;

use super::T;
use crate::common::gxp::db::{insert_command, wait_all_sent, wait_capture, wait_error};
use crate::common::gxp::{assert_ack_ok, assert_stored, GxpDevice, WORKER_TS};
use crate::common::{eventually, random_device, Options, TestEnv};
use fleetflow_sim::image::jpeg;

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
    // Positive control: a row inserted now is the next (and only) command the device gets.
    insert_command(&env, id, "send_image", r#"{"image_name": "test_004.jpg"}"#).await;
    assert_eq!(
        dev.next_cmd(within).await,
        json!({"device_id": id, "send_image": "test_004.jpg"})
    );
    wait_all_sent(&env, id, 6).await;
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
    assert_stored(&env, &key, &image);
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
