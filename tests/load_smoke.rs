//! The CI smoke variant of the load test (issue: load testing): a few seconds of the simulator
//! in "as fast as acknowledged" mode with readings and captures, with reordered and duplicated
//! chunks and some loss. It asserts correctness only — every capture acknowledged, every
//! broker-acknowledged reading stored once — and no timing.

use crate::common;

use std::time::Duration;

use common::{Options, TestEnv};
use fleetflow_sim::{ChunkForm, Mode, SimConfig};

#[tokio::test]
async fn a_short_max_rate_run_acknowledges_every_capture_and_stores_every_reading_once() {
    let env = TestEnv::start(Options {
        assembly_timeout_ms: 1000,
        ..Options::default()
    })
    .await;
    let cfg = SimConfig {
        devices: 100,
        connections: 2,
        duration: Duration::from_secs(3),
        mode: Mode::Max,
        window: 500,
        capture_window: 8,
        readings_per_device: 50,
        captures_per_device: 2,
        image_bytes: 20_000,
        chunk_form: ChunkForm::Mixed,
        loss_rate: 0.02,
        reorder: true,
        duplicate_rate: 0.02,
        status_per_sec: 0.0,
        drain: Duration::from_secs(60),
        retry_after: Duration::from_secs(5),
        ..env.sim_config()
    };
    let report = fleetflow_sim::run(cfg).await.expect("simulator");
    eprintln!("{}", serde_json::to_string(&report).unwrap());
    assert_eq!(report.readings_sent, 5000);
    assert_eq!(report.readings_acked_by_broker, 5000);
    assert_eq!(report.captures_started, 200);
    assert_eq!(report.captures_acked, 200, "every capture acknowledged");
    common::eventually(Duration::from_secs(30), "every reading stored", || async {
        (env.scalar_i64("SELECT count(*) FROM sensor_readings WHERE seq IS NOT NULL")
            .await
            == 5000)
            .then_some(())
    })
    .await;
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM captures WHERE ingest_status = 'stored'")
            .await,
        200
    );
}
