//! Issue 11, item 6: paths no test walked before — `sync --since`, the COPY → merge fallback on a unique
//! violation, retry and give-up on serialization failures, `status` and `status --json`, token-file errors,
//! repeated values inside one item, a reconcile tick and a failed tick inside `run`.

use crate::common;

use std::time::Duration;

use common::child::{self, child_env};
use common::logs::Logs;
use common::{DEFAULT_SOURCE, TestApp};
use devin_etl::schedule::run_daemon;
use devin_etl::settings::parse_schedule;
use devin_etl::sync::Mode;
use devin_sim::{Fault, SimulatorConfig};
use serde_json::Value;
use tokio::sync::watch;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sync_since_rereads_everything_updated_after_the_given_time() {
    let app = TestApp::spawn(60).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    app.sim.advance(600);
    // A day before the watermark (minus lookback): `--since` asks for more than the watermark would.
    let since = app.watermark().await.unwrap() - app.settings.sync.lookback.as_secs() as i64 - 86_400;
    let since_text = chrono::DateTime::from_timestamp(since, 0).unwrap().to_rfc3339();
    let before = app.sim.requests().len();
    let out = child::devin_etl(&["sync", "--since", &since_text], child_env(&app)).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let asked = common::updated_after_since(&app.sim, before);
    assert!(!asked.is_empty() && asked.iter().all(|&t| t == since), "asked from --since: {asked:?} (since {since})");

    // Unix seconds work too; anything else is refused naming both forms.
    let before = app.sim.requests().len();
    let out = child::devin_etl(&["sync", "--since", &since.to_string()], child_env(&app)).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    assert!(common::updated_after_since(&app.sim, before).iter().all(|&t| t == since));
    let out = child::devin_etl(&["sync", "--since", "last tuesday"], child_env(&app)).output().await.unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(stderr.contains("neither RFC 3339") && stderr.contains("Unix seconds"), "{stderr}");
    app.assert_matches_truth().await;
}

/// A session the COPY path is about to insert appears meanwhile (another writer's transaction): the COPY fails
/// with a unique violation once that transaction commits, and the batch is written again through the merge.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_unique_violation_on_the_copy_path_falls_back_to_the_merge() {
    let app = TestApp::spawn_with(SimulatorConfig { sessions: 40, manual_clock: true, ..Default::default() }, |s| {
        s.sync.backfill_concurrency = 1;
    })
    .await;
    let victim = app.sim.sessions()[0].session_id.clone();
    let mut other = app.store().pool().begin().await.unwrap();
    sqlx::query(
        "insert into sessions (session_id, org_id, url, status, session_size, acus_consumed, num_user_messages,
                               num_devin_messages, is_archived, has_analysis, tags, created_at, updated_at, raw)
         values ($1, 'org', 'https://x', 'running', 's', 0, 0, 0, false, false, '{}', to_timestamp(0),
                 to_timestamp(0), '{}')",
    )
    .bind(&victim)
    .execute(&mut *other)
    .await
    .unwrap();
    let syncer = app.syncer.clone();
    let backfill = tokio::spawn(async move { syncer.run_once(Mode::Backfill).await });
    // The COPY waits for the other transaction's uncommitted row.
    common::eventually("the COPY waits on the other writer", Duration::from_secs(30), async || {
        sqlx::query_scalar::<_, bool>(
            "select exists (select 1 from pg_stat_activity where datname = current_database()
                            and wait_event_type = 'Lock' and query ilike 'copy sessions%')",
        )
        .fetch_one(app.store().pool())
        .await
        .unwrap()
    })
    .await;
    other.commit().await.unwrap();
    let outcome = backfill.await.unwrap().expect("the backfill succeeds through the merge");
    assert_eq!(outcome.writes.sessions_written, 40, "the older copy was overwritten, every session written");
    app.assert_matches_truth().await;
}

/// Installs a trigger on `sessions` that fails the first `failures` statements with a serialization failure
/// (SQLSTATE 40001); the sequence counts statements across rolled-back transactions.
async fn fail_writes_with_serialization_failures(app: &TestApp, failures: i64) {
    sqlx::raw_sql(&format!(
        "create sequence write_attempts;
         create function fail_serialization() returns trigger language plpgsql as $$
         begin
           if nextval('write_attempts') <= {failures} then
             raise exception 'injected serialization failure' using errcode = '40001';
           end if;
           return null;
         end $$;
         create trigger fail_serialization before insert on sessions
           for each statement execute function fail_serialization();"
    ))
    .execute(app.store().pool())
    .await
    .unwrap();
}

async fn write_attempts(app: &TestApp) -> i64 {
    sqlx::query_scalar("select last_value from write_attempts").fetch_one(app.store().pool()).await.unwrap()
}

/// One window at a time, so the attempts are counted in order.
async fn one_window_at_a_time(sessions: usize) -> TestApp {
    TestApp::spawn_with(SimulatorConfig { sessions, manual_clock: true, ..Default::default() }, |s| {
        s.sync.backfill_concurrency = 1;
    })
    .await
}

#[tokio::test]
async fn a_serialization_failure_is_retried_and_the_batch_commits() {
    let app = one_window_at_a_time(30).await;
    fail_writes_with_serialization_failures(&app, 2).await;
    let (logs, guard) = Logs::capture();
    app.syncer.run_once(Mode::Backfill).await.expect("retried past two failures");
    drop(guard);
    let retries = logs.text().matches("transaction conflict; retrying the batch").count();
    assert_eq!(retries, 2, "each retry is logged: {}", logs.text());
    assert!(write_attempts(&app).await >= 3, "two failed attempts, then the write (and the other windows')");
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn serialization_failures_that_persist_fail_the_run_after_four_attempts() {
    let app = one_window_at_a_time(30).await;
    fail_writes_with_serialization_failures(&app, 1_000).await;
    let error = app.syncer.run_once(Mode::Backfill).await.expect_err("gives up");
    assert!(format!("{error:#}").contains("injected serialization failure"), "{error:#}");
    assert_eq!(write_attempts(&app).await, 4, "one batch, four attempts in all (store::error's retry contract)");
    assert_eq!(common::session_count(app.store()).await, 0);
    assert_eq!(app.watermark().await, None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn status_and_status_json_show_the_watermark_the_backfill_the_runs_and_the_rows() {
    let app = TestApp::spawn(50).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let watermark = app.watermark().await.unwrap();

    let out = child::devin_etl(&["status"], child_env(&app)).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let text = String::from_utf8_lossy(&out.stdout);
    let watermark_time = chrono::DateTime::from_timestamp(watermark, 0).unwrap().to_rfc3339();
    for expected in [
        &format!("source:    {DEFAULT_SOURCE}"),
        &format!("watermark: {watermark_time}"),
        "backfill:  completed",
        "sessions:  50 live, 0 marked deleted",
        "backfill    succeeded",
    ] {
        assert!(text.contains(expected), "status shows {expected:?}:\n{text}");
    }
    assert!(text.lines().any(|l| l.split_whitespace().collect::<Vec<_>>() == ["sessions", "50"]), "{text}");

    let out = child::devin_etl(&["status", "--json"], child_env(&app)).output().await.unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let json: Value = serde_json::from_slice(&out.stdout).expect("status --json prints one JSON document");
    assert_eq!(json["source"], DEFAULT_SOURCE);
    assert_eq!(json["watermark"], watermark);
    assert_eq!(json["backfill"], "completed");
    assert_eq!(json["live_sessions"], 50);
    assert_eq!(json["runs"][0]["mode"], "backfill");
    assert_eq!(json["runs"][0]["status"], "succeeded");
    let sessions = json["tables"].as_array().unwrap().iter().find(|t| t["table"] == "sessions").unwrap();
    assert_eq!(sessions["rows"], 50);
}

#[tokio::test]
async fn a_token_file_that_is_missing_or_empty_fails_at_start_naming_the_key() {
    let dir = std::env::temp_dir().join(common::unique_name("devin-etl-token"));
    std::fs::create_dir_all(&dir).unwrap();
    let empty = dir.join("empty");
    std::fs::write(&empty, "").unwrap();
    let missing = dir.join("missing");
    for (path, problem) in [(&missing, "cannot read"), (&empty, "is empty")] {
        let env = [("DEVIN_ETL__API__TOKEN_FILE", path.display().to_string())];
        let out = child::devin_etl(&["migrate"], env).output().await.unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "{stderr}");
        assert!(stderr.contains("api.token_file") && stderr.contains(problem), "{problem}: {stderr}");
    }
    std::fs::remove_dir_all(&dir).ok();
}

#[tokio::test]
async fn repeated_pr_urls_tags_and_child_ids_inside_one_item_are_stored_once() {
    let app = TestApp::spawn(20).await;
    let id = app.sim.sessions()[0].session_id.clone();
    let child_id = app.sim.sessions()[1].session_id.clone();
    app.sim.modify(&id, |s| {
        let pr = devin_api_model::PullRequest {
            pr_url: "https://github.com/acme/app/pull/7".into(),
            pr_state: Some("open".into()),
        };
        let again = devin_api_model::PullRequest { pr_state: Some("merged".into()), ..pr.clone() };
        s.pull_requests = vec![pr, again];
        s.tags = vec!["x".into(), "y".into(), "x".into()];
        s.child_session_ids = Some(vec![child_id.clone(), child_id.clone()]);
    });
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let pool = app.store().pool();
    let prs: Vec<(String, Option<String>)> =
        sqlx::query_as("select pr_url, pr_state from session_pull_requests where session_id = $1")
            .bind(&id)
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(prs, [("https://github.com/acme/app/pull/7".to_owned(), Some("open".to_owned()))], "the first wins");
    let tags: Vec<String> = sqlx::query_scalar("select tag from session_tags where session_id = $1 order by tag")
        .bind(&id)
        .fetch_all(pool)
        .await
        .unwrap();
    assert_eq!(tags, ["x", "y"]);
    let children: Vec<String> =
        sqlx::query_scalar("select child_session_id from session_children where session_id = $1")
            .bind(&id)
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(children, [child_id]);
}

/// An app whose daemon runs `sync.schedule` = `sync` and `sync.reconcile_schedule` = `reconcile`.
async fn app_with_schedules(sync: &str, reconcile: &str) -> TestApp {
    TestApp::spawn_with(SimulatorConfig { sessions: 40, manual_clock: true, ..Default::default() }, |s| {
        s.sync.schedule = parse_schedule("sync.schedule", sync).unwrap();
        s.sync.reconcile_schedule = parse_schedule("sync.reconcile_schedule", reconcile).unwrap();
    })
    .await
}

/// Runs the daemon (`run` without `--backfill`) until the query `until` (one boolean) is true, then stops it.
async fn run_daemon_until(app: &TestApp, what: &str, until: &str, bind: &str) {
    let (stop, stopped) = watch::channel(false);
    let daemon = tokio::spawn(run_daemon(app.syncer.clone().with_shutdown(stopped.clone()), false, stopped));
    let pool = app.store().pool().clone();
    common::eventually(what, Duration::from_secs(20), async || {
        sqlx::query_scalar::<_, bool>(until).bind(bind).fetch_one(&pool).await.unwrap()
    })
    .await;
    stop.send(true).unwrap();
    daemon.await.unwrap().unwrap();
}

/// `run` with a reconcile every second: a session removed upstream is marked deleted by a scheduled reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reconcile_tick_inside_run_marks_a_removed_session_deleted() {
    let app = app_with_schedules("0 0 0 1 1 * 2099", "* * * * * *").await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let gone = app.sim.sessions()[3].session_id.clone();
    assert!(app.sim.remove(&gone));
    let until = "select deleted_at is not null from sessions where session_id = $1";
    run_daemon_until(&app, "a scheduled reconcile marks the session deleted", until, &gone).await;
    let reconciles: i64 =
        sqlx::query_scalar("select count(*) from sync_runs where mode = 'reconcile' and status = 'succeeded'")
            .fetch_one(app.store().pool())
            .await
            .unwrap();
    assert!(reconciles >= 1);
    common::assert_warehouse_matches_where(app.store(), &app.sim.sessions(), |id| id != gone).await;
}

/// `run` with a sync every second: the first tick fails (the API refuses the token once), the next one succeeds.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_tick_is_retried_on_the_next_tick() {
    let app = app_with_schedules("* * * * * *", "0 0 0 1 1 * 2099").await;
    app.sim.inject(0, Fault::Status { code: 401, retry_after: None }, 1);
    let until = "select exists (select 1 from sync_runs where mode = $1 and status = 'succeeded')";
    run_daemon_until(&app, "a tick succeeds after the failed one", until, "incremental").await;
    let first: (String, String, Option<String>) =
        sqlx::query_as("select mode, status, error from sync_runs order by run_id limit 1")
            .fetch_one(app.store().pool())
            .await
            .unwrap();
    assert_eq!((first.0.as_str(), first.1.as_str()), ("incremental", "failed"), "{first:?}");
    assert!(first.2.unwrap_or_default().contains("401"));
    app.assert_matches_truth().await;
}
