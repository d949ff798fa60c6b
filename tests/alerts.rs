//! Prometheus config and alert rules: `promtool check config`, `promtool check rules` and the
//! rule unit tests in `dashboards/alerts_test.yml` (Debian's `prometheus` package ships promtool;
//! `scripts/test` installs it when missing). Also, without promtool: every metric and every `code`
//! label value that a dashboard or an alert uses is one `docs/metrics.md` documents.

use std::path::Path;
use std::process::Command;

fn promtool(args: &[&str]) -> String {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("dashboards");
    let out = Command::new("promtool")
        .args(args)
        .current_dir(&dir)
        .output()
        .unwrap_or_else(|e| panic!("promtool is not installed ({e}); `scripts/test` installs Debian's prometheus package"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?} failed:\n{text}");
    text
}

#[test]
fn the_prometheus_config_and_alert_rules_pass_promtool_check() {
    promtool(&["check", "config", "prometheus.yml"]);
    let rules = promtool(&["check", "rules", "alerts.yml"]);
    assert!(rules.contains("8 rules found"), "{rules}");
}

#[test]
fn the_alert_rule_unit_tests_pass() {
    let out = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
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
