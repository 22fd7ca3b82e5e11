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

    /// Records the start of a run; returns its id.
    pub async fn start_run(&self, source: &str, mode: &str, watermark_before: Option<i64>) -> anyhow::Result<i64> {
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
