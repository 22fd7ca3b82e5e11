//! One walk: every page of one query, fetched ahead while earlier pages are written.
//!
//! The fetcher runs as its own task and hands pages over a bounded channel, so at most a few pages are in
//! memory however long the walk. The writer merges pages that are already waiting into one batch (fewer,
//! larger transactions) and commits the walk's checkpoint only with the walk's last page.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::sync::mpsc;

use super::normalize::{self, DecodedItem};
use crate::api::{ApiClient, ListQuery, Page};
use crate::store::{Batch, Checkpoint, Store, WriteStats};

/// Pages fetched ahead of the writer.
const PIPELINE_DEPTH: usize = 4;
/// A batch takes waiting pages until it holds this many sessions.
const MAX_BATCH_SESSIONS: usize = 2_000;
/// Consecutive empty pages that still claim `has_next_page` before the walk is called broken.
const MAX_EMPTY_PAGES: u32 = 50;

/// What to commit with the walk's last page.
#[derive(Debug, Clone)]
pub enum OnComplete {
    /// Move the source's watermark to the server time of the walk's first response minus `settle_secs`.
    Watermark { source: String, settle_secs: i64 },
    /// Record the backfill window as done.
    Window { source: String, created_after: i64, created_before: i64 },
}

/// What a walk did.
#[derive(Debug, Clone, Default)]
pub struct WalkStats {
    pub pages: u64,
    pub items: u64,
    pub duplicates: u64,
    pub writes: WriteStats,
    /// Server time (HTTP `Date`) of the first response.
    pub server_time: Option<i64>,
    pub max_updated_at: Option<i64>,
    /// The watermark committed with the last page, if any.
    pub watermark: Option<i64>,
    /// Where the walk's time went: waiting for pages, decoding and staging, writing.
    pub waiting: Duration,
    pub normalizing: Duration,
    pub writing: Duration,
}

/// Walks `query` from its first page to its last, writing as it goes.
pub async fn walk(
    api: &ApiClient,
    store: &Store,
    query: ListQuery,
    on_complete: OnComplete,
) -> anyhow::Result<WalkStats> {
    let (sender, mut receiver) = mpsc::channel(PIPELINE_DEPTH);
    let fetcher = AbortOnDrop(tokio::spawn(fetch_pages(api.clone(), query, sender)));
    let mut stats = WalkStats::default();
    let mut finished = false;
    let mut clock = Instant::now();
    while let Some(first) = receiver.recv().await {
        stats.waiting += lap(&mut clock);
        let mut pending_error = None;
        let mut items = Vec::new();
        let mut last = take_page(first?, &mut stats, &mut items)?;
        // Merge pages that are already waiting; a batch commits them together.
        while !last && items.len() < MAX_BATCH_SESSIONS {
            match receiver.try_recv() {
                Ok(Ok(page)) => last = take_page(page, &mut stats, &mut items)?,
                Ok(Err(e)) => {
                    pending_error = Some(e);
                    break;
                }
                Err(_) => break,
            }
        }
        stats.duplicates += normalize::dedupe(&mut items) as u64;
        let mut batch = Batch::new();
        for item in &items {
            normalize::stage(&mut batch, item);
        }
        let checkpoints = if last { completion(&on_complete, &mut stats) } else { Vec::new() };
        stats.normalizing += lap(&mut clock);
        let written = store
            .write_batch(&batch, &checkpoints)
            .await
            .with_context(|| format!("writing page {} of the walk to the warehouse", stats.pages))?;
        stats.writing += lap(&mut clock);
        stats.writes.add(&written);
        if let Some(e) = pending_error {
            return Err(e);
        }
        if last {
            finished = true;
            break;
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

/// Decodes a page into `items`; returns whether it was the walk's last.
fn take_page(page: Page, stats: &mut WalkStats, items: &mut Vec<DecodedItem>) -> anyhow::Result<bool> {
    stats.pages += 1;
    if stats.pages == 1 {
        stats.server_time = page.server_time;
    }
    let last = !page.has_next_page;
    let decoded = normalize::decode_page(page.items, &page.request)?;
    stats.items += decoded.len() as u64;
    for item in &decoded {
        stats.max_updated_at = stats.max_updated_at.max(Some(item.session.updated_at));
    }
    items.extend(decoded);
    Ok(last)
}

fn completion(on_complete: &OnComplete, stats: &mut WalkStats) -> Vec<Checkpoint> {
    match on_complete {
        OnComplete::Watermark { source, settle_secs } => {
            let value = match (stats.server_time, stats.max_updated_at) {
                (Some(server), _) => Some(server - settle_secs),
                (None, Some(max_seen)) => {
                    tracing::warn!(
                        max_seen,
                        "the API sent no Date header; the watermark falls back to the largest updated_at seen"
                    );
                    Some(max_seen)
                }
                (None, None) => {
                    tracing::warn!("the API sent no Date header and no items; the watermark stays");
                    None
                }
            };
            stats.watermark = value;
            value.map(|value| Checkpoint::Watermark { source: source.clone(), value }).into_iter().collect()
        }
        OnComplete::Window { source, created_after, created_before } => vec![Checkpoint::WindowDone {
            source: source.clone(),
            created_after: *created_after,
            created_before: *created_before,
            sessions: stats.items as i64,
        }],
    }
}

/// Fetches pages in order until the last, sending each (or the error that stopped the walk).
async fn fetch_pages(api: ApiClient, mut query: ListQuery, sender: mpsc::Sender<anyhow::Result<Page>>) {
    let mut empty_in_a_row = 0;
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
        let broken = if more && next.is_some() && next == query.after {
            Some(format!("GET {} returned the cursor it was given, so the walk would never end", page.request))
        } else if more && empty_in_a_row >= MAX_EMPTY_PAGES {
            Some(format!("GET {}: {MAX_EMPTY_PAGES} empty pages in a row that claim more follow", page.request))
        } else {
            None
        };
        if sender.send(Ok(page)).await.is_err() {
            return; // the writer stopped; it reports why
        }
        if let Some(problem) = broken {
            let _ = sender.send(Err(anyhow::anyhow!("{problem}; stopping the walk (the watermark stays)"))).await;
            return;
        }
        if !more {
            return;
        }
        query.after = next;
    }
}

/// Stops the fetcher when the walk ends early (an error) so it does not keep requesting pages.
struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
