//! The dbt package in `dbt/` (issue 15).
//!
//! * Its sources (`dbt/models/staging/_devin__sources.yml`) and doc blocks (`dbt/models/staging/_devin__docs.md`)
//!   are generated from the catalog of a freshly migrated warehouse — every table and view of the schema with the
//!   text of its `COMMENT ON`s — so the database and dbt say the same thing. A test regenerates them and fails when
//!   they differ from the committed files. After a migration that adds or changes tables, views or comments:
//!
//!   ```sh
//!   DEVIN_ETL_BLESS_DBT=1 scripts/test --test it dbt_package::sources
//!   ```
//!
//! * `dbt build` and `dbt source freshness` run with real dbt (dbt-core and dbt-postgres, pinned in
//!   `scripts/dbt-requirements.txt`, in the virtual environment `scripts/install-test-tools` makes) against a
//!   warehouse loaded from the simulator by real syncs, and a mart's figures are checked against the views and the
//!   simulator's truth. A second build on a warehouse with enum values the API does not document yet must succeed
//!   with the accepted_values tests only warning.
//!
//! Without dbt those tests print a loud SKIPPED notice and return; with `DEVIN_ETL_REQUIRE_DBT=1` (as in `.ci/run`)
//! they fail instead.

use crate::common::{self, TestApp};

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Instant;

use devin_etl::api::models::known;
use devin_etl::sync::Mode;
use devin_sim::{SimulatorConfig, Switches};
use serde_yaml::{Mapping, Value};
use sqlx::PgPool;

const SOURCES_YML: &str = "dbt/models/staging/_devin__sources.yml";
const DOCS_MD: &str = "dbt/models/staging/_devin__docs.md";
const BLESS: &str = "DEVIN_ETL_BLESS_DBT";
const REGENERATE: &str = "DEVIN_ETL_BLESS_DBT=1 scripts/test --test it dbt_package::sources";

/// The one table of the schema that is not the warehouse's: the migration tool's bookkeeping.
const NOT_SOURCES: &[&str] = &["_sqlx_migrations"];

/// The columns that hold the API's enums, with the values the API documents (`devin_api_model::known`, from the
/// OpenAPI spec). A value the API adds later is stored as it comes (see "Schema drift" in the README): their
/// accepted_values tests only warn.
fn api_enums() -> [(&'static str, &'static str, &'static [&'static str]); 6] {
    [
        ("sessions", "status", known::STATUS),
        ("sessions", "status_detail", known::STATUS_DETAIL),
        ("sessions", "origin", known::ORIGIN),
        ("sessions", "category", known::CATEGORY),
        ("sessions", "session_size", known::SESSION_SIZE),
        ("session_action_items", "type", known::ACTION_ITEM_TYPE),
    ]
}

/// Source freshness: how far the warehouse's data reaches, on the database's clock. `sync_state.watermark_observed_at`
/// is when (database time) the sync observed the API server time its watermark was taken from (the watermark is
/// that time minus `sync.settle`): every change up to then is in the warehouse. It moves with every complete
/// incremental walk (and a finished backfill), also when nothing changed, and never with an enrichment or reconcile
/// run alone. The oldest source counts, so one source that falls behind is enough. 1 hour is
/// `server.max_staleness`'s default (when `/readyz` turns unready and the `stale` alert fires); 2 hours is where the
/// Grafana dashboard's sync-lag panel turns red.
const FRESHNESS_QUERY: &str = "select min(watermark_observed_at) from {{ this }}";
const WARN_AFTER_HOURS: u64 = 1;
const ERROR_AFTER_HOURS: u64 = 2;

fn repo() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
}

// ---------------------------------------------------------------------------------------------------------------
// The generator

struct Relation {
    name: String,
    /// `table` or `view`.
    kind: &'static str,
    description: String,
    columns: Vec<Column>,
}

struct Column {
    name: String,
    data_type: String,
    description: String,
}

/// Every table and view of the migrated schema (`current_schema()` of `pool`), with its comments. Panics naming
/// each relation or column that has no comment: the generated files must describe everything.
async fn catalog(pool: &PgPool) -> Vec<Relation> {
    let relations: Vec<(i64, String, String, Option<String>)> = sqlx::query_as(
        "select c.oid::int8, c.relname::text, c.relkind::text, obj_description(c.oid, 'pg_class')
         from pg_class c
         join pg_namespace n on n.oid = c.relnamespace
         where n.nspname = current_schema() and c.relkind in ('r', 'p', 'v', 'm') and c.relname <> all($1)
         order by c.relkind = 'v', c.relname",
    )
    .bind(NOT_SOURCES)
    .fetch_all(pool)
    .await
    .unwrap();
    let mut undocumented = Vec::new();
    let mut out = Vec::new();
    for (oid, name, relkind, description) in relations {
        let columns: Vec<(String, String, Option<String>)> = sqlx::query_as(
            "select attname::text, format_type(atttypid, atttypmod), col_description(attrelid, attnum)
             from pg_attribute
             where attrelid = $1::int8::oid and attnum > 0 and not attisdropped
             order by attnum",
        )
        .bind(oid)
        .fetch_all(pool)
        .await
        .unwrap();
        if description.is_none() {
            undocumented.push(name.clone());
        }
        let columns = columns
            .into_iter()
            .map(|(column, data_type, description)| {
                if description.is_none() {
                    undocumented.push(format!("{name}.{column}"));
                }
                Column { name: column, data_type, description: description.unwrap_or_default() }
            })
            .collect();
        let kind = if relkind == "v" { "view" } else { "table" };
        out.push(Relation { name, kind, description: description.unwrap_or_default(), columns });
    }
    assert!(
        undocumented.is_empty(),
        "these tables, views or columns have no COMMENT ON, so the dbt sources cannot describe them: {undocumented:?}. \
         Add the comments in a migration, then regenerate: {REGENERATE}"
    );
    out
}

fn map<const N: usize>(entries: [(&str, Value); N]) -> Value {
    Value::Mapping(entries.into_iter().map(|(k, v)| (Value::from(k), v)).collect::<Mapping>())
}

fn strings(values: &[&str]) -> Value {
    Value::Sequence(values.iter().map(|v| Value::from(*v)).collect())
}

const HEADER: &str = "\
# GENERATED by tests/it/dbt_package.rs from the catalog of a freshly migrated warehouse: every table and view of the
# schema with the text of its COMMENT ONs (migrations/*.sql are the one source of truth). Do not edit: change the
# comments in a migration, then regenerate with
#   DEVIN_ETL_BLESS_DBT=1 scripts/test --test it dbt_package::sources
# (scripts/test fails while this file differs from what the migrations say).
";

/// The sources YAML: one source `devin` holding every table and view, with descriptions, column types, the
/// freshness of `sync_state` and the API enums' accepted_values tests (warn only).
fn sources_yml(relations: &[Relation]) -> String {
    let enums = api_enums();
    let tables: Vec<Value> = relations
        .iter()
        .map(|r| {
            let columns: Vec<Value> = r
                .columns
                .iter()
                .map(|c| {
                    let mut column = map([
                        ("name", c.name.as_str().into()),
                        ("data_type", c.data_type.as_str().into()),
                        ("description", c.description.as_str().into()),
                    ]);
                    if let Some((_, _, values)) = enums.iter().find(|(t, col, _)| *t == r.name && *col == c.name) {
                        let test = map([(
                            "accepted_values",
                            map([
                                ("arguments", map([("values", strings(values))])),
                                ("config", map([("severity", "warn".into())])),
                            ]),
                        )]);
                        column.as_mapping_mut().unwrap().insert("data_tests".into(), Value::Sequence(vec![test]));
                    }
                    column
                })
                .collect();
            let mut table = map([
                ("name", r.name.as_str().into()),
                ("description", r.description.as_str().into()),
                ("meta", map([("relation", r.kind.into())])),
            ]);
            let t = table.as_mapping_mut().unwrap();
            if r.name == "sync_state" {
                let after = |hours: u64| map([("count", hours.into()), ("period", "hour".into())]);
                t.insert(
                    "config".into(),
                    map([
                        ("loaded_at_query", FRESHNESS_QUERY.into()),
                        (
                            "freshness",
                            map([("warn_after", after(WARN_AFTER_HOURS)), ("error_after", after(ERROR_AFTER_HOURS))]),
                        ),
                    ]),
                );
            }
            t.insert("columns".into(), Value::Sequence(columns));
            table
        })
        .collect();
    let source = map([
        ("name", "devin".into()),
        (
            "description",
            "The warehouse devin-etl keeps in step with the Devin API's session insights: its tables and its \
             documented views (soft-deleted sessions left out, days and weeks in UTC). Point the vars \
             devin_etl_schema (default devin, devin-etl's database.schema) and devin_etl_database (default the \
             target's database) at it."
                .into(),
        ),
        ("database", r#"{{ var("devin_etl_database", target.database) }}"#.into()),
        ("schema", r#"{{ var("devin_etl_schema", "devin") }}"#.into()),
        ("tables", Value::Sequence(tables)),
    ]);
    let doc = map([("version", 2.into()), ("sources", Value::Sequence(vec![source]))]);
    format!("{HEADER}{}", serde_yaml::to_string(&doc).unwrap())
}

/// The doc blocks: `devin__RELATION` and `devin__RELATION__COLUMN` for every table, view and column, so that the
/// package's models describe their columns with the warehouse's own text (`{{ doc('devin__v_daily_usage__acus') }}`).
fn docs_md(relations: &[Relation]) -> String {
    let header: Vec<&str> = HEADER.lines().map(|l| l.strip_prefix("# ").unwrap_or(l)).collect();
    let mut text = format!("{{#\n{}\n#}}\n", header.join("\n"));
    for r in relations {
        text.push_str(&format!("\n{{% docs devin__{} %}}{}{{% enddocs %}}\n", r.name, r.description));
        for c in &r.columns {
            text.push_str(&format!("{{% docs devin__{}__{} %}}{}{{% enddocs %}}\n", r.name, c.name, c.description));
        }
    }
    text
}

#[tokio::test]
async fn sources_and_doc_blocks_say_what_the_migrations_comments_say() {
    let (_db, store) = common::migrated_warehouse().await;
    let relations = catalog(store.pool()).await;
    assert!(relations.iter().any(|r| r.name == "sessions") && relations.iter().any(|r| r.name == "v_daily_usage"));
    let bless = std::env::var(BLESS).is_ok_and(|v| !v.is_empty() && v != "0");
    let mut stale = Vec::new();
    for (path, generated) in [(SOURCES_YML, sources_yml(&relations)), (DOCS_MD, docs_md(&relations))] {
        let file = repo().join(path);
        let committed = std::fs::read_to_string(&file).unwrap_or_default();
        if committed == generated {
            continue;
        }
        if bless {
            std::fs::write(&file, &generated).unwrap_or_else(|e| panic!("{path}: {e}"));
            let _ = writeln!(std::io::stderr().lock(), "{BLESS}: wrote {path}");
        } else {
            let line = committed
                .lines()
                .zip(generated.lines())
                .position(|(a, b)| a != b)
                .unwrap_or(committed.lines().count().min(generated.lines().count()));
            stale.push(format!(
                "{path} differs from what the migrated schema says, from line {}:\n  committed: {:?}\n  generated: {:?}",
                line + 1,
                committed.lines().nth(line).unwrap_or("(end of file)"),
                generated.lines().nth(line).unwrap_or("(end of file)")
            ));
        }
    }
    assert!(
        stale.is_empty(),
        "{}\nThe dbt package's generated files are out of date (a migration changed tables, views or comments). \
         Regenerate them with\n    {REGENERATE}\nand commit them.",
        stale.join("\n")
    );
}

// ---------------------------------------------------------------------------------------------------------------
// Real dbt

const TARGET_SCHEMA: &str = "analytics";
const BUILD_LOG: &str = "target/test-artifacts/dbt-build.log";
const NEW_ENUM_VALUES_LOG: &str = "target/test-artifacts/dbt-build-new-enum-values.log";

fn env_set(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0")
}

/// The virtual environment `scripts/install-test-tools` installs dbt into (the same rule as the script's).
fn dbt_venv() -> PathBuf {
    if let Some(dir) = std::env::var_os("DEVIN_ETL_DBT_VENV") {
        return dir.into();
    }
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(&std::env::var_os("HOME").unwrap_or_else(|| "/tmp".into())).join(".cache"));
    cache.join("devin-etl/dbt-venv")
}

/// The dbt executable: `DEVIN_ETL_DBT`, else the project's virtual environment, else `dbt` on PATH.
fn dbt() -> Option<PathBuf> {
    if let Some(path) = std::env::var_os("DEVIN_ETL_DBT") {
        return Some(path.into());
    }
    let venv = dbt_venv().join("bin/dbt");
    if venv.is_file() {
        return Some(venv);
    }
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|dir| dir.join("dbt")).find(|p| p.is_file())
}

/// dbt, or `None` after a loud SKIPPED notice (a failure under `DEVIN_ETL_REQUIRE_DBT=1`).
fn dbt_or_skip(test: &str) -> Option<PathBuf> {
    let found = dbt();
    if found.is_none() {
        if env_set("DEVIN_ETL_REQUIRE_DBT") {
            panic!("dbt is not installed and DEVIN_ETL_REQUIRE_DBT is set: run scripts/install-test-tools");
        }
        let bar = "!".repeat(100);
        // Straight to the process's stderr: the test harness captures `eprintln!` of passing tests.
        let _ = writeln!(
            std::io::stderr().lock(),
            "\n{bar}\n!!! SKIPPED: dbt not installed (run scripts/install-test-tools; looked in {} and on PATH)\n\
             !!! dbt_package::{test} checked nothing. Set DEVIN_ETL_REQUIRE_DBT=1 to make this a failure.\n{bar}\n",
            dbt_venv().display()
        );
    }
    found
}

/// The package run from the repository against one test database: a profile, target and log folders of its own
/// in a temporary folder (removed when dropped), so the repository stays clean.
struct DbtRun {
    dbt: PathBuf,
    dir: PathBuf,
    /// Handed to dbt in the environment (the profile reads it with env_var), never written to a file.
    password: String,
}

struct DbtOutput {
    success: bool,
    text: String,
}

impl DbtOutput {
    /// The counts of dbt's closing line `Done. PASS=… WARN=… ERROR=… SKIP=… NO-OP=… TOTAL=…`.
    fn summary(&self) -> BTreeMap<String, u64> {
        let line = self.text.lines().rev().find(|l| l.contains("Done. PASS=")).unwrap_or_else(|| {
            panic!("no `Done. PASS=…` line in dbt's output:\n{}", self.text);
        });
        line.split_whitespace()
            .filter_map(|word| word.split_once('='))
            .filter_map(|(k, v)| Some((k.to_owned(), v.parse().ok()?)))
            .collect()
    }

    /// Names of the nodes whose result line has this status (`WARN`, `ERROR`, `FAIL`, …).
    fn nodes(&self, status: &str) -> Vec<String> {
        let marker = format!(" {status} ");
        self.text
            .lines()
            .filter_map(|l| {
                let (_, rest) = l.split_once(" of ")?;
                let (_, rest) = rest.split_once(&marker)?;
                rest.split_whitespace().find(|w| !w.chars().all(|c| c.is_ascii_digit())).map(str::to_owned)
            })
            .collect()
    }

    /// From dbt's "Finished running" line on: what the closing summary says.
    fn tail(&self) -> String {
        let lines: Vec<&str> = self.text.lines().collect();
        let from = lines.iter().rposition(|l| l.contains("Finished running")).unwrap_or(lines.len().saturating_sub(8));
        lines[from..].join("\n")
    }
}

/// A URL component with its `%XX` escapes decoded.
fn percent_decoded(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = (bytes[i] == b'%').then(|| s.get(i + 1..i + 3)).flatten();
        match hex.and_then(|h| u8::from_str_radix(h, 16).ok()) {
            Some(byte) => {
                out.push(byte);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

impl DbtRun {
    fn new(dbt: PathBuf, database_url: &str) -> DbtRun {
        let url = url::Url::parse(database_url).unwrap();
        let dir = std::env::temp_dir().join(common::unique_name("devin_etl_dbt"));
        std::fs::create_dir_all(&dir).unwrap();
        // Values JSON-quoted: YAML reads them as strings.
        let quote = |s: &str| serde_json::to_string(&percent_decoded(s)).unwrap();
        let profile = format!(
            "devin_etl:\n  target: test\n  outputs:\n    test:\n      type: postgres\n      host: {}\n      port: {}\n      \
             user: {}\n      password: \"{{{{ env_var('DEVIN_ETL_DBT_PASSWORD', '') }}}}\"\n      dbname: {}\n      \
             schema: {TARGET_SCHEMA}\n      threads: 4\n",
            quote(url.host_str().unwrap_or("127.0.0.1")),
            url.port().unwrap_or(5432),
            quote(url.username()),
            quote(url.path().trim_start_matches('/')),
        );
        std::fs::write(dir.join("profiles.yml"), profile).unwrap();
        DbtRun { dbt, dir, password: percent_decoded(url.password().unwrap_or("")) }
    }

    /// `dbt ARGS` on the package in `dbt/`, against the test database.
    async fn run(&self, args: &[&str]) -> DbtOutput {
        let started = Instant::now();
        let dir = self.dir.to_str().unwrap();
        let output = tokio::process::Command::new(&self.dbt)
            .args(args)
            .args(["--project-dir", "dbt", "--profiles-dir", dir])
            .args(["--target-path", &format!("{dir}/target"), "--log-path", &format!("{dir}/logs")])
            .args(["--no-use-colors", "--no-version-check"])
            .current_dir(repo())
            // No tracking events to send (and no network to send them to).
            .env("DBT_SEND_ANONYMOUS_USAGE_STATS", "false")
            .env("DEVIN_ETL_DBT_PASSWORD", &self.password)
            .stdin(Stdio::null())
            .kill_on_drop(true)
            .output()
            .await
            .unwrap_or_else(|e| panic!("{}: {e}", self.dbt.display()));
        let text = format!("{}{}", String::from_utf8_lossy(&output.stdout), String::from_utf8_lossy(&output.stderr));
        let _ = writeln!(
            std::io::stderr().lock(),
            "dbt {} took {:.1} s (exit {:?})",
            args.join(" "),
            started.elapsed().as_secs_f64(),
            output.status.code()
        );
        DbtOutput { success: output.status.success(), text }
    }
}

impl Drop for DbtRun {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// A warehouse loaded by real syncs from the simulator: a backfill, then a simulated hour and a day of changes
/// (updates and new sessions) each picked up by an incremental run, so the history tables have versions.
async fn synced_app(sessions: usize, unknown_enums: bool) -> TestApp {
    let app =
        TestApp::spawn_with(SimulatorConfig { sessions, manual_clock: true, ..SimulatorConfig::default() }, |_| {})
            .await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    for (secs, updates, creates) in [(3_600, 40, 10), (86_400, 60, 10)] {
        app.sim.advance(secs);
        app.sim.update_some(updates);
        app.sim.create(creates);
        app.syncer.run_once(Mode::Incremental).await.unwrap();
    }
    if unknown_enums {
        // Rewrites about a third of the sessions with values the spec does not list, bumping their updated_at.
        app.sim.set_switches(Switches { unknown_enum_values: true, ..Switches::default() });
        app.sim.advance(600);
        app.syncer.run_once(Mode::Incremental).await.unwrap();
    }
    app.assert_matches_truth().await;
    app
}

/// Per (UTC day, org): sessions and ACUs.
type DailyFigures = BTreeMap<(String, String), (i64, f64)>;

async fn daily_figures(pool: &PgPool, relation: &str) -> DailyFigures {
    let rows: Vec<(String, String, i64, f64)> = sqlx::query_as(&format!(
        "select day::text, org_id, sum(sessions)::int8, sum(acus)::float8 from {relation} group by 1, 2"
    ))
    .fetch_all(pool)
    .await
    .unwrap_or_else(|e| panic!("{relation}: {e}"));
    rows.into_iter().map(|(day, org, sessions, acus)| ((day, org), (sessions, acus))).collect()
}

fn assert_same_figures(what: &str, actual: &DailyFigures, expected: &DailyFigures) {
    assert_eq!(actual.keys().collect::<Vec<_>>(), expected.keys().collect::<Vec<_>>(), "{what}: days × orgs");
    for (key, (sessions, acus)) in expected {
        let (actual_sessions, actual_acus) = actual[key];
        assert_eq!(actual_sessions, *sessions, "{what}: sessions of {key:?}");
        assert!(
            (actual_acus - acus).abs() <= 1e-6 * acus.abs().max(1.0),
            "{what}: ACUs of {key:?}: {actual_acus} vs {acus}"
        );
    }
}

/// Columns each model of the package has in the database and in its YAML, where they are not the same.
async fn undocumented_columns(pool: &PgPool) -> Vec<String> {
    let mut documented: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for file in ["dbt/models/staging/_devin__staging.yml", "dbt/models/marts/_devin__marts.yml"] {
        let yaml: Value = serde_yaml::from_str(&std::fs::read_to_string(repo().join(file)).unwrap()).unwrap();
        for model in yaml["models"].as_sequence().unwrap() {
            let columns = model["columns"].as_sequence().unwrap();
            let names = columns.iter().map(|c| c["name"].as_str().unwrap().to_owned()).collect();
            documented.insert(model["name"].as_str().unwrap().to_owned(), names);
        }
    }
    let built: Vec<(String, Vec<String>)> = sqlx::query_as(
        "select table_name::text, array_agg(column_name::text order by ordinal_position)
         from information_schema.columns where table_schema = $1 group by 1",
    )
    .bind(TARGET_SCHEMA)
    .fetch_all(pool)
    .await
    .unwrap();
    let built: BTreeMap<String, Vec<String>> = built.into_iter().collect();
    let mut differences = Vec::new();
    for name in documented.keys().chain(built.keys()).collect::<std::collections::BTreeSet<_>>() {
        let (yaml, database) = (documented.get(name), built.get(name));
        if yaml != database {
            differences.push(format!("{name}: yaml {yaml:?}, database {database:?}"));
        }
    }
    differences
}

#[tokio::test(flavor = "multi_thread")]
async fn dbt_build_and_source_freshness_pass_on_a_synced_warehouse_and_the_marts_match_the_views() {
    let Some(dbt) =
        dbt_or_skip("dbt_build_and_source_freshness_pass_on_a_synced_warehouse_and_the_marts_match_the_views")
    else {
        return;
    };
    let app = synced_app(300, false).await;
    let pool = app.store().pool();
    let run = DbtRun::new(dbt, &app.db.url);

    let build = run.run(&["build"]).await;
    let artifact = repo().join(BUILD_LOG);
    std::fs::create_dir_all(artifact.parent().unwrap()).unwrap();
    let freshness = run.run(&["source", "freshness"]).await;
    // A second source whose last complete walk was observed 90 minutes ago: the oldest source counts, and 90
    // minutes is past the 1-hour warning but short of the 2-hour error.
    sqlx::query(
        "insert into sync_state (source, watermark, watermark_observed_at)
         values ('behind', extract(epoch from now())::int8 - 5430, now() - interval '90 minutes')",
    )
    .execute(pool)
    .await
    .unwrap();
    let behind = run.run(&["source", "freshness"]).await;
    let freshness_lines =
        |out: &DbtOutput| out.text.lines().filter(|l| l.contains("freshness of")).collect::<Vec<_>>().join("\n");
    std::fs::write(
        &artifact,
        format!(
            "$ dbt build (tests/it/dbt_package.rs, 300 simulated sessions)\n{}\n\n$ dbt source freshness\n{}\n\n\
             $ dbt source freshness (a second source 90 minutes behind)\n{}\n",
            build.tail(),
            freshness_lines(&freshness),
            freshness_lines(&behind)
        ),
    )
    .unwrap();
    assert!(build.success, "dbt build failed:\n{}", build.text);
    let summary = build.summary();
    assert_eq!((summary["WARN"], summary["ERROR"], summary["SKIP"]), (0, 0, 0), "dbt build:\n{}", build.text);
    assert!(summary["PASS"] >= 90, "dbt build ran only {summary:?}");
    assert!(freshness.success, "dbt source freshness failed:\n{}", freshness.text);
    assert!(
        freshness.text.lines().any(|l| l.contains(" PASS freshness of devin.sync_state")),
        "sync_state is not fresh just after a sync:\n{}",
        freshness.text
    );
    assert!(behind.success, "a warning must not fail dbt source freshness:\n{}", behind.text);
    assert!(
        behind.text.lines().any(|l| l.contains(" WARN freshness of devin.sync_state")),
        "a source 90 minutes behind does not warn:\n{}",
        behind.text
    );

    // The usage mart: per UTC day and org, what v_daily_usage says and what the simulator's sessions are.
    let mart = daily_figures(pool, &format!("{TARGET_SCHEMA}.fct_devin_daily_usage")).await;
    assert_same_figures("fct_devin_daily_usage vs v_daily_usage", &mart, &daily_figures(pool, "v_daily_usage").await);
    let mut truth = DailyFigures::new();
    for s in app.sim.sessions() {
        let day = chrono::DateTime::from_timestamp(s.created_at, 0).unwrap().date_naive().to_string();
        let entry = truth.entry((day, s.org_id.clone())).or_default();
        entry.0 += 1;
        entry.1 += s.acus_consumed;
    }
    assert_same_figures("fct_devin_daily_usage vs the simulator", &mart, &truth);

    // A history mart (a table): ACUs burned per org add up to what the sessions consumed.
    let burned: BTreeMap<String, f64> = sqlx::query_as::<_, (String, f64)>(&format!(
        "select org_id, sum(acus)::float8 from {TARGET_SCHEMA}.fct_devin_acus_burned_daily group by 1"
    ))
    .fetch_all(pool)
    .await
    .unwrap()
    .into_iter()
    .collect();
    let mut consumed: BTreeMap<String, f64> = BTreeMap::new();
    for s in app.sim.sessions() {
        *consumed.entry(s.org_id.clone()).or_default() += s.acus_consumed;
    }
    assert_eq!(burned.keys().collect::<Vec<_>>(), consumed.keys().collect::<Vec<_>>());
    for (org, acus) in &consumed {
        assert!((burned[org] - acus).abs() <= 1e-6 * acus.max(1.0), "ACUs burned by {org}: {} vs {acus}", burned[org]);
    }

    let undocumented = undocumented_columns(pool).await;
    assert!(undocumented.is_empty(), "models whose YAML does not list exactly their columns: {undocumented:#?}");
}

#[tokio::test(flavor = "multi_thread")]
async fn an_enum_value_the_api_adds_later_makes_accepted_values_warn_and_dbt_build_still_succeed() {
    let Some(dbt) =
        dbt_or_skip("an_enum_value_the_api_adds_later_makes_accepted_values_warn_and_dbt_build_still_succeed")
    else {
        return;
    };
    let app = synced_app(150, true).await;
    let undocumented: i64 = sqlx::query_scalar("select count(*) from sessions where status <> all($1)")
        .bind(known::STATUS)
        .fetch_one(app.store().pool())
        .await
        .unwrap();
    assert!(undocumented > 0, "the simulator served no undocumented status");
    let run = DbtRun::new(dbt, &app.db.url);
    let build = run.run(&["build"]).await;
    let artifact = repo().join(NEW_ENUM_VALUES_LOG);
    std::fs::create_dir_all(artifact.parent().unwrap()).unwrap();
    let warnings: Vec<&str> = build.text.lines().filter(|l| l.contains(" WARN ")).collect();
    std::fs::write(
        &artifact,
        format!(
            "$ dbt build (tests/it/dbt_package.rs, 150 simulated sessions, a third with enum values the spec does not \
             list)\n{}\n{}\n",
            warnings.join("\n"),
            build.tail()
        ),
    )
    .unwrap();
    assert!(build.success, "dbt build failed on undocumented enum values:\n{}", build.text);
    let summary = build.summary();
    assert_eq!((summary["ERROR"], summary["SKIP"]), (0, 0), "dbt build:\n{}", build.text);
    let mut warned = build.nodes("WARN");
    warned.sort();
    let expected: Vec<String> = {
        let mut names: Vec<String> = api_enums()
            .iter()
            .map(|(table, column, values)| {
                format!("source_accepted_values_devin_{table}_{column}__{}", values.join("__"))
            })
            .collect();
        names.sort();
        names
    };
    // dbt shortens long test names with a hash: compare their beginnings.
    assert_eq!(warned.len(), expected.len(), "warned: {warned:?}\n{}", build.text);
    for (name, want) in warned.iter().zip(&expected) {
        let prefix: String = want.chars().take(40).collect();
        assert!(name.starts_with(&prefix), "warned {name}, expected {want}\n{}", build.text);
    }
    assert_eq!(summary["WARN"], expected.len() as u64, "dbt build:\n{}", build.text);
}
