//! `devin-etl sync [--backfill | --reconcile | --since T] [--source NAME]`: one job, then exit.

use anyhow::Context as _;

use crate::app;
use crate::settings::Settings;
use crate::sync::Job;

/// Runs `job` for each source of `sources`, one after another. With several, every source runs even when an
/// earlier one failed, and the error names the sources that failed. Then, with alerts on, one alerts pass bounded in
/// time, whose outcome never changes the result.
pub async fn run(sources: Vec<Settings>, job: Job) -> anyhow::Result<()> {
    let (stop, stopped) = tokio::sync::watch::channel(false);
    tokio::spawn(crate::schedule::forward_signals(stop));
    let syncers = app::syncers(sources.clone()).await?;
    let alerter = match syncers.first() {
        Some(first) => crate::alerts::Alerter::new(&sources, first.store().clone())?,
        None => None,
    };
    let result = run_syncers(syncers, job, &stopped).await;
    // Cron-driven `sync` alerts too: one bounded pass, which never changes the outcome.
    if let Some(alerter) = alerter
        && !*stopped.borrow()
    {
        alerter.pass_within(alerter.sync_bound()).await;
    }
    result
}

/// The runs of [`run`].
async fn run_syncers(
    syncers: Vec<crate::sync::Syncer>,
    job: Job,
    stopped: &tokio::sync::watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let several = syncers.len() > 1;
    let mut failed = Vec::new();
    for syncer in syncers {
        if *stopped.borrow() {
            failed.push((syncer.source().to_owned(), anyhow::anyhow!("not run: shutdown requested")));
            continue;
        }
        let syncer = syncer.with_shutdown(stopped.clone()).with_progress(super::progress_bar::for_stderr());
        // Takes the source's lock for itself, and fails at once when another process holds it.
        match syncer.run_job(job).await {
            Ok(_) => {}
            Err(e) if !several => return Err(e),
            Err(e) => {
                tracing::error!(source = syncer.source(), error = %format!("{e:#}"), "the source's sync failed; going on with the next source");
                failed.push((syncer.source().to_owned(), e));
            }
        }
    }
    if failed.is_empty() {
        return Ok(());
    }
    let names: Vec<&str> = failed.iter().map(|(name, _)| name.as_str()).collect();
    let details: Vec<String> = failed.iter().map(|(name, e)| format!("{name}: {e:#}")).collect();
    anyhow::bail!(
        "the sync failed for source(s) {} (the others succeeded):\n  {}",
        names.join(", "),
        details.join("\n  ")
    )
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
