//! Shared test harness: a fresh database per test (dropped afterwards), the simulator on an ephemeral port,
//! settings pointing at both, and a field-by-field comparison of the warehouse with the simulator's truth.
#![allow(dead_code)] // each test binary uses a different part of the harness

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use devin_etl::api::models::SessionInsights;
use devin_etl::settings::Settings;
use devin_etl::store::Store;
use devin_etl::sync::Syncer;
use devin_sim::{RunningSimulator, Simulator, SimulatorConfig};
use secrecy::SecretString;
use serde_json::{Value, json};
use sqlx::Connection as _;

pub mod child;
pub mod cluster;
pub mod daemon;
pub mod logs;
pub mod proxy;
pub mod tools;

/// Admin URL of the test server; each test creates its own database there.
pub fn admin_url() -> String {
    std::env::var("DEVIN_ETL_TEST_DATABASE_URL")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".to_owned())
}

/// A database that exists for one test and is dropped when the test ends (also when it panics).
pub struct TestDb {
    pub name: String,
    pub url: String,
}

/// `{prefix}_{pid}_{n}_{nanos}`: a name no other test, run or process uses (databases, roles, files).
pub fn unique_name(prefix: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    format!(
        "{prefix}_{}_{}_{}",
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed),
        chrono::Utc::now().timestamp_subsec_nanos()
    )
}

/// Rows of `sessions`.
pub async fn session_count(store: &Store) -> i64 {
    sqlx::query_scalar("select count(*) from sessions").fetch_one(store.pool()).await.unwrap()
}

/// Waits (up to 60 s) until a run has committed some sessions: a point inside the run for a signal or a kill.
pub async fn wait_for_committed_sessions(store: &Store) {
    eventually("some pages are committed", Duration::from_secs(60), async || session_count(store).await > 0).await;
}

impl TestDb {
    pub async fn create() -> TestDb {
        let name = unique_name("devin_etl_test");
        let admin = admin_url();
        let mut conn =
            sqlx::PgConnection::connect(&admin).await.expect("test PostgreSQL must be reachable (see README)");
        sqlx::raw_sql(&format!("create database {name}")).execute(&mut conn).await.unwrap();
        conn.close().await.ok();
        let base = admin.rsplit_once('/').map(|(b, _)| b.to_owned()).unwrap_or(admin);
        TestDb { url: format!("{base}/{name}"), name }
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime we can block on, so use a small one of its own on another thread.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                if let Ok(mut conn) = sqlx::PgConnection::connect(&admin_url()).await {
                    // Bounded: DROP DATABASE waits for every backend of the cluster to acknowledge it, and a
                    // backend stuck elsewhere must not hang the suite (at worst a test database is left behind).
                    // Two statements: DROP DATABASE cannot run in a transaction, not even the implicit one of a
                    // multi-statement query (which silently left every test database behind).
                    let _ = sqlx::raw_sql("set statement_timeout = '60s'").execute(&mut conn).await;
                    let sql = format!("drop database if exists {name} with (force)");
                    if let Err(e) = sqlx::raw_sql(&sql).execute(&mut conn).await {
                        eprintln!("warning: the test database {name} was left behind: {e}");
                    }
                }
            });
        })
        .join();
    }
}

/// The simulated API of one enterprise `name` (its own data by `seed`, token `cog_token_of_{name}`, manual clock),
/// served on a free port.
pub async fn enterprise_api(name: &str, seed: u64, sessions: usize) -> (Simulator, RunningSimulator) {
    let sim = Simulator::new(SimulatorConfig {
        sessions,
        seed,
        token: format!("cog_token_of_{name}"),
        manual_clock: true,
        ..SimulatorConfig::default()
    });
    let server = sim.serve(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    (sim, server)
}

/// A migrated, empty warehouse in a fresh database of its own (no API behind it).
pub async fn migrated_warehouse() -> (TestDb, Store) {
    let db = TestDb::create().await;
    let settings = test_settings(&db.url, "http://127.0.0.1:9", "cog_unused");
    let store = devin_etl::app::migrated_store(&settings).await.unwrap();
    (db, store)
}

/// Settings for tests: no file, no environment, fast retries.
pub fn test_settings(database_url: &str, api_url: &str, token: &str) -> Settings {
    let mut s = Settings::load_with_env(None, |_| None).expect("default settings load");
    s.database.url = SecretString::from(database_url.to_owned());
    s.api.base_url = api_url.parse().unwrap();
    s.api.token = Some(SecretString::from(token.to_owned()));
    s.api.page_size = 50;
    s.api.retry_initial_backoff = Duration::from_millis(10);
    s.api.retry_max_backoff = Duration::from_millis(100);
    s.api.timeout = Duration::from_secs(10);
    s.sync.backfill_concurrency = 3;
    s.sync.backfill_window = Duration::from_secs(90 * 86_400);
    // The simulator's manual clock jumps hours between runs while the database's clock moves milliseconds: to
    // the watermark's clock guard that is a lying clock. Tests of the guard set a realistic tolerance.
    s.sync.clock_tolerance = UNBOUNDED_CLOCK;
    s
}

/// A clock tolerance that never bounds the watermark (see `test_settings`).
pub const UNBOUNDED_CLOCK: Duration = Duration::from_secs(10 * 365 * 86_400);

/// One test's world: database, simulator, settings and a syncer wired to both.
pub struct TestApp {
    pub sim: Simulator,
    pub server: RunningSimulator,
    pub settings: Settings,
    pub syncer: Syncer,
    pub db: TestDb,
}

impl TestApp {
    /// `sessions` simulated sessions, manual simulator clock, page size 50.
    pub async fn spawn(sessions: usize) -> TestApp {
        Self::spawn_with(SimulatorConfig { sessions, manual_clock: true, ..SimulatorConfig::default() }, |_| {}).await
    }

    pub async fn spawn_with(config: SimulatorConfig, tweak: impl FnOnce(&mut Settings)) -> TestApp {
        let db = TestDb::create().await;
        let sim = Simulator::new(config);
        let server = sim.serve(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let mut settings = test_settings(&db.url, &server.base_url(), sim.token());
        tweak(&mut settings);
        let syncer = build_syncer(settings.clone()).await;
        TestApp { sim, server, settings, syncer, db }
    }

    pub fn store(&self) -> &Store {
        self.syncer.store()
    }

    pub async fn watermark(&self) -> Option<i64> {
        self.store().watermark(&self.settings.sync.source).await.unwrap()
    }

    pub async fn count(&self, table: &str) -> i64 {
        sqlx::query_scalar(&format!("select count(*) from {table}")).fetch_one(self.store().pool()).await.unwrap()
    }

    /// Asserts that every table holds exactly what the simulator's truth implies, field by field.
    pub async fn assert_matches_truth(&self) {
        assert_warehouse_matches(self.store(), &self.sim.sessions()).await;
    }
}

pub async fn build_syncer(settings: Settings) -> Syncer {
    devin_etl::app::syncer(settings).await.expect("the production wiring builds a syncer")
}

/// Numbers compared as f64 (jsonb renders 3.0 as 3), everything else as is.
pub fn canonical(v: Value) -> Value {
    match v {
        Value::Number(n) => json!(n.as_f64()),
        Value::Array(a) => Value::Array(a.into_iter().map(canonical).collect()),
        Value::Object(o) => Value::Object(o.into_iter().map(|(k, v)| (k, canonical(v))).collect()),
        other => other,
    }
}

/// Rows of `table` as JSON objects keyed by `key_sql`, timestamps as Unix seconds, bookkeeping columns dropped.
pub async fn actual_rows(store: &Store, table: &str, key_sql: &str) -> BTreeMap<String, Value> {
    let sql = if table == "sessions" {
        "select session_id, to_jsonb(t) - 'raw' - 'first_synced_at' - 'synced_at' - 'content_hash' - 'content_hash_at' \
            || jsonb_build_object('created_at', extract(epoch from created_at)::bigint, \
                                  'updated_at', extract(epoch from updated_at)::bigint) from sessions t"
            .to_owned()
    } else {
        format!("select {key_sql}, to_jsonb(t) from {table} t")
    };
    let rows: Vec<(String, Value)> = sqlx::query_as(&sql).fetch_all(store.pool()).await.unwrap();
    rows.into_iter().map(|(k, v)| (k, canonical(v))).collect()
}

/// `owner/name` and number of the PR URL shapes the simulator generates (independent of the product's parser).
fn expected_repo(url: &str) -> (Value, Value) {
    let path = url.split_once("://").map(|(_, rest)| rest).unwrap_or(url);
    let parts: Vec<&str> = path.split('/').collect();
    if parts[0] == "github.com" && parts.len() >= 5 && parts[3] == "pull" {
        return (json!(format!("{}/{}", parts[1], parts[2])), json!(parts[4].parse::<i64>().ok()));
    }
    if let Some(i) = parts.iter().position(|p| *p == "-")
        && parts.get(i + 1) == Some(&"merge_requests")
        && i >= 3
    {
        return (json!(parts[1..i].join("/")), json!(parts.get(i + 2).and_then(|n| n.parse::<i64>().ok())));
    }
    (Value::Null, Value::Null)
}

/// The source tests sync unless they say otherwise (`sync.source`'s default).
pub const DEFAULT_SOURCE: &str = "devin";

/// Expected rows of every table for the truth, delivered by the default source.
pub fn expected_rows(truth: &[SessionInsights]) -> BTreeMap<&'static str, BTreeMap<String, Value>> {
    expected_rows_from(truth, DEFAULT_SOURCE)
}

/// Expected rows of every table for the truth delivered by `source`, built independently of the product's
/// normalizer.
pub fn expected_rows_from(truth: &[SessionInsights], source: &str) -> BTreeMap<&'static str, BTreeMap<String, Value>> {
    let mut t: BTreeMap<&'static str, BTreeMap<String, Value>> = BTreeMap::new();
    for s in truth {
        let id = &s.session_id;
        let a = s.analysis.as_ref();
        let c = a.and_then(|a| a.classification.as_ref());
        let p = a.and_then(|a| a.suggested_prompt.as_ref());
        t.entry("sessions").or_default().insert(
            id.clone(),
            canonical(json!({
                "session_id": id, "org_id": s.org_id, "user_id": s.user_id, "service_user_id": s.service_user_id,
                "title": s.title, "url": s.url, "status": s.status, "status_detail": s.status_detail,
                "origin": s.origin, "category": s.category, "subcategory": s.subcategory,
                "session_size": s.session_size, "acus_consumed": s.acus_consumed,
                "num_user_messages": s.num_user_messages, "num_devin_messages": s.num_devin_messages,
                "is_archived": s.is_archived, "playbook_id": s.playbook_id, "parent_session_id": s.parent_session_id,
                "tags": s.tags, "structured_output": s.structured_output,
                "created_at": s.created_at, "updated_at": s.updated_at, "has_analysis": a.is_some(),
                "classification_category": c.map(|c| &c.category), "classification_confidence": c.map(|c| c.confidence),
                "programming_languages": c.map(|c| &c.programming_languages),
                "tools_and_frameworks": c.map(|c| &c.tools_and_frameworks),
                "suggested_prompt_original": p.map(|p| &p.original_prompt), "suggested_prompt": p.map(|p| &p.suggested_prompt),
                "deleted_at": null, "source": source,
            })),
        );
        for pr in &s.pull_requests {
            let (repo, number) = expected_repo(&pr.pr_url);
            t.entry("session_pull_requests").or_default().insert(
                format!("{id}|{}", pr.pr_url),
                canonical(json!({"session_id": id, "pr_url": pr.pr_url, "pr_state": pr.pr_state, "repo": repo, "pr_number": number})),
            );
        }
        for tag in &s.tags {
            t.entry("session_tags").or_default().insert(format!("{id}|{tag}"), json!({"session_id": id, "tag": tag}));
        }
        for child in s.child_session_ids.iter().flatten() {
            t.entry("session_children")
                .or_default()
                .insert(format!("{id}|{child}"), json!({"session_id": id, "child_session_id": child}));
        }
        let Some(a) = a else { continue };
        for (i, x) in a.issues.iter().enumerate() {
            t.entry("session_issues").or_default().insert(
                format!("{id}|{i}"),
                canonical(json!({"session_id": id, "position": i, "issue_id": x.id, "issue": x.issue, "impact": x.impact, "label": x.label})),
            );
        }
        for (i, x) in a.action_items.iter().enumerate() {
            t.entry("session_action_items").or_default().insert(
                format!("{id}|{i}"),
                canonical(json!({"session_id": id, "position": i, "action_item": x.action_item, "issue_id": x.issue_id, "type": x.kind})),
            );
        }
        for (i, x) in a.timeline.iter().enumerate() {
            t.entry("session_timeline_events").or_default().insert(
                format!("{id}|{i}"),
                canonical(json!({"session_id": id, "position": i, "title": x.title, "description": x.description, "color": x.color, "issue_id": x.issue_id})),
            );
        }
        if let Some(u) = &a.note_usage {
            for (kind, list) in [("good", &u.good_usages), ("bad", &u.bad_usages)] {
                for (i, x) in list.iter().enumerate() {
                    t.entry("session_note_usages").or_default().insert(
                        format!("{id}|{kind}|{i}"),
                        canonical(json!({"session_id": id, "kind": kind, "position": i, "note_id": x.note_id, "message": x.message, "reason": x.reason})),
                    );
                }
            }
        }
        for (i, x) in p.map(|p| p.feedback_items.as_slice()).unwrap_or_default().iter().enumerate() {
            t.entry("session_prompt_feedback").or_default().insert(
                format!("{id}|{i}"),
                canonical(json!({"session_id": id, "position": i, "summary": x.summary, "excerpt": x.excerpt, "details": x.details, "issue_id": x.issue_id})),
            );
        }
    }
    t
}

const CHILD_KEYS: &[(&str, &str)] = &[
    ("session_pull_requests", "session_id || '|' || pr_url"),
    ("session_issues", "session_id || '|' || position"),
    ("session_action_items", "session_id || '|' || position"),
    ("session_timeline_events", "session_id || '|' || position"),
    ("session_note_usages", "session_id || '|' || kind || '|' || position"),
    ("session_prompt_feedback", "session_id || '|' || position"),
    ("session_tags", "session_id || '|' || tag"),
    ("session_children", "session_id || '|' || child_session_id"),
];

/// Field-by-field equality of every warehouse table with the truth; `raw` must decode to the truth item.
pub async fn assert_warehouse_matches(store: &Store, truth: &[SessionInsights]) {
    let expected = expected_rows(truth);
    let empty = BTreeMap::new();
    let actual = actual_rows(store, "sessions", "session_id").await;
    assert_tables_equal("sessions", &actual, expected.get("sessions").unwrap_or(&empty));
    for (table, key) in CHILD_KEYS {
        let actual = actual_rows(store, table, key).await;
        assert_tables_equal(table, &actual, expected.get(table).unwrap_or(&empty));
    }
    let raws: Vec<(String, Value)> =
        sqlx::query_as("select session_id, raw from sessions").fetch_all(store.pool()).await.unwrap();
    let by_id: BTreeMap<&str, &SessionInsights> = truth.iter().map(|s| (s.session_id.as_str(), s)).collect();
    for (id, raw) in raws {
        let decoded: SessionInsights = serde_json::from_value(raw).unwrap();
        assert_eq!(Some(&&decoded), by_id.get(id.as_str()), "raw of {id} does not decode to the truth");
    }
}

fn assert_tables_equal(table: &str, actual: &BTreeMap<String, Value>, expected: &BTreeMap<String, Value>) {
    let missing: Vec<&String> = expected.keys().filter(|k| !actual.contains_key(*k)).collect();
    let extra: Vec<&String> = actual.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(
        missing.is_empty() && extra.is_empty(),
        "{table}: {} rows missing (e.g. {:?}), {} unexpected (e.g. {:?})",
        missing.len(),
        missing.first(),
        extra.len(),
        extra.first()
    );
    for (key, want) in expected {
        let got = &actual[key];
        if got != want {
            let want_o = want.as_object().unwrap();
            let got_o = got.as_object().unwrap();
            let diffs: Vec<String> = want_o
                .iter()
                .filter(|(k, v)| got_o.get(*k) != Some(v))
                .map(|(k, v)| format!("{k}: expected {v}, got {}", got_o.get(k).unwrap_or(&Value::Null)))
                .collect();
            let unknown: Vec<&String> = got_o.keys().filter(|k| !want_o.contains_key(*k)).collect();
            panic!("{table} row {key} differs: {diffs:?}; columns not compared: {unknown:?}");
        }
    }
}

/// Asserts that every session present in the warehouse is complete and exact: no partially written page.
/// (Sessions not yet loaded may be missing.)
pub async fn assert_present_sessions_complete(store: &Store, truth: &[SessionInsights]) {
    let present: std::collections::BTreeSet<String> = sqlx::query_scalar("select session_id from sessions")
        .fetch_all(store.pool())
        .await
        .unwrap()
        .into_iter()
        .collect();
    let subset: Vec<SessionInsights> = truth.iter().filter(|s| present.contains(&s.session_id)).cloned().collect();
    assert_eq!(subset.len(), present.len(), "the warehouse holds sessions the API never had");
    assert_warehouse_matches(store, &subset).await;
}

// ---------------------------------------------------------------------------------------------------
// Helpers for the resilience tests (appended; the functions above are unchanged).

/// The session a warehouse row key belongs to (`session_id`, or `session_id|…` for child tables).
fn session_of_key(key: &str) -> &str {
    key.split('|').next().unwrap_or(key)
}

/// As [`assert_warehouse_matches`], restricted to the sessions `keep` selects, in the warehouse and in the truth.
pub async fn assert_warehouse_matches_where(store: &Store, truth: &[SessionInsights], keep: impl Fn(&str) -> bool) {
    assert_source_matches_where(store, DEFAULT_SOURCE, truth, keep).await;
}

/// As [`assert_warehouse_matches_where`], for sessions delivered by `source`.
pub async fn assert_source_matches_where(
    store: &Store,
    source: &str,
    truth: &[SessionInsights],
    keep: impl Fn(&str) -> bool,
) {
    let kept: Vec<SessionInsights> = truth.iter().filter(|s| keep(&s.session_id)).cloned().collect();
    let expected = expected_rows_from(&kept, source);
    let empty = BTreeMap::new();
    let mut tables: Vec<(&str, &str)> = vec![("sessions", "session_id")];
    tables.extend_from_slice(CHILD_KEYS);
    for (table, key) in tables {
        let mut actual = actual_rows(store, table, key).await;
        actual.retain(|k, _| keep(session_of_key(k)));
        assert_tables_equal(table, &actual, expected.get(table).unwrap_or(&empty));
    }
    let raws: Vec<(String, Value)> =
        sqlx::query_as("select session_id, raw from sessions").fetch_all(store.pool()).await.unwrap();
    let by_id: BTreeMap<&str, &SessionInsights> = kept.iter().map(|s| (s.session_id.as_str(), s)).collect();
    for (id, raw) in raws.into_iter().filter(|(id, _)| keep(id)) {
        let decoded: SessionInsights = serde_json::from_value(raw).unwrap();
        assert_eq!(Some(&&decoded), by_id.get(id.as_str()), "raw of {id} does not decode to the truth");
    }
}

/// Ids of the sessions in the warehouse.
pub async fn stored_ids(store: &Store) -> std::collections::BTreeSet<String> {
    let ids: Vec<String> = sqlx::query_scalar("select session_id from sessions").fetch_all(store.pool()).await.unwrap();
    ids.into_iter().collect()
}

/// After a run that stopped part way: every session in the warehouse is in the truth and matches it field by
/// field with exactly its child rows (nothing half-stored). Returns the ids present.
pub async fn assert_present_sessions_match_truth(
    store: &Store,
    truth: &[SessionInsights],
) -> std::collections::BTreeSet<String> {
    let present = stored_ids(store).await;
    let known: std::collections::BTreeSet<&str> = truth.iter().map(|s| s.session_id.as_str()).collect();
    let unknown: Vec<&String> = present.iter().filter(|id| !known.contains(id.as_str())).collect();
    assert!(unknown.is_empty(), "sessions stored that the API never had: {unknown:?}");
    assert_warehouse_matches_where(store, truth, |id| present.contains(id)).await;
    present
}

/// Ids of the truth in the API's order (newest `created_at` first, then `session_id` descending).
pub fn api_order(truth: &[SessionInsights]) -> Vec<String> {
    let mut keys: Vec<(i64, &str)> = truth.iter().map(|s| (s.created_at, s.session_id.as_str())).collect();
    keys.sort_unstable_by(|a, b| b.cmp(a));
    keys.into_iter().map(|(_, id)| id.to_owned()).collect()
}

/// Polls `condition` every 5 ms until it holds; panics with `what` after `timeout`.
pub async fn wait_until(what: &str, timeout: Duration, mut condition: impl FnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !condition() {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// `updated_after` of each list request the simulator answered since its request number `from`.
pub fn updated_after_since(sim: &Simulator, from: usize) -> Vec<i64> {
    sim.requests()[from..].iter().filter_map(|r| r.int_param("updated_after")).collect()
}

/// As [`wait_until`], for a condition that has to await (a query).
pub async fn eventually(what: &str, timeout: Duration, mut condition: impl AsyncFnMut() -> bool) {
    let deadline = std::time::Instant::now() + timeout;
    while !condition().await {
        assert!(std::time::Instant::now() < deadline, "timed out waiting until {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// The latest `sync_runs` row: (mode, status, retries, requests, error).
pub async fn last_run(store: &Store) -> (String, String, i64, i64, Option<String>) {
    sqlx::query_as("select mode, status, retries, requests, error from sync_runs order by run_id desc limit 1")
        .fetch_one(store.pool())
        .await
        .unwrap()
}

/// `sessions` sessions on a manual clock, pages of 10 (so small data sets still span many pages), plus `tweak`.
pub async fn small_pages_app(sessions: usize, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    TestApp::spawn_with(SimulatorConfig { sessions, manual_clock: true, ..SimulatorConfig::default() }, |s| {
        s.api.page_size = 10;
        tweak(s);
    })
    .await
}

// ---------------------------------------------------------------------------------------------------
// Per-session versions, for runs killed part way: each session must be whole in one version or another.

/// Every row of one session across all tables, keyed `table|row key`, plus its decoded `raw` (`raw|`) and
/// whether it is soft-deleted (`sessions.deleted_at` reduced to `deleted` or null). Empty: not stored.
pub type SessionVersion = BTreeMap<String, Value>;

fn by_session(tables: impl IntoIterator<Item = (String, BTreeMap<String, Value>)>) -> BTreeMap<String, SessionVersion> {
    let mut out: BTreeMap<String, SessionVersion> = BTreeMap::new();
    for (table, rows) in tables {
        for (key, row) in rows {
            out.entry(session_of_key(&key).to_owned()).or_default().insert(format!("{table}|{key}"), row);
        }
    }
    out
}

/// What the warehouse must hold for each session of `truth` (delivered by the default source), not deleted.
pub fn expected_versions(truth: &[SessionInsights]) -> BTreeMap<String, SessionVersion> {
    let tables = expected_rows(truth).into_iter().map(|(t, rows)| (t.to_owned(), rows));
    let mut out = by_session(tables);
    for s in truth {
        let version = out.entry(s.session_id.clone()).or_default();
        version.insert("raw|".to_owned(), serde_json::to_value(s).unwrap());
    }
    out
}

/// What the warehouse holds, per session, in the shape of [`expected_versions`].
pub async fn actual_versions(store: &Store) -> BTreeMap<String, SessionVersion> {
    let mut tables = vec![("sessions".to_owned(), actual_rows(store, "sessions", "session_id").await)];
    for (table, key) in CHILD_KEYS {
        tables.push(((*table).to_owned(), actual_rows(store, table, key).await));
    }
    // `deleted_at` is a time of the database's clock: only whether it is set is compared.
    for row in tables[0].1.values_mut() {
        let deleted = row.get("deleted_at").is_some_and(|d| !d.is_null());
        row["deleted_at"] = if deleted { json!("deleted") } else { Value::Null };
    }
    let mut out = by_session(tables);
    let raws: Vec<(String, Value)> =
        sqlx::query_as("select session_id, raw from sessions").fetch_all(store.pool()).await.unwrap();
    for (id, raw) in raws {
        let decoded: SessionInsights = serde_json::from_value(raw).unwrap();
        out.entry(id).or_default().insert("raw|".to_owned(), serde_json::to_value(decoded).unwrap());
    }
    out
}

/// `versions` with the sessions `ids` marked soft-deleted (their rows otherwise unchanged).
pub fn deleted_versions(
    mut versions: BTreeMap<String, SessionVersion>,
    ids: &[String],
) -> BTreeMap<String, SessionVersion> {
    for id in ids {
        let version = versions.get_mut(id).expect("a deleted session had a version");
        let key = format!("sessions|{id}");
        version.get_mut(&key).expect("a sessions row")["deleted_at"] = json!("deleted");
    }
    versions
}

/// How the sessions of a warehouse compare with two versions of the data.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct OldOrNew {
    /// Sessions whose two versions differ and that hold the old one (absent, when the old had none).
    pub old: std::collections::BTreeSet<String>,
    /// Sessions whose two versions differ and that hold the new one.
    pub new: std::collections::BTreeSet<String>,
    /// Sessions equal in both versions (and in the warehouse).
    pub same: usize,
}

/// Asserts that every session of the warehouse (every row of every table, `raw` included) equals EITHER its
/// `old` OR its `new` version, never a mix; an absent session must be absent in one of them. Returns which.
pub async fn assert_each_session_old_or_new(
    store: &Store,
    old: &BTreeMap<String, SessionVersion>,
    new: &BTreeMap<String, SessionVersion>,
) -> OldOrNew {
    let actual = actual_versions(store).await;
    let empty = SessionVersion::new();
    let ids: std::collections::BTreeSet<&String> = actual.keys().chain(old.keys()).chain(new.keys()).collect();
    let mut result = OldOrNew::default();
    for id in ids {
        let (got, was, will) =
            (actual.get(id).unwrap_or(&empty), old.get(id).unwrap_or(&empty), new.get(id).unwrap_or(&empty));
        if was == will {
            assert_eq!(got, was, "session {id} (unchanged by the run) differs");
            result.same += 1;
        } else if got == was {
            result.old.insert(id.clone());
        } else if got == will {
            result.new.insert(id.clone());
        } else {
            let diff = |a: &SessionVersion, b: &SessionVersion| -> Vec<String> {
                a.iter()
                    .filter(|(k, v)| b.get(*k) != Some(v))
                    .map(|(k, _)| k.clone())
                    .chain(b.keys().filter(|k| !a.contains_key(*k)).cloned())
                    .collect()
            };
            panic!(
                "session {id} is neither its old nor its new version: differs from the old in {:?}, from the new in {:?}",
                diff(got, was),
                diff(got, will)
            );
        }
    }
    result
}

/// A free TCP port on 127.0.0.1 (free when asked; whoever binds it next races nobody in practice, and
/// [`cluster::PrivateCluster::start`] retries if it is taken meanwhile).
pub fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind 127.0.0.1:0");
    listener.local_addr().expect("a bound listener has an address").port()
}
