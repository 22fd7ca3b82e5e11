//! The `alerts` table (one row per incident) and what the alert conditions read from `sync_runs` (drift rows come
//! from `Store::drift_report`). Raising is an insert that does nothing when the incident is already open (the partial unique
//! indexes), so replicas evaluating at once raise it once; delivery claims one row at a time with a lease.

use std::time::Duration;

use anyhow::Context as _;
use chrono::{DateTime, Utc};
use serde_json::Value;

use super::Store;

/// An incident to raise (when not already open).
#[derive(Debug, Clone, PartialEq)]
pub struct NewAlert {
    pub key: String,
    pub kind: &'static str,
    pub source: String,
    pub summary: String,
    pub details: Value,
}

/// A row of `alerts` as delivery and `status` need it.
#[derive(Debug, Clone, serde::Serialize, sqlx::FromRow)]
pub struct AlertRow {
    pub alert_id: i64,
    pub alert_key: String,
    pub kind: String,
    pub source: Option<String>,
    pub one_shot: bool,
    pub summary: String,
    pub details: Value,
    pub opened_at: DateTime<Utc>,
    pub resolved_at: Option<DateTime<Utc>>,
    pub fired_sent_at: Option<DateTime<Utc>>,
    pub resolved_sent_at: Option<DateTime<Utc>>,
    pub attempts: i32,
    pub last_error: Option<String>,
}

/// A finished run, as the alert conditions read it.
#[derive(Debug, Clone, PartialEq, sqlx::FromRow)]
pub struct FinishedRun {
    pub run_id: i64,
    pub mode: String,
    /// `succeeded` or `failed` (aborted runs are not read).
    pub status: String,
    pub finished_at: DateTime<Utc>,
    pub error: Option<String>,
    pub error_kind: Option<String>,
}

/// Rows still to be delivered: firing not yet accepted, or resolved (not one-shot) not yet accepted.
const PENDING: &str =
    "(fired_sent_at is null or (resolved_at is not null and resolved_sent_at is null and not one_shot))";

const ALERT_COLUMNS: &str = "alert_id, alert_key, kind, source, one_shot, summary, details, opened_at, resolved_at, \
                             fired_sent_at, resolved_sent_at, attempts, last_error";

impl Store {
    /// The latest `limit` finished runs of `source` (succeeded or failed; aborted and running ones are skipped),
    /// newest first; only reconcile runs with `reconcile_only`.
    pub async fn finished_runs(
        &self,
        source: &str,
        limit: i64,
        reconcile_only: bool,
    ) -> anyhow::Result<Vec<FinishedRun>> {
        sqlx::query_as(
            "select run_id, mode, status, finished_at, error, error_kind from sync_runs
             where source = $1 and status in ('succeeded', 'failed') and finished_at is not null
               and (not $3 or mode = 'reconcile')
             order by run_id desc limit $2",
        )
        .bind(source)
        .bind(limit)
        .bind(reconcile_only)
        .fetch_all(&self.pool)
        .await
        .context("reading the latest finished runs from sync_runs")
    }

    /// How long ago (database clock) the first run of `source` started, if it ever ran.
    pub async fn first_run_age(&self, source: &str) -> anyhow::Result<Option<Duration>> {
        let age: Option<f64> = sqlx::query_scalar(
            "select extract(epoch from now() - min(started_at))::float8 from sync_runs where source = $1",
        )
        .bind(source)
        .fetch_one(&self.pool)
        .await
        .context("reading the first run of the source from sync_runs")?;
        Ok(age.map(|secs| Duration::from_secs_f64(secs.max(0.0))))
    }

    /// Raises `alert` unless the same key is open already (for a `one_shot` event — sent once, never resolved —
    /// unless it was ever raised); true when this call raised it. The partial unique indexes make the check and the
    /// insert one atomic step across replicas.
    pub async fn raise_alert(&self, alert: &NewAlert, one_shot: bool) -> anyhow::Result<bool> {
        let sql = if one_shot {
            "insert into alerts (alert_key, kind, source, summary, details, one_shot, resolved_at)
             values ($1, $2, $3, $4, $5, true, now())
             on conflict (alert_key) where one_shot do nothing"
        } else {
            "insert into alerts (alert_key, kind, source, summary, details) values ($1, $2, $3, $4, $5)
             on conflict (alert_key) where resolved_at is null and not one_shot do nothing"
        };
        let inserted = sqlx::query(sql)
            .bind(&alert.key)
            .bind(alert.kind)
            .bind(&alert.source)
            .bind(&alert.summary)
            .bind(&alert.details)
            .execute(&self.pool)
            .await
            .with_context(|| format!("raising the alert {} in the table alerts", alert.key))?;
        Ok(inserted.rows_affected() == 1)
    }

    /// Ends the open incident with `key`, if there is one; true when this call ended it. Its delivery schedule is
    /// left alone: a lease held by a replica sending its firing notification stays in force.
    pub async fn resolve_alert(&self, key: &str) -> anyhow::Result<bool> {
        let updated = sqlx::query(
            "update alerts set resolved_at = now() where alert_key = $1 and resolved_at is null and not one_shot",
        )
        .bind(key)
        .execute(&self.pool)
        .await
        .with_context(|| format!("resolving the alert {key} in the table alerts"))?;
        Ok(updated.rows_affected() == 1)
    }

    /// Claims the next alert due for delivery, if any: its next attempt is pushed `lease` ahead (so no other
    /// replica takes it meanwhile) and its attempts counted. Committed at once: the sending holds no transaction.
    pub async fn claim_alert(&self, lease: Duration) -> anyhow::Result<Option<AlertRow>> {
        let sql = format!(
            "update alerts set next_attempt_at = now() + make_interval(secs => $1), attempts = attempts + 1
             where alert_id = (
                 select alert_id from alerts where {PENDING} and next_attempt_at <= now()
                 order by next_attempt_at, alert_id limit 1 for update skip locked)
             returning {ALERT_COLUMNS}"
        );
        sqlx::query_as(&sql)
            .bind(lease.as_secs_f64())
            .fetch_optional(&self.pool)
            .await
            .context("claiming an alert to deliver in the table alerts")
    }

    /// Records that the receiver accepted the firing (`resolved` false) or resolved notification of `alert_id`;
    /// a resolved notification still to send is due at once.
    pub async fn alert_sent(&self, alert_id: i64, resolved: bool) -> anyhow::Result<()> {
        let column = if resolved { "resolved_sent_at" } else { "fired_sent_at" };
        sqlx::query(&format!(
            "update alerts set {column} = coalesce({column}, now()), last_error = null, next_attempt_at = now()
             where alert_id = $1"
        ))
        .bind(alert_id)
        .execute(&self.pool)
        .await
        .context("recording a delivered alert in the table alerts")?;
        Ok(())
    }

    /// Records a failed delivery of `alert_id`: why, and when to try again.
    pub async fn alert_failed(&self, alert_id: i64, error: &str, retry_in: Duration) -> anyhow::Result<()> {
        sqlx::query(
            "update alerts set last_error = $2, next_attempt_at = now() + make_interval(secs => $3)
             where alert_id = $1",
        )
        .bind(alert_id)
        .bind(error)
        .bind(retry_in.as_secs_f64())
        .execute(&self.pool)
        .await
        .context("recording a failed alert delivery in the table alerts")?;
        Ok(())
    }

    /// The alerts of `source` that are open (not one-shot) or not yet delivered, oldest first, for `status`.
    pub async fn open_or_pending_alerts(&self, source: &str) -> anyhow::Result<Vec<AlertRow>> {
        sqlx::query_as(&format!(
            "select {ALERT_COLUMNS} from alerts
             where source = $1 and ((resolved_at is null and not one_shot) or {PENDING})
             order by opened_at, alert_id"
        ))
        .bind(source)
        .fetch_all(&self.pool)
        .await
        .context("reading open and undelivered alerts")
    }
}
