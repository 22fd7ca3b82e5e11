//! Issue 4, item 2: crash safety with a real child process. `devin-etl sync --backfill` and `devin-etl sync` run
//! as the built binary against the simulator (served by this test process) and a fresh database, and are killed
//! with SIGKILL at several points; reruns must end with exact data, no duplicates, a resumed backfill (finished
//! windows are not read again) and a watermark that only moved with the completed run.

use crate::common;

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::time::Duration;

use common::child::{self, ChildLog};
use common::{TestDb, assert_present_sessions_match_truth, assert_warehouse_matches, test_settings};
use devin_etl::store::Store;
use devin_sim::{Fault, RunningSimulator, Simulator, SimulatorConfig};

const PAGE_SIZE: usize = 20;
const SETTLE: i64 = 30;
/// Every request is this slow while a run is to be killed, so the kill lands in the middle of it.
const SLOW: Duration = Duration::from_millis(30);

/// The simulator, served by this process, and a database for the child to sync into.
struct World {
    sim: Simulator,
    server: RunningSimulator,
    db: TestDb,
    /// The test's own view of the child's warehouse.
    store: Store,
    runs: usize,
}

impl World {
    async fn new(sessions: usize) -> World {
        World::on(Simulator::new(SimulatorConfig { sessions, manual_clock: true, ..SimulatorConfig::default() })).await
    }

    /// A world of its own (server, database) around an existing simulator.
    async fn on(sim: Simulator) -> World {
        let server = sim.serve(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
        let db = TestDb::create().await;
        let settings = test_settings(&db.url, &server.base_url(), sim.token());
        let store = devin_etl::app::migrated_store(&settings).await.unwrap();
        World { sim, server, db, store, runs: 0 }
    }

    /// Starts `devin-etl ARGS` with the test's database and simulator; output goes to a log per run.
    fn spawn(&mut self, args: &[&str]) -> (tokio::process::Child, ChildLog) {
        self.runs += 1;
        let log = ChildLog::new(&format!("crash-{}-run-{}", self.db.name, self.runs));
        let env = [
            ("DATABASE_URL", self.db.url.clone()),
            ("DEVIN_API_TOKEN", self.sim.token().to_owned()),
            ("DEVIN_ETL__API__BASE_URL", self.server.base_url()),
            ("DEVIN_ETL__API__PAGE_SIZE", PAGE_SIZE.to_string()),
            ("DEVIN_ETL__SYNC__BACKFILL_CONCURRENCY", "2".to_owned()),
            // The simulator's manual clock jumps an hour between runs; see `common::test_settings`.
            ("DEVIN_ETL__SYNC__CLOCK_TOLERANCE", "3650d".to_owned()),
            ("DEVIN_ETL__LOG__FORMAT", "json".to_owned()),
        ];
        let child = log.spawn(&mut child::devin_etl(args, env));
        (child, log)
    }

    /// Runs `devin-etl ARGS` to completion; panics with its output unless it succeeds. Returns its requests.
    async fn run(&mut self, args: &[&str]) -> usize {
        let before = self.sim.requests().len();
        let (mut child, log) = self.spawn(args);
        let status = tokio::time::timeout(Duration::from_secs(120), child.wait()).await.unwrap().unwrap();
        assert!(status.success(), "devin-etl {args:?} failed: {status}\n{}", log.tail());
        self.sim.requests().len() - before
    }

    /// Runs `devin-etl ARGS` and kills it with SIGKILL once it has made `k` list requests. Panics if the run
    /// ends by itself first.
    async fn run_and_kill(&mut self, args: &[&str], k: usize) {
        self.sim.inject(0, Fault::Slow(SLOW), 1_000_000);
        let before = self.sim.requests().len();
        let (mut child, log) = self.spawn(args);
        let status: ExitStatus = loop {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("devin-etl {args:?} ended ({status}) before its request {k}:\n{}", log.tail());
            }
            if self.sim.requests().len() - before >= k {
                // `kill` sends SIGKILL: no destructor, no signal handler, no goodbye to PostgreSQL.
                child.kill().await.unwrap();
                break child.wait().await.unwrap();
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        };
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
        self.sim.clear_faults();
        self.wait_for_lock_release().await;
    }

    /// PostgreSQL notices the dead client and frees its single-flight advisory lock.
    async fn wait_for_lock_release(&self) {
        for _ in 0..2_000 {
            let held: i64 = sqlx::query_scalar(
                "select count(*) from pg_locks where locktype = 'advisory'
                 and database = (select oid from pg_database where datname = $1)",
            )
            .bind(&self.db.name)
            .fetch_one(self.store.pool())
            .await
            .unwrap();
            if held == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the killed process's advisory lock was never released");
    }

    async fn watermark(&self) -> Option<i64> {
        self.store.watermark("devin").await.unwrap()
    }

    async fn done_windows(&self) -> BTreeSet<(i64, i64)> {
        self.store.completed_windows("devin").await.unwrap().into_iter().collect()
    }

    /// `(created_after, created_before)` of the window each backfill request since `from` asked for (the clock
    /// probe, without a window, is left out), as `sync_backfill_windows` keys them.
    fn windows_requested_since(&self, from: usize) -> Vec<(i64, i64)> {
        self.sim.requests()[from..]
            .iter()
            .filter_map(|r| {
                let query = r.path_and_query.split_once('?').map_or("", |(_, q)| q);
                let param = |name: &str| {
                    query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse::<i64>().ok())
                };
                let (after, before) = (param("created_after"), param("created_before"));
                (after.is_some() || before.is_some()).then(|| (after.unwrap_or(i64::MIN), before.unwrap_or(i64::MAX)))
            })
            .collect()
    }

    async fn assert_no_duplicates_and_matches_truth(&self) {
        let (rows, distinct): (i64, i64) = sqlx::query_as("select count(*), count(distinct session_id) from sessions")
            .fetch_one(self.store.pool())
            .await
            .unwrap();
        assert_eq!(rows, distinct);
        assert_warehouse_matches(&self.store, &self.sim.sessions()).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_with_sigkill_at_several_points_resumes_and_ends_exact() {
    let mut world = World::new(300).await;

    // Reference: how many requests a whole backfill takes (into a database of its own).
    let full = {
        let mut reference = World::on(world.sim.clone()).await;
        let n = reference.run(&["sync", "--backfill"]).await;
        reference.assert_no_duplicates_and_matches_truth().await;
        n
    };
    assert!(full >= 20, "a full backfill takes {full} requests");

    // Killed early (just after the clock probe and the first windows' requests), then further on.
    let mut done_before = BTreeSet::new();
    for k in [3, full / 3, full / 3] {
        let from = world.sim.requests().len();
        world.run_and_kill(&["sync", "--backfill"], k).await;
        assert_eq!(world.watermark().await, None, "a killed backfill never moves the watermark");
        let requested = world.windows_requested_since(from);
        let redone: Vec<&(i64, i64)> = requested.iter().filter(|w| done_before.contains(*w)).collect();
        assert!(redone.is_empty(), "windows finished by an earlier run were read again: {redone:?}");
        // What the killed run committed is correct and whole.
        assert_present_sessions_match_truth(&world.store, &world.sim.sessions()).await;
        let done = world.done_windows().await;
        assert!(done.is_superset(&done_before), "finished windows stay finished");
        done_before = done;
    }
    assert!(!done_before.is_empty(), "the killed runs finished some windows");

    let from = world.sim.requests().len();
    let last = world.run(&["sync", "--backfill"]).await;
    assert!(last < full, "the rerun resumed: {last} requests, a whole backfill takes {full}");
    let requested = world.windows_requested_since(from);
    assert!(requested.iter().all(|w| !done_before.contains(w)), "the rerun skipped the finished windows");

    world.assert_no_duplicates_and_matches_truth().await;
    assert_eq!(world.watermark().await, Some(world.sim.now() - SETTLE), "the completed backfill set the watermark");
    let runs: Vec<(String, String)> = sqlx::query_as("select mode, status from sync_runs order by run_id")
        .fetch_all(world.store.pool())
        .await
        .unwrap();
    let succeeded: Vec<&(String, String)> = runs.iter().filter(|(_, s)| s == "succeeded").collect();
    assert_eq!(succeeded.len(), 1, "only the last run completed: {runs:?}");
    assert!(
        runs[..runs.len() - 1].iter().all(|(_, s)| s == "aborted"),
        "runs of killed processes are closed as aborted by the next run: {runs:?}"
    );
    let moved: Vec<Option<i64>> =
        sqlx::query_scalar("select watermark_after from sync_runs where status <> 'succeeded'")
            .fetch_all(world.store.pool())
            .await
            .unwrap();
    assert!(moved.iter().all(Option::is_none), "killed runs recorded no watermark: {moved:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_incremental_sync_killed_with_sigkill_leaves_the_watermark_and_a_rerun_is_exact() {
    let mut world = World::new(150).await;
    world.run(&["sync", "--backfill"]).await;
    let watermark = world.watermark().await;
    assert_eq!(watermark, Some(world.sim.now() - SETTLE));

    world.sim.advance(3_600);
    world.sim.update_some(90);
    let created = world.sim.create(30);
    // Some of the new sessions wait for analysis: the sync's enrichment step will re-fetch them.
    for id in &created[..10] {
        world.sim.modify_keep_updated_at(id, |s| s.analysis = None);
    }
    world.sim.advance(60);

    // 120 changes in pages of 20: killed after the first, the third and the fifth request.
    for k in [1, 3, 5] {
        world.run_and_kill(&["sync"], k).await;
        assert_eq!(world.watermark().await, watermark, "a killed incremental run never moves the watermark");
        let (rows, distinct): (i64, i64) = sqlx::query_as("select count(*), count(distinct session_id) from sessions")
            .fetch_one(world.store.pool())
            .await
            .unwrap();
        assert_eq!(rows, distinct, "no duplicates");
        assert!(rows >= 150, "nothing lost");
    }

    world.run(&["sync"]).await;
    world.assert_no_duplicates_and_matches_truth().await;
    assert_eq!(world.watermark().await, Some(world.sim.now() - SETTLE), "the completed run moved the watermark");

    // A later kill of the next sync, then a rerun with more changes: still exact.
    world.sim.advance(600);
    world.sim.update_some(40);
    world.sim.advance(60);
    let moved = world.watermark().await;
    world.run_and_kill(&["sync"], 2).await;
    assert_eq!(world.watermark().await, moved);
    world.run(&["sync"]).await;
    world.assert_no_duplicates_and_matches_truth().await;
    assert_eq!(world.watermark().await, Some(world.sim.now() - SETTLE));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_killed_with_sigkill_marks_nothing_deleted_and_a_rerun_does() {
    let mut world = World::new(120).await;
    world.run(&["sync", "--backfill"]).await;
    let removed: Vec<String> = world.sim.sessions().iter().step_by(20).map(|s| s.session_id.clone()).collect();
    for id in &removed {
        world.sim.remove(id);
    }
    world.sim.advance(60);
    let deleted = |world: &World| {
        let pool = world.store.pool().clone();
        async move {
            let ids: Vec<String> = sqlx::query_scalar("select session_id from sessions where deleted_at is not null")
                .fetch_all(&pool)
                .await
                .unwrap();
            ids.into_iter().collect::<BTreeSet<String>>()
        }
    };

    for k in [3, 20] {
        world.run_and_kill(&["sync", "--reconcile"], k).await;
        assert!(deleted(&world).await.is_empty(), "a killed reconcile marks nothing deleted");
        assert_eq!(world.store.table_counts().await.unwrap()[0].1, 120, "never a hard delete");
    }

    world.run(&["sync", "--reconcile"]).await;
    assert_eq!(deleted(&world).await, removed.iter().cloned().collect(), "exactly the removed sessions");
    assert_eq!(world.store.table_counts().await.unwrap()[0].1, 120, "never a hard delete");
    common::assert_warehouse_matches_where(&world.store, &world.sim.sessions(), |id| !removed.iter().any(|r| r == id))
        .await;
}
