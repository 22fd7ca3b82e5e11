//! `--steady-state-ticks N`: a simulated day (or N ticks) of the daemon after the backfill, once with the
//! enrichment backoff off and once with it on, on the same data and the same changes (the simulator is seeded, and
//! restarted with the warehouse for each), to measure what a tick costs in API requests and rows written.
//!
//! Each tick moves the simulator's clock 15 minutes, changes 0.1% of the sessions — new ones at the data set's own
//! creation rate (`--steady-state-creates-per-day`, default sessions / 730 days), whose analysis and category arrive
//! later as the simulator's `create_late` models it, the rest updates — and runs a sync (incremental, then
//! enrichment), as the daemon does on each tick of `sync.schedule`.

use std::time::{Duration, Instant};

use anyhow::Context as _;
use secrecy::{ExposeSecret as _, SecretString};

use devin_etl::app;
use devin_etl::settings::Settings;
use devin_etl::sync::Mode;

use crate::args::BenchArgs;
use crate::database::{database_url, recreate_database};
use crate::sim_process::SimProcess;
use crate::{progress, within};

/// One tick of the default schedule.
const TICK_SECS: i64 = 900;
/// The simulator's default history (`SimulatorConfig::history_days`).
const HISTORY_DAYS: f64 = 730.0;

/// What one simulated day cost.
#[derive(Debug, Default, Clone)]
struct Day {
    label: String,
    ticks: u32,
    /// Sessions waiting for analysis or category (in the enrichment window) when the day starts.
    pending_at_start: usize,
    updates: u64,
    creates: u64,
    incremental_requests: u64,
    enrichment_requests: u64,
    /// Sessions re-fetched by enrichment (items of its requests).
    enrichment_sessions: u64,
    /// Sessions written (inserted or changed), and rows written to every table (history and backoff included).
    sessions_written: u64,
    enrichment_sessions_written: u64,
    rows_written: u64,
    backoff_rows_written: u64,
    /// Wall time of the ticks' syncs.
    sync_seconds: f64,
    /// Withheld analysis and categories still to arrive upstream at the end (of the last day only).
    late_pending_at_end: u64,
}

impl Day {
    fn json(&self) -> serde_json::Value {
        serde_json::json!({
            "label": self.label,
            "ticks": self.ticks,
            "pending_at_start": self.pending_at_start,
            "updates": self.updates,
            "creates": self.creates,
            "incremental_requests": self.incremental_requests,
            "enrichment_requests": self.enrichment_requests,
            "enrichment_sessions": self.enrichment_sessions,
            "sessions_written": self.sessions_written,
            "enrichment_sessions_written": self.enrichment_sessions_written,
            "rows_written": self.rows_written,
            "backoff_rows_written": self.backoff_rows_written,
            "sync_seconds": self.sync_seconds,
            "late_pending_at_end": self.late_pending_at_end,
        })
    }
}

pub(crate) async fn run(settings: Settings, args: &BenchArgs) -> anyhow::Result<()> {
    let off = days(settings.clone(), args, "backoff off", None).await?;
    let backoff_after = settings.sync.enrichment_backoff_after.or(Some(Duration::from_secs(2 * 3_600)));
    let label = format!(
        "backoff on ({}, max {})",
        human(backoff_after.unwrap_or_default()),
        human(settings.sync.enrichment_max_interval)
    );
    let on = days(settings.clone(), args, &label, backoff_after).await?;
    if args.json {
        let days: Vec<_> = off.iter().chain(&on).map(Day::json).collect();
        println!(
            "{}",
            serde_json::json!({ "sessions": args.sessions, "ticks": args.steady_state_ticks, "days": days })
        );
    } else {
        for (n, (off, on)) in off.iter().zip(&on).enumerate() {
            print!("{}", table(args, n + 1, off, on));
        }
    }
    Ok(())
}

/// Fresh simulator and warehouse, backfill, then the ticks: one [`Day`] per 96 ticks (the last possibly shorter).
async fn days(
    mut settings: Settings,
    args: &BenchArgs,
    label: &str,
    backoff: Option<Duration>,
) -> anyhow::Result<Vec<Day>> {
    progress(format_args!("steady state, {label}: starting the simulator with {} sessions", args.sessions));
    let sim = SimProcess::spawn(args.sessions, Duration::from_secs(args.simulator_timeout)).await?;
    settings.api.base_url = sim.base_url.parse().context("simulator URL")?;
    settings.api.token = Some(SecretString::from(devin_sim::DEFAULT_TOKEN.to_owned()));
    // The simulator's clock jumps 15 minutes per tick while the database's moves seconds: to the watermark's clock
    // guard that is a lying clock (the tests do the same).
    settings.sync.clock_tolerance = Duration::from_secs(10 * 365 * 86_400);
    settings.sync.enrichment_backoff_after = backoff;
    let bench_url = database_url(settings.database.url.expose_secret(), &args.database)?;
    recreate_database(&bench_url, &args.database, args.pg_log_min_duration_ms).await?;
    settings.database.url = SecretString::from(bench_url);
    let syncer = app::syncer(settings.clone()).await?;

    progress(format_args!("steady state, {label}: backfill"));
    within(args, "backfill", syncer.run_once(Mode::Backfill)).await?;
    syncer.store().analyze().await?;
    let mut days = Vec::new();
    let mut day = Day { label: label.to_owned(), ..Day::default() };

    let changes = (args.sessions as f64 / 1000.0).round().max(1.0);
    let creates_per_tick = args.steady_state_creates_per_day.unwrap_or(args.sessions as f64 / HISTORY_DAYS) / 96.0;
    progress(format_args!(
        "steady state, {label}: {} ticks, {changes} changes each ({creates_per_tick:.2} of them new sessions)",
        args.steady_state_ticks
    ));
    for tick in 1..=args.steady_state_ticks {
        if tick % 96 == 1 {
            days.extend(
                (tick > 1).then(|| std::mem::replace(&mut day, Day { label: label.to_owned(), ..Day::default() })),
            );
            let now = sim.get("/_sim/stats").await?["now"].as_i64().unwrap_or_default();
            let since = now - settings.sync.enrichment_window.as_secs() as i64;
            day.pending_at_start = syncer.store().sessions_pending_enrichment(syncer.source(), since).await?.len();
        }
        day.ticks += 1;
        sim.post(&format!("/_sim/advance?secs={TICK_SECS}")).await?;
        // New sessions at a fractional rate: the whole ones due by this tick.
        let creates =
            ((tick as f64 * creates_per_tick).floor() - ((tick - 1) as f64 * creates_per_tick).floor()) as u64;
        let updates = (changes as u64).saturating_sub(creates);
        if updates > 0 {
            day.updates += sim.post(&format!("/_sim/update?count={updates}")).await?["updated"].as_u64().unwrap_or(0);
        }
        if creates > 0 {
            day.creates +=
                sim.post(&format!("/_sim/create?count={creates}&late=1")).await?["created"].as_u64().unwrap_or(0);
        }
        let started = Instant::now();
        let (incremental, enrichment) = within(args, "steady-state tick", syncer.sync(None)).await?;
        day.sync_seconds += started.elapsed().as_secs_f64();
        day.incremental_requests += incremental.requests;
        day.enrichment_requests += enrichment.requests;
        day.enrichment_sessions += enrichment.items;
        day.enrichment_sessions_written += enrichment.writes.sessions_written;
        for run in [&incremental, &enrichment] {
            day.sessions_written += run.writes.sessions_written;
            day.rows_written += run.writes.total_rows();
            day.backoff_rows_written += run.writes.rows.get("sync_enrichment_backoff").copied().unwrap_or(0);
        }
    }
    day.late_pending_at_end = sim.get("/_sim/stats").await?["late_pending"].as_u64().unwrap_or(0);
    days.push(day);
    syncer.store().pool().close().await;
    sim.stop().await;
    Ok(days)
}

/// One line of the table: what it reads from a [`Day`].
type Figure = fn(&Day) -> u64;

fn table(args: &BenchArgs, n: usize, off: &Day, on: &Day) -> String {
    let ticks = f64::from(off.ticks.max(1));
    let ratio = |a: u64, b: u64| if b == 0 { "-".to_owned() } else { format!("{:.1}×", a as f64 / b as f64) };
    let mut out = format!(
        "Steady state, day {n} after the backfill: {} ticks of {} min at {} sessions; per day (96 ticks):\n{:<46} {:>14} {:>24} {:>8}\n",
        off.ticks,
        TICK_SECS / 60,
        args.sessions,
        "",
        off.label,
        on.label,
        "less"
    );
    let rows: [(&str, Figure); 10] = [
        ("API requests", |d| d.incremental_requests + d.enrichment_requests),
        ("  incremental requests", |d| d.incremental_requests),
        ("  enrichment requests", |d| d.enrichment_requests),
        ("sessions re-fetched by enrichment", |d| d.enrichment_sessions),
        ("rows written", |d| d.rows_written),
        ("  of which sync_enrichment_backoff", |d| d.backoff_rows_written),
        ("sessions written", |d| d.sessions_written),
        ("  of which by enrichment (late data)", |d| d.enrichment_sessions_written),
        ("updates + creates upstream", |d| d.updates + d.creates),
        ("sessions waiting for enrichment at the start", |d| d.pending_at_start as u64),
    ];
    for (name, f) in rows {
        let (a, b) = (f(off), f(on));
        let scale = if name.starts_with("sessions waiting") { 1.0 } else { 96.0 / ticks };
        out.push_str(&format!("{name:<46} {:>14.0} {:>24.0} {:>8}\n", a as f64 * scale, b as f64 * scale, ratio(a, b)));
    }
    out.push_str(&format!(
        "{:<46} {:>14.1} {:>24.1}\n{:<46} {:>14} {:>24}\n",
        "seconds syncing (all ticks)",
        off.sync_seconds,
        on.sync_seconds,
        "late data still to arrive upstream at the end",
        off.late_pending_at_end,
        on.late_pending_at_end
    ));
    out
}

fn human(d: Duration) -> String {
    let s = d.as_secs();
    if s.is_multiple_of(3_600) { format!("{}h", s / 3_600) } else { format!("{}m", s / 60) }
}
