//! The console's control-plane pages and the device page's commands and message log, in a real
//! browser driven over WebDriver (`common::browser::Browser`): signed in through the login form,
//! each page is loaded with data present and its buttons are clicked as an operator would.
//! Screenshots of each page go under `target/tmp/console-<page>.png` (`scripts/screenshots`
//! copies them to `docs/`). The new endpoints behind them (`GET /api/v1/products`, `/restarts`,
//! `/devices/{id}/commands`) are checked here too: their JSON, paging, and 401 without a token.

use crate::common;

use std::path::PathBuf;
use std::time::Duration;

use common::browser::Browser;
use common::{eventually, random_hex, Options, TestEnv};
use reqwest::Method;
use serde_json::{json, Value};

const TOKEN: &str = "console-pages-token-0123456789";
const RESTART_TOKEN: &str = "console-pages-restart-only-0123456789";
const KEY: &str = "0f1e2d3c4b5a69788796a5b4c3d2e1f00f1e2d3c4b5a69788796a5b4c3d2e1f0";

fn shot(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join(format!("console-{name}.png"))
}

async fn call(env: &TestEnv, method: Method, path: &str, body: Option<Value>) -> (u16, Value) {
    let mut req = reqwest::Client::new()
        .request(method, format!("{}/api/v1/{path}", env.http))
        .bearer_auth(TOKEN);
    if let Some(b) = body {
        req = req.json(&b);
    }
    let r = req.send().await.unwrap();
    (r.status().as_u16(), r.json().await.unwrap_or(Value::Null))
}

async fn get(env: &TestEnv, path: &str) -> Value {
    let (code, v) = call(env, Method::GET, path, None).await;
    assert_eq!(code, 200, "GET {path}: {v}");
    v
}

async fn unauthenticated(env: &TestEnv, path: &str) -> u16 {
    reqwest::get(format!("{}/api/v1/{path}", env.http))
        .await
        .unwrap()
        .status()
        .as_u16()
}

/// A product whose source connects to the test broker under its own prefix.
async fn put_product(env: &TestEnv, product: &str, extra: Value) {
    let mut body = json!({"host": env.services.mqtt_host, "port": env.services.mqtt_port,
        "prefix": format!("{}{product}", env.prefix), "client_id": format!("ff-{}", random_hex(8))});
    body.as_object_mut()
        .unwrap()
        .extend(extra.as_object().unwrap().clone());
    let (code, v) = call(
        env,
        Method::PUT,
        &format!("products/{product}/mqtt-config"),
        Some(body),
    )
    .await;
    assert_eq!(code, 200, "{v}");
}

fn env_options(extra: &str) -> Options {
    Options {
        extra: format!(
            "[admin]\ntoken = \"{TOKEN}\"\nrestart_token = \"{RESTART_TOKEN}\"\n{extra}"
        ),
        env: vec![("FLEETFLOW_SECRET_KEY".into(), KEY.into())],
        ..Options::default()
    }
}

#[tokio::test]
async fn the_products_restarts_and_commands_endpoints_answer_json_pages_and_refuse_without_a_token()
{
    let env = TestEnv::start(env_options("")).await;

    // Products: none, then one with its broker and live status.
    assert_eq!(get(&env, "products").await, json!({"products": []}));
    put_product(&env, "api-p1", json!({})).await;
    let p = eventually(Duration::from_secs(15), "the product connected", || async {
        let v = get(&env, "products").await;
        (v["products"][0]["connected"] == true).then_some(v)
    })
    .await;
    let p = &p["products"][0];
    assert_eq!(p["product_id"], "api-p1");
    assert_eq!(p["host"], env.services.mqtt_host.as_str());
    assert_eq!(p["port"], env.services.mqtt_port);
    assert_eq!(p["prefix"], format!("{}api-p1", env.prefix));
    assert_eq!(p["enabled"], true);
    assert_eq!(p["subscriptions"], 0);
    assert_eq!(p["connection_error"], Value::Null);
    assert!(p["url"].as_str().unwrap().starts_with("mqtt://"), "{p}");
    assert!(p.get("password").is_none(), "{p}");

    // Restarts: 7 rows, pages of 3, newest first, keyset by id.
    let db = env.db().await;
    db.batch_execute(
        "INSERT INTO service_restart_requests (target, requested_by, reason, status, started_at, completed_at, result)
         SELECT 'sink:objects', 'ops-' || i, 'test ' || i, 'completed', now(), now(), '{\"healthy\": true}'
           FROM generate_series(1, 7) i",
    )
    .await
    .unwrap();
    let first = get(&env, "restarts?limit=3").await;
    let rows = first["restarts"].as_array().unwrap();
    assert_eq!(rows.len(), 3, "{first}");
    assert_eq!(rows[0]["requested_by"], "ops-7");
    assert_eq!(rows[2]["requested_by"], "ops-5");
    for k in [
        "id",
        "target",
        "service_name",
        "requested_by",
        "reason",
        "status",
        "requested_at",
        "started_at",
        "completed_at",
        "result",
    ] {
        assert!(rows[0].get(k).is_some(), "no {k}: {}", rows[0]);
    }
    assert_eq!(rows[0]["status"], "completed");
    assert_eq!(rows[0]["result"]["healthy"], true);
    assert_eq!(first["next_before_id"], rows[2]["id"]);
    let second = get(
        &env,
        &format!("restarts?limit=3&before_id={}", first["next_before_id"]),
    )
    .await;
    let ids: Vec<i64> = second["restarts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| r["id"].as_i64().unwrap())
        .collect();
    assert_eq!(ids.len(), 3);
    assert!(ids.windows(2).all(|w| w[0] > w[1]), "{ids:?}");
    assert!(ids[0] < rows[2]["id"].as_i64().unwrap());
    let last = get(
        &env,
        &format!("restarts?limit=3&before_id={}", second["next_before_id"]),
    )
    .await;
    assert_eq!(last["restarts"].as_array().unwrap().len(), 1, "{last}");
    assert_eq!(last["restarts"][0]["requested_by"], "ops-1");
    assert_eq!(last["next_before_id"], Value::Null);
    let (code, bad) = call(&env, Method::GET, "restarts?limit=0", None).await;
    assert_eq!((code, bad["error"]["field"].as_str()), (400, Some("limit")));
    assert_eq!(unauthenticated(&env, "restarts").await, 401);
    // The restart-only token requests restarts but cannot read the history.
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/restarts", env.http))
        .header("X-Restart-Token", RESTART_TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);

    // Commands: newest first, limited.
    let device = common::random_device();
    db.batch_execute(&format!(
        "INSERT INTO device_commands (id, device_id, name, args, status, created_at, sent_at, completed_at, result, wire_format) VALUES
           ('c-old', '{device}', 'capture_now', '{{}}', 'succeeded', now() - interval '2 minutes', now() - interval '2 minutes', now() - interval '1 minute', '{{\"ok\": true}}', 'v1'),
           ('c-mid', '{device}', 'reboot', '{{\"delay_s\": 5}}', 'failed', now() - interval '1 minute', now() - interval '1 minute', now(), '{{\"error\": \"busy\"}}', 'v1'),
           ('c-new', '{device}', 'capture_now', '{{}}', 'expired', now(), NULL, NULL, NULL, NULL)"
    ))
    .await
    .unwrap();
    let all = get(&env, &format!("devices/{device}/commands")).await;
    let cmds = all["commands"].as_array().unwrap();
    let ids: Vec<&str> = cmds
        .iter()
        .map(|c| c["command_id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, ["c-new", "c-mid", "c-old"]);
    assert_eq!(cmds[1]["status"], "failed");
    assert_eq!(cmds[1]["args"]["delay_s"], 5);
    assert_eq!(cmds[1]["result"]["error"], "busy");
    assert_eq!(cmds[1]["format"], "v1");
    assert_eq!(cmds[0]["sent_at"], Value::Null);
    for k in ["name", "created_at", "completed_at", "error"] {
        assert!(cmds[0].get(k).is_some(), "no {k}");
    }
    let two = get(&env, &format!("devices/{device}/commands?limit=2")).await;
    assert_eq!(two["commands"].as_array().unwrap().len(), 2);
    let (code, _) = call(&env, Method::GET, "devices/nope!/commands", None).await;
    assert_eq!(code, 400);
    let (code, _) = call(
        &env,
        Method::GET,
        &format!("devices/{device}/commands?limit=501"),
        None,
    )
    .await;
    assert_eq!(code, 400);
    assert_eq!(
        unauthenticated(&env, &format!("devices/{device}/commands")).await,
        401
    );
    assert_eq!(unauthenticated(&env, "products").await, 401);

    // The console's scripts hold no data and are served without a token.
    for path in ["/console/pages.js", "/console/device.js"] {
        let r = reqwest::get(format!("{}{path}", env.http)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript"));
        let js = r.text().await.unwrap();
        assert!(
            !js.contains("innerHTML =") && !js.contains("insertAdjacentHTML"),
            "{path} must not write HTML"
        );
    }
}

#[tokio::test]
async fn the_products_and_subscriptions_pages_show_configs_and_act_on_real_clicks() {
    let env = TestEnv::start(env_options("")).await;
    put_product(&env, "cam-a", json!({})).await;
    let b = Browser::start().await;

    // The products page: the row with its broker and, once the source reports it, connected.
    b.login(&env.http, TOKEN).await;
    b.goto(&format!("{}/#/products", env.http)).await;
    let host = format!("{}:{}", env.services.mqtt_host, env.services.mqtt_port);
    b.wait_text("#products tr[data-product=\"cam-a\"] td.host", &host)
        .await;
    b.find("#products tr[data-product=\"cam-a\"] td.status[data-connected=\"true\"]")
        .await;
    assert!(b.text("#pages a.active").await.contains("Products"));

    // A new product through the form: Test connection with the candidate settings, first a
    // port nobody listens on, then the broker; then Save, with a password shown only masked.
    b.fill("#pf-product_id", "cam-b").await;
    b.fill("#pf-host", &env.services.mqtt_host).await;
    b.fill("#pf-port", &common::free_port().to_string()).await;
    b.fill("#pf-prefix", &format!("{}cam-b", env.prefix)).await;
    b.fill("#pf-username", "operator").await;
    b.fill("#pf-password", "pw-typed-in-the-form").await;
    b.click("#pf-test").await;
    b.wait_text("#test-result", "not connected").await;
    b.fill("#pf-port", &env.services.mqtt_port.to_string())
        .await;
    b.click("#pf-test").await;
    let tested = b.wait_text("#test-result", "connected in").await;
    assert!(tested.contains(" ms"), "{tested}");
    b.click("#pf-save").await;
    b.wait_text("#product-form-title", "Edit cam-b").await;
    assert_eq!(b.text("#pf-password-mask").await.trim(), "stored: ***");
    let page = b.source().await;
    assert!(!page.contains("pw-typed-in-the-form"), "{page}");
    let saved = get(&env, "products/cam-b/mqtt-config").await;
    assert_eq!(saved["config"]["password"], "***");
    assert_eq!(saved["config"]["username"], "operator");
    assert_eq!(saved["config"]["prefix"], format!("{}cam-b", env.prefix));
    b.find("#products tr[data-product=\"cam-b\"] td.status[data-connected=\"true\"]")
        .await;

    // Reconnect from the list: a source:cam-a restart, completed.
    b.click("#products tr[data-product=\"cam-a\"] button.reconnect")
        .await;
    b.wait_text("#product-result", "cam-a: reconnect completed")
        .await;
    let history = get(&env, "restarts?limit=1").await;
    assert_eq!(history["restarts"][0]["target"], "source:cam-a");
    b.screenshot(&shot("products")).await;

    // Subscriptions of cam-a, with their statistics.
    let topic = format!("{}cam-a/+/telemetry", env.prefix);
    let (code, sub) = call(
        &env,
        Method::POST,
        "products/cam-a/mqtt-config/subscriptions",
        Some(json!({"name": "telemetry", "topic": topic, "actions": [{"type": "store_json", "table": "telemetry"}]})),
    )
    .await;
    assert_eq!(code, 201, "{sub}");
    env.db()
        .await
        .execute(
            "UPDATE mqtt_subscriptions SET messages_received = 42, actions_executed = 40, actions_failed = 2 WHERE id = $1",
            &[&sub["id"].as_i64().unwrap()],
        )
        .await
        .unwrap();
    b.goto(&format!("{}/#/subscriptions?product=cam-a", env.http))
        .await;
    let row = "#subscriptions tr[data-name=\"telemetry\"]";
    b.wait_text(&format!("{row} td.received"), "42").await;
    assert!(b.text(row).await.contains(&topic));
    assert!(b.text(row).await.contains("enabled"));

    // Disable it with a click: stored, and the row says so.
    b.click(&format!("{row} button.toggle")).await;
    b.find("#subscriptions tr[data-name=\"telemetry\"][data-enabled=\"false\"]")
        .await;
    let subs = get(&env, "products/cam-a/mqtt-config/subscriptions").await;
    assert_eq!(subs["subscriptions"][0]["enabled"], false);

    // Create one through the form, then delete it (two clicks: the first arms the button).
    b.fill("#sf-name", "events").await;
    b.fill("#sf-topic", &format!("{}cam-a/+/events", env.prefix))
        .await;
    b.click("#sf-create").await;
    let events = "#subscriptions tr[data-name=\"events\"]";
    b.wait_text(events, "enabled").await;
    let subs = get(&env, "products/cam-a/mqtt-config/subscriptions").await;
    assert_eq!(subs["subscriptions"].as_array().unwrap().len(), 2);
    b.screenshot(&shot("subscriptions")).await;
    b.click(&format!("{events} button.delete")).await;
    b.click(&format!("{events} button.delete")).await;
    eventually(Duration::from_secs(10), "the row gone", || async {
        (!b.source().await.contains("data-name=\"events\"")).then_some(())
    })
    .await;
    let subs = get(&env, "products/cam-a/mqtt-config/subscriptions").await;
    assert_eq!(subs["subscriptions"].as_array().unwrap().len(), 1);
}

#[tokio::test]
async fn the_credentials_and_restarts_pages_show_a_password_once_and_the_restart_history() {
    let s = common::Services::from_env();
    assert!(
        std::path::Path::new(&s.hosted_admin_password_file).exists(),
        "the hosted broker is not running; start it with `scripts/services up`"
    );
    let env = TestEnv::start(env_options(&format!(
        "[hosted]\nbroker_url = \"{}\"\nadmin_username = \"{}\"\nadmin_password_file = \"{}\"\nclient_prefix = \"t{}_\"\nreconcile_secs = 2\n",
        s.hosted_url,
        s.hosted_admin_user,
        s.hosted_admin_password_file,
        random_hex(6)
    )))
    .await;
    let org = 2_000_000 + (rand::random::<u32>() % 1_000_000) as i64;
    let b = Browser::start().await;
    let page = format!("{}/#/credentials?org={org}", env.http);
    b.login(&env.http, TOKEN).await;
    b.goto(&page).await;
    b.find("#cred-list").await;

    // Generate: the password appears once, in the box, and matches the listed credential.
    b.fill("#cred-description", "gateway 7").await;
    b.click("#cred-generate").await;
    b.find("#secret-box[data-state=\"shown\"]").await;
    let password = b.text("#secret-password").await;
    assert_eq!(password.len(), 32, "{password:?}");
    let username = b.text("#secret-username").await;
    let list = get(&env, &format!("organizations/{org}/mqtt-credentials")).await;
    let cred = &list["credentials"][0];
    assert_eq!(cred["username"], username.as_str());
    assert_eq!(cred["description"], "gateway 7");
    let id = cred["id"].as_i64().unwrap();
    let row = format!("#credentials tr[data-credential=\"{id}\"]");
    b.wait_text(&row, &username).await;
    assert!(!b.text("#cred-list").await.contains("null"));
    b.screenshot(&shot("credentials")).await;

    // Copy: then it is gone from the page; after a reload it is nowhere.
    b.click("#secret-copy").await;
    b.wait_text("#secret-password", "not shown again").await;
    assert!(!b.source().await.contains(&password));
    b.goto(&page).await;
    b.wait_text(&row, &username).await;
    let reloaded = b.source().await;
    assert!(!reloaded.contains(&password), "{reloaded}");
    assert!(reloaded.contains("id=\"secret-box\""));
    assert!(!reloaded.contains("data-state=\"shown\""));

    // Rotate: a new password, shown once.
    b.click(&format!("{row} button.rotate")).await;
    b.find("#secret-box[data-state=\"shown\"]").await;
    let rotated = b.text("#secret-password").await;
    assert_eq!(rotated.len(), 32);
    assert_ne!(rotated, password);
    b.wait_text("#cred-result", "rotated").await;
    let list = get(&env, &format!("organizations/{org}/mqtt-credentials")).await;
    assert!(list["credentials"][0]["rotated_at"].is_string(), "{list}");

    // Revoke (two clicks).
    b.click(&format!("{row} button.revoke")).await;
    b.click(&format!("{row} button.revoke")).await;
    b.find(&format!(
        "#credentials tr[data-credential=\"{id}\"][data-state=\"revoked\"]"
    ))
    .await;
    let list = get(&env, &format!("organizations/{org}/mqtt-credentials")).await;
    assert!(list["credentials"][0]["revoked_at"].is_string(), "{list}");

    // The restarts page: 30 old rows (a page is 25, "Older" shows the rest).
    env.db()
        .await
        .batch_execute(
            "INSERT INTO service_restart_requests (target, requested_by, reason, status, requested_at, started_at, completed_at, result)
             SELECT 'device:AABBCCDDEE' || lpad(i::text, 2, '0'), 'ops-alice', 'stuck', 'completed',
                    now() - i * interval '1 hour', now() - i * interval '1 hour', now() - i * interval '1 hour', '{\"healthy\": true}'
               FROM generate_series(1, 30) i",
        )
        .await
        .unwrap();
    b.goto(&format!("{}/#/restarts", env.http)).await;
    b.wait_text("#restarts", "ops-alice").await;
    let rows = "#restarts tr[data-restart]";
    assert_eq!(b.count(rows).await, 25);
    b.click("#restarts-older").await;
    eventually(Duration::from_secs(10), "the older page", || async {
        (b.count(rows).await == 30).then_some(())
    })
    .await;

    // Request a restart: completed, recorded with the token's name; the second is refused by
    // the cooldown, and the page says so.
    b.fill("#rf-target", "sink:objects").await;
    b.fill("#rf-reason", "console test").await;
    b.click("#rf-request").await;
    b.wait_text("#restart-result", "sink:objects: completed")
        .await;
    b.wait_text("#restarts tr[data-status=\"completed\"]", "sink:objects")
        .await;
    let newest = get(&env, "restarts?limit=1").await;
    assert_eq!(newest["restarts"][0]["target"], "sink:objects");
    assert_eq!(newest["restarts"][0]["requested_by"], "admin");
    assert_eq!(newest["restarts"][0]["reason"], "console test");
    b.screenshot(&shot("restarts")).await;
    b.click("#rf-request").await;
    let refused = b.wait_text("#restart-result", "cooldown").await;
    assert!(refused.contains("retry after"), "{refused}");
    b.find("#restarts tr[data-status=\"rejected\"]").await;
}

#[tokio::test]
async fn the_device_page_lists_commands_sends_one_and_pages_the_message_log() {
    let env = TestEnv::start(env_options("")).await;
    let cfg = fleetflow_sim::SimConfig {
        devices: 1,
        connections: 1,
        duration: Duration::from_secs(2),
        readings_per_sec: 2.0,
        status_per_sec: 1.0,
        captures_per_device: 1,
        image_bytes: 20_000,
        drain: Duration::from_secs(30),
        ..env.sim_config()
    };
    let device = fleetflow_sim::device_id(cfg.id_base, 0);
    let db = env.db().await;
    // Older history (stored before the simulator's), so that the log has more than one page
    // of 50 and the newest page holds the simulator's messages.
    db.batch_execute(&format!(
        "INSERT INTO device_publish_log (device_id, topic, direction, payload, received_at)
         SELECT '{device}', '{}/{device}/data', 'in', jsonb_build_object('type', 'reading', 'seq', i, 'note', '<b>not html</b>'),
                now() - interval '1 day' - i * interval '1 minute'
           FROM generate_series(1, 60) i;
         INSERT INTO device_commands (id, device_id, name, args, status, created_at, sent_at, completed_at, result, wire_format)
         VALUES ('c-earlier', '{device}', 'capture_now', '{{}}', 'succeeded', now() - interval '1 hour',
                 now() - interval '1 hour', now() - interval '59 minutes', '{{\"ok\": true}}', 'v1');",
        env.prefix
    ))
    .await
    .unwrap();
    let report = fleetflow_sim::run(cfg).await.unwrap();
    assert_eq!(report.captures_acked, 1);
    eventually(Duration::from_secs(10), "in and out log rows", || async {
        (env.scalar_i64(&format!(
            "SELECT count(DISTINCT direction) FROM device_publish_log WHERE device_id = '{device}'"
        ))
        .await
            == 2)
            .then_some(())
    })
    .await;

    let b = Browser::start().await;
    b.login(&env.http, TOKEN).await;
    b.goto(&format!("{}/#device={device}", env.http)).await;
    b.wait_text("#commands tr[data-command=\"c-earlier\"]", "succeeded")
        .await;
    // The message log: the newest 50, both directions, payloads as text.
    b.find("#messages tr[data-direction=\"out\"]").await;
    b.find("#messages tr[data-direction=\"in\"]").await;
    let rows = "#messages tr[data-message]";
    assert_eq!(b.count(rows).await, 50);
    let page = b.source().await;
    assert!(page.contains("<pre class=\"payload\">"), "{page}");
    assert!(!page.contains("<b>not html</b>"), "payloads are text");

    // Send a command with the form: sent, and listed.
    b.fill("#cmd-name", "capture_now").await;
    b.fill("#cmd-args", "{\"resolution\": \"vga\"}").await;
    b.click("#cmd-send").await;
    let sent = b.wait_text("#command-result", "sent").await;
    let id = sent.split_whitespace().next().unwrap().to_string();
    assert!(id.starts_with("c-"), "{sent}");
    b.wait_text(&format!("#commands tr[data-command=\"{id}\"]"), "sent")
        .await;
    let cmds = get(&env, &format!("devices/{device}/commands")).await;
    assert_eq!(cmds["commands"][0]["command_id"], id.as_str());
    assert_eq!(cmds["commands"][0]["args"]["resolution"], "vga");
    b.script("document.getElementById('commands-box').previousElementSibling.scrollIntoView()")
        .await;
    b.screenshot(&shot("commands")).await;

    // Older pages of the log, down to the first message.
    while b.source().await.contains("id=\"messages-older\"") {
        let before = b.count(rows).await;
        b.click("#messages-older").await;
        // A full last page still offers "Older", which then finds nothing and goes away.
        eventually(Duration::from_secs(10), "an older page", || async {
            (b.count(rows).await > before || !b.source().await.contains("id=\"messages-older\""))
                .then_some(())
        })
        .await;
    }
    // Every row up to the newest the page loaded with (later ones, such as the command's own
    // publish, are not on it).
    let newest = b
        .script(
            "return Number(document.querySelector('#messages tr[data-message]').dataset.message)",
        )
        .await
        .as_i64()
        .unwrap();
    let shown = env
        .scalar_i64(&format!(
            "SELECT count(*) FROM device_publish_log WHERE device_id = '{device}' AND id <= {newest}"
        ))
        .await;
    assert!(shown > 50, "{shown}");
    assert_eq!(b.count(rows).await, shown);
    assert!(b.source().await.contains("not html"));
    b.script("document.getElementById('messages-box').previousElementSibling.scrollIntoView()")
        .await;
    b.screenshot(&shot("messages")).await;
}
