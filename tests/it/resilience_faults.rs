//! Issue 4, item 1: retries. Faults are injected for real by the simulator (status codes with `Retry-After`,
//! truncated bodies, dropped connections, slow responses) and every test ends with a field-by-field comparison
//! of the warehouse with the simulator's truth.

use crate::common;

use std::time::{Duration, Instant};

use common::{TestApp, assert_present_sessions_match_truth, last_run};
use devin_etl::sync::Mode;
use devin_sim::{Fault, SimulatorConfig};

const SETTLE: i64 = 30;

use common::small_pages_app as app;

fn status(code: u16, retry_after: Option<&str>) -> Fault {
    Fault::Status { code, retry_after: retry_after.map(str::to_owned) }
}

/// Number of requests the simulator answered with an injected fault.
fn faulted(app: &TestApp) -> usize {
    app.sim.requests().iter().filter(|r| r.fault.is_some()).count()
}

/// A first (full) incremental run with `faults` injected, which must succeed with exactly one retry per fault.
async fn full_run_survives(app: &TestApp, faults: usize) {
    let outcome = app.syncer.run_once(Mode::Incremental).await.unwrap();
    assert_eq!(faulted(app), faults, "every injected fault was hit");
    assert_eq!(outcome.retries, faults as u64, "one retry per fault");
    let (mode, status, retries, requests, error) = last_run(app.store()).await;
    assert_eq!((mode.as_str(), status.as_str(), error), ("incremental", "succeeded", None));
    assert_eq!(retries, faults as i64, "sync_runs counts the retries");
    assert_eq!(requests as usize, app.sim.requests().len(), "sync_runs counts every attempt");
    assert_eq!(app.watermark().await, Some(app.sim.now() - SETTLE));
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn http_429_with_retry_after_seconds_is_retried_after_the_asked_delay() {
    let app = app(60, |s| s.api.retry_max_backoff = Duration::from_secs(5)).await;
    app.sim.inject(2, status(429, Some("1")), 1);
    let started = Instant::now();
    full_run_survives(&app, 1).await;
    assert_waited_about_a_second(started.elapsed());
}

/// A run that waited the 1 s a `Retry-After` asked for: at least that, and not much more (the run itself takes
/// a fraction of it; the cap, `api.retry_max_backoff` of 5 s, is far above).
fn assert_waited_about_a_second(elapsed: Duration) {
    assert!(elapsed >= Duration::from_millis(950), "waited {elapsed:?}, not the 1 s asked");
    assert!(elapsed < Duration::from_secs(2), "waited {elapsed:?} for the 1 s asked");
}

#[tokio::test]
async fn http_429_with_retry_after_as_http_date_is_retried_after_the_asked_delay() {
    // Measured against the server's own Date header (the simulator's clock), not the local clock: the
    // simulator's clock runs an hour ahead of ours, then an hour behind. Against the local clock the date would
    // be an hour away (the 5 s cap) or an hour past (no wait at all).
    for offset in [3_600, -3_600] {
        let config = SimulatorConfig {
            sessions: 60,
            manual_clock: true,
            start_time: Some(chrono::Utc::now().timestamp() + offset),
            ..SimulatorConfig::default()
        };
        let app = TestApp::spawn_with(config, |s| {
            s.api.page_size = 10;
            s.api.retry_max_backoff = Duration::from_secs(5);
        })
        .await;
        let at = chrono::DateTime::from_timestamp(app.sim.now() + 1, 0).unwrap();
        app.sim.inject(3, status(429, Some(&at.format("%a, %d %b %Y %H:%M:%S GMT").to_string())), 1);
        let started = Instant::now();
        full_run_survives(&app, 1).await;
        assert_waited_about_a_second(started.elapsed());
    }
}

#[tokio::test]
async fn a_huge_retry_after_is_capped_at_the_maximum_backoff() {
    let app = app(40, |s| s.api.retry_max_backoff = Duration::from_millis(200)).await;
    app.sim.inject(1, status(429, Some("3600")), 1);
    let run = tokio::time::timeout(Duration::from_secs(30), full_run_survives(&app, 1)).await;
    assert!(run.is_ok(), "a Retry-After of an hour must be capped at api.retry_max_backoff");
}

#[tokio::test]
async fn server_errors_are_retried() {
    let app = app(80, |_| {}).await;
    app.sim.inject(1, status(500, None), 1);
    app.sim.inject(1, status(502, None), 2);
    app.sim.inject(1, status(503, Some("0")), 1);
    app.sim.inject(0, status(504, None), 1);
    full_run_survives(&app, 5).await;
}

#[tokio::test]
async fn a_truncated_body_is_retried() {
    let app = app(60, |_| {}).await;
    app.sim.inject(0, Fault::TruncatedBody, 1);
    app.sim.inject(2, Fault::TruncatedBody, 2);
    full_run_survives(&app, 3).await;
}

#[tokio::test]
async fn a_dropped_connection_is_retried() {
    let app = app(60, |_| {}).await;
    app.sim.inject(1, Fault::DropConnection, 2);
    app.sim.inject(2, Fault::DropConnection, 1);
    full_run_survives(&app, 3).await;
}

#[tokio::test]
async fn a_response_slower_than_the_timeout_is_abandoned_and_retried() {
    let app = app(40, |s| s.api.timeout = Duration::from_millis(300)).await;
    app.sim.inject(2, Fault::Slow(Duration::from_secs(2)), 1);
    // Without the timeout the slow answer would simply arrive late: no retry, and `full_run_survives` fails.
    full_run_survives(&app, 1).await;
}

#[tokio::test]
async fn retry_after_zero_is_no_hot_loop() {
    // No backoff at all from the policy: only the client's floor stands between retries.
    let app = app(30, |s| {
        s.api.retry_initial_backoff = Duration::ZERO;
        s.api.retry_max_backoff = Duration::ZERO;
        s.api.max_retries = 10_000;
        s.api.retry_max_elapsed = Duration::from_secs(1);
    })
    .await;
    app.sim.inject(0, status(429, Some("0")), 100_000);
    let started = Instant::now();
    let error = app.syncer.run_once(Mode::Incremental).await.unwrap_err();
    let elapsed = started.elapsed();
    let attempts = app.sim.requests().len();

    // A hot loop would make thousands of requests in that second.
    assert!(attempts >= 2, "it did retry ({attempts} attempts)");
    let floor_ms = 50.0;
    let most = (elapsed.as_secs_f64() * 1000.0 / floor_ms).ceil() as usize + 1;
    assert!(attempts <= most, "{attempts} attempts in {elapsed:?}: Retry-After: 0 became a hot loop");
    assert!(elapsed < Duration::from_secs(10), "retry_max_elapsed bounds the retries ({elapsed:?})");
    let message = format!("{error:#}");
    assert!(message.contains("gave up after"), "{message}");
    assert!(message.contains("429"), "{message}");

    app.sim.clear_faults();
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn other_client_errors_fail_at_once_without_a_retry() {
    let app = app(50, |_| {}).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let watermark = app.watermark().await;
    app.sim.advance(60);
    app.sim.update_some(10);
    app.sim.advance(60);
    for code in [400, 401, 403, 404, 409, 422] {
        app.sim.clear_requests();
        app.sim.inject(0, status(code, None), 1);
        let started = Instant::now();
        let error = app.syncer.run_once(Mode::Incremental).await.unwrap_err();
        let message = format!("{error:#}");
        assert_eq!(app.sim.requests().len(), 1, "HTTP {code} is not retried: {message}");
        assert!(message.contains(&format!("HTTP {code}")), "{message}");
        assert!(message.contains("GET /v3/enterprise/sessions/insights?first=10&updated_after="), "{message}");
        assert!(!message.contains(app.sim.token()), "{message}");
        assert!(started.elapsed() < Duration::from_secs(5));
        assert_eq!(app.watermark().await, watermark, "HTTP {code}: the watermark stays");
        let (_, status, retries, _, _) = last_run(app.store()).await;
        assert_eq!((status.as_str(), retries), ("failed", 0));
    }
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn retries_exhausted_fail_the_run_naming_the_request_and_the_next_run_is_exact() {
    let app = app(120, |s| s.api.max_retries = 2).await;
    // Pages 1-4 load; page 5 fails three times (the first attempt and both retries).
    app.sim.inject(4, status(503, None), 3);
    let error = app.syncer.run_once(Mode::Incremental).await.unwrap_err();
    let message = format!("{error:#}");

    let failing = app.sim.requests().into_iter().find(|r| r.fault.is_some()).unwrap();
    assert!(message.contains(&format!("GET {}", failing.path_and_query)), "names the request: {message}");
    assert!(message.contains("HTTP 503"), "{message}");
    assert!(message.contains("gave up after 3 attempts"), "{message}");
    assert_eq!(faulted(&app), 3, "max_retries bounds the attempts");
    let (mode, status, retries, _, recorded) = last_run(app.store()).await;
    assert_eq!((mode.as_str(), status.as_str(), retries), ("incremental", "failed", 2));
    assert!(recorded.unwrap_or_default().contains("gave up after 3 attempts"));
    assert_eq!(app.watermark().await, None, "the watermark stays");
    // What was committed before the failure is correct (and nothing of the failing page is there).
    let present = assert_present_sessions_match_truth(app.store(), &app.sim.sessions()).await;
    assert!(present.len() <= 40, "{} sessions stored, but only 4 pages were read", present.len());

    app.sim.advance(60);
    let outcome = app.syncer.run_once(Mode::Incremental).await.unwrap();
    assert_eq!(outcome.items, 120);
    assert_eq!(app.watermark().await, Some(app.sim.now() - SETTLE));
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn retry_max_elapsed_bounds_a_request_that_keeps_failing() {
    let app = app(30, |s| {
        s.api.max_retries = 1_000;
        s.api.retry_initial_backoff = Duration::from_millis(20);
        s.api.retry_max_backoff = Duration::from_millis(100);
        s.api.retry_max_elapsed = Duration::from_millis(600);
    })
    .await;
    app.sim.inject(1, Fault::DropConnection, 1_000);
    let started = Instant::now();
    let error = app.syncer.run_once(Mode::Incremental).await.unwrap_err();
    assert!(started.elapsed() < Duration::from_secs(10), "gave up after {:?}", started.elapsed());
    assert!(faulted(&app) < 1_000, "stopped by time, not by attempts");
    assert!(format!("{error:#}").contains("gave up after"), "{error:#}");
    assert_eq!(app.watermark().await, None);
    app.sim.clear_faults();
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn pacing_spaces_requests_across_concurrent_windows() {
    let rps = 20.0;
    let app = app(100, |s| {
        s.api.max_requests_per_second = Some(rps);
        s.sync.backfill_concurrency = 3;
    })
    .await;
    let started = Instant::now();
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let elapsed = started.elapsed();
    let requests = app.sim.requests().len();
    assert!(requests >= 10, "{requests} requests");
    // n requests evenly spaced at 1/rps take at least (n - 1)/rps, however many windows run at once.
    let least = Duration::from_secs_f64((requests - 1) as f64 / rps);
    assert!(elapsed >= least.mul_f64(0.95), "{requests} requests in {elapsed:?}: faster than {rps}/s");
    // And not much slower: the pacing is the wait, the work hides behind it.
    assert!(elapsed < least.mul_f64(2.0), "{requests} requests in {elapsed:?}: much slower than {rps}/s");
    app.assert_matches_truth().await;
}

#[tokio::test]
async fn a_backfill_failing_in_one_window_stops_the_others_cleanly_and_a_rerun_resumes() {
    let app = app(200, |s| {
        s.sync.backfill_concurrency = 3;
        s.sync.backfill_window = Duration::from_secs(45 * 86_400);
    })
    .await;
    app.sim.inject(12, status(400, None), 1);
    let error = app.syncer.run_once(Mode::Backfill).await.unwrap_err();
    assert!(format!("{error:#}").contains("window created_after="), "names the window: {error:#}");
    // The other windows were stopped; a write they had begun still ends (commit or rollback) on its own.
    wait_for_open_transactions(&app).await;
    assert_eq!(app.watermark().await, None);
    assert_present_sessions_match_truth(app.store(), &app.sim.sessions()).await;
    let done = app.store().completed_windows("devin").await.unwrap();
    let requests_before = app.sim.requests().len();

    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let redone =
        app.sim.requests()[requests_before..].iter().filter(|r| r.window().is_some_and(|w| done.contains(&w))).count();
    assert_eq!(redone, 0, "finished windows are not read again ({} were finished)", done.len());
    assert!(!done.is_empty(), "the failed run finished some windows");
    assert_eq!(app.watermark().await, Some(app.sim.now() - SETTLE));
    app.assert_matches_truth().await;
}

/// Waits until no connection to the test database is inside a transaction.
async fn wait_for_open_transactions(app: &TestApp) {
    for _ in 0..1_000 {
        let open: i64 = sqlx::query_scalar(
            "select count(*) from pg_stat_activity
             where datname = current_database() and xact_start is not null and pid <> pg_backend_pid()",
        )
        .fetch_one(app.store().pool())
        .await
        .unwrap();
        if open == 0 {
            return;
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    panic!("a transaction stayed open");
}
