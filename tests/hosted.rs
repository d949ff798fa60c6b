//! Hosted-broker access (hosted-broker issue), against the Mosquitto with the dynamic security
//! plugin that `scripts/services` starts: credentials confined to their organisation's topics,
//! revoke and rotate enforced by the broker, hashes only in the database, the reconcile loop
//! repairing drift, the camera protocol ingested from a hosted device, and publishing limited
//! to the organisation's topics.

use crate::common;

use std::time::Duration;

use common::{eventually, random_device, random_hex, Options, TestEnv};
use rumqttc::v5::mqttbytes::v5::{ConnectReturnCode, Packet, PubAckReason, SubscribeReasonCode};
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::{AsyncClient, ConnectionError, Event, EventLoop, MqttOptions};
use serde_json::{json, Value};

const TOKEN: &str = "hosted-test-token-0123456789abcdef";
const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

async fn env() -> TestEnv {
    let s = common::Services::from_env();
    assert!(
        std::path::Path::new(&s.hosted_admin_password_file).exists(),
        "the hosted broker's admin password file {} is missing; start it with `scripts/services up`",
        s.hosted_admin_password_file
    );
    TestEnv::start(Options {
        extra: format!(
            "[admin]\ntoken = \"{TOKEN}\"\n[hosted]\nbroker_url = \"{}\"\nadmin_username = \"{}\"\nadmin_password_file = \"{}\"\nclient_prefix = \"t{}_\"\nreconcile_secs = 2\n",
            s.hosted_url,
            s.hosted_admin_user,
            s.hosted_admin_password_file,
            random_hex(6)
        ),
        env: vec![("FLEETFLOW_SECRET_KEY".into(), KEY.into())],
        ..Options::default()
    })
    .await
}

fn hosted_addr(env: &TestEnv) -> (String, u16) {
    fleetflow_actors::source::parse_url(&env.services.hosted_url).unwrap()
}

fn org() -> i64 {
    // Organisations of their own per test: the hosted broker is shared.
    1_000_000 + (rand::random::<u32>() % 1_000_000) as i64
}

async fn api(env: &TestEnv, method: reqwest::Method, path: &str, token: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .request(method, format!("{}/api/v1/{path}", env.http))
        .bearer_auth(token)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn api_json(env: &TestEnv, path: &str, token: &str, body: Value) -> (u16, Value) {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/{path}", env.http))
        .bearer_auth(token)
        .json(&body)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn credential(env: &TestEnv, org: i64) -> Value {
    let (code, c) = api(
        env,
        reqwest::Method::POST,
        &format!("organizations/{org}/mqtt-credentials"),
        TOKEN,
    )
    .await;
    assert_eq!(code, 201, "{c}");
    c
}

/// A connected MQTT v5 client, or the CONNACK refusal.
async fn connect(
    env: &TestEnv,
    user: &str,
    pass: &str,
) -> Result<(AsyncClient, EventLoop), ConnectReturnCode> {
    let (host, port) = hosted_addr(env);
    let mut o = MqttOptions::new(format!("c{}", random_hex(8)), host, port);
    o.set_credentials(user, pass);
    let (client, mut el) = AsyncClient::new(o, 100);
    loop {
        match tokio::time::timeout(Duration::from_secs(10), el.poll())
            .await
            .expect("a CONNACK within 10 s")
        {
            Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok((client, el)),
            Ok(_) => {}
            Err(ConnectionError::ConnectionRefused(code)) => return Err(code),
            Err(e) => panic!("connection failed: {e}"),
        }
    }
}

/// Polls until `pred` picks something out of an event, or `within` passes.
async fn next_event<T>(
    el: &mut EventLoop,
    within: Duration,
    mut pred: impl FnMut(&Event) -> Option<T>,
) -> Option<T> {
    let deadline = tokio::time::Instant::now() + within;
    loop {
        match tokio::time::timeout_at(deadline, el.poll()).await {
            Err(_) => return None,
            Ok(Ok(ev)) => {
                if let Some(t) = pred(&ev) {
                    return Some(t);
                }
            }
            Ok(Err(e)) => panic!("connection lost: {e}"),
        }
    }
}

/// The reason of the next PUBACK, if one comes within `within`.
async fn puback(el: &mut EventLoop, within: Duration) -> Option<PubAckReason> {
    next_event(el, within, |ev| match ev {
        Event::Incoming(Packet::PubAck(a)) => Some(a.reason),
        _ => None,
    })
    .await
}

/// The topic of the next message received, if one comes within `within`.
async fn next_topic(el: &mut EventLoop, within: Duration) -> Option<String> {
    next_event(el, within, |ev| match ev {
        Event::Incoming(Packet::Publish(p)) => Some(String::from_utf8_lossy(&p.topic).to_string()),
        _ => None,
    })
    .await
}

async fn subscribe(c: &AsyncClient, el: &mut EventLoop, filter: &str) -> SubscribeReasonCode {
    c.subscribe(filter, QoS::AtLeastOnce).await.unwrap();
    next_event(el, Duration::from_secs(5), |ev| match ev {
        Event::Incoming(Packet::SubAck(a)) => Some(a.return_codes[0]),
        _ => None,
    })
    .await
    .expect("SUBACK")
}

#[tokio::test]
async fn a_credential_works_under_its_organisation_and_nowhere_else() {
    let env = env().await;
    let (a, b) = (org(), org());
    let ca = credential(&env, a).await;
    let cb = credential(&env, b).await;
    let (user, pass) = (
        ca["username"].as_str().unwrap(),
        ca["password"].as_str().unwrap(),
    );
    assert!(pass.len() >= 24, "{pass}");
    assert_eq!(ca["allowed_topics"], json!([format!("org_{a}/devices/#")]));
    assert_eq!(ca["topic_prefix"], format!("org_{a}/devices"));
    for lang in ["arduino", "python", "node"] {
        let s = ca["snippets"][lang].as_str().unwrap();
        assert!(s.contains(user) && s.contains(pass), "{lang}: {s}");
    }

    // The database holds an argon2id hash and a sealed copy, never the password.
    let db = env.db().await;
    let r = db
        .query_one(
            "SELECT password_hash, password_sealed FROM mqtt_credentials WHERE username = $1",
            &[&user],
        )
        .await
        .unwrap();
    let hash: String = r.get(0);
    let sealed: Vec<u8> = r.get(1);
    assert!(hash.starts_with("$argon2id$v=19$"), "{hash}");
    assert!(!hash.contains(pass));
    assert!(!sealed.windows(pass.len()).any(|w| w == pass.as_bytes()));
    let listed = api(
        &env,
        reqwest::Method::GET,
        &format!("organizations/{a}/mqtt-credentials"),
        TOKEN,
    )
    .await
    .1;
    assert!(!listed.to_string().contains(pass), "{listed}");
    assert!(!listed.to_string().contains("argon2"), "{listed}");

    let (c, mut el) = connect(&env, user, pass)
        .await
        .expect("the new credential connects");
    // The engine counts the credential's connections from the broker's notices.
    eventually(Duration::from_secs(20), "the connection counted", || async {
        let r = env
            .db()
            .await
            .query_one(
                "SELECT connections_total, last_used_at IS NOT NULL FROM mqtt_credentials WHERE username = $1",
                &[&user],
            )
            .await
            .unwrap();
        (r.get::<_, i64>(0) >= 1 && r.get::<_, bool>(1)).then_some(())
    })
    .await;
    let own = format!("org_{a}/devices/d1/status");
    assert_eq!(
        subscribe(&c, &mut el, &format!("org_{a}/devices/#")).await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce)
    );
    assert!(!matches!(
        subscribe(&c, &mut el, &format!("org_{b}/devices/#")).await,
        SubscribeReasonCode::Success(_)
    ));
    assert!(!matches!(
        subscribe(&c, &mut el, "#").await,
        SubscribeReasonCode::Success(_)
    ));
    c.publish(own.clone(), QoS::AtLeastOnce, false, "mine")
        .await
        .unwrap();
    let got = next_topic(&mut el, Duration::from_secs(5)).await;
    assert_eq!(
        got.as_deref(),
        Some(own.as_str()),
        "its own message comes back"
    );

    // Organisation B publishes; A, subscribed to B and to #, receives none of it.
    let (cb_client, mut cb_el) = connect(
        &env,
        cb["username"].as_str().unwrap(),
        cb["password"].as_str().unwrap(),
    )
    .await
    .unwrap();
    cb_client
        .publish(
            format!("org_{b}/devices/d2/status"),
            QoS::AtLeastOnce,
            false,
            "theirs",
        )
        .await
        .unwrap();
    let acked = puback(&mut cb_el, Duration::from_secs(5)).await;
    assert!(
        matches!(
            acked,
            Some(PubAckReason::Success | PubAckReason::NoMatchingSubscribers)
        ),
        "B may publish under org_{b}: {acked:?}"
    );
    let leaked = next_topic(&mut el, Duration::from_secs(2)).await;
    assert_eq!(leaked, None, "A received B's traffic");

    // A publishing under B: refused with "not authorized".
    c.publish(
        format!("org_{b}/devices/d2/status"),
        QoS::AtLeastOnce,
        false,
        "intrusion",
    )
    .await
    .unwrap();
    let reason = puback(&mut el, Duration::from_secs(5)).await;
    assert_eq!(reason, Some(PubAckReason::NotAuthorized));
    let leaked = next_event(&mut cb_el, Duration::from_secs(1), |ev| match ev {
        Event::Incoming(Packet::Publish(p)) => Some(p.payload.clone()),
        _ => None,
    })
    .await;
    assert_eq!(leaked, None);
}

#[tokio::test]
async fn revoking_refuses_new_connections_and_drops_the_open_one_and_rotating_replaces_the_password(
) {
    let env = env().await;
    let o = org();
    let cred = credential(&env, o).await;
    let (user, pass) = (
        cred["username"].as_str().unwrap(),
        cred["password"].as_str().unwrap(),
    );
    let id = cred["id"].as_i64().unwrap();

    // Rotate: the old password fails, the new one works.
    let (code, rotated) = api(
        &env,
        reqwest::Method::POST,
        &format!("organizations/{o}/mqtt-credentials/{id}/rotate"),
        TOKEN,
    )
    .await;
    assert_eq!(code, 200, "{rotated}");
    let new_pass = rotated["password"].as_str().unwrap();
    assert_ne!(new_pass, pass);
    assert!(
        connect(&env, user, pass).await.is_err(),
        "the old password still works"
    );
    let (_c, mut el) = connect(&env, user, new_pass)
        .await
        .expect("the new password works");

    // Revoke: the open connection is dropped within 5 s, the next attempt is refused.
    let (code, revoked) = api(
        &env,
        reqwest::Method::DELETE,
        &format!("organizations/{o}/mqtt-credentials/{id}"),
        TOKEN,
    )
    .await;
    assert_eq!(code, 200, "{revoked}");
    assert!(revoked["revoked_at"].is_string());
    let started = std::time::Instant::now();
    let dropped = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match el.poll().await {
                Ok(Event::Incoming(Packet::Disconnect(_))) | Err(_) => return,
                Ok(_) => {}
            }
        }
    })
    .await;
    assert!(
        dropped.is_ok(),
        "the open connection was not dropped within 5 s"
    );
    eprintln!(
        "dropped {} ms after the revoke",
        started.elapsed().as_millis()
    );
    let refused = connect(&env, user, new_pass).await.err();
    assert_eq!(refused, Some(ConnectReturnCode::NotAuthorized));
    eprintln!("a revoked credential's CONNACK: {refused:?}");
    let (code, _) = api(
        &env,
        reqwest::Method::POST,
        &format!("organizations/{o}/mqtt-credentials/{id}/rotate"),
        TOKEN,
    )
    .await;
    assert_eq!(code, 404, "a revoked credential cannot be rotated");
}

fn dynsec_ctl(env: &TestEnv, args: &[&str]) {
    assert!(dynsec_ctl_ok(env, args), "mosquitto_ctrl dynsec {args:?}");
}

/// Runs `mosquitto_ctrl dynsec ...` as the admin; whether the broker accepted it
/// (`mosquitto_ctrl` exits 0 on some refusals, printing "Error: ...").
fn dynsec_ctl_ok(env: &TestEnv, args: &[&str]) -> bool {
    let (host, port) = hosted_addr(env);
    let pass = std::fs::read_to_string(&env.services.hosted_admin_password_file).unwrap();
    let out = std::process::Command::new("mosquitto_ctrl")
        .args([
            "-h",
            &host,
            "-p",
            &port.to_string(),
            "-u",
            &env.services.hosted_admin_user,
            "-P",
            pass.trim(),
        ])
        .arg("dynsec")
        .args(args)
        .output()
        .expect("mosquitto_ctrl");
    let text =
        String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    out.status.success() && !text.contains("Error:")
}

#[tokio::test]
async fn the_reconcile_loop_repairs_clients_deleted_or_added_behind_its_back() {
    let env = env().await;
    let o = org();
    let cred = credential(&env, o).await;
    let (user, pass) = (
        cred["username"].as_str().unwrap(),
        cred["password"].as_str().unwrap(),
    );
    // Deleted by hand (mosquitto_ctrl exits 0 only when the broker did it); the loop, every
    // 2 s here, re-creates it.
    dynsec_ctl(&env, &["deleteClient", user]);
    let repaired = std::time::Instant::now();
    eventually(Duration::from_secs(10), "the client re-created", || async {
        connect(&env, user, pass).await.ok().map(|_| ())
    })
    .await;
    eprintln!(
        "repaired within {} ms (period 2 s)",
        repaired.elapsed().as_millis()
    );
    // A client with the managed prefix and no row is removed.
    let prefix = user.split('_').next().unwrap();
    let stray = format!("{prefix}_stray{}", random_hex(4));
    dynsec_ctl(&env, &["createClient", &stray, "-p", "stray-password-123"]);
    assert!(connect(&env, &stray, "stray-password-123").await.is_ok());
    eventually(
        Duration::from_secs(10),
        "the stray client removed",
        || async {
            connect(&env, &stray, "stray-password-123")
                .await
                .err()
                .map(|_| ())
        },
    )
    .await;
    // ACLs edited by hand: one taken away, one added for another organisation's topics.
    let own = format!("org_{o}/devices/#");
    let other = format!("org_{}/devices/#", o + 1);
    dynsec_ctl(&env, &["removeRoleACL", user, "subscribePattern", &own]);
    dynsec_ctl(
        &env,
        &["addRoleACL", user, "publishClientSend", &other, "allow"],
    );
    // And a role that may publish anywhere.
    dynsec_ctl(&env, &["addClientRole", user, "fleetflow-engine"]);
    eventually(
        Duration::from_secs(10),
        "the role put back in shape",
        || async {
            let m = env.metrics().await;
            (common::metric_value(&m, "fleetflow_hosted_repairs_total{kind=\"fixed\"}") >= 1.0)
                .then_some(())
        },
    )
    .await;
    let (c, mut el) = connect(&env, user, pass).await.expect("connects");
    assert_eq!(
        subscribe(&c, &mut el, &own).await,
        SubscribeReasonCode::Success(QoS::AtLeastOnce),
        "the removed ACL is back"
    );
    c.publish(
        format!("org_{}/devices/x/status", o + 1),
        QoS::AtLeastOnce,
        false,
        "no",
    )
    .await
    .unwrap();
    let reason = puback(&mut el, Duration::from_secs(5)).await;
    assert_eq!(
        reason,
        Some(PubAckReason::NotAuthorized),
        "the added ACL and the added role are gone"
    );
    // A managed role with no credential (left by a failed deletion) is swept.
    let orphan = format!("{prefix}_orphan{}", random_hex(4));
    dynsec_ctl(&env, &["createRole", &orphan]);
    eventually(
        Duration::from_secs(10),
        "the orphan role removed",
        || async { (!dynsec_ctl_ok(&env, &["getRole", &orphan])).then_some(()) },
    )
    .await;
    // The counters follow the broker changes.
    eventually(Duration::from_secs(5), "both repairs counted", || async {
        let m = env.metrics().await;
        let repairs = |kind: &str| {
            common::metric_value(
                &m,
                &format!("fleetflow_hosted_repairs_total{{kind=\"{kind}\"}}"),
            )
        };
        (repairs("created") >= 1.0 && repairs("deleted") >= 1.0).then_some(())
    })
    .await;
}

#[tokio::test]
async fn a_hosted_device_speaks_the_camera_protocol_and_publishing_stays_in_its_organisation() {
    let env = env().await;
    let o = org();
    let cred = credential(&env, o).await;
    let (user, pass) = (
        cred["username"].as_str().unwrap(),
        cred["password"].as_str().unwrap(),
    );
    let prefix = format!("org_{o}/devices");
    let admin_pass = std::fs::read_to_string(&env.services.hosted_admin_password_file).unwrap();
    let (host, port) = hosted_addr(&env);
    let r = reqwest::Client::new()
        .put(format!("{}/api/v1/products/org-{o}/mqtt-config", env.http))
        .bearer_auth(TOKEN)
        .json(
            &json!({"host": host, "port": port, "username": env.services.hosted_admin_user,
                      "password": admin_pass.trim(), "prefix": prefix,
                      "client_id": format!("ff-hosted-{}", random_hex(4))}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{}", r.text().await.unwrap());

    let id = random_device();
    let mut dev =
        common::TestDevice::connect_as(&host, port, &prefix, &id, Some((user, pass))).await;
    dev.publish("data", r#"{"type":"reading","seq":1,"temperature_c":21.0}"#)
        .await;
    let image = fleetflow_sim::image::jpeg_like(2500, 1).to_vec();
    dev.meta("img-1", &image, 1000, true).await;
    for i in 0..3 {
        dev.chunk_bin("img-1", &image, 1000, i).await;
    }
    let ack = dev.next_ack(Duration::from_secs(20)).await;
    assert_eq!(ack["type"], "ACK_OK", "{ack}");
    // Readings are batched separately from captures: they may commit a moment later.
    eventually(Duration::from_secs(20), "the reading", || async {
        (env.scalar_i64(&format!(
            "SELECT count(*) FROM sensor_readings WHERE device_id = '{id}'"
        ))
        .await
            == 1)
            .then_some(())
    })
    .await;
    assert_eq!(
        env.scalar_i64(&format!(
            "SELECT count(*) FROM captures WHERE device_id = '{id}' AND ingest_status = 'stored'"
        ))
        .await,
        1
    );

    // Publishing: the product's own connection, and an organisation token kept to org_{o}/.
    let (code, p) = api_json(
        &env,
        &format!("products/org-{o}/publish"),
        TOKEN,
        json!({"topic": format!("{prefix}/{id}/cmd"), "payload": {"type": "command", "command_id": "c-1", "name": "ping"}}),
    )
    .await;
    assert_eq!(code, 200, "{p}");
    let cmd = dev.next_ack(Duration::from_secs(5)).await;
    assert_eq!(cmd["command_id"], "c-1", "{cmd}");
    let (code, e) = api_json(
        &env,
        &format!("products/org-{o}/publish"),
        TOKEN,
        json!({"topic": "a/+/b"}),
    )
    .await;
    assert_eq!((code, e["error"]["field"].clone()), (400, json!("topic")));

    let (code, t) = api_json(
        &env,
        &format!("organizations/{o}/tokens"),
        TOKEN,
        json!({"name": "ci"}),
    )
    .await;
    assert_eq!(code, 201, "{t}");
    let org_token = t["token"].as_str().unwrap();
    let (code, p) = api_json(
        &env,
        &format!("organizations/{o}/publish"),
        org_token,
        json!({"topic": format!("{prefix}/{id}/cmd"), "payload": {"type": "command", "command_id": "c-2", "name": "ping"}}),
    )
    .await;
    assert_eq!(code, 200, "{p}");
    assert_eq!(
        dev.next_ack(Duration::from_secs(5)).await["command_id"],
        "c-2"
    );
    let (code, e) = api_json(
        &env,
        &format!("organizations/{o}/publish"),
        org_token,
        json!({"topic": format!("org_{}/devices/x/cmd", o + 1), "payload": "x"}),
    )
    .await;
    assert_eq!(code, 403, "{e}");
    assert_eq!(e["error"]["field"], "topic");
    let (code, _) = api_json(
        &env,
        &format!("organizations/{}/publish", o + 1),
        org_token,
        json!({"topic": "x"}),
    )
    .await;
    assert_eq!(code, 403, "another organisation's endpoint");
    let (code, _) = api_json(
        &env,
        &format!("organizations/{o}/tokens"),
        org_token,
        json!({}),
    )
    .await;
    assert_eq!(code, 403, "organisation tokens cannot mint tokens");
    let (code, _) = api(
        &env,
        reqwest::Method::GET,
        &format!("organizations/{o}/mqtt-credentials"),
        "fft_wrong",
    )
    .await;
    assert_eq!(code, 401);
}
