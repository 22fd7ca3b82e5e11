//! Backfill: the whole history in `created_at` windows, several in flight at once, each window checkpointed
//! when done so an interrupted backfill resumes where it stopped. When every window is done the watermark
//! becomes the server time at the backfill's start (minus settle), so the next incremental run picks up
//! whatever changed while the backfill ran. Reconcile walks the same windows (see `reconcile.rs`).

use anyhow::Context as _;
use tokio::task::JoinSet;
use tracing::Instrument as _;

use super::progress::Progress;
use super::walk::{self, OnComplete, RunClock, WalkPlan, WalkStats};
use super::{Interrupted, RunErrorKind, Syncer};
use crate::api::ListQuery;
use crate::settings::SyncSettings;

/// One window as sent to the API. `None` is an open end.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Window {
    pub created_after: Option<i64>,
    pub created_before: Option<i64>,
}

impl Window {
    /// The key under which the window's completion is recorded.
    pub fn key(self) -> (i64, i64) {
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

/// The server's clock, from a one-item request; `None` when it sends no `Date`.
pub(super) async fn server_now(syncer: &Syncer) -> anyhow::Result<Option<i64>> {
    Ok(server_probe(syncer).await?.map(|(time, _)| time))
}

/// As [`server_now`], with the request for messages.
pub(super) async fn server_probe(syncer: &Syncer) -> anyhow::Result<Option<(i64, String)>> {
    let probe = syncer
        .api()
        .list_page(&ListQuery { first: 1, ..ListQuery::default() })
        .await
        .context("asking the API for its clock")?;
    Ok(probe.server_time.map(|time| (time, probe.request)))
}

/// The configured backfill plan (`sync.backfill_start`, `sync.backfill_window`): what a backfill or reconcile
/// walks, and what `status` counts a backfill's windows against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackfillPlan {
    pub start: i64,
    pub width: i64,
}

impl BackfillPlan {
    pub fn of(sync: &SyncSettings) -> BackfillPlan {
        BackfillPlan { start: sync.backfill_start.timestamp(), width: sync.backfill_window.as_secs() as i64 }
    }

    /// The windows of history up to `end`.
    pub fn windows_until(self, end: i64) -> Vec<Window> {
        plan(self.start, self.width, end)
    }
}

/// The windows of history up to `end`, as configured.
pub(super) fn windows_until(syncer: &Syncer, end: i64) -> Vec<Window> {
    BackfillPlan::of(&syncer.settings().sync).windows_until(end)
}

pub(super) async fn run(syncer: &Syncer, clock: RunClock) -> anyhow::Result<WalkStats> {
    let source = syncer.source().to_owned();
    let store = syncer.store();
    let server_time = server_now(syncer).await?;
    let server_now = server_time.unwrap_or_else(|| {
        tracing::warn!("the API sent no Date header; planning with the local clock, and the watermark will fall back to the largest updated_at seen");
        chrono::Utc::now().timestamp()
    });
    let state = match store.backfill_state(&source).await? {
        Some(state) if !state.completed => {
            tracing::info!(server_start = state.server_start, "resuming the unfinished backfill");
            state
        }
        _ => store.begin_backfill(&source, server_now).await?,
    };
    let server_start = state.server_start;
    let all = windows_until(syncer, server_start);
    let done = store.completed_windows(&source).await?;
    let todo: Vec<Window> = all.iter().copied().filter(|w| !done.contains(&w.key())).collect();
    tracing::info!(
        windows = all.len(),
        already_done = all.len() - todo.len(),
        concurrency = syncer.settings().sync.backfill_concurrency,
        "backfill planned"
    );
    // Like pg_restore: into an empty warehouse, load first, then build the secondary indexes and check the foreign
    // keys once (`store/deferred.rs`). Whatever an earlier, interrupted backfill deferred is re-created first.
    store.restore_deferred_ddl().await?;
    match store.defer_ddl_for_first_load().await {
        Ok(0) => {}
        Ok(n) => tracing::info!(
            objects = n,
            "first load into an empty warehouse: indexes and foreign keys deferred to its end"
        ),
        Err(e) => tracing::warn!(error = %format!("{e:#}"), "loading with every index in place"),
    }
    let walked = walk_windows(syncer, all.len(), todo, |window| {
        let (created_after, created_before) = window.key();
        (OnComplete::Window { source: source.clone(), created_after, created_before }, None)
    })
    .await;
    // Also after a failed walk: the warehouse must not stay without its indexes until the next backfill. The
    // backfill completes (and the watermark moves) only once they are back.
    let restore_started = std::time::Instant::now();
    let restored = store.restore_deferred_ddl().await;
    let mut total = walked?;
    match restored.context("re-creating the indexes and foreign keys deferred for the load")? {
        0 => {}
        n => tracing::info!(
            objects = n,
            seconds = restore_started.elapsed().as_secs_f64(),
            "built the deferred indexes and validated the deferred foreign keys"
        ),
    }
    total.pages += 1; // the clock probe

    // The watermark is the server's time when the backfill began (or less, if a response of this run said
    // less), bounded like any other by the time elapsed since the previous watermark.
    if server_time.is_some() {
        let start = (server_start, "the server time when the backfill began".to_owned());
        walk::keep_earliest(&mut total.min_server_time, Some(&start));
    } else {
        total.min_server_time = None;
        // Without `Date`, the watermark falls back to the largest `updated_at` the backfill loaded — in every
        // window, also those an earlier, interrupted run finished (a resumed backfill may have none left to walk).
        let loaded = store.max_updated_at(&source).await?;
        total.max_updated_at = total.max_updated_at.max(loaded);
    }
    let settle = syncer.settings().sync.settle.as_secs() as i64;
    let update = walk::decide_watermark(&source, &total, settle, &clock, state.started_at);
    store.complete_backfill(&source, update.as_ref()).await?;
    let watermark = update.map(|u| u.value);
    let vacuum_started = std::time::Instant::now();
    if let Err(e) = store.vacuum_analyze().await {
        tracing::warn!(error = %format!("{e:#}"), "VACUUM (ANALYZE) after the backfill failed; autovacuum will catch up");
    } else {
        tracing::info!(seconds = vacuum_started.elapsed().as_secs_f64(), "vacuumed and analyzed the loaded tables");
    }
    total.watermark = watermark;
    Ok(total)
}

/// Walks `todo` windows, `backfill_concurrency` at a time, reporting [`Progress`] to the syncer's sink. `setup` says what each window's walk commits and records. Stops at the first error;
/// on shutdown, lets running windows finish their current batch and starts no new one.
pub(super) async fn walk_windows(
    syncer: &Syncer,
    total_windows: usize,
    todo: Vec<Window>,
    setup: impl Fn(Window) -> (OnComplete, Option<i64>),
) -> anyhow::Result<WalkStats> {
    let mut total = WalkStats::default();
    let mut running = JoinSet::new();
    let mut finished = total_windows - todo.len();
    let progress = syncer.progress();
    progress(&Progress::Started { windows_total: total_windows, windows_done: finished });
    let mut queue = todo.into_iter();
    let concurrency = syncer.settings().sync.backfill_concurrency;
    for window in queue.by_ref().take(concurrency) {
        let (on_complete, reconcile_run) = setup(window);
        running.spawn(walk_window(syncer.clone(), window, on_complete, reconcile_run));
    }
    while let Some(joined) = running.join_next().await {
        let (window, stats) = match joined {
            Ok(Ok(done)) => done,
            Ok(Err(e)) => {
                if RunErrorKind::of(&e) == RunErrorKind::Interrupted {
                    // Let the other windows reach the end of their current batch too.
                    while running.join_next().await.is_some() {}
                } else {
                    running.abort_all();
                }
                progress(&Progress::Abandoned);
                return Err(e);
            }
            Err(e) => {
                running.abort_all();
                progress(&Progress::Abandoned);
                return Err(anyhow::anyhow!("a window task failed: {e}"));
            }
        };
        finished += 1;
        total.absorb(&stats);
        progress(&Progress::WindowDone {
            created_after: window.created_after,
            created_before: window.created_before,
            sessions: stats.items,
            sessions_total: total.items,
            windows_done: finished,
            windows_total: total_windows,
        });
        if syncer.shutdown_requested() {
            continue; // start nothing new; the running windows stop after their batch
        }
        if let Some(next) = queue.next() {
            let (on_complete, reconcile_run) = setup(next);
            running.spawn(walk_window(syncer.clone(), next, on_complete, reconcile_run));
        }
    }
    if queue.len() > 0 {
        progress(&Progress::Abandoned);
        return Err(Interrupted.into());
    }
    progress(&Progress::Finished);
    Ok(total)
}

async fn walk_window(
    syncer: Syncer,
    window: Window,
    on_complete: OnComplete,
    reconcile_run: Option<i64>,
) -> anyhow::Result<(Window, WalkStats)> {
    let plan = WalkPlan {
        query: ListQuery {
            first: syncer.settings().api.page_size,
            created_after: window.created_after,
            created_before: window.created_before,
            ..ListQuery::default()
        },
        on_complete,
        reconcile_run,
    };
    let span =
        tracing::info_span!("window", created_after = window.created_after, created_before = window.created_before);
    let stats = walk::walk(&syncer, plan).instrument(span).await.map_err(|e| {
        if RunErrorKind::of(&e) == RunErrorKind::Interrupted {
            return e;
        }
        e.context(format!("window created_after={:?} created_before={:?}", window.created_after, window.created_before))
    })?;
    Ok((window, stats))
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
