//! Rollups (`rollup_daily_*`, migration `20261201000007_rollups.sql`): per-day aggregates of live sessions that the
//! dashboard views read. They are brought up to date in the transaction that writes the sessions, by the database
//! function `rollup_apply`, which subtracts what each given session was counted as
//! (`rollup_session_contributions`) and adds what it is now — so they are never stale and never rebuilt.

use anyhow::Context as _;

/// The rollup tables and their bookkeeping, which a backfill fills beside the session tables (and so vacuums and
/// analyzes with them: a dashboard query planned without their statistics scans them whole).
pub const TABLES: [&str; 8] = [
    "rollup_session_contributions",
    "rollup_daily_usage",
    "rollup_daily_starters",
    "rollup_daily_pull_requests",
    "rollup_daily_issues",
    "rollup_daily_issue_levels",
    "rollup_daily_action_items",
    "rollup_daily_action_item_types",
];
use sqlx::PgConnection;

/// Brings the rollups up to date for the sessions `ids` (just written, revived or marked deleted), inside the
/// caller's transaction; returns how many of them changed what they contribute.
pub(super) async fn apply(conn: &mut PgConnection, ids: &[&str]) -> anyhow::Result<u64> {
    if ids.is_empty() {
        return Ok(0);
    }
    let changed: i64 = sqlx::query_scalar("select rollup_apply($1)")
        .bind(ids)
        .fetch_one(conn)
        .await
        .context("updating the rollups (rollup_apply)")?;
    Ok(changed as u64)
}
