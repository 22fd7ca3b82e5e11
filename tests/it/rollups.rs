//! Issue 14, item 4: the rollups (`rollup_daily_*`) the dashboard views read equal the aggregates computed from the
//! base tables — after a backfill (COPY path), incremental updates and creates (merge path), late analysis, a
//! reconcile that marks sessions deleted, a revival, concurrent backfill windows, and a batch that rolled back.
//! The reference aggregates below are written independently of the migration's SQL, straight from the tables.

use crate::common;

use common::TestApp;
use devin_etl::api::models::Analysis;
use devin_etl::sync::Mode;
use sqlx::PgPool;

/// A rollup table and the reference query that computes the same rows from the base tables (live sessions only).
struct Family {
    table: &'static str,
    keys: &'static [&'static str],
    measures: &'static [&'static str],
    reference: &'static str,
}

const SESSION_MEASURES: &[&str] = &[
    "sessions",
    "acus",
    "user_messages",
    "devin_messages",
    "sessions_with_pr",
    "sessions_with_merged_pr",
    "sessions_with_analysis",
    "prs",
    "merged_prs",
];

/// Per live session: its day, keys and measures, with its PR counts.
const LIVE: &str = "
    select (s.created_at at time zone 'UTC')::date as day, s.org_id, coalesce(s.origin, 'unknown') as origin,
           coalesce(s.category, 'uncategorized') as category, coalesce(s.user_id, s.service_user_id) as started_by,
           case when s.user_id is not null then 'user' when s.service_user_id is not null then 'service_user'
                else 'unknown' end as started_by_kind,
           s.session_size, s.acus_consumed, s.num_user_messages, s.num_devin_messages, s.has_analysis,
           (select count(*) from session_pull_requests p where p.session_id = s.session_id) as prs,
           (select count(*) from session_pull_requests p where p.session_id = s.session_id and p.pr_state = 'merged')
               as merged_prs
    from sessions s where s.deleted_at is null";

const FAMILIES: &[Family] = &[
    Family {
        table: "rollup_daily_usage",
        keys: &["day", "org_id", "origin", "category"],
        measures: SESSION_MEASURES,
        reference: "
            select day, org_id, origin, category, count(*) as sessions, sum(acus_consumed::numeric) as acus,
                   sum(num_user_messages) as user_messages, sum(num_devin_messages) as devin_messages,
                   count(*) filter (where prs > 0) as sessions_with_pr,
                   count(*) filter (where merged_prs > 0) as sessions_with_merged_pr,
                   count(*) filter (where has_analysis) as sessions_with_analysis, sum(prs) as prs,
                   sum(merged_prs) as merged_prs
            from live group by 1, 2, 3, 4",
    },
    Family {
        table: "rollup_daily_starters",
        keys: &["day", "org_id", "started_by_kind", "started_by", "session_size"],
        measures: SESSION_MEASURES,
        reference: "
            select day, org_id, started_by_kind, started_by, session_size, count(*) as sessions,
                   sum(acus_consumed::numeric) as acus, sum(num_user_messages) as user_messages,
                   sum(num_devin_messages) as devin_messages, count(*) filter (where prs > 0) as sessions_with_pr,
                   count(*) filter (where merged_prs > 0) as sessions_with_merged_pr,
                   count(*) filter (where has_analysis) as sessions_with_analysis, sum(prs) as prs,
                   sum(merged_prs) as merged_prs
            from live group by 1, 2, 3, 4, 5",
    },
    Family {
        table: "rollup_daily_pull_requests",
        keys: &["day", "org_id", "repo"],
        measures: &["prs", "merged", "closed", "open", "unknown"],
        reference: "
            select (s.created_at at time zone 'UTC')::date as day, s.org_id, coalesce(p.repo, 'unknown') as repo,
                   count(*) as prs, count(*) filter (where p.pr_state = 'merged') as merged,
                   count(*) filter (where p.pr_state = 'closed') as closed,
                   count(*) filter (where p.pr_state = 'open') as open,
                   count(*) filter (where p.pr_state is null or p.pr_state not in ('open', 'merged', 'closed'))
                       as unknown
            from session_pull_requests p join sessions s using (session_id)
            where s.deleted_at is null group by 1, 2, 3",
    },
    Family {
        table: "rollup_daily_issues",
        keys: &["day", "org_id", "category", "label", "impact_level"],
        measures: &["issues", "sessions"],
        reference: "
            select (s.created_at at time zone 'UTC')::date as day, s.org_id,
                   coalesce(s.category, 'uncategorized') as category, i.label, impact_level(i.impact) as impact_level,
                   count(*) as issues, count(distinct i.session_id) as sessions
            from session_issues i join sessions s using (session_id)
            where s.deleted_at is null group by 1, 2, 3, 4, 5",
    },
    Family {
        table: "rollup_daily_issue_levels",
        keys: &["day", "org_id", "category", "impact_level"],
        measures: &["issues", "sessions"],
        reference: "
            select (s.created_at at time zone 'UTC')::date as day, s.org_id,
                   coalesce(s.category, 'uncategorized') as category, impact_level(i.impact) as impact_level,
                   count(*) as issues, count(distinct i.session_id) as sessions
            from session_issues i join sessions s using (session_id)
            where s.deleted_at is null group by 1, 2, 3, 4",
    },
    Family {
        table: "rollup_daily_action_items",
        keys: &["day", "org_id", "type", "issue_label"],
        measures: &["action_items", "sessions", "linked_to_issue"],
        reference: "
            select (s.created_at at time zone 'UTC')::date as day, s.org_id, a.type,
                   (select i.label from session_issues i
                    where i.session_id = a.session_id and i.issue_id = a.issue_id and i.issue_id <> ''
                    order by i.position limit 1) as issue_label,
                   count(*) as action_items, count(distinct a.session_id) as sessions,
                   count(*) filter (where a.issue_id <> '') as linked_to_issue
            from session_action_items a join sessions s using (session_id)
            where s.deleted_at is null group by 1, 2, 3, 4",
    },
    Family {
        table: "rollup_daily_action_item_types",
        keys: &["day", "org_id", "type"],
        measures: &["action_items", "sessions", "linked_to_issue"],
        reference: "
            select (s.created_at at time zone 'UTC')::date as day, s.org_id, a.type, count(*) as action_items,
                   count(distinct a.session_id) as sessions, count(*) filter (where a.issue_id <> '') as linked_to_issue
            from session_action_items a join sessions s using (session_id)
            where s.deleted_at is null group by 1, 2, 3",
    },
];

/// Rows where a rollup and its reference disagree (a rollup row of zeros matches a missing reference row).
async fn mismatches(pool: &PgPool, family: &Family) -> (Vec<String>, i64) {
    let on: Vec<String> =
        family.keys.iter().map(|k| format!("coalesce(r.{k}::text, '') = coalesce(e.{k}::text, '')")).collect();
    let key_text: Vec<String> = family.keys.iter().map(|k| format!("coalesce(r.{k}, e.{k})")).collect();
    let r_measures: Vec<String> = family.measures.iter().map(|m| format!("coalesce(r.{m}, 0)::numeric")).collect();
    let e_measures: Vec<String> = family.measures.iter().map(|m| format!("coalesce(e.{m}, 0)::numeric")).collect();
    let sql = format!(
        "with live as ({LIVE}), e as ({reference}), r as (select * from {table})
         select row({keys})::text || ': rollup ' || row({r})::text || ', tables ' || row({e})::text
         from r full join e on {on}
         where row({r}) is distinct from row({e})
         order by 1",
        reference = family.reference,
        table = family.table,
        keys = key_text.join(", "),
        r = r_measures.join(", "),
        e = e_measures.join(", "),
        on = on.join(" and "),
    );
    let rows: Vec<String> = sqlx::query_scalar(&sql).fetch_all(pool).await.unwrap();
    let reference: i64 =
        sqlx::query_scalar(&format!("with live as ({LIVE}) select count(*) from ({}) e", family.reference))
            .fetch_one(pool)
            .await
            .unwrap();
    (rows, reference)
}

/// Every rollup equals its reference aggregate, and the bookkeeping holds exactly the live sessions' current
/// contributions. `when` names the step in failure messages.
async fn assert_rollups_exact(pool: &PgPool, when: &str) {
    let mut problems = Vec::new();
    for family in FAMILIES {
        let (rows, reference) = mismatches(pool, family).await;
        if reference == 0 && family.table != "rollup_daily_issue_levels" {
            problems.push(format!("{}: the reference is empty, the test proves nothing", family.table));
        }
        problems.extend(rows.into_iter().take(10).map(|r| format!("{}: {r}", family.table)));
    }
    let stale: i64 = sqlx::query_scalar(
        "select count(*) from (
             (select * from rollup_session_contributions except all select * from rollup_current_contributions)
             union all
             (select * from rollup_current_contributions except all select * from rollup_session_contributions)) d",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    if stale > 0 {
        problems.push(format!("rollup_session_contributions: {stale} rows differ from the sessions' current state"));
    }
    assert!(problems.is_empty(), "{when}: the rollups differ from the base tables:\n{}", problems.join("\n"));
}

async fn live_sessions(pool: &PgPool) -> i64 {
    sqlx::query_scalar("select count(*) from sessions where deleted_at is null").fetch_one(pool).await.unwrap()
}

#[tokio::test]
async fn rollups_equal_the_base_tables_after_backfill_updates_late_analysis_deletes_and_revivals() {
    let app = TestApp::spawn(300).await;
    let pool = app.store().pool();

    // Backfill into an empty warehouse: the COPY path.
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    assert_eq!(live_sessions(pool).await, 300);
    assert_rollups_exact(pool, "after the backfill").await;

    // Updates (status, ACUs, PRs, analysis, category…) and new sessions: the merge path.
    app.sim.advance(120);
    app.sim.update_some(60);
    app.sim.create(20);
    app.sim.advance(60);
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    app.assert_matches_truth().await;
    assert_rollups_exact(pool, "after an incremental run").await;

    // Late analysis and category without an updated_at bump, and a session that loses a PR and changes org.
    let truth = app.sim.sessions();
    let late: Vec<String> =
        truth.iter().filter(|s| s.analysis.is_none()).take(5).map(|s| s.session_id.clone()).collect();
    let donor = truth.iter().find_map(|s| s.analysis.clone()).expect("an analysed session");
    for id in &late {
        app.sim.modify_keep_updated_at(id, |s| {
            s.analysis = Some(Analysis { ..donor.clone() });
            s.category = Some("bug_fixing".to_owned());
        });
    }
    let moved = truth.iter().find(|s| s.pull_requests.len() >= 2).expect("a session with two PRs").session_id.clone();
    app.sim.modify(&moved, |s| {
        s.pull_requests.remove(0);
        s.org_id = "org-moved".to_owned();
        s.created_at -= 86_400 * 3;
    });
    app.sim.advance(60);
    app.syncer.run_once(Mode::Reconcile).await.unwrap();
    app.assert_matches_truth().await;
    assert_rollups_exact(pool, "after late analysis, a changed session and a reconcile").await;

    // Sessions that disappear upstream are marked deleted by the reconcile: their contributions go.
    let gone: Vec<String> = app.sim.sessions().iter().step_by(7).map(|s| s.session_id.clone()).collect();
    let removed: Vec<_> = gone.iter().map(|id| app.sim.session(id).unwrap()).collect();
    for id in &gone {
        assert!(app.sim.remove(id));
    }
    app.sim.advance(60);
    app.syncer.run_once(Mode::Reconcile).await.unwrap();
    let deleted: i64 =
        sqlx::query_scalar("select count(*) from sessions where deleted_at is not null").fetch_one(pool).await.unwrap();
    assert_eq!(deleted, gone.len() as i64, "the reconcile marked the removed sessions deleted");
    assert_rollups_exact(pool, "after a reconcile that deletes").await;

    // They come back (as they were, then one of them changed): revived by the next runs, counted again.
    for s in removed {
        app.sim.put(s);
    }
    app.sim.modify(&gone[0], |s| s.acus_consumed += 1.25);
    app.sim.advance(60);
    app.syncer.run_once(Mode::Reconcile).await.unwrap();
    app.assert_matches_truth().await;
    assert_eq!(live_sessions(pool).await, app.sim.sessions().len() as i64);
    assert_rollups_exact(pool, "after the revivals").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rollups_stay_exact_when_backfill_windows_run_concurrently_and_a_backfill_is_rerun() {
    let app = common::small_pages_app(500, |s| {
        s.sync.backfill_concurrency = 4;
        s.sync.backfill_window = std::time::Duration::from_secs(3600 * 24 * 20);
    })
    .await;
    let pool = app.store().pool();
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    assert_eq!(live_sessions(pool).await, 500);
    assert_rollups_exact(pool, "after a concurrent backfill").await;

    // A second backfill over existing sessions (the merge path, concurrently), with changes in between.
    app.sim.advance(120);
    app.sim.update_some(100);
    app.sim.create(30);
    app.sim.advance(60);
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    app.assert_matches_truth().await;
    assert_rollups_exact(pool, "after a second concurrent backfill").await;
}

#[tokio::test]
async fn a_batch_that_rolls_back_leaves_the_rollups_untouched_and_calling_rollup_apply_again_changes_nothing() {
    let app = TestApp::spawn(120).await;
    let pool = app.store().pool();
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    assert_rollups_exact(pool, "after the backfill").await;
    let before: String =
        sqlx::query_scalar("select string_agg(r::text, ';' order by r::text) from rollup_daily_usage r")
            .fetch_one(pool)
            .await
            .unwrap();

    // A write that fails after the rollups were updated (the statement after rollup_apply fails): all rolls back.
    let mut tx = pool.begin().await.unwrap();
    sqlx::query("update sessions set acus_consumed = acus_consumed + 100, deleted_at = null")
        .execute(&mut *tx)
        .await
        .unwrap();
    let changed: i64 = sqlx::query_scalar("select rollup_apply(array(select session_id from sessions))")
        .fetch_one(&mut *tx)
        .await
        .unwrap();
    assert_eq!(changed, 120);
    assert!(sqlx::query("select 1 / 0").execute(&mut *tx).await.is_err());
    drop(tx);
    let after: String =
        sqlx::query_scalar("select string_agg(r::text, ';' order by r::text) from rollup_daily_usage r")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(before, after);
    assert_rollups_exact(pool, "after a rolled back write").await;

    // Applying again, for sessions that did not change, writes nothing.
    let changed: i64 = sqlx::query_scalar("select rollup_apply(array(select session_id from sessions))")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_eq!(changed, 0);
    assert_rollups_exact(pool, "after a repeated apply").await;
}

#[tokio::test]
async fn the_migration_builds_the_rollups_of_an_existing_warehouse() {
    let app = TestApp::spawn(200).await;
    let pool = app.store().pool();
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    app.sim.advance(60);
    app.sim.update_some(30);
    app.sim.advance(60);
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    sqlx::query("update sessions set deleted_at = now() where session_id in (select session_id from sessions limit 9)")
        .execute(pool)
        .await
        .unwrap();

    // The warehouse as a release before the rollups left it, then the upgrade.
    sqlx::raw_sql(include_str!("rollups_downgrade.sql")).execute(pool).await.unwrap();
    app.store().migrate().await.unwrap();
    assert_rollups_exact(pool, "after the upgrade").await;
}

/// The backfill's closing `VACUUM (ANALYZE)` covers every rollup table: the list in the code is the schema's.
#[tokio::test]
async fn every_rollup_table_is_vacuumed_and_analyzed_after_a_backfill() {
    let (_db, store) = common::migrated_warehouse().await;
    let mut in_schema: Vec<String> = sqlx::query_scalar(
        "select tablename::text from pg_tables where schemaname = current_schema() and tablename like 'rollup\\_%'",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    in_schema.sort();
    let mut listed: Vec<String> = devin_etl::store::ROLLUP_TABLES.iter().map(|t| t.to_string()).collect();
    listed.sort();
    assert_eq!(listed, in_schema);
}
