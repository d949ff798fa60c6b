//! The operator console in a real browser (Debian's headless Chromium): a device appears after
//! the simulator sends data, its page shows thumbnails generated server-side, and a screenshot
//! of that page is saved under `target/` (`scripts/screenshots` refreshes `docs/console.png`).

mod common;

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
}
