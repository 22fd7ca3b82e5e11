//! Issue 12, item 6: `history.retention`. Closed history rows that ended longer ago than the retention are
//! deleted (by `retention::prune`, and by the daemon at start); current rows and recently closed ones stay.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::child::{self, ChildLog, child_env};
use common::{TestApp, TestDb, test_settings};
use devin_etl::store::Store;

const DAY: i64 = 86_400;

/// Writes history rows ending (or, when current, starting) a known number of days ago: per session and PR, an old
/// closed row (ended 500 days ago), a recently closed one (ended 10 days ago) and the current one.
async fn seed_history(store: &Store) {
    sqlx::raw_sql(
        "insert into session_history (session_id, valid_from, valid_to, status, acus_consumed, has_analysis, is_archived)
         values ('s1', now() - interval '900 days', now() - interval '500 days', 'running', 1, false, false),
                ('s1', now() - interval '500 days', now() - interval '10 days', 'blocked', 2, false, false),
                ('s1', now() - interval '10 days', null, 'finished', 3, true, false),
                ('s2', now() - interval '1000 days', null, 'finished', 1, true, true),
                ('s3', now() - interval '800 days', now() - interval '401 days', 'running', 1, false, false),
                ('s3', now() - interval '401 days', now() - interval '399 days', 'finished', 1, false, false);
         insert into session_pull_request_history (session_id, pr_url, valid_from, valid_to, pr_state)
         values ('s1', 'https://github.com/o/r/pull/1', now() - interval '700 days', now() - interval '450 days', 'open'),
                ('s1', 'https://github.com/o/r/pull/1', now() - interval '450 days', null, 'merged'),
                ('s2', 'https://github.com/o/r/pull/2', now() - interval '600 days', now() - interval '5 days', 'open');",
    )
    .execute(store.pool())
    .await
    .unwrap();
}

/// History rows: (session, days since valid_from) of `session_history`, (session, state) of the PR history.
type HistoryRows = (BTreeSet<(String, i64)>, BTreeSet<(String, String)>);

/// The history rows left.
async fn remaining(store: &Store) -> HistoryRows {
    let sessions: Vec<(String, f64)> =
        sqlx::query_as("select session_id, extract(epoch from now() - valid_from)::float8 from session_history")
            .fetch_all(store.pool())
            .await
            .unwrap();
    let prs: Vec<(String, String)> = sqlx::query_as("select session_id, pr_state from session_pull_request_history")
        .fetch_all(store.pool())
        .await
        .unwrap();
    (sessions.into_iter().map(|(id, age)| (id, (age / DAY as f64).round() as i64)).collect(), prs.into_iter().collect())
}

/// The rows a 400-day retention keeps.
fn kept() -> HistoryRows {
    let sessions = [("s1", 500), ("s1", 10), ("s2", 1000), ("s3", 401)];
    let prs = [("s1", "merged"), ("s2", "open")];
    (
        sessions.into_iter().map(|(id, days)| (id.to_owned(), days)).collect(),
        prs.into_iter().map(|(id, state)| (id.to_owned(), state.to_owned())).collect(),
    )
}

#[tokio::test]
async fn prune_deletes_closed_rows_older_than_the_retention_and_keeps_current_and_recent_ones() {
    let db = TestDb::create().await;
    let store = devin_etl::app::migrated_store(&test_settings(&db.url, "http://127.0.0.1:9", "unused")).await.unwrap();
    seed_history(&store).await;
    let pruned = devin_etl::retention::prune(&store, Duration::from_secs(400 * DAY as u64)).await.unwrap();
    // s1's row that ended 500 days ago, s3's that ended 401 days ago, and the PR state that ended 450 days ago.
    assert_eq!(pruned, 3);
    assert_eq!(remaining(&store).await, kept());
    // Pruning again finds nothing more.
    assert_eq!(devin_etl::retention::prune(&store, Duration::from_secs(400 * DAY as u64)).await.unwrap(), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_daemon_prunes_with_history_retention_set_and_keeps_everything_without() {
    let app = TestApp::spawn(10).await;
    seed_history(app.store()).await;
    let quiet = [
        ("DEVIN_ETL__SYNC__SCHEDULE", "0 0 0 1 1 * 2099".to_owned()),
        ("DEVIN_ETL__SYNC__RECONCILE_SCHEDULE", "0 0 0 1 1 * 2099".to_owned()),
    ];

    // Default (forever): the daemon deletes nothing.
    let log = ChildLog::new(&format!("{}-forever", app.db.name));
    let mut daemon = log.spawn(child::devin_etl(&["run"], child_env(&app)).envs(quiet.clone()));
    log.wait_for("serving /healthz", Duration::from_secs(30)).await;
    child::signal(&daemon, "TERM");
    assert!(daemon.wait().await.unwrap().success(), "{}", log.tail());
    assert!(!log.text().contains("history pruned"), "{}", log.tail());
    let all: i64 = sqlx::query_scalar(
        "select (select count(*) from session_history) + (select count(*) from session_pull_request_history)",
    )
    .fetch_one(app.store().pool())
    .await
    .unwrap();
    assert_eq!(all, 9);

    let log = ChildLog::new(&format!("{}-retention", app.db.name));
    let mut command = child::devin_etl(&["run"], child_env(&app));
    command.envs(quiet).env("DEVIN_ETL__HISTORY__RETENTION", "400d");
    let mut daemon = log.spawn(&mut command);
    log.wait_for("history pruned: 3 closed rows", Duration::from_secs(30)).await;
    child::signal(&daemon, "TERM");
    assert!(daemon.wait().await.unwrap().success(), "{}", log.tail());
    assert_eq!(remaining(app.store()).await, kept());
}
