//! A backlog the broker kept while the engine was down. Mosquitto 2.0 sends a resumed session's
//! queue past the receive maximum once acks flow, so the engine bounds what it lets in itself
//! (`mqtt.max_in_flight`): a healthy device's backlog must reach `sensor_readings`, not fill its
//! mailbox and spill into `dead_letters`, and the source must not reconnect (a reconnect has the
//! broker send everything in flight again). Acks held for a full request queue
//! are covered by `actors/tests/ack_token.rs`: this backlog is too small to fill that queue.

use crate::common;

use std::time::Duration;

use common::publisher::publish_readings;
use common::{eventually, random_device, Options, TestEnv};

const DEVICES: usize = 5;
const PER_DEVICE: u64 = 400;

/// An engine with small device queues (8 in the mailbox, 8 parked), a receive maximum of 100
/// (below the backlog) and `max_in_flight`.
async fn engine(max_in_flight: u32) -> TestEnv {
    TestEnv::start(Options {
        env: vec![
            ("FLEETFLOW_MQTT__RECEIVE_MAXIMUM".into(), "100".into()),
            ("FLEETFLOW_DEVICES__MAILBOX_CAPACITY".into(), "8".into()),
            ("FLEETFLOW_DEVICES__PARK_CAPACITY".into(), "8".into()),
            (
                "FLEETFLOW_MQTT__MAX_IN_FLIGHT".into(),
                max_in_flight.to_string(),
            ),
        ],
        ..Options::default()
    })
    .await
}

/// Stops the engine (its persistent session stays), has the broker queue `DEVICES` ×
/// `PER_DEVICE` readings, starts it again and waits until every reading is either stored or
/// dead-lettered; answers (stored, dead-lettered).
async fn drain_backlog(env: &mut TestEnv) -> (i64, i64) {
    let (status, _) = env.terminate(Duration::from_secs(20));
    assert!(
        status.is_some_and(|s| s.success()),
        "the engine stops cleanly"
    );
    let devices: Vec<String> = (0..DEVICES).map(|_| random_device()).collect();
    let report = publish_readings(
        env.services.mqtt_port,
        &env.prefix,
        &devices,
        PER_DEVICE,
        (50_000, 2_000),
        Duration::from_secs(60),
    )
    .await;
    let total = DEVICES as i64 * PER_DEVICE as i64;
    assert_eq!(
        report.acked.len() as i64,
        total,
        "the broker took the backlog"
    );
    env.spawn_engine();
    env.wait_ready(Duration::from_secs(30)).await;
    eventually(
        Duration::from_secs(60),
        "every reading stored or dead-lettered",
        || async {
            let stored = env.scalar_i64("SELECT count(*) FROM sensor_readings").await;
            let dead = env.scalar_i64("SELECT count(*) FROM dead_letters").await;
            (stored + dead == total).then_some((stored, dead))
        },
    )
    .await
}

#[tokio::test]
async fn a_broker_backlog_larger_than_the_device_queues_is_stored_whole_without_dead_letters_or_reconnects(
) {
    // Positive control: with the bound off the broker floods the small device queues, and the
    // scenario really does push healthy devices' readings into dead_letters.
    let mut control = engine(0).await;
    let (stored, dead) = drain_backlog(&mut control).await;
    assert!(
        dead > 0,
        "without the bound the backlog overflows the device queues ({stored} stored)"
    );
    assert_eq!(
        control
            .metric("fleetflow_dead_lettered_messages_total{reason=\"device_busy\"}")
            .await,
        dead as f64,
        "the control's dead letters are the busy devices'"
    );
    drop(control);

    // The publisher sends the devices' readings round-robin (seq 1 of each, then seq 2, ...), so
    // 40 in flight are 8 per device: they fit the mailboxes.
    let mut env = engine(40).await;
    let (stored, dead) = drain_backlog(&mut env).await;
    assert_eq!((stored, dead), (DEVICES as i64 * PER_DEVICE as i64, 0));
    assert!(
        env.metric("fleetflow_mqtt_read_pauses_total").await > 0.0,
        "the source paused reading at the bound"
    );
    // `exported`: a renamed counter must fail these, not read as 0.
    for counter in [
        "fleetflow_mqtt_leak_reconnects_total",
        "fleetflow_mqtt_leaked_acks_total",
        "fleetflow_mqtt_reconnects_total",
    ] {
        assert_eq!(env.exported(counter).await, Some(0.0), "{counter}");
    }
    eventually(Duration::from_secs(20), "every PUBACK sent", || async {
        (env.exported(common::UNACKED).await == Some(0.0)).then_some(())
    })
    .await;
}
