//! The Postgres sink against a real PostgreSQL: rows of several tables sent together are all
//! written, the broker ack of each message goes out only after its row committed, replays change
//! nothing (`ON CONFLICT`), and a row the database refuses does not take its batch down with it.

use crate::common;

use std::time::Duration;

use actix::prelude::*;
use chrono::Utc;
use fleetflow_actors::config::SinksConfig;
use fleetflow_actors::link::MqttLink;
use fleetflow_actors::sinks::pg::{Flush, PgSink};
use fleetflow_actors::sinks::rows::{
    CaptureRow, Durable, IngestStatus, PendingRow, ReadingRow, Row, StatusRow,
};
use fleetflow_protocol::errors::{ErrorCode, ErrorRecord};
use fleetflow_protocol::ids::DeviceId;
use fleetflow_protocol::message::{Measurements, WireFormat};
use serde_json::{json, Map};
use tokio::sync::oneshot;

use common::{acked, count};

fn device(n: u32) -> DeviceId {
    DeviceId::parse(&format!("sink-{:08x}-{n}", rand::random::<u32>())).unwrap()
}

fn status(d: &DeviceId, status: &str) -> Row {
    Row::Status(StatusRow {
        device_id: d.clone(),
        status: status.into(),
        wire_format: None,
        pending_count: Some(0),
        battery_v: Some(3.9),
        rssi: Some(-60),
        uptime_s: Some(10),
        fw: Some("1.0".into()),
        extra: Map::new(),
        created_at: Utc::now(),
    })
}

fn reading(d: &DeviceId, seq: i64) -> Row {
    Row::Reading(ReadingRow {
        device_id: d.clone(),
        seq: Some(seq),
        capture_id: None,
        values: Measurements {
            temperature_c: Some(20.0 + seq as f64),
            ..Default::default()
        },
        extra: Map::new(),
        measured_at: Utc::now(),
        touch_device: false,
    })
}

fn capture(d: &DeviceId, id: &str) -> Row {
    Row::Capture(CaptureRow {
        device_id: d.clone(),
        capture_id: id.into(),
        captured_at: Utc::now(),
        image_bytes: 1000,
        total_chunks: 4,
        chunk_size: 250,
        sha256: None,
        status: IngestStatus::Stored,
        storage_path: Some(format!("{d}/{id}.jpg")),
        nack_rounds: 0,
        stored_at: Some(Utc::now()),
        format: WireFormat::V1,
        meta: None,
    })
}

fn error(d: &DeviceId) -> Row {
    Row::Error(ErrorRecord {
        device_id: d.to_string(),
        code: ErrorCode::MetadataFailed,
        message: "test".into(),
        details: json!({}),
        occurred_at: Utc::now(),
    })
}

/// Sends `row` with a broker ack for packet `pkid`; the receiver says when it is durable.
async fn send(
    sink: &Addr<PgSink>,
    link: &MqttLink,
    pkid: u16,
    row: Row,
) -> oneshot::Receiver<Durable> {
    let (tx, rx) = oneshot::channel();
    link.received();
    let mut p = PendingRow::new(row, Some(link.token(pkid)));
    p.done = Some(tx);
    sink.send(p).await.unwrap();
    rx
}

async fn durable(rx: oneshot::Receiver<Durable>) -> Durable {
    tokio::time::timeout(Duration::from_secs(20), rx)
        .await
        .expect("the row was neither written nor refused within 20 s")
        .expect("the sink dropped the waiter")
}

fn sink(url: &str) -> Addr<PgSink> {
    let cfg = SinksConfig {
        max_batch_age_ms: 50,
        captures_max_age_ms: 50,
        ..Default::default()
    };
    PgSink::new(common::pool(url), cfg).start()
}

#[actix::test]
async fn rows_of_four_tables_sent_together_are_all_written_and_every_message_acked() {
    let db_guard = common::migrated_database().await;
    let url = db_guard.url.clone();
    let db = common::connect(&url).await;
    let (link, rx) = common::recording_link();
    let sink = sink(&url);
    let d = device(1);
    let mut waiters = Vec::new();
    waiters.push(send(&sink, &link, 1, status(&d, "online")).await);
    for seq in 0..20 {
        waiters.push(send(&sink, &link, 100 + seq as u16, reading(&d, seq)).await);
    }
    waiters.push(send(&sink, &link, 2, capture(&d, "c1")).await);
    waiters.push(send(&sink, &link, 3, error(&d)).await);
    for w in waiters {
        assert_eq!(durable(w).await, Ok(()));
    }
    let id = d.to_string();
    let q = |t: &str| format!("SELECT count(*) FROM {t} WHERE device_id = '{id}'");
    assert_eq!(count(&db, &q("device_status")).await, 1);
    assert_eq!(count(&db, &q("devices")).await, 1);
    assert_eq!(count(&db, &q("sensor_readings")).await, 20);
    assert_eq!(count(&db, &q("captures")).await, 1);
    assert_eq!(count(&db, &q("device_errors")).await, 1);
    let mut acks = acked(&rx);
    acks.sort();
    let mut want: Vec<u16> = [1, 2, 3].into_iter().chain(100..120).collect();
    want.sort();
    assert_eq!(acks, want);
}

#[actix::test]
async fn a_message_is_acked_only_after_its_row_committed() {
    let db_guard = common::migrated_database().await;
    let url = db_guard.url.clone();
    let db = common::connect(&url).await;
    let locker = common::connect(&url).await;
    let (link, rx) = common::recording_link();
    let sink = sink(&url);
    let d = device(2);
    // Hold the readings table: their batch cannot commit until the lock goes.
    locker
        .batch_execute("BEGIN; LOCK TABLE sensor_readings IN ACCESS EXCLUSIVE MODE")
        .await
        .unwrap();
    let mut blocked = send(&sink, &link, 10, reading(&d, 1)).await;
    let status_done = send(&sink, &link, 11, status(&d, "online")).await;
    // Positive control: the status row, in another table, commits and is acked meanwhile.
    assert_eq!(durable(status_done).await, Ok(()));
    assert_eq!(acked(&rx), vec![11]);
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(
        blocked.try_recv().is_err(),
        "the reading was reported durable while its table was locked"
    );
    assert_eq!(acked(&rx), Vec::<u16>::new(), "acked before commit");
    locker.batch_execute("COMMIT").await.unwrap();
    assert_eq!(durable(blocked).await, Ok(()));
    assert_eq!(acked(&rx), vec![10]);
    let n = count(
        &db,
        &format!("SELECT count(*) FROM sensor_readings WHERE device_id = '{d}'"),
    )
    .await;
    assert_eq!(n, 1);
}

#[actix::test]
async fn replayed_readings_and_captures_are_stored_once_and_acked_again() {
    let db_guard = common::migrated_database().await;
    let url = db_guard.url.clone();
    let db = common::connect(&url).await;
    let (link, rx) = common::recording_link();
    let sink = sink(&url);
    let d = device(3);
    for round in 0..2u16 {
        let mut waiters = Vec::new();
        for seq in 0..30 {
            waiters.push(send(&sink, &link, round * 1000 + seq as u16, reading(&d, seq)).await);
        }
        waiters.push(send(&sink, &link, round * 1000 + 500, capture(&d, "c9")).await);
        for w in waiters {
            assert_eq!(durable(w).await, Ok(()), "round {round}");
        }
        assert_eq!(acked(&rx).len(), 31, "round {round}: every message acked");
    }
    let id = d.to_string();
    let readings = count(
        &db,
        &format!("SELECT count(*) FROM sensor_readings WHERE device_id = '{id}'"),
    )
    .await;
    assert_eq!(readings, 30, "30 readings sent twice");
    let captures = count(
        &db,
        &format!(
            "SELECT count(*) FROM captures WHERE device_id = '{id}' AND ingest_status = 'stored'"
        ),
    )
    .await;
    assert_eq!(captures, 1);
}

#[actix::test]
async fn a_row_the_database_refuses_is_reported_and_its_batch_neighbours_are_written() {
    let db_guard = common::migrated_database().await;
    let url = db_guard.url.clone();
    let db = common::connect(&url).await;
    let (link, rx) = common::recording_link();
    let sink = sink(&url);
    let d = device(4);
    let good_a = send(&sink, &link, 1, status(&d, "online")).await;
    // An empty status breaks the table's CHECK (1 to 64 characters).
    let bad = send(&sink, &link, 2, status(&d, "")).await;
    let good_b = send(&sink, &link, 3, status(&d, "sleeping")).await;
    sink.send(Flush).await.unwrap();
    assert_eq!(durable(good_a).await, Ok(()));
    assert!(
        durable(bad).await.is_err(),
        "the refused row was reported durable"
    );
    assert_eq!(durable(good_b).await, Ok(()));
    let n = count(
        &db,
        &format!("SELECT count(*) FROM device_status WHERE device_id = '{d}'"),
    )
    .await;
    assert_eq!(n, 2);
    // A refused row is acked too: redelivering it would be refused again. It is not dropped
    // silently: dead_letters keeps it, with the reason and the table.
    let mut acks = acked(&rx);
    acks.sort();
    assert_eq!(acks, vec![1, 2, 3]);
    let kept = db
        .query(
            &format!("SELECT topic, reason, convert_from(payload, 'UTF8') FROM dead_letters WHERE device_id = '{d}'"),
            &[],
        )
        .await
        .unwrap();
    assert_eq!(kept.len(), 1, "one record of the refused row");
    assert_eq!(kept[0].get::<_, String>(0), "rejected/device_status");
    assert_eq!(kept[0].get::<_, String>(1), "rejected");
    assert!(
        kept[0].get::<_, String>(2).contains("check"),
        "the error is kept with the row"
    );
}
