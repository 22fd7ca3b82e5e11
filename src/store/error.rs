//! What can go wrong in the warehouse, classified once: the store's error types, the SQLSTATEs it knows, and
//! the retry contract.
//!
//! [`StoreErrorKind::of`] is the one place that looks inside an error chain for `sqlx` errors, SQLSTATEs and
//! the store's own error types; everything else asks it (or [`StoreError::kind`]).
//!
//! # Retry contract
//!
//! A failed transaction rolled back whole, and writing a batch again is idempotent, so:
//!
//! | kind | [`Retry`] | what [`Store::write_batch`](super::Store::write_batch) does |
//! | --- | --- | --- |
//! | [`Conflict`](StoreErrorKind::Conflict) (deadlock, serialization failure) | `Again` | runs the batch again at once |
//! | [`ConnectionLost`](StoreErrorKind::ConnectionLost) (network, terminated backend, server restarting) | `Again` | waits 1 s, 2 s, 4 s ([`StoreErrorKind::retry_wait`]), then runs it again on a fresh connection |
//! | [`UniqueViolation`](StoreErrorKind::UniqueViolation) | `Merge` | runs it once more through the upsert path instead of COPY (a concurrent writer inserted one of its new sessions) |
//! | [`Timeout`](StoreErrorKind::Timeout), [`LockLost`](StoreErrorKind::LockLost), [`SourceBusy`](StoreErrorKind::SourceBusy) | `Later` | returns it: the run stops, and the next run starts over from what was committed |
//! | [`Other`](StoreErrorKind::Other) | `No` | returns it: retrying would repeat it |
//!
//! `Again` is tried at most [`MAX_TRANSACTION_ATTEMPTS`] times in all (the first attempt included); `Merge` once.
//! A caller may retry an operation whose error [`is_retryable`](StoreErrorKind::is_retryable) (as the batch
//! writer does); a `Later` error must end the run — never retried within it: a timed-out server may still be
//! running the statement, and a run that lost its lock may no longer write anything.

use std::time::Duration;

use crate::classified::{Classified, ErrorKind};

/// SQLSTATE codes the store reacts to (PostgreSQL, Appendix A).
pub mod sqlstate {
    /// `unique_violation`
    pub const UNIQUE_VIOLATION: &str = "23505";
    /// `serialization_failure`
    pub const SERIALIZATION_FAILURE: &str = "40001";
    /// `deadlock_detected`
    pub const DEADLOCK_DETECTED: &str = "40P01";
    /// `admin_shutdown`: the server is shutting down, or `pg_terminate_backend` ended the connection.
    pub const ADMIN_SHUTDOWN: &str = "57P01";
    /// `crash_shutdown`: another backend crashed and the server is restarting.
    pub const CRASH_SHUTDOWN: &str = "57P02";
    /// `cannot_connect_now`: the server is starting up or in recovery.
    pub const CANNOT_CONNECT_NOW: &str = "57P03";
    /// Class 08, `connection_exception` and its subclasses.
    pub const CONNECTION_EXCEPTION_CLASS: &str = "08";
    /// `insufficient_privilege`
    pub const INSUFFICIENT_PRIVILEGE: &str = "42501";
}

/// Attempts of one batch transaction, the first included, for errors that [`Retry::Again`].
pub const MAX_TRANSACTION_ATTEMPTS: u32 = 4;

/// What kind of failure a store error is; decides what may be retried (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum StoreErrorKind {
    /// The connection was lost: I/O error, no pooled connection in time, the server terminating connections or
    /// restarting (57P01–57P03), a connection exception (class 08).
    ConnectionLost,
    /// Deadlock (40P01) or serialization failure (40001) with a concurrent transaction.
    Conflict,
    /// A unique constraint was violated (23505).
    UniqueViolation,
    /// PostgreSQL did not answer within a configured bound ([`DatabaseTimeout`]).
    Timeout,
    /// The run lost its source's single-flight lock ([`LostLock`]).
    LockLost,
    /// Another process holds the source's lock ([`SourceBusy`]).
    SourceBusy,
    /// Anything else the warehouse refused (a constraint, a permission, bad data, a protocol error).
    Other,
}

/// What may be done about a failed store operation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Retry {
    /// Run the same transaction again (after [`StoreErrorKind::retry_wait`]).
    Again,
    /// Run it again through the upsert path instead of COPY.
    Merge,
    /// Not within this run: the run stops, the next one starts over from what was committed.
    Later,
    /// Not at all: it would fail the same way.
    No,
}

impl StoreErrorKind {
    /// The kind of `error`: that of the outermost store error, `sqlx` error with a known meaning or store error
    /// type in its chain; [`Other`](StoreErrorKind::Other) when there is none.
    pub fn of(error: &anyhow::Error) -> StoreErrorKind {
        StoreErrorKind::find(error).unwrap_or(StoreErrorKind::Other)
    }

    /// As [`StoreErrorKind::of`], but `None` when nothing in the chain comes from the warehouse at all.
    pub fn find(error: &anyhow::Error) -> Option<StoreErrorKind> {
        let mut from_store = false;
        for cause in error.chain() {
            if let Some(e) = cause.downcast_ref::<StoreError>() {
                return Some(e.kind());
            }
            if cause.is::<LostLock>() {
                return Some(StoreErrorKind::LockLost);
            }
            if cause.is::<SourceBusy>() {
                return Some(StoreErrorKind::SourceBusy);
            }
            if cause.is::<DatabaseTimeout>() {
                return Some(StoreErrorKind::Timeout);
            }
            if let Some(e) = cause.downcast_ref::<sqlx::Error>() {
                match StoreErrorKind::of_sqlx(e) {
                    StoreErrorKind::Other => from_store = true,
                    kind => return Some(kind),
                }
            }
        }
        from_store.then_some(StoreErrorKind::Other)
    }

    /// The kind of one `sqlx` error.
    pub fn of_sqlx(error: &sqlx::Error) -> StoreErrorKind {
        match error {
            sqlx::Error::Io(_) | sqlx::Error::PoolTimedOut => StoreErrorKind::ConnectionLost,
            sqlx::Error::Database(d) => d.code().map_or(StoreErrorKind::Other, |c| StoreErrorKind::of_sqlstate(&c)),
            _ => StoreErrorKind::Other,
        }
    }

    /// The kind of a SQLSTATE code.
    pub fn of_sqlstate(code: &str) -> StoreErrorKind {
        use sqlstate::*;
        match code {
            DEADLOCK_DETECTED | SERIALIZATION_FAILURE => StoreErrorKind::Conflict,
            UNIQUE_VIOLATION => StoreErrorKind::UniqueViolation,
            ADMIN_SHUTDOWN | CRASH_SHUTDOWN | CANNOT_CONNECT_NOW => StoreErrorKind::ConnectionLost,
            c if c.starts_with(CONNECTION_EXCEPTION_CLASS) => StoreErrorKind::ConnectionLost,
            _ => StoreErrorKind::Other,
        }
    }

    /// What may be done about it (see the module documentation).
    pub fn retry(self) -> Retry {
        match self {
            StoreErrorKind::Conflict | StoreErrorKind::ConnectionLost => Retry::Again,
            StoreErrorKind::UniqueViolation => Retry::Merge,
            StoreErrorKind::Timeout | StoreErrorKind::LockLost | StoreErrorKind::SourceBusy => Retry::Later,
            StoreErrorKind::Other => Retry::No,
        }
    }

    /// Whether the failed operation may be tried again within the run.
    pub fn is_retryable(self) -> bool {
        matches!(self.retry(), Retry::Again | Retry::Merge)
    }

    /// How long to wait before attempt `failed_attempt + 1` (attempts count from 1): nothing after a conflict
    /// (the other transaction has ended), `500 ms × 2^failed_attempt` after a lost connection (1 s, 2 s, 4 s: a
    /// restarting server gets time to come back).
    pub fn retry_wait(self, failed_attempt: u32) -> Duration {
        match self {
            StoreErrorKind::ConnectionLost => Duration::from_millis(500u64 << failed_attempt.min(16)),
            _ => Duration::ZERO,
        }
    }

    /// A short name for logs and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StoreErrorKind::ConnectionLost => "connection_lost",
            StoreErrorKind::Conflict => "conflict",
            StoreErrorKind::UniqueViolation => "unique_violation",
            StoreErrorKind::Timeout => "timeout",
            StoreErrorKind::LockLost => "lock_lost",
            StoreErrorKind::SourceBusy => "source_busy",
            StoreErrorKind::Other => "other",
        }
    }
}

/// Whether `error` is a `sqlx` database error with SQLSTATE `code`.
pub fn has_sqlstate(error: &sqlx::Error, code: &str) -> bool {
    error.as_database_error().and_then(|d| d.code()).is_some_and(|c| c == code)
}

/// A failed store operation, classified (see [`Classified`]).
pub type StoreError = Classified<StoreErrorKind>;

impl ErrorKind for StoreErrorKind {
    fn of(error: &anyhow::Error) -> StoreErrorKind {
        StoreErrorKind::of(error)
    }
}

/// PostgreSQL did not answer within the bound that the setting `key` gives.
#[derive(Debug, thiserror::Error)]
#[error(
    "PostgreSQL did not answer {what} within {}s ({key}): the server or the network to it is gone or stuck; the \
     run stops here and the next one starts over from what was committed",
    after.as_secs()
)]
pub struct DatabaseTimeout {
    pub what: String,
    pub after: Duration,
    pub key: &'static str,
}

/// The run lost its source's single-flight lock: another run may own the source now.
#[derive(Debug, thiserror::Error)]
#[error(
    "lost the single-flight lock of source {source_name:?} ({why}); stopped before writing anything more (the next run \
     starts over from the committed state)"
)]
pub struct LostLock {
    pub source_name: String,
    pub why: String,
}

/// Another process holds the source's lock.
#[derive(Debug, thiserror::Error)]
#[error("another devin-etl process is syncing source {0:?} right now; try again when it is done")]
pub struct SourceBusy(pub String);

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use anyhow::Context as _;

    use super::*;

    /// A database error as the driver reports it, with a chosen SQLSTATE.
    #[derive(Debug, thiserror::Error)]
    #[error("server says no ({0})")]
    struct Refused(&'static str);

    impl sqlx::error::DatabaseError for Refused {
        fn message(&self) -> &str {
            "server says no"
        }
        fn code(&self) -> Option<Cow<'_, str>> {
            Some(Cow::Borrowed(self.0))
        }
        fn as_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn as_error_mut(&mut self) -> &mut (dyn std::error::Error + Send + Sync + 'static) {
            self
        }
        fn into_error(self: Box<Self>) -> Box<dyn std::error::Error + Send + Sync + 'static> {
            self
        }
        fn kind(&self) -> sqlx::error::ErrorKind {
            sqlx::error::ErrorKind::Other
        }
    }

    fn database(code: &'static str) -> sqlx::Error {
        sqlx::Error::database(Refused(code))
    }

    #[test]
    fn sqlstates_map_to_kinds() {
        use StoreErrorKind::*;
        for (code, kind) in [
            ("40P01", Conflict),
            ("40001", Conflict),
            ("23505", UniqueViolation),
            ("57P01", ConnectionLost),
            ("57P02", ConnectionLost),
            ("57P03", ConnectionLost),
            ("08000", ConnectionLost),
            ("08006", ConnectionLost),
            ("08P01", ConnectionLost),
            ("23503", Other),
            ("42501", Other),
            ("57014", Other), // statement timeout: the server ended a runaway statement, not the connection
            ("", Other),
        ] {
            assert_eq!(StoreErrorKind::of_sqlstate(code), kind, "{code}");
        }
    }

    #[test]
    fn sqlx_errors_are_classified() {
        let io = sqlx::Error::Io(std::io::Error::new(std::io::ErrorKind::ConnectionReset, "reset"));
        assert_eq!(StoreErrorKind::of_sqlx(&io), StoreErrorKind::ConnectionLost);
        assert_eq!(StoreErrorKind::of_sqlx(&sqlx::Error::PoolTimedOut), StoreErrorKind::ConnectionLost);
        assert_eq!(StoreErrorKind::of_sqlx(&sqlx::Error::RowNotFound), StoreErrorKind::Other);
        assert_eq!(StoreErrorKind::of_sqlx(&sqlx::Error::PoolClosed), StoreErrorKind::Other);
        assert_eq!(StoreErrorKind::of_sqlx(&database("40P01")), StoreErrorKind::Conflict);
        assert_eq!(StoreErrorKind::of_sqlx(&database("57P01")), StoreErrorKind::ConnectionLost);
        assert!(has_sqlstate(&database("23505"), sqlstate::UNIQUE_VIOLATION));
        assert!(!has_sqlstate(&sqlx::Error::PoolTimedOut, sqlstate::UNIQUE_VIOLATION));
    }

    #[test]
    fn chains_are_classified_through_context() {
        let e = anyhow::Error::from(database("40001")).context("commit failed").context("writing a batch");
        assert_eq!(StoreErrorKind::of(&e), StoreErrorKind::Conflict);
        let e = anyhow::Error::from(database("23505")).context("copying sessions");
        assert_eq!(StoreErrorKind::of(&e), StoreErrorKind::UniqueViolation);
        let e = anyhow::Error::from(LostLock { source_name: "s".into(), why: "gone".into() }).context("stopped");
        assert_eq!(StoreErrorKind::of(&e), StoreErrorKind::LockLost);
        let e = anyhow::Error::from(DatabaseTimeout { what: "x".into(), after: Duration::from_secs(1), key: "k" });
        assert_eq!(StoreErrorKind::of(&e), StoreErrorKind::Timeout);
        let e = anyhow::Error::from(SourceBusy("s".into()));
        assert_eq!(StoreErrorKind::of(&e), StoreErrorKind::SourceBusy);
        let e: anyhow::Result<()> = Err(database("42501")).context("inserting");
        assert_eq!(StoreErrorKind::find(&e.unwrap_err()), Some(StoreErrorKind::Other));
        assert_eq!(StoreErrorKind::find(&anyhow::anyhow!("not from the warehouse")), None);
    }

    #[test]
    fn a_store_error_keeps_its_kind_and_its_message_when_wrapped_again() {
        let inner = anyhow::Error::from(LostLock { source_name: "s".into(), why: "gone".into() });
        let text = format!("{inner:#}");
        let error = StoreError::from(inner);
        assert_eq!(error.kind(), StoreErrorKind::LockLost);
        assert_eq!(format!("{error:#}"), text);
        let outer = anyhow::Error::from(error).context("writing page 3");
        assert_eq!(StoreErrorKind::of(&outer), StoreErrorKind::LockLost);
        assert_eq!(format!("{outer:#}"), format!("writing page 3: {text}"));

        let plain = anyhow::Error::from(database("40P01")).context("commit failed").context("writing page 1");
        let error = StoreError::from(anyhow::Error::from(database("40P01")).context("commit failed"));
        let outer = anyhow::Error::from(error).context("writing page 1");
        assert_eq!(format!("{outer:#}"), format!("{plain:#}"));
        assert_eq!(StoreErrorKind::of(&outer), StoreErrorKind::Conflict);
    }

    #[test]
    fn the_retry_contract() {
        use StoreErrorKind::*;
        assert_eq!(Conflict.retry(), Retry::Again);
        assert_eq!(ConnectionLost.retry(), Retry::Again);
        assert_eq!(UniqueViolation.retry(), Retry::Merge);
        for kind in [Timeout, LockLost, SourceBusy] {
            assert_eq!(kind.retry(), Retry::Later, "{kind:?}");
            assert!(!kind.is_retryable());
        }
        assert_eq!(Other.retry(), Retry::No);
        assert_eq!(Conflict.retry_wait(1), Duration::ZERO);
        let waits: Vec<u64> =
            (1..MAX_TRANSACTION_ATTEMPTS).map(|a| ConnectionLost.retry_wait(a).as_millis() as u64).collect();
        assert_eq!(waits, [1000, 2000, 4000]);
    }
}
