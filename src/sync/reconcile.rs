//! Reconcile: re-read the whole history (the backfill's windows, nothing checkpointed), upsert whatever changed
//! (late analysis of old sessions included) and soft-delete sessions the API no longer returns. Sessions seen
//! are recorded in the same transactions as the upserts; only a complete walk marks anything deleted.

use super::backfill::{self, Window};
use super::walk::OnComplete;
use super::{Syncer, Work};

/// Refuse to mark more than this share of live sessions deleted in one run (an upstream permission or filter
/// problem is likelier than a mass delete).
const MAX_DELETED_FRACTION: f64 = 0.5;

pub(super) async fn run(syncer: &Syncer, run_id: i64) -> anyhow::Result<Work> {
    let store = syncer.store();
    store.clear_reconcile_scratch(syncer.source()).await?;
    let now = backfill::server_now(syncer).await?.unwrap_or_else(|| chrono::Utc::now().timestamp());
    let windows: Vec<Window> = backfill::windows_until(syncer, now);
    let mut walks =
        backfill::walk_windows(syncer, windows.len(), windows, |_| (OnComplete::Nothing, Some(run_id))).await?;
    walks.pages += 1; // the clock probe
    let deleted = store.finish_reconcile(syncer.source(), run_id, MAX_DELETED_FRACTION).await?;
    Ok(Work { walks, deleted })
}
