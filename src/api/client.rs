//! HTTP client for `GET /v3/enterprise/sessions/insights`: bearer auth, one page per call, retries with
//! exponential backoff and full jitter (honouring `Retry-After`), optional pacing, and errors that name the
//! request (path and query — the token travels only in a header and is never printed).

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use chrono::DateTime;
use reqwest::StatusCode;
use reqwest::header::{AUTHORIZATION, DATE, HeaderMap, HeaderValue, RETRY_AFTER};
use secrecy::{ExposeSecret, SecretString};
use serde_json::value::RawValue;
use tokio::sync::Mutex;
use url::Url;

use super::models::PageEnvelope;
use crate::settings::ApiSettings;

use super::request::{INSIGHTS_PATH, ListQuery, join_path, with_query};
use crate::telemetry::metric;

/// A page larger than this is refused rather than buffered: 200 items never come near it.
const MAX_BODY_BYTES: usize = 256 * 1024 * 1024;
/// Shortest wait between attempts, so that `Retry-After: 0` or an unlucky jitter draw is no hot loop.
const MIN_RETRY_WAIT: Duration = Duration::from_millis(50);
const BODY_EXCERPT_CHARS: usize = 300;

/// One decoded page. Items stay raw JSON: the sync decodes them and stores the text verbatim.
#[derive(Debug)]
pub struct Page {
    pub items: Vec<Box<RawValue>>,
    pub end_cursor: Option<String>,
    pub has_next_page: bool,
    pub total: Option<i64>,
    /// The server's clock (HTTP `Date`), Unix seconds, when the response carried one.
    pub server_time: Option<i64>,
    /// When the response's headers arrived (the moment its `Date` describes), on our monotonic clock.
    pub received_at: std::time::Instant,
    /// `path?query` of the request, for messages.
    pub request: String,
}

/// Why a request failed. `is_retryable` decides whether the client tries again.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("GET {request} failed: HTTP {status}: {body}{hint}", hint = status_hint(*.status))]
    Status { request: String, status: u16, body: String, retry_after: Option<Duration> },
    #[error("GET {request} failed: {message}")]
    Transport { request: String, message: String },
    #[error("GET {request} returned a response that is not a valid page: {message}")]
    Decode { request: String, message: String, truncated: bool },
    #[error("{last} (gave up after {attempts} attempts in {elapsed_secs:.1}s; the next run will try again)")]
    RetriesExhausted { attempts: u32, elapsed_secs: f64, last: Box<ApiError> },
}

fn status_hint(status: u16) -> &'static str {
    match status {
        401 => " — the API token was rejected; check DEVIN_API_TOKEN (a service-user key, cog_…)",
        403 => " — the token lacks permission; the service user needs ViewAccountSessions",
        404 => " — check api.base_url",
        422 => " — the API rejected the query parameters",
        _ => "",
    }
}

impl ApiError {
    /// 429, 5xx, connection problems, timeouts and truncated bodies are worth another attempt.
    pub fn is_retryable(&self) -> bool {
        match self {
            ApiError::Status { status, .. } => *status == 429 || (500..600).contains(status),
            ApiError::Transport { .. } => true,
            ApiError::Decode { truncated, .. } => *truncated,
            ApiError::RetriesExhausted { .. } => false,
        }
    }

    /// The API error in `error`'s chain (the outermost, if several).
    pub fn in_chain(error: &anyhow::Error) -> Option<&ApiError> {
        error.chain().find_map(|cause| cause.downcast_ref::<ApiError>())
    }
}

/// Counters shared by every clone of a client; read by runs and metrics.
#[derive(Debug, Default)]
pub struct ApiStats {
    pub requests: AtomicU64,
    pub retries: AtomicU64,
}

/// Retry bounds, from `api.*` settings.
#[derive(Debug, Clone)]
struct RetryPolicy {
    max_retries: u32,
    initial: Duration,
    max_backoff: Duration,
    max_elapsed: Duration,
}

/// The insights API client. Cheap to clone; clones share the connection pool, stats and pacing.
#[derive(Clone)]
pub struct ApiClient {
    http: reqwest::Client,
    endpoint: Url,
    token: SecretString,
    /// `Bearer <token>`, marked sensitive so HTTP-level debug logging never prints it.
    authorization: HeaderValue,
    retry: RetryPolicy,
    pacer: Option<Arc<Pacer>>,
    stats: Arc<ApiStats>,
    /// The `source` label of this client's request and retry metrics, once [`ApiClient::for_source`] set it.
    source: Option<Arc<str>>,
}

impl std::fmt::Debug for ApiClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ApiClient").field("endpoint", &self.endpoint.as_str()).finish_non_exhaustive()
    }
}

impl ApiClient {
    /// Builds a client from settings; fails when no token is configured.
    pub fn new(settings: &ApiSettings) -> anyhow::Result<ApiClient> {
        let token = settings.token()?.clone();
        let mut authorization = HeaderValue::from_str(&format!("Bearer {}", token.expose_secret())).map_err(|_| {
            anyhow::anyhow!(
                "api.token: the token contains characters an HTTP header cannot carry; check DEVIN_API_TOKEN"
            )
        })?;
        authorization.set_sensitive(true);
        let http = reqwest::Client::builder()
            .user_agent(concat!("devin-etl/", env!("CARGO_PKG_VERSION")))
            .timeout(settings.timeout)
            .connect_timeout(settings.connect_timeout)
            .https_only(settings.base_url.scheme() == "https")
            // A redirect is not part of this API; following one could carry the token elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()?;
        Ok(ApiClient {
            http,
            endpoint: join_path(&settings.base_url, INSIGHTS_PATH),
            token,
            authorization,
            retry: RetryPolicy {
                max_retries: settings.max_retries,
                initial: settings.retry_initial_backoff,
                max_backoff: settings.retry_max_backoff,
                max_elapsed: settings.retry_max_elapsed,
            },
            pacer: settings.max_requests_per_second.map(|rps| Arc::new(Pacer::new(rps))),
            stats: Arc::new(ApiStats::default()),
            source: None,
        })
    }

    /// This client, with its request and retry metrics labelled `source` (one client per source).
    pub fn for_source(mut self, source: &str) -> ApiClient {
        self.source = Some(Arc::from(source));
        self
    }

    /// Labels of this client's metrics: `source` when set, then `extra`.
    fn metric_labels(&self, extra: &[(&'static str, String)]) -> Vec<metrics::Label> {
        let source = self.source.as_ref().map(|s| metrics::Label::new("source", s.to_string()));
        source.into_iter().chain(extra.iter().map(|(k, v)| metrics::Label::new(*k, v.clone()))).collect()
    }

    /// Request and retry counters of this client and its clones.
    pub fn stats(&self) -> &Arc<ApiStats> {
        &self.stats
    }

    /// Fetches one page, retrying what is worth retrying.
    #[tracing::instrument(level = "debug", skip_all, fields(after = query.after.as_deref()))]
    pub async fn list_page(&self, query: &ListQuery) -> Result<Page, ApiError> {
        let url = self.url_for(query);
        let request = describe(&url);
        let started = Instant::now();
        let mut attempt: u32 = 0;
        loop {
            attempt += 1;
            let error = match self.attempt(&url, &request).await {
                Ok(page) => return Ok(page),
                Err(e) => e,
            };
            let elapsed = started.elapsed();
            if !error.is_retryable() {
                return Err(error);
            }
            let wait = self.retry_wait(attempt, &error);
            if attempt > self.retry.max_retries || elapsed + wait > self.retry.max_elapsed {
                return Err(ApiError::RetriesExhausted {
                    attempts: attempt,
                    elapsed_secs: elapsed.as_secs_f64(),
                    last: Box::new(error),
                });
            }
            self.stats.retries.fetch_add(1, Ordering::Relaxed);
            metrics::counter!(metric::API_RETRIES, self.metric_labels(&[])).increment(1);
            tracing::warn!(%error, attempt, wait_ms = wait.as_millis() as u64, "retrying request");
            tokio::time::sleep(wait).await;
        }
    }

    fn url_for(&self, q: &ListQuery) -> Url {
        with_query(&self.endpoint, q)
    }

    async fn attempt(&self, url: &Url, request: &str) -> Result<Page, ApiError> {
        if let Some(pacer) = &self.pacer {
            pacer.wait().await;
        }
        self.stats.requests.fetch_add(1, Ordering::Relaxed);
        let transport =
            |e: reqwest::Error| ApiError::Transport { request: request.to_owned(), message: describe_reqwest(e) };
        let response = self
            .http
            .get(url.clone())
            .header(AUTHORIZATION, self.authorization.clone())
            .send()
            .await
            .inspect_err(|_| {
                metrics::counter!(metric::API_REQUESTS, self.metric_labels(&[("status", "error".to_owned())]))
                    .increment(1)
            })
            .map_err(transport)?;
        let received_at = std::time::Instant::now();
        let status = response.status();
        metrics::counter!(metric::API_REQUESTS, self.metric_labels(&[("status", status.as_str().to_owned())]))
            .increment(1);
        let headers = response.headers().clone();
        let server_time = server_time(&headers);
        let announced_len = response.content_length();
        let body = read_body(response).await.map_err(transport)?;
        if status != StatusCode::OK {
            return Err(ApiError::Status {
                request: request.to_owned(),
                status: status.as_u16(),
                body: self.excerpt(&body),
                retry_after: retry_after(&headers, server_time),
            });
        }
        let envelope: PageEnvelope = serde_json::from_slice(&body).map_err(|e| ApiError::Decode {
            request: request.to_owned(),
            // JSON that ends early was cut in transit, unless the body is as long as the server announced: then
            // the server sent invalid JSON, and asking again would only repeat it.
            truncated: e.is_eof() && announced_len != Some(body.len() as u64),
            message: format!("{e}; body starts with: {}", self.excerpt(&body)),
        })?;
        if envelope.has_next_page && envelope.end_cursor.as_deref().is_none_or(str::is_empty) {
            return Err(ApiError::Decode {
                request: request.to_owned(),
                truncated: false,
                message: "has_next_page is true but end_cursor is missing".to_owned(),
            });
        }
        Ok(Page {
            items: envelope.items,
            end_cursor: envelope.end_cursor,
            has_next_page: envelope.has_next_page,
            total: envelope.total,
            server_time,
            received_at,
            request: request.to_owned(),
        })
    }

    /// Exponential backoff with full jitter; a server's `Retry-After` wins when it asks for longer.
    fn retry_wait(&self, attempt: u32, error: &ApiError) -> Duration {
        let cap = self
            .retry
            .initial
            .saturating_mul(1u32.checked_shl(attempt.saturating_sub(1).min(20)).unwrap_or(u32::MAX))
            .min(self.retry.max_backoff);
        // Full jitter: uniform in [0, cap). Not cryptographic; it only spreads many clients' retries apart.
        let jittered = cap.mul_f64(fastrand::f64());
        let asked = match error {
            ApiError::Status { retry_after: Some(d), .. } => (*d).min(self.retry.max_backoff),
            _ => Duration::ZERO,
        };
        jittered.max(asked).max(MIN_RETRY_WAIT)
    }

    /// A short, printable excerpt of a body, with the token masked should a server echo it.
    fn excerpt(&self, body: &[u8]) -> String {
        let text = String::from_utf8_lossy(body);
        let mut out: String =
            text.chars().take(BODY_EXCERPT_CHARS).map(|c| if c.is_control() { ' ' } else { c }).collect();
        if text.chars().count() > BODY_EXCERPT_CHARS {
            out.push('…');
        }
        let token = self.token.expose_secret();
        if !token.is_empty() {
            out = out.replace(token, "[REDACTED]");
        }
        out
    }
}

/// Appends `path` to the base URL's own path (a base with a path prefix, e.g. a proxy, keeps it).
/// The list request for `q` at `endpoint`. Array filters go out as repeated keys.
/// `path?query` of a URL: what error messages show of a request.
fn describe(url: &Url) -> String {
    match url.query() {
        Some(q) => format!("{}?{}", url.path(), q),
        None => url.path().to_owned(),
    }
}

fn describe_reqwest(e: reqwest::Error) -> String {
    // reqwest's Display includes the URL; we name the request ourselves, so keep only the causes.
    let e = e.without_url();
    let mut message = if e.is_timeout() { "timed out".to_owned() } else { e.to_string() };
    let mut source = std::error::Error::source(&e);
    while let Some(s) = source {
        message.push_str(": ");
        message.push_str(&s.to_string());
        source = s.source();
    }
    message
}

async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, reqwest::Error> {
    let mut body = Vec::with_capacity(response.content_length().unwrap_or(0).min(MAX_BODY_BYTES as u64) as usize);
    while let Some(chunk) = response.chunk().await? {
        if body.len() + chunk.len() > MAX_BODY_BYTES {
            break; // decoding the cut body fails with a clear message; buffering more could exhaust memory
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// The server's clock from the `Date` header, as Unix seconds.
pub fn server_time(headers: &HeaderMap) -> Option<i64> {
    let text = headers.get(DATE)?.to_str().ok()?;
    DateTime::parse_from_rfc2822(text).ok().map(|t| t.timestamp())
}

/// `Retry-After` as seconds or as an HTTP date (measured against the server's own `Date` when given).
fn retry_after(headers: &HeaderMap, server_now: Option<i64>) -> Option<Duration> {
    let text = headers.get(RETRY_AFTER)?.to_str().ok()?.trim();
    if let Ok(secs) = text.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let at = DateTime::parse_from_rfc2822(text).ok()?.timestamp();
    let now = server_now.unwrap_or_else(|| chrono::Utc::now().timestamp());
    Some(Duration::from_secs(at.saturating_sub(now).max(0) as u64))
}

/// Spaces requests evenly at a fixed rate across every clone of the client.
struct Pacer {
    interval: Duration,
    next: Mutex<Option<tokio::time::Instant>>,
}

impl Pacer {
    fn new(per_second: f64) -> Pacer {
        Pacer { interval: Duration::from_secs_f64(1.0 / per_second), next: Mutex::new(None) }
    }

    async fn wait(&self) {
        let at = {
            let mut next = self.next.lock().await;
            let now = tokio::time::Instant::now();
            let at = next.map_or(now, |n| n.max(now));
            *next = Some(at + self.interval);
            at
        };
        tokio::time::sleep_until(at).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn retry_after_reads_seconds_and_dates_against_server_time() {
        let mut h = HeaderMap::new();
        h.insert(RETRY_AFTER, HeaderValue::from_static("7"));
        assert_eq!(retry_after(&h, None), Some(Duration::from_secs(7)));
        h.insert(RETRY_AFTER, HeaderValue::from_static("Sun, 29 Nov 2026 04:08:20 GMT"));
        h.insert(DATE, HeaderValue::from_static("Sun, 29 Nov 2026 04:08:18 GMT"));
        let now = server_time(&h);
        assert_eq!(retry_after(&h, now), Some(Duration::from_secs(2)));
    }

    #[test]
    fn only_transient_errors_are_retryable() {
        let status = |status| ApiError::Status { request: "/x".into(), status, body: String::new(), retry_after: None };
        assert!(status(429).is_retryable());
        assert!(status(503).is_retryable());
        assert!(!status(400).is_retryable());
        assert!(!status(401).is_retryable());
        assert!(!status(422).is_retryable());
    }
}
