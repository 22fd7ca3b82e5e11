//! What the receiver gets: one JSON body that Slack incoming webhooks accept (`text`, one line) and generic
//! receivers read (`alert`, structured), with every configured secret scrubbed out.

use secrecy::ExposeSecret as _;
use serde_json::{Value, json};

use crate::settings::Settings;
use crate::store::alerts::AlertRow;

/// Which notification of an incident is sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum State {
    Firing,
    Resolved,
}

impl State {
    pub fn as_str(self) -> &'static str {
        match self {
            State::Firing => "firing",
            State::Resolved => "resolved",
        }
    }
}

/// The body of the `state` notification of `alert`, scrubbed by `scrubber`.
pub fn body(alert: &AlertRow, state: State, scrubber: &Scrubber) -> Value {
    let source = alert.source.as_deref().unwrap_or("-");
    let text = format!("[devin-etl] {} {} {source}: {}", state.as_str().to_uppercase(), alert.kind, alert.summary);
    let body = json!({
        "text": text,
        "alert": {
            "key": alert.alert_key,
            "state": state.as_str(),
            "kind": alert.kind,
            "source": alert.source,
            "summary": alert.summary,
            "details": alert.details,
            "opened_at": alert.opened_at,
            // A one-shot event's row is closed when raised; to the receiver it is simply an event that fired.
            "resolved_at": if state == State::Resolved { json!(alert.resolved_at) } else { Value::Null },
            "alert_id": alert.alert_id,
        }
    });
    scrubber.value(body)
}

/// Replaces every configured secret ([`Scrubber::of_config`]) wherever it appears in text: defence in depth, since
/// nothing an alert or the status page is built from should ever hold one.
#[derive(Clone, Default)]
pub struct Scrubber {
    secrets: Vec<String>,
}

/// What a scrubbed secret becomes.
pub const REDACTED: &str = "[REDACTED]";

/// Shorter values are not treated as secrets: scrubbing them would mangle ordinary words (real tokens are long).
const MIN_SECRET_CHARS: usize = 6;

impl Scrubber {
    pub fn new(secrets: impl IntoIterator<Item = String>) -> Scrubber {
        let mut secrets: Vec<String> = secrets.into_iter().filter(|s| s.chars().count() >= MIN_SECRET_CHARS).collect();
        // Longest first, so a token that contains another is replaced whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
        secrets.dedup();
        Scrubber { secrets }
    }

    /// The scrubber of the sources `sources` (from [`Settings::per_source`]): each source's API token, the alerts'
    /// webhook URL, the database URL and its password (as written and percent-decoded).
    pub fn of_config(sources: &[Settings]) -> Scrubber {
        let mut secrets: Vec<String> = Vec::new();
        for settings in sources {
            secrets.extend(settings.api.token.as_ref().map(|t| t.expose_secret().to_owned()));
            secrets.extend(settings.alerts.webhook_url.as_ref().map(|u| u.expose_secret().to_owned()));
            let database = settings.database.url.expose_secret();
            secrets.push(database.to_owned());
            if let Some(password) = url::Url::parse(database).ok().and_then(|u| u.password().map(str::to_owned)) {
                let decoded = percent_decoded(&password);
                secrets.extend([password, decoded]);
            }
        }
        Scrubber::new(secrets)
    }

    pub fn text(&self, text: &str) -> String {
        let mut text = text.to_owned();
        for secret in &self.secrets {
            if text.contains(secret.as_str()) {
                text = text.replace(secret.as_str(), REDACTED);
            }
        }
        text
    }

    /// `value` with every string (and object key) scrubbed.
    pub fn value(&self, value: Value) -> Value {
        match value {
            Value::String(s) => Value::String(self.text(&s)),
            Value::Array(items) => Value::Array(items.into_iter().map(|v| self.value(v)).collect()),
            Value::Object(map) => Value::Object(map.into_iter().map(|(k, v)| (self.text(&k), self.value(v))).collect()),
            other => other,
        }
    }
}

/// Never shows the secrets.
impl std::fmt::Debug for Scrubber {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Scrubber").field("secrets", &self.secrets.len()).finish()
    }
}

/// `text` with its `%XX` escapes decoded (a URL's password as the server knows it).
fn percent_decoded(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes.get(i + 1..i + 3).and_then(|h| std::str::from_utf8(h).ok());
        match (bytes[i], hex.and_then(|h| u8::from_str_radix(h, 16).ok())) {
            (b'%', Some(byte)) => {
                out.push(byte);
                i += 3;
            }
            (byte, _) => {
                out.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_escapes_are_decoded() {
        assert_eq!(percent_decoded("p%40ss%2Fw%3Ard"), "p@ss/w:rd");
        assert_eq!(percent_decoded("plain"), "plain");
        assert_eq!(percent_decoded("100%"), "100%");
        assert_eq!(percent_decoded("%zz%4"), "%zz%4");
    }

    fn alert() -> AlertRow {
        AlertRow {
            alert_id: 7,
            alert_key: "source_failing/acme".into(),
            kind: "source_failing".into(),
            source: Some("acme".into()),
            one_shot: false,
            summary: "the last 3 runs failed (api): token cog_SECRET_acme rejected".into(),
            details: json!({"error": "cog_SECRET_acme", "nested": [{"cog_SECRET_acme": "cog_SECRET_globex!"}]}),
            opened_at: "2026-12-01T10:00:00Z".parse().unwrap(),
            resolved_at: Some("2026-12-01T11:00:00Z".parse().unwrap()),
            fired_sent_at: None,
            resolved_sent_at: None,
            attempts: 1,
            last_error: None,
        }
    }

    #[test]
    fn the_body_has_a_slack_line_and_the_structured_alert_without_any_token() {
        let scrubber = Scrubber::new(["cog_SECRET_acme".to_owned(), "cog_SECRET_globex".to_owned(), "t".to_owned()]);
        let firing = body(&alert(), State::Firing, &scrubber);
        let text = firing.to_string();
        assert!(!text.contains("cog_SECRET"), "{text}");
        assert_eq!(
            firing["text"],
            "[devin-etl] FIRING source_failing acme: the last 3 runs failed (api): token [REDACTED] rejected"
        );
        assert_eq!(firing["alert"]["key"], "source_failing/acme");
        assert_eq!(firing["alert"]["state"], "firing");
        assert_eq!(firing["alert"]["resolved_at"], Value::Null);
        assert_eq!(firing["alert"]["details"]["nested"][0]["[REDACTED]"], "[REDACTED]!");
        let resolved = body(&alert(), State::Resolved, &scrubber);
        assert!(resolved["text"].as_str().unwrap().starts_with("[devin-etl] RESOLVED source_failing acme: "));
        assert_eq!(resolved["alert"]["resolved_at"], "2026-12-01T11:00:00Z");
        // Too short to be a token: left alone.
        assert!(text.contains("the last"), "{text}");
    }
}
