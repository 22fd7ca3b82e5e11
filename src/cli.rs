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
    /// Run one sync (incremental by default), then exit. Migrates first.
    Sync {
        /// Load the full history (resumes an unfinished backfill), then set the watermark.
        #[arg(long)]
        backfill: bool,
        /// Also re-read everything updated since this time (RFC 3339 or Unix seconds).
        #[arg(long, conflicts_with = "backfill")]
        since: Option<String>,
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
    match cli.command {
        Command::Migrate => {
            let store = Store::connect(&settings.database, 2).await?;
            store.migrate().await?;
            println!("schema {} is up to date", store.schema());
            Ok(())
        }
        Command::Sync { backfill, since } => {
            let syncer = connect(settings).await?;
            let mode = if backfill { Mode::Backfill } else { Mode::Incremental };
            let since = since.map(|s| parse_time(&s)).transpose()?;
            syncer.run_once_since(mode, since).await?;
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
        Command::Demo { sessions } => demo::run(settings, sessions).await,
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

/// RFC 3339 or Unix seconds.
fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp())
        .with_context(|| format!("--since {text:?} is neither RFC 3339 (2026-01-31T00:00:00Z) nor Unix seconds"))
}
