//! What the models know, as JSON: for every field of [`SessionInsights`](crate::SessionInsights) and the schemas
//! it uses, the field's name, its JSON type, whether it may be null and, for the spec's enums, the documented
//! values ([`known`](crate::known)). The service compares every served item with it to report schema drift.
//!
//! It is a second description of the structs above, kept honest by tests: the crate's own (a fully populated
//! item serializes to exactly these fields and types; null decodes exactly where a field is nullable) and the
//! service's (the OpenAPI spec has exactly these properties, types, nullability and enums).

use crate::known;

/// The JSON a field holds.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Json {
    String,
    /// A string from a documented list; other strings load (enums are text) but are drift.
    Enum(&'static [&'static str]),
    /// A whole number.
    Integer,
    /// Any number (an integer too).
    Number,
    Bool,
    Array(&'static Json),
    Object(&'static Schema),
    /// Free-form JSON (`structured_output`): not compared.
    Any,
}

impl Json {
    /// The JSON Schema type name of what the field holds (`Enum` is a string).
    pub const fn type_name(self) -> &'static str {
        match self {
            Json::String | Json::Enum(_) => "string",
            Json::Integer => "integer",
            Json::Number => "number",
            Json::Bool => "boolean",
            Json::Array(_) => "array",
            Json::Object(_) | Json::Any => "object",
        }
    }
}

/// A named object schema of the spec and its fields.
#[derive(Debug, PartialEq)]
pub struct Schema {
    /// The schema's name in the OpenAPI spec's `components.schemas`.
    pub name: &'static str,
    pub fields: &'static [Field],
}

impl Schema {
    pub fn field(&self, name: &str) -> Option<&'static Field> {
        self.fields.iter().find(|f| f.name == name)
    }
}

#[derive(Debug, PartialEq)]
pub struct Field {
    pub name: &'static str,
    pub json: Json,
    pub nullable: bool,
}

const fn field(name: &'static str, json: Json) -> Field {
    Field { name, json, nullable: false }
}

const fn nullable(name: &'static str, json: Json) -> Field {
    Field { name, json, nullable: true }
}

const STRINGS: Json = Json::Array(&Json::String);

/// `SessionInsightsResponse`: one item of a page.
pub const SESSION_INSIGHTS: Schema = Schema {
    name: "SessionInsightsResponse",
    fields: &[
        field("session_id", Json::String),
        field("org_id", Json::String),
        nullable("user_id", Json::String),
        nullable("service_user_id", Json::String),
        nullable("title", Json::String),
        field("url", Json::String),
        field("status", Json::Enum(known::STATUS)),
        nullable("status_detail", Json::Enum(known::STATUS_DETAIL)),
        nullable("origin", Json::Enum(known::ORIGIN)),
        nullable("category", Json::Enum(known::CATEGORY)),
        nullable("subcategory", Json::String),
        field("session_size", Json::Enum(known::SESSION_SIZE)),
        field("acus_consumed", Json::Number),
        field("num_user_messages", Json::Integer),
        field("num_devin_messages", Json::Integer),
        field("is_archived", Json::Bool),
        nullable("playbook_id", Json::String),
        nullable("parent_session_id", Json::String),
        nullable("child_session_ids", STRINGS),
        field("tags", STRINGS),
        nullable("structured_output", Json::Any),
        field("pull_requests", Json::Array(&Json::Object(&PULL_REQUEST))),
        field("created_at", Json::Integer),
        field("updated_at", Json::Integer),
        nullable("analysis", Json::Object(&ANALYSIS)),
    ],
};

const PULL_REQUEST: Schema =
    Schema { name: "SessionPullRequest", fields: &[field("pr_url", Json::String), nullable("pr_state", Json::String)] };

const ANALYSIS: Schema = Schema {
    name: "SessionInsightsAnalysis",
    fields: &[
        field("action_items", Json::Array(&Json::Object(&ACTION_ITEM))),
        nullable("classification", Json::Object(&CLASSIFICATION)),
        field("issues", Json::Array(&Json::Object(&ISSUE))),
        nullable("note_usage", Json::Object(&NOTE_USAGE)),
        nullable("suggested_prompt", Json::Object(&SUGGESTED_PROMPT)),
        field("timeline", Json::Array(&Json::Object(&TIMELINE_EVENT))),
    ],
};

const ACTION_ITEM: Schema = Schema {
    name: "SessionInsightsActionItem",
    fields: &[
        field("action_item", Json::String),
        nullable("issue_id", Json::String),
        field("type", Json::Enum(known::ACTION_ITEM_TYPE)),
    ],
};

const CLASSIFICATION: Schema = Schema {
    name: "SessionInsightsClassification",
    fields: &[
        field("category", Json::String),
        field("confidence", Json::Number),
        field("programming_languages", STRINGS),
        field("tools_and_frameworks", STRINGS),
    ],
};

const ISSUE: Schema = Schema {
    name: "SessionInsightsIssue",
    fields: &[
        field("id", Json::String),
        field("issue", Json::String),
        field("impact", Json::String),
        field("label", Json::String),
    ],
};

const NOTE_USAGE: Schema = Schema {
    name: "SessionInsightsNoteUsage",
    fields: &[
        field("good_usages", Json::Array(&Json::Object(&NOTE_USAGE_ITEM))),
        field("bad_usages", Json::Array(&Json::Object(&NOTE_USAGE_ITEM))),
    ],
};

const NOTE_USAGE_ITEM: Schema = Schema {
    name: "SessionInsightsNoteUsageItem",
    fields: &[field("note_id", Json::String), field("message", Json::String), field("reason", Json::String)],
};

const SUGGESTED_PROMPT: Schema = Schema {
    name: "SessionInsightsSuggestedPrompt",
    fields: &[
        field("original_prompt", Json::String),
        field("suggested_prompt", Json::String),
        field("feedback_items", Json::Array(&Json::Object(&FEEDBACK_ITEM))),
    ],
};

const FEEDBACK_ITEM: Schema = Schema {
    name: "SessionInsightsFeedbackItem",
    fields: &[
        field("summary", Json::String),
        field("excerpt", Json::String),
        field("details", Json::String),
        nullable("issue_id", Json::String),
    ],
};

const TIMELINE_EVENT: Schema = Schema {
    name: "SessionInsightsTimelineEvent",
    fields: &[
        field("title", Json::String),
        field("description", Json::String),
        field("color", Json::String),
        nullable("issue_id", Json::String),
    ],
};

/// Every object schema reachable from [`SESSION_INSIGHTS`], each once.
pub fn schemas() -> Vec<&'static Schema> {
    fn visit(json: Json, out: &mut Vec<&'static Schema>) {
        match json {
            Json::Object(schema) if !out.iter().any(|s| s.name == schema.name) => {
                out.push(schema);
                schema.fields.iter().for_each(|f| visit(f.json, out));
            }
            Json::Array(inner) => visit(*inner, out),
            _ => {}
        }
    }
    let mut out = Vec::new();
    visit(Json::Object(&SESSION_INSIGHTS), &mut out);
    out
}

#[cfg(test)]
mod tests {
    use serde_json::{Value, json};

    use super::*;
    use crate::*;

    /// An item with every field set (no null, no empty array), written as a struct literal so that a field added
    /// to the models must be added here too.
    fn everything() -> SessionInsights {
        let strings = || vec!["a".to_owned()];
        SessionInsights {
            session_id: "s".into(),
            org_id: "o".into(),
            user_id: Some("u".into()),
            service_user_id: Some("su".into()),
            title: Some("t".into()),
            url: "https://x".into(),
            status: "running".into(),
            status_detail: Some("working".into()),
            origin: Some("api".into()),
            category: Some("other".into()),
            subcategory: Some("Other".into()),
            session_size: "m".into(),
            acus_consumed: 1.5,
            num_user_messages: 1,
            num_devin_messages: 2,
            is_archived: true,
            playbook_id: Some("p".into()),
            parent_session_id: Some("ps".into()),
            child_session_ids: Some(strings()),
            tags: strings(),
            structured_output: Some(serde_json::Map::from_iter([("k".to_owned(), json!(1))])),
            pull_requests: vec![PullRequest { pr_url: "https://pr".into(), pr_state: Some("open".into()) }],
            created_at: 1,
            updated_at: 2,
            analysis: Some(Analysis {
                action_items: vec![ActionItem {
                    action_item: "do".into(),
                    issue_id: Some("i".into()),
                    kind: "knowledge".into(),
                }],
                classification: Some(Classification {
                    category: "c".into(),
                    confidence: 0.5,
                    programming_languages: strings(),
                    tools_and_frameworks: strings(),
                }),
                issues: vec![Issue { id: "i".into(), issue: "x".into(), impact: "high".into(), label: "l".into() }],
                note_usage: Some(NoteUsage {
                    good_usages: vec![NoteUsageItem { note_id: "n".into(), message: "m".into(), reason: "r".into() }],
                    bad_usages: vec![NoteUsageItem { note_id: "n".into(), message: "m".into(), reason: "r".into() }],
                }),
                suggested_prompt: Some(SuggestedPrompt {
                    original_prompt: "o".into(),
                    suggested_prompt: "s".into(),
                    feedback_items: vec![FeedbackItem {
                        summary: "s".into(),
                        excerpt: "e".into(),
                        details: "d".into(),
                        issue_id: Some("i".into()),
                    }],
                }),
                timeline: vec![TimelineEvent {
                    title: "t".into(),
                    description: "d".into(),
                    color: "red".into(),
                    issue_id: Some("i".into()),
                }],
            }),
        }
    }

    /// Every field of `schema` in `value`, depth first: (JSON pointer, field).
    fn fields(schema: &'static Schema, value: &Value, pointer: String, out: &mut Vec<(String, &'static Field)>) {
        let object = value.as_object().unwrap_or_else(|| panic!("{pointer} is not an object"));
        let mut names: Vec<&str> = object.keys().map(String::as_str).collect();
        let mut known: Vec<&str> = schema.fields.iter().map(|f| f.name).collect();
        names.sort_unstable();
        known.sort_unstable();
        assert_eq!(names, known, "{}: the serialized model's fields and the shape's differ", schema.name);
        for f in schema.fields {
            let at = format!("{pointer}/{}", f.name);
            let v = &object[f.name];
            out.push((at.clone(), f));
            let ok = match f.json {
                Json::String | Json::Enum(_) => v.is_string(),
                Json::Integer => v.is_i64(),
                Json::Number => v.is_number(),
                Json::Bool => v.is_boolean(),
                Json::Array(_) => v.is_array(),
                Json::Object(_) | Json::Any => v.is_object(),
            };
            assert!(ok, "{at}: the model writes {v}, the shape says {}", f.json.type_name());
            match (f.json, v) {
                (Json::Object(inner), _) => fields(inner, v, at, out),
                (Json::Array(Json::Object(inner)), Value::Array(items)) => {
                    fields(inner, &items[0], format!("{at}/0"), out)
                }
                _ => {}
            }
        }
    }

    #[test]
    fn the_shape_has_exactly_the_models_fields_and_json_types() {
        let value = serde_json::to_value(everything()).unwrap();
        let mut all = Vec::new();
        fields(&SESSION_INSIGHTS, &value, String::new(), &mut all);
        // Every field of every schema was reached (note usage items twice: good and bad).
        let reached: std::collections::HashSet<*const Field> = all.iter().map(|(_, f)| *f as *const Field).collect();
        assert_eq!(reached.len(), schemas().iter().map(|s| s.fields.len()).sum::<usize>());
    }

    #[test]
    fn null_decodes_exactly_where_the_shape_says_nullable() {
        let value = serde_json::to_value(everything()).unwrap();
        let mut all = Vec::new();
        fields(&SESSION_INSIGHTS, &value, String::new(), &mut all);
        for (pointer, field) in all {
            let mut item = value.clone();
            *item.pointer_mut(&pointer).unwrap() = Value::Null;
            let decoded = serde_json::from_value::<SessionInsights>(item);
            assert_eq!(decoded.is_ok(), field.nullable, "{pointer} set to null: {decoded:?}");
        }
    }

    #[test]
    fn enums_are_the_known_lists_and_every_schema_is_reachable_once() {
        let names: Vec<&str> = schemas().iter().map(|s| s.name).collect();
        assert_eq!(names.len(), 11, "{names:?}");
        assert_eq!(SESSION_INSIGHTS.field("status").map(|f| f.json), Some(Json::Enum(known::STATUS)));
        assert_eq!(ACTION_ITEM.field("type").map(|f| f.json), Some(Json::Enum(known::ACTION_ITEM_TYPE)));
    }
}
