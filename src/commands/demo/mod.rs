//! `devin-etl demo`: the simulator in-process, a real backfill, a simulated week of changes synced every few
//! hours (so the history has something to show), and incremental syncs into a local database, with a short table
//! of what happened.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Instant;

use anyhow::Context as _;
use secrecy::{ExposeSecret, SecretString};

use devin_sim::{Simulator, SimulatorConfig};

use crate::app;
use crate::settings::Settings;
use crate::store;
use crate::sync::{Mode, RunOutcome, Syncer};

mod local_pg;
use local_pg::LocalCluster;

/// The database `demo` uses unless DATABASE_URL or a config file names another.
pub const DEMO_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/devin_etl_demo";
const BUILT_IN_DATABASE_URL: &str = "postgres://postgres@127.0.0.1:5432/devin_etl";
/// Where a throwaway cluster lives when no server runs.
const LOCAL_CLUSTER_DIR: &str = ".demo-pg";

/// Runs the demo. Unless `allow_any_database`, it refuses a database other than its own (`devin_etl_demo`) whose
/// schema already holds a warehouse: 2,000 synthetic sessions and a moved watermark would pollute it.
pub async fn run(mut settings: Settings, sessions: usize, allow_any_database: bool) -> anyhow::Result<()> {
    let demo_database = settings.database.url.expose_secret() == BUILT_IN_DATABASE_URL;
    if demo_database {
        settings.database.url = SecretString::from(DEMO_DATABASE_URL.to_owned());
    }
    let _cluster = ensure_server(&settings)?;
    store::create_database_if_missing(&settings.database).await?;
    if !allow_any_database && !is_demo_database(&settings) {
        refuse_a_warehouse(&settings).await?;
    }

    let started = Instant::now();
    // The simulated API starts a week ago; the demo then lives through that week in seconds (see `live_a_week`).
    let week_ago = chrono::Utc::now().timestamp() - DEMO_DAYS * DAY;
    // Sessions of the last 90 days, so ages in the history's answers look like a live enterprise's.
    let sim = Simulator::new(SimulatorConfig {
        sessions,
        start_time: Some(week_ago),
        history_days: 90,
        ..SimulatorConfig::default()
    });
    let server = sim.serve(SocketAddr::from(([127, 0, 0, 1], 0))).await?;
    println!(
        "simulator: {} sessions at {} (generated in {:.2} s)",
        sim.len(),
        server.base_url(),
        started.elapsed().as_secs_f64()
    );
    settings.api.base_url = server.base_url().parse().context("simulator URL")?;
    settings.api.token = Some(SecretString::from(sim.token().to_owned()));
    // The simulated clock runs a week in seconds, which the watermark's clock guard would take for a lying clock.
    settings.sync.clock_tolerance = std::time::Duration::from_secs(2 * DEMO_DAYS as u64 * DAY as u64);

    let syncer = app::syncer(settings).await?.with_progress(super::progress_bar::for_stderr());
    if demo_database {
        // The demo database is the demo's own: start from an empty warehouse so every demo shows a full backfill.
        reset_schema(&syncer).await?;
    }
    println!("database: {} (schema {})", store::redacted_target(&syncer.settings().database), syncer.store().schema());

    let backfill = syncer.run_once(Mode::Backfill).await?;
    let week = live_a_week(&sim, &syncer, sessions).await?;
    sim.advance(60);
    let updated = sim.update_some((sessions / 100).max(1));
    let created = sim.create((sessions / 200).max(1));
    sim.advance(60);
    let incremental = syncer.run_once(Mode::Incremental).await?;
    let idle = syncer.run_once(Mode::Incremental).await?;
    println!(
        "a simulated week: {} syncs every {} hours, {} session changes and {} new sessions",
        week.syncs, TICK_HOURS, week.updated, week.created
    );
    println!("changed in the API before the last runs: {} updated, {} created\n", updated.len(), created.len());

    print_report(&syncer, &[("backfill", &backfill), ("incremental", &incremental), ("no-op incremental", &idle)])
        .await?;
    print_history(&syncer).await?;
    server.shutdown().await;
    Ok(())
}

const DAY: i64 = 86_400;
/// Days the demo lives through after its backfill, and the simulated time between its syncs.
const DEMO_DAYS: i64 = 7;
const TICK_HOURS: i64 = 6;

struct Week {
    syncs: usize,
    updated: usize,
    created: usize,
}

/// Lives through the week after the backfill: every `TICK_HOURS`, some sessions change (status, ACUs, PRs
/// opened and merged) and some start, and a sync loads them — so the history tables and views have something to
/// show.
async fn live_a_week(sim: &Simulator, syncer: &Syncer, sessions: usize) -> anyhow::Result<Week> {
    let mut week = Week { syncs: 0, updated: 0, created: 0 };
    for _ in 0..DEMO_DAYS * 24 / TICK_HOURS {
        sim.advance(TICK_HOURS * 3_600);
        week.updated += sim.update_some((sessions / 50).max(1)).len();
        week.created += sim.create((sessions / 800).max(1)).len();
        syncer.sync(None).await?;
        week.syncs += 1;
    }
    Ok(week)
}

/// Whether the configured database is the demo's own (`devin_etl_demo`, on whichever server).
fn is_demo_database(settings: &Settings) -> bool {
    let own = DEMO_DATABASE_URL.rsplit('/').next();
    url::Url::parse(settings.database.url.expose_secret())
        .is_ok_and(|u| u.path_segments().and_then(|mut s| s.next()) == own)
}

/// Fails when the configured schema already holds sessions or sync state: that database is someone's warehouse.
async fn refuse_a_warehouse(settings: &Settings) -> anyhow::Result<()> {
    let store = app::small_store(settings).await?;
    let mut rows = 0;
    for table in ["sessions", "sync_state"] {
        // to_regclass follows search_path (the configured schema) and yields null for a missing table.
        let exists: bool = sqlx::query_scalar(&format!("select to_regclass('{table}') is not null"))
            .fetch_one(store.pool())
            .await
            .with_context(|| format!("looking for the table {table}"))?;
        if exists {
            let n: i64 = sqlx::query_scalar(&format!("select count(*) from {table}"))
                .fetch_one(store.pool())
                .await
                .with_context(|| format!("counting the rows of {table}"))?;
            rows += n;
        }
    }
    store.pool().close().await;
    if rows > 0 {
        anyhow::bail!(
            "demo refused to write into {} (schema {}): it is not the demo's own database and already holds a \
             warehouse ({rows} rows in sessions and sync_state); the demo would add synthetic sessions and move its \
             watermark. Unset DATABASE_URL (and database.url) to use the demo's own database devin_etl_demo, or pass \
             --allow-any-database to write there anyway",
            store::redacted_target(&settings.database),
            settings.database.schema
        );
    }
    Ok(())
}

async fn reset_schema(syncer: &Syncer) -> anyhow::Result<()> {
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

async fn print_report(syncer: &Syncer, runs: &[(&str, &RunOutcome)]) -> anyhow::Result<()> {
    print!("{}", crate::status::render_counts(&syncer.store().table_counts().await?));
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

/// What the history views say about the simulated week: the questions of `docs/queries.md`, section 6.
async fn print_history(syncer: &Syncer) -> anyhow::Result<()> {
    let pool = syncer.store().pool();
    // Waits that began and ended while the demo watched (earlier ones started before history did).
    let (waits, median_wait): (i64, Option<f64>) = sqlx::query_as(
        "select count(*), percentile_cont(0.5) within group (order by hours)
         from v_session_status_periods
         where status = 'running' and status_detail in ('waiting_for_user', 'waiting_for_approval')
           and ended_at is not null and started_at >= now() - interval '8 days'",
    )
    .fetch_one(pool)
    .await
    .context("asking v_session_status_periods")?;
    let (merged, median_days, median_open_hours): (i64, Option<f64>, Option<f64>) = sqlx::query_as(
        "select count(*), percentile_cont(0.5) within group (order by days_to_merge),
                percentile_cont(0.5) within group (order by extract(epoch from first_merged_at - first_open_at) / 3600)
         from v_pull_request_lifecycle where merge_observed",
    )
    .fetch_one(pool)
    .await
    .context("asking v_pull_request_lifecycle")?;
    let (burned, created): (Option<f64>, Option<f64>) = sqlx::query_as(
        "select (select sum(acus) from v_acus_burned_daily where day >= current_date - 6),
                (select sum(acus) from v_daily_usage where day >= current_date - 6)",
    )
    .fetch_one(pool)
    .await
    .context("asking v_acus_burned_daily")?;
    let hours = |h: Option<f64>| h.map_or("-".to_owned(), |h| format!("{h:.1} h"));
    println!("\nhistory (the simulated week; docs/queries.md, section 6):");
    println!("  waits for a person that began and ended this week: {waits}, median {}", hours(median_wait));
    println!(
        "  PRs seen going from open to merged: {merged}, median {} days from the session's start ({} after first \
         seen open)",
        median_days.map_or("-".to_owned(), |d| format!("{d:.1}")),
        hours(median_open_hours)
    );
    println!(
        "  ACUs burned in the last 7 days: {:.1} (spread over the days they were burned; {:.1} by the day sessions were created)",
        burned.unwrap_or_default(),
        created.unwrap_or_default()
    );
    Ok(())
}
