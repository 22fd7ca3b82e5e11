//! Issue 4, items 3 and 4: late analysis (it arrives without bumping `updated_at`), reconcile and soft deletes.
//! Every test ends with a field-by-field comparison with the simulator's truth.

use crate::common;

use common::{TestApp, assert_warehouse_matches_where, expected_rows, last_run};
use devin_etl::api::models::{Analysis, SessionInsights, known};
use devin_etl::settings::Settings;
use devin_etl::sync::Mode;
use devin_sim::{Fault, SimulatorConfig};

const DAY: i64 = 86_400;

async fn app(sessions: usize, tweak: impl FnOnce(&mut Settings)) -> TestApp {
    TestApp::spawn_with(SimulatorConfig { sessions, manual_clock: true, ..SimulatorConfig::default() }, |s| {
        s.api.page_size = 10;
        tweak(s);
    })
    .await
}

/// A full analysis from the data set (with issues, action items and a timeline) to hand out late.
fn donor_analysis(app: &TestApp) -> Analysis {
    app.sim
        .sessions()
        .into_iter()
        .filter_map(|s| s.analysis)
        .find(|a| !a.issues.is_empty() && !a.action_items.is_empty() && !a.timeline.is_empty())
        .expect("a session with a full analysis")
}

/// `has_analysis` and `category` of a session in the warehouse.
async fn stored_analysis(app: &TestApp, id: &str) -> (bool, Option<String>) {
    sqlx::query_as("select has_analysis, category from sessions where session_id = $1")
        .bind(id)
        .fetch_one(app.store().pool())
        .await
        .unwrap()
}

async fn deleted_at(app: &TestApp, id: &str) -> Option<chrono::DateTime<chrono::Utc>> {
    sqlx::query_scalar("select deleted_at from sessions where session_id = $1")
        .bind(id)
        .fetch_one(app.store().pool())
        .await
        .unwrap()
}

/// Child rows the warehouse holds for `s`, per table, next to what the truth implies.
async fn child_rows(app: &TestApp, s: &SessionInsights) -> Vec<(&'static str, i64, usize)> {
    let expected = expected_rows(std::slice::from_ref(s));
    let mut out = Vec::new();
    for (table, rows) in expected.into_iter().filter(|(t, _)| *t != "sessions") {
        let n: i64 = sqlx::query_scalar(&format!("select count(*) from {table} where session_id = $1"))
            .bind(&s.session_id)
            .fetch_one(app.store().pool())
            .await
            .unwrap();
        out.push((table, n, rows.len()));
    }
    out
}

#[tokio::test]
async fn late_analysis_of_a_recent_session_is_loaded_by_the_enrichment_of_the_next_sync() {
    let app = app(80, |_| {}).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    app.sim.advance(60);
    let created = app.sim.create(3);
    for id in &created {
        app.sim.modify_keep_updated_at(id, |s| {
            s.analysis = None;
            s.category = None;
            s.subcategory = None;
        });
    }
    app.sim.advance(30);
    app.syncer.sync(None).await.unwrap();
    app.assert_matches_truth().await;

    // An hour later, after more syncs (the watermark moved far beyond the lookback), analysis and category
    // arrive without an updated_at bump.
    app.sim.advance(3_600);
    app.syncer.sync(None).await.unwrap();
    app.sim.advance(60);
    let before: Vec<i64> = created.iter().map(|id| app.sim.session(id).unwrap().updated_at).collect();
    let analysis = donor_analysis(&app);
    app.sim.modify_keep_updated_at(&created[0], |s| s.analysis = Some(analysis));
    app.sim.modify_keep_updated_at(&created[1], |s| {
        s.category = Some(known::CATEGORY[0].to_owned());
        s.subcategory = Some("late".to_owned());
    });
    let after: Vec<i64> = created.iter().map(|id| app.sim.session(id).unwrap().updated_at).collect();
    assert_eq!(before, after, "upstream did not bump updated_at");

    // An incremental walk alone cannot see it...
    let incremental = app.syncer.run_once(Mode::Incremental).await.unwrap();
    assert_eq!(incremental.writes.sessions_written, 0);
    assert_eq!(stored_analysis(&app, &created[0]).await, (false, None));

    // ...the enrichment of a sync does.
    app.sim.advance(60);
    let (incremental, enrichment) = app.syncer.sync(None).await.unwrap();
    assert_eq!(incremental.writes.sessions_written, 0);
    assert_eq!(enrichment.writes.sessions_written, 2, "both late arrivals loaded by enrichment");
    let (mode, status, _, requests, _) = last_run(app.store()).await;
    assert_eq!((mode.as_str(), status.as_str()), ("enrichment", "succeeded"));
    assert!(requests >= 1);
    let upserted: i64 =
        sqlx::query_scalar("select sessions_upserted from sync_runs where mode = 'enrichment' order by run_id desc")
            .fetch_one(app.store().pool())
            .await
            .unwrap();
    assert_eq!(upserted, 2, "recorded as its own mode in the run's stats");
    assert!(stored_analysis(&app, &created[0]).await.0);
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn late_analysis_of_an_old_session_is_loaded_only_by_reconcile() {
    let app = app(80, |_| {}).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let now = app.sim.now();
    let old = app
        .sim
        .sessions()
        .into_iter()
        .find(|s| s.analysis.is_none() && s.created_at < now - 30 * DAY)
        .expect("an old session without analysis");
    app.sim.advance(3_600);
    let analysis = donor_analysis(&app);
    app.sim.modify_keep_updated_at(&old.session_id, |s| {
        s.analysis = Some(analysis);
        s.category = Some(known::CATEGORY[1].to_owned());
    });

    // Outside sync.enrichment_window: a sync does not look at it.
    let (incremental, enrichment) = app.syncer.sync(None).await.unwrap();
    assert_eq!(incremental.writes.sessions_written + enrichment.writes.sessions_written, 0);
    assert!(!stored_analysis(&app, &old.session_id).await.0);
    let truth = app.sim.sessions();
    assert_warehouse_matches_where(app.store(), &truth, |id| id != old.session_id).await;

    let reconcile = app.syncer.run_once(Mode::Reconcile).await.unwrap();
    assert_eq!(reconcile.writes.sessions_written, 1, "only the changed session is rewritten");
    assert_eq!(reconcile.deleted, 0);
    assert_eq!(last_run(app.store()).await.0, "reconcile");
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn reconcile_marks_a_removed_session_deleted_and_clears_it_when_it_comes_back() {
    let app = app(90, |_| {}).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let truth = app.sim.sessions();
    let removed = truth.iter().find(|s| !s.pull_requests.is_empty() && s.analysis.is_some()).unwrap().clone();
    let also_removed = truth.iter().rev().find(|s| s.session_id != removed.session_id).unwrap().clone();
    app.sim.remove(&removed.session_id);
    app.sim.remove(&also_removed.session_id);
    app.sim.advance(60);

    // An incremental sync cannot notice a delete.
    app.syncer.sync(None).await.unwrap();
    assert_eq!(deleted_at(&app, &removed.session_id).await, None);

    let outcome = app.syncer.run_once(Mode::Reconcile).await.unwrap();
    assert_eq!(outcome.deleted, 2);
    assert!(deleted_at(&app, &removed.session_id).await.is_some());
    assert!(deleted_at(&app, &also_removed.session_id).await.is_some());
    assert_eq!(app.count("sessions").await, 90, "never a hard delete");
    for (table, stored, expected) in child_rows(&app, &removed).await {
        assert_eq!(stored as usize, expected, "{table}: the deleted session keeps its rows");
    }
    let gone = [removed.session_id.clone(), also_removed.session_id.clone()];
    assert_warehouse_matches_where(app.store(), &app.sim.sessions(), |id| !gone.iter().any(|g| g == id)).await;

    // Nothing more to mark; sync leaves deleted sessions alone.
    app.sim.advance(60);
    assert_eq!(app.syncer.run_once(Mode::Reconcile).await.unwrap().deleted, 0);
    app.syncer.sync(None).await.unwrap();
    assert!(deleted_at(&app, &removed.session_id).await.is_some());

    // One comes back as it was (only a reconcile sees it), the other with a change (an incremental sees it).
    app.sim.put(removed.clone());
    let mut changed = also_removed.clone();
    changed.title = Some("restored".to_owned());
    changed.updated_at = app.sim.now();
    app.sim.put(changed);
    app.sim.advance(60);
    app.syncer.sync(None).await.unwrap();
    assert!(deleted_at(&app, &removed.session_id).await.is_some());
    assert_eq!(deleted_at(&app, &also_removed.session_id).await, None, "an update brings it back");
    let outcome = app.syncer.run_once(Mode::Reconcile).await.unwrap();
    assert_eq!(outcome.deleted, 0);
    assert_eq!(deleted_at(&app, &removed.session_id).await, None, "reconcile brings it back");
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn a_reconcile_that_fails_part_way_marks_nothing_deleted() {
    let app = app(100, |s| s.sync.backfill_concurrency = 2).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let watermark = app.watermark().await;
    let removed: Vec<String> = app.sim.sessions().iter().step_by(30).map(|s| s.session_id.clone()).collect();
    for id in &removed {
        app.sim.remove(id);
    }
    app.sim.advance(60);
    app.sim.clear_requests();
    app.sim.inject(6, Fault::Status { code: 400, retry_after: None }, 1);

    let error = app.syncer.run_once(Mode::Reconcile).await.unwrap_err();
    assert!(format!("{error:#}").contains("HTTP 400"), "{error:#}");
    assert!(app.sim.requests().len() > 6, "it failed part way");
    let marked: i64 = sqlx::query_scalar("select count(*) from sessions where deleted_at is not null")
        .fetch_one(app.store().pool())
        .await
        .unwrap();
    assert_eq!(marked, 0, "an incomplete reconcile marks nothing");
    assert_eq!(app.count("sessions").await, 100);
    assert_eq!(app.watermark().await, watermark);
    let (mode, status, ..) = last_run(app.store()).await;
    assert_eq!((mode.as_str(), status.as_str()), ("reconcile", "failed"));

    let outcome = app.syncer.run_once(Mode::Reconcile).await.unwrap();
    assert_eq!(outcome.deleted as usize, removed.len());
    assert_eq!(app.count("sessions").await, 100, "never a hard delete");
    assert_warehouse_matches_where(app.store(), &app.sim.sessions(), |id| !removed.iter().any(|r| r == id)).await;
}

#[tokio::test]
async fn a_reconcile_that_would_delete_most_sessions_marks_none() {
    let app = app(60, |_| {}).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let all = app.sim.sessions();
    for s in &all[..40] {
        app.sim.remove(&s.session_id);
    }
    let error = app.syncer.run_once(Mode::Reconcile).await.unwrap_err();
    assert!(format!("{error:#}").contains("none are marked deleted"), "{error:#}");
    let marked: i64 = sqlx::query_scalar("select count(*) from sessions where deleted_at is not null")
        .fetch_one(app.store().pool())
        .await
        .unwrap();
    assert_eq!(marked, 0);

    // The sessions were only hidden upstream (a permission problem, say): once back, everything matches.
    for s in &all[..40] {
        app.sim.put(s.clone());
    }
    assert_eq!(app.syncer.run_once(Mode::Reconcile).await.unwrap().deleted, 0);
    app.assert_matches_truth().await;
}
