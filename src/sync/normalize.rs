//! Turns API items into warehouse rows: decode and check each item, drop repeats, and stage rows for every table.

use std::collections::{HashMap, HashSet};

use serde_json::value::RawValue;

use crate::api::models::SessionInsights;
use crate::drift::{self, Drift};
use crate::store::{
    ActionItemRow, Batch, IssueRow, NoteUsageRow, PromptFeedbackRow, PullRequestRow, SessionRow, TimelineEventRow,
};

/// Largest Unix time we accept (9999-12-31). Larger values are almost surely milliseconds.
const MAX_UNIX_SECONDS: i64 = 253_402_300_799;

/// One item of a page, decoded, with its original JSON kept for `sessions.raw` and what in it the models do not
/// know (usually nothing).
#[derive(Debug)]
pub struct DecodedItem {
    pub session: SessionInsights,
    pub raw: String,
    pub drift: Vec<Drift>,
}

/// An item that breaks the spec (missing required field, wrong type, impossible value).
#[derive(Debug, thiserror::Error)]
#[error("GET {request} returned an invalid item #{index}{id}: {problem}", id = session_id.as_deref().map(|s| format!(" (session_id {s})")).unwrap_or_default())]
pub struct InvalidItem {
    pub request: String,
    pub index: usize,
    pub session_id: Option<String>,
    pub problem: String,
}

impl InvalidItem {
    /// The invalid item in `error`'s chain, if it is why the error happened.
    pub fn in_chain(error: &anyhow::Error) -> Option<&InvalidItem> {
        error.chain().find_map(|cause| cause.downcast_ref::<InvalidItem>())
    }
}

/// Decodes every item of a page; the first invalid one fails the whole page, so nothing is half-stored.
pub fn decode_page(items: Vec<Box<RawValue>>, request: &str) -> Result<Vec<DecodedItem>, InvalidItem> {
    items
        .into_iter()
        .enumerate()
        .map(|(index, raw)| {
            let invalid = |session_id: Option<String>, problem: String| InvalidItem {
                request: request.to_owned(),
                index,
                session_id,
                problem,
            };
            let session: SessionInsights = serde_json::from_str(raw.get()).map_err(|e| {
                let id = serde_json::from_str::<IdOnly>(raw.get()).ok().map(|i| i.session_id);
                invalid(id, e.to_string())
            })?;
            check(&session).map_err(|p| invalid(Some(session.session_id.clone()), p))?;
            let drift = drift::inspect(raw.get());
            Ok(DecodedItem { raw: jsonb_safe(raw.get()), session, drift })
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct IdOnly {
    session_id: String,
}

/// Checks what serde cannot: values the warehouse cannot hold or that are surely wrong.
fn check(s: &SessionInsights) -> Result<(), String> {
    if s.session_id.trim().is_empty() {
        return Err("session_id is empty".to_owned());
    }
    for (field, value) in [("created_at", s.created_at), ("updated_at", s.updated_at)] {
        if value < 0 {
            return Err(format!("{field} {value} is negative"));
        }
        if value > MAX_UNIX_SECONDS {
            return Err(format!(
                "{field} {value} is beyond year 9999 as Unix seconds (milliseconds? the API is documented to send seconds)"
            ));
        }
    }
    Ok(())
}

/// PostgreSQL's jsonb rejects the escape `\u0000`; replace NUL characters in such (rare) items.
fn jsonb_safe(raw: &str) -> String {
    if !raw.contains("\\u0000") {
        return raw.to_owned();
    }
    fn scrub(v: &mut serde_json::Value) {
        match v {
            serde_json::Value::String(s) => *s = s.replace('\0', "\u{FFFD}"),
            serde_json::Value::Array(a) => a.iter_mut().for_each(scrub),
            serde_json::Value::Object(o) => o.values_mut().for_each(scrub),
            _ => {}
        }
    }
    match serde_json::from_str::<serde_json::Value>(raw) {
        Ok(mut v) => {
            scrub(&mut v);
            v.to_string()
        }
        Err(_) => raw.to_owned(),
    }
}

/// Keeps one copy per session (the API may repeat an item across pages): the newest `updated_at`,
/// the later one on a tie. Returns how many were dropped.
pub fn dedupe(items: &mut Vec<DecodedItem>) -> usize {
    let mut newest: HashMap<&str, usize> = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        let id = item.session.session_id.as_str();
        match newest.get(id) {
            Some(&j) if items[j].session.updated_at > item.session.updated_at => {}
            _ => {
                newest.insert(id, i);
            }
        }
    }
    let keep: HashSet<usize> = newest.into_values().collect();
    let before = items.len();
    let mut index = 0;
    items.retain(|_| {
        let kept = keep.contains(&index);
        index += 1;
        kept
    });
    before - items.len()
}

/// Adds the rows of one item to every table of the batch.
pub fn stage(batch: &mut Batch, source: &str, item: &DecodedItem) {
    let s = &item.session;
    let id = s.session_id.as_str();
    let analysis = s.analysis.as_ref();
    let classification = analysis.and_then(|a| a.classification.as_ref());
    let prompt = analysis.and_then(|a| a.suggested_prompt.as_ref());
    let structured_output = s.structured_output.as_ref().map(|o| serde_json::Value::Object(o.clone()).to_string());
    batch.push_session(&SessionRow {
        session_id: id,
        org_id: &s.org_id,
        user_id: s.user_id.as_deref(),
        service_user_id: s.service_user_id.as_deref(),
        title: s.title.as_deref(),
        url: &s.url,
        status: &s.status,
        status_detail: s.status_detail.as_deref(),
        origin: s.origin.as_deref(),
        category: s.category.as_deref(),
        subcategory: s.subcategory.as_deref(),
        session_size: &s.session_size,
        acus_consumed: s.acus_consumed,
        num_user_messages: s.num_user_messages,
        num_devin_messages: s.num_devin_messages,
        is_archived: s.is_archived,
        playbook_id: s.playbook_id.as_deref(),
        parent_session_id: s.parent_session_id.as_deref(),
        tags: &s.tags,
        structured_output: structured_output.as_deref(),
        created_at: s.created_at,
        updated_at: s.updated_at,
        has_analysis: analysis.is_some(),
        classification_category: classification.map(|c| c.category.as_str()),
        classification_confidence: classification.map(|c| c.confidence),
        programming_languages: classification.map(|c| c.programming_languages.as_slice()),
        tools_and_frameworks: classification.map(|c| c.tools_and_frameworks.as_slice()),
        suggested_prompt_original: prompt.map(|p| p.original_prompt.as_str()),
        suggested_prompt: prompt.map(|p| p.suggested_prompt.as_str()),
        raw: &item.raw,
        source,
    });

    // Keys of these tables are sets; a repeated value in the API's array is stored once.
    let mut seen = HashSet::new();
    for pr in &s.pull_requests {
        if seen.insert(pr.pr_url.as_str()) {
            let (repo, pr_number) = parse_pr_url(&pr.pr_url);
            batch.push_pull_request(&PullRequestRow {
                session_id: id,
                pr_url: &pr.pr_url,
                pr_state: pr.pr_state.as_deref(),
                repo: repo.as_deref(),
                pr_number,
            });
        }
    }
    seen.clear();
    for tag in &s.tags {
        if seen.insert(tag.as_str()) {
            batch.push_tag(id, tag);
        }
    }
    seen.clear();
    for child in s.child_session_ids.iter().flatten() {
        if seen.insert(child.as_str()) {
            batch.push_child(id, child);
        }
    }

    let Some(a) = analysis else { return };
    for (position, i) in positions(&a.issues) {
        batch.push_issue(&IssueRow {
            session_id: id,
            position,
            issue_id: &i.id,
            issue: &i.issue,
            impact: &i.impact,
            label: &i.label,
        });
    }
    for (position, item) in positions(&a.action_items) {
        batch.push_action_item(&ActionItemRow {
            session_id: id,
            position,
            action_item: &item.action_item,
            issue_id: item.issue_id.as_deref(),
            kind: &item.kind,
        });
    }
    for (position, e) in positions(&a.timeline) {
        batch.push_timeline_event(&TimelineEventRow {
            session_id: id,
            position,
            title: &e.title,
            description: &e.description,
            color: &e.color,
            issue_id: e.issue_id.as_deref(),
        });
    }
    if let Some(usage) = &a.note_usage {
        for (kind, list) in [("good", &usage.good_usages), ("bad", &usage.bad_usages)] {
            for (position, n) in positions(list) {
                batch.push_note_usage(&NoteUsageRow {
                    session_id: id,
                    kind,
                    position,
                    note_id: &n.note_id,
                    message: &n.message,
                    reason: &n.reason,
                });
            }
        }
    }
    for (position, f) in positions(prompt.map(|p| p.feedback_items.as_slice()).unwrap_or_default()) {
        batch.push_prompt_feedback(&PromptFeedbackRow {
            session_id: id,
            position,
            summary: &f.summary,
            excerpt: &f.excerpt,
            details: &f.details,
            issue_id: f.issue_id.as_deref(),
        });
    }
}

/// Items with their index as the `position` column (arrays longer than i32::MAX cannot come in one page).
fn positions<T>(items: &[T]) -> impl Iterator<Item = (i32, &T)> {
    items.iter().enumerate().map(|(i, t)| (i32::try_from(i).unwrap_or(i32::MAX), t))
}

/// `(repo, number)` from a pull/merge request URL: GitHub `host/owner/name/pull/N` and GitLab
/// `host/group/…/project/-/merge_requests/N`. Other shapes give `(None, None)`.
pub fn parse_pr_url(pr_url: &str) -> (Option<String>, Option<i32>) {
    let Ok(url) = url::Url::parse(pr_url) else { return (None, None) };
    let host = url.host_str().unwrap_or_default().to_ascii_lowercase();
    let segments: Vec<&str> = url.path_segments().map(|s| s.filter(|p| !p.is_empty()).collect()).unwrap_or_default();
    if let Some(mr) = segments.windows(2).position(|w| w == ["-", "merge_requests"]) {
        let number = segments.get(mr + 2).and_then(|n| n.parse().ok());
        if mr >= 2 {
            return (Some(segments[..mr].join("/")), number);
        }
        return (None, number);
    }
    if host.contains("github") && segments.len() >= 4 && segments[2] == "pull" {
        return (Some(format!("{}/{}", segments[0], segments[1])), segments[3].parse().ok());
    }
    (None, None)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pr_urls_parse_for_github_and_gitlab_only() {
        assert_eq!(parse_pr_url("https://github.com/acme/widgets/pull/42"), (Some("acme/widgets".into()), Some(42)));
        assert_eq!(
            parse_pr_url("https://github.com/acme/widgets/pull/42/files"),
            (Some("acme/widgets".into()), Some(42))
        );
        assert_eq!(
            parse_pr_url("https://gitlab.com/group/sub/project/-/merge_requests/7"),
            (Some("group/sub/project".into()), Some(7))
        );
        assert_eq!(parse_pr_url("https://bitbucket.org/a/b/pull-requests/3"), (None, None));
        assert_eq!(parse_pr_url("not a url"), (None, None));
        assert_eq!(parse_pr_url("https://github.com/a/b/pull/99999999999"), (Some("a/b".into()), None));
    }

    #[test]
    fn nul_escapes_are_scrubbed_for_jsonb() {
        assert_eq!(jsonb_safe(r#"{"a":"x\u0000y"}"#), "{\"a\":\"x\u{FFFD}y\"}");
        assert_eq!(jsonb_safe(r#"{"a":1}"#), r#"{"a":1}"#);
    }
}
