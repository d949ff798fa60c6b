//! The admin API: token checks, JSON errors naming the field, 404s, and device restarts with a
//! cooldown, while other devices keep ingesting.

mod common;

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
