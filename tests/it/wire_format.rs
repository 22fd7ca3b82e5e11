//! The wire format against the spec, not against ourselves (issue 11, item 1).
//!
//! Everywhere else the simulator serializes the product's own `SessionInsights` and `raw` is checked by decoding
//! it with the product's own decoder, so a field name, a `rename`, a required flag or a default that disagrees
//! with the real API would pass. Here nothing comes from the product:
//!
//! * `tests/fixtures/insights-page-{1,2,3}.json` and `insights-page-empty.json` are response bodies written by
//!   hand from the OpenAPI spec's schemas: every field of every schema at least once, every enum value at least
//!   once, and null / absent / empty array for the optional fields (checked below against the schema, not just
//!   claimed). They are served byte for byte over real HTTP to the real client and sync.
//! * `tests/fixtures/insights-expected.json` holds the warehouse rows of every table the loader writes, written by
//!   hand from those pages; the warehouse must equal them, and `sessions.raw` must equal the served item.
//! * `tests/fixtures/sessions-insights.schema.json` is a JSON Schema of the response body written by hand from the
//!   spec. The fixtures and every page the simulator produces must validate against it (with `boon`), and pages
//!   broken in the ways a model can drift from the spec (a renamed field, a wrong type, a missing required field,
//!   a value outside an enum) must not. The schema itself is compared with the OpenAPI spec
//!   (`tests/fixtures/sessions-insights.openapi.yaml`, a copy of the API's spec): the same schemas, properties,
//!   required lists, types and nullability, references, enums and defaults.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, StatusCode, header};
use devin_etl::store::catalogue::Table;
use devin_etl::sync::Mode;
use devin_sim::{Simulator, SimulatorConfig, Switches};
use serde_json::{Value, json};

use crate::common;

/// The pages of one walk, in order, each with the cursor that asks for it (`None`: the first page).
const WALK: [(Option<&str>, &str); 3] = [
    (None, "insights-page-1.json"),
    (Some("cursor-page-2"), "insights-page-2.json"),
    (Some("cursor-page-3"), "insights-page-3.json"),
];
/// The answer to a request filtered by `updated_after` (a run after the first): nothing new.
const EMPTY_PAGE: &str = "insights-page-empty.json";
const EXPECTED: &str = "insights-expected.json";
const SCHEMA: &str = "sessions-insights.schema.json";
const TOKEN: &str = "cog_wire_format_token";

/// The endpoint's query parameters as the spec lists them.
const SPEC_PARAMETERS: &[&str] = &[
    "after",
    "first",
    "session_ids",
    "created_after",
    "created_before",
    "updated_after",
    "updated_before",
    "tags",
    "playbook_id",
    "origins",
    "schedule_id",
    "user_ids",
    "service_user_ids",
    "category",
    "org_ids",
    "include_deleted_orgs",
];

fn fixture_path(name: &str) -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures").join(name)
}

fn fixture_text(name: &str) -> String {
    std::fs::read_to_string(fixture_path(name)).unwrap_or_else(|e| panic!("reading fixture {name}: {e}"))
}

fn fixture(name: &str) -> Value {
    serde_json::from_str(&fixture_text(name)).unwrap_or_else(|e| panic!("fixture {name} is not JSON: {e}"))
}

/// Every hand-written response page.
fn fixture_pages() -> Vec<(&'static str, Value)> {
    WALK.iter().map(|(_, name)| *name).chain([EMPTY_PAGE]).map(|name| (name, fixture(name))).collect()
}

// ---------------------------------------------------------------------------------------------------
// A server of the fixture pages

struct FixtureServer {
    url: String,
    /// `path?query` of every request answered, in order.
    requests: Arc<Mutex<Vec<String>>>,
}

/// Serves the fixture pages as the spec describes the endpoint: bearer auth, the spec's query parameters only,
/// `first` within 1..=200, the page after `after`; the body is the fixture file as written.
async fn serve_fixture_pages() -> FixtureServer {
    let pages: Arc<Vec<(Option<&'static str>, String)>> =
        Arc::new(WALK.iter().map(|(cursor, name)| (*cursor, fixture_text(name))).collect());
    let empty = Arc::new(fixture_text(EMPTY_PAGE));
    let requests = Arc::new(Mutex::new(Vec::new()));
    let log = requests.clone();
    let handler = move |headers: HeaderMap, axum::extract::RawQuery(query): axum::extract::RawQuery| {
        let (pages, empty, log) = (pages.clone(), empty.clone(), log.clone());
        async move {
            let query = query.unwrap_or_default();
            log.lock().unwrap().push(format!("/v3/enterprise/sessions/insights?{query}"));
            let json = |status: StatusCode, body: String| (status, [(header::CONTENT_TYPE, "application/json")], body);
            let detail = |status: StatusCode, msg: String| json(status, json!({ "detail": msg }).to_string());
            let authorization = headers.get(header::AUTHORIZATION).and_then(|v| v.to_str().ok());
            if authorization != Some(&format!("Bearer {TOKEN}")) {
                return detail(StatusCode::UNAUTHORIZED, format!("bad Authorization header {authorization:?}"));
            }
            let params: Vec<(String, String)> = url::form_urlencoded::parse(query.as_bytes()).into_owned().collect();
            if let Some((name, _)) = params.iter().find(|(name, _)| !SPEC_PARAMETERS.contains(&name.as_str())) {
                return detail(StatusCode::UNPROCESSABLE_ENTITY, format!("query parameter {name} is not in the spec"));
            }
            let param = |name: &str| params.iter().find(|(n, _)| n == name).map(|(_, v)| v.as_str());
            match param("first").map(str::parse::<i64>) {
                None => {}
                Some(Ok(first)) if (1..=200).contains(&first) => {}
                Some(_) => return detail(StatusCode::UNPROCESSABLE_ENTITY, "first must be 1..=200".to_owned()),
            }
            if param("updated_after").is_some() {
                return json(StatusCode::OK, empty.to_string());
            }
            match pages.iter().find(|(cursor, _)| *cursor == param("after")) {
                Some((_, body)) => json(StatusCode::OK, body.clone()),
                None => detail(StatusCode::UNPROCESSABLE_ENTITY, format!("unknown cursor {:?}", param("after"))),
            }
        }
    };
    let router = axum::Router::new().route("/v3/enterprise/sessions/insights", axum::routing::get(handler));
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    tokio::spawn(async move { axum::serve(listener, router).await });
    FixtureServer { url, requests }
}

// ---------------------------------------------------------------------------------------------------
// The warehouse against the hand-written rows

/// The columns that identify a row of each table (its primary key).
fn key_columns(table: &str) -> &'static [&'static str] {
    match table {
        "sessions" => &["session_id"],
        "session_pull_requests" => &["session_id", "pr_url"],
        "session_note_usages" => &["session_id", "kind", "position"],
        "session_tags" => &["session_id", "tag"],
        "session_children" => &["session_id", "child_session_id"],
        _ => &["session_id", "position"],
    }
}

fn keyed(table: &str, rows: Vec<Value>) -> BTreeMap<String, Value> {
    let mut out = BTreeMap::new();
    for row in rows {
        let key: Vec<String> = key_columns(table).iter().map(|c| row[c].to_string()).collect();
        let key = key.join("|");
        let row = common::canonical(row);
        assert!(out.insert(key.clone(), row).is_none(), "{table}: two rows with key {key}");
    }
    out
}

/// Every row of `table`; timestamps of `sessions` as UTC ISO-8601, its bookkeeping columns and `raw` left out.
async fn warehouse_rows(store: &devin_etl::store::Store, table: &str) -> BTreeMap<String, Value> {
    let sql = if table == "sessions" {
        r#"select to_jsonb(t) - 'raw' - 'first_synced_at' - 'synced_at' - 'content_hash' - 'content_hash_at'
               || jsonb_build_object(
                   'created_at', to_char(created_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'),
                   'updated_at', to_char(updated_at at time zone 'UTC', 'YYYY-MM-DD"T"HH24:MI:SS"Z"'))
           from sessions t"#
            .to_owned()
    } else {
        format!("select to_jsonb(t) from {table} t")
    };
    let rows: Vec<Value> = sqlx::query_scalar(&sql).fetch_all(store.pool()).await.unwrap();
    keyed(table, rows)
}

fn assert_rows_equal(table: &str, actual: &BTreeMap<String, Value>, expected: &BTreeMap<String, Value>) {
    let missing: Vec<&String> = expected.keys().filter(|k| !actual.contains_key(*k)).collect();
    let extra: Vec<&String> = actual.keys().filter(|k| !expected.contains_key(*k)).collect();
    assert!(missing.is_empty() && extra.is_empty(), "{table}: rows missing {missing:?}, rows not expected {extra:?}");
    for (key, want) in expected {
        let got = &actual[key];
        if got != want {
            let (want, got) = (want.as_object().unwrap(), got.as_object().unwrap());
            let columns: BTreeSet<&String> = want.keys().chain(got.keys()).collect();
            let diffs: Vec<String> = columns
                .into_iter()
                .filter(|c| want.get(*c) != got.get(*c))
                .map(|c| format!("{c}: expected {:?}, got {:?}", want.get(c), got.get(c)))
                .collect();
            panic!("{table} row {key} differs from the hand-written row: {diffs:#?}");
        }
    }
}

/// Asserts that the warehouse holds exactly the hand-written rows, and `raw` exactly the served items.
async fn assert_warehouse_is_as_written(store: &devin_etl::store::Store) {
    let expected = fixture(EXPECTED);
    let tables: BTreeSet<&str> =
        expected.as_object().unwrap().keys().map(String::as_str).filter(|k| *k != "_comment").collect();
    let loaded: BTreeSet<&str> = Table::ALL.iter().map(|t| t.name()).collect();
    assert_eq!(tables, loaded, "insights-expected.json must list every table the loader writes, and only those");
    for table in Table::ALL {
        let name = table.name();
        let rows = expected[name].as_array().unwrap_or_else(|| panic!("{name} in {EXPECTED} is not an array"));
        assert_rows_equal(name, &warehouse_rows(store, name).await, &keyed(name, rows.clone()));
    }
    // `raw` is the item as served: compared with the fixture's JSON, not with what the product's decoder makes of it.
    let served: BTreeMap<String, Value> = fixture_pages()
        .into_iter()
        .flat_map(|(_, page)| page["items"].as_array().unwrap().clone())
        .map(|item| (item["session_id"].as_str().unwrap().to_owned(), common::canonical(item)))
        .collect();
    let raws: Vec<(String, Value)> =
        sqlx::query_as("select session_id, raw from sessions").fetch_all(store.pool()).await.unwrap();
    let raws: BTreeMap<String, Value> = raws.into_iter().map(|(id, raw)| (id, common::canonical(raw))).collect();
    assert_eq!(raws.keys().collect::<Vec<_>>(), served.keys().collect::<Vec<_>>());
    for (id, item) in &served {
        assert_eq!(&raws[id], item, "sessions.raw of {id} is not the item as served");
    }
}

#[tokio::test]
async fn hand_written_pages_served_over_http_load_into_the_hand_written_rows() {
    let db = common::TestDb::create().await;
    let server = serve_fixture_pages().await;
    let syncer = common::build_syncer(common::test_settings(&db.url, &server.url, TOKEN)).await;

    let first = syncer.run_once(Mode::Incremental).await.unwrap();
    assert_eq!((first.pages, first.items), (3, 19), "three pages of 8, 8 and 3 sessions");
    assert_warehouse_is_as_written(syncer.store()).await;
    // Every field, enum value and variant of the spec is in these pages: none of it is drift to the models.
    let drift = syncer.store().drift_report(None).await.unwrap();
    assert!(drift.is_empty(), "the spec's own items reported as schema drift: {drift:#?}");
    let requests = server.requests.lock().unwrap().clone();
    for cursor in ["after=cursor-page-2", "after=cursor-page-3"] {
        assert!(requests.iter().any(|r| r.contains(cursor)), "the walk followed {cursor}: {requests:#?}");
    }

    // A second run asks for what changed since (the page of nothing, every envelope field left out): all stays.
    let second = syncer.run_once(Mode::Incremental).await.unwrap();
    assert_eq!((second.pages, second.items, second.writes.sessions_written), (1, 0, 0));
    assert_warehouse_is_as_written(syncer.store()).await;
    assert!(server.requests.lock().unwrap().last().unwrap().contains("updated_after="));
}

// ---------------------------------------------------------------------------------------------------
// The JSON Schema

struct Validator {
    schemas: boon::Schemas,
    index: boon::SchemaIndex,
}

impl Validator {
    fn new() -> Validator {
        let mut schemas = boon::Schemas::new();
        let mut compiler = boon::Compiler::new();
        compiler.set_default_draft(boon::Draft::V2020_12);
        let location = format!("file://{}", fixture_path(SCHEMA).display());
        compiler.add_resource(&location, fixture(SCHEMA)).unwrap();
        let index = compiler.compile(&location, &mut schemas).unwrap_or_else(|e| panic!("{SCHEMA}: {e:#}"));
        Validator { schemas, index }
    }

    /// `Err` with boon's description of every violation.
    fn validate(&self, page: &Value) -> Result<(), String> {
        self.schemas.validate(page, self.index).map_err(|e| format!("{e:#}"))
    }
}

/// What a set of pages shows of each property of each schema: `Def.prop present`, `absent`, `null`, `empty`
/// (an empty array), and `= value` for every value of a property with an enum.
fn coverage_of(schema: &Value, def: &str, instance: &Value, seen: &mut BTreeSet<String>) {
    let Some(object) = instance.as_object() else { return };
    let def_schema = &schema["$defs"][def];
    for (prop, prop_schema) in def_schema["properties"].as_object().unwrap() {
        let name = format!("{def}.{prop}");
        let Some(value) = object.get(prop) else {
            seen.insert(format!("{name} absent"));
            continue;
        };
        if value.is_null() {
            seen.insert(format!("{name} null"));
        } else {
            seen.insert(format!("{name} present"));
        }
        if value.as_array().is_some_and(Vec::is_empty) {
            seen.insert(format!("{name} empty"));
        }
        if prop_schema.get("enum").is_some() {
            seen.insert(format!("{name} = {value}"));
        }
        let reference = |s: &Value| s["$ref"].as_str().map(|r| r.trim_start_matches("#/$defs/").to_owned());
        let object_ref = reference(prop_schema)
            .or_else(|| prop_schema["anyOf"].as_array().and_then(|alts| alts.iter().find_map(reference)));
        if let Some(target) = object_ref {
            coverage_of(schema, &target, value, seen);
        }
        if let (Some(target), Some(elements)) = (reference(&prop_schema["items"]), value.as_array()) {
            for element in elements {
                coverage_of(schema, &target, element, seen);
            }
        }
    }
}

/// What [`coverage_of`] must find for the fixtures to cover the schema: every property present; optional ones
/// absent; nullable ones null; arrays empty; every enum value.
fn coverage_required(schema: &Value) -> BTreeSet<String> {
    let mut wanted = BTreeSet::new();
    for (def, def_schema) in schema["$defs"].as_object().unwrap() {
        let required: Vec<&str> =
            def_schema["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        for (prop, prop_schema) in def_schema["properties"].as_object().unwrap() {
            let name = format!("{def}.{prop}");
            wanted.insert(format!("{name} present"));
            if !required.contains(&prop.as_str()) {
                wanted.insert(format!("{name} absent"));
            }
            let types: Vec<&str> = match &prop_schema["type"] {
                Value::String(t) => vec![t.as_str()],
                Value::Array(ts) => ts.iter().filter_map(Value::as_str).collect(),
                _ => Vec::new(),
            };
            let null_alternative =
                prop_schema["anyOf"].as_array().is_some_and(|alts| alts.iter().any(|a| a["type"] == "null"));
            if types.contains(&"null") || null_alternative {
                wanted.insert(format!("{name} null"));
            }
            if types.contains(&"array") {
                wanted.insert(format!("{name} empty"));
            }
            for value in prop_schema["enum"].as_array().into_iter().flatten() {
                wanted.insert(format!("{name} = {value}"));
            }
        }
    }
    wanted
}

#[test]
fn the_fixtures_validate_against_the_schema_and_cover_every_field_enum_value_and_variant() {
    let validator = Validator::new();
    let schema = fixture(SCHEMA);
    let mut seen = BTreeSet::new();
    for (name, page) in fixture_pages() {
        if let Err(e) = validator.validate(&page) {
            panic!("{name} does not validate against {SCHEMA}: {e}");
        }
        coverage_of(&schema, "PaginatedResponse_SessionInsightsResponse_", &page, &mut seen);
    }
    let missing: Vec<String> = coverage_required(&schema).into_iter().filter(|c| !seen.contains(c)).collect();
    assert!(missing.is_empty(), "the fixtures do not show: {missing:#?}");
}

#[tokio::test]
async fn every_page_the_simulator_serves_validates_against_the_schema() {
    let validator = Validator::new();
    let sim = Simulator::new(SimulatorConfig { sessions: 300, manual_clock: true, ..SimulatorConfig::default() });
    let server = sim.serve(SocketAddr::from(([127, 0, 0, 1], 0))).await.unwrap();
    let client = reqwest::Client::new();
    let endpoint = format!("{}/v3/enterprise/sessions/insights", server.base_url());
    // The default answers, then with `total` left out (both are what the spec allows).
    for (switches, first) in [(Switches::default(), 37), (Switches { omit_total: true, ..Switches::default() }, 200)] {
        sim.set_switches(switches);
        let (mut after, mut pages, mut items) = (None::<String>, 0, 0);
        loop {
            let mut query = vec![("first", first.to_string())];
            query.extend(after.clone().map(|a| ("after", a)));
            let response = client.get(&endpoint).bearer_auth(sim.token()).query(&query).send().await.unwrap();
            assert_eq!(response.status(), 200);
            let page: Value = response.json().await.unwrap();
            if let Err(e) = validator.validate(&page) {
                panic!("simulator page {pages} (first={first}, after={after:?}) does not validate: {e}");
            }
            pages += 1;
            items += page["items"].as_array().unwrap().len();
            if page["has_next_page"] != true {
                break;
            }
            after = Some(page["end_cursor"].as_str().unwrap().to_owned());
        }
        assert_eq!(items, 300, "the walk read every session ({pages} pages)");
    }
}

#[test]
fn pages_broken_the_ways_a_model_drifts_from_the_spec_do_not_validate() {
    let validator = Validator::new();
    let page = fixture("insights-page-1.json");
    fn rename(o: &mut serde_json::Map<String, Value>, from: &str, to: &str) {
        let v = o.remove(from).unwrap();
        o.insert(to.to_owned(), v);
    }
    fn item(p: &mut Value) -> &mut serde_json::Map<String, Value> {
        p["items"][0].as_object_mut().unwrap()
    }
    type Break = Box<dyn Fn(&mut Value)>;
    let breaks: Vec<(&str, Break)> = vec![
        ("required field renamed", Box::new(|p| rename(item(p), "session_id", "sessionId"))),
        ("optional field renamed", Box::new(|p| rename(item(p), "status_detail", "statusDetail"))),
        (
            "nested field renamed to the model's Rust name",
            Box::new(|p| rename(p["items"][0]["analysis"]["action_items"][0].as_object_mut().unwrap(), "type", "kind")),
        ),
        ("required field missing", Box::new(|p| drop(item(p).remove("session_size")))),
        (
            "required nullable field missing",
            Box::new(|p| drop(p["items"][0]["pull_requests"][0].as_object_mut().unwrap().remove("pr_state"))),
        ),
        ("envelope without items", Box::new(|p| drop(p.as_object_mut().unwrap().remove("items")))),
        ("integer as a string", Box::new(|p| drop(item(p).insert("created_at".into(), json!("1764547200"))))),
        ("integer with a fraction", Box::new(|p| drop(item(p).insert("updated_at".into(), json!(1764550800.5))))),
        ("number as a string", Box::new(|p| drop(item(p).insert("acus_consumed".into(), json!("12.75"))))),
        ("boolean as a string", Box::new(|p| p["has_next_page"] = json!("true"))),
        ("null where not nullable", Box::new(|p| drop(item(p).insert("tags".into(), Value::Null)))),
        ("value outside an enum", Box::new(|p| drop(item(p).insert("status".into(), json!("Running"))))),
        (
            "value outside a nested enum",
            Box::new(|p| p["items"][0]["analysis"]["action_items"][0]["type"] = json!("setup")),
        ),
        ("array as an object", Box::new(|p| p["items"][0]["analysis"]["timeline"] = json!({}))),
    ];
    assert!(validator.validate(&page).is_ok(), "the unbroken page validates");
    for (what, break_it) in breaks {
        let mut broken = page.clone();
        break_it(&mut broken);
        assert!(validator.validate(&broken).is_err(), "a page with {what} validates against {SCHEMA}");
    }
}

// ---------------------------------------------------------------------------------------------------
// The schema against the spec

/// What the schema and the spec must agree on for one property.
#[derive(Debug, Default, PartialEq)]
struct Shape {
    required: bool,
    /// JSON types, `null` included when the property is nullable.
    types: BTreeSet<String>,
    /// Schemas referenced (directly or as an `anyOf` alternative).
    refs: BTreeSet<String>,
    /// The type or referenced schema of an array's elements.
    items: Option<String>,
    /// Enum values as JSON text, `null` included when the property is nullable.
    enums: BTreeSet<String>,
    default: Option<Value>,
}

/// The shape of `prop`; `prefix` is how the document spells references (`#/$defs/`, `#/components/schemas/`).
fn shape(prop: &Value, required: bool, prefix: &str) -> Shape {
    let mut s = Shape { required, default: prop.get("default").cloned(), ..Shape::default() };
    let alternatives: Vec<&Value> = match prop["anyOf"].as_array() {
        Some(alts) => alts.iter().collect(),
        None => vec![prop],
    };
    for alt in alternatives {
        match &alt["type"] {
            Value::String(t) => drop(s.types.insert(t.clone())),
            Value::Array(ts) => s.types.extend(ts.iter().filter_map(Value::as_str).map(str::to_owned)),
            _ => {}
        }
        if let Some(r) = alt["$ref"].as_str() {
            s.refs.insert(r.trim_start_matches(prefix).to_owned());
        }
        s.enums.extend(alt["enum"].as_array().into_iter().flatten().map(Value::to_string));
        let items = &alt["items"];
        s.items = s.items.take().or_else(|| {
            items["$ref"]
                .as_str()
                .map(|r| r.trim_start_matches(prefix).to_owned())
                .or_else(|| items["type"].as_str().map(str::to_owned))
        });
    }
    if !s.enums.is_empty() && s.types.contains("null") {
        s.enums.insert("null".to_owned());
    }
    s
}

/// Every property of every schema of `schemas`, as `(schema, property) -> shape`.
fn shapes(schemas: &serde_json::Map<String, Value>, prefix: &str) -> BTreeMap<(String, String), Shape> {
    let mut out = BTreeMap::new();
    for (name, schema) in schemas {
        let required: Vec<&str> =
            schema["required"].as_array().map(|r| r.iter().filter_map(Value::as_str).collect()).unwrap_or_default();
        for (prop, prop_schema) in schema["properties"].as_object().unwrap() {
            out.insert((name.clone(), prop.clone()), shape(prop_schema, required.contains(&prop.as_str()), prefix));
        }
    }
    out
}

/// The models' JSON shape (`devin_api_model::shape`, what the drift detector compares items with) in the terms of
/// [`Shape`], for the properties the spec describes.
fn model_shapes() -> BTreeMap<(String, String), Shape> {
    use devin_api_model::shape::{Json, schemas};
    let mut out = BTreeMap::new();
    for schema in schemas() {
        for field in schema.fields {
            let mut s = Shape::default();
            match field.json {
                Json::Object(inner) => drop(s.refs.insert(inner.name.to_owned())),
                other => drop(s.types.insert(other.type_name().to_owned())),
            }
            if field.nullable {
                s.types.insert("null".to_owned());
            }
            if let Json::Enum(values) = field.json {
                s.enums.extend(values.iter().map(|v| Value::from(*v).to_string()));
                if field.nullable {
                    s.enums.insert("null".to_owned());
                }
            }
            if let Json::Array(items) = field.json {
                s.items = Some(match items {
                    Json::Object(inner) => inner.name.to_owned(),
                    other => other.type_name().to_owned(),
                });
            }
            out.insert((schema.name.to_owned(), field.name.to_owned()), s);
        }
    }
    out
}

/// The drift detector's idea of "known" is the spec's: the same schemas and properties, JSON types, nullability,
/// array items and enum values (required and defaults are the serde models' business, checked above).
#[test]
fn the_models_shape_says_what_the_openapi_spec_says() {
    let spec: Value = serde_yaml::from_str(&fixture_text("sessions-insights.openapi.yaml")).unwrap();
    let mut theirs = shapes(spec["components"]["schemas"].as_object().unwrap(), "#/components/schemas/");
    theirs.retain(|(schema, _), _| {
        !matches!(
            schema.as_str(),
            "HTTPValidationError" | "ValidationError" | "PaginatedResponse_SessionInsightsResponse_"
        )
    });
    for s in theirs.values_mut() {
        (s.required, s.default) = (false, None);
    }
    let ours = model_shapes();
    let keys: BTreeSet<&(String, String)> = ours.keys().chain(theirs.keys()).collect();
    let differences: Vec<String> = keys
        .into_iter()
        .filter(|k| ours.get(*k) != theirs.get(*k))
        .map(|k| format!("{}.{}: models {:?}, spec {:?}", k.0, k.1, ours.get(k), theirs.get(k)))
        .collect();
    assert!(differences.is_empty(), "devin_api_model::shape disagrees with the spec: {differences:#?}");
}

#[test]
fn the_schema_says_what_the_openapi_spec_says() {
    let spec: Value = serde_yaml::from_str(&fixture_text("sessions-insights.openapi.yaml")).unwrap();
    let response = &spec["paths"]["/v3/enterprise/sessions/insights"]["get"]["responses"]["200"];
    assert_eq!(
        response["content"]["application/json"]["schema"]["$ref"],
        "#/components/schemas/PaginatedResponse_SessionInsightsResponse_"
    );
    let mut spec_schemas = spec["components"]["schemas"].as_object().unwrap().clone();
    // The 422 body's schemas are not part of the 200 response.
    spec_schemas.retain(|name, _| !matches!(name.as_str(), "HTTPValidationError" | "ValidationError"));
    let schema = fixture(SCHEMA);
    assert_eq!(schema["$ref"], "#/$defs/PaginatedResponse_SessionInsightsResponse_");
    let ours = shapes(schema["$defs"].as_object().unwrap(), "#/$defs/");
    let theirs = shapes(&spec_schemas, "#/components/schemas/");
    let keys: BTreeSet<&(String, String)> = ours.keys().chain(theirs.keys()).collect();
    let differences: Vec<String> = keys
        .into_iter()
        .filter(|k| ours.get(*k) != theirs.get(*k))
        .map(|k| format!("{}.{}: schema {:?}, spec {:?}", k.0, k.1, ours.get(k), theirs.get(k)))
        .collect();
    assert!(differences.is_empty(), "{SCHEMA} disagrees with the spec: {differences:#?}");
}
