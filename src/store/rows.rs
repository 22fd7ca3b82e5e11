//! Row shapes of the warehouse tables, and [`Batch`]: the rows of one or more pages, encoded for COPY into
//! staging tables. Column order here must match the staging tables in `load.rs`.

use super::columns::ColumnBuffer;

/// A `sessions` row. Timestamps are Unix seconds (converted in SQL); `raw` is the item's JSON text.
#[derive(Debug)]
pub struct SessionRow<'a> {
    pub session_id: &'a str,
    pub org_id: &'a str,
    pub user_id: Option<&'a str>,
    pub service_user_id: Option<&'a str>,
    pub title: Option<&'a str>,
    pub url: &'a str,
    pub status: &'a str,
    pub status_detail: Option<&'a str>,
    pub origin: Option<&'a str>,
    pub category: Option<&'a str>,
    pub subcategory: Option<&'a str>,
    pub session_size: &'a str,
    pub acus_consumed: f64,
    pub num_user_messages: i64,
    pub num_devin_messages: i64,
    pub is_archived: bool,
    pub playbook_id: Option<&'a str>,
    pub parent_session_id: Option<&'a str>,
    pub tags: &'a [String],
    pub structured_output: Option<&'a str>,
    pub created_at: i64,
    pub updated_at: i64,
    pub has_analysis: bool,
    pub classification_category: Option<&'a str>,
    pub classification_confidence: Option<f64>,
    pub programming_languages: Option<&'a [String]>,
    pub tools_and_frameworks: Option<&'a [String]>,
    pub suggested_prompt_original: Option<&'a str>,
    pub suggested_prompt: Option<&'a str>,
    pub raw: &'a str,
    /// The source that delivered it (`sync.source`).
    pub source: &'a str,
}

#[derive(Debug)]
pub struct PullRequestRow<'a> {
    pub session_id: &'a str,
    pub pr_url: &'a str,
    pub pr_state: Option<&'a str>,
    pub repo: Option<&'a str>,
    pub pr_number: Option<i32>,
}

#[derive(Debug)]
pub struct IssueRow<'a> {
    pub session_id: &'a str,
    pub position: i32,
    pub issue_id: &'a str,
    pub issue: &'a str,
    pub impact: &'a str,
    pub label: &'a str,
}

#[derive(Debug)]
pub struct ActionItemRow<'a> {
    pub session_id: &'a str,
    pub position: i32,
    pub action_item: &'a str,
    pub issue_id: Option<&'a str>,
    pub kind: &'a str,
}

#[derive(Debug)]
pub struct TimelineEventRow<'a> {
    pub session_id: &'a str,
    pub position: i32,
    pub title: &'a str,
    pub description: &'a str,
    pub color: &'a str,
    pub issue_id: Option<&'a str>,
}

#[derive(Debug)]
pub struct NoteUsageRow<'a> {
    pub session_id: &'a str,
    /// `"good"` or `"bad"`.
    pub kind: &'static str,
    pub position: i32,
    pub note_id: &'a str,
    pub message: &'a str,
    pub reason: &'a str,
}

#[derive(Debug)]
pub struct PromptFeedbackRow<'a> {
    pub session_id: &'a str,
    pub position: i32,
    pub summary: &'a str,
    pub excerpt: &'a str,
    pub details: &'a str,
    pub issue_id: Option<&'a str>,
}

/// Rows for every table, column by column. Child rows of sessions that turn out unchanged are sent but not
/// written: the merge keeps only children of sessions it actually inserted or updated.
#[derive(Debug, Default)]
pub struct Batch {
    pub(super) sessions: ColumnBuffer,
    pub(super) pull_requests: ColumnBuffer,
    pub(super) issues: ColumnBuffer,
    pub(super) action_items: ColumnBuffer,
    pub(super) timeline_events: ColumnBuffer,
    pub(super) note_usages: ColumnBuffer,
    pub(super) prompt_feedback: ColumnBuffer,
    pub(super) tags: ColumnBuffer,
    pub(super) children: ColumnBuffer,
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Sessions staged so far.
    pub fn sessions(&self) -> usize {
        self.sessions.rows()
    }

    /// Approximate size, to bound how much a batch holds in memory.
    pub fn bytes(&self) -> usize {
        self.buffers().iter().map(|b| b.bytes()).sum()
    }

    fn buffers(&self) -> [&ColumnBuffer; 9] {
        [
            &self.sessions,
            &self.pull_requests,
            &self.issues,
            &self.action_items,
            &self.timeline_events,
            &self.note_usages,
            &self.prompt_feedback,
            &self.tags,
            &self.children,
        ]
    }

    /// The staged rows of a child table, by the table's name.
    pub(super) fn child_buffer(&self, table: &str) -> &ColumnBuffer {
        match table {
            "session_pull_requests" => &self.pull_requests,
            "session_issues" => &self.issues,
            "session_action_items" => &self.action_items,
            "session_timeline_events" => &self.timeline_events,
            "session_note_usages" => &self.note_usages,
            "session_prompt_feedback" => &self.prompt_feedback,
            "session_tags" => &self.tags,
            "session_children" => &self.children,
            // Callers pass names from load.rs's fixed CHILD_TABLES list only.
            other => unreachable!("{other} is not a child table"),
        }
    }

    pub fn push_session(&mut self, r: &SessionRow<'_>) {
        let b = &mut self.sessions;
        b.text(r.session_id)
            .text(r.org_id)
            .opt_text(r.user_id)
            .opt_text(r.service_user_id)
            .opt_text(r.title)
            .text(r.url)
            .text(r.status)
            .opt_text(r.status_detail)
            .opt_text(r.origin)
            .opt_text(r.category)
            .opt_text(r.subcategory)
            .text(r.session_size)
            .float(r.acus_consumed)
            .int(r.num_user_messages)
            .int(r.num_devin_messages)
            .bool(r.is_archived)
            .opt_text(r.playbook_id)
            .opt_text(r.parent_session_id)
            .text_array(r.tags.iter().map(String::as_str))
            .opt_text(r.structured_output)
            .int(r.created_at)
            .int(r.updated_at)
            .bool(r.has_analysis)
            .opt_text(r.classification_category)
            .opt_float(r.classification_confidence)
            .opt_text_array(r.programming_languages.map(|v| v.iter().map(String::as_str)))
            .opt_text_array(r.tools_and_frameworks.map(|v| v.iter().map(String::as_str)))
            .opt_text(r.suggested_prompt_original)
            .opt_text(r.suggested_prompt)
            .text(r.raw)
            .text(r.source)
            .end_row();
    }

    pub fn push_pull_request(&mut self, r: &PullRequestRow<'_>) {
        self.pull_requests
            .text(r.session_id)
            .text(r.pr_url)
            .opt_text(r.pr_state)
            .opt_text(r.repo)
            .opt_int(r.pr_number.map(i64::from))
            .end_row();
    }

    pub fn push_issue(&mut self, r: &IssueRow<'_>) {
        self.issues
            .text(r.session_id)
            .int(r.position.into())
            .text(r.issue_id)
            .text(r.issue)
            .text(r.impact)
            .text(r.label)
            .end_row();
    }

    pub fn push_action_item(&mut self, r: &ActionItemRow<'_>) {
        self.action_items
            .text(r.session_id)
            .int(r.position.into())
            .text(r.action_item)
            .opt_text(r.issue_id)
            .text(r.kind)
            .end_row();
    }

    pub fn push_timeline_event(&mut self, r: &TimelineEventRow<'_>) {
        self.timeline_events
            .text(r.session_id)
            .int(r.position.into())
            .text(r.title)
            .text(r.description)
            .text(r.color)
            .opt_text(r.issue_id)
            .end_row();
    }

    pub fn push_note_usage(&mut self, r: &NoteUsageRow<'_>) {
        self.note_usages
            .text(r.session_id)
            .text(r.kind)
            .int(r.position.into())
            .text(r.note_id)
            .text(r.message)
            .text(r.reason)
            .end_row();
    }

    pub fn push_prompt_feedback(&mut self, r: &PromptFeedbackRow<'_>) {
        self.prompt_feedback
            .text(r.session_id)
            .int(r.position.into())
            .text(r.summary)
            .text(r.excerpt)
            .text(r.details)
            .opt_text(r.issue_id)
            .end_row();
    }

    pub fn push_tag(&mut self, session_id: &str, tag: &str) {
        self.tags.text(session_id).text(tag).end_row();
    }

    pub fn push_child(&mut self, session_id: &str, child_session_id: &str) {
        self.children.text(session_id).text(child_session_id).end_row();
    }
}
