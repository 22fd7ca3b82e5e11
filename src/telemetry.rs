//! Logging: JSON for machines, human-readable on a terminal, filtered like `RUST_LOG`.
//! Metrics: the process-wide Prometheus recorder whose text `/metrics` serves.

use std::io::IsTerminal;
use std::sync::{Mutex, PoisonError};

use anyhow::Context as _;
use metrics::Unit;
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

use crate::settings::{LogFormat, LogSettings};

/// The name of every metric the service exports, spelled once: where it is recorded, described, and in tests.
pub mod metric {
    pub const RUNS: &str = "devin_etl_runs_total";
    pub const PAGES: &str = "devin_etl_pages_total";
    pub const SESSIONS_READ: &str = "devin_etl_sessions_read_total";
    pub const SESSIONS_UPSERTED: &str = "devin_etl_sessions_upserted_total";
    pub const ROWS_WRITTEN: &str = "devin_etl_rows_written_total";
    pub const API_REQUESTS: &str = "devin_etl_api_requests_total";
    pub const API_RETRIES: &str = "devin_etl_api_retries_total";
    pub const RUN_DURATION: &str = "devin_etl_run_duration_seconds";
    pub const WATERMARK_LAG: &str = "devin_etl_watermark_lag_seconds";
    pub const LAST_SUCCESS: &str = "devin_etl_last_success_timestamp_seconds";
    pub const CLOCK_ANOMALIES: &str = "devin_etl_clock_anomalies_total";
    pub const LOCK_LOST: &str = "devin_etl_lock_lost_total";
    pub const RUNS_FENCED: &str = "devin_etl_runs_fenced_total";
    pub const TICKS_SKIPPED: &str = "devin_etl_ticks_skipped_total";
    pub const HISTORY_PRUNED: &str = "devin_etl_history_pruned_rows_total";
    pub const SCHEMA_DRIFT_ITEMS: &str = "devin_etl_schema_drift_items_total";
    pub const SCHEMA_DRIFT_NEW: &str = "devin_etl_schema_drift_new_total";
    pub const RECONCILE_REFUSED: &str = "devin_etl_reconcile_refused_total";
    pub const ALERTS_SENT: &str = "devin_etl_alerts_sent_total";
    pub const ALERT_DELIVERY_FAILURES: &str = "devin_etl_alert_delivery_failures_total";

    /// The metrics a healthy run moves (or that exist from the start).
    pub const FROM_THE_FIRST_RUN: [&str; 10] = [
        RUNS,
        PAGES,
        SESSIONS_READ,
        SESSIONS_UPSERTED,
        ROWS_WRITTEN,
        API_REQUESTS,
        API_RETRIES,
        RUN_DURATION,
        WATERMARK_LAG,
        LAST_SUCCESS,
    ];

    /// The metrics that appear only after an event a healthy single run does not cause (a clock anomaly, a lost
    /// lock, a tick another replica ran, a prune of the history, schema drift, a refused reconcile, an alert).
    pub const ONLY_AFTER_AN_EVENT: [&str; 10] = [
        CLOCK_ANOMALIES,
        LOCK_LOST,
        RUNS_FENCED,
        TICKS_SKIPPED,
        HISTORY_PRUNED,
        SCHEMA_DRIFT_ITEMS,
        SCHEMA_DRIFT_NEW,
        RECONCILE_REFUSED,
        ALERTS_SENT,
        ALERT_DELIVERY_FAILURES,
    ];

    /// Every metric.
    pub const ALL: [&str; FROM_THE_FIRST_RUN.len() + ONLY_AFTER_AN_EVENT.len()] = {
        let mut all = [""; FROM_THE_FIRST_RUN.len() + ONLY_AFTER_AN_EVENT.len()];
        let mut i = 0;
        while i < all.len() {
            all[i] = if i < FROM_THE_FIRST_RUN.len() {
                FROM_THE_FIRST_RUN[i]
            } else {
                ONLY_AFTER_AN_EVENT[i - FROM_THE_FIRST_RUN.len()]
            };
            i += 1;
        }
        all
    };
}

/// Installs the global subscriber. `RUST_LOG`, when set, wins over `log.filter`.
/// Safe to call more than once (later calls are no-ops), which tests rely on.
pub fn init(settings: &LogSettings) {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&settings.filter))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let json = match settings.format {
        LogFormat::Json => true,
        LogFormat::Pretty => false,
        LogFormat::Auto => !std::io::stderr().is_terminal(),
    };
    // Logs go to stderr, so command output on stdout (status, demo, bench tables, --json) stays clean.
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_target(false).with_writer(std::io::stderr);
    let _already_set = if json {
        builder.json().flatten_event(true).with_current_span(true).with_span_list(false).try_init()
    } else {
        builder.try_init()
    };
}

/// Buckets of `devin_etl_run_duration_seconds`: a quiet incremental run takes about a second, a backfill hours.
const RUN_DURATION_BUCKETS: &[f64] =
    &[0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0, 1800.0, 3600.0, 7200.0, 14400.0];

/// Installs the global `metrics` recorder (Prometheus) once per process and returns a handle whose `render()`
/// `/metrics` serves. Later calls return the same handle, which tests rely on. Fails only when some other
/// recorder was installed first.
///
/// Histograms are folded into their buckets on every `render()`; nothing else needs periodic upkeep here
/// (one duration sample per run).
pub fn install_metrics() -> anyhow::Result<PrometheusHandle> {
    static HANDLE: Mutex<Option<PrometheusHandle>> = Mutex::new(None);
    // A panic while holding the lock cannot leave the Option half-written, so a poisoned lock is still sound.
    let mut guard = HANDLE.lock().unwrap_or_else(PoisonError::into_inner);
    if let Some(handle) = guard.as_ref() {
        return Ok(handle.clone());
    }
    let handle = PrometheusBuilder::new()
        .set_buckets_for_metric(Matcher::Full(metric::RUN_DURATION.to_owned()), RUN_DURATION_BUCKETS)
        .context("configuring the histogram buckets of devin_etl_run_duration_seconds")?
        .install_recorder()
        .context("installing the Prometheus metrics recorder")?;
    describe_metrics();
    *guard = Some(handle.clone());
    Ok(handle)
}

/// HELP lines of every metric the service exports, and zero values for the series that exist from the start,
/// so dashboards and `rate()` see them before the first run.
fn describe_metrics() {
    use metrics::{describe_counter, describe_gauge, describe_histogram};
    describe_counter!(metric::RUNS, Unit::Count, "Finished sync runs, by source, mode and final status.");
    describe_counter!(metric::PAGES, Unit::Count, "API pages fetched and loaded, by source and run mode.");
    describe_counter!(
        metric::SESSIONS_READ,
        Unit::Count,
        "Sessions read from the API (repeats included), by source and run mode."
    );
    describe_counter!(
        metric::SESSIONS_UPSERTED,
        Unit::Count,
        "Sessions inserted or updated in the warehouse (unchanged re-reads excluded), by source and run mode."
    );
    describe_counter!(metric::ROWS_WRITTEN, Unit::Count, "Rows written to the warehouse, by source and table.");
    describe_counter!(
        metric::API_REQUESTS,
        Unit::Count,
        "Requests to the Devin API, by source and HTTP status code (\"error\" when no response arrived)."
    );
    describe_counter!(metric::API_RETRIES, Unit::Count, "Retried requests to the Devin API, by source.");
    describe_histogram!(metric::RUN_DURATION, Unit::Seconds, "Wall-clock duration of sync runs, by source and mode.");
    describe_gauge!(
        metric::WATERMARK_LAG,
        Unit::Seconds,
        "Now minus the source's watermark (API server time up to which every change is in the warehouse); \
         set on each scrape."
    );
    describe_gauge!(
        metric::LAST_SUCCESS,
        Unit::Seconds,
        "Unix time at which the last successful run of a source and mode finished (in this process)."
    );
    describe_counter!(
        metric::CLOCK_ANOMALIES,
        Unit::Count,
        "Times the API server's clock disagreed with elapsed time beyond sync.clock_tolerance, by source."
    );
    describe_counter!(
        metric::LOCK_LOST,
        Unit::Count,
        "Times a run's single-flight lock connection failed its heartbeat, by source."
    );
    describe_counter!(
        metric::RUNS_FENCED,
        Unit::Count,
        "Runs stopped because they no longer held their source's lock (fenced), by source."
    );
    describe_counter!(
        metric::TICKS_SKIPPED,
        Unit::Count,
        "Scheduled ticks this replica skipped, by source and reason: claimed (another replica ran it) or busy \
         (another replica held the lock)."
    );
    describe_counter!(
        metric::HISTORY_PRUNED,
        Unit::Count,
        "Closed rows of session_history and session_pull_request_history deleted as older than history.retention."
    );
    describe_counter!(
        metric::SCHEMA_DRIFT_ITEMS,
        Unit::Count,
        "API items that carried schema drift (a field, enum value or JSON type the models do not know), by source \
         and kind (unknown_field, unknown_enum_value, type_changed); an item with several counts once per kind."
    );
    describe_counter!(
        metric::SCHEMA_DRIFT_NEW,
        Unit::Count,
        "Schema drift entries seen for the first time (new rows of schema_drift), by source and kind."
    );
    describe_counter!(
        metric::RECONCILE_REFUSED,
        Unit::Count,
        "Reconcile runs that refused to mark sessions deleted because too many had vanished (the mass-delete \
         guard), by source."
    );
    describe_counter!(
        metric::ALERTS_SENT,
        Unit::Count,
        "Webhook alert notifications the receiver accepted, by kind and state (firing, resolved)."
    );
    describe_counter!(
        metric::ALERT_DELIVERY_FAILURES,
        Unit::Count,
        "Webhook alert deliveries that failed and will be retried with backoff."
    );
    // Series without a source label, so that the HELP and TYPE lines are there before anything ran; each source's
    // own zero series come with `announce_sources`.
    zero_series(&[]);
}

/// Zero values of the run and retry counters of each source, so that `rate()` and dashboards see every source
/// from the start (the daemon calls it with the sources it syncs).
pub fn announce_sources<S: AsRef<str>>(sources: &[S]) {
    for source in sources {
        zero_series(&[("source", source.as_ref().to_owned())]);
    }
}

fn zero_series(labels: &[(&'static str, String)]) {
    let with = |extra: &[(&'static str, &'static str)]| -> Vec<metrics::Label> {
        let own = labels.iter().map(|(k, v)| metrics::Label::new(*k, v.clone()));
        own.chain(extra.iter().map(|(k, v)| metrics::Label::new(*k, *v))).collect()
    };
    for mode in ["incremental", "backfill"] {
        for status in ["succeeded", "failed", "aborted"] {
            metrics::counter!(metric::RUNS, with(&[("mode", mode), ("status", status)])).increment(0);
        }
    }
    metrics::counter!(metric::API_RETRIES, with(&[])).increment(0);
}
