//! What the benchmark measures: its command-line arguments.

use std::path::PathBuf;

/// What to measure.
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
    /// Instead of the phases above: simulate this many ticks (15 minutes each; 96 = a day) after a backfill, each
    /// changing 0.1% of the sessions, once with the enrichment backoff off and once on, and report API requests and
    /// rows written per day (0 = off).
    #[arg(long, default_value_t = 0)]
    pub steady_state_ticks: u32,
    /// New sessions per simulated day in --steady-state-ticks (part of the 0.1% changed per tick); default: the data
    /// set's own rate, sessions / 730 days.
    #[arg(long)]
    pub steady_state_creates_per_day: Option<f64>,
    /// Instead of the phases above: time every shipped dashboard query (Grafana panels, docs/queries.md sections 4
    /// and 6) against the existing warehouse in --database (not recreated); see dashboards.rs.
    #[arg(long)]
    pub time_dashboards: bool,
    /// --time-dashboards: timed runs per query after one warm-up (the median is reported).
    #[arg(long, default_value_t = 3)]
    pub time_runs: usize,
    /// --time-dashboards: seconds a query may take (statement_timeout) before it counts as failed.
    #[arg(long, default_value_t = 120)]
    pub query_timeout: u64,
    /// --time-dashboards: the repository whose docs/queries.md and Grafana dashboard are timed (default: the one
    /// this benchmark was built from).
    #[arg(long)]
    pub repo_root: Option<PathBuf>,
}
