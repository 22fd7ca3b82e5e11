//! The BI views (issue 6): exact aggregates on a hand-built dataset, agreement with the simulator's truth after
//! re-syncs and soft deletes, and every SQL query shipped in `docs/queries.md` and the Grafana dashboard executed
//! against a simulator-filled warehouse.

use crate::common;

use std::collections::{BTreeMap, BTreeSet};

use chrono::{DateTime, Datelike as _, NaiveDate, Utc};
use common::TestApp;
use devin_etl::api::models::SessionInsights;
use devin_etl::shipped_queries::{ShippedQuery, dashboard_queries, expand_grafana, sql_blocks, with_session_id};
use devin_etl::store::Store;
use devin_etl::sync::Mode;
use serde_json::Value;
use sqlx::{Column as _, PgPool, Row as _};

// ---------------------------------------------------------------------------------------------------------------
// Hand-built dataset

struct Session {
    id: &'static str,
    org: &'static str,
    created: &'static str,
    origin: Option<&'static str>,
    category: Option<&'static str>,
    acus: f64,
    user_messages: i64,
    devin_messages: i64,
    analysis: bool,
    user: Option<&'static str>,
    service_user: Option<&'static str>,
    deleted: bool,
    /// (url, state, repo)
    prs: &'static [(&'static str, Option<&'static str>, Option<&'static str>)],
    /// (issue_id, impact, label)
    issues: &'static [(&'static str, &'static str, &'static str)],
    /// (issue_id, type)
    actions: &'static [(Option<&'static str>, &'static str)],
}

const BASE: Session = Session {
    id: "",
    org: "org-a",
    created: "",
    origin: Some("webapp"),
    category: Some("bug_fixing"),
    acus: 0.0,
    user_messages: 0,
    devin_messages: 0,
    analysis: false,
    user: None,
    service_user: None,
    deleted: false,
    prs: &[],
    issues: &[],
    actions: &[],
};

/// 2026-03-01 is a Sunday: s1 falls in the ISO week of Monday 2026-02-23, s2 (45 minutes later) in the week of
/// Monday 2026-03-02; s7 is the last second of that week and s8 the first second of the next.
fn dataset() -> Vec<Session> {
    vec![
        Session {
            id: "s1",
            created: "2026-03-01T23:30:00Z",
            acus: 1.5,
            user_messages: 2,
            devin_messages: 5,
            analysis: true,
            user: Some("u1"),
            prs: &[
                ("https://github.com/acme/web/pull/1", Some("merged"), Some("acme/web")),
                ("https://github.com/acme/web/pull/2", Some("closed"), Some("acme/web")),
            ],
            issues: &[
                ("i1", "High: broke the build", "environment"),
                ("i2", "high - again", "environment"),
                ("", "low: meh", "prompt"),
            ],
            actions: &[(Some("i1"), "knowledge"), (None, "other")],
            ..BASE
        },
        Session {
            id: "s2",
            created: "2026-03-02T00:15:00Z",
            acus: 2.25,
            user_messages: 3,
            devin_messages: 7,
            analysis: true,
            service_user: Some("svc1"),
            prs: &[
                ("https://github.com/acme/web/pull/3", Some("open"), Some("acme/web")),
                ("https://github.com/acme/web/pull/4", None, Some("acme/web")),
                ("https://github.com/acme/web/pull/5", Some("draft"), Some("acme/web")),
            ],
            issues: &[("i1", "medium: slow", "tooling"), ("i9", "HIGH: wrong env", "environment")],
            actions: &[(Some("i1"), "knowledge"), (Some(""), "knowledge")],
            ..BASE
        },
        Session {
            id: "s3",
            created: "2026-03-02T10:00:00Z",
            origin: None,
            category: None,
            acus: 0.5,
            devin_messages: 1,
            ..BASE
        },
        Session {
            id: "s4",
            org: "org-b",
            created: "2026-03-02T12:00:00Z",
            origin: Some("slack"),
            acus: 4.0,
            user_messages: 1,
            devin_messages: 2,
            analysis: true,
            user: Some("u2"),
            prs: &[("https://bitbucket.org/acme/legacy/pull-requests/7", Some("merged"), None)],
            issues: &[("c1", "Critical: outage", "environment"), ("x", "Blocked for an hour", "tooling")],
            actions: &[(Some("x"), "repo_config")],
            ..BASE
        },
        Session {
            id: "s5",
            created: "2026-03-02T11:00:00Z",
            acus: 100.0,
            user_messages: 50,
            devin_messages: 50,
            analysis: true,
            user: Some("u1"),
            deleted: true,
            prs: &[("https://github.com/acme/web/pull/9", Some("merged"), Some("acme/web"))],
            issues: &[("d1", "high: x", "environment")],
            actions: &[(Some("d1"), "knowledge")],
            ..BASE
        },
        Session {
            id: "s6",
            created: "2026-03-02T20:00:00Z",
            acus: 0.25,
            user_messages: 4,
            devin_messages: 4,
            user: Some("u1"),
            ..BASE
        },
        Session {
            id: "s7",
            created: "2026-03-08T23:59:59Z",
            category: Some("feature_development"),
            acus: 1.0,
            user_messages: 1,
            devin_messages: 1,
            analysis: true,
            user: Some("u3"),
            prs: &[("https://gitlab.com/grp/sub/proj/-/merge_requests/11", Some("merged"), Some("grp/sub/proj"))],
            actions: &[(None, "prompt_improvement"), (None, "knowledge")],
            ..BASE
        },
        Session {
            id: "s8",
            created: "2026-03-09T00:00:00Z",
            category: Some("feature_development"),
            acus: 3.0,
            user_messages: 2,
            devin_messages: 2,
            analysis: true,
            user: Some("u3"),
            prs: &[("https://gitlab.com/grp/sub/proj/-/merge_requests/12", Some("closed"), Some("grp/sub/proj"))],
            issues: &[("", "low: x", "prompt")],
            ..BASE
        },
    ]
}

async fn insert(pool: &PgPool, sessions: &[Session]) {
    for s in sessions {
        sqlx::query(
            "insert into sessions (session_id, org_id, user_id, service_user_id, title, url, status, origin, category,
                 subcategory, session_size, acus_consumed, num_user_messages, num_devin_messages, is_archived, tags,
                 created_at, updated_at, has_analysis, raw, deleted_at, source)
             values ($1, $2, $3, $4, 'title of ' || $1, 'https://app.devin.ai/sessions/' || $1, 'exit', $5, $6,
                 case when $6::text is null then null else 'Other' end, 's', $7, $8, $9, false, '{}',
                 $10::text::timestamptz, $10::text::timestamptz, $11, '{}'::jsonb,
                 case when $12 then now() end, 'devin')",
        )
        .bind(s.id)
        .bind(s.org)
        .bind(s.user)
        .bind(s.service_user)
        .bind(s.origin)
        .bind(s.category)
        .bind(s.acus)
        .bind(s.user_messages)
        .bind(s.devin_messages)
        .bind(s.created)
        .bind(s.analysis)
        .bind(s.deleted)
        .execute(pool)
        .await
        .unwrap();
        for (url, state, repo) in s.prs {
            sqlx::query(
                "insert into session_pull_requests (session_id, pr_url, pr_state, repo) values ($1, $2, $3, $4)",
            )
            .bind(s.id)
            .bind(url)
            .bind(state)
            .bind(repo)
            .execute(pool)
            .await
            .unwrap();
        }
        for (i, (issue_id, impact, label)) in s.issues.iter().enumerate() {
            sqlx::query(
                "insert into session_issues (session_id, position, issue_id, issue, impact, label)
                 values ($1, $2, $3, 'what went wrong', $4, $5)",
            )
            .bind(s.id)
            .bind(i as i32)
            .bind(issue_id)
            .bind(impact)
            .bind(label)
            .execute(pool)
            .await
            .unwrap();
        }
        for (i, (issue_id, kind)) in s.actions.iter().enumerate() {
            sqlx::query(
                "insert into session_action_items (session_id, position, action_item, issue_id, type)
                 values ($1, $2, 'do something ' || $2, $3, $4)",
            )
            .bind(s.id)
            .bind(i as i32)
            .bind(issue_id)
            .bind(kind)
            .execute(pool)
            .await
            .unwrap();
        }
    }
    // Written by hand, not by the loader: bring the rollups the views read up to date, as the loader does.
    sqlx::query("select rollup_apply(array(select session_id from sessions))").execute(pool).await.unwrap();
}

/// A connection whose session time zone is far from UTC, to show that day and week buckets do not depend on it.
async fn far_from_utc(store: &Store) -> sqlx::pool::PoolConnection<sqlx::Postgres> {
    let mut conn = store.pool().acquire().await.unwrap();
    sqlx::raw_sql("set time zone 'Pacific/Kiritimati'").execute(&mut *conn).await.unwrap();
    conn
}

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!((actual - expected).abs() < 1e-9, "{what}: expected {expected}, got {actual}");
}

#[tokio::test]
async fn v_sessions_has_one_friendly_row_per_live_session() {
    let (_db, store) = common::migrated_warehouse().await;
    insert(store.pool(), &dataset()).await;
    let mut conn = far_from_utc(&store).await;

    type Row = (String, NaiveDate, NaiveDate, Option<String>, String, String, String, Option<String>, i64, i64, bool);
    let rows: Vec<Row> = sqlx::query_as(
        "select session_id, day, week, started_by, started_by_kind, origin, category, subcategory,
                pr_count, merged_pr_count, has_analysis
         from v_sessions order by session_id",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();

    let row = |id: &str, day: &str, week: &str, by: Option<&str>, kind: &str, origin: &str, category: &str| {
        (
            id.to_owned(),
            date(day),
            date(week),
            by.map(str::to_owned),
            kind.to_owned(),
            origin.to_owned(),
            category.to_owned(),
        )
    };
    let got: Vec<_> =
        rows.iter().map(|r| (r.0.clone(), r.1, r.2, r.3.clone(), r.4.clone(), r.5.clone(), r.6.clone())).collect();
    assert_eq!(
        got,
        vec![
            row("s1", "2026-03-01", "2026-02-23", Some("u1"), "user", "webapp", "bug_fixing"),
            row("s2", "2026-03-02", "2026-03-02", Some("svc1"), "service_user", "webapp", "bug_fixing"),
            row("s3", "2026-03-02", "2026-03-02", None, "unknown", "unknown", "uncategorized"),
            row("s4", "2026-03-02", "2026-03-02", Some("u2"), "user", "slack", "bug_fixing"),
            row("s6", "2026-03-02", "2026-03-02", Some("u1"), "user", "webapp", "bug_fixing"),
            row("s7", "2026-03-08", "2026-03-02", Some("u3"), "user", "webapp", "feature_development"),
            row("s8", "2026-03-09", "2026-03-09", Some("u3"), "user", "webapp", "feature_development"),
        ],
        "the soft-deleted s5 is left out; days and weeks are UTC whatever the session time zone"
    );
    let counts: Vec<(&str, i64, i64, bool, Option<&str>)> =
        rows.iter().map(|r| (r.0.as_str(), r.8, r.9, r.10, r.7.as_deref())).collect();
    assert_eq!(
        counts,
        vec![
            ("s1", 2, 1, true, Some("Other")),
            ("s2", 3, 0, true, Some("Other")),
            ("s3", 0, 0, false, None),
            ("s4", 1, 1, true, Some("Other")),
            ("s6", 0, 0, false, Some("Other")),
            ("s7", 1, 1, true, Some("Other")),
            ("s8", 1, 0, true, Some("Other")),
        ]
    );
}

#[tokio::test]
async fn v_daily_usage_sums_live_sessions_per_utc_day_org_origin_and_category() {
    let (_db, store) = common::migrated_warehouse().await;
    insert(store.pool(), &dataset()).await;
    let mut conn = far_from_utc(&store).await;

    type Row = (NaiveDate, String, String, String, i64, f64, i64, i64, i64, i64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "select day, org_id, origin, category, sessions, acus, user_messages, devin_messages,
                sessions_with_pr, sessions_with_merged_pr, sessions_with_analysis
         from v_daily_usage order by day, org_id, origin, category",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();

    let r = |day: &str, org: &str, origin: &str, cat: &str, n, acus, um, dm, pr, merged, analysed| -> Row {
        (date(day), org.into(), origin.into(), cat.into(), n, acus, um, dm, pr, merged, analysed)
    };
    assert_eq!(
        rows,
        vec![
            r("2026-03-01", "org-a", "webapp", "bug_fixing", 1, 1.5, 2, 5, 1, 1, 1),
            // s2 and s6 (s5 of the same day is soft-deleted)
            r("2026-03-02", "org-a", "unknown", "uncategorized", 1, 0.5, 0, 1, 0, 0, 0),
            r("2026-03-02", "org-a", "webapp", "bug_fixing", 2, 2.5, 7, 11, 1, 0, 1),
            r("2026-03-02", "org-b", "slack", "bug_fixing", 1, 4.0, 1, 2, 1, 1, 1),
            r("2026-03-08", "org-a", "webapp", "feature_development", 1, 1.0, 1, 1, 1, 1, 1),
            r("2026-03-09", "org-a", "webapp", "feature_development", 1, 3.0, 2, 2, 1, 0, 1),
        ]
    );
}

#[tokio::test]
async fn v_pull_request_outcomes_counts_states_per_iso_week_org_and_repo() {
    let (_db, store) = common::migrated_warehouse().await;
    insert(store.pool(), &dataset()).await;
    let mut conn = far_from_utc(&store).await;

    type Row = (NaiveDate, String, String, i64, i64, i64, i64, i64, f64, Option<f64>);
    let rows: Vec<Row> = sqlx::query_as(
        "select week, org_id, repo, prs, merged, closed, open, unknown, merge_rate, decided_merge_rate
         from v_pull_request_outcomes order by week, org_id, repo",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();

    let r = |week: &str, org: &str, repo: &str, prs, merged, closed, open, unknown, rate, decided| -> Row {
        (date(week), org.into(), repo.into(), prs, merged, closed, open, unknown, rate, decided)
    };
    assert_eq!(
        rows,
        vec![
            r("2026-02-23", "org-a", "acme/web", 2, 1, 1, 0, 0, 0.5, Some(0.5)),
            // null and 'draft' count as unknown; nothing decided yet
            r("2026-03-02", "org-a", "acme/web", 3, 0, 0, 1, 2, 0.0, None),
            r("2026-03-02", "org-a", "grp/sub/proj", 1, 1, 0, 0, 0, 1.0, Some(1.0)),
            // a Bitbucket URL has no parsed repo
            r("2026-03-02", "org-b", "unknown", 1, 1, 0, 0, 0, 1.0, Some(1.0)),
            r("2026-03-09", "org-a", "grp/sub/proj", 1, 0, 1, 0, 0, 0.0, Some(0.0)),
        ]
    );
}

#[tokio::test]
async fn v_analysis_issues_counts_issues_and_the_share_of_analysed_sessions_affected() {
    let (_db, store) = common::migrated_warehouse().await;
    insert(store.pool(), &dataset()).await;

    let rows: Vec<(String, String, String, i64, i64, i64, f64)> = sqlx::query_as(
        "select label, impact_level, category, issues, sessions_affected, analysed_sessions, share_of_sessions
         from v_analysis_issues order by category, label, impact_level",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();

    // bug_fixing has 3 analysed live sessions (s1, s2, s4), feature_development 2 (s7, s8).
    let expected: Vec<(&str, &str, &str, i64, i64, i64, f64)> = vec![
        ("environment", "critical", "bug_fixing", 1, 1, 3, 1.0 / 3.0),
        ("environment", "high", "bug_fixing", 3, 2, 3, 2.0 / 3.0),
        ("prompt", "low", "bug_fixing", 1, 1, 3, 1.0 / 3.0),
        ("tooling", "medium", "bug_fixing", 1, 1, 3, 1.0 / 3.0),
        ("tooling", "other", "bug_fixing", 1, 1, 3, 1.0 / 3.0),
        ("prompt", "low", "feature_development", 1, 1, 2, 0.5),
    ];
    assert_eq!(rows.len(), expected.len(), "{rows:?}");
    for (got, want) in rows.iter().zip(&expected) {
        assert_eq!(
            (got.0.as_str(), got.1.as_str(), got.2.as_str(), got.3, got.4, got.5),
            (want.0, want.1, want.2, want.3, want.4, want.5)
        );
        assert_close(got.6, want.6, &format!("share of {}/{}/{}", want.0, want.1, want.2));
    }

    let issues: Vec<(String, i32, String, NaiveDate, NaiveDate)> = sqlx::query_as(
        "select session_id, position, impact_level, day, week from v_session_issues order by session_id, position",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    let got: Vec<(&str, i32, &str)> = issues.iter().map(|r| (r.0.as_str(), r.1, r.2.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("s1", 0, "high"),
            ("s1", 1, "high"),
            ("s1", 2, "low"),
            ("s2", 0, "medium"),
            ("s2", 1, "high"),
            ("s4", 0, "critical"),
            ("s4", 1, "other"),
            ("s8", 0, "low"),
        ]
    );
    assert_eq!((issues[0].3, issues[0].4), (date("2026-03-01"), date("2026-02-23")));
}

#[tokio::test]
async fn v_action_items_counts_per_week_org_and_type_and_the_latest_link_their_session() {
    let (_db, store) = common::migrated_warehouse().await;
    insert(store.pool(), &dataset()).await;
    let mut conn = far_from_utc(&store).await;

    let rows: Vec<(NaiveDate, String, String, i64, i64, i64)> = sqlx::query_as(
        "select week, org_id, type, action_items, sessions, linked_to_issue
         from v_action_items order by week, org_id, type",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let r = |week: &str, org: &str, kind: &str, items, sessions, linked| {
        (date(week), org.to_owned(), kind.to_owned(), items, sessions, linked)
    };
    assert_eq!(
        rows,
        vec![
            r("2026-02-23", "org-a", "knowledge", 1, 1, 1),
            r("2026-02-23", "org-a", "other", 1, 1, 0),
            // s2's two items (one names an empty issue id: not linked) and s7's one
            r("2026-03-02", "org-a", "knowledge", 3, 2, 1),
            r("2026-03-02", "org-a", "prompt_improvement", 1, 1, 0),
            r("2026-03-02", "org-b", "repo_config", 1, 1, 1),
        ]
    );

    type Latest = (String, i32, String, Option<String>, String, DateTime<Utc>);
    let latest: Vec<Latest> = sqlx::query_as(
        "select session_id, position, type, issue_label, session_url, session_created_at
         from v_latest_action_items order by session_created_at desc, position",
    )
    .fetch_all(&mut *conn)
    .await
    .unwrap();
    let got: Vec<(&str, i32, &str, Option<&str>)> =
        latest.iter().map(|r| (r.0.as_str(), r.1, r.2.as_str(), r.3.as_deref())).collect();
    assert_eq!(
        got,
        vec![
            ("s7", 0, "prompt_improvement", None),
            ("s7", 1, "knowledge", None),
            ("s4", 0, "repo_config", Some("tooling")),
            // s2's "i1" is its own tooling issue, not s1's environment issue of the same id
            ("s2", 0, "knowledge", Some("tooling")),
            ("s2", 1, "knowledge", None),
            ("s1", 0, "knowledge", Some("environment")),
            ("s1", 1, "other", None),
        ]
    );
    assert_eq!(latest[0].4, "https://app.devin.ai/sessions/s7");
    assert_eq!(latest[0].5, "2026-03-08T23:59:59Z".parse::<DateTime<Utc>>().unwrap());
}

#[tokio::test]
async fn v_sync_health_reports_watermark_lag_last_run_and_the_last_24_hours_per_source() {
    let (_db, store) = common::migrated_warehouse().await;
    let pool = store.pool();
    sqlx::raw_sql(
        "insert into sync_state (source, watermark) values ('devin', extract(epoch from now())::bigint - 120);
         insert into sync_runs (source, mode, started_at, finished_at, status, sessions_upserted, retries)
         values ('devin', 'backfill', now() - interval '2 days', now() - interval '47 hours', 'succeeded', 500, 9),
                ('devin', 'incremental', now() - interval '1 hour', now() - interval '59 minutes', 'failed', 0, 3),
                ('devin', 'incremental', now() - interval '30 minutes', now() - interval '29 minutes', 'succeeded', 7, 1);
         insert into sync_runs (source, mode, started_at, finished_at, status, error)
         values ('other', 'backfill', now() - interval '10 minutes', now() - interval '9 minutes', 'failed', 'boom');",
    )
    .execute(pool)
    .await
    .unwrap();

    type Row = (
        String,
        Option<i64>,
        Option<i64>,
        Option<String>,
        Option<String>,
        Option<String>,
        Option<DateTime<Utc>>,
        i64,
        i64,
        i64,
        i64,
    );
    let rows: Vec<Row> = sqlx::query_as(
        "select source, watermark, lag_seconds, last_run_mode, last_run_status, last_run_error, last_success_at,
                runs_24h, failed_runs_24h, sessions_upserted_24h, retries_24h
         from v_sync_health order by source",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert_eq!(rows.len(), 2, "{rows:?}");

    let devin = &rows[0];
    assert_eq!(devin.0, "devin");
    assert!(devin.1.is_some());
    let lag = devin.2.unwrap();
    // 120 s, give or take the rounding of the epoch to whole seconds.
    assert!((119..180).contains(&lag), "lag {lag}");
    assert_eq!(
        (devin.3.as_deref(), devin.4.as_deref(), devin.5.as_deref()),
        (Some("incremental"), Some("succeeded"), None)
    );
    let last_ok: DateTime<Utc> =
        sqlx::query_scalar("select max(finished_at) from sync_runs where source = 'devin' and status = 'succeeded'")
            .fetch_one(pool)
            .await
            .unwrap();
    assert_eq!(devin.6, Some(last_ok));
    assert_eq!((devin.7, devin.8, devin.9, devin.10), (2, 1, 7, 4), "the 2-day-old backfill is outside the 24 hours");

    let other = &rows[1];
    assert_eq!(other.0, "other");
    assert_eq!((other.1, other.2), (None, None), "a source without sync_state has no watermark");
    assert_eq!((other.4.as_deref(), other.5.as_deref(), other.6), (Some("failed"), Some("boom"), None));
    assert_eq!((other.7, other.8, other.9, other.10), (1, 1, 0, 0));
}

#[tokio::test]
async fn every_view_and_column_is_documented() {
    let (_db, store) = common::migrated_warehouse().await;
    let undocumented: Vec<(String, Option<String>)> = sqlx::query_as(
        "select c.relname::text, a.attname::text
         from pg_class c
         join pg_namespace n on n.oid = c.relnamespace and n.nspname = current_schema()
         left join pg_attribute a on a.attrelid = c.oid and a.attnum > 0 and not a.attisdropped
         where c.relkind = 'v'
           and (obj_description(c.oid, 'pg_class') is null
                or (a.attname is not null and col_description(c.oid, a.attnum) is null))",
    )
    .fetch_all(store.pool())
    .await
    .unwrap();
    assert!(undocumented.is_empty(), "views or columns without a comment: {undocumented:?}");
    let views: i64 = sqlx::query_scalar(
        "select count(*) from pg_views where schemaname = current_schema() and viewname in
           ('v_sessions', 'v_daily_usage', 'v_pull_request_outcomes', 'v_session_issues', 'v_analysis_issues',
            'v_action_items', 'v_latest_action_items', 'v_sync_health')",
    )
    .fetch_one(store.pool())
    .await
    .unwrap();
    assert_eq!(views, 8);
}

// ---------------------------------------------------------------------------------------------------------------
// Views against the simulator's truth

fn utc(ts: i64) -> DateTime<Utc> {
    DateTime::from_timestamp(ts, 0).unwrap()
}

fn day_of(ts: i64) -> NaiveDate {
    utc(ts).date_naive()
}

fn week_of(ts: i64) -> NaiveDate {
    let d = day_of(ts);
    d - chrono::Days::new(u64::from(d.weekday().num_days_from_monday()))
}

/// The impact level as the views define it (function impact_level), computed independently.
fn impact_level(impact: &str) -> String {
    let head: String = impact.chars().take(40).collect();
    let word = head.trim_start_matches(' ').split(' ').next().unwrap_or("").split(':').next().unwrap_or("");
    let word = word.trim_end_matches(['.', ',', ';', '!', '-']).to_lowercase();
    if ["critical", "high", "medium", "low"].contains(&word.as_str()) { word } else { "other".to_owned() }
}

fn origin_of(s: &SessionInsights) -> String {
    s.origin.clone().unwrap_or_else(|| "unknown".to_owned())
}

fn category_of(s: &SessionInsights) -> String {
    s.category.clone().unwrap_or_else(|| "uncategorized".to_owned())
}

/// Every aggregate view equals the same aggregate computed in Rust from `live` (the sessions that should count).
async fn assert_views_match(store: &Store, live: &[SessionInsights]) {
    let pool = store.pool();
    let expected_rows = common::expected_rows(live);

    // v_sessions
    let rows: Vec<(String, i64, i64)> =
        sqlx::query_as("select session_id, pr_count, merged_pr_count from v_sessions").fetch_all(pool).await.unwrap();
    let got: BTreeMap<String, (i64, i64)> = rows.into_iter().map(|(id, a, b)| (id, (a, b))).collect();
    let want: BTreeMap<String, (i64, i64)> = live
        .iter()
        .map(|s| {
            let merged = s.pull_requests.iter().filter(|p| p.pr_state.as_deref() == Some("merged")).count();
            (s.session_id.clone(), (s.pull_requests.len() as i64, merged as i64))
        })
        .collect();
    assert_eq!(got, want, "v_sessions");

    // v_daily_usage
    type Usage = (i64, f64, i64, i64, i64, i64, i64);
    type UsageRow = (NaiveDate, String, String, String, i64, f64, i64, i64, i64, i64, i64);
    let rows: Vec<UsageRow> = sqlx::query_as(
        "select day, org_id, origin, category, sessions, acus, user_messages, devin_messages, sessions_with_pr,
                sessions_with_merged_pr, sessions_with_analysis from v_daily_usage",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let got: BTreeMap<_, Usage> =
        rows.into_iter().map(|r| ((r.0, r.1, r.2, r.3), (r.4, r.5, r.6, r.7, r.8, r.9, r.10))).collect();
    let mut want: BTreeMap<_, Usage> = BTreeMap::new();
    for s in live {
        let e = want.entry((day_of(s.created_at), s.org_id.clone(), origin_of(s), category_of(s))).or_default();
        e.0 += 1;
        e.1 += s.acus_consumed;
        e.2 += s.num_user_messages;
        e.3 += s.num_devin_messages;
        e.4 += i64::from(!s.pull_requests.is_empty());
        e.5 += i64::from(s.pull_requests.iter().any(|p| p.pr_state.as_deref() == Some("merged")));
        e.6 += i64::from(s.analysis.is_some());
    }
    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "v_daily_usage groups");
    for (k, w) in &want {
        let g = got[k];
        assert_eq!((g.0, g.2, g.3, g.4, g.5, g.6), (w.0, w.2, w.3, w.4, w.5, w.6), "v_daily_usage {k:?}");
        assert!((g.1 - w.1).abs() < 1e-6, "v_daily_usage acus {k:?}: {} vs {}", g.1, w.1);
    }

    // v_pull_request_outcomes (repos as the loader parses them, from the harness' independent parser)
    let by_id: BTreeMap<&str, &SessionInsights> = live.iter().map(|s| (s.session_id.as_str(), s)).collect();
    type OutcomeRow = (NaiveDate, String, String, i64, i64, i64, i64, i64);
    let rows: Vec<OutcomeRow> =
        sqlx::query_as("select week, org_id, repo, prs, merged, closed, open, unknown from v_pull_request_outcomes")
            .fetch_all(pool)
            .await
            .unwrap();
    let got: BTreeMap<_, _> = rows.into_iter().map(|r| ((r.0, r.1, r.2), (r.3, r.4, r.5, r.6, r.7))).collect();
    let mut want: BTreeMap<_, (i64, i64, i64, i64, i64)> = BTreeMap::new();
    for pr in expected_rows.get("session_pull_requests").into_iter().flat_map(|t| t.values()) {
        let s = by_id[pr["session_id"].as_str().unwrap()];
        let repo = pr["repo"].as_str().unwrap_or("unknown").to_owned();
        let e = want.entry((week_of(s.created_at), s.org_id.clone(), repo)).or_default();
        e.0 += 1;
        match pr["pr_state"].as_str() {
            Some("merged") => e.1 += 1,
            Some("closed") => e.2 += 1,
            Some("open") => e.3 += 1,
            _ => e.4 += 1,
        }
    }
    assert_eq!(got, want, "v_pull_request_outcomes");

    // v_action_items
    let rows: Vec<(NaiveDate, String, String, i64, i64, i64)> =
        sqlx::query_as("select week, org_id, type, action_items, sessions, linked_to_issue from v_action_items")
            .fetch_all(pool)
            .await
            .unwrap();
    let got: BTreeMap<_, _> = rows.into_iter().map(|r| ((r.0, r.1, r.2), (r.3, r.4, r.5))).collect();
    let mut want: BTreeMap<_, (i64, i64, i64)> = BTreeMap::new();
    for s in live {
        let Some(a) = &s.analysis else { continue };
        let mut types = BTreeSet::new();
        for item in &a.action_items {
            let e = want.entry((week_of(s.created_at), s.org_id.clone(), item.kind.clone())).or_default();
            e.0 += 1;
            e.2 += i64::from(item.issue_id.as_deref().is_some_and(|i| !i.is_empty()));
            if types.insert(item.kind.clone()) {
                e.1 += 1;
            }
        }
    }
    assert_eq!(got, want, "v_action_items");

    // v_analysis_issues
    let rows: Vec<(String, String, String, i64, i64, i64)> = sqlx::query_as(
        "select label, impact_level, category, issues, sessions_affected, analysed_sessions from v_analysis_issues",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let got: BTreeMap<_, _> = rows.into_iter().map(|r| ((r.0, r.1, r.2), (r.3, r.4, r.5))).collect();
    let mut analysed: BTreeMap<String, i64> = BTreeMap::new();
    for s in live.iter().filter(|s| s.analysis.is_some()) {
        *analysed.entry(category_of(s)).or_default() += 1;
    }
    let mut want: BTreeMap<_, (i64, i64, i64)> = BTreeMap::new();
    for s in live {
        let Some(a) = &s.analysis else { continue };
        let mut seen = BTreeSet::new();
        for issue in &a.issues {
            let key = (issue.label.clone(), impact_level(&issue.impact), category_of(s));
            let e = want.entry(key.clone()).or_insert((0, 0, analysed[&category_of(s)]));
            e.0 += 1;
            if seen.insert(key) {
                e.1 += 1;
            }
        }
    }
    assert_eq!(got, want, "v_analysis_issues");

    // row-level views
    let issues: i64 = sqlx::query_scalar("select count(*) from v_session_issues").fetch_one(pool).await.unwrap();
    let items: i64 = sqlx::query_scalar("select count(*) from v_latest_action_items").fetch_one(pool).await.unwrap();
    let want_issues: usize = live.iter().filter_map(|s| s.analysis.as_ref()).map(|a| a.issues.len()).sum();
    let want_items: usize = live.iter().filter_map(|s| s.analysis.as_ref()).map(|a| a.action_items.len()).sum();
    assert_eq!((issues, items), (want_issues as i64, want_items as i64), "v_session_issues, v_latest_action_items");

    let health: Vec<(String, Option<String>, i64)> =
        sqlx::query_as("select source, last_run_status, failed_runs_24h from v_sync_health")
            .fetch_all(pool)
            .await
            .unwrap();
    assert_eq!(health, vec![("devin".to_owned(), Some("succeeded".to_owned()), 0)], "v_sync_health");
}

#[tokio::test]
async fn views_match_the_truth_after_resyncs_and_drop_soft_deleted_sessions() {
    let app = TestApp::spawn(400).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    assert_views_match(app.store(), &app.sim.sessions()).await;

    // The API changes, and the warehouse is synced again: a second backfill, then an incremental run.
    app.sim.advance(120);
    let with_prs = app.sim.sessions().into_iter().find(|s| s.pull_requests.len() >= 2).expect("a session with PRs");
    app.sim.modify(&with_prs.session_id, |s| {
        s.pull_requests.remove(0);
        s.category = None;
    });
    app.sim.update_some(40);
    app.sim.create(15);
    app.sim.advance(60);
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    app.sim.advance(60);
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    app.assert_matches_truth().await;
    assert_views_match(app.store(), &app.sim.sessions()).await;

    // Soft deletes: sessions with PRs, issues and action items among them.
    let truth = app.sim.sessions();
    let deleted: Vec<String> = truth
        .iter()
        .filter(|s| !s.pull_requests.is_empty() && s.analysis.as_ref().is_some_and(|a| !a.action_items.is_empty()))
        .take(20)
        .chain(truth.iter().step_by(17))
        .map(|s| s.session_id.clone())
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    sqlx::query("update sessions set deleted_at = now() where session_id = any($1)")
        .bind(&deleted)
        .execute(app.store().pool())
        .await
        .unwrap();
    // By hand, not through a reconcile: the rollups the views read are brought up to date as a reconcile does.
    sqlx::query("select rollup_apply($1)").bind(&deleted).execute(app.store().pool()).await.unwrap();
    let live: Vec<SessionInsights> = truth.into_iter().filter(|s| !deleted.contains(&s.session_id)).collect();
    assert_views_match(app.store(), &live).await;
    for view in ["v_sessions", "v_session_issues", "v_latest_action_items"] {
        let n: i64 = sqlx::query_scalar(&format!("select count(*) from {view} where session_id = any($1)"))
            .bind(&deleted)
            .fetch_one(app.store().pool())
            .await
            .unwrap();
        assert_eq!(n, 0, "{view} shows soft-deleted sessions");
    }

    // A session that comes back (deleted_at cleared) counts again.
    sqlx::query("update sessions set deleted_at = null").execute(app.store().pool()).await.unwrap();
    sqlx::query("select rollup_apply($1)").bind(&deleted).execute(app.store().pool()).await.unwrap();
    assert_views_match(app.store(), &app.sim.sessions()).await;
}

// ---------------------------------------------------------------------------------------------------------------
// Every shipped query runs

/// Grafana's time range as "all of time".
const FROM: &str = "'2000-01-01T00:00:00Z'";
const TO: &str = "'2100-01-01T00:00:00Z'";

#[tokio::test]
async fn every_query_of_the_docs_and_the_grafana_dashboard_runs_on_a_synced_warehouse() {
    let app = TestApp::spawn(600).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    app.sim.advance(60);
    app.sim.update_some(10);
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    let pool = app.store().pool();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));

    let docs = std::fs::read_to_string(root.join("docs/queries.md")).unwrap();
    let blocks = sql_blocks(&docs);
    assert!(blocks.len() >= 12, "docs/queries.md has {} sql blocks, want at least 12", blocks.len());
    let session_id: String = sqlx::query_scalar("select session_id from v_sessions order by session_id limit 1")
        .fetch_one(pool)
        .await
        .unwrap();
    let mut with_rows = 0;
    for block in &blocks {
        let sql = with_session_id(&block.sql, &session_id);
        let rows =
            sqlx::raw_sql(&sql).fetch_all(pool).await.unwrap_or_else(|e| panic!("docs query failed: {e}\n{sql}"));
        with_rows += usize::from(!rows.is_empty());
    }
    assert!(with_rows >= 12, "only {with_rows} docs queries return rows on simulator data");

    let orgs: Vec<String> =
        sqlx::query_scalar("select distinct org_id from sessions order by 1").fetch_all(pool).await.unwrap();
    let org_list = orgs.iter().map(|o| format!("'{}'", o.replace('\'', "''"))).collect::<Vec<_>>().join(",");
    for dashboard_file in ["deploy/grafana/dashboards/devin-etl.json"] {
        let dashboard: Value = serde_json::from_str(&std::fs::read_to_string(root.join(dashboard_file)).unwrap())
            .unwrap_or_else(|e| panic!("{dashboard_file} is not JSON: {e}"));
        let queries = dashboard_queries(&dashboard);
        assert!(queries.len() >= 10, "{dashboard_file}: only {} queries", queries.len());
        for ShippedQuery { name: title, format, sql: raw } in queries {
            let sql = expand_grafana(&raw, FROM, TO, &[("org", &org_list)]).unwrap();
            let rows = sqlx::query(&sql)
                .fetch_all(pool)
                .await
                .unwrap_or_else(|e| panic!("{dashboard_file} panel {title:?} failed: {e}\n{sql}"));
            assert!(!rows.is_empty(), "{dashboard_file} panel {title:?} shows nothing on simulator data\n{sql}");
            if format == "time_series" {
                let columns: Vec<&str> = rows[0].columns().iter().map(|c| c.name()).collect();
                assert!(columns.contains(&"time"), "time series panel {title:?} has no time column: {columns:?}");
                assert!(
                    rows.windows(2).all(|w| {
                        let a: Option<DateTime<Utc>> = time_of(&w[0]);
                        let b: Option<DateTime<Utc>> = time_of(&w[1]);
                        a <= b
                    }),
                    "time series panel {title:?} is not ordered by time"
                );
            }
        }
    }
}

/// The `time` column of a row as a timestamp, whether it is a date or a timestamptz.
fn time_of(row: &sqlx::postgres::PgRow) -> Option<DateTime<Utc>> {
    row.try_get::<Option<DateTime<Utc>>, _>("time").ok().flatten().or_else(|| {
        row.try_get::<Option<NaiveDate>, _>("time")
            .ok()
            .flatten()
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| t.and_utc())
    })
}
