//! The warehouse: connection pool, migrations, bulk loads, watermark, backfill checkpoints and run history.
//!
//! Every connection's `search_path` is the configured schema, so SQL here and in the migrations uses
//! unqualified names and one database can hold several independent warehouses.

pub mod alerts;
pub mod catalogue;
mod checkpoint;
mod columns;
mod content_hash;
mod deferred;
mod drift;
mod enrichment;
pub mod error;
mod grants;
pub mod health;
mod history;
mod keepalive;
mod load;
mod lock;
mod rollups;
mod rows;
mod state;

use std::str::FromStr;
use std::time::Duration;

use anyhow::Context as _;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgConnection, PgPool};

pub use checkpoint::{Checkpoint, WatermarkUpdate, WriteStats};
pub use columns::CopyPayload;
pub use drift::DriftRow;
pub use enrichment::{BackoffPolicy, EnrichmentCandidate, EnrichmentClock};
pub use error::{DatabaseTimeout, LostLock, Retry, SourceBusy, StoreError, StoreErrorKind};
pub use load::copy_in;
pub use lock::{Fence, SourceLock};
pub use rollups::TABLES as ROLLUP_TABLES;
pub use rows::*;
pub use state::{BackfillState, ClockState, MassDeleteRefused, RunRecord, RunRow, RunStatus};

use crate::settings::DatabaseSettings;
use catalogue::Table;

/// Migrations embedded at compile time. `Migrator::run` takes an advisory lock, so replicas starting
/// together apply them once. Applied versions this binary does not know (a newer release migrated the database:
/// a rollback, or old replicas during a rolling update) are ignored rather than refused, since migrations are
/// additive only; [`Store::migrate`] logs them.
pub static MIGRATOR: sqlx::migrate::Migrator =
    sqlx::migrate::Migrator { ignore_missing: true, ..sqlx::migrate!("./migrations") };

/// Handle to the warehouse. Cheap to clone.
#[derive(Clone)]
pub struct Store {
    pool: PgPool,
    schema: String,
    /// For dedicated connections (the advisory lock) outside the pool.
    connect_options: PgConnectOptions,
    /// Client-side bound on every database operation: a server that vanished behind a half-open connection
    /// must fail the run, not hang it.
    operation_timeout: Duration,
    /// Bound of the tiny bookkeeping statements (`database.connect_timeout`).
    quick_timeout: Duration,
    /// The server's port, to find our sockets for TCP keepalive (see `keepalive.rs`).
    port: u16,
    /// Set on the store of a run that holds its source's lock: every transaction checks it first.
    fence: Option<Fence>,
}

/// Shows where the warehouse is, never the credentials: `PgConnectOptions`' own `Debug` prints the password.
impl std::fmt::Debug for Store {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let o = &self.connect_options;
        let target = format!("{}:{}/{}", o.get_host(), o.get_port(), o.get_database().unwrap_or_default());
        f.debug_struct("Store").field("target", &target).field("schema", &self.schema).finish_non_exhaustive()
    }
}

impl Store {
    /// Connects a pool of `max_connections` (at least 2) to the configured database and schema.
    pub async fn connect(settings: &DatabaseSettings, max_connections: u32) -> anyhow::Result<Store> {
        let options = connect_options(settings)?;
        let port = options.get_port();
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(settings.connect_timeout)
            .min_connections(0)
            .idle_timeout(settings.idle_timeout)
            .after_connect(move |_, _| {
                Box::pin(async move {
                    keepalive::apply(port);
                    Ok(())
                })
            })
            .connect_with(options.clone())
            .await
            .with_context(|| {
                format!(
                    "cannot connect to PostgreSQL at {} — is it running and is DATABASE_URL right?",
                    redacted_target(settings)
                )
            })?;
        Ok(Store {
            pool,
            schema: settings.schema.clone(),
            connect_options: options,
            operation_timeout: settings.operation_timeout,
            quick_timeout: settings.connect_timeout,
            port,
            fence: None,
        })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// This store for a run that holds `fence`'s lock: each of its transactions proves the run still owns the
    /// source before writing.
    pub fn fenced(&self, fence: Fence) -> Store {
        Store { fence: Some(fence), ..self.clone() }
    }

    pub fn fence(&self) -> Option<&Fence> {
        self.fence.as_ref()
    }

    /// Starts a transaction and, on a fenced store, proves the run still owns its source.
    pub async fn begin(&self) -> anyhow::Result<sqlx::Transaction<'static, sqlx::Postgres>> {
        let mut tx = self.pool.begin().await.context(
            "cannot get a working connection to PostgreSQL within database.connect_timeout: the server or the \
             network to it is down or stuck",
        )?;
        if let Some(fence) = &self.fence {
            fence.check(&mut tx).await?;
        }
        Ok(tx)
    }

    /// `operation`, or an error once it has taken longer than `database.operation_timeout` — or, on a fenced
    /// store, as soon as the run's lock is known to be lost (its heartbeat failed: the database is likely gone
    /// too, and nothing of the run may commit anyway).
    pub async fn bounded<T, E: Into<anyhow::Error>>(
        &self,
        what: &str,
        operation: impl std::future::Future<Output = Result<T, E>>,
    ) -> anyhow::Result<T> {
        let lost = async {
            match &self.fence {
                Some(fence) => fence.lost_signal().await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            result = within(self.operation_timeout, "database.operation_timeout", what, operation) => result,
            error = lost => Err(error.context(format!("stopped {what}"))),
        }
    }

    /// As [`Store::bounded`] for the run's own bookkeeping (its row in `sync_runs`): tiny statements, bounded by
    /// `database.connect_timeout`, and attempted even after the lock is lost, so a failed run is recorded as such.
    pub async fn bounded_bookkeeping<T, E: Into<anyhow::Error>>(
        &self,
        what: &str,
        operation: impl std::future::Future<Output = Result<T, E>>,
    ) -> anyhow::Result<T> {
        within(self.quick_timeout, "database.connect_timeout", what, operation).await
    }

    /// Creates the schema if needed and applies pending migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        // The schema name was validated as a plain identifier at config load; it cannot be bound as a parameter.
        sqlx::raw_sql(&format!("create schema if not exists {}", self.schema))
            .execute(&self.pool)
            .await
            .with_context(|| format!("cannot create schema {}", self.schema))?;
        // A connection of its own without the sync's statement and lock timeouts: building an index on a large
        // table may take minutes, and replicas starting together wait for each other's migrations.
        let mut conn = self.connection_without(&["statement_timeout", "lock_timeout"], "to apply migrations").await?;
        let migrated = MIGRATOR.run(&mut conn).await;
        conn.close().await.ok();
        migrated.with_context(|| format!("migrating schema {} failed", self.schema))?;
        self.log_unknown_migrations().await;
        Ok(())
    }

    /// Warns about applied migrations this binary does not know: a newer release migrated the schema (additive
    /// only, so this binary keeps working on it).
    async fn log_unknown_migrations(&self) {
        match self.migration_status().await {
            Ok(status) if !status.unknown.is_empty() => tracing::warn!(
                schema = %self.schema,
                unknown_versions = ?status.unknown,
                "the schema has migrations this binary does not know (a newer release applied them); running on it, \
                 since migrations are additive only"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %format!("{e:#}"), "cannot compare the applied migrations with ours"),
        }
    }

    /// A connection of its own, outside the pool, with the server-side `limits` (e.g. `statement_timeout`) of the
    /// sync's connections switched off: for work that may rightly take minutes (migrations, VACUUM, index builds).
    /// TCP keepalive still notices a dead server.
    pub(super) async fn connection_without(&self, limits: &[&str], what: &str) -> anyhow::Result<PgConnection> {
        let unbounded = self.connect_options.clone().options(limits.iter().map(|limit| (*limit, "0")));
        let conn = PgConnection::connect_with(&unbounded).await.with_context(|| format!("connecting {what}"))?;
        keepalive::apply(self.port);
        Ok(conn)
    }

    /// `VACUUM (ANALYZE)` of the session tables and their history, after a backfill: rows freshly COPYed carry no
    /// hint bits, so without it the first runs after a large backfill set them on every page they touch — dirtying
    /// pages they only read (at 1M sessions, deleting a first incremental run's old child rows took 37 s; after a
    /// VACUUM under 50 ms per statement). Not bounded by
    /// `database.operation_timeout` (it reads the whole warehouse once); the connection's keepalive still notices
    /// a dead server.
    pub async fn vacuum_analyze(&self) -> anyhow::Result<()> {
        let tables = loaded_tables();
        // A connection of its own without the sync's statement timeout (as for migrations); VACUUM cannot run in a
        // transaction, so it is sent alone.
        let mut conn = self.connection_without(&["statement_timeout"], "to vacuum the warehouse").await?;
        let sql = format!("vacuum (analyze) {}", tables.join(", "));
        let vacuumed = sqlx::Executor::execute(&mut conn, sql.as_str()).await;
        conn.close().await.ok();
        vacuumed.context("vacuuming the session tables")?;
        Ok(())
    }

    /// Refreshes the planner's statistics of the loaded tables. After a bulk load, autovacuum may take a minute to
    /// get there, and until then the first incremental run plans its child-row deletes as scans.
    pub async fn analyze(&self) -> anyhow::Result<()> {
        let tables = loaded_tables();
        let tables = tables.join(", ");
        let sql = format!("analyze {tables}");
        self.bounded("analyzing the session tables", sqlx::raw_sql(&sql).execute(&self.pool))
            .await
            .context("analyzing the session tables")?;
        Ok(())
    }

    /// Row counts of the session tables, their history, then the bookkeeping tables ([`TABLES`]).
    pub async fn table_counts(&self) -> anyhow::Result<Vec<(&'static str, i64)>> {
        let mut counts = Vec::new();
        for table in TABLES {
            let n: i64 = sqlx::query_scalar(&format!("select count(*) from {table}"))
                .fetch_one(&self.pool)
                .await
                .with_context(|| format!("counting rows of {table}"))?;
            counts.push((*table, n));
        }
        Ok(counts)
    }
}

/// The tables a backfill loads — the session tables, their history and the rollups — as a list for `VACUUM` or
/// `ANALYZE`.
fn loaded_tables() -> Vec<&'static str> {
    Table::ALL.iter().map(|t| t.name()).chain(catalogue::HISTORY).chain(rollups::TABLES).collect()
}

/// The tables `status` and `demo` count: the session tables, their history, then the bookkeeping (`sync_state`,
/// `sync_runs`, `schema_drift`, `alerts`).
pub const TABLES: &[&str] = &catalogue::COUNTED_TABLES;

/// `operation`'s result, or a [`DatabaseTimeout`] naming `key` once it has taken longer than `limit`.
async fn within<T, E: Into<anyhow::Error>>(
    limit: Duration,
    key: &'static str,
    what: &str,
    operation: impl std::future::Future<Output = Result<T, E>>,
) -> anyhow::Result<T> {
    match tokio::time::timeout(limit, operation).await {
        Ok(result) => result.map_err(Into::into),
        Err(_) => Err(DatabaseTimeout { what: what.to_owned(), after: limit, key }.into()),
    }
}

fn connect_options(settings: &DatabaseSettings) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(settings.url.expose_secret())
        .context("database.url is not a valid PostgreSQL URL (check DATABASE_URL)")?;
    let millis = |d: Duration| format!("{}ms", d.as_millis());
    Ok(options
        .application_name("devin-etl")
        .options([
            ("search_path", settings.schema.clone()),
            // The server ends a statement or a lock wait that runs away, before the client-side timeout fires.
            ("statement_timeout", millis(settings.statement_timeout)),
            ("lock_timeout", millis(settings.lock_timeout)),
            // The loader's statements each touch a few hundred sessions, but an estimate made from statistics of a
            // table half loaded can cost them in millions, and JIT then compiles for hundreds of milliseconds per
            // call: `rollup_apply` for 400 sessions of a 1M warehouse took 4.0 s with JIT, 0.09 s without.
            ("jit", "off".to_owned()),
        ])
        .options(keepalive::server_options())
        .log_statements(tracing::log::LevelFilter::Trace))
}

/// `host:port/database` of the configured URL, without user or password, for messages.
pub fn redacted_target(settings: &DatabaseSettings) -> String {
    match url::Url::parse(settings.url.expose_secret()) {
        Ok(u) => format!("{}:{}{}", u.host_str().unwrap_or("localhost"), u.port().unwrap_or(5432), u.path()),
        Err(_) => "(unparseable database.url)".to_owned(),
    }
}

/// Creates `database` on the server of `settings` if it does not exist (for `demo` and tests).
pub async fn create_database_if_missing(settings: &DatabaseSettings) -> anyhow::Result<()> {
    let options = connect_options(settings)?;
    let Some(database) = options.get_database().map(str::to_owned) else {
        return Ok(());
    };
    let mut admin = options
        .database("postgres")
        .connect()
        .await
        .with_context(|| format!("cannot connect to PostgreSQL at {}", redacted_target(settings)))?;
    let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_database where datname = $1)")
        .bind(&database)
        .fetch_one(&mut admin)
        .await?;
    if !exists {
        let quoted = database.replace('"', "\"\"");
        sqlx::raw_sql(&format!("create database \"{quoted}\""))
            .execute(&mut admin)
            .await
            .with_context(|| format!("cannot create database {database}"))?;
    }
    admin.close().await.ok();
    Ok(())
}
