//! The daemon loop of `devin-etl run`: waits for the next tick of `sync.schedule` (incremental + enrichment)
//! or `sync.reconcile_schedule` (reconcile), runs it under the source's advisory lock and claims the tick first, so
//! any number of replicas run each tick of each source once, and stops cleanly on shutdown. One run at a time per
//! source: ticks that fall during a run are skipped and logged.
//!
//! Several sources ([`run_sources`]): each has a loop of its own, so a source that fails or hangs never holds the
//! others back; at most `sync.source_concurrency` of them run a job at once in a process. A source waiting for a
//! slot takes its lock only once it has one, so another replica with a free slot takes it first, and this replica
//! then skips the tick (claimed, or busy): the replicas share the sources through their locks.

use std::sync::Arc;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tokio::sync::{Semaphore, watch};
use tracing::Instrument as _;

use crate::sync::{Job, RunErrorKind, Syncer, TickOutcome};
use crate::telemetry::metric;

/// Runs until `shutdown` turns true. With `backfill`, a backfill runs first unless one has completed already
/// (here or on another replica).
pub async fn run_daemon(syncer: Syncer, backfill: bool, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    source_loop(syncer, backfill, shutdown, None).await
}

/// [`run_daemon`] for every source of `syncers` at once, each in a task of its own with its own ticks, lock,
/// backfill and claims; at most `sync.source_concurrency` (of the first syncer's settings: the setting is global)
/// run a job at a time. Returns when every loop has stopped, or with the first loop's error (the others are then
/// abandoned, their open transactions rolling back, as when the process exits).
pub async fn run_sources(syncers: Vec<Syncer>, backfill: bool, shutdown: watch::Receiver<bool>) -> anyhow::Result<()> {
    let Some(first) = syncers.first() else {
        anyhow::bail!("no source to sync");
    };
    if syncers.len() == 1 {
        return run_daemon(first.clone(), backfill, shutdown).await;
    }
    let slots = Arc::new(Semaphore::new(first.settings().sync.source_concurrency));
    let mut loops = tokio::task::JoinSet::new();
    for syncer in syncers {
        let span = tracing::info_span!("source", source = syncer.source());
        loops.spawn(source_loop(syncer, backfill, shutdown.clone(), Some(slots.clone())).instrument(span));
    }
    while let Some(ended) = loops.join_next().await {
        ended.map_err(|e| anyhow::anyhow!("a source's scheduling task failed: {e}"))??;
    }
    Ok(())
}

/// One source's loop; a job waits for one of `slots`, when given, before it takes the source's lock.
async fn source_loop(
    syncer: Syncer,
    backfill: bool,
    mut shutdown: watch::Receiver<bool>,
    slots: Option<Arc<Semaphore>>,
) -> anyhow::Result<()> {
    let source = syncer.source().to_owned();
    let backfill_done = syncer.store().backfill_state(&source).await?.is_some_and(|s| s.completed);
    let mut backfill_pending = backfill && !backfill_done;
    if !backfill && !backfill_done && syncer.store().watermark(&source).await?.is_none() {
        tracing::warn!(
            "the warehouse is empty: the first scheduled run will read the whole history in one walk. For a large \
             history, start the daemon with `devin-etl run --backfill` (or run `devin-etl sync --backfill` once): \
             it loads in parallel windows and resumes after a crash"
        );
    }
    let settings = &syncer.settings().sync;
    let grace = settings.shutdown_grace;
    let slots = slots.as_deref();
    if backfill_pending {
        run_job(&syncer, Job::BackfillUnlessDone, None, &mut backfill_pending, &shutdown, grace, slots).await;
    }
    loop {
        if *shutdown.borrow() {
            break;
        }
        let Some((at, job)) = next_tick(settings, Utc::now()) else {
            anyhow::bail!("sync.schedule and sync.reconcile_schedule have no future ticks");
        };
        let job = if backfill_pending { Job::BackfillUnlessDone } else { job };
        tracing::debug!(next = %at, job = ?job, "waiting for the next tick");
        let wait = (at - Utc::now()).to_std().unwrap_or(Duration::ZERO);
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = shutdown.changed() => continue,
        }
        let started = Utc::now();
        run_job(&syncer, job, Some(at), &mut backfill_pending, &shutdown, grace, slots).await;
        let skipped = settings.schedule.after(&started).take_while(|t| *t <= Utc::now()).count();
        if skipped > 0 {
            tracing::info!(skipped, "ticks fell during the run and were skipped (runs never overlap)");
        }
    }
    tracing::info!("shutdown: no more runs are scheduled");
    Ok(())
}

/// The earliest upcoming tick of either schedule; reconcile wins a tie (it covers everything a sync does).
fn next_tick(settings: &crate::settings::SyncSettings, now: DateTime<Utc>) -> Option<(DateTime<Utc>, Job)> {
    let sync = settings.schedule.after(&now).next().map(|t| (t, Job::Sync { since: None }));
    let reconcile = settings.reconcile_schedule.after(&now).next().map(|t| (t, Job::Reconcile));
    match (sync, reconcile) {
        (Some(s), Some(r)) => Some(if r.0 <= s.0 { r } else { s }),
        (s, r) => s.or(r),
    }
}

/// What one tick came to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Tick {
    /// This replica ran it.
    Ran,
    /// This replica ran it and a run failed (logged and recorded by the run); the next tick retries.
    Failed,
    /// Another replica had already claimed and run this tick: skipped.
    AlreadyClaimed,
    /// Another replica held the source's lock: skipped.
    Busy,
}

/// Runs `job` under the source's lock — for the scheduled tick at `at`, claimed first so that it runs once across
/// replicas, or unscheduled (`None`: the start-up backfill) — and logs and counts a tick this replica skips
/// (`devin_etl_ticks_skipped_total`, by reason).
pub async fn run_tick(syncer: &Syncer, job: Job, at: Option<DateTime<Utc>>) -> Tick {
    let result = match at {
        Some(at) => syncer.run_tick(job, at).await,
        None => syncer.run_job(job).await.map(TickOutcome::Ran),
    };
    let skipped = |reason: &'static str| {
        metrics::counter!(metric::TICKS_SKIPPED, "source" => syncer.source().to_owned(), "reason" => reason)
            .increment(1);
    };
    match result {
        Ok(TickOutcome::Ran(_)) => Tick::Ran,
        Ok(TickOutcome::AlreadyClaimed) => {
            tracing::info!(job = ?job, tick = ?at, "another replica already ran this tick; skipping it");
            skipped("claimed");
            Tick::AlreadyClaimed
        }
        Err(e) if RunErrorKind::of(&e) == RunErrorKind::SourceBusy => {
            tracing::info!(job = ?job, tick = ?at, "another replica is syncing this source; skipping this tick");
            skipped("busy");
            Tick::Busy
        }
        // The run has logged and recorded its failure; the next tick retries.
        Err(e) => {
            tracing::debug!(error = %format!("{e:#}"), "run ended with an error");
            Tick::Failed
        }
    }
}

/// [`run_tick`] once one of `slots` (when given) is free, giving the job `grace` to stop after shutdown is
/// requested.
async fn run_job(
    syncer: &Syncer,
    job: Job,
    at: Option<DateTime<Utc>>,
    backfill_pending: &mut bool,
    shutdown: &watch::Receiver<bool>,
    grace: Duration,
    slots: Option<&Semaphore>,
) {
    let mut waiting = shutdown.clone();
    let _slot = match slots {
        None => None,
        Some(slots) => tokio::select! {
            slot = slots.acquire() => match slot {
                Ok(slot) => Some(slot),
                Err(_) => return, // closed: never happens, the semaphore lives as long as the loops
            },
            _ = waiting.wait_for(|stop| *stop) => return,
        },
    };
    let mut stop = shutdown.clone();
    let grace_over = async move {
        let _ = stop.wait_for(|stop| *stop).await;
        tokio::time::sleep(grace).await;
    };
    tokio::select! {
        tick = run_tick(syncer, job, at) => {
            if tick == Tick::Ran && job == Job::BackfillUnlessDone {
                *backfill_pending = false;
            }
        }
        // Dropping the job drops its lock, whose connection closes: the open transaction rolls back.
        () = grace_over => {
            tracing::warn!(grace_secs = grace.as_secs(), "the run did not stop within the shutdown grace period; abandoning it (its open transaction rolls back)");
        }
    }
}

/// Sets `stop` to true when SIGTERM or SIGINT arrives, so the current batch commits or rolls back and the run
/// stops. A second signal means the operator will not wait: the process exits at once (130 after SIGINT, 143 after
/// SIGTERM); the open transaction rolls back and the lock's connection closes with the process.
pub async fn forward_signals(stop: watch::Sender<bool>) {
    let mut signals = Signals::new();
    let first = signals.next().await;
    tracing::info!("{first} received: finishing the current batch, then exiting (send it again to exit at once)");
    let _ = stop.send(true);
    let second = signals.next().await;
    tracing::warn!(
        "second signal ({second}) received: exiting now without waiting for the run; nothing half-written is kept"
    );
    std::process::exit(if second == "SIGTERM" { 143 } else { 130 });
}

/// SIGINT and SIGTERM, listened to for the life of the process so that no repeat is missed.
struct Signals {
    #[cfg(unix)]
    interrupt: Option<tokio::signal::unix::Signal>,
    #[cfg(unix)]
    terminate: Option<tokio::signal::unix::Signal>,
}

impl Signals {
    fn new() -> Signals {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let listen = |kind: SignalKind, name: &str| {
                signal(kind).map_err(|e| tracing::warn!(error = %e, "cannot listen for {name}")).ok()
            };
            Signals {
                interrupt: listen(SignalKind::interrupt(), "SIGINT"),
                terminate: listen(SignalKind::terminate(), "SIGTERM"),
            }
        }
        #[cfg(not(unix))]
        Signals {}
    }

    /// The name of the next signal.
    async fn next(&mut self) -> &'static str {
        #[cfg(unix)]
        {
            async fn recv(signal: &mut Option<tokio::signal::unix::Signal>) {
                if let Some(s) = signal
                    && s.recv().await.is_some()
                {
                    return;
                }
                // Not listening (or the runtime is going away): this one never fires.
                std::future::pending().await
            }
            tokio::select! {
                () = recv(&mut self.interrupt) => "SIGINT",
                () = recv(&mut self.terminate) => "SIGTERM",
            }
        }
        #[cfg(not(unix))]
        {
            let _ = tokio::signal::ctrl_c().await;
            "SIGINT"
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn next_tick_takes_the_earliest_schedule() {
        let mut settings = crate::settings::Settings::load_with_env(None, |_| None).unwrap().sync;
        settings.schedule = crate::settings::parse_schedule("k", "*/15 * * * *").unwrap();
        settings.reconcile_schedule = crate::settings::parse_schedule("k", "30 3 * * *").unwrap();
        let now: DateTime<Utc> = "2026-11-29T03:05:00Z".parse().unwrap();
        assert_eq!(
            next_tick(&settings, now),
            Some(("2026-11-29T03:15:00Z".parse().unwrap(), Job::Sync { since: None }))
        );
        let now: DateTime<Utc> = "2026-11-29T03:29:00Z".parse().unwrap();
        settings.reconcile_schedule = crate::settings::parse_schedule("k", "30 3 * * *").unwrap();
        settings.schedule = crate::settings::parse_schedule("k", "*/30 * * * *").unwrap();
        assert_eq!(next_tick(&settings, now), Some(("2026-11-29T03:30:00Z".parse().unwrap(), Job::Reconcile)));
    }
}
