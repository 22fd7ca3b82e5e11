//! `devin-etl run`: the service — the HTTP endpoints (the status page, `/healthz`, `/readyz`, `/metrics`; none with
//! `server.listen = "off"`) and the scheduler, until SIGTERM/SIGINT.

use anyhow::Context as _;

use crate::settings::Settings;
use crate::{app, telemetry};

/// `devin-etl run`: the HTTP endpoints and the scheduler of every source (and the history's pruning, with
/// `history.retention`), until SIGTERM/SIGINT.
pub async fn run(settings: Settings, backfill: bool) -> anyhow::Result<()> {
    let metrics = telemetry::install_metrics()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::schedule::forward_signals(stop));
    let listen = settings.server.listen;
    let max_staleness = settings.server.max_staleness;
    let max_run_duration = settings.server.max_run_duration;
    let syncers: Vec<_> = app::syncers(settings.per_source())
        .await?
        .into_iter()
        .map(|s| s.with_shutdown(stopped.clone()).with_progress(super::progress_bar::for_stderr()))
        .collect();
    let sources: Vec<String> = syncers.iter().map(|s| s.source().to_owned()).collect();
    telemetry::announce_sources(&sources);
    let listener = match listen {
        Some(listen) => Some(
            tokio::net::TcpListener::bind(listen)
                .await
                .with_context(|| format!("server.listen: cannot listen on {listen}"))?,
        ),
        None => None,
    };
    // A pool of its own, so a busy backfill cannot make /readyz time out waiting for a connection.
    let http_store = app::http_store(&settings).await?;
    let state_store = http_store.clone();
    let http = match listener {
        Some(listener) => {
            let state = crate::http::HttpState {
                store: http_store,
                source: sources.first().cloned().unwrap_or_default(),
                max_staleness,
                max_run_duration,
                metrics,
                page: crate::http::StatusPage::of(&settings.per_source()),
            };
            let mut http_stop = stopped.clone();
            Some(tokio::spawn(crate::http::serve_sources(listener, state, sources, async move {
                let _ = http_stop.wait_for(|stop| *stop).await;
            })))
        }
        None => {
            tracing::info!("server.listen is \"off\": no status page, /healthz, /readyz or /metrics (nothing listens)");
            None
        }
    };
    // On the HTTP endpoints' small pool: its statements are brief, and a busy sync pool cannot delay them.
    match crate::alerts::Alerter::new(&settings.per_source(), state_store.clone())? {
        Some(alerter) => drop(tokio::spawn(alerter.run(stopped.clone()))),
        None => tracing::info!("alerts are off: no alerts.webhook_url (DEVIN_ETL__ALERTS__WEBHOOK_URL) configured"),
    }
    if let (Some(retention), Some(syncer)) = (settings.history.retention, syncers.first()) {
        let store = syncer.store().clone();
        let schedule = settings.sync.reconcile_schedule.clone();
        tokio::spawn(crate::retention::run(store, retention, schedule, stopped.clone()));
    }
    let result = crate::schedule::run_sources(syncers, backfill, stopped).await;
    if let Some(http) = http {
        match http.await {
            Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server stopped with an error"),
            Err(e) => tracing::warn!(error = %e, "the HTTP server task failed"),
            Ok(Ok(())) => {}
        }
    }
    result
}
