//! Programs some tests need beyond Rust and PostgreSQL (installed by `scripts/install-test-tools`): found on
//! `PATH`, or the test is skipped with a loud notice — unless its `DEVIN_ETL_REQUIRE_…` variable is set (as
//! `.ci/run` sets them), which makes a missing program a failure.

use std::io::Write as _;
use std::path::PathBuf;

/// `program` on `PATH`.
pub fn on_path(program: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join(program)).find(|p| p.is_file())
}

/// `program` on `PATH`; `None` after printing a loud SKIPPED notice naming `test` when it is not installed, or a
/// panic when `require_var` is set (to anything but `0`).
pub fn required(program: &str, require_var: &str, test: &str) -> Option<PathBuf> {
    if let Some(found) = on_path(program) {
        return Some(found);
    }
    if std::env::var(require_var).is_ok_and(|v| !v.is_empty() && v != "0") {
        panic!("{program} is not installed and {require_var} is set: run scripts/install-test-tools");
    }
    let bar = "!".repeat(100);
    // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests.
    let _ = writeln!(
        std::io::stderr().lock(),
        "\n{bar}\n!!! SKIPPED: {program} not installed (run scripts/install-test-tools)\n\
         !!! {test} checked nothing. Set {require_var}=1 to make this a failure.\n{bar}\n"
    );
    None
}

/// Where tests leave files for people to look at (`target/test-artifacts/`), created if needed.
pub fn artifacts_dir() -> PathBuf {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("target/test-artifacts");
    std::fs::create_dir_all(&dir).expect("create target/test-artifacts");
    dir
}
