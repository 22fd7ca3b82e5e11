//! Jobs: what one `devin-etl sync` does, and what each tick of `devin-etl run` does — each under the source's lock,
//! taken and released in [`Syncer::run_job`] only.

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

impl Syncer {
    /// Takes the source's lock (failing with [`SourceBusy`](crate::store::SourceBusy) when another process holds
    /// it), runs `job`, releases the lock. Returns the runs it did, in order; none when there was nothing to do.
    pub async fn run_job(&self, job: Job) -> anyhow::Result<Vec<RunOutcome>> {
        self.locked(async |syncer| match job {
            Job::Backfill => Ok(vec![syncer.run_locked(Mode::Backfill, None).await?]),
            Job::BackfillUnlessDone => {
                // Checked under the lock: another replica may have finished it while we waited.
                if syncer.store().backfill_state(syncer.source()).await?.is_some_and(|s| s.completed) {
                    return Ok(Vec::new());
                }
                Ok(vec![syncer.run_locked(Mode::Backfill, None).await?])
            }
            Job::Sync { since } => {
                let incremental = syncer.run_locked(Mode::Incremental, since).await?;
                let enrichment = syncer.run_locked(Mode::Enrichment, None).await?;
                Ok(vec![incremental, enrichment])
            }
            Job::Reconcile => Ok(vec![syncer.run_locked(Mode::Reconcile, None).await?]),
        })
        .await
    }
}
