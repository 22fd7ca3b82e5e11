//! Issue 4, item 5: untrusted responses. A server that ignores filters, repeats items, returns empty pages that
//! claim more, a cursor that does not advance, no `Date` header, or items that break the spec must neither loop
//! forever nor corrupt data. (Unknown enum values and extra fields: `sync_core.rs`.) Every test ends with a
//! field-by-field comparison with the simulator's truth.

use crate::common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::{DEFAULT_SOURCE, TestApp, api_order, assert_present_sessions_match_truth, last_run};
use devin_etl::sync::Mode;
use devin_sim::{Fault, Switches};

const SETTLE: i64 = 30;

use common::small_pages_app as app;

fn switch(f: impl FnOnce(&mut Switches)) -> Switches {
    let mut s = Switches::default();
    f(&mut s);
    s
}

/// A run must end (with an error or not) well within this: a walk that loops would not.
const NO_LOOP: Duration = Duration::from_secs(60);

#[tokio::test]
async fn a_server_ignoring_filters_still_loads_correctly() {
    let app = app(60, |s| s.sync.enrichment_batch = 2).await;
    app.sim.set_switches(switch(|s| s.ignore_filters = true));
    // Every backfill window gets the whole history back.
    tokio::time::timeout(NO_LOOP, app.syncer.run_once(Mode::Backfill)).await.unwrap().unwrap();
    app.assert_matches_truth().await;

    app.sim.advance(3_600);
    let updated = app.sim.update_some(8);
    let created = app.sim.create(4);
    // Recent sessions waiting for analysis (two batches of two): enrichment asks for them by id and gets
    // everything back.
    for id in &created {
        app.sim.modify_keep_updated_at(id, |s| s.analysis = None);
    }
    app.sim.advance(60);
    let (incremental, enrichment) = tokio::time::timeout(NO_LOOP, app.syncer.sync(None)).await.unwrap().unwrap();

    assert_eq!(incremental.items, 64, "the server returned everything, not only the changes");
    assert_eq!(incremental.writes.sessions_written as usize, updated.len() + created.len(), "only changes written");
    assert_eq!(enrichment.writes.sessions_written, 0, "items not asked for by id are dropped");
    // One unfiltered walk (7 pages of 10), not one per batch: it stops once it sees session_ids ignored.
    assert_eq!(enrichment.requests, 7, "enrichment stops after the batch that showed session_ids ignored");
    assert_eq!(app.watermark().await, Some(app.sim.now() - SETTLE));
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn items_repeated_across_pages_are_loaded_once() {
    let app = app(70, |s| s.api.page_size = 7).await;
    app.sim.set_switches(switch(|s| s.repeat_items = true));
    let outcome = app.syncer.run_once(Mode::Incremental).await.unwrap();
    assert!(outcome.items > 70, "the repeats were served ({} items read)", outcome.items);
    assert_eq!(outcome.writes.sessions_written, 70);
    app.assert_matches_truth().await;

    app.sim.advance(60);
    app.sim.update_some(20);
    app.sim.advance(60);
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn a_cursor_that_does_not_advance_stops_the_walk_with_a_clear_error() {
    let app = app(80, |_| {}).await;
    app.sim.set_switches(switch(|s| s.stuck_cursor = true));

    let error = tokio::time::timeout(NO_LOOP, app.syncer.run_once(Mode::Incremental)).await.unwrap().unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("cursor this walk has already followed"), "{message}");
    assert!(message.contains("GET /v3/enterprise/sessions/insights?first=10&after="), "names the request: {message}");
    assert!(app.sim.requests().len() <= 3, "the walk is bounded: {} requests", app.sim.requests().len());
    assert_eq!(app.watermark().await, None, "the watermark stays");
    assert_eq!(last_run(app.store()).await.1, "failed");
    // What was committed before the problem was noticed is correct.
    let present = assert_present_sessions_match_truth(app.store(), &app.sim.sessions()).await;
    // The second page is real data too (only its end_cursor repeats the one it was asked with).
    assert!(present.len() <= 20, "only the first two pages are real data ({} stored)", present.len());

    app.sim.set_switches(Switches::default());
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    assert_eq!(app.watermark().await, Some(app.sim.now() - SETTLE));
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn a_stuck_cursor_during_a_backfill_fails_it_and_a_rerun_completes() {
    let app = app(60, |_| {}).await;
    app.sim.set_switches(switch(|s| s.stuck_cursor = true));
    let error = tokio::time::timeout(NO_LOOP, app.syncer.run_once(Mode::Backfill)).await.unwrap().unwrap_err();
    assert!(format!("{error:#}").contains("cursor this walk has already followed"), "{error:#}");
    assert_eq!(app.watermark().await, None);
    assert_present_sessions_match_truth(app.store(), &app.sim.sessions()).await;

    app.sim.set_switches(Switches::default());
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn empty_pages_that_claim_more_are_walked_through() {
    let app = app(50, |_| {}).await;
    app.sim.set_switches(switch(|s| {
        s.empty_pages = true;
        s.omit_total = true;
    }));
    let outcome = tokio::time::timeout(NO_LOOP, app.syncer.run_once(Mode::Incremental)).await.unwrap().unwrap();
    let empty = app.sim.requests().iter().filter(|r| r.items == 0).count();
    assert!(empty >= 4, "the empty pages were served ({empty})");
    assert_eq!(outcome.items, 50);
    assert_eq!(app.watermark().await, Some(app.sim.now() - SETTLE));
    app.assert_matches_truth().await;

    app.sim.advance(60);
    app.sim.update_some(25);
    app.sim.advance(60);
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn without_a_date_header_the_watermark_falls_back_to_the_largest_updated_at() {
    let app = app(60, |_| {}).await;
    app.sim.set_switches(switch(|s| s.omit_date = true));
    let max_updated = |app: &TestApp| app.sim.sessions().iter().map(|s| s.updated_at).max();

    app.syncer.run_once(Mode::Backfill).await.unwrap();
    assert_eq!(app.watermark().await, max_updated(&app), "backfill: the largest updated_at seen");
    app.assert_matches_truth().await;

    app.sim.advance(300);
    app.sim.update_some(10);
    app.sim.create(3);
    app.sim.advance(30);
    let (incremental, _) = app.syncer.sync(None).await.unwrap();
    assert_eq!(incremental.watermark_after, max_updated(&app), "incremental: the largest updated_at seen");
    app.assert_matches_truth().await;

    // Changes at the watermark's own second are still read next time (lookback).
    app.sim.update_some(5);
    app.sim.advance(1);
    app.syncer.sync(None).await.unwrap();
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn a_backfill_resumed_after_its_last_window_without_a_date_header_completes_with_a_watermark() {
    let app = app(60, |_| {}).await;
    app.sim.set_switches(switch(|s| s.omit_date = true));
    let max_updated = app.sim.sessions().iter().map(|s| s.updated_at).max();
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    // The process died after the last window committed but before the backfill's completion did: every window
    // is recorded done, the backfill is not complete and there is no watermark yet.
    sqlx::query(
        "update sync_state set backfill_completed_at = null, watermark = null, watermark_observed_at = null,
                clock_offset = null where source = $1",
    )
    .bind(DEFAULT_SOURCE)
    .execute(app.store().pool())
    .await
    .unwrap();
    assert_eq!(app.watermark().await, None);

    let resumed = app.syncer.run_once(Mode::Backfill).await.unwrap();
    assert_eq!(resumed.items, 0, "no window is left to walk");
    let state = app.store().backfill_state(DEFAULT_SOURCE).await.unwrap().expect("a backfill state");
    assert!(state.completed, "the resumed backfill completes");
    assert_eq!(app.watermark().await, max_updated, "the largest updated_at the backfill loaded");
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn a_malformed_item_fails_its_page_and_nothing_of_that_page_is_stored() {
    let app = app(100, |_| {}).await;
    // The fifth page's first item lacks session_id.
    app.sim.inject(4, Fault::MalformedItem, 1);
    let error = app.syncer.run_once(Mode::Incremental).await.unwrap_err();
    let message = format!("{error:#}");
    let bad = app.sim.requests().into_iter().find(|r| r.fault.is_some()).unwrap();
    assert!(message.contains(&format!("GET {} returned an invalid item #0", bad.path_and_query)), "{message}");
    assert!(message.contains("missing field `session_id`"), "{message}");
    assert_eq!(app.watermark().await, None);

    let order = api_order(&app.sim.sessions());
    let bad_page: BTreeSet<&String> = order[40..50].iter().collect();
    let present = assert_present_sessions_match_truth(app.store(), &app.sim.sessions()).await;
    assert!(present.iter().all(|id| !bad_page.contains(id)), "part of the invalid page was stored");
    let before: BTreeSet<String> = order[..40].iter().cloned().collect();
    assert!(present.is_subset(&before), "only pages before the invalid one may be stored");

    app.syncer.run_once(Mode::Incremental).await.unwrap();
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn a_page_that_is_not_json_fails_the_run_with_a_clear_error() {
    let app = app(100, |_| {}).await;
    app.sim.inject(3, Fault::InvalidJson, 1);
    let error = app.syncer.run_once(Mode::Incremental).await.unwrap_err();
    let message = format!("{error:#}");
    let bad = app.sim.requests().into_iter().find(|r| r.fault.is_some()).unwrap();
    assert!(message.contains(&format!("GET {} returned a response that is not a valid page", bad.path_and_query)));
    assert!(message.contains("body starts with: {\"items\": ["), "{message}");
    // A complete body that does not parse is the server's bug, not a network hiccup: no retry.
    assert_eq!(app.sim.requests().iter().filter(|r| r.path_and_query == bad.path_and_query).count(), 1);
    assert_eq!(app.watermark().await, None);
    let order = api_order(&app.sim.sessions());
    let before: BTreeSet<String> = order[..30].iter().cloned().collect();
    let present = assert_present_sessions_match_truth(app.store(), &app.sim.sessions()).await;
    assert!(present.is_subset(&before), "nothing of or after the invalid page is stored");

    app.syncer.run_once(Mode::Incremental).await.unwrap();
    app.assert_matches_truth().await;
}

/// A server whose cursor changes on every page but never moves: it returns the same items forever.
async fn serve_same_page_forever(
    items: Vec<serde_json::Value>,
) -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};
    let served = Arc::new(AtomicUsize::new(0));
    let counter = served.clone();
    let router = axum::Router::new().route(
        "/v3/enterprise/sessions/insights",
        axum::routing::get(move || {
            let n = counter.fetch_add(1, Ordering::SeqCst);
            let items = items.clone();
            async move {
                axum::Json(serde_json::json!({
                    "items": items, "end_cursor": format!("cursor-{n}"), "has_next_page": true,
                }))
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    (url, served)
}

#[tokio::test]
async fn a_cursor_that_changes_but_does_not_advance_stops_the_walk() {
    let truth = app(5, |_| {}).await;
    let items: Vec<serde_json::Value> = truth.sim.sessions().iter().map(|s| serde_json::to_value(s).unwrap()).collect();
    let (url, served) = serve_same_page_forever(items).await;
    let settings = common::test_settings(&truth.db.url, &url, truth.sim.token());
    let syncer = common::build_syncer(settings).await;

    let result = tokio::time::timeout(Duration::from_secs(20), syncer.run_once(Mode::Incremental)).await;
    let served = served.load(std::sync::atomic::Ordering::SeqCst);
    let error = result.unwrap_or_else(|_| panic!("the walk never ended ({served} pages served)")).unwrap_err();
    let message = format!("{error:#}");
    assert!(message.contains("same items"), "{message}");
    assert!(message.contains("GET /v3/enterprise/sessions/insights?first=50&after=cursor-"), "{message}");
    assert!(served <= 10, "the walk is bounded: {served} pages");
    assert_eq!(syncer.store().watermark("devin").await.unwrap(), None);
    // The first page was real data.
    truth.assert_matches_truth().await;
}
