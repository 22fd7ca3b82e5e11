//! `schema_drift`: counts written per source; the first sighting of each entry is reported back.

use anyhow::Context as _;
use chrono::{DateTime, Utc};

use super::Store;
use crate::drift::{Drift, Pending};

/// One row of `schema_drift`.
#[derive(Debug, Clone, PartialEq, serde::Serialize, sqlx::FromRow)]
pub struct DriftRow {
    pub source: String,
    pub path: String,
    pub kind: String,
    pub value: String,
    pub first_seen: DateTime<Utc>,
    pub last_seen: DateTime<Utc>,
    pub times_seen: i64,
    pub example_session_id: Option<String>,
}

impl Store {
    /// Adds `entries`' counts to `source`'s rows of `schema_drift` (one statement, rows locked in the entries'
    /// order); returns the entries that had no row yet. Not fenced: drift is a fact about the API, whoever saw it.
    pub async fn record_drift(&self, source: &str, entries: &[(Drift, Pending)]) -> anyhow::Result<Vec<Drift>> {
        let (mut paths, mut kinds, mut values, mut times, mut examples) =
            (Vec::new(), Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for (drift, pending) in entries {
            paths.push(drift.path.as_str());
            kinds.push(drift.kind.as_str());
            values.push(drift.value.as_str());
            times.push(pending.times_seen);
            examples.push(pending.example_session_id.as_str());
        }
        let inserted: Vec<(String, String, String)> = self
            .bounded(
                "recording schema drift",
                sqlx::query_as(
                    "insert into schema_drift as d (source, path, kind, value, times_seen, example_session_id)
                     select $1, t.path, t.kind, t.value, t.times, t.example
                     from unnest($2::text[], $3::text[], $4::text[], $5::int8[], $6::text[])
                         with ordinality as t(path, kind, value, times, example, position)
                     order by t.position
                     on conflict (source, path, kind, value) do update
                         set last_seen = now(), times_seen = d.times_seen + excluded.times_seen
                     returning d.path, d.kind, d.value, (d.xmax = 0) as inserted",
                )
                .bind(source)
                .bind(&paths)
                .bind(&kinds)
                .bind(&values)
                .bind(&times)
                .bind(&examples)
                .fetch_all(self.pool()),
            )
            .await
            .map(|rows: Vec<(String, String, String, bool)>| {
                rows.into_iter().filter(|r| r.3).map(|(p, k, v, _)| (p, k, v)).collect()
            })?;
        Ok(entries
            .iter()
            .map(|(drift, _)| drift)
            .filter(|d| inserted.iter().any(|(p, k, v)| *p == d.path && k == d.kind.as_str() && *v == d.value))
            .cloned()
            .collect())
    }

    /// Every drift entry (of one source, when given), the most recently first seen first.
    pub async fn drift_report(&self, source: Option<&str>) -> anyhow::Result<Vec<DriftRow>> {
        sqlx::query_as(
            "select source, path, kind, value, first_seen, last_seen, times_seen, example_session_id
             from schema_drift where $1::text is null or source = $1
             order by first_seen desc, source, path, kind, value",
        )
        .bind(source)
        .fetch_all(self.pool())
        .await
        .context("reading schema_drift")
    }
}
