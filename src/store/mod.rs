//! The warehouse: connection pool, migrations, bulk loads, watermark, backfill checkpoints and run history.
//!
//! Every connection's `search_path` is the configured schema, so SQL here and in the migrations uses
//! unqualified names and one database can hold several independent warehouses.

mod columns;
mod grants;
pub mod health;
mod load;
mod lock;
mod rows;
mod state;

use std::str::FromStr;

use anyhow::Context as _;
use secrecy::ExposeSecret;
use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::{ConnectOptions, Connection, PgPool};

pub use load::{Checkpoint, CopyPayload, WriteStats};
pub use lock::SourceLock;
pub use rows::*;
pub use state::{BackfillState, RunRecord, RunRow, RunStatus};

use crate::config::DatabaseSettings;

/// Migrations embedded at compile time. `Migrator::run` takes an advisory lock, so replicas starting
/// together apply them once.
pub static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("./migrations");

/// Handle to the warehouse. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Store {
    pool: PgPool,
    schema: String,
    /// For dedicated connections (the advisory lock) outside the pool.
    connect_options: PgConnectOptions,
}

impl Store {
    /// Connects a pool of `max_connections` (at least 2) to the configured database and schema.
    pub async fn connect(settings: &DatabaseSettings, max_connections: u32) -> anyhow::Result<Store> {
        let options = connect_options(settings)?;
        let pool = PgPoolOptions::new()
            .max_connections(max_connections.max(2))
            .acquire_timeout(settings.connect_timeout)
            .connect_with(options.clone())
            .await
            .with_context(|| {
                format!(
                    "cannot connect to PostgreSQL at {} — is it running and is DATABASE_URL right?",
                    redacted_target(settings)
                )
            })?;
        Ok(Store { pool, schema: settings.schema.clone(), connect_options: options })
    }

    pub fn pool(&self) -> &PgPool {
        &self.pool
    }

    pub fn schema(&self) -> &str {
        &self.schema
    }

    /// Creates the schema if needed and applies pending migrations.
    pub async fn migrate(&self) -> anyhow::Result<()> {
        // The schema name was validated as a plain identifier at config load; it cannot be bound as a parameter.
        sqlx::raw_sql(&format!("create schema if not exists {}", self.schema))
            .execute(&self.pool)
            .await
            .with_context(|| format!("cannot create schema {}", self.schema))?;
        MIGRATOR.run(&self.pool).await.with_context(|| format!("migrating schema {} failed", self.schema))?;
        Ok(())
    }

    /// Refreshes the planner's statistics of the session tables. After a bulk load, autovacuum may take a
    /// minute to get there, and until then the first incremental run plans its child-row deletes as scans.
    pub async fn analyze(&self) -> anyhow::Result<()> {
        let tables = TABLES.iter().filter(|t| t.starts_with("session")).copied().collect::<Vec<_>>().join(", ");
        sqlx::raw_sql(&format!("analyze {tables}"))
            .execute(&self.pool)
            .await
            .context("analyzing the session tables")?;
        Ok(())
    }

    /// Row counts of every warehouse table, in DESIGN.md's order.
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

/// The warehouse tables, in DESIGN.md's order.
pub const TABLES: &[&str] = &[
    "sessions",
    "session_pull_requests",
    "session_issues",
    "session_action_items",
    "session_timeline_events",
    "session_note_usages",
    "session_prompt_feedback",
    "session_tags",
    "session_children",
    "sync_state",
    "sync_runs",
];

fn connect_options(settings: &DatabaseSettings) -> anyhow::Result<PgConnectOptions> {
    let options = PgConnectOptions::from_str(settings.url.expose_secret())
        .context("database.url is not a valid PostgreSQL URL (check DATABASE_URL)")?;
    Ok(options
        .application_name("devin-etl")
        .options([("search_path", settings.schema.as_str())])
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
