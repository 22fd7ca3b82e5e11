//! `devin-etl bench`: measures backfill, incremental and no-op runs against the simulator in a separate
//! process, next to the two floors (fetch-only and COPY-only), and checks the figures against issue 5's targets.
//!
//! One run, in this order:
//! 1. the simulator starts as a child process (`devin-etl simulate --port 0`), so its CPU and memory are not ours;
//! 2. the database `devin_etl_bench` is dropped, recreated and migrated;
//! 3. backfill (peak RSS reset before, read right after);
//! 4. the floors, on exactly the data the backfill read: fetch-only (every page of the full list read and
//!    discarded) and COPY-only (the same normalized rows, encoded in memory first, untimed, then copied into fresh
//!    tables `like` the warehouse's: same keys, indexes, defaults and compression);
//! 5. 1% updates and 0.1% creates through the simulator's control endpoints, an incremental run, then (after the
//!    simulator clock moves `--noop-advance` seconds) a no-op incremental run.
//!
//! Before each timed phase the server is checkpointed, so one phase's dirty buffers are not flushed on another's
//! clock. CPU seconds per phase are read from `/proc`: this process, the simulator, and every `postgres` process.

use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::process::Stdio;
use std::str::FromStr as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use secrecy::{ExposeSecret as _, SecretString};
use serde_json::json;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection};
use tokio::io::AsyncBufReadExt as _;

use crate::api::{ApiClient, ListQuery};
use crate::config::Settings;
use crate::store::Batch;
use crate::sync::normalize::{self, DecodedItem};
use crate::sync::{Mode, RunOutcome};

/// Arguments of `devin-etl bench`.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Simulated sessions.
    #[arg(long, default_value_t = 100_000)]
    pub sessions: usize,
    /// Database on the configured server that is dropped and recreated for the benchmark (kept afterwards).
    #[arg(long, default_value = "devin_etl_bench")]
    pub database: String,
    /// Print the results as one JSON document (last line of stdout) instead of the table (logs go to stderr).
    #[arg(long)]
    pub json: bool,
    /// Seconds the simulator clock moves between the incremental and the no-op run.
    #[arg(long, default_value_t = 60)]
    pub noop_advance: i64,
    /// Give the COPY floor's child tables the warehouse's foreign keys to `sessions` (off: keys and indexes only).
    #[arg(long)]
    pub floor_foreign_keys: bool,
    /// Connections the COPY floor copies over at once (each table split into this many row-aligned parts).
    #[arg(long, default_value_t = 1)]
    pub floor_connections: usize,
    /// Do not ANALYZE the warehouse after the backfill: the incremental runs see the tables without statistics,
    /// as a run started right after a backfill would (before autovacuum gets to them).
    #[arg(long)]
    pub skip_analyze: bool,
    /// Make PostgreSQL log every statement of the benchmark database that takes at least this long (server log;
    /// needs a superuser), to see which statements a phase's time goes to.
    #[arg(long)]
    pub pg_log_min_duration_ms: Option<u32>,
    /// Skip the fetch and COPY floors (backfill and incremental runs only).
    #[arg(long)]
    pub skip_floors: bool,
    /// Seconds a sync run may take before the benchmark gives up on it.
    #[arg(long, default_value_t = 900)]
    pub phase_timeout: u64,
    /// Seconds to wait for the simulator to generate its sessions and answer.
    #[arg(long, default_value_t = 600)]
    pub simulator_timeout: u64,
}

/// Items per page for the floors (the API's maximum).
const FLOOR_PAGE_SIZE: u32 = 200;
/// Bytes per `CopyData` message of the COPY floor.
const COPY_CHUNK: usize = 8 << 20;
/// The scratch schema of the COPY floor.
const FLOOR_SCHEMA: &str = "bench_floor";
/// Issue 5's targets.
const TARGET_BACKFILL_VS_COPY: f64 = 1.5;
const TARGET_RSS_MB: f64 = 100.0;
const TARGET_INCREMENTAL: Duration = Duration::from_secs(1);
const TARGET_NOOP: Duration = Duration::from_millis(200);

pub async fn run(settings: Settings, args: BenchArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.sessions > 0, "--sessions must be at least 1");
    anyhow::ensure!((1..=16).contains(&args.floor_connections), "--floor-connections must be 1 to 16");
    anyhow::ensure!(
        !args.database.is_empty()
            && args.database.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_'),
        "--database {:?} must be a plain lowercase identifier (it is dropped and recreated)",
        args.database
    );
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
    settings.api.token = Some(SecretString::from(crate::simulator::DEFAULT_TOKEN.to_owned()));

    let bench_url = database_url(settings.database.url.expose_secret(), &args.database)?;
    recreate_database(&bench_url, &args.database, args.pg_log_min_duration_ms).await?;
    settings.database.url = SecretString::from(bench_url.clone());
    let syncer = crate::cli::connect(settings.clone()).await?;
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
        for (table, copied) in rows.tables.iter().map(|t| (t.name, t.rows)) {
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
        let tables: Vec<String> =
            sqlx::query_scalar("select tablename::text from pg_tables where schemaname = $1 order by 1")
                .bind(&schema)
                .fetch_all(&mut admin)
                .await?;
        let list: Vec<String> = tables.iter().map(|t| format!("{schema}.{t}")).collect();
        // Names come from the catalog of a schema that is a validated plain identifier.
        sqlx::raw_sql(&format!("analyze {}", list.join(", "))).execute(&mut admin).await?;
    }
    let enrichment_since = sim.post("/_sim/advance?secs=60").await?["now"].as_i64().unwrap_or_default()
        - settings.sync.enrichment_window.as_secs() as i64;
    let pending_enrichment: i64 = sqlx::query_scalar(&format!(
        "select count(*) from {schema}.sessions
         where created_at >= to_timestamp($1) and (not has_analysis or category is null)"
    ))
    .bind(enrichment_since)
    .fetch_one(&mut admin)
    .await?;
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

    let load_after = load_average();
    sim.stop().await;

    let changed = updated + created;
    let enrichment_allowance =
        div_ceil(pending_enrichment.max(0) as u64 + created, settings.sync.enrichment_batch as u64);
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

fn div_ceil(a: u64, b: u64) -> u64 {
    if b == 0 { 0 } else { a.div_ceil(b) }
}

// ---------------------------------------------------------------------------------------------------------------
// The simulator child process.

/// The simulator in a child process; killed when dropped (an error or Ctrl-C on the way included).
struct SimProcess {
    child: tokio::process::Child,
    pid: Option<u32>,
    base_url: String,
    http: reqwest::Client,
}

impl SimProcess {
    async fn spawn(sessions: usize, timeout: Duration) -> anyhow::Result<SimProcess> {
        let exe = std::env::current_exe().context("cannot find our own executable to start the simulator")?;
        let mut child = tokio::process::Command::new(exe)
            .args(["simulate", "--host", "127.0.0.1", "--port", "0", "--sessions", &sessions.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the simulator process")?;
        let pid = child.id();
        let stdout = child.stdout.take().context("the simulator's stdout is not piped")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        // The child prints "simulator serving N sessions at http://127.0.0.1:PORT (token …)" once it listens.
        let base_url = tokio::time::timeout(timeout, async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("simulator serving")
                    && let Some(at) = line.find("http://")
                {
                    let url: String = line[at..].chars().take_while(|c| !c.is_whitespace()).collect();
                    return anyhow::Ok(Some(url));
                }
            }
            Ok(None)
        })
        .await
        .with_context(|| format!("the simulator did not start within {} s", timeout.as_secs()))??;
        let Some(base_url) = base_url else {
            let status = child.wait().await?;
            anyhow::bail!("the simulator exited before serving ({status})");
        };
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let http = reqwest::Client::builder().timeout(Duration::from_secs(300)).build()?;
        let sim = SimProcess { child, pid, base_url, http };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match sim.get("/_sim/stats").await {
                Ok(_) => return Ok(sim),
                Err(e) if Instant::now() > deadline => return Err(e.context("the simulator does not answer")),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let response = self.http.get(format!("{}{path}", self.base_url)).send().await?;
        Self::json(path, response).await
    }

    async fn post(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let response = self.http.post(format!("{}{path}", self.base_url)).send().await?;
        Self::json(path, response).await
    }

    async fn json(path: &str, response: reqwest::Response) -> anyhow::Result<serde_json::Value> {
        let status = response.status();
        let body = response.bytes().await?;
        anyhow::ensure!(status.is_success(), "simulator {path}: HTTP {status}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).with_context(|| format!("simulator {path}: not JSON"))
    }

    async fn stop(mut self) {
        if let Err(e) = self.child.kill().await {
            tracing::warn!(error = %e, "could not stop the simulator process");
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Database set-up.

/// The configured URL with its database replaced by `database`.
fn database_url(configured: &str, database: &str) -> anyhow::Result<String> {
    let mut url = url::Url::parse(configured).context("database.url is not a valid URL")?;
    url.set_path(&format!("/{database}"));
    Ok(url.to_string())
}

/// Options for the benchmark's own connections: statements (checkpoints and COPYs are slow on purpose) logged
/// at trace level only.
fn connect_options(url: &str) -> anyhow::Result<PgConnectOptions> {
    Ok(PgConnectOptions::from_str(url)
        .context("database.url is not a valid PostgreSQL URL")?
        .log_statements(tracing::log::LevelFilter::Trace)
        .log_slow_statements(tracing::log::LevelFilter::Trace, Duration::from_secs(1)))
}

async fn connect(url: &str) -> anyhow::Result<PgConnection> {
    connect_options(url)?.connect().await.context("connecting to the benchmark database")
}

async fn recreate_database(url: &str, database: &str, log_min_duration_ms: Option<u32>) -> anyhow::Result<()> {
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
async fn checkpoint(conn: &mut PgConnection) -> anyhow::Result<()> {
    if let Err(e) = sqlx::raw_sql("checkpoint").execute(&mut *conn).await {
        tracing::warn!(error = %e, "checkpoint refused (needs superuser or pg_checkpoint); phases may overlap");
    }
    Ok(())
}

/// What the figures were measured on.
#[derive(Debug, Clone)]
struct Machine {
    cpus: usize,
    cpu_model: String,
    mem_total_mb: u64,
    pg_version: String,
    pg_settings: Vec<(String, String)>,
    load_before: String,
}

impl Machine {
    async fn read(conn: &mut PgConnection, load_before: String) -> anyhow::Result<Machine> {
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

// ---------------------------------------------------------------------------------------------------------------
// Measuring: wall time, peak RSS, CPU of us, the simulator and PostgreSQL.

/// A `kB` figure from a `/proc` status-like file.
fn proc_kb(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|r| r.split_whitespace().next()?.parse().ok())
}

/// Resets this process's VmHWM to its current RSS (Linux: writing 5 to clear_refs). False when not allowed.
fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

fn peak_rss_bytes() -> Option<u64> {
    proc_kb("/proc/self/status", "VmHWM:").map(|kb| kb * 1024)
}

/// User + system CPU of a process, in clock ticks.
fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// `/proc` reports CPU time in USER_HZ, which the Linux ABI fixes at 100 per second.
const TICKS_PER_SECOND: f64 = 100.0;

/// CPU ticks of every process named `postgres` (the server and its backends).
fn postgres_ticks() -> HashMap<u32, u64> {
    let Ok(entries) = std::fs::read_dir("/proc") else { return HashMap::new() };
    entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| std::fs::read_to_string(format!("/proc/{pid}/comm")).is_ok_and(|c| c.trim() == "postgres"))
        .filter_map(|pid| Some((pid, cpu_ticks(&pid.to_string())?)))
        .collect()
}

/// CPU seconds spent during a phase.
#[derive(Debug, Clone, Copy, Default)]
struct Cpu {
    ours: f64,
    simulator: f64,
    /// The backends connected to the benchmark database (the sync's pool, the COPY floor's connections).
    postgres: f64,
    /// Every other `postgres` process: checkpointer, WAL writer, autovacuum, other databases' sessions.
    postgres_other: f64,
}

/// Starts measuring a phase: resets peak RSS and snapshots CPU counters.
struct Meter {
    started: Instant,
    rss_reset: bool,
    start_rss: Option<u64>,
    ours: u64,
    sim_pid: Option<u32>,
    sim: u64,
    postgres: HashMap<u32, u64>,
}

/// What a [`Meter`] measured.
#[derive(Debug, Clone, Copy)]
struct Measured {
    wall: Duration,
    /// RSS when the phase started, and the peak during it.
    start_rss: Option<u64>,
    peak_rss: Option<u64>,
    cpu: Cpu,
}

impl Meter {
    fn start(sim_pid: Option<u32>) -> Meter {
        let rss_reset = reset_peak_rss();
        Meter {
            start_rss: proc_kb("/proc/self/status", "VmRSS:").map(|kb| kb * 1024),
            ours: cpu_ticks("self").unwrap_or(0),
            sim: sim_pid.and_then(|p| cpu_ticks(&p.to_string())).unwrap_or(0),
            sim_pid,
            postgres: postgres_ticks(),
            rss_reset,
            started: Instant::now(),
        }
    }

    /// Ends the phase; `admin` (a connection to the benchmark database, not counted) tells our backends apart.
    async fn stop(self, admin: &mut PgConnection) -> anyhow::Result<Measured> {
        let wall = self.started.elapsed();
        let peak_rss = if self.rss_reset { peak_rss_bytes() } else { None };
        let ours = cpu_ticks("self").unwrap_or(0).saturating_sub(self.ours);
        let sim = self.sim_pid.and_then(|p| cpu_ticks(&p.to_string())).unwrap_or(0).saturating_sub(self.sim);
        let spent: Vec<(u32, u64)> = postgres_ticks()
            .into_iter()
            .map(|(pid, t)| (pid, t.saturating_sub(self.postgres.get(&pid).copied().unwrap_or(0))))
            .collect();
        // Backends that ended during the phase are missed; ours live in the pool for the whole run.
        let backends: Vec<i32> = sqlx::query_scalar(
            "select pid from pg_stat_activity where datname = current_database() and pid <> pg_backend_pid()",
        )
        .fetch_all(&mut *admin)
        .await?;
        let (mut postgres, mut postgres_other) = (0, 0);
        for (pid, ticks) in spent {
            if backends.iter().any(|&b| u32::try_from(b) == Ok(pid)) {
                postgres += ticks;
            } else {
                postgres_other += ticks;
            }
        }
        Ok(Measured {
            wall,
            start_rss: self.start_rss,
            peak_rss,
            cpu: Cpu {
                ours: ours as f64 / TICKS_PER_SECOND,
                simulator: sim as f64 / TICKS_PER_SECOND,
                postgres: postgres as f64 / TICKS_PER_SECOND,
                postgres_other: postgres_other as f64 / TICKS_PER_SECOND,
            },
        })
    }
}

fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One line of the table.
#[derive(Debug, Clone)]
struct Phase {
    name: &'static str,
    measured: Measured,
    /// Sessions read (runs, fetch floor) or copied (COPY floor).
    sessions: u64,
    /// Sessions inserted or changed by a run.
    written: Option<u64>,
    rows: Option<u64>,
    requests: Option<u64>,
    pages: Option<u64>,
}

impl Phase {
    fn from_run(name: &'static str, run: &RunOutcome, measured: Measured) -> Phase {
        Phase {
            name,
            measured,
            sessions: run.items,
            written: Some(run.writes.sessions_written),
            rows: Some(run.writes.total_rows()),
            requests: Some(run.requests),
            pages: Some(run.pages),
        }
    }

    fn per_second(&self, n: u64) -> f64 {
        n as f64 / self.measured.wall.as_secs_f64().max(1e-9)
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The floors.

fn floor_query(after: Option<String>) -> ListQuery {
    ListQuery { first: FLOOR_PAGE_SIZE, after, ..ListQuery::default() }
}

/// Every page of the full list, one after the other, read (envelope parsed, items kept raw) and discarded.
async fn fetch_floor(settings: &Settings, sim_pid: Option<u32>, admin: &mut PgConnection) -> anyhow::Result<Phase> {
    let api = ApiClient::new(&settings.api)?;
    let meter = Meter::start(sim_pid);
    let mut after = None;
    let (mut pages, mut items) = (0u64, 0u64);
    loop {
        let page = api.list_page(&floor_query(after)).await?;
        pages += 1;
        items += page.items.len() as u64;
        if !page.has_next_page {
            break;
        }
        after = page.end_cursor;
    }
    let measured = meter.stop(admin).await?;
    Ok(Phase {
        name: "fetch floor",
        measured,
        sessions: items,
        written: None,
        rows: None,
        requests: Some(api.stats().requests.load(std::sync::atomic::Ordering::Relaxed)),
        pages: Some(pages),
    })
}

/// Every page of the full list, decoded and normalized into COPY text, in memory.
async fn encode_all_pages(settings: &Settings) -> anyhow::Result<FloorRows> {
    let api = ApiClient::new(&settings.api)?;
    let mut rows = FloorRows::default();
    let mut seen = HashSet::new();
    let mut after = None;
    loop {
        let page = api.list_page(&floor_query(after)).await?;
        let mut items = normalize::decode_page(page.items, &page.request)?;
        items.retain(|item| seen.insert(item.session.session_id.clone()));
        rows.push(&items);
        if !page.has_next_page {
            break;
        }
        after = page.end_cursor;
    }
    Ok(rows)
}

/// Fresh tables `like` the warehouse's (columns, defaults, not-null and check constraints, primary keys,
/// indexes, compression), optionally with the foreign keys too.
async fn create_floor_tables(
    conn: &mut PgConnection,
    schema: &str,
    rows: &FloorRows,
    foreign_keys: bool,
) -> anyhow::Result<()> {
    let mut sql = format!("drop schema if exists {FLOOR_SCHEMA} cascade; create schema {FLOOR_SCHEMA};\n");
    for table in &rows.tables {
        let name = table.name;
        writeln!(sql, "create table {FLOOR_SCHEMA}.{name} (like {schema}.{name} including all);")?;
        if foreign_keys && name != "sessions" {
            writeln!(
                sql,
                "alter table {FLOOR_SCHEMA}.{name} add foreign key (session_id) \
                 references {FLOOR_SCHEMA}.sessions (session_id) on delete cascade;"
            )?;
        }
    }
    sqlx::raw_sql(&sql).execute(&mut *conn).await.context("creating the COPY floor's tables")?;
    Ok(())
}

/// Times `COPY … FROM STDIN` of every table (sessions first, each table done before the next starts), each
/// table split into one row-aligned part per connection, the parts copied at once, each its own statement.
async fn copy_floor(
    conns: &mut [PgConnection],
    rows: &FloorRows,
    sim_pid: Option<u32>,
    admin: &mut PgConnection,
) -> anyhow::Result<(Phase, Vec<(&'static str, u64, Duration)>)> {
    let meter = Meter::start(sim_pid);
    let mut by_table = Vec::new();
    let mut total = 0;
    for data in &rows.tables {
        let started = Instant::now();
        let statement = format!("copy {FLOOR_SCHEMA}.{} ({}) from stdin", data.name, data.columns.join(", "));
        let parts = split_rows(&data.text, conns.len());
        let copies = conns.iter_mut().zip(parts).map(|(conn, part)| copy_in(conn, &statement, part));
        let copied: u64 = futures_util::future::try_join_all(copies)
            .await
            .with_context(|| format!("COPY into {FLOOR_SCHEMA}.{}", data.name))?
            .into_iter()
            .sum();
        total += copied;
        by_table.push((data.name, copied, started.elapsed()));
    }
    let measured = meter.stop(admin).await?;
    let phase = Phase {
        name: "COPY floor",
        measured,
        sessions: rows.sessions,
        written: None,
        rows: Some(total),
        requests: None,
        pages: None,
    };
    Ok((phase, by_table))
}

/// One `COPY … FROM STDIN` of `data` in large messages; aborted on error so the connection stays usable.
async fn copy_in(conn: &mut PgConnection, statement: &str, data: &[u8]) -> Result<u64, sqlx::Error> {
    if data.is_empty() {
        return Ok(0);
    }
    let mut copy = conn.copy_in_raw(statement).await?;
    for chunk in data.chunks(COPY_CHUNK) {
        if let Err(e) = copy.send(chunk).await {
            copy.abort("benchmark COPY failed").await.ok();
            return Err(e);
        }
    }
    copy.finish().await
}

/// `text` cut into `n` parts of about equal size at row ends (a raw newline only ever ends a row in COPY text).
fn split_rows(text: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(n);
    let mut start = 0;
    for i in 1..=n {
        let target = (text.len() * i / n).max(start);
        let end = if i == n {
            text.len()
        } else {
            text[target..].iter().position(|&b| b == b'\n').map_or(text.len(), |p| target + p + 1)
        };
        parts.push(&text[start..end]);
        start = end;
    }
    parts
}

// ---------------------------------------------------------------------------------------------------------------
// COPY text of the normalized rows: exactly what the loader's COPY path sends (`Batch::copy_payloads`).

/// One table's rows as COPY text, and the columns they follow.
#[derive(Debug)]
struct CopyText {
    name: &'static str,
    columns: Vec<&'static str>,
    text: Vec<u8>,
    rows: u64,
}

/// The normalized rows of every session, as COPY text per table (`sessions` first).
#[derive(Debug, Default)]
struct FloorRows {
    tables: Vec<CopyText>,
    sessions: u64,
}

impl FloorRows {
    fn total_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows).sum()
    }

    fn bytes(&self) -> usize {
        self.tables.iter().map(|t| t.text.len()).sum()
    }

    /// Appends a page's items, normalized and encoded by the loader's own code.
    fn push(&mut self, items: &[DecodedItem]) {
        let mut batch = Batch::new();
        for item in items {
            normalize::stage(&mut batch, "bench", item);
        }
        self.sessions += batch.sessions() as u64;
        for (i, payload) in batch.copy_payloads().into_iter().enumerate() {
            if self.tables.len() == i {
                self.tables.push(CopyText { name: payload.table, columns: payload.columns, text: Vec::new(), rows: 0 });
            }
            self.tables[i].text.extend_from_slice(&payload.text);
            self.tables[i].rows += payload.rows as u64;
        }
    }
}

// ---------------------------------------------------------------------------------------------------------------
// The report.

struct Report {
    args: BenchArgs,
    machine: Machine,
    load_after: String,
    page_size: u32,
    phases: Vec<Phase>,
    copy_by_table: Vec<(&'static str, u64, Duration)>,
    floor_notes: Vec<String>,
    changed: u64,
    created: u64,
    enrichment_allowance: u64,
    enrichment_batch: usize,
    pending_enrichment: i64,
    noop_written: u64,
}

/// A PASS/FAIL line.
struct Check {
    name: String,
    pass: bool,
    detail: String,
}

fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Report {
    fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }

    fn ratio(&self, floor: &str) -> Option<f64> {
        let backfill = self.phase("backfill")?.measured.wall.as_secs_f64();
        let floor = self.phase(floor)?.measured.wall.as_secs_f64();
        (floor > 0.0).then(|| backfill / floor)
    }

    fn checks(&self) -> Vec<Check> {
        let mut checks = Vec::new();
        if let Some(ratio) = self.ratio("COPY floor") {
            checks.push(Check {
                name: "backfill within 1.5x the COPY floor".to_owned(),
                pass: ratio <= TARGET_BACKFILL_VS_COPY,
                detail: format!("{ratio:.2}x"),
            });
        }
        if let Some(backfill) = self.phase("backfill") {
            let (pass, detail) = match backfill.measured.peak_rss {
                Some(rss) => (mb(rss) <= TARGET_RSS_MB, format!("{:.1} MB", mb(rss))),
                None => (false, "peak RSS unavailable (/proc/self/clear_refs not writable)".to_owned()),
            };
            checks.push(Check { name: "backfill peak RSS <= 100 MB".to_owned(), pass, detail });
        }
        if let Some(inc) = self.phase("incremental (1%)") {
            let list_allowance = div_ceil(self.changed, u64::from(self.page_size)) + 2;
            let requests = inc.requests.unwrap_or(0);
            checks.push(Check {
                name: "incremental requests <= ceil(changed/page_size)+2 + enrichment batches".to_owned(),
                pass: requests <= list_allowance + self.enrichment_allowance,
                detail: format!(
                    "{requests} requests; allowed {list_allowance} list + {} enrichment (ceil(({} pending + {} \
                     created)/{}))",
                    self.enrichment_allowance, self.pending_enrichment, self.created, self.enrichment_batch
                ),
            });
            checks.push(Check {
                name: "incremental under 1 s".to_owned(),
                pass: inc.measured.wall < TARGET_INCREMENTAL,
                detail: format!("{:.3} s", inc.measured.wall.as_secs_f64()),
            });
        }
        if let Some(noop) = self.phase("no-op incremental") {
            checks.push(Check {
                name: "no-op incremental under 200 ms".to_owned(),
                pass: noop.measured.wall < TARGET_NOOP,
                detail: format!("{:.3} s", noop.measured.wall.as_secs_f64()),
            });
            checks.push(Check {
                name: "no-op incremental writes nothing".to_owned(),
                pass: self.noop_written == 0,
                detail: format!("{} sessions written", self.noop_written),
            });
        }
        checks
    }

    fn text(&self) -> String {
        let m = &self.machine;
        let mut out = String::new();
        let _ = writeln!(out, "\ndevin-etl bench: {} sessions, page size {}", self.args.sessions, self.page_size);
        let _ = writeln!(
            out,
            "machine: {} CPUs ({}), {} MB RAM; PostgreSQL {} ({}); load average {} before, {} after",
            m.cpus,
            m.cpu_model,
            m.mem_total_mb,
            m.pg_version,
            m.pg_settings.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(" "),
            m.load_before,
            self.load_after
        );
        let _ = writeln!(
            out,
            "\n{:<18} {:>8} {:>9} {:>10} {:>9} {:>10} {:>10} {:>8} {:>9} {:>24}",
            "phase",
            "wall s",
            "sessions",
            "sessions/s",
            "written",
            "rows",
            "rows/s",
            "requests",
            "peak RSS",
            "CPU s us/sim/pg/pg-other"
        );
        let dash = || "-".to_owned();
        for p in &self.phases {
            let c = p.measured.cpu;
            let _ = writeln!(
                out,
                "{:<18} {:>8.3} {:>9} {:>10.0} {:>9} {:>10} {:>10} {:>8} {:>9} {:>24}",
                p.name,
                p.measured.wall.as_secs_f64(),
                p.sessions,
                p.per_second(p.sessions),
                p.written.map_or_else(dash, |n| n.to_string()),
                p.rows.map_or_else(dash, |n| n.to_string()),
                p.rows.map_or_else(dash, |n| format!("{:.0}", p.per_second(n))),
                p.requests.map_or_else(dash, |n| n.to_string()),
                p.measured.peak_rss.map_or_else(dash, |b| format!("{:.1} MB", mb(b))),
                format!("{:.1}/{:.1}/{:.1}/{:.1}", c.ours, c.simulator, c.postgres, c.postgres_other),
            );
        }
        let _ = writeln!(out);
        for (floor, label) in [("COPY floor", "backfill / COPY floor"), ("fetch floor", "backfill / fetch floor")] {
            if let Some(r) = self.ratio(floor) {
                let _ = writeln!(out, "{label:<24} {r:.2}x");
            }
        }
        if !self.copy_by_table.is_empty() {
            let parts: Vec<String> =
                self.copy_by_table.iter().map(|(t, n, d)| format!("{t} {n} rows {:.2} s", d.as_secs_f64())).collect();
            let _ = writeln!(
                out,
                "COPY floor by table ({}, {} connection(s)): {}",
                if self.args.floor_foreign_keys { "with foreign keys" } else { "keys and indexes, no foreign keys" },
                self.args.floor_connections,
                parts.join(", "),
            );
        }
        for note in &self.floor_notes {
            let _ = writeln!(out, "{note}");
        }
        let starts: Vec<String> = self
            .phases
            .iter()
            .filter_map(|p| Some(format!("{} {:.1} MB", p.name, mb(p.measured.start_rss?))))
            .collect();
        let _ = writeln!(
            out,
            "peak RSS: VmHWM of this process, reset at the start of each phase (the COPY floor's includes its \
             in-memory rows); RSS at the start: {}",
            starts.join(", ")
        );
        let _ = writeln!(
            out,
            "CPU s during the phase: this process / the simulator / PostgreSQL backends of the benchmark database / \
             other postgres processes (checkpointer, WAL writer, autovacuum, other databases)"
        );
        let _ = writeln!(out);
        for c in self.checks() {
            let _ = writeln!(out, "{} {} ({})", if c.pass { "PASS" } else { "FAIL" }, c.name, c.detail);
        }
        out
    }

    fn json(&self) -> serde_json::Value {
        let m = &self.machine;
        let phases: Vec<serde_json::Value> = self
            .phases
            .iter()
            .map(|p| {
                json!({
                    "phase": p.name,
                    "wall_seconds": p.measured.wall.as_secs_f64(),
                    "sessions": p.sessions,
                    "sessions_per_second": p.per_second(p.sessions),
                    "sessions_written": p.written,
                    "rows": p.rows,
                    "rows_per_second": p.rows.map(|n| p.per_second(n)),
                    "requests": p.requests,
                    "pages": p.pages,
                    "peak_rss_bytes": p.measured.peak_rss,
                    "rss_at_start_bytes": p.measured.start_rss,
                    "cpu_seconds": {
                        "ours": p.measured.cpu.ours,
                        "simulator": p.measured.cpu.simulator,
                        "postgres": p.measured.cpu.postgres,
                        "postgres_other": p.measured.cpu.postgres_other,
                    },
                })
            })
            .collect();
        json!({
            "sessions": self.args.sessions,
            "page_size": self.page_size,
            "machine": {
                "cpus": m.cpus,
                "cpu_model": m.cpu_model,
                "mem_total_mb": m.mem_total_mb,
                "postgres_version": m.pg_version,
                "postgres_settings": m.pg_settings.iter().cloned().collect::<HashMap<_, _>>(),
                "load_average_before": m.load_before,
                "load_average_after": self.load_after,
            },
            "phases": phases,
            "copy_floor_by_table": self.copy_by_table.iter().map(|(t, n, d)| json!({
                "table": t, "rows": n, "seconds": d.as_secs_f64(),
            })).collect::<Vec<_>>(),
            "copy_floor_foreign_keys": self.args.floor_foreign_keys,
            "copy_floor_connections": self.args.floor_connections,
            "notes": self.floor_notes,
            "ratios": {
                "backfill_vs_copy_floor": self.ratio("COPY floor"),
                "backfill_vs_fetch_floor": self.ratio("fetch floor"),
            },
            "checks": self.checks().iter().map(|c| json!({
                "check": c.name, "pass": c.pass, "detail": c.detail,
            })).collect::<Vec<_>>(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_at_row_ends() {
        let text = b"a\tb\ncc\ndddd\ne\n";
        let parts = split_rows(text, 3);
        assert_eq!(parts.concat(), text.to_vec());
        assert!(parts.iter().all(|p| p.is_empty() || p.ends_with(b"\n")), "{parts:?}");
        assert_eq!(split_rows(b"", 2), vec![b"".as_slice(), b"".as_slice()]);
        assert_eq!(split_rows(text, 1), vec![text.as_slice()]);
    }

    #[test]
    fn database_url_replaces_only_the_database() {
        assert_eq!(
            database_url("postgres://u:p@db:5433/warehouse?sslmode=disable", "devin_etl_bench").expect("valid"),
            "postgres://u:p@db:5433/devin_etl_bench?sslmode=disable"
        );
    }
}
