//! Jobs: what one `devin-etl sync` does, and what each tick of `devin-etl run` does — each under the source's lock,
//! taken and released by `Syncer::locked` only; a scheduled tick is claimed first, so it runs once.

use chrono::{DateTime, Utc};

use super::{Mode, RunOutcome, Syncer};

/// One unit of work under the source's lock.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Job {
    /// The whole history: resumes an unfinished backfill, loads again after a finished one (`sync --backfill`).
    Backfill,
    /// A backfill unless one has completed, here or on another replica (`run --backfill`).
    BackfillUnlessDone,
    /// An incremental run, then an enrichment run; with `since`, also everything updated after it (`sync`, and
    /// every tick of `sync.schedule`).
    Sync { since: Option<i64> },
    /// The whole history re-read, and sessions the API no longer returns marked deleted.
    Reconcile,
}

/// What a scheduled tick came to under the lock.
#[derive(Debug)]
pub enum TickOutcome {
    /// The tick was ours: these runs ran.
    Ran(Vec<RunOutcome>),
    /// Another replica claimed this tick (or a later one) first: it ran it, and this replica did nothing.
    AlreadyClaimed,
}

impl Syncer {
    /// Takes the source's lock (failing with [`SourceBusy`](crate::store::SourceBusy) when another process holds
    /// it), runs `job`, releases the lock. Returns the runs it did, in order; none when there was nothing to do.
    pub async fn run_job(&self, job: Job) -> anyhow::Result<Vec<RunOutcome>> {
        self.locked(async |syncer| syncer.job_locked(job).await).await
    }

    /// As [`Syncer::run_job`], for the scheduled tick at `tick`: under the lock, the tick is claimed first, and a
    /// tick another replica has claimed already is skipped — so each tick runs once however the replicas' lock
    /// attempts interleave (one may reach the lock just after another released it).
    pub async fn run_tick(&self, job: Job, tick: DateTime<Utc>) -> anyhow::Result<TickOutcome> {
        self.locked(async |syncer| {
            if !syncer.store().claim_tick(syncer.source(), tick).await? {
                return Ok(TickOutcome::AlreadyClaimed);
            }
            Ok(TickOutcome::Ran(syncer.job_locked(job).await?))
        })
        .await
    }

    async fn job_locked(&self, job: Job) -> anyhow::Result<Vec<RunOutcome>> {
        match job {
            Job::Backfill => Ok(vec![self.run_locked(Mode::Backfill, None).await?]),
            Job::BackfillUnlessDone => {
                // Checked under the lock: another replica may have finished it while we waited.
                if self.store().backfill_state(self.source()).await?.is_some_and(|s| s.completed) {
                    return Ok(Vec::new());
                }
                Ok(vec![self.run_locked(Mode::Backfill, None).await?])
            }
            Job::Sync { since } => {
                let incremental = self.run_locked(Mode::Incremental, since).await?;
                let enrichment = self.run_locked(Mode::Enrichment, None).await?;
                Ok(vec![incremental, enrichment])
            }
            Job::Reconcile => Ok(vec![self.run_locked(Mode::Reconcile, None).await?]),
        }
    }
}
