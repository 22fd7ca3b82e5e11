//! Issue 12, items 1–3: the session and pull request history the loader writes. The simulator goes through a known
//! sequence of changes between syncs (status transitions, ACU growth, a PR opened then merged, a PR that
//! disappears, late analysis, a delete and a revival) and the history tables must hold exactly the versions
//! observed — no more when nothing changed.

use crate::common;

use std::collections::BTreeMap;

use common::TestApp;
use devin_etl::api::models::{Analysis, PullRequest, SessionInsights};
use devin_etl::sync::Mode;
use devin_sim::{Fault, SimulatorConfig};
use sqlx::PgPool;

/// One `session_history` row; times as Unix seconds (fractions when the database's clock set them).
#[derive(Debug, Clone, PartialEq)]
struct Version {
    valid_from: f64,
    valid_to: Option<f64>,
    status: String,
    status_detail: Option<String>,
    acus_consumed: f64,
    category: Option<String>,
    has_analysis: bool,
    is_archived: bool,
}

impl Version {
    fn of(s: &SessionInsights, valid_from: f64, valid_to: Option<f64>) -> Version {
        Version {
            valid_from,
            valid_to,
            status: s.status.clone(),
            status_detail: s.status_detail.clone(),
            acus_consumed: s.acus_consumed,
            category: s.category.clone(),
            has_analysis: s.analysis.is_some(),
            is_archived: s.is_archived,
        }
    }
}

/// One `session_pull_request_history` row: (pr_url, valid_from, valid_to, pr_state).
type PrVersion = (String, f64, Option<f64>, Option<String>);

type PrRow = (String, String, f64, Option<f64>, Option<String>);

type VersionRow = (String, f64, Option<f64>, String, Option<String>, f64, Option<String>, bool, bool);

async fn history(pool: &PgPool) -> BTreeMap<String, Vec<Version>> {
    let rows: Vec<VersionRow> = sqlx::query_as(
        "select session_id, extract(epoch from valid_from)::float8, extract(epoch from valid_to)::float8, status,
                status_detail, acus_consumed, category, has_analysis, is_archived
         from session_history order by session_id, valid_from",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out: BTreeMap<String, Vec<Version>> = BTreeMap::new();
    for (id, valid_from, valid_to, status, status_detail, acus_consumed, category, has_analysis, is_archived) in rows {
        out.entry(id).or_default().push(Version {
            valid_from,
            valid_to,
            status,
            status_detail,
            acus_consumed,
            category,
            has_analysis,
            is_archived,
        });
    }
    out
}

async fn pr_history(pool: &PgPool) -> BTreeMap<String, Vec<PrVersion>> {
    let rows: Vec<PrRow> = sqlx::query_as(
        "select session_id, pr_url, extract(epoch from valid_from)::float8, extract(epoch from valid_to)::float8,
                pr_state
         from session_pull_request_history order by session_id, pr_url, valid_from",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    let mut out: BTreeMap<String, Vec<PrVersion>> = BTreeMap::new();
    for (id, url, from, to, state) in rows {
        out.entry(id).or_default().push((url, from, to, state));
    }
    out
}

async fn deleted_at(pool: &PgPool, id: &str) -> f64 {
    sqlx::query_scalar("select extract(epoch from deleted_at)::float8 from sessions where session_id = $1")
        .bind(id)
        .fetch_one(pool)
        .await
        .unwrap()
}

fn pr(url: &str, state: &str) -> PullRequest {
    PullRequest { pr_url: url.to_owned(), pr_state: Some(state.to_owned()) }
}

fn donor_analysis(app: &TestApp) -> Analysis {
    app.sim.sessions().into_iter().find_map(|s| s.analysis).expect("a session with analysis")
}

/// The invariants every history must keep, whatever happened: one current row per live session (none for a
/// deleted one) equal to the session's tracked columns, and rows of a session that follow each other without
/// overlap (the tests check that they meet exactly where no deletion came between).
async fn assert_history_consistent(pool: &PgPool) {
    let violations: Vec<(String, String)> = sqlx::query_as(
        "select session_id, 'live session without exactly one current row equal to it' from sessions s
         where s.deleted_at is null and 1 <> (
             select count(*) from session_history h
             where h.session_id = s.session_id and h.valid_to is null
               and (h.status, h.status_detail, h.acus_consumed, h.category, h.has_analysis, h.is_archived)
                   is not distinct from (s.status, s.status_detail, s.acus_consumed, s.category, s.has_analysis,
                                         s.is_archived))
         union all
         select session_id, 'deleted session with a current row' from sessions s
         where s.deleted_at is not null
           and exists (select 1 from session_history h where h.session_id = s.session_id and h.valid_to is null)
         union all
         select session_id, 'rows that overlap' from (
             select session_id, valid_to, lead(valid_from) over (partition by session_id order by valid_from) as next
             from session_history) r
         where r.next is not null and (r.valid_to is null or r.valid_to > r.next)
         union all
         select session_id, 'a current PR row that differs from session_pull_requests' from (
             select session_id, pr_url, pr_state from session_pull_request_history where valid_to is null
             except
             select p.session_id, p.pr_url, p.pr_state from session_pull_requests p
             join sessions s using (session_id) where s.deleted_at is null) d
         union all
         select session_id, 'a PR of a live session without its current row' from (
             select p.session_id, p.pr_url, p.pr_state from session_pull_requests p
             join sessions s using (session_id) where s.deleted_at is null
             except
             select session_id, pr_url, pr_state from session_pull_request_history where valid_to is null) d",
    )
    .fetch_all(pool)
    .await
    .unwrap();
    assert!(violations.is_empty(), "history invariants broken: {violations:?}");
}

/// A manual simulator clock an hour behind the real one (the database's), 20 sessions created in the last three
/// days (all within the enrichment window), small pages; `clock_tolerance` as given (the shared test settings
/// switch the watermark's clock guard off, since the manual clock jumps).
async fn app(clock_tolerance: Option<std::time::Duration>) -> TestApp {
    let start = chrono::Utc::now().timestamp() - 3_600;
    TestApp::spawn_with(
        SimulatorConfig {
            sessions: 20,
            manual_clock: true,
            start_time: Some(start),
            history_days: 3,
            ..SimulatorConfig::default()
        },
        |s| {
            s.api.page_size = 7;
            if let Some(tolerance) = clock_tolerance {
                s.sync.clock_tolerance = tolerance;
            }
        },
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn history_records_exactly_the_versions_observed_between_syncs() {
    let app = app(None).await;
    let pool = app.store().pool().clone();
    let ids: Vec<String> = app.sim.sessions().into_iter().map(|s| s.session_id).collect();
    let (a, b, c, d) = (&ids[0], &ids[1], &ids[2], &ids[3]);
    let analysis = donor_analysis(&app);

    // Known starting states (updated at t0).
    let t0 = app.sim.now();
    app.sim.modify(a, |s| {
        s.status = "running".into();
        s.status_detail = None;
        s.acus_consumed = 1.0;
        s.category = Some("feature_development".into());
        s.is_archived = false;
        s.pull_requests = vec![];
    });
    app.sim.modify(b, |s| {
        s.status = "running".into();
        s.analysis = None;
        s.pull_requests = vec![];
    });
    app.sim.modify(c, |s| s.pull_requests = vec![pr("https://github.com/acme/app/pull/3", "open")]);
    app.sim.modify(d, |s| {
        s.pull_requests =
            vec![pr("https://github.com/acme/app/pull/1", "open"), pr("https://github.com/acme/app/pull/2", "open")]
    });

    // 1. The backfill writes one row per session: its current state from its updated_at; one per PR.
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let truth = app.sim.sessions();
    let after_backfill = history(&pool).await;
    let expected: BTreeMap<String, Vec<Version>> =
        truth.iter().map(|s| (s.session_id.clone(), vec![Version::of(s, s.updated_at as f64, None)])).collect();
    assert_eq!(after_backfill, expected, "one row per session after the backfill");
    let prs_after_backfill = pr_history(&pool).await;
    let expected_prs: BTreeMap<String, Vec<PrVersion>> = truth
        .iter()
        .filter(|s| !s.pull_requests.is_empty())
        .map(|s| {
            let mut rows: Vec<PrVersion> = s
                .pull_requests
                .iter()
                .map(|p| (p.pr_url.clone(), s.updated_at as f64, None, p.pr_state.clone()))
                .collect();
            rows.sort_by(|x, y| x.0.cmp(&y.0));
            (s.session_id.clone(), rows)
        })
        .collect();
    assert_eq!(prs_after_backfill, expected_prs, "one row per PR after the backfill");
    assert_history_consistent(&pool).await;

    // 2. Re-reading unchanged sessions adds nothing: a sync (incremental + enrichment) and a reconcile.
    app.sim.advance(30);
    app.syncer.sync(None).await.unwrap();
    app.syncer.run_once(Mode::Reconcile).await.unwrap();
    assert_eq!(history(&pool).await, after_backfill, "no change, no history");
    assert_eq!(pr_history(&pool).await, prs_after_backfill);

    // 3. A status transition with ACU growth; on d, PR 1 merges and PR 2 disappears (no session attribute moves).
    app.sim.advance(30);
    let t1 = app.sim.now();
    app.sim.modify(a, |s| {
        s.status = "suspended".into();
        s.status_detail = Some("waiting_for_user".into());
        s.acus_consumed = 3.0;
    });
    app.sim.modify(d, |s| s.pull_requests = vec![pr("https://github.com/acme/app/pull/1", "merged")]);
    app.syncer.sync(None).await.unwrap();

    // 4. Back to running, more ACUs, a PR opened; 5. the PR merged, the session done.
    app.sim.advance(60);
    let t2 = app.sim.now();
    app.sim.modify(a, |s| {
        s.status = "running".into();
        s.status_detail = None;
        s.acus_consumed = 7.5;
        s.pull_requests = vec![pr("https://github.com/acme/app/pull/9", "open")];
    });
    app.syncer.sync(None).await.unwrap();
    app.sim.advance(60);
    let t3 = app.sim.now();
    app.sim.modify(a, |s| {
        s.status = "exit".into();
        s.acus_consumed = 9.0;
        s.pull_requests = vec![pr("https://github.com/acme/app/pull/9", "merged")];
    });
    app.syncer.sync(None).await.unwrap();

    // 6. Late analysis (no updated_at bump): the version starts when the API's clock says it was observed.
    app.sim.advance(60);
    let t4 = app.sim.now();
    app.sim.modify_keep_updated_at(b, |s| s.analysis = Some(analysis.clone()));
    app.syncer.sync(None).await.unwrap();

    // 7. c is deleted upstream: the reconcile marks it and closes its rows when it does.
    let c_before = app.sim.session(c).unwrap();
    assert!(app.sim.remove(c));
    app.sim.advance(30);
    assert_eq!(app.syncer.run_once(Mode::Reconcile).await.unwrap().deleted, 1);
    let c_deleted = deleted_at(&pool, c).await;

    // 8. ...and comes back later (the API clock now ahead of the deletion), with more ACUs.
    let t5 = chrono::Utc::now().timestamp() + 120;
    app.sim.set_now(t5);
    let mut revived = c_before.clone();
    revived.acus_consumed += 2.0;
    revived.updated_at = t5;
    app.sim.put(revived.clone());
    app.syncer.sync(None).await.unwrap();

    let versions = history(&pool).await;
    let states = |id: &str| app.sim.session(id).unwrap();
    let a_final = states(a);
    let mut a_first = after_backfill[a][0].clone();
    a_first.valid_to = Some(t1 as f64);
    let mut a_v = vec![a_first];
    let at = |status: &str, detail: Option<&str>, acus: f64, from: i64, to: Option<i64>| Version {
        valid_from: from as f64,
        valid_to: to.map(|t| t as f64),
        status: status.into(),
        status_detail: detail.map(Into::into),
        acus_consumed: acus,
        category: a_final.category.clone(),
        has_analysis: a_final.analysis.is_some(),
        is_archived: false,
    };
    a_v.push(at("suspended", Some("waiting_for_user"), 3.0, t1, Some(t2)));
    a_v.push(at("running", None, 7.5, t2, Some(t3)));
    a_v.push(at("exit", None, 9.0, t3, None));
    assert_eq!(versions[a], a_v, "a: status transitions and ACU growth, each from its updated_at");
    assert_eq!(after_backfill[a][0].valid_from, t0 as f64);

    let b_final = states(b);
    let mut b_first = after_backfill[b][0].clone();
    b_first.valid_to = Some(t4 as f64);
    assert_eq!(
        versions[b],
        vec![b_first, Version::of(&b_final, t4 as f64, None)],
        "b: late analysis starts at the server time it was observed, not at its unchanged updated_at ({})",
        b_final.updated_at
    );
    assert!(b_final.updated_at < t4);

    let mut c_first = after_backfill[c][0].clone();
    c_first.valid_to = Some(c_deleted);
    assert_eq!(versions[c], vec![c_first, Version::of(&revived, t5 as f64, None)], "c: closed by the delete, reopened");
    assert!(c_deleted < t5 as f64, "the deleted period shows as a gap");
    assert_eq!(versions[d], after_backfill[d], "d: PR changes alone add no session version");

    let prs = pr_history(&pool).await;
    let url = |n: u32| format!("https://github.com/acme/app/pull/{n}");
    let c_pr_from = c_before.updated_at as f64;
    assert_eq!(
        prs[a],
        vec![
            (url(9), t2 as f64, Some(t3 as f64), Some("open".into())),
            (url(9), t3 as f64, None, Some("merged".into())),
        ],
        "a: a PR opened, then merged"
    );
    assert_eq!(
        prs[c],
        vec![(url(3), c_pr_from, Some(c_deleted), Some("open".into())), (url(3), t5 as f64, None, Some("open".into())),],
        "c: its PR closed with the session's deletion and reopened with its revival"
    );
    let d_from = truth.iter().find(|s| &s.session_id == d).unwrap().updated_at as f64;
    assert_eq!(
        prs[d],
        vec![
            (url(1), d_from, Some(t1 as f64), Some("open".into())),
            (url(1), t1 as f64, None, Some("merged".into())),
            (url(2), d_from, Some(t1 as f64), Some("open".into())),
        ],
        "d: PR 1 merged, PR 2 disappeared and its row closed"
    );
    assert!(!prs.contains_key(b));

    // Nothing else moved.
    for id in ids.iter().filter(|id| ![a, b, c].contains(id)) {
        assert_eq!(versions[id], after_backfill[id], "{id}");
    }
    assert_history_consistent(&pool).await;

    // The views answer from that history: a's time per status (the current period still open)...
    let status_time: Vec<(String, Option<String>, i64, f64, bool)> = sqlx::query_as(
        "select status, status_detail, periods, hours * 3600, is_current from v_session_status_time
         where session_id = $1 order by first_started_at",
    )
    .bind(a)
    .fetch_all(&pool)
    .await
    .unwrap();
    assert_eq!(status_time.len(), 3, "{status_time:?}");
    let (running, waiting, exit) = (&status_time[0], &status_time[1], &status_time[2]);
    assert_eq!((running.0.as_str(), running.1.as_deref(), running.2, running.4), ("running", None, 2, false));
    assert!((running.3 - ((t1 - t0) + (t3 - t2)) as f64).abs() < 1e-6, "{running:?}");
    assert_eq!((waiting.0.as_str(), waiting.1.as_deref(), waiting.2), ("suspended", Some("waiting_for_user"), 1));
    assert!((waiting.3 - (t2 - t1) as f64).abs() < 1e-6, "{waiting:?}");
    assert_eq!((exit.0.as_str(), exit.2, exit.4), ("exit", 1, true));

    // ...its PR's lifecycle...
    let (open_at, merged_at, hours_to_merge): (f64, f64, f64) = sqlx::query_as(
        "select extract(epoch from first_open_at)::float8, extract(epoch from first_merged_at)::float8,
                hours_to_merge
         from v_pull_request_lifecycle where session_id = $1 and pr_url = $2",
    )
    .bind(a)
    .bind(url(9))
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!((open_at, merged_at), (t2 as f64, t3 as f64));
    assert!((hours_to_merge - (t3 - a_final.created_at) as f64 / 3600.0).abs() < 1e-9);

    // ...and every live session's ACUs spread over its days add up to its acus_consumed, a's increments on the
    // days they were burned.
    let off: Vec<(String, f64, f64)> = sqlx::query_as(
        "select s.session_id, s.acus_consumed, coalesce(sum(d.acus), 0) from sessions s
         left join v_session_acus_daily d using (session_id)
         where s.deleted_at is null group by s.session_id, s.acus_consumed
         having abs(s.acus_consumed - coalesce(sum(d.acus), 0)) > 1e-9",
    )
    .fetch_all(&pool)
    .await
    .unwrap();
    assert!(off.is_empty(), "spread ACUs that do not add up: {off:?}");
    let burned_since_t0: f64 = sqlx::query_scalar(
        "select sum(acus) from v_session_acus_daily where session_id = $1 and day >= (to_timestamp($2) at time zone 'UTC')::date",
    )
    .bind(a)
    .bind(t0 as f64)
    .fetch_one(&pool)
    .await
    .unwrap();
    assert!(burned_since_t0 >= 8.0 - 1e-9, "the 8 ACUs burned after the first sync land on or after its day");

    // And re-reading it all once more adds nothing.
    app.sim.advance(60);
    app.syncer.sync(None).await.unwrap();
    app.syncer.run_once(Mode::Reconcile).await.unwrap();
    assert_eq!(history(&pool).await, versions);
    assert_eq!(pr_history(&pool).await, prs);
}

/// A clock that lies cannot date a version in the future: a change observed through a `Date` a year ahead starts
/// at most a few minutes past the database's clock, and the next change still follows it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_clock_far_ahead_cannot_date_a_version_in_the_future() {
    // The watermark's guard on: the year-ahead clock must not carry the watermark past the next change either.
    let app = app(Some(std::time::Duration::from_secs(600))).await;
    let pool = app.store().pool().clone();
    let id = app.sim.sessions()[0].session_id.clone();
    app.sim.modify(&id, |s| s.analysis = None);
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let analysis = donor_analysis(&app);

    app.sim.advance(60);
    app.sim.modify_keep_updated_at(&id, |s| s.analysis = Some(analysis));
    app.sim.inject(0, Fault::SkewedDate(365 * 86_400), 1_000);
    app.syncer.sync(None).await.unwrap();
    app.sim.clear_faults();
    let versions = history(&pool).await;
    let late = versions[&id].last().unwrap();
    assert!(late.has_analysis && late.valid_to.is_none());
    let db_now: f64 = sqlx::query_scalar("select extract(epoch from now())::float8").fetch_one(&pool).await.unwrap();
    assert!(late.valid_from <= db_now + 300.0, "capped: {} vs database time {db_now}", late.valid_from);

    // The next change (its updated_at before the capped time) still starts after it.
    app.sim.advance(60);
    app.sim.modify(&id, |s| s.acus_consumed += 1.0);
    app.syncer.sync(None).await.unwrap();
    let versions = history(&pool).await;
    let rows = &versions[&id];
    assert_eq!(rows.len(), 3);
    assert!(rows[2].valid_from > rows[1].valid_from);
    assert_eq!(rows[1].valid_to, Some(rows[2].valid_from));
    assert_history_consistent(&pool).await;
}

/// A warehouse synced by a release without history gets its history started by the migration: one row per live
/// session and PR, as a first sync would have written; deleted sessions get none. Changes then flow as usual, and
/// versions that a release without history wrote after a rollback are caught up by the next reconcile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upgrading_starts_history_from_the_live_sessions_and_a_reconcile_catches_up_after_a_rollback() {
    let app = app(None).await;
    let pool = app.store().pool().clone();
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let gone = app.sim.sessions()[5].session_id.clone();
    assert!(app.sim.remove(&gone));
    app.syncer.run_once(Mode::Reconcile).await.unwrap();

    // Back to the schema of the release before history: its tables (and the views on them) and migrations gone.
    sqlx::raw_sql(
        "drop table session_history, session_pull_request_history cascade;
         drop function pr_url_repo(text);
         delete from _sqlx_migrations where version in (20261201000003, 20261201000004)",
    )
    .execute(&pool)
    .await
    .unwrap();
    app.store().migrate().await.unwrap();

    let truth = app.sim.sessions();
    let expected: BTreeMap<String, Vec<Version>> =
        truth.iter().map(|s| (s.session_id.clone(), vec![Version::of(s, s.updated_at as f64, None)])).collect();
    assert_eq!(history(&pool).await, expected, "live sessions only, from their updated_at");
    let prs: usize = truth.iter().map(|s| s.pull_requests.len()).sum();
    assert_eq!(pr_history(&pool).await.values().map(Vec::len).sum::<usize>(), prs);
    assert_history_consistent(&pool).await;

    let id = truth[0].session_id.clone();
    app.sim.advance(60);
    app.sim.modify(&id, |s| s.acus_consumed += 4.0);
    app.syncer.sync(None).await.unwrap();
    let versions = history(&pool).await;
    assert_eq!(versions[&id].len(), 2);
    assert_history_consistent(&pool).await;

    // A rollback: a release without history writes the next change of the session (here: this release's write,
    // then its history version removed again and its row left as that release's merge leaves it: synced_at moved
    // on, the content hash not). The next read of the session by this release — the incremental lookback or, at
    // the latest, the next reconcile — sees the hash left behind, rewrites the session and records the version
    // from its updated_at.
    app.sim.advance(60);
    app.sim.modify(&id, |s| s.acus_consumed += 1.0);
    app.syncer.sync(None).await.unwrap();
    sqlx::raw_sql(&format!(
        "delete from session_history where session_id = '{id}' and valid_to is null;
         update session_history set valid_to = null
         where session_id = '{id}' and valid_from = (select max(valid_from) from session_history where session_id = '{id}');
         update sessions set synced_at = clock_timestamp() where session_id = '{id}'"
    ))
    .execute(&pool)
    .await
    .unwrap();
    assert_eq!(history(&pool).await, versions);
    app.sim.advance(30);
    app.syncer.sync(None).await.unwrap();
    app.syncer.run_once(Mode::Reconcile).await.unwrap();
    let caught_up = history(&pool).await;
    let session = app.sim.session(&id).unwrap();
    assert_eq!(caught_up[&id].len(), 3);
    assert_eq!(caught_up[&id][2], Version::of(&session, session.updated_at as f64, None));
    assert_history_consistent(&pool).await;
    let untrusted: i64 = sqlx::query_scalar(
        "select count(*) from sessions where content_hash is null or content_hash_at is distinct from synced_at",
    )
    .fetch_one(&pool)
    .await
    .unwrap();
    assert_eq!(untrusted, 0, "every session read again holds a hash it can trust");
}
