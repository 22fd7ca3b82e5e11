//! Issue 4, item 2 and issue 11, item 3: crash safety with a real child process. `devin-etl sync` (backfill,
//! incremental with its enrichment step, reconcile) runs as the built binary against the simulator (served by
//! this test process) and a fresh database, and is killed with SIGKILL while one of its writes is in flight: a
//! COPY or a merge (held open by a `before insert` trigger the test puts on a table), an enrichment batch's
//! write, or a reconcile's deletion step (held on a row lock the test takes). The test sees the write in
//! `pg_stat_activity` before it kills. After each kill every session in the warehouse, all its rows in every
//! table included, must equal EITHER its version before the run OR its version after it; a rerun ends exact.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::os::unix::process::ExitStatusExt as _;
use std::process::ExitStatus;
use std::time::Duration;

use common::child::{self, ChildLog};
use common::{
    SessionVersion, TestDb, assert_each_session_old_or_new, assert_warehouse_matches, deleted_versions,
    expected_versions, test_settings,
};
use devin_etl::store::Store;
use devin_sim::{Fault, RunningSimulator, Simulator, SimulatorConfig};
use sqlx::Connection as _;

const PAGE_SIZE: usize = 20;
const SETTLE: i64 = 30;
/// Requests are this slow while a run is to be killed (the phases of a run are easier to tell apart).
const SLOW: Duration = Duration::from_millis(30);
/// The trigger's sleep: how long each write to the slowed table stays in flight, at least.
const WRITE_HELD: &str = "0.2";

type Versions = BTreeMap<String, SessionVersion>;

/// The simulator, served by this process, and a database for the child to sync into.
struct World {
    sim: Simulator,
    server: RunningSimulator,
    db: TestDb,
    /// The test's own view of the child's warehouse.
    store: Store,
    runs: usize,
    /// Settings of every child of this world, on top of the common ones.
    env: Vec<(&'static str, String)>,
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
        World { sim, server, db, store, runs: 0, env: Vec::new() }
    }

    /// Starts `devin-etl ARGS` with the test's database and simulator; output goes to a log per run.
    fn spawn(&mut self, args: &[&str]) -> (tokio::process::Child, ChildLog) {
        self.runs += 1;
        let log = ChildLog::new(&format!("crash-{}-run-{}", self.db.name, self.runs));
        let mut env = vec![
            ("DATABASE_URL", self.db.url.clone()),
            ("DEVIN_API_TOKEN", self.sim.token().to_owned()),
            ("DEVIN_ETL__API__BASE_URL", self.server.base_url()),
            ("DEVIN_ETL__API__PAGE_SIZE", PAGE_SIZE.to_string()),
            ("DEVIN_ETL__SYNC__BACKFILL_CONCURRENCY", "2".to_owned()),
            // The simulator's manual clock jumps an hour between runs; see `common::test_settings`.
            ("DEVIN_ETL__SYNC__CLOCK_TOLERANCE", "3650d".to_owned()),
            ("DEVIN_ETL__LOG__FORMAT", "json".to_owned()),
        ];
        env.extend(self.env.iter().cloned());
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

    /// Test instrumentation: every insert or COPY into `table` sleeps [`WRITE_HELD`] seconds first, so the
    /// statement (and its transaction) can be seen in flight and killed there.
    async fn hold_writes_to(&self, table: &str) {
        sqlx::raw_sql(&format!(
            "create or replace function public.crash_hold() returns trigger language plpgsql as
                 $$ begin perform pg_sleep({WRITE_HELD}); return null; end $$;
             create trigger crash_hold before insert on {schema}.{table}
                 for each statement execute function public.crash_hold();",
            schema = self.store.schema()
        ))
        .execute(self.store.pool())
        .await
        .unwrap();
    }

    async fn release_writes(&self) {
        sqlx::raw_sql("drop function public.crash_hold() cascade").execute(self.store.pool()).await.unwrap();
    }

    /// Runs `devin-etl ARGS` and kills it with SIGKILL once `pg_stat_activity` has shown the `nth` distinct
    /// statement of the test database that `condition` (SQL over `pg_stat_activity`) selects, counting only
    /// once `gate` holds; the kill is sent right after a poll that still shows one. Panics if the run ends
    /// first.
    async fn kill_during(&mut self, args: &[&str], condition: &str, nth: usize, gate: impl Fn(&Simulator) -> bool) {
        self.sim.inject(0, Fault::Slow(SLOW), 1_000_000);
        let sql = format!(
            "select pid, query_start::text, query from pg_stat_activity
             where datname = $1 and pid <> pg_backend_pid() and state = 'active' and ({condition})"
        );
        let (mut child, log) = self.spawn(args);
        let deadline = std::time::Instant::now() + Duration::from_secs(60);
        let mut seen: BTreeSet<(i32, String)> = BTreeSet::new();
        let status: ExitStatus = loop {
            assert!(
                std::time::Instant::now() < deadline,
                "statement {nth} where {condition} never showed (saw {}):\n{}",
                seen.len(),
                log.tail()
            );
            if let Some(status) = child.try_wait().unwrap() {
                panic!(
                    "devin-etl {args:?} ended ({status}) before statement {nth} where {condition} \
                     (saw {}):\n{}",
                    seen.len(),
                    log.tail()
                );
            }
            if gate(&self.sim) {
                let rows: Vec<(i32, String, String)> =
                    sqlx::query_as(&sql).bind(&self.db.name).fetch_all(self.store.pool()).await.unwrap();
                let mut in_flight = None;
                for (pid, start, query) in rows {
                    seen.insert((pid, start));
                    in_flight = Some(query);
                }
                if seen.len() >= nth
                    && let Some(query) = in_flight
                {
                    // `kill` sends SIGKILL: no destructor, no signal handler, no goodbye to PostgreSQL.
                    child.kill().await.unwrap();
                    eprintln!("killed devin-etl {args:?} during: {}", query.chars().take(80).collect::<String>());
                    break child.wait().await.unwrap();
                }
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        };
        assert_eq!(status.signal(), Some(9), "killed by SIGKILL: {status}");
        self.sim.clear_faults();
    }

    /// The killed process's backends are gone (their transactions rolled back) and PostgreSQL freed its
    /// single-flight advisory lock.
    async fn wait_until_the_dead_are_gone(&self) {
        for _ in 0..2_000 {
            let (open, locks): (i64, i64) = sqlx::query_as(
                "select (select count(*) from pg_stat_activity
                         where datname = $1 and pid <> pg_backend_pid() and xact_start is not null),
                        (select count(*) from pg_locks where locktype = 'advisory'
                         and database = (select oid from pg_database where datname = $1))",
            )
            .bind(&self.db.name)
            .fetch_one(self.store.pool())
            .await
            .unwrap();
            if open == 0 && locks == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        panic!("the killed process's transactions or advisory lock never went away");
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
        self.sim.requests()[from..].iter().filter_map(|r| r.window()).collect()
    }

    async fn assert_matches_truth(&self) {
        assert_warehouse_matches(&self.store, &self.sim.sessions()).await;
    }

    /// Every session is its `old` or its `new` version (see the module comment); returns which.
    async fn old_or_new(&self, old: &Versions, new: &Versions) -> common::OldOrNew {
        self.wait_until_the_dead_are_gone().await;
        assert_each_session_old_or_new(&self.store, old, new).await
    }
}

/// `pg_stat_activity` condition: a statement writing to `table` (COPY, or the merge's `insert … select`) that
/// began less than half the trigger's hold ago, so a kill sent now lands while it still runs.
fn writing_to(table: &str) -> String {
    format!(
        "(query ilike 'copy {table} %' or query ilike 'insert into {table} %')
         and clock_timestamp() - query_start < interval '100 milliseconds'"
    )
}

/// Whether a request of an enrichment step (sessions asked for by id) has arrived since request `from`.
fn enrichment_started_since(from: usize) -> impl Fn(&Simulator) -> bool {
    move |sim| sim.requests()[from..].iter().any(|r| r.path_and_query.contains("session_ids="))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_killed_with_sigkill_during_copies_resumes_and_ends_exact() {
    let mut world = World::new(300).await;

    // Reference: how many requests a whole backfill takes (into a database of its own).
    let full = {
        let mut reference = World::on(world.sim.clone()).await;
        let n = reference.run(&["sync", "--backfill"]).await;
        reference.assert_matches_truth().await;
        n
    };
    assert!(full >= 20, "a full backfill takes {full} requests");

    // Into an empty warehouse every batch is COPYed; each COPY into the timeline table is held open and the
    // process is killed inside one (after the first runs' earlier COPYs committed).
    let (nothing, truth) = (Versions::new(), expected_versions(&world.sim.sessions()));
    world.hold_writes_to("session_timeline_events").await;
    let mut done_before = BTreeSet::new();
    let mut stored_before = 0;
    for nth in [3, 4] {
        let from = world.sim.requests().len();
        world.kill_during(&["sync", "--backfill"], &writing_to("session_timeline_events"), nth, |_| true).await;
        let stored = world.old_or_new(&nothing, &truth).await;
        assert!(stored.new.len() > stored_before, "the killed run committed batches before the kill: {stored:?}");
        assert!(!stored.old.is_empty(), "the killed run did not finish");
        stored_before = stored.new.len();
        assert_eq!(world.watermark().await, None, "a killed backfill never moves the watermark");
        let requested = world.windows_requested_since(from);
        let redone: Vec<&(i64, i64)> = requested.iter().filter(|w| done_before.contains(*w)).collect();
        assert!(redone.is_empty(), "windows finished by an earlier run were read again: {redone:?}");
        let done = world.done_windows().await;
        assert!(done.is_superset(&done_before), "finished windows stay finished");
        done_before = done;
    }
    assert!(!done_before.is_empty(), "the killed runs finished some windows");
    world.release_writes().await;

    let from = world.sim.requests().len();
    let last = world.run(&["sync", "--backfill"]).await;
    assert!(last < full, "the rerun resumed: {last} requests, a whole backfill takes {full}");
    let requested = world.windows_requested_since(from);
    assert!(requested.iter().all(|w| !done_before.contains(w)), "the rerun skipped the finished windows");

    world.assert_matches_truth().await;
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
async fn an_incremental_sync_killed_inside_its_writes_leaves_each_session_old_or_new_and_a_rerun_is_exact() {
    let mut world = World::new(150).await;
    world.run(&["sync", "--backfill"]).await;
    let watermark = world.watermark().await;
    assert_eq!(watermark, Some(world.sim.now() - SETTLE));
    world.assert_matches_truth().await;
    let old = expected_versions(&world.sim.sessions());

    world.sim.advance(3_600);
    world.sim.update_some(90);
    world.sim.create(30);
    world.sim.advance(60);
    let new = expected_versions(&world.sim.sessions());

    // 120 changes in pages of 20 (new sessions first: COPY; then merges). Killed inside the merge (or COPY)
    // into `sessions`, then inside the write of a child table, whose session rows the same transaction wrote.
    let mut new_before = 0;
    for table in ["sessions", "session_timeline_events"] {
        world.hold_writes_to(table).await;
        world.kill_during(&["sync"], &writing_to(table), 2, |_| true).await;
        world.release_writes().await;
        assert_eq!(world.watermark().await, watermark, "a killed incremental run never moves the watermark");
        let stored = world.old_or_new(&old, &new).await;
        assert!(stored.new.len() > new_before, "batches before the kill committed ({table}): {stored:?}");
        assert!(!stored.old.is_empty(), "the batch in flight was not committed ({table})");
        new_before = stored.new.len();
    }

    world.run(&["sync"]).await;
    world.assert_matches_truth().await;
    assert_eq!(world.watermark().await, Some(world.sim.now() - SETTLE), "the completed run moved the watermark");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_enrichment_killed_inside_its_write_leaves_each_session_old_or_new_and_a_rerun_is_exact() {
    let mut world = World::new(100).await;
    // Enrichment in batches of 8 ids: several writes, so some commit before the kill.
    world.env.push(("DEVIN_ETL__SYNC__ENRICHMENT_BATCH", "8".to_owned()));
    // 40 recent sessions whose analysis is still being generated when they are first loaded.
    let created = world.sim.create(40);
    let analyses: Vec<_> = created.iter().map(|id| world.sim.session(id).unwrap().analysis).collect();
    let late = created.iter().zip(&analyses).filter(|(_, a)| a.is_some()).count();
    assert!(late >= 20, "{late} of the new sessions will get an analysis late");
    for id in &created {
        world.sim.modify_keep_updated_at(id, |s| s.analysis = None);
    }
    world.run(&["sync", "--backfill"]).await;
    // The next run's incremental walk no longer reaches back to them: only enrichment can bring the analysis.
    world.sim.advance(3_600);
    world.run(&["sync"]).await;
    world.assert_matches_truth().await;
    let old = expected_versions(&world.sim.sessions());

    // The analysis arrives without bumping updated_at.
    for (id, analysis) in created.iter().zip(analyses) {
        world.sim.modify_keep_updated_at(id, |s| s.analysis = analysis);
    }
    world.sim.advance(60);
    let new = expected_versions(&world.sim.sessions());

    world.hold_writes_to("session_timeline_events").await;
    let from = world.sim.requests().len();
    world.kill_during(&["sync"], &writing_to("session_timeline_events"), 2, enrichment_started_since(from)).await;
    world.release_writes().await;
    let stored = world.old_or_new(&old, &new).await;
    assert!(!stored.new.is_empty(), "an enrichment batch committed before the kill: {stored:?}");
    assert!(!stored.old.is_empty(), "the batch in flight was not committed: {stored:?}");
    assert!(stored.new.iter().chain(&stored.old).all(|id| created.contains(id)), "{stored:?}");

    world.run(&["sync"]).await;
    world.assert_matches_truth().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_killed_between_its_walk_and_its_deletions_marks_nothing_deleted_and_a_rerun_does() {
    let mut world = World::new(120).await;
    world.run(&["sync", "--backfill"]).await;
    let old = expected_versions(&world.sim.sessions());
    let ids: Vec<String> = world.sim.sessions().iter().map(|s| s.session_id.clone()).collect();
    let removed: Vec<String> = ids.iter().step_by(20).cloned().collect();
    for id in &removed {
        world.sim.remove(id);
    }
    // Changes the reconcile's walk writes (late, without a newer updated_at).
    let changed: BTreeSet<String> = ids.iter().skip(3).step_by(20).cloned().collect();
    for id in &changed {
        world.sim.modify_keep_updated_at(id, |s| s.title = Some(format!("late title of {id}")));
    }
    world.sim.advance(60);
    let mut new = expected_versions(&world.sim.sessions());
    for id in &removed {
        new.insert(id.clone(), old[id].clone());
    }
    let new = deleted_versions(new, &removed);

    // Hold the deletion step: the test locks the rows it must mark. The walk never touches them (the API no
    // longer returns them), so only the final `update … set deleted_at` waits, after the walk has finished.
    let mut holder = sqlx::PgConnection::connect(&world.db.url).await.unwrap();
    sqlx::query("begin").execute(&mut holder).await.unwrap();
    let lock = format!("select 1 from {}.sessions where session_id = any($1) for update", world.store.schema());
    sqlx::query(&lock).bind(&removed).execute(&mut holder).await.unwrap();
    let holder_pid: i32 = sqlx::query_scalar("select pg_backend_pid()").fetch_one(&mut holder).await.unwrap();
    let waiting = format!(
        "query ilike '%update sessions s set deleted_at%' and wait_event_type = 'Lock'
         and {holder_pid} = any(pg_blocking_pids(pid))"
    );
    world.kill_during(&["sync", "--reconcile"], &waiting, 1, |_| true).await;
    sqlx::query("rollback").execute(&mut holder).await.unwrap();
    holder.close().await.unwrap();

    let stored = world.old_or_new(&old, &new).await;
    assert_eq!(stored.new, changed, "the walk's batches committed before the kill; nothing was marked deleted");
    assert_eq!(stored.old, removed.iter().cloned().collect(), "the removed sessions are still live");
    assert_eq!(world.store.table_counts().await.unwrap()[0].1, 120, "never a hard delete");

    world.run(&["sync", "--reconcile"]).await;
    let stored = world.old_or_new(&old, &new).await;
    assert!(stored.old.is_empty(), "{stored:?}");
    assert_eq!(stored.new.len(), changed.len() + removed.len(), "exactly the removed sessions are marked deleted");
    assert_eq!(world.store.table_counts().await.unwrap()[0].1, 120, "never a hard delete");
    common::assert_warehouse_matches_where(&world.store, &world.sim.sessions(), |id| !removed.iter().any(|r| r == id))
        .await;
}
