//! The cluster tests' harness (`tests/cluster.rs`, `cluster_resync.rs`, `cluster_console.rs`):
//! engine instances on the loopback NATS cluster of `scripts/services up --cluster`, fleets that
//! forget their consumers when dropped, publishers over the NATS nodes' MQTT listeners with
//! failover, and the checks on what was stored.

use crate::common;

use std::collections::HashMap;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};

use common::engine::{Options, TestEnv};
use common::services::random_hex;
use fleetflow_sim::gxp::wire as gxp_wire;

pub(crate) const DEVICES: usize = 300;
pub(crate) const TOKEN: &str = "cluster-test-admin-token";
pub(crate) const PARTITIONS: f64 = 32.0;
/// Captures of phase A: one v1 and one GXP from every tenth device.
pub(crate) const CAPTURES: i64 = (DEVICES / 10 * 2) as i64;

pub(crate) fn nats_urls() -> String {
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
    pub(crate) fn lookalike(&self) -> Self {
        Fleet(format!("{}-p1", self.0))
    }

    /// `fleetflow cluster-forget` on this prefix with `flags`: its exit code (-1 when it has
    /// none) and its output.
    pub(crate) fn forget(&self, flags: &[&str]) -> (i32, String) {
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_fleetflow"))
            .arg("cluster-forget")
            .args(flags)
            .env("FLEETFLOW_CLUSTER__NATS_URLS", nats_urls())
            .env("FLEETFLOW_MQTT__TOPIC_PREFIX", &self.0)
            .output();
        match out {
            Ok(out) => (
                out.status.code().unwrap_or(-1),
                format!(
                    "{}{}",
                    String::from_utf8_lossy(&out.stdout),
                    String::from_utf8_lossy(&out.stderr)
                ),
            ),
            Err(e) => (-1, format!("cannot run fleetflow: {e}")),
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
        let (code, text) = self.forget(&["--force", "--discard-pending"]);
        if code != 0 {
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
pub(crate) fn jpeg() -> Vec<u8> {
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
pub(crate) fn phase(
    prefix: &str,
    first_seq: u64,
    per_device: u64,
    captures: bool,
) -> Vec<(String, Vec<u8>)> {
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
pub(crate) async fn publish_lane(
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
pub(crate) async fn ack_listener(
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
pub(crate) async fn wait_stored(env: &TestEnv, readings: usize, captures: i64, within: Duration) {
    let sql = "SELECT count(*) FROM sensor_readings WHERE seq IS NOT NULL";
    wait_for(env, sql, readings as i64, within).await;
    if captures > 0 {
        let sql = "SELECT count(*) FROM captures WHERE ingest_status = 'stored'";
        wait_for(env, sql, captures, within).await;
    }
}

/// Every device has readings 1..=`per_device`, each once (the unique index keeps duplicates out;
/// this finds the missing).
pub(crate) async fn every_reading_once(env: &TestEnv, per_device: i64) {
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

/// Runs `scripts/services <verb> <node>`.
pub(crate) fn services(verb: &str, node: &str) {
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
pub(crate) struct Restart(pub(crate) &'static str);

impl Drop for Restart {
    fn drop(&mut self) {
        services("nats-start", self.0);
    }
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
pub(crate) async fn api(
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

/// `want` actor restarts ran in all (`fleetflow_device_actors_restarted_total` of `e0` and `e1`),
/// every one of them on the same instance: the one that holds the device.
pub(crate) async fn restarts_ran_on_one_instance(e0: &TestEnv, e1: &TestEnv, want: f64) {
    let restarted = "fleetflow_device_actors_restarted_total";
    let (r0, r1) = (e0.metric(restarted).await, e1.metric(restarted).await);
    assert_eq!(
        r0 + r1,
        want,
        "{want} restarts ran: {r0} on one, {r1} on the other"
    );
    assert!(
        r0 == 0.0 || r1 == 0.0,
        "restarted on both instances: {r0} and {r1}"
    );
}
