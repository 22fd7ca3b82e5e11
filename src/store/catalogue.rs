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

/// Declares [`Table`], [`Table::ALL`] and [`Table::def`] from one list, so the tables are named once.
macro_rules! tables {
    ($($variant:ident => $def:ident),+ $(,)?) => {
        /// The tables of a batch. `session_id` is the first column of every one; the child tables hold rows of
        /// the batch's sessions and are replaced as a set when their session is written.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        pub enum Table {
            $($variant),+
        }

        impl Table {
            /// Every table, `sessions` first: the order of the loads, the COPY payloads and the table counts.
            pub const ALL: [Table; [$(Table::$variant),+].len()] = [$(Table::$variant),+];

            pub const fn def(self) -> &'static TableDef {
                match self {
                    $(Table::$variant => &$def),+
                }
            }
        }
    };
}

tables! {
    Sessions => SESSIONS,
    PullRequests => PULL_REQUESTS,
    Issues => ISSUES,
    ActionItems => ACTION_ITEMS,
    TimelineEvents => TIMELINE_EVENTS,
    NoteUsages => NOTE_USAGES,
    PromptFeedback => PROMPT_FEEDBACK,
    Tags => TAGS,
    Children => CHILDREN,
}

impl Table {
    /// The child tables (every table but `sessions`, which comes first), in load order.
    pub const CHILDREN: [Table; Table::ALL.len() - 1] = {
        let mut children = [Table::Sessions; Table::ALL.len() - 1];
        let mut i = 0;
        while i < children.len() {
            children[i] = Table::ALL[i + 1];
            i += 1;
        }
        children
    };

    pub const fn name(self) -> &'static str {
        self.def().name
    }

    /// Position in [`Table::ALL`] (and in a batch's array of buffers).
    pub const fn index(self) -> usize {
        self as usize
    }
}

/// The run bookkeeping tables that `status` and `demo` count after the session tables.
const BOOKKEEPING: [&str; 4] = ["sync_state", "sync_runs", "schema_drift", "alerts"];

/// The history tables (`history.rs`): derived from the loaded tables, COPYed with a backfill's new sessions.
pub const HISTORY_DEFS: [&TableDef; 2] = [&SESSION_HISTORY, &PULL_REQUEST_HISTORY];
pub const HISTORY: [&str; 2] = [HISTORY_DEFS[0].name, HISTORY_DEFS[1].name];

const COUNTED: usize = Table::ALL.len() + HISTORY.len() + BOOKKEEPING.len();

/// The tables whose rows `status` and `demo` count: the session tables, their history, then the bookkeeping.
pub const COUNTED_TABLES: [&str; COUNTED] = {
    let (loaded, history) = (Table::ALL.len(), HISTORY.len());
    let mut names = [""; COUNTED];
    let mut i = 0;
    while i < COUNTED {
        names[i] = if i < loaded {
            Table::ALL[i].name()
        } else if i < loaded + history {
            HISTORY[i - loaded]
        } else {
            BOOKKEEPING[i - loaded - history]
        };
        i += 1;
    }
    names
};

const fn col(name: &'static str, sql_type: &'static str, staging: Staging) -> ColumnDef {
    ColumnDef { name, sql_type, staging }
}

/// Most columns: text, staged as text.
const fn text(name: &'static str) -> ColumnDef {
    col(name, "text", Text)
}

/// A child table: its session's id first, every column loaded.
const fn child(name: &'static str, columns: &'static [ColumnDef]) -> TableDef {
    TableDef { name, columns, unloaded: &[] }
}

const SESSION_ID: ColumnDef = text("session_id");
/// The item's index in its list of the API's response.
const POSITION: ColumnDef = col("position", "integer", Int8);

use Staging::{Bool, Float8, Int8, Jsonb, Text, TextArray, UnixSeconds};

const SESSIONS: TableDef = TableDef {
    name: "sessions",
    columns: &[
        SESSION_ID,
        text("org_id"),
        text("user_id"),
        text("service_user_id"),
        text("title"),
        text("url"),
        text("status"),
        text("status_detail"),
        text("origin"),
        text("category"),
        text("subcategory"),
        text("session_size"),
        col("acus_consumed", "double precision", Float8),
        col("num_user_messages", "bigint", Int8),
        col("num_devin_messages", "bigint", Int8),
        col("is_archived", "boolean", Bool),
        text("playbook_id"),
        text("parent_session_id"),
        col("tags", "text[]", TextArray),
        col("structured_output", "jsonb", Jsonb),
        col("created_at", "timestamp with time zone", UnixSeconds),
        col("updated_at", "timestamp with time zone", UnixSeconds),
        col("has_analysis", "boolean", Bool),
        text("classification_category"),
        col("classification_confidence", "double precision", Float8),
        col("programming_languages", "text[]", TextArray),
        col("tools_and_frameworks", "text[]", TextArray),
        text("suggested_prompt_original"),
        text("suggested_prompt"),
        col("raw", "jsonb", Jsonb),
        // Of `raw` and of how it becomes rows (`content_hash.rs`): an unchanged re-read is skipped by the merge.
        col("content_hash", "bigint", Int8),
        // The merge never changes it (see `load.rs`).
        text("source"),
    ],
    unloaded: &[
        // Default now() on insert, never changed.
        "first_synced_at",
        // Default now() on insert; the merge sets now() when it changes the session.
        "synced_at",
        // Set by reconcile (soft delete); the merge clears it when the session comes back.
        "deleted_at",
        // Default now() on insert; the merge sets now() with the hash (a hash is trusted while it equals synced_at).
        "content_hash_at",
    ],
};

/// The first version of a session: its tracked attributes from its `updated_at` on (`valid_to` stays null).
pub const SESSION_HISTORY: TableDef = TableDef {
    name: "session_history",
    columns: &[
        SESSION_ID,
        col("valid_from", "timestamp with time zone", UnixSeconds),
        text("status"),
        text("status_detail"),
        col("acus_consumed", "double precision", Float8),
        text("category"),
        col("has_analysis", "boolean", Bool),
        col("is_archived", "boolean", Bool),
    ],
    unloaded: &["valid_to"],
};

/// The first state of a session's pull request, from the session's `updated_at` on.
pub const PULL_REQUEST_HISTORY: TableDef = TableDef {
    name: "session_pull_request_history",
    columns: &[
        SESSION_ID,
        text("pr_url"),
        col("valid_from", "timestamp with time zone", UnixSeconds),
        text("pr_state"),
    ],
    unloaded: &["valid_to"],
};

const PULL_REQUESTS: TableDef = child(
    "session_pull_requests",
    &[SESSION_ID, text("pr_url"), text("pr_state"), text("repo"), col("pr_number", "integer", Int8)],
);

const ISSUES: TableDef =
    child("session_issues", &[SESSION_ID, POSITION, text("issue_id"), text("issue"), text("impact"), text("label")]);

const ACTION_ITEMS: TableDef =
    child("session_action_items", &[SESSION_ID, POSITION, text("action_item"), text("issue_id"), text("type")]);

const TIMELINE_EVENTS: TableDef = child(
    "session_timeline_events",
    &[SESSION_ID, POSITION, text("title"), text("description"), text("color"), text("issue_id")],
);

const NOTE_USAGES: TableDef = child(
    "session_note_usages",
    &[SESSION_ID, text("kind"), POSITION, text("note_id"), text("message"), text("reason")],
);

const PROMPT_FEEDBACK: TableDef = child(
    "session_prompt_feedback",
    &[SESSION_ID, POSITION, text("summary"), text("excerpt"), text("details"), text("issue_id")],
);

const TAGS: TableDef = child("session_tags", &[SESSION_ID, text("tag")]);

const CHILDREN: TableDef = child("session_children", &[SESSION_ID, text("child_session_id")]);

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
    fn counted_tables_are_the_session_tables_their_history_then_the_bookkeeping() {
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
                "session_history",
                "session_pull_request_history",
                "sync_state",
                "sync_runs",
                "schema_drift",
                "alerts",
            ]
        );
    }
}
