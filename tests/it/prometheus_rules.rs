//! The Prometheus alert rules (deploy/prometheus/devin-etl-rules.yml): every metric their expressions use is one
//! the service exports, every alert carries a severity, a summary and a description, they cover the conditions of
//! the webhook alerts with the shipped thresholds, and — when `promtool` is installed (`scripts/install-test-tools`)
//! — `promtool check rules` accepts them and their unit tests (devin-etl-rules.test.yml) pass.
//!
//! Without promtool the last test only prints a loud SKIPPED notice; with `DEVIN_ETL_REQUIRE_PROMTOOL=1` (as in
//! `.ci/run`) it fails instead.

use std::collections::BTreeSet;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use devin_etl::settings::Settings;
use devin_etl::telemetry::metric;
use serde_yaml::Value;

const RULES: &str = "deploy/prometheus/devin-etl-rules.yml";
const RULE_TESTS: &str = "deploy/prometheus/devin-etl-rules.test.yml";

/// The alerts that mirror the webhook alerts, and the metric each must be built on.
const WEBHOOK_CONDITIONS: &[(&str, &str)] = &[
    ("DevinEtlSourceFailing", metric::RUNS),
    ("DevinEtlStale", metric::WATERMARK_LAG),
    ("DevinEtlReconcileRefused", metric::RECONCILE_REFUSED),
    ("DevinEtlSchemaDrift", metric::SCHEMA_DRIFT_NEW),
];

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

fn yaml(relative: &str) -> Value {
    let text = std::fs::read_to_string(repo().join(relative)).unwrap_or_else(|e| panic!("{relative}: {e}"));
    serde_yaml::from_str(&text).unwrap_or_else(|e| panic!("{relative} does not parse: {e}"))
}

/// Every rule of every group of the rules file.
fn rules() -> Vec<Value> {
    let file = yaml(RULES);
    let groups = file["groups"].as_sequence().unwrap_or_else(|| panic!("{RULES}: no groups"));
    groups.iter().flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default()).collect()
}

fn alerts() -> Vec<(String, Value)> {
    rules().into_iter().filter_map(|r| Some((r["alert"].as_str()?.to_owned(), r))).collect()
}

fn expr(rule: &Value) -> String {
    rule["expr"].as_str().unwrap_or_else(|| panic!("a rule without expr: {rule:?}")).to_owned()
}

/// PromQL words that are not metric names: functions, aggregations, operators, modifiers.
const PROMQL_WORDS: &[&str] = &[
    "sum",
    "min",
    "max",
    "avg",
    "count",
    "stddev",
    "stdvar",
    "topk",
    "bottomk",
    "quantile",
    "count_values",
    "group",
    "by",
    "without",
    "on",
    "ignoring",
    "group_left",
    "group_right",
    "and",
    "or",
    "unless",
    "offset",
    "bool",
    "atan2",
    "rate",
    "irate",
    "increase",
    "delta",
    "idelta",
    "deriv",
    "changes",
    "resets",
    "absent",
    "absent_over_time",
    "present_over_time",
    "avg_over_time",
    "min_over_time",
    "max_over_time",
    "sum_over_time",
    "count_over_time",
    "last_over_time",
    "quantile_over_time",
    "histogram_quantile",
    "time",
    "timestamp",
    "vector",
    "scalar",
    "abs",
    "ceil",
    "floor",
    "round",
    "clamp",
    "clamp_min",
    "clamp_max",
    "label_replace",
    "label_join",
    "sort",
    "sort_desc",
    "predict_linear",
    "day_of_week",
    "hour",
    "minute",
    "inf",
    "nan",
];

/// The metric names a PromQL expression selects: its identifiers, leaving out quoted strings, label matchers
/// (`{…}`), label lists of `by`/`without`/`on`/`ignoring`/`group_left`/`group_right`, durations (`[50m]`,
/// `offset 1h`) and the language's own words.
pub(crate) fn promql_metric_names(expr: &str) -> BTreeSet<String> {
    let chars: Vec<char> = expr.chars().collect();
    let mut names = BTreeSet::new();
    let mut previous_word = String::new();
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        if c == '"' || c == '\'' || c == '`' {
            // A string: skip to its closing quote (backslash escapes inside).
            i += 1;
            while i < chars.len() && chars[i] != c {
                i += if chars[i] == '\\' { 2 } else { 1 };
            }
            i += 1;
        } else if c == '{' || c == '[' || (c == '(' && label_list_follows(&previous_word)) {
            // Label matchers, a range or subquery duration, or a list of label names.
            let close = match c {
                '{' => '}',
                '[' => ']',
                _ => ')',
            };
            while i < chars.len() && chars[i] != close {
                i += 1;
            }
            i += 1;
            previous_word.clear();
        } else if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
            let start = i;
            while i < chars.len() && (chars[i].is_ascii_alphanumeric() || chars[i] == '_' || chars[i] == ':') {
                i += 1;
            }
            let word: String = chars[start..i].iter().collect();
            let is_number_or_duration = word.starts_with(|c: char| c.is_ascii_digit());
            if !is_number_or_duration && !PROMQL_WORDS.contains(&word.to_ascii_lowercase().as_str()) {
                names.insert(word.clone());
            }
            previous_word = word;
        } else {
            if !c.is_whitespace() {
                previous_word.clear();
            }
            i += 1;
        }
    }
    names
}

fn label_list_follows(word: &str) -> bool {
    ["by", "without", "on", "ignoring", "group_left", "group_right"].contains(&word.to_ascii_lowercase().as_str())
}

/// A name the service exports (a histogram's series carry a suffix), or `up`, which Prometheus records per target.
pub(crate) fn is_known_metric(name: &str) -> bool {
    let base = ["_bucket", "_sum", "_count"].iter().find_map(|s| name.strip_suffix(s)).unwrap_or(name);
    name == "up" || metric::ALL.contains(&name) || base == metric::RUN_DURATION
}

#[test]
fn the_promql_metric_extractor_skips_labels_functions_strings_and_durations() {
    let names = promql_metric_names(
        r#"sum by (job, source) (increase(devin_etl_runs_total{status="failed", mode=~"a|b"}[50m])) >= 3
           unless on (job, source) (devin_etl_lock_lost_total offset 1h) or absent(up{job="devin-etl"}) > 1e3
           or histogram_quantile(0.9, rate(devin_etl_run_duration_seconds_bucket[5m:1m])) and vector(1)"#,
    );
    let expected: BTreeSet<String> =
        ["devin_etl_runs_total", "devin_etl_lock_lost_total", "up", "devin_etl_run_duration_seconds_bucket"]
            .map(String::from)
            .into();
    assert_eq!(names, expected);
    assert!(names.iter().all(|n| is_known_metric(n)));
    assert!(!is_known_metric("devin_etl_no_such_metric_total"));
}

#[test]
fn every_rule_uses_exported_metrics_and_every_alert_has_severity_summary_and_description() {
    let rules = rules();
    assert!(!rules.is_empty(), "{RULES} has no rules");
    let recorded: BTreeSet<String> = rules.iter().filter_map(|r| r["record"].as_str().map(String::from)).collect();
    for rule in &rules {
        let name = rule["alert"].as_str().or(rule["record"].as_str()).unwrap_or_else(|| panic!("{rule:?}"));
        let names = promql_metric_names(&expr(rule));
        assert!(!names.is_empty(), "{name}: its expr selects no metric");
        for metric_name in names {
            assert!(
                is_known_metric(&metric_name) || recorded.contains(&metric_name),
                "{name} uses {metric_name}, which devin-etl does not export (devin_etl::telemetry::metric::ALL)"
            );
        }
        if rule["alert"].is_string() {
            assert!(
                matches!(rule["labels"]["severity"].as_str(), Some("critical" | "warning" | "info")),
                "{name}: labels.severity (critical, warning or info)"
            );
            for annotation in ["summary", "description"] {
                assert!(
                    rule["annotations"][annotation].as_str().is_some_and(|a| !a.trim().is_empty()),
                    "{name}: annotations.{annotation}"
                );
            }
            assert!(rule["for"].as_str().is_some(), "{name}: a `for:` duration (0m if it fires at once)");
            let per_source = names_source(&expr(rule));
            if per_source {
                assert!(
                    rule["annotations"]["summary"].as_str().unwrap().contains("{{ $labels.source }}"),
                    "{name}: an alert per source names the source in its summary"
                );
            }
        }
    }
}

/// Whether an expression keeps the `source` label (aggregates `by (…, source, …)` or selects per-source series).
fn names_source(expr: &str) -> bool {
    expr.contains("source)") || expr.contains("source,") || expr.contains(", source")
}

#[test]
fn the_rules_cover_the_webhook_alert_conditions_with_the_shipped_thresholds() {
    let alerts = alerts();
    for (alert, metric_name) in WEBHOOK_CONDITIONS {
        let (_, rule) =
            alerts.iter().find(|(name, _)| name == alert).unwrap_or_else(|| panic!("{RULES} lacks the alert {alert}"));
        let expr = expr(rule);
        assert!(promql_metric_names(&expr).contains(*metric_name), "{alert} is built on {metric_name}: {expr}");
        assert!(names_source(&expr), "{alert} fires per source: {expr}");
    }
    let expr_of = |alert: &str| expr(&alerts.iter().find(|(name, _)| name == alert).unwrap().1);
    assert!(expr_of("DevinEtlSourceFailing").contains(r#"status="failed""#));

    // The stale threshold is server.max_staleness, of the shipped default and of the Kubernetes ConfigMap.
    let stale = expr_of("DevinEtlStale");
    let threshold: u64 = stale
        .rsplit_once('>')
        .and_then(|(_, n)| n.trim().parse().ok())
        .unwrap_or_else(|| panic!("DevinEtlStale: expected `… > SECONDS`: {stale}"));
    let default = Settings::load_with_env(None, |_| None).unwrap().server.max_staleness;
    assert_eq!(threshold, default.as_secs(), "DevinEtlStale's threshold must equal server.max_staleness");
    let configmap = std::fs::read_to_string(repo().join("deploy/k8s/configmap.yaml")).unwrap();
    assert!(
        configmap.contains(&format!("max_staleness = \"{}s\"", default.as_secs()))
            || configmap.contains(&format!("max_staleness = \"{}h\"", default.as_secs() / 3600)),
        "deploy/k8s/configmap.yaml sets another server.max_staleness than DevinEtlStale's {threshold} s"
    );

    // Every alert has a promtool unit test in which it fires.
    let tests = yaml(RULE_TESTS);
    assert_eq!(tests["rule_files"][0].as_str(), Path::new(RULES).file_name().unwrap().to_str());
    let fired: BTreeSet<&str> = tests["tests"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|t| t["alert_rule_test"].as_sequence().cloned().unwrap_or_default())
        .filter(|case| case["exp_alerts"].as_sequence().is_some_and(|a| !a.is_empty()))
        .filter_map(|case| alerts.iter().find(|(n, _)| Some(n.as_str()) == case["alertname"].as_str()))
        .map(|(n, _)| n.as_str())
        .collect();
    for (alert, _) in &alerts {
        assert!(fired.contains(alert.as_str()), "{RULE_TESTS} has no case in which {alert} fires");
    }
}

/// `promtool` on PATH.
fn promtool() -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("promtool")).find(|p| p.is_file())
}

#[test]
fn promtool_checks_the_rules_and_runs_their_unit_tests() {
    let Some(promtool) = promtool() else {
        if std::env::var("DEVIN_ETL_REQUIRE_PROMTOOL").is_ok_and(|v| !v.is_empty() && v != "0") {
            panic!("promtool is not installed and DEVIN_ETL_REQUIRE_PROMTOOL is set: run scripts/install-test-tools");
        }
        let bar = "!".repeat(100);
        // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n{bar}\n!!! SKIPPED: promtool not installed (run scripts/install-test-tools)\n\
             !!! prometheus_rules::promtool_checks_the_rules_and_runs_their_unit_tests checked nothing: the rules were\n\
             !!! only parsed (the other prometheus_rules tests). Set DEVIN_ETL_REQUIRE_PROMTOOL=1 to make this a failure.\n\
             {bar}\n"
        );
        return;
    };
    let dir = repo().join("deploy/prometheus");
    for args in [["check", "rules", "devin-etl-rules.yml"], ["test", "rules", "devin-etl-rules.test.yml"]] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("{}: {e}", promtool.display()));
        assert!(
            out.status.success(),
            "promtool {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}
