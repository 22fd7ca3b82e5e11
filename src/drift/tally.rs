//! Drift found in a source's items, counted in memory until it is written: items are compared on the hot path of
//! every batch, and writing there would make concurrent batch transactions queue on the same `schema_drift`
//! rows. A crash loses at most the counts since the last write; the next sighting records the entry again.

use std::collections::{HashMap, HashSet};
use std::sync::{Mutex, PoisonError};
use std::time::{Duration, Instant};

use super::{Drift, DriftKind};
use crate::telemetry::metric;

/// At most this many distinct values are kept per path and kind; more are counted under [`OTHER`] (a field
/// that turned into free text must not fill the table).
const MAX_VALUES_PER_PATH: usize = 20;
/// The value further distinct values of a crowded path are counted under.
pub const OTHER: &str = "(other)";
/// At most this many distinct entries per source and process (an API that sends a map keyed by ids would make
/// a new "field" per id); beyond, new entries are ignored and said so once.
const MAX_ENTRIES: usize = 1_000;
/// During a long run, counts are written at least this often.
const WRITE_EVERY: Duration = Duration::from_secs(10);

/// Counts of one entry not written yet.
#[derive(Debug, Clone, PartialEq)]
pub struct Pending {
    pub times_seen: i64,
    pub example_session_id: String,
}

#[derive(Debug)]
pub struct DriftTally {
    source: String,
    inner: Mutex<Inner>,
}

#[derive(Debug)]
struct Inner {
    pending: HashMap<Drift, Pending>,
    /// Values seen per (path, kind) by this process, up to the cap.
    values: HashMap<(String, DriftKind), HashSet<String>>,
    entries: usize,
    said_full: bool,
    last_write: Instant,
}

impl DriftTally {
    pub fn new(source: &str) -> DriftTally {
        DriftTally {
            source: source.to_owned(),
            inner: Mutex::new(Inner {
                pending: HashMap::new(),
                values: HashMap::new(),
                entries: 0,
                said_full: false,
                last_write: Instant::now(),
            }),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Counts the drift of one item (as [`inspect`](super::inspect) found it).
    pub fn add(&self, session_id: &str, found: Vec<Drift>) {
        if found.is_empty() {
            return;
        }
        for kind in DriftKind::ALL {
            if found.iter().any(|d| d.kind == kind) {
                metrics::counter!(metric::SCHEMA_DRIFT_ITEMS, "source" => self.source.clone(), "kind" => kind.as_str())
                    .increment(1);
            }
        }
        let mut guard = self.lock();
        let inner = &mut *guard;
        for mut drift in found {
            let values = inner.values.entry((drift.path.clone(), drift.kind)).or_default();
            if !values.contains(&drift.value) {
                if values.len() >= MAX_VALUES_PER_PATH {
                    drift.value = OTHER.to_owned();
                } else if inner.entries < MAX_ENTRIES {
                    values.insert(drift.value.clone());
                    inner.entries += 1;
                } else {
                    if !inner.said_full {
                        inner.said_full = true;
                        tracing::warn!(
                            source = %self.source,
                            "more than {MAX_ENTRIES} distinct schema drift entries: further new ones are not recorded"
                        );
                    }
                    continue;
                }
            }
            inner
                .pending
                .entry(drift)
                .and_modify(|p| p.times_seen += 1)
                .or_insert_with(|| Pending { times_seen: 1, example_session_id: session_id.to_owned() });
        }
    }

    /// Whether counts wait and the last write is older than the write interval.
    pub fn is_due(&self) -> bool {
        let inner = self.lock();
        !inner.pending.is_empty() && inner.last_write.elapsed() >= WRITE_EVERY
    }

    /// The counts to write, sorted (so that concurrent writers lock rows in one order), leaving none.
    pub fn take(&self) -> Vec<(Drift, Pending)> {
        let mut inner = self.lock();
        inner.last_write = Instant::now();
        let mut taken: Vec<(Drift, Pending)> = inner.pending.drain().collect();
        taken.sort_unstable_by(|a, b| a.0.cmp(&b.0));
        taken
    }

    /// Puts back counts whose write failed, to be written with the next ones.
    pub fn restore(&self, entries: Vec<(Drift, Pending)>) {
        let mut inner = self.lock();
        for (drift, pending) in entries {
            inner.pending.entry(drift).and_modify(|p| p.times_seen += pending.times_seen).or_insert(pending);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn drift(path: &str, kind: DriftKind, value: &str) -> Drift {
        Drift { path: path.to_owned(), kind, value: value.to_owned() }
    }

    #[test]
    fn counts_items_keeps_the_first_example_and_takes_everything_once() {
        let tally = DriftTally::new("s");
        tally.add("a", vec![drift("x", DriftKind::UnknownField, "string")]);
        tally.add(
            "b",
            vec![drift("x", DriftKind::UnknownField, "string"), drift("status", DriftKind::UnknownEnumValue, "v")],
        );
        tally.add("c", vec![]);
        let taken = tally.take();
        assert_eq!(
            taken,
            vec![
                (
                    drift("status", DriftKind::UnknownEnumValue, "v"),
                    Pending { times_seen: 1, example_session_id: "b".into() }
                ),
                (
                    drift("x", DriftKind::UnknownField, "string"),
                    Pending { times_seen: 2, example_session_id: "a".into() }
                ),
            ]
        );
        assert!(tally.take().is_empty());
        tally.restore(taken);
        tally.add("d", vec![drift("x", DriftKind::UnknownField, "string")]);
        assert_eq!(tally.take()[1].1, Pending { times_seen: 3, example_session_id: "a".into() });
    }

    #[test]
    fn beyond_twenty_values_of_one_path_the_rest_count_as_other() {
        let tally = DriftTally::new("s");
        for i in 0..25 {
            tally.add(&format!("s{i}"), vec![drift("category", DriftKind::UnknownEnumValue, &format!("v{i}"))]);
        }
        tally.add("again", vec![drift("category", DriftKind::UnknownEnumValue, "v3")]);
        let taken = tally.take();
        assert_eq!(taken.len(), 21);
        let other = taken.iter().find(|(d, _)| d.value == OTHER).unwrap();
        assert_eq!(other.1, Pending { times_seen: 5, example_session_id: "s20".into() });
        assert_eq!(taken.iter().find(|(d, _)| d.value == "v3").unwrap().1.times_seen, 2);
    }
}
