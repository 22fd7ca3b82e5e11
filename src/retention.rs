//! History retention (`history.retention`): the daemon deletes closed history rows older than the retention with
//! `Store::prune_history`, once at start and after each tick of `sync.reconcile_schedule` (the daily maintenance
//! slot). It runs beside the syncs, never inside a run: it deletes only closed rows, which no sync writes (a sync
//! closes open rows and inserts new ones), so neither waits for the other. Every replica prunes; the second finds
//! nothing left to delete.

use std::time::Duration;

use chrono::Utc;
use tokio::sync::watch;

use crate::human;
use crate::store::Store;
use crate::telemetry::metric;

/// Deletes closed history rows older than `retention`; logs and counts (`devin_etl_history_pruned_rows_total`)
/// how many went.
pub async fn prune(store: &Store, retention: Duration) -> anyhow::Result<u64> {
    let pruned = store.prune_history(retention).await?;
    metrics::counter!(metric::HISTORY_PRUNED).increment(pruned);
    tracing::info!(
        pruned,
        retention = %human::duration(retention),
        "history pruned: {pruned} closed rows of session_history and session_pull_request_history ended more than \
         history.retention ago"
    );
    Ok(pruned)
}

/// Prunes at start, then at each tick of `schedule`, until `shutdown` turns true. A failed prune is logged; the
/// next tick tries again.
pub async fn run(store: Store, retention: Duration, schedule: cron::Schedule, mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        if let Err(e) = prune(&store, retention).await {
            tracing::warn!(error = %format!("{e:#}"), "pruning the history failed; the next reconcile tick tries again");
        }
        let Some(next) = schedule.upcoming(Utc).next() else {
            return;
        };
        let wait = (next - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.wait_for(|stop| *stop) => return,
        }
    }
}
