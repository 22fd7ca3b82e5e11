//! Core sync behaviour against the real PostgreSQL and the simulator over HTTP.

use crate::common;

use common::TestApp;
use devin_etl::sync::Mode;
use devin_sim::{Fault, SimulatorConfig, Switches};

const SETTLE: i64 = 30;

#[tokio::test]
async fn backfill_equals_simulator_truth_in_every_table() {
    let app = TestApp::spawn(300).await;
    let outcome = app.syncer.run_once(Mode::Backfill).await.unwrap();

    app.assert_matches_truth().await;
    assert_eq!(outcome.writes.sessions_written, 300);
    assert_eq!(app.watermark().await, Some(app.sim.now() - SETTLE), "watermark is server time minus settle");
    let (mode, status, sessions): (String, String, i64) =
        sqlx::query_as("select mode, status, sessions_upserted from sync_runs")
            .fetch_one(app.store().pool())
            .await
            .unwrap();
    assert_eq!((mode.as_str(), status.as_str(), sessions), ("backfill", "succeeded", 300));
}

#[tokio::test]
async fn incremental_run_after_updates_and_creates_equals_truth_and_drops_removed_pull_requests() {
    let app = TestApp::spawn(200).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();

    app.sim.advance(120);
    let with_prs = app.sim.sessions().into_iter().find(|s| s.pull_requests.len() >= 2).expect("a session with PRs");
    let removed_pr = with_prs.pull_requests[0].pr_url.clone();
    app.sim.modify(&with_prs.session_id, |s| {
        s.pull_requests.remove(0);
        s.analysis = None;
    });
    let updated = app.sim.update_some(15);
    let created = app.sim.create(7);
    app.sim.advance(5);
    let outcome = app.syncer.run_once(Mode::Incremental).await.unwrap();

    app.assert_matches_truth().await;
    assert!(outcome.writes.sessions_written as usize >= updated.len() + created.len());
    let gone: i64 =
        sqlx::query_scalar("select count(*) from session_pull_requests where pr_url = $1 and session_id = $2")
            .bind(&removed_pr)
            .bind(&with_prs.session_id)
            .fetch_one(app.store().pool())
            .await
            .unwrap();
    assert_eq!(gone, 0, "the removed pull request is gone");
    let issues: i64 = sqlx::query_scalar("select count(*) from session_issues where session_id = $1")
        .bind(&with_prs.session_id)
        .fetch_one(app.store().pool())
        .await
        .unwrap();
    assert_eq!(issues, 0, "analysis rows of a session whose analysis vanished are gone");
}

#[tokio::test]
async fn second_run_without_changes_writes_nothing_and_duplicates_nothing() {
    let app = TestApp::spawn(150).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    app.sim.advance(30);
    app.sim.update_some(10);
    app.sim.advance(30);
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    let synced_before: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("select session_id, synced_at from sessions order by session_id")
            .fetch_all(app.store().pool())
            .await
            .unwrap();
    let counts_before = app.store().table_counts().await.unwrap();

    app.sim.advance(30);
    let outcome = app.syncer.run_once(Mode::Incremental).await.unwrap();

    assert!(outcome.items >= 10, "the lookback re-reads the recent changes ({} read)", outcome.items);
    assert_eq!(outcome.writes.sessions_written, 0);
    assert_eq!(outcome.writes.total_rows(), 0);
    let synced_after: Vec<(String, chrono::DateTime<chrono::Utc>)> =
        sqlx::query_as("select session_id, synced_at from sessions order by session_id")
            .fetch_all(app.store().pool())
            .await
            .unwrap();
    assert_eq!(synced_before, synced_after, "no row was rewritten");
    let counts_after = app.store().table_counts().await.unwrap();
    let data =
        |c: &Vec<(&'static str, i64)>| c.iter().filter(|(t, _)| !t.starts_with("sync_")).copied().collect::<Vec<_>>();
    assert_eq!(data(&counts_before), data(&counts_after));
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn sessions_sharing_an_updated_at_second_across_pages_and_runs_are_all_loaded() {
    let app = TestApp::spawn_with(SimulatorConfig { sessions: 120, manual_clock: true, ..Default::default() }, |s| {
        s.api.page_size = 7;
    })
    .await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();

    // 40 sessions change within one second: they span several pages of 7.
    app.sim.advance(100);
    let ids: Vec<String> = app.sim.sessions().iter().take(60).map(|s| s.session_id.clone()).collect();
    for id in &ids[..40] {
        app.sim.modify(id, |s| s.title = Some(format!("first wave {}", s.session_id)));
    }
    let run = app.syncer.run_once(Mode::Incremental).await.unwrap();
    assert!(run.pages >= 6, "the changes spanned {} pages", run.pages);
    // More changes in that same second, after the run read it: the next run must still see them.
    for id in &ids[40..] {
        app.sim.modify(id, |s| s.title = Some(format!("second wave {}", s.session_id)));
    }
    app.syncer.run_once(Mode::Incremental).await.unwrap();

    app.assert_matches_truth().await;
    let second_wave: i64 = sqlx::query_scalar("select count(*) from sessions where title like 'second wave %'")
        .fetch_one(app.store().pool())
        .await
        .unwrap();
    assert_eq!(second_wave, 20);
}

#[tokio::test]
async fn an_older_copy_never_overwrites_a_newer_row() {
    let app = TestApp::spawn(60).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    app.sim.advance(60);
    let id = app.sim.sessions()[0].session_id.clone();
    app.sim.modify(&id, |s| s.title = Some("newest".into()));
    app.sim.advance(5);
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    let newest = app.sim.session(&id).unwrap();

    // The API now serves an older copy (as a lagging replica might).
    let mut stale = newest.clone();
    stale.title = Some("stale".into());
    stale.updated_at -= 1;
    stale.pull_requests.clear();
    app.sim.put(stale);
    app.syncer.run_once(Mode::Incremental).await.unwrap();

    let (title, prs): (Option<String>, i64) = sqlx::query_as(
        "select title, (select count(*) from session_pull_requests p where p.session_id = s.session_id)
         from sessions s where session_id = $1",
    )
    .bind(&id)
    .fetch_one(app.store().pool())
    .await
    .unwrap();
    assert_eq!(title.as_deref(), Some("newest"));
    assert_eq!(prs as usize, newest.pull_requests.len(), "child rows of the newer copy stay");
}

#[tokio::test]
async fn unknown_enum_values_and_unknown_fields_load_fine() {
    let app = TestApp::spawn(80).await;
    app.sim.set_switches(Switches { unknown_enum_values: true, extra_fields: true, ..Switches::default() });
    app.syncer.run_once(Mode::Backfill).await.unwrap();

    app.assert_matches_truth().await;
    let known = devin_etl::api::models::known::STATUS;
    let unknown_statuses: i64 = sqlx::query_scalar("select count(*) from sessions where not (status = any($1))")
        .bind(known)
        .fetch_one(app.store().pool())
        .await
        .unwrap();
    assert!(unknown_statuses > 0, "some statuses are values the spec does not list");
    let extra: i64 = sqlx::query_scalar("select count(*) from sessions where raw ? 'x_future_field'")
        .fetch_one(app.store().pool())
        .await
        .unwrap();
    assert_eq!(extra, 80, "unknown fields are kept in raw");
}

#[tokio::test]
async fn a_run_failing_on_page_k_keeps_the_watermark_and_the_next_run_is_exact() {
    let app = TestApp::spawn_with(SimulatorConfig { sessions: 150, manual_clock: true, ..Default::default() }, |s| {
        s.api.page_size = 10;
    })
    .await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let watermark = app.watermark().await;
    app.sim.advance(60);
    app.sim.update_some(60);
    app.sim.advance(60);
    app.sim.inject(3, Fault::Status { code: 400, retry_after: None }, 1);

    let error = app.syncer.run_once(Mode::Incremental).await.unwrap_err();

    let message = format!("{error:#}");
    assert!(message.contains("/v3/enterprise/sessions/insights?"), "names the request: {message}");
    assert!(message.contains("400"), "{message}");
    assert!(!message.contains(app.sim.token()), "never the token");
    assert_eq!(app.watermark().await, watermark, "the watermark stays");
    let (status, error_text): (String, Option<String>) =
        sqlx::query_as("select status, error from sync_runs order by run_id desc limit 1")
            .fetch_one(app.store().pool())
            .await
            .unwrap();
    assert_eq!(status, "failed");
    assert!(error_text.unwrap_or_default().contains("400"));

    app.syncer.run_once(Mode::Incremental).await.unwrap();
    app.assert_matches_truth().await;
    assert!(app.watermark().await > watermark);
}

async fn clock_skew_loses_nothing(offset: i64) {
    let local_now = chrono::Utc::now().timestamp();
    let app = TestApp::spawn_with(
        SimulatorConfig {
            sessions: 100,
            manual_clock: true,
            start_time: Some(local_now + offset),
            ..Default::default()
        },
        |_| {},
    )
    .await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    assert_eq!(app.watermark().await, Some(app.sim.now() - SETTLE), "the watermark follows the server's clock");
    for round in 0..3 {
        app.sim.advance(45);
        app.sim.update_some(5 + round);
        app.sim.create(2);
        app.syncer.run_once(Mode::Incremental).await.unwrap();
    }
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn a_local_clock_far_ahead_of_the_server_loses_nothing() {
    clock_skew_loses_nothing(-400 * 86_400).await;
}

#[tokio::test]
async fn a_local_clock_far_behind_the_server_loses_nothing() {
    clock_skew_loses_nothing(400 * 86_400).await;
}

#[tokio::test]
async fn a_wrong_token_fails_with_a_clear_error_that_does_not_leak_it() {
    let app = TestApp::spawn_with(SimulatorConfig { sessions: 10, manual_clock: true, ..Default::default() }, |s| {
        s.api.token = Some(secrecy::SecretString::from("cog_wrong_secret_123".to_owned()));
    })
    .await;
    let error = app.syncer.run_once(Mode::Incremental).await.unwrap_err();
    let message = format!("{error:#} {error:?}");
    assert!(message.contains("401"), "{message}");
    assert!(message.contains("DEVIN_API_TOKEN"), "says what to do: {message}");
    assert!(!message.contains("cog_wrong_secret_123"), "{message}");
    assert_eq!(app.count("sessions").await, 0);
    assert_eq!(app.watermark().await, None);
}

#[tokio::test]
async fn an_invalid_item_fails_the_page_and_commits_nothing_of_it() {
    let app = TestApp::spawn_with(SimulatorConfig { sessions: 30, manual_clock: true, ..Default::default() }, |s| {
        s.api.page_size = 200;
    })
    .await;
    // Request 0 is the first run's clock probe (one item, not loaded); the fault hits the walk's page.
    app.sim.inject(1, Fault::MalformedItem, 1);
    let error = app.syncer.run_once(Mode::Incremental).await.unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("session_id"), "names the missing field: {message}");
    assert_eq!(app.count("sessions").await, 0, "the page is not half-stored");
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn a_backfill_reports_its_progress_as_events_window_by_window() {
    use devin_etl::sync::Progress;
    use std::sync::{Arc, Mutex};

    let app = TestApp::spawn(300).await;
    let events = Arc::new(Mutex::new(Vec::new()));
    let sink = events.clone();
    let syncer = app.syncer.clone().with_progress(Arc::new(move |p: &Progress| sink.lock().unwrap().push(p.clone())));
    let outcome = syncer.run_once(Mode::Backfill).await.unwrap();
    app.assert_matches_truth().await;

    let events = events.lock().unwrap().clone();
    let Some(Progress::Started { windows_total, windows_done: 0 }) = events.first().cloned() else {
        panic!("starts with the plan: {events:?}")
    };
    assert!(windows_total >= 3, "several windows: {events:?}");
    assert_eq!(events.last(), Some(&Progress::Finished), "{events:?}");
    let done: Vec<_> = events[1..events.len() - 1]
        .iter()
        .map(|e| match e {
            Progress::WindowDone { windows_done, windows_total: total, sessions, sessions_total, .. } => {
                assert_eq!(*total, windows_total);
                (*windows_done, *sessions, *sessions_total)
            }
            other => panic!("only windows between start and finish: {other:?}"),
        })
        .collect();
    assert_eq!(done.iter().map(|d| d.0).collect::<Vec<_>>(), (1..=windows_total).collect::<Vec<_>>(), "counts up");
    let read: u64 = done.iter().map(|d| d.1).sum();
    assert_eq!(read, outcome.items, "every session read is reported once");
    assert_eq!(done.last().map(|d| d.2), Some(read), "the running total ends at the sum");
}
