//! The tables the loader writes, declared once: each table's name and columns, each column's SQL type as the
//! table has it and how its values travel. The batch's buffers, the COPY column lists, the `unnest` statements
//! with their casts, the merge, the child-row replacement, `analyze` and the table counts are all derived from
//! here; `tests/catalogue.rs` compares it with the migrated database.

/// How a column's values are staged in the batch's column buffers and sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Staging {
    Text,
    Int8,
    Float8,
    Bool,
    /// Sent as an array literal (`{"a","b"}`) in text and cast: `unnest` cannot take an array of arrays of
    /// different lengths.
    TextArray,
    /// JSON sent as text and cast.
    Jsonb,
    /// Unix seconds sent as `int8` and converted with `to_timestamp` (COPY writes them as UTC timestamps).
    UnixSeconds,
}

impl Staging {
    /// Element type of the array parameter a column of this staging is bound as.
    pub const fn param_type(self) -> &'static str {
        match self {
            Staging::Text | Staging::TextArray | Staging::Jsonb => "text",
            Staging::Int8 | Staging::UnixSeconds => "int8",
            Staging::Float8 => "float8",
            Staging::Bool => "bool",
        }
    }
}

/// A column the loader writes.
#[derive(Debug)]
pub struct ColumnDef {
    pub name: &'static str,
    /// The column's type in the table, as `information_schema.columns` spells it (`text[]` for an array).
    pub sql_type: &'static str,
    pub staging: Staging,
}

impl ColumnDef {
    /// The expression of `insert … select` that turns the staged value (named as the column) into the column's type.
    pub fn expression(&self) -> String {
        let name = self.name;
        match self.staging {
            Staging::Text | Staging::Int8 | Staging::Float8 | Staging::Bool => name.to_owned(),
            Staging::TextArray => format!("{name}::text[]"),
            Staging::Jsonb => format!("{name}::jsonb"),
            Staging::UnixSeconds => format!("to_timestamp({name})"),
        }
    }
}

/// A table the loader writes: its columns in the order they are staged, sent and pushed.
#[derive(Debug)]
pub struct TableDef {
    pub name: &'static str,
    pub columns: &'static [ColumnDef],
    /// The table's other columns, which the loader leaves to their defaults or to other writers.
    pub unloaded: &'static [&'static str],
}

impl TableDef {
    /// Position of the column `name`.
    pub fn position(&self, name: &str) -> Option<usize> {
        self.columns.iter().position(|c| c.name == name)
    }
}

/// The tables of a batch. `session_id` is the first column of every one; the child tables hold rows of the
/// batch's sessions and are replaced as a set when their session is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Table {
    Sessions,
    PullRequests,
    Issues,
    ActionItems,
    TimelineEvents,
    NoteUsages,
    PromptFeedback,
    Tags,
    Children,
}

impl Table {
    /// Every table, `sessions` first: the order of the loads, the COPY payloads and the table counts.
    pub const ALL: [Table; 9] = [
        Table::Sessions,
        Table::PullRequests,
        Table::Issues,
        Table::ActionItems,
        Table::TimelineEvents,
        Table::NoteUsages,
        Table::PromptFeedback,
        Table::Tags,
        Table::Children,
    ];

    /// The child tables, in load order.
    pub const CHILDREN: [Table; 8] = [
        Table::PullRequests,
        Table::Issues,
        Table::ActionItems,
        Table::TimelineEvents,
        Table::NoteUsages,
        Table::PromptFeedback,
        Table::Tags,
        Table::Children,
    ];

    pub const fn def(self) -> &'static TableDef {
        match self {
            Table::Sessions => &SESSIONS,
            Table::PullRequests => &PULL_REQUESTS,
            Table::Issues => &ISSUES,
            Table::ActionItems => &ACTION_ITEMS,
            Table::TimelineEvents => &TIMELINE_EVENTS,
            Table::NoteUsages => &NOTE_USAGES,
            Table::PromptFeedback => &PROMPT_FEEDBACK,
            Table::Tags => &TAGS,
            Table::Children => &CHILDREN,
        }
    }

    pub const fn name(self) -> &'static str {
        self.def().name
    }

    /// Position in [`Table::ALL`] (and in a batch's array of buffers).
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The run bookkeeping tables that `status` and `demo` count after the session tables.
const BOOKKEEPING: [&str; 2] = ["sync_state", "sync_runs"];

/// The tables whose rows `status` and `demo` count: the session tables, then the bookkeeping.
pub const COUNTED_TABLES: [&str; Table::ALL.len() + BOOKKEEPING.len()] = {
    let mut names = [""; Table::ALL.len() + BOOKKEEPING.len()];
    let mut i = 0;
    while i < Table::ALL.len() {
        names[i] = Table::ALL[i].name();
        i += 1;
    }
    while i < names.len() {
        names[i] = BOOKKEEPING[i - Table::ALL.len()];
        i += 1;
    }
    names
};

const fn col(name: &'static str, sql_type: &'static str, staging: Staging) -> ColumnDef {
    ColumnDef { name, sql_type, staging }
}

use Staging::{Bool, Float8, Int8, Jsonb, Text, TextArray, UnixSeconds};

const SESSIONS: TableDef = TableDef {
    name: "sessions",
    columns: &[
        col("session_id", "text", Text),
        col("org_id", "text", Text),
        col("user_id", "text", Text),
        col("service_user_id", "text", Text),
        col("title", "text", Text),
        col("url", "text", Text),
        col("status", "text", Text),
        col("status_detail", "text", Text),
        col("origin", "text", Text),
        col("category", "text", Text),
        col("subcategory", "text", Text),
        col("session_size", "text", Text),
        col("acus_consumed", "double precision", Float8),
        col("num_user_messages", "bigint", Int8),
        col("num_devin_messages", "bigint", Int8),
        col("is_archived", "boolean", Bool),
        col("playbook_id", "text", Text),
        col("parent_session_id", "text", Text),
        col("tags", "text[]", TextArray),
        col("structured_output", "jsonb", Jsonb),
        col("created_at", "timestamp with time zone", UnixSeconds),
        col("updated_at", "timestamp with time zone", UnixSeconds),
        col("has_analysis", "boolean", Bool),
        col("classification_category", "text", Text),
        col("classification_confidence", "double precision", Float8),
        col("programming_languages", "text[]", TextArray),
        col("tools_and_frameworks", "text[]", TextArray),
        col("suggested_prompt_original", "text", Text),
        col("suggested_prompt", "text", Text),
        col("raw", "jsonb", Jsonb),
        // The merge never changes it (see `load.rs`).
        col("source", "text", Text),
    ],
    unloaded: &[
        // Default now() on insert, never changed.
        "first_synced_at",
        // Default now() on insert; the merge sets now() when it changes the session.
        "synced_at",
        // Set by reconcile (soft delete); the merge clears it when the session comes back.
        "deleted_at",
    ],
};

const PULL_REQUESTS: TableDef = TableDef {
    name: "session_pull_requests",
    columns: &[
        col("session_id", "text", Text),
        col("pr_url", "text", Text),
        col("pr_state", "text", Text),
        col("repo", "text", Text),
        col("pr_number", "integer", Int8),
    ],
    unloaded: &[],
};

const ISSUES: TableDef = TableDef {
    name: "session_issues",
    columns: &[
        col("session_id", "text", Text),
        col("position", "integer", Int8),
        col("issue_id", "text", Text),
        col("issue", "text", Text),
        col("impact", "text", Text),
        col("label", "text", Text),
    ],
    unloaded: &[],
};

const ACTION_ITEMS: TableDef = TableDef {
    name: "session_action_items",
    columns: &[
        col("session_id", "text", Text),
        col("position", "integer", Int8),
        col("action_item", "text", Text),
        col("issue_id", "text", Text),
        col("type", "text", Text),
    ],
    unloaded: &[],
};

const TIMELINE_EVENTS: TableDef = TableDef {
    name: "session_timeline_events",
    columns: &[
        col("session_id", "text", Text),
        col("position", "integer", Int8),
        col("title", "text", Text),
        col("description", "text", Text),
        col("color", "text", Text),
        col("issue_id", "text", Text),
    ],
    unloaded: &[],
};

const NOTE_USAGES: TableDef = TableDef {
    name: "session_note_usages",
    columns: &[
        col("session_id", "text", Text),
        col("kind", "text", Text),
        col("position", "integer", Int8),
        col("note_id", "text", Text),
        col("message", "text", Text),
        col("reason", "text", Text),
    ],
    unloaded: &[],
};

const PROMPT_FEEDBACK: TableDef = TableDef {
    name: "session_prompt_feedback",
    columns: &[
        col("session_id", "text", Text),
        col("position", "integer", Int8),
        col("summary", "text", Text),
        col("excerpt", "text", Text),
        col("details", "text", Text),
        col("issue_id", "text", Text),
    ],
    unloaded: &[],
};

const TAGS: TableDef = TableDef {
    name: "session_tags",
    columns: &[col("session_id", "text", Text), col("tag", "text", Text)],
    unloaded: &[],
};

const CHILDREN: TableDef = TableDef {
    name: "session_children",
    columns: &[col("session_id", "text", Text), col("child_session_id", "text", Text)],
    unloaded: &[],
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tables_are_listed_once_in_index_order_with_session_id_first() {
        for (i, table) in Table::ALL.iter().enumerate() {
            assert_eq!(table.index(), i, "{table:?}");
            assert_eq!(table.def().columns[0].name, "session_id", "{table:?}");
        }
        assert_eq!(Table::CHILDREN[..], Table::ALL[1..]);
        let mut names: Vec<&str> = COUNTED_TABLES.to_vec();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), COUNTED_TABLES.len(), "a table is listed twice");
    }

    #[test]
    fn every_staging_fits_its_sql_type() {
        for table in Table::ALL {
            for c in table.def().columns {
                let fits = match c.staging {
                    Text => c.sql_type == "text",
                    Int8 => matches!(c.sql_type, "bigint" | "integer" | "smallint"),
                    Float8 => c.sql_type == "double precision",
                    Bool => c.sql_type == "boolean",
                    TextArray => c.sql_type == "text[]",
                    Jsonb => c.sql_type == "jsonb",
                    UnixSeconds => c.sql_type == "timestamp with time zone",
                };
                assert!(fits, "{}.{}: {:?} cannot load a {} column", table.name(), c.name, c.staging, c.sql_type);
            }
        }
    }

    #[test]
    fn counted_tables_are_the_session_tables_then_the_bookkeeping() {
        assert_eq!(
            COUNTED_TABLES,
            [
                "sessions",
                "session_pull_requests",
                "session_issues",
                "session_action_items",
                "session_timeline_events",
                "session_note_usages",
                "session_prompt_feedback",
                "session_tags",
                "session_children",
                "sync_state",
                "sync_runs",
            ]
        );
    }
}
