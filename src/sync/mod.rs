//! One sync run: plan the walk(s), fetch, normalize, load, move the watermark, record the run.
//!
//! This is the only module that knows both the API and the warehouse. `run_once` does one run and never
//! sleeps; scheduling belongs to the caller.

mod backfill;
pub mod clock;
mod enrich;
mod error;
mod job;
pub mod normalize;
pub mod progress;
mod reconcile;
mod walk;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::watch;
use tracing::Instrument as _;

pub use backfill::{BackfillPlan, Window, plan as backfill_plan};
pub use error::{Interrupted, RunError, RunErrorKind};
pub use job::{Job, TickOutcome};
pub use progress::{Progress, ProgressSink};
pub use walk::WalkStats;

use crate::api::{ApiClient, ListQuery};
use crate::drift::DriftTally;
use crate::settings::Settings;
use crate::store::{RunRecord, RunStatus, SourceBusy, SourceLock, Store, WriteStats};
use crate::telemetry::metric;
use walk::{OnComplete, RunClock, WalkPlan};

/// What a run does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Sessions updated since the watermark (minus lookback).
    Incremental,
    /// The whole history, window by window, resumable.
    Backfill,
    /// Recent sessions still waiting for analysis or category, re-fetched by id.
    Enrichment,
    /// The whole history re-read; sessions no longer returned are marked deleted.
    Reconcile,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Incremental => "incremental",
            Mode::Backfill => "backfill",
            Mode::Enrichment => "enrichment",
            Mode::Reconcile => "reconcile",
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
    /// Sessions a reconcile marked deleted.
    pub deleted: u64,
    pub requests: u64,
    pub retries: u64,
    pub watermark_before: Option<i64>,
    pub watermark_after: Option<i64>,
    pub duration: Duration,
}

/// What a mode's work returns to `run_once`.
#[derive(Debug, Default)]
struct Work {
    walks: WalkStats,
    deleted: u64,
}

/// Everything a run needs.
#[derive(Clone)]
pub struct Syncer {
    settings: Settings,
    api: ApiClient,
    store: Store,
    shutdown: Option<watch::Receiver<bool>>,
    /// Where the window walks report progress (a log line per window unless set).
    progress: ProgressSink,
    /// Schema drift seen in this source's items and not written yet; shared by clones (and so by concurrent walks).
    drift: Arc<DriftTally>,
}

/// Source, API endpoint and warehouse only: nothing that could hold a secret (the token, the database password).
impl std::fmt::Debug for Syncer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Syncer")
            .field("source", &self.settings.sync.source)
            .field("api", &self.api)
            .field("store", &self.store)
            .finish_non_exhaustive()
    }
}

impl Syncer {
    pub fn new(settings: Settings, api: ApiClient, store: Store) -> Syncer {
        let drift = Arc::new(DriftTally::new(&settings.sync.source));
        Syncer { settings, api, store, shutdown: None, progress: progress::log_lines(), drift }
    }

    /// Runs stop between batches once `shutdown` turns true.
    pub fn with_shutdown(mut self, shutdown: watch::Receiver<bool>) -> Syncer {
        self.shutdown = Some(shutdown);
        self
    }

    /// Window walks (backfill, reconcile) report their progress to `sink` instead of logging a line per window.
    pub fn with_progress(mut self, sink: ProgressSink) -> Syncer {
        self.progress = sink;
        self
    }

    fn progress(&self) -> ProgressSink {
        self.progress.clone()
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

    pub fn source(&self) -> &str {
        &self.settings.sync.source
    }

    pub(crate) fn drift(&self) -> &DriftTally {
        &self.drift
    }

    /// Writes the schema drift counted so far; a first sighting is warned about and counted. Never fails the run:
    /// on a failed write the counts wait for the next one.
    pub async fn record_drift(&self) {
        let entries = self.drift.take();
        if entries.is_empty() {
            return;
        }
        match self.store.record_drift(self.source(), &entries).await {
            Ok(new) => {
                for d in new {
                    metrics::counter!(metric::SCHEMA_DRIFT_NEW, "source" => self.source().to_owned(), "kind" => d.kind.as_str())
                        .increment(1);
                    let example = entries.iter().find(|(e, _)| *e == d).map(|(_, p)| p.example_session_id.as_str());
                    tracing::warn!(
                        source = self.source(),
                        path = %d.path,
                        kind = d.kind.as_str(),
                        value = %d.value,
                        example_session_id = example.unwrap_or_default(),
                        "the API sent something the models do not know (schema drift, first seen): it is loaded as \
                         usual and kept in sessions.raw; see `devin-etl drift`"
                    );
                }
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), source = self.source(), "could not record schema drift; it is retried with the next counts");
                self.drift.restore(entries);
            }
        }
    }

    fn shutdown_requested(&self) -> bool {
        self.shutdown.as_ref().is_some_and(|rx| *rx.borrow())
    }

    /// This syncer for runs under `lock`: every transaction of theirs proves the lock is still theirs.
    pub fn under(&self, lock: &SourceLock) -> Syncer {
        Syncer { store: self.store.fenced(lock.fence().clone()), ..self.clone() }
    }

    /// Takes the source's lock, fails with [`SourceBusy`] when another process holds it.
    pub async fn lock(&self) -> anyhow::Result<SourceLock> {
        match self.store.try_lock_source(self.source()).await {
            Ok(Some(lock)) => Ok(lock),
            Ok(None) => Err(SourceBusy(self.source().to_owned()).into()),
            Err(e) => {
                // No run has started to record it: say it here.
                tracing::error!(error = %format!("{e:#}"), source = self.source(), "cannot take the single-flight lock");
                Err(e)
            }
        }
    }

    /// Runs once in `mode`, records the run in `sync_runs` and logs a one-line summary. Takes the source's
    /// lock for the run unless this syncer runs [`under`](Syncer::under) one already.
    pub async fn run_once(&self, mode: Mode) -> anyhow::Result<RunOutcome> {
        self.run_once_since(mode, None).await
    }

    /// Runs `work` under the source's lock: this syncer's own when it runs [`under`](Syncer::under) one already,
    /// else one taken for `work` and released after it.
    pub async fn locked<T>(&self, work: impl AsyncFnOnce(&Syncer) -> anyhow::Result<T>) -> anyhow::Result<T> {
        if self.store.fence().is_some() {
            return work(self).await;
        }
        let lock = self.lock().await?;
        let result = work(&self.under(&lock)).await;
        lock.release().await;
        result
    }

    /// An incremental run followed by an enrichment run, under one lock ([`Job::Sync`]).
    pub async fn sync(&self, since: Option<i64>) -> anyhow::Result<(RunOutcome, RunOutcome)> {
        let mut runs = self.run_job(Job::Sync { since }).await?.into_iter();
        match (runs.next(), runs.next()) {
            (Some(incremental), Some(enrichment)) => Ok((incremental, enrichment)),
            _ => anyhow::bail!("a sync job returned fewer than its two runs"),
        }
    }

    /// As [`Syncer::run_once`]; an incremental run also re-reads everything updated after `since`.
    pub async fn run_once_since(&self, mode: Mode, since: Option<i64>) -> anyhow::Result<RunOutcome> {
        self.locked(async |syncer| syncer.run_locked(mode, since).await).await
    }

    /// Re-creates the indexes and foreign keys that a first backfill deferred and did not get to re-create (it
    /// died half-way): the data are right without them, so a failure here is a warning, not a failed run.
    async fn restore_deferred_ddl(&self) {
        match self.store.restore_deferred_ddl().await {
            Ok(0) => {}
            Ok(n) => {
                tracing::info!(objects = n, "re-created the indexes and foreign keys an unfinished backfill deferred")
            }
            Err(e) => {
                tracing::warn!(error = %format!("{e:#}"), "cannot re-create the indexes and foreign keys a backfill deferred; queries are slower until it succeeds (retried at every run)")
            }
        }
    }

    /// One run on a syncer that holds the source's lock.
    pub(super) async fn run_locked(&self, mode: Mode, since: Option<i64>) -> anyhow::Result<RunOutcome> {
        let state = self.store.clock_state(self.source()).await?;
        let watermark_before = state.watermark;
        let started = Instant::now();
        let (run_id, started_db) = self.store.start_run(self.source(), mode.as_str(), watermark_before).await?;
        let clock = RunClock {
            state,
            started_db,
            started,
            tolerance_secs: self.settings.sync.clock_tolerance.as_secs() as i64,
            probe: None,
        };
        let span = tracing::info_span!("run", run_id, mode = mode.as_str(), source = self.source());
        let stats_before = self.api_counts();
        let result = async {
            if mode != Mode::Backfill {
                self.restore_deferred_ddl().await;
            }
            match mode {
                Mode::Incremental => self.incremental(clock, since).await.map(Work::from),
                Mode::Backfill => backfill::run(self, clock).await.map(Work::from),
                Mode::Enrichment => enrich::run(self, watermark_before).await.map(Work::from),
                Mode::Reconcile => reconcile::run(self, run_id).await,
            }
        }
        .instrument(span)
        .await;
        self.record_drift().await;
        let (requests, retries) = self.api_counts();
        let mut record = RunRecord {
            requests: requests - stats_before.0,
            retries: retries - stats_before.1,
            ..RunRecord::default()
        };
        let elapsed = started.elapsed();
        metrics::histogram!(metric::RUN_DURATION, "source" => self.source().to_owned(), "mode" => mode.as_str())
            .record(elapsed.as_secs_f64());
        match result {
            Ok(work) => {
                let stats = work.walks;
                let watermark_after = self.store.watermark(self.source()).await?;
                record.pages = stats.pages;
                record.writes = stats.writes.clone();
                if work.deleted > 0 {
                    record.writes.rows.insert("sessions_deleted", work.deleted);
                }
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
                    deleted: work.deleted,
                    requests: record.requests,
                    retries: record.retries,
                    watermark_before,
                    watermark_after,
                    duration: elapsed,
                };
                record_metrics(self.source(), &outcome, "succeeded");
                log_summary(&outcome);
                Ok(outcome)
            }
            Err(error) => {
                let kind = RunErrorKind::of(&error);
                record.error = Some(format!("{error:#}"));
                record.error_kind = Some(kind.as_str());
                record.watermark_after = watermark_before;
                if let Err(e) = self.store.finish_run(run_id, kind.run_status(), &record).await {
                    tracing::warn!(error = %e, "could not record the end of the run");
                }
                let status = kind.status_label();
                if kind == RunErrorKind::MassDeleteRefused {
                    metrics::counter!(metric::RECONCILE_REFUSED, "source" => self.source().to_owned()).increment(1);
                }
                if kind.is_fenced() {
                    metrics::counter!(metric::RUNS_FENCED, "source" => self.source().to_owned()).increment(1);
                }
                metrics::counter!(metric::RUNS, "source" => self.source().to_owned(), "mode" => mode.as_str(), "status" => status)
                    .increment(1);
                if kind == RunErrorKind::Interrupted {
                    tracing::warn!(run_id, mode = mode.as_str(), "sync run stopped by shutdown; the watermark stays");
                } else {
                    tracing::error!(run_id, mode = mode.as_str(), error = %format!("{error:#}"), kind = ?kind, "sync run failed; the watermark stays");
                }
                // The classification travels with the error: callers read it with `RunErrorKind::of`.
                Err(RunError::new(kind, error.context(format!("{} run {run_id} {status}", mode.as_str()))).into())
            }
        }
    }

    fn api_counts(&self) -> (u64, u64) {
        let s = self.api.stats();
        (s.requests.load(Ordering::Relaxed), s.retries.load(Ordering::Relaxed))
    }

    /// Walks everything updated since the watermark minus lookback (everything, when no watermark yet).
    async fn incremental(&self, mut clock: RunClock, since: Option<i64>) -> anyhow::Result<WalkStats> {
        let watermark = clock.state.watermark;
        if clock.state.offset.is_none() {
            // Nothing known of the API's clock yet: a second opinion on it, so that one response cannot set it.
            clock.probe = backfill::server_probe(self).await?;
        }
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
        let plan = WalkPlan {
            query: ListQuery { first: self.settings.api.page_size, updated_after, ..ListQuery::default() },
            on_complete: OnComplete::Watermark {
                source: self.source().to_owned(),
                settle_secs: self.settings.sync.settle.as_secs() as i64,
                clock,
            },
            reconcile_run: None,
        };
        walk::walk(self, plan).await.context("incremental walk")
    }
}

impl From<WalkStats> for Work {
    fn from(walks: WalkStats) -> Work {
        Work { walks, deleted: 0 }
    }
}

fn record_metrics(source: &str, o: &RunOutcome, status: &'static str) {
    let mode = o.mode.as_str();
    let source = || source.to_owned();
    metrics::counter!(metric::RUNS, "source" => source(), "mode" => mode, "status" => status).increment(1);
    metrics::counter!(metric::PAGES, "source" => source(), "mode" => mode).increment(o.pages);
    metrics::counter!(metric::SESSIONS_READ, "source" => source(), "mode" => mode).increment(o.items);
    metrics::counter!(metric::SESSIONS_UPSERTED, "source" => source(), "mode" => mode)
        .increment(o.writes.sessions_written);
    for (table, n) in &o.writes.rows {
        metrics::counter!(metric::ROWS_WRITTEN, "source" => source(), "table" => *table).increment(*n);
    }
    let now = chrono::Utc::now().timestamp() as f64;
    metrics::gauge!(metric::LAST_SUCCESS, "source" => source(), "mode" => mode).set(now);
    if let Some(w) = o.watermark_after {
        metrics::gauge!(metric::WATERMARK_LAG, "source" => source()).set(now - w as f64);
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
        sessions_deleted = o.deleted,
        rows_written = o.writes.total_rows(),
        requests = o.requests,
        retries = o.retries,
        watermark = o.watermark_after,
        duration_ms = o.duration.as_millis() as u64,
        "{} run succeeded: {} pages, {} sessions read, {} written{}; rows {}",
        o.mode.as_str(),
        o.pages,
        o.items,
        o.writes.sessions_written,
        if o.deleted > 0 { format!(", {} marked deleted", o.deleted) } else { String::new() },
        if rows.is_empty() { "none".to_owned() } else { rows.join(" ") },
    );
}
