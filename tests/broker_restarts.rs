//! Broker and database restarts in the middle of a stream from publishers that behave like
//! devices: a persistent session, QoS 1, and every reading kept until the broker acks it
//! (`common::publisher`). 20,000 readings from 20 devices, against a Mosquitto of the test's own
//! with persistence on (`common::Broker::persistent`). What the publisher saw acknowledged must
//! be in Postgres exactly once — except what the broker itself lost in a `kill -9` (it saves
//! its state only every `autosave_interval`), which the test measures and prints
//! (`docs/reliability.md` has the figures).

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::broker::Broker;
use common::publisher::{publish_readings, PublishReport};
use common::{eventually, Options, PrivatePg, TestEnv};

const DEVICES: usize = 20;
const PER_DEVICE: u64 = 1000;

fn devices() -> Vec<String> {
    (0..DEVICES).map(|_| common::random_device()).collect()
}

async fn engine_on(broker: &Broker, pg_url: Option<String>) -> TestEnv {
    engine_with(broker, pg_url, vec![]).await
}

/// [`engine_on`] with more settings in the environment.
async fn engine_with(
    broker: &Broker,
    pg_url: Option<String>,
    mut env: Vec<(String, String)>,
) -> TestEnv {
    env.push((
        "FLEETFLOW_MQTT__URL".to_string(),
        format!("mqtt://127.0.0.1:{}", broker.port),
    ));
    TestEnv::start(Options {
        env,
        pg_url,
        ..Options::default()
    })
    .await
}

/// The stored (device, seq) pairs of these devices, and the row count (to see duplicates).
async fn stored(env: &TestEnv, devices: &[String]) -> (HashSet<(String, u64)>, i64) {
    let rows = env
        .db()
        .await
        .query(
            "SELECT device_id, seq FROM sensor_readings WHERE device_id = ANY($1)",
            &[&devices],
        )
        .await
        .unwrap();
    let n = rows.len() as i64;
    let set = rows
        .iter()
        .map(|r| (r.get::<_, String>(0), r.get::<_, i64>(1) as u64))
        .collect();
    (set, n)
}

/// Waits until `n` readings of these devices are stored (the stream is under way).
async fn until_stored(env: &TestEnv, devices: &[String], n: usize) {
    eventually(Duration::from_secs(60), "the stream under way", || async {
        (stored(env, devices).await.0.len() >= n).then_some(())
    })
    .await;
}

/// Runs the stream; `disrupt` runs once a quarter of it is stored.
async fn stream_with<F, Fut>(
    env: &TestEnv,
    broker_port: u16,
    disrupt: F,
) -> (Vec<String>, PublishReport)
where
    F: FnOnce() -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let ids = devices();
    let (prefix, publish_ids) = (env.prefix.clone(), ids.clone());
    let run = tokio::spawn(async move {
        publish_readings(
            broker_port,
            &prefix,
            &publish_ids,
            PER_DEVICE,
            // 2,000 readings a second: the stream lasts 10 s, so the disruption falls inside it.
            (2000, 500),
            Duration::from_secs(240),
        )
        .await
    });
    until_stored(env, &ids, (DEVICES as u64 * PER_DEVICE / 4) as usize).await;
    disrupt().await;
    let report = run.await.unwrap();
    (ids, report)
}

/// Every acknowledged reading stored, none twice; answers how many acked ones are missing.
async fn check(env: &TestEnv, ids: &[String], report: &PublishReport, may_lose: bool) -> usize {
    let total = DEVICES as u64 * PER_DEVICE;
    assert_eq!(
        report.acked.len() as u64,
        total,
        "the publisher got every reading acked: {report:?}"
    );
    let acked: HashSet<(String, u64)> = report.acked.iter().cloned().collect();
    let missing = |s: &HashSet<(String, u64)>| acked.difference(s).count();
    let settled = eventually(Duration::from_secs(60), "the stream stored", || async {
        let (set, rows) = stored(env, ids).await;
        (may_lose || missing(&set) == 0).then_some((set, rows))
    })
    .await;
    // Give late redeliveries a moment when losses are allowed, then count.
    let (set, rows) = if may_lose {
        tokio::time::sleep(Duration::from_secs(3)).await;
        stored(env, ids).await
    } else {
        settled
    };
    assert_eq!(rows as usize, set.len(), "a reading stored twice");
    assert!(set.is_subset(&acked), "a stored reading nobody published");
    missing(&set)
}

#[tokio::test]
async fn a_graceful_broker_restart_mid_stream_loses_no_acknowledged_reading() {
    let mut broker = Broker::persistent(1800, false);
    let env = engine_on(&broker, None).await;
    let port = broker.port;
    let (ids, report) = stream_with(&env, port, || async {
        broker.restart(true);
    })
    .await;
    let lost = check(&env, &ids, &report, false).await;
    eprintln!(
        "graceful restart: {} acked, {lost} lost, {} republished after a lost session, {} reconnects",
        report.acked.len(),
        report.republished,
        report.reconnects
    );
    assert_eq!(lost, 0);
    assert!(report.reconnects >= 1, "the broker restart was seen");
}

/// Pauses the engine (SIGSTOP) for 3 s so that the broker queues the stream for it, kills the
/// broker with SIGKILL while it holds that queue, restarts it, resumes the engine; answers how
/// many readings the broker had acknowledged to the publisher but lost. The engine asks for a
/// receive maximum of 500: with no acks flowing Mosquitto respects it, so it keeps the rest of
/// the 3 s in its own queue (with the default 8,192 the whole pause can fit in flight, in the
/// engine's socket buffer, and the broker may have nothing to lose).
async fn kill_9_while_the_engine_lags(autosave_interval: u32) -> (usize, PublishReport) {
    let mut broker = Broker::persistent(autosave_interval, false);
    let receive_max = (
        "FLEETFLOW_MQTT__RECEIVE_MAXIMUM".to_string(),
        "500".to_string(),
    );
    let env = engine_with(&broker, None, vec![receive_max]).await;
    let port = broker.port;
    let (ids, report) = stream_with(&env, port, || async {
        env.signal("-STOP");
        tokio::time::sleep(Duration::from_secs(3)).await;
        broker.restart(false);
        env.signal("-CONT");
    })
    .await;
    assert!(report.reconnects >= 1, "the broker kill was seen");
    let lost = check(&env, &ids, &report, true).await;
    eprintln!(
        "kill -9 (autosave_interval {autosave_interval}): {} acked to the publisher, {lost} of them lost by the broker, {} republished after a lost session",
        report.acked.len(),
        report.republished,
    );
    (lost, report)
}

#[tokio::test]
async fn a_broker_kill_9_loses_only_what_it_had_not_saved() {
    // Saving every 30 s: the queue the broker held for the engine is gone with it.
    let (lost, _) = kill_9_while_the_engine_lags(30).await;
    assert!(
        lost > 0,
        "the broker's own loss window is real (positive control)"
    );
}

#[tokio::test]
async fn a_postgres_restart_mid_stream_loses_no_acknowledged_reading() {
    let broker = Broker::persistent(1800, false);
    let pg = PrivatePg::start();
    let env = engine_on(&broker, Some(pg.url())).await;
    let (ids, report) = stream_with(&env, broker.port, || async {
        pg.stop();
        tokio::time::sleep(Duration::from_secs(3)).await;
        pg.start_again();
    })
    .await;
    let lost = check(&env, &ids, &report, false).await;
    eprintln!(
        "postgres restart: {} acked, {lost} lost",
        report.acked.len()
    );
    assert_eq!(lost, 0);
}
