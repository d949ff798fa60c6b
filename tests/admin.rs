//! The admin API: token checks, JSON errors naming the field, 404s, and device restarts with a
//! cooldown, while other devices keep ingesting.

use crate::common;

use std::time::Duration;

use common::{eventually, random_device, Options, TestEnv};
use serde_json::{json, Value};

const TOKEN: &str = "admin-test-token-0123456789abcdef";

async fn env() -> TestEnv {
    TestEnv::start(Options {
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\nrestart_cooldown_secs = 300\n"),
        ..Options::default()
    })
    .await
}

#[tokio::test]
async fn requests_without_the_right_token_get_401_and_bad_requests_name_the_field() {
    let env = env().await;
    let c = reqwest::Client::new();
    let url = format!("{}/api/v1/devices", env.http);
    assert_eq!(c.get(&url).send().await.unwrap().status(), 401);
    let wrong = c
        .get(&url)
        .bearer_auth("admin-test-token-0123456789abcdeX")
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status(), 401);
    let body: Value = wrong.json().await.unwrap();
    assert_eq!(body["error"]["code"], "unauthorized");
    assert_eq!(
        c.get(&url)
            .bearer_auth(TOKEN)
            .send()
            .await
            .unwrap()
            .status(),
        200
    );

    let bad = c
        .get(format!("{url}?limit=0"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(
        bad.json::<Value>().await.unwrap()["error"]["field"],
        "limit"
    );
    let unknown = c
        .get(format!("{url}/FFFFFFFFFFFF"))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
    let restart = format!("{}/api/v1/restarts", env.http);
    let r = c
        .post(&restart)
        .bearer_auth(TOKEN)
        .json(&json!({"reason": "x"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(r.json::<Value>().await.unwrap()["error"]["field"], "target");
    let r = c
        .post(&restart)
        .bearer_auth(TOKEN)
        .json(&json!({"target": "device:AA/BB"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    let r = c
        .post(&restart)
        .bearer_auth(TOKEN)
        .body("{not json")
        .header("content-type", "application/json")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
}

#[tokio::test]
async fn restarting_a_device_completes_then_a_second_request_within_the_cooldown_gets_429_while_others_keep_ingesting(
) {
    let env = env().await;
    let target = random_device();
    let other = random_device();
    let t = env.device(&target).await;
    let o = env.device(&other).await;
    t.publish("status", r#"{"status":"online"}"#).await;
    let feeder = {
        let prefix = env.prefix.clone();
        let services = env.services.clone();
        let other = other.clone();
        tokio::spawn(async move {
            let d = common::TestDevice::connect(&services, &prefix, &other).await;
            for seq in 1..=40u64 {
                d.publish("data", format!(r#"{{"type":"reading","seq":{seq}}}"#))
                    .await;
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            d.settle().await;
        })
    };
    drop(o);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c = reqwest::Client::new();
    let before = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM sensor_readings WHERE device_id = '{other}'"
        ))
        .await;
    let r = c
        .post(format!("{}/api/v1/restarts", env.http))
        .bearer_auth(TOKEN)
        .json(&json!({"target": format!("device:{}", target.to_lowercase()), "reason": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let body: Value = r.json().await.unwrap();
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(body["result"]["was_running"], true);
    assert_eq!(body["result"]["healthy"], true);
    // The audit row went running -> completed with the health check in its result.
    let row = env
        .db()
        .await
        .query_one("SELECT status, requested_by, started_at IS NOT NULL, completed_at IS NOT NULL, result FROM service_restart_requests WHERE id = $1", &[&body["id"].as_i64().unwrap()])
        .await
        .unwrap();
    assert_eq!(row.get::<_, String>(0), "completed");
    assert_eq!(row.get::<_, String>(1), "admin");
    assert!(row.get::<_, bool>(2) && row.get::<_, bool>(3));
    assert_eq!(row.get::<_, Value>(4)["healthy"], true);
    let again = c
        .post(format!("{}/api/v1/restarts", env.http))
        .bearer_auth(TOKEN)
        .json(&json!({"target": format!("device:{target}")}))
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), 429);
    let retry: u64 = again.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(retry > 200 && retry <= 300, "{retry}");
    // The other device's readings kept flowing across the restart.
    eventually(
        Duration::from_secs(10),
        "more readings from the other device",
        || async {
            (env.scalar_i64(&format!(
                "SELECT count(*) FROM sensor_readings WHERE device_id = '{other}'"
            ))
            .await
                > before)
                .then_some(())
        },
    )
    .await;
    feeder.await.unwrap();
    eventually(Duration::from_secs(10), "all 40 readings", || async {
        (env.scalar_i64(&format!(
            "SELECT count(*) FROM sensor_readings WHERE device_id = '{other}'"
        ))
        .await
            == 40)
            .then_some(())
    })
    .await;
    // The restarted device still ingests.
    t.publish("data", r#"{"type":"reading","seq":1}"#).await;
    eventually(
        Duration::from_secs(10),
        "the restarted device's reading",
        || async {
            (env.scalar_i64(&format!(
                "SELECT count(*) FROM sensor_readings WHERE device_id = '{target}'"
            ))
            .await
                == 1)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn a_restart_requested_as_a_database_row_is_picked_up_at_once_and_the_sql_function_enforces_the_cooldown(
) {
    // The worker also polls the table; an hour between polls (the same setting paces the
    // source manager's reconcile, which this test does not use) leaves NOTIFY, or the catch-up
    // pass right after LISTEN, as the ways the row can be picked up within the wait below.
    let env = TestEnv::start(Options {
        extra: format!(
            "[admin]\ntoken = \"{TOKEN}\"\nrestart_cooldown_secs = 300\nrestart_poll_secs = 3600\n"
        ),
        ..Options::default()
    })
    .await;
    let target = random_device();
    let other = random_device();
    let t = env.device(&target).await;
    t.publish("status", r#"{"status":"online"}"#).await;
    let o = env.device(&other).await;
    let db = env.db().await;
    eventually(Duration::from_secs(10), "the device row", || async {
        (env.scalar_i64(&format!(
            "SELECT count(*) FROM devices WHERE device_id = '{target}'"
        ))
        .await
            == 1)
            .then_some(())
    })
    .await;
    let id: i64 = db
        .query_one(
            "SELECT request_service_restart($1, 'stuck')",
            &[&format!("device:{target}")],
        )
        .await
        .unwrap()
        .get(0);
    // Woken by NOTIFY: polls are an hour apart, so finishing within 20 s shows the wake-up.
    let (status, result) = eventually(Duration::from_secs(20), "the row to complete", || async {
        let r = env
            .db()
            .await
            .query_one(
                "SELECT status, result FROM service_restart_requests WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
        let status: String = r.get(0);
        (status != "pending" && status != "running").then(|| (status, r.get::<_, Value>(1)))
    })
    .await;
    assert_eq!(status, "completed", "{result}");
    assert_eq!(result["healthy"], true);
    let err = db
        .query_one(
            "SELECT request_service_restart($1, 'again')",
            &[&format!("device:{target}")],
        )
        .await
        .unwrap_err();
    let msg = err
        .as_db_error()
        .expect("a database error")
        .message()
        .to_string();
    assert!(
        msg.contains("already requested") && msg.contains("cooldown"),
        "{msg}"
    );
    let bad = db
        .query_one(
            "SELECT request_service_restart('reboot the world', NULL)",
            &[],
        )
        .await
        .unwrap_err();
    assert!(bad
        .as_db_error()
        .unwrap()
        .message()
        .contains("invalid restart target"));
    // The other device is unaffected.
    o.publish("data", r#"{"type":"reading","seq":7}"#).await;
    eventually(
        Duration::from_secs(10),
        "the other device's reading",
        || async {
            (env.scalar_i64(&format!(
                "SELECT count(*) FROM sensor_readings WHERE device_id = '{other}'"
            ))
            .await
                == 1)
                .then_some(())
        },
    )
    .await;
}

#[tokio::test]
async fn with_two_engines_on_one_database_each_restart_row_is_executed_exactly_once() {
    let a = env().await;
    let b = TestEnv::start(Options {
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\n"),
        pg_url: Some(a.db_url.clone()),
        ..Options::default()
    })
    .await;
    let db = a.db().await;
    let mut ids = Vec::new();
    for _ in 0..10 {
        // Known devices (a restart of a device never seen fails its health check).
        let device = random_device();
        db.execute("INSERT INTO devices (device_id) VALUES ($1)", &[&device])
            .await
            .unwrap();
        let id: i64 = db
            .query_one(
                "SELECT request_service_restart($1, 'race')",
                &[&format!("device:{device}")],
            )
            .await
            .unwrap()
            .get(0);
        ids.push(id);
    }
    eventually(Duration::from_secs(10), "all rows completed", || async {
        (a.scalar_i64("SELECT count(*) FROM service_restart_requests WHERE status = 'completed'")
            .await
            == 10)
            .then_some(())
    })
    .await;
    let restarts = a.metric("fleetflow_device_actors_restarted_total").await
        + b.metric("fleetflow_device_actors_restarted_total").await;
    assert_eq!(restarts, 10.0, "each row executed once across both engines");
}

#[tokio::test]
async fn restarting_a_device_never_seen_fails_its_health_check_and_spawns_nothing() {
    let env = env().await;
    let c = reqwest::Client::new();
    let restart = |id: String| {
        c.post(format!("{}/api/v1/restarts", env.http))
            .bearer_auth(TOKEN)
            .json(&json!({"target": format!("device:{id}"), "reason": "test"}))
            .send()
    };
    let ghost = random_device();
    let body: Value = restart(ghost.clone()).await.unwrap().json().await.unwrap();
    assert_eq!(body["status"], "failed", "{body}");
    assert_eq!(body["result"]["healthy"], false, "{body}");
    assert!(
        body["result"]["error"]
            .as_str()
            .unwrap()
            .contains("unknown device"),
        "{body}"
    );
    assert_eq!(
        env.metric("fleetflow_device_actors_spawned_total").await,
        0.0
    );
    // Positive control: a device that published restarts, healthy.
    let seen = random_device();
    let dev = env.device(&seen).await;
    dev.publish("status", r#"{"status":"online"}"#).await;
    dev.settle().await;
    let body: Value = restart(seen).await.unwrap().json().await.unwrap();
    assert_eq!(body["status"], "completed", "{body}");
    assert_eq!(body["result"]["healthy"], true, "{body}");
}

#[tokio::test]
async fn a_command_is_stored_published_to_the_device_and_its_reply_completes_the_row() {
    let env = env().await;
    let id = random_device();
    let mut dev = env.device(&id).await;
    dev.publish("status", r#"{"status":"online"}"#).await;
    eventually(Duration::from_secs(10), "the device row", || async {
        (env.scalar_i64(&format!(
            "SELECT count(*) FROM devices WHERE device_id = '{id}'"
        ))
        .await
            == 1)
            .then_some(())
    })
    .await;
    let c = reqwest::Client::new();
    let url = format!("{}/api/v1/devices/{id}/commands", env.http);
    let r = c
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&json!({"name": "capture_now", "args": {"flash": true}}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 201);
    let body: Value = r.json().await.unwrap();
    let command_id = body["command_id"].as_str().unwrap().to_string();
    let cmd = dev.next_ack(Duration::from_secs(10)).await;
    assert_eq!(
        cmd,
        json!({"type": "command", "command_id": command_id, "name": "capture_now", "args": {"flash": true}})
    );
    let sent: String = env
        .db()
        .await
        .query_one(
            "SELECT status FROM device_commands WHERE id = $1",
            &[&command_id],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(sent, "sent");
    dev.publish(
        "cmd/result",
        format!(r#"{{"command_id":"{command_id}","ok":true,"detail":"captured img_9"}}"#),
    )
    .await;
    let (status, result) = eventually(Duration::from_secs(10), "the reply to complete the command", || async {
        let r = env.db().await.query_one("SELECT status, result, completed_at IS NOT NULL FROM device_commands WHERE id = $1", &[&command_id]).await.unwrap();
        let status: String = r.get(0);
        (status == "succeeded" && r.get::<_, bool>(2)).then(|| (status, r.get::<_, Value>(1)))
    })
    .await;
    assert_eq!(status, "succeeded");
    assert_eq!(result["detail"], "captured img_9");
    let bad = c
        .post(&url)
        .bearer_auth(TOKEN)
        .json(&json!({"name": "rm -rf"}))
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    assert_eq!(bad.json::<Value>().await.unwrap()["error"]["field"], "name");
    let unknown = c
        .post(format!("{}/api/v1/devices/FFFFFFFFFFFF/commands", env.http))
        .bearer_auth(TOKEN)
        .json(&json!({"name": "capture_now"}))
        .send()
        .await
        .unwrap();
    assert_eq!(unknown.status(), 404);
}

/// Requests a restart over HTTP and returns the finished request.
async fn restart_http(env: &TestEnv, target: &str) -> Value {
    let r = reqwest::Client::new()
        .post(format!("{}/api/v1/restarts", env.http))
        .bearer_auth(TOKEN)
        .json(&json!({"target": target, "reason": "test"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "{target}");
    r.json().await.unwrap()
}

#[tokio::test]
async fn sink_and_pipeline_restarts_rebuild_in_process_with_health_checks_and_lose_nothing() {
    let env = TestEnv::start(Options {
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\nrestart_cooldown_secs = 300\n"),
        store: common::Store::S3,
        ..Options::default()
    })
    .await;
    let pid = env.pid();
    let id = random_device();
    let dev = env.device(&id).await;
    // Readings flow during all three restarts.
    let publisher = {
        let dev = env.device(&id).await;
        tokio::spawn(async move {
            for seq in 1..=600 {
                dev.publish("data", format!(r#"{{"type":"reading","seq":{seq}}}"#))
                    .await;
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            dev.settle().await;
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;

    let pg = restart_http(&env, "sink:postgres").await;
    assert_eq!(pg["status"], "completed", "{pg}");
    assert_eq!(pg["result"]["healthy"], true, "{pg}");
    // A real round trip through the new pool: it takes some time, and not seconds.
    let rtt = pg["result"]["round_trip_ms"].as_f64().unwrap();
    assert!(rtt > 0.0 && rtt < 5_000.0, "round trip {rtt} ms: {pg}");

    // sink:objects as a database row.
    let db = env.db().await;
    let row: i64 = db
        .query_one(
            "SELECT request_service_restart('sink:objects', 'test')",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let result = eventually(Duration::from_secs(10), "the sink:objects row", || async {
        let r = env
            .db()
            .await
            .query_one(
                "SELECT status, result FROM service_restart_requests WHERE id = $1",
                &[&row],
            )
            .await
            .unwrap();
        let status: String = r.get(0);
        (status != "pending" && status != "running").then(|| (status, r.get::<_, Value>(1)))
    })
    .await;
    assert_eq!(result.0, "completed", "{:?}", result.1);
    assert_eq!(result.1["healthy"], true);

    let p = restart_http(&env, "pipeline").await;
    assert_eq!(p["status"], "completed", "{p}");
    for part in ["sink_postgres", "sink_objects", "sources"] {
        assert_eq!(p["result"][part]["healthy"], true, "{part}: {p}");
    }
    assert_eq!(p["result"]["postgres_flushed"], true, "{p}");
    publisher.await.unwrap();
    let count = format!("SELECT count(*) FROM sensor_readings WHERE device_id = '{id}'");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(20);
    loop {
        let n = env.scalar_i64(&count).await;
        if n == 600 {
            break;
        }
        if tokio::time::Instant::now() >= deadline {
            let missing = env
                .db()
                .await
                .query_one(
                    "SELECT array_agg(s)::text FROM generate_series(1, 600) s WHERE NOT EXISTS
                     (SELECT 1 FROM sensor_readings r WHERE r.device_id = $1 AND r.seq = s)",
                    &[&id],
                )
                .await
                .unwrap()
                .get::<_, Option<String>>(0);
            panic!(
                "{n} of 600 readings stored after 20 s, missing {missing:?}; engine log:\n{}",
                env.log()
            );
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    // After the pipeline restart a capture goes through the rebuilt object sink.
    let image = fleetflow_sim::image::jpeg_like(3000, 7).to_vec();
    let mut dev = dev;
    dev.meta("c-after", &image, 1000, true).await;
    for i in 0..3 {
        dev.chunk_bin("c-after", &image, 1000, i).await;
    }
    let ack = dev.next_ack(Duration::from_secs(20)).await;
    assert_eq!(ack["type"], "ACK_OK", "{ack}");
    let audit = env
        .scalar_i64("SELECT count(*) FROM service_restart_requests WHERE status = 'completed'")
        .await;
    assert_eq!(audit, 3, "each restart is in the audit trail");
    assert_eq!(env.pid(), pid, "all in process");
}

#[tokio::test]
async fn a_restart_only_token_requests_restarts_and_nothing_else_within_n_per_window() {
    const RESTART: &str = "restart-only-token-0123456789";
    let env = TestEnv::start(Options {
        extra: format!(
            "[admin]\ntoken = \"{TOKEN}\"\nrestart_token = \"{RESTART}\"\nrestart_cooldown_secs = 300\nrestart_max_per_window = 2\n"
        ),
        ..Options::default()
    })
    .await;
    let id = random_device();
    let dev = env.device(&id).await;
    dev.publish("data", r#"{"type":"reading","seq":1}"#).await;
    let c = reqwest::Client::new();
    let restart = |token: &'static str| {
        c.post(format!("{}/api/v1/restarts", env.http))
            .header("X-Restart-Token", token)
            .json(&json!({"target": format!("device:{id}"), "reason": "automation"}))
            .send()
    };
    for _ in 0..2 {
        let r = restart(RESTART).await.unwrap();
        assert_eq!(r.status(), 200);
        let body: Value = r.json().await.unwrap();
        assert_eq!(body["status"], "completed", "{body}");
    }
    let third = restart(RESTART).await.unwrap();
    assert_eq!(third.status(), 429, "at most 2 per window");
    assert!(third.headers().contains_key("retry-after"));
    assert_eq!(
        restart("wrong-token-0123456789").await.unwrap().status(),
        401
    );
    // The restart token opens nothing else.
    let r = c
        .get(format!("{}/api/v1/devices", env.http))
        .header("X-Restart-Token", RESTART)
        .bearer_auth(RESTART)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
    // The SQL function takes the same limit.
    let db = env.db().await;
    for _ in 0..2 {
        db.query_one(
            "SELECT request_service_restart('sink:objects', 'x', NULL, interval '5 minutes', false, 2)",
            &[],
        )
        .await
        .unwrap();
    }
    let e = db
        .query_one(
            "SELECT request_service_restart('sink:objects', 'x', NULL, interval '5 minutes', false, 2)",
            &[],
        )
        .await
        .unwrap_err();
    assert!(
        e.as_db_error().unwrap().message().contains("cooldown"),
        "{e}"
    );
}

#[tokio::test]
async fn a_restart_whose_client_hangs_up_still_finishes_and_abandoned_rows_are_closed() {
    let env = TestEnv::start(Options {
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\nrestart_poll_secs = 1\n"),
        ..Options::default()
    })
    .await;
    // A client that gives up after 50 ms, long before a pipeline restart is done.
    let hasty = reqwest::Client::builder()
        .timeout(Duration::from_millis(50))
        .build()
        .unwrap();
    let gave_up = hasty
        .post(format!("{}/api/v1/restarts", env.http))
        .bearer_auth(TOKEN)
        .json(&json!({"target": "pipeline"}))
        .send()
        .await;
    assert!(gave_up.is_err(), "the client was meant to time out");
    // The restart is not cancelled with the request: it finishes, healthy, and says so.
    let done = eventually(Duration::from_secs(60), "the pipeline restart to finish", || async {
        let r = env
            .db()
            .await
            .query_opt(
                "SELECT status, result FROM service_restart_requests WHERE target = 'pipeline' AND status <> 'running'",
                &[],
            )
            .await
            .unwrap()?;
        Some((r.get::<_, String>(0), r.get::<_, Value>(1)))
    })
    .await;
    assert_eq!(done.0, "completed", "{}", done.1);
    // ...and the sources are forwarding again: a reading lands.
    let id = random_device();
    let dev = env.device(&id).await;
    dev.publish("data", r#"{"type":"reading","seq":1}"#).await;
    eventually(
        Duration::from_secs(10),
        "a reading after the restart",
        || async {
            (env.scalar_i64(&format!(
                "SELECT count(*) FROM sensor_readings WHERE device_id = '{id}'"
            ))
            .await
                == 1)
                .then_some(())
        },
    )
    .await;

    // A row left running by an engine that died is closed as failed; a fresh one is not.
    let db = env.db().await;
    let old: i64 = db
        .query_one(
            "INSERT INTO service_restart_requests (target, status, started_at) VALUES ('sink:objects', 'running', now() - interval '20 minutes') RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let fresh: i64 = db
        .query_one(
            "INSERT INTO service_restart_requests (target, status, started_at) VALUES ('sink:postgres', 'running', now()) RETURNING id",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    let closed = eventually(
        Duration::from_secs(10),
        "the abandoned row closed",
        || async {
            let r = env
                .db()
                .await
                .query_one(
                    "SELECT status, result->>'error' FROM service_restart_requests WHERE id = $1",
                    &[&old],
                )
                .await
                .unwrap();
            (r.get::<_, String>(0) == "failed").then(|| r.get::<_, Option<String>>(1))
        },
    )
    .await;
    assert!(closed.unwrap_or_default().contains("abandoned"));
    let still: String = db
        .query_one(
            "SELECT status FROM service_restart_requests WHERE id = $1",
            &[&fresh],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(
        still, "running",
        "a row another engine may be running is left alone"
    );
}
