//! The daemon's database connections (issue 14, item 5): during a run at most its pool, its lock connection and
//! the HTTP endpoints' two; between runs, once `database.idle_timeout` has passed, at most 4 (in practice the HTTP
//! endpoints' two, which a scraper keeps busy), as docs/deploy.md says.

use std::time::{Duration, Instant};

use sqlx::Connection as _;

use crate::common::child::{ChildLog, child_env, devin_etl};
use crate::common::{self, TestApp, free_port};

/// Connections the service holds to the test's database (the service names itself `devin-etl`), and whether a job
/// is going (a run is recorded, or a source's lock is held: a tick takes it before it records its run).
async fn service_connections(conn: &mut sqlx::PgConnection) -> (i64, bool) {
    sqlx::query_as(
        "select (select count(*) from pg_stat_activity
                 where datname = current_database() and application_name = 'devin-etl'),
                exists (select 1 from devin.sync_runs where status = 'running')
                or exists (select 1 from pg_locks l join pg_database d on d.oid = l.database
                           where d.datname = current_database() and l.locktype = 'advisory' and l.granted)",
    )
    .fetch_one(conn)
    .await
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn between_runs_the_daemon_holds_at_most_four_connections() {
    let app = TestApp::spawn(60).await;
    // The test's own pool names itself `devin-etl` too: closed, so that only the daemon's connections are counted.
    app.store().pool().close().await;
    let port = free_port();
    let log = ChildLog::new(&format!("{}-budget", app.db.name));
    let mut command = devin_etl(&["run", "--backfill"], child_env(&app));
    command
        .env("DEVIN_ETL__SERVER__LISTEN", format!("127.0.0.1:{port}"))
        .env("DEVIN_ETL__SYNC__SCHEDULE", "*/12 * * * * *")
        .env("DEVIN_ETL__DATABASE__IDLE_TIMEOUT", "1s");
    let mut child = log.spawn(&mut command);
    let mut conn = sqlx::PgConnection::connect(&app.db.url).await.unwrap();
    let scrape = format!("http://127.0.0.1:{port}/metrics");

    // Sample every 100 ms for 30 s while scraping /metrics once a second, as Prometheus would.
    let (mut during_runs, mut idle, mut idle_samples) = (0, i64::MAX, 0);
    let mut at_most_between_runs = 0;
    let mut run_ended_at: Option<Instant> = None;
    let started = Instant::now();
    let mut last_scrape = Instant::now();
    while started.elapsed() < Duration::from_secs(30) {
        assert!(child.try_wait().unwrap().is_none(), "the daemon ended:\n{}", log.tail());
        if last_scrape.elapsed() > Duration::from_secs(1) {
            let _ = tokio::time::timeout(Duration::from_secs(2), reqwest::get(&scrape)).await;
            last_scrape = Instant::now();
        }
        let (n, running) = service_connections(&mut conn).await;
        if running {
            during_runs = during_runs.max(n);
            run_ended_at = None;
        } else {
            let ended = *run_ended_at.get_or_insert_with(Instant::now);
            // Once the pool's idle connections have had idle_timeout (1 s) plus the reaper's period (1 s) to close.
            if ended.elapsed() > Duration::from_secs(3) {
                at_most_between_runs = at_most_between_runs.max(n);
                idle = idle.min(n);
                idle_samples += 1;
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    common::child::signal(&child, "TERM");
    let _ = tokio::time::timeout(Duration::from_secs(30), child.wait()).await;

    let runs: i64 = sqlx::query_scalar("select count(*) from devin.sync_runs where status = 'succeeded'")
        .fetch_one(&mut conn)
        .await
        .unwrap();
    assert!(runs >= 3, "a backfill and at least one scheduled tick ran ({runs} runs):\n{}", log.tail());
    assert!(idle_samples > 20, "enough samples between runs ({idle_samples})");
    assert!(during_runs >= 2, "the runs used connections ({during_runs})");
    // Pool (backfill concurrency 2 + 2), the lock's connection, the HTTP endpoints' two.
    assert!(during_runs <= 7, "during runs: {during_runs} connections");
    // Typically the HTTP endpoints' connections only; a tick that is just starting may have opened one more.
    assert!(at_most_between_runs <= 4, "between runs: up to {at_most_between_runs} connections");
    eprintln!("connections: up to {during_runs} during runs, {idle}..={at_most_between_runs} between them");
}
