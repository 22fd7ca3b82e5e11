//! The small HTTP surface of `devin-etl run` (`server.listen`, default `0.0.0.0:9187`):
//!
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
use axum::response::IntoResponse;
use axum::routing::get;
use metrics_exporter_prometheus::PrometheusHandle;

use crate::human;
use crate::store::Store;
use crate::telemetry::metric;

/// How long `/readyz` and `/metrics` wait for the database before calling it unreachable. Well under the
/// usual probe timeout, so a probe gets an answer with a reason rather than a timeout.
const DATABASE_TIMEOUT: Duration = Duration::from_secs(2);

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
    });
    axum::Router::new()
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
        tracing::info!(%addr, "serving /healthz, /readyz and /metrics");
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
        return source_readiness(state, source).await;
    }
    let (mut ready, mut not_ready) = (Vec::new(), Vec::new());
    for source in sources {
        match source_readiness(state, source).await {
            Ok(detail) => ready.push(format!("{source}: {detail}")),
            Err(reason) => not_ready.push(format!("source {source}: {reason}")),
        }
    }
    if not_ready.is_empty() { Ok(ready.join("; ")) } else { Err(not_ready.join("; ")) }
}

/// One source's part of [`readiness`].
async fn source_readiness(state: &HttpState, source: &str) -> Result<String, String> {
    let store = &state.store;
    let last = within_timeout(store.last_success(source)).await.map_err(|e| format!("database error: {e}"))?;
    let Some(last) = last else {
        return Err(format!("no successful sync yet (source {source})"));
    };
    let running = within_timeout(store.oldest_running_run(source)).await.map_err(|e| format!("database error: {e}"))?;
    if let Some((run_id, mode, age)) = running
        && age > state.max_run_duration
    {
        return Err(format!(
            "{mode} run {run_id} has been running for {} (server.max_run_duration {}): it may be stuck",
            human::duration(age),
            human::duration(state.max_run_duration)
        ));
    }
    let ago = human::duration(last.age);
    let max = human::duration(state.max_staleness);
    if last.age > state.max_staleness {
        return Err(format!("last successful sync {ago} ago (max {max})"));
    }
    Ok(format!("last successful sync {ago} ago (max {max})"))
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
    fn reason_kinds_ignore_numbers() {
        assert_eq!(reason_kind("last successful sync 2h ago (max 1h)"), reason_kind("last successful sync 3h ago"));
        assert_ne!(reason_kind("no successful sync yet"), reason_kind("database unreachable: x"));
    }
}
