//! Progress of the window walks (backfill, reconcile) as events: the sync reports them, and whoever runs it decides
//! how to show them — the commands draw a bar on a terminal (`commands/progress_bar.rs`); the default is a log line
//! per window.

use std::sync::Arc;

/// One step of a window walk.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Progress {
    /// The walk is planned: `windows_total` windows, of which `windows_done` were loaded by an earlier run.
    Started { windows_total: usize, windows_done: usize },
    /// A window is done.
    WindowDone {
        created_after: Option<i64>,
        created_before: Option<i64>,
        /// Sessions read in this window.
        sessions: u64,
        /// Sessions read by this walk so far.
        sessions_total: u64,
        windows_done: usize,
        windows_total: usize,
    },
    /// Every window is done.
    Finished,
    /// The walk stopped early: an error, or shutdown.
    Abandoned,
}

/// Where progress goes. Called from the walk's task between windows: it must be quick.
pub type ProgressSink = Arc<dyn Fn(&Progress) + Send + Sync>;

/// The default sink: one log line per window done.
pub fn log_lines() -> ProgressSink {
    Arc::new(|progress: &Progress| {
        if let Progress::WindowDone {
            created_after,
            created_before,
            sessions,
            sessions_total,
            windows_done,
            windows_total,
        } = progress
        {
            tracing::info!(
                window_created_after = created_after,
                window_created_before = created_before,
                sessions,
                sessions_total,
                windows_done,
                windows_total,
                "window done ({windows_done}/{windows_total}, {sessions_total} sessions so far)"
            );
        }
    })
}
