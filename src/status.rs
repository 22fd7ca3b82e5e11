//! `devin-etl status`: each source's watermark and lag, backfill state, recent runs, and the row counts — for
//! people (a table) or scripts (`--json`).

use std::time::Duration;

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::human;
use crate::store::alerts::AlertRow;
use crate::store::{DriftRow, RunRow, Store};

#[derive(Debug, Serialize)]
pub struct Status {
    pub source: String,
    pub schema: String,
    /// Watermark as Unix seconds of the API server's clock.
    pub watermark: Option<i64>,
    pub watermark_time: Option<DateTime<Utc>>,
    /// Seconds between the watermark and now (local clock).
    pub lag_seconds: Option<i64>,
    pub backfill: &'static str,
    /// Windows of the current (or last) backfill finished, of those the configured plan has; `None` when no
    /// backfill ever started (or the plan was not given to [`collect`]).
    pub backfill_windows: Option<BackfillProgress>,
    /// The last time the API's clock disagreed with elapsed time, if ever.
    pub clock_anomaly: Option<ClockAnomaly>,
    /// Sessions this source delivered: live, and marked deleted by a reconcile.
    pub live_sessions: i64,
    pub deleted_sessions: i64,
    /// The source's last [`RECENT_RUNS`] runs, the newest first.
    pub runs: Vec<RunRow>,
    /// What this source's API sent that the models do not know (`schema_drift`), the most recently first seen first.
    pub schema_drift: Vec<DriftRow>,
    /// Webhook alerts of this source that are open or not yet delivered (table `alerts`).
    pub alerts: Vec<AlertRow>,
    /// Rows per table (of every source); left out of each source's object in [`Several`], which has them once.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tables: Vec<TableCount>,
}

/// Runs shown per source.
pub const RECENT_RUNS: i64 = 10;

impl Status {
    /// The backfill's state and, when known, its windows: `completed — 5 of 5 windows done`.
    pub fn backfill_summary(&self) -> String {
        match self.backfill_windows {
            Some(p) => format!("{} — {} of {} windows done", self.backfill, p.done, p.total),
            None => self.backfill.to_owned(),
        }
    }

    /// The newest run that has ended (not `running`).
    pub fn last_finished_run(&self) -> Option<&RunRow> {
        self.runs.iter().find(|r| r.status != "running")
    }
}

/// What `/readyz` says of one source, as the status page shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Readiness {
    /// Synced within `server.max_staleness`, no run stuck: the detail (`last successful sync 5m ago (max 1h)`).
    Ready(String),
    /// No successful sync yet (a fresh deployment's first backfill); nothing says it is failing.
    NotYet(String),
    /// Stale, a run stuck, or the database unreachable: the reason.
    Unready(String),
}

/// The status of several sources (`status` with sources listed, the status page): the schema and row counts once.
#[derive(Debug, Serialize)]
pub struct Several {
    pub schema: String,
    pub sources: Vec<Status>,
    pub tables: Vec<TableCount>,
}

#[derive(Debug, Serialize)]
pub struct ClockAnomaly {
    pub at: DateTime<Utc>,
    pub what: String,
}

#[derive(Debug, Serialize)]
pub struct TableCount {
    pub table: &'static str,
    pub rows: i64,
}

/// How far a backfill has come: windows of its plan finished, of all.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BackfillProgress {
    pub done: usize,
    pub total: usize,
}

/// The configured backfill plan, to count a backfill's windows against.
pub use crate::sync::BackfillPlan;

/// One source's status and the row counts of every table.
pub async fn collect(store: &Store, source: &str, plan: Option<BackfillPlan>) -> anyhow::Result<Status> {
    let mut status = collect_source(store, source, plan).await?;
    status.tables = collect_tables(store).await?;
    Ok(status)
}

/// The status of each source of `sources`, and the row counts once.
pub async fn collect_several<S: AsRef<str>>(
    store: &Store,
    sources: &[S],
    plan: Option<BackfillPlan>,
) -> anyhow::Result<Several> {
    let mut statuses = Vec::with_capacity(sources.len());
    for source in sources {
        statuses.push(collect_source(store, source.as_ref(), plan).await?);
    }
    Ok(Several { schema: store.schema().to_owned(), sources: statuses, tables: collect_tables(store).await? })
}

/// One source's status without the row counts (`tables` empty).
async fn collect_source(store: &Store, source: &str, plan: Option<BackfillPlan>) -> anyhow::Result<Status> {
    let watermark = store.watermark(source).await?;
    let state = store.backfill_state(source).await?;
    let backfill = match &state {
        None => "never run",
        Some(s) if s.completed => "completed",
        Some(_) => "in progress (resumes on the next `sync --backfill` or `run --backfill`)",
    };
    let backfill_windows = match (&state, plan) {
        (Some(state), Some(plan)) => {
            let all = plan.windows_until(state.server_start);
            let done = store.completed_windows(source).await?;
            Some(BackfillProgress { done: all.iter().filter(|w| done.contains(&w.key())).count(), total: all.len() })
        }
        _ => None,
    };
    let (live_sessions, deleted_sessions) = store.source_session_counts(source).await?;
    Ok(Status {
        source: source.to_owned(),
        schema: store.schema().to_owned(),
        watermark,
        watermark_time: watermark.and_then(|w| DateTime::from_timestamp(w, 0)),
        lag_seconds: watermark.map(|w| Utc::now().timestamp() - w),
        backfill,
        backfill_windows,
        clock_anomaly: store.clock_anomaly(source).await?.map(|(what, at)| ClockAnomaly { at, what }),
        live_sessions,
        deleted_sessions,
        runs: store.recent_runs(source, RECENT_RUNS).await?,
        schema_drift: store.drift_report(Some(source)).await?,
        alerts: store.open_or_pending_alerts(source).await?,
        tables: Vec::new(),
    })
}

async fn collect_tables(store: &Store) -> anyhow::Result<Vec<TableCount>> {
    Ok(store.table_counts().await?.into_iter().map(|(table, rows)| TableCount { table, rows }).collect())
}

/// A human-readable report of one source and the row counts.
pub fn render(s: &Status) -> String {
    let mut out = render_source(s);
    out.push_str(&render_tables(&s.tables));
    out
}

/// A human-readable report of several sources, one section each, then the row counts once.
pub fn render_several(several: &Several) -> String {
    let mut out = String::new();
    for (i, s) in several.sources.iter().enumerate() {
        if i > 0 {
            out.push('\n');
        }
        out.push_str(&render_source(s));
    }
    out.push_str(&render_tables(&several.tables));
    out
}

/// One source: watermark, backfill, sessions, clock, recent runs.
fn render_source(s: &Status) -> String {
    let mut out = String::new();
    let watermark = match (s.watermark_time, s.lag_seconds) {
        (Some(t), Some(lag)) if lag >= 0 => {
            format!("{} ({} ago)", t.to_rfc3339(), human::duration(Duration::from_secs(lag.unsigned_abs())))
        }
        // The API server's clock is ahead of this machine's.
        (Some(t), Some(lag)) => format!(
            "{} ({} ahead of this machine's clock)",
            t.to_rfc3339(),
            human::duration(Duration::from_secs(lag.unsigned_abs()))
        ),
        _ => "none yet (no walk has completed)".to_owned(),
    };
    out.push_str(&format!(
        "source:    {} (schema {})\nwatermark: {watermark}\nbackfill:  {}\nsessions:  {} live, {} marked deleted\n",
        s.source,
        s.schema,
        s.backfill_summary(),
        s.live_sessions,
        s.deleted_sessions
    ));
    if let Some(a) = &s.clock_anomaly {
        out.push_str(&format!(
            "clock:     last clock anomaly at {}: {}\n",
            a.at.format("%Y-%m-%d %H:%M:%S UTC"),
            a.what
        ));
    }
    out.push('\n');
    out.push_str(&format!(
        "{:>6}  {:<11} {:<9} {:<20} {:>9} {:>6} {:>9} {:>8} {:>7}\n",
        "run", "mode", "status", "started (UTC)", "duration", "pages", "sessions", "requests", "retries"
    ));
    for r in &s.runs {
        let duration = r
            .finished_at
            .map_or("—".to_owned(), |f| format!("{:.1}s", (f - r.started_at).num_milliseconds() as f64 / 1000.0));
        out.push_str(&format!(
            "{:>6}  {:<11} {:<9} {:<20} {:>9} {:>6} {:>9} {:>8} {:>7}\n",
            r.run_id,
            r.mode,
            r.status,
            r.started_at.format("%Y-%m-%d %H:%M:%S"),
            duration,
            r.pages,
            r.sessions_upserted,
            r.requests,
            r.retries
        ));
        if let Some(e) = &r.error {
            let short: String = e.chars().take(160).collect();
            out.push_str(&format!("        error: {short}\n"));
        }
    }
    if s.runs.is_empty() {
        out.push_str("        (no runs yet)\n");
    }
    if !s.schema_drift.is_empty() {
        let n = s.schema_drift.len();
        out.push_str(&format!(
            "\nschema drift: {n} entr{} (`devin-etl drift` lists them all)\n",
            if n == 1 { "y" } else { "ies" }
        ));
        out.push_str(&render_drift(&s.schema_drift[..n.min(STATUS_DRIFT_ROWS)], false));
        if n > STATUS_DRIFT_ROWS {
            out.push_str(&format!("… and {} more\n", n - STATUS_DRIFT_ROWS));
        }
    }
    out.push_str(&render_alerts(&s.alerts));
    out
}

/// Drift entries shown by `status` (the newest); `drift` shows them all.
pub const STATUS_DRIFT_ROWS: usize = 10;

/// Schema drift entries as a table (`status`, `drift`); `with_source` adds the source column.
pub fn render_drift(rows: &[DriftRow], with_source: bool) -> String {
    let header =
        ["source", "kind", "path", "value", "times seen", "first seen (UTC)", "last seen (UTC)", "example session"];
    let cells: Vec<[String; 8]> = rows
        .iter()
        .map(|r| {
            [
                r.source.clone(),
                r.kind.clone(),
                r.path.clone(),
                r.value.chars().take(60).collect(),
                r.times_seen.to_string(),
                r.first_seen.format("%Y-%m-%d %H:%M:%S").to_string(),
                r.last_seen.format("%Y-%m-%d %H:%M:%S").to_string(),
                r.example_session_id.clone().unwrap_or_default(),
            ]
        })
        .collect();
    let first = if with_source { 0 } else { 1 };
    let widths: Vec<usize> = (0..header.len())
        .map(|i| cells.iter().map(|c| c[i].chars().count()).chain([header[i].len()]).max().unwrap_or_default())
        .collect();
    let line = |values: &[&str]| {
        let mut l: Vec<String> = Vec::new();
        for i in first..header.len() {
            // The times column is numeric: right-aligned.
            l.push(if i == 4 {
                format!("{:>w$}", values[i], w = widths[i])
            } else {
                format!("{:<w$}", values[i], w = widths[i])
            });
        }
        format!("{}\n", l.join("  ").trim_end())
    };
    let mut out = line(&header);
    for c in &cells {
        out.push_str(&line(&c.each_ref().map(String::as_str)));
    }
    out
}

/// The source's open and undelivered alerts; nothing when there are none.
fn render_alerts(alerts: &[AlertRow]) -> String {
    if alerts.is_empty() {
        return String::new();
    }
    let mut out = "\nAlerts (open or not yet delivered)\n".to_owned();
    for a in alerts {
        out.push_str(&format!(
            "  {:<8} {} since {} ({}): {}\n",
            alert_state(a),
            a.alert_key,
            a.opened_at.format("%Y-%m-%d %H:%M:%S UTC"),
            alert_delivery(a, 120),
            a.summary.chars().take(160).collect::<String>()
        ));
    }
    out
}

/// `open` or `resolved` (a one-shot alert, an event, stays open).
pub fn alert_state(a: &AlertRow) -> &'static str {
    if a.resolved_at.is_none() || a.one_shot { "open" } else { "resolved" }
}

/// Whether the receiver has the alert's latest state, and if not why: the delivery error cut to `error_chars`.
pub fn alert_delivery(a: &AlertRow, error_chars: usize) -> String {
    let delivered =
        a.fired_sent_at.is_some() && (a.one_shot || a.resolved_at.is_none() || a.resolved_sent_at.is_some());
    match &a.last_error {
        _ if delivered => "delivered".to_owned(),
        Some(e) => format!(
            "not delivered after {} attempt(s): {}",
            a.attempts,
            e.chars().take(error_chars).collect::<String>()
        ),
        None => "not delivered yet".to_owned(),
    }
}

fn render_tables(tables: &[TableCount]) -> String {
    let counts: Vec<(&str, i64)> = tables.iter().map(|t| (t.table, t.rows)).collect();
    format!("\n{}", render_counts(&counts))
}

/// Rows per table as a two-column table, the names' column as wide as the longest name (`status` and `demo`).
pub fn render_counts(counts: &[(&str, i64)]) -> String {
    let width = counts.iter().map(|(table, _)| table.len()).max().unwrap_or_default().max("table".len());
    let mut out = format!("{:<width$} {:>10}\n", "table", "rows");
    for (table, rows) in counts {
        out.push_str(&format!("{table:<width$} {rows:>10}\n"));
    }
    out
}
