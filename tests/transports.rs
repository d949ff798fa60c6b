//! External brokers over websockets and TLS (hosted-broker issue, part 2): a product's source
//! connects with `ws` and with `mqtts` to a Mosquitto of the test's own (TLS with a CA made
//! here with `openssl`), and messages published on that broker are ingested. The connection
//! test reports a certificate signed by an unknown CA, and `verify_cert: false` accepts it.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::broker::Broker;
use common::{eventually, free_port, random_device, random_hex, Options, TestEnv};
use serde_json::{json, Value};

const TOKEN: &str = "transport-test-token-0123456789abcdef";

async fn env() -> TestEnv {
    TestEnv::start(Options {
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\n"),
        ..Options::default()
    })
    .await
}

async fn call(env: &TestEnv, method: reqwest::Method, path: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .request(method, format!("{}/api/v1/products/{path}", env.http))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

/// Waits for the product's source to be connected, then checks that a reading published on
/// `broker_port` (the broker's plain listener) is ingested through it.
async fn ingested_through(env: &TestEnv, product: &str, broker_port: u16) {
    eventually(Duration::from_secs(10), "the source connected", || async {
        let r = env
            .db()
            .await
            .query_opt(
                "SELECT connected FROM mqtt_connection_status WHERE product_id = $1",
                &[&product],
            )
            .await
            .unwrap()?;
        r.get::<_, bool>(0).then_some(())
    })
    .await;
    let mut services = env.services.clone();
    services.mqtt_port = broker_port;
    let id = random_device();
    let dev = common::TestDevice::connect(&services, &env.prefix, &id).await;
    dev.publish("data", r#"{"type":"reading","seq":1,"temperature_c":20.5}"#)
        .await;
    eventually(Duration::from_secs(10), "the reading", || async {
        (env.scalar_i64(&format!(
            "SELECT count(*) FROM sensor_readings WHERE device_id = '{id}'"
        ))
        .await
            == 1)
            .then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_source_over_websockets_ingests_from_the_broker() {
    let ws_port = free_port();
    // Mosquitto 2.0.11 needs a plain listener beside a websockets one; the websockets listener
    // binds every interface, on a port only this test uses.
    let broker = Broker::spawn(
        &format!("listener {ws_port}\nprotocol websockets\nallow_anonymous true\n"),
        |_| {},
    );
    broker.wait_port(ws_port);
    let env = env().await;
    let product = format!("ws-{}", random_hex(4));
    let (code, resp) = call(
        &env,
        reqwest::Method::PUT,
        &format!("{product}/mqtt-config"),
        json!({"host": "127.0.0.1", "port": ws_port, "protocol": "ws", "prefix": env.prefix,
               "client_id": format!("ff-ws-{}", random_hex(4))}),
    )
    .await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(
        resp["config"]["url"],
        format!("ws://127.0.0.1:{ws_port}/mqtt"),
        "{resp}"
    );
    ingested_through(&env, &product, broker.port).await;
}

/// A CA and a server certificate for 127.0.0.1, made with `openssl` in `dir`.
fn make_ca(dir: &Path, name: &str) {
    let run = |args: &[&str]| {
        let st = Command::new("openssl")
            .args(args)
            .current_dir(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status()
            .expect("openssl");
        assert!(st.success(), "openssl {args:?}");
    };
    let ca_key = format!("{name}-ca.key");
    let ca = format!("{name}-ca.pem");
    run(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-days",
        "2",
        "-subj",
        &format!("/CN=fleetflow test CA {name}"),
        "-keyout",
        &ca_key,
        "-out",
        &ca,
    ]);
    run(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-subj",
        "/CN=127.0.0.1",
        "-keyout",
        &format!("{name}-server.key"),
        "-out",
        &format!("{name}-server.csr"),
    ]);
    std::fs::write(
        dir.join(format!("{name}-ext.cnf")),
        "subjectAltName=IP:127.0.0.1,DNS:localhost\n",
    )
    .unwrap();
    run(&[
        "x509",
        "-req",
        "-in",
        &format!("{name}-server.csr"),
        "-CA",
        &ca,
        "-CAkey",
        &ca_key,
        "-CAcreateserial",
        "-days",
        "2",
        "-extfile",
        &format!("{name}-ext.cnf"),
        "-out",
        &format!("{name}-server.pem"),
    ]);
}

#[tokio::test]
async fn a_source_over_tls_trusts_the_given_ca_and_the_test_reports_an_unknown_one() {
    let tls_port = free_port();
    let broker = Broker::spawn(
        &format!(
            "allow_anonymous true\nlistener {tls_port} 127.0.0.1\ncafile {{dir}}/good-ca.pem\ncertfile {{dir}}/good-server.pem\nkeyfile {{dir}}/good-server.key\n"
        ),
        |dir| {
            make_ca(dir, "good");
            make_ca(dir, "other");
        },
    );
    broker.wait_port(tls_port);
    let env = env().await;
    let product = format!("tls-{}", random_hex(4));
    let dir = broker.dir();
    let good_ca = std::fs::read_to_string(dir.join("good-ca.pem")).unwrap();
    let other_ca = std::fs::read_to_string(dir.join("other-ca.pem")).unwrap();

    // The connection test, without touching any source: an unknown CA fails the handshake...
    let (code, resp) = call(
        &env,
        reqwest::Method::POST,
        &format!("{product}/mqtt-config/test"),
        json!({"host": "127.0.0.1", "port": tls_port, "protocol": "mqtts", "ca_cert_pem": other_ca}),
    )
    .await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["connected"], false, "{resp}");
    let reason = resp["reason"].as_str().unwrap().to_lowercase();
    assert!(
        reason.contains("certificate") || reason.contains("tls"),
        "{resp}"
    );
    // ...turning verification off accepts it...
    let (_, resp) = call(
        &env,
        reqwest::Method::POST,
        &format!("{product}/mqtt-config/test"),
        json!({"host": "127.0.0.1", "port": tls_port, "protocol": "mqtts", "verify_cert": false}),
    )
    .await;
    assert_eq!(resp["connected"], true, "{resp}");
    // ...and the right CA connects.
    let (_, resp) = call(
        &env,
        reqwest::Method::POST,
        &format!("{product}/mqtt-config/test"),
        json!({"host": "127.0.0.1", "port": tls_port, "protocol": "mqtts", "ca_cert_pem": good_ca}),
    )
    .await;
    assert_eq!(resp["connected"], true, "{resp}");

    let (code, resp) = call(
        &env,
        reqwest::Method::PUT,
        &format!("{product}/mqtt-config"),
        json!({"host": "127.0.0.1", "port": tls_port, "protocol": "mqtts", "prefix": env.prefix,
               "ca_cert_pem": "-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n"}),
    )
    .await;
    assert_eq!(code, 400, "{resp}");
    assert_eq!(resp["error"]["field"], "ca_cert_pem");
    let (code, resp) = call(
        &env,
        reqwest::Method::PUT,
        &format!("{product}/mqtt-config"),
        json!({"host": "127.0.0.1", "port": tls_port, "protocol": "mqtts", "prefix": env.prefix,
               "ca_cert_pem": good_ca, "client_id": format!("ff-tls-{}", random_hex(4))}),
    )
    .await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["config"]["use_tls"], true);
    ingested_through(&env, &product, broker.port).await;
}
