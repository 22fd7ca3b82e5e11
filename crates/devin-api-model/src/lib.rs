//! Serde models of the Devin v3 API's `GET /v3/enterprise/sessions/insights` response schemas
//! (`SessionInsightsResponse` and the schemas it uses), shared by the service's decoder and the simulator.
//!
//! Forward compatible by construction: every enum of the spec is a `String`, so a value the spec does not
//! list yet decodes fine, and unknown fields are ignored here (the whole item is kept verbatim in `raw`).
//! Required fields are not `Option`: an item without one fails to decode, with serde naming the field.
//! Numbers are read leniently ([`lenient`]): a number sent as a numeric string, or a whole number sent as `3.0`,
//! still loads (the service reports it as schema drift), since that is how APIs most often change a number's type.

use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

pub mod lenient;
pub mod shape;

/// One page of `GET /v3/enterprise/sessions/insights`, with each item still as raw JSON text.
///
/// Items are decoded one by one (see [`SessionInsights`]) so the original text of each can be stored.
#[derive(Debug, Deserialize)]
pub struct PageEnvelope {
    pub items: Vec<Box<RawValue>>,
    #[serde(default)]
    pub end_cursor: Option<String>,
    #[serde(default)]
    pub has_next_page: bool,
    #[serde(default)]
    pub total: Option<i64>,
}

/// `SessionInsightsResponse`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SessionInsights {
    pub session_id: String,
    pub org_id: String,
    #[serde(default)]
    pub user_id: Option<String>,
    #[serde(default)]
    pub service_user_id: Option<String>,
    #[serde(default)]
    pub title: Option<String>,
    pub url: String,
    /// Spec enum: new, claimed, running, exit, error, suspended, resuming.
    pub status: String,
    #[serde(default)]
    pub status_detail: Option<String>,
    #[serde(default)]
    pub origin: Option<String>,
    #[serde(default)]
    pub category: Option<String>,
    #[serde(default)]
    pub subcategory: Option<String>,
    /// Spec enum: xs, s, m, l, xl.
    pub session_size: String,
    #[serde(deserialize_with = "lenient::number")]
    pub acus_consumed: f64,
    #[serde(deserialize_with = "lenient::integer")]
    pub num_user_messages: i64,
    #[serde(deserialize_with = "lenient::integer")]
    pub num_devin_messages: i64,
    #[serde(default)]
    pub is_archived: bool,
    #[serde(default)]
    pub playbook_id: Option<String>,
    #[serde(default)]
    pub parent_session_id: Option<String>,
    #[serde(default)]
    pub child_session_ids: Option<Vec<String>>,
    pub tags: Vec<String>,
    #[serde(default)]
    pub structured_output: Option<serde_json::Map<String, serde_json::Value>>,
    pub pull_requests: Vec<PullRequest>,
    /// Unix seconds.
    pub created_at: i64,
    /// Unix seconds.
    pub updated_at: i64,
    #[serde(default)]
    pub analysis: Option<Analysis>,
}

/// `SessionPullRequest`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PullRequest {
    pub pr_url: String,
    /// Required by the spec but nullable.
    pub pr_state: Option<String>,
}

/// `SessionInsightsAnalysis`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Analysis {
    #[serde(default)]
    pub action_items: Vec<ActionItem>,
    #[serde(default)]
    pub classification: Option<Classification>,
    #[serde(default)]
    pub issues: Vec<Issue>,
    #[serde(default)]
    pub note_usage: Option<NoteUsage>,
    #[serde(default)]
    pub suggested_prompt: Option<SuggestedPrompt>,
    #[serde(default)]
    pub timeline: Vec<TimelineEvent>,
}

/// `SessionInsightsActionItem`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ActionItem {
    pub action_item: String,
    #[serde(default)]
    pub issue_id: Option<String>,
    /// Spec enum: machine_setup, repo_config, knowledge, prompt_improvement, other (the default).
    #[serde(default = "default_action_item_type", rename = "type")]
    pub kind: String,
}

fn default_action_item_type() -> String {
    "other".to_owned()
}

/// `SessionInsightsClassification`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Classification {
    pub category: String,
    #[serde(deserialize_with = "lenient::number")]
    pub confidence: f64,
    #[serde(default)]
    pub programming_languages: Vec<String>,
    #[serde(default)]
    pub tools_and_frameworks: Vec<String>,
}

/// `SessionInsightsIssue`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Issue {
    #[serde(default)]
    pub id: String,
    pub issue: String,
    pub impact: String,
    pub label: String,
}

/// `SessionInsightsNoteUsage`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct NoteUsage {
    #[serde(default)]
    pub good_usages: Vec<NoteUsageItem>,
    #[serde(default)]
    pub bad_usages: Vec<NoteUsageItem>,
}

/// `SessionInsightsNoteUsageItem`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct NoteUsageItem {
    pub note_id: String,
    pub message: String,
    pub reason: String,
}

/// `SessionInsightsSuggestedPrompt`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SuggestedPrompt {
    pub original_prompt: String,
    pub suggested_prompt: String,
    #[serde(default)]
    pub feedback_items: Vec<FeedbackItem>,
}

/// `SessionInsightsFeedbackItem`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FeedbackItem {
    pub summary: String,
    pub excerpt: String,
    pub details: String,
    #[serde(default)]
    pub issue_id: Option<String>,
}

/// `TimelineEvent` (`SessionInsightsTimelineEvent`).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TimelineEvent {
    pub title: String,
    pub description: String,
    #[serde(default)]
    pub color: String,
    #[serde(default)]
    pub issue_id: Option<String>,
}

/// `ValidationError` inside `HTTPValidationError` (the 422 body).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ValidationError {
    pub loc: Vec<serde_json::Value>,
    pub msg: String,
    #[serde(rename = "type")]
    pub kind: String,
}

/// `HTTPValidationError`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct HttpValidationError {
    #[serde(default)]
    pub detail: Vec<ValidationError>,
}

/// Enum values the spec lists today. The loader never rejects other values; the simulator uses these to
/// exercise every one of them.
pub mod known {
    pub const STATUS: &[&str] = &["new", "claimed", "running", "exit", "error", "suspended", "resuming"];
    pub const STATUS_DETAIL: &[&str] = &[
        "working",
        "waiting_for_user",
        "waiting_for_approval",
        "finished",
        "inactivity",
        "user_request",
        "usage_limit_exceeded",
        "out_of_credits",
        "out_of_quota",
        "no_quota_allocation",
        "payment_declined",
        "org_usage_limit_exceeded",
        "total_session_limit_exceeded",
        "error",
    ];
    pub const ORIGIN: &[&str] =
        &["webapp", "slack", "teams", "api", "linear", "jira", "scheduled", "automation", "cli", "desktop", "other"];
    pub const CATEGORY: &[&str] = &[
        "bug_fixing",
        "ci_cd_and_devops",
        "code_quality_and_security",
        "code_review_and_analysis",
        "data_and_automation",
        "documentation_and_content",
        "feature_development",
        "migrations_and_upgrades",
        "other",
        "refactoring_and_optimization",
        "research_and_exploration",
        "unit_test_generation",
    ];
    pub const SESSION_SIZE: &[&str] = &["xs", "s", "m", "l", "xl"];
    pub const ACTION_ITEM_TYPE: &[&str] = &["machine_setup", "repo_config", "knowledge", "prompt_improvement", "other"];
}
