//! The report: the table of phases, the checks against the targets, and the JSON form.

use std::collections::HashMap;
use std::fmt::Write as _;
use std::time::Duration;

use serde_json::json;

use crate::args::BenchArgs;
use crate::database::{Machine, TableSize};
use crate::measure::Phase;

/// Issue 5's targets.
const TARGET_BACKFILL_VS_COPY: f64 = 1.5;
const TARGET_RSS_MB: f64 = 100.0;
const TARGET_INCREMENTAL: Duration = Duration::from_secs(1);
const TARGET_NOOP: Duration = Duration::from_millis(200);

pub(crate) struct Report {
    pub(crate) args: BenchArgs,
    pub(crate) machine: Machine,
    pub(crate) load_after: String,
    pub(crate) page_size: u32,
    pub(crate) phases: Vec<Phase>,
    pub(crate) copy_by_table: Vec<(&'static str, u64, Duration)>,
    pub(crate) floor_notes: Vec<String>,
    pub(crate) changed: u64,
    pub(crate) created: u64,
    pub(crate) enrichment_allowance: u64,
    pub(crate) enrichment_batch: usize,
    pub(crate) pending_enrichment: i64,
    pub(crate) noop_written: u64,
    /// Sessions the no-change reconcile wrote or marked deleted (must be 0).
    pub(crate) reconcile_written: u64,
    pub(crate) table_sizes: Vec<TableSize>,
}

/// A PASS/FAIL line.
pub(crate) struct Check {
    pub(crate) name: String,
    pub(crate) pass: bool,
    pub(crate) detail: String,
}

pub(crate) fn mb(bytes: u64) -> f64 {
    bytes as f64 / (1024.0 * 1024.0)
}

impl Report {
    pub(crate) fn phase(&self, name: &str) -> Option<&Phase> {
        self.phases.iter().find(|p| p.name == name)
    }

    pub(crate) fn ratio(&self, floor: &str) -> Option<f64> {
        let backfill = self.phase("backfill")?.measured.wall.as_secs_f64();
        let floor = self.phase(floor)?.measured.wall.as_secs_f64();
        (floor > 0.0).then(|| backfill / floor)
    }

    pub(crate) fn checks(&self) -> Vec<Check> {
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
            let list_allowance = self.changed.div_ceil(u64::from(self.page_size.max(1))) + 2;
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
        if let Some(reconcile) = self.phase("reconcile (none)") {
            checks.push(Check {
                name: "reconcile with nothing changed writes nothing".to_owned(),
                pass: self.reconcile_written == 0,
                detail: format!("{} sessions written or deleted", self.reconcile_written),
            });
            if let Some(fetch) = self.phase("fetch floor") {
                let ratio = reconcile.measured.wall.as_secs_f64() / fetch.measured.wall.as_secs_f64().max(1e-9);
                checks.push(Check {
                    name:
                        "reconcile with nothing changed: ratio to the fetch floor (target <= 1.2x plus the comparison)"
                            .to_owned(),
                    pass: true,
                    detail: format!("{ratio:.2}x"),
                });
            }
        }
        checks
    }

    pub(crate) fn text(&self) -> String {
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
        if !self.table_sizes.is_empty() {
            let _ =
                writeln!(out, "\n{:<30} {:>10} {:>10} {:>10}", "table (size on disk, MB)", "total", "heap", "indexes");
            for t in &self.table_sizes {
                let _ = writeln!(
                    out,
                    "{:<30} {:>10.1} {:>10.1} {:>10.1}",
                    t.table,
                    mb(t.total as u64),
                    mb(t.heap as u64),
                    mb(t.indexes as u64)
                );
            }
            let total: i64 = self.table_sizes.iter().map(|t| t.total).sum();
            let _ = writeln!(out, "{:<30} {:>10.1}", "all tables", mb(total as u64));
        }
        let _ = writeln!(out);
        for c in self.checks() {
            let _ = writeln!(out, "{} {} ({})", if c.pass { "PASS" } else { "FAIL" }, c.name, c.detail);
        }
        out
    }

    pub(crate) fn json(&self) -> serde_json::Value {
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
            "table_sizes": self.table_sizes.iter().map(|t| json!({
                "table": t.table, "total_bytes": t.total, "heap_bytes": t.heap, "index_bytes": t.indexes,
            })).collect::<Vec<_>>(),
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
