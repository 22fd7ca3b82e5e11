//! Measuring a phase: wall time, peak RSS, CPU seconds of us, the simulator and PostgreSQL (read from `/proc`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use sqlx::PgConnection;

use devin_etl::sync::RunOutcome;

/// A `kB` figure from a `/proc` status-like file.
pub(crate) fn proc_kb(path: &str, key: &str) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().find_map(|l| l.strip_prefix(key)).and_then(|r| r.split_whitespace().next()?.parse().ok())
}

/// Resets this process's VmHWM to its current RSS (Linux: writing 5 to clear_refs). False when not allowed.
pub(crate) fn reset_peak_rss() -> bool {
    std::fs::write("/proc/self/clear_refs", "5").is_ok()
}

pub(crate) fn peak_rss_bytes() -> Option<u64> {
    proc_kb("/proc/self/status", "VmHWM:").map(|kb| kb * 1024)
}

/// User + system CPU of a process, in clock ticks.
pub(crate) fn cpu_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the command name (which may hold spaces): state is field 3, utime 14, stime 15.
    let rest = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = rest.split_whitespace().collect();
    Some(fields.get(11)?.parse::<u64>().ok()? + fields.get(12)?.parse::<u64>().ok()?)
}

/// `/proc` reports CPU time in USER_HZ, which the Linux ABI fixes at 100 per second.
pub(crate) const TICKS_PER_SECOND: f64 = 100.0;

/// CPU ticks of every process named `postgres` (the server and its backends).
pub(crate) fn postgres_ticks() -> HashMap<u32, u64> {
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
pub(crate) struct Cpu {
    pub(crate) ours: f64,
    pub(crate) simulator: f64,
    /// The backends connected to the benchmark database (the sync's pool, the COPY floor's connections).
    pub(crate) postgres: f64,
    /// Every other `postgres` process: checkpointer, WAL writer, autovacuum, other databases' sessions.
    pub(crate) postgres_other: f64,
}

/// Starts measuring a phase: resets peak RSS and snapshots CPU counters.
pub(crate) struct Meter {
    pub(crate) started: Instant,
    pub(crate) rss_reset: bool,
    pub(crate) start_rss: Option<u64>,
    pub(crate) ours: u64,
    pub(crate) sim_pid: Option<u32>,
    pub(crate) sim: u64,
    pub(crate) postgres: HashMap<u32, u64>,
}

/// What a [`Meter`] measured.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Measured {
    pub(crate) wall: Duration,
    /// RSS when the phase started, and the peak during it.
    pub(crate) start_rss: Option<u64>,
    pub(crate) peak_rss: Option<u64>,
    pub(crate) cpu: Cpu,
}

impl Meter {
    pub(crate) fn start(sim_pid: Option<u32>) -> Meter {
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
    pub(crate) async fn stop(self, admin: &mut PgConnection) -> anyhow::Result<Measured> {
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

pub(crate) fn load_average() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|l| l.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

/// One line of the table.
#[derive(Debug, Clone)]
pub(crate) struct Phase {
    pub(crate) name: &'static str,
    pub(crate) measured: Measured,
    /// Sessions read (runs, fetch floor) or copied (COPY floor).
    pub(crate) sessions: u64,
    /// Sessions inserted or changed by a run.
    pub(crate) written: Option<u64>,
    pub(crate) rows: Option<u64>,
    pub(crate) requests: Option<u64>,
    pub(crate) pages: Option<u64>,
}

impl Phase {
    pub(crate) fn from_run(name: &'static str, run: &RunOutcome, measured: Measured) -> Phase {
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

    pub(crate) fn per_second(&self, n: u64) -> f64 {
        n as f64 / self.measured.wall.as_secs_f64().max(1e-9)
    }
}
