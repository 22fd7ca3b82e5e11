//! A throwaway PostgreSQL cluster owned by one test, for faults that must never touch the shared server on
//! 127.0.0.1:5432: a real crash (`pg_ctl stop -m immediate`, so the next start runs crash recovery), a restart,
//! a stop. It lives in a temporary folder of its own (data, Unix socket, server log), listens on a free port of
//! 127.0.0.1, and is stopped and removed on drop, also when the test panics.
//!
//! ```ignore
//! let Some(cluster) = PrivateCluster::start_or_skip().await else { return };
//! let url = cluster.create_database("warehouse").await;
//! // ... start a run against `url` ...
//! cluster.crash().await; // every backend dies, nothing is checkpointed
//! cluster.start_again().await; // crash recovery: WAL replayed, UNLOGGED tables emptied
//! ```
//!
//! Durability: the cluster runs with `fsync=off`. That does not weaken what a crash here proves: an immediate
//! stop kills PostgreSQL's processes, not the machine, so everything PostgreSQL has `write()`n — the WAL of
//! every committed transaction (`synchronous_commit` stays `on`, so a commit returns only after its WAL record
//! is written) — is in the OS page cache and is read back by crash recovery. Only an OS crash or power loss
//! would need the fsyncs. Crash recovery itself runs as usual: WAL is replayed from the last checkpoint, and
//! every UNLOGGED table is reset to empty (its init fork copied over it), whatever `fsync` says.
//!
//! When PostgreSQL's server programs are not installed, [`PrivateCluster::start_or_skip`] says so loudly on
//! stderr and returns `None`; set `DEVIN_ETL_REQUIRE_PRIVATE_CLUSTER=1` (e.g. in CI) to fail instead.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::{Output, Stdio};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU32, Ordering};
use std::time::{Duration, Instant};

use sqlx::Connection as _;

/// How long `initdb` may take.
const INITDB_TIMEOUT: Duration = Duration::from_secs(90);
/// How long a start (including crash recovery) or a stop may take, and how long to wait until the started
/// server accepts connections.
const PG_CTL_TIMEOUT: Duration = Duration::from_secs(60);
/// Name prefix of the temporary folders, used to find those of test processes that died without cleaning up.
const DIR_PREFIX: &str = "devin-etl-private-pg.";

/// PostgreSQL's programs and how to run them.
#[derive(Debug, Clone)]
struct Tools {
    initdb: PathBuf,
    pg_ctl: PathBuf,
    /// PostgreSQL refuses to run as root: as root, run its programs as the `postgres` system user.
    as_postgres: bool,
}

impl Tools {
    fn command(&self, program: &Path) -> tokio::process::Command {
        let mut c = tokio::process::Command::from(self.blocking_command(program));
        c.stdout(Stdio::piped()).stderr(Stdio::piped()).kill_on_drop(true);
        c
    }

    /// For `Drop`, which cannot await (and the base of [`Tools::command`]).
    fn blocking_command(&self, program: &Path) -> std::process::Command {
        let mut c = if self.as_postgres {
            let mut c = std::process::Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            std::process::Command::new(program)
        };
        c.stdin(Stdio::null()).stdout(Stdio::null()).stderr(Stdio::null());
        c
    }
}

/// `initdb` and `pg_ctl` from `DEVIN_ETL_TEST_PG_BIN` (a folder) if set, else from PATH, else from the newest
/// `/usr/lib/postgresql/*/bin` (as `scripts/test` does).
fn find_tools() -> Result<Tools, String> {
    let pinned = std::env::var("DEVIN_ETL_TEST_PG_BIN").ok().filter(|b| !b.is_empty());
    let mut dirs: Vec<PathBuf> = Vec::new();
    if let Some(bin) = &pinned {
        dirs.push(PathBuf::from(bin));
    } else {
        dirs.extend(std::env::var_os("PATH").iter().flat_map(std::env::split_paths));
        if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
            let mut versions: Vec<(u32, PathBuf)> = entries
                .flatten()
                .filter_map(|e| {
                    let version = e.file_name().to_str()?.split('.').next()?.parse().ok()?;
                    Some((version, e.path().join("bin")))
                })
                .collect();
            versions.sort();
            dirs.extend(versions.into_iter().rev().map(|(_, dir)| dir));
        }
    }
    let (initdb, pg_ctl) = dirs
        .iter()
        .find_map(|d| {
            let (initdb, pg_ctl) = (d.join("initdb"), d.join("pg_ctl"));
            (initdb.is_file() && pg_ctl.is_file()).then_some((initdb, pg_ctl))
        })
        .ok_or_else(|| match &pinned {
            Some(bin) => format!("initdb and pg_ctl are not in DEVIN_ETL_TEST_PG_BIN ({bin})"),
            None => "PostgreSQL's server programs initdb and pg_ctl are not installed (not on PATH, not in \
                     /usr/lib/postgresql/*/bin)"
                .to_owned(),
        })?;
    let as_postgres = running_as_root();
    if as_postgres {
        let postgres_user = std::process::Command::new("id").args(["-u", "postgres"]).output();
        if !postgres_user.is_ok_and(|o| o.status.success()) {
            return Err("running as root, and PostgreSQL refuses to run as root, but there is no `postgres` user to \
                        run it as"
                .to_owned());
        }
        let runuser = std::process::Command::new("runuser").arg("--version").output();
        if !runuser.is_ok_and(|o| o.status.success()) {
            return Err("running as root, and PostgreSQL refuses to run as root, but `runuser` is not available to \
                        run it as `postgres`"
                .to_owned());
        }
    }
    Ok(Tools { initdb, pg_ctl, as_postgres })
}

fn running_as_root() -> bool {
    use std::os::unix::fs::MetadataExt as _;
    // /proc/self belongs to the process's effective user.
    match std::fs::metadata("/proc/self") {
        Ok(m) => m.uid() == 0,
        Err(_) => std::process::Command::new("id")
            .arg("-u")
            .output()
            .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0"),
    }
}

fn tools() -> &'static Result<Tools, String> {
    static TOOLS: OnceLock<Result<Tools, String>> = OnceLock::new();
    TOOLS.get_or_init(find_tools)
}

/// Runs `command`, killed after `timeout`.
async fn run(mut command: tokio::process::Command, timeout: Duration) -> Result<Output, String> {
    let described = format!("{:?}", command.as_std());
    let child = command.spawn().map_err(|e| format!("cannot run {described}: {e}"))?;
    match tokio::time::timeout(timeout, child.wait_with_output()).await {
        Ok(Ok(output)) => Ok(output),
        Ok(Err(e)) => Err(format!("{described} failed: {e}")),
        Err(_) => Err(format!("{described} did not finish within {timeout:?} (killed)")),
    }
}

fn describe(output: &Output) -> String {
    format!(
        "{}; stdout: {}; stderr: {}",
        output.status,
        String::from_utf8_lossy(&output.stdout).trim(),
        String::from_utf8_lossy(&output.stderr).trim()
    )
}

/// `name=value` for `-c`, single-quoted for the shell `pg_ctl` passes its `-o` through.
fn setting(name: &str, value: &str) -> String {
    assert!(
        name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '.'),
        "not a PostgreSQL setting name: {name:?}"
    );
    assert!(!value.contains('\''), "setting values must not contain a single quote: {value:?}");
    format!(" -c '{name}={value}'")
}

/// A throwaway cluster: superuser `postgres`, trust authentication, TCP on 127.0.0.1:[`port`](Self::port).
/// Stopped (`-m immediate`) and removed on drop.
#[derive(Debug)]
pub struct PrivateCluster {
    tools: Tools,
    /// Temporary folder: `data/`, the Unix socket and `server.log`.
    dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    port: u16,
    /// Everything after `-p PORT` in `pg_ctl -o`.
    options: String,
}

impl PrivateCluster {
    /// Whether a private cluster can be started here (see [`unavailable_reason`](Self::unavailable_reason)).
    pub fn is_available() -> bool {
        tools().is_ok()
    }

    /// Why no private cluster can be started here, if it cannot.
    pub fn unavailable_reason() -> Option<String> {
        tools().as_ref().err().cloned()
    }

    /// Starts a cluster, or — when PostgreSQL's programs are not installed — prints a loud notice that the
    /// calling test is skipped, and why, and returns `None` (the test must then return at once). With
    /// `DEVIN_ETL_REQUIRE_PRIVATE_CLUSTER=1` it panics instead, so a CI that must run these tests cannot
    /// skip them unnoticed.
    pub async fn start_or_skip() -> Option<PrivateCluster> {
        Self::start_with_or_skip(&[]).await
    }

    /// As [`start_or_skip`](Self::start_or_skip), with extra server settings (see
    /// [`start_with`](Self::start_with)).
    pub async fn start_with_or_skip(settings: &[(&str, &str)]) -> Option<PrivateCluster> {
        let Some(reason) = Self::unavailable_reason() else { return Some(Self::start_with(settings).await) };
        let test = std::thread::current().name().unwrap_or("this test").to_owned();
        if std::env::var("DEVIN_ETL_REQUIRE_PRIVATE_CLUSTER").is_ok_and(|v| !v.is_empty() && v != "0") {
            panic!("{test} needs a private PostgreSQL cluster and DEVIN_ETL_REQUIRE_PRIVATE_CLUSTER is set: {reason}");
        }
        let bar = "!".repeat(100);
        // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n{bar}\n!!! SKIPPED: {test}\n\
             !!! It needs a private, throwaway PostgreSQL cluster (to crash, stop or restart it without touching the\n\
             !!! shared server), and {reason}.\n\
             !!! Install PostgreSQL's server programs (Debian/Ubuntu: `apt-get install postgresql`) to run it.\n\
             !!! Set DEVIN_ETL_REQUIRE_PRIVATE_CLUSTER=1 to make this a failure.\n{bar}\n"
        );
        None
    }

    /// Starts a cluster; panics (naming the reason) when that is impossible. Prefer
    /// [`start_or_skip`](Self::start_or_skip) in tests.
    pub async fn start() -> PrivateCluster {
        Self::start_with(&[]).await
    }

    /// Starts a cluster with extra `-c name=value` server settings (they apply to every later
    /// [`start_again`](Self::start_again) too), e.g. `&[("idle_session_timeout", "1s")]`.
    pub async fn start_with(settings: &[(&str, &str)]) -> PrivateCluster {
        let tools = match tools() {
            Ok(tools) => tools.clone(),
            Err(reason) => panic!("cannot start a private PostgreSQL cluster: {reason}"),
        };
        reap_orphans(&tools).await;

        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let dir = std::env::temp_dir().join(format!(
            "{DIR_PREFIX}{}.{}.{}",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed),
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default().subsec_nanos()
        ));
        std::fs::create_dir(&dir).unwrap_or_else(|e| panic!("cannot create {}: {e}", dir.display()));
        let mut options = format!(" -c listen_addresses=127.0.0.1 -k '{}'", dir.display());
        for (name, value) in [
            // See the module comment: a crash of PostgreSQL (not of the OS) loses nothing committed.
            ("fsync", "off"),
            ("max_connections", "50"),
            ("shared_buffers", "32MB"),
            // Backend pids and databases in the log, for tests that kill backends.
            ("log_line_prefix", "%m [%p] %q%u@%d "),
        ] {
            options.push_str(&setting(name, value));
        }
        for (name, value) in settings {
            options.push_str(&setting(name, value));
        }
        // From here on, Drop cleans up whatever exists.
        let mut cluster =
            PrivateCluster { tools, data: dir.join("data"), log: dir.join("server.log"), dir, port: 0, options };
        if cluster.tools.as_postgres {
            let status = std::process::Command::new("chown")
                .arg("postgres:postgres")
                .arg(&cluster.dir)
                .status()
                .expect("run chown");
            assert!(status.success(), "cannot give {} to the postgres user", cluster.dir.display());
        }

        let mut initdb = cluster.tools.command(&cluster.tools.initdb);
        initdb.args(["-U", "postgres", "--auth=trust", "--encoding=UTF8", "--locale=C", "--no-sync", "-D"]);
        initdb.arg(&cluster.data);
        let output = run(initdb, INITDB_TIMEOUT).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(output.status.success(), "initdb failed: {}", describe(&output));

        // The port was free when picked; if something took it before the server bound it, pick another.
        for attempt in 1..=5 {
            cluster.port = super::free_port();
            let log_before = cluster.server_log().len();
            match cluster.pg_ctl_start().await {
                Ok(()) => break,
                Err(e)
                    if attempt < 5
                        && cluster.server_log().get(log_before..).is_some_and(|l| l.contains("could not bind")) =>
                {
                    let _ = writeln!(std::io::stderr().lock(), "port {} was taken, retrying: {e}", cluster.port);
                }
                Err(e) => panic!("{e}"),
            }
        }
        cluster.wait_until_ready().await;
        cluster
    }

    /// The server's TCP port on 127.0.0.1 (the same across [`crash`](Self::crash) and
    /// [`start_again`](Self::start_again)).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// URL of `database` as the superuser `postgres`.
    pub fn url(&self, database: &str) -> String {
        format!("postgres://postgres@127.0.0.1:{}/{database}", self.port)
    }

    /// URL of the `postgres` database as the superuser.
    pub fn admin_url(&self) -> String {
        self.url("postgres")
    }

    /// Creates database `name` and returns its URL.
    pub async fn create_database(&self, name: &str) -> String {
        assert!(
            !name.is_empty() && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_'),
            "database names here are lower-case identifiers: {name:?}"
        );
        let mut conn = tokio::time::timeout(PG_CTL_TIMEOUT, sqlx::PgConnection::connect(&self.admin_url()))
            .await
            .expect("connecting to the private cluster timed out")
            .expect("connect to the private cluster");
        sqlx::raw_sql(&format!("create database {name}")).execute(&mut conn).await.unwrap();
        conn.close().await.ok();
        self.url(name)
    }

    /// A real crash: `pg_ctl stop -m immediate` — every server process is killed at once, nothing is
    /// checkpointed, open connections break, and the next [`start_again`](Self::start_again) runs crash
    /// recovery. Returns once the server is gone (the port refuses connections).
    pub async fn crash(&self) {
        self.pg_ctl_stop("immediate").await;
    }

    /// A clean shutdown (`pg_ctl stop -m fast`: connections are closed, a checkpoint is written).
    pub async fn stop(&self) {
        self.pg_ctl_stop("fast").await;
    }

    /// Starts the server again, on the same port and with the same settings, and returns once it accepts
    /// connections (after a crash, that is after crash recovery).
    pub async fn start_again(&self) {
        self.pg_ctl_start().await.unwrap_or_else(|e| panic!("{e}"));
        self.wait_until_ready().await;
    }

    /// [`crash`](Self::crash) then [`start_again`](Self::start_again); returns how long the server was away.
    pub async fn crash_and_restart(&self) -> Duration {
        let began = Instant::now();
        self.crash().await;
        self.start_again().await;
        began.elapsed()
    }

    /// Whether the server is running (per `pg_ctl status`).
    pub async fn is_running(&self) -> bool {
        let mut status = self.tools.command(&self.tools.pg_ctl);
        status.arg("-D").arg(&self.data).arg("status");
        run(status, PG_CTL_TIMEOUT).await.is_ok_and(|o| o.status.success())
    }

    /// The server's log so far (for assertions and failure messages).
    pub fn server_log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    async fn pg_ctl_start(&self) -> Result<(), String> {
        let mut start = self.tools.command(&self.tools.pg_ctl);
        start.arg("-D").arg(&self.data).arg("-l").arg(&self.log);
        start.args(["-w", "-t", &PG_CTL_TIMEOUT.as_secs().to_string(), "-o"]);
        start.arg(format!("-p {}{}", self.port, self.options)).arg("start");
        let output = run(start, PG_CTL_TIMEOUT + Duration::from_secs(5)).await?;
        if output.status.success() {
            Ok(())
        } else {
            Err(format!("pg_ctl start failed: {}\nserver log:\n{}", describe(&output), self.server_log()))
        }
    }

    async fn pg_ctl_stop(&self, mode: &str) {
        let mut stop = self.tools.command(&self.tools.pg_ctl);
        stop.arg("-D").arg(&self.data).args(["-m", mode, "-w", "-t", &PG_CTL_TIMEOUT.as_secs().to_string(), "stop"]);
        let output = run(stop, PG_CTL_TIMEOUT + Duration::from_secs(5)).await.unwrap_or_else(|e| panic!("{e}"));
        assert!(
            output.status.success(),
            "pg_ctl stop -m {mode} failed: {}\nserver log:\n{}",
            describe(&output),
            self.server_log()
        );
    }

    /// Waits until a connection over TCP answers `select 1` (bounded).
    async fn wait_until_ready(&self) {
        let deadline = Instant::now() + PG_CTL_TIMEOUT;
        let url = self.admin_url();
        loop {
            let attempt = tokio::time::timeout(Duration::from_secs(5), async {
                let mut conn = sqlx::PgConnection::connect(&url).await?;
                sqlx::query("select 1").execute(&mut conn).await?;
                conn.close().await
            })
            .await;
            match attempt {
                Ok(Ok(())) => return,
                failure => assert!(
                    Instant::now() < deadline,
                    "the private cluster on port {} does not accept connections: {failure:?}\nserver log:\n{}",
                    self.port,
                    self.server_log()
                ),
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

impl Drop for PrivateCluster {
    fn drop(&mut self) {
        stop_and_remove(&self.tools, &self.dir);
    }
}

/// The pid of the postmaster serving `data`, if one runs: the pid in `postmaster.pid`, checked against the
/// process's command line (a stale file's pid may belong to another process by now — never signal that).
fn postmaster_pid(data: &Path) -> Option<u32> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).ok()?;
    let pid: u32 = text.lines().next()?.trim().parse().ok()?;
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).ok()?;
    let data = data.to_str()?;
    String::from_utf8_lossy(&cmdline).split('\0').any(|arg| arg == data).then_some(pid)
}

/// Stops the cluster in `dir` (if running) at once and removes `dir`. Blocking, for `Drop`.
fn stop_and_remove(tools: &Tools, dir: &Path) {
    let data = dir.join("data");
    if postmaster_pid(&data).is_some() {
        let _ = tools
            .blocking_command(&tools.pg_ctl)
            .arg("-D")
            .arg(&data)
            .args(["-m", "immediate", "-w", "-t", "20", "stop"])
            .status();
        // Should pg_ctl have failed, do not leave a postmaster running: kill it (its children follow it).
        if let Some(pid) = postmaster_pid(&data) {
            let _ = std::process::Command::new("kill").args(["-KILL", &pid.to_string()]).status();
        }
    }
    let _ = std::fs::remove_dir_all(dir);
}

/// Stops and removes the clusters of test processes that died without cleaning up (killed, or aborted where
/// no destructor ran). Once per process.
async fn reap_orphans(tools: &Tools) {
    static DONE: AtomicBool = AtomicBool::new(false);
    if DONE.swap(true, Ordering::SeqCst) {
        return;
    }
    let Ok(entries) = std::fs::read_dir(std::env::temp_dir()) else { return };
    let orphans: Vec<PathBuf> = entries
        .flatten()
        .filter_map(|e| {
            let name = e.file_name().into_string().ok()?;
            let pid: u32 = name.strip_prefix(DIR_PREFIX)?.split('.').next()?.parse().ok()?;
            let alive = pid == std::process::id() || Path::new(&format!("/proc/{pid}")).exists();
            (!alive).then(|| e.path())
        })
        .collect();
    if orphans.is_empty() {
        return;
    }
    let tools = tools.clone();
    let _ = tokio::task::spawn_blocking(move || {
        for dir in orphans {
            stop_and_remove(&tools, &dir);
        }
    })
    .await;
}
