//! The one harness for running the built `devin-etl` binary: a clean environment, output to a log file or
//! captured, signals, and reading the log while it runs.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::{Duration, Instant};

use super::TestApp;

/// The binary under test.
pub const BIN: &str = env!("CARGO_BIN_EXE_devin-etl");

/// `devin-etl ARGS` with nothing of this process's environment but `PATH`, plus `env`; killed when dropped.
pub fn devin_etl<'a>(args: &[&str], env: impl IntoIterator<Item = (&'a str, String)>) -> tokio::process::Command {
    let mut command = tokio::process::Command::new(BIN);
    command
        .args(args)
        .env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .envs(env)
        .stdin(Stdio::null())
        .kill_on_drop(true);
    command
}

/// Environment for running the `devin-etl` binary against this test's database and simulator.
pub fn child_env(app: &TestApp) -> Vec<(&'static str, String)> {
    vec![
        ("DATABASE_URL", app.db.url.clone()),
        ("DEVIN_API_TOKEN", app.sim.token().to_owned()),
        ("DEVIN_ETL__API__BASE_URL", app.server.base_url()),
        ("DEVIN_ETL__API__PAGE_SIZE", "20".to_owned()),
        ("DEVIN_ETL__SYNC__BACKFILL_CONCURRENCY", "2".to_owned()),
        ("DEVIN_ETL__SYNC__BACKFILL_WINDOW", "90d".to_owned()),
        ("DEVIN_ETL__SYNC__CLOCK_TOLERANCE", "3650d".to_owned()),
        ("DEVIN_ETL__SERVER__LISTEN", "127.0.0.1:0".to_owned()),
        ("DEVIN_ETL__LOG__FORMAT", "json".to_owned()),
        ("RUST_LOG", "info".to_owned()),
    ]
}

/// A log file for a child's stdout and stderr together, removed when dropped.
pub struct ChildLog {
    pub path: PathBuf,
}

impl ChildLog {
    /// A fresh, empty log named after `name` (unique per test: e.g. the test database's name).
    pub fn new(name: &str) -> ChildLog {
        let path = std::env::temp_dir().join(format!("devin-etl-{name}.log"));
        std::fs::write(&path, b"").expect("create the child's log");
        ChildLog { path }
    }

    /// Starts `command` with stdout and stderr appended to this log.
    pub fn spawn(&self, command: &mut tokio::process::Command) -> tokio::process::Child {
        let out = std::fs::OpenOptions::new().append(true).open(&self.path).expect("open the child's log");
        let err = out.try_clone().expect("clone the log's handle");
        command.stdout(Stdio::from(out)).stderr(Stdio::from(err)).spawn().expect("the devin-etl binary starts")
    }

    pub fn text(&self) -> String {
        std::fs::read_to_string(&self.path).unwrap_or_default()
    }

    /// The last 30 lines, for failure messages.
    pub fn tail(&self) -> String {
        let text = self.text();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Polls the log until it contains `text`; returns the log.
    pub async fn wait_for(&self, text: &str, timeout: Duration) -> String {
        let deadline = Instant::now() + timeout;
        loop {
            let content = self.text();
            if content.contains(text) {
                return content;
            }
            assert!(Instant::now() < deadline, "timed out waiting for {text:?} in the log:\n{content}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
}

impl Drop for ChildLog {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.path);
    }
}

/// Sends `signal` (`TERM`, `INT`, `KILL`) to `child`.
pub fn signal(child: &tokio::process::Child, signal: &str) {
    let pid = child.id().expect("the child is still running").to_string();
    let ok = std::process::Command::new("kill").args([&format!("-{signal}"), &pid]).status().expect("run kill");
    assert!(ok.success(), "kill -{signal} {pid}");
}
