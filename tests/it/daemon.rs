//! The long-running service: scheduling across replicas, graceful shutdown, configuration errors at start,
//! and logs that never carry the token.

use crate::common;

use std::time::Duration;

use common::child::{self, ChildLog, child_env};
use common::logs::Logs;
use common::{TestApp, build_syncer};
use devin_etl::schedule::{Tick, run_daemon, run_tick};
use devin_etl::settings::parse_schedule;
use devin_etl::sync::{Job, Mode};
use devin_etl::telemetry::{install_metrics, metric};
use devin_sim::{Fault, SimulatorConfig};
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_never_overlap_and_each_tick_runs_once() {
    let app = TestApp::spawn_with(SimulatorConfig { sessions: 120, manual_clock: true, ..Default::default() }, |s| {
        s.sync.schedule = parse_schedule("sync.schedule", "* * * * * *").unwrap();
        s.sync.reconcile_schedule = parse_schedule("sync.reconcile_schedule", "0 0 0 1 1 * 2099").unwrap();
    })
    .await;
    let (stop, stopped) = watch::channel(false);
    let replica = |syncer: devin_etl::sync::Syncer| {
        let stopped = stopped.clone();
        tokio::spawn(async move { run_daemon(syncer.with_shutdown(stopped.clone()), true, stopped).await })
    };
    let a = replica(app.syncer.clone());
    let b = replica(build_syncer(app.settings.clone()).await);
    for _ in 0..5 {
        tokio::time::sleep(Duration::from_millis(1000)).await;
        app.sim.advance(20);
        app.sim.update_some(3);
    }
    stop.send(true).unwrap();
    a.await.unwrap().unwrap();
    b.await.unwrap().unwrap();

    let runs: Vec<(String, String, chrono::DateTime<chrono::Utc>, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("select mode, status, started_at, finished_at from sync_runs order by started_at")
            .fetch_all(app.store().pool())
            .await
            .unwrap();
    for pair in runs.windows(2) {
        assert!(pair[1].2 >= pair[0].3, "runs overlap: {:?} and {:?}", pair[0], pair[1]);
    }
    assert!(runs.iter().all(|r| r.1 == "succeeded"), "{runs:?}");
    assert_eq!(runs.iter().filter(|r| r.0 == "backfill").count(), 1, "one replica backfilled, once");
    let incremental: Vec<_> = runs.iter().filter(|r| r.0 == "incremental").collect();
    assert!(incremental.len() >= 2, "ticks ran: {runs:?}");
    let mut seconds: Vec<i64> = incremental.iter().map(|r| r.2.timestamp()).collect();
    seconds.dedup();
    assert_eq!(seconds.len(), incremental.len(), "a tick's work ran at most once across replicas: {runs:?}");
    let walks = app.sim.requests().iter().filter(|r| r.path_and_query.contains("updated_after=")).count();
    assert_eq!(walks, incremental.len(), "each incremental run walked the API once");
    // The last changes may have landed after the last tick; one more run settles them.
    app.syncer.sync(None).await.unwrap();
    app.assert_matches_truth().await;
}

/// The value of `devin_etl_ticks_skipped_total{source, reason}` in the process-wide recorder (0 when absent).
fn ticks_skipped(source: &str, reason: &str) -> f64 {
    let text = install_metrics().unwrap().render();
    let labels = [format!("source=\"{source}\""), format!("reason=\"{reason}\"")];
    text.lines()
        .filter(|l| l.starts_with(&format!("{}{{", metric::TICKS_SKIPPED)))
        .filter(|l| labels.iter().all(|label| l.contains(label.as_str())))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn runs(app: &TestApp) -> i64 {
    sqlx::query_scalar("select count(*) from sync_runs").fetch_one(app.store().pool()).await.unwrap()
}

/// Two replicas, one tick: the second reaches the lock only after the first released it (no timing involved:
/// one after the other). The tick runs once; the second replica skips it, says so and counts it.
#[tokio::test]
async fn a_tick_another_replica_already_ran_is_skipped_logged_and_counted() {
    let source = "tick_claims";
    let app = TestApp::spawn_with(SimulatorConfig { sessions: 40, manual_clock: true, ..Default::default() }, |s| {
        s.sync.source = source.to_owned()
    })
    .await;
    install_metrics().unwrap();
    let (a, b) = (app.syncer.clone(), build_syncer(app.settings.clone()).await);
    let job = Job::Sync { since: None };
    let tick: chrono::DateTime<chrono::Utc> = "2026-12-01T03:15:00Z".parse().unwrap();

    assert_eq!(run_tick(&a, job, Some(tick)).await, Tick::Ran);
    assert_eq!(runs(&app).await, 2, "incremental and enrichment");
    let before = ticks_skipped(source, "claimed");
    let (logs, guard) = Logs::capture_from(tracing::Level::INFO);
    let b_tick = run_tick(&b, job, Some(tick)).await;
    drop(guard);
    assert_eq!(b_tick, Tick::AlreadyClaimed);
    assert_eq!(runs(&app).await, 2, "the second replica ran nothing");
    assert!(logs.text().contains("another replica already ran this tick"), "{}", logs.text());
    assert_eq!(ticks_skipped(source, "claimed") - before, 1.0);
    // An earlier tick is covered too (a replica whose clock lags); the next tick runs, on either replica.
    assert_eq!(run_tick(&a, job, Some(tick - chrono::Duration::minutes(15))).await, Tick::AlreadyClaimed);
    app.sim.advance(60);
    app.sim.update_some(5);
    assert_eq!(run_tick(&b, job, Some(tick + chrono::Duration::minutes(15))).await, Tick::Ran);
    assert_eq!(runs(&app).await, 4);
    common::assert_source_matches_where(app.store(), source, &app.sim.sessions(), |_| true).await;
}

/// A replica that finds the lock held skips the tick without claiming it: the holder was not running that tick,
/// so it is still there to run.
#[tokio::test]
async fn a_tick_while_another_replica_holds_the_lock_is_skipped_without_claiming_it() {
    let source = "tick_busy";
    let app = TestApp::spawn_with(SimulatorConfig { sessions: 40, manual_clock: true, ..Default::default() }, |s| {
        s.sync.source = source.to_owned()
    })
    .await;
    install_metrics().unwrap();
    let job = Job::Sync { since: None };
    let tick: chrono::DateTime<chrono::Utc> = "2026-12-01T03:15:00Z".parse().unwrap();
    let held = app.syncer.lock().await.unwrap();
    let before = ticks_skipped(source, "busy");
    let other = build_syncer(app.settings.clone()).await;
    assert_eq!(run_tick(&other, job, Some(tick)).await, Tick::Busy);
    assert_eq!(ticks_skipped(source, "busy") - before, 1.0);
    assert_eq!(runs(&app).await, 0);
    held.release().await;
    assert_eq!(run_tick(&other, job, Some(tick)).await, Tick::Ran, "the tick was not claimed by the busy replica");
    common::assert_source_matches_where(app.store(), source, &app.sim.sessions(), |_| true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_during_a_slow_page_exits_zero_with_no_partial_page() {
    let app = TestApp::spawn(300).await;
    // Every request after the sixth is slow, so the signal arrives while a page is in flight.
    app.sim.inject(6, Fault::Slow(Duration::from_millis(700)), 1_000);
    let log = ChildLog::new(&format!("{}-sigterm", app.db.name));
    let mut child = log
        .spawn(child::devin_etl(&["run", "--backfill"], child_env(&app)).env("DEVIN_ETL__SYNC__SHUTDOWN_GRACE", "20s"));
    let pool = app.store().pool().clone();
    common::wait_for_committed_sessions(app.store()).await;
    child::signal(&child, "TERM");
    let status =
        tokio::time::timeout(Duration::from_secs(30), child.wait()).await.expect("exits within the grace").unwrap();

    assert!(status.success(), "exit status {status:?}\n{}", log.tail());
    let (mode, run_status): (String, String) =
        sqlx::query_as("select mode, status from sync_runs order by run_id limit 1").fetch_one(&pool).await.unwrap();
    assert_eq!((mode.as_str(), run_status.as_str()), ("backfill", "aborted"));
    let loaded: i64 = sqlx::query_scalar("select count(*) from sessions").fetch_one(&pool).await.unwrap();
    assert!(loaded < 300, "the backfill stopped early ({loaded} sessions)");
    common::assert_present_sessions_complete(app.store(), &app.sim.sessions()).await;
    assert_eq!(app.watermark().await, None, "an unfinished backfill sets no watermark");

    app.sim.clear_faults();
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn invalid_configuration_fails_at_start_naming_the_key() {
    for (key, value, named) in [
        ("DEVIN_ETL__SYNC__SCHEDULE", "every 5 minutes", "sync.schedule"),
        ("DEVIN_ETL__SYNC__RECONCILE_SCHEDULE", "61 * * * *", "sync.reconcile_schedule"),
        ("DEVIN_ETL__API__BASE_URL", "http://api.devin.ai", "api.base_url"),
        ("DEVIN_ETL__SERVER__LISTEN", "not-an-address", "server.listen"),
        // Requests of 200 ids would be longer than proxies accept (checked by `app::init` with the client's encoding).
        ("DEVIN_ETL__SYNC__ENRICHMENT_BATCH", "200", "sync.enrichment_batch"),
    ] {
        let out = child::devin_etl(&["migrate"], [(key, value.to_owned())]).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{key}={value}: {stderr}");
        assert!(stderr.contains(named), "{key}={value} names {named}: {stderr}");
    }
    let env = [
        ("DEVIN_ETL__SYNC__SCHEDULE", "0 */5 * * * *".to_owned()),
        ("DATABASE_URL", "postgres://postgres@127.0.0.1:1/x".to_owned()),
    ];
    let out = child::devin_etl(&["migrate"], env).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("sync.schedule"), "a 6-field schedule is valid: {stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_of_whole_runs_never_contain_the_token() {
    let app = TestApp::spawn(60).await;
    let token = app.sim.token().to_owned();
    let mut logs = String::new();
    for args in [&["sync", "--backfill"][..], &["sync"], &["status"]] {
        let out = child::devin_etl(args, child_env(&app)).env("RUST_LOG", "trace").output().await.unwrap();
        assert!(out.status.success(), "{args:?}: {}", String::from_utf8_lossy(&out.stderr));
        logs.push_str(&String::from_utf8_lossy(&out.stdout));
        logs.push_str(&String::from_utf8_lossy(&out.stderr));
    }
    // A failing run: the server rejects the token, and the error is printed.
    app.sim.inject(0, Fault::Status { code: 401, retry_after: None }, 1);
    let out = child::devin_etl(&["sync"], child_env(&app)).env("RUST_LOG", "trace").output().await.unwrap();
    assert!(!out.status.success());
    logs.push_str(&String::from_utf8_lossy(&out.stdout));
    logs.push_str(&String::from_utf8_lossy(&out.stderr));

    assert!(logs.contains("backfill run succeeded"), "the logs were captured");
    assert!(logs.contains("401"), "the failure was logged");
    assert!(!logs.contains(&token), "the token appears in the logs");
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn the_old_bench_command_says_where_the_benchmark_went() {
    let out = child::devin_etl(&["bench", "--sessions", "10"], []).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("cargo run --release -p devin-etl-bench --"), "{stderr}");
}
