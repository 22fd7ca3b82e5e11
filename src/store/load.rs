//! Bulk load of a [`Batch`]: COPY into per-connection staging tables, then one set-based merge per table,
//! all in one transaction together with the batch's checkpoints (watermark, finished backfill window).
//!
//! Merge rules (DESIGN.md "Idempotent upsert"): a session is written when it is new, when its `updated_at`
//! is newer, or when it is as new but its content differs (late analysis does not bump `updated_at`) or it
//! was soft-deleted. An older copy never overwrites a newer one. Child rows of every written session are
//! replaced as a set; unchanged sessions cost no writes at all.

use std::collections::BTreeMap;
use std::sync::LazyLock;

use anyhow::Context as _;
use sqlx::{AssertSqlSafe, PgConnection, Postgres, Transaction};

use super::Store;
use super::rows::Batch;
use super::state;

/// `(name, staging type)`; timestamps are staged as Unix seconds and converted by the merge.
const SESSION_COLUMNS: &[(&str, &str)] = &[
    ("session_id", "text"),
    ("org_id", "text"),
    ("user_id", "text"),
    ("service_user_id", "text"),
    ("title", "text"),
    ("url", "text"),
    ("status", "text"),
    ("status_detail", "text"),
    ("origin", "text"),
    ("category", "text"),
    ("subcategory", "text"),
    ("session_size", "text"),
    ("acus_consumed", "double precision"),
    ("num_user_messages", "bigint"),
    ("num_devin_messages", "bigint"),
    ("is_archived", "boolean"),
    ("playbook_id", "text"),
    ("parent_session_id", "text"),
    ("tags", "text[]"),
    ("structured_output", "jsonb"),
    ("created_at", "bigint"),
    ("updated_at", "bigint"),
    ("has_analysis", "boolean"),
    ("classification_category", "text"),
    ("classification_confidence", "double precision"),
    ("programming_languages", "text[]"),
    ("tools_and_frameworks", "text[]"),
    ("suggested_prompt_original", "text"),
    ("suggested_prompt", "text"),
    // Staged as text and cast once by the merge: parsing and compressing it twice halves COPY's speed.
    ("raw", "text"),
];

/// `(column, type)` of a staging table.
type Columns = &'static [(&'static str, &'static str)];

/// Child tables: `(table, staging table, columns)`; the staging table has the same columns and types.
const CHILD_TABLES: &[(&str, &str, Columns)] = &[
    (
        "session_pull_requests",
        "stage_pull_requests",
        &[("session_id", "text"), ("pr_url", "text"), ("pr_state", "text"), ("repo", "text"), ("pr_number", "integer")],
    ),
    (
        "session_issues",
        "stage_issues",
        &[
            ("session_id", "text"),
            ("position", "integer"),
            ("issue_id", "text"),
            ("issue", "text"),
            ("impact", "text"),
            ("label", "text"),
        ],
    ),
    (
        "session_action_items",
        "stage_action_items",
        &[
            ("session_id", "text"),
            ("position", "integer"),
            ("action_item", "text"),
            ("issue_id", "text"),
            ("type", "text"),
        ],
    ),
    (
        "session_timeline_events",
        "stage_timeline_events",
        &[
            ("session_id", "text"),
            ("position", "integer"),
            ("title", "text"),
            ("description", "text"),
            ("color", "text"),
            ("issue_id", "text"),
        ],
    ),
    (
        "session_note_usages",
        "stage_note_usages",
        &[
            ("session_id", "text"),
            ("kind", "text"),
            ("position", "integer"),
            ("note_id", "text"),
            ("message", "text"),
            ("reason", "text"),
        ],
    ),
    (
        "session_prompt_feedback",
        "stage_prompt_feedback",
        &[
            ("session_id", "text"),
            ("position", "integer"),
            ("summary", "text"),
            ("excerpt", "text"),
            ("details", "text"),
            ("issue_id", "text"),
        ],
    ),
    ("session_tags", "stage_tags", &[("session_id", "text"), ("tag", "text")]),
    ("session_children", "stage_children", &[("session_id", "text"), ("child_session_id", "text")]),
];

/// Temp tables live per connection and empty themselves at every commit, so a rolled-back or retried batch
/// never sees another's rows. Created once per pooled connection (see `Store::connect`).
static STAGING_DDL: LazyLock<String> = LazyLock::new(|| {
    let table = |name: &str, columns: &[(&str, &str)]| {
        let cols: Vec<String> = columns.iter().map(|(c, t)| format!("{c} {t}")).collect();
        format!("create temp table if not exists {name} ({}) on commit delete rows;\n", cols.join(", "))
    };
    let mut ddl = table("stage_sessions", SESSION_COLUMNS);
    // Staging rows live for one transaction: compressing large values there is wasted work.
    ddl.push_str("alter table stage_sessions alter column raw set storage external;\n");
    for (_, stage, columns) in CHILD_TABLES {
        ddl.push_str(&table(stage, columns));
    }
    ddl
});

static MERGE_SESSIONS: LazyLock<String> = LazyLock::new(|| {
    let names: Vec<&str> = SESSION_COLUMNS.iter().map(|(c, _)| *c).collect();
    let select: Vec<String> = names
        .iter()
        .map(|c| match *c {
            "created_at" | "updated_at" => format!("to_timestamp({c})"),
            "raw" => "raw::jsonb".to_owned(),
            _ => (*c).to_owned(),
        })
        .collect();
    let set: Vec<String> = names.iter().skip(1).map(|c| format!("{c} = excluded.{c}")).collect();
    format!(
        "insert into sessions as s ({cols})
            select {select} from stage_sessions order by session_id
            on conflict (session_id) do update set {set}, synced_at = now(), deleted_at = null
            where excluded.updated_at > s.updated_at
               or (excluded.updated_at = s.updated_at
                   and (excluded.raw is distinct from s.raw or s.deleted_at is not null))
            returning s.session_id, (s.xmax = 0) as inserted",
        cols = names.join(", "),
        select = select.join(", "),
        set = set.join(", "),
    )
});

/// Statements for one child table, built once.
struct ChildStatements {
    table: &'static str,
    copy: String,
    delete: String,
    /// Staged rows of the written sessions only.
    insert: String,
    /// Every staged row: when every staged session was written.
    insert_all: String,
}

static CHILD_STATEMENTS: LazyLock<Vec<ChildStatements>> = LazyLock::new(|| {
    CHILD_TABLES
        .iter()
        .map(|(table, stage, columns)| {
            let cols: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
            ChildStatements {
                table,
                copy: copy_statement(stage, columns),
                // `= any($1)` with the ids bound keeps both statements on the primary key index whatever
                // the planner guesses about the (never analyzed) staging tables.
                delete: format!("delete from {table} where session_id = any($1)"),
                insert: format!(
                    "insert into {table} ({cols}) select {cols} from {stage} where session_id = any($1)",
                    cols = cols.join(", "),
                ),
                insert_all: format!("insert into {table} ({cols}) select {cols} from {stage}", cols = cols.join(", ")),
            }
        })
        .collect()
});

static COPY_SESSIONS: LazyLock<String> = LazyLock::new(|| copy_statement("stage_sessions", SESSION_COLUMNS));

fn copy_statement(stage: &str, columns: &[(&str, &str)]) -> String {
    let cols: Vec<&str> = columns.iter().map(|(c, _)| *c).collect();
    format!("copy {stage} ({}) from stdin", cols.join(", "))
}

pub(super) async fn create_staging_tables(conn: &mut PgConnection) -> Result<(), sqlx::Error> {
    sqlx::raw_sql(AssertSqlSafe(STAGING_DDL.as_str())).execute(conn).await.map(|_| ())
}

/// Progress that commits together with a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Checkpoint {
    /// The walk is complete: move the source's watermark (forward only) to this server time.
    Watermark { source: String, value: i64 },
    /// A backfill window is fully loaded.
    WindowDone { source: String, created_after: i64, created_before: i64, sessions: i64 },
}

/// What a batch wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Sessions inserted or changed.
    pub sessions_written: u64,
    /// Rows written per table (`sessions` included).
    pub rows: BTreeMap<&'static str, u64>,
}

impl WriteStats {
    pub fn add(&mut self, other: &WriteStats) {
        self.sessions_written += other.sessions_written;
        for (table, n) in &other.rows {
            *self.rows.entry(table).or_default() += n;
        }
    }

    pub fn total_rows(&self) -> u64 {
        self.rows.values().sum()
    }
}

/// A deadlock or serialization failure is resolved by running the same batch again.
const MAX_TRANSACTION_ATTEMPTS: u32 = 4;

impl Store {
    /// Writes `batch` and `checkpoints` in one transaction; a concurrent writer's deadlock is retried.
    #[tracing::instrument(level = "debug", skip_all, fields(sessions = batch.sessions()))]
    pub async fn write_batch(&self, batch: &Batch, checkpoints: &[Checkpoint]) -> anyhow::Result<WriteStats> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let result = async {
                let mut tx = self.pool.begin().await.context("cannot start a transaction")?;
                let stats = write_in(&mut tx, batch, checkpoints).await?;
                tx.commit().await.context("commit failed")?;
                anyhow::Ok(stats)
            }
            .await;
            match result {
                Err(e) if attempt < MAX_TRANSACTION_ATTEMPTS && is_transient_conflict(&e) => {
                    tracing::warn!(error = %e, attempt, "transaction conflict; retrying the batch");
                }
                other => return other,
            }
        }
    }
}

fn is_transient_conflict(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<sqlx::Error>()
            .and_then(|e| e.as_database_error())
            .and_then(|d| d.code())
            .is_some_and(|code| code == "40P01" || code == "40001")
    })
}

async fn write_in(
    tx: &mut Transaction<'_, Postgres>,
    batch: &Batch,
    checkpoints: &[Checkpoint],
) -> anyhow::Result<WriteStats> {
    let mut stats = WriteStats::default();
    if !batch.sessions.is_empty() {
        copy_into(tx, &COPY_SESSIONS, "sessions", batch.sessions.as_bytes()).await?;
        let written: Vec<(String, bool)> = sqlx::query_as(AssertSqlSafe(MERGE_SESSIONS.as_str()))
            .fetch_all(&mut **tx)
            .await
            .context("merging staged rows into sessions")?;
        stats.sessions_written = written.len() as u64;
        stats.rows.insert("sessions", written.len() as u64);
        // Children are staged only when some session changed: a re-read of unchanged data writes nothing.
        if !written.is_empty() {
            let all_written = written.len() == batch.sessions.rows();
            let updated: Vec<&str> = written.iter().filter(|(_, inserted)| !inserted).map(|(id, _)| id.as_str()).collect();
            let ids: Vec<&str> = written.iter().map(|(id, _)| id.as_str()).collect();
            for child in CHILD_STATEMENTS.iter() {
                // A newly inserted session has no child rows yet; only updated ones need theirs cleared.
                if !updated.is_empty() {
                    sqlx::query(AssertSqlSafe(child.delete.as_str()))
                        .bind(&updated)
                        .execute(&mut **tx)
                        .await
                        .with_context(|| format!("replacing rows of {}", child.table))?;
                }
                let buffer = batch.child_buffer(child.table);
                let mut n = 0;
                if !buffer.is_empty() {
                    copy_into(tx, &child.copy, child.table, buffer.as_bytes()).await?;
                    let insert = if all_written {
                        sqlx::query(AssertSqlSafe(child.insert_all.as_str()))
                    } else {
                        sqlx::query(AssertSqlSafe(child.insert.as_str())).bind(&ids)
                    };
                    n = insert
                        .execute(&mut **tx)
                        .await
                        .with_context(|| format!("merging staged rows into {}", child.table))?
                        .rows_affected();
                }
                stats.rows.insert(child.table, n);
            }
        }
    }
    for checkpoint in checkpoints {
        state::apply_checkpoint(tx, checkpoint).await?;
    }
    Ok(stats)
}

async fn copy_into(
    tx: &mut Transaction<'_, Postgres>,
    statement: &str,
    table: &str,
    bytes: &[u8],
) -> anyhow::Result<()> {
    let mut copy = tx.copy_in_raw(statement).await.with_context(|| format!("starting COPY of {table} rows"))?;
    if let Err(e) = copy.send(bytes).await {
        // An unfinished COPY leaves the connection unusable; abort it (the transaction rolls back anyway).
        let _ = copy.abort("send failed").await;
        return Err(e).with_context(|| format!("sending {table} rows"));
    }
    copy.finish().await.with_context(|| format!("loading {table} rows (COPY)"))?;
    Ok(())
}
