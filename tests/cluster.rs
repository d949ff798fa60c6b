//! Cluster mode on loopback (issue 16): three NATS nodes (`scripts/services up --cluster`, with
//! the partition mappings) and engine instances sharing one fleet, one prefix and one database.
//! Devices publish over MQTT 3.1.1 to the NATS nodes' MQTT listeners. Checked: every reading that
//! NATS acknowledged is stored exactly once and every capture is stored; an instance killed with
//! `kill -9` mid-stream loses its partitions to the others within 10 s and nothing acknowledged
//! is lost; a joining instance takes its share; and, from the engines' logs, no device had a live
//! actor on two instances at the same time.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use common::engine::{Options, TestEnv};
use common::services::random_hex;
use fleetflow_sim::gxp::wire as gxp_wire;

const DEVICES: usize = 300;
pub(crate) const TOKEN: &str = "cluster-test-admin-token";
const PARTITIONS: f64 = 32.0;
/// Captures of phase A: one v1 and one GXP from every tenth device.
const CAPTURES: i64 = (DEVICES / 10 * 2) as i64;

fn nats_urls() -> String {
    std::env::var("FLEETFLOW_TEST_NATS_URLS").unwrap_or_else(|_| {
        "nats://127.0.0.1:14222,nats://127.0.0.1:14223,nats://127.0.0.1:14224".into()
    })
}

/// The MQTT ports of the NATS nodes.
pub(crate) fn mqtt_ports() -> Vec<u16> {
    std::env::var("FLEETFLOW_TEST_NATS_MQTT_URLS")
        .unwrap_or_else(|_| {
            "mqtt://127.0.0.1:11893,mqtt://127.0.0.1:11894,mqtt://127.0.0.1:11895".into()
        })
        .split(',')
        .map(|u| u.rsplit(':').next().unwrap().parse().unwrap())
        .collect()
}

/// A fleet prefix (`{tag}` plus random hex) whose partition consumers and members bucket are
/// deleted (`fleetflow cluster-forget --force`) when it is dropped, after its engines: every
/// prefix leaves 32 replicated consumers that cost NATS CPU even idle, and the rest of the suite
/// shares the same two cores.
pub(crate) struct Fleet(String);

impl Fleet {
    pub(crate) fn new(tag: &str) -> Self {
        Fleet(format!("{tag}{}", random_hex(8)))
    }

    /// A prefix that begins with this one and adds `-p1`: its consumers' names begin with
    /// this one's (`{root}-{prefix}-p1-p{n}` against `{root}-{prefix}-p{n}`).
    fn lookalike(&self) -> Self {
        Fleet(format!("{}-p1", self.0))
    }

    /// `fleetflow cluster-forget` on this prefix with `flags`: its status and its output.
    fn forget(&self, flags: &[&str]) -> (bool, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetflow"))
            .arg("cluster-forget")
            .args(flags)
            .env("FLEETFLOW_CLUSTER__NATS_URLS", nats_urls())
            .env("FLEETFLOW_MQTT__TOPIC_PREFIX", &self.0)
            .output();
        match out {
            Ok(out) => (
                out.status.success(),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ),
            Err(e) => (false, format!("cannot run fleetflow: {e}")),
        }
    }
}

impl std::ops::Deref for Fleet {
    type Target = String;
    fn deref(&self) -> &String {
        &self.0
    }
}

impl std::fmt::Display for Fleet {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl Drop for Fleet {
    fn drop(&mut self) {
        let (ok, text) = self.forget(&["--force", "--discard-pending"]);
        if !ok {
            eprintln!("cluster-forget {}: {text}", self.0);
        }
    }
}

pub(crate) async fn engine(instance: &str, prefix: &str, db: Option<String>) -> TestEnv {
    engine_with(instance, prefix, db, Options::default()).await
}

/// [`engine`], with other options besides.
pub(crate) async fn engine_with(
    instance: &str,
    prefix: &str,
    db: Option<String>,
    opts: Options,
) -> TestEnv {
    let extra = format!(
        "[admin]\ntoken = \"{TOKEN}\"\nrestart_cooldown_secs = 0\n[cluster]\nenabled = true\nnats_urls = \"{}\"\ninstance_id = \"{instance}\"\nmember_ttl_ms = 3000\npin_timeout_ms = 2000\nack_wait_ms = 4000\ndrain_ms = 2000\n",
        nats_urls()
    );
    TestEnv::start(Options {
        extra,
        pg_url: db,
        prefix: Some(prefix.to_string()),
        ..opts
    })
    .await
}

/// Partitions each running engine owns, once their views agree (the owned sum to 32 and
/// every one of them owns some), within `within`.
pub(crate) async fn settled(engines: &[&TestEnv], within: Duration) -> Vec<f64> {
    let deadline = Instant::now() + within;
    loop {
        let mut owned = Vec::new();
        for e in engines {
            owned.push(e.metric("fleetflow_cluster_partitions_owned").await);
        }
        if owned.iter().sum::<f64>() == PARTITIONS && owned.iter().all(|o| *o > 0.0) {
            return owned;
        }
        assert!(
            Instant::now() < deadline,
            "partitions not settled within {within:?}: {owned:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// A tiny valid JPEG of 300 bytes (SOI, padding, EOI): two 256-byte chunks.
fn jpeg() -> Vec<u8> {
    let mut j = vec![0u8; 300];
    j[..2].copy_from_slice(&[0xff, 0xd8]);
    j[298..].copy_from_slice(&[0xff, 0xd9]);
    j
}

/// GXP firmware metadata of one image (flat fields, as the devices in the field send it).
pub(crate) fn gxp_meta(id: &str, image_name: &str, image_size: usize, chunk: usize) -> Vec<u8> {
    gxp_wire::metadata(&gxp_wire::Meta {
        device_id: id,
        image_name,
        captured_at: "2026-11-29T08:00:00Z",
        image_size,
        chunk_size: chunk,
        location: "test",
        sensors: gxp_wire::Sensors {
            temperature: 21.0,
            humidity: 40.0,
            pressure: 1000.0,
            gas_resistance_ohm: 10_000.0,
        },
    })
    .to_vec()
}

/// Two instances on one database and one fleet prefix (`{tag}` plus random hex), with their
/// partitions settled; `opts` for both.
pub(crate) async fn two_engines(tag: &str, opts: Options) -> (Fleet, TestEnv, TestEnv) {
    let prefix = Fleet::new(tag);
    let e0 = engine_with(&format!("{tag}0"), &prefix, None, opts.clone()).await;
    let e1 = engine_with(&format!("{tag}1"), &prefix, Some(e0.db_url.clone()), opts).await;
    settled(&[&e0, &e1], Duration::from_secs(30)).await;
    (prefix, e0, e1)
}

/// The messages of one phase: `per_device` readings (seq from `first_seq`) for every device,
/// and, when `captures`, a capture from every tenth device in each format: fleetflow v1
/// (metadata and two binary chunks) and the GXP firmware's (metadata and base64 JSON chunks).
fn phase(prefix: &str, first_seq: u64, per_device: u64, captures: bool) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for seq in first_seq..first_seq + per_device {
        for d in 0..DEVICES {
            let body = format!(r#"{{"type":"reading","seq":{seq},"temperature_c":21.5}}"#);
            out.push((format!("{prefix}/{}/data", device(d)), body.into_bytes()));
        }
    }
    if captures {
        let image = jpeg();
        // GXP firmware captures: flat metadata, then base64 JSON chunks, all on /data.
        for d in (5..DEVICES).step_by(10) {
            let id = device(d);
            let name = format!("image_{first_seq:06}.jpg");
            let meta = gxp_meta(&id, &name, image.len(), 256);
            out.push((format!("{prefix}/{id}/data"), meta));
            for (i, part) in image.chunks(256).enumerate() {
                let c = gxp_wire::chunk(&id, &name, i, 256, part);
                out.push((format!("{prefix}/{id}/data"), c.to_vec()));
            }
        }
        for d in (0..DEVICES).step_by(10) {
            let id = device(d);
            let meta = format!(
                r#"{{"type":"capture_meta","capture_id":"c{first_seq}","image_bytes":300,"total_chunks":2,"chunk_size":256}}"#
            );
            out.push((format!("{prefix}/{id}/data"), meta.into_bytes()));
            for (i, part) in image.chunks(256).enumerate() {
                out.push((
                    format!("{prefix}/{id}/chunk/c{first_seq}/{i}"),
                    part.to_vec(),
                ));
            }
        }
    }
    out
}

pub(crate) fn device(d: usize) -> String {
    format!("CC00{d:08X}")
}

/// Publishes at QoS 1 over MQTT 3.1.1 through the NATS nodes (one connection per node, each
/// device always on the same one) and waits until every message was acknowledged; `on_half`
/// runs once whichever connection is first to have half of its messages acknowledged does (so
/// none with two or more has finished: a node killed then still has a publisher to lose). A connection that fails moves to the next node and publishes
/// again what was not acknowledged (as a device does; the database keeps one row per reading).
/// Answers how many times a connection moved.
pub(crate) async fn publish(msgs: Vec<(String, Vec<u8>)>, mut on_half: impl FnMut()) -> usize {
    let ports = mqtt_ports();
    let mut lanes: Vec<Vec<(String, Vec<u8>)>> = vec![Vec::new(); ports.len()];
    for (topic, body) in msgs {
        let d = topic.split('/').nth(1).unwrap().to_string();
        let lane = d
            .bytes()
            .fold(0usize, |a, b| a.wrapping_mul(31) + b as usize)
            % ports.len();
        lanes[lane].push((topic, body));
    }
    let total: usize = lanes.iter().map(Vec::len).sum();
    let sizes: Vec<usize> = lanes.iter().map(Vec::len).collect();
    let mut per_lane = vec![0usize; lanes.len()];
    let (acked_tx, mut acked_rx) = tokio::sync::mpsc::unbounded_channel::<usize>();
    let mut tasks = Vec::new();
    for (i, lane) in lanes.into_iter().enumerate() {
        tasks.push(tokio::spawn(publish_lane(
            ports.clone(),
            i,
            lane,
            acked_tx.clone(),
        )));
    }
    drop(acked_tx);
    let mut acked = 0;
    let mut halved = false;
    while let Some(lane) = acked_rx.recv().await {
        acked += 1;
        per_lane[lane] += 1;
        if !halved && per_lane[lane] * 2 >= sizes[lane] {
            halved = true;
            on_half();
        }
    }
    let mut failovers = 0;
    for t in tasks {
        failovers += t.await.unwrap();
    }
    assert_eq!(acked, total, "every message acknowledged by NATS");
    if failovers > 0 {
        eprintln!("publishers failed over {failovers} times");
    }
    failovers
}

/// One connection's messages, through `ports[first]` and the next nodes when one fails;
/// answers how many times it moved.
async fn publish_lane(
    ports: Vec<u16>,
    first: usize,
    lane: Vec<(String, Vec<u8>)>,
    acked_tx: tokio::sync::mpsc::UnboundedSender<usize>,
) -> usize {
    let mut left: Vec<(String, Vec<u8>)> = lane;
    let mut node = first;
    let mut moves = 0;
    let deadline = Instant::now() + Duration::from_secs(120);
    while !left.is_empty() {
        assert!(
            Instant::now() < deadline,
            "{} messages never acknowledged",
            left.len()
        );
        let port = ports[node % ports.len()];
        let mut o = MqttOptions::new(format!("pub-{}", random_hex(6)), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(5));
        o.set_inflight(100);
        let (client, mut ev) = AsyncClient::new(o, 200);
        let batch = std::mem::take(&mut left);
        let sender = {
            let client = client.clone();
            let batch = batch.clone();
            tokio::spawn(async move {
                for (topic, body) in batch {
                    if client
                        .publish(topic, QoS::AtLeastOnce, false, body)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            })
        };
        // pkid of each published message, in order; acked ones are dropped from `pending`.
        let mut sent = 0usize;
        let mut pending: HashMap<u16, usize> = HashMap::new();
        let mut acked = vec![false; batch.len()];
        let mut done = 0;
        let failed = loop {
            if done == batch.len() {
                break false;
            }
            match tokio::time::timeout(Duration::from_secs(10), ev.poll()).await {
                Ok(Ok(Event::Outgoing(rumqttc::Outgoing::Publish(pkid)))) => {
                    pending.insert(pkid, sent);
                    sent += 1;
                }
                Ok(Ok(Event::Incoming(Packet::PubAck(a)))) => {
                    if let Some(i) = pending.remove(&a.pkid) {
                        if !acked[i] {
                            acked[i] = true;
                            done += 1;
                            let _ = acked_tx.send(first);
                        }
                    }
                }
                Ok(Ok(_)) => {}
                Ok(Err(_)) | Err(_) => break true,
            }
        };
        sender.abort();
        let _ = client.try_disconnect();
        if failed {
            left = batch
                .into_iter()
                .zip(acked)
                .filter(|(_, a)| !a)
                .map(|(m, _)| m)
                .collect();
            node += 1;
            moves += 1;
        }
    }
    moves
}

/// Listens on `{prefix}/+/ack` through a NATS node's MQTT listener; answers the devices that got
/// an ACK_OK (both formats name it `ACK_OK`).
async fn ack_listener(
    prefix: &str,
) -> std::sync::Arc<std::sync::Mutex<std::collections::HashSet<String>>> {
    let got = std::sync::Arc::new(std::sync::Mutex::new(std::collections::HashSet::new()));
    let port = mqtt_ports()[0];
    let mut o = MqttOptions::new(format!("acks-{}", random_hex(6)), "127.0.0.1", port);
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(o, 10);
    client
        .subscribe(format!("{prefix}/+/ack"), QoS::AtMostOnce)
        .await
        .unwrap();
    let seen = got.clone();
    tokio::spawn(async move {
        let _client = client;
        while let Ok(e) = ev.poll().await {
            match e {
                Event::Incoming(Packet::SubAck(_)) => {
                    seen.lock().unwrap().insert(String::new());
                }
                Event::Incoming(Packet::Publish(p))
                    if p.payload.windows(6).any(|w| w == b"ACK_OK") =>
                {
                    let device = p.topic.split('/').nth(1).unwrap_or_default().to_string();
                    seen.lock().unwrap().insert(device);
                }
                _ => {}
            }
        }
    });
    // Subscribed before anything is sent (the empty name marks the SUBACK).
    let deadline = Instant::now() + Duration::from_secs(10);
    while !got.lock().unwrap().contains("") {
        assert!(
            Instant::now() < deadline,
            "no SUBACK from NATS's MQTT listener"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    got.lock().unwrap().remove("");
    got
}

/// Waits until `readings` readings and `captures` stored captures are in the database.
async fn wait_stored(env: &TestEnv, readings: usize, captures: i64, within: Duration) {
    let sql = "SELECT count(*) FROM sensor_readings WHERE seq IS NOT NULL";
    wait_for(env, sql, readings as i64, within).await;
    if captures > 0 {
        let sql = "SELECT count(*) FROM captures WHERE ingest_status = 'stored'";
        wait_for(env, sql, captures, within).await;
    }
}

/// Every device has readings 1..=`per_device`, each once (the unique index keeps duplicates out;
/// this finds the missing).
async fn every_reading_once(env: &TestEnv, per_device: i64) {
    let complete = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM (SELECT device_id FROM sensor_readings WHERE seq IS NOT NULL \
             GROUP BY device_id HAVING count(*) = {per_device} AND min(seq) = 1 AND max(seq) = {per_device}) d"
        ))
        .await;
    assert_eq!(
        complete, DEVICES as i64,
        "every device has all {per_device} readings"
    );
}

/// Waits until `sql` answers `want`.
pub(crate) async fn wait_for(env: &TestEnv, sql: &str, want: i64, within: Duration) {
    let deadline = Instant::now() + within;
    loop {
        let n = env.scalar_i64(sql).await;
        if n == want {
            return;
        }
        assert!(Instant::now() < deadline, "{sql}: {n}, want {want}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// An instance's name, its log, and when it was killed (if it was).
pub(crate) type InstanceLog = (String, String, Option<DateTime<Utc>>);
/// An actor's life: the instance, from, to.
pub(crate) type Life = (String, DateTime<Utc>, DateTime<Utc>);

/// Per device, the intervals its actor lived on each instance (from the engines' debug logs;
/// the kill time closes those of a killed instance).
pub(crate) fn actor_lives(logs: &[InstanceLog]) -> HashMap<String, Vec<Life>> {
    let mut out: HashMap<String, Vec<Life>> = HashMap::new();
    for (instance, log, ended) in logs {
        let end_of_log = ended.unwrap_or_else(Utc::now);
        let mut open: HashMap<String, DateTime<Utc>> = HashMap::new();
        for line in log.lines() {
            let started = line.contains("device actor started");
            if !started && !line.contains("device actor stopped") {
                continue;
            }
            let at: DateTime<Utc> = line.split_whitespace().next().unwrap().parse().unwrap();
            let dev = line
                .split("device=")
                .nth(1)
                .unwrap()
                .split_whitespace()
                .next()
                .unwrap()
                .to_string();
            if started {
                open.insert(dev, at);
            } else if let Some(from) = open.remove(&dev) {
                out.entry(dev)
                    .or_default()
                    .push((instance.clone(), from, at));
            }
        }
        for (dev, from) in open {
            out.entry(dev)
                .or_default()
                .push((instance.clone(), from, end_of_log));
        }
    }
    out
}

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

/// Runs `scripts/services <verb> <node>`.
fn services(verb: &str, node: &str) {
    let out = std::process::Command::new(concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services"))
        .args([verb, node])
        .output()
        .expect("scripts/services");
    assert!(
        out.status.success(),
        "scripts/services {verb} {node}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Starts the node again when the test ends, passed or not.
struct Restart(&'static str);

impl Drop for Restart {
    fn drop(&mut self) {
        services("nats-start", self.0);
    }
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

    let (ok, text) = prefix.forget(&[]);
    assert!(
        !ok && text.contains("instances g0 are still members"),
        "refused while g0 is a member: {text}"
    );
    e0.kill9();
    // Stored by NATS, and held by its partition's consumer now that no instance pulls.
    let status = br#"{"status":"online"}"#.to_vec();
    publish(
        vec![(format!("{prefix}/CC0F00000002/status"), status)],
        || {},
    )
    .await;
    // The member entry expires member_ttl_ms (3 s) after its last renewal.
    let deadline = Instant::now() + Duration::from_secs(15);
    let text = loop {
        let (ok, text) = prefix.forget(&[]);
        assert!(!ok, "deleted a consumer that holds a message: {text}");
        if !text.contains("still members") {
            break text;
        }
        assert!(Instant::now() < deadline, "still a member: {text}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    };
    assert!(
        text.contains("consumers still hold messages") && text.contains("(1)"),
        "{text}"
    );
    let (ok, text) = prefix.forget(&["--discard-pending"]);
    assert!(
        ok && text.contains("deleted 32 partition consumer(s) and the members bucket"),
        "{text}"
    );
    let (ok, again) = prefix.forget(&[]);
    assert!(
        ok && again.contains("deleted 0 partition consumer(s)\n"),
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

/// An MQTT 3.1.1 client of NATS node `node` (its MQTT port) subscribed to `filter`, once the
/// SUBACK is in; every JSON message is forwarded with its device (the topic's second level). The
/// client is returned for publishing, and must be kept.
pub(crate) async fn subscriber(
    filter: String,
    node: usize,
) -> (
    AsyncClient,
    tokio::sync::mpsc::UnboundedReceiver<(String, serde_json::Value)>,
) {
    let mut o = MqttOptions::new(
        format!("dev-{}", random_hex(6)),
        "127.0.0.1",
        mqtt_ports()[node],
    );
    o.set_keep_alive(Duration::from_secs(30));
    let (client, mut ev) = AsyncClient::new(o, 1000);
    client.subscribe(filter, QoS::AtMostOnce).await.unwrap();
    let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
    let (subscribed_tx, subscribed) = tokio::sync::oneshot::channel();
    tokio::spawn(async move {
        let mut subscribed_tx = Some(subscribed_tx);
        loop {
            let e = match ev.poll().await {
                Ok(e) => e,
                Err(e) => {
                    eprintln!("device connection: {e}");
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            match e {
                Event::Incoming(Packet::SubAck(_)) => {
                    if let Some(t) = subscribed_tx.take() {
                        let _ = t.send(());
                    }
                }
                Event::Incoming(Packet::Publish(p)) => {
                    let dev = p.topic.split('/').nth(1).unwrap_or_default().to_string();
                    if let Ok(v) = serde_json::from_slice(&p.payload) {
                        if tx.send((dev, v)).is_err() {
                            return;
                        }
                    }
                }
                _ => {}
            }
        }
    });
    tokio::time::timeout(Duration::from_secs(10), subscribed)
        .await
        .expect("no SUBACK from NATS's MQTT listener")
        .unwrap();
    (client, rx)
}

/// A device announced through NATS (one status), once its `devices` row is in.
pub(crate) async fn announce(env: &TestEnv, prefix: &str, id: &str) {
    let status = br#"{"status":"online","battery_v":3.9}"#.to_vec();
    publish(vec![(format!("{prefix}/{id}/status"), status)], || {}).await;
    wait_for(
        env,
        &format!("SELECT count(*) FROM devices WHERE device_id = '{id}'"),
        1,
        Duration::from_secs(20),
    )
    .await;
}

/// An admin API call through `via`: the status and the JSON answer.
async fn api(
    via: &TestEnv,
    method: reqwest::Method,
    path: &str,
    body: serde_json::Value,
) -> (u16, serde_json::Value) {
    let r = reqwest::Client::new()
        .request(method, format!("{}/api/v1/{path}", via.http))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
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
    let restarted = "fleetflow_device_actors_restarted_total";
    let (r0, r1) = (e0.metric(restarted).await, e1.metric(restarted).await);
    assert_eq!(r0 + r1, 2.0, "two restarts ran: {r0} on c0, {r1} on c1");
    assert!(
        r0 == 0.0 || r1 == 0.0,
        "restarted on both instances: {r0} and {r1}"
    );
}
