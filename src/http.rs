//! The small HTTP surface of `devin-etl run`: `/healthz`, `/readyz`, `/metrics`.
//! (Being implemented; see issue 3.)

use std::time::Duration;

use metrics_exporter_prometheus::PrometheusHandle;

use crate::store::Store;

/// What the endpoints need.
#[derive(Clone)]
pub struct HttpState {
    pub store: Store,
    pub source: String,
    pub max_staleness: Duration,
    pub metrics: PrometheusHandle,
}

/// The routes, for `serve` and for tests.
pub fn router(_state: HttpState) -> axum::Router {
    axum::Router::new()
}

/// Serves until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: HttpState,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(state)).with_graceful_shutdown(shutdown).await
}
