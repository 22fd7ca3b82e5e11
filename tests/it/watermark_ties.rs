//! Issue 11, item 2: changes at exactly the watermark's second. With `sync.settle = 0` the watermark is the API
//! server's time of the last complete walk, so a session that changes later in that same second has `updated_at`
//! equal to the watermark. Whether the API's `updated_after` is exclusive (`>`) or inclusive (`>=`) is not
//! documented; under `>` only the lookback (`sync.lookback`, at least 1 s when settle is 0) makes the next run read
//! that second again. The changes span a page boundary, and a control run without the guard shows the loss.

use crate::common;

use std::time::Duration;

use common::TestApp;
use devin_etl::sync::Mode;
use devin_sim::{SimulatorConfig, Switches};

const PAGE_SIZE: u32 = 5;
/// More changes in the watermark's second than fit one page.
const CHANGED: usize = 7;

async fn app(inclusive: bool, lookback: Duration) -> TestApp {
    let app = TestApp::spawn_with(SimulatorConfig { sessions: 30, manual_clock: true, ..Default::default() }, |s| {
        s.sync.settle = Duration::ZERO;
        // Assigned after validation: the control run sets 0, which the settings refuse with settle 0.
        s.sync.lookback = lookback;
        s.api.page_size = PAGE_SIZE;
    })
    .await;
    app.sim.set_switches(Switches { updated_after_inclusive: inclusive, ..Switches::default() });
    app
}

/// A backfill, then `CHANGED` sessions change in the watermark's own second, then an incremental run. Returns the
/// watermark, the changed sessions and the `updated_after` of each list request of the incremental run.
async fn changes_in_the_watermark_second(app: &TestApp) -> (i64, Vec<String>, Vec<i64>) {
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let watermark = app.watermark().await.expect("a watermark");
    assert_eq!(watermark, app.sim.now(), "settle 0: the watermark is the server's time");
    let changed = app.sim.update_some(CHANGED);
    let truth = app.sim.sessions();
    assert!(
        truth.iter().filter(|s| changed.contains(&s.session_id)).all(|s| s.updated_at == watermark),
        "the changes carry the watermark's second"
    );
    let before = app.sim.requests().len();
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    let updated_after = common::updated_after_since(&app.sim, before);
    (watermark, changed, updated_after)
}

async fn assert_read_across_the_page_boundary(inclusive: bool) {
    let app = app(inclusive, Duration::from_secs(1)).await;
    let (watermark, _, updated_after) = changes_in_the_watermark_second(&app).await;
    assert!(updated_after.len() >= 2, "the changes span pages: {updated_after:?}");
    assert!(
        updated_after.iter().all(|&t| t == watermark - 1),
        "every page asks from one second before the watermark: {updated_after:?} (watermark {watermark})"
    );
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn changes_at_the_watermark_second_are_read_when_updated_after_is_exclusive() {
    assert_read_across_the_page_boundary(false).await;
}

#[tokio::test]
async fn changes_at_the_watermark_second_are_read_when_updated_after_is_inclusive() {
    assert_read_across_the_page_boundary(true).await;
}

/// The control: without the lookback (a setting the validation refuses with settle 0), an exclusive
/// `updated_after` loses every change of the watermark's second — the guard above is what prevents it.
#[tokio::test]
async fn without_the_lookback_an_exclusive_updated_after_loses_the_watermark_second() {
    let app = app(false, Duration::ZERO).await;
    let (watermark, changed, updated_after) = changes_in_the_watermark_second(&app).await;
    assert!(updated_after.iter().all(|&t| t == watermark), "{updated_after:?}");
    let stored: Vec<i64> =
        sqlx::query_scalar("select extract(epoch from updated_at)::bigint from sessions where session_id = any($1)")
            .bind(&changed)
            .fetch_all(app.store().pool())
            .await
            .unwrap();
    assert_eq!(stored.len(), CHANGED);
    assert!(stored.iter().all(|&t| t < watermark), "every change of that second was missed: {stored:?}");
}
