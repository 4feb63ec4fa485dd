//! The Prometheus alerting rules (deploy/prometheus): valid, unit-tested with `promtool test
//! rules` (every alert both firing and not firing), and the PrometheusRule for the operator
//! carries exactly the same groups. The rules firing in a real Prometheus against memtrace after
//! a real kill: tests/tests/export.rs, `prometheus_scrapes_the_kill_counter`.

use std::{path::PathBuf, process::Command};

use memtrace_tests::servers::tool_available;

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../deploy/prometheus")
}

fn read(name: &str) -> String {
    std::fs::read_to_string(dir().join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

fn promtool(args: &[&str]) -> String {
    let out = Command::new("promtool")
        .args(args)
        .current_dir(dir())
        .output()
        .expect("run promtool");
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "promtool {args:?}:\n{said}");
    said
}

fn alert_names(rules: &str) -> Vec<String> {
    rules
        .lines()
        .filter_map(|l| l.trim().strip_prefix("- alert: "))
        .map(str::to_owned)
        .collect()
}

#[test]
fn rules_pass_promtool_unit_tests() {
    if !tool_available("rules_pass_promtool_unit_tests", "promtool") {
        return;
    }
    let said = promtool(&["check", "rules", "memtrace-rules.yaml"]);
    assert!(said.contains("SUCCESS: 5 rules found"), "{said}");
    let said = promtool(&["test", "rules", "memtrace-rules.test.yaml"]);
    assert!(said.contains("SUCCESS"), "{said}");

    // Every alert has a case where it fires and one where it must not.
    let tests = read("memtrace-rules.test.yaml");
    let lines: Vec<&str> = tests.lines().map(str::trim).collect();
    for name in alert_names(&read("memtrace-rules.yaml")) {
        let cases: Vec<&str> = lines
            .windows(2)
            .filter(|w| w[0] == format!("alertname: {name}"))
            .map(|w| w[1])
            .collect();
        assert!(cases.contains(&"exp_alerts: []"), "{name}: no not-firing case");
        assert!(cases.contains(&"exp_alerts:"), "{name}: no firing case");
    }
}

/// The PrometheusRule: its header, then memtrace-rules.yaml's groups under `spec:`.
fn prometheus_rule(rules: &str) -> String {
    let mut out = String::from(
        "# Generated from memtrace-rules.yaml: the same groups, as a PrometheusRule for the\n\
         # Prometheus Operator. Do not edit: tests/tests/rules.rs checks they are equal, and\n\
         # `MEMTRACE_BLESS=1 cargo test -p memtrace-tests --test rules` rewrites this file.\n\
         apiVersion: monitoring.coreos.com/v1\n\
         kind: PrometheusRule\n\
         metadata:\n  name: memtrace\n  namespace: memtrace\n  labels:\n    app.kubernetes.io/name: memtrace\n\
         spec:\n",
    );
    let groups = rules
        .find("\ngroups:")
        .map(|i| &rules[i + 1..])
        .expect("memtrace-rules.yaml has `groups:`");
    for l in groups.lines() {
        if !l.is_empty() {
            out.push_str("  ");
        }
        out.push_str(l);
        out.push('\n');
    }
    out
}

#[test]
fn prometheus_rule_carries_the_same_rules() {
    let want = prometheus_rule(&read("memtrace-rules.yaml"));
    let path = dir().join("memtrace-prometheusrule.yaml");
    if std::env::var("MEMTRACE_BLESS").is_ok_and(|v| v == "1") {
        std::fs::write(&path, &want).expect("write memtrace-prometheusrule.yaml");
    }
    let have = std::fs::read_to_string(&path).unwrap_or_default();
    assert!(
        have == want,
        "{} differs from memtrace-rules.yaml; rewrite it with \
         MEMTRACE_BLESS=1 cargo test -p memtrace-tests --test rules",
        path.display()
    );
    assert_eq!(alert_names(&have), alert_names(&read("memtrace-rules.yaml")));
}
