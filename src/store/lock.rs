//! Single flight across replicas: a session-level advisory lock per schema and source, held on a dedicated
//! connection (never a pooled one: a pooled connection would go back to the pool still holding the lock).

use anyhow::Context as _;
use sqlx::{Connection, PgConnection};

use super::Store;

/// Held while it lives; released explicitly by [`SourceLock::release`] or when its connection closes
/// (process exit, network loss — PostgreSQL then frees the lock itself).
#[derive(Debug)]
pub struct SourceLock {
    conn: PgConnection,
    source: String,
}

/// The lock key: `(hashtext('devin-etl:' || schema), hashtext(source))`, so warehouses in different schemas of
/// one database do not block each other.
const TRY_LOCK: &str = "select pg_try_advisory_lock(hashtext('devin-etl:' || current_schema()), hashtext($1))";
const UNLOCK: &str = "select pg_advisory_unlock(hashtext('devin-etl:' || current_schema()), hashtext($1))";

impl Store {
    /// Takes the source's lock if no one holds it; `None` when another process (or replica) does.
    pub async fn try_lock_source(&self, source: &str) -> anyhow::Result<Option<SourceLock>> {
        let mut conn = PgConnection::connect_with(&self.connect_options)
            .await
            .context("opening a dedicated connection for the single-flight lock")?;
        let acquired: bool = sqlx::query_scalar(TRY_LOCK)
            .bind(source)
            .fetch_one(&mut conn)
            .await
            .context("taking the single-flight advisory lock")?;
        if acquired {
            Ok(Some(SourceLock { conn, source: source.to_owned() }))
        } else {
            conn.close().await.ok();
            Ok(None)
        }
    }
}

impl SourceLock {
    /// Releases the lock and closes its connection.
    pub async fn release(mut self) {
        if let Err(e) = sqlx::query(UNLOCK).bind(&self.source).execute(&mut self.conn).await {
            tracing::warn!(error = %e, "releasing the advisory lock failed; closing its connection frees it");
        }
        self.conn.close().await.ok();
    }
}
