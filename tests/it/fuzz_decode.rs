//! Issue 4, item 8: decoding whatever the network hands us never panics. Arbitrary bytes, mutated valid pages
//! and item-shaped objects whose fields have the wrong types go through the same path as a real page: the
//! envelope (`PageEnvelope`), each item (`decode_page`) and, for items that decode, staging of every row
//! (`stage`). Errors are fine (and must name the request); panics are not. About 500 cases per property.
//!
//! Issue 11, item 5: typed random sessions (hostile NUL-free unicode in every string, extreme numbers and
//! times) must decode, stage, and go through `Store::write_batch` into PostgreSQL and back unchanged, on the
//! COPY path (new sessions) and on the merge path (a newer version of each, child rows replaced).

use crate::common;

use std::collections::BTreeSet;
use std::sync::atomic::{AtomicUsize, Ordering};

use devin_etl::api::models::{
    ActionItem, Analysis, Classification, FeedbackItem, Issue, NoteUsage, NoteUsageItem, PageEnvelope, PullRequest,
    SessionInsights, SuggestedPrompt, TimelineEvent,
};
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
    assert!(error.contains("invalid value: string \"lots\", expected a number"), "{error}");

    // A number written as a numeric string still loads (and is schema drift, see tests/it/drift.rs).
    let mut stringly = valid_items()[3].clone();
    stringly["acus_consumed"] = json!("12.5");
    let envelope: PageEnvelope = serde_json::from_slice(&page_of(vec![stringly])).unwrap();
    let decoded = decode_page(envelope.items, REQUEST).unwrap();
    assert_eq!(decoded[0].session.acus_consumed, 12.5);
    assert_eq!(decoded[0].drift.len(), 1, "{:?}", decoded[0].drift);

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

// ---------------------------------------------------------------------------------------------------
// Round trip of typed random sessions through the warehouse.

/// Text that breaks naive COPY, array-literal, JSON or SQL quoting, mixed with any printable unicode; never NUL
/// (PostgreSQL's text cannot hold it).
fn hostile() -> impl Strategy<Value = String> {
    let piece = prop_oneof![
        "\\PC{0,10}",
        prop::sample::select(vec![
            "\\",
            "\\N",
            "\\.",
            "NULL",
            "null",
            "\t",
            "\n",
            "\r\n",
            "\r",
            "{",
            "}",
            "{a,\"b\"}",
            "\"",
            "'",
            ",",
            " ",
            "  padded  ",
            "\u{FFFD}",
            "\u{1F600}",
            "\u{202E}",
            "\\u0000",
            "\u{1}",
            "\u{7f}",
            "\u{85}",
            "\u{2028}",
            "$$",
            "%_",
            "ß",
            "\u{10FFFF}",
            "\u{FEFF}",
            "e\u{301}",
            "Ω≈ç√∫",
            "日本語",
            "\u{0}-free",
        ])
        .prop_map(|s| s.replace('\0', "")),
    ];
    prop::collection::vec(piece, 0..4).prop_map(|pieces| pieces.concat())
}

/// Finite doubles of every kind, the extremes included (JSON has no NaN or infinity).
fn double() -> impl Strategy<Value = f64> {
    use prop::num::f64::{NEGATIVE, NORMAL, POSITIVE, SUBNORMAL, ZERO};
    prop_oneof![
        (POSITIVE | NEGATIVE | NORMAL | SUBNORMAL | ZERO),
        // 9.026196664026145e235 is one that serde_json parsed two units in the last place off without its
        // `float_roundtrip` feature.
        prop::sample::select(vec![
            f64::MAX,
            f64::MIN,
            f64::MIN_POSITIVE,
            5e-324,
            -0.0,
            0.1,
            1e300,
            -1e-300,
            9.026196664026145e235,
        ]),
    ]
}

fn bigint() -> impl Strategy<Value = i64> {
    prop_oneof![any::<i64>(), prop::sample::select(vec![i64::MAX, i64::MIN, 0, -1, 1])]
}

/// Unix seconds the service accepts: 1970 to the end of 9999.
fn unix_seconds() -> impl Strategy<Value = i64> {
    prop_oneof![0i64..=253_402_300_799, prop::sample::select(vec![0i64, 1, 253_402_300_799])]
}

fn opt<T: std::fmt::Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Option<T>> {
    prop::option::of(s)
}

fn list<T: std::fmt::Debug>(s: impl Strategy<Value = T>) -> impl Strategy<Value = Vec<T>> {
    prop::collection::vec(s, 0..4)
}

/// A distinct set of strings, as the API's sets (tags, child sessions) are.
fn set() -> impl Strategy<Value = Vec<String>> {
    prop::collection::btree_set(hostile(), 0..4).prop_map(|s| s.into_iter().collect())
}

/// JSON for `structured_output`. Floats stay below 1e15: jsonb keeps numbers as decimals, so a float that JSON
/// writes as `1e18` comes back as the integer 1000000000000000000 (equal as a number, not as a `Value`).
fn structured() -> impl Strategy<Value = serde_json::Map<String, Value>> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        bigint().prop_map(|n| json!(n)),
        (-1e15..1e15f64).prop_map(|f| json!(f)),
        hostile().prop_map(Value::String),
    ];
    let value = leaf.prop_recursive(2, 12, 3, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..3).prop_map(Value::Array),
            prop::collection::btree_map(hostile(), inner, 0..3).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    });
    prop::collection::btree_map(hostile(), value, 0..4).prop_map(|m| m.into_iter().collect())
}

/// GitHub URLs the service parses (repo and number, up to the largest `integer`) and opaque ones it does not.
fn pull_requests() -> impl Strategy<Value = Vec<PullRequest>> {
    let url = prop_oneof![
        ("[a-z0-9-]{1,8}", "[a-z0-9_-]{1,4}(\\.[a-z0-9_-]{1,3})?", 0..=i32::MAX)
            .prop_map(|(owner, repo, n)| format!("https://github.com/{owner}/{repo}/pull/{n}")),
        hostile().prop_map(|s| format!("opaque:{s}")),
    ];
    prop::collection::btree_map(url, opt(hostile()), 0..4)
        .prop_map(|m| m.into_iter().map(|(pr_url, pr_state)| PullRequest { pr_url, pr_state }).collect())
}

fn analysis() -> impl Strategy<Value = Analysis> {
    let action = (hostile(), opt(hostile()), hostile()).prop_map(|(action_item, issue_id, kind)| ActionItem {
        action_item,
        issue_id,
        kind,
    });
    let classification = (hostile(), double(), set(), set()).prop_map(
        |(category, confidence, programming_languages, tools_and_frameworks)| Classification {
            category,
            confidence,
            programming_languages,
            tools_and_frameworks,
        },
    );
    let issue = (hostile(), hostile(), hostile(), hostile()).prop_map(|(id, issue, impact, label)| Issue {
        id,
        issue,
        impact,
        label,
    });
    let note = || {
        (hostile(), hostile(), hostile()).prop_map(|(note_id, message, reason)| NoteUsageItem {
            note_id,
            message,
            reason,
        })
    };
    let notes =
        (list(note()), list(note())).prop_map(|(good_usages, bad_usages)| NoteUsage { good_usages, bad_usages });
    let feedback = (hostile(), hostile(), hostile(), opt(hostile()))
        .prop_map(|(summary, excerpt, details, issue_id)| FeedbackItem { summary, excerpt, details, issue_id });
    let prompt =
        (hostile(), hostile(), list(feedback)).prop_map(|(original_prompt, suggested_prompt, feedback_items)| {
            SuggestedPrompt { original_prompt, suggested_prompt, feedback_items }
        });
    let event = (hostile(), hostile(), hostile(), opt(hostile()))
        .prop_map(|(title, description, color, issue_id)| TimelineEvent { title, description, color, issue_id });
    (list(action), opt(classification), list(issue), opt(notes), opt(prompt), list(event)).prop_map(
        |(action_items, classification, issues, note_usage, suggested_prompt, timeline)| Analysis {
            action_items,
            classification,
            issues,
            note_usage,
            suggested_prompt,
            timeline,
        },
    )
}

/// A session with a random value of its type in every field; `session_id` is set by the caller.
fn session() -> impl Strategy<Value = SessionInsights> {
    let texts = (hostile(), opt(hostile()), opt(hostile()), opt(hostile()), hostile(), hostile(), opt(hostile()));
    let more_texts = (opt(hostile()), opt(hostile()), opt(hostile()), hostile(), opt(hostile()), opt(hostile()));
    let numbers = (double(), bigint(), bigint(), any::<bool>(), unix_seconds(), unix_seconds());
    let collections = (opt(set()), set(), opt(structured()), pull_requests(), opt(analysis()));
    (texts, more_texts, numbers, collections).prop_map(
        |(
            (org_id, user_id, service_user_id, title, url, status, status_detail),
            (origin, category, subcategory, session_size, playbook_id, parent_session_id),
            (acus_consumed, num_user_messages, num_devin_messages, is_archived, created_at, updated_at),
            (child_session_ids, tags, structured_output, pull_requests, analysis),
        )| SessionInsights {
            session_id: String::new(),
            org_id,
            user_id,
            service_user_id,
            title,
            url,
            status,
            status_detail,
            origin,
            category,
            subcategory,
            session_size,
            acus_consumed,
            num_user_messages,
            num_devin_messages,
            is_archived,
            playbook_id,
            parent_session_id,
            child_session_ids,
            tags,
            structured_output,
            pull_requests,
            created_at,
            updated_at,
            analysis,
        },
    )
}

/// Decodes `sessions` as one page, stages them and writes the batch; returns the rows written to `sessions`.
async fn load(store: &devin_etl::store::Store, sessions: &[SessionInsights]) -> u64 {
    let items: Vec<Value> = sessions.iter().map(|s| serde_json::to_value(s).unwrap()).collect();
    let envelope: PageEnvelope = serde_json::from_slice(&page_of(items)).unwrap();
    let decoded = decode_page(envelope.items, REQUEST).expect("typed values decode");
    let mut batch = Batch::new();
    for item in &decoded {
        stage(&mut batch, common::DEFAULT_SOURCE, item);
    }
    assert_eq!(batch.sessions(), sessions.len());
    store.write_batch(common::DEFAULT_SOURCE, &batch, &[]).await.expect("the batch is written").sessions_written
}

#[test]
fn typed_random_sessions_go_through_the_warehouse_and_come_back_equal() {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
    let (db, store) = runtime.block_on(async {
        let db = common::TestDb::create().await;
        let settings = common::test_settings(&db.url, "http://127.0.0.1:9", "cog_unused");
        let store = devin_etl::app::migrated_store(&settings).await.unwrap();
        (db, store)
    });
    static CASE: AtomicUsize = AtomicUsize::new(0);
    let config = ProptestConfig { cases: 24, failure_persistence: None, ..ProptestConfig::default() };
    let versions = prop::collection::vec((session(), session(), "[^|\\x00]{0,12}"), 1..4);
    proptest::test_runner::TestRunner::new(config)
        .run(&versions, |versions| {
            let case = CASE.fetch_add(1, Ordering::Relaxed);
            let mut first = Vec::new();
            let mut second = Vec::new();
            for (i, (mut a, mut b, suffix)) in versions.into_iter().enumerate() {
                // Unique across cases, never blank, no `|` (the harness's row keys use it).
                a.session_id = format!("fuzz-{case}-{i}-{suffix}");
                b.session_id = a.session_id.clone();
                // The second version is never older, so the merge takes it.
                b.updated_at = b.updated_at.max(a.updated_at);
                first.push(a);
                second.push(b);
            }
            let ids: BTreeSet<String> = first.iter().map(|s| s.session_id.clone()).collect();
            runtime.block_on(async {
                // New sessions: the COPY path.
                assert_eq!(load(&store, &first).await, first.len() as u64);
                common::assert_warehouse_matches_where(&store, &first, |id| ids.contains(id)).await;
                // A newer version of each: the merge path, every child row replaced.
                let changed = first.iter().zip(&second).filter(|(a, b)| a != b).count();
                assert_eq!(load(&store, &second).await, changed as u64);
                common::assert_warehouse_matches_where(&store, &second, |id| ids.contains(id)).await;
            });
            Ok(())
        })
        .unwrap();
    drop(store);
    drop(db);
}
