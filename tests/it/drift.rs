//! Schema drift (issue 13, item 1): the simulator serves new fields, enum values the spec does not list and a
//! number written as a string; the load is exact all the same, and `schema_drift`, the metrics, the log, `status`
//! and `drift` say exactly what changed, where, how often and in which session.

use std::collections::{BTreeMap, BTreeSet};

use devin_etl::api::models::{SessionInsights, known};
use devin_etl::sync::Mode;
use devin_etl::telemetry::{install_metrics, metric};
use devin_sim::{SimulatorConfig, Switches};
use serde_json::Value;

use crate::common::child::{child_env, devin_etl};
use crate::common::logs::Logs;
use crate::common::{self, TestApp};

type Entry = (String, String, String);

/// What each item of `truth` carries that the models do not know, as the simulator's switches serve it: an
/// independent statement of the expected drift, from the simulator's documented behaviour and the spec's lists.
fn expected_drift(truth: &[SessionInsights]) -> BTreeMap<Entry, BTreeSet<String>> {
    let mut out: BTreeMap<Entry, BTreeSet<String>> = BTreeMap::new();
    for s in truth {
        let mut add = |path: &str, kind: &str, value: &str| {
            out.entry((path.to_owned(), kind.to_owned(), value.to_owned())).or_default().insert(s.session_id.clone());
        };
        // extra_fields: an object and a string on every item, an object on every nested object.
        add("x_future_field", "unknown_field", "object");
        add("x_added_in_v4", "unknown_field", "string");
        if !s.pull_requests.is_empty() {
            add("pull_requests[].x_future_field", "unknown_field", "object");
        }
        if let Some(a) = &s.analysis {
            add("analysis.x_future_field", "unknown_field", "object");
            for (list, len) in
                [("issues", a.issues.len()), ("action_items", a.action_items.len()), ("timeline", a.timeline.len())]
            {
                if len > 0 {
                    add(&format!("analysis.{list}[].x_future_field"), "unknown_field", "object");
                }
            }
            if a.classification.is_some() {
                add("analysis.classification.x_future_field", "unknown_field", "object");
            }
            if let Some(n) = &a.note_usage {
                add("analysis.note_usage.x_future_field", "unknown_field", "object");
                for (list, len) in [("good_usages", n.good_usages.len()), ("bad_usages", n.bad_usages.len())] {
                    if len > 0 {
                        add(&format!("analysis.note_usage.{list}[].x_future_field"), "unknown_field", "object");
                    }
                }
            }
            if let Some(p) = &a.suggested_prompt {
                add("analysis.suggested_prompt.x_future_field", "unknown_field", "object");
                if !p.feedback_items.is_empty() {
                    add("analysis.suggested_prompt.feedback_items[].x_future_field", "unknown_field", "object");
                }
            }
            for item in &a.action_items {
                if !known::ACTION_ITEM_TYPE.contains(&item.kind.as_str()) {
                    add("analysis.action_items[].type", "unknown_enum_value", &item.kind);
                }
            }
        }
        // numbers_as_strings.
        add("acus_consumed", "type_changed", "string (expected number)");
        // unknown_enum_values (the truth holds the new values).
        let enums: [(&str, Option<&str>, &[&str]); 5] = [
            ("status", Some(&s.status), known::STATUS),
            ("status_detail", s.status_detail.as_deref(), known::STATUS_DETAIL),
            ("origin", s.origin.as_deref(), known::ORIGIN),
            ("category", s.category.as_deref(), known::CATEGORY),
            ("session_size", Some(&s.session_size), known::SESSION_SIZE),
        ];
        for (path, value, list) in enums {
            if let Some(v) = value.filter(|v| !list.contains(v)) {
                add(path, "unknown_enum_value", v);
            }
        }
    }
    out
}

#[derive(Debug, sqlx::FromRow)]
struct Row {
    path: String,
    kind: String,
    value: String,
    times_seen: i64,
    example_session_id: Option<String>,
}

async fn drift_rows(app: &TestApp) -> BTreeMap<Entry, (i64, String)> {
    let rows: Vec<Row> =
        sqlx::query_as("select path, kind, value, times_seen, example_session_id from schema_drift where source = $1")
            .bind(&app.settings.sync.source)
            .fetch_all(app.store().pool())
            .await
            .unwrap();
    rows.into_iter()
        .map(|r| ((r.path, r.kind, r.value), (r.times_seen, r.example_session_id.unwrap_or_default())))
        .collect()
}

/// The value of `name{source, kind}` in the process-wide recorder (0 when absent).
fn counter(name: &str, source: &str, kind: &str) -> f64 {
    let text = install_metrics().unwrap().render();
    let labels = [format!("source=\"{source}\""), format!("kind=\"{kind}\"")];
    text.lines()
        .filter(|l| l.starts_with(&format!("{name}{{")))
        .filter(|l| labels.iter().all(|label| l.contains(label.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

#[tokio::test]
async fn new_fields_enum_values_and_a_type_change_are_reported_exactly_everywhere() {
    let source = "drift_everywhere";
    let app = TestApp::spawn_with(SimulatorConfig { sessions: 90, manual_clock: true, ..Default::default() }, |s| {
        s.sync.source = source.to_owned()
    })
    .await;
    install_metrics().unwrap();
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    assert!(drift_rows(&app).await.is_empty(), "the simulator's normal items are exactly what the models know");

    app.sim.set_switches(Switches {
        unknown_enum_values: true,
        extra_fields: true,
        numbers_as_strings: true,
        ..Switches::default()
    });
    let (logs, guard) = Logs::capture();
    app.syncer.run_once(Mode::Reconcile).await.unwrap();
    drop(guard);

    // The load is exact: new values as text, the string-written number as the number.
    let truth = app.sim.sessions();
    common::assert_source_matches_where(app.store(), source, &truth, |_| true).await;
    let expected = expected_drift(&truth);
    let actual = drift_rows(&app).await;
    assert_eq!(
        actual.keys().collect::<Vec<_>>(),
        expected.keys().collect::<Vec<_>>(),
        "schema_drift holds exactly the simulator's changes"
    );
    for (entry, sessions) in &expected {
        let (times, example) = &actual[entry];
        assert_eq!(*times, sessions.len() as i64, "{entry:?}: one per item read that carries it");
        assert!(sessions.contains(example), "{entry:?}: the example {example} carries it");
    }
    assert!(expected.keys().any(|e| e.1 == "unknown_enum_value" && e.0 == "status"));
    assert!(expected.keys().any(|e| e.0 == "analysis.issues[].x_future_field"));

    // The first sighting of each is warned once, and counted.
    let log = logs.text();
    assert_eq!(log.matches("schema drift, first seen").count(), expected.len(), "{log}");
    for kind in ["unknown_field", "unknown_enum_value", "type_changed"] {
        let n = expected.keys().filter(|e| e.1 == kind).count() as f64;
        assert_eq!(counter(metric::SCHEMA_DRIFT_NEW, source, kind), n, "{kind}");
    }
    assert_eq!(counter(metric::SCHEMA_DRIFT_ITEMS, source, "type_changed"), truth.len() as f64);

    // Read again: counts grow, nothing is new, nothing is warned.
    let (logs, guard) = Logs::capture();
    app.syncer.run_once(Mode::Reconcile).await.unwrap();
    drop(guard);
    assert!(!logs.text().contains("schema drift, first seen"), "{}", logs.text());
    let again = drift_rows(&app).await;
    assert_eq!(again.len(), expected.len());
    for (entry, sessions) in &expected {
        assert_eq!(again[entry].0, 2 * sessions.len() as i64, "{entry:?}");
    }
    let type_changed = expected.keys().filter(|e| e.1 == "type_changed").count() as f64;
    assert_eq!(counter(metric::SCHEMA_DRIFT_NEW, source, "type_changed"), type_changed, "nothing new counted");

    // `status` and `drift` show them; `drift --json` is the table's rows.
    let mut env = child_env(&app);
    env.push(("DEVIN_ETL__SYNC__SOURCE", source.to_owned()));
    let run = |args: &'static [&'static str]| {
        let env = env.clone();
        async move {
            let out = devin_etl(args, env).output().await.unwrap();
            assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
            String::from_utf8(out.stdout).unwrap()
        }
    };
    let json: Value = serde_json::from_str(&run(&["drift", "--json"]).await).unwrap();
    let listed: BTreeSet<Entry> = json
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            assert_eq!(r["source"], source);
            let s = |k: &str| r[k].as_str().unwrap().to_owned();
            (s("path"), s("kind"), s("value"))
        })
        .collect();
    assert_eq!(listed, expected.keys().cloned().collect());
    let table = run(&["drift"]).await;
    for (path, kind, value) in expected.keys() {
        let words = |l: &str| l.split_whitespace().map(str::to_owned).collect::<Vec<_>>();
        let line = table
            .lines()
            .find(|l| {
                words(l).starts_with(&[source.to_owned(), kind.clone(), path.clone()]) && l.contains(value.as_str())
            })
            .unwrap_or_else(|| panic!("no line for {kind} {path} {value}:\n{table}"));
        assert!(
            line.contains(&format!(" {} ", expected[&(path.clone(), kind.clone(), value.clone())].len() * 2)),
            "{line}"
        );
    }
    let status = run(&["status"]).await;
    assert!(status.contains(&format!("schema drift: {} entries", expected.len())), "{status}");
    assert!(status.contains("type_changed") && status.contains("string (expected number)"), "{status}");
    let status: Value = serde_json::from_str(&run(&["status", "--json"]).await).unwrap();
    assert_eq!(status["schema_drift"].as_array().unwrap().len(), expected.len());
}

#[tokio::test]
async fn a_warehouse_without_drift_says_so() {
    let app = TestApp::spawn(30).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    assert!(drift_rows(&app).await.is_empty());
    let out = devin_etl(&["drift"], child_env(&app)).output().await.unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with("No schema drift"));
    let out = devin_etl(&["drift", "--json"], child_env(&app)).output().await.unwrap();
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "[]");
    common::assert_warehouse_matches(app.store(), &app.sim.sessions()).await;
}
