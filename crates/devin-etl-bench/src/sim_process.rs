//! The simulator in a child process (this program re-run with `--serve-simulator`), so its CPU and memory are not
//! counted as ours.

use std::process::Stdio;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use tokio::io::AsyncBufReadExt as _;

/// The simulator in a child process; killed when dropped (an error or Ctrl-C on the way included).
pub(crate) struct SimProcess {
    pub(crate) child: tokio::process::Child,
    pub(crate) pid: Option<u32>,
    pub(crate) base_url: String,
    pub(crate) http: reqwest::Client,
}

impl SimProcess {
    pub(crate) async fn spawn(sessions: usize, timeout: Duration) -> anyhow::Result<SimProcess> {
        let exe = std::env::current_exe().context("cannot find our own executable to start the simulator")?;
        let mut child = tokio::process::Command::new(exe)
            .args(["--serve-simulator", "--sessions", &sessions.to_string()])
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .context("cannot start the simulator process")?;
        let pid = child.id();
        let stdout = child.stdout.take().context("the simulator's stdout is not piped")?;
        let mut lines = tokio::io::BufReader::new(stdout).lines();
        // The child prints "simulator serving N sessions at http://127.0.0.1:PORT (token …)" once it listens.
        let base_url = tokio::time::timeout(timeout, async {
            while let Some(line) = lines.next_line().await? {
                if line.contains("simulator serving")
                    && let Some(at) = line.find("http://")
                {
                    let url: String = line[at..].chars().take_while(|c| !c.is_whitespace()).collect();
                    return anyhow::Ok(Some(url));
                }
            }
            Ok(None)
        })
        .await
        .with_context(|| format!("the simulator did not start within {} s", timeout.as_secs()))??;
        let Some(base_url) = base_url else {
            let status = child.wait().await?;
            anyhow::bail!("the simulator exited before serving ({status})");
        };
        // Keep draining its stdout so it never blocks on a full pipe.
        tokio::spawn(async move { while let Ok(Some(_)) = lines.next_line().await {} });
        let http = reqwest::Client::builder().timeout(Duration::from_secs(300)).build()?;
        let sim = SimProcess { child, pid, base_url, http };
        let deadline = Instant::now() + Duration::from_secs(10);
        loop {
            match sim.get("/_sim/stats").await {
                Ok(_) => return Ok(sim),
                Err(e) if Instant::now() > deadline => return Err(e.context("the simulator does not answer")),
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
    }

    pub(crate) async fn get(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let response = self.http.get(format!("{}{path}", self.base_url)).send().await?;
        Self::json(path, response).await
    }

    pub(crate) async fn post(&self, path: &str) -> anyhow::Result<serde_json::Value> {
        let response = self.http.post(format!("{}{path}", self.base_url)).send().await?;
        Self::json(path, response).await
    }

    pub(crate) async fn json(path: &str, response: reqwest::Response) -> anyhow::Result<serde_json::Value> {
        let status = response.status();
        let body = response.bytes().await?;
        anyhow::ensure!(status.is_success(), "simulator {path}: HTTP {status}: {}", String::from_utf8_lossy(&body));
        serde_json::from_slice(&body).with_context(|| format!("simulator {path}: not JSON"))
    }

    pub(crate) async fn stop(mut self) {
        if let Err(e) = self.child.kill().await {
            tracing::warn!(error = %e, "could not stop the simulator process");
        }
    }
}
