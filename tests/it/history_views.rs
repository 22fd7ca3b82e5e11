//! The history views (issue 12): exact figures of time in status, PR lifecycles and ACUs burned per day on a
//! hand-built history, and the history queries of `docs/queries.md` and the Grafana dashboard run on it.

use crate::common;

use std::collections::BTreeMap;

use chrono::{DateTime, NaiveDate, Utc};
use common::TestDb;
use devin_etl::shipped_queries::{ShippedQuery, dashboard_queries, expand_grafana, sql_blocks, with_session_id};
use devin_etl::store::Store;
use serde_json::Value;
use sqlx::{PgPool, Postgres, Transaction};

// ---------------------------------------------------------------------------------------------------------------
// Hand-built history (UTC). 2025-03-03 is a Monday: 03-01 and 03-02 fall in the ISO week of Monday 2025-02-24.

/// (id, org, user, service user, category, acus_consumed now, created_at, deleted_at)
type SessionRow = (
    &'static str,
    &'static str,
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
    f64,
    &'static str,
    Option<&'static str>,
);

const SESSIONS: &[SessionRow] = &[
    // three days of work: ACUs rise, a period waiting for the user crosses midnight, then it ends (open period)
    ("a", "org-a", Some("u1"), None, Some("bug_fixing"), 10.0, "2025-03-03T20:00:00Z", None),
    // its first version is its only one; started by a service user, not categorised
    ("b", "org-b", None, Some("svc1"), None, 4.0, "2025-03-04T23:00:00Z", None),
    // ACUs go down (a negative increment), its PR disappears
    ("c", "org-a", Some("u2"), None, Some("feature_development"), 6.0, "2025-03-05T00:00:00Z", None),
    // soft-deleted: in no view
    ("d", "org-a", Some("u1"), None, Some("bug_fixing"), 50.0, "2025-03-04T08:00:00Z", Some("2025-03-06T00:00:00Z")),
    // its rows before 03-04 were pruned (history.retention): its first kept version holds 7 ACUs burned since 03-01
    ("e", "org-b", Some("u3"), None, Some("bug_fixing"), 9.0, "2025-03-01T00:00:00Z", None),
    // deleted on 03-06 at 10:00, back on 03-07 at 10:00: a gap in its history
    ("f", "org-a", Some("u1"), None, Some("bug_fixing"), 3.0, "2025-03-06T00:00:00Z", None),
    // created (per the API) after the first version's valid_from: its ACUs all land on that version's day
    ("g", "org-a", Some("u1"), None, Some("bug_fixing"), 0.5, "2025-03-09T01:00:00Z", None),
];

/// (session, valid_from, valid_to, status, status_detail, acus_consumed)
type HistoryRow = (&'static str, &'static str, Option<&'static str>, &'static str, Option<&'static str>, f64);

const HISTORY: &[HistoryRow] = &[
    ("a", "2025-03-03T22:00:00Z", Some("2025-03-04T02:00:00Z"), "running", Some("working"), 2.0),
    ("a", "2025-03-04T02:00:00Z", Some("2025-03-04T04:00:00Z"), "running", Some("working"), 5.0),
    ("a", "2025-03-04T04:00:00Z", Some("2025-03-05T16:00:00Z"), "running", Some("waiting_for_user"), 5.0),
    ("a", "2025-03-05T16:00:00Z", None, "exit", Some("finished"), 10.0),
    ("b", "2025-03-05T01:00:00Z", None, "suspended", Some("inactivity"), 4.0),
    ("c", "2025-03-05T06:00:00Z", Some("2025-03-05T12:00:00Z"), "running", Some("working"), 8.0),
    ("c", "2025-03-05T12:00:00Z", Some("2025-03-06T12:00:00Z"), "exit", None, 8.0),
    ("c", "2025-03-06T12:00:00Z", None, "exit", None, 6.0),
    ("d", "2025-03-04T08:00:00Z", Some("2025-03-06T00:00:00Z"), "running", Some("working"), 50.0),
    ("e", "2025-03-04T00:00:00Z", Some("2025-03-04T06:00:00Z"), "running", Some("working"), 7.0),
    ("e", "2025-03-04T06:00:00Z", Some("2025-03-04T07:00:00Z"), "running", Some("waiting_for_user"), 7.0),
    ("e", "2025-03-04T07:00:00Z", None, "running", Some("working"), 9.0),
    ("f", "2025-03-06T00:00:00Z", Some("2025-03-06T10:00:00Z"), "running", Some("working"), 1.0),
    ("f", "2025-03-07T10:00:00Z", None, "running", Some("working"), 3.0),
    ("g", "2025-03-08T23:00:00Z", None, "exit", None, 0.5),
];

const PR1: &str = "https://github.com/acme/web/pull/1";
const PR2: &str = "https://github.com/acme/web/pull/2";
const PR3: &str = "https://gitlab.com/grp/sub/proj/-/merge_requests/7";
const PR5: &str = "https://github.com/acme/web/pull/5";
const PR9: &str = "https://github.com/acme/api/pull/9";
const PR_BB: &str = "https://bitbucket.org/x/y/pull-requests/1";

/// The PRs sessions list now: (session, url, state, repo). PR3 has disappeared from c.
const PULL_REQUESTS: &[(&str, &str, &str, Option<&str>)] = &[
    ("a", PR1, "merged", Some("acme/web")),
    ("a", PR2, "closed", Some("acme/web")),
    ("d", PR5, "merged", Some("acme/web")),
    ("e", PR9, "merged", Some("acme/api")),
    ("f", PR_BB, "open", None),
];

/// (session, url, valid_from, valid_to, state)
const PR_HISTORY: &[(&str, &str, &str, Option<&str>, &str)] = &[
    ("a", PR1, "2025-03-04T02:00:00Z", Some("2025-03-05T16:00:00Z"), "open"),
    ("a", PR1, "2025-03-05T16:00:00Z", None, "merged"),
    ("a", PR2, "2025-03-04T02:00:00Z", Some("2025-03-04T04:00:00Z"), "open"),
    ("a", PR2, "2025-03-04T04:00:00Z", None, "closed"),
    ("c", PR3, "2025-03-05T06:00:00Z", Some("2025-03-05T12:00:00Z"), "open"),
    ("d", PR5, "2025-03-04T08:00:00Z", Some("2025-03-06T00:00:00Z"), "merged"),
    ("e", PR9, "2025-03-04T00:00:00Z", None, "merged"),
    ("f", PR_BB, "2025-03-06T00:00:00Z", Some("2025-03-06T10:00:00Z"), "open"),
    ("f", PR_BB, "2025-03-07T10:00:00Z", None, "open"),
];

/// Inserts the dataset with every time moved `shift_days` days later.
async fn insert(pool: &PgPool, shift_days: i32) {
    // $1 is the shift; parameter n a time as text
    let t = |n: usize| format!("(${n}::text::timestamptz + make_interval(days => $1))");
    for &(id, org, user, service_user, category, acus, created, deleted) in SESSIONS {
        sqlx::query(&format!(
            "insert into sessions (session_id, org_id, user_id, service_user_id, url, status, category, session_size,
                 acus_consumed, num_user_messages, num_devin_messages, is_archived, tags, created_at, updated_at,
                 has_analysis, raw, deleted_at, source)
             values ($2, $3, $4, $5, 'https://app.devin.ai/sessions/' || $2, 'running', $6, 's', $7, 0, 0, false,
                 '{{}}', {c}, {c}, false, '{{}}'::jsonb, {d}, 'devin')",
            c = t(8),
            d = t(9),
        ))
        .bind(shift_days)
        .bind(id)
        .bind(org)
        .bind(user)
        .bind(service_user)
        .bind(category)
        .bind(acus)
        .bind(created)
        .bind(deleted)
        .execute(pool)
        .await
        .unwrap();
    }
    for &(id, from, to, status, detail, acus) in HISTORY {
        sqlx::query(&format!(
            "insert into session_history (session_id, valid_from, valid_to, status, status_detail, acus_consumed,
                 category, has_analysis, is_archived)
             values ($2, {}, {}, $5, $6, $7, null, false, false)",
            t(3),
            t(4)
        ))
        .bind(shift_days)
        .bind(id)
        .bind(from)
        .bind(to)
        .bind(status)
        .bind(detail)
        .bind(acus)
        .execute(pool)
        .await
        .unwrap();
    }
    for &(id, url, state, repo) in PULL_REQUESTS {
        sqlx::query("insert into session_pull_requests (session_id, pr_url, pr_state, repo) values ($1, $2, $3, $4)")
            .bind(id)
            .bind(url)
            .bind(state)
            .bind(repo)
            .execute(pool)
            .await
            .unwrap();
    }
    for &(id, url, from, to, state) in PR_HISTORY {
        sqlx::query(&format!(
            "insert into session_pull_request_history (session_id, pr_url, valid_from, valid_to, pr_state)
             values ($2, $3, {}, {}, $6)",
            t(4),
            t(5)
        ))
        .bind(shift_days)
        .bind(id)
        .bind(url)
        .bind(from)
        .bind(to)
        .bind(state)
        .execute(pool)
        .await
        .unwrap();
    }
}

/// A migrated warehouse holding the dataset.
async fn warehouse() -> (TestDb, Store) {
    let (db, store) = common::migrated_warehouse().await;
    insert(store.pool(), 0).await;
    (db, store)
}

/// A transaction, so that now() stays the same across queries, in a time zone far from UTC (day buckets must not
/// depend on it); returns it with its now().
async fn frozen_now(store: &Store) -> (Transaction<'static, Postgres>, DateTime<Utc>) {
    let mut tx = store.pool().begin().await.unwrap();
    sqlx::raw_sql("set local time zone 'Pacific/Kiritimati'").execute(&mut *tx).await.unwrap();
    let now: DateTime<Utc> = sqlx::query_scalar("select now()").fetch_one(&mut *tx).await.unwrap();
    (tx, now)
}

fn ts(s: &str) -> DateTime<Utc> {
    s.parse().unwrap()
}

fn date(s: &str) -> NaiveDate {
    s.parse().unwrap()
}

fn hours_between(from: DateTime<Utc>, to: DateTime<Utc>) -> f64 {
    (to - from).num_microseconds().unwrap() as f64 / 3.6e9
}

fn assert_close(actual: f64, expected: f64, what: &str) {
    assert!((actual - expected).abs() < 1e-9, "{what}: expected {expected}, got {actual}");
}

fn s(v: &str) -> String {
    v.to_owned()
}

fn os(v: Option<&str>) -> Option<String> {
    v.map(str::to_owned)
}

// ---------------------------------------------------------------------------------------------------------------
// Time in status

#[tokio::test]
async fn status_periods_merge_versions_of_the_same_status_and_run_until_now() {
    let (_db, store) = warehouse().await;
    let (mut tx, _now) = frozen_now(&store).await;

    type Row = (String, i64, String, Option<String>, DateTime<Utc>, Option<DateTime<Utc>>, bool, i64);
    let got: Vec<Row> = sqlx::query_as(
        "select session_id, period, status, status_detail, started_at, ended_at, is_current, versions
         from v_session_status_periods order by session_id, period",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let row = |id: &str, n: i64, status: &str, detail: Option<&str>, from: &str, to: Option<&str>, versions: i64| {
        (s(id), n, s(status), os(detail), ts(from), to.map(ts), to.is_none(), versions)
    };
    let want = vec![
        // a's first two versions differ only in ACUs: one period
        row("a", 1, "running", Some("working"), "2025-03-03T22:00:00Z", Some("2025-03-04T04:00:00Z"), 2),
        row("a", 2, "running", Some("waiting_for_user"), "2025-03-04T04:00:00Z", Some("2025-03-05T16:00:00Z"), 1),
        row("a", 3, "exit", Some("finished"), "2025-03-05T16:00:00Z", None, 1),
        row("b", 1, "suspended", Some("inactivity"), "2025-03-05T01:00:00Z", None, 1),
        row("c", 1, "running", Some("working"), "2025-03-05T06:00:00Z", Some("2025-03-05T12:00:00Z"), 1),
        row("c", 2, "exit", None, "2025-03-05T12:00:00Z", None, 2),
        row("e", 1, "running", Some("working"), "2025-03-04T00:00:00Z", Some("2025-03-04T06:00:00Z"), 1),
        row("e", 2, "running", Some("waiting_for_user"), "2025-03-04T06:00:00Z", Some("2025-03-04T07:00:00Z"), 1),
        row("e", 3, "running", Some("working"), "2025-03-04T07:00:00Z", None, 1),
        // the deleted day splits f's time in the same status into two periods
        row("f", 1, "running", Some("working"), "2025-03-06T00:00:00Z", Some("2025-03-06T10:00:00Z"), 1),
        row("f", 2, "running", Some("working"), "2025-03-07T10:00:00Z", None, 1),
        row("g", 1, "exit", None, "2025-03-08T23:00:00Z", None, 1),
    ];
    assert_eq!(got, want);
}

#[tokio::test]
async fn time_in_status_per_session_sums_its_periods_the_current_one_until_now() {
    let (_db, store) = warehouse().await;
    let (mut tx, now) = frozen_now(&store).await;

    type Row = (String, String, Option<String>, i64, f64, DateTime<Utc>, bool, String);
    let got: Vec<Row> = sqlx::query_as(
        "select session_id, status, status_detail, periods, hours, first_started_at, is_current,
                time_in_status::text
         from v_session_status_time order by session_id, status, status_detail",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    // (id, status, detail, periods, hours of closed periods, start of the current period, first start)
    type Want = (&'static str, &'static str, Option<&'static str>, i64, f64, Option<&'static str>, &'static str);
    let want: &[Want] = &[
        ("a", "exit", Some("finished"), 1, 0.0, Some("2025-03-05T16:00:00Z"), "2025-03-05T16:00:00Z"),
        ("a", "running", Some("waiting_for_user"), 1, 36.0, None, "2025-03-04T04:00:00Z"),
        ("a", "running", Some("working"), 1, 6.0, None, "2025-03-03T22:00:00Z"),
        ("b", "suspended", Some("inactivity"), 1, 0.0, Some("2025-03-05T01:00:00Z"), "2025-03-05T01:00:00Z"),
        ("c", "exit", None, 1, 0.0, Some("2025-03-05T12:00:00Z"), "2025-03-05T12:00:00Z"),
        ("c", "running", Some("working"), 1, 6.0, None, "2025-03-05T06:00:00Z"),
        ("e", "running", Some("waiting_for_user"), 1, 1.0, None, "2025-03-04T06:00:00Z"),
        ("e", "running", Some("working"), 2, 6.0, Some("2025-03-04T07:00:00Z"), "2025-03-04T00:00:00Z"),
        ("f", "running", Some("working"), 2, 10.0, Some("2025-03-07T10:00:00Z"), "2025-03-06T00:00:00Z"),
        ("g", "exit", None, 1, 0.0, Some("2025-03-08T23:00:00Z"), "2025-03-08T23:00:00Z"),
    ];
    assert_eq!(got.len(), want.len(), "{got:?}");
    for (g, w) in got.iter().zip(want) {
        let what = format!("{w:?}");
        assert_eq!((g.0.as_str(), g.1.as_str(), g.2.as_deref(), g.3), (w.0, w.1, w.2, w.3), "{what}");
        let open = w.5.map_or(0.0, |from| hours_between(ts(from), now));
        assert!((g.4 - (w.4 + open)).abs() < 1e-6, "{what}: hours {} vs {}", g.4, w.4 + open);
        assert_eq!((g.5, g.6), (ts(w.6), w.5.is_some()), "{what}");
    }
    let interval =
        |id: &str, detail: &str| got.iter().find(|r| r.0 == id && r.2.as_deref() == Some(detail)).unwrap().7.clone();
    assert_eq!(interval("a", "waiting_for_user"), "1 day 12:00:00");
    assert_eq!(interval("a", "working"), "06:00:00");
}

#[tokio::test]
async fn time_in_status_per_day_is_split_at_utc_midnight_and_open_periods_fill_every_day_until_now() {
    let (_db, store) = warehouse().await;
    let (mut tx, now) = frozen_now(&store).await;

    type Row = (NaiveDate, String, String, Option<String>, f64, i64);
    let rows: Vec<Row> = sqlx::query_as(
        "select day, org_id, status, status_detail, hours, sessions from v_status_time_daily
         order by day, org_id, status, status_detail",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let got: BTreeMap<_, _> = rows.into_iter().map(|r| ((r.0, r.1, r.2, r.3), (r.4, r.5))).collect();

    type Key = (NaiveDate, String, String, Option<String>);
    let mut want: BTreeMap<Key, (f64, i64)> = BTreeMap::new();
    let mut put = |day: NaiveDate, org: &str, status: &str, detail: Option<&str>, hours: f64, sessions: i64| {
        want.insert((day, s(org), s(status), os(detail)), (hours, sessions));
    };
    let (w, wfu, fin, ina) = (Some("working"), Some("waiting_for_user"), Some("finished"), Some("inactivity"));
    // The first days, by hand.
    put(date("2025-03-03"), "org-a", "running", w, 2.0, 1);
    put(date("2025-03-04"), "org-a", "running", wfu, 20.0, 1); // a: 04:00 to midnight
    put(date("2025-03-04"), "org-a", "running", w, 4.0, 1);
    put(date("2025-03-04"), "org-b", "running", wfu, 1.0, 1);
    put(date("2025-03-04"), "org-b", "running", w, 23.0, 1); // e: 6 h, then its current period from 07:00: one session
    put(date("2025-03-05"), "org-a", "exit", fin, 8.0, 1);
    put(date("2025-03-05"), "org-a", "exit", None, 12.0, 1);
    put(date("2025-03-05"), "org-a", "running", wfu, 16.0, 1); // a: midnight to 16:00
    put(date("2025-03-05"), "org-a", "running", w, 6.0, 1);
    put(date("2025-03-05"), "org-b", "running", w, 24.0, 1);
    put(date("2025-03-05"), "org-b", "suspended", ina, 23.0, 1);
    for (day, f_working) in [("2025-03-06", 10.0), ("2025-03-07", 14.0), ("2025-03-08", 24.0)] {
        put(date(day), "org-a", "exit", fin, 24.0, 1);
        put(date(day), "org-a", "running", w, f_working, 1); // f: 10 h, deleted, back at 10:00
        put(date(day), "org-b", "running", w, 24.0, 1);
        put(date(day), "org-b", "suspended", ina, 24.0, 1);
    }
    put(date("2025-03-06"), "org-a", "exit", None, 24.0, 1);
    put(date("2025-03-07"), "org-a", "exit", None, 24.0, 1);
    put(date("2025-03-08"), "org-a", "exit", None, 25.0, 2); // c all day, g from 23:00
    // Then every day until today the same five current periods; today until now.
    let today = now.date_naive();
    let today_hours = hours_between(today.and_hms_opt(0, 0, 0).unwrap().and_utc(), now);
    let mut day = date("2025-03-09");
    while day <= today {
        let h = if day == today { today_hours } else { 24.0 };
        put(day, "org-a", "exit", fin, h, 1);
        put(day, "org-a", "exit", None, 2.0 * h, 2);
        put(day, "org-a", "running", w, h, 1);
        put(day, "org-b", "running", w, h, 1);
        put(day, "org-b", "suspended", ina, h, 1);
        day = day.succ_opt().unwrap();
    }

    assert_eq!(got.keys().collect::<Vec<_>>(), want.keys().collect::<Vec<_>>(), "v_status_time_daily groups");
    for (k, w) in &want {
        let g = got[k];
        assert_eq!(g.1, w.1, "sessions of {k:?}");
        assert!((g.0 - w.0).abs() < 1e-6, "hours of {k:?}: {} vs {}", g.0, w.0);
    }

    // The days add up to the per-session totals.
    let total_daily: f64 =
        sqlx::query_scalar("select sum(hours) from v_status_time_daily").fetch_one(&mut *tx).await.unwrap();
    let total_sessions: f64 =
        sqlx::query_scalar("select sum(hours) from v_session_status_time").fetch_one(&mut *tx).await.unwrap();
    assert!((total_daily - total_sessions).abs() < 1e-6, "{total_daily} vs {total_sessions}");
    let interval: String = sqlx::query_scalar(
        "select time_in_status::text from v_status_time_daily
         where day = '2025-03-08' and org_id = 'org-a' and status = 'exit' and status_detail is null",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(interval, "1 day 01:00:00");
}

// ---------------------------------------------------------------------------------------------------------------
// Pull request lifecycle

#[derive(Debug, PartialEq, sqlx::FromRow)]
struct Lifecycle {
    session_id: String,
    pr_url: String,
    repo: String,
    first_seen_at: Option<DateTime<Utc>>,
    first_open_at: Option<DateTime<Utc>>,
    first_merged_at: Option<DateTime<Utc>>,
    first_closed_at: Option<DateTime<Utc>>,
    current_state: Option<String>,
    is_present: bool,
    last_state: Option<String>,
    gone_at: Option<DateTime<Utc>>,
    states: i64,
    merge_observed: Option<bool>,
    hours_to_merge: Option<f64>,
    days_to_merge: Option<f64>,
}

#[tokio::test]
async fn pull_request_lifecycle_dates_each_state_and_the_time_to_merge() {
    let (_db, store) = warehouse().await;
    let (mut tx, _now) = frozen_now(&store).await;

    let got: Vec<Lifecycle> = sqlx::query_as(
        "select session_id, pr_url, repo, first_seen_at, first_open_at, first_merged_at, first_closed_at,
                current_state, is_present, last_state, gone_at, states, merge_observed, hours_to_merge, days_to_merge
         from v_pull_request_lifecycle order by session_id, pr_url",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let t = |v: &str| Some(ts(v));
    // a PR of session `id` seen from `first_seen`: the fields that differ are set below
    let pr = |id: &str, url: &str, repo: &str, first_seen: &str| Lifecycle {
        session_id: s(id),
        pr_url: s(url),
        repo: s(repo),
        first_seen_at: t(first_seen),
        first_open_at: t(first_seen),
        first_merged_at: None,
        first_closed_at: None,
        current_state: os(Some("open")),
        is_present: true,
        last_state: os(Some("open")),
        gone_at: None,
        states: 1,
        merge_observed: None,
        hours_to_merge: None,
        days_to_merge: None,
    };
    let want = vec![
        // opened, then merged 44 hours after the session started
        Lifecycle {
            first_merged_at: t("2025-03-05T16:00:00Z"),
            current_state: os(Some("merged")),
            last_state: os(Some("merged")),
            states: 2,
            merge_observed: Some(true),
            hours_to_merge: Some(44.0),
            days_to_merge: Some(44.0 / 24.0),
            ..pr("a", PR1, "acme/web", "2025-03-04T02:00:00Z")
        },
        // opened, then closed without merge
        Lifecycle {
            first_closed_at: t("2025-03-04T04:00:00Z"),
            current_state: os(Some("closed")),
            last_state: os(Some("closed")),
            states: 2,
            ..pr("a", PR2, "acme/web", "2025-03-04T02:00:00Z")
        },
        // disappeared from its session while open: its repo parsed from the URL
        Lifecycle {
            current_state: None,
            is_present: false,
            gone_at: t("2025-03-05T12:00:00Z"),
            ..pr("c", PR3, "grp/sub/proj", "2025-03-05T06:00:00Z")
        },
        // already merged when first seen (history starts at the first sync): an upper bound, not observed
        Lifecycle {
            first_open_at: None,
            first_merged_at: t("2025-03-04T00:00:00Z"),
            current_state: os(Some("merged")),
            last_state: os(Some("merged")),
            merge_observed: Some(false),
            hours_to_merge: Some(72.0),
            days_to_merge: Some(3.0),
            ..pr("e", PR9, "acme/api", "2025-03-04T00:00:00Z")
        },
        // open before the session's deletion and after its return; a host whose URLs have no repository
        Lifecycle { states: 2, ..pr("f", PR_BB, "unknown", "2025-03-06T00:00:00Z") },
    ];
    assert_eq!(got, want);
    let interval: String = sqlx::query_scalar(
        "select time_to_merge::text from v_pull_request_lifecycle where pr_url = 'https://github.com/acme/web/pull/1'",
    )
    .fetch_one(&mut *tx)
    .await
    .unwrap();
    assert_eq!(interval, "1 day 20:00:00");
}

#[tokio::test]
async fn pr_url_repo_parses_urls_as_the_loader_does() {
    let (_db, store) = warehouse().await;
    let urls = [
        "https://github.com/acme/widgets/pull/42",
        "https://github.com/acme/widgets/pull/42/files",
        "https://GitHub.com/acme/widgets/pull/42?x=1#y",
        "https://github.example.com//acme/widgets//pull/7",
        "https://github.com/acme/widgets/issues/42",
        "https://github.com/acme/pull",
        "https://gitlab.com/group/sub/project/-/merge_requests/7",
        "https://gitlab.com/group/project/-/merge_requests/7/diffs",
        "https://gitlab.example.org/group/project/-/merge_requests",
        "https://gitlab.com/project/-/merge_requests/7",
        "https://gitlab.com/-/merge_requests/7",
        "https://user@gitlab.com:8443/a/b/-/merge_requests/1",
        "https://bitbucket.org/a/b/pull-requests/3",
        "not a url",
        "",
    ];
    for url in urls {
        let got: Option<String> =
            sqlx::query_scalar("select pr_url_repo($1)").bind(url).fetch_one(store.pool()).await.unwrap();
        assert_eq!(got, devin_etl::sync::normalize::parse_pr_url(url).0, "{url}");
    }
}

// ---------------------------------------------------------------------------------------------------------------
// ACUs burned

#[tokio::test]
async fn acus_are_spread_over_the_days_they_were_burned_and_add_up_to_acus_consumed() {
    let (_db, store) = warehouse().await;
    let (mut tx, _now) = frozen_now(&store).await;

    let rows: Vec<(String, NaiveDate, NaiveDate, f64)> =
        sqlx::query_as("select session_id, day, week, acus from v_session_acus_daily order by session_id, day")
            .fetch_all(&mut *tx)
            .await
            .unwrap();
    let (mon, prev_mon) = (date("2025-03-03"), date("2025-02-24"));
    let want: Vec<(&str, &str, NaiveDate, f64)> = vec![
        // a: 2 over [20:00, 22:00] (creation to first sync), +3 over [22:00, 02:00], +0, +5 over 36 hours from
        // 03-04 04:00 (20 h that day, 16 h the next)
        ("a", "2025-03-03", mon, 2.0 + 1.5),
        ("a", "2025-03-04", mon, 1.5 + 5.0 * 20.0 / 36.0),
        ("a", "2025-03-05", mon, 5.0 * 16.0 / 36.0),
        // b: its only version, 4 over [23:00, 01:00]
        ("b", "2025-03-04", mon, 2.0),
        ("b", "2025-03-05", mon, 2.0),
        // c: 8 over [00:00, 06:00], +0, then −2 over [03-05 12:00, 03-06 12:00]
        ("c", "2025-03-05", mon, 8.0 - 1.0),
        ("c", "2025-03-06", mon, -1.0),
        // e: the first kept version's 7 over [03-01, 03-04 00:00] (nothing on 03-04 from it), +2 over [06:00, 07:00]
        ("e", "2025-03-01", prev_mon, 7.0 / 3.0),
        ("e", "2025-03-02", prev_mon, 7.0 / 3.0),
        ("e", "2025-03-03", mon, 7.0 / 3.0),
        ("e", "2025-03-04", mon, 2.0),
        // f: 1 at creation (empty interval), +2 over 34 hours across its deleted day
        ("f", "2025-03-06", mon, 1.0 + 2.0 * 24.0 / 34.0),
        ("f", "2025-03-07", mon, 2.0 * 10.0 / 34.0),
        // g: created after its first version's valid_from: all on that version's day
        ("g", "2025-03-08", mon, 0.5),
    ];
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for (g, w) in rows.iter().zip(&want) {
        assert_eq!((g.0.as_str(), g.1, g.2), (w.0, date(w.1), w.2), "{rows:?}");
        assert_close(g.3, w.3, &format!("{} on {}", w.0, w.1));
    }

    // Every live session's days add up to its acus_consumed.
    let sums: Vec<(String, f64, f64)> = sqlx::query_as(
        "select s.session_id, s.acus_consumed, sum(d.acus) from sessions s
         join v_session_acus_daily d on d.session_id = s.session_id group by 1, 2 order by 1",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    assert_eq!(sums.iter().map(|r| r.0.as_str()).collect::<Vec<_>>(), ["a", "b", "c", "e", "f", "g"]);
    for (id, consumed, burned) in &sums {
        assert_close(*burned, *consumed, id);
    }

    // Per day × org × user × category.
    type Daily = (NaiveDate, NaiveDate, String, Option<String>, Option<String>, String, f64, i64);
    let rows: Vec<Daily> = sqlx::query_as(
        "select day, week, org_id, user_id, started_by, category, acus, sessions from v_acus_burned_daily
         order by day, org_id, started_by, category",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let daily = |day: &str, org: &str, user: Option<&str>, by: &str, category: &str, acus: f64| {
        let d = date(day);
        let week = if d < mon { prev_mon } else { mon };
        (d, week, s(org), os(user), Some(s(by)), s(category), acus, 1)
    };
    let (u1, u2, u3) = (Some("u1"), Some("u2"), Some("u3"));
    let want: Vec<Daily> = vec![
        daily("2025-03-01", "org-b", u3, "u3", "bug_fixing", 7.0 / 3.0),
        daily("2025-03-02", "org-b", u3, "u3", "bug_fixing", 7.0 / 3.0),
        daily("2025-03-03", "org-a", u1, "u1", "bug_fixing", 3.5),
        daily("2025-03-03", "org-b", u3, "u3", "bug_fixing", 7.0 / 3.0),
        daily("2025-03-04", "org-a", u1, "u1", "bug_fixing", 1.5 + 5.0 * 20.0 / 36.0),
        daily("2025-03-04", "org-b", None, "svc1", "uncategorized", 2.0),
        daily("2025-03-04", "org-b", u3, "u3", "bug_fixing", 2.0),
        daily("2025-03-05", "org-a", u1, "u1", "bug_fixing", 5.0 * 16.0 / 36.0),
        daily("2025-03-05", "org-a", u2, "u2", "feature_development", 7.0),
        daily("2025-03-05", "org-b", None, "svc1", "uncategorized", 2.0),
        daily("2025-03-06", "org-a", u1, "u1", "bug_fixing", 1.0 + 2.0 * 24.0 / 34.0),
        daily("2025-03-06", "org-a", u2, "u2", "feature_development", -1.0),
        daily("2025-03-07", "org-a", u1, "u1", "bug_fixing", 2.0 * 10.0 / 34.0),
        daily("2025-03-08", "org-a", u1, "u1", "bug_fixing", 0.5),
    ];
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for (g, w) in rows.iter().zip(&want) {
        assert_eq!((&g.0, &g.1, &g.2, &g.3, &g.4, &g.5, g.7), (&w.0, &w.1, &w.2, &w.3, &w.4, &w.5, w.7));
        assert_close(g.6, w.6, &format!("{w:?}"));
    }

    // Per ISO week: sessions counted once per week.
    type Weekly = (NaiveDate, String, Option<String>, String, f64, i64);
    let rows: Vec<Weekly> = sqlx::query_as(
        "select week, org_id, started_by, category, acus, sessions from v_acus_burned_weekly
         order by week, org_id, started_by, category",
    )
    .fetch_all(&mut *tx)
    .await
    .unwrap();
    let want: Vec<Weekly> = vec![
        (prev_mon, s("org-b"), os(u3), s("bug_fixing"), 14.0 / 3.0, 1),
        (mon, s("org-a"), os(u1), s("bug_fixing"), 10.0 + 3.0 + 0.5, 3),
        (mon, s("org-a"), os(u2), s("feature_development"), 6.0, 1),
        (mon, s("org-b"), Some(s("svc1")), s("uncategorized"), 4.0, 1),
        (mon, s("org-b"), os(u3), s("bug_fixing"), 7.0 / 3.0 + 2.0, 1),
    ];
    assert_eq!(rows.len(), want.len(), "{rows:?}");
    for (g, w) in rows.iter().zip(&want) {
        assert_eq!((&g.0, &g.1, &g.2, &g.3, g.5), (&w.0, &w.1, &w.2, &w.3, w.5));
        assert_close(g.4, w.4, &format!("{w:?}"));
    }
}

// ---------------------------------------------------------------------------------------------------------------
// Deleted sessions

#[tokio::test]
async fn soft_deleted_sessions_are_in_no_history_view_and_a_revived_one_is() {
    let (_db, store) = warehouse().await;
    let pool = store.pool();
    for view in
        ["v_session_status_periods", "v_session_status_time", "v_pull_request_lifecycle", "v_session_acus_daily"]
    {
        let ids: Vec<String> = sqlx::query_scalar(&format!("select distinct session_id from {view} order by 1"))
            .fetch_all(pool)
            .await
            .unwrap();
        assert!(!ids.contains(&s("d")), "{view} shows the deleted session");
        assert!(ids.contains(&s("f")), "{view} leaves out the revived session");
    }
    // d ran on 03-04 and 03-05 (org-a, running/working, 50 ACUs): nothing of it in the day views
    let hours: f64 = sqlx::query_scalar(
        "select sum(hours) from v_status_time_daily where day = '2025-03-04' and org_id = 'org-a' and status_detail = 'working'",
    )
    .fetch_one(pool)
    .await
    .unwrap();
    assert_close(hours, 4.0, "org-a working on 03-04");
    let acus: f64 = sqlx::query_scalar("select sum(acus) from v_acus_burned_weekly").fetch_one(pool).await.unwrap();
    assert_close(acus, 10.0 + 4.0 + 6.0 + 9.0 + 3.0 + 0.5, "all ACUs burned");

    // Once it comes back, it counts again.
    sqlx::query("update sessions set deleted_at = null where session_id = 'd'").execute(pool).await.unwrap();
    let acus: f64 = sqlx::query_scalar("select sum(acus) from v_session_acus_daily where session_id = 'd'")
        .fetch_one(pool)
        .await
        .unwrap();
    assert_close(acus, 50.0, "d's ACUs");
}

// ---------------------------------------------------------------------------------------------------------------
// Shipped queries on a known history

const HISTORY_VIEWS: &[&str] = &[
    "v_session_status_periods",
    "v_session_status_time",
    "v_status_time_daily",
    "v_pull_request_lifecycle",
    "v_session_acus_daily",
    "v_acus_burned_daily",
    "v_acus_burned_weekly",
];

#[tokio::test]
async fn the_history_queries_of_the_docs_and_the_dashboard_return_rows_on_a_known_recent_history() {
    let db = TestDb::create().await;
    let settings = common::test_settings(&db.url, "http://127.0.0.1:9", "cog_unused");
    let store = Store::connect(&settings.database, 4).await.unwrap();
    store.migrate().await.unwrap();
    let pool = store.pool();
    // The dataset moved so that 2025-03-03 is nine days ago: every "last N days" query sees it.
    let shift = (Utc::now().date_naive() - chrono::Days::new(9) - date("2025-03-03")).num_days();
    insert(pool, i32::try_from(shift).unwrap()).await;
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));

    let docs = std::fs::read_to_string(root.join("docs/queries.md")).unwrap();
    let history = &docs[docs.find("\n## 6. History").expect("docs/queries.md has a History section")..];
    let blocks = sql_blocks(history);
    assert!(blocks.len() >= 5, "the History section has {} sql blocks", blocks.len());
    for block in &blocks {
        let sql = with_session_id(&block.sql, "a");
        assert!(HISTORY_VIEWS.iter().any(|v| sql.contains(v)), "a History query reads no history view:\n{sql}");
        let rows =
            sqlx::raw_sql(&sql).fetch_all(pool).await.unwrap_or_else(|e| panic!("docs query failed: {e}\n{sql}"));
        assert!(!rows.is_empty(), "docs query returns nothing on a known history:\n{sql}");
    }

    let dashboard: Value =
        serde_json::from_str(&std::fs::read_to_string(root.join("deploy/grafana/dashboards/devin-etl.json")).unwrap())
            .unwrap();
    let panels: Vec<_> =
        dashboard_queries(&dashboard).into_iter().filter(|q| HISTORY_VIEWS.iter().any(|v| q.sql.contains(v))).collect();
    assert!(panels.len() >= 4, "only {} dashboard panels read the history views", panels.len());
    for ShippedQuery { name: title, sql: raw, .. } in panels {
        let sql =
            expand_grafana(&raw, "'2000-01-01T00:00:00Z'", "'2100-01-01T00:00:00Z'", &[("org", "'org-a','org-b'")])
                .unwrap();
        let rows =
            sqlx::query(&sql).fetch_all(pool).await.unwrap_or_else(|e| panic!("panel {title:?} failed: {e}\n{sql}"));
        assert!(!rows.is_empty(), "panel {title:?} shows nothing on a known history\n{sql}");
        // a one-row aggregate (a stat) must have a value, not a null
        if rows.len() == 1 {
            let first: Option<f64> = sqlx::Row::try_get(&rows[0], 0).unwrap_or(Some(0.0));
            assert!(first.is_some(), "panel {title:?} shows null on a known history\n{sql}");
        }
    }
}
