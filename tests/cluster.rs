//! Cluster mode on loopback (issue 16): three NATS nodes (`scripts/services up --cluster`, with
//! the partition mappings) and engine instances sharing one fleet, one prefix and one database.
//! Devices publish over MQTT 3.1.1 to the NATS nodes' MQTT listeners. Checked: every reading that
//! NATS acknowledged is stored exactly once and every capture is stored; an instance killed with
//! `kill -9` mid-stream loses its partitions to the others within 10 s and nothing acknowledged
//! is lost; a joining instance takes its share; and, from the engines' logs, no device had a live
//! actor on two instances at the same time.

use crate::cluster_harness::*;
use crate::common;

use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::engine::Options;

#[tokio::test(flavor = "multi_thread")]
async fn three_instances_share_a_fleet_and_survive_a_kill_and_a_join() {
    let prefix = Fleet::new("k");
    let e0 = engine("e0", &prefix, None).await;
    let db = Some(e0.db_url.clone());
    let e1 = engine("e1", &prefix, db.clone()).await;
    let mut e2 = engine("e2", &prefix, db.clone()).await;
    let owned = settled(&[&e0, &e1, &e2], Duration::from_secs(30)).await;
    eprintln!("partitions owned by e0, e1, e2: {owned:?}");

    // Phase A: readings and captures, all instances up.
    let acks = ack_listener(&prefix).await;
    publish(phase(&prefix, 1, 10, true), || {}).await;
    wait_stored(&e0, DEVICES * 10, CAPTURES, Duration::from_secs(60)).await;

    let deadline = Instant::now() + Duration::from_secs(20);
    while (acks.lock().unwrap().len() as i64) < CAPTURES {
        assert!(
            Instant::now() < deadline,
            "ACK_OK reached {} of {CAPTURES} capturing devices",
            acks.lock().unwrap().len()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }

    // Phase B: e2 is killed halfway; the others own every partition within 10 s.
    let mut killed_at = None;
    publish(phase(&prefix, 11, 10, false), || {
        e2.kill9();
        killed_at = Some((Utc::now(), Instant::now()));
    })
    .await;
    let (killed_wall, killed) = killed_at.expect("the kill ran");
    let owned = settled(
        &[&e0, &e1],
        Duration::from_secs(10).saturating_sub(killed.elapsed()),
    )
    .await;
    eprintln!(
        "after the kill, e0 and e1 own {owned:?} ({:?} after it)",
        killed.elapsed()
    );
    wait_stored(&e0, DEVICES * 20, 0, Duration::from_secs(60)).await;
    let replayed = e0.metric("fleetflow_cluster_replayed_messages_total").await
        + e1.metric("fleetflow_cluster_replayed_messages_total").await;
    eprintln!("messages e2 left unacknowledged, read again by e0 and e1: {replayed}");

    // Phase C: a new instance joins and takes its share.
    let e3 = engine("e3", &prefix, db.clone()).await;
    let owned = settled(&[&e0, &e1, &e3], Duration::from_secs(30)).await;
    eprintln!("after the join, e0, e1, e3 own {owned:?}");
    publish(phase(&prefix, 21, 5, false), || {}).await;
    wait_stored(&e0, DEVICES * 25, 0, Duration::from_secs(60)).await;

    every_reading_once(&e0, 25).await;

    // No device had a live actor on two instances at once; the positive control: devices did
    // move (the killed and the joining instance's partitions changed hands).
    let logs = vec![
        ("e0".to_string(), e0.log(), None),
        ("e1".to_string(), e1.log(), None),
        ("e2".to_string(), e2.log(), Some(killed_wall)),
        ("e3".to_string(), e3.log(), None),
    ];
    let lives = actor_lives(&logs);
    assert!(
        lives.len() >= DEVICES,
        "every device had an actor: {}",
        lives.len()
    );
    let mut moved = 0;
    for (dev, l) in lives {
        if l.iter().any(|(i, _, _)| i != &l[0].0) {
            moved += 1;
        }
        for (a, x) in l.iter().enumerate() {
            for y in &l[a + 1..] {
                assert!(
                    x.0 == y.0 || x.2 <= y.1 || y.2 <= x.1,
                    "{dev}: live on {} from {} to {} and on {} from {} to {}",
                    x.0,
                    x.1,
                    x.2,
                    y.0,
                    y.1,
                    y.2
                );
            }
        }
    }
    assert!(
        moved > 0,
        "no device changed instance: the check above proved nothing"
    );
    eprintln!("{moved} devices changed instance, never two live actors at once");
}

#[tokio::test(flavor = "multi_thread")]
async fn a_nats_node_killed_mid_stream_loses_nothing_acknowledged_and_ingest_goes_on() {
    let (prefix, e0, e1) = two_engines("n", Options::default()).await;
    let _restart = Restart("n2");

    let moved = publish(phase(&prefix, 1, 20, true), || services("nats-kill", "n2")).await;
    assert!(
        moved > 0,
        "the kill reached no publisher: the check below proves nothing"
    );
    wait_stored(&e0, DEVICES * 20, CAPTURES, Duration::from_secs(90)).await;

    // With the node still down, ingest goes on (its devices connect to the others).
    publish(phase(&prefix, 21, 5, false), || {}).await;
    wait_stored(&e0, DEVICES * 25, 0, Duration::from_secs(60)).await;
    every_reading_once(&e0, 25).await;
    // Both instances still own their partitions, with one node down (a membership that lapsed
    // while the node's raft groups elected new leaders is renewed and its partitions taken back).
    settled(&[&e0, &e1], Duration::from_secs(30)).await;
}

/// `cluster-forget` with `flags`, run again while it refuses because a killed instance is still
/// a member: its entry expires member_ttl_ms (3 s) after its last renewal, and one call can
/// still see it after an earlier one did not (the bucket's replicas expire it a moment apart).
async fn forget_once_not_a_member(prefix: &Fleet, flags: &[&str]) -> (i32, String) {
    let deadline = Instant::now() + Duration::from_secs(15);
    loop {
        let (code, text) = prefix.forget(flags);
        if !text.contains("still members") {
            return (code, text);
        }
        assert_eq!(code, 3, "{text}");
        assert!(Instant::now() < deadline, "still a member: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// `cluster-forget` with no NATS server to reach fails with exit code 1, apart from the
/// refusals' 3.
#[test]
fn cluster_forget_exits_1_when_no_nats_server_answers() {
    let port = common::free_port();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetflow"))
        .arg("cluster-forget")
        .env(
            "FLEETFLOW_CLUSTER__NATS_URLS",
            format!("nats://127.0.0.1:{port}"),
        )
        .env("FLEETFLOW_MQTT__TOPIC_PREFIX", "unreachable")
        .output()
        .expect("run fleetflow");
    let text = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(
        text.contains("connecting to NATS") || text.contains("no NATS server answered"),
        "{text}"
    );
}

/// `fleetflow cluster-forget` refuses while an instance of the fleet is a member, then while a
/// consumer holds a message NATS acknowledged (deleting it would delete the message), then with
/// `--discard-pending` deletes the 32 partition consumers and the members bucket, and leaves
/// alone a fleet whose prefix begins the same way (which goes on ingesting).
#[tokio::test(flavor = "multi_thread")]
async fn cluster_forget_deletes_one_fleets_consumers_once_no_instance_is_a_member() {
    let prefix = Fleet::new("g");
    let other = prefix.lookalike();
    let mut e0 = engine("g0", &prefix, None).await;
    let e1 = engine("g1", &other, None).await;
    settled(&[&e0], Duration::from_secs(30)).await;
    settled(&[&e1], Duration::from_secs(30)).await;

    // A refusal exits 3 (nothing deleted: act first), other errors 1.
    let (code, text) = prefix.forget(&[]);
    assert!(
        code == 3 && text.contains("instances g0 are still members"),
        "refused while g0 is a member: {code} {text}"
    );
    e0.kill9();
    // Stored by NATS, and held by its partition's consumer now that no instance pulls.
    let status = br#"{"status":"online"}"#.to_vec();
    publish(
        vec![(format!("{prefix}/CC0F00000002/status"), status)],
        || {},
    )
    .await;
    let (code, text) = forget_once_not_a_member(&prefix, &[]).await;
    assert_eq!(code, 3, "deleted a consumer that holds a message: {text}");
    assert!(
        text.contains("consumers still hold messages") && text.contains("(1)"),
        "{text}"
    );
    let (code, text) = forget_once_not_a_member(&prefix, &["--discard-pending"]).await;
    assert!(
        code == 0 && text.contains("deleted 32 partition consumer(s) and the members bucket"),
        "{text}"
    );
    let (code, again) = prefix.forget(&[]);
    assert!(
        code == 0 && again.contains("deleted 0 partition consumer(s)\n"),
        "{again}"
    );

    // The lookalike fleet kept its consumers: its instance still owns them and ingests.
    assert_eq!(
        settled(&[&e1], Duration::from_secs(5)).await,
        vec![PARTITIONS]
    );
    announce(&e1, &other, "CC0F00000001").await;
}

#[tokio::test(flavor = "multi_thread")]
async fn an_instance_that_cannot_renew_its_membership_fences_itself_and_comes_back() {
    let prefix = Fleet::new("f");
    let e0 = engine("f0", &prefix, None).await;
    settled(&[&e0], Duration::from_secs(30)).await;
    let _restart = (Restart("n2"), Restart("n3"));
    // Without two of three nodes JetStream has no quorum: the member entry cannot be renewed.
    services("nats-kill", "n2");
    services("nats-kill", "n3");
    let deadline = Instant::now() + Duration::from_secs(30);
    while e0.metric("fleetflow_cluster_partitions_owned").await > 0.0 {
        assert!(
            Instant::now() < deadline,
            "the instance kept its partitions without a membership"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    services("nats-start", "n2");
    services("nats-start", "n3");
    // The positive control: with the quorum back, it owns every partition again.
    settled(&[&e0], Duration::from_secs(60)).await;
}

/// The GXP wake handshake through NATS: a device that wakes sends `Alive` and must get its
/// command on `/cmd` within a second or two (docs/gxp.md): `capture_image` when it was never
/// scheduled, then `next_wake` in the future.
#[tokio::test(flavor = "multi_thread")]
async fn a_gxp_device_waking_through_nats_gets_capture_image_then_next_wake_within_2_s() {
    let (prefix, _e0, _e1) = two_engines("w", Options::default()).await;
    let id = device(11);
    let (_dev, mut cmds) = subscriber(format!("{prefix}/{id}/cmd"), 1).await;
    let mut answers = Vec::new();
    for _ in 0..2 {
        let alive = fleetflow_sim::gxp::wire::alive(&id, 0).to_vec();
        publish(vec![(format!("{prefix}/{id}/status"), alive)], || {}).await;
        let sent = Instant::now();
        let cmd = tokio::time::timeout(Duration::from_secs(2), cmds.recv())
            .await
            .unwrap_or_else(|_| panic!("no /cmd within 2 s of Alive (answers so far: {answers:?})"))
            .unwrap()
            .1;
        eprintln!("answered {cmd} after {:?}", sent.elapsed());
        answers.push(cmd);
    }
    assert_eq!(
        answers[0],
        serde_json::json!({"device_id": id, "capture_image": true})
    );
    let wake: DateTime<Utc> = answers[1]["next_wake"]
        .as_str()
        .unwrap_or_else(|| panic!("next_wake: {}", answers[1]))
        .parse()
        .unwrap();
    assert!(wake > Utc::now(), "next_wake {wake} is in the future");
}

#[tokio::test(flavor = "multi_thread")]
async fn any_instance_answers_for_a_device_restarts_it_where_it_lives_and_a_command_queued_on_any_reaches_it(
) {
    let (prefix, e0, e1) = two_engines("c", Options::default()).await;
    let id = device(7);
    let (_dev, mut got) = subscriber(format!("{prefix}/{id}/cmd"), 1).await;
    announce(&e0, &prefix, &id).await;
    // Either instance answers for the device's actor, wherever it lives (one of the two only
    // through the other).
    for via in [&e0, &e1] {
        let (_, v) = api(
            via,
            reqwest::Method::GET,
            &format!("devices/{id}"),
            serde_json::Value::Null,
        )
        .await;
        assert_eq!(v["actor"]["state"], "running", "{v}");
    }
    // Queued through each instance in turn: whichever owns the device, the command gets there.
    for (n, via) in [&e0, &e1].into_iter().enumerate() {
        let (status, body) = api(
            via,
            reqwest::Method::POST,
            &format!("devices/{id}/commands"),
            serde_json::json!({"name": "capture_now", "args": {"n": n}}),
        )
        .await;
        assert_eq!(status, 201);
        let command_id = body["command_id"].as_str().unwrap().to_string();
        let cmd = loop {
            let Ok(v) = tokio::time::timeout(Duration::from_secs(15), got.recv()).await else {
                let st = e0.scalar_i64(&format!("SELECT count(*) FROM device_commands WHERE id = '{command_id}' AND status = 'sent'")).await;
                let m0 = e0
                    .metric("fleetflow_mqtt_publishes_total{kind=\"command\"}")
                    .await;
                let m1 = e1
                    .metric("fleetflow_mqtt_publishes_total{kind=\"command\"}")
                    .await;
                panic!(
                    "the command did not reach the device (sent rows: {st}, published {m0} + {m1})"
                );
            };
            let (_, v) = v.unwrap();
            if v["type"] == "command" {
                break v;
            }
        };
        assert_eq!(cmd["command_id"], command_id.as_str());
        assert_eq!(cmd["args"]["n"], n);
        let result = format!(r#"{{"command_id":"{command_id}","ok":true,"detail":"done {n}"}}"#);
        publish(
            vec![(format!("{prefix}/{id}/cmd/result"), result.into_bytes())],
            || {},
        )
        .await;
        wait_for(
            &e0,
            &format!("SELECT count(*) FROM device_commands WHERE id = '{command_id}' AND status = 'succeeded'"),
            1,
            Duration::from_secs(20),
        )
        .await;
    }
    // A `device:` restart requested through either instance restarts the actor where it lives;
    // neither starts a second actor for the device (all restarts are on one instance).
    for via in [&e0, &e1] {
        let (_, r) = api(
            via,
            reqwest::Method::POST,
            "restarts",
            serde_json::json!({"target": format!("device:{id}"), "reason": "test"}),
        )
        .await;
        assert_eq!(r["status"], "completed", "{r}");
        assert_eq!(r["result"]["was_running"], true, "{r}");
    }
    restarts_ran_on_one_instance(&e0, &e1, 2.0).await;
}
