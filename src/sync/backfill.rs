//! Backfill: the whole history in `created_at` windows, several in flight at once, each window checkpointed
//! when done so an interrupted backfill resumes where it stopped. When every window is done the watermark
//! becomes the server time at the backfill's start (minus settle), so the next incremental run picks up
//! whatever changed while the backfill ran.

use anyhow::Context as _;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use super::Syncer;
use super::walk::{self, OnComplete, WalkStats};
use crate::api::ListQuery;

/// One window as sent to the API. `None` is an open end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub created_after: Option<i64>,
    pub created_before: Option<i64>,
}

impl Window {
    /// The key under which the window's completion is recorded.
    fn key(self) -> (i64, i64) {
        (self.created_after.unwrap_or(i64::MIN), self.created_before.unwrap_or(i64::MAX))
    }
}

/// Splits history into windows `[b_k, b_k+1)` from `start` in steps of `width` up to `end`, plus an open-ended
/// window before `start` and after the last boundary, so nothing older or newer is missed.
///
/// Whether the API's `created_after`/`created_before` are inclusive is not documented, so each window asks
/// for `created_after = b_k - 1` and `created_before = b_k+1`: under either reading every second is covered,
/// at worst a boundary second is read twice (harmless: writes are idempotent).
pub fn plan(start: i64, width: i64, end: i64) -> Vec<Window> {
    let mut windows = vec![Window { created_after: None, created_before: Some(start) }];
    let mut lo = start;
    while lo + width < end {
        windows.push(Window { created_after: Some(lo - 1), created_before: Some(lo + width) });
        lo += width;
    }
    windows.push(Window { created_after: Some(lo - 1), created_before: None });
    windows
}

pub(super) async fn run(syncer: &Syncer) -> anyhow::Result<WalkStats> {
    let source = syncer.source().to_owned();
    let store = syncer.store();
    let probe = syncer
        .api()
        .list_page(&ListQuery { first: 1, ..ListQuery::default() })
        .await
        .context("asking the API for its clock before the backfill")?;
    let date_known = probe.server_time.is_some();
    let server_now = probe.server_time.unwrap_or_else(|| {
        tracing::warn!("the API sent no Date header; planning with the local clock, and the watermark will fall back to the largest updated_at seen");
        chrono::Utc::now().timestamp()
    });
    let server_start = match store.backfill_state(&source).await? {
        Some(state) if !state.completed => {
            tracing::info!(server_start = state.server_start, "resuming the unfinished backfill");
            state.server_start
        }
        _ => {
            store.begin_backfill(&source, server_now).await?;
            server_now
        }
    };
    let sync = &syncer.settings().sync;
    let all = plan(sync.backfill_start.timestamp(), sync.backfill_window.as_secs() as i64, server_start);
    let done = store.completed_windows(&source).await?;
    let todo: Vec<Window> = all.iter().copied().filter(|w| !done.contains(&w.key())).collect();
    tracing::info!(
        windows = all.len(),
        already_done = all.len() - todo.len(),
        concurrency = sync.backfill_concurrency,
        "backfill planned"
    );

    let mut total = WalkStats { pages: 1, ..WalkStats::default() }; // the probe
    let mut running = JoinSet::new();
    let mut queue = todo.into_iter();
    let mut finished = all.len() - queue.len();
    for window in queue.by_ref().take(sync.backfill_concurrency) {
        running.spawn(walk_window(syncer.clone(), window));
    }
    while let Some(joined) = running.join_next().await {
        let (window, stats) = match joined {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                running.abort_all();
                return Err(e);
            }
            Err(e) => {
                running.abort_all();
                return Err(anyhow::anyhow!("a backfill window task failed: {e}"));
            }
        };
        finished += 1;
        tracing::info!(
            window_created_after = window.created_after,
            window_created_before = window.created_before,
            sessions = stats.items,
            windows_done = finished,
            windows_total = all.len(),
            "backfill window done ({finished}/{})",
            all.len()
        );
        merge(&mut total, &stats);
        if let Some(next) = queue.next() {
            running.spawn(walk_window(syncer.clone(), next));
        }
    }

    let settle = sync.settle.as_secs() as i64;
    let watermark = if date_known { Some(server_start - settle) } else { total.max_updated_at };
    if let Some(watermark) = watermark {
        store.complete_backfill(&source, watermark).await?;
    }
    total.watermark = watermark;
    Ok(total)
}

async fn walk_window(syncer: Syncer, window: Window) -> anyhow::Result<(Window, WalkStats)> {
    let (created_after, created_before) = window.key();
    let query = ListQuery {
        first: syncer.settings().api.page_size,
        created_after: window.created_after,
        created_before: window.created_before,
        ..ListQuery::default()
    };
    let on_complete = OnComplete::Window { source: syncer.source().to_owned(), created_after, created_before };
    let span =
        tracing::info_span!("window", created_after = window.created_after, created_before = window.created_before);
    let stats =
        walk::walk(syncer.api(), syncer.store(), query, on_complete).instrument(span).await.with_context(|| {
            format!(
                "backfill window created_after={:?} created_before={:?}",
                window.created_after, window.created_before
            )
        })?;
    Ok((window, stats))
}

fn merge(total: &mut WalkStats, w: &WalkStats) {
    total.pages += w.pages;
    total.items += w.items;
    total.duplicates += w.duplicates;
    total.writes.add(&w.writes);
    total.max_updated_at = total.max_updated_at.max(w.max_updated_at);
    total.waiting += w.waiting;
    total.normalizing += w.normalizing;
    total.writing += w.writing;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plan_covers_everything_with_open_ends() {
        let w = plan(1000, 100, 1250);
        assert_eq!(
            w,
            vec![
                Window { created_after: None, created_before: Some(1000) },
                Window { created_after: Some(999), created_before: Some(1100) },
                Window { created_after: Some(1099), created_before: Some(1200) },
                Window { created_after: Some(1199), created_before: None },
            ]
        );
        // Start after the end: one window before start, one after.
        assert_eq!(plan(2000, 100, 1000).len(), 2);
    }
}
