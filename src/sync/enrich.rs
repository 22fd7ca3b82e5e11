//! Late enrichment: `analysis` is generated on demand and `category` filled in later, and neither is known to
//! bump `updated_at`, so an incremental walk may never see them arrive. Each sync re-fetches, by id, recent
//! sessions (created within `sync.enrichment_window` of the server's time) still missing either; older ones are
//! caught by reconcile.
//!
//! Most of what is missing arrives within hours or never (a category can stay null for good), so re-fetching every
//! pending session on every tick mostly re-reads what has not changed. A session is re-fetched on every run while
//! younger than `sync.enrichment_backoff_after` — late data arriving within the usual delay is picked up by the very
//! next run — and after that with a doubling wait ([`FIRST_INTERVAL`], then twice as long each time, at most
//! `sync.enrichment_max_interval`), its backoff committed with the batch that fetched it (`store::enrichment`).

use std::time::Duration;

use anyhow::Context as _;

use super::Syncer;
use super::walk::{self, OnComplete, WalkPlan, WalkStats};
use crate::api::ListQuery;
use crate::store::{BackoffPolicy, Checkpoint, EnrichmentCandidate, EnrichmentClock};

/// The wait after a session's first fetch past its young period: two ticks of the default 15-minute schedule, the
/// first step of the doubling after "every tick".
pub const FIRST_INTERVAL: Duration = Duration::from_secs(30 * 60);

pub(super) async fn run(syncer: &Syncer, watermark: Option<i64>) -> anyhow::Result<WalkStats> {
    // The watermark is the server's time of the last complete walk: "recent" is measured on the server's clock.
    let Some(server_now) = watermark else {
        tracing::info!("no watermark yet: nothing to enrich");
        return Ok(WalkStats::default());
    };
    let sync = &syncer.settings().sync;
    let created_since = server_now - sync.enrichment_window.as_secs() as i64;
    // Without backoff every session of the window counts as young: due on every run, no backoff recorded.
    let young_since = sync.enrichment_backoff_after.map_or(created_since, |d| server_now - d.as_secs() as i64);
    let clock = EnrichmentClock { now: server_now, created_since, young_since };
    let policy = BackoffPolicy {
        first_interval: FIRST_INTERVAL.as_secs() as i64,
        max_interval: sync.enrichment_max_interval.as_secs() as i64,
    };
    let forgotten = syncer.store().clear_enrichment_backoff(syncer.source(), created_since).await?;
    let due = syncer.store().sessions_due_for_enrichment(syncer.source(), clock).await?;
    let backed_off = due.iter().filter(|c| c.backed_off).count();
    tracing::debug!(due = due.len(), backed_off, forgotten, "sessions due for enrichment");
    let mut total = WalkStats::default();
    for (i, batch) in due.chunks(sync.enrichment_batch).enumerate() {
        let plan = WalkPlan {
            query: ListQuery {
                first: syncer.settings().api.page_size.max(batch.len() as u32).min(200),
                session_ids: batch.iter().map(|c| c.session_id.clone()).collect(),
                ..ListQuery::default()
            },
            on_complete: on_complete(batch, server_now, policy),
            reconcile_run: None,
        };
        let stats = walk::walk(syncer, plan).await.with_context(|| format!("enrichment batch {}", i + 1))?;
        total.absorb(&stats);
        if stats.off_filter > 0 {
            tracing::warn!("the API ignores session_ids; stopping enrichment for this run (reconcile catches up)");
            break;
        }
    }
    Ok(total)
}

/// The backed-off sessions of `batch` move on in their backoff with the batch's write.
fn on_complete(batch: &[EnrichmentCandidate], now: i64, policy: BackoffPolicy) -> OnComplete {
    let session_ids: Vec<String> = batch.iter().filter(|c| c.backed_off).map(|c| c.session_id.clone()).collect();
    if session_ids.is_empty() {
        return OnComplete::Nothing;
    }
    OnComplete::Checkpoint(Checkpoint::EnrichmentFetched { session_ids, now, policy })
}
