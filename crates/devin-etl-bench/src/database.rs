//! The benchmark database: its URL, its own connections, re-creation, checkpoints, and the machine it runs on.

use std::str::FromStr as _;
use std::time::Duration;

use anyhow::Context as _;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection};

use crate::measure::proc_kb;

/// The configured URL with its database replaced by `database`.
pub(crate) fn database_url(configured: &str, database: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(configured).context("database.url is not a valid URL")?;
    url.set_path(&format!("/{database}"));
    Ok(url.to_string())
}

/// Options for the benchmark's own connections: statements (checkpoints and COPYs are slow on purpose) logged
/// at trace level only.
pub(crate) fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)
        .context("database.url is not a valid PostgreSQL URL")?
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Trace, Duration::from_secs(1)))
}

pub(crate) async fn connect(url: &str) -> anyhow::Result<PgConnection> {
    connect_options(url)?.connect().await.context("connecting to the benchmark database")
}

pub(crate) async fn recreate_database(
    url: &str,
    database: &str,
    log_min_duration_ms: Option<u32>,
) -> anyhow::Result<()> {
    let mut admin = connect_options(url)?.database("postgres").connect().await.with_context(|| {
        format!("cannot connect to PostgreSQL for the benchmark database {database} — is the server running?")
    })?;
    let connected: i64 = sqlx::query_scalar("select count(*) from pg_stat_activity where datname = $1")
        .bind(database)
        .fetch_one(&mut admin)
        .await?;
    anyhow::ensure!(
        connected == 0,
        "{connected} session(s) are connected to the benchmark database {database} (another bench running?); \
         wait for it or pass --database another_name"
    );
    // `database` was checked to be a plain identifier.
    sqlx::raw_sql(&format!("drop database if exists {database}")).execute(&mut admin).await?;
    sqlx::raw_sql(&format!("create database {database}")).execute(&mut admin).await?;
    if let Some(ms) = log_min_duration_ms {
        // Only this database's sessions log; the setting goes with the database.
        sqlx::raw_sql(&format!("alter database {database} set log_min_duration_statement = {ms}"))
            .execute(&mut admin)
            .await
            .context("--pg-log-min-duration-ms needs a superuser")?;
    }
    admin.close().await.ok();
    Ok(())
}

/// Flushes dirty buffers, so the next phase does not pay for the previous one's writes.
pub(crate) async fn checkpoint(conn: &mut PgConnection) -> anyhow::Result<()> {
    if let Err(e) = sqlx::raw_sql("checkpoint").execute(&mut *conn).await {
        tracing::warn!(error = %e, "checkpoint refused (needs superuser or pg_checkpoint); phases may overlap");
    }
    Ok(())
}

/// What the figures were measured on.
#[derive(Debug, Clone)]
pub(crate) struct Machine {
    pub(crate) cpus: usize,
    pub(crate) cpu_model: String,
    pub(crate) mem_total_mb: u64,
    pub(crate) pg_version: String,
    pub(crate) pg_settings: Vec<(String, String)>,
    pub(crate) load_before: String,
}

impl Machine {
    pub(crate) async fn read(conn: &mut PgConnection, load_before: String) -> anyhow::Result<Machine> {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, m)| m.trim()))
            .unwrap_or("unknown")
            .to_owned();
        let mem_total_mb = proc_kb("/proc/meminfo", "MemTotal:").unwrap_or(0) / 1024;
        let pg_version: String = sqlx::query_scalar("show server_version").fetch_one(&mut *conn).await?;
        let mut pg_settings = Vec::new();
        for name in ["shared_buffers", "max_wal_size", "synchronous_commit", "fsync", "wal_level"] {
            let value: String = sqlx::query_scalar(&format!("show {name}")).fetch_one(&mut *conn).await?;
            pg_settings.push((name.to_owned(), value));
        }
        Ok(Machine {
            cpus: std::thread::available_parallelism().map_or(0, |n| n.get()),
            cpu_model,
            mem_total_mb,
            pg_version,
            pg_settings,
            load_before,
        })
    }
}

/// One table's size on disk, in bytes: everything (TOAST included), the heap alone, its indexes.
#[derive(Debug, Clone, sqlx::FromRow)]
pub(crate) struct TableSize {
    pub(crate) table: String,
    pub(crate) total: i64,
    pub(crate) heap: i64,
    pub(crate) indexes: i64,
}

/// The size on disk of every table of `schema`, largest first.
pub(crate) async fn table_sizes(conn: &mut PgConnection, schema: &str) -> anyhow::Result<Vec<TableSize>> {
    sqlx::query_as(
        "select c.relname::text as table, pg_total_relation_size(c.oid) as total,
                pg_relation_size(c.oid) as heap, pg_indexes_size(c.oid) as indexes
         from pg_class c join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = $1 and c.relkind = 'r' and c.relname not like '\\_sqlx%'
         order by pg_total_relation_size(c.oid) desc",
    )
    .bind(schema)
    .fetch_all(&mut *conn)
    .await
    .context("reading the tables' sizes")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn database_url_replaces_only_the_database() {
        assert_eq!(
            database_url("postgres://u:p@db:5433/warehouse?sslmode=disable", "devin_etl_bench").expect("valid"),
            "postgres://u:p@db:5433/devin_etl_bench?sslmode=disable"
        );
    }
}
