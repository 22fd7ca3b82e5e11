//! Row shapes of the warehouse tables, and [`Batch`]: the rows of one or more pages, column by column, as the
//! loader sends them (`load.rs`). Each push names its column; the order and kinds are the catalogue's
//! (`catalogue.rs`), checked in debug builds.

use super::catalogue::Table;
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
#[derive(Debug)]
pub struct Batch {
    /// One buffer per table, indexed by [`Table::index`].
    buffers: [ColumnBuffer; Table::ALL.len()],
    /// The API server time (HTTP `Date`, Unix seconds) of the earliest page in the batch: when a change that did
    /// not bump `updated_at` (late analysis) was observed, for the session history. `None`: the database's time.
    pub observed_at: Option<i64>,
}

impl Default for Batch {
    fn default() -> Batch {
        Batch { buffers: Table::ALL.map(|table| ColumnBuffer::new(table.def())), observed_at: None }
    }
}

impl Batch {
    pub fn new() -> Batch {
        Batch::default()
    }

    /// Sessions staged so far.
    pub fn sessions(&self) -> usize {
        self.buffer(Table::Sessions).rows()
    }

    /// The staged rows of `table`.
    pub(super) fn buffer(&self, table: Table) -> &ColumnBuffer {
        &self.buffers[table.index()]
    }

    fn buffer_mut(&mut self, table: Table) -> &mut ColumnBuffer {
        &mut self.buffers[table.index()]
    }

    pub fn push_session(&mut self, r: &SessionRow<'_>) {
        self.buffer_mut(Table::Sessions)
            .text("session_id", r.session_id)
            .text("org_id", r.org_id)
            .opt_text("user_id", r.user_id)
            .opt_text("service_user_id", r.service_user_id)
            .opt_text("title", r.title)
            .text("url", r.url)
            .text("status", r.status)
            .opt_text("status_detail", r.status_detail)
            .opt_text("origin", r.origin)
            .opt_text("category", r.category)
            .opt_text("subcategory", r.subcategory)
            .text("session_size", r.session_size)
            .float("acus_consumed", r.acus_consumed)
            .int("num_user_messages", r.num_user_messages)
            .int("num_devin_messages", r.num_devin_messages)
            .bool("is_archived", r.is_archived)
            .opt_text("playbook_id", r.playbook_id)
            .opt_text("parent_session_id", r.parent_session_id)
            .text_array("tags", r.tags.iter().map(String::as_str))
            .opt_json("structured_output", r.structured_output)
            .unix_seconds("created_at", r.created_at)
            .unix_seconds("updated_at", r.updated_at)
            .bool("has_analysis", r.has_analysis)
            .opt_text("classification_category", r.classification_category)
            .opt_float("classification_confidence", r.classification_confidence)
            .opt_text_array("programming_languages", r.programming_languages.map(|v| v.iter().map(String::as_str)))
            .opt_text_array("tools_and_frameworks", r.tools_and_frameworks.map(|v| v.iter().map(String::as_str)))
            .opt_text("suggested_prompt_original", r.suggested_prompt_original)
            .opt_text("suggested_prompt", r.suggested_prompt)
            .json("raw", r.raw)
            .int("content_hash", super::content_hash::content_hash(r.raw))
            .text("source", r.source)
            .end_row();
    }

    pub fn push_pull_request(&mut self, r: &PullRequestRow<'_>) {
        self.buffer_mut(Table::PullRequests)
            .text("session_id", r.session_id)
            .text("pr_url", r.pr_url)
            .opt_text("pr_state", r.pr_state)
            .opt_text("repo", r.repo)
            .opt_int("pr_number", r.pr_number.map(i64::from))
            .end_row();
    }

    pub fn push_issue(&mut self, r: &IssueRow<'_>) {
        self.buffer_mut(Table::Issues)
            .text("session_id", r.session_id)
            .int("position", r.position.into())
            .text("issue_id", r.issue_id)
            .text("issue", r.issue)
            .text("impact", r.impact)
            .text("label", r.label)
            .end_row();
    }

    pub fn push_action_item(&mut self, r: &ActionItemRow<'_>) {
        self.buffer_mut(Table::ActionItems)
            .text("session_id", r.session_id)
            .int("position", r.position.into())
            .text("action_item", r.action_item)
            .opt_text("issue_id", r.issue_id)
            .text("type", r.kind)
            .end_row();
    }

    pub fn push_timeline_event(&mut self, r: &TimelineEventRow<'_>) {
        self.buffer_mut(Table::TimelineEvents)
            .text("session_id", r.session_id)
            .int("position", r.position.into())
            .text("title", r.title)
            .text("description", r.description)
            .text("color", r.color)
            .opt_text("issue_id", r.issue_id)
            .end_row();
    }

    pub fn push_note_usage(&mut self, r: &NoteUsageRow<'_>) {
        self.buffer_mut(Table::NoteUsages)
            .text("session_id", r.session_id)
            .text("kind", r.kind)
            .int("position", r.position.into())
            .text("note_id", r.note_id)
            .text("message", r.message)
            .text("reason", r.reason)
            .end_row();
    }

    pub fn push_prompt_feedback(&mut self, r: &PromptFeedbackRow<'_>) {
        self.buffer_mut(Table::PromptFeedback)
            .text("session_id", r.session_id)
            .int("position", r.position.into())
            .text("summary", r.summary)
            .text("excerpt", r.excerpt)
            .text("details", r.details)
            .opt_text("issue_id", r.issue_id)
            .end_row();
    }

    pub fn push_tag(&mut self, session_id: &str, tag: &str) {
        self.buffer_mut(Table::Tags).text("session_id", session_id).text("tag", tag).end_row();
    }

    pub fn push_child(&mut self, session_id: &str, child_session_id: &str) {
        self.buffer_mut(Table::Children)
            .text("session_id", session_id)
            .text("child_session_id", child_session_id)
            .end_row();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// One row in every table, through the pushes `normalize` uses: each matches the catalogue.
    fn batch_with_a_row_in_every_table() -> Batch {
        let mut batch = Batch::new();
        let tags = ["a".to_owned()];
        batch.push_session(&SessionRow {
            session_id: "s",
            org_id: "o",
            user_id: None,
            service_user_id: None,
            title: Some("t"),
            url: "u",
            status: "exit",
            status_detail: None,
            origin: None,
            category: None,
            subcategory: None,
            session_size: "xs",
            acus_consumed: 1.5,
            num_user_messages: 1,
            num_devin_messages: 2,
            is_archived: false,
            playbook_id: None,
            parent_session_id: None,
            tags: &tags,
            structured_output: Some("{}"),
            created_at: 0,
            updated_at: 1,
            has_analysis: true,
            classification_category: None,
            classification_confidence: Some(0.5),
            programming_languages: Some(&tags),
            tools_and_frameworks: None,
            suggested_prompt_original: None,
            suggested_prompt: None,
            raw: "{}",
            source: "devin",
        });
        batch.push_pull_request(&PullRequestRow {
            session_id: "s",
            pr_url: "p",
            pr_state: None,
            repo: None,
            pr_number: Some(1),
        });
        batch.push_issue(&IssueRow { session_id: "s", position: 0, issue_id: "i", issue: "", impact: "", label: "" });
        batch.push_action_item(&ActionItemRow {
            session_id: "s",
            position: 0,
            action_item: "",
            issue_id: None,
            kind: "other",
        });
        batch.push_timeline_event(&TimelineEventRow {
            session_id: "s",
            position: 0,
            title: "",
            description: "",
            color: "",
            issue_id: None,
        });
        batch.push_note_usage(&NoteUsageRow {
            session_id: "s",
            kind: "good",
            position: 0,
            note_id: "n",
            message: "",
            reason: "",
        });
        batch.push_prompt_feedback(&PromptFeedbackRow {
            session_id: "s",
            position: 0,
            summary: "",
            excerpt: "",
            details: "",
            issue_id: None,
        });
        batch.push_tag("s", "a");
        batch.push_child("s", "c");
        batch
    }

    #[test]
    fn every_push_follows_the_catalogue() {
        let batch = batch_with_a_row_in_every_table();
        for table in Table::ALL {
            assert_eq!(batch.buffer(table).rows(), 1, "{table:?}");
        }
        assert_eq!(batch.sessions(), 1);
    }

    #[test]
    #[cfg_attr(
        debug_assertions,
        should_panic(expected = "session_tags: pushed tag as Text where the catalogue's column 1 is session_id")
    )]
    fn swapped_pushes_panic_in_debug_builds() {
        Batch::new().buffer_mut(Table::Tags).text("tag", "a").text("session_id", "s").end_row();
    }

    #[test]
    #[cfg_attr(
        debug_assertions,
        should_panic(expected = "session_pull_requests: pushed pr_number as Text where the catalogue's column 5 is \
                                 pr_number (Int8)")
    )]
    #[cfg_attr(not(debug_assertions), should_panic)]
    fn a_push_of_the_wrong_kind_panics() {
        let mut batch = Batch::new();
        let prs = batch.buffer_mut(Table::PullRequests);
        prs.text("session_id", "s").text("pr_url", "p").opt_text("pr_state", None).opt_text("repo", None);
        prs.opt_text("pr_number", Some("1")).end_row();
    }
}
