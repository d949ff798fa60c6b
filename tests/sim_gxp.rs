//! The simulator's GXP firmware against the real engine: a mixed fleet (half GXP, half v1) on
//! one prefix, with chunk loss and the metadata re-send quirk. Every Alive is answered, every
//! capture of either format is stored and acknowledged in its own format, and the report keeps
//! the two halves apart.

use crate::common;

use std::time::Duration;

use common::{Options, TestEnv};
use fleetflow_sim::{Firmware, GxpConfig, SimConfig};

#[tokio::test]
async fn a_mixed_fleet_gets_every_capture_of_both_formats_stored_and_acknowledged() {
    let env = TestEnv::start(Options {
        assembly_timeout_ms: 1000,
        ..Options::default()
    })
    .await;
    let cfg = SimConfig {
        devices: 20,
        connections: 2,
        duration: Duration::from_secs(4),
        captures_per_device: 2,
        image_bytes: 20_000,
        readings_per_sec: 1.0,
        status_per_sec: 0.5,
        loss_rate: 0.02,
        drain: Duration::from_secs(30),
        retry_after: Duration::from_secs(5),
        firmware: Firmware::Mixed,
        gxp: GxpConfig {
            meta_resends: 3,
            sleep: Some(Duration::from_millis(500)),
            ..GxpConfig::default()
        },
        ..env.sim_config()
    };
    let r = fleetflow_sim::run(cfg).await.expect("simulator");
    eprintln!("{}", serde_json::to_string(&r).unwrap());
    assert_eq!((r.v1.devices, r.gxp.devices), (10, 10));
    assert_eq!(r.v1.captures_started, 20);
    assert_eq!(r.v1.captures_acked, 20, "every v1 capture acknowledged");
    let hs = &r.gxp_handshake;
    assert_eq!(hs.unanswered, 0, "every Alive answered");
    assert_eq!(
        hs.alive_sent,
        hs.answered_capture_image + hs.answered_next_wake
    );
    assert!(
        hs.answered_capture_image >= 10,
        "a never-scheduled device is told to capture"
    );
    assert_eq!(r.gxp.captures_started, hs.answered_capture_image);
    assert_eq!(
        r.gxp.captures_acked, r.gxp.captures_started,
        "every GXP capture acknowledged"
    );
    assert_eq!(r.gxp.metadata_copies, 3 * r.gxp.captures_started);
    let stored = |pattern: &'static str| {
        let env = &env;
        async move {
            env.scalar_i64(&format!(
                "SELECT count(*) FROM captures WHERE ingest_status = 'stored' AND device_capture_id LIKE '{pattern}'"
            ))
            .await
        }
    };
    assert_eq!(stored("img_%").await, 20);
    assert_eq!(stored("image_%.jpg").await as u64, r.gxp.captures_acked);
}
