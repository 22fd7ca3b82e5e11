//! Webhook alerts: a local receiver records every body it is sent; the simulator and the warehouse provoke each
//! condition. One notification per incident (and one when it ends), across evaluations and racing replicas; a
//! receiver that is down or hangs never holds up a sync, gets the pending alert once it is back, and no body ever
//! carries the API token.

use crate::common;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{DEFAULT_SOURCE, TestApp, eventually};
use devin_etl::alerts::{Alerter, Delivery, REDACTED};
use devin_etl::schedule::run_daemon;
use devin_etl::settings::{Settings, parse_schedule};
use devin_etl::sync::{Job, Mode};
use devin_etl::telemetry::{install_metrics, metric};
use devin_sim::{Fault, SimulatorConfig};
use secrecy::SecretString;
use serde_json::Value;
use tokio::sync::watch;

/// The API token of every test here: distinctive, so that finding it anywhere is certain.
const TOKEN: &str = "cog_alerts_Zq8xW2vK9t";

/// What the receiver does with a request.
#[derive(Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Answer {
    /// 200, and the body is recorded as delivered.
    Accept = 0,
    /// 500 (counted, not recorded).
    Fail = 1,
    /// Never answers.
    Hang = 2,
}

#[derive(Default)]
struct Received {
    /// Bodies answered 200, as received.
    accepted: Mutex<Vec<String>>,
    /// Bodies of every request, whatever the answer.
    all: Mutex<Vec<String>>,
    answer: AtomicU8,
    requests: AtomicUsize,
}

/// A webhook receiver on loopback, recording what it is sent.
struct Receiver {
    addr: SocketAddr,
    received: Arc<Received>,
    server: tokio::task::JoinHandle<()>,
}

impl Receiver {
    async fn start(answer: Answer) -> Receiver {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), answer).await
    }

    async fn start_on(addr: SocketAddr, answer: Answer) -> Receiver {
        let listener = tokio::net::TcpListener::bind(addr).await.unwrap();
        let addr = listener.local_addr().unwrap();
        let received = Arc::new(Received::default());
        received.answer.store(answer as u8, Ordering::SeqCst);
        let state = received.clone();
        let app = axum::Router::new().route(
            "/hook/{secret}",
            axum::routing::post(
                |axum::extract::State(r): axum::extract::State<Arc<Received>>, body: String| async move {
                    r.requests.fetch_add(1, Ordering::SeqCst);
                    r.all.lock().unwrap().push(body.clone());
                    match r.answer.load(Ordering::SeqCst) {
                        0 => {
                            r.accepted.lock().unwrap().push(body);
                            axum::http::StatusCode::OK
                        }
                        1 => axum::http::StatusCode::INTERNAL_SERVER_ERROR,
                        _ => {
                            std::future::pending::<()>().await;
                            axum::http::StatusCode::OK
                        }
                    }
                },
            ),
        );
        let server = tokio::spawn(async move {
            let _ = axum::serve(listener, app.with_state(state)).await;
        });
        Receiver { addr, received, server }
    }

    fn set(&self, answer: Answer) {
        self.received.answer.store(answer as u8, Ordering::SeqCst);
    }

    /// The accepted bodies, parsed.
    fn accepted(&self) -> Vec<Value> {
        self.received.accepted.lock().unwrap().iter().map(|b| serde_json::from_str(b).unwrap()).collect()
    }

    /// The accepted bodies about `kind`, as (key, state).
    fn accepted_of(&self, kind: &str) -> Vec<(String, String)> {
        self.accepted()
            .iter()
            .filter(|b| b["alert"]["kind"] == kind)
            .map(|b| (b["alert"]["key"].as_str().unwrap().to_owned(), b["alert"]["state"].as_str().unwrap().to_owned()))
            .collect()
    }

    /// No request the receiver ever got carries the token.
    fn assert_no_token(&self) {
        for body in self.received.all.lock().unwrap().iter() {
            assert!(!body.contains(TOKEN), "a body carries the API token: {body}");
        }
    }
}

impl Drop for Receiver {
    fn drop(&mut self) {
        self.server.abort();
    }
}

/// The webhook URL of a receiver at `addr`; its path holds a secret of its own, as a Slack URL does.
fn hook_url(addr: SocketAddr) -> String {
    format!("http://{addr}/hook/T0-B0-hooksecret")
}

/// A loopback address where nothing listens (until a test starts a receiver there).
async fn closed_addr() -> SocketAddr {
    let listener = tokio::net::TcpListener::bind(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    listener.local_addr().unwrap()
}

/// `sessions` sessions behind the token [`TOKEN`], fast alert settings, plus `tweak`.
async fn app(sessions: usize, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    let config =
        SimulatorConfig { sessions, token: TOKEN.to_owned(), manual_clock: true, ..SimulatorConfig::default() };
    TestApp::spawn_with(config, |s| {
        s.alerts.failing_runs = 3;
        s.alerts.timeout = Duration::from_secs(2);
        s.alerts.check_interval = Duration::from_millis(100);
        s.alerts.retry_initial_backoff = Duration::from_secs(2);
        s.alerts.retry_max_backoff = Duration::from_secs(60);
        tweak(s);
    })
    .await
}

/// `settings` with the webhook at `url`.
fn with_hook(settings: &Settings, url: &str) -> Settings {
    let mut s = settings.clone();
    s.alerts.webhook_url = Some(SecretString::from(url.to_owned()));
    s
}

/// The app's alerter, posting to `url`, on a pool of its own (as a replica's would be).
async fn alerter(app: &TestApp, url: &str) -> Alerter {
    let settings = with_hook(&app.settings, url);
    let store = devin_etl::app::small_store(&settings).await.unwrap();
    Alerter::new(&[settings], store).unwrap().expect("a webhook URL turns alerts on")
}

/// One evaluation and one delivery pass, returning what the delivery did.
async fn pass(alerter: &Alerter) -> Delivery {
    alerter.evaluate().await.unwrap();
    alerter.deliver().await.unwrap()
}

/// Rows of `alerts`: (key, one_shot, resolved, firing delivered, resolved delivered, attempts), oldest first.
async fn alert_rows(app: &TestApp) -> Vec<(String, bool, bool, bool, bool, i32)> {
    sqlx::query_as(
        "select alert_key, one_shot, resolved_at is not null, fired_sent_at is not null,
                resolved_sent_at is not null, attempts
         from alerts order by alert_id",
    )
    .fetch_all(app.store().pool())
    .await
    .unwrap()
}

fn key(kind: &str) -> String {
    format!("{kind}/{DEFAULT_SOURCE}")
}

fn pair(key: &str, state: &str) -> (String, String) {
    (key.to_owned(), state.to_owned())
}

#[tokio::test]
async fn a_failing_source_alerts_once_after_n_failed_runs_and_once_when_it_recovers() {
    let app = app(30, |_| {}).await;
    let receiver = Receiver::start(Answer::Accept).await;
    let alerter = alerter(&app, &hook_url(receiver.addr)).await;
    app.sim.inject(0, Fault::Status { code: 401, retry_after: None }, 1000);

    for _ in 0..2 {
        app.syncer.sync(None).await.unwrap_err();
        pass(&alerter).await;
    }
    assert!(receiver.accepted().is_empty(), "two failed runs are below alerts.failing_runs (3)");
    app.syncer.sync(None).await.unwrap_err();
    pass(&alerter).await;
    assert_eq!(receiver.accepted_of("source_failing"), [pair(&key("source_failing"), "firing")]);
    for _ in 0..2 {
        app.syncer.sync(None).await.unwrap_err();
        pass(&alerter).await;
    }
    assert_eq!(receiver.accepted_of("source_failing").len(), 1, "more failures of the same incident send nothing");

    app.sim.clear_faults();
    app.syncer.sync(None).await.unwrap();
    pass(&alerter).await;
    pass(&alerter).await;
    assert_eq!(
        receiver.accepted_of("source_failing"),
        [pair(&key("source_failing"), "firing"), pair(&key("source_failing"), "resolved")]
    );
    let bodies = receiver.accepted();
    let firing = &bodies[0];
    assert_eq!(firing["alert"]["details"]["error_kind"], "api");
    assert_eq!(firing["alert"]["details"]["failed_runs"], 3);
    assert!(firing["alert"]["details"]["last_error"].as_str().unwrap().contains("HTTP 401"), "{firing}");
    assert!(
        firing["text"]
            .as_str()
            .unwrap()
            .starts_with("[devin-etl] FIRING source_failing devin: the last 3 runs failed (api)"),
        "{firing}"
    );
    assert_eq!(bodies[1]["alert"]["alert_id"], firing["alert"]["alert_id"], "the recovery closes the same incident");
    assert_eq!(
        bodies[1]["text"].as_str().unwrap().split(':').next(),
        Some("[devin-etl] RESOLVED source_failing devin")
    );
    assert_eq!(alert_rows(&app).await, [(key("source_failing"), false, true, true, true, 2)]);
    let kinds: Vec<Option<String>> =
        sqlx::query_scalar("select error_kind from sync_runs where status = 'failed' order by run_id")
            .fetch_all(app.store().pool())
            .await
            .unwrap();
    assert_eq!(kinds, vec![Some("api".to_owned()); 5], "every failed run records its kind");
    receiver.assert_no_token();
}

#[tokio::test]
async fn a_stale_source_alerts_once_even_with_two_replicas_and_resolves_when_fresh() {
    let app = app(30, |_| {}).await;
    let receiver = Receiver::start(Answer::Accept).await;
    let url = hook_url(receiver.addr);
    let (a, b) = (alerter(&app, &url).await, alerter(&app, &url).await);
    app.syncer.sync(None).await.unwrap();
    pass(&a).await;
    assert!(receiver.accepted().is_empty(), "fresh after a successful sync");

    // The last success two hours back: older than server.max_staleness (1h).
    sqlx::query(
        "update sync_runs set started_at = started_at - interval '2h', finished_at = finished_at - interval '2h'",
    )
    .execute(app.store().pool())
    .await
    .unwrap();
    for _ in 0..3 {
        let (ra, rb) = tokio::join!(a.evaluate(), b.evaluate());
        let _ = (ra.unwrap(), rb.unwrap());
        let (da, db) = tokio::join!(a.deliver(), b.deliver());
        let _ = (da.unwrap(), db.unwrap());
    }
    assert_eq!(receiver.accepted_of("stale"), [pair(&key("stale"), "firing")]);
    let body = &receiver.accepted()[0];
    assert!(body["alert"]["details"]["age_seconds"].as_u64().unwrap() >= 7200, "{body}");
    assert_eq!(body["alert"]["details"]["max_staleness_seconds"], 3600);

    app.syncer.sync(None).await.unwrap();
    for _ in 0..2 {
        let (ra, rb) = tokio::join!(pass(&a), pass(&b));
        let _ = (ra, rb);
    }
    assert_eq!(receiver.accepted_of("stale"), [pair(&key("stale"), "firing"), pair(&key("stale"), "resolved")]);
    assert_eq!(alert_rows(&app).await, [(key("stale"), false, true, true, true, 2)]);
    receiver.assert_no_token();
}

#[tokio::test]
async fn a_source_that_never_succeeded_turns_stale_only_once_it_has_had_max_staleness_to() {
    let app = app(10, |s| s.alerts.failing_runs = 100).await;
    let receiver = Receiver::start(Answer::Accept).await;
    let alerter = alerter(&app, &hook_url(receiver.addr)).await;
    app.sim.inject(0, Fault::Status { code: 500, retry_after: None }, 1000);
    app.syncer.sync(None).await.unwrap_err();
    pass(&alerter).await;
    assert!(receiver.accepted().is_empty(), "its first run started just now");

    sqlx::query("update sync_runs set started_at = started_at - interval '2h'")
        .execute(app.store().pool())
        .await
        .unwrap();
    pass(&alerter).await;
    let stale = receiver.accepted();
    assert_eq!(receiver.accepted_of("stale"), [pair(&key("stale"), "firing")]);
    assert!(stale[0]["alert"]["summary"].as_str().unwrap().starts_with("no successful sync yet"), "{}", stale[0]);
}

#[tokio::test]
async fn a_refused_mass_delete_alerts_once_and_resolves_after_a_good_reconcile() {
    let metrics = install_metrics().unwrap();
    let app = app(60, |_| {}).await;
    let receiver = Receiver::start(Answer::Accept).await;
    let alerter = alerter(&app, &hook_url(receiver.addr)).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let all = app.sim.sessions();
    for s in &all[..40] {
        app.sim.remove(&s.session_id);
    }
    app.syncer.run_once(Mode::Reconcile).await.unwrap_err();
    let kind: Option<String> = sqlx::query_scalar("select error_kind from sync_runs where mode = 'reconcile'")
        .fetch_one(app.store().pool())
        .await
        .unwrap();
    assert_eq!(kind.as_deref(), Some("mass_delete_refused"));
    let refused = metrics
        .render()
        .lines()
        .any(|l| l.starts_with(&format!("{}{{", metric::RECONCILE_REFUSED)) && l.contains("source=\"devin\""));
    assert!(refused, "devin_etl_reconcile_refused_total counts the refusal");
    for _ in 0..3 {
        pass(&alerter).await;
    }
    assert_eq!(receiver.accepted_of("mass_delete_refused"), [pair(&key("mass_delete_refused"), "firing")]);
    let body = &receiver.accepted()[0];
    assert!(body["alert"]["summary"].as_str().unwrap().contains("40 of 60 live sessions"), "{body}");

    for s in &all[..40] {
        app.sim.put(s.clone());
    }
    app.syncer.run_once(Mode::Reconcile).await.unwrap();
    pass(&alerter).await;
    pass(&alerter).await;
    assert_eq!(
        receiver.accepted_of("mass_delete_refused"),
        [pair(&key("mass_delete_refused"), "firing"), pair(&key("mass_delete_refused"), "resolved")]
    );
    receiver.assert_no_token();
}

/// Records a row of `schema_drift` for the default source, as the drift detection would.
async fn drift(app: &TestApp, path: &str, kind: &str, value: &str, example: &str) {
    sqlx::query(
        "insert into schema_drift (source, path, kind, value, example_session_id, times_seen) values ($1, $2, $3, $4, $5, 3)",
    )
    .bind(DEFAULT_SOURCE)
    .bind(path)
    .bind(kind)
    .bind(value)
    .bind(example)
    .execute(app.store().pool())
    .await
    .unwrap();
}

#[tokio::test]
async fn each_schema_drift_row_alerts_exactly_once_with_racing_replicas_and_never_shows_a_token() {
    let app = app(10, |_| {}).await;
    let receiver = Receiver::start(Answer::Accept).await;
    let url = hook_url(receiver.addr);
    let (a, b) = (alerter(&app, &url).await, alerter(&app, &url).await);
    drift(&app, "analysis.mood", "unknown_field", "string", "session-1").await;
    // A token where nothing should ever put one: the scrubbing is what keeps it out of the body.
    drift(&app, "status", "unknown_enum_value", &format!("leaked {TOKEN}"), TOKEN).await;

    let mut raised = 0;
    for _ in 0..3 {
        let (ra, rb) = tokio::join!(a.evaluate(), b.evaluate());
        raised += ra.unwrap().raised.len() + rb.unwrap().raised.len();
        let (da, db) = tokio::join!(a.deliver(), b.deliver());
        let _ = (da.unwrap(), db.unwrap());
    }
    assert_eq!(raised, 2, "each drift row is raised once across both replicas");
    let mut sent = receiver.accepted_of("schema_drift");
    sent.sort();
    let leaked_key = format!("schema_drift/devin/unknown_enum_value/status/leaked {REDACTED}");
    assert_eq!(
        sent,
        [
            pair("schema_drift/devin/unknown_enum_value/status/leaked [REDACTED]", "firing"),
            pair("schema_drift/devin/unknown_field/analysis.mood/string", "firing")
        ]
    );
    assert_eq!(sent[0].0, leaked_key);
    let rows = alert_rows(&app).await;
    assert_eq!(rows.len(), 2);
    assert!(rows.iter().all(|r| r.1 && r.2 && r.3 && !r.4), "one-shot, closed when raised, sent once: {rows:?}");
    let body = receiver.accepted().into_iter().find(|b| b["alert"]["key"] == leaked_key.as_str()).unwrap();
    assert_eq!(body["alert"]["details"]["example_session_id"], REDACTED);
    assert_eq!(body["alert"]["details"]["drift_kind"], "unknown_enum_value");
    let stored: String = sqlx::query_scalar(
        "select details::text from alerts where kind = 'schema_drift' and details->>'path' = 'status'",
    )
    .fetch_one(app.store().pool())
    .await
    .unwrap();
    assert!(!stored.contains(TOKEN), "nor does the table: {stored}");
    receiver.assert_no_token();
}

#[tokio::test]
async fn a_receiver_that_is_down_never_fails_the_sync_and_gets_the_pending_alert_once_when_back() {
    let app = app(20, |s| s.alerts.failing_runs = 1).await;
    let addr = closed_addr().await;
    let url = hook_url(addr);
    let settings = with_hook(&app.settings, &url);
    app.sim.inject(0, Fault::Status { code: 401, retry_after: None }, 1000);

    // `sync` fails as it would without alerts (the source's error), after one alerts pass that could not deliver.
    let error = devin_etl::commands::sync::run(vec![settings.clone()], Job::Sync { since: None }).await.unwrap_err();
    assert!(format!("{error:#}").contains("HTTP 401"), "{error:#}");
    let (attempts, last_error): (i32, Option<String>) =
        sqlx::query_as("select attempts, last_error from alerts").fetch_one(app.store().pool()).await.unwrap();
    let last_error = last_error.expect("the failed delivery is recorded");
    assert_eq!(attempts, 1);
    assert!(!last_error.contains(&addr.to_string()) && !last_error.contains("hooksecret"), "no URL: {last_error}");
    let status = devin_etl::status::collect(app.store(), DEFAULT_SOURCE, None).await.unwrap();
    let shown = devin_etl::status::render(&status);
    assert!(
        shown.contains("Alerts (open or not yet delivered)") && shown.contains("not delivered after 1 attempt(s)"),
        "{shown}"
    );

    // Backed off: the next pass right away does not try.
    let alerter = alerter(&app, &url).await;
    assert_eq!(alerter.deliver().await.unwrap(), Delivery::default());

    // The receiver comes back answering 500: tried again once due, and backed off twice as long.
    let receiver = Receiver::start_on(addr, Answer::Fail).await;
    eventually("the second attempt", Duration::from_secs(30), async || alerter.deliver().await.unwrap().failed == 1)
        .await;
    let (attempts, last_error, wait): (i32, Option<String>, f64) =
        sqlx::query_as("select attempts, last_error, extract(epoch from next_attempt_at - now())::float8 from alerts")
            .fetch_one(app.store().pool())
            .await
            .unwrap();
    assert_eq!(attempts, 2);
    assert!(last_error.unwrap().starts_with("the receiver answered HTTP 500"));
    assert!(wait > 2.0 && wait <= 4.0, "the second wait doubles the first (2s): {wait}");

    // Now it accepts: the pending alert arrives, once.
    receiver.set(Answer::Accept);
    eventually("the alert is delivered", Duration::from_secs(30), async || alerter.deliver().await.unwrap().sent == 1)
        .await;
    for _ in 0..3 {
        pass(&alerter).await;
    }
    assert_eq!(receiver.accepted_of("source_failing"), [pair(&key("source_failing"), "firing")]);
    assert_eq!(receiver.received.requests.load(Ordering::SeqCst), 2, "one refused (500), one accepted");
    receiver.assert_no_token();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_receiver_that_hangs_neither_delays_sync_nor_the_daemons_runs() {
    let app = app(20, |s| {
        s.alerts.timeout = Duration::from_millis(500);
        s.sync.schedule = parse_schedule("sync.schedule", "* * * * * *").unwrap();
        s.sync.reconcile_schedule = parse_schedule("sync.reconcile_schedule", "0 0 0 1 1 * 2099").unwrap();
    })
    .await;
    let receiver = Receiver::start(Answer::Hang).await;
    let url = hook_url(receiver.addr);
    drift(&app, "analysis.mood", "unknown_field", "string", "session-1").await;

    // `sync`: succeeds, its alerts pass bounded by alerts.timeout.
    let started = std::time::Instant::now();
    devin_etl::commands::sync::run(vec![with_hook(&app.settings, &url)], Job::Sync { since: None }).await.unwrap();
    assert!(started.elapsed() < Duration::from_secs(30), "sync returned: {:?}", started.elapsed());
    let (sent, last_error): (bool, Option<String>) =
        sqlx::query_as("select fired_sent_at is not null, last_error from alerts")
            .fetch_one(app.store().pool())
            .await
            .unwrap();
    assert!(!sent);
    assert!(last_error.unwrap().starts_with("no answer within alerts.timeout"));

    // The daemon: scheduled runs go on every second while the alerts task waits on the receiver.
    let (stop, stopped) = watch::channel(false);
    let alerts = tokio::spawn(alerter(&app, &url).await.run(stopped.clone()));
    let syncer = app.syncer.clone().with_shutdown(stopped.clone());
    let daemon = tokio::spawn(run_daemon(syncer, false, stopped));
    let before: i64 = sqlx::query_scalar("select count(*) from sync_runs where status = 'succeeded'")
        .fetch_one(app.store().pool())
        .await
        .unwrap();
    eventually("three more scheduled runs succeed", Duration::from_secs(30), async || {
        let now: i64 = sqlx::query_scalar("select count(*) from sync_runs where status = 'succeeded'")
            .fetch_one(app.store().pool())
            .await
            .unwrap();
        now >= before + 6 // incremental + enrichment per tick
    })
    .await;
    eventually("the alerts task tries again meanwhile", Duration::from_secs(30), async || {
        receiver.received.requests.load(Ordering::SeqCst) >= 2
    })
    .await;
    stop.send(true).unwrap();
    tokio::time::timeout(Duration::from_secs(10), alerts).await.expect("the alerts task stops promptly").unwrap();
    tokio::time::timeout(Duration::from_secs(30), daemon).await.expect("the daemon stops").unwrap().unwrap();
    assert!(receiver.accepted().is_empty());
    receiver.assert_no_token();
}

#[test]
fn a_webhook_url_in_the_config_file_is_refused_naming_the_key() {
    let dir = std::env::temp_dir().join(common::unique_name("devin_etl_alerts_cfg"));
    std::fs::create_dir_all(&dir).unwrap();
    let file = dir.join("settings.toml");
    std::fs::write(&file, "[alerts]\nwebhook_url = \"https://hooks.slack.com/services/T0/B0/hooksecret\"\n").unwrap();
    let error = Settings::load_with_vars(Some(&file), &[("DEVIN_ETL__ALERTS__WEBHOOK_URL", "https://ok.example/h")])
        .unwrap_err()
        .to_string();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(error.starts_with("alerts.webhook_url: the webhook URL is a secret"), "{error}");
    assert!(error.contains("DEVIN_ETL__ALERTS__WEBHOOK_URL") && !error.contains("hooksecret"), "{error}");
}

/// End to end: the simulator starts sending new fields, `sync` (the command a cron job runs) loads them, records the
/// drift and, in its alerts pass, sends exactly one alert per new entry; the next sync, which reads the same drift
/// again, sends nothing.
#[tokio::test]
async fn drift_the_simulator_serves_reaches_the_receiver_once_per_new_entry() {
    let app = app(12, |_| {}).await;
    let receiver = Receiver::start(Answer::Accept).await;
    let settings = with_hook(&app.settings, &hook_url(receiver.addr));
    devin_etl::commands::sync::run(vec![settings.clone()], Job::Sync { since: None }).await.unwrap();
    assert!(receiver.accepted().is_empty(), "no drift, no alert: {:?}", receiver.accepted());

    app.sim.set_switches(devin_sim::Switches { numbers_as_strings: true, extra_fields: true, ..Default::default() });
    app.sim.advance(60);
    app.sim.update_some(12);
    devin_etl::commands::sync::run(vec![settings.clone()], Job::Sync { since: None }).await.unwrap();
    let entries: Vec<(String, String, String)> =
        sqlx::query_as("select path, kind, value from schema_drift order by path, kind, value")
            .fetch_all(app.store().pool())
            .await
            .unwrap();
    assert!(entries.iter().any(|e| e.0 == "acus_consumed" && e.1 == "type_changed"), "{entries:?}");
    assert!(entries.iter().any(|e| e.0 == "x_added_in_v4"), "{entries:?}");
    let mut expected: Vec<(String, String)> = entries
        .iter()
        .map(|(path, kind, value)| pair(&format!("schema_drift/{DEFAULT_SOURCE}/{kind}/{path}/{value}"), "firing"))
        .collect();
    expected.sort();
    let mut sent = receiver.accepted_of("schema_drift");
    sent.sort();
    assert_eq!(sent, expected, "one alert per new drift entry");

    app.sim.advance(60);
    app.sim.update_some(12);
    devin_etl::commands::sync::run(vec![settings], Job::Sync { since: None }).await.unwrap();
    assert_eq!(receiver.accepted().len(), expected.len(), "the same drift again alerts nobody");
    receiver.assert_no_token();
}
