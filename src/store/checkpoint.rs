//! What commits together with a batch: its [`Checkpoint`]s (progress, applied by `state.rs`), and what the
//! batch wrote ([`WriteStats`], recorded with the run). Shared by the loader and the run bookkeeping, so neither
//! imports the other.

use std::collections::BTreeMap;

use super::enrichment::BackoffPolicy;

/// Progress that commits together with a batch.
#[derive(Debug, Clone, PartialEq)]
pub enum Checkpoint {
    /// The walk is complete: set the source's watermark as `sync::clock` decided.
    Watermark { source: String, update: WatermarkUpdate },
    /// A backfill window is fully loaded.
    WindowDone { source: String, created_after: i64, created_before: i64, sessions: i64 },
    /// A reconcile run saw these sessions.
    Seen { run_id: i64, session_ids: Vec<String> },
    /// An enrichment run re-fetched these backed-off sessions at server time `now`: their backoff moves on.
    EnrichmentFetched { session_ids: Vec<String>, now: i64, policy: BackoffPolicy },
}

/// What a batch wrote.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteStats {
    /// Sessions inserted or changed.
    pub sessions_written: u64,
    /// Rows written per table (`sessions` included).
    pub rows: BTreeMap<&'static str, u64>,
}

impl WriteStats {
    pub fn add(&mut self, other: &WriteStats) {
        self.sessions_written += other.sessions_written;
        for (table, n) in &other.rows {
            *self.rows.entry(table).or_default() += n;
        }
    }

    pub fn total_rows(&self) -> u64 {
        self.rows.values().sum()
    }
}

/// A new watermark and clock state, decided by `sync::clock` (which also says when it may move back).
#[derive(Debug, Clone, PartialEq)]
pub struct WatermarkUpdate {
    pub value: i64,
    /// Database time (Unix seconds) at which the server time behind `value` was observed.
    pub observed_at: f64,
    /// The API clock's offset from the database's (seconds) to keep.
    pub offset: Option<i64>,
    /// A different offset seen by consecutive walks, and how many: `(offset, walks)`.
    pub suspect: Option<(i64, i32)>,
    /// What was wrong with the API's clock, when its time was not taken as is.
    pub anomaly: Option<String>,
}
