//! `devin-etl grant-readonly ROLE` (issues 4 and 6): the role reads every table and view of the schema, present and
//! future, and can write or create nothing. Roles are cluster-wide, so each test creates its own uniquely named
//! role and drops it afterwards.

use crate::common;

use std::str::FromStr as _;

use common::TestApp;
use devin_etl::store::error::sqlstate;
use devin_etl::sync::Mode;
use sqlx::postgres::PgConnectOptions;
use sqlx::{ConnectOptions as _, Connection as _, PgConnection};

/// A role that exists for one test: dropped (with its privileges in the test database) when the guard drops.
struct TestRole {
    name: String,
    database_url: String,
}

fn quote(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

impl TestRole {
    async fn create(prefix: &str, database_url: &str) -> TestRole {
        let name = common::unique_name(prefix);
        let mut admin = PgConnection::connect(&common::admin_url()).await.unwrap();
        sqlx::raw_sql(&format!("create role {} login", quote(&name))).execute(&mut admin).await.unwrap();
        admin.close().await.ok();
        TestRole { name, database_url: database_url.to_owned() }
    }

    /// A connection to the test database logged in as this role (trust authentication), search_path = devin.
    async fn connect(&self) -> PgConnection {
        PgConnectOptions::from_str(&self.database_url)
            .unwrap()
            .username(&self.name)
            .options([("search_path", "devin")])
            .connect()
            .await
            .unwrap()
    }
}

impl Drop for TestRole {
    fn drop(&mut self) {
        let (role, url) = (quote(&self.name), self.database_url.clone());
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
            rt.block_on(async {
                // Privileges and default privileges in the test database keep a role from being dropped.
                if let Ok(mut conn) = PgConnection::connect(&url).await {
                    let _ = sqlx::raw_sql(&format!("drop owned by {role}")).execute(&mut conn).await;
                }
                if let Ok(mut conn) = PgConnection::connect(&common::admin_url()).await {
                    let _ = sqlx::raw_sql(&format!("drop role if exists {role}")).execute(&mut conn).await;
                }
            });
        })
        .join();
    }
}

/// Every table, view, materialized view and foreign table of the schema.
async fn relations(app: &TestApp) -> Vec<(String, String)> {
    sqlx::query_as(
        "select c.relname::text, c.relkind::text from pg_class c
         where c.relnamespace = 'devin'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'f')
         order by 1",
    )
    .fetch_all(app.store().pool())
    .await
    .unwrap()
}

fn assert_permission_denied(result: Result<sqlx::postgres::PgQueryResult, sqlx::Error>, what: &str) {
    match result {
        Ok(_) => panic!("{what} succeeded for the read-only role"),
        Err(sqlx::Error::Database(e)) => {
            assert_eq!(
                e.code().as_deref(),
                Some(sqlstate::INSUFFICIENT_PRIVILEGE),
                "{what}: expected permission denied, got {e}"
            );
        }
        Err(e) => panic!("{what}: unexpected error {e}"),
    }
}

#[tokio::test]
async fn readonly_role_reads_every_table_and_view_and_can_write_or_create_nothing() {
    let app = TestApp::spawn(60).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let role = TestRole::create("devin_etl_ro", &app.db.url).await;
    app.store().grant_readonly(&role.name).await.unwrap();
    app.store().grant_readonly(&role.name).await.expect("granting twice is harmless");

    let relations = relations(&app).await;
    let views: Vec<&str> = relations.iter().filter(|(_, k)| k == "v").map(|(n, _)| n.as_str()).collect();
    assert!(views.contains(&"v_sessions") && views.contains(&"v_sync_health"), "views: {views:?}");
    let tables: Vec<&str> = relations.iter().filter(|(_, k)| k == "r").map(|(n, _)| n.as_str()).collect();
    assert!(tables.contains(&"sessions") && tables.contains(&"sync_runs"), "tables: {tables:?}");

    let mut ro = role.connect().await;
    for (name, _) in &relations {
        let rows = sqlx::raw_sql(&format!("select * from {} limit 5", quote(name)))
            .fetch_all(&mut ro)
            .await
            .unwrap_or_else(|e| panic!("the read-only role cannot read {name}: {e}"));
        if ["sessions", "v_sessions", "v_daily_usage", "sync_runs", "v_sync_health"].contains(&name.as_str()) {
            assert!(!rows.is_empty(), "{name} reads as empty");
        }
    }

    for table in &tables {
        let t = quote(table);
        let column: String = sqlx::query_scalar(
            "select attname::text from pg_attribute
             where attrelid = ('devin.' || quote_ident($1))::regclass and attnum > 0 and not attisdropped
               and attidentity = '' and attgenerated = ''
             order by attnum limit 1",
        )
        .bind(table)
        .fetch_one(app.store().pool())
        .await
        .unwrap();
        let c = quote(&column);
        let statements = [
            ("insert", format!("insert into {t} default values")),
            ("update", format!("update {t} set {c} = {c}")),
            ("delete", format!("delete from {t}")),
            ("truncate", format!("truncate {t}")),
        ];
        for (what, sql) in statements {
            assert_permission_denied(sqlx::raw_sql(&sql).execute(&mut ro).await, &format!("{what} on {table}"));
        }
    }
    for view in &views {
        let result = sqlx::raw_sql(&format!("delete from {}", quote(view))).execute(&mut ro).await;
        assert!(result.is_err(), "delete from view {view} succeeded for the read-only role");
    }
    let creates = [
        ("create table", "create table devin.ro_table (a int)"),
        ("create view", "create view devin.ro_view as select 1 as a"),
        ("create table in public", "create table public.ro_table (a int)"),
        ("create index", "create index ro_index on devin.sessions (title)"),
        ("nextval", "select nextval(pg_get_serial_sequence('devin.sync_runs', 'run_id'))"),
    ];
    for (what, sql) in creates {
        assert_permission_denied(sqlx::raw_sql(sql).execute(&mut ro).await, what);
    }

    // Nothing beyond usage and select, on anything in the schema.
    let extra: Vec<String> = sqlx::query_scalar(
        "select c.relname::text from pg_class c
         where c.relnamespace = 'devin'::regnamespace and c.relkind in ('r', 'p', 'v', 'm', 'f', 'S')
           and has_table_privilege($1, c.oid, 'insert, update, delete, truncate, references, trigger')
         union all
         select 'schema create' where has_schema_privilege($1, 'devin', 'create')",
    )
    .bind(&role.name)
    .fetch_all(app.store().pool())
    .await
    .unwrap();
    assert!(extra.is_empty(), "the read-only role has more than select: {extra:?}");
    ro.close().await.ok();
}

#[tokio::test]
async fn readonly_role_reads_tables_and_views_created_after_the_grant() {
    let app = TestApp::spawn(20).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let role = TestRole::create("devin_etl_ro_future", &app.db.url).await;
    app.store().grant_readonly(&role.name).await.unwrap();

    // What a later migration would do, as the same user that ran the migrations.
    sqlx::raw_sql(
        "create table later_table (id int not null, constraint later_table_pkey primary key (id));
         insert into later_table values (1), (2);
         create view v_later as select count(*) as sessions from sessions;",
    )
    .execute(app.store().pool())
    .await
    .unwrap();

    let mut ro = role.connect().await;
    let ids: Vec<i32> = sqlx::query_scalar("select id from later_table order by id").fetch_all(&mut ro).await.unwrap();
    assert_eq!(ids, vec![1, 2]);
    let sessions: i64 = sqlx::query_scalar("select sessions from v_later").fetch_one(&mut ro).await.unwrap();
    assert_eq!(sessions, 20);
    assert_permission_denied(sqlx::raw_sql("insert into later_table values (3)").execute(&mut ro).await, "insert");
    ro.close().await.ok();
}

#[tokio::test]
async fn a_role_name_that_needs_quoting_is_quoted_not_injected() {
    let app = TestApp::spawn(5).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let role = TestRole::create("BI \"reader\"; drop table sessions; --", &app.db.url).await;
    app.store().grant_readonly(&role.name).await.unwrap();

    assert_eq!(app.count("sessions").await, 5, "nothing was injected");
    let mut admin = app.store().pool().acquire().await.unwrap();
    sqlx::raw_sql(&format!("set role {}", quote(&role.name))).execute(&mut *admin).await.unwrap();
    let n: i64 = sqlx::query_scalar("select count(*) from v_sessions").fetch_one(&mut *admin).await.unwrap();
    let denied = sqlx::raw_sql("delete from session_tags").execute(&mut *admin).await;
    sqlx::raw_sql("reset role").execute(&mut *admin).await.unwrap();
    assert_eq!(n, 5);
    assert_permission_denied(denied, "delete as the quoted role");
}

#[tokio::test]
async fn granting_to_a_missing_role_says_to_create_it_first() {
    let app = TestApp::spawn(1).await;
    let missing = format!("devin_etl_no_such_role_{}", std::process::id());

    let err = app.store().grant_readonly(&missing).await.expect_err("a missing role is an error");

    let message = format!("{err:#}");
    assert!(message.contains(&missing) && message.contains("does not exist"), "{message}");
    assert!(message.contains("CREATE ROLE") && message.contains("LOGIN PASSWORD"), "{message}");
}
