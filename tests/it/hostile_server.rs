//! Issue 11, item 6 (continued): answers the simulator never gives, from a small server of the test's own — a page
//! that claims more but has no cursor, an error body that echoes the token, fifty empty pages in a row — and the
//! API behind a proxy's path prefix.

use crate::common;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use axum::extract::{Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use common::{TestDb, build_syncer, test_settings};
use devin_etl::sync::{Mode, Syncer};
use devin_sim::{Simulator, SimulatorConfig};
use serde_json::{Value, json};

const TOKEN: &str = "cog_hostile_server_token_1234";

/// What the test's server answers for one request: `(status, body)`, given the request's `first` and `after`.
type Answer = Arc<dyn Fn(u32, Option<&str>) -> (StatusCode, Value) + Send + Sync>;

struct Served {
    base_url: String,
    requests: Arc<AtomicUsize>,
    paths: Arc<std::sync::Mutex<Vec<String>>>,
}

/// Serves `answer` at `{prefix}/v3/enterprise/sessions/insights` on a free loopback port.
async fn serve(prefix: &str, answer: Answer) -> Served {
    #[derive(Clone)]
    struct S {
        answer: Answer,
        requests: Arc<AtomicUsize>,
        paths: Arc<std::sync::Mutex<Vec<String>>>,
    }
    async fn list(
        State(s): State<S>,
        uri: axum::http::Uri,
        headers: HeaderMap,
        Query(q): Query<Vec<(String, String)>>,
    ) -> impl IntoResponse {
        s.requests.fetch_add(1, Ordering::SeqCst);
        s.paths.lock().unwrap().push(uri.path().to_owned());
        assert_eq!(headers.get("authorization").and_then(|v| v.to_str().ok()), Some(&*format!("Bearer {TOKEN}")));
        let after = q.iter().find(|(k, _)| k == "after").map(|(_, v)| v.as_str());
        let first = q.iter().find(|(k, _)| k == "first").and_then(|(_, v)| v.parse().ok()).unwrap_or(0);
        let (status, body) = (s.answer)(first, after);
        (status, axum::Json(body))
    }
    let requests = Arc::new(AtomicUsize::new(0));
    let paths = Arc::new(std::sync::Mutex::new(Vec::new()));
    let state = S { answer, requests: requests.clone(), paths: paths.clone() };
    let router = axum::Router::new()
        .route(&format!("{prefix}/v3/enterprise/sessions/insights"), axum::routing::get(list))
        .with_state(state);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    Served { base_url: format!("http://{addr}{prefix}"), requests, paths }
}

async fn syncer_for(served: &Served) -> (TestDb, Syncer) {
    let db = TestDb::create().await;
    let mut settings = test_settings(&db.url, &served.base_url, TOKEN);
    settings.api.max_retries = 0;
    (db, build_syncer(settings).await)
}

/// One valid item, as the simulator makes them.
fn item() -> (String, Value) {
    let sim = Simulator::new(SimulatorConfig { sessions: 1, ..SimulatorConfig::default() });
    let session = sim.sessions().remove(0);
    (session.session_id.clone(), serde_json::to_value(&session).unwrap())
}

#[tokio::test]
async fn a_page_that_claims_more_without_a_cursor_fails_the_run_and_stores_nothing_of_it() {
    let (_, valid) = item();
    let served = serve(
        "",
        Arc::new(move |first, _| match first {
            // The clock probe (one item) gets an honest last page; the walk's page claims more without a cursor.
            1 => (StatusCode::OK, json!({"items": [], "has_next_page": false})),
            _ => (StatusCode::OK, json!({"items": [valid.clone()], "has_next_page": true, "total": 5})),
        }),
    )
    .await;
    let (_db, syncer) = syncer_for(&served).await;
    let error = syncer.run_once(Mode::Incremental).await.expect_err("a walk cannot go on without a cursor");
    let message = format!("{error:#}");
    assert!(message.contains("has_next_page is true but end_cursor is missing"), "{message}");
    assert!(message.contains("/v3/enterprise/sessions/insights?first=50"), "names the request: {message}");
    assert_eq!(common::session_count(syncer.store()).await, 0, "nothing of the page is stored");
    assert_eq!(syncer.store().watermark("devin").await.unwrap(), None);
}

#[tokio::test]
async fn an_error_body_that_echoes_the_token_is_reported_without_it() {
    let served = serve(
        "",
        Arc::new(|_, _| (StatusCode::BAD_REQUEST, json!({"detail": format!("token {TOKEN} is not allowed here")}))),
    )
    .await;
    let (_db, syncer) = syncer_for(&served).await;
    let error = syncer.run_once(Mode::Incremental).await.expect_err("400 is not retried");
    let message = format!("{error:#}");
    assert!(message.contains("HTTP 400") && message.contains("is not allowed here"), "{message}");
    assert!(!message.contains(TOKEN), "the token is masked: {message}");
    let recorded: Option<String> = sqlx::query_scalar("select error from sync_runs order by run_id desc limit 1")
        .fetch_one(syncer.store().pool())
        .await
        .unwrap();
    assert!(!recorded.unwrap_or_default().contains(TOKEN), "nor in sync_runs");
}

/// `empty` empty pages that claim more, then a page with one item.
async fn empty_pages_then_an_item(empty: usize) -> (Served, String) {
    let (id, valid) = item();
    let served = serve(
        "",
        Arc::new(move |first, after| {
            let n: usize = after.map_or(0, |c| c.parse().unwrap());
            if first > 1 && n < empty {
                (StatusCode::OK, json!({"items": [], "has_next_page": true, "end_cursor": (n + 1).to_string()}))
            } else {
                (StatusCode::OK, json!({"items": [valid.clone()], "has_next_page": false}))
            }
        }),
    )
    .await;
    (served, id)
}

#[tokio::test]
async fn forty_nine_empty_pages_in_a_row_are_walked_through_to_the_items_after_them() {
    let (served, id) = empty_pages_then_an_item(49).await;
    let (_db, syncer) = syncer_for(&served).await;
    let outcome = syncer.run_once(Mode::Incremental).await.unwrap();
    assert_eq!(served.requests.load(Ordering::SeqCst), 1 + 49 + 1, "the clock probe, 49 empty pages, the last page");
    assert_eq!(outcome.items, 1);
    let stored: Vec<String> =
        sqlx::query_scalar("select session_id from sessions").fetch_all(syncer.store().pool()).await.unwrap();
    assert_eq!(stored, [id]);
}

#[tokio::test]
async fn fifty_empty_pages_in_a_row_stop_the_walk_and_the_watermark_stays() {
    let (served, _) = empty_pages_then_an_item(50).await;
    let (_db, syncer) = syncer_for(&served).await;
    let error = syncer.run_once(Mode::Incremental).await.expect_err("a walk that never ends is stopped");
    assert!(format!("{error:#}").contains("50 empty pages in a row that claim more follow"), "{error:#}");
    assert_eq!(served.requests.load(Ordering::SeqCst), 1 + 50, "the clock probe and the fifty empty pages");
    assert_eq!(syncer.store().watermark("devin").await.unwrap(), None);
}

#[tokio::test]
async fn a_base_url_with_a_path_prefix_keeps_the_prefix() {
    let (id, valid) = item();
    let served = serve(
        "/proxy/devin",
        Arc::new(move |_, _| (StatusCode::OK, json!({"items": [valid.clone()], "has_next_page": false}))),
    )
    .await;
    let (_db, syncer) = syncer_for(&served).await;
    syncer.run_once(Mode::Incremental).await.unwrap();
    let paths = served.paths.lock().unwrap().clone();
    assert!(
        !paths.is_empty() && paths.iter().all(|p| p == "/proxy/devin/v3/enterprise/sessions/insights"),
        "{paths:?}"
    );
    let stored: Vec<String> =
        sqlx::query_scalar("select session_id from sessions").fetch_all(syncer.store().pool()).await.unwrap();
    assert_eq!(stored, [id]);
}
