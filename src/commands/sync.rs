//! `devin-etl sync [--backfill | --reconcile | --since T] [--source NAME]`: one job, then exit.

use anyhow::Context as _;

use crate::app;
use crate::settings::Settings;
use crate::sync::Job;

pub async fn run(settings: Settings, job: Job) -> anyhow::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::schedule::forward_signals(stop));
    let syncer = app::syncer(settings).await?.with_shutdown(stopped).with_progress(super::progress_bar::for_stderr());
    // Takes the source's lock for itself, and fails at once when another process holds it.
    syncer.run_job(job).await.map(drop)
}

/// `--since`: RFC 3339 or Unix seconds.
pub fn parse_time(text: &str) -> anyhow::Result<i64> {
    if let Ok(secs) = text.parse::<i64>() {
        return Ok(secs);
    }
    chrono::DateTime::parse_from_rfc3339(text)
        .map(|t| t.timestamp())
        .with_context(|| format!("--since {text:?} is neither RFC 3339 (2026-01-31T00:00:00Z) nor Unix seconds"))
}
