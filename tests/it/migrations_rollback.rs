//! Issue 9, item 5: rollback-safe migrations. A newer release migrates the schema further (here: a migration this
//! binary does not embed is really applied and recorded in `_sqlx_migrations` as sqlx records it); this binary —
//! what `rollout undo` brings back — must still migrate, sync exactly and stay ready, and log the versions it does
//! not know. Without `ignore_missing`, sqlx refuses such a database (the crash loop this fixes).

use crate::common;

use std::time::Duration;

use common::logs::Logs;
use common::{TestApp, assert_warehouse_matches, build_syncer};
use devin_etl::http::{HttpState, serve};
use devin_etl::store::MIGRATOR;
use devin_etl::sync::Mode;
use devin_etl::telemetry::install_metrics;
use sqlx::migrate::{MigrateError, Migrator};

/// A version far after every embedded one: what a later release would ship.
const NEWER_VERSION: i64 = 29_990_101_000_000;

/// The newer release's migration: additive only, as the README's policy requires — a new table, and new nullable
/// or defaulted columns on tables this release writes.
const NEWER_SQL: &str = "create table session_future_scores (session_id text primary key, score float8 not null);
alter table sessions add column future_score float8;
alter table sync_runs add column future_note text not null default 'written by a newer release'";

/// The embedded migrations as `sqlx::migrate!` builds them: `ignore_missing` false, what this binary used before.
static STRICT: Migrator = sqlx::migrate!("./migrations");

#[tokio::test]
async fn an_older_binary_migrates_syncs_and_stays_ready_on_a_schema_a_newer_release_migrated() {
    // This release migrates a fresh database and loads the history.
    let app = TestApp::spawn(120).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let pool = app.store().pool().clone();

    // A newer release applies a migration this binary does not know, the way sqlx does: its SQL, then its row
    // (checksum: SHA-384 of the SQL; execution time in nanoseconds).
    let mut tx = pool.begin().await.unwrap();
    sqlx::raw_sql(NEWER_SQL).execute(&mut *tx).await.unwrap();
    sqlx::query(
        "insert into _sqlx_migrations (version, description, success, checksum, execution_time)
         values ($1, 'future scores', true, sha384(convert_to($2, 'UTF8')), 1234567)",
    )
    .bind(NEWER_VERSION)
    .bind(NEWER_SQL)
    .execute(&mut *tx)
    .await
    .unwrap();
    tx.commit().await.unwrap();

    // Before the fix: the plain `sqlx::migrate!` migrator refuses this database, so every start failed.
    assert_eq!(STRICT.iter().count(), MIGRATOR.iter().count(), "the same embedded migrations");
    assert!(!STRICT.ignore_missing && MIGRATOR.ignore_missing);
    // (On its own connection, closed afterwards: sqlx returns that error still holding its migration lock.)
    let mut conn = pool.acquire().await.unwrap().detach();
    let strict = STRICT.run(&mut conn).await;
    assert!(matches!(strict, Err(MigrateError::VersionMissing(NEWER_VERSION))), "{strict:?}");
    sqlx::Connection::close(conn).await.unwrap();

    // The rolled-back binary starts: it migrates (nothing to do), and says which versions it does not know.
    let (logs, guard) = Logs::capture();
    app.store().migrate().await.expect("migrating a schema a newer release migrated further succeeds");
    let syncer = build_syncer(app.settings.clone()).await; // a fresh start: connect, migrate, build
    drop(guard);
    let logged = logs.text();
    assert!(logged.contains("does not know") && logged.contains(&NEWER_VERSION.to_string()), "{logged}");
    assert!(logged.contains("WARN"), "logged at warn level: {logged}");

    let status = app.store().migration_status().await.unwrap();
    assert_eq!(status.unknown, vec![NEWER_VERSION]);
    assert!(status.pending.is_empty() && status.failed.is_empty() && status.changed.is_empty(), "{status}");
    assert!(status.is_current(), "unknown newer versions are not an error: {status}");

    // It syncs exactly: changes and new sessions arrive, into tables that gained columns it does not know.
    app.sim.advance(60);
    app.sim.update_some(10);
    app.sim.create(5);
    app.sim.advance(60);
    syncer.sync(None).await.unwrap();
    syncer.run_once(Mode::Reconcile).await.unwrap();
    let (runs, notes): (i64, i64) = sqlx::query_as(
        "select count(*), count(*) filter (where future_note = 'written by a newer release') from sync_runs",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(runs >= 4 && notes == runs, "runs recorded with the newer column's default: {notes} of {runs}");
    let future: i64 = sqlx::query_scalar("select count(future_score) from sessions").fetch_one(&pool).await.unwrap();
    assert_eq!(future, 0, "a column this binary does not know is left alone");
    // The truth comparison knows this release's columns only; the newer one was checked just above.
    sqlx::raw_sql("alter table sessions drop column future_score").execute(&pool).await.unwrap();
    assert_warehouse_matches(syncer.store(), &app.sim.sessions()).await;

    // /readyz: ready on the newer schema (its migration check ignores versions it does not know).
    let state = HttpState {
        store: syncer.store().clone(),
        source: app.settings.sync.source.clone(),
        max_staleness: Duration::from_secs(3600),
        max_run_duration: app.settings.server.max_run_duration,
        metrics: install_metrics().unwrap(),
        page: Default::default(),
    };
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}/readyz", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let server = tokio::spawn(serve(listener, state, async move {
        let _ = stopped.await;
    }));
    let response = reqwest::get(&url).await.unwrap();
    let code = response.status().as_u16();
    let body = response.text().await.unwrap();
    assert_eq!(code, 200, "{body}");
    assert!(body.starts_with("ready: "), "{body}");
    let _ = stop.send(());
    server.await.unwrap().unwrap();
}
