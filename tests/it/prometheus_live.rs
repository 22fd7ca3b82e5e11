//! Issue 15, item 2: the shipped alert rules against a real Prometheus (Debian's `prometheus`, installed with promtool
//! by `scripts/install-test-tools`) scraping a real `devin-etl run`: the scrape works, the rules load and evaluate,
//! and the alerts for a failing source, a stale one and a process that is down go pending on conditions provoked
//! live. Plus: every metric name the Grafana dashboard's PromQL and the docs use is one the service exports.
//!
//! What a live run cannot show in well under a minute is the `for:` of each rule (1m for DevinEtlSourceFailing,
//! 5m for DevinEtlStale and DevinEtlDown) and the long windows of the event rules (1h … 25h): the alerts are checked
//! to go *pending* here (the expression holds, Prometheus waits out `for:`), and firing, resolving and the
//! windows are covered by the rule unit tests (`promtool test rules`, deploy/prometheus/devin-etl-rules.test.yml,
//! run by tests/it/prometheus_rules.rs). The shipped rules are loaded as they are, not weakened for the test.
//!
//! Without `prometheus` the live test prints a loud SKIPPED notice; with `DEVIN_ETL_REQUIRE_PROMETHEUS=1` (as in
//! `.ci/run`) it fails instead.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use common::daemon::{REVOKED_AGE, TwoSources};
use devin_etl::telemetry::metric;
use serde_json::Value;

use crate::prometheus_rules::{is_known_metric, promql_metric_names};

const RULES: &str = "deploy/prometheus/devin-etl-rules.yml";

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

/// A Prometheus server of the test's own: temporary configuration and storage, a free port; killed when dropped.
struct Prometheus {
    base: String,
    dir: PathBuf,
    child: tokio::process::Child,
    client: reqwest::Client,
}

impl Prometheus {
    /// Scrapes `target` (`host:port`) every second as job `devin-etl`, evaluates the shipped rules every second.
    async fn start(binary: &std::path::Path, target: &str) -> Prometheus {
        let dir = std::env::temp_dir().join(common::unique_name("devin-etl-prometheus"));
        std::fs::create_dir_all(dir.join("data")).unwrap();
        let config = format!(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n\
             rule_files:\n  - {rules}\n\
             scrape_configs:\n  - job_name: devin-etl\n    static_configs:\n      - targets: ['{target}']\n",
            rules = repo().join(RULES).display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).unwrap();
        let port = common::free_port();
        let log = std::fs::File::create(dir.join("prometheus.log")).unwrap();
        let child = tokio::process::Command::new(binary)
            .arg(format!("--config.file={}", dir.join("prometheus.yml").display()))
            .arg(format!("--storage.tsdb.path={}", dir.join("data").display()))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--log.level=warn")
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .kill_on_drop(true)
            .spawn()
            .expect("prometheus starts");
        let client = reqwest::Client::builder().timeout(Duration::from_secs(5)).build().unwrap();
        let mut prometheus = Prometheus { base: format!("http://127.0.0.1:{port}"), dir, child, client };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            assert!(prometheus.child.try_wait().unwrap().is_none(), "prometheus ended:\n{}", prometheus.log());
            let ready = prometheus.client.get(format!("{}/-/ready", prometheus.base)).send().await;
            if ready.is_ok_and(|r| r.status().is_success()) {
                return prometheus;
            }
            assert!(Instant::now() < deadline, "prometheus not ready after 30 s:\n{}", prometheus.log());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }

    /// `data` of a successful answer of the HTTP API at `path` (with `query` parameters).
    async fn api(&self, path: &str, query: &[(&str, &str)]) -> Value {
        let mut url = url::Url::parse(&format!("{}{path}", self.base)).unwrap();
        url.query_pairs_mut().extend_pairs(query);
        let answer: Value = self.client.get(url).send().await.unwrap().json().await.unwrap();
        assert_eq!(answer["status"], "success", "{path} {query:?}: {answer}");
        answer["data"].clone()
    }

    /// An instant query's samples: labels → value.
    async fn query(&self, expr: &str) -> Vec<(BTreeMap<String, String>, f64)> {
        let data = self.api("/api/v1/query", &[("query", expr)]).await;
        data["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|sample| {
                let labels = serde_json::from_value(sample["metric"].clone()).unwrap();
                (labels, sample["value"][1].as_str().unwrap().parse().unwrap())
            })
            .collect()
    }

    /// `(alertname, source, state)` of every active alert (pending or firing).
    async fn alerts(&self) -> BTreeSet<(String, String, String)> {
        let data = self.api("/api/v1/alerts", &[]).await;
        data["alerts"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| {
                let label = |name: &str| a["labels"][name].as_str().unwrap_or_default().to_owned();
                (label("alertname"), label("source"), a["state"].as_str().unwrap().to_owned())
            })
            .collect()
    }

    /// Polls until `alert` (of `source`, `""` for none) is pending or firing; returns its state.
    async fn wait_for_alert(&self, alert: &str, source: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let alerts = self.alerts().await;
            if let Some((_, _, state)) = alerts.iter().find(|(name, s, _)| name == alert && s == source) {
                return state.clone();
            }
            assert!(
                Instant::now() < deadline,
                "{alert}{{source={source:?}}} neither pending nor firing after {timeout:?}; active: {alerts:?}\nrules: {}",
                self.api("/api/v1/rules", &[]).await
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.start_kill();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The alert names of the shipped rules file.
fn shipped_alerts() -> BTreeSet<String> {
    let text = std::fs::read_to_string(repo().join(RULES)).unwrap();
    let file: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    file["groups"]
        .as_sequence()
        .unwrap()
        .iter()
        .flat_map(|g| g["rules"].as_sequence().unwrap().iter())
        .filter_map(|r| r["alert"].as_str().map(String::from))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_daemon_loads_the_rules_and_raises_the_alerts_provoked_live() {
    let test =
        "prometheus_live::a_real_prometheus_scrapes_the_daemon_loads_the_rules_and_raises_the_alerts_provoked_live";
    let Some(binary) = common::tools::required("prometheus", "DEVIN_ETL_REQUIRE_PROMETHEUS", test) else {
        return;
    };
    let started = Instant::now();
    let mut daemon = TwoSources::start(&[]).await;
    let prometheus = Prometheus::start(&binary, &format!("127.0.0.1:{}", daemon.port)).await;

    // The scrape works: the target is up, under the job name the rules expect.
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let up = prometheus.query(r#"up{job="devin-etl"}"#).await;
        if up.iter().any(|(_, v)| *v == 1.0) {
            break;
        }
        assert!(Instant::now() < deadline, "the target is not up: {up:?}\n{}", prometheus.log());
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    daemon.wait_for_runs(3).await;

    // The failing source (its token refused, every tick fails) and the stale one (its data two hours old):
    // pending, as their `for:` (1m, 5m) has not passed yet.
    let failing = prometheus.wait_for_alert("DevinEtlSourceFailing", "revoked", Duration::from_secs(30)).await;
    let stale = prometheus.wait_for_alert("DevinEtlStale", "revoked", Duration::from_secs(30)).await;
    assert!(["pending", "firing"].contains(&failing.as_str()) && ["pending", "firing"].contains(&stale.as_str()));

    // Every shipped rule is loaded, evaluated and healthy.
    let deadline = Instant::now() + Duration::from_secs(10);
    let rules = loop {
        let data = prometheus.api("/api/v1/rules", &[]).await;
        let rules: Vec<Value> =
            data["groups"].as_array().unwrap().iter().flat_map(|g| g["rules"].as_array().unwrap().clone()).collect();
        if rules.iter().all(|r| r["health"] == "ok") {
            break rules;
        }
        assert!(Instant::now() < deadline, "rules not healthy: {data}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    let loaded: BTreeSet<String> = rules.iter().map(|r| r["name"].as_str().unwrap().to_owned()).collect();
    assert_eq!(loaded, shipped_alerts(), "the rules Prometheus loaded are the shipped ones");

    // The healthy source raises nothing; the lags are what the sources' states say.
    let alerts = prometheus.alerts().await;
    assert!(alerts.iter().all(|(_, source, _)| source != "good"), "{alerts:?}");
    let lag = |source: &'static str| {
        let prometheus = &prometheus;
        async move {
            let samples =
                prometheus.query(&format!(r#"{}{{job="devin-etl",source="{source}"}}"#, metric::WATERMARK_LAG)).await;
            assert_eq!(samples.len(), 1, "{samples:?}");
            samples[0].1
        }
    };
    assert!(lag("revoked").await > REVOKED_AGE.as_secs_f64() - 60.0);
    assert!(lag("good").await < 600.0);

    // Every metric that exists from the first run is in Prometheus (a histogram as its series).
    let names: BTreeSet<String> =
        serde_json::from_value(prometheus.api("/api/v1/label/__name__/values", &[]).await).expect("a list of names");
    for name in metric::FROM_THE_FIRST_RUN {
        let series = if name == metric::RUN_DURATION { format!("{name}_bucket") } else { name.to_owned() };
        assert!(names.contains(&series), "{series} was not scraped: {names:?}");
    }
    let unknown: Vec<&String> = names.iter().filter(|n| n.starts_with("devin_etl_") && !is_known_metric(n)).collect();
    assert!(unknown.is_empty(), "scraped metrics missing from telemetry::metric::ALL: {unknown:?}");

    // The process goes away: the target is down, and DevinEtlDown goes pending (its `for:` is 5m).
    daemon.stop().await;
    let down = prometheus.wait_for_alert("DevinEtlDown", "", Duration::from_secs(20)).await;
    let up = prometheus.query(r#"up{job="devin-etl"}"#).await;
    assert_eq!(up.iter().map(|(_, v)| *v).collect::<Vec<_>>(), [0.0], "{up:?}");
    eprintln!(
        "prometheus live: DevinEtlSourceFailing{{source=revoked}} {failing}, DevinEtlStale{{source=revoked}} {stale}, \
         DevinEtlDown {down}; {} rules healthy; took {:?}",
        rules.len(),
        started.elapsed()
    );
}

/// The dashboard's panels with a PromQL query (`expr`), as (panel title, expr).
fn promql_of(value: &Value, title: &str, out: &mut Vec<(String, String)>) {
    match value {
        Value::Object(map) => {
            let title = map.get("title").and_then(Value::as_str).unwrap_or(title);
            if let Some(expr) = map.get("expr").and_then(Value::as_str) {
                out.push((title.to_owned(), expr.to_owned()));
            }
            for v in map.values() {
                promql_of(v, title, out);
            }
        }
        Value::Array(items) => items.iter().for_each(|v| promql_of(v, title, out)),
        _ => {}
    }
}

#[test]
fn the_dashboard_and_the_docs_name_only_metrics_the_service_exports() {
    // The Grafana dashboard: every PromQL query selects exported metrics. (The shipped dashboard reads the
    // warehouse through PostgreSQL and has no PromQL today; this keeps any panel added on Prometheus honest.)
    let dashboards = repo().join("deploy/grafana/dashboards");
    let mut checked = 0;
    for entry in std::fs::read_dir(&dashboards).unwrap() {
        let path = entry.unwrap().path();
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
        let mut queries = Vec::new();
        promql_of(&dashboard, "", &mut queries);
        for (panel, expr) in queries {
            for name in promql_metric_names(&expr) {
                assert!(is_known_metric(&name), "{}: panel {panel:?} uses {name}, not exported", path.display());
            }
        }
        checked += 1;
    }
    assert!(checked >= 1, "no dashboard in {}", dashboards.display());

    // Every metric name the docs, the README and the deploy files mention is exported (a typo or a renamed metric
    // would send an operator after a series that never exists).
    let mut files = vec![repo().join("README.md")];
    for dir in ["docs", "deploy"] {
        let mut stack = vec![repo().join(dir)];
        while let Some(dir) = stack.pop() {
            for entry in std::fs::read_dir(&dir).unwrap() {
                let path = entry.unwrap().path();
                if path.is_dir() {
                    stack.push(path);
                } else if path.extension().is_some_and(|e| ["md", "yml", "yaml", "json"].contains(&e.to_str().unwrap()))
                {
                    files.push(path);
                }
            }
        }
    }
    let mut mentioned = BTreeSet::new();
    for file in &files {
        let text = std::fs::read_to_string(file).unwrap();
        for (at, _) in text.match_indices("devin_etl_") {
            let name: String =
                text[at..].chars().take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_').collect();
            let metric_like = ["_total", "_seconds", "_bucket", "_sum", "_count"].iter().any(|s| name.ends_with(s));
            if metric_like {
                assert!(is_known_metric(&name), "{} mentions {name}, which is not exported", file.display());
                mentioned.insert(name);
            }
        }
    }
    assert!(mentioned.len() >= metric::ALL.len() / 2, "the docs name the metrics: {mentioned:?}");
}
