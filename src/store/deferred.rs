//! A first backfill loads like `pg_restore` (migration `20261201000010_deferred_ddl.sql`): into an empty
//! warehouse, the secondary indexes of the session tables and the foreign keys to `sessions` are dropped before
//! the load and re-created after it — each index built once from sorted data, each key validated once by a join,
//! instead of maintained and checked row by row (the foreign-key checks alone were 29% of PostgreSQL's CPU in a
//! backfill). Primary keys stay: the merge path and the history need them.
//!
//! Nothing is ever lost: what is dropped is first recorded in `sync_deferred_ddl`, in the transaction that drops
//! it; re-creating an object and deleting its record also share a transaction. The end of every backfill and every
//! start of the service (after migrating) re-create whatever is recorded, so a backfill that died half-way leaves
//! at worst a warehouse without some indexes until the next start.

use anyhow::Context as _;
use sqlx::{Connection as _, Executor as _, PgConnection};

use super::Store;
use super::catalogue::{HISTORY, Table};

/// One recorded object: `(object_name, table_name, kind, definition)`.
type Deferred = (String, String, String, String);

/// The indexes that are neither a primary key nor unique (nor back a constraint) of the session tables and their
/// history, and the foreign keys that reference `sessions`, in the current schema, with how to re-create them.
const DEFERRABLE: &str = "
    select format('%I.%I', n.nspname, ic.relname), format('%I.%I', n.nspname, c.relname), 'index',
           pg_get_indexdef(i.indexrelid)
    from pg_index i
    join pg_class c on c.oid = i.indrelid
    join pg_class ic on ic.oid = i.indexrelid
    join pg_namespace n on n.oid = c.relnamespace
    where n.nspname = current_schema() and c.relname = any($1)
      and not i.indisunique and not i.indisprimary
      and not exists (select 1 from pg_constraint k where k.conindid = i.indexrelid)
    union all
    select format('%I', k.conname), format('%I.%I', n.nspname, c.relname), 'foreign_key',
           pg_get_constraintdef(k.oid)
    from pg_constraint k
    join pg_class c on c.oid = k.conrelid
    join pg_namespace n on n.oid = c.relnamespace
    where k.contype = 'f' and k.confrelid = 'sessions'::regclass and n.nspname = current_schema()
    order by 1";

impl Store {
    /// Before a backfill: when the warehouse holds no session at all, records and drops the deferrable indexes and
    /// foreign keys (see the module's comment) and returns how many; otherwise (or when another session holds a
    /// lock on `sessions` for more than a moment) defers nothing and returns 0.
    pub async fn defer_ddl_for_first_load(&self) -> anyhow::Result<usize> {
        let tables: Vec<&str> = Table::ALL.iter().map(|t| t.name()).chain(HISTORY).collect();
        let mut tx = self.begin().await?;
        // Readers go on; a writer (another source's run) waits, so no session can arrive between the check and the
        // drops. A dashboard holding the table for long makes this give up rather than queue everybody behind it.
        let lock = "set local lock_timeout = '2s'; lock table sessions in share row exclusive mode";
        if let Err(e) = tx.execute(lock).await {
            tracing::info!(error = %e, "another session holds the sessions table; loading with every index in place");
            return Ok(0);
        }
        let empty: bool = sqlx::query_scalar("select not exists (select 1 from sessions)")
            .fetch_one(&mut *tx)
            .await
            .context("checking whether the warehouse is empty")?;
        if !empty {
            return Ok(0);
        }
        let objects: Vec<Deferred> = sqlx::query_as(DEFERRABLE)
            .bind(&tables)
            .fetch_all(&mut *tx)
            .await
            .context("listing the indexes and foreign keys to defer")?;
        for (object, table, kind, definition) in &objects {
            sqlx::query(
                "insert into sync_deferred_ddl (object_name, table_name, kind, definition) values ($1, $2, $3, $4)
                 on conflict (object_name) do nothing",
            )
            .bind(object)
            .bind(table)
            .bind(kind)
            .bind(definition)
            .execute(&mut *tx)
            .await
            .context("recording a deferred index")?;
            let drop = match kind.as_str() {
                "index" => format!("drop index {object}"),
                _ => format!("alter table {table} drop constraint {object}"),
            };
            tx.execute(drop.as_str()).await.with_context(|| format!("deferring {object}"))?;
        }
        tx.commit().await.context("committing the deferred indexes")?;
        Ok(objects.len())
    }

    /// Re-creates every index and foreign key recorded in `sync_deferred_ddl` (building each index, validating
    /// each key over the loaded rows) and returns how many. Idempotent; each object in a transaction of its own,
    /// on a connection without the sync's statement timeout (building an index over a million rows takes a while).
    /// A foreign key that the rows violate fails here, naming it, and stays recorded (added `NOT VALID`, so it
    /// already checks new rows).
    pub async fn restore_deferred_ddl(&self) -> anyhow::Result<usize> {
        let pending: Vec<Deferred> = sqlx::query_as(
            "select object_name, table_name, kind, definition from sync_deferred_ddl order by kind desc, object_name",
        )
        .fetch_all(&self.pool)
        .await
        .context("reading the deferred indexes")?;
        if pending.is_empty() {
            return Ok(0);
        }
        let mut conn = self.connection_without(&["statement_timeout", "lock_timeout"], "to re-create indexes").await?;
        // Every object is tried: one key that fails does not keep the others away.
        let (mut restored, mut first_error) = (0, None);
        for object in &pending {
            let started = std::time::Instant::now();
            match restore_one(&mut conn, object).await {
                Ok(false) => {}
                Ok(true) => {
                    tracing::info!(object = %object.0, kind = %object.2, seconds = started.elapsed().as_secs_f64(), "re-created a deferred index or key");
                    restored += 1;
                }
                Err(e) => {
                    tracing::warn!(object = %object.0, error = %format!("{e:#}"), "cannot re-create a deferred index or key");
                    first_error.get_or_insert(e);
                }
            }
        }
        conn.close().await.ok();
        match first_error {
            Some(e) => Err(e),
            None => Ok(restored),
        }
    }
}

/// Locks `object`'s record for the transaction; false when it is gone (another run restored the object meanwhile:
/// two sources' backfills may end together).
async fn still_deferred(tx: &mut PgConnection, object: &str) -> anyhow::Result<bool> {
    let row: Option<i32> = sqlx::query_scalar("select 1 from sync_deferred_ddl where object_name = $1 for update")
        .bind(object)
        .fetch_optional(tx)
        .await
        .context("locking a deferred index's record")?;
    Ok(row.is_some())
}

/// Re-creates one recorded object; false when another run did it first.
async fn restore_one(conn: &mut PgConnection, (object, table, kind, definition): &Deferred) -> anyhow::Result<bool> {
    let mut tx = conn.begin().await?;
    if !still_deferred(&mut tx, object).await? {
        return Ok(false);
    }
    if kind == "index" {
        let exists: bool = sqlx::query_scalar("select to_regclass($1) is not null")
            .bind(object)
            .fetch_one(&mut *tx)
            .await
            .context("looking for a deferred index")?;
        if !exists {
            tx.execute(definition.as_str()).await.with_context(|| format!("re-creating index {object}"))?;
        }
    } else {
        let validated: Option<bool> = sqlx::query_scalar(
            "select convalidated from pg_constraint where conrelid = $2::regclass and format('%I', conname) = $1",
        )
        .bind(object)
        .bind(table)
        .fetch_optional(&mut *tx)
        .await
        .context("looking for a deferred foreign key")?;
        if validated.is_none() {
            // Added unvalidated first, and committed so, so that it checks new rows even if validation fails.
            let add = format!("alter table {table} add constraint {object} {definition} not valid");
            tx.execute(add.as_str()).await.with_context(|| format!("re-adding foreign key {object} of {table}"))?;
            tx.commit().await?;
            tx = conn.begin().await?;
            if !still_deferred(&mut tx, object).await? {
                return Ok(false);
            }
        }
        if validated != Some(true) {
            let validate = format!("alter table {table} validate constraint {object}");
            tx.execute(validate.as_str()).await.with_context(|| {
                format!(
                    "validating foreign key {object} of {table} after the backfill: some rows reference a session \
                         that is not there (find them with a left join on sessions; the key stays NOT VALID and this \
                         is retried at every start until they are gone)"
                )
            })?;
        }
    }
    sqlx::query("delete from sync_deferred_ddl where object_name = $1")
        .bind(object)
        .execute(&mut *tx)
        .await
        .context("removing a restored index from sync_deferred_ddl")?;
    tx.commit().await.with_context(|| format!("committing {object}"))?;
    Ok(true)
}
