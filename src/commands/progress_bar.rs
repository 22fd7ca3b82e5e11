//! How the commands show a window walk's [`Progress`]: a bar on a terminal (windows, sessions, rate, ETA), the
//! sync's default log line per window otherwise (a service's logs, a pipe, CI).

use std::io::IsTerminal as _;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::sync::progress::{self, Progress, ProgressSink};

/// A bar when stderr is a terminal, else log lines.
pub fn for_stderr() -> ProgressSink {
    if !std::io::stderr().is_terminal() {
        return progress::log_lines();
    }
    let bar: Mutex<Option<ProgressBar>> = Mutex::new(None);
    Arc::new(move |event: &Progress| {
        // A panic while the lock is held cannot leave the Option half-written.
        let mut bar = bar.lock().unwrap_or_else(PoisonError::into_inner);
        match *event {
            Progress::Started { windows_total, windows_done } => *bar = Some(start(windows_total, windows_done)),
            Progress::WindowDone { windows_done, sessions_total, .. } => {
                if let Some(bar) = bar.as_ref() {
                    bar.set_position(windows_done as u64);
                    let rate = sessions_total as f64 / bar.elapsed().as_secs_f64().max(0.001);
                    bar.set_message(format!("{sessions_total} sessions, {rate:.0}/s"));
                }
            }
            Progress::Finished => {
                if let Some(bar) = bar.take() {
                    bar.finish();
                }
            }
            Progress::Abandoned => {
                if let Some(bar) = bar.take() {
                    bar.abandon();
                }
            }
        }
    })
}

fn start(total: usize, done: usize) -> ProgressBar {
    let bar = ProgressBar::new(total as u64).with_position(done as u64);
    bar.set_style(
        ProgressStyle::with_template("{spinner} windows {pos}/{len} [{bar:30}] {msg} · {elapsed} elapsed, ETA {eta}")
            .unwrap_or_else(|_| ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.enable_steady_tick(Duration::from_millis(200));
    bar
}
