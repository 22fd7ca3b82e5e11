//! The small HTTP surface of `devin-etl run` (`server.listen`, default `0.0.0.0:9187`; `"off"`: none of it):
//!
//! - `/`: the status page (see [`crate::status_page`]): per source the watermark and its lag, readiness, the last
//!   runs with their outcome and error, backfill progress, drift and alerts; rows per table. Server-rendered HTML
//!   without scripts, refreshing itself every 30 s. Its facts come from [`crate::status`], as `devin-etl status`'s
//!   do, and readiness from the same function as `/readyz`. Bounded: one gathering at a time on the endpoints' small
//!   pool (whose statements time out after [`crate::app::HTTP_STATEMENT_TIMEOUT`]), at most [`PAGE_TIMEOUT`] long,
//!   its result reused for [`PAGE_REUSE`]; a slow database makes the page answer 503, never pile up queries. Every
//!   secret of the configuration is scrubbed from what it shows.
//! - `/healthz`: 200 `ok` while the process serves; never touches the database (a liveness probe must not
//!   restart the pod because PostgreSQL is down).
//! - `/readyz`: 200 when the database answers (within 2 s), every embedded migration is applied, and every
//!   source's last successful run finished at most `server.max_staleness` ago with no run stuck longer than
//!   `server.max_run_duration`; otherwise 503 with the reason as plain text (`not ready: …`), naming each failing
//!   source when there are several. One stale source makes the deployment unready, as a single stale source always
//!   did: a warehouse missing a source's data is not a healthy one. Readiness is per source, not per replica: a
//!   replica that lost the single-flight lock to another one is just as ready.
//! - `/metrics`: the Prometheus text of the process-wide recorder, with `devin_etl_watermark_lag_seconds` of every
//!   source refreshed from `sync_state` on each scrape.

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::alerts::Scrubber;
use crate::human;
use crate::settings::Settings;
use crate::status::{BackfillPlan, Readiness};
use crate::store::Store;
use crate::telemetry::metric;

/// How long `/readyz` and `/metrics` wait for the database before calling it unreachable. Well under the
/// usual probe timeout, so a probe gets an answer with a reason rather than a timeout.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

/// The longest the status page gathers its facts before it answers 503 instead.
pub const PAGE_TIMEOUT: Duration = Duration::from_secs(8);

/// How long one gathering of the status page serves every request (several viewers, tabs, refreshes).
pub const PAGE_REUSE: Duration = Duration::from_secs(5);

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// What the endpoints need.
#[derive(Clone)]
pub struct HttpState {
    pub store: Store,
    /// The source the endpoints cover; [`serve_sources`] covers several.
    pub source: String,
    pub max_staleness: Duration,
    /// A run going for longer than this is reported as stuck.
    pub max_run_duration: Duration,
    pub metrics: PrometheusHandle,
    /// What the status page needs beyond the above.
    pub page: StatusPage,
}

/// What the status page (`/`) needs beyond the endpoints' state.
#[derive(Clone, Debug, Default)]
pub struct StatusPage {
    /// The configured backfill plan, to show how many windows of a backfill are done; `None`: not shown.
    pub backfill_plan: Option<BackfillPlan>,
    /// Every secret of the configuration, replaced wherever it would appear on the page.
    pub scrubber: Scrubber,
}

impl StatusPage {
    /// The page of the sources `sources` (from [`Settings::per_source`]): their backfill plan, and their secrets.
    pub fn of(sources: &[Settings]) -> StatusPage {
        StatusPage {
            backfill_plan: sources.first().map(|s| BackfillPlan::of(&s.sync)),
            scrubber: Scrubber::of_config(sources),
        }
    }
}

/// The router's own state: the caller's, plus what the handlers remember between requests.
struct Shared {
    state: HttpState,
    /// Every source covered (`state.source` alone, unless [`serve_sources`] named several).
    sources: Vec<String>,
    /// The last readiness answer, to log changes once instead of every probe.
    last_readiness: Mutex<Option<Result<(), String>>>,
    /// The last watermark read per source, so the lag keeps growing while the database is away.
    last_watermarks: Mutex<HashMap<String, i64>>,
    /// The status page's last rendering; its lock is held while one is gathered, so gatherings never overlap.
    page: tokio::sync::Mutex<Option<RenderedPage>>,
}

/// A rendered status page and when it was gathered.
#[derive(Clone)]
struct RenderedPage {
    at: std::time::Instant,
    status: StatusCode,
    html: String,
}

/// The routes, for `serve` and for tests.
pub fn router(state: HttpState) -> axum::Router {
    let sources = vec![state.source.clone()];
    router_for(state, sources)
}

/// The routes covering `sources` (readiness and watermark lag of each).
fn router_for(state: HttpState, sources: Vec<String>) -> axum::Router {
    let shared = Arc::new(Shared {
        state,
        sources,
        last_readiness: Mutex::new(None),
        last_watermarks: Mutex::new(HashMap::new()),
        page: tokio::sync::Mutex::new(None),
    });
    axum::Router::new()
        .route("/", get(status_page))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .with_state(shared)
}

/// Serves until `shutdown` completes, then lets requests in flight finish.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let sources = vec![state.source.clone()];
    serve_sources(listener, state, sources, shutdown).await
}

/// As [`serve`], covering every source of `sources` (`state.source` is not used): `/readyz` is ready only when
/// each is, `/metrics` reports each one's watermark lag.
pub async fn serve_sources(
    listener: tokio::net::TcpListener,
    state: HttpState,
    sources: Vec<String>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /healthz, /readyz, /metrics and the status page (/)");
    }
    axum::serve(listener, router_for(state, sources)).with_graceful_shutdown(shutdown).await
}

async fn healthz() -> &'static str {
    "ok"
}

async fn readyz(State(shared): State<Arc<Shared>>) -> (StatusCode, String) {
    let result = readiness(&shared.state, &shared.sources).await;
    log_change(&shared, &result);
    match result {
        Ok(detail) => (StatusCode::OK, format!("ready: {detail}\n")),
        Err(reason) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {reason}\n")),
    }
}

/// `Ok(detail)` when ready, else `Err(reason)`; with several sources, each one's detail or reason is prefixed with
/// its name, and any source's reason makes the whole answer a reason.
async fn readiness(state: &HttpState, sources: &[String]) -> Result<String, String> {
    let store = &state.store;
    within_timeout(store.ping()).await.map_err(|e| format!("database unreachable: {e}"))?;
    let migrations = within_timeout(store.migration_status()).await.map_err(|e| format!("database error: {e}"))?;
    if !migrations.is_current() {
        return Err(format!("migrations not current ({migrations}); run `devin-etl migrate`"));
    }
    if let [source] = sources {
        return source_readiness(state, source).await.into_result();
    }
    let (mut ready, mut not_ready) = (Vec::new(), Vec::new());
    for source in sources {
        match source_readiness(state, source).await.into_result() {
            Ok(detail) => ready.push(format!("{source}: {detail}")),
            Err(reason) => not_ready.push(format!("source {source}: {reason}")),
        }
    }
    if not_ready.is_empty() { Ok(ready.join("; ")) } else { Err(not_ready.join("; ")) }
}

impl Readiness {
    fn into_result(self) -> Result<String, String> {
        match self {
            Readiness::Ready(detail) => Ok(detail),
            Readiness::NotYet(reason) | Readiness::Unready(reason) => Err(reason),
        }
    }
}

/// One source's part of [`readiness`] (and of the status page).
async fn source_readiness(state: &HttpState, source: &str) -> Readiness {
    let store = &state.store;
    let last = match within_timeout(store.last_success(source)).await {
        Ok(last) => last,
        Err(e) => return Readiness::Unready(format!("database error: {e}")),
    };
    let Some(last) = last else {
        return Readiness::NotYet(format!("no successful sync yet (source {source})"));
    };
    let running = match within_timeout(store.oldest_running_run(source)).await {
        Ok(running) => running,
        Err(e) => return Readiness::Unready(format!("database error: {e}")),
    };
    if let Some((run_id, mode, age)) = running
        && age > state.max_run_duration
    {
        return Readiness::Unready(format!(
            "{mode} run {run_id} has been running for {} (server.max_run_duration {}): it may be stuck",
            human::duration(age),
            human::duration(state.max_run_duration)
        ));
    }
    let ago = human::duration(last.age);
    let max = human::duration(state.max_staleness);
    if last.age > state.max_staleness {
        return Readiness::Unready(format!("last successful sync {ago} ago (max {max})"));
    }
    Readiness::Ready(format!("last successful sync {ago} ago (max {max})"))
}

/// `/`: the status page, gathered at most once per [`PAGE_REUSE`] and one gathering at a time.
async fn status_page(State(shared): State<Arc<Shared>>) -> Response {
    let mut last = shared.page.lock().await;
    let page = match last.as_ref() {
        Some(page) if page.at.elapsed() < PAGE_REUSE => page.clone(),
        _ => {
            let page = render_page(&shared).await;
            *last = Some(page.clone());
            page
        }
    };
    drop(last);
    let headers = [
        (header::CONTENT_TYPE, "text/html; charset=utf-8"),
        (header::CACHE_CONTROL, "no-store"),
        // Defence in depth: no script runs and nothing loads from elsewhere, even if an escape were missed.
        (header::CONTENT_SECURITY_POLICY, "default-src 'none'; style-src 'unsafe-inline'; img-src data:"),
        (header::X_CONTENT_TYPE_OPTIONS, "nosniff"),
        (header::REFERRER_POLICY, "no-referrer"),
    ];
    (page.status, headers, page.html).into_response()
}

async fn render_page(shared: &Shared) -> RenderedPage {
    let state = &shared.state;
    let scrubber = &state.page.scrubber;
    let gather = async {
        let several = crate::status::collect_several(&state.store, &shared.sources, state.page.backfill_plan).await?;
        let mut readiness = Vec::with_capacity(shared.sources.len());
        for source in &shared.sources {
            readiness.push(source_readiness(state, source).await);
        }
        anyhow::Ok((several, readiness))
    };
    let (status, html) = match tokio::time::timeout(PAGE_TIMEOUT, gather).await {
        Ok(Ok((several, readiness))) => {
            let page =
                crate::status_page::Page { several: &several, readiness: &readiness, generated_at: chrono::Utc::now() };
            (StatusCode::OK, crate::status_page::render(&page, scrubber))
        }
        Ok(Err(e)) => {
            tracing::warn!(error = %scrubber.text(&format!("{e:#}")), "the status page cannot read the status");
            (StatusCode::SERVICE_UNAVAILABLE, crate::status_page::render_error(&format!("{e:#}"), scrubber))
        }
        Err(_) => {
            let why = format!("the database did not answer within {}", human::duration(PAGE_TIMEOUT));
            tracing::warn!("the status page cannot read the status: {why}");
            (StatusCode::SERVICE_UNAVAILABLE, crate::status_page::render_error(&why, scrubber))
        }
    };
    RenderedPage { at: std::time::Instant::now(), status, html }
}

/// Runs a database call under [`DATABASE_TIMEOUT`]; the error text carries the whole cause chain.
async fn within_timeout<T>(call: impl Future<Output = anyhow::Result<T>>) -> Result<T, String> {
    match tokio::time::timeout(DATABASE_TIMEOUT, call).await {
        Ok(Ok(value)) => Ok(value),
        Ok(Err(e)) => Err(format!("{e:#}")),
        Err(_) => Err(format!("no answer within {}", human::duration(DATABASE_TIMEOUT))),
    }
}

fn log_change(shared: &Shared, result: &Result<String, String>) {
    let now = result.as_ref().map(|_| ()).map_err(Clone::clone);
    let mut last = shared.last_readiness.lock().unwrap_or_else(PoisonError::into_inner);
    if last.as_ref() == Some(&now) {
        return;
    }
    // Reasons that only differ in a number (the age) would log on every probe; compare the kind of reason.
    let same_kind = match (last.as_ref(), &now) {
        (Some(Err(a)), Err(b)) => reason_kind(a) == reason_kind(b),
        _ => false,
    };
    match &now {
        Ok(()) => tracing::info!("ready"),
        Err(reason) if !same_kind => tracing::warn!(%reason, "not ready"),
        Err(_) => {}
    }
    *last = Some(now);
}

/// The reason up to its first digit: "last successful sync 2h ago" and "… 3h ago" are the same kind.
fn reason_kind(reason: &str) -> &str {
    reason.split(|c: char| c.is_ascii_digit()).next().unwrap_or(reason)
}

async fn metrics(State(shared): State<Arc<Shared>>) -> impl IntoResponse {
    let state = &shared.state;
    let now = chrono::Utc::now().timestamp();
    for source in &shared.sources {
        let read = within_timeout(state.store.watermark(source)).await;
        let mut watermarks = shared.last_watermarks.lock().unwrap_or_else(PoisonError::into_inner);
        match read {
            Ok(Some(watermark)) => {
                watermarks.insert(source.clone(), watermark);
            }
            Ok(None) => {}
            Err(e) => {
                tracing::debug!(error = %e, source, "cannot read the watermark for devin_etl_watermark_lag_seconds")
            }
        }
        if let Some(watermark) = watermarks.get(source) {
            let lag = now.saturating_sub(*watermark);
            metrics::gauge!(metric::WATERMARK_LAG, "source" => source.clone()).set(lag as f64);
        }
    }
    ([(header::CONTENT_TYPE, PROMETHEUS_TEXT)], state.metrics.render())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_page_knows_every_secret_of_the_configuration() {
        let mut settings = Settings::load_with_env(None, |_| None).unwrap();
        settings.api.token = Some("cog_token_of_devin".to_owned().into());
        settings.alerts.webhook_url = Some("https://hooks.example/T0/B0/secret".to_owned().into());
        settings.database.url = "postgres://etl:p%40ssw0rd@db:5432/w".to_owned().into();
        let page = StatusPage::of(&settings.per_source());
        let shown = page.scrubber.text(
            "cog_token_of_devin https://hooks.example/T0/B0/secret p@ssw0rd p%40ssw0rd postgres://etl:p%40ssw0rd@db:5432/w",
        );
        assert_eq!(shown.matches(crate::alerts::REDACTED).count(), 5, "{shown}");
        assert!(!shown.contains("secret") && !shown.contains("ssw0rd") && !shown.contains("cog_"), "{shown}");
    }

    #[test]
    fn reason_kinds_ignore_numbers() {
        assert_eq!(reason_kind("last successful sync 2h ago (max 1h)"), reason_kind("last successful sync 3h ago"));
        assert_ne!(reason_kind("no successful sync yet"), reason_kind("database unreachable: x"));
    }
}
