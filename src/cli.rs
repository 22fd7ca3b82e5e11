//! The command line: parses arguments and runs one command.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context as _;
use clap::{Parser, Subcommand};

use crate::api::ApiClient;
use crate::config::Settings;
use crate::simulator::{Simulator, SimulatorConfig};
use crate::store::Store;
use crate::sync::{Mode, Syncer};
use crate::{demo, telemetry};

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
        /// The source to sync (overrides `sync.source`; each source has its own lock, watermark and sessions).
        #[arg(long)]
        source: Option<String>,
    },
    /// Show the watermark and its lag, the backfill's state, recent runs and row counts.
    Status {
        /// Machine-readable output.
        #[arg(long)]
        json: bool,
        /// The source to show (overrides `sync.source`).
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
    /// Benchmark backfill and incremental runs against the simulator, next to the fetch and COPY floors.
    Bench(crate::bench::BenchArgs),
}

/// Runs the parsed command.
pub async fn run(cli: Cli) -> anyhow::Result<()> {
    let settings = Settings::load(cli.config.as_deref())?;
    telemetry::init(&settings.log);
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    match cli.command {
        Command::Migrate => {
            let store = Store::connect(&settings.database, 2).await?;
            store.migrate().await?;
            println!("schema {} is up to date", store.schema());
            Ok(())
        }
        Command::Run { backfill } => run_service(settings, backfill).await,
        Command::Sync { backfill, reconcile, since, source } => {
            let settings = with_source(settings, source)?;
            let (stop, stopped) = tokio::sync::watch::channel(false);
            tokio::spawn(crate::schedule::forward_signals(stop));
            let syncer = connect(settings).await?.with_shutdown(stopped);
            let since = since.map(|s| parse_time(&s)).transpose()?;
            // Each of these takes the source's lock for itself (and fails at once when another process holds it).
            match (backfill, reconcile) {
                (true, _) => syncer.run_once(Mode::Backfill).await.map(drop),
                (_, true) => syncer.run_once(Mode::Reconcile).await.map(drop),
                _ => syncer.sync(since).await.map(drop),
            }
        }
        Command::Status { json, source } => {
            let settings = with_source(settings, source)?;
            let store = Store::connect(&settings.database, 2).await?;
            store.migrate().await?;
            let status = crate::status::collect(&store, &settings.sync.source).await?;
            if json {
                println!("{}", serde_json::to_string_pretty(&status)?);
            } else {
                print!("{}", crate::status::render(&status));
            }
            Ok(())
        }
        Command::Simulate { port, sessions, seed, host } => {
            let sim = Simulator::new(SimulatorConfig { sessions, seed, ..SimulatorConfig::default() });
            let running = sim.serve(SocketAddr::new(host, port)).await?;
            println!(
                "simulator serving {sessions} sessions at {} (token {}); Ctrl-C to stop",
                running.base_url(),
                sim.token()
            );
            tokio::signal::ctrl_c().await?;
            running.shutdown().await;
            Ok(())
        }
        Command::Demo { sessions, allow_any_database } => demo::run(settings, sessions, allow_any_database).await,
        Command::GrantReadonly { role } => {
            let store = Store::connect(&settings.database, 2).await?;
            store.migrate().await?;
            store.grant_readonly(&role).await?;
            println!("granted {role} read-only access to schema {}", store.schema());
            Ok(())
        }
        Command::Bench(args) => crate::bench::run(settings, args).await,
    }
}

/// `devin-etl run`: the HTTP endpoints and the scheduler, until SIGTERM/SIGINT.
async fn run_service(settings: Settings, backfill: bool) -> anyhow::Result<()> {
    let metrics = telemetry::install_metrics()?;
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::schedule::forward_signals(stop));
    let listen = settings.server.listen;
    let max_staleness = settings.server.max_staleness;
    let max_run_duration = settings.server.max_run_duration;
    let syncer = connect(settings).await?.with_shutdown(stopped.clone());
    let listener = tokio::net::TcpListener::bind(listen)
        .await
        .with_context(|| format!("server.listen: cannot listen on {listen}"))?;
    // A pool of its own, so a busy backfill cannot make /readyz time out waiting for a connection.
    let http_store = Store::connect(&syncer.settings().database, 2).await?;
    let state = crate::http::HttpState {
        store: http_store,
        source: syncer.source().to_owned(),
        max_staleness,
        max_run_duration,
        metrics,
    };
    let mut http_stop = stopped.clone();
    let http = tokio::spawn(crate::http::serve(listener, state, async move {
        let _ = http_stop.wait_for(|stop| *stop).await;
    }));
    let result = crate::schedule::run_daemon(syncer, backfill, stopped).await;
    match http.await {
        Ok(Err(e)) => tracing::warn!(error = %e, "the HTTP server stopped with an error"),
        Err(e) => tracing::warn!(error = %e, "the HTTP server task failed"),
        Ok(Ok(())) => {}
    }
    result
}

/// Connects, migrates and builds a [`Syncer`] with a pool sized to the backfill's concurrency.
pub async fn connect(settings: Settings) -> anyhow::Result<Syncer> {
    let api = ApiClient::new(&settings.api)?;
    let pool_size = match settings.database.max_connections {
        0 => settings.sync.backfill_concurrency as u32 + 2,
        n => n,
    };
    let store = Store::connect(&settings.database, pool_size).await?;
    store.migrate().await?;
    Ok(Syncer::new(settings, api, store))
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

/// RFC 3339 or Unix seconds.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp())
        .with_context(|| format!("--since {text:?} is neither RFC 3339 (2026-01-31T00:00:00Z) nor Unix seconds"))
}
