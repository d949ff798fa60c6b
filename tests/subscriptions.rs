//! Subscriptions of a database-configured source (control-plane issue, acceptance 4): the CRUD
//! endpoints with validation naming the field, disabling and re-enabling a subscription live,
//! statistics written back with exact counts, and each action (`device_profile`, `store_json`,
//! `republish`, `webhook`) against the real broker, Postgres and an HTTP receiver.

use crate::common;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{eventually, random_device, random_hex, Options, TestEnv};
use rumqttc::v5::mqttbytes::v5::Packet;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, Event, MqttOptions};
use serde_json::{json, Value};

const TOKEN: &str = "subs-test-token-0123456789abcdef";

async fn env() -> TestEnv {
    TestEnv::start(Options {
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\n"),
        ..Options::default()
    })
    .await
}

struct Api<'a> {
    env: &'a TestEnv,
    http: reqwest::Client,
    product: String,
}

impl<'a> Api<'a> {
    /// Configures `product` on the test broker, under the test's prefix.
    async fn configure(env: &'a TestEnv) -> Api<'a> {
        let api = Api {
            env,
            http: reqwest::Client::new(),
            product: format!("p-{}", random_hex(6)),
        };
        let (code, body) = api
            .call(
                reqwest::Method::PUT,
                "",
                Some(json!({
                    "host": env.services.mqtt_host, "port": env.services.mqtt_port,
                    "prefix": env.prefix, "client_id": format!("ff-subs-{}", random_hex(6)),
                })),
            )
            .await;
        assert_eq!(code, 200, "{body}");
        api
    }

    async fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> (u16, Value) {
        let mut req = self
            .http
            .request(
                method,
                format!(
                    "{}/api/v1/products/{}/mqtt-config{path}",
                    self.env.http, self.product
                ),
            )
            .bearer_auth(TOKEN);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        let code = r.status().as_u16();
        let text = r.text().await.unwrap();
        (code, serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn create(&self, body: Value) -> i64 {
        let (code, resp) = self
            .call(reqwest::Method::POST, "/subscriptions", Some(body))
            .await;
        assert_eq!(code, 201, "{resp}");
        resp["id"].as_i64().unwrap()
    }

    async fn sub(&self, id: i64) -> Value {
        let (code, resp) = self
            .call(reqwest::Method::GET, "/subscriptions", None)
            .await;
        assert_eq!(code, 200, "{resp}");
        resp["subscriptions"]
            .as_array()
            .unwrap()
            .iter()
            .find(|s| s["id"] == id)
            .cloned()
            .unwrap_or_else(|| panic!("subscription {id} in {resp}"))
    }

    /// Waits until the source holds `n` topic filters (the engine took the change).
    async fn wait_topics(&self, n: i64) {
        eventually(Duration::from_secs(10), "the source's subscriptions", || async {
            let r = self
                .env
                .db()
                .await
                .query_opt(
                    "SELECT connected, subscribed_topics_count FROM mqtt_connection_status WHERE product_id = $1",
                    &[&self.product],
                )
                .await
                .unwrap()?;
            (r.get::<_, bool>(0) && r.get::<_, i32>(1) as i64 == n).then_some(())
        })
        .await;
        // The SUBSCRIBE/UNSUBSCRIBE is queued when the count is written; give it a moment.
        tokio::time::sleep(Duration::from_millis(300)).await;
    }

    /// Waits for a subscription's statistics to reach (received, executed, failed).
    async fn wait_stats(&self, id: i64, want: (i64, i64, i64)) {
        let mut last = Value::Null;
        for _ in 0..100 {
            let s = self.sub(id).await;
            let got = (
                s["messages_received"].as_i64().unwrap(),
                s["actions_executed"].as_i64().unwrap(),
                s["actions_failed"].as_i64().unwrap(),
            );
            if got == want {
                return;
            }
            last = s;
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("statistics of subscription {id} never reached {want:?}: {last}");
    }
}

/// A plain MQTT client on the test broker: publishes, and collects what its filters receive.
struct Client {
    client: AsyncClient,
    got: tokio::sync::mpsc::UnboundedReceiver<(String, Vec<u8>)>,
}

impl Client {
    async fn connect(env: &TestEnv, filters: &[String]) -> Self {
        let o = MqttOptions::new(
            format!("c-{}", random_hex(8)),
            env.services.mqtt_host.clone(),
            env.services.mqtt_port,
        );
        let (client, mut el) = AsyncClient::new(o, 1000);
        let (tx, got) = tokio::sync::mpsc::unbounded_channel();
        let (sub_tx, mut sub_rx) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let topic = String::from_utf8_lossy(&p.topic).to_string();
                        let _ = tx.send((topic, p.payload.to_vec()));
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = sub_tx.send(());
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        });
        for f in filters {
            client.subscribe(f.clone(), QoS::AtLeastOnce).await.unwrap();
            tokio::time::timeout(Duration::from_secs(10), sub_rx.recv())
                .await
                .expect("SUBACK");
        }
        if filters.is_empty() {
            // Wait for the connection by round-tripping a subscription to nothing in use.
            client
                .subscribe(format!("unused/{}", random_hex(6)), QoS::AtMostOnce)
                .await
                .unwrap();
            tokio::time::timeout(Duration::from_secs(10), sub_rx.recv())
                .await
                .expect("SUBACK");
        }
        Self { client, got }
    }

    async fn publish(&self, topic: &str, payload: &str) {
        self.client
            .publish(
                topic.to_string(),
                QoS::AtLeastOnce,
                false,
                payload.to_string(),
            )
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn subscription_endpoints_validate_and_name_the_field() {
    let env = env().await;
    let api = Api::configure(&env).await;
    for (body, field) in [
        (
            json!({"name": "x", "topic": "a/+/t", "actions": [{"type": "teleport"}]}),
            "actions[0].type",
        ),
        (
            json!({"name": "x", "topic": "a/+/t", "actions": [{"type": "store_json", "table": "telemetry"}, {"type": "webhook"}]}),
            "actions[1].url",
        ),
        (
            json!({"name": "x", "topic": "a/#/t", "actions": [{"type": "device_profile"}]}),
            "topic",
        ),
        (
            json!({"topic": "a/#", "actions": [{"type": "device_profile"}]}),
            "name",
        ),
        (json!({"name": "x", "topic": "a/#"}), "actions"),
        (
            json!({"name": "x", "topic": "a/#", "actions": [{"type": "device_profile"}], "colour": 1}),
            "body",
        ),
    ] {
        let (code, resp) = api
            .call(reqwest::Method::POST, "/subscriptions", Some(body.clone()))
            .await;
        assert_eq!(code, 400, "{body}: {resp}");
        assert_eq!(resp["error"]["field"], field, "{body}: {resp}");
    }
    let (code, resp) = api.call(reqwest::Method::GET, "/subscriptions", None).await;
    assert_eq!(code, 200);
    assert_eq!(resp["default_profile_active"], true, "{resp}");

    let id = api
        .create(
            json!({"name": "t", "topic": "a/+/t", "description": "plant telemetry",
                       "actions": [{"type": "store_json", "table": "telemetry"}]}),
        )
        .await;
    let (code, resp) = api
        .call(
            reqwest::Method::POST,
            "/subscriptions",
            Some(json!({"name": "t", "topic": "b/#", "actions": [{"type": "device_profile"}]})),
        )
        .await;
    assert_eq!(code, 409, "{resp}");
    assert_eq!(resp["error"]["field"], "name");
    let (code, resp) = api
        .call(
            reqwest::Method::PUT,
            &format!("/subscriptions/{id}"),
            Some(json!({"actions": [{"type": "republish", "topic": "a/x/t"}]})),
        )
        .await;
    assert_eq!(code, 400, "a republish onto its own filter: {resp}");
    assert_eq!(resp["error"]["field"], "actions[0].topic");
    let (code, resp) = api
        .call(
            reqwest::Method::PUT,
            &format!("/subscriptions/{id}"),
            Some(json!({"enabled": false, "description": "paused"})),
        )
        .await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["enabled"], false);
    assert_eq!(resp["description"], "paused");
    assert_eq!(resp["topic"], "a/+/t", "unchanged fields are kept");
    let (code, _) = api
        .call(
            reqwest::Method::PUT,
            "/subscriptions/999999",
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(code, 404);
    let (code, resp) = api
        .call(reqwest::Method::DELETE, "/subscriptions/abc", None)
        .await;
    assert_eq!(
        (code, resp["error"]["field"].clone()),
        (400, json!("sub_id"))
    );
    let (code, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/subscriptions/{id}"),
            None,
        )
        .await;
    assert_eq!(code, 204);
    let (code, _) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/subscriptions/{id}"),
            None,
        )
        .await;
    assert_eq!(code, 404);

    let r = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/products/{}/mqtt-config/subscriptions",
            env.http, api.product
        ))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "no token");
    let r = reqwest::Client::new()
        .get(format!(
            "{}/api/v1/products/nothing-here/mqtt-config/subscriptions",
            env.http
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404, "an unconfigured product");
}

#[tokio::test]
async fn disabling_a_subscription_stops_its_messages_and_statistics_count_exactly() {
    let env = env().await;
    let pid = env.pid();
    let api = Api::configure(&env).await;
    let root = format!("{}x", env.prefix);
    let id = api
        .create(
            json!({"name": "telemetry", "topic": format!("{root}/+/telemetry"),
                       "actions": [{"type": "store_json", "table": "telemetry"}]}),
        )
        .await;
    api.wait_topics(1).await;
    let dev = random_device();
    let topic = format!("{root}/{dev}/telemetry");
    let client = Client::connect(&env, &[]).await;
    // The rows of this subscription (a control subscription writes others below).
    let rows = || async {
        env.scalar_i64(&format!(
            "SELECT count(*) FROM telemetry WHERE device_id = '{dev}' AND subscription_id = {id}"
        ))
        .await
    };
    for i in 0..20 {
        client
            .publish(&topic, &format!(r#"{{"t": {i}, "unit": "C"}}"#))
            .await;
    }
    eventually(Duration::from_secs(10), "20 telemetry rows", || async {
        (rows().await == 20).then_some(())
    })
    .await;
    api.wait_stats(id, (20, 20, 0)).await;
    let stored: Value = env
        .db()
        .await
        .query_one(
            &format!("SELECT payload FROM telemetry WHERE device_id = '{dev}' ORDER BY id LIMIT 1"),
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(stored, json!({"t": 0, "unit": "C"}));

    // Disabled: nothing of what follows is processed.
    let (code, resp) = api
        .call(
            reqwest::Method::PUT,
            &format!("/subscriptions/{id}"),
            Some(json!({"enabled": false})),
        )
        .await;
    assert_eq!(code, 200, "{resp}");
    api.wait_topics(0).await;
    // Positive control: another subscription, enabled, on another topic.
    let control = api
        .create(
            json!({"name": "control", "topic": format!("{root}/+/control"),
                       "actions": [{"type": "store_json", "table": "telemetry"}]}),
        )
        .await;
    api.wait_topics(1).await;
    for i in 0..7 {
        client.publish(&topic, &format!(r#"{{"t": {i}}}"#)).await;
    }
    client
        .publish(&format!("{root}/{dev}/control"), r#"{"control": true}"#)
        .await;
    eventually(
        Duration::from_secs(10),
        "the control row, sent after the 7",
        || async {
            let n = env
                .scalar_i64(&format!(
                    "SELECT count(*) FROM telemetry WHERE device_id = '{dev}' AND subscription_id = {control}"
                ))
                .await;
            (n == 1).then_some(())
        },
    )
    .await;
    assert_eq!(
        rows().await,
        20,
        "a disabled subscription processes nothing"
    );
    api.wait_stats(id, (20, 20, 0)).await;
    let (code, resp) = api
        .call(
            reqwest::Method::DELETE,
            &format!("/subscriptions/{control}"),
            None,
        )
        .await;
    assert_eq!(code, 204, "{resp}");
    api.wait_topics(0).await;

    // Enabled again: processing resumes, and a payload that is not JSON is a failed action.
    let (code, _) = api
        .call(
            reqwest::Method::PUT,
            &format!("/subscriptions/{id}"),
            Some(json!({"enabled": true})),
        )
        .await;
    assert_eq!(code, 200);
    api.wait_topics(1).await;
    for i in 0..5 {
        client.publish(&topic, &format!(r#"{{"t": {i}}}"#)).await;
    }
    client.publish(&topic, "not json").await;
    eventually(Duration::from_secs(10), "25 telemetry rows", || async {
        (rows().await == 25).then_some(())
    })
    .await;
    api.wait_stats(id, (26, 25, 1)).await;
    eventually(Duration::from_secs(10), "the 2101 error row", || async {
        (env.scalar_i64(&format!(
            "SELECT count(*) FROM device_errors WHERE device_id = '{dev}' AND error_code = 2101"
        ))
        .await
            == 1)
            .then_some(())
    })
    .await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(rows().await, 25, "nothing was written twice");
    let s = api.sub(id).await;
    assert!(s["last_message_at"].is_string(), "{s}");
    assert_eq!(env.pid(), pid, "no process restart");
}

/// A local HTTP receiver that records each POST body and answers with `status`.
async fn receiver(status: u16) -> (String, Arc<Mutex<Vec<Value>>>) {
    slow_receiver(status, Duration::ZERO).await
}

/// [`receiver`] that answers `delay` after recording the body.
async fn slow_receiver(status: u16, delay: Duration) -> (String, Arc<Mutex<Vec<Value>>>) {
    let got = Arc::new(Mutex::new(Vec::new()));
    let store = got.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(
            move |headers: axum::http::HeaderMap, body: axum::body::Bytes| {
                let store = store.clone();
                async move {
                    let mut v: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                    v["x_test"] = json!(headers
                        .get("x-test")
                        .and_then(|h| h.to_str().ok())
                        .unwrap_or(""));
                    store.lock().unwrap().push(v);
                    tokio::time::sleep(delay).await;
                    axum::http::StatusCode::from_u16(status).unwrap()
                }
            },
        ),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/hook", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (url, got)
}

#[tokio::test]
async fn device_profile_republish_and_webhook_actions_run_and_are_counted() {
    let env = env().await;
    let api = Api::configure(&env).await;
    let (ok_url, delivered) = receiver(200).await;
    let (bad_url, refused) = receiver(500).await;
    let root = format!("{}x", env.prefix);
    let camera = api
        .create(
            json!({"name": "camera", "topic": format!("{}/#", env.prefix),
                       "actions": [{"type": "device_profile", "profile": "gxp-camera"}]}),
        )
        .await;
    let fanout = api
        .create(json!({"name": "fanout", "topic": format!("{root}/+/events"),
                       "actions": [
                           {"type": "republish", "topic": format!("{root}-out/{{device_id}}/events"), "qos": 1},
                           {"type": "webhook", "url": ok_url, "headers": {"X-Test": "yes"}, "timeout_ms": 2000}
                       ]}))
        .await;
    let failing = api
        .create(json!({"name": "failing", "topic": format!("{root}/+/alarms"),
                       "actions": [{"type": "webhook", "url": bad_url, "retries": 2, "timeout_ms": 1000}]}))
        .await;
    api.wait_topics(3).await;

    // The camera profile through a subscription: a reading is ingested as on the default source.
    let dev = random_device();
    let device = env.device(&dev).await;
    device
        .publish("data", r#"{"type":"reading","seq":1,"temperature_c":21.5}"#)
        .await;
    eventually(Duration::from_secs(10), "the reading", || async {
        (env.scalar_i64(&format!(
            "SELECT count(*) FROM sensor_readings WHERE device_id = '{dev}'"
        ))
        .await
            == 1)
            .then_some(())
    })
    .await;
    api.wait_stats(camera, (1, 1, 0)).await;

    let mut watcher = Client::connect(&env, &[format!("{root}-out/#")]).await;
    for i in 0..3 {
        watcher
            .publish(
                &format!("{root}/{dev}/events"),
                &format!(r#"{{"door": {i}}}"#),
            )
            .await;
    }
    watcher
        .publish(&format!("{root}/{dev}/alarms"), r#"{"smoke": true}"#)
        .await;
    let mut republished = Vec::new();
    while republished.len() < 3 {
        let (topic, payload) = tokio::time::timeout(Duration::from_secs(10), watcher.got.recv())
            .await
            .expect("a republished message")
            .unwrap();
        assert_eq!(topic, format!("{root}-out/{dev}/events"));
        republished.push(serde_json::from_slice::<Value>(&payload).unwrap());
    }
    assert_eq!(
        republished[2],
        json!({"door": 2}),
        "payloads unchanged, in order"
    );
    api.wait_stats(fanout, (3, 6, 0)).await;
    {
        let d = delivered.lock().unwrap();
        assert_eq!(d.len(), 3, "{d:?}");
        // Up to 4 deliveries run at once, so they may arrive in any order.
        let first = d
            .iter()
            .find(|v| v["payload"] == json!({"door": 0}))
            .unwrap_or_else(|| panic!("door 0 delivered: {d:?}"));
        assert_eq!(first["device_id"], dev);
        assert_eq!(first["subscription"], "fanout");
        assert_eq!(first["x_test"], "yes", "configured headers are sent");
    }
    // A receiver answering 500: the first attempt and two retries, then a failed action.
    api.wait_stats(failing, (1, 0, 1)).await;
    assert_eq!(refused.lock().unwrap().len(), 3, "1 attempt + 2 retries");
    let m = env.metrics().await;
    assert!(
        common::metric_value(&m, "fleetflow_actions_failed_total{type=\"webhook\"}") >= 1.0,
        "the failure is counted in /metrics"
    );
}

// Multi-threaded: `terminate` blocks its thread while the receiver must keep answering.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sigterm_waits_for_a_webhook_delivery_under_way_so_it_is_not_sent_twice() {
    let mut env = env().await;
    // Longer than a stopping source waits for its acks (5 s): only the shutdown's own wait for
    // webhook deliveries gets this one acknowledged.
    let (url, delivered) = slow_receiver(200, Duration::from_secs(7)).await;
    let root = format!("{}x", env.prefix);
    {
        let api = Api::configure(&env).await;
        api.create(json!({"name": "hook", "topic": format!("{root}/+/events"),
                          "actions": [{"type": "webhook", "url": url, "timeout_ms": 10000}]}))
            .await;
        api.wait_topics(1).await;
        let client = Client::connect(&env, &[]).await;
        client
            .publish(
                &format!("{root}/{}/events", random_device()),
                r#"{"door": 1}"#,
            )
            .await;
    }
    eventually(
        Duration::from_secs(10),
        "the delivery under way",
        || async { (delivered.lock().unwrap().len() == 1).then_some(()) },
    )
    .await;
    // Stopped while the receiver still holds the request: the engine waits for the answer, so
    // the message's ack goes out before it disconnects.
    let (status, took) = env.terminate(Duration::from_secs(25));
    assert!(
        status.is_some_and(|s| s.success()),
        "clean exit: {status:?}"
    );
    assert!(
        took >= Duration::from_secs(5),
        "it waited for the delivery ({took:?})"
    );
    env.spawn_engine();
    env.wait_ready(Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        delivered.lock().unwrap().len(),
        1,
        "the broker redelivered a message whose webhook had been delivered"
    );
}
