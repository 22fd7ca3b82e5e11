//! Webhook alerts without a monitoring stack (`[alerts]`, off without `alerts.webhook_url`).
//!
//! Every pass evaluates the conditions of each source ([`evaluate`]) — failing runs, staleness, the reconcile's
//! mass-delete guard, new schema drift — into incidents in the table `alerts` (raised once across replicas by its
//! unique indexes), then delivers what is pending ([`deliver`]). The daemon runs [`Alerter::run`] in a task of its
//! own, so alerting never blocks, delays or fails a sync; `sync` runs one bounded pass after its runs
//! ([`Alerter::pass_within`]).

mod deliver;
mod evaluate;
mod payload;

use std::time::{Duration, Instant};

use tokio::sync::watch;

pub use deliver::{Delivery, Webhook, backoff};
pub use evaluate::{Evaluation, Thresholds, Verdict};
pub use payload::{REDACTED, Scrubber, State};

use crate::settings::{AlertSettings, Settings};
use crate::store::Store;

/// Evaluates and delivers the alerts of a set of sources.
#[derive(Debug, Clone)]
pub struct Alerter {
    store: Store,
    webhook: Webhook,
    settings: AlertSettings,
    sources: Vec<String>,
    max_staleness: Duration,
    scrubber: Scrubber,
    started: Instant,
}

impl Alerter {
    /// The alerter of the sources `sources` (from [`Settings::per_source`]; the alert settings are global) over
    /// `store`; `None` when no webhook URL is configured (alerts off).
    pub fn new(sources: &[Settings], store: Store) -> anyhow::Result<Option<Alerter>> {
        let Some(first) = sources.first() else {
            return Ok(None);
        };
        let settings = first.alerts.clone();
        let Some(url) = settings.webhook_url.clone() else {
            return Ok(None);
        };
        Ok(Some(Alerter {
            store,
            webhook: Webhook::new(url, settings.timeout)?,
            sources: sources.iter().map(|s| s.sync.source.clone()).collect(),
            max_staleness: first.server.max_staleness,
            scrubber: Scrubber::of_config(sources),
            started: Instant::now(),
            settings,
        }))
    }

    /// Evaluates every condition of every source once.
    pub async fn evaluate(&self) -> anyhow::Result<Evaluation> {
        let thresholds = Thresholds {
            failing_runs: self.settings.failing_runs,
            max_staleness: self.max_staleness,
            running_for: self.started.elapsed(),
        };
        evaluate::evaluate(&self.store, &self.sources, &thresholds, &self.scrubber).await
    }

    /// Delivers the pending alerts that are due, until none is left or one fails.
    pub async fn deliver(&self) -> anyhow::Result<Delivery> {
        deliver::deliver(&self.store, &self.webhook, &self.settings, &self.scrubber).await
    }

    /// One evaluation, then one delivery pass; errors are logged (the next pass retries).
    pub async fn pass(&self) {
        if let Err(e) = self.evaluate().await {
            tracing::warn!(error = %format!("{e:#}"), "alerts: evaluating the conditions failed; retrying next pass");
        }
        if let Err(e) = self.deliver().await {
            tracing::warn!(error = %format!("{e:#}"), "alerts: delivering failed; retrying next pass");
        }
    }

    /// [`Alerter::pass`], given up after `bound` (what it did not send stays pending for the next pass).
    pub async fn pass_within(&self, bound: Duration) {
        if tokio::time::timeout(bound, self.pass()).await.is_err() {
            tracing::warn!(
                bound = %crate::human::duration(bound),
                "alerts: the pass did not finish in time; what is pending is sent by the next sync or the daemon"
            );
        }
    }

    /// A pass every `alerts.check_interval` until `shutdown` turns true; a pass in flight is dropped then (an
    /// alert it had claimed is retried once its lease expires).
    pub async fn run(self, mut shutdown: watch::Receiver<bool>) {
        tracing::info!(
            sources = self.sources.len(),
            every = %crate::human::duration(self.settings.check_interval),
            "alerts: webhook notifications are on"
        );
        loop {
            tokio::select! {
                () = self.pass() => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
            tokio::select! {
                () = tokio::time::sleep(self.settings.check_interval) => {}
                _ = shutdown.wait_for(|stop| *stop) => break,
            }
        }
        tracing::debug!("alerts: stopped");
    }

    /// How long `sync` gives its pass: one evaluation and a delivery attempt or two.
    pub fn sync_bound(&self) -> Duration {
        self.settings.timeout * 2 + Duration::from_secs(5)
    }
}
