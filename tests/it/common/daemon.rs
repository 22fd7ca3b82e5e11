//! `devin-etl run` (the binary) with two sources, for the tests that look at the running service from the outside
//! (a browser, Prometheus):
//!
//! - `good`: a simulator of its own (real clock) whose token is right: it syncs on every tick;
//! - `revoked`: synced two hours ago (its watermark and a successful run are planted in the warehouse), and now its
//!   API refuses its token (HTTP 401): every tick fails, and its watermark stays two hours old — a failing source
//!   and a stale one, as an operator would meet them after a token was revoked.
//!
//! Ticks run every second; the HTTP server listens on a free port of 127.0.0.1.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use devin_etl::store::Store;
use devin_sim::{RunningSimulator, Simulator, SimulatorConfig};

use super::child::{self, ChildLog};
use super::{TestDb, free_port, test_settings, unique_name};

/// How old the `revoked` source's data is.
pub const REVOKED_AGE: Duration = Duration::from_secs(2 * 3600);

/// The token the `revoked` source is configured with (its API expects another).
pub const REVOKED_TOKEN: &str = "cog_revoked_token_f00dfeed";

pub struct TwoSources {
    pub db: TestDb,
    pub store: Store,
    pub good: Simulator,
    _good_server: RunningSimulator,
    _revoked: (Simulator, RunningSimulator),
    pub log: ChildLog,
    pub child: tokio::process::Child,
    pub port: u16,
    config: PathBuf,
}

impl TwoSources {
    /// Starts the daemon; `extra_env` adds to (or overrides) its environment.
    pub async fn start(extra_env: &[(&str, &str)]) -> TwoSources {
        let db = TestDb::create().await;
        let sim = |name: &str, seed: u64, sessions: usize| {
            Simulator::new(SimulatorConfig {
                sessions,
                seed,
                token: format!("cog_token_of_{name}_0123456789"),
                ..SimulatorConfig::default()
            })
        };
        let good = sim("good", 11, 60);
        let good_server = good.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();
        let revoked = sim("revoked", 12, 20);
        let revoked_server = revoked.serve("127.0.0.1:0".parse().unwrap()).await.unwrap();

        let store =
            devin_etl::app::migrated_store(&test_settings(&db.url, "http://127.0.0.1:9", "unused")).await.unwrap();
        let age = REVOKED_AGE.as_secs() as i64;
        sqlx::query(
            "insert into sync_state (source, watermark, watermark_observed_at)
             values ('revoked', extract(epoch from now())::bigint - $1, now() - make_interval(secs => $1))",
        )
        .bind(age)
        .execute(store.pool())
        .await
        .unwrap();
        sqlx::query(
            "insert into sync_runs (source, mode, status, started_at, finished_at, pages, sessions_upserted, requests)
             values ('revoked', 'incremental', 'succeeded', now() - make_interval(secs => $1 + 2),
                     now() - make_interval(secs => $1), 1, 20, 1)",
        )
        .bind(age)
        .execute(store.pool())
        .await
        .unwrap();

        let config = std::env::temp_dir().join(format!("{}.toml", unique_name("devin_etl_two_sources")));
        std::fs::write(
            &config,
            format!(
                "[sources.good]\nbase_url = \"{}\"\n\n[sources.revoked]\nbase_url = \"{}\"\n",
                good_server.base_url(),
                revoked_server.base_url()
            ),
        )
        .unwrap();
        let port = free_port();
        let mut env: Vec<(String, String)> = [
            ("DATABASE_URL", db.url.as_str()),
            ("DEVIN_ETL__SOURCES__GOOD__TOKEN", good.token()),
            ("DEVIN_ETL__SOURCES__REVOKED__TOKEN", REVOKED_TOKEN),
            ("DEVIN_ETL__API__PAGE_SIZE", "20"),
            ("DEVIN_ETL__API__RETRY_INITIAL_BACKOFF", "10ms"),
            ("DEVIN_ETL__API__RETRY_MAX_BACKOFF", "50ms"),
            ("DEVIN_ETL__SYNC__BACKFILL_WINDOW", "90d"),
            ("DEVIN_ETL__SYNC__SCHEDULE", "* * * * * *"),
            ("DEVIN_ETL__SYNC__RECONCILE_SCHEDULE", "0 0 0 1 1 * 2099"),
            ("DEVIN_ETL__SYNC__SHUTDOWN_GRACE", "1s"),
            ("DEVIN_ETL__LOG__FORMAT", "json"),
            ("RUST_LOG", "info"),
        ]
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect();
        env.push(("DEVIN_ETL__SERVER__LISTEN".to_owned(), format!("127.0.0.1:{port}")));
        env.extend(extra_env.iter().map(|(k, v)| ((*k).to_owned(), (*v).to_owned())));
        let config_arg = config.display().to_string();
        let log = ChildLog::new(&format!("{}-two-sources", db.name));
        let child = log.spawn(&mut child::devin_etl(
            &["--config", &config_arg, "run"],
            env.iter().map(|(k, v)| (k.as_str(), v.clone())),
        ));
        TwoSources {
            db,
            store,
            good,
            _good_server: good_server,
            _revoked: (revoked, revoked_server),
            log,
            child,
            port,
            config,
        }
    }

    pub fn base_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Every token of the configuration (for "never shown" checks).
    pub fn tokens(&self) -> [&str; 2] {
        [self.good.token(), REVOKED_TOKEN]
    }

    async fn runs(&self, source: &str, status: &str) -> i64 {
        sqlx::query_scalar("select count(*) from sync_runs where source = $1 and status = $2 and mode = 'incremental'")
            .bind(source)
            .bind(status)
            .fetch_one(self.store.pool())
            .await
            .unwrap()
    }

    /// Waits (up to 30 s) until `good` has synced and `revoked` has failed `failures` times.
    pub async fn wait_for_runs(&mut self, failures: i64) {
        let deadline = Instant::now() + Duration::from_secs(30);
        while self.runs("good", "succeeded").await < 1 || self.runs("revoked", "failed").await < failures {
            assert!(self.child.try_wait().unwrap().is_none(), "the daemon ended:\n{}", self.log.tail());
            assert!(Instant::now() < deadline, "no progress:\n{}", self.log.tail());
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// SIGTERM, then waits for a clean exit.
    pub async fn stop(&mut self) {
        if self.child.try_wait().unwrap().is_some() {
            return;
        }
        child::signal(&self.child, "TERM");
        let exit = tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.expect("stops").unwrap();
        assert!(exit.success(), "{exit}\n{}", self.log.tail());
    }
}

impl Drop for TwoSources {
    fn drop(&mut self) {
        let _ = std::fs::remove_file(&self.config);
    }
}
