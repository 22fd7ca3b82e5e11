//! Issue 14, item 2: a first backfill into an empty warehouse loads like `pg_restore` — without the secondary
//! indexes and the foreign keys to `sessions`, which it re-creates (and validates) at its end — and nothing is
//! ever left without them: not after a failed backfill, not after a process that died mid-load, and a key that the
//! rows violate fails loudly instead of being dropped.

use std::time::Duration;

use crate::common;

use common::TestApp;
use devin_etl::sync::Mode;
use devin_sim::{Fault, SimulatorConfig};
use sqlx::PgPool;

/// Every index and constraint of the warehouse's schema, with its definition and whether it is validated.
async fn schema_objects(pool: &PgPool) -> Vec<(String, String, bool)> {
    sqlx::query_as(
        "select c.relname::text, pg_get_indexdef(i.indexrelid), true
         from pg_index i join pg_class c on c.oid = i.indexrelid
         where c.relnamespace = current_schema()::regnamespace
         union all
         select conname::text || ' on ' || conrelid::regclass::text, pg_get_constraintdef(oid), convalidated
         from pg_constraint where connamespace = current_schema()::regnamespace
         order by 1, 2",
    )
    .fetch_all(pool)
    .await
    .unwrap()
}

async fn deferred(pool: &PgPool) -> Vec<(String, String)> {
    sqlx::query_as("select object_name, kind from sync_deferred_ddl order by 1").fetch_all(pool).await.unwrap()
}

async fn app() -> TestApp {
    TestApp::spawn_with(SimulatorConfig { sessions: 150, manual_clock: true, ..SimulatorConfig::default() }, |s| {
        s.api.page_size = 10;
        s.sync.backfill_concurrency = 2;
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_first_backfill_loads_without_secondary_indexes_and_ends_with_every_one_of_them() {
    let app = app().await;
    let pool = app.store().pool().clone();
    let migrated = schema_objects(&pool).await;
    // A pause part-way, to look at the warehouse mid-load.
    app.sim.inject(4, Fault::Slow(Duration::from_millis(1500)), 2);
    let syncer = app.syncer.clone();
    let backfill = tokio::spawn(async move { syncer.run_once(Mode::Backfill).await });

    common::eventually("sessions loaded while the indexes are deferred", Duration::from_secs(20), async || {
        app.count("sessions").await > 0
    })
    .await;
    let mid_load = deferred(&pool).await;
    let kinds = |kind: &str| mid_load.iter().filter(|(_, k)| k == kind).count();
    assert_eq!(kinds("foreign_key"), 9, "every key to sessions: {mid_load:?}");
    assert!(kinds("index") >= 10, "the secondary indexes: {mid_load:?}");
    assert!(mid_load.iter().any(|(o, _)| o.ends_with("sessions_status_idx")));
    assert!(!mid_load.iter().any(|(o, _)| o.ends_with("_pkey")), "primary keys stay: {mid_load:?}");
    let missing: Option<String> =
        sqlx::query_scalar("select to_regclass('sessions_status_idx')::text").fetch_one(&pool).await.unwrap();
    assert_eq!(missing, None);

    backfill.await.unwrap().unwrap();
    assert_eq!(deferred(&pool).await, vec![]);
    assert_eq!(schema_objects(&pool).await, migrated, "every index and key back, as the migrations made them");
    app.assert_matches_truth().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_into_a_warehouse_that_holds_sessions_defers_nothing() {
    let app = app().await;
    let pool = app.store().pool().clone();
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let loaded = schema_objects(&pool).await;
    assert_eq!(app.store().defer_ddl_for_first_load().await.unwrap(), 0);
    assert_eq!(deferred(&pool).await, vec![]);
    assert_eq!(schema_objects(&pool).await, loaded);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_backfill_that_fails_part_way_restores_them_before_it_returns() {
    let app = app().await;
    let pool = app.store().pool().clone();
    let migrated = schema_objects(&pool).await;
    app.sim.inject(12, Fault::Status { code: 401, retry_after: None }, 1);
    app.syncer.run_once(Mode::Backfill).await.unwrap_err();
    assert!(app.count("sessions").await > 0, "the failure came part-way");
    assert_eq!(deferred(&pool).await, vec![]);
    assert_eq!(schema_objects(&pool).await, migrated);

    // The resumed backfill finishes into a warehouse that is no longer empty: with every index in place.
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    assert_eq!(schema_objects(&pool).await, migrated);
    app.assert_matches_truth().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_process_that_died_mid_load_deferred_is_restored_by_the_next_run() {
    let app = app().await;
    let pool = app.store().pool().clone();
    let migrated = schema_objects(&pool).await;
    // The process that deferred them died before its load ended (nothing else of it matters here).
    let n = app.store().defer_ddl_for_first_load().await.unwrap();
    assert!(n >= 19, "{n} objects deferred");
    assert_eq!(deferred(&pool).await.len(), n);
    assert_ne!(schema_objects(&pool).await, migrated);

    // Any run of a new process re-creates them first (here an incremental one, as a daemon's first tick).
    app.syncer.sync(None).await.unwrap();
    assert_eq!(deferred(&pool).await, vec![]);
    assert_eq!(schema_objects(&pool).await, migrated);
    app.assert_matches_truth().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_foreign_key_that_the_rows_violate_fails_loudly_and_stays_recorded_until_fixed() {
    let app = app().await;
    let pool = app.store().pool().clone();
    let migrated = schema_objects(&pool).await;
    app.store().defer_ddl_for_first_load().await.unwrap();
    sqlx::query("insert into session_tags (session_id, tag) values ('ghost', 'orphan')").execute(&pool).await.unwrap();

    let error = format!("{:#}", app.store().restore_deferred_ddl().await.unwrap_err());
    assert!(error.contains("session_tags_session_fkey") && error.contains("not there"), "{error}");
    assert_eq!(deferred(&pool).await, vec![("session_tags_session_fkey".to_owned(), "foreign_key".to_owned())]);
    let valid: bool =
        sqlx::query_scalar("select convalidated from pg_constraint where conname = 'session_tags_session_fkey'")
            .fetch_one(&pool)
            .await
            .unwrap();
    assert!(!valid, "added NOT VALID: it checks new rows already");
    let refused =
        sqlx::query("insert into session_tags (session_id, tag) values ('ghost2', 'orphan')").execute(&pool).await;
    assert!(refused.is_err(), "a new orphan is refused");

    sqlx::query("delete from session_tags where session_id = 'ghost'").execute(&pool).await.unwrap();
    assert_eq!(app.store().restore_deferred_ddl().await.unwrap(), 1);
    assert_eq!(deferred(&pool).await, vec![]);
    assert_eq!(schema_objects(&pool).await, migrated);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_runs_that_restore_at_once_each_object_is_re_created_once() {
    let app = app().await;
    let pool = app.store().pool().clone();
    let migrated = schema_objects(&pool).await;
    let n = app.store().defer_ddl_for_first_load().await.unwrap();
    // Two sources' backfills that end together.
    let (a, b) = tokio::join!(app.store().restore_deferred_ddl(), app.store().restore_deferred_ddl());
    assert_eq!(a.unwrap() + b.unwrap(), n, "each object re-created by one of them, and neither fails");
    assert_eq!(deferred(&pool).await, vec![]);
    assert_eq!(schema_objects(&pool).await, migrated);
}
