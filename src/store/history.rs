//! Session history (`session_history`, `session_pull_request_history`): every distinct observed version of a
//! session's tracked attributes and of its pull requests' states, written in the transaction that writes the
//! sessions, after them.
//!
//! Sessions new to the warehouse (the backfill's COPY path) get their first versions COPYed with them
//! ([`first_versions`]). Otherwise [`record`]'s statement compares the warehouse's current state of the sessions
//! the merge wrote with their latest history rows and writes only differences, so re-reading an unchanged session
//! adds nothing (and costs nothing). A reconcile compares every session it reads, so versions that a release
//! without history wrote (a rollback) are caught up by the next reconcile.
//!
//! When a version starts (`valid_from`): the session's `updated_at` when it is newer than the latest version;
//! otherwise (analysis or category arriving without an `updated_at` bump) the API server time at which the batch
//! was observed. A new version always starts after the previous one (nudged by a microsecond if a clock says
//! otherwise) and never before a deletion closed it, so a session's rows never overlap and consecutive ones meet
//! exactly.

use std::collections::HashMap;
use std::sync::LazyLock;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::{Postgres, Transaction};

use super::Store;
use super::catalogue::{HISTORY, PULL_REQUEST_HISTORY, SESSION_HISTORY, Table};
use super::columns::{ColumnBuffer, CopyPayload};
use super::rows::Batch;

/// When the batch was observed: the API's time, but never more than this ahead of the database's — one node with
/// a clock far ahead must not date a version in the future, where every later version would have to follow it.
const MAX_OBSERVED_AHEAD: &str = "interval '5 minutes'";

/// `$1` session ids, `$2` source, `$3` observed server time (Unix seconds, or null).
fn observed_cte() -> String {
    format!("observed as (select least(coalesce(to_timestamp($3), now()), now() + {MAX_OBSERVED_AHEAD}) as at)")
}

/// `valid_from` of a new version of a key whose latest row is `l` (null if none), for a session updated at
/// `updated_at`.
fn new_version_start(l: &str, updated_at: &str) -> String {
    format!(
        "case when {l}.valid_from is null then {updated_at}
              else greatest(case when {updated_at} > {l}.valid_from then {updated_at} else o.at end,
                            {l}.valid_from + interval '1 microsecond', {l}.valid_to)
         end"
    )
}

/// One statement for both tables (one plan, one lookup of the sessions): `live` is the sessions' current state;
/// `last` and `pr_last` their latest versions, per session through the primary keys (a join could plan a scan of
/// the whole history); `changed` and `pr_changed` what differs, with when it starts. Old versions are closed and
/// new ones inserted at the same instant. Returns the new versions of each table.
static RECORD_VERSIONS: LazyLock<String> = LazyLock::new(|| {
    // The tracked attributes: `session_history`'s columns after `session_id` and `valid_from`, as the catalogue
    // declares them (the backfill's first versions are staged from the same list).
    let columns: Vec<&str> = SESSION_HISTORY.columns[2..].iter().map(|c| c.name).collect();
    let tracked = columns.join(", ");
    let cur_cols = columns.iter().map(|c| format!("c.{c}")).collect::<Vec<_>>().join(", ");
    let last_cols = columns.iter().map(|c| format!("l.{c}")).collect::<Vec<_>>().join(", ");
    format!(
        "with {observed},
         live as (
             select session_id, updated_at, {tracked} from sessions
             where session_id = any($1) and source = $2 and deleted_at is null
         ),
         last as (
             select l.* from live c cross join lateral (
                 select * from session_history h where h.session_id = c.session_id order by h.valid_from desc limit 1
             ) l
         ),
         changed as (
             select c.*, l.valid_from as last_from, (l.valid_from is not null and l.valid_to is null) as last_open,
                    {start} as at
             from live c cross join observed o left join last l using (session_id)
             where l.valid_from is null or l.valid_to is not null or ({cur_cols}) is distinct from ({last_cols})
         ),
         closed as (
             update session_history h set valid_to = c.at
             from changed c
             where c.last_open and h.session_id = c.session_id and h.valid_from = c.last_from
         ),
         inserted as (
             insert into session_history (session_id, valid_from, {tracked})
             select session_id, at, {tracked} from changed
             returning 1
         ),
         pr_cur as (
             select p.session_id, p.pr_url, p.pr_state from session_pull_requests p join live using (session_id)
             where p.session_id = any($1)
         ),
         pr_last as (
             select l.* from live s cross join lateral (
                 select distinct on (h.pr_url) * from session_pull_request_history h
                 where h.session_id = s.session_id order by h.pr_url, h.valid_from desc
             ) l
         ),
         pr_changed as (
             select coalesce(c.session_id, l.session_id) as session_id, coalesce(c.pr_url, l.pr_url) as pr_url,
                    c.session_id is not null as present, c.pr_state,
                    l.valid_from as last_from, (l.valid_from is not null and l.valid_to is null) as last_open,
                    {pr_start} as at
             from pr_cur c
             full join pr_last l on l.session_id = c.session_id and l.pr_url = c.pr_url
             join live s on s.session_id = coalesce(c.session_id, l.session_id)
             cross join observed o
             where (c.session_id is not null
                    and (l.valid_from is null or l.valid_to is not null or c.pr_state is distinct from l.pr_state))
                or (c.session_id is null and l.valid_to is null)
         ),
         pr_closed as (
             update session_pull_request_history h set valid_to = c.at
             from pr_changed c
             where c.last_open and h.session_id = c.session_id and h.pr_url = c.pr_url and h.valid_from = c.last_from
         ),
         pr_inserted as (
             insert into session_pull_request_history (session_id, pr_url, valid_from, pr_state)
             select session_id, pr_url, at, pr_state from pr_changed where present
             returning 1
         )
         select (select count(*) from inserted), (select count(*) from pr_inserted)",
        observed = observed_cte(),
        start = new_version_start("l", "c.updated_at"),
        pr_start = new_version_start("l", "s.updated_at"),
    )
});

/// Rows the history statements wrote (new versions; closed ones are not counted).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct HistoryWrites {
    pub sessions: u64,
    pub pull_requests: u64,
}

/// Records the new versions of the sessions `ids` of `source` (of `batch`, whose rows were just written).
pub(super) async fn record(
    tx: &mut Transaction<'_, Postgres>,
    source: &str,
    batch: &Batch,
    ids: &[&str],
) -> anyhow::Result<HistoryWrites> {
    if ids.is_empty() {
        return Ok(HistoryWrites::default());
    }
    let (sessions, pull_requests): (i64, i64) = sqlx::query_as(RECORD_VERSIONS.as_str())
        .bind(ids)
        .bind(source)
        .bind(batch.observed_at)
        .fetch_one(&mut **tx)
        .await
        .context("recording session and pull request history")?;
    Ok(HistoryWrites { sessions: sessions as u64, pull_requests: pull_requests as u64 })
}

/// The first versions of the batch's sessions and of their pull requests, as COPY text: what [`record`] would
/// write for sessions the warehouse did not hold, without asking the database (the backfill's path).
pub(super) fn first_versions(batch: &Batch) -> [CopyPayload; 2] {
    let sessions = batch.buffer(Table::Sessions);
    let ids = sessions.text_column("session_id");
    let updated_at = sessions.int_column("updated_at");
    let (status, detail, category) =
        (sessions.text_column("status"), sessions.text_column("status_detail"), sessions.text_column("category"));
    let acus = sessions.float_column("acus_consumed");
    let (has_analysis, is_archived) = (sessions.bool_column("has_analysis"), sessions.bool_column("is_archived"));
    let mut versions = ColumnBuffer::new(&SESSION_HISTORY);
    let mut updated: HashMap<&str, i64> = HashMap::with_capacity(sessions.rows());
    for row in 0..sessions.rows() {
        let id = ids[row].as_deref().unwrap_or_default();
        let valid_from = updated_at[row].unwrap_or_default();
        updated.insert(id, valid_from);
        versions
            .text("session_id", id)
            .unix_seconds("valid_from", valid_from)
            .opt_text("status", status[row].as_deref())
            .opt_text("status_detail", detail[row].as_deref())
            .opt_float("acus_consumed", acus[row])
            .opt_text("category", category[row].as_deref())
            .bool("has_analysis", has_analysis[row])
            .bool("is_archived", is_archived[row])
            .end_row();
    }
    let prs = batch.buffer(Table::PullRequests);
    let (pr_session, pr_url, pr_state) =
        (prs.text_column("session_id"), prs.text_column("pr_url"), prs.text_column("pr_state"));
    let mut pr_versions = ColumnBuffer::new(&PULL_REQUEST_HISTORY);
    for row in 0..prs.rows() {
        let id = pr_session[row].as_deref().unwrap_or_default();
        pr_versions
            .text("session_id", id)
            .opt_text("pr_url", pr_url[row].as_deref())
            .unix_seconds("valid_from", updated.get(id).copied().unwrap_or_default())
            .opt_text("pr_state", pr_state[row].as_deref())
            .end_row();
    }
    [CopyPayload::of(&SESSION_HISTORY, &versions), CopyPayload::of(&PULL_REQUEST_HISTORY, &pr_versions)]
}

/// Closes the current history rows of the sessions of `source` just marked deleted (`marked` CTE: `session_id`,
/// `deleted_at`): the SQL a reconcile appends to its marking statement.
pub(super) const CLOSE_DELETED: &str = "
    closed_sessions as (
        update session_history h set valid_to = greatest(h.valid_from, m.deleted_at)
        from marked m where h.session_id = m.session_id and h.valid_to is null
    ),
    closed_prs as (
        update session_pull_request_history h set valid_to = greatest(h.valid_from, m.deleted_at)
        from marked m where h.session_id = m.session_id and h.valid_to is null
    )";

impl Store {
    /// Deletes history rows that ended more than `retention` ago (current versions are never pruned); returns how
    /// many rows of both tables went.
    pub async fn prune_history(&self, retention: Duration) -> anyhow::Result<u64> {
        self.bounded("pruning history", async {
            let mut tx = self.begin().await?;
            let mut pruned = 0;
            for table in HISTORY {
                pruned += sqlx::query(&format!(
                    "delete from {table} where valid_to is not null and valid_to < now() - make_interval(secs => $1)"
                ))
                .bind(retention.as_secs_f64())
                .execute(&mut *tx)
                .await
                .with_context(|| format!("pruning {table}"))?
                .rows_affected();
            }
            tx.commit().await.context("committing the pruned history")?;
            anyhow::Ok(pruned)
        })
        .await
    }
}
