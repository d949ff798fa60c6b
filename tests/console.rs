//! The operator console in a real browser (Debian's headless Chromium): a device appears after
//! the simulator sends data, its page shows thumbnails generated server-side, and a screenshot
//! of that page is saved under `target/` (`scripts/screenshots` refreshes `docs/console.png`).
//! The device page plots the device's sensor trends and the fleet page the captures per day
//! (uPlot, served from the binary); `docs/console-trends.png` is the device page with its plots.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{eventually, Options, TestEnv};
use fleetflow_sim::SimConfig;

const TOKEN: &str = "console-test-token-0123456789";

fn chromium(args: &[&str]) -> String {
    let profile = tempfile::tempdir().unwrap();
    let out = Command::new("chromium")
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--virtual-time-budget=8000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("chromium is not installed ({e}); `scripts/test` installs Debian's chromium package"));
    assert!(
        out.status.success(),
        "chromium failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[tokio::test]
async fn the_console_lists_devices_and_shows_capture_thumbnails_in_a_real_browser() {
    let env = TestEnv::start(Options {
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\n"),
        ..Options::default()
    })
    .await;
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

    // A day of history for the first device (a reading every 10 minutes, status every 30) and
    // captures on earlier days, so that the plots have more than the simulator's few seconds.
    let db = env.db().await;
    db.batch_execute(&format!(
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

    // The list page: every device appears, with its actor state.
    let list = chromium(&["--dump-dom", &format!("{}/#token={TOKEN}", env.http)]);
    for n in 0..4 {
        let id = format!("{:012X}", u64::from_str_radix(&first, 16).unwrap() + n);
        assert!(
            list.contains(&format!("data-device=\"{id}\"")),
            "device {id} is not listed:\n{list}"
        );
    }
    assert!(list.contains("state-running"));
    // The MQTT sources, with a reconnect button each.
    assert!(list.contains("data-source=\"default\""), "{list}");
    assert!(list.contains("restartTarget('source:default')"));
    // Captures per day over the last 14 days, drawn by uPlot.
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

    // The device page: thumbnails generated server-side and loaded by the browser.
    let url = format!("{}/#token={TOKEN}&device={first}", env.http);
    let page = chromium(&["--dump-dom", &url]);
    assert!(
        page.contains(&format!("id=\"device-title\">{first}<")),
        "{page}"
    );
    // The wake schedule editor, showing the default the engine answers with.
    assert!(
        page.contains("id=\"schedule-form\" data-mode=\"per_day\""),
        "{page}"
    );
    assert!(page.contains("default (never configured)"), "{page}");
    // Set through the API: the page shows it (and a positive control that the form follows
    // the stored schedule rather than always rendering the default).
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
    let page = chromium(&["--dump-dom", &url]);
    assert!(
        page.contains("id=\"schedule-form\" data-mode=\"every_minutes\""),
        "{page}"
    );
    assert!(page.contains("value=\"Europe/Paris\""), "{page}");
    let loaded = page.matches("data-loaded=\"160\"").count();
    assert_eq!(loaded, 2, "two 160-px thumbnails loaded:\n{page}");
    // The sensor trends: six uPlot charts with their titles, each with points.
    for (key, title) in [
        ("temperature_c", "Temperature (°C)"),
        ("humidity_pct", "Humidity (%)"),
        ("pressure_hpa", "Pressure (hPa)"),
        ("gas_kohm", "Gas (kΩ)"),
        ("battery_v", "Battery (V)"),
        ("rssi", "RSSI (dBm)"),
    ] {
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
    assert!(page.matches("<canvas").count() >= 6, "{page}");

    // A wrong token gets the login form back.
    let denied = chromium(&["--dump-dom", &format!("{}/#token=wrong", env.http)]);
    assert!(denied.contains("The token was refused."), "{denied}");

    // Under target/, so that a test run leaves the work tree clean; `scripts/screenshots`
    // copies it to docs/.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console.png");
    chromium(&[
        "--window-size=1280,800",
        &format!("--screenshot={}", shot.display()),
        &url,
    ]);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "screenshot written"
    );
    // The device page down to its plots.
    let shot = Path::new(env!("CARGO_TARGET_TMPDIR")).join("console-trends.png");
    chromium(&[
        "--window-size=1280,1500",
        &format!("--screenshot={}", shot.display()),
        &url,
    ]);
    let png = std::fs::read(&shot).unwrap();
    assert!(
        png.starts_with(b"\x89PNG") && png.len() > 10_000,
        "trends screenshot written"
    );
}
