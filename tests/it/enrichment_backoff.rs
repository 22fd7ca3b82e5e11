//! Issue 14, item 3: enrichment backs off per session. A session still lacking analysis or category is re-fetched
//! on every tick while young (`sync.enrichment_backoff_after`, default 2 h), then with a doubling wait (30 min,
//! 1 h, ... up to `sync.enrichment_max_interval`, default 12 h). Ticks here are 15 minutes of the simulator's
//! manual clock, each one sync (incremental + enrichment), with the default settings; every test ends with a
//! field-by-field comparison with the simulator's truth.

use crate::common;

use common::TestApp;
use devin_etl::api::models::{Analysis, known};
use devin_etl::sync::{Mode, RunOutcome};
use devin_sim::{Fault, SimulatorConfig};

/// The default schedule: every 15 minutes.
const TICK: i64 = 900;

/// A backfilled warehouse in which no session waits for enrichment (those of the window that lacked analysis or
/// category got them upstream and one sync loaded them): the sessions a test creates are the only ones waiting.
async fn quiet_app() -> TestApp {
    let app =
        TestApp::spawn_with(SimulatorConfig { sessions: 40, manual_clock: true, ..SimulatorConfig::default() }, |_| {})
            .await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let window_start = app.sim.now() - app.settings.sync.enrichment_window.as_secs() as i64;
    let analysis = donor_analysis(&app);
    for s in app.sim.sessions().into_iter().filter(|s| s.created_at >= window_start) {
        app.sim.modify_keep_updated_at(&s.session_id, |s| {
            s.analysis = s.analysis.take().or_else(|| Some(analysis.clone()));
            s.category = s.category.take().or_else(|| Some(known::CATEGORY[0].to_owned()));
        });
    }
    app.sim.advance(60);
    app.syncer.sync(None).await.unwrap();
    let waiting = app.store().sessions_pending_enrichment(app.syncer.source(), window_start).await.unwrap();
    assert!(waiting.is_empty(), "nothing waits: {waiting:?}");
    app
}

/// A full analysis from the data set to hand out late.
fn donor_analysis(app: &TestApp) -> Analysis {
    app.sim.sessions().into_iter().filter_map(|s| s.analysis).find(|a| !a.issues.is_empty()).expect("an analysis")
}

/// A new session upstream whose analysis and category have not arrived (they arrive only when a test says so).
fn create_waiting(app: &TestApp) -> String {
    let id = app.sim.create(1).remove(0);
    app.sim.modify_keep_updated_at(&id, |s| {
        s.analysis = None;
        s.category = None;
        s.subcategory = None;
    });
    id
}

/// One tick: the clock moves 15 minutes, then a sync. Returns the enrichment run and the enrichment requests it
/// made (requests by `session_ids`).
async fn tick(app: &TestApp) -> (RunOutcome, Vec<String>) {
    app.sim.clear_requests();
    app.sim.advance(TICK);
    let (_, enrichment) = app.syncer.sync(None).await.unwrap();
    let requests = app.sim.requests().into_iter().map(|r| r.path_and_query).filter(|p| p.contains("session_ids="));
    (enrichment, requests.collect())
}

/// Runs ticks `from..=to` (numbered from the session's creation) and returns those whose enrichment asked for `id`.
async fn ticks_fetching(app: &TestApp, id: &str, from: u32, to: u32) -> Vec<u32> {
    let mut fetched = Vec::new();
    for n in from..=to {
        let (_, requests) = tick(app).await;
        if requests.iter().any(|r| r.contains(id)) {
            fetched.push(n);
        }
    }
    fetched
}

async fn stored(app: &TestApp, id: &str) -> (bool, Option<String>) {
    sqlx::query_as("select has_analysis, category from sessions where session_id = $1")
        .bind(id)
        .fetch_one(app.store().pool())
        .await
        .unwrap()
}

/// `(attempts, next_due_at as Unix seconds)` of a session's backoff, if it has one.
async fn backoff(app: &TestApp, id: &str) -> Option<(i32, i64)> {
    sqlx::query_as(
        "select attempts, extract(epoch from next_due_at)::bigint from sync_enrichment_backoff where session_id = $1",
    )
    .bind(id)
    .fetch_optional(app.store().pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn late_data_of_a_young_session_is_picked_up_by_the_very_next_tick() {
    let app = quiet_app().await;
    let id = create_waiting(&app);
    assert_eq!(ticks_fetching(&app, &id, 1, 3).await, [1, 2, 3], "re-fetched on every tick while young");

    // Analysis arrives within the fourth quarter hour, category within the eighth: each is loaded by the next tick.
    let analysis = donor_analysis(&app);
    app.sim.modify_keep_updated_at(&id, |s| s.analysis = Some(analysis));
    let (enrichment, requests) = tick(&app).await;
    assert_eq!((enrichment.writes.sessions_written, requests.len()), (1, 1));
    assert_eq!(stored(&app, &id).await, (true, None));
    assert_eq!(ticks_fetching(&app, &id, 5, 7).await, [5, 6, 7], "still lacks its category");
    app.sim.modify_keep_updated_at(&id, |s| s.category = Some(known::CATEGORY[2].to_owned()));
    let (enrichment, _) = tick(&app).await;
    assert_eq!(enrichment.writes.sessions_written, 1);
    assert_eq!(stored(&app, &id).await, (true, Some(known::CATEGORY[2].to_owned())));

    // Complete: no longer re-fetched, and it never needed a backoff.
    assert_eq!(ticks_fetching(&app, &id, 9, 12).await, Vec::<u32>::new());
    assert_eq!(backoff(&app, &id).await, None);
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn a_session_whose_category_never_arrives_is_fetched_less_and_less_often() {
    let app = quiet_app().await;
    let id = create_waiting(&app);
    let created_at = app.sim.now();

    // Two days of ticks: every tick for the first 2 h (ticks 1-8), then after 30 min, 1 h, 2 h, 4 h, 8 h and
    // 12 h (the cap) from then on.
    let mut fetched = Vec::new();
    let mut requests = 0;
    for n in 1..=192 {
        let (_, made) = tick(&app).await;
        requests += made.len();
        if made.iter().any(|r| r.contains(&id)) {
            fetched.push(n);
        }
    }
    let expected: Vec<u32> = (1..=8).chain([9, 11, 15, 23, 39, 71, 119, 167]).collect();
    assert_eq!(fetched, expected);
    assert_eq!(requests, expected.len(), "the session's fetches are the only enrichment requests");
    assert!(192 >= 10 * requests, "{requests} enrichment requests in 192 ticks instead of 192");

    // Attempts count the fetches after the young period; the next is 12 h after tick 167 (server time, as the
    // watermark: the tick's time minus sync.settle).
    let settle = app.settings.sync.settle.as_secs() as i64;
    assert_eq!(backoff(&app, &id).await, Some((8, created_at + 167 * TICK - settle + 12 * 3_600)));
    assert_eq!(stored(&app, &id).await, (false, None));
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn late_analysis_of_a_backed_off_session_is_picked_up_by_its_next_due_fetch_and_by_reconcile() {
    let app = quiet_app().await;
    let by_enrichment = create_waiting(&app);
    let by_reconcile = create_waiting(&app);
    assert_eq!(ticks_fetching(&app, &by_enrichment, 1, 40).await, [1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 15, 23, 39]);

    // Ten hours after creation, analysis and category arrive for the second: reconcile (its own schedule) loads
    // it at once, and it then waits for nothing. Then analysis arrives for the first (its category never does).
    let analysis = donor_analysis(&app);
    app.sim.modify_keep_updated_at(&by_reconcile, |s| {
        s.analysis = Some(analysis.clone());
        s.category = Some(known::CATEGORY[1].to_owned());
    });
    assert_eq!(ticks_fetching(&app, &by_enrichment, 41, 44).await, Vec::<u32>::new());
    let reconcile = app.syncer.run_once(Mode::Reconcile).await.unwrap();
    assert_eq!(reconcile.writes.sessions_written, 1);
    assert_eq!(stored(&app, &by_reconcile).await, (true, Some(known::CATEGORY[1].to_owned())));
    app.sim.modify_keep_updated_at(&by_enrichment, |s| s.analysis = Some(analysis));

    // The first is picked up by its next due fetch, at tick 71 (not before); it still lacks its category, so it
    // stays backed off. The second is no longer fetched, and its backoff is forgotten.
    let mut fetched = Vec::new();
    for n in 45..=120 {
        let (enrichment, requests) = tick(&app).await;
        assert!(!requests.iter().any(|r| r.contains(&by_reconcile)), "tick {n} fetched a complete session");
        if requests.iter().any(|r| r.contains(&by_enrichment)) {
            fetched.push(n);
            assert_eq!(enrichment.writes.sessions_written, u64::from(n == 71));
        }
        assert_eq!(stored(&app, &by_enrichment).await.0, n >= 71, "tick {n}");
    }
    assert_eq!(fetched, [71, 119]);
    assert_eq!(backoff(&app, &by_enrichment).await.map(|b| b.0), Some(7));
    assert_eq!(backoff(&app, &by_reconcile).await, None);
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn a_failed_enrichment_fetch_leaves_the_backoff_as_it_was() {
    let app = quiet_app().await;
    let id = create_waiting(&app);
    assert_eq!(ticks_fetching(&app, &id, 1, 10).await, [1, 2, 3, 4, 5, 6, 7, 8, 9]);
    let after_9 = backoff(&app, &id).await;
    assert_eq!(after_9.map(|b| b.0), Some(1));

    // Tick 11: the incremental walk succeeds, the enrichment request fails for good.
    app.sim.advance(TICK);
    app.sim.inject(1, Fault::Status { code: 400, retry_after: None }, 1);
    let error = app.syncer.sync(None).await.unwrap_err();
    assert!(format!("{error:#}").contains("HTTP 400"), "{error:#}");
    assert_eq!(backoff(&app, &id).await, after_9, "nothing of the failed batch committed");

    // So tick 12 fetches it (it was due), and its backoff moves on from there.
    assert_eq!(ticks_fetching(&app, &id, 12, 16).await, [12, 16]);
    assert_eq!(backoff(&app, &id).await.map(|b| b.0), Some(3));
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn without_backoff_every_waiting_session_is_fetched_on_every_tick() {
    let app =
        TestApp::spawn_with(SimulatorConfig { sessions: 40, manual_clock: true, ..SimulatorConfig::default() }, |s| {
            s.sync.enrichment_backoff_after = None;
        })
        .await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let id = create_waiting(&app);
    assert_eq!(ticks_fetching(&app, &id, 1, 20).await, (1..=20).collect::<Vec<u32>>());
    assert_eq!(app.count("sync_enrichment_backoff").await, 0);
    app.assert_matches_truth().await;
}
