//! Late enrichment: `analysis` is generated on demand and `category` filled in later, and neither is known to
//! bump `updated_at`, so an incremental walk may never see them arrive. Each sync re-fetches, by id, recent
//! sessions (created within `sync.enrichment_window` of the server's time) still missing either; older ones are
//! caught by reconcile.

use anyhow::Context as _;

use super::Syncer;
use super::walk::{self, OnComplete, WalkPlan, WalkStats};
use crate::api::ListQuery;

pub(super) async fn run(syncer: &Syncer, watermark: Option<i64>) -> anyhow::Result<WalkStats> {
    // The watermark is the server's time of the last complete walk: "recent" is measured on the server's clock.
    let Some(server_now) = watermark else {
        tracing::info!("no watermark yet: nothing to enrich");
        return Ok(WalkStats::default());
    };
    let sync = &syncer.settings().sync;
    let since = server_now - sync.enrichment_window.as_secs() as i64;
    let pending = syncer.store().sessions_pending_enrichment(syncer.source(), since).await?;
    let mut total = WalkStats::default();
    for (i, ids) in pending.chunks(sync.enrichment_batch).enumerate() {
        let plan = WalkPlan {
            query: ListQuery {
                first: syncer.settings().api.page_size.max(ids.len() as u32).min(200),
                session_ids: ids.to_vec(),
                ..ListQuery::default()
            },
            on_complete: OnComplete::Nothing,
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
