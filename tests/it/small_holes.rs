//! Issue 9, item 7: smaller holes. `demo` refuses a database that holds someone's warehouse; no `Debug` output
//! holds a secret; a full last page that still carries a cursor is logged; a second Ctrl-C on `sync` exits at once.
//! (Configuration that cannot work is refused at start: unit tests in `src/settings.rs`.)

use crate::common;

use std::time::{Duration, Instant};

use common::child::{self, ChildLog, child_env};
use common::logs::Logs;
use common::{TestApp, TestDb, build_syncer, test_settings};
use devin_etl::api::ApiClient;
use devin_etl::store::Store;
use devin_etl::sync::{Mode, Syncer};
use devin_sim::Fault;
use secrecy::ExposeSecret as _;

// --- demo -------------------------------------------------------------------------------------------------

/// (sessions, sync_state rows, sync_runs rows, watermark) of a warehouse.
async fn fingerprint(store: &Store) -> (i64, i64, i64, Option<i64>) {
    let count = |table: &'static str| async move {
        sqlx::query_scalar::<_, i64>(&format!("select count(*) from {table}")).fetch_one(store.pool()).await.unwrap()
    };
    (
        count("sessions").await,
        count("sync_state").await,
        count("sync_runs").await,
        store.watermark("devin").await.unwrap(),
    )
}

#[tokio::test]
async fn demo_refuses_a_database_that_holds_a_warehouse_unless_told() {
    let app = TestApp::spawn(40).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let before = fingerprint(app.store()).await;
    assert_eq!(before.0, 40);

    let error = devin_etl::commands::demo::run(app.settings.clone(), 30, false).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("demo refused to write into"), "{message}");
    assert!(message.contains(&app.db.name), "names the database: {message}");
    assert!(message.contains("--allow-any-database"), "says how to override: {message}");
    assert!(!message.contains("postgres@"), "no credentials: {message}");
    assert_eq!(fingerprint(app.store()).await, before, "nothing written");
    app.assert_matches_truth().await;

    // The binary refuses just the same, with exit code 1.
    let env = [("DATABASE_URL", app.db.url.clone()), ("DEVIN_ETL__LOG__FORMAT", "json".to_owned())];
    let out = child::devin_etl(&["demo", "--sessions", "30"], env).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("demo refused") && stderr.contains("--allow-any-database"), "{stderr}");
    assert_eq!(fingerprint(app.store()).await, before, "nothing written");

    // Told explicitly, it writes there.
    devin_etl::commands::demo::run(app.settings.clone(), 30, true).await.unwrap();
    let after = fingerprint(app.store()).await;
    assert!(after.2 > before.2, "the demo's runs are recorded: {after:?}");
}

#[tokio::test]
async fn demo_writes_into_another_database_that_holds_no_warehouse() {
    // A fresh, empty database (no schema yet): nothing to pollute, so the demo runs without the flag.
    let db = TestDb::create().await;
    let settings = test_settings(&db.url, "http://127.0.0.1:9", "unused");
    devin_etl::commands::demo::run(settings.clone(), 20, false).await.unwrap();
    let store = Store::connect(&settings.database, 2).await.unwrap();
    let (sessions, ..) = fingerprint(&store).await;
    assert!(sessions >= 20, "{sessions}");
    // A second demo there now finds a warehouse and refuses.
    let error = devin_etl::commands::demo::run(settings, 20, false).await.unwrap_err();
    assert!(format!("{error:#}").contains("--allow-any-database"), "{error:#}");
}

// --- Debug output -----------------------------------------------------------------------------------------

#[tokio::test]
async fn no_debug_output_contains_the_database_password_or_the_token() {
    let db = TestDb::create().await;
    // The test server trusts local connections, so any password connects; one already in the URL is kept.
    let mut url = url::Url::parse(&db.url).unwrap();
    let password = match url.password() {
        Some(p) => p.to_owned(),
        None => {
            url.set_password(Some("s3cr3t-pw")).unwrap();
            "s3cr3t-pw".to_owned()
        }
    };
    let token = "cog_t0ken-that-must-never-show";
    let settings = test_settings(url.as_str(), "http://127.0.0.1:9", token);
    assert!(settings.database.url.expose_secret().contains(&password));

    let store = Store::connect(&settings.database, 2).await.unwrap();
    store.migrate().await.unwrap();
    let api = ApiClient::new(&settings.api).unwrap();
    let syncer = Syncer::new(settings.clone(), api.clone(), store.clone());

    let outputs = [
        ("Settings", format!("{settings:?}"), format!("{settings:#?}")),
        ("DatabaseSettings", format!("{:?}", settings.database), format!("{:#?}", settings.database)),
        ("ApiSettings", format!("{:?}", settings.api), format!("{:#?}", settings.api)),
        ("Store", format!("{store:?}"), format!("{store:#?}")),
        ("ApiClient", format!("{api:?}"), format!("{api:#?}")),
        ("Syncer", format!("{syncer:?}"), format!("{syncer:#?}")),
    ];
    for (what, plain, pretty) in &outputs {
        for text in [plain, pretty] {
            assert!(!text.contains(&password), "{what}'s Debug shows the database password: {text}");
            assert!(!text.contains(token), "{what}'s Debug shows the API token: {text}");
        }
    }
    // What they do show is useful: where the warehouse is.
    assert!(outputs[3].1.contains(&db.name) && outputs[3].1.contains("devin"), "{}", outputs[3].1);
    assert!(outputs[5].1.contains(&db.name), "{}", outputs[5].1);
}

// --- a full last page that still carries a cursor ---------------------------------------------------------

/// Serves `items` as one page that claims to be the last, with a cursor anyway.
async fn serve_full_last_page(items: Vec<serde_json::Value>) -> String {
    let router = axum::Router::new().route(
        "/v3/enterprise/sessions/insights",
        axum::routing::get(move || {
            let items = items.clone();
            async move {
                axum::Json(serde_json::json!({
                    "items": items, "end_cursor": "cursor-after-the-last", "has_next_page": false,
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

#[tokio::test]
async fn a_full_last_page_with_a_cursor_is_loaded_and_logged() {
    // Page size 50 and 50 sessions: one full page.
    let app = TestApp::spawn(50).await;
    let items = app.sim.sessions().iter().map(|s| serde_json::to_value(s).unwrap()).collect::<Vec<_>>();
    let url = serve_full_last_page(items).await;
    let syncer = build_syncer(test_settings(&app.db.url, &url, app.sim.token())).await;
    let (logs, guard) = Logs::capture();
    let outcome = syncer.run_once(Mode::Incremental).await.unwrap();
    drop(guard);
    let logged = logs.text();
    assert!(logged.contains("full page with a cursor"), "{logged}");
    assert!(logged.contains("/v3/enterprise/sessions/insights?first=50"), "names the request: {logged}");
    assert!(logged.contains("cursor-after-the-last"), "{logged}");
    assert_eq!((outcome.pages, outcome.items), (1, 50), "the walk ends with that page");
    app.assert_matches_truth().await;

    // The simulator serves the same full page as the last without a cursor: nothing to flag.
    let (logs, guard) = Logs::capture();
    app.syncer.run_once(Mode::Reconcile).await.unwrap();
    drop(guard);
    assert!(!logs.text().contains("full page with a cursor"), "an honest last page is not flagged: {}", logs.text());
    app.assert_matches_truth().await;
}

// --- a second Ctrl-C --------------------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_sigint_stops_sync_at_once_and_a_rerun_completes() {
    /// Each request after the first few takes this long: without the second signal, the run would wait for it.
    const SLOW: Duration = Duration::from_secs(30);
    let app = TestApp::spawn(300).await;
    app.sim.inject(6, Fault::Slow(SLOW), 1_000);
    let log = ChildLog::new(&format!("{}-sigint", app.db.name));
    let mut child = log.spawn(
        child::devin_etl(&["sync", "--backfill"], child_env(&app)).env("DEVIN_ETL__SYNC__SHUTDOWN_GRACE", "60s"),
    );
    common::wait_for_committed_sessions(app.store()).await;

    child::signal(&child, "INT");
    log.wait_for("SIGINT received", Duration::from_secs(10)).await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert!(child.try_wait().unwrap().is_none(), "the first SIGINT waits for the page in flight");
    let second = Instant::now();
    child::signal(&child, "INT");
    let status = tokio::time::timeout(Duration::from_secs(10), child.wait())
        .await
        .expect("the second SIGINT stops the process at once")
        .unwrap();
    let took = second.elapsed();
    let logged = log.text();
    assert!(took < Duration::from_secs(5), "exited {took:?} after the second SIGINT (grace 60s, pages take {SLOW:?})");
    assert_eq!(status.code(), Some(130), "{status:?}\n{logged}");
    assert!(logged.contains("second signal (SIGINT)"), "{logged}");
    common::assert_present_sessions_complete(app.store(), &app.sim.sessions()).await;
    assert_eq!(app.watermark().await, None, "an unfinished backfill sets no watermark");

    // A rerun resumes and completes; the data is exact.
    app.sim.clear_faults();
    let out = child::devin_etl(&["sync", "--backfill"], child_env(&app)).output().await.unwrap();
    assert!(out.status.success(), "rerun: {}", String::from_utf8_lossy(&out.stderr));
    app.assert_matches_truth().await;
    assert!(app.watermark().await.is_some());
}
