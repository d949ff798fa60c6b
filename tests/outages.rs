//! Outages of the database and of object storage, and a metadata flood (issue: reliability,
//! acceptance 2, 3 and 5). Each test brings its own server or budget, so it cannot disturb
//! the shared services other tests use.

use crate::common;

use std::collections::HashSet;
use std::time::Duration;

use common::{eventually, random_device, rss_bytes, Options, PrivatePg, PrivateS3, Store, TestEnv};
use fleetflow_sim::image::jpeg;
use fleetflow_sim::{ChunkForm, SimConfig};
use object_store::{path::Path, ObjectStoreExt};

const MIB: u64 = 1024 * 1024;

#[tokio::test]
async fn a_20_second_database_outage_loses_nothing_duplicates_nothing_keeps_rss_bounded_and_recovers_by_itself(
) {
    let pg = PrivatePg::start();
    let mut env = TestEnv::start(Options {
        pg_url: Some(pg.url()),
        ..Options::default()
    })
    .await;
    let cfg = SimConfig {
        devices: 20,
        connections: 2,
        duration: Duration::from_secs(30),
        readings_per_sec: 20.0,
        readings_per_device: 600,
        status_per_sec: 0.0,
        captures_per_device: 0,
        image_bytes: 1024,
        chunk_size: 1024,
        chunk_form: ChunkForm::Binary,
        loss_rate: 0.0,
        drain: Duration::from_secs(30),
        with_sha256: false,
        seed: 5,
        retry_after: Duration::from_secs(10),
        ..env.sim_config()
    };
    let run = tokio::spawn(fleetflow_sim::run(cfg));
    tokio::time::sleep(Duration::from_secs(5)).await;
    let pid = env.pid();
    let rss_before = rss_bytes(pid);
    pg.stop();
    let mut rss_peak = rss_before;
    for _ in 0..40 {
        tokio::time::sleep(Duration::from_millis(500)).await;
        rss_peak = rss_peak.max(rss_bytes(pid));
    }
    pg.start_again();
    let report = run.await.unwrap().expect("simulator");
    eprintln!(
        "RSS before the outage {} MiB, peak during it {} MiB",
        rss_before / MIB,
        rss_peak / MIB
    );
    assert!(
        rss_peak < rss_before + 64 * MIB,
        "RSS grew from {} to {} MiB",
        rss_before / MIB,
        rss_peak / MIB
    );
    assert_eq!(report.readings_sent, 12_000);
    let want: HashSet<(String, i64)> = report
        .acked_readings
        .iter()
        .map(|(d, s)| (d.clone(), *s as i64))
        .collect();
    assert_eq!(want.len(), 12_000);
    let c = common::connect(&pg.url()).await;
    eventually(
        Duration::from_secs(60),
        "every reading after the outage",
        || async {
            let n: i64 = c
                .query_one("SELECT count(*) FROM sensor_readings", &[])
                .await
                .ok()?
                .get(0);
            (n >= 12_000).then_some(())
        },
    )
    .await;
    // The unique index on (device_id, seq) keeps each reading once; what can go wrong is a
    // stray row, so the rows are counted against the 12,000 readings sent.
    let n: i64 = c
        .query_one("SELECT count(*) FROM sensor_readings", &[])
        .await
        .unwrap()
        .get(0);
    assert_eq!(n, 12_000, "one row per reading sent");
    let m = env.metrics().await;
    assert!(
        common::metric_value(&m, "fleetflow_sink_retries_total{sink=\"postgres\"}") > 0.0,
        "retries were counted"
    );
    env.wait_ready(Duration::from_secs(10)).await;
}

#[tokio::test]
async fn a_storage_outage_retries_then_fails_with_2204_keeps_the_bytes_and_a_replay_stores_them() {
    let mut s3 = PrivateS3::start().await;
    let env = TestEnv::start(Options {
        store: Store::S3,
        s3_endpoint: Some(s3.endpoint()),
        objects_extra: String::new(),
        ..Options::default()
    })
    .await;
    let id = random_device();
    let mut dev = env.device(&id).await;
    let image = jpeg(8000, 21);
    s3.stop();
    dev.meta("img_out", &image, 1024, true).await;
    for i in 0..8 {
        dev.chunk_bin("img_out", &image, 1024, i).await;
    }
    let nack = dev.next_ack(Duration::from_secs(30)).await;
    assert_eq!(nack["type"], "NACK");
    assert_eq!(nack["reason"], "storage", "{nack}");
    let m = env.metrics().await;
    assert!(
        common::metric_value(&m, "fleetflow_sink_retries_total{sink=\"objects\"}") >= 2.0,
        "uploads were retried"
    );
    assert_eq!(
        common::metric_value(&m, "fleetflow_object_failures_total"),
        1.0
    );
    assert_eq!(
        common::metric_value(&m, "fleetflow_dead_letters_total"),
        1.0
    );
    let status: String = env
        .db()
        .await
        .query_one(
            "SELECT ingest_status FROM captures WHERE device_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "failed");
    eventually(Duration::from_secs(10), "the 2204 row", || async {
        (env.scalar_i64(&format!(
            "SELECT count(*) FROM device_errors WHERE device_id = '{id}' AND error_code = 2204"
        ))
        .await
            == 1)
            .then_some(())
    })
    .await;
    let key = format!("captures/{id}/2026/10/04/img_out.jpg");
    let kept = std::fs::read(env.dir.path().join("dead-letter").join(&key))
        .expect("bytes in the dead-letter directory");
    assert_eq!(kept, image.to_vec());
    let health = reqwest::get(format!("{}/health", env.http)).await.unwrap();
    assert!(health.status().is_success(), "no crash");

    // Storage is back: the admin command replays the dead letter.
    s3.start_again().await;
    let said = env.cli(&["replay-dead-letters"], &[]);
    assert!(said.contains("replayed 1 dead letter"), "{said}");
    let store = object_store::aws::AmazonS3Builder::new()
        .with_endpoint(s3.endpoint())
        .with_bucket_name("fleetflow")
        .with_access_key_id("test")
        .with_secret_access_key("test")
        .with_region("us-east-1")
        .with_allow_http(true)
        .build()
        .unwrap();
    let got = store
        .get(&Path::from(key.as_str()))
        .await
        .unwrap()
        .bytes()
        .await
        .unwrap();
    assert_eq!(got.to_vec(), image.to_vec());
    let status: String = env
        .db()
        .await
        .query_one(
            "SELECT ingest_status FROM captures WHERE device_id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(status, "stored");
    assert!(
        !env.dir.path().join("dead-letter").join(&key).exists(),
        "replayed dead letters are removed"
    );
}

#[tokio::test]
async fn ten_thousand_devices_sending_metadata_without_chunks_stay_within_the_byte_budget_and_time_out(
) {
    let budget = 32 * MIB;
    let env = TestEnv::start(Options {
        // Long enough that no assembly times out (and frees its budget for another) before all
        // 10,000 announcements are in, even on a starved debug build.
        assembly_timeout_ms: 6000,
        max_nack_rounds: 1,
        extra: "[devices]\nidle_passivate_ms = 600000\n".into(),
        ..Options::default()
    })
    .await;
    // The budget is set through the environment-free config: rewrite and restart.
    let cfg_text = std::fs::read_to_string(&env.config_path).unwrap().replace(
        "[assembly]\n",
        &format!("[assembly]\nglobal_budget_bytes = {budget}\nerror_rows_per_minute = 1\n"),
    );
    std::fs::write(&env.config_path, cfg_text).unwrap();
    let mut env = env;
    env.kill9();
    env.spawn_engine();
    env.wait_ready(Duration::from_secs(30)).await;
    let pid = env.pid();
    let dev = env.device("FEEDFACE0000").await;
    let ids: Vec<String> = (0..10_000u64)
        .map(|n| format!("{:012X}", 0xE0_0000_0000u64 + n))
        .collect();
    // The 10,000 device actors first (a status each), so that the baseline holds them and what
    // the RSS grows by afterwards is the assemblies'.
    for id in &ids {
        let status = r#"{"status":"online","battery_v":3.9}"#;
        dev.publish_raw(&format!("{}/{id}/status", env.prefix), status)
            .await;
    }
    eventually(Duration::from_secs(60), "10,000 device actors", || async {
        (env.metric("fleetflow_device_actors").await >= 10_000.0).then_some(())
    })
    .await;
    let rss_base = rss_bytes(pid);

    for id in &ids {
        let meta = r#"{"type":"capture_meta","capture_id":"flood","image_bytes":204800,"total_chunks":200,"chunk_size":1024}"#;
        dev.publish_raw(&format!("{}/{id}/data", env.prefix), meta)
            .await;
    }
    let peak = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(rss_base));
    let sampler = {
        let peak = peak.clone();
        tokio::spawn(async move {
            loop {
                peak.fetch_max(rss_bytes(pid), std::sync::atomic::Ordering::Relaxed);
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
    };
    let started = eventually(
        Duration::from_secs(60),
        "every metadata message to be processed",
        || async {
            let m = env.metrics().await;
            let meta =
                common::metric_value(&m, "fleetflow_device_messages_total{kind=\"capture_meta\"}");
            (meta >= 10_000.0)
                .then(|| common::metric_value(&m, "fleetflow_assemblies_started_total"))
        },
    )
    .await;
    let over_budget = env
        .metric("fleetflow_device_errors_total{code=\"2209\"}")
        .await;
    eprintln!("assemblies started {started}, refused for the budget {over_budget}");
    assert!(
        started <= (budget / 204_800) as f64 + 1.0,
        "no more assemblies than the budget holds"
    );
    assert_eq!(started + over_budget, 10_000.0);
    eventually(
        Duration::from_secs(60),
        "every assembly to time out",
        || async {
            let m = env.metrics().await;
            (common::metric_value(&m, "fleetflow_captures_failed_total{reason=\"timeout\"}")
                == started)
                .then_some(())
        },
    )
    .await;
    assert_eq!(
        env.metric("fleetflow_assembly_bytes").await,
        0.0,
        "assembly memory back to zero"
    );
    sampler.abort();
    let rss_peak = peak.load(std::sync::atomic::Ordering::Relaxed);
    let margin = 96 * MIB;
    eprintln!(
        "RSS base {} MiB, peak {} MiB, budget {} MiB",
        rss_base / MIB,
        rss_peak / MIB,
        budget / MIB
    );
    assert!(
        rss_peak < rss_base + budget + margin,
        "RSS peak {} MiB over base {} + budget + margin",
        rss_peak / MIB,
        rss_base / MIB
    );
    // Each timed-out assembly has its 2201 row (rows are batched, so wait for the last batch).
    eventually(
        Duration::from_secs(10),
        "a 2201 row per timed-out assembly",
        || async {
            let n = env
                .scalar_i64("SELECT count(*) FROM device_errors WHERE error_code = 2201")
                .await;
            (n as f64 == started).then_some(())
        },
    )
    .await;
}

#[cfg(feature = "fault-injection")]
#[tokio::test]
async fn a_quarantined_devices_readings_are_kept_in_dead_letters_and_a_replay_stores_them() {
    let env = TestEnv::start(Options {
        extra: "[devices]\nmax_restarts = 0\nrestart_backoff_min_ms = 10\nrestart_backoff_max_ms = 10\nquarantine_ms = 1500\n".into(),
        ..Options::default()
    })
    .await;
    let id = random_device();
    let dev = env.device(&id).await;
    dev.publish("data", fleetflow_actors::FAULT_PANIC_MARKER.to_vec())
        .await;
    eventually(Duration::from_secs(10), "quarantined", || async {
        (env.metric("fleetflow_device_actors_quarantined_total")
            .await
            == 1.0)
            .then_some(())
    })
    .await;
    for seq in 1..=5 {
        dev.publish("data", format!(r#"{{"type":"reading","seq":{seq}}}"#))
            .await;
    }
    dev.settle().await;
    let count = |sql: String| {
        let env = &env;
        async move { env.scalar_i64(&sql).await }
    };
    let kept = || {
        count(format!(
            "SELECT count(*) FROM dead_letters WHERE device_id = '{id}' AND reason = 'quarantined'"
        ))
    };
    let stored = || {
        count(format!(
            "SELECT count(*) FROM sensor_readings WHERE device_id = '{id}'"
        ))
    };
    eventually(
        Duration::from_secs(10),
        "the readings set aside",
        || async { (kept().await == 5).then_some(()) },
    )
    .await;
    assert_eq!(stored().await, 0, "acknowledged, kept, not stored");
    tokio::time::sleep(Duration::from_millis(1600)).await; // the quarantine ends

    let said = env.cli(&["replay-dead-letters", "--source", "default"], &[]);
    assert!(said.contains("replayed 5 dead letter"), "{said}");
    eventually(
        Duration::from_secs(10),
        "the replayed readings stored",
        || async { (stored().await == 5).then_some(()) },
    )
    .await;
    assert_eq!(kept().await, 0, "replayed rows are deleted");
}
