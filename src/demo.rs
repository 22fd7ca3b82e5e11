//! `devin-etl demo`: the simulator in-process, a real backfill and incremental sync into a local database,
//! and a short table of what happened.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use secrecy::{ExposeSecret, SecretString};

use crate::config::Settings;
use crate::local_pg::{self, LocalCluster};
use crate::simulator::{Simulator, SimulatorConfig};
use crate::store;
use crate::sync::{Mode, RunOutcome};

/// The database `demo` uses unless DATABASE_URL or a config file names another.
pub const DEMO_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/devin_etl_demo";
const BUILT_IN_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/devin_etl";
/// Where a throwaway cluster lives when no server runs.
const LOCAL_CLUSTER_DIR: &str = ".demo-pg";

pub async fn run(mut settings: Settings, sessions: usize) -> anyhow::Result<()> {
    let demo_database = settings.database.url.expose_secret() == BUILT_IN_DATABASE_URL;
    if demo_database {
        settings.database.url = SecretString::from(DEMO_DATABASE_URL.to_owned());
    }
    let _cluster = ensure_server(&settings)?;
    store::create_database_if_missing(&settings.database).await?;

    let started = Instant::now();
    let sim = Simulator::new(SimulatorConfig { sessions, ..SimulatorConfig::default() });
    let server = sim.serve(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    println!(
        "simulator: {} sessions at {} (generated in {:.2} s)",
        sim.len(),
        server.base_url(),
        started.elapsed().as_secs_f64()
    );
    settings.api.base_url = server.base_url().parse().context("simulator URL")?;
    settings.api.token = Some(SecretString::from(sim.token().to_owned()));

    let syncer = crate::cli::connect(settings).await?;
    if demo_database {
        // The demo database is the demo's own: start from an empty warehouse so every demo shows a full backfill.
        reset_schema(&syncer).await?;
    }
    println!("database: {} (schema {})", store::redacted_target(&syncer.settings().database), syncer.store().schema());

    let backfill = syncer.run_once(Mode::Backfill).await?;
    sim.advance(60);
    let updated = sim.update_some((sessions / 100).max(1));
    let created = sim.create((sessions / 200).max(1));
    sim.advance(60);
    let incremental = syncer.run_once(Mode::Incremental).await?;
    let idle = syncer.run_once(Mode::Incremental).await?;
    println!("changed in the API between runs: {} updated, {} created\n", updated.len(), created.len());

    print_report(&syncer, &[("backfill", &backfill), ("incremental", &incremental), ("no-op incremental", &idle)])
        .await?;
    server.shutdown().await;
    Ok(())
}

async fn reset_schema(syncer: &crate::sync::Syncer) -> anyhow::Result<()> {
    let schema = syncer.store().schema();
    // The schema name is a validated plain identifier.
    sqlx::raw_sql(&format!("drop schema if exists {schema} cascade")).execute(syncer.store().pool()).await?;
    syncer.store().migrate().await
}

/// Starts a throwaway cluster when nothing answers at a loopback database URL.
fn ensure_server(settings: &Settings) -> anyhow::Result<Option<LocalCluster>> {
    let url = url::Url::parse(settings.database.url.expose_secret()).context("database.url")?;
    let host = url.host_str().unwrap_or("localhost").to_owned();
    let port = url.port().unwrap_or(5432);
    if local_pg::server_answers(&host, port) {
        return Ok(None);
    }
    if !matches!(host.as_str(), "127.0.0.1" | "localhost" | "::1" | "[::1]") {
        anyhow::bail!("no PostgreSQL server answers at {host}:{port}; start it or set DATABASE_URL");
    }
    println!(
        "no PostgreSQL server answers at {host}:{port}: starting a private throwaway cluster in {LOCAL_CLUSTER_DIR}/ (stopped when the demo ends)"
    );
    LocalCluster::start(Path::new(LOCAL_CLUSTER_DIR), port).map(Some)
}

async fn print_report(syncer: &crate::sync::Syncer, runs: &[(&str, &RunOutcome)]) -> anyhow::Result<()> {
    println!("{:<26} {:>10}", "table", "rows");
    for (table, count) in syncer.store().table_counts().await? {
        println!("{table:<26} {count:>10}");
    }
    let watermark = syncer.store().watermark(&syncer.settings().sync.source).await?;
    let watermark =
        watermark.and_then(|w| chrono::DateTime::from_timestamp(w, 0)).map_or("none".to_owned(), |t| t.to_rfc3339());
    println!("\nwatermark: {watermark} (API server time minus settle)\n");
    println!(
        "{:<18} {:>8} {:>8} {:>10} {:>10} {:>12} {:>10}",
        "run", "pages", "requests", "read", "written", "rows written", "seconds"
    );
    for (name, o) in runs {
        println!(
            "{:<18} {:>8} {:>8} {:>10} {:>10} {:>12} {:>10.3}",
            name,
            o.pages,
            o.requests,
            o.items,
            o.writes.sessions_written,
            o.writes.total_rows(),
            o.duration.as_secs_f64()
        );
    }
    Ok(())
}
