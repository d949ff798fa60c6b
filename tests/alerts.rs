//! Prometheus config and alert rules: `promtool check config`, `promtool check rules` and the
//! rule unit tests in `dashboards/alerts_test.yml` (Debian's `prometheus` package ships promtool;
//! `scripts/test` installs it when missing).

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
    assert!(rules.contains("6 rules found"), "{rules}");
}

#[test]
fn the_alert_rule_unit_tests_pass() {
    let out = promtool(&["test", "rules", "alerts_test.yml"]);
    assert!(out.contains("SUCCESS"), "{out}");
}
