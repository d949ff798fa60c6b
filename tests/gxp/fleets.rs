//! Many devices at once: 30 GXP cameras (1 f), a v1 and a GXP device or fleet on one prefix (4),
//! and kill -9 of the engine in the middle of a GXP fleet run (5).

use std::time::Duration;

use super::T;
use crate::common::gxp::fleet::{assert_acked_are_stored, spawn_fleet, Behaviour};
use crate::common::gxp::{assert_ack_ok, assert_stored, GxpDevice, WORKER_TS};
use crate::common::{random_device, Options, TestEnv};
use fleetflow_sim::image::jpeg;

#[tokio::test]
async fn thirty_cameras_sending_two_real_jpegs_each_at_once_are_all_acked_and_stored_byte_identical(
) {
    let env = TestEnv::start(Options::default()).await;
    let ids: Vec<String> = (0..30).map(|_| random_device()).collect();
    let b = Behaviour {
        chunk_size: 1024,
        pace: Duration::ZERO,
        retry_after: Duration::from_secs(60),
        deadline: Duration::from_secs(120),
    };
    let (given, tasks) = spawn_fleet(&env, &ids, 2, b).await;
    let mut reports = vec![];
    for t in tasks {
        reports.push(t.await.unwrap());
    }
    let unacked: Vec<(&str, &Vec<String>)> = reports
        .iter()
        .filter(|r| !r.unacked.is_empty())
        .map(|r| (r.id.as_str(), &r.unacked))
        .collect();
    assert!(unacked.is_empty(), "never acked: {unacked:?}");
    assert_eq!(assert_acked_are_stored(&env, &given, &reports).await, 60);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM captures WHERE ingest_status = 'stored'")
            .await,
        60
    );
}

// ---- 4. both formats on one prefix ----

#[tokio::test]
async fn a_v1_device_and_a_gxp_device_on_the_same_prefix_at_once_are_each_answered_in_their_own_format(
) {
    let env = TestEnv::start(Options::default()).await;
    let (v1_id, gxp_id) = (random_device(), random_device());
    let mut v1 = env.device(&v1_id).await;
    let mut gxp = GxpDevice::connect(&env, &gxp_id).await;
    let (a, b) = (jpeg(8_000, 1), jpeg(8_000, 2));
    v1.meta("img_v1", &a, 1024, true).await;
    gxp.meta("image_gxp.jpg", &b, 1024, WORKER_TS).await;
    for i in 0..8 {
        if i % 2 == 0 {
            v1.chunk_json("img_v1", &a, 1024, i).await;
        } else {
            v1.chunk_bin("img_v1", &a, 1024, i).await;
        }
        gxp.chunk("image_gxp.jpg", &b, 1024, i).await;
    }
    let ack = v1.next_ack(T).await;
    assert_eq!(ack["type"], "ACK_OK", "{ack}");
    assert_eq!(ack["capture_id"], "img_v1");
    assert_eq!(ack["image_bytes"], 8_000);
    assert!(
        ack.get("ACK_OK").is_none() && ack.get("image_name").is_none(),
        "{ack}"
    );
    let gack = gxp.ack_ok_for("image_gxp.jpg", T).await;
    assert_ack_ok(&gack, &gxp_id, "image_gxp.jpg");

    let v1_key = format!("captures/{v1_id}/2026/10/04/img_v1.jpg");
    let gxp_key = format!("captures/{gxp_id}/2025/10/04/image_gxp.jpg");
    assert_stored(&env, &v1_key, &a);
    assert_stored(&env, &gxp_key, &b);
}

#[tokio::test]
async fn a_v1_simulated_fleet_and_a_gxp_fleet_share_the_prefix_and_every_capture_of_both_is_acked()
{
    let env = TestEnv::start(Options::default()).await;
    let sim = fleetflow_sim::SimConfig {
        devices: 20,
        connections: 2,
        duration: Duration::from_secs(4),
        readings_per_sec: 2.0,
        status_per_sec: 0.5,
        captures_per_device: 2,
        image_bytes: 20_000,
        chunk_size: 1024,
        chunk_form: fleetflow_sim::ChunkForm::Mixed,
        drain: Duration::from_secs(60),
        ..env.sim_config()
    };
    let v1_run = tokio::spawn(fleetflow_sim::run(sim));
    let ids: Vec<String> = (0..10).map(|_| random_device()).collect();
    let b = Behaviour {
        chunk_size: 1024,
        pace: Duration::from_millis(20),
        retry_after: Duration::from_secs(60),
        deadline: Duration::from_secs(90),
    };
    let (given, tasks) = spawn_fleet(&env, &ids, 2, b).await;
    let mut reports = vec![];
    for t in tasks {
        reports.push(t.await.unwrap());
    }
    let v1 = v1_run.await.unwrap().expect("simulator");
    assert_eq!((v1.captures_started, v1.captures_acked), (40, 40), "{v1:?}");
    assert!(reports.iter().all(|r| r.unacked.is_empty()), "{reports:?}");
    assert_eq!(assert_acked_are_stored(&env, &given, &reports).await, 20);
}

// ---- 5. kill -9 during a GXP fleet run ----

#[tokio::test]
async fn after_a_kill_9_mid_assembly_every_gxp_capture_is_eventually_acked_and_nothing_acked_is_missing(
) {
    let mut env = TestEnv::start(Options {
        assembly_timeout_ms: 1500,
        ..Options::default()
    })
    .await;
    let ids: Vec<String> = (0..20).map(|_| random_device()).collect();
    let b = Behaviour {
        chunk_size: 1024,
        pace: Duration::from_millis(40),
        retry_after: Duration::from_secs(5),
        deadline: Duration::from_secs(150),
    };
    let (given, tasks) = spawn_fleet(&env, &ids, 3, b).await;
    let wait = rand::random_range(1_500..3_000);
    tokio::time::sleep(Duration::from_millis(wait)).await;
    let held = env.metric("fleetflow_assembly_bytes").await;
    env.kill9();
    eprintln!("killed the engine with SIGKILL after {wait} ms, holding {held} bytes of assemblies");
    assert!(held > 0.0, "the kill must hit captures mid-assembly");
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.spawn_engine();
    env.wait_ready(T).await;
    let mut reports = vec![];
    for t in tasks {
        reports.push(t.await.unwrap());
    }
    let (nacks, resends): (usize, usize) = reports
        .iter()
        .fold((0, 0), |(n, r), d| (n + d.nacks, r + d.full_resends));
    eprintln!("NACKs {nacks}, whole-image resends {resends}");
    let unacked: Vec<(&str, &Vec<String>)> = reports
        .iter()
        .filter(|r| !r.unacked.is_empty())
        .map(|r| (r.id.as_str(), &r.unacked))
        .collect();
    assert!(unacked.is_empty(), "announced but never acked: {unacked:?}");
    assert_eq!(assert_acked_are_stored(&env, &given, &reports).await, 60);
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM captures WHERE ingest_status = 'stored'")
            .await,
        60
    );
}
