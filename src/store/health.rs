//! What `/readyz` asks the warehouse: does it answer, are its migrations the ones this binary embeds, and when
//! did a sync of a source last succeed. Each is one cheap query.

use std::collections::HashMap;
use std::fmt;
use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::{MIGRATOR, Store};

/// How the database's applied migrations compare with the ones embedded in this binary.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationStatus {
    /// Embedded versions the database has not applied.
    pub pending: Vec<i64>,
    /// Versions whose last attempt failed (`success = false`): the schema is half-migrated.
    pub failed: Vec<i64>,
    /// Versions applied from a different file than the embedded one (checksum differs).
    pub changed: Vec<i64>,
    /// Applied versions this binary does not know: a newer release migrated the database. Not an error —
    /// migrations are append-only, so older replicas keep working during a rolling update.
    pub unknown: Vec<i64>,
}

impl MigrationStatus {
    /// Every embedded migration is applied, successfully and unchanged.
    pub fn is_current(&self) -> bool {
        self.pending.is_empty() && self.failed.is_empty() && self.changed.is_empty()
    }
}

impl fmt::Display for MigrationStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut parts = Vec::new();
        for (what, versions) in [("pending", &self.pending), ("failed", &self.failed), ("changed", &self.changed)] {
            if !versions.is_empty() {
                let list: Vec<String> = versions.iter().map(i64::to_string).collect();
                parts.push(format!("{what}: {}", list.join(", ")));
            }
        }
        if parts.is_empty() { f.write_str("current") } else { f.write_str(&parts.join("; ")) }
    }
}

/// The most recent successful run of a source.
#[derive(Debug, Clone, PartialEq)]
pub struct LastSuccess {
    pub finished_at: DateTime<Utc>,
    /// How long ago it finished, by the database's clock (the same clock that wrote `finished_at`).
    pub age: Duration,
}

impl Store {
    /// One round trip to the database.
    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("select 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Compares `_sqlx_migrations` in the configured schema with [`MIGRATOR`].
    pub async fn migration_status(&self) -> anyhow::Result<MigrationStatus> {
        // to_regclass follows search_path (the configured schema) and yields null instead of an error.
        let exists: bool = sqlx::query_scalar("select to_regclass('_sqlx_migrations') is not null")
            .fetch_one(&self.pool)
            .await
            .context("looking for _sqlx_migrations")?;
        let applied: Vec<(i64, bool, Vec<u8>)> = if exists {
            sqlx::query_as("select version, success, checksum from _sqlx_migrations")
                .fetch_all(&self.pool)
                .await
                .context("reading _sqlx_migrations")?
        } else {
            Vec::new()
        };
        Ok(compare(&applied))
    }

    /// The run of `source` that has been `running` the longest: id, mode and age. (A run left `running` by a
    /// dead process counts too, until the next run closes it: either way nothing is syncing.)
    pub async fn oldest_running_run(&self, source: &str) -> anyhow::Result<Option<(i64, String, Duration)>> {
        let row: Option<(i64, String, f64)> = sqlx::query_as(
            "select run_id, mode, extract(epoch from now() - started_at)::float8 from sync_runs
             where source = $1 and status = 'running' order by started_at limit 1",
        )
        .bind(source)
        .fetch_optional(&self.pool)
        .await
        .context("reading running runs from sync_runs")?;
        Ok(row.map(|(id, mode, age)| (id, mode, age_of(age))))
    }

    /// When the last successful run of `source` (any mode) finished, and how long ago.
    pub async fn last_success(&self, source: &str) -> anyhow::Result<Option<LastSuccess>> {
        let row: (Option<DateTime<Utc>>, Option<f64>) = sqlx::query_as(
            "select max(finished_at), extract(epoch from now() - max(finished_at))::float8
             from sync_runs where source = $1 and status = 'succeeded'",
        )
        .bind(source)
        .fetch_one(&self.pool)
        .await
        .context("reading the last successful run from sync_runs")?;
        Ok(match row {
            (Some(finished_at), Some(age)) => Some(LastSuccess { finished_at, age: age_of(age) }),
            _ => None,
        })
    }
}

/// An age in seconds read from the server. One "in the future" can only come from a clock step on the server:
/// call it zero.
fn age_of(secs: f64) -> Duration {
    if secs.is_finite() { Duration::from_secs_f64(secs.max(0.0)) } else { Duration::ZERO }
}

fn compare(applied: &[(i64, bool, Vec<u8>)]) -> MigrationStatus {
    let by_version: HashMap<i64, (bool, &[u8])> =
        applied.iter().map(|(v, ok, sum)| (*v, (*ok, sum.as_slice()))).collect();
    let mut status = MigrationStatus::default();
    let mut embedded = Vec::new();
    for m in MIGRATOR.iter().filter(|m| !m.migration_type.is_down_migration()) {
        embedded.push(m.version);
        match by_version.get(&m.version) {
            None => status.pending.push(m.version),
            Some((false, _)) => status.failed.push(m.version),
            Some((true, sum)) if *sum != m.checksum.as_ref() => status.changed.push(m.version),
            Some(_) => {}
        }
    }
    status.unknown = applied.iter().map(|(v, _, _)| *v).filter(|v| !embedded.contains(v)).collect();
    status.unknown.sort_unstable();
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn embedded() -> Vec<(i64, bool, Vec<u8>)> {
        MIGRATOR.iter().map(|m| (m.version, true, m.checksum.to_vec())).collect()
    }

    #[test]
    fn all_applied_is_current() {
        let status = compare(&embedded());
        assert!(status.is_current(), "{status}");
        assert_eq!(status.to_string(), "current");
    }

    #[test]
    fn missing_failed_changed_and_unknown_are_told_apart() {
        assert!(MIGRATOR.iter().count() >= 2, "the test needs two migrations");
        let mut applied = embedded();
        let first = applied[0].0;
        let last = applied.pop().map(|(v, _, _)| v).unwrap_or_default();
        applied[0].1 = false;
        applied.push((99_991_231_000_000, true, vec![1]));
        let status = compare(&applied);
        assert_eq!(status.pending, vec![last]);
        assert_eq!(status.failed, vec![first]);
        assert_eq!(status.unknown, vec![99_991_231_000_000]);
        assert!(!status.is_current());
        assert_eq!(status.to_string(), format!("pending: {last}; failed: {first}"));

        let mut applied = embedded();
        applied[0].2 = vec![0; 4];
        let status = compare(&applied);
        assert_eq!(status.changed, vec![first]);
        assert!(!status.is_current());
    }

    #[test]
    fn a_newer_release_ahead_of_us_is_still_current() {
        let mut applied = embedded();
        applied.push((99_991_231_000_000, true, vec![1]));
        assert!(compare(&applied).is_current());
    }
}
