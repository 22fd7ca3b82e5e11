//! Delivery: claim one due alert (a lease, committed at once), POST it without holding a transaction, record the
//! outcome. At least once: a process that dies between the receiver's answer and the record sends it again once
//! its lease has expired. A failure backs the alert off exponentially and ends the pass (the receiver is likely
//! down; the others wait for the next pass).

use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};

use super::payload::{self, Scrubber, State};
use crate::settings::AlertSettings;
use crate::store::Store;
use crate::telemetry::metric;

/// The receiver's answer excerpt kept in `alerts.last_error`.
const ANSWER_CHARS: usize = 200;

/// What one delivery pass did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Notifications the receiver accepted.
    pub sent: u32,
    /// Attempts that failed (at most one: a failure ends the pass).
    pub failed: u32,
}

/// The receiver: a URL (secret) and an HTTP client bounded by `alerts.timeout`.
#[derive(Clone)]
pub struct Webhook {
    client: reqwest::Client,
    url: SecretString,
    timeout: Duration,
}

impl Webhook {
    pub fn new(url: SecretString, timeout: Duration) -> anyhow::Result<Webhook> {
        let client = reqwest::Client::builder()
            .user_agent(concat!("devin-etl/", env!("CARGO_PKG_VERSION")))
            .timeout(timeout)
            .connect_timeout(timeout)
            // Webhook receivers answer where they are; a redirect could carry the alert elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            .build()
            .map_err(|e| anyhow::anyhow!("alerts: cannot build the webhook's HTTP client: {}", e.without_url()))?;
        Ok(Webhook { client, url, timeout })
    }

    /// POSTs `body`; `Err` says why it failed, never showing the URL.
    pub async fn post(&self, body: &serde_json::Value) -> Result<(), String> {
        let response = self.client.post(self.url.expose_secret()).json(body).send().await;
        let response = response.map_err(|e| self.describe(e))?;
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        let answer = response.text().await.unwrap_or_default();
        let answer: String = answer.chars().take(ANSWER_CHARS).collect();
        Err(self.hide_url(&format!("the receiver answered HTTP {status}: {}", answer.trim())))
    }

    fn describe(&self, e: reqwest::Error) -> String {
        let e = e.without_url();
        let mut message = if e.is_timeout() {
            format!("no answer within alerts.timeout ({})", crate::human::duration(self.timeout))
        } else {
            e.to_string()
        };
        let mut source = std::error::Error::source(&e);
        while let Some(s) = source {
            message.push_str(": ");
            message.push_str(&s.to_string());
            source = s.source();
        }
        self.hide_url(&message)
    }

    /// The message with the URL (should a cause carry it) replaced.
    fn hide_url(&self, message: &str) -> String {
        message.replace(self.url.expose_secret(), "[alerts.webhook_url]")
    }
}

/// Never shows the URL.
impl std::fmt::Debug for Webhook {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Webhook").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

/// Delivers due alerts one by one until none is due or one fails.
pub async fn deliver(
    store: &Store,
    webhook: &Webhook,
    settings: &AlertSettings,
    scrubber: &Scrubber,
) -> anyhow::Result<Delivery> {
    let mut done = Delivery::default();
    // Long enough to send and record; a replica that dies meanwhile leaves it to another after this.
    let lease = settings.timeout * 2 + Duration::from_secs(5);
    while let Some(alert) = store.claim_alert(lease).await? {
        // Firing first: a resolved incident whose firing was never delivered sends both, in order.
        let state = if alert.fired_sent_at.is_none() { State::Firing } else { State::Resolved };
        let body = payload::body(&alert, state, scrubber);
        match webhook.post(&body).await {
            Ok(()) => {
                store.alert_sent(alert.alert_id, state == State::Resolved).await?;
                metrics::counter!(metric::ALERTS_SENT, "kind" => alert.kind.clone(), "state" => state.as_str())
                    .increment(1);
                tracing::info!(alert = %alert.alert_key, state = state.as_str(), "alert delivered");
                done.sent += 1;
            }
            Err(error) => {
                let wait = backoff(settings, alert.attempts);
                store.alert_failed(alert.alert_id, &error, wait).await?;
                metrics::counter!(metric::ALERT_DELIVERY_FAILURES).increment(1);
                tracing::warn!(
                    alert = %alert.alert_key,
                    state = state.as_str(),
                    attempts = alert.attempts,
                    retry_in = %crate::human::duration(wait),
                    %error,
                    "alert delivery failed; it will be retried"
                );
                done.failed += 1;
                break;
            }
        }
    }
    Ok(done)
}

/// The wait after the `attempts`-th attempt failed: `retry_initial_backoff` doubling, at most `retry_max_backoff`.
pub fn backoff(settings: &AlertSettings, attempts: i32) -> Duration {
    let doublings = attempts.saturating_sub(1).clamp(0, 30) as u32;
    settings.retry_initial_backoff.saturating_mul(1 << doublings).min(settings.retry_max_backoff)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_doubles_up_to_the_cap() {
        let mut settings = crate::settings::Settings::load_with_env(None, |_| None).unwrap().alerts;
        settings.retry_initial_backoff = Duration::from_secs(5);
        settings.retry_max_backoff = Duration::from_secs(600);
        let waits: Vec<u64> = [1, 2, 3, 4, 8, 9, 1000].iter().map(|a| backoff(&settings, *a).as_secs()).collect();
        assert_eq!(waits, [5, 10, 20, 40, 600, 600, 600]);
    }
}
