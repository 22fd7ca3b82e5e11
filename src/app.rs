//! The wiring, in one place: settings → pool → store → API client → syncer. Every command, the daemon, `demo`,
//! the benchmark (crate `devin-etl-bench`) and the tests build through here, so they all run what production runs.
//!
//! Several sources share one store (one pool); each has its own API client and syncer. Database connections of a
//! process that syncs: the shared pool ([`sync_pool_size`]), plus one dedicated lock connection per source running
//! at that moment (at most `sync.source_concurrency` in the daemon, one for `sync`), plus the daemon's HTTP pool
//! ([`SMALL_POOL`]).

use std::path::Path;

use crate::api::{ApiClient, request};
use crate::settings::{ConfigError, Settings};
use crate::store::Store;
use crate::sync::Syncer;
use crate::telemetry;

/// Connections of a store that only reads and keeps books (status, migrate, grants, the HTTP endpoints).
const SMALL_POOL: u32 = 2;

/// Loads the settings (defaults, then `config_file`, then `DEVIN_ETL__…` variables), refuses an enrichment batch
/// whose requests proxies would refuse, starts logging and logs what in the settings looks wrong without being
/// invalid.
pub fn init(config_file: Option<&Path>) -> anyhow::Result<Settings> {
    let settings = Settings::load(config_file)?;
    // Checked here, not in `settings`: it needs the API client's URL encoding (and each source's base URL).
    for source in settings.per_source() {
        if let Some(problem) = request::enrichment_batch_problem(&source.api.base_url, settings.sync.enrichment_batch) {
            return Err(ConfigError::Invalid { key: "sync.enrichment_batch", problem }.into());
        }
    }
    telemetry::init(&settings.log);
    for warning in settings.warnings() {
        tracing::warn!("{warning}");
    }
    Ok(settings)
}

/// The syncer's pool: `database.max_connections`, or (0, the default) one connection per concurrent backfill
/// window plus two for the run's bookkeeping and its lookups.
pub fn sync_pool_size(settings: &Settings) -> u32 {
    sync_pool_size_for(settings, 1)
}

/// The pool shared by the syncers of `sources` sources: `database.max_connections`, or (0, the default) what one
/// source needs ([`sync_pool_size`]) times the sources that may run at once (`sync.source_concurrency`).
pub fn sync_pool_size_for(settings: &Settings, sources: usize) -> u32 {
    match settings.database.max_connections {
        0 => {
            (settings.sync.backfill_concurrency as u32 + 2) * sources.clamp(1, settings.sync.source_concurrency) as u32
        }
        n => n,
    }
}

/// A store with a small pool of its own, not migrated: for a second pool beside a syncer's (the HTTP endpoints,
/// so a busy backfill cannot make `/readyz` wait for a connection).
pub async fn small_store(settings: &Settings) -> anyhow::Result<Store> {
    Store::connect(&settings.database, SMALL_POOL).await
}

/// The longest statement of the HTTP endpoints' pool (server side): the status page, `/readyz`, `/metrics` and the
/// alerter read a few rows each; a database too slow for that gets its statements cancelled rather than more and
/// more of them waiting.
pub const HTTP_STATEMENT_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(5);

/// The daemon's HTTP endpoints' pool ([`small_store`]), with `statement_timeout` and `lock_timeout` at most
/// [`HTTP_STATEMENT_TIMEOUT`].
pub async fn http_store(settings: &Settings) -> anyhow::Result<Store> {
    let mut database = settings.database.clone();
    database.statement_timeout = database.statement_timeout.min(HTTP_STATEMENT_TIMEOUT);
    database.lock_timeout = database.lock_timeout.min(HTTP_STATEMENT_TIMEOUT);
    Store::connect(&database, SMALL_POOL).await
}

/// A migrated store with a small pool: for the commands that do not sync.
pub async fn migrated_store(settings: &Settings) -> anyhow::Result<Store> {
    let store = small_store(settings).await?;
    store.migrate().await?;
    Ok(store)
}

/// The API client and a migrated store with a pool sized for the backfill, as one [`Syncer`].
pub async fn syncer(settings: Settings) -> anyhow::Result<Syncer> {
    let api = api_client(&settings)?;
    let store = Store::connect(&settings.database, sync_pool_size(&settings)).await?;
    store.migrate().await?;
    Ok(Syncer::new(settings, api, store))
}

/// One [`Syncer`] per source of `sources` (from [`Settings::per_source`]), in that order, sharing one migrated
/// store whose pool is sized by [`sync_pool_size_for`]. Every source's API client is built before the database is
/// touched, so a bad token fails at once.
pub async fn syncers(sources: Vec<Settings>) -> anyhow::Result<Vec<Syncer>> {
    let Some(first) = sources.first() else {
        anyhow::bail!("no source to sync");
    };
    let clients = sources.iter().map(api_client).collect::<anyhow::Result<Vec<_>>>()?;
    let store = Store::connect(&first.database, sync_pool_size_for(first, sources.len())).await?;
    store.migrate().await?;
    Ok(sources.into_iter().zip(clients).map(|(settings, api)| Syncer::new(settings, api, store.clone())).collect())
}

/// The API client of the source `settings` sync, its metrics labelled with the source.
fn api_client(settings: &Settings) -> anyhow::Result<ApiClient> {
    Ok(ApiClient::new(&settings.api)?.for_source(&settings.sync.source))
}
