//! The loader's catalogue (`store::catalogue`) against the migrated database: every column the loader writes
//! exists with the declared type, and every other column of those tables is one the catalogue says the loader
//! leaves alone. A migration that adds, drops, renames or retypes a column fails here until the catalogue
//! follows.

use crate::common;

use std::collections::BTreeMap;

use devin_etl::store::catalogue::{HISTORY_DEFS, Table};
use devin_etl::store::{Store, TABLES};

/// `table`'s columns in the database with their types as `information_schema` spells them (`text[]` for an
/// array of text), in the table's order.
async fn database_columns(store: &Store, table: &str) -> Vec<(String, String)> {
    sqlx::query_as(
        "select column_name::text,
                case when data_type = 'ARRAY' then substr(udt_name, 2) || '[]' else data_type end::text
         from information_schema.columns
         where table_schema = $1 and table_name = $2
         order by ordinal_position",
    )
    .bind(store.schema())
    .bind(table)
    .fetch_all(store.pool())
    .await
    .unwrap()
}

#[tokio::test]
async fn catalogue_matches_the_migrated_tables() {
    let (_db, store) = common::migrated_warehouse().await;
    let mut problems = Vec::new();
    let loaded = Table::ALL.map(Table::def);
    for def in loaded.into_iter().chain(HISTORY_DEFS) {
        let actual: BTreeMap<String, String> = database_columns(&store, def.name).await.into_iter().collect();
        if actual.is_empty() {
            problems.push(format!("{}: no such table in the migrated schema", def.name));
            continue;
        }
        for column in def.columns {
            match actual.get(column.name) {
                Some(t) if t == column.sql_type => {}
                Some(t) => problems.push(format!(
                    "{}.{}: the catalogue says {}, the database has {t}",
                    def.name, column.name, column.sql_type
                )),
                None => problems.push(format!("{}.{}: in the catalogue, not in the database", def.name, column.name)),
            }
        }
        for name in def.unloaded {
            if !actual.contains_key(*name) {
                problems.push(format!("{}.{name}: listed as not loaded, not in the database", def.name));
            }
        }
        for name in actual.keys() {
            let known = def.columns.iter().any(|c| c.name == name) || def.unloaded.iter().any(|u| u == name);
            if !known {
                problems.push(format!(
                    "{}.{name}: in the database, not in the catalogue (neither loaded nor listed as not loaded)",
                    def.name
                ));
            }
        }
    }
    assert!(problems.is_empty(), "the catalogue and the migrations disagree:\n{}", problems.join("\n"));
}

#[tokio::test]
async fn table_counts_list_the_session_tables_then_the_bookkeeping() {
    let (_db, store) = common::migrated_warehouse().await;
    let counts = store.table_counts().await.unwrap();
    let names: Vec<&str> = counts.iter().map(|(table, _)| *table).collect();
    // The order itself is pinned by the catalogue's unit test; this checks what the store counts follows it.
    assert_eq!(names, TABLES);
    assert!(counts.iter().all(|(_, n)| *n == 0), "an empty warehouse: {counts:?}");
    store.analyze().await.unwrap();
}
