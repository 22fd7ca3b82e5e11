//! One sync run: plan the walk(s), fetch, normalize, load, move the watermark, record the run.
//!
//! This is the only module that knows both the API and the warehouse. `run_once` does one run and never
//! sleeps; scheduling belongs to the caller.

mod backfill;
pub mod normalize;
mod walk;

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tracing::Instrument as _;

pub use walk::WalkStats;

use crate::api::{ApiClient, ListQuery};
use crate::config::Settings;
use crate::store::{RunRecord, RunStatus, Store, WriteStats};
use walk::OnComplete;

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sessions updated since the watermark (minus lookback).
    Incremental,
    /// The whole history, window by window, resumable.
    Backfill,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Incremental => "incremental",
            Mode::Backfill => "backfill",
        }
    }
}

/// What a finished run did.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    pub run_id: i64,
    pub mode: Mode,
    pub pages: u64,
    /// Items read from the API (repeats included).
    pub items: u64,
    pub writes: WriteStats,
    pub requests: u64,
    pub retries: u64,
    pub watermark_before: Option<i64>,
    pub watermark_after: Option<i64>,
    pub duration: Duration,
}

/// Everything a run needs.
#[derive(Debug, Clone)]
pub struct Syncer {
    settings: Settings,
    api: ApiClient,
    store: Store,
}

impl Syncer {
    pub fn new(settings: Settings, api: ApiClient, store: Store) -> Syncer {
        Syncer { settings, api, store }
    }

    pub fn store(&self) -> &Store {
        &self.store
    }

    pub fn api(&self) -> &ApiClient {
        &self.api
    }

    pub fn settings(&self) -> &Settings {
        &self.settings
    }

    fn source(&self) -> &str {
        &self.settings.sync.source
    }

    /// Runs once in `mode`, records the run in `sync_runs` and logs a one-line summary.
    pub async fn run_once(&self, mode: Mode) -> anyhow::Result<RunOutcome> {
        self.run_once_since(mode, None).await
    }

    /// As [`Syncer::run_once`]; an incremental run also re-reads everything updated after `since`.
    pub async fn run_once_since(&self, mode: Mode, since: Option<i64>) -> anyhow::Result<RunOutcome> {
        let started = Instant::now();
        let watermark_before = self.store.watermark(self.source()).await?;
        let run_id = self.store.start_run(self.source(), mode.as_str(), watermark_before).await?;
        let span = tracing::info_span!("run", run_id, mode = mode.as_str(), source = self.source());
        let stats_before = self.api_counts();
        let result = async {
            match mode {
                Mode::Incremental => self.incremental(watermark_before, since).await,
                Mode::Backfill => backfill::run(self).await,
            }
        }
        .instrument(span)
        .await;
        let (requests, retries) = self.api_counts();
        let mut record = RunRecord {
            requests: requests - stats_before.0,
            retries: retries - stats_before.1,
            ..RunRecord::default()
        };
        match result {
            Ok(stats) => {
                let watermark_after = self.store.watermark(self.source()).await?;
                record.pages = stats.pages;
                record.writes = stats.writes.clone();
                record.watermark_after = watermark_after;
                self.store.finish_run(run_id, RunStatus::Succeeded, &record).await?;
                tracing::debug!(
                    waiting_ms = stats.waiting.as_millis() as u64,
                    normalizing_ms = stats.normalizing.as_millis() as u64,
                    writing_ms = stats.writing.as_millis() as u64,
                    "where the walks' time went (summed over concurrent walks)"
                );
                let outcome = RunOutcome {
                    run_id,
                    mode,
                    pages: stats.pages,
                    items: stats.items,
                    writes: stats.writes,
                    requests: record.requests,
                    retries: record.retries,
                    watermark_before,
                    watermark_after,
                    duration: started.elapsed(),
                };
                log_summary(&outcome);
                Ok(outcome)
            }
            Err(error) => {
                record.error = Some(format!("{error:#}"));
                record.watermark_after = watermark_before;
                if let Err(e) = self.store.finish_run(run_id, RunStatus::Failed, &record).await {
                    tracing::warn!(error = %e, "could not record the failed run");
                }
                tracing::error!(run_id, mode = mode.as_str(), error = %format!("{error:#}"), "sync run failed; the watermark stays");
                Err(error.context(format!("{} run {run_id} failed", mode.as_str())))
            }
        }
    }

    fn api_counts(&self) -> (u64, u64) {
        let s = self.api.stats();
        (s.requests.load(Ordering::Relaxed), s.retries.load(Ordering::Relaxed))
    }

    /// Walks everything updated since the watermark minus lookback (everything, when no watermark yet).
    async fn incremental(&self, watermark: Option<i64>, since: Option<i64>) -> anyhow::Result<WalkStats> {
        let lookback = self.settings.sync.lookback.as_secs() as i64;
        // Reading from earlier than the watermark is harmless; from later would leave a gap behind it.
        let updated_after = match (watermark.map(|w| w - lookback), since) {
            (Some(w), Some(s)) => Some(w.min(s)),
            (Some(w), None) => Some(w),
            (None, _) => None,
        };
        if updated_after.is_none() {
            tracing::info!(
                "no watermark yet: this run reads the whole history (for a large one, `sync --backfill` is faster)"
            );
        }
        let query = ListQuery { first: self.settings.api.page_size, updated_after, ..ListQuery::default() };
        let on_complete = OnComplete::Watermark {
            source: self.source().to_owned(),
            settle_secs: self.settings.sync.settle.as_secs() as i64,
        };
        walk::walk(&self.api, &self.store, query, on_complete).await.context("incremental walk")
    }
}

fn log_summary(o: &RunOutcome) {
    let rows: Vec<String> = o.writes.rows.iter().map(|(t, n)| format!("{t}={n}")).collect();
    tracing::info!(
        run_id = o.run_id,
        mode = o.mode.as_str(),
        pages = o.pages,
        items = o.items,
        sessions_written = o.writes.sessions_written,
        rows_written = o.writes.total_rows(),
        requests = o.requests,
        retries = o.retries,
        watermark = o.watermark_after,
        duration_ms = o.duration.as_millis() as u64,
        "sync run succeeded: {} pages, {} sessions read, {} written; rows {}",
        o.pages,
        o.items,
        o.writes.sessions_written,
        if rows.is_empty() { "none".to_owned() } else { rows.join(" ") },
    );
}
