//! Issue 4, item 6: database faults. The syncer's PostgreSQL connections are terminated for real
//! (`pg_terminate_backend`) in the middle of a run, also in the middle of a page's transaction: the run fails or
//! recovers cleanly, no page is half-stored (every session present has exactly its child rows, and what is
//! present is whole pages), the watermark only moves with a complete walk, and the next run is exact.

use crate::common;

use std::time::Duration;

use common::{TestApp, admin_url, api_order, assert_present_sessions_match_truth};
use devin_etl::sync::Mode;
use devin_sim::{Fault, SimulatorConfig};
use sqlx::Connection as _;

const PAGE: usize = 10;

async fn app(sessions: usize) -> TestApp {
    TestApp::spawn_with(SimulatorConfig { sessions, manual_clock: true, ..SimulatorConfig::default() }, |s| {
        s.api.page_size = PAGE as u32;
    })
    .await
}

async fn admin() -> sqlx::PgConnection {
    sqlx::PgConnection::connect(&admin_url()).await.unwrap()
}

/// Terminates the syncer's backends on the test database that `condition` (SQL over `pg_stat_activity`)
/// selects; returns how many.
async fn terminate(admin: &mut sqlx::PgConnection, database: &str, condition: &str) -> usize {
    let sql = format!(
        "select count(*) filter (where pg_terminate_backend(pid)) from pg_stat_activity
         where application_name = 'devin-etl' and datname = $1 and pid <> pg_backend_pid() and ({condition})"
    );
    let n: i64 = sqlx::query_scalar(&sql).bind(database).fetch_one(admin).await.unwrap();
    n as usize
}

/// Whether a backend of the syncer is inside a transaction (only page writes use transactions).
async fn writing(admin: &mut sqlx::PgConnection, database: &str) -> bool {
    sqlx::query_scalar(
        "select exists (select 1 from pg_stat_activity
         where application_name = 'devin-etl' and datname = $1 and xact_start is not null
           and state in ('active', 'idle in transaction'))",
    )
    .bind(database)
    .fetch_one(admin)
    .await
    .unwrap()
}

/// After a run on an empty warehouse (one walk in API order) that may have stopped part way: what is stored
/// matches the truth field by field and is whole pages from the start of the walk.
async fn assert_whole_pages_only(app: &TestApp) -> usize {
    let truth = app.sim.sessions();
    let present = assert_present_sessions_match_truth(app.store(), &truth).await;
    let n = present.len();
    assert!(n % PAGE == 0 || n == truth.len(), "{n} sessions stored: a page was half-stored");
    let prefix: std::collections::BTreeSet<String> = api_order(&truth)[..n].iter().cloned().collect();
    assert_eq!(present, prefix, "what is stored is the first {n} sessions of the walk");
    n
}

/// The watermark moves only with a complete walk: set means everything is stored.
async fn assert_watermark_only_with_everything(app: &TestApp) {
    let stored = assert_whole_pages_only(app).await;
    if app.watermark().await.is_some() {
        assert_eq!(stored, app.sim.len(), "the watermark moved without the walk's last page");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_connection_killed_inside_a_page_transaction_is_retried_whole_and_the_run_ends_exact() {
    let app = app(100).await;
    let mut admin = admin().await;
    // Test instrumentation: every write of sessions takes 300 ms, so a page's transaction can be caught open.
    sqlx::raw_sql(&format!(
        "create function public.slow_write() returns trigger language plpgsql as
             $$ begin perform pg_sleep(0.3); return null; end $$;
         create trigger slow_write after insert on {schema}.sessions
             for each statement execute function public.slow_write();",
        schema = app.store().schema()
    ))
    .execute(app.store().pool())
    .await
    .unwrap();
    app.sim.inject(0, Fault::Slow(Duration::from_millis(50)), 1_000);

    let syncer = app.syncer.clone();
    let run = tokio::spawn(async move { syncer.run_once(Mode::Incremental).await });
    // Let one page commit, then kill the connection that is in the middle of writing the next one.
    let mut killed = 0;
    let mut seen_writes = 0;
    while killed == 0 && !run.is_finished() {
        if writing(&mut admin, &app.db.name).await {
            seen_writes += 1;
            if seen_writes > 1 && app.count("sessions").await > 0 {
                killed = terminate(&mut admin, &app.db.name, "xact_start is not null").await;
            } else {
                // Wait for this write to end before looking for the next.
                while writing(&mut admin, &app.db.name).await {
                    tokio::time::sleep(Duration::from_millis(5)).await;
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    assert_eq!(killed, 1, "a page's transaction was caught and its connection terminated");
    // The killed transaction rolled back whole; the batch is written again on a fresh connection.
    let outcome = tokio::time::timeout(Duration::from_secs(60), run).await.unwrap().unwrap().expect("the run recovers");
    let status: Vec<String> =
        sqlx::query_scalar("select status from sync_runs").fetch_all(app.store().pool()).await.unwrap();
    assert_eq!(status, ["succeeded"]);
    assert_eq!(outcome.writes.sessions_written, 100, "every session written exactly once");
    assert!(app.watermark().await.is_some());
    app.assert_matches_truth().await;
    sqlx::raw_sql("drop function public.slow_write() cascade").execute(app.store().pool()).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_killed_again_and_again_during_a_run_lose_nothing() {
    let app = app(150).await;
    let mut admin = admin().await;
    app.sim.inject(0, Fault::Slow(Duration::from_millis(60)), 1_000);

    let syncer = app.syncer.clone();
    let run = tokio::spawn(async move { syncer.run_once(Mode::Incremental).await });
    // Each kill only once batches have committed since the previous one, so the kills land in the middle of
    // the run: committed batches before each of them, and (below) after the last. Every connection of the run
    // is terminated but the single-flight lock's own (losing it must stop the run: `db_faults.rs` tests that).
    let pool_connections = "pid not in (select pid from pg_locks where locktype = 'advisory')";
    let mut stored_at_kills = Vec::new();
    for threshold in [10, 30, 50, 70] {
        let deadline = std::time::Instant::now() + Duration::from_secs(30);
        while (app.count("sessions").await as usize) < threshold {
            assert!(!run.is_finished(), "the run ended before {threshold} sessions were stored");
            assert!(std::time::Instant::now() < deadline, "no batch committed for 30 s");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let killed = terminate(&mut admin, &app.db.name, pool_connections).await;
        assert!(killed > 0, "the run's connections were terminated at {threshold} sessions");
        stored_at_kills.push(app.count("sessions").await as usize);
    }
    assert!(!run.is_finished(), "the kills landed during the run");
    let outcome = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .unwrap()
        .unwrap()
        .expect("the run recovers from lost connections (each batch is retried whole on a fresh one)");
    let last_kill = *stored_at_kills.last().unwrap();
    assert!(last_kill < 150, "batches committed after the last kill: {stored_at_kills:?}");
    assert_eq!(outcome.writes.sessions_written, 150, "every session written exactly once");
    assert_watermark_only_with_everything(&app).await;
    assert_eq!(app.watermark().await, Some(app.sim.now() - 30));
    app.assert_matches_truth().await;

    app.sim.clear_faults();
    app.sim.advance(60);
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    assert_eq!(app.watermark().await, Some(app.sim.now() - 30));
    app.assert_matches_truth().await;
}
