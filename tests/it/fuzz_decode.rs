//! Issue 4, item 8: decoding whatever the network hands us never panics. Arbitrary bytes, mutated valid pages
//! and item-shaped objects whose fields have the wrong types go through the same path as a real page: the
//! envelope (`PageEnvelope`), each item (`decode_page`) and, for items that decode, staging of every row
//! (`stage`). Errors are fine (and must name the request); panics are not. About 500 cases per property.

use devin_etl::api::models::{PageEnvelope, SessionInsights};
use devin_etl::store::Batch;
use devin_etl::sync::normalize::{decode_page, dedupe, stage};
use devin_sim::{Simulator, SimulatorConfig};
use proptest::prelude::*;
use serde_json::{Value, json};

const REQUEST: &str = "/v3/enterprise/sessions/insights?first=2";

/// Valid items, with every rare shape the simulator generates (long texts, odd characters, empty analysis…).
fn valid_items() -> &'static [Value] {
    static ITEMS: std::sync::OnceLock<Vec<Value>> = std::sync::OnceLock::new();
    ITEMS.get_or_init(|| {
        let sim = Simulator::new(SimulatorConfig { sessions: 24, manual_clock: true, ..SimulatorConfig::default() });
        sim.sessions().iter().map(|s| serde_json::to_value(s).unwrap()).collect()
    })
}

/// The full path a page takes before the database: envelope, items, rows. Returns how many items loaded.
fn decode_all(bytes: &[u8]) -> Option<usize> {
    let envelope: PageEnvelope = serde_json::from_slice(bytes).ok()?;
    match decode_page(envelope.items, REQUEST) {
        Ok(mut items) => {
            let mut batch = Batch::new();
            for item in &items {
                assert!(serde_json::from_str::<Value>(&item.raw).is_ok(), "raw stays valid JSON");
                stage(&mut batch, "devin", item);
            }
            assert_eq!(batch.sessions(), items.len(), "one sessions row per item");
            dedupe(&mut items);
            Some(items.len())
        }
        Err(e) => {
            let message = e.to_string();
            assert!(message.contains(REQUEST), "the error names the request: {message}");
            None
        }
    }
}

fn page_of(items: Vec<Value>) -> Vec<u8> {
    serde_json::to_vec(&json!({ "items": items, "end_cursor": "abc", "has_next_page": true, "total": 2 })).unwrap()
}

/// Any JSON value, a few levels deep, with awkward strings (NUL, quotes, non-ASCII) and numbers.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<u64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("JSON has no NaN or infinity", |f| f.is_finite()).prop_map(|f| json!(f)),
        "\\PC{0,12}".prop_map(Value::String),
        Just(json!("\u{0}")),
        Just(json!("https://github.com/a/b/pull/1\u{0}")),
        Just(json!(-1)),
        Just(json!(1_700_000_000_000_i64)),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map("[a-z_]{0,10}", inner, 0..4)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// Walks `v` depth first; at each node the next choice may replace it with a wild value or drop an object member.
fn mutate(v: &mut Value, choices: &mut impl Iterator<Item = u8>, wild: &mut impl Iterator<Item = Value>) {
    match choices.next() {
        Some(c) if c < 16 => {
            *v = wild.next().unwrap_or(Value::Null);
            return;
        }
        None => return,
        _ => {}
    }
    match v {
        Value::Object(o) => {
            let keys: Vec<String> = o.keys().cloned().collect();
            for k in keys {
                if choices.next().is_some_and(|c| c < 10) {
                    o.remove(&k);
                } else if let Some(child) = o.get_mut(&k) {
                    mutate(child, choices, wild);
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(|child| mutate(child, choices, wild)),
        _ => {}
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 500, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..400)) {
        decode_all(&bytes);
    }

    #[test]
    fn a_valid_page_with_bytes_flipped_cut_or_inserted_never_panics(
        pick in 0usize..24,
        edits in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>(), 0u8..3), 1..6),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        let items = valid_items();
        let mut bytes = page_of(vec![items[pick].clone(), items[(pick + 1) % items.len()].clone()]);
        for (at, byte, op) in edits {
            let i = at.index(bytes.len());
            match op {
                0 => bytes[i] = byte,
                1 => bytes.insert(i, byte),
                _ => {
                    bytes.remove(i);
                }
            }
        }
        if let Some(cut) = cut {
            bytes.truncate(cut.index(bytes.len() + 1));
        }
        decode_all(&bytes);
    }

    #[test]
    fn items_with_the_right_keys_and_wrong_types_never_panic(
        pick in 0usize..24,
        choices in prop::collection::vec(any::<u8>(), 0..200),
        wild in prop::collection::vec(json_value(), 1..8),
    ) {
        let mut item = valid_items()[pick].clone();
        let mut wild = wild.into_iter().cycle();
        // Never replace the item itself: start with its members.
        let mut choices = std::iter::once(255).chain(choices);
        mutate(&mut item, &mut choices, &mut wild);
        decode_all(&page_of(vec![item, valid_items()[0].clone()]));
    }

    #[test]
    fn items_made_of_random_values_under_the_spec_keys_never_panic(
        values in prop::collection::vec(json_value(), 27),
        present in prop::collection::vec(any::<bool>(), 27),
    ) {
        let keys = [
            "session_id", "org_id", "user_id", "service_user_id", "title", "url", "status", "status_detail",
            "origin", "category", "subcategory", "session_size", "acus_consumed", "num_user_messages",
            "num_devin_messages", "is_archived", "playbook_id", "parent_session_id", "child_session_ids", "tags",
            "structured_output", "pull_requests", "created_at", "updated_at", "analysis", "x_unknown", "total",
        ];
        let item: serde_json::Map<String, Value> = keys
            .iter()
            .zip(values)
            .zip(present)
            .filter(|(_, p)| *p)
            .map(|((k, v), _)| ((*k).to_owned(), v))
            .collect();
        decode_all(&page_of(vec![Value::Object(item)]));
    }
}

#[test]
fn every_valid_item_decodes_and_stages() {
    let items = valid_items().to_vec();
    assert_eq!(decode_all(&page_of(items)), Some(24));
}

#[test]
fn a_wrong_type_or_a_missing_field_fails_the_page_naming_item_and_field() {
    let mut wrong = valid_items()[3].clone();
    wrong["acus_consumed"] = json!("lots");
    let id = wrong["session_id"].as_str().unwrap().to_owned();
    let envelope: PageEnvelope = serde_json::from_slice(&page_of(vec![valid_items()[0].clone(), wrong])).unwrap();
    let error = decode_page(envelope.items, REQUEST).unwrap_err().to_string();
    assert!(error.contains(&format!("GET {REQUEST} returned an invalid item #1 (session_id {id})")), "{error}");
    assert!(error.contains("invalid type: string \"lots\""), "{error}");

    let mut missing = valid_items()[5].clone();
    missing.as_object_mut().unwrap().remove("url");
    let envelope: PageEnvelope = serde_json::from_slice(&page_of(vec![missing])).unwrap();
    let error = decode_page(envelope.items, REQUEST).unwrap_err().to_string();
    assert!(error.contains("missing field `url`"), "{error}");

    let mut millis = valid_items()[6].clone();
    millis["updated_at"] = json!(1_764_000_000_000_i64);
    let envelope: PageEnvelope = serde_json::from_slice(&page_of(vec![millis])).unwrap();
    let error = decode_page(envelope.items, REQUEST).unwrap_err().to_string();
    assert!(error.contains("milliseconds?"), "{error}");
}

#[test]
fn unknown_values_and_fields_decode_fine() {
    let mut item = valid_items()[2].clone();
    item["status"] = json!("hibernating");
    item["session_size"] = json!("xxl");
    item["x_future"] = json!({"nested": [1, "two"]});
    let envelope: PageEnvelope = serde_json::from_slice(&page_of(vec![item])).unwrap();
    let decoded = decode_page(envelope.items, REQUEST).unwrap();
    let session: &SessionInsights = &decoded[0].session;
    assert_eq!((session.status.as_str(), session.session_size.as_str()), ("hibernating", "xxl"));
    assert!(decoded[0].raw.contains("x_future"), "unknown fields are kept in raw");
}
