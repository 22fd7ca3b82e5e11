//! Issue 11, item 6 (continued): stopping. One SIGINT stops `sync` after the batch in flight, recorded `aborted`;
//! a run that does not stop within `sync.shutdown_grace` is abandoned by `run`, which still exits cleanly.

use crate::common;

use std::time::{Duration, Instant};

use common::TestApp;
use common::child::{self, ChildLog, child_env};
use devin_sim::Fault;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_sigint_stops_sync_after_the_batch_in_flight_and_the_rerun_completes() {
    const PAGE: Duration = Duration::from_millis(700);
    let app = TestApp::spawn(300).await;
    app.sim.inject(6, Fault::Slow(PAGE), 1_000);
    let log = ChildLog::new(&format!("{}-one-sigint", app.db.name));
    let mut process = log.spawn(&mut child::devin_etl(&["sync", "--backfill"], child_env(&app)));
    common::wait_for_committed_sessions(app.store()).await;
    let signalled = Instant::now();
    child::signal(&process, "INT");
    let status = tokio::time::timeout(Duration::from_secs(30), process.wait()).await.expect("it stops").unwrap();
    let took = signalled.elapsed();
    // At most the pages in flight (two windows at once) and their writes: about two slow pages, with room.
    assert!(took < PAGE * 6, "stopped {took:?} after SIGINT (pages take {PAGE:?})\n{}", log.tail());
    let logged = log.text();
    assert!(logged.contains("SIGINT received"), "{logged}");
    assert_eq!(status.code(), Some(1), "an interrupted sync is not a success: {status:?}\n{}", log.tail());
    assert!(logged.contains("stopped by shutdown"), "says why: {}", log.tail());
    let (mode, run_status): (String, String) =
        sqlx::query_as("select mode, status from sync_runs order by run_id limit 1")
            .fetch_one(app.store().pool())
            .await
            .unwrap();
    assert_eq!((mode.as_str(), run_status.as_str()), ("backfill", "aborted"));
    common::assert_present_sessions_complete(app.store(), &app.sim.sessions()).await;
    assert!(common::session_count(app.store()).await < 300, "it stopped before the end");
    assert_eq!(app.watermark().await, None);

    app.sim.clear_faults();
    let out = child::devin_etl(&["sync", "--backfill"], child_env(&app)).output().await.unwrap();
    assert!(out.status.success(), "rerun: {}", String::from_utf8_lossy(&out.stderr));
    app.assert_matches_truth().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn run_abandons_a_run_that_outlives_the_shutdown_grace_and_exits_cleanly() {
    const GRACE: Duration = Duration::from_secs(1);
    let app = TestApp::spawn(300).await;
    // After a few pages every request hangs for a minute: the run cannot stop by itself within the grace.
    app.sim.inject(6, Fault::Slow(Duration::from_secs(60)), 1_000);
    let log = ChildLog::new(&format!("{}-grace", app.db.name));
    let mut process = log
        .spawn(child::devin_etl(&["run", "--backfill"], child_env(&app)).env("DEVIN_ETL__SYNC__SHUTDOWN_GRACE", "1s"));
    common::wait_for_committed_sessions(app.store()).await;
    // Let the hanging requests begin.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let signalled = Instant::now();
    child::signal(&process, "TERM");
    let status = tokio::time::timeout(Duration::from_secs(30), process.wait()).await.expect("it exits").unwrap();
    let took = signalled.elapsed();
    assert!(took >= GRACE, "it waited for the grace: {took:?}");
    assert!(took < GRACE * 5, "it did not wait for the hanging page: {took:?}\n{}", log.tail());
    assert!(status.success(), "{status:?}\n{}", log.tail());
    assert!(log.text().contains("did not stop within the shutdown grace period"), "{}", log.tail());
    common::assert_present_sessions_complete(app.store(), &app.sim.sessions()).await;
    assert_eq!(app.watermark().await, None);

    app.sim.clear_faults();
    let out = child::devin_etl(&["sync", "--backfill"], child_env(&app)).output().await.unwrap();
    assert!(out.status.success(), "rerun: {}", String::from_utf8_lossy(&out.stderr));
    app.assert_matches_truth().await;
}
