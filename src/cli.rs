//! The command line: parses arguments and hands them to the command's module (`commands/`).

use std::path::PathBuf;

use clap::{Parser, Subcommand};

use crate::settings::Settings;
use crate::sync::Job;
use crate::{app, commands};

#[derive(Debug, Parser)]
#[command(name = "devin-etl", version, about = "Sync Devin session insights into PostgreSQL")]
pub struct Cli {
    /// Configuration file (TOML), layered over the built-in defaults; env DEVIN_ETL__SECTION__KEY wins over it.
    #[arg(long, global = true, env = "DEVIN_ETL_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the schema and apply pending migrations, then exit.
    Migrate,
    /// Run as a service: migrate, serve /healthz /readyz /metrics, and sync on `sync.schedule` until stopped.
    Run {
        /// First load the full history, unless a backfill has already completed.
        #[arg(long)]
        backfill: bool,
    },
    /// Run one sync (incremental, then enrichment of recent sessions), then exit. Migrates first.
    Sync {
        /// Load the full history (resumes an unfinished backfill), then set the watermark.
        #[arg(long, conflicts_with = "reconcile")]
        backfill: bool,
        /// Re-read the whole history and mark sessions the API no longer returns as deleted.
        #[arg(long)]
        reconcile: bool,
        /// Also re-read everything updated since this time (RFC 3339 or Unix seconds).
        #[arg(long, conflicts_with_all = ["backfill", "reconcile"])]
        since: Option<String>,
        /// The source to sync: with sources listed (`[sources.NAME]`), only that one (default: every listed
        /// source, one after another); otherwise it overrides `sync.source`. Each source has its own lock,
        /// watermark and sessions.
        #[arg(long)]
        source: Option<String>,
    },
    /// Show the watermark and its lag, the backfill's state, recent runs and row counts.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// The source to show: with sources listed, only that one (default: every listed source); otherwise it
        /// overrides `sync.source`.
        #[arg(long)]
        source: Option<String>,
    },
    /// List schema drift: fields, enum values and JSON types the API sent that the models do not know (with where,
    /// since when, how often, and an example session).
    Drift {
        /// Machine-readable output (a JSON array of `schema_drift` rows).
        #[arg(long)]
        json: bool,
        /// The source to show: with sources listed, only that one (default: every listed source); otherwise it
        /// overrides `sync.source`.
        #[arg(long)]
        source: Option<String>,
    },
    /// Serve the built-in Devin API simulator (synthetic data) until stopped.
    Simulate {
        #[arg(long, default_value_t = 8089)]
        port: u16,
        #[arg(long, default_value_t = 10_000)]
        sessions: usize,
        #[arg(long, default_value_t = 42)]
        seed: u64,
        /// Address to bind; loopback by default.
        #[arg(long, default_value = "127.0.0.1")]
        host: std::net::IpAddr,
    },
    /// Demonstrate a backfill and an incremental sync against the simulator, into a local database.
    Demo {
        #[arg(long, default_value_t = 2_000)]
        sessions: usize,
        /// Write into the configured database even when it is not the demo's own and already holds a warehouse.
        #[arg(long)]
        allow_any_database: bool,
    },
    /// Grant an existing role read-only access (usage + select) to the schema's tables and views, present and future.
    GrantReadonly {
        /// The role (must exist).
        role: String,
    },
    /// Moved: the benchmark is the program `devin-etl-bench` (`cargo run --release -p devin-etl-bench`).
    #[command(hide = true)]
    Bench {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = app::init(cli.config.as_deref())?;
    match cli.command {
        Command::Migrate => commands::migrate::run(&settings).await,
        Command::Run { backfill } => commands::service::run(settings, backfill).await,
        Command::Sync { backfill, reconcile, since, source } => {
            let sources = select_sources(settings, source)?;
            let job = match (backfill, reconcile) {
                (true, _) => Job::Backfill,
                (_, true) => Job::Reconcile,
                _ => Job::Sync { since: since.map(|s| commands::sync::parse_time(&s)).transpose()? },
            };
            commands::sync::run(sources, job).await
        }
        Command::Status { json, source } => commands::status::run(&select_sources(settings, source)?, json).await,
        Command::Drift { json, source } => commands::drift::run(&select_sources(settings, source)?, json).await,
        Command::Simulate { port, sessions, seed, host } => commands::simulate::run(host, port, sessions, seed).await,
        Command::Demo { sessions, allow_any_database } => {
            commands::demo::run(settings, sessions, allow_any_database).await
        }
        Command::GrantReadonly { role } => commands::grant::run(&settings, &role).await,
        Command::Bench { .. } => anyhow::bail!(
            "the benchmark is its own program now, so the service binary carries none of it: run \
             `cargo run --release -p devin-etl-bench -- [ARGS]` (same arguments as before; see docs/performance.md)"
        ),
    }
}

/// The settings of each source a command covers ([`Settings::per_source`]): with sources listed, every one, or only
/// `--source NAME` (an unknown name is an error listing the configured ones); in a single-source configuration, the
/// one source, `--source NAME` overriding `sync.source`.
pub fn select_sources(settings: Settings, source: Option<String>) -> anyhow::Result<Vec<Settings>> {
    if settings.sources.is_empty() {
        return Ok(vec![with_source(settings, source)?]);
    }
    let all = settings.per_source();
    let Some(name) = source else {
        return Ok(all);
    };
    let names: Vec<&str> = all.iter().map(|s| s.sync.source.as_str()).collect();
    match all.iter().position(|s| s.sync.source == name) {
        Some(i) => Ok(vec![all[i].clone()]),
        None => anyhow::bail!(
            "--source {name:?}: no such source; the configured sources are {} (listed as [sources.NAME] in the \
             configuration)",
            names.join(", ")
        ),
    }
}

/// `settings` with `--source NAME`, when given, as `sync.source`.
fn with_source(mut settings: Settings, source: Option<String>) -> anyhow::Result<Settings> {
    if let Some(source) = source {
        if source.trim().is_empty() || source.len() > 100 {
            anyhow::bail!("--source must be a non-empty name of at most 100 characters");
        }
        settings.sync.source = source;
    }
    Ok(settings)
}
