//! `/healthz`, `/readyz` and `/metrics` served on a real socket, against the real PostgreSQL and the simulator.
//! The database "goes away" through a TCP proxy the test cuts, so the shared PostgreSQL server keeps running.

use crate::common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use common::{TestApp, TestDb, admin_url, free_port, test_settings};
use devin_etl::http::{HttpState, serve};
use devin_etl::store::Store;
use devin_etl::sync::Mode;
use devin_etl::telemetry::{install_metrics, metric};
use devin_sim::{Fault, SimulatorConfig};
use secrecy::SecretString;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::{oneshot, watch};
use tokio::task::JoinHandle;

/// The HTTP server of one test, stopped through its shutdown future.
struct Served {
    base: String,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<std::io::Result<()>>,
}

impl Served {
    async fn start(store: Store, source: &str, max_staleness: Duration) -> Served {
        let state = HttpState {
            store,
            source: source.to_owned(),
            max_staleness,
            max_run_duration: Duration::from_secs(3600),
            metrics: install_metrics().expect("metrics recorder"),
            page: Default::default(),
        };
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(serve(listener, state, async move {
            let _ = stopped.await;
        }));
        Served { base, stop: Some(stop), task }
    }

    async fn get(&self, path: &str) -> (u16, String, String) {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(20)).build().unwrap();
        let response = client.get(format!("{}{path}", self.base)).send().await.unwrap();
        let status = response.status().as_u16();
        let content_type = response
            .headers()
            .get(reqwest::header::CONTENT_TYPE)
            .map(|v| v.to_str().unwrap().to_owned())
            .unwrap_or_default();
        (status, content_type, response.text().await.unwrap())
    }

    /// Polls `path` until it answers `status` (a pool needs a moment to notice a connection is back).
    async fn wait_for(&self, path: &str, status: u16) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let (got, _, body) = self.get(path).await;
            if got == status {
                return body;
            }
            assert!(Instant::now() < deadline, "{path} still answers {got} ({body:?}), expected {status}");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Shuts the server down through its shutdown future; `serve` must return Ok.
    async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let result = tokio::time::timeout(Duration::from_secs(10), self.task).await;
        result.expect("serve returns after shutdown").expect("serve task").expect("serve ends without error");
    }
}

/// A TCP proxy to PostgreSQL that the test can cut (every connection closed, the port closed so new
/// connections are refused) and restore (the same port listens again).
struct Proxy {
    addr: SocketAddr,
    open: watch::Sender<bool>,
    task: JoinHandle<()>,
}

fn listen(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let socket = TcpSocket::new_v4()?;
    socket.set_reuseaddr(true)?;
    socket.bind(addr)?;
    socket.listen(128)
}

impl Proxy {
    async fn start(upstream: SocketAddr) -> Proxy {
        let first = listen(SocketAddr::from(([127, 0, 0, 1], 0))).unwrap();
        let addr = first.local_addr().unwrap();
        let (open, mut state) = watch::channel(true);
        let task = tokio::spawn(async move {
            let mut listener = Some(first);
            loop {
                let Some(current) = &listener else {
                    if state.changed().await.is_err() {
                        return;
                    }
                    if *state.borrow_and_update() {
                        listener = Some(listen(addr).expect("the proxy's port can be bound again"));
                    }
                    continue;
                };
                tokio::select! {
                    accepted = current.accept() => {
                        let Ok((mut client, _)) = accepted else { continue };
                        let mut severed = state.clone();
                        tokio::spawn(async move {
                            let Ok(mut server) = TcpStream::connect(upstream).await else { return };
                            tokio::select! {
                                _ = tokio::io::copy_bidirectional(&mut client, &mut server) => {}
                                _ = severed.wait_for(|open| !*open) => {}
                            }
                        });
                    }
                    changed = state.changed() => {
                        if changed.is_err() {
                            return;
                        }
                        if !*state.borrow_and_update() {
                            listener = None;
                        }
                    }
                }
            }
        });
        Proxy { addr, open, task }
    }

    fn cut(&self) {
        self.open.send_replace(false);
    }

    fn restore(&self) {
        self.open.send_replace(true);
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// The address of the test PostgreSQL server.
async fn postgres_addr() -> SocketAddr {
    let url = url::Url::parse(&admin_url()).unwrap();
    let host = url.host_str().unwrap_or("127.0.0.1").to_owned();
    let port = url.port().unwrap_or(5432);
    tokio::net::lookup_host((host.as_str(), port)).await.unwrap().next().expect("PostgreSQL host resolves")
}

/// A second store on the test's database, connected through `proxy`.
async fn store_through(app: &TestApp, proxy: &Proxy) -> Store {
    let mut url = url::Url::parse(&app.db.url).unwrap();
    url.set_host(Some("127.0.0.1")).unwrap();
    url.set_port(Some(proxy.addr.port())).unwrap();
    let mut database = app.settings.database.clone();
    database.url = SecretString::from(url.to_string());
    database.connect_timeout = Duration::from_secs(1);
    Store::connect(&database, 2).await.unwrap()
}

#[tokio::test]
async fn readyz_waits_for_a_successful_sync_and_reports_staleness() {
    let app = TestApp::spawn(40).await;
    let served = Served::start(app.store().clone(), "devin", Duration::from_secs(3600)).await;

    let (status, content_type, body) = served.get("/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    assert!(content_type.starts_with("text/plain"), "{content_type}");

    let (status, content_type, body) = served.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: no successful sync yet"), "{body}");
    assert!(content_type.starts_with("text/plain"), "{content_type}");

    app.syncer.run_once(Mode::Incremental).await.unwrap();
    let (status, _, body) = served.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    assert!(body.starts_with("ready: last successful sync"), "{body}");
    assert!(body.contains("(max 1h)"), "{body}");

    // The last success ages past max_staleness; a newer failed run does not count as a success.
    sqlx::query("update sync_runs set finished_at = now() - interval '2 hours 5 minutes' where status = 'succeeded'")
        .execute(app.store().pool())
        .await
        .unwrap();
    sqlx::query(
        "insert into sync_runs (source, mode, status, finished_at, error) \
         values ('devin', 'incremental', 'failed', now(), 'boom')",
    )
    .execute(app.store().pool())
    .await
    .unwrap();
    let (status, _, body) = served.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(body.trim(), "not ready: last successful sync 2h 5m ago (max 1h)");

    // Readiness is about the configured source only.
    let other = Served::start(app.store().clone(), "another_source", Duration::from_secs(3600)).await;
    let (status, _, body) = other.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no successful sync yet"), "{body}");
    other.stop().await;

    // A tiny max_staleness: a run that just finished is already too old.
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    let strict = Served::start(app.store().clone(), "devin", Duration::from_millis(1)).await;
    tokio::time::sleep(Duration::from_millis(20)).await;
    let (status, _, body) = strict.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: last successful sync") && body.contains("(max 1ms)"), "{body}");
    strict.stop().await;

    let (status, _, body) = served.get("/readyz").await;
    assert_eq!(status, 200, "the second run is fresh: {body}");

    // A run that has been going for far longer than server.max_run_duration (3h > 1h) is reported as stuck.
    let stuck: i64 = sqlx::query_scalar(
        "insert into sync_runs (source, mode, status, started_at) \
         values ('devin', 'reconcile', 'running', now() - interval '3 hours') returning run_id",
    )
    .fetch_one(app.store().pool())
    .await
    .unwrap();
    let (status, _, body) = served.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert_eq!(
        body.trim(),
        format!(
            "not ready: reconcile run {stuck} has been running for 3h (server.max_run_duration 1h): it may be stuck"
        )
    );
    // The next run closes it (its process is gone: it held no lock), and readiness comes back.
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    let (status, _, body) = served.get("/readyz").await;
    assert_eq!(status, 200, "{body}");

    let (status, _, _) = served.get("/no-such-endpoint").await;
    assert_eq!(status, 404);
    served.stop().await;
}

#[tokio::test]
async fn readyz_reports_pending_migrations() {
    let db = TestDb::create().await;
    let settings = test_settings(&db.url, "http://127.0.0.1:9", "cog_unused");
    let store = Store::connect(&settings.database, 2).await.unwrap();
    let served = Served::start(store.clone(), "devin", Duration::from_secs(3600)).await;

    let (status, _, body) = served.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.starts_with("not ready: migrations not current (pending: "), "{body}");
    let first = devin_etl::store::MIGRATOR.iter().next().unwrap().version;
    assert!(body.contains(&first.to_string()), "names the pending versions: {body}");

    store.migrate().await.unwrap();
    let (status, _, body) = served.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("no successful sync yet"), "migrations are current now: {body}");

    // A migration whose last attempt failed leaves the schema half-done.
    sqlx::query("update _sqlx_migrations set success = false where version = $1")
        .bind(first)
        .execute(store.pool())
        .await
        .unwrap();
    let (status, _, body) = served.get("/readyz").await;
    assert_eq!(status, 503, "{body}");
    assert!(body.contains(&format!("failed: {first}")), "{body}");
    served.stop().await;
}

#[tokio::test]
async fn readyz_flips_when_the_database_goes_away_and_back_when_it_returns() {
    let app = TestApp::spawn(30).await;
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    let proxy = Proxy::start(postgres_addr().await).await;
    let store = store_through(&app, &proxy).await;
    let served = Served::start(store, "devin", Duration::from_secs(3600)).await;

    let (status, _, body) = served.get("/readyz").await;
    assert_eq!(status, 200, "{body}");
    let (status, _, metrics_before) = served.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics_before.contains("devin_etl_watermark_lag_seconds{source=\"devin\"}"), "{metrics_before}");

    proxy.cut();
    let (status, _, body) = served.get("/readyz").await;
    assert_eq!(status, 503, "{body}");

    assert!(body.starts_with("not ready: database unreachable"), "{body}");
    // Liveness never depends on the database, and /metrics still answers (with the last known watermark).
    let (status, _, body) = served.get("/healthz").await;
    assert_eq!((status, body.trim()), (200, "ok"));
    let (status, _, metrics_during) = served.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(metrics_during.contains("devin_etl_watermark_lag_seconds{source=\"devin\"}"), "{metrics_during}");
    let (status, _, body) = served.get("/readyz").await;
    assert_eq!(status, 503, "still away: {body}");

    proxy.restore();
    let body = served.wait_for("/readyz", 200).await;
    assert!(body.starts_with("ready:"), "{body}");
    served.stop().await;
}

/// Sum of the samples of `name` whose labels include `labels` (Prometheus text format).
fn sample_sum(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let mut found = None;
    for line in text.lines().filter(|l| !l.starts_with('#') && !l.trim().is_empty()) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let (metric, label_text) = match series.split_once('{') {
            Some((metric, rest)) => (metric, rest.trim_end_matches('}')),
            None => (series, ""),
        };
        if metric != name {
            continue;
        }
        let have: HashMap<&str, &str> = label_text
            .split(',')
            .filter_map(|kv| kv.split_once('='))
            .map(|(k, v)| (k.trim(), v.trim_matches('"')))
            .collect();
        if labels.iter().all(|(k, v)| have.get(k) == Some(v)) {
            *found.get_or_insert(0.0) += value.parse::<f64>().unwrap();
        }
    }
    found
}

#[tokio::test]
async fn metrics_are_prometheus_text_and_the_source_gauges_are_exact() {
    // A source of its own: the recorder is process-wide and other tests in this binary run syncs too, so only
    // series labelled with this source are this test's alone. The counters without a source label (runs, pages,
    // sessions, rows, requests, retries, durations) are checked exactly in a process of their own below.
    let source = "metrics_test";
    let config = SimulatorConfig { sessions: 60, manual_clock: true, ..SimulatorConfig::default() };
    let app = TestApp::spawn_with(config, |s| s.sync.source = source.to_owned()).await;
    // The API server's clock an hour behind ours: the watermark lag shows it.
    app.sim.advance(-3600);
    let served = Served::start(app.store().clone(), source, Duration::from_secs(3600)).await;
    // Installing again returns the same recorder.
    install_metrics().unwrap();

    let (status, content_type, before) = served.get("/metrics").await;
    assert_eq!(status, 200);
    assert!(content_type.starts_with("text/plain; version=0.0.4"), "{content_type}");
    for name in [metric::RUNS, metric::API_RETRIES] {
        assert!(before.contains(&format!("# HELP {name} ")), "{name} is described from the start:\n{before}");
        assert!(before.contains(&format!("# TYPE {name} counter")), "{before}");
    }
    assert!(!before.contains(&format!("source=\"{source}\"")), "nothing of this source yet:\n{before}");

    let started = chrono::Utc::now().timestamp();
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    let finished = chrono::Utc::now().timestamp();
    let (_, _, after) = served.get("/metrics").await;
    let scraped = chrono::Utc::now().timestamp();

    for name in metric::ALL.iter().filter(|name| !metric::ONLY_AFTER_AN_EVENT.contains(name)) {
        assert!(after.contains(&format!("# HELP {name} ")), "HELP line of {name} missing:\n{after}");
    }
    assert!(
        after.lines().any(|l| l.starts_with("devin_etl_run_duration_seconds_bucket") && l.contains("le=\"3600\"")),
        "run duration buckets reach an hour:\n{after}"
    );
    // Exactly the series of this source that one successful incremental run makes: no others, no faults.
    // Every per-source metric carries the source label, so this source's series are the metrics a run records.
    let ours: Vec<&str> = after.lines().filter(|l| l.contains(&format!("source=\"{source}\""))).collect();
    let names: std::collections::BTreeSet<&str> =
        ours.iter().filter_map(|l| l.split('{').next()).map(|n| n.trim_end_matches("_bucket")).collect();
    let names: std::collections::BTreeSet<&str> =
        names.into_iter().map(|n| n.trim_end_matches("_sum").trim_end_matches("_count")).collect();
    let expected: std::collections::BTreeSet<&str> = [
        metric::RUNS,
        metric::PAGES,
        metric::SESSIONS_READ,
        metric::SESSIONS_UPSERTED,
        metric::ROWS_WRITTEN,
        metric::API_REQUESTS,
        metric::RUN_DURATION,
        metric::LAST_SUCCESS,
        metric::WATERMARK_LAG,
    ]
    .into_iter()
    .collect();
    assert_eq!(names, expected, "{ours:?}");
    assert_eq!(sample_sum(&after, metric::RUNS, &[("source", source)]), Some(1.0), "{ours:?}");
    assert_eq!(
        sample_sum(&after, metric::RUNS, &[("source", source), ("mode", "incremental"), ("status", "succeeded")]),
        Some(1.0)
    );
    let last_success = sample_sum(&after, metric::LAST_SUCCESS, &[("source", source), ("mode", "incremental")])
        .expect("last success gauge");
    assert!(
        (started as f64..=finished as f64).contains(&last_success),
        "{last_success} not in [{started}, {finished}]"
    );

    // Lag = our clock at the scrape − watermark, where the watermark is the API server's time (an hour behind)
    // − settle (30 s).
    let watermark = app.store().watermark(source).await.unwrap().expect("watermark after a run");
    assert_eq!(watermark, app.sim.now() - 30);
    let lag = sample_sum(&after, metric::WATERMARK_LAG, &[("source", source)]).expect("lag gauge");
    let (least, most) = ((finished - watermark) as f64, (scraped + 1 - watermark) as f64);
    assert!((least..=most).contains(&lag), "lag {lag}, expected {least}..={most}");
    assert!((3600.0..3700.0).contains(&lag), "lag {lag}");
    served.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_of_a_process_of_its_own_count_a_run_exactly() {
    // `devin-etl run --backfill` in a process of its own: its recorder sees nothing but its one backfill, so every
    // counter (source label or not) must equal what the run did, counted independently: the simulator's request
    // log and the warehouse's rows.
    let app = TestApp::spawn(70).await;
    app.sim.inject(2, Fault::Status { code: 503, retry_after: Some("0".to_owned()) }, 1);
    app.sim.inject(1, Fault::Status { code: 429, retry_after: Some("0".to_owned()) }, 1);
    let port = free_port();
    let log = common::child::ChildLog::new(&format!("{}-metrics", app.db.name));
    let mut command = common::child::devin_etl(&["run", "--backfill"], common::child::child_env(&app));
    command
        .env("DEVIN_ETL__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("DEVIN_ETL__SYNC__SCHEDULE", "0 0 0 1 1 * 2099")
        .env("DEVIN_ETL__SYNC__RECONCILE_SCHEDULE", "0 0 0 1 1 * 2099");
    let mut child = log.spawn(&mut command);
    let base = format!("http://127.0.0.1:{port}");
    // The gauge is set last when a run has succeeded.
    let deadline = Instant::now() + Duration::from_secs(20);
    let text = loop {
        assert!(child.try_wait().unwrap().is_none(), "the daemon ended:\n{}", log.tail());
        if let Ok(Ok(response)) =
            tokio::time::timeout(Duration::from_secs(5), reqwest::get(format!("{base}/metrics"))).await
            && let Ok(text) = response.text().await
            && sample_sum(&text, metric::LAST_SUCCESS, &[("source", "devin"), ("mode", "backfill")]).is_some()
        {
            break text;
        }
        assert!(Instant::now() < deadline, "no successful backfill in the daemon's metrics:\n{}", log.tail());
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    common::child::signal(&child, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), child.wait()).await.unwrap().unwrap();
    assert!(status.success(), "{status}\n{}", log.tail());
    app.assert_matches_truth().await;

    let value = |name: &str, labels: &[(&str, &str)]| sample_sum(&text, name, labels).unwrap_or(0.0) as u64;
    let requests = app.sim.requests();
    let with_status = |code: u16| requests.iter().filter(|r| r.status == code).count() as u64;
    assert_eq!(with_status(503) + with_status(429), 2, "both faults were hit");
    assert_eq!(value(metric::API_REQUESTS, &[]), requests.len() as u64, "every request, once");
    for code in [200, 429, 503] {
        assert_eq!(value(metric::API_REQUESTS, &[("status", &code.to_string())]), with_status(code), "{code}");
    }
    assert_eq!(value(metric::API_RETRIES, &[]), 2, "one retry per fault");
    assert_eq!(value(metric::RUNS, &[]), 1, "one run:\n{text}");
    assert_eq!(value(metric::RUNS, &[("mode", "backfill"), ("status", "succeeded")]), 1);
    assert_eq!(value("devin_etl_run_duration_seconds_count", &[]), 1);
    assert_eq!(value("devin_etl_run_duration_seconds_count", &[("mode", "backfill")]), 1);
    // Every answered page was loaded, the clock probe included (it is a page of the walk's first window).
    let (pages, upserted): (i64, i64) =
        sqlx::query_as("select pages, sessions_upserted from sync_runs").fetch_one(app.store().pool()).await.unwrap();
    assert_eq!(value(metric::PAGES, &[]), pages as u64);
    assert_eq!(value(metric::PAGES, &[("mode", "backfill")]), with_status(200), "{text}");
    assert_eq!(value(metric::SESSIONS_READ, &[("mode", "backfill")]), 70, "no item read twice");
    assert_eq!(value(metric::SESSIONS_UPSERTED, &[("mode", "backfill")]), 70);
    assert_eq!(upserted, 70);
    for table in devin_etl::store::catalogue::Table::ALL {
        let rows: i64 = sqlx::query_scalar(&format!("select count(*) from {}", table.name()))
            .fetch_one(app.store().pool())
            .await
            .unwrap();
        assert!(rows > 0, "{table:?} has rows");
        assert_eq!(value(metric::ROWS_WRITTEN, &[("table", table.name())]), rows as u64, "rows of {table:?}");
    }
    for name in metric::ONLY_AFTER_AN_EVENT {
        assert_eq!(sample_sum(&text, name, &[]), None, "{name} without such an event:\n{text}");
    }
}
