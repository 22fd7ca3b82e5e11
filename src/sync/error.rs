//! Why a run failed, classified once at the run boundary.
//!
//! Errors travel through a run as `anyhow::Error` chains with context. [`RunErrorKind::of`] is the one place
//! that reads such a chain to tell why the run ended — shutdown, a lost lock, a busy source, the API, the
//! warehouse (itself classified by [`StoreErrorKind`]), an invalid item — and from that how the run is recorded
//! ([`RunErrorKind::run_status`]) and counted. `Syncer::run_once`/`sync` keep returning `anyhow::Error`, for
//! `?` and `{error:#}`; a failed run's error carries its [`RunError`], so callers ask `RunErrorKind::of(&error)`
//! and get the classification the run recorded.

use crate::api::ApiError;
use crate::classified::{Classified, ErrorKind};
use crate::store::{MassDeleteRefused, RunStatus, StoreErrorKind};

use super::normalize::InvalidItem;

/// The run stopped early because shutdown was requested; everything committed so far stays.
#[derive(Debug, thiserror::Error)]
#[error("stopped by shutdown before the walk was complete (the watermark stays; the next run continues)")]
pub struct Interrupted;

/// Why a run ended with an error.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RunErrorKind {
    /// Shutdown was requested ([`Interrupted`]): the run is recorded as aborted.
    Interrupted,
    /// The run lost its source's single-flight lock (fenced): nothing more of it was written.
    LockLost,
    /// Another process holds the source's lock; no run was started.
    SourceBusy,
    /// The API failed (after its own retries) or refused the request.
    Api,
    /// The warehouse failed; the store's own classification (never `LockLost` or `SourceBusy`, which are
    /// the run's kinds above).
    Store(StoreErrorKind),
    /// The API sent an item that breaks the spec.
    InvalidItem,
    /// The reconcile's mass-delete guard refused to mark sessions deleted ([`MassDeleteRefused`]).
    MassDeleteRefused,
    /// Anything else (a bug, a task that panicked, a walk that ended early).
    Other,
}

impl RunErrorKind {
    /// Why `error` ended a run: the classification recorded in its [`RunError`] when it has one, else that of
    /// the error types in its chain (shutdown and lock loss first).
    pub fn of(error: &anyhow::Error) -> RunErrorKind {
        if let Some(kind) = RunError::attached(error) {
            return kind;
        }
        if error.chain().any(|cause| cause.is::<Interrupted>()) {
            return RunErrorKind::Interrupted;
        }
        let store = StoreErrorKind::find(error);
        match store {
            Some(StoreErrorKind::LockLost) => return RunErrorKind::LockLost,
            Some(StoreErrorKind::SourceBusy) => return RunErrorKind::SourceBusy,
            _ => {}
        }
        if error.chain().any(|cause| cause.is::<MassDeleteRefused>()) {
            return RunErrorKind::MassDeleteRefused;
        }
        if InvalidItem::in_chain(error).is_some() {
            return RunErrorKind::InvalidItem;
        }
        if ApiError::in_chain(error).is_some() {
            return RunErrorKind::Api;
        }
        store.map_or(RunErrorKind::Other, RunErrorKind::Store)
    }

    /// The stable name of the kind, written to `sync_runs.error_kind` (alerts and dashboards branch on it).
    pub fn as_str(self) -> &'static str {
        match self {
            RunErrorKind::Interrupted => "interrupted",
            RunErrorKind::LockLost => "lock_lost",
            RunErrorKind::SourceBusy => "source_busy",
            RunErrorKind::Api => "api",
            RunErrorKind::Store(_) => "store",
            RunErrorKind::InvalidItem => "invalid_item",
            RunErrorKind::MassDeleteRefused => "mass_delete_refused",
            RunErrorKind::Other => "other",
        }
    }

    /// How a run that ended so is recorded: aborted when shutdown stopped it, failed otherwise.
    pub fn run_status(self) -> RunStatus {
        match self {
            RunErrorKind::Interrupted => RunStatus::Aborted,
            _ => RunStatus::Failed,
        }
    }

    /// The `status` label of `devin_etl_runs_total` and of the error's context ("aborted" or "failed").
    pub fn status_label(self) -> &'static str {
        match self.run_status() {
            RunStatus::Aborted => "aborted",
            _ => "failed",
        }
    }

    /// Whether the run was stopped by its fence (counted in `devin_etl_runs_fenced_total`).
    pub fn is_fenced(self) -> bool {
        self == RunErrorKind::LockLost
    }
}

/// A run's error with its classification (see [`Classified`]).
pub type RunError = Classified<RunErrorKind>;

impl ErrorKind for RunErrorKind {
    fn of(error: &anyhow::Error) -> RunErrorKind {
        RunErrorKind::of(error)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::store::{DatabaseTimeout, LostLock, SourceBusy, StoreError};

    fn lost() -> anyhow::Error {
        LostLock { source_name: "s".into(), why: "gone".into() }.into()
    }

    #[test]
    fn chains_are_classified() {
        let of = |e: anyhow::Error| RunErrorKind::of(&e);
        assert_eq!(
            of(anyhow::Error::from(Interrupted).context("window created_after=None")),
            RunErrorKind::Interrupted
        );
        assert_eq!(of(lost().context("stopped writing a batch").context("writing page 3")), RunErrorKind::LockLost);
        // Wrapped by the batch writer: its kind is kept even though the lock error is then its chain's head.
        let written = anyhow::Error::from(StoreError::from(lost())).context("writing page 3");
        assert_eq!(of(written), RunErrorKind::LockLost);
        assert_eq!(of(SourceBusy("s".into()).into()), RunErrorKind::SourceBusy);
        let timeout =
            DatabaseTimeout { what: "x".into(), after: Duration::from_secs(1), key: "database.operation_timeout" };
        assert_eq!(of(anyhow::Error::from(timeout).context("writing")), RunErrorKind::Store(StoreErrorKind::Timeout));
        let io = sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert_eq!(of(anyhow::Error::from(io).context("x")), RunErrorKind::Store(StoreErrorKind::ConnectionLost));
        let invalid = InvalidItem { request: "/x".into(), index: 0, session_id: None, problem: "bad".into() };
        assert_eq!(of(anyhow::Error::from(invalid).context("incremental walk")), RunErrorKind::InvalidItem);
        let api = ApiError::Status { request: "/x".into(), status: 401, body: String::new(), retry_after: None };
        assert_eq!(of(anyhow::Error::from(api).context("asking the API for its clock")), RunErrorKind::Api);
        assert_eq!(of(anyhow::anyhow!("a window task failed")), RunErrorKind::Other);
        let refused = MassDeleteRefused { missing: 40, live: 60, max_percent: 50.0 };
        let refused = anyhow::Error::from(refused).context("marking sessions deleted");
        assert_eq!(of(refused), RunErrorKind::MassDeleteRefused);
        assert_eq!(RunErrorKind::MassDeleteRefused.as_str(), "mass_delete_refused");
    }

    #[test]
    fn a_run_error_keeps_its_kind_and_its_text() {
        let inner = anyhow::Error::from(Interrupted).context("incremental walk");
        let text = format!("incremental run 7 aborted: {inner:#}");
        let error =
            anyhow::Error::from(RunError::new(RunErrorKind::Interrupted, inner)).context("incremental run 7 aborted");
        assert_eq!(format!("{error:#}"), text);
        assert_eq!(RunErrorKind::of(&error), RunErrorKind::Interrupted);
        // Or with the run's context inside.
        let error = anyhow::Error::from(RunError::from(lost().context("incremental run 8 failed")));
        assert_eq!(RunErrorKind::of(&error), RunErrorKind::LockLost);
        assert!(format!("{error:#}").starts_with("incremental run 8 failed: lost the single-flight lock"), "{error:#}");
    }

    #[test]
    fn status_and_fencing() {
        assert_eq!(RunErrorKind::Interrupted.run_status(), RunStatus::Aborted);
        assert_eq!(RunErrorKind::Interrupted.status_label(), "aborted");
        for kind in [
            RunErrorKind::LockLost,
            RunErrorKind::Api,
            RunErrorKind::Store(StoreErrorKind::Timeout),
            RunErrorKind::Other,
        ] {
            assert_eq!(kind.run_status(), RunStatus::Failed, "{kind:?}");
            assert_eq!(kind.status_label(), "failed");
        }
        assert!(RunErrorKind::LockLost.is_fenced());
        assert!(!RunErrorKind::Interrupted.is_fenced());
    }
}
