//! Issue 14, item 1: a re-read of unchanged sessions writes nothing — not a session, child, history or rollup row —
//! because the merge skips every session whose content hash it holds. A session written without a trustworthy hash
//! (before the hash existed, or by an older release after a rollback) is rewritten once, and only once.

use crate::common;

use common::TestApp;
use devin_etl::sync::Mode;
use devin_sim::SimulatorConfig;
use sqlx::PgPool;

/// Every table a sync writes: the session tables, their history, the rollups and their bookkeeping.
fn written_tables() -> Vec<&'static str> {
    use devin_etl::store::catalogue::{HISTORY, Table};
    Table::ALL.iter().map(|t| t.name()).chain(HISTORY).chain(devin_etl::store::ROLLUP_TABLES).collect()
}

/// Each table's row versions: any insert, update or delete changes its fingerprint (a rewritten row gets a new
/// `xmin`, even with the same values).
async fn row_versions(pool: &PgPool) -> Vec<(&'static str, i64, String)> {
    let mut out = Vec::new();
    for table in written_tables() {
        let (rows, versions): (i64, Option<String>) = sqlx::query_as(&format!(
            "select count(*), md5(string_agg(xmin::text || '/' || ctid::text, ',' order by ctid)) from {table}"
        ))
        .fetch_one(pool)
        .await
        .unwrap();
        out.push((table, rows, versions.unwrap_or_default()));
    }
    out
}

async fn untrusted_hashes(pool: &PgPool) -> i64 {
    sqlx::query_scalar(
        "select count(*) from sessions where content_hash is null or content_hash_at is distinct from synced_at",
    )
    .fetch_one(pool)
    .await
    .unwrap()
}

async fn app() -> TestApp {
    TestApp::spawn_with(SimulatorConfig { sessions: 120, manual_clock: true, ..SimulatorConfig::default() }, |s| {
        s.api.page_size = 25;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_and_a_sync_that_find_nothing_changed_write_nothing() {
    let app = app().await;
    let pool = app.store().pool().clone();
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    assert_eq!(untrusted_hashes(&pool).await, 0, "the COPY path records every hash");
    let before = row_versions(&pool).await;
    assert!(before.iter().filter(|(_, rows, _)| *rows > 0).count() >= 10, "a data set that fills the tables");

    let reconcile = app.syncer.run_once(Mode::Reconcile).await.unwrap();
    assert_eq!(reconcile.items, 120, "the reconcile read every session");
    assert_eq!(reconcile.writes.sessions_written, 0);
    assert_eq!(reconcile.deleted, 0);
    app.sim.advance(60);
    let (incremental, enrichment) = app.syncer.sync(None).await.unwrap();
    assert!(incremental.items + enrichment.items > 0, "the sync re-read sessions (lookback, enrichment)");
    assert_eq!(incremental.writes.sessions_written + enrichment.writes.sessions_written, 0);
    assert_eq!(row_versions(&pool).await, before, "no row of any table was written");

    // One change: exactly that session is rewritten, and the warehouse still equals the API.
    let id = app.sim.sessions()[7].session_id.clone();
    app.sim.modify(&id, |s| s.title = Some("changed without a new updated_at".to_owned()));
    let reconcile = app.syncer.run_once(Mode::Reconcile).await.unwrap();
    assert_eq!(reconcile.writes.sessions_written, 1);
    app.assert_matches_truth().await;
    let changed: Vec<&str> =
        before.iter().zip(row_versions(&pool).await).filter(|(a, b)| a.2 != b.2).map(|(a, _)| a.0).collect();
    assert!(changed.contains(&"sessions"), "{changed:?}");
    assert!(!changed.iter().any(|t| t.starts_with("rollup_daily")), "a title is in no rollup: {changed:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sessions_without_a_trustworthy_hash_are_rewritten_once_and_their_rollups_repaired() {
    let app = app().await;
    let pool = app.store().pool().clone();
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let ids: Vec<String> = app.sim.sessions().iter().map(|s| s.session_id.clone()).collect();

    // A warehouse from before the hash (every hash unknown), and one session that changed in the API and that an
    // older release, brought back by a rollback, wrote: new ACUs and synced_at, the hash left behind, the rollups
    // not maintained.
    let old_write = &ids[3];
    app.sim.modify(old_write, |s| s.acus_consumed += 100.0);
    sqlx::raw_sql(&format!(
        "update sessions set content_hash = null where session_id <> '{old_write}';
         update sessions set synced_at = clock_timestamp(), acus_consumed = acus_consumed + 100
         where session_id = '{old_write}'"
    ))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(untrusted_hashes(&pool).await, 120);

    let reconcile = app.syncer.run_once(Mode::Reconcile).await.unwrap();
    assert_eq!(reconcile.writes.sessions_written, 120, "each session is rewritten once");
    assert_eq!(untrusted_hashes(&pool).await, 0);
    app.assert_matches_truth().await;
    let (counted, stored): (f64, f64) = sqlx::query_as(
        "select (select sum(acus)::float8 from rollup_daily_usage), \
                (select sum(acus_consumed) from sessions where deleted_at is null)",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!((counted - stored).abs() < 1e-6, "the rollups count what the sessions hold: {counted} vs {stored}");

    let before = row_versions(&pool).await;
    let again = app.syncer.run_once(Mode::Reconcile).await.unwrap();
    assert_eq!(again.writes.sessions_written, 0, "and only once");
    assert_eq!(row_versions(&pool).await, before);
}

/// The loader's statements are small; JIT compiling them on a bad estimate cost 4 s per batch at 1M (see
/// docs/performance.md), so its connections have it off.
#[tokio::test]
async fn the_loaders_connections_never_jit() {
    let (_db, store) = common::migrated_warehouse().await;
    let jit: String = sqlx::query_scalar("show jit").fetch_one(store.pool()).await.unwrap();
    assert_eq!(jit, "off");
}
