//! Issue 12, item 5: several sources from one deployment. The sources are listed in a configuration file
//! (`[sources.NAME] base_url`) with their tokens in `DEVIN_ETL__SOURCES__NAME__TOKEN`; `sync` and `status` cover
//! each (or `--source NAME`), the daemon syncs each on its own loop, and a source that fails or hangs holds no
//! other back — in one process, and across replicas sharing the sources through their locks.

use crate::common;

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::child::{self, ChildLog};
use common::{TestDb, assert_source_matches_where, test_settings, unique_name};
use devin_etl::settings::SourceSettings;
use devin_etl::store::Store;
use devin_etl::telemetry::metric;
use devin_sim::{Fault, RunningSimulator, Simulator};
use secrecy::SecretString;
use serde_json::Value;

/// One source's API: a simulator of its own data, expecting its own token.
struct Upstream {
    name: &'static str,
    sim: Simulator,
    server: RunningSimulator,
}

async fn upstream(name: &'static str, seed: u64, sessions: usize) -> Upstream {
    let (sim, server) = common::enterprise_api(name, seed, sessions).await;
    Upstream { name, sim, server }
}

/// A configuration file listing `sources` (name, base URL) and no token, removed when dropped.
struct ConfigFile(PathBuf);

impl ConfigFile {
    fn listing(sources: &[(&str, String)]) -> ConfigFile {
        let body: String =
            sources.iter().map(|(name, url)| format!("[sources.{name}]\nbase_url = \"{url}\"\n\n")).collect();
        let path = std::env::temp_dir().join(format!("{}.toml", unique_name("devin_etl_sources")));
        std::fs::write(&path, body).unwrap();
        ConfigFile(path)
    }

    fn arg(&self) -> String {
        self.0.display().to_string()
    }
}

impl Drop for ConfigFile {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.0);
    }
}

/// The environment of a `devin-etl` child: the database, each source's token, small pages.
fn env(db: &TestDb, tokens: &[(&str, &str)]) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = vec![
        ("DATABASE_URL".into(), db.url.clone()),
        ("DEVIN_ETL__API__PAGE_SIZE".into(), "20".into()),
        ("DEVIN_ETL__API__RETRY_INITIAL_BACKOFF".into(), "10ms".into()),
        ("DEVIN_ETL__API__RETRY_MAX_BACKOFF".into(), "50ms".into()),
        ("DEVIN_ETL__SYNC__BACKFILL_CONCURRENCY".into(), "2".into()),
        ("DEVIN_ETL__SYNC__BACKFILL_WINDOW".into(), "90d".into()),
        ("DEVIN_ETL__SYNC__CLOCK_TOLERANCE".into(), "3650d".into()),
        ("DEVIN_ETL__LOG__FORMAT".into(), "json".into()),
        ("RUST_LOG".into(), "info".into()),
    ];
    for (name, token) in tokens {
        env.push((format!("DEVIN_ETL__SOURCES__{}__TOKEN", name.to_uppercase()), (*token).to_owned()));
    }
    env
}

fn command(config: &ConfigFile, args: &[&str], env: &[(String, String)]) -> tokio::process::Command {
    let config = config.arg();
    let mut all = vec!["--config", config.as_str()];
    all.extend_from_slice(args);
    child::devin_etl(&all, env.iter().map(|(k, v)| (k.as_str(), v.clone())))
}

async fn output(config: &ConfigFile, args: &[&str], env: &[(String, String)]) -> (Option<i32>, String, String) {
    let out = command(config, args, env).output().await.unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// A migrated store on the test's database (the API settings are unused).
async fn store_of(db: &TestDb) -> Store {
    devin_etl::app::migrated_store(&test_settings(&db.url, "http://127.0.0.1:9", "unused")).await.unwrap()
}

/// `(mode, status, error)` of the source's runs, oldest first.
async fn runs_of(store: &Store, source: &str) -> Vec<(String, String, Option<String>)> {
    sqlx::query_as("select mode, status, error from sync_runs where source = $1 order by run_id")
        .bind(source)
        .fetch_all(store.pool())
        .await
        .unwrap()
}

async fn count_runs(store: &Store, source: &str, mode: &str, status: &str) -> usize {
    runs_of(store, source).await.iter().filter(|r| r.0 == mode && r.1 == status).count()
}

/// The source's sessions are exactly its upstream's, and its watermark is the upstream's clock minus settle.
async fn assert_synced_exactly(store: &Store, up: &Upstream) {
    let truth = up.sim.sessions();
    let ids: std::collections::BTreeSet<&str> = truth.iter().map(|s| s.session_id.as_str()).collect();
    assert_source_matches_where(store, up.name, &truth, |id| ids.contains(id)).await;
    let of_source: i64 = sqlx::query_scalar("select count(*) from sessions where source = $1")
        .bind(up.name)
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(of_source, truth.len() as i64, "{}: sessions delivered by it", up.name);
    assert_eq!(store.watermark(up.name).await.unwrap(), Some(up.sim.now() - 30), "{}: watermark", up.name);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_runs_every_source_even_after_one_fails_and_names_the_failed_one() {
    let db = TestDb::create().await;
    // acme comes first and its token is refused (401); globex after it must still be synced.
    let acme = upstream("acme", 1, 30).await;
    let globex = upstream("globex", 2, 50).await;
    let config = ConfigFile::listing(&[("acme", acme.server.base_url()), ("globex", globex.server.base_url())]);
    let env = env(&db, &[("acme", "cog_revoked"), ("globex", globex.sim.token())]);

    let (code, _, stderr) = output(&config, &["sync"], &env).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("the sync failed for source(s) acme (the others succeeded)"), "{stderr}");
    assert!(stderr.contains("401"), "the cause is shown: {stderr}");
    assert!(!stderr.contains("cog_revoked") && !stderr.contains(globex.sim.token()), "no token printed: {stderr}");
    let store = store_of(&db).await;
    assert_synced_exactly(&store, &globex).await;
    let globex_runs: Vec<(String, String)> = runs_of(&store, "globex").await.into_iter().map(|r| (r.0, r.1)).collect();
    assert_eq!(globex_runs, [("incremental".into(), "succeeded".into()), ("enrichment".into(), "succeeded".into())]);
    let acme_runs = runs_of(&store, "acme").await;
    assert_eq!(acme_runs.len(), 1, "{acme_runs:?}");
    assert_eq!((acme_runs[0].0.as_str(), acme_runs[0].1.as_str()), ("incremental", "failed"));
    assert!(acme_runs[0].2.as_deref().is_some_and(|e| e.contains("401")), "{acme_runs:?}");
    assert_eq!(store.watermark("acme").await.unwrap(), None);
    let acme_sessions: i64 = sqlx::query_scalar("select count(*) from sessions where source = 'acme'")
        .fetch_one(store.pool())
        .await
        .unwrap();
    assert_eq!(acme_sessions, 0);

    // --source NAME: that source only. The fixed token makes acme sync; globex is not touched.
    let fixed = self::env(&db, &[("acme", acme.sim.token()), ("globex", globex.sim.token())]);
    let (code, _, stderr) = output(&config, &["sync", "--source", "acme"], &fixed).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert_synced_exactly(&store, &acme).await;
    assert_eq!(runs_of(&store, "globex").await.len(), 2, "globex was not synced again");
    // An unknown name is refused, listing the configured ones.
    let (code, _, stderr) = output(&config, &["sync", "--source", "initech"], &fixed).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("--source \"initech\": no such source; the configured sources are acme, globex"),
        "{stderr}"
    );
    let (code, _, stderr) = output(&config, &["status", "--source", "initech"], &fixed).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("acme, globex"), "{stderr}");

    // A backfill over both: each source's own windows and watermark.
    let (code, _, stderr) = output(&config, &["sync", "--backfill"], &fixed).await;
    assert_eq!(code, Some(0), "{stderr}");
    for up in [&acme, &globex] {
        assert_synced_exactly(&store, up).await;
        assert_eq!(count_runs(&store, up.name, "backfill", "succeeded").await, 1, "{}", up.name);
    }

    // status: each source, human and JSON; one source alone keeps the single-source shape.
    let (code, text, stderr) = output(&config, &["status"], &fixed).await;
    assert_eq!(code, Some(0), "{stderr}");
    assert!(
        text.contains("source:    acme (schema devin)") && text.contains("source:    globex (schema devin)"),
        "{text}"
    );
    assert_eq!(text.matches("session_tags").count(), 1, "the row counts once:\n{text}");
    let (_, json, _) = output(&config, &["status", "--json"], &fixed).await;
    let json: Value = serde_json::from_str(&json).unwrap();
    let sources = json["sources"].as_array().expect("a list of sources");
    let seen: Vec<(&str, i64)> =
        sources.iter().map(|s| (s["source"].as_str().unwrap(), s["live_sessions"].as_i64().unwrap())).collect();
    assert_eq!(seen, [("acme", 30), ("globex", 50)]);
    assert!(sources.iter().all(|s| s.get("tables").is_none() && s["watermark"].is_i64()));
    assert!(json["tables"].as_array().is_some_and(|t| !t.is_empty()), "{json}");
    let (_, one, _) = output(&config, &["status", "--json", "--source", "globex"], &fixed).await;
    let one: Value = serde_json::from_str(&one).unwrap();
    assert_eq!((one["source"].as_str(), one["live_sessions"].as_i64()), (Some("globex"), Some(50)));
    assert!(one["tables"].is_array(), "{one}");
}

#[tokio::test]
async fn a_token_in_the_config_file_is_refused_and_a_missing_one_named() {
    let db = TestDb::create().await;
    let path = std::env::temp_dir().join(format!("{}.toml", unique_name("devin_etl_leaky")));
    std::fs::write(&path, "[sources.acme]\nbase_url = \"https://api.devin.ai\"\ntoken = \"cog_committed\"\n").unwrap();
    let leaky = ConfigFile(path);
    let (code, _, stderr) = output(&leaky, &["status"], &env(&db, &[])).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(stderr.contains("sources.acme.token: a token must not be written in the configuration file"), "{stderr}");
    assert!(stderr.contains("DEVIN_ETL__SOURCES__ACME__TOKEN") && !stderr.contains("cog_committed"), "{stderr}");

    let config = ConfigFile::listing(&[("acme", "https://api.devin.ai".to_owned())]);
    let (code, _, stderr) = output(&config, &["sync"], &env(&db, &[])).await;
    assert_eq!(code, Some(1), "{stderr}");
    assert!(
        stderr.contains("sources.acme.token: no API token for source acme; set DEVIN_ETL__SOURCES__ACME__TOKEN"),
        "{stderr}"
    );
}

/// Sum of the samples of `name` whose labels include `labels` (Prometheus text format); `None` when there is none.
fn sample_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (metric, label_text) = series.split_once('{').unwrap_or((series, "}"));
        if metric != name {
            continue;
        }
        let have: HashMap<&str, &str> = label_text
            .trim_end_matches('}')
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k, v.trim_matches('"')))
            .collect();
        if labels.iter().all(|(k, v)| have.get(k) == Some(v)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

async fn get(url: &str) -> Option<(u16, String)> {
    let response = tokio::time::timeout(Duration::from_secs(5), reqwest::get(url)).await.ok()?.ok()?;
    let status = response.status().as_u16();
    Some((status, response.text().await.ok()?))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_syncs_every_source_and_a_refused_or_hanging_one_holds_no_one_back() {
    let db = TestDb::create().await;
    let good = upstream("good", 3, 60).await;
    let refused = upstream("refused", 4, 20).await;
    // An API that accepts connections and never answers: its runs wait for api.timeout.
    let hanging = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let hanging_url = format!("http://{}", hanging.local_addr().unwrap());
    let config = ConfigFile::listing(&[
        ("good", good.server.base_url()),
        ("hanging", hanging_url),
        ("refused", refused.server.base_url()),
    ]);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let mut env = env(&db, &[("good", good.sim.token()), ("hanging", "cog_h"), ("refused", "cog_wrong")]);
    env.extend([
        ("DEVIN_ETL__SYNC__SCHEDULE".to_owned(), "* * * * * *".to_owned()),
        ("DEVIN_ETL__SYNC__RECONCILE_SCHEDULE".to_owned(), "0 0 0 1 1 * 2099".to_owned()),
        ("DEVIN_ETL__SYNC__SHUTDOWN_GRACE".to_owned(), "1s".to_owned()),
        ("DEVIN_ETL__API__TIMEOUT".to_owned(), "60s".to_owned()),
        ("DEVIN_ETL__SERVER__LISTEN".to_owned(), format!("127.0.0.1:{port}")),
    ]);
    let log = ChildLog::new(&format!("{}-sources", db.name));
    let mut daemon = log.spawn(&mut command(&config, &["run"], &env));
    let store = store_of(&db).await;

    // The good source syncs tick after tick while the hanging one's first run waits and the refused one fails.
    let deadline = Instant::now() + Duration::from_secs(30);
    while count_runs(&store, "good", "incremental", "succeeded").await < 3
        || count_runs(&store, "refused", "incremental", "failed").await < 2
    {
        assert!(daemon.try_wait().unwrap().is_none(), "the daemon ended:\n{}", log.tail());
        assert!(Instant::now() < deadline, "no progress:\n{}", log.tail());
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let hanging_runs = runs_of(&store, "hanging").await;
    assert_eq!(hanging_runs.len(), 1, "{hanging_runs:?}");
    assert_eq!((hanging_runs[0].0.as_str(), hanging_runs[0].1.as_str()), ("incremental", "running"));

    let base = format!("http://127.0.0.1:{port}");
    let (_, text) = get(&format!("{base}/metrics")).await.expect("/metrics answers");
    let value = |labels: &[(&str, &str)]| sample_sum(&text, metric::RUNS, labels).unwrap_or(0.0);
    assert!(value(&[("source", "good"), ("mode", "incremental"), ("status", "succeeded")]) >= 3.0, "{text}");
    assert_eq!(value(&[("source", "good"), ("status", "failed")]), 0.0, "{text}");
    assert!(value(&[("source", "refused"), ("mode", "incremental"), ("status", "failed")]) >= 2.0, "{text}");
    assert_eq!(value(&[("source", "hanging")]), 0.0, "its run has not finished: {text}");
    let requests = |source, status| sample_sum(&text, metric::API_REQUESTS, &[("source", source), ("status", status)]);
    assert!(requests("refused", "401").is_some_and(|n| n >= 2.0), "{text}");
    assert!(requests("good", "200").is_some_and(|n| n >= 3.0), "{text}");
    assert_eq!(sample_sum(&text, metric::API_REQUESTS, &[("source", "hanging")]), None, "{text}");
    assert!(sample_sum(&text, metric::WATERMARK_LAG, &[("source", "good")]).is_some(), "{text}");
    // Not ready while any source has never synced; the reason names each, not the good one.
    let (status, body) = get(&format!("{base}/readyz")).await.expect("/readyz answers");
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("source hanging: no successful sync yet") && body.contains("source refused:"), "{body}");
    assert!(!body.contains("source good"), "{body}");

    // status shows each source.
    let (code, json, stderr) = output(&config, &["status", "--json"], &env).await;
    assert_eq!(code, Some(0), "{stderr}");
    let json: Value = serde_json::from_str(&json).unwrap();
    let names: Vec<&str> = json["sources"].as_array().unwrap().iter().map(|s| s["source"].as_str().unwrap()).collect();
    assert_eq!(names, ["good", "hanging", "refused"]);
    assert_eq!(json["sources"][0]["live_sessions"].as_i64(), Some(60));

    child::signal(&daemon, "TERM");
    let exit = tokio::time::timeout(Duration::from_secs(20), daemon.wait()).await.expect("stops").unwrap();
    assert!(exit.success(), "{exit}\n{}", log.tail());
    assert_synced_exactly(&store, &good).await;
    let refused_runs = runs_of(&store, "refused").await;
    assert!(
        refused_runs.iter().all(|r| r.1 == "failed" && r.2.as_deref().is_some_and(|e| e.contains("401"))),
        "{refused_runs:?}"
    );
    assert_eq!(store.watermark("refused").await.unwrap(), None);
    assert!(!log.text().contains("cog_wrong") && !log.text().contains(good.sim.token()), "no token in the logs");
    drop(hanging);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_share_the_sources_through_their_locks() {
    // Each replica may run one source at a time (sync.source_concurrency = 1), and every run is slow: sources run at
    // the same time only if the two replicas took one each.
    let db = TestDb::create().await;
    let acme = upstream("acme", 5, 20).await;
    let globex = upstream("globex", 6, 20).await;
    for up in [&acme, &globex] {
        up.sim.inject(0, Fault::Slow(Duration::from_millis(400)), 1_000);
    }
    let mut settings = test_settings(&db.url, &acme.server.base_url(), acme.sim.token());
    settings.sync.schedule = devin_etl::settings::parse_schedule("k", "* * * * * *").unwrap();
    settings.sync.reconcile_schedule = devin_etl::settings::parse_schedule("k", "0 0 0 1 1 * 2099").unwrap();
    settings.sync.source_concurrency = 1;
    settings.sources = [&acme, &globex]
        .iter()
        .map(|up| SourceSettings {
            name: up.name.to_owned(),
            base_url: up.server.base_url().parse().unwrap(),
            token: SecretString::from(up.sim.token().to_owned()),
        })
        .collect();
    let (stop, stopped) = tokio::sync::watch::channel(false);
    let mut replicas = Vec::new();
    for _ in 0..2 {
        let syncers = devin_etl::app::syncers(settings.per_source()).await.unwrap();
        let syncers = syncers.into_iter().map(|s| s.with_shutdown(stopped.clone())).collect();
        replicas.push(tokio::spawn(devin_etl::schedule::run_sources(syncers, false, stopped.clone())));
    }
    tokio::time::sleep(Duration::from_secs(6)).await;
    stop.send(true).unwrap();
    for replica in replicas {
        replica.await.unwrap().unwrap();
    }

    let store = store_of(&db).await;
    type Run = (String, DateTime<Utc>, DateTime<Utc>);
    let runs: Vec<Run> = sqlx::query_as(
        "select source, started_at, finished_at from sync_runs where status = 'succeeded' order by started_at",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let overlap = |a: &Run, b: &Run| a.1 < b.2 && b.1 < a.2;
    for (i, a) in runs.iter().enumerate() {
        for b in &runs[i + 1..] {
            assert!(a.0 != b.0 || !overlap(a, b), "two runs of one source overlap: {a:?} {b:?}");
        }
    }
    let shared = runs.iter().any(|a| runs.iter().any(|b| a.0 != b.0 && overlap(a, b)));
    assert!(shared, "the sources never ran at once, so one replica ran both: {runs:?}");
    for up in [&acme, &globex] {
        assert_synced_exactly(&store, up).await;
    }
}
