//! One walk: every page of one query, fetched ahead while earlier pages are written.
//!
//! The fetcher runs as its own task and hands pages over a bounded channel, so at most a few pages are in
//! memory however long the walk. The writer merges pages that are already waiting into one batch (fewer,
//! larger transactions) and commits the walk's checkpoint only with the walk's last page. Between batches
//! it stops early when shutdown is requested: a batch is always committed or rolled back whole.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;
use tracing::Instrument as _;

use super::normalize::{self, DecodedItem};
use super::{Interrupted, Syncer, clock};
use crate::api::{ApiClient, ListQuery, Page};
use crate::drift::DriftTally;
use crate::store::{Batch, Checkpoint, WriteStats};
use crate::telemetry::metric;

/// Pages fetched ahead of the writer.
const PIPELINE_DEPTH: usize = 2;
/// A batch takes waiting pages until it holds this much JSON: bounded by bytes rather than sessions, so memory
/// stays flat whatever the window or history size (a batch exists as items, columns and COPY text at once).
const MAX_BATCH_BYTES: usize = 1024 * 1024;
/// Consecutive empty pages that still claim `has_next_page` before the walk is called broken.
const MAX_EMPTY_PAGES: u32 = 50;

/// What to commit with the walk's last page.
#[derive(Debug, Clone)]
pub enum OnComplete {
    /// Move the source's watermark to the server time of the walk's first response minus `settle_secs`, within
    /// what `clock` allows.
    Watermark { source: String, settle_secs: i64, clock: RunClock },
    /// Record the backfill window as done.
    Window { source: String, created_after: i64, created_before: i64 },
    /// This checkpoint (an enrichment batch's backoff).
    Checkpoint(Checkpoint),
    /// Nothing (reconcile windows, enrichment batches of young sessions only).
    Nothing,
}

/// How one walk runs.
#[derive(Debug, Clone)]
pub struct WalkPlan {
    pub query: ListQuery,
    pub on_complete: OnComplete,
    /// A reconcile run: record every session seen under this run id.
    pub reconcile_run: Option<i64>,
}

/// What a run knows to bound its watermark (see `clock.rs`).
#[derive(Debug, Clone)]
pub struct RunClock {
    /// The watermark and the API clock as known when the run started.
    pub state: clock::ClockState,
    /// The run's start, on the database's clock (Unix seconds) and on ours (monotonic).
    pub started_db: f64,
    pub started: Instant,
    pub tolerance_secs: i64,
    /// The server time of a probe made before the walk (with its request), when the run made one: a single-page
    /// walk must not set the first watermark on one response alone.
    pub probe: Option<(i64, String)>,
}

impl RunClock {
    /// Database time at local instant `at` (the database's start reading plus monotonic time since).
    pub fn db_time_at(&self, at: Instant) -> f64 {
        self.started_db + at.saturating_duration_since(self.started).as_secs_f64()
    }
}

/// What a walk did.
#[derive(Debug, Clone, Default)]
pub struct WalkStats {
    pub pages: u64,
    pub items: u64,
    pub duplicates: u64,
    /// Items outside the requested filter (the server ignored it).
    pub off_filter: u64,
    pub writes: WriteStats,
    /// Server time (HTTP `Date`) of the first response.
    pub server_time: Option<i64>,
    /// The smallest server time of any response, with its request: one response with a clock far ahead cannot
    /// carry the watermark past what the others say.
    pub min_server_time: Option<(i64, String)>,
    /// When the first response arrived.
    pub first_response_at: Option<Instant>,
    pub max_updated_at: Option<i64>,
    /// The watermark committed with the last page, if any.
    pub watermark: Option<i64>,
    /// Where the walk's time went: waiting for pages, decoding and staging, writing.
    pub waiting: Duration,
    pub normalizing: Duration,
    pub writing: Duration,
}

impl WalkStats {
    /// Adds another walk's counts (windows of a backfill, batches of an enrichment).
    pub fn absorb(&mut self, w: &WalkStats) {
        self.pages += w.pages;
        self.items += w.items;
        self.duplicates += w.duplicates;
        self.off_filter += w.off_filter;
        self.writes.add(&w.writes);
        self.server_time = self.server_time.or(w.server_time);
        keep_earliest(&mut self.min_server_time, w.min_server_time.as_ref());
        self.first_response_at = match (self.first_response_at, w.first_response_at) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        self.max_updated_at = self.max_updated_at.max(w.max_updated_at);
        self.waiting += w.waiting;
        self.normalizing += w.normalizing;
        self.writing += w.writing;
    }
}

/// Walks `plan.query` from its first page to its last, writing as it goes.
pub async fn walk(syncer: &Syncer, plan: WalkPlan) -> anyhow::Result<WalkStats> {
    let (sender, mut receiver) = mpsc::channel(PIPELINE_DEPTH);
    let fetcher = AbortOnDrop(tokio::spawn(fetch_pages(syncer.api().clone(), plan.query.clone(), sender)));
    let mut stats = WalkStats::default();
    let mut finished = false;
    let mut clock = Instant::now();
    while let Some(first) = receiver.recv().await {
        stats.waiting += lap(&mut clock);
        let mut pending_error = None;
        let mut items = Vec::new();
        let mut observed_at = None;
        let mut last = take_page(first?, &plan.query, syncer.drift(), &mut stats, &mut items, &mut observed_at)?;
        // Merge pages that are already waiting; a batch commits them together.
        while !last && items.iter().map(|i| i.raw.len()).sum::<usize>() < MAX_BATCH_BYTES {
            match receiver.try_recv() {
                Ok(Ok(page)) => {
                    last = take_page(page, &plan.query, syncer.drift(), &mut stats, &mut items, &mut observed_at)?
                }
                Ok(Err(e)) => {
                    pending_error = Some(e);
                    break;
                }
                Err(_) => break,
            }
        }
        stats.duplicates += normalize::dedupe(&mut items) as u64;
        let mut batch = Batch::new();
        batch.observed_at = observed_at;
        for item in &items {
            normalize::stage(&mut batch, syncer.source(), item);
        }
        let mut checkpoints = if last { completion(&plan.on_complete, &mut stats) } else { Vec::new() };
        if let Some(run_id) = plan.reconcile_run {
            let session_ids = items.iter().map(|i| i.session.session_id.clone()).collect();
            checkpoints.push(Checkpoint::Seen { run_id, session_ids });
        }
        drop(items); // staged: the batch holds what is written
        stats.normalizing += lap(&mut clock);
        // The write is a task of its own so that cancelling this walk (another backfill window failed, the
        // shutdown grace ran out) never drops a transaction half-way: a COPY dropped mid-stream leaves its pooled
        // connection out of step with the server, and the next query on it fails with a protocol error.
        let store = syncer.store().clone();
        let source = syncer.source().to_owned();
        // One span per written batch (a page, or the pages that were waiting), under the run's span.
        let span = tracing::info_span!("page", page = stats.pages, sessions = batch.sessions(), last);
        let written =
            tokio::spawn(async move { store.write_batch(&source, &batch, &checkpoints).await }.instrument(span))
                .await
                .map_err(|e| anyhow::anyhow!("the write task failed: {e}"))
                .and_then(|written| written.map_err(anyhow::Error::from))
                .with_context(|| format!("writing page {} of the walk to the warehouse", stats.pages))?;
        stats.writing += lap(&mut clock);
        stats.writes.add(&written);
        if syncer.drift().is_due() {
            syncer.record_drift().await;
        }
        if let Some(e) = pending_error {
            return Err(e);
        }
        if last {
            finished = true;
            break;
        }
        if syncer.shutdown_requested() {
            return Err(Interrupted.into());
        }
    }
    drop(fetcher);
    if !finished {
        anyhow::bail!("the walk ended before its last page (the page fetcher stopped unexpectedly)");
    }
    Ok(stats)
}

/// Time since `clock`, resetting it.
fn lap(clock: &mut Instant) -> Duration {
    let now = Instant::now();
    let elapsed = now - *clock;
    *clock = now;
    elapsed
}

/// Decodes a page into `items`, keeping in `observed_at` the earliest server time of the batch's pages; returns
/// whether it was the walk's last.
fn take_page(
    page: Page,
    query: &ListQuery,
    drift: &DriftTally,
    stats: &mut WalkStats,
    items: &mut Vec<DecodedItem>,
    observed_at: &mut Option<i64>,
) -> anyhow::Result<bool> {
    *observed_at = match (*observed_at, page.server_time) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    stats.pages += 1;
    if stats.pages == 1 {
        stats.server_time = page.server_time;
        stats.first_response_at = Some(page.received_at);
    }
    if let Some(t) = page.server_time {
        keep_earlier(&mut stats.min_server_time, t, &page.request);
    }
    let last = !page.has_next_page;
    let decoded = normalize::decode_page(page.items, &page.request)?;
    stats.items += decoded.len() as u64;
    let mut off_filter = 0;
    for mut item in decoded {
        drift.add(&item.session.session_id, std::mem::take(&mut item.drift));
        stats.max_updated_at = stats.max_updated_at.max(Some(item.session.updated_at));
        if !matches_filter(query, &item) {
            off_filter += 1;
            // An item we did not ask for by id is dropped: enrichment must not turn into a full walk per batch.
            if !query.session_ids.is_empty() {
                continue;
            }
        }
        items.push(item);
    }
    if off_filter > 0 {
        if stats.off_filter == 0 {
            tracing::warn!(
                request = %page.request,
                off_filter,
                "the API returned items outside the requested filter (it seems to ignore it); they are checked and loaded \
                 like any other (by id: dropped), but the walk reads more than it should"
            );
        }
        stats.off_filter += off_filter;
    }
    Ok(last)
}

/// Whether an item satisfies the query's filters, reading the bounds leniently (`>=`/`<=`): the API does not
/// document whether they are inclusive.
fn matches_filter(query: &ListQuery, item: &DecodedItem) -> bool {
    let s = &item.session;
    query.updated_after.is_none_or(|t| s.updated_at >= t)
        && query.updated_before.is_none_or(|t| s.updated_at <= t)
        && query.created_after.is_none_or(|t| s.created_at >= t)
        && query.created_before.is_none_or(|t| s.created_at <= t)
        && (query.session_ids.is_empty() || query.session_ids.contains(&s.session_id))
}

fn completion(on_complete: &OnComplete, stats: &mut WalkStats) -> Vec<Checkpoint> {
    match on_complete {
        OnComplete::Watermark { source, settle_secs, clock } => {
            let observed_at = clock.db_time_at(stats.first_response_at.unwrap_or(clock.started));
            let update = decide_watermark(source, stats, *settle_secs, clock, observed_at);
            stats.watermark = update.as_ref().map(|u| u.value);
            update.map(|update| Checkpoint::Watermark { source: source.clone(), update }).into_iter().collect()
        }
        OnComplete::Window { source, created_after, created_before } => vec![Checkpoint::WindowDone {
            source: source.clone(),
            created_after: *created_after,
            created_before: *created_before,
            sessions: stats.items as i64,
        }],
        OnComplete::Checkpoint(checkpoint) => vec![checkpoint.clone()],
        OnComplete::Nothing => Vec::new(),
    }
}

/// The watermark a complete walk commits: the smallest server time of its responses minus settle (the largest
/// `updated_at` seen without a `Date` header), within what elapsed time allows. Logs and counts an anomaly.
pub fn decide_watermark(
    source: &str,
    stats: &WalkStats,
    settle_secs: i64,
    clock: &RunClock,
    observed_at: f64,
) -> Option<clock::WatermarkUpdate> {
    let mut min_server_time = stats.min_server_time.clone();
    keep_earliest(&mut min_server_time, clock.probe.as_ref());
    let (candidate, basis, request) = match (min_server_time, stats.max_updated_at) {
        (Some((server, request)), _) => (server, clock::Basis::ServerClock, request),
        (None, Some(max_seen)) => {
            tracing::warn!(
                max_seen,
                "the API sent no Date header; the watermark falls back to the largest updated_at seen"
            );
            (max_seen, clock::Basis::LargestUpdatedAt, String::new())
        }
        (None, None) => {
            tracing::warn!("the API sent no Date header and no items; the watermark stays");
            return None;
        }
    };
    let seen = clock::Observation { server: candidate, basis, at: observed_at };
    let update = clock::decide(seen, &clock.state, settle_secs, clock.tolerance_secs);
    if let Some(anomaly) = &update.anomaly {
        tracing::warn!(source, request = %request, candidate, watermark = update.value, "clock anomaly: {anomaly}");
        metrics::counter!(metric::CLOCK_ANOMALIES, "source" => source.to_owned()).increment(1);
    }
    Some(update)
}

/// Keeps in `earliest` the earlier of it and `candidate`: a server time (HTTP `Date`) with its request.
pub fn keep_earliest(earliest: &mut Option<(i64, String)>, candidate: Option<&(i64, String)>) {
    if let Some((time, request)) = candidate {
        keep_earlier(earliest, *time, request);
    }
}

/// As [`keep_earliest`], copying `request` only when `time` is the earlier.
fn keep_earlier(earliest: &mut Option<(i64, String)>, time: i64, request: &str) {
    if earliest.as_ref().is_none_or(|(t, _)| time < *t) {
        *earliest = Some((time, request.to_owned()));
    }
}

/// Fetches pages in order until the last, sending each (or the error that stopped the walk).
async fn fetch_pages(api: ApiClient, mut query: ListQuery, sender: mpsc::Sender<anyhow::Result<Page>>) {
    let mut empty_in_a_row = 0;
    let mut cursors_seen = HashSet::new();
    let mut pages_seen = HashSet::new();
    let mut warned_empty = false;
    loop {
        let page = match api.list_page(&query).await {
            Ok(page) => page,
            Err(e) => {
                let _ = sender.send(Err(e.into())).await;
                return;
            }
        };
        let more = page.has_next_page;
        let next = page.end_cursor.clone();
        empty_in_a_row = if page.items.is_empty() { empty_in_a_row + 1 } else { 0 };
        // A full last page that still carries a cursor: a last page that happens to be full, or a server that cut
        // the walk short. (A fetch by id cannot have more than it asked for.)
        if !more && next.is_some() && page.items.len() >= query.first as usize && query.session_ids.is_empty() {
            tracing::warn!(
                request = %page.request,
                items = page.items.len(),
                end_cursor = next.as_deref(),
                "the API marked a full page with a cursor as the last (has_next_page: false); the walk ends here, and \
                 sessions after it, if any, are missed until a later run or reconcile reads them"
            );
        }
        if more && page.items.is_empty() && !warned_empty {
            warned_empty = true;
            tracing::warn!(request = %page.request, "the API returned an empty page that claims more follow");
        }
        // A cursor seen before means the walk would go round in circles (the simplest case: the same cursor back).
        let broken = if more && next.as_ref().is_some_and(|c| !cursors_seen.insert(c.clone())) {
            Some(format!(
                "GET {} returned a cursor this walk has already followed, so it would never end",
                page.request
            ))
        } else if more && !page.items.is_empty() && !pages_seen.insert(fingerprint(&page.items)) {
            // A cursor that changes but does not move: the same items again under a new cursor.
            Some(format!(
                "GET {} returned the same items as an earlier page of this walk (its cursor changes but does not \
                 advance), so it would never end",
                page.request
            ))
        } else if more && empty_in_a_row >= MAX_EMPTY_PAGES {
            Some(format!("GET {}: {MAX_EMPTY_PAGES} empty pages in a row that claim more follow", page.request))
        } else {
            None
        };
        if sender.send(Ok(page)).await.is_err() {
            return; // the writer stopped; it reports why
        }
        if let Some(problem) = broken {
            tracing::warn!("{problem}");
            let _ = sender.send(Err(anyhow::anyhow!("{problem}; stopping the walk (the watermark stays)"))).await;
            return;
        }
        if !more {
            return;
        }
        query.after = next;
    }
}

/// A hash of a page's items, to recognise a page served again.
fn fingerprint(items: &[Box<serde_json::value::RawValue>]) -> u64 {
    use std::hash::{Hash as _, Hasher as _};
    let mut hasher = std::collections::hash_map::DefaultHasher::new();
    for item in items {
        item.get().hash(&mut hasher);
    }
    hasher.finish()
}

/// Stops the fetcher when the walk ends early (an error) so it does not keep requesting pages.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
