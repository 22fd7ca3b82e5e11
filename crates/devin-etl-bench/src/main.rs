//! `devin-etl-bench`: measures backfill, incremental and no-op runs against the simulator in a separate
//! process, next to the two floors (fetch-only and COPY-only), and checks the figures against issue 5's targets.
//! Run it with `cargo run --release -p devin-etl-bench -- [ARGS]` (docs/performance.md). With
//! `--steady-state-ticks N` it simulates N ticks of the daemon instead (`steady.rs`); with `--time-dashboards` it
//! times every shipped dashboard query against an existing warehouse instead (`dashboards.rs`).
//!
//! One run, in this order:
//! 1. the simulator starts as a child process (this program with `--serve-simulator`), so its CPU and memory are
//!    not ours;
//! 2. the database `devin_etl_bench` is dropped, recreated and migrated;
//! 3. backfill (peak RSS reset before, read right after);
//! 4. the floors, on exactly the data the backfill read: fetch-only (every page of the full list read and
//!    discarded) and COPY-only (the same normalized rows, encoded in memory first, untimed, then copied into fresh
//!    tables `like` the warehouse's: same keys, indexes, defaults and compression);
//! 5. 1% updates and 0.1% creates through the simulator's control endpoints, an incremental run, then (after the
//!    simulator clock moves `--noop-advance` seconds) a no-op incremental run;
//! 6. a reconcile with nothing changed (reads everything, must write nothing), then the size of every table.
//!
//! Before each timed phase the server is checkpointed, so one phase's dirty buffers are not flushed on another's
//! clock. CPU seconds per phase are read from `/proc`: this process, the simulator, and every `postgres` process.

mod args;
mod dashboards;
mod database;
mod floors;
mod measure;
mod report;
mod sim_process;
mod steady;

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use clap::Parser as _;
use secrecy::{ExposeSecret as _, SecretString};
use sqlx::Connection as _;

use devin_etl::app;
use devin_etl::settings::Settings;
use devin_etl::sync::Mode;

use args::BenchArgs;
use database::{Machine, checkpoint, connect, database_url, recreate_database};
use floors::{copy_floor, create_floor_tables, encode_all_pages, fetch_floor};
use measure::{Meter, Phase, load_average};
use report::Report;
use sim_process::SimProcess;

/// The command line.
#[derive(Debug, clap::Parser)]
#[command(name = "devin-etl-bench", version, about = "Benchmark devin-etl against its simulator")]
struct Cli {
    /// devin-etl's configuration file (TOML); the database server and the sync settings come from it, as for
    /// the service (env DEVIN_ETL__SECTION__KEY wins over it).
    #[arg(long, env = "DEVIN_ETL_CONFIG")]
    config: Option<PathBuf>,
    /// Internal: serve the simulator on a free loopback port and print its URL (the benchmark's child process).
    #[arg(long, hide = true)]
    serve_simulator: bool,
    #[command(flatten)]
    args: BenchArgs,
}

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    let result = if cli.serve_simulator {
        devin_etl::commands::simulate::run(
            [127, 0, 0, 1].into(),
            0,
            cli.args.sessions,
            devin_sim::SimulatorConfig::default().seed,
        )
        .await
    } else {
        match app::init(cli.config.as_deref()) {
            Ok(settings) => run(settings, cli.args).await,
            Err(e) => Err(e),
        }
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

pub async fn run(settings: Settings, args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.sessions > 0, "--sessions must be at least 1");
    anyhow::ensure!((1..=16).contains(&args.floor_connections), "--floor-connections must be 1 to 16");
    anyhow::ensure!(
        !args.database.is_empty()
            && args.database.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "--database {:?} must be a plain lowercase identifier (it is dropped and recreated)",
        args.database
    );
    if args.time_dashboards {
        return dashboards::run(settings, &args).await;
    }
    if args.steady_state_ticks > 0 {
        return tokio::select! {
            result = steady::run(settings, &args) => result,
            _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; the simulator was stopped"),
        };
    }
    tokio::select! {
        result = bench(settings, &args) => result,
        // Returning drops the simulator guard, which kills the child.
        _ = tokio::signal::ctrl_c() => anyhow::bail!("interrupted; the simulator was stopped"),
    }
}

async fn bench(mut settings: Settings, args: &BenchArgs) -> anyhow::Result<()> {
    let load_before = load_average();
    let page_size = settings.api.page_size;

    progress(format_args!("starting the simulator with {} sessions in a child process", args.sessions));
    let started = Instant::now();
    let sim = SimProcess::spawn(args.sessions, Duration::from_secs(args.simulator_timeout)).await?;
    progress(format_args!("simulator ready at {} after {:.1} s", sim.base_url, started.elapsed().as_secs_f64()));
    settings.api.base_url = sim.base_url.parse().context("simulator URL")?;
    settings.api.token = Some(SecretString::from(devin_sim::DEFAULT_TOKEN.to_owned()));

    let bench_url = database_url(settings.database.url.expose_secret(), &args.database)?;
    recreate_database(&bench_url, &args.database, args.pg_log_min_duration_ms).await?;
    settings.database.url = SecretString::from(bench_url.clone());
    let syncer = app::syncer(settings.clone()).await?;
    let schema = syncer.store().schema().to_owned();
    let mut admin = connect(&bench_url).await?;
    let machine = Machine::read(&mut admin, load_before).await?;
    progress(format_args!(
        "database {} migrated; PostgreSQL {}; {} CPUs",
        args.database, machine.pg_version, machine.cpus
    ));

    let mut phases = Vec::new();

    // Backfill.
    checkpoint(&mut admin).await?;
    progress(format_args!("backfill"));
    let meter = Meter::start(sim.pid);
    let backfill = within(args, "backfill", syncer.run_once(Mode::Backfill)).await?;
    phases.push(Phase::from_run("backfill", &backfill, meter.stop(&mut admin).await?));
    let warehouse_counts = syncer.store().table_counts().await?;

    // The floors, on the very data the backfill read.
    let mut copy_by_table = Vec::new();
    let mut floor_notes = Vec::new();
    if !args.skip_floors {
        progress(format_args!("fetch floor: every page of the full list, read and discarded"));
        phases.push(fetch_floor(&settings, sim.pid, &mut admin).await?);
        progress(format_args!("COPY floor: decoding and encoding every page in memory (untimed)"));
        let build_started = Instant::now();
        let rows = encode_all_pages(&settings).await?;
        let encode_time = build_started.elapsed();
        floor_notes.push(format!(
            "COPY floor input: {} sessions, {} rows, {:.0} MB of COPY text, decoded and encoded in {:.2} s on one \
             thread (not timed)",
            rows.sessions,
            rows.total_rows(),
            rows.bytes() as f64 / 1e6,
            encode_time.as_secs_f64()
        ));
        floor_notes.push(format!(
            "decoding {} items took {:.2} s on one thread, of which the schema drift comparison {:.3} s ({:.1} µs per \
             item)",
            rows.items,
            rows.decoding.as_secs_f64(),
            rows.comparing.as_secs_f64(),
            rows.comparing.as_secs_f64() * 1e6 / rows.items.max(1) as f64
        ));
        create_floor_tables(&mut admin, &schema, &rows, args.floor_foreign_keys).await?;
        checkpoint(&mut admin).await?;
        progress(format_args!("COPY floor: copying over {} connection(s)", args.floor_connections));
        let mut conns = Vec::new();
        for _ in 0..args.floor_connections {
            conns.push(connect(&bench_url).await?);
        }
        let (phase, by_table) = copy_floor(&mut conns, &rows, sim.pid, &mut admin).await?;
        for conn in conns {
            conn.close().await.ok();
        }
        phases.push(phase);
        copy_by_table = by_table;
        for (table, copied) in rows.tables.iter().map(|t| (t.table, t.rows as u64)) {
            let in_warehouse = warehouse_counts.iter().find(|(t, _)| *t == table).map_or(0, |(_, n)| *n);
            if copied != in_warehouse as u64 {
                floor_notes.push(format!(
                    "warning: {table}: the COPY floor copied {copied} rows, the backfill left {in_warehouse}"
                ));
            }
        }
        drop(rows);
    }

    // Incremental with 1% updated and 0.1% created. Autovacuum analyzes freshly loaded tables within a minute or
    // so; a scheduled run comes later than that, so the benchmark does the same now (--skip-analyze: not).
    if !args.skip_analyze {
        syncer.store().analyze().await?;
    }
    let enrichment_since = sim.post("/_sim/advance?secs=60").await?["now"].as_i64().unwrap_or_default()
        - settings.sync.enrichment_window.as_secs() as i64;
    // What the enrichment run after the incremental one will find, by the store's own query.
    let pending_enrichment =
        syncer.store().sessions_pending_enrichment(syncer.source(), enrichment_since).await?.len() as i64;
    let updates = (args.sessions / 100).max(1);
    let creates = (args.sessions / 1000).max(1);
    let updated = sim.post(&format!("/_sim/update?count={updates}")).await?["updated"].as_u64().unwrap_or_default();
    let created = sim.post(&format!("/_sim/create?count={creates}")).await?["created"].as_u64().unwrap_or_default();
    sim.post("/_sim/advance?secs=1").await?;
    checkpoint(&mut admin).await?;
    progress(format_args!("incremental run after {updated} updates and {created} creates"));
    let meter = Meter::start(sim.pid);
    let incremental = within(args, "incremental run", syncer.run_once(Mode::Incremental)).await?;
    phases.push(Phase::from_run("incremental (1%)", &incremental, meter.stop(&mut admin).await?));

    // No-op incremental.
    sim.post(&format!("/_sim/advance?secs={}", args.noop_advance)).await?;
    checkpoint(&mut admin).await?;
    progress(format_args!("no-op incremental run"));
    let meter = Meter::start(sim.pid);
    let noop = within(args, "no-op run", syncer.run_once(Mode::Incremental)).await?;
    phases.push(Phase::from_run("no-op incremental", &noop, meter.stop(&mut admin).await?));

    // A reconcile that finds nothing changed: it reads everything and must write nothing.
    checkpoint(&mut admin).await?;
    progress(format_args!("reconcile with nothing changed"));
    let meter = Meter::start(sim.pid);
    let reconcile = within(args, "reconcile", syncer.run_once(Mode::Reconcile)).await?;
    phases.push(Phase::from_run("reconcile (none)", &reconcile, meter.stop(&mut admin).await?));
    let table_sizes = database::table_sizes(&mut admin, &schema).await?;

    let load_after = load_average();
    sim.stop().await;

    let changed = updated + created;
    let enrichment_allowance =
        (pending_enrichment.max(0) as u64 + created).div_ceil(settings.sync.enrichment_batch.max(1) as u64);
    let report = Report {
        args: args.clone(),
        machine,
        load_after,
        page_size,
        phases,
        copy_by_table,
        floor_notes,
        changed,
        created,
        enrichment_allowance,
        enrichment_batch: settings.sync.enrichment_batch,
        pending_enrichment,
        noop_written: noop.writes.sessions_written,
        reconcile_written: reconcile.writes.sessions_written + reconcile.deleted,
        table_sizes,
    };
    if args.json {
        println!("{}", report.json());
    } else {
        print!("{}", report.text());
    }
    Ok(())
}

/// Runs a sync phase, failing it when it takes longer than `--phase-timeout` (a hang should not look like a result).
async fn within<T>(
    args: &BenchArgs,
    phase: &str,
    run: impl std::future::Future<Output = anyhow::Result<T>>,
) -> anyhow::Result<T> {
    let limit = Duration::from_secs(args.phase_timeout);
    match tokio::time::timeout(limit, run).await {
        Ok(result) => result.with_context(|| format!("benchmark {phase}")),
        Err(_) => anyhow::bail!("benchmark {phase} did not finish within {} s (--phase-timeout)", limit.as_secs()),
    }
}

fn progress(message: std::fmt::Arguments<'_>) {
    eprintln!("bench: {message}");
}
