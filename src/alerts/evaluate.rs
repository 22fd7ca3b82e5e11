//! The alert conditions: for each source, what the warehouse says now, turned into "raise this incident",
//! "resolve that one" or "leave it as it is". The decisions are pure functions of the facts read (tested below);
//! [`evaluate`] reads the facts and applies the decisions, where the table's unique indexes make every raise
//! happen once across replicas.

use std::time::Duration;

use serde_json::json;

use super::payload::Scrubber;
use crate::human;
use crate::store::DriftRow;
use crate::store::Store;
use crate::store::alerts::{FinishedRun, NewAlert};
use crate::store::health::LastSuccess;

/// What one condition of one source calls for.
#[derive(Debug, Clone, PartialEq)]
pub enum Verdict {
    Raise(NewAlert),
    /// The condition has ended: resolve the open incident with this key, if any.
    Resolve(String),
    /// Neither (e.g. some runs failed, but fewer than the threshold): an open incident stays open.
    Keep,
}

/// What one evaluation did.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Evaluation {
    /// Keys of incidents this evaluation opened (one-shot events included).
    pub raised: Vec<String>,
    /// Keys of incidents it resolved.
    pub resolved: Vec<String>,
}

/// What the conditions need besides the warehouse.
#[derive(Debug, Clone)]
pub struct Thresholds {
    pub failing_runs: u32,
    pub max_staleness: Duration,
    /// How long the alerter has been running: a source with no run at all is stale once this passes
    /// `max_staleness`.
    pub running_for: Duration,
}

/// Evaluates every condition of every source of `sources` and applies the verdicts.
pub async fn evaluate(
    store: &Store,
    sources: &[String],
    thresholds: &Thresholds,
    scrubber: &Scrubber,
) -> anyhow::Result<Evaluation> {
    let mut done = Evaluation::default();
    for source in sources {
        let runs = store.finished_runs(source, i64::from(thresholds.failing_runs), false).await?;
        let last = store.last_success(source).await?;
        let first_run_age = store.first_run_age(source).await?;
        let reconcile = store.finished_runs(source, 1, true).await?;
        let verdicts = [
            failing(source, &runs, thresholds.failing_runs),
            stale(source, last.as_ref(), first_run_age, thresholds),
            mass_delete_refused(source, reconcile.first()),
        ];
        for verdict in verdicts {
            apply(store, verdict, scrubber, &mut done).await?;
        }
    }
    // The oldest first, so that alerts are raised (and sent) in the order the drift appeared.
    let mut rows = Vec::new();
    for source in sources {
        rows.extend(store.drift_report(Some(source)).await?);
    }
    rows.sort_by(|a, b| {
        (a.first_seen, &a.source, &a.path, &a.kind, &a.value).cmp(&(
            b.first_seen,
            &b.source,
            &b.path,
            &b.kind,
            &b.value,
        ))
    });
    for row in rows {
        let alert = scrubbed(drift(&row), scrubber);
        if store.raise_alert(&alert, true).await? {
            done.raised.push(alert.key);
        }
    }
    Ok(done)
}

async fn apply(store: &Store, verdict: Verdict, scrubber: &Scrubber, done: &mut Evaluation) -> anyhow::Result<()> {
    match verdict {
        Verdict::Raise(alert) => {
            let alert = scrubbed(alert, scrubber);
            if store.raise_alert(&alert, false).await? {
                tracing::warn!(alert = %alert.key, summary = %alert.summary, "alert raised");
                done.raised.push(alert.key);
            }
        }
        Verdict::Resolve(key) => {
            if store.resolve_alert(&key).await? {
                tracing::info!(alert = %key, "alert resolved");
                done.resolved.push(key);
            }
        }
        Verdict::Keep => {}
    }
    Ok(())
}

/// The alert with every secret scrubbed from what is stored (and later sent).
fn scrubbed(alert: NewAlert, scrubber: &Scrubber) -> NewAlert {
    NewAlert {
        key: scrubber.text(&alert.key),
        summary: scrubber.text(&alert.summary),
        details: scrubber.value(alert.details),
        ..alert
    }
}

/// Error texts in alerts are cut here: the whole text is in `sync_runs.error`.
const ERROR_CHARS: usize = 500;

fn cut(text: &str, chars: usize) -> String {
    if text.chars().count() <= chars {
        return text.to_owned();
    }
    let mut cut: String = text.chars().take(chars).collect();
    cut.push('…');
    cut
}

/// `source_failing/<source>`: the latest `n` finished runs (`runs`, newest first) all failed. Resolved once the
/// latest finished run succeeded.
pub fn failing(source: &str, runs: &[FinishedRun], n: u32) -> Verdict {
    let key = format!("source_failing/{source}");
    let Some(latest) = runs.first() else {
        return Verdict::Keep;
    };
    if latest.status == "succeeded" {
        return Verdict::Resolve(key);
    }
    if runs.len() < n as usize || runs.iter().any(|r| r.status != "failed") {
        return Verdict::Keep;
    }
    let first = runs.last().unwrap_or(latest);
    let error = latest.error.as_deref().map(|e| cut(e, ERROR_CHARS));
    let kind = latest.error_kind.as_deref().unwrap_or("unknown");
    Verdict::Raise(NewAlert {
        key,
        kind: "source_failing",
        source: source.to_owned(),
        summary: format!(
            "the last {n} runs failed ({kind}); latest: {}",
            error.as_deref().map_or("(no error text)".to_owned(), |e| cut(e, 200))
        ),
        details: json!({
            "failed_runs": n,
            "error_kind": latest.error_kind,
            "last_error": error,
            "last_run_id": latest.run_id,
            "last_mode": latest.mode,
            "first_failure_at": first.finished_at,
            "last_failure_at": latest.finished_at,
        }),
    })
}

/// `stale/<source>`: as `/readyz` sees it, the last successful run finished more than `server.max_staleness` ago.
/// A source that never succeeded is stale only once it has had that long to: since its first run started, or
/// (no run at all) since the alerter started. Resolved when fresh.
pub fn stale(source: &str, last: Option<&LastSuccess>, first_run_age: Option<Duration>, t: &Thresholds) -> Verdict {
    let key = format!("stale/{source}");
    let max = t.max_staleness;
    let (summary, details) = match last {
        Some(last) if last.age <= max => return Verdict::Resolve(key),
        Some(last) => (
            format!(
                "last successful sync {} ago (server.max_staleness {})",
                human::duration(last.age),
                human::duration(max)
            ),
            json!({
                "last_success_at": last.finished_at,
                "age_seconds": last.age.as_secs(),
                "max_staleness_seconds": max.as_secs(),
            }),
        ),
        None => {
            let waited = first_run_age.unwrap_or(t.running_for);
            if waited <= max {
                return Verdict::Keep;
            }
            (
                format!(
                    "no successful sync yet, {} after {} (server.max_staleness {})",
                    human::duration(waited),
                    if first_run_age.is_some() { "its first run started" } else { "alerting started" },
                    human::duration(max)
                ),
                json!({
                    "last_success_at": null,
                    "waiting_seconds": waited.as_secs(),
                    "max_staleness_seconds": max.as_secs(),
                }),
            )
        }
    };
    Verdict::Raise(NewAlert { key, kind: "stale", source: source.to_owned(), summary, details })
}

/// `mass_delete_refused/<source>`: the latest finished reconcile failed because the mass-delete guard refused.
/// Resolved by a later reconcile that succeeds; a reconcile failing for another reason changes nothing.
pub fn mass_delete_refused(source: &str, latest_reconcile: Option<&FinishedRun>) -> Verdict {
    let key = format!("mass_delete_refused/{source}");
    match latest_reconcile {
        Some(run) if run.status == "succeeded" => Verdict::Resolve(key),
        Some(run) if run.error_kind.as_deref() == Some("mass_delete_refused") => {
            let error = run.error.as_deref().map(|e| cut(e, ERROR_CHARS));
            Verdict::Raise(NewAlert {
                key,
                kind: "mass_delete_refused",
                source: source.to_owned(),
                summary: format!(
                    "reconcile run {} refused to mark sessions deleted: {}",
                    run.run_id,
                    error.as_deref().map_or("(no error text)".to_owned(), |e| cut(e, 300))
                ),
                details: json!({ "run_id": run.run_id, "error": error, "refused_at": run.finished_at }),
            })
        }
        _ => Verdict::Keep,
    }
}

/// `schema_drift/<source>/<kind>/<path>/<value>`: one event per `schema_drift` row, sent once.
pub fn drift(row: &DriftRow) -> NewAlert {
    let value = if row.value.is_empty() { String::new() } else { format!(" ({})", cut(&row.value, 100)) };
    NewAlert {
        key: format!("schema_drift/{}/{}/{}/{}", row.source, row.kind, row.path, row.value),
        kind: "schema_drift",
        source: row.source.clone(),
        summary: format!(
            "new schema drift: {} at {}{value}, first seen {}, {} item(s) so far",
            row.kind,
            row.path,
            row.first_seen.format("%Y-%m-%d %H:%M:%S UTC"),
            row.times_seen
        ),
        details: json!({
            "path": row.path,
            "drift_kind": row.kind,
            "value": row.value,
            "first_seen": row.first_seen,
            "times_seen": row.times_seen,
            "example_session_id": row.example_session_id,
        }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(id: i64, status: &str, kind: Option<&str>) -> FinishedRun {
        FinishedRun {
            run_id: id,
            mode: "incremental".into(),
            status: status.into(),
            finished_at: chrono::DateTime::from_timestamp(1_800_000_000 + id, 0).unwrap(),
            error: (status == "failed").then(|| format!("run {id} failed")),
            error_kind: kind.map(str::to_owned),
        }
    }

    #[test]
    fn failing_needs_n_failures_in_a_row_and_resolves_on_a_success() {
        let failed = |id| run(id, "failed", Some("api"));
        assert_eq!(failing("a", &[], 3), Verdict::Keep);
        assert_eq!(failing("a", &[failed(2), failed(1)], 3), Verdict::Keep);
        assert_eq!(failing("a", &[failed(3), run(2, "succeeded", None), failed(1)], 3), Verdict::Keep);
        let Verdict::Raise(alert) = failing("a", &[failed(3), failed(2), failed(1)], 3) else {
            panic!("three failures raise");
        };
        assert_eq!(alert.key, "source_failing/a");
        assert_eq!(alert.details["error_kind"], "api");
        assert_eq!(alert.details["last_error"], "run 3 failed");
        assert_eq!(alert.details["first_failure_at"], json!(run(1, "failed", None).finished_at));
        assert!(alert.summary.starts_with("the last 3 runs failed (api); latest: run 3 failed"), "{}", alert.summary);
        assert_eq!(
            failing("a", &[run(4, "succeeded", None), failed(3)], 3),
            Verdict::Resolve("source_failing/a".into())
        );
    }

    #[test]
    fn staleness_follows_readyz_and_gives_a_new_source_time() {
        let t = Thresholds { failing_runs: 3, max_staleness: Duration::from_secs(3600), running_for: Duration::ZERO };
        let success = |age| LastSuccess { finished_at: chrono::Utc::now(), age: Duration::from_secs(age) };
        assert_eq!(stale("a", Some(&success(3600)), None, &t), Verdict::Resolve("stale/a".into()));
        assert!(matches!(stale("a", Some(&success(3601)), None, &t), Verdict::Raise(a) if a.key == "stale/a"));
        // Never succeeded: stale only after max_staleness since its first run, or since alerting started.
        assert_eq!(stale("a", None, Some(Duration::from_secs(60)), &t), Verdict::Keep);
        assert!(matches!(stale("a", None, Some(Duration::from_secs(3700)), &t), Verdict::Raise(_)));
        assert_eq!(stale("a", None, None, &t), Verdict::Keep);
        let later = Thresholds { running_for: Duration::from_secs(3700), ..t };
        assert!(matches!(stale("a", None, None, &later), Verdict::Raise(_)));
    }

    #[test]
    fn a_refused_reconcile_raises_until_a_reconcile_succeeds() {
        let mut refused = run(5, "failed", Some("mass_delete_refused"));
        refused.mode = "reconcile".into();
        assert!(
            matches!(mass_delete_refused("a", Some(&refused)), Verdict::Raise(a) if a.key == "mass_delete_refused/a")
        );
        assert_eq!(mass_delete_refused("a", Some(&run(6, "failed", Some("api")))), Verdict::Keep);
        assert_eq!(
            mass_delete_refused("a", Some(&run(7, "succeeded", None))),
            Verdict::Resolve("mass_delete_refused/a".into())
        );
        assert_eq!(mass_delete_refused("a", None), Verdict::Keep);
    }
}
