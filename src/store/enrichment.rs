//! Which sessions an enrichment run re-fetches, and their backoff (`sync_enrichment_backoff`): a pending session
//! is due on every run while young, then when its `next_due_at` has come. The backoff of a fetched batch commits
//! with the batch ([`Checkpoint::EnrichmentFetched`](super::Checkpoint)), so a crash costs a re-fetch, never a
//! skipped one; a fetch is counted once per server time, so writing the same batch again changes nothing.

use anyhow::Context as _;
use sqlx::{Postgres, Transaction};

use super::Store;

/// When an enrichment run looks (server time, Unix seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EnrichmentClock {
    /// The server's time of the run (the watermark).
    pub now: i64,
    /// Sessions created before this are outside the window: reconcile catches their late data.
    pub created_since: i64,
    /// Sessions created at or after this are young: due on every run. Before it, they are backed off.
    pub young_since: i64,
}

/// A session to re-fetch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EnrichmentCandidate {
    pub session_id: String,
    /// Past its young period: its fetch counts as an attempt of the backoff.
    pub backed_off: bool,
}

/// How the wait between a backed-off session's fetches grows (seconds).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffPolicy {
    /// The wait after the first fetch past the young period; it doubles with each fetch after that.
    pub first_interval: i64,
    pub max_interval: i64,
}

impl Store {
    /// The sessions of `source` in the window that lack analysis or category and are due, oldest first.
    pub async fn sessions_due_for_enrichment(
        &self,
        source: &str,
        clock: EnrichmentClock,
    ) -> anyhow::Result<Vec<EnrichmentCandidate>> {
        let query = sqlx::query_as(
            "select s.session_id, s.created_at < to_timestamp($3)
             from sessions s left join sync_enrichment_backoff b on b.session_id = s.session_id
             where s.created_at >= to_timestamp($1) and (not s.has_analysis or s.category is null)
               and s.deleted_at is null and s.source = $2
               and (s.created_at >= to_timestamp($3) or b.next_due_at is null or b.next_due_at <= to_timestamp($4))
             order by s.created_at",
        )
        .bind(clock.created_since)
        .bind(source)
        .bind(clock.young_since)
        .bind(clock.now)
        .fetch_all(&self.pool);
        let rows: Vec<(String, bool)> = self
            .bounded("finding sessions due for enrichment", query)
            .await
            .context("finding sessions due for enrichment (sessions, sync_enrichment_backoff)")?;
        Ok(rows.into_iter().map(|(session_id, backed_off)| EnrichmentCandidate { session_id, backed_off }).collect())
    }

    /// Forgets the backoff of `source`'s sessions that no longer wait: they have both, left the window
    /// (`created_since`) or were deleted upstream. Keeps the table as small as the sessions that wait.
    pub async fn clear_enrichment_backoff(&self, source: &str, created_since: i64) -> anyhow::Result<u64> {
        let query = sqlx::query(
            "delete from sync_enrichment_backoff b using sessions s
             where s.session_id = b.session_id and s.source = $1
               and (s.created_at < to_timestamp($2) or (s.has_analysis and s.category is not null)
                    or s.deleted_at is not null)",
        )
        .bind(source)
        .bind(created_since)
        .execute(&self.pool);
        let done = self.bounded("clearing finished enrichment backoff", query).await;
        Ok(done
            .context("clearing the backoff of sessions that no longer wait (sync_enrichment_backoff)")?
            .rows_affected())
    }
}

/// After the batch that re-fetched `session_ids` (backed-off sessions) is merged, in its transaction: a session
/// that still lacks analysis or category waits `first_interval · 2^attempts` (capped) from `now` before its next
/// fetch; one that has both is forgotten. Returns the rows written.
pub(super) async fn record_fetched(
    tx: &mut Transaction<'_, Postgres>,
    session_ids: &[String],
    now: i64,
    policy: BackoffPolicy,
) -> anyhow::Result<u64> {
    let written: i64 = sqlx::query_scalar(
        "with fetched as (
             select session_id, (not has_analysis or category is null) as lacking
             from sessions where session_id = any($1)
         ), done as (
             delete from sync_enrichment_backoff b using fetched f where b.session_id = f.session_id and not f.lacking
             returning 1
         ), waiting as (
             insert into sync_enrichment_backoff as b (session_id, attempts, last_attempt_at, next_due_at)
             select session_id, 1, to_timestamp($2), to_timestamp($2 + least($3, $4)) from fetched where lacking
             on conflict (session_id) do update
             set attempts = b.attempts + 1, last_attempt_at = excluded.last_attempt_at,
                 next_due_at = excluded.last_attempt_at
                     + make_interval(secs => least($3::float8 * power(2::float8, least(b.attempts, 40)), $4::float8))
             where b.last_attempt_at < excluded.last_attempt_at
             returning 1
         )
         select (select count(*) from done) + (select count(*) from waiting)",
    )
    .bind(session_ids)
    .bind(now)
    .bind(policy.first_interval)
    .bind(policy.max_interval)
    .fetch_one(&mut **tx)
    .await
    .context("recording the enrichment backoff of the fetched sessions (sync_enrichment_backoff)")?;
    Ok(written as u64)
}
