//! Sync progress: the watermark and backfill state per source (`sync_state`), finished backfill windows
//! (`sync_backfill_windows`) and the run history (`sync_runs`). Progress only moves forward.

use std::collections::HashSet;

use anyhow::Context as _;
use sqlx::{Postgres, Transaction};

use super::Store;
use super::load::{Checkpoint, WriteStats};

pub(super) async fn apply_checkpoint(
    tx: &mut Transaction<'_, Postgres>,
    checkpoint: &Checkpoint,
) -> anyhow::Result<()> {
    match checkpoint {
        Checkpoint::Watermark { source, value } => {
            sqlx::query(
                "insert into sync_state (source, watermark) values ($1, $2)
                 on conflict (source) do update
                 set watermark = greatest(sync_state.watermark, excluded.watermark), updated_at = now()",
            )
            .bind(source)
            .bind(value)
            .execute(&mut **tx)
            .await
            .context("advancing the watermark in sync_state")?;
        }
        Checkpoint::WindowDone { source, created_after, created_before, sessions } => {
            sqlx::query(
                "insert into sync_backfill_windows (source, created_after, created_before, sessions)
                 values ($1, $2, $3, $4)
                 on conflict (source, created_after, created_before) do update
                 set sessions = excluded.sessions, completed_at = now()",
            )
            .bind(source)
            .bind(created_after)
            .bind(created_before)
            .bind(sessions)
            .execute(&mut **tx)
            .await
            .context("recording a finished backfill window")?;
        }
        Checkpoint::Seen { run_id, session_ids } => {
            sqlx::query(
                "insert into sync_reconcile_seen (run_id, session_id) select $1, unnest($2::text[])
                 on conflict do nothing",
            )
            .bind(run_id)
            .bind(session_ids)
            .execute(&mut **tx)
            .await
            .context("recording the sessions a reconcile saw")?;
        }
    }
    Ok(())
}

/// The state of a source's backfill.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BackfillState {
    /// Server time when the backfill began: the plan's end and the watermark it sets when done.
    pub server_start: i64,
    pub completed: bool,
}

/// A row of `sync_runs`, for `status`.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct RunRow {
    pub run_id: i64,
    pub mode: String,
    pub status: String,
    pub started_at: chrono::DateTime<chrono::Utc>,
    pub finished_at: Option<chrono::DateTime<chrono::Utc>>,
    pub pages: i64,
    pub sessions_upserted: i64,
    pub requests: i64,
    pub retries: i64,
    pub error: Option<String>,
}

/// How a run ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RunStatus {
    Succeeded,
    Failed,
    Aborted,
}

impl RunStatus {
    fn as_str(self) -> &'static str {
        match self {
            RunStatus::Succeeded => "succeeded",
            RunStatus::Failed => "failed",
            RunStatus::Aborted => "aborted",
        }
    }
}

/// What a finished run records in `sync_runs`.
#[derive(Debug, Clone, Default)]
pub struct RunRecord {
    pub pages: u64,
    pub writes: WriteStats,
    pub requests: u64,
    pub retries: u64,
    pub watermark_after: Option<i64>,
    pub error: Option<String>,
}

impl Store {
    /// The source's watermark (server Unix seconds), if any walk ever completed.
    pub async fn watermark(&self, source: &str) -> anyhow::Result<Option<i64>> {
        let w: Option<Option<i64>> = sqlx::query_scalar("select watermark from sync_state where source = $1")
            .bind(source)
            .fetch_optional(&self.pool)
            .await
            .context("reading the watermark from sync_state")?;
        Ok(w.flatten())
    }

    pub async fn backfill_state(&self, source: &str) -> anyhow::Result<Option<BackfillState>> {
        let row: Option<(Option<i64>, bool)> = sqlx::query_as(
            "select backfill_server_start, backfill_completed_at is not null from sync_state where source = $1",
        )
        .bind(source)
        .fetch_optional(&self.pool)
        .await
        .context("reading backfill state from sync_state")?;
        Ok(row.and_then(|(start, completed)| start.map(|server_start| BackfillState { server_start, completed })))
    }

    /// Starts a new backfill plan ending at `server_start`, forgetting the windows of an earlier one.
    pub async fn begin_backfill(&self, source: &str, server_start: i64) -> anyhow::Result<()> {
        let mut tx = self.pool.begin().await?;
        sqlx::query("delete from sync_backfill_windows where source = $1").bind(source).execute(&mut *tx).await?;
        sqlx::query(
            "insert into sync_state (source, backfill_server_start, backfill_started_at, backfill_completed_at)
             values ($1, $2, now(), null)
             on conflict (source) do update set backfill_server_start = excluded.backfill_server_start,
                 backfill_started_at = now(), backfill_completed_at = null, updated_at = now()",
        )
        .bind(source)
        .bind(server_start)
        .execute(&mut *tx)
        .await?;
        tx.commit().await.context("recording the start of a backfill in sync_state")?;
        Ok(())
    }

    /// `(created_after, created_before)` of the windows the current backfill has finished.
    pub async fn completed_windows(&self, source: &str) -> anyhow::Result<HashSet<(i64, i64)>> {
        let rows: Vec<(i64, i64)> =
            sqlx::query_as("select created_after, created_before from sync_backfill_windows where source = $1")
                .bind(source)
                .fetch_all(&self.pool)
                .await
                .context("reading finished backfill windows")?;
        Ok(rows.into_iter().collect())
    }

    /// Marks the backfill complete and moves the watermark (forward only) to its server start time.
    pub async fn complete_backfill(&self, source: &str, watermark: i64) -> anyhow::Result<()> {
        sqlx::query(
            "update sync_state set backfill_completed_at = now(), updated_at = now(),
                 watermark = greatest(watermark, $2)
             where source = $1",
        )
        .bind(source)
        .bind(watermark)
        .execute(&self.pool)
        .await
        .context("marking the backfill complete in sync_state")?;
        Ok(())
    }

    /// Ends a complete reconcile walk: sessions not seen are marked deleted (soft), unless that would be more
    /// than `max_fraction` of the live ones — then nothing is marked and an error says why.
    /// Returns how many were marked.
    pub async fn finish_reconcile(&self, run_id: i64, max_fraction: f64) -> anyhow::Result<u64> {
        let mut tx = self.pool.begin().await?;
        let (live, missing): (i64, i64) = sqlx::query_as(
            "select count(*), count(*) filter (where not exists (
                 select 1 from sync_reconcile_seen r where r.run_id = $1 and r.session_id = s.session_id))
             from sessions s where s.deleted_at is null",
        )
        .bind(run_id)
        .fetch_one(&mut *tx)
        .await
        .context("counting sessions the reconcile did not see")?;
        // A handful of deletions is always plausible; a large share of the warehouse vanishing is not.
        if missing > 10 && missing as f64 > max_fraction * live as f64 {
            anyhow::bail!(
                "the API no longer returns {missing} of {live} live sessions; that is more than {:.0}% so none are \
                 marked deleted (a permission or filter problem upstream is likelier than a mass delete)",
                max_fraction * 100.0
            );
        }
        let marked = sqlx::query(
            "update sessions s set deleted_at = now()
             where s.deleted_at is null and not exists (
                 select 1 from sync_reconcile_seen r where r.run_id = $1 and r.session_id = s.session_id)",
        )
        .bind(run_id)
        .execute(&mut *tx)
        .await
        .context("marking sessions deleted")?
        .rows_affected();
        sqlx::query("delete from sync_reconcile_seen where run_id = $1").bind(run_id).execute(&mut *tx).await?;
        tx.commit().await.context("committing the reconcile's deletes")?;
        Ok(marked)
    }

    /// Removes what earlier (crashed or failed) reconcile runs left in their scratch table.
    pub async fn clear_reconcile_scratch(&self) -> anyhow::Result<()> {
        sqlx::query("delete from sync_reconcile_seen")
            .execute(&self.pool)
            .await
            .context("clearing sync_reconcile_seen")?;
        Ok(())
    }

    /// Recent sessions (created at or after `created_since`, Unix seconds) still waiting for analysis or
    /// category, oldest first.
    pub async fn sessions_pending_enrichment(&self, created_since: i64) -> anyhow::Result<Vec<String>> {
        sqlx::query_scalar(
            "select session_id from sessions
             where created_at >= to_timestamp($1) and (not has_analysis or category is null) and deleted_at is null
             order by created_at",
        )
        .bind(created_since)
        .fetch_all(&self.pool)
        .await
        .context("finding sessions that wait for analysis or category")
    }

    /// The latest `limit` runs of `source`, newest first.
    pub async fn recent_runs(&self, source: &str, limit: i64) -> anyhow::Result<Vec<RunRow>> {
        sqlx::query_as(
            "select run_id, mode, status, started_at, finished_at, pages, sessions_upserted, requests, retries, error
             from sync_runs where source = $1 order by run_id desc limit $2",
        )
        .bind(source)
        .bind(limit)
        .fetch_all(&self.pool)
        .await
        .context("reading sync_runs")
    }

    /// Records the start of a run; returns its id. Runs of the source still marked `running` belong to a
    /// process that died (runs of a source never overlap: they hold its advisory lock), so they are closed as
    /// `aborted` first.
    pub async fn start_run(&self, source: &str, mode: &str, watermark_before: Option<i64>) -> anyhow::Result<i64> {
        let orphans = sqlx::query(
            "update sync_runs set status = 'aborted', finished_at = now(),
                 error = 'the process ended before the run finished (killed, crashed or lost its database connection)'
             where source = $1 and status = 'running'",
        )
        .bind(source)
        .execute(&self.pool)
        .await
        .context("closing runs of processes that died")?
        .rows_affected();
        if orphans > 0 {
            tracing::warn!(orphans, "runs left `running` by a process that died were marked aborted");
        }
        sqlx::query_scalar(
            "insert into sync_runs (source, mode, status, watermark_before) values ($1, $2, 'running', $3)
             returning run_id",
        )
        .bind(source)
        .bind(mode)
        .bind(watermark_before)
        .fetch_one(&self.pool)
        .await
        .context("recording the run in sync_runs")
    }

    pub async fn finish_run(&self, run_id: i64, status: RunStatus, record: &RunRecord) -> anyhow::Result<()> {
        let rows = serde_json::to_value(&record.writes.rows)?;
        sqlx::query(
            "update sync_runs set finished_at = now(), status = $2, pages = $3, sessions_upserted = $4,
                 rows_written = $5, requests = $6, retries = $7, watermark_after = $8, error = $9
             where run_id = $1",
        )
        .bind(run_id)
        .bind(status.as_str())
        .bind(record.pages as i64)
        .bind(record.writes.sessions_written as i64)
        .bind(rows)
        .bind(record.requests as i64)
        .bind(record.retries as i64)
        .bind(record.watermark_after)
        .bind(record.error.as_deref())
        .execute(&self.pool)
        .await
        .context("recording the end of the run in sync_runs")?;
        Ok(())
    }
}
