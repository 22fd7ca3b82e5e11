//! Compares one served item with what the models know ([`devin_api_model::shape`]) in one pass over its JSON
//! text, building nothing: fields the models do not have, enum values outside the documented lists, and values
//! of another JSON type than the model expects. It runs on items that decoded, so a type change it reports is
//! one the load survived (a number sent as a string, a whole number as `3.0`).

use std::borrow::Cow;
use std::fmt;

use devin_api_model::shape::{Json, SESSION_INSIGHTS, Schema};
use serde::de::{DeserializeSeed, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::{Drift, DriftKind};

/// Longest value kept (an enum value is normally a short word; a field turned into free text is not).
const MAX_VALUE_CHARS: usize = 200;

/// The drift in one item's JSON text, each (path, kind, value) once; empty (and no allocation) for an item the
/// models know entirely.
pub fn inspect(item: &str) -> Vec<Drift> {
    let mut found = Vec::new();
    let mut de = serde_json::Deserializer::from_str(item);
    let walk = Walk { json: Json::Object(&SESSION_INSIGHTS), nullable: false, path: &Path::Root, found: &mut found };
    // The item decoded already, so the text is valid JSON; a failure here could only cut the report short.
    let _ = walk.deserialize(&mut de);
    if found.len() > 1 {
        found.sort_unstable();
        found.dedup();
    }
    found
}

/// Where a value sits, rendered only when drift is found: `analysis.issues[].severity`.
enum Path<'a> {
    Root,
    Field(&'a Path<'a>, &'a str),
    Items(&'a Path<'a>),
}

impl fmt::Display for Path<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Path::Root => Ok(()),
            Path::Field(Path::Root, name) => f.write_str(name),
            Path::Field(parent, name) => write!(f, "{parent}.{name}"),
            Path::Items(parent) => write!(f, "{parent}[]"),
        }
    }
}

/// Compares one value with `json` (the type the model expects at `path`).
struct Walk<'a, 'p> {
    json: Json,
    nullable: bool,
    path: &'p Path<'p>,
    found: &'a mut Vec<Drift>,
}

impl Walk<'_, '_> {
    fn report(&mut self, kind: DriftKind, value: String) {
        self.found.push(Drift { path: self.path.to_string(), kind, value });
    }

    /// The value is a `got` where the model expects another type.
    fn type_changed(mut self, got: &str) {
        let expected = self.json.type_name();
        self.report(DriftKind::TypeChanged, format!("{got} (expected {expected})"));
    }
}

impl<'de> DeserializeSeed<'de> for Walk<'_, '_> {
    type Value = ();

    fn deserialize<D: Deserializer<'de>>(self, d: D) -> Result<(), D::Error> {
        d.deserialize_any(self)
    }
}

impl<'de> Visitor<'de> for Walk<'_, '_> {
    type Value = ();

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("any JSON value")
    }

    fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<(), E> {
        if !matches!(self.json, Json::Bool | Json::Any) {
            self.type_changed("boolean");
        }
        Ok(())
    }

    fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<(), E> {
        if !matches!(self.json, Json::Integer | Json::Number | Json::Any) {
            self.type_changed("integer");
        }
        Ok(())
    }

    fn visit_u64<E: serde::de::Error>(self, v: u64) -> Result<(), E> {
        self.visit_i64(v as i64)
    }

    fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<(), E> {
        if !matches!(self.json, Json::Number | Json::Any) {
            self.type_changed("number");
        }
        Ok(())
    }

    fn visit_str<E: serde::de::Error>(mut self, v: &str) -> Result<(), E> {
        match self.json {
            Json::String | Json::Any => {}
            Json::Enum(values) if values.contains(&v) => {}
            Json::Enum(_) => {
                let value = match v.char_indices().nth(MAX_VALUE_CHARS) {
                    Some((cut, _)) => format!("{}…", &v[..cut]),
                    None => v.to_owned(),
                };
                self.report(DriftKind::UnknownEnumValue, value);
            }
            _ => self.type_changed("string"),
        }
        Ok(())
    }

    fn visit_unit<E: serde::de::Error>(self) -> Result<(), E> {
        if !self.nullable && self.json != Json::Any {
            self.type_changed("null");
        }
        Ok(())
    }

    fn visit_none<E: serde::de::Error>(self) -> Result<(), E> {
        self.visit_unit()
    }

    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<(), A::Error> {
        let Json::Array(items) = self.json else {
            while seq.next_element::<IgnoredAny>()?.is_some() {}
            if self.json != Json::Any {
                self.type_changed("array");
            }
            return Ok(());
        };
        let path = Path::Items(self.path);
        let found = self.found;
        while seq.next_element_seed(Walk { json: *items, nullable: false, path: &path, found: &mut *found })?.is_some()
        {
        }
        Ok(())
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<(), A::Error> {
        let Json::Object(schema) = self.json else {
            while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
            if self.json != Json::Any {
                self.type_changed("object");
            }
            return Ok(());
        };
        let (parent, found) = (self.path, self.found);
        while let Some(Key(key)) = map.next_key::<Key>()? {
            visit_field(schema, parent, &key, &mut map, found)?;
        }
        Ok(())
    }
}

fn visit_field<'de, A: MapAccess<'de>>(
    schema: &'static Schema,
    parent: &Path<'_>,
    key: &str,
    map: &mut A,
    found: &mut Vec<Drift>,
) -> Result<(), A::Error> {
    let path = Path::Field(parent, key);
    match schema.field(key) {
        Some(field) => map.next_value_seed(Walk { json: field.json, nullable: field.nullable, path: &path, found }),
        None => {
            let TypeName(json_type) = map.next_value()?;
            found.push(Drift { path: path.to_string(), kind: DriftKind::UnknownField, value: json_type.to_owned() });
            Ok(())
        }
    }
}

/// An object key, borrowed from the text unless it has escapes.
struct Key<'de>(Cow<'de, str>);

impl<'de> serde::Deserialize<'de> for Key<'de> {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("an object key")
            }
            fn visit_borrowed_str<E: serde::de::Error>(self, v: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(v)))
            }
            fn visit_str<E: serde::de::Error>(self, v: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(v.to_owned())))
            }
        }
        d.deserialize_str(KeyVisitor)
    }
}

/// The JSON type of a value the models do not know, its contents skipped.
struct TypeName(&'static str);

impl<'de> serde::Deserialize<'de> for TypeName {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct TypeVisitor;
        impl<'de> Visitor<'de> for TypeVisitor {
            type Value = TypeName;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("any JSON value")
            }
            fn visit_bool<E: serde::de::Error>(self, _: bool) -> Result<TypeName, E> {
                Ok(TypeName("boolean"))
            }
            fn visit_i64<E: serde::de::Error>(self, _: i64) -> Result<TypeName, E> {
                Ok(TypeName("integer"))
            }
            fn visit_u64<E: serde::de::Error>(self, _: u64) -> Result<TypeName, E> {
                Ok(TypeName("integer"))
            }
            fn visit_f64<E: serde::de::Error>(self, _: f64) -> Result<TypeName, E> {
                Ok(TypeName("number"))
            }
            fn visit_str<E: serde::de::Error>(self, _: &str) -> Result<TypeName, E> {
                Ok(TypeName("string"))
            }
            fn visit_unit<E: serde::de::Error>(self) -> Result<TypeName, E> {
                Ok(TypeName("null"))
            }
            fn visit_none<E: serde::de::Error>(self) -> Result<TypeName, E> {
                Ok(TypeName("null"))
            }
            fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<TypeName, A::Error> {
                while seq.next_element::<IgnoredAny>()?.is_some() {}
                Ok(TypeName("array"))
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<TypeName, A::Error> {
                while map.next_entry::<IgnoredAny, IgnoredAny>()?.is_some() {}
                Ok(TypeName("object"))
            }
        }
        d.deserialize_any(TypeVisitor)
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn drift(item: serde_json::Value) -> Vec<(String, &'static str, String)> {
        inspect(&item.to_string()).into_iter().map(|d| (d.path, d.kind.as_str(), d.value)).collect()
    }

    fn known_item() -> serde_json::Value {
        json!({
            "session_id": "s", "org_id": "o", "user_id": null, "url": "u", "status": "running",
            "status_detail": null, "origin": "api", "category": null, "session_size": "m", "acus_consumed": 3,
            "num_user_messages": 1, "num_devin_messages": 2, "is_archived": false, "tags": ["a"],
            "structured_output": {"anything": [1, {"goes": true}]},
            "pull_requests": [{"pr_url": "p", "pr_state": null}], "created_at": 1, "updated_at": 2,
            "analysis": {"issues": [{"id": "i", "issue": "x", "impact": "high", "label": "l"}],
                         "action_items": [{"action_item": "a", "type": "knowledge"}], "timeline": []}
        })
    }

    #[test]
    fn an_item_the_models_know_has_no_drift() {
        assert_eq!(drift(known_item()), vec![]);
    }

    #[test]
    fn new_fields_are_reported_with_their_path_and_json_type_once_per_item() {
        let mut item = known_item();
        item["x_new"] = json!({"deep": [1]});
        item["analysis"]["issues"] = json!([
            {"id": "i", "issue": "x", "impact": "high", "label": "l", "severity": 3},
            {"id": "j", "issue": "y", "impact": "low", "label": "l", "severity": 4},
        ]);
        item["pull_requests"][0]["merged_by"] = json!("someone");
        item["analysis"]["new\u{e9}_field"] = json!(null);
        assert_eq!(
            drift(item),
            vec![
                ("analysis.issues[].severity".into(), "unknown_field", "integer".into()),
                ("analysis.new\u{e9}_field".into(), "unknown_field", "null".into()),
                ("pull_requests[].merged_by".into(), "unknown_field", "string".into()),
                ("x_new".into(), "unknown_field", "object".into()),
            ]
        );
    }

    #[test]
    fn enum_values_outside_the_lists_are_reported_per_field_and_cut_when_long() {
        let mut item = known_item();
        item["status"] = json!("paused_for_review");
        item["origin"] = json!("zapier");
        item["analysis"]["action_items"][0]["type"] = json!("security");
        item["category"] = json!("x".repeat(300));
        let found = drift(item);
        assert_eq!(found.len(), 4, "{found:?}");
        assert!(found.contains(&("status".into(), "unknown_enum_value", "paused_for_review".into())));
        assert!(found.contains(&("origin".into(), "unknown_enum_value", "zapier".into())));
        assert!(found.contains(&("analysis.action_items[].type".into(), "unknown_enum_value", "security".into())));
        let long = found.iter().find(|d| d.0 == "category").unwrap();
        assert_eq!(long.2, format!("{}…", "x".repeat(200)));
    }

    #[test]
    fn values_of_another_json_type_are_reported_with_what_was_expected() {
        let mut item = known_item();
        item["acus_consumed"] = json!("12.5");
        item["num_user_messages"] = json!(3.0);
        item["tags"] = json!(null);
        item["title"] = json!(7);
        item["pull_requests"] = json!({"not": "a list"});
        assert_eq!(
            drift(item),
            vec![
                ("acus_consumed".into(), "type_changed", "string (expected number)".into()),
                ("num_user_messages".into(), "type_changed", "number (expected integer)".into()),
                ("pull_requests".into(), "type_changed", "object (expected array)".into()),
                ("tags".into(), "type_changed", "null (expected array)".into()),
                ("title".into(), "type_changed", "integer (expected string)".into()),
            ]
        );
    }
}
