//! `devin-etl run`: the service — the HTTP endpoints and the scheduler, until SIGTERM/SIGINT.

use anyhow::Context as _;

use crate::settings::Settings;
use crate::{app, telemetry};

/// `devin-etl run`: the HTTP endpoints and the scheduler, until SIGTERM/SIGINT.
pub async fn run(settings: Settings, backfill: bool) -> anyhow::Result<()> {
    let metrics = telemetry::install_metrics()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::schedule::forward_signals(stop));
    let listen = settings.server.listen;
    let max_staleness = settings.server.max_staleness;
    let max_run_duration = settings.server.max_run_duration;
    let syncer =
        app::syncer(settings).await?.with_shutdown(stopped.clone()).with_progress(super::progress_bar::for_stderr());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("server.listen: cannot listen on {listen}"))?;
    // A pool of its own, so a busy backfill cannot make /readyz time out waiting for a connection.
    let http_store = app::small_store(syncer.settings()).await?;
    let state = crate::http::HttpState {
        store: http_store,
        source: syncer.source().to_owned(),
        max_staleness,
        max_run_duration,
        metrics,
    };
    let mut http_stop = stopped.clone();
    let http = tokio::spawn(crate::http::serve(listener, state, async move {
        let _ = http_stop.wait_for(|stop| *stop).await;
    }));
    let result = crate::schedule::run_daemon(syncer, backfill, stopped).await;
    match http.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "the HTTP server task failed"),
        Ok(Ok(())) => {}
    }
    result
}
