//! The private-cluster harness itself (`common::cluster`): a real crash of a throwaway PostgreSQL cluster
//! keeps committed rows, empties UNLOGGED tables (crash recovery, even with `fsync=off`) and breaks open
//! connections; a clean stop keeps everything; the cluster is gone after the test, also after a panic.
//! The shared server on 127.0.0.1:5432 is never touched.

use crate::common;

use std::time::{Duration, Instant};

use common::cluster::PrivateCluster;
use sqlx::Connection as _;
use sqlx::PgConnection;

async fn connect(url: &str) -> PgConnection {
    tokio::time::timeout(Duration::from_secs(10), PgConnection::connect(url))
        .await
        .expect("connecting timed out")
        .expect("connect")
}

async fn count(conn: &mut PgConnection, table: &str) -> i64 {
    sqlx::query_scalar(&format!("select count(*) from {table}")).fetch_one(conn).await.unwrap()
}

/// A logged and an UNLOGGED table, each with 3 committed rows: one before a checkpoint, two after it.
async fn tables_with_rows(conn: &mut PgConnection) {
    sqlx::raw_sql(
        "create table logged (x int primary key); create unlogged table scratch (x int primary key);
         insert into logged values (1); insert into scratch values (1);
         checkpoint;
         insert into logged values (2), (3); insert into scratch values (2), (3);",
    )
    .execute(&mut *conn)
    .await
    .unwrap();
}

#[tokio::test]
async fn a_crash_keeps_committed_rows_and_empties_unlogged_tables() {
    let Some(cluster) = PrivateCluster::start_or_skip().await else { return };
    let url = cluster.create_database("crash_test").await;
    let mut conn = connect(&url).await;
    let fsync: String = sqlx::query_scalar("show fsync").fetch_one(&mut conn).await.unwrap();
    assert_eq!(fsync, "off", "the fact below is about the cluster as the harness configures it");
    tables_with_rows(&mut conn).await;
    assert_eq!((count(&mut conn, "logged").await, count(&mut conn, "scratch").await), (3, 3));
    conn.close().await.unwrap();

    let began = Instant::now();
    cluster.crash().await;
    let crashed = began.elapsed();
    assert!(!cluster.is_running().await);
    let refused = tokio::time::timeout(Duration::from_secs(5), PgConnection::connect(&url)).await;
    assert!(matches!(refused, Ok(Err(_))), "the crashed server must refuse connections: {refused:?}");
    cluster.start_again().await;
    let away = began.elapsed();
    eprintln!("crash took {crashed:?}; crash + start again (crash recovery) took {away:?}");

    let log = cluster.server_log();
    assert!(log.contains("received immediate shutdown request"), "{log}");
    assert!(log.contains("database system was not properly shut down; automatic recovery in progress"), "{log}");
    let mut conn = connect(&url).await;
    assert_eq!(count(&mut conn, "logged").await, 3, "every committed row of a logged table survives a crash");
    assert_eq!(count(&mut conn, "scratch").await, 0, "crash recovery empties UNLOGGED tables, fsync=off or not");
    // Both tables are usable again.
    sqlx::raw_sql("insert into scratch values (4); insert into logged values (4)").execute(&mut conn).await.unwrap();
    conn.close().await.unwrap();

    let second = cluster.crash_and_restart().await;
    eprintln!("a second crash_and_restart took {second:?}");
    let mut conn = connect(&url).await;
    assert_eq!((count(&mut conn, "logged").await, count(&mut conn, "scratch").await), (4, 0));
}

#[tokio::test]
async fn a_clean_stop_keeps_unlogged_rows_and_settings_apply_to_every_start() {
    let settings = [("idle_session_timeout", "1h"), ("application_name", "private cluster test")];
    let Some(cluster) = PrivateCluster::start_with_or_skip(&settings).await else { return };
    let url = cluster.create_database("stop_test").await;
    let mut conn = connect(&url).await;
    tables_with_rows(&mut conn).await;
    conn.close().await.unwrap();

    cluster.stop().await;
    assert!(!cluster.is_running().await);
    cluster.start_again().await;
    assert!(cluster.is_running().await);

    let mut conn = connect(&url).await;
    assert_eq!(
        (count(&mut conn, "logged").await, count(&mut conn, "scratch").await),
        (3, 3),
        "after a clean shutdown UNLOGGED tables keep their rows: only a crash empties them"
    );
    let timeout: String = sqlx::query_scalar("show idle_session_timeout").fetch_one(&mut conn).await.unwrap();
    assert_eq!(timeout, "1h");
    assert!(!cluster.server_log().contains("automatic recovery"), "a clean stop needs no recovery");
}

#[tokio::test]
async fn a_connection_open_across_a_crash_gets_an_error() {
    let Some(cluster) = PrivateCluster::start_or_skip().await else { return };
    let url = cluster.create_database("connection_test").await;
    let mut idle = connect(&url).await;
    let mut in_transaction = connect(&url).await;
    sqlx::query("select 1").execute(&mut idle).await.unwrap();
    sqlx::raw_sql("begin; create table t (x int); insert into t values (1)")
        .execute(&mut in_transaction)
        .await
        .unwrap();

    cluster.crash_and_restart().await;

    for (name, conn) in [("idle", &mut idle), ("in a transaction", &mut in_transaction)] {
        let began = Instant::now();
        let result = tokio::time::timeout(Duration::from_secs(5), sqlx::query("select 1").execute(&mut *conn)).await;
        let error = match result {
            Ok(Err(e)) => e,
            other => panic!("a connection {name} across the crash must fail, not {other:?}"),
        };
        eprintln!("connection {name} across the crash: {error} (after {:?})", began.elapsed());
        assert!(began.elapsed() < Duration::from_secs(2), "the error comes at once");
    }
    // The uncommitted transaction is gone; new connections work.
    let mut conn = connect(&url).await;
    let exists: bool = sqlx::query_scalar("select to_regclass('t') is not null").fetch_one(&mut conn).await.unwrap();
    assert!(!exists, "the uncommitted transaction must not survive the crash");
}

#[tokio::test]
async fn the_cluster_is_stopped_and_removed_when_dropped_also_after_a_panic() {
    if !PrivateCluster::is_available() {
        PrivateCluster::start_or_skip().await; // prints why the test is skipped
        return;
    }
    let (tx, rx) = tokio::sync::oneshot::channel();
    let test = tokio::spawn(async move {
        let cluster = PrivateCluster::start().await;
        let _ = tx.send((cluster.data_dir().to_owned(), cluster.port()));
        let mut conn = connect(&cluster.admin_url()).await;
        sqlx::query("select 1").execute(&mut conn).await.unwrap();
        panic!("a test failing while its cluster runs");
    });
    let outcome = tokio::time::timeout(Duration::from_secs(60), test).await.expect("the test task ends");
    assert!(outcome.expect_err("the task panicked").is_panic());
    let (data_dir, port) = rx.await.unwrap();

    let folder = data_dir.parent().unwrap();
    assert!(!folder.exists(), "{} must be removed", folder.display());
    let refused = tokio::net::TcpStream::connect(("127.0.0.1", port)).await;
    assert!(refused.is_err(), "nothing may listen on port {port} any more");
    let postmasters = std::process::Command::new("pgrep").args(["-f", &data_dir.display().to_string()]).output();
    if let Ok(out) = postmasters {
        assert!(
            out.stdout.is_empty(),
            "no process of the cluster may be left: {}",
            String::from_utf8_lossy(&out.stdout)
        );
    }
}
