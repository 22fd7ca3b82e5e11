//! A private, throwaway PostgreSQL cluster for `demo` on a machine where PostgreSQL is installed but not
//! running. It lives in a data folder of its own and is stopped when the handle is dropped.

use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use anyhow::Context as _;

/// A running throwaway cluster; stopped on drop.
#[derive(Debug)]
pub struct LocalCluster {
    data_dir: PathBuf,
    pg_ctl: PathBuf,
    as_postgres_user: bool,
}

/// Whether something accepts TCP connections at `host:port`.
pub fn server_answers(host: &str, port: u16) -> bool {
    let Ok(addrs) = std::net::ToSocketAddrs::to_socket_addrs(&(host, port)) else { return false };
    addrs.into_iter().any(|a: SocketAddr| TcpStream::connect_timeout(&a, Duration::from_secs(1)).is_ok())
}

/// Finds `initdb` and `pg_ctl` on PATH or in Debian's `/usr/lib/postgresql/*/bin`.
fn find_tools() -> Option<(PathBuf, PathBuf)> {
    let mut dirs: Vec<PathBuf> =
        std::env::var_os("PATH").map(|p| std::env::split_paths(&p).collect()).unwrap_or_default();
    if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
        let mut versions: Vec<PathBuf> = entries.flatten().map(|e| e.path().join("bin")).collect();
        versions.sort();
        dirs.extend(versions.into_iter().rev());
    }
    dirs.iter().find_map(|d| {
        let (initdb, pg_ctl) = (d.join("initdb"), d.join("pg_ctl"));
        (initdb.is_file() && pg_ctl.is_file()).then_some((initdb, pg_ctl))
    })
}

/// PostgreSQL refuses to run as root; as root we run it as the `postgres` system user.
fn running_as_root() -> bool {
    Command::new("id").arg("-u").output().is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

fn command(program: &Path, as_postgres_user: bool) -> Command {
    if as_postgres_user {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

impl LocalCluster {
    /// Initializes (first time) and starts a cluster in `data_dir` listening on 127.0.0.1:`port`, trust auth,
    /// superuser `postgres`.
    pub fn start(data_dir: &Path, port: u16) -> anyhow::Result<LocalCluster> {
        let Some((initdb, pg_ctl)) = find_tools() else {
            anyhow::bail!(
                "no PostgreSQL server answers on 127.0.0.1:{port} and PostgreSQL's programs (initdb, pg_ctl) are not installed.\n\
                 Install PostgreSQL (Debian/Ubuntu: `apt-get install postgresql`; macOS: `brew install postgresql@15`) \
                 or set DATABASE_URL to a server you have."
            );
        };
        let as_postgres_user = running_as_root();
        std::fs::create_dir_all(data_dir).with_context(|| format!("cannot create {}", data_dir.display()))?;
        let data_dir = data_dir.canonicalize()?;
        if as_postgres_user {
            let status = Command::new("chown").args(["-R", "postgres:postgres"]).arg(&data_dir).status()?;
            anyhow::ensure!(status.success(), "cannot give {} to the postgres user", data_dir.display());
        }
        if !data_dir.join("PG_VERSION").exists() {
            let out = command(&initdb, as_postgres_user)
                .args(["-U", "postgres", "--auth=trust", "--encoding=UTF8", "--no-sync", "-D"])
                .arg(&data_dir)
                .output()
                .context("running initdb")?;
            anyhow::ensure!(out.status.success(), "initdb failed: {}", String::from_utf8_lossy(&out.stderr));
        }
        let log = data_dir.join("server.log");
        let options = format!("-p {port} -c listen_addresses=127.0.0.1 -k {} -c fsync=off", data_dir.display());
        let out = command(&pg_ctl, as_postgres_user)
            .arg("-D")
            .arg(&data_dir)
            .args(["-o", &options, "-l"])
            .arg(&log)
            .args(["-w", "-t", "60", "start"])
            .output()
            .context("running pg_ctl start")?;
        anyhow::ensure!(
            out.status.success(),
            "pg_ctl start failed: {}{} (see {})",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            log.display()
        );
        Ok(LocalCluster { data_dir, pg_ctl, as_postgres_user })
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        let _ = command(&self.pg_ctl, self.as_postgres_user)
            .arg("-D")
            .arg(&self.data_dir)
            .args(["-m", "fast", "-w", "stop"])
            .output();
    }
}
