//! Single flight across replicas, and the fence that makes it hold when the lock is lost.
//!
//! A run takes a session-level advisory lock per schema and source on a dedicated connection (never a pooled
//! one: it would go back to the pool still holding the lock), then bumps the source's lease generation in
//! `sync_state`. The lock alone is not enough: when its connection dies (restart, failover, idle timeout,
//! `pg_terminate_backend`) PostgreSQL frees it silently and another replica may start. So every transaction of a
//! run begins with [`Fence::check`]: the generation is still ours (read `for share`, so a newcomer's bump waits
//! for our open transaction and no commit of ours can follow it) and our lock connection's backend still holds
//! the lock. A run that fails the check stops before writing anything more.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use sqlx::{Connection, PgConnection, Postgres, Transaction};
use tokio::sync::{Semaphore, oneshot, watch};

use super::Store;
use super::error::LostLock;
use crate::telemetry::metric;

/// How often the lock connection is pinged: keeps proxies and NAT from dropping it as idle, and notices its loss
/// (within this plus [`PING_TIMEOUT`]) even while the run is not writing.
const HEARTBEAT: Duration = Duration::from_secs(5);
/// How long a ping may take before the lock is taken for lost: generous, since an overloaded server (a checkpoint's
/// fsync) can stall a few seconds, and a false alarm fails a run for nothing.
const PING_TIMEOUT: Duration = Duration::from_secs(10);
/// Write transactions of one run that may be in flight at once (far more than a run ever has).
const MAX_WRITERS: u32 = 1 << 16;

/// Held while it lives; released by [`SourceLock::release`], or by PostgreSQL when its connection closes.
pub struct SourceLock {
    fence: Fence,
    stop: Option<oneshot::Sender<()>>,
    keeper: Option<tokio::task::JoinHandle<()>>,
}

/// What a run's transactions check: see the module comment. Cheap to clone.
#[derive(Clone)]
pub struct Fence(Arc<FenceInner>);

struct FenceInner {
    source: String,
    generation: i64,
    lock_pid: i32,
    lock_backend_start: DateTime<Utc>,
    keys: (i32, i32),
    /// Set by the heartbeat when the lock connection fails (and by the release): the check then fails without
    /// asking the server, and the run's database operations in flight stop (see `Store::bounded`).
    lost: watch::Sender<bool>,
    /// One permit per write transaction in flight; releasing the lock waits until they have all ended.
    writers: Arc<Semaphore>,
    operation_timeout: Duration,
    /// Bound of the unlock (a tiny statement): `database.connect_timeout`.
    quick_timeout: Duration,
}

impl std::fmt::Debug for Fence {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Fence")
            .field("source", &self.0.source)
            .field("generation", &self.0.generation)
            .field("lock_pid", &self.0.lock_pid)
            .finish_non_exhaustive()
    }
}

impl std::fmt::Debug for SourceLock {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SourceLock").field("fence", &self.fence).finish_non_exhaustive()
    }
}

/// The lock key: `(hashtext('devin-etl:' || schema), hashtext(source))`, so warehouses in different schemas of
/// one database do not block each other.
const TRY_LOCK: &str = "select pg_try_advisory_lock(k1, k2), k1, k2, pg_backend_pid(),
        (select backend_start from pg_stat_activity where pid = pg_backend_pid())
    from (select hashtext('devin-etl:' || current_schema()) as k1, hashtext($1) as k2) k";

/// The lock connection idles for the whole run: no server-side idle timeout may end it. (Only the settings the
/// server has are set: `idle_session_timeout` is PostgreSQL 14+.)
const NO_IDLE_TIMEOUTS: &str = "select set_config(name, '0', false) from pg_settings
    where name in ('idle_session_timeout', 'idle_in_transaction_session_timeout', 'statement_timeout')";

const BUMP_LEASE: &str = "insert into sync_state (source, lease_generation) values ($1, 1)
    on conflict (source) do update set lease_generation = sync_state.lease_generation + 1
    returning lease_generation";

const CHECK: &str = "select coalesce((select lease_generation from sync_state where source = $1 for share), -1) = $2,
        exists (select 1 from pg_locks l join pg_stat_activity a on a.pid = l.pid
                where l.locktype = 'advisory' and l.granted and l.objsubid = 2 and l.pid = $3
                  and a.backend_start = $4 and l.classid = $5::int4::oid and l.objid = $6::int4::oid
                  and l.database = (select oid from pg_database where datname = current_database()))";

impl Store {
    /// Takes the source's lock if no one holds it; `None` when another process (or replica) does.
    pub async fn try_lock_source(&self, source: &str) -> anyhow::Result<Option<SourceLock>> {
        self.bounded("taking the single-flight lock", self.try_lock_inner(source)).await
    }

    async fn try_lock_inner(&self, source: &str) -> anyhow::Result<Option<SourceLock>> {
        let mut conn = PgConnection::connect_with(&self.connect_options)
            .await
            .context("opening a dedicated connection for the single-flight lock")?;
        super::keepalive::apply(self.port);
        let (acquired, k1, k2, pid, backend_start): (bool, i32, i32, i32, DateTime<Utc>) = sqlx::query_as(TRY_LOCK)
            .bind(source)
            .fetch_one(&mut conn)
            .await
            .context("taking the single-flight advisory lock")?;
        if !acquired {
            conn.close().await.ok();
            return Ok(None);
        }
        sqlx::query(NO_IDLE_TIMEOUTS).execute(&mut conn).await.context("turning idle timeouts off for the lock")?;
        // Waits for the open transaction of a run that lost the lock (it holds the row `for share`): after this,
        // none of its transactions can commit.
        let generation: i64 = sqlx::query_scalar(BUMP_LEASE)
            .bind(source)
            .fetch_one(&mut conn)
            .await
            .context("taking over the source's lease in sync_state")?;
        let fence = Fence(Arc::new(FenceInner {
            source: source.to_owned(),
            generation,
            lock_pid: pid,
            lock_backend_start: backend_start,
            keys: (k1, k2),
            lost: watch::Sender::new(false),
            writers: Arc::new(Semaphore::new(MAX_WRITERS as usize)),
            operation_timeout: self.operation_timeout,
            quick_timeout: self.quick_timeout,
        }));
        let (stop, stopped) = oneshot::channel();
        let keeper = tokio::spawn(keep(conn, fence.clone(), stopped));
        tracing::debug!(source, generation, lock_pid = pid, "took the single-flight lock");
        Ok(Some(SourceLock { fence, stop: Some(stop), keeper: Some(keeper) }))
    }
}

/// Pings the lock connection every [`HEARTBEAT`] until told to stop, then releases the lock. A failed or
/// unanswered ping marks the fence lost.
async fn keep(mut conn: PgConnection, fence: Fence, mut stop: oneshot::Receiver<()>) {
    let inner = &fence.0;
    loop {
        tokio::select! {
            _ = &mut stop => break,
            () = tokio::time::sleep(HEARTBEAT) => {
                let ping = tokio::time::timeout(PING_TIMEOUT, sqlx::query("select 1").execute(&mut conn)).await;
                let problem = match ping {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => format!("its connection failed: {e}"),
                    Err(_) => format!("its connection did not answer a ping within {}s", PING_TIMEOUT.as_secs()),
                };
                inner.lost.send_replace(true);
                tracing::error!(source = inner.source, "lost the single-flight lock: {problem}");
                metrics::counter!(metric::LOCK_LOST, "source" => inner.source.clone()).increment(1);
                return; // dropping the connection frees the lock on the server, if it is still there
            }
        }
    }
    let unlock = sqlx::query("select pg_advisory_unlock($1, $2)").bind(inner.keys.0).bind(inner.keys.1);
    match tokio::time::timeout(inner.quick_timeout, unlock.execute(&mut conn)).await {
        Ok(Ok(_)) => {
            let _ = tokio::time::timeout(inner.quick_timeout, conn.close()).await;
        }
        Ok(Err(e)) => tracing::warn!(error = %e, "releasing the advisory lock failed; closing its connection frees it"),
        Err(_) => tracing::warn!("releasing the advisory lock timed out; closing its connection frees it"),
    }
}

impl SourceLock {
    /// The fence that this lock's run checks in every transaction.
    pub fn fence(&self) -> &Fence {
        &self.fence
    }

    /// Waits (bounded) for the run's write transactions still in flight — a window's write task can outlive
    /// an aborted walk — then releases the lock and closes its connection.
    pub async fn release(mut self) {
        let inner = &self.fence.0;
        if tokio::time::timeout(inner.operation_timeout, inner.writers.acquire_many(MAX_WRITERS)).await.is_err() {
            tracing::warn!(
                "write transactions of the run are still in flight; releasing the lock anyway (they fail their fence check)"
            );
        }
        // Nothing of this run may commit from now on, even a write task that has not started yet.
        inner.lost.send_replace(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(keeper) = self.keeper.take() {
            let _ = keeper.await;
        }
    }
}

impl Drop for SourceLock {
    fn drop(&mut self) {
        // Dropped without `release` (a panic, a cancelled task): stop the keeper, which drops the connection and
        // so frees the lock.
        self.fence.0.lost.send_replace(true);
        if let Some(keeper) = self.keeper.take() {
            keeper.abort();
        }
    }
}

/// Held by a write transaction while it is in flight.
pub struct WriterPermit(#[allow(dead_code)] tokio::sync::OwnedSemaphorePermit);

impl Fence {
    /// Registers a write transaction in flight, so the lock is not released under it.
    pub fn writer(&self) -> Option<WriterPermit> {
        self.0.writers.clone().try_acquire_owned().ok().map(WriterPermit)
    }

    /// Resolves once the lock is known to be lost (or released), with the error to report.
    pub async fn lost_signal(&self) -> anyhow::Error {
        let mut lost = self.0.lost.subscribe();
        let _ = lost.wait_for(|lost| *lost).await;
        self.lost("its connection failed or stopped answering")
    }

    fn lost(&self, why: impl Into<String>) -> anyhow::Error {
        LostLock { source_name: self.0.source.clone(), why: why.into() }.into()
    }

    /// Proves, inside `tx`, that the run still owns its source; must be the transaction's first statement.
    pub async fn check(&self, tx: &mut Transaction<'_, Postgres>) -> anyhow::Result<()> {
        let inner = &self.0;
        if *inner.lost.borrow() {
            return Err(self.lost("its connection was lost or the lock was released"));
        }
        let (lease_ours, lock_held): (bool, bool) = sqlx::query_as(CHECK)
            .bind(&inner.source)
            .bind(inner.generation)
            .bind(inner.lock_pid)
            .bind(inner.lock_backend_start)
            .bind(inner.keys.0)
            .bind(inner.keys.1)
            .fetch_one(&mut **tx)
            .await
            .context("checking that the run still owns its source (fence)")?;
        if !lease_ours {
            return Err(self.lost("another run has taken over the source since"));
        }
        if !lock_held {
            return Err(self.lost("the backend that held it is gone"));
        }
        Ok(())
    }
}
