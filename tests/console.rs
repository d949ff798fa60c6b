//! The operator console in a real browser (Debian's headless Chromium over WebDriver,
//! `common::browser::Browser`), signed in through its login form: a device appears after the
//! simulator sends data, its page shows thumbnails generated server-side, and screenshots of that
//! page are saved under `target/` (`scripts/screenshots` refreshes `docs/console.png`). The
//! device page plots the device's sensor trends and the fleet page the captures per day (uPlot,
//! served from the binary); `docs/console-trends.png` is the device page with its plots. A wrong
//! token and a token in the URL do not sign in; the page has no inline script or handler, and its
//! CSP allows scripts from the server only.

use crate::common;

use std::path::Path;
use std::time::Duration;

use common::browser::Browser;
use common::{eventually, Options, TestEnv};
use fleetflow_sim::SimConfig;

const TOKEN: &str = "console-test-token-0123456789";

fn options() -> Options {
    Options {
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\n"),
        ..Options::default()
    }
}

/// Four simulated devices, then a day of history for the first (a reading every 10 minutes,
/// status every 30) and captures on earlier days, so that the plots have more than the
/// simulator's few seconds. Returns the first device's id.
async fn fleet_with_history(env: &TestEnv) -> String {
    let cfg = SimConfig {
        devices: 4,
        connections: 1,
        duration: Duration::from_secs(2),
        readings_per_sec: 2.0,
        status_per_sec: 1.0,
        captures_per_device: 2,
        image_bytes: 40_000,
        drain: Duration::from_secs(30),
        ..env.sim_config()
    };
    let first = fleetflow_sim::device_id(cfg.id_base, 0);
    let report = fleetflow_sim::run(cfg).await.unwrap();
    assert_eq!(report.captures_acked, 8);
    eventually(Duration::from_secs(10), "status rows", || async {
        (env.scalar_i64("SELECT count(*) FROM devices WHERE status = 'online'")
            .await
            == 4)
            .then_some(())
    })
    .await;
    env.db().await.batch_execute(&format!(
        "INSERT INTO sensor_readings (device_id, seq, temperature_c, humidity_pct, pressure_hpa, gas_kohm, measured_at)
         SELECT '{first}', 1000000 + i, 21 + 4 * sin(i * pi() / 72), 55 + 10 * cos(i * pi() / 72),
                1012 + 3 * sin(i * pi() / 40), 120 + 30 * sin(i * pi() / 30), now() - i * interval '10 minutes'
           FROM generate_series(1, 143) i;
         INSERT INTO device_status (device_id, status, battery_v, rssi, created_at)
         SELECT '{first}', 'online', 4.1 - i * 0.008, -60 - (i % 9), now() - i * interval '30 minutes'
           FROM generate_series(1, 47) i;
         INSERT INTO captures (device_id, device_capture_id, captured_at, image_bytes, total_chunks, chunk_size, ingest_status)
         SELECT '0A0B0C0D0E0F', 'hist' || i, now() - (i % 13 + 1) * interval '1 day',
                1000, 1, 1000, CASE WHEN i % 7 = 0 THEN 'failed' ELSE 'stored' END
           FROM generate_series(1, 60) i;"
    ))
    .await
    .unwrap();
    first
}

/// Whether the console shows its login form rather than the app.
async fn signed_out(b: &Browser) -> bool {
    b.script(
        "return !document.getElementById('login').hidden && document.getElementById('app').hidden",
    )
    .await
    .as_bool()
    .unwrap()
}

/// How many requests to the admin API the page has made and seen answered.
async fn api_calls(b: &Browser) -> i64 {
    b.script("return performance.getEntriesByType('resource').filter((e) => new URL(e.name).pathname.startsWith('/api/')).length")
        .await
        .as_i64()
        .unwrap()
}

/// How many elements of the rendered page carry an `on…` attribute (an inline handler).
async fn inline_handlers(b: &Browser) -> i64 {
    b.script("return [...document.querySelectorAll('*')].filter((e) => [...e.attributes].some((a) => a.name.startsWith('on'))).length")
        .await
        .as_i64()
        .unwrap()
}

/// A wrong token typed into the form: refused, the form is back, no device data is shown, and
/// the page stops calling the API.
async fn wrong_token_is_refused(b: &Browser, http: &str) {
    b.goto(&format!("{http}/")).await;
    assert!(signed_out(b).await);
    b.fill("#token", "wrong-token-0123456789").await;
    b.click("#loginform button[type=submit]").await;
    b.wait_text("#loginerr", "The token was refused.").await;
    // Longer than the page's 2 s refresh: one call, refused, and none after it.
    tokio::time::sleep(Duration::from_millis(2500)).await;
    assert!(signed_out(b).await, "{}", b.source().await);
    assert_eq!(api_calls(b).await, 1, "no more calls once refused");
    assert_eq!(b.count("[data-device], [data-source], #cards > *").await, 0);
    let stored = b
        .script("return sessionStorage.getItem('fleetflow-token')")
        .await;
    assert!(stored.is_null(), "{stored}");
}

/// The list page: every device with its actor state, the MQTT sources with a reconnect button
/// each (which works: one delegated listener, no inline handler), and the captures per day.
async fn list_page(b: &Browser, first: &str) {
    for n in 0..4 {
        let id = format!("{:012X}", u64::from_str_radix(first, 16).unwrap() + n);
        b.find(&format!("#devices tr[data-device=\"{id}\"]")).await;
    }
    b.find("[data-plot=\"captures\"] .uplot.fleet-captures")
        .await;
    let list = b.source().await;
    assert!(list.contains("state-running"), "{list}");
    assert!(list.contains("data-source=\"default\""), "{list}");
    assert!(
        list.contains("data-restart-target=\"source:default\""),
        "{list}"
    );
    assert!(
        list.contains("class=\"uplot fleet-captures "),
        "no captures chart:\n{list}"
    );
    assert!(list.contains("Captures per day (last 14 days)"), "{list}");
    assert!(
        list.contains("data-plot=\"captures\" data-points=\"15\"")
            || list.contains("data-plot=\"captures\" data-points=\"14\""),
        "{list}"
    );
    assert!(!list.contains("onclick"), "{list}");
    assert_eq!(inline_handlers(b).await, 0);
    b.click("#sources tr[data-source=\"default\"] button[data-restart-target]")
        .await;
    b.wait_text("#msg", "source:default restarted").await;
}

/// The device page's sensor trends: six uPlot charts with their titles, each with points.
async fn trends(b: &Browser) {
    for (key, title) in [
        ("temperature_c", "Temperature (°C)"),
        ("humidity_pct", "Humidity (%)"),
        ("pressure_hpa", "Pressure (hPa)"),
        ("gas_kohm", "Gas (kΩ)"),
        ("battery_v", "Battery (V)"),
        ("rssi", "RSSI (dBm)"),
    ] {
        b.find(&format!(".uplot.trend-{key}")).await;
        let page = b.source().await;
        assert!(
            page.contains(&format!("class=\"uplot trend-{key} ")),
            "no {key} chart:\n{page}"
        );
        assert!(
            page.contains(&format!("<div class=\"u-title\">{title}</div>")),
            "no title {title}:\n{page}"
        );
        let at = page
            .find(&format!("data-plot=\"{key}\" data-points=\""))
            .unwrap();
        let points: usize = page[at..]
            .split('"')
            .nth(3)
            .and_then(|n| n.parse().ok())
            .unwrap();
        // A reading every 10 minutes over 24 h in 5-minute buckets (143), plus the simulator's.
        assert!(points >= 40, "{key}: {points} points");
    }
    assert!(b.count("#trends canvas").await >= 6);
}

/// The device page, first with the default wake schedule, then (after a reload) with one set
/// through the API: a positive control that the form follows the stored schedule.
async fn device_page(b: &Browser, env: &TestEnv, first: &str) {
    b.goto(&format!("{}/#device={first}", env.http)).await;
    b.wait_text("#device-title", first).await;
    b.find("#schedule-form[data-mode=\"per_day\"]").await;
    b.wait_text("#sched-next", "default (never configured)")
        .await;
    let put = reqwest::Client::new()
        .put(format!("{}/api/v1/devices/{first}/schedule", env.http))
        .bearer_auth(TOKEN)
        .json(
            &serde_json::json!({"mode": "every_minutes", "minutes": 7, "timezone": "Europe/Paris"}),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(put.status(), 200);
    b.refresh().await;
    b.find("#schedule-form[data-mode=\"every_minutes\"]").await;
    assert!(b.source().await.contains("value=\"Europe/Paris\""));
    // Thumbnails generated server-side and loaded by the browser.
    b.wait_count("#thumbs img[data-loaded=\"160\"]", 2).await;
    trends(b).await;
    assert_eq!(b.count("button[data-restart-device]").await, 1);
    assert_eq!(inline_handlers(b).await, 0);
}

#[tokio::test]
async fn the_console_lists_devices_and_shows_capture_thumbnails_in_a_real_browser() {
    let env = TestEnv::start(options()).await;
    let first = fleet_with_history(&env).await;
    let b = Browser::start().await;
    wrong_token_is_refused(&b, &env.http).await;
    b.login(&env.http, TOKEN).await;
    list_page(&b, &first).await;
    device_page(&b, &env, &first).await;

    // Under target/, so that a test run leaves the work tree clean; `scripts/screenshots`
    // copies them to docs/.
    b.script("window.scrollTo(0, 0)").await;
    b.viewport(1280, 800).await;
    b.screenshot(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png"))
        .await;
    // The device page down to its plots.
    b.viewport(1280, 1500).await;
    b.screenshot(&Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-trends.png"))
        .await;
}

#[tokio::test]
async fn a_token_in_the_url_does_not_sign_in() {
    let env = TestEnv::start(options()).await;
    let b = Browser::start().await;
    for hash in [
        format!("#device=0A0B0C0D0E0F&token={TOKEN}"),
        format!("#/products?token={TOKEN}"),
        format!("#token={TOKEN}"),
    ] {
        // Loaded afresh (a hash change alone is no page load).
        b.goto(&format!("{}/{hash}", env.http)).await;
        b.refresh().await;
        tokio::time::sleep(Duration::from_millis(1000)).await;
        assert!(signed_out(&b).await, "{hash}:\n{}", b.source().await);
        assert_eq!(api_calls(&b).await, 0, "{hash}");
        assert_eq!(b.text("#conn").await, "", "{hash}");
        let stored = b
            .script("return sessionStorage.getItem('fleetflow-token')")
            .await;
        assert!(stored.is_null(), "{hash}: {stored}");
    }
    // Positive control: the same page signs in through its form, and shows the app.
    b.fill("#token", TOKEN).await;
    b.click("#loginform button[type=submit]").await;
    b.wait_text("#conn", "MQTT").await;
    b.find("#devices").await;
    assert!(!signed_out(&b).await);
    assert!(api_calls(&b).await > 0);
}

/// Inline event handler attributes (and HTML strings that would make them).
fn assert_no_inline_handlers(what: &str, text: &str) {
    let lower = text.to_ascii_lowercase();
    for (at, _) in lower.match_indices("on") {
        let before = lower[..at].chars().next_back();
        let name: String = lower[at..]
            .chars()
            .take_while(char::is_ascii_lowercase)
            .collect();
        let after = lower[at + name.len()..].chars().next();
        let attribute = before.is_some_and(|c| c.is_whitespace() || c == '"' || c == '\'');
        assert!(
            !(attribute && name.len() > 2 && after == Some('=')),
            "{what}: an inline handler `{name}=` at byte {at}"
        );
    }
}

#[tokio::test]
async fn the_console_has_no_inline_script_or_handler_and_its_csp_allows_scripts_from_self_only() {
    let env = TestEnv::start(options()).await;
    let r = reqwest::get(format!("{}/", env.http)).await.unwrap();
    assert_eq!(r.status(), 200);
    let csp = r.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_string();
    let script_src: Vec<&str> = csp
        .split(';')
        .map(str::trim)
        .find_map(|d| d.strip_prefix("script-src "))
        .unwrap_or_else(|| panic!("no script-src: {csp}"))
        .split_whitespace()
        .collect();
    assert_eq!(script_src, ["'self'"], "{csp}");
    let html = r.text().await.unwrap();
    assert_no_inline_handlers("/", &html);
    // Every script is a file of the server's, with no body.
    for tag in html.split("<script").skip(1) {
        let (open, rest) = tag.split_once('>').unwrap();
        assert!(open.starts_with(" src=\"/"), "<script{open}>");
        assert!(rest.starts_with("</script>"), "an inline script: {rest}");
    }
    assert!(html.contains("<script src=\"/console/main.js\"></script>"));
    for path in [
        "/console/pages.js",
        "/console/device.js",
        "/console/main.js",
    ] {
        let r = reqwest::get(format!("{}{path}", env.http)).await.unwrap();
        assert_eq!(r.status(), 200, "{path}");
        assert!(r.headers()["content-type"]
            .to_str()
            .unwrap()
            .starts_with("text/javascript"));
        let js = r.text().await.unwrap();
        assert_no_inline_handlers(path, &js);
        // The token is read from the login form only, never from the URL.
        assert!(
            !js.contains("token=") && !js.contains("get(\"token\")"),
            "{path}"
        );
    }
}
