//! The old systems' own calls, run as their docs wrote them, against fleetflow: the restart
//! webhook's `curl` lines, the restart-request RPC as SQL, and the troubleshooting `UPDATE`.

use crate::common;

use std::time::Duration;

use common::{eventually, free_port, Options, TestEnv};
use serde_json::Value;

const TOKEN: &str = "admin-test-token-0123456789abcdef";
const RESTART: &str = "restart-only-token-0123456789abcdef";

/// An engine with the restart webhook on a port of its own, two restarts per target per window.
async fn env_with_webhook() -> (TestEnv, String) {
    let port = free_port();
    let env = TestEnv::start(Options {
        extra: format!(
            "[admin]\ntoken = \"{TOKEN}\"\nrestart_token = \"{RESTART}\"\nrestart_cooldown_secs = 300\nrestart_max_per_window = 2\n[restart_webhook]\nbind = \"127.0.0.1:{port}\"\n"
        ),
        ..Options::default()
    })
    .await;
    (env, format!("http://127.0.0.1:{port}"))
}

/// `curl -X POST {webhook}/restart -H "X-Restart-Token: …" [-d body]`
async fn curl_restart(webhook: &str, token: &str, body: Option<&str>) -> (u16, Value, bool) {
    let mut req = reqwest::Client::new()
        .post(format!("{webhook}/restart"))
        .header("X-Restart-Token", token);
    if let Some(b) = body {
        req = req
            .header("Content-Type", "application/json")
            .body(b.to_string());
    }
    let r = req.send().await.unwrap();
    let status = r.status().as_u16();
    let retry_after = r.headers().contains_key("retry-after");
    (status, r.json().await.unwrap(), retry_after)
}

#[tokio::test]
async fn the_old_restart_webhook_calls_restart_the_pipeline_with_the_same_cooldown_and_audit() {
    let (env, webhook) = env_with_webhook().await;
    let health: Value = reqwest::get(format!("{webhook}/health"))
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(health["status"], "healthy", "{health}");

    // A wrong token gets the old 401; the attempt is recorded, and no restart is.
    let (status, body, _) = curl_restart(&webhook, "wrong-token-0123456789abcdefgh", None).await;
    assert_eq!(
        (status, body["error"].as_str()),
        (401, Some("Unauthorized"))
    );
    eventually(Duration::from_secs(20), "the refused attempt recorded", || async {
        let n = env
            .scalar_i64("SELECT count(*) FROM admin_audit WHERE entry = 'restart_webhook' AND reason = 'unauthorized'")
            .await;
        (n == 1).then_some(())
    })
    .await;
    // An unknown service is refused before anything runs.
    let (status, body, _) = curl_restart(&webhook, RESTART, Some(r#"{"service":"db"}"#)).await;
    assert_eq!(status, 400, "{body}");
    assert_eq!(body["success"], false);
    let rows = "SELECT count(*) FROM service_restart_requests";
    assert_eq!(env.scalar_i64(rows).await, 0);

    // With no body, as the old curl line: a pipeline restart, done, recorded.
    let (status, body, _) = curl_restart(&webhook, RESTART, None).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["success"], true, "{body}");
    assert_eq!(body["message"], "MQTT subscriber restarted successfully");
    assert_eq!(body["details"]["target"], "pipeline");
    assert_eq!(body["details"]["status"], "completed");
    // With the old `{"service": "mqtt"}` body.
    let (status, body, _) = curl_restart(&webhook, RESTART, Some(r#"{"service":"mqtt"}"#)).await;
    assert_eq!(
        (status, &body["success"]),
        (200, &Value::Bool(true)),
        "{body}"
    );
    // The third within the window meets the cooldown, in the old shape, with Retry-After.
    let (status, body, retry_after) =
        curl_restart(&webhook, RESTART, Some(r#"{"service":"all"}"#)).await;
    assert_eq!(status, 429, "{body}");
    assert_eq!(body["success"], false);
    assert!(body["details"]["retry_after_secs"].as_u64().unwrap() > 0);
    assert!(retry_after);

    // The audit rows say who asked and read as the old service name.
    let db = env.db().await;
    let audit = db
        .query(
            "SELECT target, service_name, requested_by, status FROM service_restart_requests ORDER BY id",
            &[],
        )
        .await
        .unwrap();
    // Two restarts done, and the one refused by the cooldown recorded as rejected.
    let statuses: Vec<&str> = audit.iter().map(|r| r.get("status")).collect();
    assert_eq!(statuses, ["completed", "completed", "rejected"]);
    for r in &audit {
        assert_eq!(r.get::<_, &str>("target"), "pipeline");
        assert_eq!(r.get::<_, &str>("service_name"), "mqtt-subscriber");
        assert_eq!(r.get::<_, &str>("requested_by"), "restart-webhook:restart");
    }
}

#[tokio::test]
async fn the_old_rpc_and_troubleshooting_update_work_as_their_docs_say() {
    let mut env = TestEnv::start(Options::default()).await;
    let db = env.db().await;
    // supabase.rpc('request_service_restart', {p_service_name: 'mqtt-subscriber'}), as SQL.
    let rpc = "SELECT request_service_restart(p_service_name => 'mqtt-subscriber')";
    let first: i64 = db.query_one(rpc, &[]).await.unwrap().get(0);
    // The running engine executes it: the whole pipeline.
    let done = eventually(
        Duration::from_secs(30),
        "the RPC's restart to run",
        || async {
            let r = env
            .db()
            .await
            .query_one(
                "SELECT status, target, service_name FROM service_restart_requests WHERE id = $1",
                &[&first],
            )
            .await
            .unwrap();
            let status: String = r.get(0);
            (status == "completed" || status == "failed")
                .then(|| (status, r.get::<_, String>(1), r.get::<_, String>(2)))
        },
    )
    .await;
    assert_eq!(
        done,
        (
            "completed".into(),
            "pipeline".into(),
            "mqtt-subscriber".into()
        )
    );
    // An executed restart counts toward the cooldown (the RPC's default, 5 minutes).
    let refused = db.query_one(rpc, &[]).await.unwrap_err();
    assert!(
        refused
            .as_db_error()
            .is_some_and(|e| e.message().contains("already requested")),
        "{refused:?}"
    );
    // An unknown service name is refused, naming what is accepted.
    let unknown = db
        .query_one(
            "SELECT request_service_restart(p_service_name => 'database')",
            &[],
        )
        .await
        .unwrap_err();
    assert!(
        format!("{unknown:?}").contains("mqtt-subscriber"),
        "{unknown:?}"
    );

    // With no engine to run it, a request for another service stays pending...
    env.kill9();
    let pending: i64 = db
        .query_one(
            "SELECT request_service_restart(p_service_name => 'sink:objects')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let again = "SELECT request_service_restart(p_service_name => 'sink:objects')";
    assert!(
        db.query_one(again, &[]).await.is_err(),
        "a second pending request is refused"
    );
    // ...and the old troubleshooting UPDATE clears it, as its text says.
    let cleared = db
        .execute(
            "UPDATE service_restart_requests SET status = 'completed' WHERE status = 'pending' AND service_name = 'sink:objects'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(cleared, 1);
    let r = db
        .query_one(
            "SELECT completed_at IS NOT NULL, result->>'closed_by_hand' FROM service_restart_requests WHERE id = $1",
            &[&pending],
        )
        .await
        .unwrap();
    assert!(r.get::<_, bool>(0));
    assert_eq!(r.get::<_, Option<&str>>(1), Some("true"));
    // So a new request can be made at once.
    let renewed: i64 = db.query_one(again, &[]).await.unwrap().get(0);
    assert!(renewed > pending);
    // The old UPDATE on the pipeline's name runs too (nothing pending for it: 0 rows).
    let none = db
        .execute(
            "UPDATE service_restart_requests SET status='completed' WHERE status='pending' AND service_name='mqtt-subscriber'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(none, 0);
    // A row inserted the old way, with only a service name, gets its target.
    let id: i64 = db
        .query_one(
            "INSERT INTO service_restart_requests (service_name, status) VALUES ('mqtt', 'completed') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let target: String = db
        .query_one(
            "SELECT target FROM service_restart_requests WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(target, "pipeline");
}

/// `PUT`, `GET` or `POST` on the config API with the admin token.
async fn api(
    env: &TestEnv,
    method: reqwest::Method,
    path: &str,
    body: Option<Value>,
) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}{path}", env.http))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

#[tokio::test]
async fn the_old_nested_config_body_a_slash_prefix_and_a_placeholder_pattern_work_as_before() {
    let env = TestEnv::start(Options {
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\n"),
        ..Options::default()
    })
    .await;
    let (host, port) = (env.services.mqtt_host.clone(), env.services.mqtt_port);
    let prefix = format!("/v3/t{}", common::random_hex(8));
    let path = "/api/v1/products/old-1/mqtt-config";
    // Before any config: the old 200 with nulls.
    let (code, body) = api(&env, reqwest::Method::GET, path, None).await;
    assert_eq!((code, &body["mqtt_config"]), (200, &Value::Null), "{body}");

    // The old PUT body: `broker` and `topics` sections, `keep_alive`, a blank password.
    let nested = serde_json::json!({
        "broker": {"host": host, "port": port, "use_tls": false, "verify_cert": true, "username": null,
                   "password": "", "client_id": format!("ff-old-{}", common::random_hex(6)),
                   "keep_alive": 60, "clean_session": false},
        "topics": {"prefix": prefix, "use_shared": false, "shared_group": null, "qos": 1},
    });
    let (code, body) = api(&env, reqwest::Method::PUT, path, Some(nested.clone())).await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(body["status"], "success");
    assert_eq!(body["requires_restart"], false);
    assert_eq!(body["mqtt_config"]["topics"]["prefix"], prefix.as_str());
    assert_eq!(body["mqtt_config"]["broker"]["keep_alive"], 60);
    let (_, got) = api(&env, reqwest::Method::GET, path, None).await;
    assert_eq!(got["mqtt_config"]["broker"]["host"], host.as_str(), "{got}");
    // A field given both flat and nested is refused, naming it.
    let mut twice = nested.clone();
    twice["keep_alive_secs"] = serde_json::json!(30);
    let (code, body) = api(&env, reqwest::Method::PUT, path, Some(twice)).await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["field"], "keep_alive_secs", "{body}");

    // Devices under the slash prefix are ingested.
    let id = common::random_device();
    let dev = common::TestDevice::connect(&env.services, &prefix, &id).await;
    dev.publish("data", r#"{"type":"reading","seq":1}"#).await;
    let readings = format!("SELECT count(*) FROM sensor_readings WHERE device_id = '{id}'");
    eventually(
        Duration::from_secs(10),
        "the reading under /v3/...",
        || async { (env.scalar_i64(&readings).await == 1).then_some(()) },
    )
    .await;

    // The test endpoint takes candidate settings in its body, before saving: one that connects,
    // one that cannot (a closed port).
    let test = format!("{path}/test");
    let ok = serde_json::json!({"host": host, "port": port, "use_tls": false, "username": null, "password": ""});
    let (code, body) = api(&env, reqwest::Method::POST, &test, Some(ok)).await;
    assert_eq!(
        (code, &body["status"], &body["connected"]),
        (200, &"success".into(), &true.into()),
        "{body}"
    );
    let closed = serde_json::json!({"broker": {"host": "127.0.0.1", "port": free_port()}});
    let (code, body) = api(&env, reqwest::Method::POST, &test, Some(closed)).await;
    assert_eq!(
        (code, &body["status"], &body["connected"]),
        (200, &"error".into(), &false.into()),
        "{body}"
    );
    assert!(body["error"].is_string(), "{body}");

    // A `{placeholder}` pattern subscribes `+` levels under the prefix, not the literal text.
    let mut with_pattern = nested;
    with_pattern["topics"]["pattern"] = "{application_id}/business-events".into();
    let (code, body) = api(&env, reqwest::Method::PUT, path, Some(with_pattern)).await;
    assert_eq!(code, 200, "{body}");
    let received = "SELECT COALESCE(max(messages_received), 0) FROM mqtt_connection_status WHERE product_id = 'old-1'";
    let before = env.scalar_i64(received).await;
    let app = common::TestDevice::connect(&env.services, &prefix, "app1").await;
    // Not under the pattern: never received. Sent first, so it would be counted before the rest.
    app.publish_raw(&format!("{prefix}/app1/uplink"), "{}")
        .await;
    for _ in 0..3 {
        app.publish_raw(&format!("{prefix}/app1/business-events"), "{}")
            .await;
    }
    app.settle().await;
    eventually(
        Duration::from_secs(10),
        "3 business events received",
        || async {
            let n = env.scalar_i64(received).await - before;
            assert!(
                n <= 3,
                "{n} messages received: the uplink one was subscribed too"
            );
            (n == 3).then_some(())
        },
    )
    .await;
    tokio::time::sleep(Duration::from_millis(1500)).await;
    assert_eq!(env.scalar_i64(received).await - before, 3);
}

#[tokio::test]
async fn named_tokens_say_who_restarted_and_refused_attempts_are_recorded_and_counted() {
    let dir = tempfile::tempdir().unwrap();
    let tokens = dir.path().join("tokens");
    std::fs::write(
        &tokens,
        "# operators\nops-alice alice-token-0123456789abcdef\nci-bot ci-bot-token-0123456789abcd\n",
    )
    .unwrap();
    let env = TestEnv::start(Options {
        extra: format!(
            "[admin]\ntoken = \"{TOKEN}\"\ntokens_file = \"{}\"\nrestart_cooldown_secs = 300\n",
            tokens.display()
        ),
        ..Options::default()
    })
    .await;
    let c = reqwest::Client::new();
    let restart = |token: &'static str, target: &'static str| {
        c.post(format!("{}/api/v1/restarts", env.http))
            .bearer_auth(token)
            .json(&serde_json::json!({"target": target}))
            .send()
    };
    // Alice restarts a sink: the audit row names her.
    let r = restart("alice-token-0123456789abcdef", "sink:objects")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let id = r.json::<Value>().await.unwrap()["id"].as_i64().unwrap();
    let db = env.db().await;
    let by: String = db
        .query_one(
            "SELECT requested_by FROM service_restart_requests WHERE id = $1",
            &[&id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(by, "ops-alice");
    assert_eq!(
        env.scalar_i64("SELECT count(*) FROM admin_audit").await,
        0,
        "an accepted request is not a refusal"
    );

    // The bot repeats it within the cooldown: refused, recorded as a rejected row, counted.
    let r = restart("ci-bot-token-0123456789abcd", "sink:objects")
        .await
        .unwrap();
    assert_eq!(r.status(), 429);
    let rejected = db
        .query_one(
            "SELECT requested_by, result->>'refused' FROM service_restart_requests WHERE status = 'rejected'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!(rejected.get::<_, String>(0), "ci-bot");
    assert_eq!(
        rejected.get::<_, Option<String>>(1).as_deref(),
        Some("cooldown")
    );

    // A wrong token: 401, recorded with what was tried, counted.
    let r = c
        .get(format!("{}/api/v1/devices", env.http))
        .bearer_auth("not-a-token-0123456789abcdef")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    let refusal = eventually(Duration::from_secs(20), "the refusal recorded", || async {
        env.db()
            .await
            .query_opt(
                "SELECT entry, reason, action, actor, remote FROM admin_audit",
                &[],
            )
            .await
            .unwrap()
    })
    .await;
    assert_eq!(refusal.get::<_, String>(0), "api");
    assert_eq!(refusal.get::<_, String>(1), "unauthorized");
    assert_eq!(refusal.get::<_, String>(2), "GET /api/v1/devices");
    assert_eq!(refusal.get::<_, Option<String>>(3), None);
    assert_eq!(
        refusal.get::<_, Option<String>>(4).as_deref(),
        Some("127.0.0.1")
    );
    let metrics = env.metrics().await;
    for series in [
        r#"fleetflow_admin_refused_total{entry="api",reason="unauthorized"} 1"#,
        r#"fleetflow_admin_refused_total{entry="api",reason="cooldown"} 1"#,
    ] {
        assert!(metrics.contains(series), "{series} missing");
    }
}
