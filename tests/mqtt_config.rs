//! Broker config per product (control-plane issue): validation naming the field, passwords
//! sealed at rest and masked in output, and the connection test against a real Mosquitto that
//! requires a password.

use crate::common;

use std::time::Duration;

use common::broker::Broker as AuthBroker;
use common::{Options, TestEnv};
use serde_json::{json, Value};

const TOKEN: &str = "config-test-token-0123456789abcdef";
const KEY: &str = "6b1f0c2e9d4a7b3c8e5f1a2d6c9b0e4f7a3d8c2b5e1f9a6d4c7b0e3f8a2d5c1b";

async fn env(with_key: bool) -> TestEnv {
    let mut env = vec![];
    if with_key {
        env.push(("FLEETFLOW_SECRET_KEY".to_string(), KEY.to_string()));
    }
    TestEnv::start(Options {
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\n"),
        env,
        ..Options::default()
    })
    .await
}

async fn put(env: &TestEnv, product: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .put(format!(
            "{}/api/v1/products/{product}/mqtt-config",
            env.http
        ))
        .bearer_auth(TOKEN)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn invalid_configs_are_refused_naming_the_field_and_unknown_products_read_as_not_configured()
{
    let env = env(true).await;
    for (body, field) in [
        (json!({"port": 1883}), "host"),
        (json!({"host": "broker", "port": 70000}), "port"),
        (json!({"host": "broker", "qos": 3}), "qos"),
        (json!({"host": "broker", "pattern": "a/#/b"}), "pattern"),
        (json!({"host": "broker", "protocol": "http"}), "protocol"),
        (
            json!({"host": "broker", "use_shared": true}),
            "shared_group",
        ),
    ] {
        let (code, resp) = put(&env, "cam-1", body.clone()).await;
        assert_eq!(code, 400, "{body}");
        assert_eq!(resp["error"]["field"], field, "{body}: {resp}");
    }
    let (code, resp) = put(&env, "cam-1", json!({"host": "broker", "hots": 1})).await;
    assert_eq!(code, 400);
    assert!(
        resp["error"]["message"].as_str().unwrap().contains("hots"),
        "{resp}"
    );
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/products/nope/mqtt-config", env.http))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    // The old API's answer for an unconfigured product: 200 with nulls and a message.
    assert_eq!(r.status(), 200);
    let body = r.json::<Value>().await.unwrap();
    assert_eq!(body["product_id"], "nope", "{body}");
    assert!(
        body["mqtt_config"].is_null() && body["config"].is_null(),
        "{body}"
    );
    assert_eq!(body["message"], "MQTT not configured for this product");
}

#[tokio::test]
async fn the_password_is_sealed_in_the_database_masked_in_the_api_and_the_connection_test_reports_the_connack(
) {
    let broker = AuthBroker::start("camera-fleet", "right-password-42");
    let env = env(true).await;
    let (code, resp) = put(
        &env,
        "cam-1",
        json!({"host": "127.0.0.1", "port": broker.port, "username": "camera-fleet", "password": "right-password-42", "qos": 1}),
    )
    .await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["config"]["password"], "***");
    let stored: Vec<u8> = env
        .db()
        .await
        .query_one(
            "SELECT password_encrypted FROM mqtt_configs WHERE product_id = 'cam-1'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert!(
        !stored.windows(17).any(|w| w == b"right-password-42"),
        "the column does not hold the plaintext"
    );
    assert_eq!(stored[0], 1, "versioned AEAD format");
    let c = reqwest::Client::new();
    let got: Value = c
        .get(format!("{}/api/v1/products/cam-1/mqtt-config", env.http))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["config"]["password"], "***");
    assert!(!got.to_string().contains("right-password-42"));

    let test = format!("{}/api/v1/products/cam-1/mqtt-config/test", env.http);
    // The saved settings (stored password, decrypted) connect.
    let ok: Value = c
        .post(&test)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok["connected"], true, "{ok}");
    // A wrong password is refused with a readable reason.
    let bad: Value = c
        .post(&test)
        .bearer_auth(TOKEN)
        .json(&json!({"host": "127.0.0.1", "port": broker.port, "username": "camera-fleet", "password": "wrong"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(bad["connected"], false, "{bad}");
    let reason = bad["reason"].as_str().unwrap();
    assert!(
        reason == "bad username or password" || reason == "not authorized",
        "{bad}"
    );
    assert!(bad["latency_ms"].as_u64().unwrap() < 10_000);
    // Saving again with "***" keeps the stored password.
    let (code, _) = put(&env, "cam-1", json!({"host": "127.0.0.1", "port": broker.port, "username": "camera-fleet", "password": "***"})).await;
    assert_eq!(code, 200);
    let ok: Value = c
        .post(&test)
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(ok["connected"], true, "{ok}");
    // A candidate body without a password uses the stored one for the saved broker only...
    let same: Value = c
        .post(&test)
        .bearer_auth(TOKEN)
        .json(&json!({"host": "127.0.0.1", "port": broker.port, "username": "camera-fleet"}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(same["connected"], true, "{same}");
    // ...never for another broker, even one that would take it.
    let other = AuthBroker::start("camera-fleet", "right-password-42");
    let fishing: Value = c
        .post(&test)
        .bearer_auth(TOKEN)
        .json(&json!({"host": "127.0.0.1", "port": other.port, "username": "camera-fleet", "password": ""}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(
        fishing["connected"], false,
        "the stored password went to another broker: {fishing}"
    );
}

#[tokio::test]
async fn without_a_secret_key_a_password_cannot_be_stored() {
    let env = env(false).await;
    let (code, resp) = put(
        &env,
        "cam-2",
        json!({"host": "127.0.0.1", "username": "u", "password": "p"}),
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(resp["error"]["field"], "password");
    assert!(resp["error"]["message"]
        .as_str()
        .unwrap()
        .contains("FLEETFLOW_SECRET_KEY"));
}

#[tokio::test]
async fn putting_a_config_for_a_second_broker_moves_the_running_engine_there_without_a_restart() {
    let second = AuthBroker::anonymous();
    let env = env(true).await;
    let pid = env.pid();
    let id = common::random_device();
    let old = env.device(&id).await;
    old.publish("data", r#"{"type":"reading","seq":1}"#).await;
    let count = || async {
        env.scalar_i64(&format!(
            "SELECT count(*) FROM sensor_readings WHERE device_id = '{id}'"
        ))
        .await
    };
    common::eventually(
        Duration::from_secs(10),
        "the reading on the first broker",
        || async { (count().await == 1).then_some(()) },
    )
    .await;

    let (code, resp) = put(&env, "cam-9", json!({"host": "127.0.0.1", "port": second.port, "prefix": env.prefix, "client_id": format!("ff-second-{}", common::random_hex(6))})).await;
    assert_eq!(code, 200, "{resp}");
    assert_eq!(resp["live_reconnect"], true, "{resp}");
    let started = std::time::Instant::now();
    common::eventually(
        Duration::from_secs(20),
        "the engine connected to the second broker",
        || async {
            let r = env
                .db()
                .await
                .query_opt(
                    "SELECT connected FROM mqtt_connection_status WHERE product_id = 'cam-9'",
                    &[],
                )
                .await
                .unwrap()?;
            r.get::<_, bool>(0).then_some(())
        },
    )
    .await;
    eprintln!(
        "moved to the second broker in {} ms",
        started.elapsed().as_millis()
    );

    let mut services = env.services.clone();
    services.mqtt_port = second.port;
    let new = common::TestDevice::connect(&services, &env.prefix, &id).await;
    new.publish("data", r#"{"type":"reading","seq":2}"#).await;
    common::eventually(
        Duration::from_secs(20),
        "the reading on the second broker",
        || async { (count().await == 2).then_some(()) },
    )
    .await;
    // A command goes to the device through the broker its messages now arrive on.
    let mut new = new;
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/devices/{id}/commands", env.http))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "capture_now"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let sent: Value = r.json().await.unwrap();
    assert_eq!(sent["via"], "device_source", "{sent}");
    let cmd = new.next_ack(Duration::from_secs(20)).await;
    assert_eq!(cmd["type"], "command", "{cmd}");
    assert_eq!(cmd["command_id"], sent["command_id"]);
    old.publish("data", r#"{"type":"reading","seq":3}"#).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Positive control, sent after it: a reading on the second broker lands, the one on the
    // first does not.
    new.publish("data", r#"{"type":"reading","seq":4}"#).await;
    common::eventually(
        Duration::from_secs(20),
        "the reading sent on the second broker after the one on the first",
        || async {
            let seq4 = env
                .scalar_i64(&format!(
                    "SELECT count(*) FROM sensor_readings WHERE device_id = '{id}' AND seq = 4"
                ))
                .await;
            (seq4 == 1).then_some(())
        },
    )
    .await;
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM sensor_readings WHERE device_id = '{id}' AND seq = 3"
        ))
        .await,
        0,
        "the first broker is no longer consumed"
    );
    assert_eq!(count().await, 3, "readings 1, 2 and 4");
    assert_eq!(env.pid(), pid, "same process");
    let health = reqwest::get(format!("{}/health", env.http)).await.unwrap();
    assert!(health.status().is_success());
    let got: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/products/cam-9/mqtt-config", env.http))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(got["status"]["connected"], true, "{got}");

    // A forced reconnect, in process, recorded as a source restart.
    let c = reqwest::Client::new();
    let r = c
        .post(format!(
            "{}/api/v1/products/cam-9/mqtt-config/reconnect",
            env.http
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(body["target"], "source:cam-9");
    let status: Value = c
        .get(format!(
            "{}/api/v1/products/cam-9/mqtt-config/status",
            env.http
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(status["connected"], true, "{status}");
    assert_eq!(
        status["broker_info"]["protocol"], "MQTT 5",
        "the CONNACK is recorded: {status}"
    );
    // Still ingesting from the second broker after the reconnect, same process.
    new.publish("data", r#"{"type":"reading","seq":5}"#).await;
    common::eventually(
        Duration::from_secs(20),
        "the reading after the reconnect",
        || async { (count().await == 4).then_some(()) },
    )
    .await;
    assert_eq!(env.pid(), pid);
}

#[tokio::test]
async fn rotating_the_secret_key_reseals_stored_passwords_so_only_the_new_key_opens_them() {
    let broker = AuthBroker::start("rot-user", "rot-password-77");
    let env = env(true).await;
    let (code, _) = put(&env, "cam-r", json!({"host": "127.0.0.1", "port": broker.port, "username": "rot-user", "password": "rot-password-77"})).await;
    assert_eq!(code, 200);
    let before: Vec<u8> = env
        .db()
        .await
        .query_one(
            "SELECT password_encrypted FROM mqtt_configs WHERE product_id = 'cam-r'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let new_key = "11".repeat(32);
    let key_file = env.dir.path().join("new.key");
    std::fs::write(&key_file, &new_key).unwrap();
    let said = env.cli(
        &[
            "rotate-secret-key",
            "--new-key-file",
            key_file.to_str().unwrap(),
        ],
        &[("FLEETFLOW_SECRET_KEY", KEY)],
    );
    assert!(said.contains("re-sealed 1 broker password"), "{said}");
    let after: Vec<u8> = env
        .db()
        .await
        .query_one(
            "SELECT password_encrypted FROM mqtt_configs WHERE product_id = 'cam-r'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_ne!(before, after);
    let new = fleetflow::secrets::SecretKey::from_hex(&new_key).unwrap();
    assert_eq!(
        new.open(&after, "product:cam-r").unwrap(),
        "rot-password-77"
    );
    let old = fleetflow::secrets::SecretKey::from_hex(KEY).unwrap();
    assert!(
        old.open(&after, "product:cam-r").is_err(),
        "the old key no longer opens it"
    );
    // The engine still holds the old key: it cannot test with the stored password now.
    let r = reqwest::Client::new()
        .post(format!(
            "{}/api/v1/products/cam-r/mqtt-config/test",
            env.http
        ))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 409);
    assert_eq!(
        r.json::<Value>().await.unwrap()["error"]["code"],
        "cannot_decrypt"
    );
}

/// Products `tenant-a` (the test's prefix) and `tenant-b` (its own prefix, answered) on the
/// same broker.
async fn two_tenants(env: &TestEnv) -> String {
    let other_prefix = format!("{}-other", env.prefix);
    for (product, prefix) in [
        ("tenant-a", env.prefix.clone()),
        ("tenant-b", other_prefix.clone()),
    ] {
        let (code, resp) = put(
            env,
            product,
            json!({"host": env.services.mqtt_host, "port": env.services.mqtt_port, "prefix": prefix,
                   "client_id": format!("ff-{product}-{}", common::random_hex(4))}),
        )
        .await;
        assert_eq!(code, 200, "{resp}");
    }
    other_prefix
}

#[tokio::test]
async fn a_device_id_in_use_under_one_prefix_is_refused_under_another() {
    let env = env(true).await;
    let other_prefix = two_tenants(&env).await;
    let id = common::random_device();
    let owner = env.device(&id).await;
    owner.publish("data", r#"{"type":"reading","seq":1}"#).await;
    let readings = || async {
        env.scalar_i64(&format!(
            "SELECT count(*) FROM sensor_readings WHERE device_id = '{id}'"
        ))
        .await
    };
    common::eventually(Duration::from_secs(10), "the owner's reading", || async {
        (readings().await == 1).then_some(())
    })
    .await;
    // The same device id under the other tenant's prefix: refused (2104), nothing stored.
    let intruder = common::TestDevice::connect(&env.services, &other_prefix, &id).await;
    intruder
        .publish("data", r#"{"type":"reading","seq":2}"#)
        .await;
    common::eventually(Duration::from_secs(10), "the 2104 row", || async {
        let n = env
            .scalar_i64(&format!(
                "SELECT count(*) FROM device_errors WHERE device_id = '{id}' AND error_code = 2104"
            ))
            .await;
        (n == 1).then_some(())
    })
    .await;
    assert_eq!(readings().await, 1);
    // The owner is unaffected.
    owner.publish("data", r#"{"type":"reading","seq":3}"#).await;
    common::eventually(
        Duration::from_secs(10),
        "the owner's second reading",
        || async { (readings().await == 2).then_some(()) },
    )
    .await;
}

/// A device's rows as another tenant could change them: readings, status rows, and the
/// `devices` row's status and battery.
async fn device_rows(env: &TestEnv, id: &str) -> (i64, i64, Option<String>) {
    let c = env.db().await;
    let r = c
        .query_one(
            &format!("SELECT (SELECT count(*) FROM sensor_readings WHERE device_id = '{id}'), (SELECT count(*) FROM device_status WHERE device_id = '{id}'), (SELECT status || ':' || battery_v::text FROM devices WHERE device_id = '{id}')"),
            &[],
        )
        .await
        .unwrap();
    (r.get(0), r.get(1), r.get(2))
}

/// Another tenant's device publishing as `id` under its own prefix.
async fn hijack(env: &TestEnv, prefix: &str, id: &str, n: u64) {
    let intruder = common::TestDevice::connect(&env.services, prefix, id).await;
    intruder
        .publish("status", r#"{"status":"hijacked","battery_v":0.1}"#)
        .await;
    intruder
        .publish("data", format!(r#"{{"type":"reading","seq":{}}}"#, 100 + n))
        .await;
    intruder.settle().await;
}

async fn refusals(env: &TestEnv, id: &str) -> i64 {
    env.scalar_i64(&format!(
        "SELECT count(*) FROM device_errors WHERE device_id = '{id}' AND error_code = 2104"
    ))
    .await
}

/// Tenant B publishes as `id` (its `n`th try): refused and recorded (2104), and no row of A's
/// device changed from `before`.
async fn hijack_is_refused(
    env: &TestEnv,
    prefix: &str,
    id: &str,
    n: i64,
    before: &(i64, i64, Option<String>),
) {
    hijack(env, prefix, id, n as u64).await;
    common::eventually(
        Duration::from_secs(10),
        "the hijack refused and recorded",
        || async { (refusals(env, id).await >= n).then_some(()) },
    )
    .await;
    assert_eq!(
        &device_rows(env, id).await,
        before,
        "no row of A's device changed"
    );
}

#[tokio::test]
async fn a_device_id_stays_its_tenants_after_its_actor_is_passivated_and_the_engine_restarts() {
    let mut env = TestEnv::start(Options {
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\n[devices]\nidle_passivate_ms = 300\n"),
        env: vec![("FLEETFLOW_SECRET_KEY".to_string(), KEY.to_string())],
        ..Options::default()
    })
    .await;
    let other_prefix = two_tenants(&env).await;
    let id = common::random_device();
    let owner = env.device(&id).await;
    owner
        .publish("status", r#"{"status":"online","battery_v":3.9}"#)
        .await;
    owner.publish("data", r#"{"type":"reading","seq":1}"#).await;
    owner.settle().await;
    let before = common::eventually(Duration::from_secs(10), "A's rows", || async {
        let s = device_rows(&env, &id).await;
        (s.0 == 1 && s.1 == 1).then_some(s)
    })
    .await;
    // The actor passivates: nothing of the device is left in memory but its binding.
    common::eventually(Duration::from_secs(10), "A's actor passivated", || async {
        (env.metric("fleetflow_device_actors_passivated_total").await >= 1.0).then_some(())
    })
    .await;
    let owner_row: Value = reqwest::Client::new()
        .get(format!("{}/api/v1/devices/{id}/owner", env.http))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(owner_row["source"], "tenant-a", "{owner_row}");

    hijack_is_refused(&env, &other_prefix, &id, 1, &before).await;

    // After an engine restart too (the binding is in the database, not only in memory).
    env.terminate(Duration::from_secs(20));
    env.spawn_engine();
    env.wait_ready(Duration::from_secs(20)).await;
    hijack_is_refused(&env, &other_prefix, &id, 2, &before).await;
    // Positive control: A's own device still writes.
    let owner = env.device(&id).await;
    owner.publish("data", r#"{"type":"reading","seq":2}"#).await;
    common::eventually(Duration::from_secs(10), "A's next reading", || async {
        (device_rows(&env, &id).await.0 == 2).then_some(())
    })
    .await;
}
