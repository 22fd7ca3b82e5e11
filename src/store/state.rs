//! Sync progress: the watermark and backfill state per source (`sync_state`), finished backfill windows
//! (`sync_backfill_windows`) and the run history (`sync_runs`). Progress only moves forward.

use std::collections::HashSet;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::{Postgres, Transaction};

use super::checkpoint::{Checkpoint, WatermarkUpdate, WriteStats};
use super::{Store, enrichment, history, rollups};

/// Applies `checkpoint` in the batch's transaction; returns the rows it wrote to a table of its own, if any (the
/// enrichment backoff), to count with the batch's writes.
pub(super) async fn apply_checkpoint(
    tx: &mut Transaction<'_, Postgres>,
    checkpoint: &Checkpoint,
) -> anyhow::Result<Option<(&'static str, u64)>> {
    match checkpoint {
        Checkpoint::Watermark { source, update } => set_watermark(tx, source, update).await?,
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
        Checkpoint::EnrichmentFetched { session_ids, now, policy } => {
            let written = enrichment::record_fetched(tx, session_ids, *now, *policy).await?;
            return Ok(Some(("sync_enrichment_backoff", written)));
        }
    }
    Ok(None)
}

/// The watermark and what `sync::clock` knows of the API's clock.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct ClockState {
    pub watermark: Option<i64>,
    /// Database time (Unix seconds) when the server time behind the watermark was observed.
    pub observed_at: Option<f64>,
    pub offset: Option<i64>,
    pub suspect: Option<(i64, i32)>,
}

/// Sets the source's watermark as decided (runs of a source never overlap: they are fenced), recording a clock
/// anomaly if there was one.
async fn set_watermark(
    tx: &mut Transaction<'_, Postgres>,
    source: &str,
    update: &WatermarkUpdate,
) -> anyhow::Result<()> {
    sqlx::query(
        "insert into sync_state (source, watermark, watermark_observed_at, clock_anomaly, clock_anomaly_at,
                                 clock_offset, clock_suspect_offset, clock_suspect_count)
         values ($1, $2, to_timestamp($3), $4, case when $4::text is not null then now() end, $5, $6, $7)
         on conflict (source) do update
         set watermark = excluded.watermark, watermark_observed_at = excluded.watermark_observed_at,
             clock_offset = excluded.clock_offset, clock_suspect_offset = excluded.clock_suspect_offset,
             clock_suspect_count = excluded.clock_suspect_count,
             clock_anomaly = coalesce(excluded.clock_anomaly, sync_state.clock_anomaly),
             clock_anomaly_at = coalesce(excluded.clock_anomaly_at, sync_state.clock_anomaly_at),
             updated_at = now()",
    )
    .bind(source)
    .bind(update.value)
    .bind(update.observed_at)
    .bind(update.anomaly.as_deref())
    .bind(update.offset)
    .bind(update.suspect.map(|s| s.0))
    .bind(update.suspect.map_or(0, |s| s.1))
    .execute(&mut **tx)
    .await
    .context("setting the watermark in sync_state")?;
    Ok(())
}

/// The state of a source's backfill.
#[derive(Debug, Clone, PartialEq)]
pub struct BackfillState {
    /// Server time when the backfill began: the plan's end and the watermark it sets when done.
    pub server_start: i64,
    pub completed: bool,
    /// Database time (Unix seconds) when it began: when `server_start` was observed.
    pub started_at: f64,
}

/// The reconcile's mass-delete guard refused to mark sessions deleted: too large a share of the live ones vanished
/// upstream at once.
#[derive(Debug, thiserror::Error)]
#[error(
    "the API no longer returns {missing} of {live} live sessions; that is more than {max_percent:.0}% so none are \
     marked deleted (a permission or filter problem upstream is likelier than a mass delete)"
)]
pub struct MassDeleteRefused {
    pub missing: i64,
    pub live: i64,
    pub max_percent: f64,
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
    /// Why the run failed, as classified (`sync_runs.error_kind`); `None` unless it failed.
    pub error_kind: Option<&'static str>,
}

impl Store {
    /// The source's watermark (server Unix seconds), if any walk ever completed.
    pub async fn watermark(&self, source: &str) -> anyhow::Result<Option<i64>> {
        Ok(self.clock_state(source).await?.watermark)
    }

    /// The watermark with what is known of the API's clock.
    pub async fn clock_state(&self, source: &str) -> anyhow::Result<ClockState> {
        type Row = (Option<i64>, Option<f64>, Option<i64>, Option<i64>, i32);
        let row: Option<Row> = self
            .bounded(
                "reading the watermark",
                sqlx::query_as(
                    "select watermark, extract(epoch from watermark_observed_at)::float8, clock_offset,
                            clock_suspect_offset, clock_suspect_count
                     from sync_state where source = $1",
                )
                .bind(source)
                .fetch_optional(&self.pool),
            )
            .await
            .context("reading the watermark from sync_state")?;
        Ok(row.map_or_else(ClockState::default, |(watermark, observed_at, offset, suspect, count)| ClockState {
            watermark,
            observed_at,
            offset,
            suspect: suspect.map(|o| (o, count)),
        }))
    }

    /// Sessions `source` delivered: (live, marked deleted).
    pub async fn source_session_counts(&self, source: &str) -> anyhow::Result<(i64, i64)> {
        sqlx::query_as(
            "select count(*) filter (where deleted_at is null), count(*) filter (where deleted_at is not null)
             from sessions where source = $1",
        )
        .bind(source)
        .fetch_one(&self.pool)
        .await
        .context("counting the source's sessions")
    }

    /// Claims the scheduled tick at `tick` for `source`, on a fenced store (under the source's lock): true when no
    /// replica has claimed it, or a later one, yet. Replicas take the lock one after the other, so the second one to
    /// reach a tick finds it claimed and skips it.
    pub async fn claim_tick(&self, source: &str, tick: DateTime<Utc>) -> anyhow::Result<bool> {
        self.bounded("claiming the tick", async {
            let mut tx = self.begin().await?;
            let claimed = sqlx::query(
                "insert into sync_state (source, claimed_tick) values ($1, $2)
                 on conflict (source) do update set claimed_tick = excluded.claimed_tick
                 where sync_state.claimed_tick is null or sync_state.claimed_tick < excluded.claimed_tick",
            )
            .bind(source)
            .bind(tick)
            .execute(&mut *tx)
            .await
            .context("claiming the tick in sync_state")?
            .rows_affected()
                == 1;
            tx.commit().await.context("committing the tick's claim")?;
            anyhow::Ok(claimed)
        })
        .await
    }

    /// The largest `updated_at` (Unix seconds) of the sessions `source` delivered, if any.
    pub async fn max_updated_at(&self, source: &str) -> anyhow::Result<Option<i64>> {
        let query =
            sqlx::query_scalar("select extract(epoch from max(updated_at))::bigint from sessions where source = $1")
                .bind(source)
                .fetch_one(&self.pool);
        self.bounded("reading the source's newest updated_at", query)
            .await
            .context("reading the largest updated_at of the source's sessions")
    }

    /// The last clock anomaly of the source and when it was seen, if any.
    pub async fn clock_anomaly(&self, source: &str) -> anyhow::Result<Option<(String, DateTime<Utc>)>> {
        let row: Option<(Option<String>, Option<DateTime<Utc>>)> =
            sqlx::query_as("select clock_anomaly, clock_anomaly_at from sync_state where source = $1")
                .bind(source)
                .fetch_optional(&self.pool)
                .await
                .context("reading the last clock anomaly from sync_state")?;
        Ok(row.and_then(|(what, at)| what.zip(at)))
    }

    pub async fn backfill_state(&self, source: &str) -> anyhow::Result<Option<BackfillState>> {
        let query = sqlx::query_as(
            "select backfill_server_start, backfill_completed_at is not null,
                    extract(epoch from backfill_started_at)::float8
             from sync_state where source = $1",
        )
        .bind(source)
        .fetch_optional(&self.pool);
        let row: Option<(Option<i64>, bool, Option<f64>)> = self
            .bounded("reading the backfill's state", query)
            .await
            .context("reading backfill state from sync_state")?;
        Ok(row.and_then(|(start, completed, started_at)| {
            start.map(|server_start| BackfillState { server_start, completed, started_at: started_at.unwrap_or(0.0) })
        }))
    }

    /// Starts a new backfill plan ending at `server_start`, forgetting the windows of an earlier one; returns it.
    pub async fn begin_backfill(&self, source: &str, server_start: i64) -> anyhow::Result<BackfillState> {
        self.bounded("recording the start of a backfill", self.begin_backfill_inner(source, server_start)).await
    }

    async fn begin_backfill_inner(&self, source: &str, server_start: i64) -> anyhow::Result<BackfillState> {
        let mut tx = self.begin().await?;
        sqlx::query("delete from sync_backfill_windows where source = $1").bind(source).execute(&mut *tx).await?;
        let started_at: f64 = sqlx::query_scalar(
            "insert into sync_state (source, backfill_server_start, backfill_started_at, backfill_completed_at)
             values ($1, $2, now(), null)
             on conflict (source) do update set backfill_server_start = excluded.backfill_server_start,
                 backfill_started_at = now(), backfill_completed_at = null, updated_at = now()
             returning extract(epoch from backfill_started_at)::float8",
        )
        .bind(source)
        .bind(server_start)
        .fetch_one(&mut *tx)
        .await?;
        tx.commit().await.context("recording the start of a backfill in sync_state")?;
        Ok(BackfillState { server_start, completed: false, started_at })
    }

    /// `(created_after, created_before)` of the windows the current backfill has finished.
    pub async fn completed_windows(&self, source: &str) -> anyhow::Result<HashSet<(i64, i64)>> {
        let query = sqlx::query_as("select created_after, created_before from sync_backfill_windows where source = $1")
            .bind(source)
            .fetch_all(&self.pool);
        let rows: Vec<(i64, i64)> = self
            .bounded("reading finished backfill windows", query)
            .await
            .context("reading finished backfill windows")?;
        Ok(rows.into_iter().collect())
    }

    /// Marks the backfill complete and sets the watermark it decided (from its server start time).
    pub async fn complete_backfill(&self, source: &str, watermark: Option<&WatermarkUpdate>) -> anyhow::Result<()> {
        self.bounded("marking the backfill complete", async {
            let mut tx = self.begin().await?;
            if let Some(update) = watermark {
                set_watermark(&mut tx, source, update).await?;
            }
            sqlx::query("update sync_state set backfill_completed_at = now(), updated_at = now() where source = $1")
                .bind(source)
                .execute(&mut *tx)
                .await
                .context("marking the backfill complete in sync_state")?;
            tx.commit().await.context("committing the end of the backfill")?;
            anyhow::Ok(())
        })
        .await
    }

    /// Ends a complete reconcile walk: sessions not seen are marked deleted (soft), unless that would be more
    /// than `max_fraction` of the live ones — then nothing is marked and an error says why.
    /// Returns how many were marked.
    pub async fn finish_reconcile(&self, source: &str, run_id: i64, max_fraction: f64) -> anyhow::Result<u64> {
        self.bounded("marking sessions deleted", self.finish_reconcile_inner(source, run_id, max_fraction)).await
    }

    async fn finish_reconcile_inner(&self, source: &str, run_id: i64, max_fraction: f64) -> anyhow::Result<u64> {
        let mut tx = self.begin().await?;
        let (live, missing): (i64, i64) = sqlx::query_as(
            "select count(*), count(*) filter (where not exists (
                 select 1 from sync_reconcile_seen r where r.run_id = $1 and r.session_id = s.session_id))
             from sessions s where s.deleted_at is null and s.source = $2",
        )
        .bind(run_id)
        .bind(source)
        .fetch_one(&mut *tx)
        .await
        .context("counting sessions the reconcile did not see")?;
        // A handful of deletions is always plausible; a large share of the warehouse vanishing is not.
        if missing > 10 && missing as f64 > max_fraction * live as f64 {
            return Err(MassDeleteRefused { missing, live, max_percent: max_fraction * 100.0 }.into());
        }
        // A deleted session's current history rows close when it is marked deleted.
        let marked: Vec<String> = sqlx::query_scalar(&format!(
            "with marked as (
                 update sessions s set deleted_at = now()
                 where s.deleted_at is null and s.source = $2 and not exists (
                     select 1 from sync_reconcile_seen r where r.run_id = $1 and r.session_id = s.session_id)
                 returning s.session_id, s.deleted_at
             ), {}
             select session_id from marked",
            history::CLOSE_DELETED
        ))
        .bind(run_id)
        .bind(source)
        .fetch_all(&mut *tx)
        .await
        .context("marking sessions deleted")?;
        // Deleted sessions leave the rollups in the same transaction.
        let ids: Vec<&str> = marked.iter().map(String::as_str).collect();
        rollups::apply(&mut tx, &ids).await?;
        let marked = marked.len() as u64;
        sqlx::query("delete from sync_reconcile_seen where run_id = $1").bind(run_id).execute(&mut *tx).await?;
        tx.commit().await.context("committing the reconcile's deletes")?;
        Ok(marked)
    }

    /// Removes what earlier reconcile runs of `source` that are over (crashed, failed, lost their lock) left in
    /// the scratch table. A run that is still `running` keeps its rows: a run's scratch is only ever its own.
    pub async fn clear_reconcile_scratch(&self, source: &str) -> anyhow::Result<()> {
        self.bounded("clearing old reconcile scratch", async {
            let mut tx = self.begin().await?;
            sqlx::query(
                "delete from sync_reconcile_seen where run_id in (
                     select run_id from sync_runs where source = $1 and mode = 'reconcile' and status <> 'running')",
            )
            .bind(source)
            .execute(&mut *tx)
            .await
            .context("clearing sync_reconcile_seen")?;
            tx.commit().await.context("committing the cleared reconcile scratch")?;
            anyhow::Ok(())
        })
        .await
    }

    /// Recent sessions (created at or after `created_since`, Unix seconds) still waiting for analysis or
    /// category, oldest first.
    pub async fn sessions_pending_enrichment(&self, source: &str, created_since: i64) -> anyhow::Result<Vec<String>> {
        let query = sqlx::query_scalar(
            "select session_id from sessions
             where created_at >= to_timestamp($1) and (not has_analysis or category is null) and deleted_at is null
               and source = $2
             order by created_at",
        )
        .bind(created_since)
        .bind(source)
        .fetch_all(&self.pool);
        self.bounded("finding sessions that wait for enrichment", query)
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
    /// Also returns the run's start on the database's clock (Unix seconds).
    pub async fn start_run(
        &self,
        source: &str,
        mode: &str,
        watermark_before: Option<i64>,
    ) -> anyhow::Result<(i64, f64)> {
        self.bounded("recording the start of the run", self.start_run_inner(source, mode, watermark_before)).await
    }

    async fn start_run_inner(
        &self,
        source: &str,
        mode: &str,
        watermark_before: Option<i64>,
    ) -> anyhow::Result<(i64, f64)> {
        // Fenced: only the lock's holder may call the other `running` runs dead.
        let mut tx = self.begin().await?;
        let orphans = sqlx::query(
            "update sync_runs set status = 'aborted', finished_at = now(),
                 error = 'the process ended before the run finished (killed, crashed or lost its database connection)'
             where source = $1 and status = 'running'",
        )
        .bind(source)
        .execute(&mut *tx)
        .await
        .context("closing runs of processes that died")?
        .rows_affected();
        if orphans > 0 {
            tracing::warn!(orphans, "runs left `running` by a process that died were marked aborted");
        }
        let started = sqlx::query_as(
            "insert into sync_runs (source, mode, status, watermark_before) values ($1, $2, 'running', $3)
             returning run_id, extract(epoch from clock_timestamp())::float8",
        )
        .bind(source)
        .bind(mode)
        .bind(watermark_before)
        .fetch_one(&mut *tx)
        .await
        .context("recording the run in sync_runs")?;
        tx.commit().await.context("committing the start of the run")?;
        Ok(started)
    }

    pub async fn finish_run(&self, run_id: i64, status: RunStatus, record: &RunRecord) -> anyhow::Result<()> {
        self.bounded_bookkeeping("recording the end of the run", self.finish_run_inner(run_id, status, record)).await
    }

    async fn finish_run_inner(&self, run_id: i64, status: RunStatus, record: &RunRecord) -> anyhow::Result<()> {
        let rows = serde_json::to_value(&record.writes.rows)?;
        sqlx::query(
            "update sync_runs set finished_at = now(), status = $2, pages = $3, sessions_upserted = $4,
                 rows_written = $5, requests = $6, retries = $7, watermark_after = $8, error = $9, error_kind = $10
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
        .bind(record.error_kind)
        .execute(&self.pool)
        .await
        .context("recording the end of the run in sync_runs")?;
        Ok(())
    }
}
