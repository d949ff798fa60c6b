//! `/metrics` and `/ready` against a live engine (issue: core ingest engine, acceptance 8).

use crate::common;

use std::time::Duration;

use common::{eventually, random_device, Options, PrivatePg, TestEnv};
use fleetflow_sim::image::jpeg;

#[tokio::test]
async fn metrics_expose_messages_captures_nacks_batches_actors_restarts_and_errors() {
    let env = TestEnv::start(Options {
        assembly_timeout_ms: 500,
        max_nack_rounds: 1,
        ..Options::default()
    })
    .await;
    let id = random_device();
    let mut dev = env.device(&id).await;
    let image = jpeg(4000, 1);
    dev.meta("img_a", &image, 1024, true).await;
    for i in 0..4 {
        dev.chunk_bin("img_a", &image, 1024, i).await;
    }
    assert_eq!(
        dev.next_ack(Duration::from_secs(20)).await["type"],
        "ACK_OK"
    );
    dev.meta("img_b", &image, 1024, false).await;
    dev.publish("data", r#"{"type":"reading","seq":1}"#).await;
    dev.publish("data", "garbage").await;
    assert_eq!(dev.next_ack(Duration::from_secs(20)).await["type"], "NACK");
    let text = eventually(
        Duration::from_secs(20),
        "the failed capture to be counted",
        || async {
            let m = env.metrics().await;
            (common::metric_value(&m, "fleetflow_captures_failed_total{reason=\"timeout\"}") == 1.0)
                .then_some(m)
        },
    )
    .await;
    for (name, kind) in fleetflow_actors::metrics::SPEC
        .iter()
        .map(|(n, k, _)| (*n, *k))
    {
        assert!(
            text.contains(&format!("# TYPE {name} {kind}")),
            "{name} ({kind}) is not exported:\n{text}"
        );
    }
    for series in [
        "fleetflow_device_messages_total{kind=\"capture_meta\"} 2",
        "fleetflow_device_messages_total{kind=\"chunk\"} 4",
        "fleetflow_captures_stored_total 1",
        // The stored capture's answer; the timed-out one has none.
        "fleetflow_capture_answer_seconds_count 1",
        "fleetflow_nacks_total{reason=\"missing_chunks\"} 1",
        "fleetflow_device_actors 1",
        "fleetflow_device_actors_restarted_total 0",
        "fleetflow_device_errors_total{code=\"2101\"} 1",
        "fleetflow_device_errors_total{code=\"2201\"} 1",
    ] {
        assert!(text.lines().any(|l| l == series), "missing `{series}`");
    }
    assert!(
        common::metric_value(
            &text,
            "fleetflow_sink_batch_rows_count{table=\"sensor_readings\"}"
        ) >= 1.0
    );
    assert!(
        common::metric_value(
            &text,
            "fleetflow_sink_batch_seconds_count{table=\"captures\"}"
        ) >= 1.0
    );
}

#[tokio::test]
async fn ready_reports_a_stopped_postgres_and_recovers_when_it_returns() {
    let pg = PrivatePg::start();
    let env = TestEnv::start(Options {
        pg_url: Some(pg.url()),
        ..Options::default()
    })
    .await;
    let ready = || async {
        let r = reqwest::get(format!("{}/ready", env.http)).await.unwrap();
        (
            r.status().as_u16(),
            r.json::<serde_json::Value>().await.unwrap(),
        )
    };
    assert_eq!(ready().await.0, 200);
    pg.stop();
    let body = eventually(Duration::from_secs(15), "/ready to fail", || async {
        let (code, body) = ready().await;
        (code == 503).then_some(body)
    })
    .await;
    assert_eq!(body["postgres"]["ok"], false, "{body}");
    assert_eq!(body["mqtt"]["connected"], true);
    let health = reqwest::get(format!("{}/health", env.http)).await.unwrap();
    assert_eq!(
        health.status().as_u16(),
        200,
        "the process itself is healthy"
    );
    pg.start_again();
    eventually(Duration::from_secs(20), "/ready to recover", || async {
        (ready().await.0 == 200).then_some(())
    })
    .await;
}

#[tokio::test]
async fn an_idle_device_actor_is_passivated_and_comes_back_on_its_next_message() {
    let env = TestEnv::start(Options {
        extra: "[devices]\nidle_passivate_ms = 400\n".into(),
        ..Options::default()
    })
    .await;
    let id = random_device();
    let dev = env.device(&id).await;
    dev.publish("data", r#"{"type":"reading","seq":1}"#).await;
    eventually(
        Duration::from_secs(10),
        "the actor to be passivated",
        || async {
            let m = env.metrics().await;
            (common::metric_value(&m, "fleetflow_device_actors_passivated_total") == 1.0
                && common::metric_value(&m, "fleetflow_device_actors") == 0.0)
                .then_some(())
        },
    )
    .await;
    dev.publish("data", r#"{"type":"reading","seq":2}"#).await;
    eventually(Duration::from_secs(10), "both readings stored", || async {
        (env.scalar_i64(&format!(
            "SELECT count(*) FROM sensor_readings WHERE device_id = '{id}'"
        ))
        .await
            == 2)
            .then_some(())
    })
    .await;
    assert_eq!(
        env.metric("fleetflow_device_actors_spawned_total").await,
        2.0
    );
}
