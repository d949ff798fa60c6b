//! Prometheus config, alert rules and Alertmanager: `promtool check config`, `promtool check
//! rules`, the rule unit tests in `dashboards/alerts_test.yml`, and `amtool check-config` on
//! `dashboards/alertmanager.yml` (Debian's `prometheus` package ships promtool and
//! `prometheus-alertmanager` ships amtool; `scripts/services up` and `scripts/test` install them
//! when missing). Also, without those tools: every metric and every `code` label value that a
//! dashboard or an alert uses is one `docs/metrics.md` documents. And against a live engine: the
//! gauges the alerts read, and the device listings their annotations link to.

use crate::common;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use common::{eventually, metric_value, random_device, Options, TestEnv};
use serde_json::Value;
use yaml_rust2::{Yaml, YamlLoader};

/// Runs `tool` in `dashboards/`; panics with its output unless it succeeds, or with `install`
/// when it is missing.
fn run(tool: &str, install: &str, args: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let out = Command::new(tool)
        .args(args)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("{tool} is not installed ({e}); {install}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{tool} {args:?} failed:\n{text}");
    text
}

fn promtool(args: &[&str]) -> String {
    run(
        "promtool",
        "run `scripts/test` or `scripts/services up`, which install Debian's prometheus package",
        args,
    )
}

fn amtool(args: &[&str]) -> String {
    run(
        "amtool",
        "run `scripts/services up`, which installs Debian's prometheus-alertmanager package (it ships amtool)",
        args,
    )
}

#[test]
fn the_prometheus_config_and_alert_rules_pass_promtool_check() {
    promtool(&["check", "config", "prometheus.yml"]);
    let rules = promtool(&["check", "rules", "alerts.yml"]);
    assert!(rules.contains("10 rules found"), "{rules}");
}

#[test]
fn the_alert_rule_unit_tests_pass() {
    let out = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}

fn yaml(path: &str) -> Yaml {
    let text = read(path);
    YamlLoader::load_from_str(&text)
        .unwrap_or_else(|e| panic!("{path}: {e}"))
        .remove(0)
}

fn strs(y: &Yaml) -> Vec<String> {
    y.as_vec()
        .map(|v| {
            v.iter()
                .filter_map(|s| s.as_str().map(String::from))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn the_alertmanager_config_passes_amtool_and_sends_every_alert_to_one_webhook() {
    let out = amtool(&["check-config", "alertmanager.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let am = yaml("dashboards/alertmanager.yml");
    let receiver = am["route"]["receiver"]
        .as_str()
        .expect("the route has a default receiver");
    assert!(
        am["route"]["routes"].is_badvalue(),
        "no sub-route sends alerts elsewhere"
    );
    let receivers = am["receivers"].as_vec().expect("receivers");
    assert_eq!(receivers.len(), 1, "one receiver");
    let r = &receivers[0];
    assert_eq!(r["name"].as_str(), Some(receiver));
    let hooks = r["webhook_configs"]
        .as_vec()
        .expect("the receiver is a webhook");
    assert_eq!(hooks.len(), 1);
    let url = hooks[0]["url"].as_str().expect("the webhook has a url");
    assert!(
        url.starts_with("http://") || url.starts_with("https://"),
        "{url}"
    );
    assert_eq!(hooks[0]["send_resolved"].as_bool(), Some(true));
}

#[test]
fn prometheus_sends_alerts_to_the_compose_alertmanager_and_promtool_accepts_the_alerting_section() {
    let out = promtool(&["check", "config", "prometheus.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
    let prom = yaml("dashboards/prometheus.yml");
    let targets = strs(&prom["alerting"]["alertmanagers"][0]["static_configs"][0]["targets"]);
    assert_eq!(targets, ["alertmanager:9093"]);
    let compose = yaml("docker-compose.yml");
    let svc = &compose["services"]["alertmanager"];
    assert!(
        svc["image"]
            .as_str()
            .is_some_and(|i| i.starts_with("prom/alertmanager")),
        "the compose file runs prom/alertmanager as `alertmanager`"
    );
    assert!(
        strs(&svc["volumes"])
            .iter()
            .any(|v| v == "./dashboards/alertmanager.yml:/etc/alertmanager/alertmanager.yml:ro"),
        "it reads dashboards/alertmanager.yml"
    );
}

fn read(path: &str) -> String {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    std::fs::read_to_string(root.join(path)).unwrap_or_else(|e| panic!("{path}: {e}"))
}

/// The dashboards, the alert rules and their unit tests, as (path, text).
fn queries() -> Vec<(String, String)> {
    let mut files = vec![
        "dashboards/alerts.yml".to_string(),
        "dashboards/alerts_test.yml".to_string(),
    ];
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards/grafana");
    for entry in std::fs::read_dir(&dir).expect("dashboards/grafana") {
        let name = entry.expect("a directory entry").file_name();
        files.push(format!("dashboards/grafana/{}", name.to_string_lossy()));
    }
    files.into_iter().map(|f| (f.clone(), read(&f))).collect()
}

/// Every `fleetflow_...` name in a text.
fn metric_names(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("fleetflow_") {
        let tail = &rest[at..];
        let end = tail
            .find(|c: char| !(c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'))
            .unwrap_or(tail.len());
        out.push(tail[..end].to_string());
        rest = &tail[end..];
    }
    out
}

/// The values a `code` matcher names: `code="2203"`, or `code=~"2202|100[0-4]"` (alternatives of
/// literal codes, each with at most one trailing digit range).
fn code_values(text: &str) -> Vec<String> {
    let text = text.replace("\\\"", "\"");
    let mut out = Vec::new();
    for (op, _) in text.match_indices("code=") {
        let tail = &text[op + 5..];
        let tail = tail.strip_prefix('~').unwrap_or(tail);
        let Some(body) = tail.strip_prefix('"') else {
            continue;
        };
        let body = &body[..body.find('"').expect("a closing quote")];
        for alt in body.split('|') {
            match alt.split_once('[') {
                Some((head, range)) => {
                    let range = range.strip_suffix(']').expect("a digit range at the end");
                    let (lo, hi) = range.split_once('-').expect("a range such as [0-4]");
                    let (lo, hi) = (lo.parse::<u8>().unwrap(), hi.parse::<u8>().unwrap());
                    out.extend((lo..=hi).map(|d| format!("{head}{d}")));
                }
                None => out.push(alt.to_string()),
            }
        }
    }
    out
}

#[test]
fn dashboards_and_alerts_use_only_documented_metrics_and_error_codes() {
    let spec = read("docs/metrics.md");
    let documented: Vec<String> = metric_names(&spec);
    let (_, labels) = spec
        .split_once("## The `code` label")
        .expect("docs/metrics.md documents the code label");
    let table = labels.split("\n## ").next().unwrap_or(labels);
    let codes: Vec<String> = table
        .lines()
        .filter(|l| l.starts_with("| `"))
        .flat_map(|l| {
            let first = l.split('|').nth(1).unwrap_or("");
            first
                .split('`')
                .filter(|t| t.len() == 4 && t.bytes().all(|b| b.is_ascii_digit()))
                .map(String::from)
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(
        codes.len(),
        22,
        "docs/metrics.md lists the 22 code labels: {codes:?}"
    );
    for (path, text) in queries() {
        for name in metric_names(&text) {
            let base = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|s| {
                    name.strip_suffix(s)
                        .filter(|b| documented.iter().any(|d| d == b))
                })
                .unwrap_or(&name);
            assert!(
                documented.iter().any(|d| d == base),
                "{path} uses {name}, which docs/metrics.md does not document"
            );
        }
        for code in code_values(&text) {
            assert!(
                codes.contains(&code),
                "{path} matches code {code}, which is not a label value of the error table"
            );
        }
    }
}

const TOKEN: &str = "alerts-test-token-0123456789abcdef";

async fn list(env: &TestEnv, query: &str) -> (u16, Value) {
    let r = reqwest::Client::new()
        .get(format!("{}/api/v1/devices?{query}", env.http))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    (r.status().as_u16(), r.json().await.unwrap())
}

fn ids(body: &Value) -> Vec<String> {
    body["devices"]
        .as_array()
        .expect("a device list")
        .iter()
        .map(|d| d["device_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test]
async fn the_alert_gauges_count_low_batteries_and_stored_bytes_and_the_linked_listings_name_those_devices(
) {
    let env = TestEnv::start(Options {
        extra: format!("[admin]\ntoken = \"{TOKEN}\"\n[alerts]\nlow_battery_v = 3.4\n"),
        env: vec![(
            "FLEETFLOW_HTTP__FLEET_STATS_INTERVAL_MS".into(),
            "200".into(),
        )],
        ..Options::default()
    })
    .await;
    let (low, silent, fine) = (random_device(), random_device(), random_device());
    let db = env.db().await;
    db.execute(
        "INSERT INTO devices (device_id, battery_v, last_seen_at) VALUES
             ($1, 3.2, now()), ($2, 3.9, now() - interval '2 days'), ($3, NULL, now())",
        &[&low, &silent, &fine],
    )
    .await
    .unwrap();
    db.execute(
        "INSERT INTO captures (device_id, device_capture_id, captured_at, image_bytes, total_chunks, chunk_size, ingest_status)
         VALUES ($1, 'img_1', now(), 1000, 1, 1024, 'stored'), ($1, 'img_2', now(), 500, 1, 1024, 'failed'),
                ($2, 'img_3', now(), 2000, 2, 1024, 'stored')",
        &[&low, &silent],
    )
    .await
    .unwrap();

    let text = eventually(
        Duration::from_secs(20),
        "the fleet gauges to be refreshed",
        || async {
            let m = env.metrics().await;
            (metric_value(&m, "fleetflow_captures_stored_bytes") == 3000.0).then_some(m)
        },
    )
    .await;
    assert_eq!(
        metric_value(&text, "fleetflow_devices_low_battery{below_v=\"3.4\"}"),
        1.0,
        "only the device at 3.2 V is low; no reading is not low:\n{text}"
    );
    assert_eq!(
        metric_value(&text, "fleetflow_devices_last_seen{bucket=\"gt_24h\"}"),
        1.0
    );
    for source in ["default", "admin"] {
        assert_eq!(
            metric_value(
                &text,
                &format!("fleetflow_mqtt_connected{{source=\"{source}\"}}")
            ),
            1.0,
            "source {source} is connected:\n{text}"
        );
    }
    assert!(
        !text
            .lines()
            .any(|l| l.starts_with("fleetflow_mqtt_connected ")),
        "no unlabelled series that would read as a disconnected source:\n{text}"
    );

    let (code, body) = list(&env, "battery_below=3.4").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(ids(&body), [low.as_str()]);
    assert_eq!(body["total"], 1);
    let (code, body) = list(&env, "not_seen_for_s=86400").await;
    assert_eq!(code, 200, "{body}");
    assert_eq!(ids(&body), [silent.as_str()]);
    assert_eq!(body["total"], 1);
    assert_eq!(ids(&list(&env, "limit=10").await.1).len(), 3);
    let (code, body) = list(&env, "not_seen_for_s=-1").await;
    assert_eq!(code, 400, "{body}");
    assert_eq!(body["error"]["field"], "not_seen_for_s");
}
