//! Bulk load of a [`Batch`], in one transaction together with the batch's checkpoints (watermark, finished
//! backfill window). When the warehouse holds none of the batch's sessions, every table's rows are COPYed
//! (`copy_new_sessions`); otherwise the sessions are merged by one `insert … select … from unnest($1, $2, …)`
//! statement with every column bound as an array (`MERGE_SESSIONS`), and the child rows of the sessions it
//! wrote are replaced. Every statement is derived from the catalogue (`catalogue.rs`). The sessions' new versions
//! are then recorded in the history tables (`history.rs`), in the same transaction.
//!
//! Merge rules: a session is written when it is new, when its `updated_at` is newer, or when it is as new but
//! its content differs (late analysis does not bump `updated_at`; the content hash tells, `content_hash.rs`) or it
//! was soft-deleted. An older copy never overwrites a newer one. Child rows of every written session are replaced as
//! a set; unchanged sessions cost no writes at all.

use std::sync::LazyLock;

use anyhow::Context as _;
use sqlx::postgres::PgArguments;
use sqlx::query::Query;
use sqlx::{PgConnection, Postgres, Transaction};

use super::Store;
use super::catalogue::{ColumnDef, HISTORY, Table, TableDef};
use super::checkpoint::{Checkpoint, WriteStats};
use super::columns::{Column, ColumnBuffer, CopyPayload};
use super::error::{MAX_TRANSACTION_ATTEMPTS, Retry, StoreError, StoreErrorKind};
use super::history;
use super::rollups;
use super::rows::Batch;
use super::state;

/// `insert into {table} (cols) select exprs from unnest($1::t[], …) as x(cols)`, the shared part of every write.
fn insert_from_unnest(table: &TableDef) -> String {
    let names: Vec<&str> = table.columns.iter().map(|c| c.name).collect();
    let exprs: Vec<String> = table.columns.iter().map(ColumnDef::expression).collect();
    let params: Vec<String> =
        table.columns.iter().enumerate().map(|(i, c)| format!("${}::{}[]", i + 1, c.staging.param_type())).collect();
    format!(
        "insert into {table} as t ({names}) select {exprs} from unnest({params}) as x({names})",
        table = table.name,
        names = names.join(", "),
        exprs = exprs.join(", "),
        params = params.join(", "),
    )
}

static MERGE_SESSIONS: LazyLock<String> = LazyLock::new(|| {
    // A session never changes source here: one that another source inserted meanwhile is left alone, and the
    // check after the merge (`write_in`) fails the batch naming both.
    let sessions = Table::Sessions.def();
    let set: Vec<String> = sessions
        .columns
        .iter()
        .map(|c| c.name)
        .filter(|c| !matches!(*c, "session_id" | "source"))
        .map(|c| format!("{c} = excluded.{c}"))
        .collect();
    // An item whose content hash the session holds (and trusts: see the migration) is left out before its JSON is
    // even parsed: an unchanged re-read costs one index probe. The others are compared as before; a session whose
    // hash is missing or stale (a release without hashes wrote it) is rewritten once even when equal, which records
    // its hash and brings its history and rollups up to date.
    format!(
        "{insert}
        where not exists (
            select 1 from sessions s
            where s.session_id = x.session_id and s.content_hash = x.content_hash
              and s.content_hash_at = s.synced_at and s.deleted_at is null and s.source = x.source)
        order by session_id
        on conflict (session_id) do update set {set}, synced_at = now(), content_hash_at = now(), deleted_at = null
        where t.source = excluded.source
          and (excluded.updated_at > t.updated_at
               or (excluded.updated_at = t.updated_at
                   and (t.content_hash is distinct from excluded.content_hash
                        or t.content_hash_at is distinct from t.synced_at
                        or t.deleted_at is not null
                        or excluded.raw is distinct from t.raw)))
        returning t.session_id, (t.xmax = 0) as inserted",
        insert = insert_from_unnest(sessions),
        set = set.join(", "),
    )
});

impl Batch {
    /// Every table's rows as COPY text, `sessions` first, then the first versions of the history: what the
    /// loader's COPY path sends (and what the benchmark's COPY floor copies).
    pub fn copy_payloads(&self) -> Vec<CopyPayload> {
        let loaded = Table::ALL.iter().map(|&table| CopyPayload::of(table.def(), self.buffer(table)));
        loaded.chain(history::first_versions(self)).collect()
    }
}

/// Statements for one child table, built once.
struct ChildStatements {
    table: Table,
    delete: String,
    /// Rows of the written sessions only (their ids bound last).
    insert_written: String,
    /// Every row: when every session of the batch was written.
    insert_all: String,
}

static CHILD_STATEMENTS: LazyLock<Vec<ChildStatements>> = LazyLock::new(|| {
    Table::CHILDREN
        .iter()
        .map(|&table| {
            let def = table.def();
            let insert_all = insert_from_unnest(def);
            ChildStatements {
                table,
                // `= any($1)` keeps the delete on the primary key index.
                delete: format!("delete from {} where session_id = any($1)", def.name),
                insert_written: format!("{insert_all} where x.session_id = any(${})", def.columns.len() + 1),
                insert_all,
            }
        })
        .collect()
});

/// Binds every column of `buffer`, in order.
fn bind_columns<'q>(
    mut query: Query<'q, Postgres, PgArguments>,
    buffer: &'q ColumnBuffer,
) -> Query<'q, Postgres, PgArguments> {
    for column in &buffer.columns {
        query = match column {
            Column::Text(v) => query.bind(v),
            Column::Int(v) => query.bind(v),
            Column::Float(v) => query.bind(v),
            Column::Bool(v) => query.bind(v),
        };
    }
    query
}

impl Store {
    /// Writes `batch` (sessions of `source`) and `checkpoints` in one transaction. On a fenced store the
    /// transaction first proves the run owns the source.
    ///
    /// Retries as the store's retry contract says (`store::error`): a deadlock or serialization failure at
    /// once and a lost connection after 1 s, 2 s, 4 s, up to [`MAX_TRANSACTION_ATTEMPTS`] attempts in all; a
    /// unique violation of the COPY path once through the upsert path. A timeout, a lost lock or any other
    /// error is returned at once, classified.
    #[tracing::instrument(level = "debug", skip_all, fields(sessions = batch.sessions()))]
    pub async fn write_batch(
        &self,
        source: &str,
        batch: &Batch,
        checkpoints: &[Checkpoint],
    ) -> Result<WriteStats, StoreError> {
        // Registered for its whole life: the lock is not released while it can still commit.
        let _writer = self.fence().map(|f| f.writer());
        let mut attempt = 0;
        let mut allow_copy = true;
        loop {
            attempt += 1;
            let result = self
                .bounded("writing a batch", async {
                    let mut tx = self.begin().await?;
                    let stats = write_in(&mut tx, source, batch, checkpoints, allow_copy).await?;
                    tx.commit().await.context("commit failed")?;
                    anyhow::Ok(stats)
                })
                .await;
            let e = match result {
                Ok(stats) => return Ok(stats),
                Err(e) => StoreError::from(e),
            };
            let kind = e.kind();
            match kind.retry() {
                Retry::Again if attempt < MAX_TRANSACTION_ATTEMPTS => {
                    let wait = kind.retry_wait(attempt);
                    if kind == StoreErrorKind::ConnectionLost {
                        // Network, a terminated backend, a restarting server: the batch rolled back whole, so
                        // wait a little and write it again on a fresh connection.
                        tracing::warn!(error = %format!("{e:#}"), attempt, wait_ms = wait.as_millis() as u64, "database connection lost; retrying the batch");
                    } else {
                        tracing::warn!(error = %e, attempt, "transaction conflict; retrying the batch");
                    }
                    if !wait.is_zero() {
                        tokio::time::sleep(wait).await;
                    }
                }
                // A concurrent writer inserted one of "our" new sessions first: merge instead.
                Retry::Merge if allow_copy => {
                    tracing::debug!(error = %e, "a session appeared meanwhile; writing the batch with the upsert path");
                    allow_copy = false;
                }
                _ => return Err(e),
            }
        }
    }
}

async fn write_in(
    tx: &mut Transaction<'_, Postgres>,
    source: &str,
    batch: &Batch,
    checkpoints: &[Checkpoint],
    allow_copy: bool,
) -> anyhow::Result<WriteStats> {
    let mut stats = WriteStats::default();
    let sessions = batch.buffer(Table::Sessions);
    let held = if sessions.is_empty() { Existing::None } else { existing(tx, source, batch).await? };
    if let Existing::Foreign { session_id, owner } = held {
        return Err(ForeignSession { session_id, owner, arriving: source.to_owned() }.into());
    }
    if allow_copy && held == Existing::None && !sessions.is_empty() {
        copy_new_sessions(tx, batch, &mut stats).await?;
        let all: Vec<&str> = sessions.text_column("session_id").iter().flatten().map(String::as_str).collect();
        rollups::apply(tx, &all).await?;
    } else if !sessions.is_empty() {
        let written: Vec<(String, bool)> = bind_columns(sqlx::query(MERGE_SESSIONS.as_str()), sessions)
            .try_map(|row: sqlx::postgres::PgRow| {
                use sqlx::Row as _;
                Ok((row.try_get(0)?, row.try_get(1)?))
            })
            .fetch_all(&mut **tx)
            .await
            .context("merging the batch into sessions")?;
        // Another source may have inserted one of these sessions after the check above (sources do not share a
        // lock); the merge left it alone, and this says so rather than counting it as unchanged.
        if written.len() < sessions.rows()
            && let Existing::Foreign { session_id, owner } = existing(tx, source, batch).await?
        {
            return Err(ForeignSession { session_id, owner, arriving: source.to_owned() }.into());
        }
        stats.sessions_written = written.len() as u64;
        stats.rows.insert("sessions", written.len() as u64);
        let written_ids: Vec<&str> = written.iter().map(|(id, _)| id.as_str()).collect();
        // Children only when some session changed: a re-read of unchanged data writes nothing.
        if !written.is_empty() {
            let all_written = written.len() == sessions.rows();
            let updated: Vec<&str> =
                written.iter().filter(|(_, inserted)| !inserted).map(|(id, _)| id.as_str()).collect();
            for child in CHILD_STATEMENTS.iter() {
                // A newly inserted session has no child rows yet; only updated ones need theirs cleared.
                if !updated.is_empty() {
                    sqlx::query(child.delete.as_str())
                        .bind(&updated)
                        .execute(&mut **tx)
                        .await
                        .with_context(|| format!("replacing rows of {}", child.table.name()))?;
                }
                let buffer = batch.buffer(child.table);
                let mut n = 0;
                if !buffer.is_empty() {
                    let insert = if all_written {
                        bind_columns(sqlx::query(child.insert_all.as_str()), buffer)
                    } else {
                        bind_columns(sqlx::query(child.insert_written.as_str()), buffer).bind(&written_ids)
                    };
                    n = insert
                        .execute(&mut **tx)
                        .await
                        .with_context(|| format!("writing the batch's rows of {}", child.table.name()))?
                        .rows_affected();
                }
                stats.rows.insert(child.table.name(), n);
            }
        }
        // History once every table of the batch is written, comparing the warehouse's new state with the latest
        // versions of the sessions written (an unchanged one has no new version). A session that a release without
        // history or rollups wrote is among them: its content hash no longer matches, so the merge rewrote it.
        let history = history::record(tx, source, batch, &written_ids).await?;
        // The rollups likewise, last: they read every table of the written sessions.
        rollups::apply(tx, &written_ids).await?;
        stats.rows.insert(HISTORY[0], history.sessions);
        stats.rows.insert(HISTORY[1], history.pull_requests);
    }
    for checkpoint in checkpoints {
        if let Some((table, n)) = state::apply_checkpoint(tx, checkpoint).await? {
            *stats.rows.entry(table).or_default() += n;
        }
    }
    Ok(stats)
}

/// A session arrived from one source that the warehouse holds from another. Moving it silently would let two
/// sources' reconciles fight over it; two enterprises sharing a session id means a misconfiguration.
#[derive(Debug, thiserror::Error)]
#[error(
    "session {session_id} arrived from source {arriving:?}, but the warehouse holds it from source {owner:?}; a \
     session belongs to one source, so nothing of this batch is written (check that the two sources are really \
     different enterprises, each with its own sync.source)"
)]
pub struct ForeignSession {
    pub session_id: String,
    pub owner: String,
    pub arriving: String,
}

/// Which of the batch's sessions the warehouse holds already.
#[derive(Debug, PartialEq, Eq)]
enum Existing {
    /// None (a backfill into an empty warehouse, new sessions): the COPY path may be used.
    None,
    Some,
    /// One is held by another source.
    Foreign {
        session_id: String,
        owner: String,
    },
}

async fn existing(tx: &mut Transaction<'_, Postgres>, source: &str, batch: &Batch) -> anyhow::Result<Existing> {
    let ids = batch.buffer(Table::Sessions).text_column("session_id");
    let (any, foreign): (bool, Option<Vec<String>>) = sqlx::query_as(
        "select exists (select 1 from sessions where session_id = any($1)),
                (select array[session_id, source] from sessions where session_id = any($1) and source <> $2 limit 1)",
    )
    .bind(ids)
    .bind(source)
    .fetch_one(&mut **tx)
    .await
    .context("checking which sessions of the batch exist")?;
    Ok(match foreign.as_deref() {
        Some([session_id, owner]) => Existing::Foreign { session_id: session_id.clone(), owner: owner.clone() },
        _ if any => Existing::Some,
        _ => Existing::None,
    })
}

/// The fast path for sessions that do not exist yet: COPY straight into the tables (their first history versions
/// included), about twice as fast as `insert … select`. Nothing can conflict — unless a concurrent window inserts
/// one of them first, which fails the COPY with a unique violation and `write_batch` then redoes the batch with the
/// upsert path.
async fn copy_new_sessions(
    tx: &mut Transaction<'_, Postgres>,
    batch: &Batch,
    stats: &mut WriteStats,
) -> anyhow::Result<()> {
    for payload in batch.copy_payloads() {
        // An empty table's payload is empty, which `copy_in` skips.
        let n = copy_in(tx, &payload.statement(""), payload.table, &payload.text).await?;
        stats.rows.insert(payload.table, n);
    }
    stats.sessions_written = stats.rows.get("sessions").copied().unwrap_or_default();
    Ok(())
}

/// Bytes per `CopyData` message: large enough that a batch usually goes in one, small enough to bound a message.
const COPY_CHUNK: usize = 8 << 20;

/// `COPY … FROM STDIN` (`statement`) of `data`, COPY text of `table`, in large messages; aborted on error, so the
/// connection stays usable. The loader's COPY path, and the benchmark's COPY floor.
pub async fn copy_in(conn: &mut PgConnection, statement: &str, table: &str, data: &[u8]) -> anyhow::Result<u64> {
    if data.is_empty() {
        return Ok(0);
    }
    let mut copy = conn.copy_in_raw(statement).await.with_context(|| format!("starting COPY into {table}"))?;
    for chunk in data.chunks(COPY_CHUNK) {
        if let Err(e) = copy.send(chunk).await {
            // An unfinished COPY leaves the connection unusable; abort it (a transaction rolls back anyway).
            let _ = copy.abort("sending failed").await;
            return Err(e).with_context(|| format!("sending rows to {table}"));
        }
    }
    copy.finish().await.with_context(|| format!("loading rows into {table} (COPY)"))
}
