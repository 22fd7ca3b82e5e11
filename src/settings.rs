//! Settings: loaded in layers (built-in `config/default.toml` → `--config FILE` → environment), validated once,
//! into typed structs. Every error names the key and the fix. Secrets are `SecretString` and never printed.

use std::collections::BTreeMap;
use std::net::IpAddr;
use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use config::{Config, Environment, File, FileFormat};
use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;
use url::Url;

/// The shipped defaults, compiled in so the binary needs no file next to it.
pub const DEFAULT_TOML: &str = include_str!("../config/default.toml");

/// A configuration problem, always naming the key.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("{key}: {problem}")]
    Invalid { key: &'static str, problem: String },
    /// As `Invalid`, for a key whose name is built from the configuration (`sources.<name>.token`).
    #[error("{key}: {problem}")]
    InvalidKey { key: String, problem: String },
    #[error("configuration could not be read: {0}")]
    Load(#[from] config::ConfigError),
}

fn invalid(key: &'static str, problem: impl Into<String>) -> ConfigError {
    ConfigError::Invalid { key, problem: problem.into() }
}

fn invalid_key(key: String, problem: impl Into<String>) -> ConfigError {
    ConfigError::InvalidKey { key, problem: problem.into() }
}

/// Validated settings of the whole service.
#[derive(Debug, Clone)]
pub struct Settings {
    pub api: ApiSettings,
    pub database: DatabaseSettings,
    pub sync: SyncSettings,
    pub server: ServerSettings,
    pub log: LogSettings,
    pub history: HistorySettings,
    pub alerts: AlertSettings,
    /// The listed sources (`[sources.<name>]`), sorted by name; empty in a single-source configuration, which
    /// syncs `sync.source` from `api.base_url` with `api.token`. See [`Settings::per_source`].
    pub sources: Vec<SourceSettings>,
}

/// One listed source: its own API endpoint and token; every other setting is global.
#[derive(Debug, Clone)]
pub struct SourceSettings {
    /// The map key: the name in `sessions.source`, `sync_state` and `sync_runs`.
    pub name: String,
    pub base_url: Url,
    pub token: SecretString,
}

/// Webhook alerts (`[alerts]`); off without a URL.
#[derive(Debug, Clone)]
pub struct AlertSettings {
    /// The receiver (a secret: a Slack webhook URL carries its own credential). `None`: alerts are off.
    pub webhook_url: Option<SecretString>,
    /// A source fires `source_failing` after this many failed runs in a row.
    pub failing_runs: u32,
    /// How often the daemon evaluates the conditions and delivers what is pending.
    pub check_interval: Duration,
    /// The longest one delivery attempt may take.
    pub timeout: Duration,
    /// Backoff of a failed delivery: the first wait, doubling up to the second.
    pub retry_initial_backoff: Duration,
    pub retry_max_backoff: Duration,
}

#[derive(Debug, Clone)]
pub struct HistorySettings {
    /// Closed history rows older than this are pruned by the daemon; `None` keeps them forever.
    pub retention: Option<Duration>,
}

#[derive(Debug, Clone)]
pub struct ServerSettings {
    /// Where `devin-etl run` serves `/`, `/healthz`, `/readyz` and `/metrics`; `None` (`"off"`): no HTTP server.
    pub listen: Option<std::net::SocketAddr>,
    pub max_staleness: Duration,
    /// `/readyz` fails while a run has been going for longer than this.
    pub max_run_duration: Duration,
}

#[derive(Debug, Clone)]
pub struct ApiSettings {
    pub base_url: Url,
    /// `None` until a command that talks to the API needs it; see [`ApiSettings::token`].
    pub token: Option<SecretString>,
    pub page_size: u32,
    pub timeout: Duration,
    pub connect_timeout: Duration,
    pub max_retries: u32,
    pub retry_initial_backoff: Duration,
    pub retry_max_backoff: Duration,
    pub retry_max_elapsed: Duration,
    pub max_requests_per_second: Option<f64>,
}

#[derive(Debug, Clone)]
pub struct DatabaseSettings {
    /// May hold a password, hence secret.
    pub url: SecretString,
    pub schema: String,
    pub max_connections: u32,
    pub connect_timeout: Duration,
    /// A pooled connection unused this long is closed, so the daemon holds few connections between runs.
    pub idle_timeout: Duration,
    /// Server side: `statement_timeout` and `lock_timeout` of the sync's sessions.
    pub statement_timeout: Duration,
    pub lock_timeout: Duration,
    /// Client side: the longest any database operation (a statement, a batch's transaction) may take.
    pub operation_timeout: Duration,
}

#[derive(Debug, Clone)]
pub struct SyncSettings {
    pub source: String,
    pub lookback: Duration,
    pub settle: Duration,
    pub backfill_start: DateTime<Utc>,
    pub backfill_window: Duration,
    pub backfill_concurrency: usize,
    /// Normalized to the cron crate's 6/7-field form.
    pub schedule: cron::Schedule,
    pub reconcile_schedule: cron::Schedule,
    pub enrichment_window: Duration,
    pub enrichment_batch: usize,
    /// How long after creation a pending session is re-fetched by every enrichment run; after that, less and less
    /// often (see `sync::enrich`). `None` ("off"): every run, for the whole window.
    pub enrichment_backoff_after: Option<Duration>,
    /// The longest wait between two re-fetches of a pending session once it is backed off.
    pub enrichment_max_interval: Duration,
    pub shutdown_grace: Duration,
    /// How far a new watermark may run ahead of the time elapsed since the last one (see `sync::clock`).
    pub clock_tolerance: Duration,
    /// How many sources one `devin-etl run` process syncs at once (the others wait for a slot, or another
    /// replica takes them).
    pub source_concurrency: usize,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    Auto,
    Json,
    Pretty,
}

#[derive(Debug, Clone)]
pub struct LogSettings {
    pub format: LogFormat,
    pub filter: String,
}

// The raw, as-written shape. `deny_unknown_fields` turns a typo in a file or a DEVIN_ETL__ variable into an
// error instead of a silently ignored setting.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSettings {
    api: RawApi,
    database: RawDatabase,
    sync: RawSync,
    server: RawServer,
    log: RawLog,
    history: RawHistory,
    alerts: RawAlerts,
    #[serde(default)]
    sources: BTreeMap<String, RawSource>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawAlerts {
    #[serde(default)]
    webhook_url: Option<SecretString>,
    #[serde(default)]
    webhook_url_file: String,
    failing_runs: i64,
    check_interval: String,
    timeout: String,
    retry_initial_backoff: String,
    retry_max_backoff: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawHistory {
    retention: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSource {
    #[serde(default)]
    base_url: Option<String>,
    #[serde(default)]
    token: Option<SecretString>,
    #[serde(default)]
    token_file: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawServer {
    listen: String,
    max_staleness: String,
    max_run_duration: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawApi {
    base_url: String,
    #[serde(default)]
    token: Option<SecretString>,
    #[serde(default)]
    token_file: String,
    page_size: i64,
    timeout: String,
    connect_timeout: String,
    max_retries: i64,
    retry_initial_backoff: String,
    retry_max_backoff: String,
    retry_max_elapsed: String,
    max_requests_per_second: f64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDatabase {
    url: SecretString,
    schema: String,
    max_connections: i64,
    connect_timeout: String,
    idle_timeout: String,
    statement_timeout: String,
    lock_timeout: String,
    operation_timeout: String,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawSync {
    source: String,
    lookback: String,
    settle: String,
    backfill_start: String,
    backfill_window: String,
    backfill_concurrency: i64,
    schedule: String,
    reconcile_schedule: String,
    enrichment_window: String,
    enrichment_batch: i64,
    enrichment_backoff_after: String,
    enrichment_max_interval: String,
    shutdown_grace: String,
    clock_tolerance: String,
    source_concurrency: i64,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawLog {
    format: String,
    filter: String,
}

impl Settings {
    /// Settings that work but weaken a guarantee, for a warning at start.
    pub fn warnings(&self) -> Vec<String> {
        let sync = &self.sync;
        let mut warnings = Vec::new();
        if !self.sources.is_empty() && self.api.token.is_some() {
            warnings.push(
                "api.token (or DEVIN_API_TOKEN) is ignored: sources are listed, and each uses its own \
                 sources.<name>.token or token_file"
                    .to_owned(),
            );
        }
        if sync.clock_tolerance > sync.lookback + sync.settle {
            warnings.push(format!(
                "sync.clock_tolerance ({}s) is more than sync.lookback + sync.settle ({}s): an API clock running ahead \
                 by less than the tolerance but more than lookback + settle can make incremental runs skip updates \
                 until a reconcile",
                sync.clock_tolerance.as_secs(),
                (sync.lookback + sync.settle).as_secs()
            ));
        }
        warnings
    }

    /// Loads defaults, then `file` if given, then the process environment.
    pub fn load(file: Option<&Path>) -> Result<Settings, ConfigError> {
        Self::load_with_env(file, |name| std::env::var(name).ok())
    }

    /// As [`Settings::load`], with the conventional variables read through `env` (tests pass their own).
    /// `DEVIN_ETL__…` variables always come from the process environment.
    pub fn load_with_env(file: Option<&Path>, env: impl Fn(&str) -> Option<String>) -> Result<Settings, ConfigError> {
        Self::load_layers(file, env, None)
    }

    /// As [`Settings::load`], with every variable (`DEVIN_ETL__…` and the conventional ones) taken from `vars`
    /// instead of the process environment: for tests.
    pub fn load_with_vars(file: Option<&Path>, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
        let lookup = |name: &str| vars.iter().find(|(k, _)| *k == name).map(|(_, v)| (*v).to_owned());
        let prefixed = vars
            .iter()
            .filter(|(k, _)| k.starts_with("DEVIN_ETL__"))
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        Self::load_layers(file, lookup, Some(prefixed))
    }

    /// The layers: defaults, `file`, `DEVIN_ETL__…` variables (from `prefixed`, else the process environment),
    /// then the conventional names read through `env`.
    fn load_layers(
        file: Option<&Path>,
        env: impl Fn(&str) -> Option<String>,
        prefixed: Option<config::Map<String, String>>,
    ) -> Result<Settings, ConfigError> {
        let mut builder = Config::builder().add_source(File::from_str(DEFAULT_TOML, FileFormat::Toml));
        if let Some(path) = file {
            if !path.exists() {
                return Err(invalid("--config", format!("file {} does not exist", path.display())));
            }
            refuse_secrets_in(path)?;
            builder = builder.add_source(File::from(path).required(true));
        }
        builder = builder
            .add_source(Environment::with_prefix("DEVIN_ETL").separator("__").try_parsing(true).source(prefixed));
        // The conventional names, unless the more specific DEVIN_ETL__ form is set.
        for (conventional, specific, key) in [
            ("DATABASE_URL", "DEVIN_ETL__DATABASE__URL", "database.url"),
            ("DEVIN_API_TOKEN", "DEVIN_ETL__API__TOKEN", "api.token"),
        ] {
            if let (Some(value), None) = (env(conventional), env(specific)) {
                builder = builder.set_override(key, value)?;
            }
        }
        let raw: RawSettings = builder.build()?.try_deserialize()?;
        Self::validate(raw)
    }

    /// One `Settings` per source to sync, sorted by name: each listed source's name (as `sync.source`), base URL
    /// and token over the global settings; in a single-source configuration (no `[sources.…]`), these settings
    /// alone.
    pub fn per_source(&self) -> Vec<Settings> {
        if self.sources.is_empty() {
            return vec![self.clone()];
        }
        self.sources
            .iter()
            .map(|source| {
                let mut settings = self.clone();
                settings.sync.source = source.name.clone();
                settings.api.base_url = source.base_url.clone();
                settings.api.token = Some(source.token.clone());
                settings.sources = Vec::new();
                settings
            })
            .collect()
    }

    fn validate(raw: RawSettings) -> Result<Settings, ConfigError> {
        let settings = Settings {
            api: validate_api(raw.api)?,
            database: validate_database(raw.database)?,
            sync: validate_sync(raw.sync)?,
            server: validate_server(raw.server)?,
            log: validate_log(raw.log)?,
            history: validate_history(raw.history)?,
            alerts: validate_alerts(raw.alerts)?,
            sources: raw.sources.into_iter().map(|(name, raw)| validate_source(name, raw)).collect::<Result<_, _>>()?,
        };
        Ok(settings)
    }
}

fn validate_api(raw: RawApi) -> Result<ApiSettings, ConfigError> {
    let base_url = parse_base_url(&raw.base_url)?;
    let token = resolve_token(raw.token, &raw.token_file).map_err(|problem| invalid("api.token_file", problem))?;
    if !(1..=200).contains(&raw.page_size) {
        return Err(invalid("api.page_size", format!("{} is out of range; use 1..=200", raw.page_size)));
    }
    if !(0..=100).contains(&raw.max_retries) {
        return Err(invalid("api.max_retries", format!("{} is out of range; use 0..=100", raw.max_retries)));
    }
    let rps = raw.max_requests_per_second;
    if !rps.is_finite() || rps < 0.0 || (rps > 0.0 && rps < 0.001) {
        return Err(invalid(
            "api.max_requests_per_second",
            format!("{rps} is invalid; use 0 (off) or a number of at least 0.001"),
        ));
    }
    Ok(ApiSettings {
        base_url,
        token,
        page_size: raw.page_size as u32,
        timeout: positive_duration("api.timeout", &raw.timeout)?,
        connect_timeout: positive_duration("api.connect_timeout", &raw.connect_timeout)?,
        max_retries: raw.max_retries as u32,
        retry_initial_backoff: positive_duration("api.retry_initial_backoff", &raw.retry_initial_backoff)?,
        retry_max_backoff: positive_duration("api.retry_max_backoff", &raw.retry_max_backoff)?,
        retry_max_elapsed: positive_duration("api.retry_max_elapsed", &raw.retry_max_elapsed)?,
        max_requests_per_second: (rps > 0.0).then_some(rps),
    })
}

/// The token given directly (trimmed), else read from `token_file` (trimmed); `Err` says what is wrong with the file.
fn resolve_token(token: Option<SecretString>, token_file: &str) -> Result<Option<SecretString>, String> {
    match (token, token_file.trim()) {
        (Some(token), _) if !token.expose_secret().trim().is_empty() => {
            Ok(Some(SecretString::from(token.expose_secret().trim().to_owned())))
        }
        (_, "") => Ok(None),
        (_, path) => {
            let text = std::fs::read_to_string(path)
                .map_err(|e| format!("cannot read {path}: {e} (mount the secret file or unset the key)"))?;
            let text = text.trim();
            if text.is_empty() {
                return Err(format!("{path} is empty"));
            }
            Ok(Some(SecretString::from(text.to_owned())))
        }
    }
}

/// A source name: it is spelled in `DEVIN_ETL__SOURCES__<NAME>__TOKEN` (environment names are case-insensitive
/// to the config crate, and `__` separates keys), so lowercase letters, digits and single underscores.
fn is_source_name(name: &str) -> bool {
    is_identifier(name) && !name.contains("__")
}

fn validate_source(name: String, raw: RawSource) -> Result<SourceSettings, ConfigError> {
    let key = |field: &str| format!("sources.{name}.{field}");
    if !is_source_name(&name) {
        return Err(invalid_key(
            format!("sources.{name}"),
            "a source name is lowercase letters, digits and single underscores (max 63), not starting with a digit; \
             it is spelled in DEVIN_ETL__SOURCES__<NAME>__TOKEN",
        ));
    }
    // Required, not defaulted to api.base_url: a mistyped DEVIN_ETL__SOURCES__…__TOKEN must not create a source.
    let Some(base_url) = raw.base_url else {
        return Err(invalid_key(
            key("base_url"),
            format!(
                "missing; every listed source needs its base URL (e.g. \"https://api.devin.ai\") in [sources.{name}]"
            ),
        ));
    };
    let base_url = parse_base_url(&base_url).map_err(|e| match e {
        ConfigError::Invalid { problem, .. } => invalid_key(key("base_url"), problem),
        other => other,
    })?;
    let env_name = format!("DEVIN_ETL__SOURCES__{}__TOKEN", name.to_uppercase());
    let token = resolve_token(raw.token, &raw.token_file).map_err(|problem| invalid_key(key("token_file"), problem))?;
    let Some(token) = token else {
        return Err(invalid_key(
            key("token"),
            format!(
                "no API token for source {name}; set {env_name} or point sources.{name}.token_file at a secret file"
            ),
        ));
    };
    Ok(SourceSettings { name, base_url, token })
}

/// Refuses a secret written in the configuration file — a listed source's `token`, `alerts.webhook_url`: that file
/// is meant to be committed (or baked into an image or a ConfigMap), so the secret would leak with it. Read from the
/// file alone, so that the same key given by the environment is still accepted.
fn refuse_secrets_in(path: &Path) -> Result<(), ConfigError> {
    let file = Config::builder().add_source(File::from(path).required(true)).build()?;
    if file.get_table("alerts").is_ok_and(|alerts| alerts.contains_key("webhook_url")) {
        return Err(invalid(
            "alerts.webhook_url",
            format!(
                "the webhook URL is a secret (a Slack webhook URL is its own credential) and must not be written in \
                 the configuration file {}, which is meant to be committed; remove it and set \
                 DEVIN_ETL__ALERTS__WEBHOOK_URL, or point alerts.webhook_url_file at a secret file",
                path.display()
            ),
        ));
    }
    let Ok(sources) = file.get_table("sources") else {
        return Ok(());
    };
    for (name, value) in sources {
        let has_token = value.into_table().is_ok_and(|table| table.contains_key("token"));
        if has_token {
            return Err(invalid_key(
                format!("sources.{name}.token"),
                format!(
                    "a token must not be written in the configuration file {}, which is meant to be committed; remove \
                     it and set DEVIN_ETL__SOURCES__{}__TOKEN, or point sources.{name}.token_file at a secret file",
                    path.display(),
                    name.to_uppercase()
                ),
            ));
        }
    }
    Ok(())
}

fn validate_alerts(raw: RawAlerts) -> Result<AlertSettings, ConfigError> {
    let webhook_url = resolve_token(raw.webhook_url, &raw.webhook_url_file)
        .map_err(|problem| invalid("alerts.webhook_url_file", problem))?;
    if let Some(url) = &webhook_url {
        // The value is never echoed: it is a secret.
        let parsed = Url::parse(url.expose_secret()).map_err(|e| {
            invalid("alerts.webhook_url", format!("not a URL ({e}); the value is not shown, since it is a secret"))
        })?;
        if !matches!(parsed.scheme(), "http" | "https") || parsed.host().is_none() {
            return Err(invalid(
                "alerts.webhook_url",
                "must be an http:// or https:// URL with a host (the value is not shown, since it is a secret)",
            ));
        }
    }
    if !(1..=1000).contains(&raw.failing_runs) {
        return Err(invalid("alerts.failing_runs", format!("{} is out of range; use 1..=1000", raw.failing_runs)));
    }
    let retry_initial_backoff = positive_duration("alerts.retry_initial_backoff", &raw.retry_initial_backoff)?;
    let retry_max_backoff = positive_duration("alerts.retry_max_backoff", &raw.retry_max_backoff)?;
    if retry_max_backoff < retry_initial_backoff {
        return Err(invalid(
            "alerts.retry_max_backoff",
            format!(
                "{} is shorter than alerts.retry_initial_backoff ({})",
                raw.retry_max_backoff, raw.retry_initial_backoff
            ),
        ));
    }
    Ok(AlertSettings {
        webhook_url,
        failing_runs: raw.failing_runs as u32,
        check_interval: positive_duration("alerts.check_interval", &raw.check_interval)?,
        timeout: positive_duration("alerts.timeout", &raw.timeout)?,
        retry_initial_backoff,
        retry_max_backoff,
    })
}

fn validate_history(raw: RawHistory) -> Result<HistorySettings, ConfigError> {
    let text = raw.retention.trim();
    if text.is_empty() || text.eq_ignore_ascii_case("forever") {
        return Ok(HistorySettings { retention: None });
    }
    let retention = parse_duration(text).filter(|d| !d.is_zero()).ok_or_else(|| {
        invalid(
            "history.retention",
            format!("{text:?} is not a retention; use \"forever\" (or empty) to keep all history, or a duration such as \"400d\""),
        )
    })?;
    Ok(HistorySettings { retention: Some(retention) })
}

fn validate_database(raw: RawDatabase) -> Result<DatabaseSettings, ConfigError> {
    let url = raw.url.expose_secret();
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        // Not echoing the value: it may carry a password.
        return Err(invalid("database.url", "must start with postgres:// or postgresql:// (set DATABASE_URL)"));
    }
    if !is_identifier(&raw.schema) {
        return Err(invalid(
            "database.schema",
            format!(
                "{:?} is not a plain identifier; use lowercase letters, digits and _ (max 63), not starting with a digit",
                raw.schema
            ),
        ));
    }
    if !(0..=1000).contains(&raw.max_connections) {
        return Err(invalid(
            "database.max_connections",
            format!("{} is out of range; use 0 (auto) ..= 1000", raw.max_connections),
        ));
    }
    let statement_timeout = positive_duration("database.statement_timeout", &raw.statement_timeout)?;
    let operation_timeout = positive_duration("database.operation_timeout", &raw.operation_timeout)?;
    // The server's own timeout should end a runaway statement first, with a clearer error than ours.
    if operation_timeout <= statement_timeout {
        return Err(invalid(
            "database.operation_timeout",
            format!(
                "{} must be longer than database.statement_timeout ({}), so the server's timeout fires first",
                raw.operation_timeout, raw.statement_timeout
            ),
        ));
    }
    Ok(DatabaseSettings {
        url: raw.url,
        schema: raw.schema,
        max_connections: raw.max_connections as u32,
        connect_timeout: positive_duration("database.connect_timeout", &raw.connect_timeout)?,
        idle_timeout: positive_duration("database.idle_timeout", &raw.idle_timeout)?,
        statement_timeout,
        lock_timeout: positive_duration("database.lock_timeout", &raw.lock_timeout)?,
        operation_timeout,
    })
}

fn validate_sync(raw: RawSync) -> Result<SyncSettings, ConfigError> {
    if raw.source.trim().is_empty() || raw.source.len() > 100 {
        return Err(invalid("sync.source", "must be a non-empty name of at most 100 characters"));
    }
    let backfill_start =
        DateTime::parse_from_rfc3339(&raw.backfill_start).map(|t| t.with_timezone(&Utc)).map_err(|e| {
            invalid(
                "sync.backfill_start",
                format!("{:?} is not an RFC 3339 time ({e}); use e.g. \"2024-01-01T00:00:00Z\"", raw.backfill_start),
            )
        })?;
    let backfill_window = positive_duration("sync.backfill_window", &raw.backfill_window)?;
    if backfill_window < Duration::from_secs(3600) {
        return Err(invalid("sync.backfill_window", "must be at least 1h"));
    }
    if !(0..=64).contains(&raw.backfill_concurrency) {
        return Err(invalid(
            "sync.backfill_concurrency",
            format!("{} is out of range; use 0 (auto) ..= 64", raw.backfill_concurrency),
        ));
    }
    let backfill_concurrency = match raw.backfill_concurrency {
        0 => std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(2, 8),
        n => n as usize,
    };
    if !(1..=200).contains(&raw.enrichment_batch) {
        return Err(invalid("sync.enrichment_batch", format!("{} is out of range; use 1..=200", raw.enrichment_batch)));
    }
    let lookback = duration("sync.lookback", &raw.lookback)?;
    let settle = duration("sync.settle", &raw.settle)?;
    if lookback.is_zero() && settle.is_zero() {
        return Err(invalid(
            "sync.lookback",
            "and sync.settle are both zero: a session updated in the second the watermark is taken, or committed late \
             upstream, would be skipped for good; set sync.lookback to at least 1s (default 10m) or sync.settle above 0",
        ));
    }
    // A watermark accepted up to `clock_tolerance` ahead of elapsed time is re-read next run only while the
    // tolerance stays within lookback + settle; more is allowed (the guard is then weaker) and warned about by
    // `Settings::warnings`.
    let clock_tolerance = positive_duration("sync.clock_tolerance", &raw.clock_tolerance)?;
    if !(1..=64).contains(&raw.source_concurrency) {
        return Err(invalid(
            "sync.source_concurrency",
            format!("{} is out of range; use 1..=64", raw.source_concurrency),
        ));
    }
    Ok(SyncSettings {
        clock_tolerance,
        source_concurrency: raw.source_concurrency as usize,
        schedule: parse_schedule("sync.schedule", &raw.schedule)?,
        reconcile_schedule: parse_schedule("sync.reconcile_schedule", &raw.reconcile_schedule)?,
        enrichment_window: duration("sync.enrichment_window", &raw.enrichment_window)?,
        enrichment_batch: raw.enrichment_batch as usize,
        enrichment_backoff_after: backoff_after(&raw.enrichment_backoff_after)?,
        enrichment_max_interval: positive_duration("sync.enrichment_max_interval", &raw.enrichment_max_interval)?,
        shutdown_grace: positive_duration("sync.shutdown_grace", &raw.shutdown_grace)?,
        source: raw.source,
        lookback,
        settle,
        backfill_start,
        backfill_window,
        backfill_concurrency,
    })
}

fn validate_server(raw: RawServer) -> Result<ServerSettings, ConfigError> {
    let listen = match raw.listen.trim() {
        "off" | "" => None,
        text => Some(text.parse().map_err(|e| {
            invalid(
                "server.listen",
                format!("{:?} is not an address ({e}); use e.g. \"0.0.0.0:9187\", or \"off\"", raw.listen),
            )
        })?),
    };
    Ok(ServerSettings {
        listen,
        max_staleness: positive_duration("server.max_staleness", &raw.max_staleness)?,
        max_run_duration: positive_duration("server.max_run_duration", &raw.max_run_duration)?,
    })
}

/// Parses a cron expression: the standard 5 fields (minute first) or the cron crate's 6/7 (seconds first).
pub fn parse_schedule(key: &'static str, text: &str) -> Result<cron::Schedule, ConfigError> {
    let fields = text.split_whitespace().count();
    let normalized = match fields {
        5 => format!("0 {}", text.trim()),
        6 | 7 => text.trim().to_owned(),
        n => {
            return Err(invalid(
                key,
                format!(
                    "{text:?} has {n} fields; use 5 (\"*/15 * * * *\") or 6/7 with seconds first (\"0 */15 * * * *\")"
                ),
            ));
        }
    };
    let schedule: cron::Schedule = std::str::FromStr::from_str(&normalized)
        .map_err(|e| invalid(key, format!("invalid cron expression {text:?}: {e}")))?;
    if schedule.upcoming(Utc).next().is_none() {
        return Err(invalid(key, format!("{text:?} has no future tick (a year in the past?); it would never run")));
    }
    Ok(schedule)
}

fn validate_log(raw: RawLog) -> Result<LogSettings, ConfigError> {
    let format = match raw.format.as_str() {
        "auto" => LogFormat::Auto,
        "json" => LogFormat::Json,
        "pretty" => LogFormat::Pretty,
        other => return Err(invalid("log.format", format!("{other:?} is not one of \"auto\", \"json\", \"pretty\""))),
    };
    Ok(LogSettings { format, filter: raw.filter })
}

/// Parses the base URL; plain http is allowed only where nothing leaves the machine.
fn parse_base_url(text: &str) -> Result<Url, ConfigError> {
    let url = Url::parse(text.trim()).map_err(|e| {
        invalid("api.base_url", format!("{text:?} is not a URL ({e}); use e.g. \"https://api.devin.ai\""))
    })?;
    match url.scheme() {
        "https" => {}
        "http" if is_loopback(&url) => {}
        "http" => {
            return Err(invalid(
                "api.base_url",
                format!(
                    "{text:?} uses plain http to a non-loopback host, which would send the token unencrypted; use https://"
                ),
            ));
        }
        other => return Err(invalid("api.base_url", format!("unsupported scheme {other:?}; use https://"))),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("api.base_url", "must not carry credentials; set DEVIN_API_TOKEN instead"));
    }
    if url.query().is_some() || url.fragment().is_some() {
        return Err(invalid("api.base_url", "must not have a query or fragment"));
    }
    Ok(url)
}

fn is_loopback(url: &Url) -> bool {
    match url.host() {
        Some(url::Host::Domain(d)) => d.eq_ignore_ascii_case("localhost"),
        Some(url::Host::Ipv4(ip)) => IpAddr::V4(ip).is_loopback(),
        Some(url::Host::Ipv6(ip)) => IpAddr::V6(ip).is_loopback(),
        None => false,
    }
}

/// A safe SQL identifier: we splice the schema name into `search_path`, so it must need no quoting.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    matches!(chars.next(), Some(c) if c.is_ascii_lowercase() || c == '_')
        && s.len() <= 63
        && chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '_')
}

fn positive_duration(key: &'static str, text: &str) -> Result<Duration, ConfigError> {
    let d = duration(key, text)?;
    if d.is_zero() {
        return Err(invalid(key, "must be greater than zero"));
    }
    Ok(d)
}

/// `sync.enrichment_backoff_after`: a duration, or "off" (no backoff: every pending session on every run).
fn backoff_after(text: &str) -> Result<Option<Duration>, ConfigError> {
    if text.trim().eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    parse_duration(text).map(Some).ok_or_else(|| {
        invalid(
            "sync.enrichment_backoff_after",
            format!("{text:?} is not a duration; use \"off\" (re-fetch on every run) or a duration such as \"2h\""),
        )
    })
}

fn duration(key: &'static str, text: &str) -> Result<Duration, ConfigError> {
    parse_duration(text).ok_or_else(|| {
        invalid(
            key,
            format!("{text:?} is not a duration; use a number and a unit: ms, s, m, h or d (e.g. \"30s\", \"10m\")"),
        )
    })
}

/// Parses `"500ms"`, `"30s"`, `"10m"`, `"1h"`, `"7d"` (one number, one unit).
pub fn parse_duration(text: &str) -> Option<Duration> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit())?;
    let (number, unit) = text.split_at(split);
    let n: u64 = number.parse().ok()?;
    let millis = match unit.trim() {
        "ms" => Some(n),
        "s" => n.checked_mul(1_000),
        "m" => n.checked_mul(60_000),
        "h" => n.checked_mul(3_600_000),
        "d" => n.checked_mul(86_400_000),
        _ => None,
    }?;
    Some(Duration::from_millis(millis))
}

impl ApiSettings {
    /// The token, or an error telling how to provide one.
    pub fn token(&self) -> Result<&SecretString, ConfigError> {
        self.token.as_ref().ok_or_else(|| {
            invalid(
                "api.token",
                "no API token configured; set DEVIN_API_TOKEN (a service-user key, cog_…) or api.token_file",
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn no_env(_: &str) -> Option<String> {
        None
    }

    #[test]
    fn defaults_load_and_validate() {
        let s = Settings::load_with_env(None, no_env).unwrap();
        assert_eq!(s.api.base_url.as_str(), "https://api.devin.ai/");
        assert_eq!(s.api.page_size, 200);
        assert_eq!(s.database.schema, "devin");
        assert_eq!(s.sync.lookback, Duration::from_secs(600));
        assert!(s.api.token.is_none());
    }

    #[test]
    fn cron_accepts_five_six_and_seven_fields_and_names_the_key() {
        use chrono::Timelike;
        let five = parse_schedule("sync.schedule", "*/10 * * * *").unwrap();
        let next = five.upcoming(chrono::Utc).next().unwrap();
        assert_eq!((next.second(), next.minute() % 10), (0, 0));
        assert!(parse_schedule("sync.schedule", "0 */10 * * * *").is_ok());
        assert!(parse_schedule("sync.schedule", "0 0 3 * * * 2030").is_ok());
        let err = parse_schedule("sync.schedule", "every ten minutes").unwrap_err().to_string();
        assert!(err.starts_with("sync.schedule:"), "{err}");
        let err = parse_schedule("sync.reconcile_schedule", "61 * * * *").unwrap_err().to_string();
        assert!(err.starts_with("sync.reconcile_schedule:"), "{err}");
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("500ms"), Some(Duration::from_millis(500)));
        assert_eq!(parse_duration("10m"), Some(Duration::from_secs(600)));
        assert_eq!(parse_duration("7d"), Some(Duration::from_secs(7 * 86400)));
        assert_eq!(parse_duration("10"), None);
        assert_eq!(parse_duration("m"), None);
        assert_eq!(parse_duration("1w"), None);
    }

    #[test]
    fn plain_http_only_for_loopback() {
        assert!(parse_base_url("http://127.0.0.1:8080").is_ok());
        assert!(parse_base_url("http://localhost:8080").is_ok());
        assert!(parse_base_url("http://[::1]:8080").is_ok());
        let err = parse_base_url("http://api.devin.ai").unwrap_err().to_string();
        assert!(err.starts_with("api.base_url:"), "{err}");
        assert!(parse_base_url("ftp://x").is_err());
    }

    #[test]
    fn server_listen_is_an_address_or_off() {
        let listen = |value: &str| Settings::load_with_vars(None, &[("DEVIN_ETL__SERVER__LISTEN", value)]);
        assert_eq!(Settings::load_with_vars(None, &[]).unwrap().server.listen, Some(([0, 0, 0, 0], 9187).into()));
        assert_eq!(listen("127.0.0.1:8080").unwrap().server.listen, Some(([127, 0, 0, 1], 8080).into()));
        assert_eq!(listen("off").unwrap().server.listen, None);
        let error = listen("of").unwrap_err().to_string();
        assert!(error.contains("server.listen") && error.contains("\"off\""), "{error}");
    }

    #[test]
    fn conventional_env_names_are_read_and_token_is_redacted() {
        let s = Settings::load_with_env(None, |k| match k {
            "DEVIN_API_TOKEN" => Some("cog_secret_value".into()),
            "DATABASE_URL" => Some("postgres://u:pw@db:5432/x".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(s.api.token().unwrap().expose_secret(), "cog_secret_value");
        let debug = format!("{s:?}");
        assert!(!debug.contains("cog_secret_value"), "{debug}");
        assert!(!debug.contains("pw@"), "{debug}");
    }

    #[test]
    fn file_values_are_validated_with_the_key_named() {
        for (body, key) in [
            ("[api]\npage_size = 500\n", "api.page_size"),
            ("[sync]\nlookback = \"ten minutes\"\n", "sync.lookback"),
            ("[database]\nschema = \"Bad-Name\"\n", "database.schema"),
        ] {
            let err = load_toml(body).unwrap_err().to_string();
            assert!(err.starts_with(key), "{err}");
        }
        let err = load_toml("[api]\npage_sise = 5\n").unwrap_err().to_string();
        assert!(err.contains("page_sise"), "{err}");
    }

    /// Loads the defaults plus `body` as a config file (a file of its own per call).
    fn load_toml(body: &str) -> Result<Settings, ConfigError> {
        Settings::load_with_env(Some(&TempConfig::new(body).path()), no_env)
    }

    #[test]
    fn lookback_and_settle_both_zero_is_refused_naming_both() {
        let err = load_toml("[sync]\nlookback = \"0s\"\nsettle = \"0ms\"\n").unwrap_err().to_string();
        assert!(err.starts_with("sync.lookback"), "{err}");
        assert!(err.contains("sync.settle"), "{err}");
        // Either one alone is fine.
        let s = load_toml("[sync]\nlookback = \"0s\"\n").unwrap();
        assert_eq!((s.sync.lookback, s.sync.settle), (Duration::ZERO, Duration::from_secs(30)));
        let s = load_toml("[sync]\nsettle = \"0s\"\n").unwrap();
        assert_eq!((s.sync.lookback, s.sync.settle), (Duration::from_secs(600), Duration::ZERO));
    }

    #[test]
    fn a_cron_with_no_future_tick_is_refused_naming_the_key() {
        let err = parse_schedule("sync.schedule", "0 0 0 1 1 * 2020").unwrap_err().to_string();
        assert!(err.starts_with("sync.schedule:") && err.contains("no future tick"), "{err}");
        let err = load_toml("[sync]\nreconcile_schedule = \"0 0 0 1 1 * 2020\"\n").unwrap_err().to_string();
        assert!(err.starts_with("sync.reconcile_schedule:") && err.contains("no future tick"), "{err}");
        let err = load_toml("[sync]\nschedule = \"0 0 0 1 1 * 2020-2021\"\n").unwrap_err().to_string();
        assert!(err.starts_with("sync.schedule:"), "{err}");
        // A schedule that ends in a future year is fine until then.
        assert!(parse_schedule("sync.schedule", "0 0 0 1 1 * 2020-2099").is_ok());
    }

    /// A config file of its own holding `body`, removed when dropped.
    struct TempConfig(std::path::PathBuf);

    impl TempConfig {
        fn new(body: &str) -> TempConfig {
            use std::sync::atomic::{AtomicU32, Ordering};
            static N: AtomicU32 = AtomicU32::new(0);
            let dir = std::env::temp_dir().join(format!(
                "devin-etl-cfg-{}-{}",
                std::process::id(),
                N.fetch_add(1, Ordering::Relaxed)
            ));
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(dir.join("settings.toml"), body).unwrap();
            TempConfig(dir)
        }

        fn path(&self) -> std::path::PathBuf {
            self.0.join("settings.toml")
        }

        fn load(&self, vars: &[(&str, &str)]) -> Result<Settings, ConfigError> {
            Settings::load_with_vars(Some(&self.path()), vars)
        }
    }

    impl Drop for TempConfig {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    const TWO_SOURCES: &str = "[sources.acme]\nbase_url = \"https://acme.example\"\n\
                               [sources.globex]\nbase_url = \"http://127.0.0.1:9\"\n";

    #[test]
    fn sources_come_from_the_file_with_tokens_from_the_environment() {
        let file = TempConfig::new(TWO_SOURCES);
        let s = file
            .load(&[
                ("DEVIN_ETL__SOURCES__ACME__TOKEN", "cog_acme"),
                ("DEVIN_ETL__SOURCES__GLOBEX__TOKEN", " cog_globex\n"),
            ])
            .unwrap();
        let names: Vec<&str> = s.sources.iter().map(|s| s.name.as_str()).collect();
        assert_eq!(names, ["acme", "globex"]);
        let per_source = s.per_source();
        let seen: Vec<(&str, &str, &str)> = per_source
            .iter()
            .map(|p| (p.sync.source.as_str(), p.api.base_url.as_str(), p.api.token().unwrap().expose_secret()))
            .collect();
        assert_eq!(
            seen,
            [("acme", "https://acme.example/", "cog_acme"), ("globex", "http://127.0.0.1:9/", "cog_globex")]
        );
        // Everything else is global.
        assert!(per_source.iter().all(|p| p.api.page_size == 200 && p.sources.is_empty()));
        let debug = format!("{s:?}");
        assert!(!debug.contains("cog_acme") && !debug.contains("cog_globex"), "{debug}");
        assert!(s.warnings().is_empty(), "{:?}", s.warnings());
        // DEVIN_API_TOKEN is for the single-source configuration: ignored here, with a warning.
        let s = file
            .load(&[
                ("DEVIN_ETL__SOURCES__ACME__TOKEN", "a"),
                ("DEVIN_ETL__SOURCES__GLOBEX__TOKEN", "g"),
                ("DEVIN_API_TOKEN", "cog_single"),
            ])
            .unwrap();
        assert!(s.per_source().iter().all(|p| p.api.token().unwrap().expose_secret() != "cog_single"));
        assert!(s.warnings().iter().any(|w| w.starts_with("api.token")), "{:?}", s.warnings());
    }

    #[test]
    fn a_source_token_can_come_from_a_file() {
        let secret = TempConfig::new("");
        let token_path = secret.0.join("acme-token");
        std::fs::write(&token_path, "cog_from_file\n").unwrap();
        let file = TempConfig::new(&format!(
            "[sources.acme]\nbase_url = \"https://acme.example\"\ntoken_file = {:?}\n",
            token_path.display().to_string()
        ));
        let s = file.load(&[]).unwrap();
        assert_eq!(s.per_source()[0].api.token().unwrap().expose_secret(), "cog_from_file");
        std::fs::remove_file(&token_path).unwrap();
        let err = file.load(&[]).unwrap_err().to_string();
        assert!(err.starts_with("sources.acme.token_file: cannot read"), "{err}");
    }

    #[test]
    fn a_source_token_written_in_the_config_file_is_refused_naming_the_key_and_the_fix() {
        let file = TempConfig::new("[sources.acme]\nbase_url = \"https://acme.example\"\ntoken = \"cog_leaked\"\n");
        let err = file.load(&[]).unwrap_err().to_string();
        assert!(err.starts_with("sources.acme.token: a token must not be written in the configuration file"), "{err}");
        assert!(err.contains("DEVIN_ETL__SOURCES__ACME__TOKEN") && err.contains("sources.acme.token_file"), "{err}");
        assert!(!err.contains("cog_leaked"), "{err}");
        // Even when the environment gives one too: the file must not hold it.
        assert!(file.load(&[("DEVIN_ETL__SOURCES__ACME__TOKEN", "cog_env")]).is_err());
    }

    #[test]
    fn listed_sources_are_checked_naming_the_key() {
        for (body, vars, key) in [
            ("[sources.acme]\nbase_url = \"https://a.example\"\n", &[][..], "sources.acme.token: no API token"),
            (
                "[sources.acme]\ntoken_file = \"\"\n",
                &[("DEVIN_ETL__SOURCES__ACME__TOKEN", "t")][..],
                "sources.acme.base_url",
            ),
            (
                "[sources.acme]\nbase_url = \"http://api.devin.ai\"\n",
                &[("DEVIN_ETL__SOURCES__ACME__TOKEN", "t")][..],
                "sources.acme.base_url: \"http://api.devin.ai\" uses plain http",
            ),
            ("[sources.Acme-1]\nbase_url = \"https://a.example\"\n", &[][..], "sources.Acme-1: a source name is"),
            ("[sources.acme]\nbase_url = \"https://a.example\"\ntokn_file = \"x\"\n", &[][..], "tokn_file"),
        ] {
            let err = TempConfig::new(body).load(vars).unwrap_err().to_string();
            assert!(err.starts_with(key) || err.contains(key), "{body}: {err}");
        }
        // A token in the environment for a source the file does not list is a source without a base URL: refused,
        // so a mistyped name cannot create a source.
        let err = Settings::load_with_vars(None, &[("DEVIN_ETL__SOURCES__ACEM__TOKEN", "t")]).unwrap_err().to_string();
        assert!(err.starts_with("sources.acem.base_url: missing"), "{err}");
    }

    #[test]
    fn without_sources_the_single_source_configuration_is_unchanged() {
        let s =
            Settings::load_with_vars(None, &[("DEVIN_API_TOKEN", "cog_single"), ("DEVIN_ETL__SYNC__SOURCE", "acme")])
                .unwrap();
        assert!(s.sources.is_empty());
        let per_source = s.per_source();
        assert_eq!(per_source.len(), 1);
        assert_eq!(per_source[0].sync.source, "acme");
        assert_eq!(per_source[0].api.base_url.as_str(), "https://api.devin.ai/");
        assert_eq!(per_source[0].api.token().unwrap().expose_secret(), "cog_single");
        assert_eq!(s.sync.source_concurrency, 4);
    }

    #[test]
    fn alerts_are_off_by_default_and_the_webhook_url_comes_from_the_environment() {
        let s = Settings::load_with_vars(None, &[]).unwrap();
        assert!(s.alerts.webhook_url.is_none());
        assert_eq!((s.alerts.failing_runs, s.alerts.check_interval), (3, Duration::from_secs(30)));
        let url = "https://hooks.slack.example/services/T0/B0/s3cr3t";
        let s = Settings::load_with_vars(None, &[("DEVIN_ETL__ALERTS__WEBHOOK_URL", url)]).unwrap();
        assert_eq!(s.alerts.webhook_url.as_ref().map(|u| u.expose_secret()), Some(url));
        assert!(!format!("{s:?}").contains("s3cr3t"));
        for bad in ["ftp://x.example/hook", "not a url", "mailto:ops@example.com"] {
            let err =
                Settings::load_with_vars(None, &[("DEVIN_ETL__ALERTS__WEBHOOK_URL", bad)]).unwrap_err().to_string();
            assert!(err.starts_with("alerts.webhook_url:") && !err.contains(bad), "{bad}: {err}");
        }
    }

    #[test]
    fn an_alerts_webhook_url_in_the_config_file_is_refused_naming_the_key_and_the_fix() {
        let file = TempConfig::new("[alerts]\nwebhook_url = \"https://hooks.example/s3cr3t\"\n");
        let err = file.load(&[]).unwrap_err().to_string();
        assert!(err.starts_with("alerts.webhook_url: the webhook URL is a secret"), "{err}");
        assert!(err.contains("DEVIN_ETL__ALERTS__WEBHOOK_URL") && err.contains("alerts.webhook_url_file"), "{err}");
        assert!(!err.contains("s3cr3t"), "{err}");
        // From a secret file it is fine.
        let secret = TempConfig::new("");
        let url_path = secret.0.join("webhook");
        std::fs::write(&url_path, "https://hooks.example/from-file\n").unwrap();
        let file = TempConfig::new(&format!("[alerts]\nwebhook_url_file = {:?}\n", url_path.display().to_string()));
        let s = file.load(&[]).unwrap();
        assert_eq!(s.alerts.webhook_url.as_ref().map(|u| u.expose_secret()), Some("https://hooks.example/from-file"));
    }

    #[test]
    fn enrichment_backs_off_after_2h_up_to_12h_by_default_and_can_be_turned_off() {
        let s = Settings::load_with_vars(None, &[]).unwrap();
        assert_eq!(s.sync.enrichment_backoff_after, Some(Duration::from_secs(2 * 3_600)));
        assert_eq!(s.sync.enrichment_max_interval, Duration::from_secs(12 * 3_600));
        let off = Settings::load_with_vars(None, &[("DEVIN_ETL__SYNC__ENRICHMENT_BACKOFF_AFTER", "off")]).unwrap();
        assert_eq!(off.sync.enrichment_backoff_after, None);
        let err = Settings::load_with_vars(None, &[("DEVIN_ETL__SYNC__ENRICHMENT_BACKOFF_AFTER", "soon")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sync.enrichment_backoff_after:") && err.contains("off"), "{err}");
        let err = Settings::load_with_vars(None, &[("DEVIN_ETL__SYNC__ENRICHMENT_MAX_INTERVAL", "0s")])
            .unwrap_err()
            .to_string();
        assert!(err.starts_with("sync.enrichment_max_interval:"), "{err}");
    }

    #[test]
    fn history_retention_is_forever_by_default_or_a_duration() {
        assert_eq!(Settings::load_with_vars(None, &[]).unwrap().history.retention, None);
        for keep in ["forever", "", " Forever "] {
            let s = Settings::load_with_vars(None, &[("DEVIN_ETL__HISTORY__RETENTION", keep)]).unwrap();
            assert_eq!(s.history.retention, None, "{keep:?}");
        }
        let s = Settings::load_with_vars(None, &[("DEVIN_ETL__HISTORY__RETENTION", "400d")]).unwrap();
        assert_eq!(s.history.retention, Some(Duration::from_secs(400 * 86_400)));
        for bad in ["soon", "0d", "400"] {
            let err =
                Settings::load_with_vars(None, &[("DEVIN_ETL__HISTORY__RETENTION", bad)]).unwrap_err().to_string();
            assert!(err.starts_with("history.retention:") && err.contains("forever"), "{bad}: {err}");
        }
    }
}
