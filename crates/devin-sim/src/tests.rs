//! Unit tests of the simulator: data generator, HTTP behaviour, switches and faults.

use std::collections::{BTreeSet, HashMap, HashSet};
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};

use super::*;
use devin_api_model::{HttpValidationError, PageEnvelope, SessionInsights, known};

const START: i64 = 1_780_000_000;
const LIST: &str = "/v3/enterprise/sessions/insights";

fn config(n: usize) -> SimulatorConfig {
    SimulatorConfig { sessions: n, start_time: Some(START), manual_clock: true, ..SimulatorConfig::default() }
}

fn sim(n: usize) -> Simulator {
    Simulator::new(config(n))
}

async fn serve(sim: &Simulator) -> RunningSimulator {
    sim.serve(SocketAddr::from(([127, 0, 0, 1], 0))).await.expect("bind")
}

/// A raw HTTP/1.1 response as received.
#[derive(Debug)]
struct Resp {
    /// 0 when the connection closed without a status line.
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
    /// Whether the body has all `Content-Length` bytes.
    complete: bool,
}

impl Resp {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn page(&self) -> (PageEnvelope, Vec<SessionInsights>) {
        assert_eq!(self.status, 200, "body: {}", String::from_utf8_lossy(&self.body));
        let env: PageEnvelope = serde_json::from_slice(&self.body).expect("envelope");
        let items = env.items.iter().map(|i| serde_json::from_str(i.get()).expect("item")).collect();
        (env, items)
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body).expect("json body")
    }
}

/// One request on a fresh connection (`Connection: close`), read to EOF.
async fn raw(addr: SocketAddr, method: &str, target: &str, token: Option<&str>) -> Resp {
    let mut stream = tokio::net::TcpStream::connect(addr).await.expect("connect");
    let auth = token.map(|t| format!("Authorization: Bearer {t}\r\n")).unwrap_or_default();
    let req = format!("{method} {target} HTTP/1.1\r\nHost: {addr}\r\n{auth}Connection: close\r\n\r\n");
    stream.write_all(req.as_bytes()).await.expect("write");
    let mut buf = Vec::new();
    // A dropped connection may surface as a reset: keep whatever arrived.
    let _ = stream.read_to_end(&mut buf).await;
    let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Resp { status: 0, headers: Vec::new(), body: buf, complete: false };
    };
    let head = String::from_utf8(buf[..end].to_vec()).expect("utf8 head");
    let mut lines = head.split("\r\n");
    let status = lines.next().and_then(|l| l.split(' ').nth(1)).and_then(|s| s.parse().ok()).expect("status");
    let headers: Vec<(String, String)> =
        lines.filter_map(|l| l.split_once(':')).map(|(k, v)| (k.trim().to_owned(), v.trim().to_owned())).collect();
    let body = buf[end + 4..].to_vec();
    let len: usize =
        headers.iter().find(|(k, _)| k == "content-length").and_then(|(_, v)| v.parse().ok()).expect("len");
    Resp { status, headers, complete: body.len() == len, body }
}

async fn get(addr: SocketAddr, target: &str) -> Resp {
    raw(addr, "GET", target, Some(DEFAULT_TOKEN)).await
}

/// Walks every page with `first`, returning the items in served order.
async fn walk(addr: SocketAddr, first: usize, extra: &str) -> Vec<SessionInsights> {
    let mut out = Vec::new();
    let mut after: Option<String> = None;
    for _ in 0..100_000 {
        let mut target = format!("{LIST}?first={first}{extra}");
        if let Some(a) = &after {
            target.push_str(&format!("&after={a}"));
        }
        let (env, items) = get(addr, &target).await.page();
        assert!(items.len() <= first);
        out.extend(items);
        if !env.has_next_page {
            assert!(env.end_cursor.is_none());
            return out;
        }
        after = Some(env.end_cursor.expect("cursor"));
    }
    panic!("walk did not end");
}

fn api_order(mut v: Vec<SessionInsights>) -> Vec<SessionInsights> {
    v.sort_by(|a, b| (b.created_at, &b.session_id).cmp(&(a.created_at, &a.session_id)));
    v
}

fn ids(v: &[SessionInsights]) -> Vec<String> {
    v.iter().map(|s| s.session_id.clone()).collect()
}

// ----------------------------------------------------------------------------------------------------
// Data

#[test]
fn same_seed_same_data_other_seed_other_data() {
    let a = sim(300).sessions();
    let b = sim(300).sessions();
    assert_eq!(a, b);
    let c = Simulator::new(SimulatorConfig { seed: 7, ..config(300) }).sessions();
    assert_ne!(a, c);
    // Scripted changes replay identically too.
    let (x, y) = (sim(300), sim(300));
    assert_eq!(x.update_some(10), y.update_some(10));
    assert_eq!(x.create(5), y.create(5));
    assert_eq!(x.sessions(), y.sessions());
}

#[test]
fn every_enum_value_and_shape_is_covered_at_500() {
    let all = sim(500).sessions();
    assert_eq!(all.len(), 500);
    let set =
        |f: &dyn Fn(&SessionInsights) -> Option<String>| -> HashSet<String> { all.iter().filter_map(f).collect() };
    let has_all = |seen: &HashSet<String>, wanted: &[&str], what: &str| {
        for w in wanted {
            assert!(seen.contains(*w), "{what}: {w} missing");
        }
    };
    has_all(&set(&|s| Some(s.status.clone())), known::STATUS, "status");
    has_all(&set(&|s| s.status_detail.clone()), known::STATUS_DETAIL, "status_detail");
    has_all(&set(&|s| s.origin.clone()), known::ORIGIN, "origin");
    has_all(&set(&|s| s.category.clone()), known::CATEGORY, "category");
    has_all(&set(&|s| Some(s.session_size.clone())), known::SESSION_SIZE, "session_size");
    let types: HashSet<String> = all
        .iter()
        .filter_map(|s| s.analysis.as_ref())
        .flat_map(|a| a.action_items.iter().map(|i| i.kind.clone()))
        .collect();
    has_all(&types, known::ACTION_ITEM_TYPE, "action item type");

    let count = |f: &dyn Fn(&SessionInsights) -> bool| all.iter().filter(|s| f(s)).count();
    assert!(count(&|s| s.status_detail.is_none()) > 0);
    assert!(count(&|s| s.origin.is_none()) > 0);
    assert!(count(&|s| s.category.is_none()) > 0);
    assert!(count(&|s| s.title.is_none()) > 0);
    assert!(count(&|s| s.analysis.is_none()) > 50, "analysis None ~30%");
    assert!(count(&|s| s.analysis.as_ref().is_some_and(|a| *a == Default::default())) > 0);
    assert!(count(&|s| s.analysis.as_ref().is_some_and(|a| a.classification.is_none())) > 0);
    assert!(count(&|s| s.analysis.as_ref().is_some_and(|a| a.note_usage.is_none())) > 0);
    assert!(count(&|s| s.analysis.as_ref().is_some_and(|a| a.suggested_prompt.is_none())) > 0);
    assert!(count(&|s| s.child_session_ids.is_none()) > 0);
    assert!(count(&|s| s.child_session_ids.as_ref().is_some_and(Vec::is_empty)) > 0);
    assert!(count(&|s| s.child_session_ids.as_ref().is_some_and(|c| !c.is_empty())) > 0);
    assert!(count(&|s| s.parent_session_id.is_some()) > 0);
    assert!(count(&|s| s.tags.is_empty()) > 0);
    assert!(count(&|s| s.structured_output.is_some()) > 0);
    assert!(count(&|s| s.structured_output.is_none()) > 0);
    assert!(count(&|s| s.user_id.is_none() && s.service_user_id.is_some()) > 0);
    assert!(count(&|s| s.is_archived) > 0);
    assert!(count(&|s| s.playbook_id.is_some()) > 0);
    assert!(set(&|s| Some(s.org_id.clone())).len() > 1);
    assert!(set(&|s| s.user_id.clone()).len() > 5);

    let prs: Vec<&devin_api_model::PullRequest> = all.iter().flat_map(|s| &s.pull_requests).collect();
    assert!(prs.iter().any(|p| p.pr_url.starts_with("https://github.com/") && p.pr_url.contains("/pull/")));
    assert!(prs.iter().any(|p| p.pr_url.starts_with("https://gitlab.com/") && p.pr_url.contains("/-/merge_requests/")));
    assert!(prs.iter().any(|p| !p.pr_url.contains("github.com") && !p.pr_url.contains("gitlab.com")));
    for state in [Some("open"), Some("merged"), Some("closed"), None] {
        assert!(prs.iter().any(|p| p.pr_state.as_deref() == state), "{state:?}");
    }

    // Awkward text, long strings, no NUL.
    let text = serde_json::to_string(&all).expect("json");
    for needle in ["\\t", "\\n", "\\r", "\\\\", "\\\"", ",", "{", "}", "日本語", "🚀", "e\u{301}", "\\\\N", "NULL"]
    {
        assert!(text.contains(needle), "missing {needle:?}");
    }
    assert!(!text.contains('\0') && !text.contains("\\u0000"));
    assert!(count(&|s| s.title.as_ref().is_some_and(|t| t.chars().count() >= 5000)) > 0);
    assert!(count(&|s| s.tags.iter().any(|t| t.chars().count() >= 5000)) > 0);
    let long_message = |s: &SessionInsights| {
        s.analysis
            .as_ref()
            .and_then(|a| a.note_usage.as_ref())
            .is_some_and(|n| n.good_usages.iter().chain(&n.bad_usages).any(|u| u.message.chars().count() >= 5000))
    };
    assert!(count(&long_message) > 0);

    // Invariants.
    let mut updated: HashMap<i64, usize> = HashMap::new();
    for s in &all {
        assert!(s.session_id.starts_with("devin-") && s.session_id.len() == 38, "{}", s.session_id);
        assert_eq!(s.url, format!("https://app.devin.ai/sessions/{}", &s.session_id[6..]));
        assert!(s.updated_at >= s.created_at);
        assert!(s.created_at >= START - 730 * 86_400 && s.created_at <= START - 3600);
        assert!(s.updated_at < START);
        let urls: HashSet<&String> = s.pull_requests.iter().map(|p| &p.pr_url).collect();
        assert_eq!(urls.len(), s.pull_requests.len(), "duplicate pr_url");
        let tags: HashSet<&String> = s.tags.iter().collect();
        assert_eq!(tags.len(), s.tags.len(), "duplicate tag");
        if let Some(c) = &s.child_session_ids {
            assert_eq!(c.iter().collect::<HashSet<_>>().len(), c.len(), "duplicate child");
        }
        *updated.entry(s.updated_at).or_default() += 1;
    }
    assert!(updated.values().any(|n| *n >= 30), "many sessions share one updated_at second");
}

#[test]
fn served_json_decodes_to_the_truth() {
    let s = sim(600);
    let store = read(&s.inner.store);
    let mut omitted = 0;
    for e in store.by_key.values() {
        let back: SessionInsights = serde_json::from_slice(&e.json).expect("decode");
        assert_eq!(back, e.session);
        let v: serde_json::Value = serde_json::from_slice(&e.json).expect("value");
        if v.get("is_archived").is_none() {
            omitted += 1;
            assert!(data::omits_defaults(&e.session.session_id));
        } else {
            assert!(v.get("origin").is_some() && v.get("analysis").is_some() && v.get("title").is_some());
        }
    }
    assert!(omitted > 20 && omitted < 120, "{omitted}");
}

/// Size per session (run with `--nocapture` to see it).
#[test]
fn size_per_session_is_like_the_real_api() {
    let s = sim(2000);
    let store = read(&s.inner.store);
    let bytes: usize = store.by_key.values().map(|e| e.json.len()).sum();
    let rows: usize = store.by_key.values().map(|e| child_rows(&e.session)).sum();
    let n = store.by_key.len();
    println!("avg json bytes {} avg child rows {:.2}", bytes / n, rows as f64 / n as f64);
    assert!((2500..5000).contains(&(bytes / n)), "{}", bytes / n);
    assert!((10.0..16.0).contains(&(rows as f64 / n as f64)));
}

fn child_rows(s: &SessionInsights) -> usize {
    let analysis = s.analysis.as_ref().map_or(0, |a| {
        a.issues.len()
            + a.action_items.len()
            + a.timeline.len()
            + a.note_usage.as_ref().map_or(0, |n| n.good_usages.len() + n.bad_usages.len())
            + a.suggested_prompt.as_ref().map_or(0, |p| p.feedback_items.len())
    });
    s.pull_requests.len() + s.tags.len() + s.child_session_ids.as_ref().map_or(0, Vec::len) + analysis
}

// ----------------------------------------------------------------------------------------------------
// Data changes and clock

#[test]
fn clock_manual_and_real() {
    let s = sim(10);
    assert_eq!(s.now(), START);
    s.advance(60);
    assert_eq!(s.now(), START + 60);
    s.set_now(5);
    assert_eq!(s.now(), 5);

    let r = Simulator::new(SimulatorConfig { sessions: 10, start_time: Some(1000), ..SimulatorConfig::default() });
    assert!((r.now() - 1000).abs() <= 1);
    r.advance(100);
    assert!((r.now() - 1100).abs() <= 1);
    let live = Simulator::new(SimulatorConfig { sessions: 10, ..SimulatorConfig::default() });
    assert!((live.now() - real_now()).abs() <= 1);
}

#[test]
fn late_analysis_and_category_arrive_later_without_bumping_updated_at() {
    let s = sim(20);
    s.set_now(START + 100);
    let ids = s.create_late(400);
    let created: Vec<SessionInsights> = ids.iter().map(|id| s.session(id).expect("created")).collect();
    assert!(created.iter().all(|x| x.analysis.is_none() && x.category.is_none() && x.updated_at == START + 100));
    let pending = s.late_pending();
    assert!(pending > 400, "most sessions get analysis or category later: {pending}");
    let have = |s: &Simulator| {
        let now: Vec<SessionInsights> = ids.iter().map(|id| s.session(id).expect("kept")).collect();
        let analysis = now.iter().filter(|x| x.analysis.is_some()).count();
        let category = now.iter().filter(|x| x.category.is_some()).count();
        assert!(now.iter().all(|x| x.updated_at == START + 100), "late data does not bump updated_at");
        (analysis, category)
    };
    s.advance(2 * 3_600);
    let (analysis_2h, category_2h) = have(&s);
    s.advance(5 * 86_400);
    let (analysis, category) = have(&s);
    assert_eq!(s.late_pending(), 0, "everything has arrived after 5 days");
    // About 70% and 85% get them at all; most of those within two hours.
    assert!((240..=320).contains(&analysis) && (300..=380).contains(&category), "{analysis} {category}");
    assert!(analysis_2h * 100 >= analysis * 75 && category_2h * 100 >= category * 70, "{analysis_2h} {category_2h}");
    assert!(analysis_2h < analysis && category_2h < category, "some arrive days later");
}

#[test]
fn modify_put_remove_create_update() {
    let s = sim(100);
    let id = s.sessions()[0].session_id.clone();
    s.set_now(START + 500);
    assert!(s.modify(&id, |x| x.title = Some("changed".into())));
    let m = s.session(&id).expect("present");
    assert_eq!((m.title.as_deref(), m.updated_at), (Some("changed"), START + 500));

    s.set_now(START + 900);
    assert!(s.modify_keep_updated_at(&id, |x| x.analysis = None));
    let m = s.session(&id).expect("present");
    assert_eq!((m.analysis.is_none(), m.updated_at), (true, START + 500));
    assert!(!s.modify("devin-nope", |_| {}));

    let mut p = m.clone();
    p.session_id = "devin-put".into();
    p.created_at = 1;
    p.updated_at = 2;
    s.put(p.clone());
    assert_eq!(s.session("devin-put"), Some(p));
    assert_eq!(s.len(), 101);
    assert!(s.remove("devin-put"));
    assert!(!s.remove("devin-put"));
    assert_eq!(s.len(), 100);

    let new = s.create(5);
    assert_eq!(new.len(), 5);
    assert_eq!(s.len(), 105);
    for id in &new {
        let n = s.session(id).expect("created");
        assert_eq!((n.created_at, n.updated_at), (START + 900, START + 900));
    }

    let before: HashMap<String, SessionInsights> =
        s.sessions().into_iter().map(|x| (x.session_id.clone(), x)).collect();
    s.set_now(START + 1000);
    let changed = s.update_some(20);
    assert_eq!(changed.iter().collect::<HashSet<_>>().len(), 20);
    for id in &changed {
        let (old, new) = (&before[id], s.session(id).expect("updated"));
        assert_eq!(new.updated_at, START + 1000);
        assert_ne!(old.title, new.title);
        assert_ne!(old.status, new.status);
        assert_ne!(old.acus_consumed, new.acus_consumed);
        assert!(new.num_user_messages > old.num_user_messages);
        assert_ne!(old.pull_requests, new.pull_requests);
        assert_ne!(old.tags, new.tags);
        assert_ne!(old.analysis, new.analysis);
        if !old.pull_requests.is_empty() {
            let old_urls: HashSet<_> = old.pull_requests.iter().map(|p| &p.pr_url).collect();
            assert!(
                new.pull_requests.iter().all(|p| old_urls.contains(&p.pr_url))
                    || new.pull_requests.len() == old.pull_requests.len()
            );
            assert!(
                old.pull_requests.iter().any(|p| !new.pull_requests.iter().any(|q| q.pr_url == p.pr_url)),
                "a PR removed"
            );
        }
        let json = data::to_json(&new);
        assert_eq!(serde_json::from_slice::<SessionInsights>(&json).expect("decode"), new);
    }
    // Everything else untouched.
    let unchanged = s.sessions().into_iter().filter(|x| !changed.contains(&x.session_id)).count();
    assert_eq!(unchanged, 105 - 20);
    assert_eq!(s.update_some(1000).len(), 105);
}

// ----------------------------------------------------------------------------------------------------
// HTTP

#[tokio::test]
async fn walks_every_session_once_with_7_and_200() {
    let s = sim(500);
    let srv = serve(&s).await;
    let truth = api_order(s.sessions());
    for first in [7, 200] {
        let got = walk(srv.addr, first, "").await;
        assert_eq!(ids(&got), ids(&truth), "first={first}");
        assert_eq!(got, truth);
    }
    let (env, items) = get(srv.addr, LIST).await.page();
    assert_eq!((items.len(), env.total, env.has_next_page), (100, Some(500), true));
    srv.shutdown().await;
}

#[tokio::test]
async fn walk_is_stable_while_data_changes() {
    let s = sim(300);
    let srv = serve(&s).await;
    let before: BTreeSet<String> = s.sessions().into_iter().map(|x| x.session_id).collect();
    let (env, first_page) = get(srv.addr, &format!("{LIST}?first=50")).await.page();
    // New sessions (newest) land before the cursor, and a removed one vanishes: the rest is unaffected.
    s.set_now(START + 10);
    s.create(10);
    let gone = s.sessions().into_iter().map(|x| x.session_id).find(|id| !ids(&first_page).contains(id)).expect("one");
    s.remove(&gone);
    let mut seen: Vec<String> = ids(&first_page);
    let mut after = env.end_cursor;
    while let Some(a) = after {
        let (env, items) = get(srv.addr, &format!("{LIST}?first=50&after={a}")).await.page();
        seen.extend(ids(&items));
        after = env.end_cursor;
    }
    let expected: BTreeSet<String> = before.into_iter().filter(|id| *id != gone).collect();
    assert_eq!(seen.len(), expected.len());
    assert_eq!(seen.into_iter().collect::<BTreeSet<_>>(), expected);
}

#[tokio::test]
async fn filters_return_the_right_sets() {
    let s = sim(400);
    let srv = serve(&s).await;
    let truth = api_order(s.sessions());
    let expect = |f: &dyn Fn(&SessionInsights) -> bool| -> Vec<String> {
        ids(&truth.iter().filter(|x| f(x)).cloned().collect::<Vec<_>>())
    };

    // updated_after is strict, on a second many sessions share.
    let mut counts: HashMap<i64, usize> = HashMap::new();
    truth.iter().for_each(|x| *counts.entry(x.updated_at).or_default() += 1);
    let (&shared, _) = counts.iter().max_by_key(|(_, n)| **n).expect("some");
    let got = walk(srv.addr, 13, &format!("&updated_after={shared}")).await;
    assert_eq!(ids(&got), expect(&|x| x.updated_at > shared));
    let got = walk(srv.addr, 13, &format!("&updated_before={shared}")).await;
    assert_eq!(ids(&got), expect(&|x| x.updated_at < shared));

    let (lo, hi) = (truth[300].created_at, truth[100].created_at);
    let got = walk(srv.addr, 9, &format!("&created_after={lo}&created_before={hi}")).await;
    assert_eq!(ids(&got), expect(&|x| x.created_at > lo && x.created_at < hi));
    let (env, _) = get(srv.addr, &format!("{LIST}?created_after={lo}&created_before={hi}")).await.page();
    assert_eq!(env.total, Some(expect(&|x| x.created_at > lo && x.created_at < hi).len() as i64));
    assert!(walk(srv.addr, 9, &format!("&created_after={hi}&created_before={lo}")).await.is_empty());

    let wanted = [&truth[5], &truth[77], &truth[200]];
    let q: String = wanted.iter().map(|x| format!("&session_ids={}", x.session_id)).collect();
    let got = walk(srv.addr, 2, &format!("{q}&session_ids=devin-unknown")).await;
    assert_eq!(ids(&got), ids(&wanted.iter().map(|x| (*x).clone()).collect::<Vec<_>>()));

    let org = truth[0].org_id.clone();
    let got = walk(srv.addr, 200, &format!("&org_ids={org}&origins=slack&origins=api")).await;
    assert_eq!(ids(&got), expect(&|x| x.org_id == org && matches!(x.origin.as_deref(), Some("slack" | "api"))));
    let got = walk(srv.addr, 200, "&category=bug_fixing&include_deleted_orgs=true&unknown_param=1").await;
    assert_eq!(ids(&got), expect(&|x| x.category.as_deref() == Some("bug_fixing")));
    let got = walk(srv.addr, 200, "&tags=backend&tags=urgent").await;
    assert_eq!(ids(&got), expect(&|x| x.tags.iter().any(|t| t == "backend" || t == "urgent")));
}

#[tokio::test]
async fn auth_is_required() {
    let s = sim(5);
    let srv = serve(&s).await;
    let r = raw(srv.addr, "GET", LIST, None).await;
    assert_eq!(r.status, 401);
    assert!(r.json()["detail"].is_string());
    let r = raw(srv.addr, "GET", LIST, Some("cog_wrong")).await;
    assert_eq!(r.status, 401);
    let custom = Simulator::new(SimulatorConfig { token: "cog_other".into(), ..config(5) });
    let srv2 = serve(&custom).await;
    assert_eq!(raw(srv2.addr, "GET", LIST, Some("cog_other")).await.status, 200);
    assert_eq!(raw(srv2.addr, "GET", LIST, Some(DEFAULT_TOKEN)).await.status, 401);
    assert_eq!(s.requests().len(), 2);
    assert_eq!(get(srv.addr, "/v3/other").await.status, 404);
    assert_eq!(raw(srv.addr, "POST", LIST, Some(DEFAULT_TOKEN)).await.status, 405);
}

#[tokio::test]
async fn invalid_parameters_are_422() {
    let s = sim(5);
    let srv = serve(&s).await;
    for (q, loc, kind) in [
        ("first=0", "first", "greater_than_equal"),
        ("first=201", "first", "less_than_equal"),
        ("first=abc", "first", "int_parsing"),
        ("first=1.5", "first", "int_parsing"),
        ("updated_after=yesterday", "updated_after", "int_parsing"),
        ("created_before=", "created_before", "int_parsing"),
        ("after=zz", "after", "value_error"),
        ("after=abcd", "after", "value_error"),
        ("origins=webapp&origins=pigeon", "origins", "enum"),
        ("category=nope", "category", "enum"),
        ("include_deleted_orgs=maybe", "include_deleted_orgs", "bool_parsing"),
    ] {
        let r = get(srv.addr, &format!("{LIST}?{q}")).await;
        assert_eq!(r.status, 422, "{q}");
        let e: HttpValidationError = serde_json::from_slice(&r.body).expect("shape");
        assert_eq!(e.detail.len(), 1, "{q}");
        assert_eq!(e.detail[0].loc[..2], [serde_json::json!("query"), serde_json::json!(loc)], "{q}");
        assert_eq!(e.detail[0].kind, kind, "{q}");
    }
    let r = get(srv.addr, &format!("{LIST}?origins=webapp&origins=pigeon")).await;
    assert_eq!(r.json()["detail"][0]["loc"][2], 1);
    assert_eq!(get(srv.addr, &format!("{LIST}?first=1&first=200")).await.page().1.len(), 5);
}

#[tokio::test]
async fn date_header_follows_the_sim_clock() {
    let s = sim(5);
    let srv = serve(&s).await;
    s.set_now(1_795_925_298);
    let r = get(srv.addr, LIST).await;
    assert_eq!(r.header("date"), Some("Sun, 29 Nov 2026 04:08:18 GMT"));
    assert_eq!(r.header("content-type"), Some("application/json"));
    s.advance(3600);
    assert_eq!(get(srv.addr, LIST).await.header("date"), Some("Sun, 29 Nov 2026 05:08:18 GMT"));
    s.set_switches(Switches { omit_date: true, ..Switches::default() });
    let r = get(srv.addr, LIST).await;
    assert_eq!(r.status, 200);
    assert!(r.header("date").is_none());
}

#[tokio::test]
async fn status_faults_queue_and_are_logged() {
    let s = sim(20);
    let srv = serve(&s).await;
    s.inject(1, Fault::Status { code: 429, retry_after: Some("1".into()) }, 2);
    s.inject(1, Fault::Status { code: 503, retry_after: None }, 1);
    let statuses: Vec<(u16, Option<String>)> = {
        let mut v = Vec::new();
        for _ in 0..6 {
            let r = get(srv.addr, &format!("{LIST}?first=3")).await;
            v.push((r.status, r.header("retry-after").map(str::to_owned)));
        }
        v
    };
    let one = Some("1".to_owned());
    assert_eq!(statuses, [(200, None), (429, one.clone()), (429, one), (200, None), (503, None), (200, None)]);
    let log = s.requests();
    assert_eq!(log.len(), 6);
    assert_eq!(log[1].fault.as_deref(), Some("status_429"));
    assert_eq!(
        (log[0].status, log[0].items, log[0].path_and_query.as_str()),
        (200, 3, "/v3/enterprise/sessions/insights?first=3")
    );
    assert_eq!((log[4].status, log[4].items), (503, 0));
    s.clear_requests();
    assert!(s.requests().is_empty());

    s.inject(0, Fault::Status { code: 400, retry_after: None }, 1);
    let r = get(srv.addr, LIST).await;
    assert_eq!(r.status, 400);
    assert!(r.json()["detail"].is_string());
    s.inject(0, Fault::Status { code: 500, retry_after: None }, 5);
    s.clear_faults();
    assert_eq!(get(srv.addr, LIST).await.status, 200);
}

#[tokio::test]
async fn body_faults() {
    let s = sim(50);
    let srv = serve(&s).await;
    let full = get(srv.addr, LIST).await;

    s.inject(0, Fault::TruncatedBody, 1);
    let r = get(srv.addr, LIST).await;
    assert_eq!(r.status, 200);
    assert!(!r.complete);
    assert_eq!(r.body.len(), full.body.len() / 2);

    s.inject(0, Fault::DropConnection, 1);
    let r = get(srv.addr, LIST).await;
    assert_eq!((r.status, r.body.len()), (0, 0));

    s.inject(0, Fault::MalformedItem, 1);
    let r = get(srv.addr, LIST).await;
    let env: PageEnvelope = serde_json::from_slice(&r.body).expect("valid JSON");
    let err = serde_json::from_str::<SessionInsights>(env.items[0].get()).expect_err("no session_id");
    assert!(err.to_string().contains("session_id"), "{err}");
    assert!(serde_json::from_str::<SessionInsights>(env.items[1].get()).is_ok());

    s.inject(0, Fault::InvalidJson, 1);
    let r = get(srv.addr, LIST).await;
    assert!(r.complete && r.status == 200);
    assert_eq!(r.body, b"{\"items\": [");
    assert!(serde_json::from_slice::<PageEnvelope>(&r.body).is_err());

    s.inject(0, Fault::Slow(Duration::from_millis(300)), 1);
    let t = Instant::now();
    let r = get(srv.addr, LIST).await;
    assert!(t.elapsed() >= Duration::from_millis(300));
    assert_eq!(r.body, full.body);

    let faults: Vec<Option<String>> = s.requests().into_iter().map(|r| r.fault).collect();
    let names = [
        None,
        Some("truncated_body"),
        Some("drop_connection"),
        Some("malformed_item"),
        Some("invalid_json"),
        Some("slow"),
    ];
    assert_eq!(faults, names.map(|n| n.map(str::to_owned)));
    assert_eq!(s.requests()[2].status, 0);
    assert_eq!(get(srv.addr, LIST).await.body, full.body);
}

/// The sync uses reqwest (hyper): check keep-alive walks and that connection faults surface as errors.
#[tokio::test]
async fn works_with_reqwest() {
    let s = sim(300);
    let srv = serve(&s).await;
    let client = reqwest::Client::new();
    let url = format!("{}{LIST}", srv.base_url());
    let mut seen = 0;
    let mut after: Option<String> = None;
    loop {
        let mut req = client.get(&url).bearer_auth(DEFAULT_TOKEN).query(&[("first", "40")]);
        if let Some(a) = &after {
            req = req.query(&[("after", a)]);
        }
        let resp = req.send().await.expect("send");
        assert_eq!(resp.status(), 200);
        assert!(resp.headers().contains_key("date"));
        let env: PageEnvelope = serde_json::from_slice(&resp.bytes().await.expect("body")).expect("json");
        seen += env.items.len();
        match env.end_cursor {
            Some(c) => after = Some(c),
            None => break,
        }
    }
    assert_eq!(seen, 300);

    s.inject(0, Fault::TruncatedBody, 1);
    let resp = client.get(&url).bearer_auth(DEFAULT_TOKEN).send().await.expect("headers arrive");
    assert_eq!(resp.status(), 200);
    assert!(resp.bytes().await.is_err());
    s.inject(0, Fault::DropConnection, 1);
    assert!(client.get(&url).bearer_auth(DEFAULT_TOKEN).send().await.is_err());
    let ok = client.get(&url).bearer_auth(DEFAULT_TOKEN).send().await.expect("recovers");
    assert_eq!(ok.status(), 200);
    let q = client.get(&url).bearer_auth(DEFAULT_TOKEN).query(&[("session_ids", "a"), ("session_ids", "b")]);
    let env: PageEnvelope = q.send().await.expect("send").json().await.expect("json");
    assert_eq!(env.total, Some(0));
    srv.shutdown().await;
    assert!(client.get(&url).bearer_auth(DEFAULT_TOKEN).send().await.is_err(), "server is gone");
}

// ----------------------------------------------------------------------------------------------------
// Switches

#[tokio::test]
async fn unknown_enum_values_are_served_and_are_the_truth() {
    let s = sim(60);
    let srv = serve(&s).await;
    s.set_now(START + 77);
    s.set_switches(Switches { unknown_enum_values: true, ..Switches::default() });
    assert!(s.switches().unknown_enum_values);
    let truth = api_order(s.sessions());
    let served = walk(srv.addr, 200, "").await;
    assert_eq!(served, truth);
    let changed: Vec<&SessionInsights> = truth.iter().filter(|x| !known::STATUS.contains(&x.status.as_str())).collect();
    assert!(!changed.is_empty());
    assert!(changed.iter().all(|x| x.updated_at == START + 77));
    let unknown = |v: Option<&str>, list: &[&str]| v.is_some_and(|v| !list.contains(&v));
    assert!(truth.iter().any(|x| unknown(x.status_detail.as_deref(), known::STATUS_DETAIL)));
    assert!(truth.iter().any(|x| unknown(x.origin.as_deref(), known::ORIGIN)));
    assert!(truth.iter().any(|x| unknown(x.category.as_deref(), known::CATEGORY)));
    assert!(truth.iter().any(|x| unknown(Some(&x.session_size), known::SESSION_SIZE)));
    assert!(
        truth
            .iter()
            .flat_map(|x| x.analysis.iter().flat_map(|a| &a.action_items))
            .any(|i| unknown(Some(&i.kind), known::ACTION_ITEM_TYPE))
    );
    let r = get(srv.addr, LIST).await;
    assert!(
        String::from_utf8_lossy(&r.body).contains("paused_for_review")
            || String::from_utf8_lossy(&r.body).contains("archiving")
    );
}

#[tokio::test]
async fn extra_fields_are_served_and_ignored() {
    let s = sim(80);
    let srv = serve(&s).await;
    s.set_switches(Switches { extra_fields: true, ..Switches::default() });
    let r = get(srv.addr, &format!("{LIST}?first=200")).await;
    let v = r.json();
    assert!(v.get("x_envelope_extra").is_some());
    let items = v["items"].as_array().expect("items");
    assert!(items.iter().all(|i| i["x_future_field"] == serde_json::json!({"nested": [1, "two"]})));
    assert!(items.iter().filter(|i| i["analysis"].is_object()).all(|i| i["analysis"].get("x_future_field").is_some()));
    assert!(
        items
            .iter()
            .flat_map(|i| i["pull_requests"].as_array().into_iter().flatten())
            .all(|p| p.get("x_future_field").is_some())
    );
    assert!(items.iter().any(|i| {
        i["analysis"]["issues"].as_array().is_some_and(|a| a.iter().any(|x| x.get("x_future_field").is_some()))
    }));
    assert_eq!(r.page().1, api_order(s.sessions()));
}

#[tokio::test]
async fn ignore_filters_repeat_items_omit_total() {
    let s = sim(40);
    let srv = serve(&s).await;
    s.set_switches(Switches { ignore_filters: true, omit_total: true, ..Switches::default() });
    let r = get(srv.addr, &format!("{LIST}?updated_after={START}&session_ids=x&first=200")).await;
    assert!(r.json().get("total").is_none());
    assert_eq!(r.page().1.len(), 40);
    let r = get(srv.addr, &format!("{LIST}?first=0")).await;
    assert_eq!(r.status, 422, "still validated");

    s.set_switches(Switches { repeat_items: true, ..Switches::default() });
    let truth = api_order(s.sessions());
    let (env, p1) = get(srv.addr, &format!("{LIST}?first=10")).await.page();
    assert_eq!(env.total, Some(40));
    let (_, p2) = get(srv.addr, &format!("{LIST}?first=10&after={}", env.end_cursor.expect("c"))).await.page();
    assert_eq!(p1, truth[..10]);
    assert_eq!(p2.len(), 11);
    assert_eq!(p2[0], p1[9]);
    assert_eq!(p2[1..], truth[10..20]);
}

#[tokio::test]
async fn stuck_cursor_never_advances() {
    let s = sim(30);
    let srv = serve(&s).await;
    s.set_switches(Switches { stuck_cursor: true, ..Switches::default() });
    let (env1, _) = get(srv.addr, &format!("{LIST}?first=10")).await.page();
    let c = env1.end_cursor.expect("cursor");
    assert!(env1.has_next_page);
    for _ in 0..3 {
        let (env, items) = get(srv.addr, &format!("{LIST}?first=10&after={c}")).await.page();
        assert!(env.has_next_page);
        assert_eq!(env.end_cursor.as_deref(), Some(c.as_str()));
        assert_eq!(items.len(), 10);
    }
}

#[tokio::test]
async fn empty_pages_alternate_with_fresh_cursors() {
    let s = sim(25);
    let srv = serve(&s).await;
    s.set_switches(Switches { empty_pages: true, ..Switches::default() });
    let mut after: Option<String> = None;
    let mut sizes = Vec::new();
    let mut cursors = HashSet::new();
    let mut got = Vec::new();
    loop {
        let mut t = format!("{LIST}?first=10");
        if let Some(a) = &after {
            t.push_str(&format!("&after={a}"));
        }
        let (env, items) = get(srv.addr, &t).await.page();
        sizes.push(items.len());
        got.extend(items);
        match env.end_cursor {
            Some(c) => {
                assert!(cursors.insert(c.clone()), "cursor repeated");
                after = Some(c);
            }
            None => break,
        }
    }
    assert_eq!(sizes, [10, 0, 10, 0, 5]);
    assert_eq!(got, api_order(s.sessions()));
}

#[tokio::test]
async fn control_endpoints() {
    let s = sim(10);
    let srv = serve(&s).await;
    let r = raw(srv.addr, "POST", "/_sim/create?count=3", None).await;
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["ids"].as_array().map(Vec::len), Some(3));
    assert_eq!(s.len(), 13);
    let r = raw(srv.addr, "POST", "/_sim/update?count=4", None).await;
    assert_eq!(r.json()["updated"], 4);
    let r = raw(srv.addr, "POST", "/_sim/advance?secs=100", None).await;
    assert_eq!(r.json()["now"], START + 100);
    assert_eq!(s.now(), START + 100);
    get(srv.addr, LIST).await;
    let r = raw(srv.addr, "GET", "/_sim/stats", None).await;
    assert_eq!(r.json(), serde_json::json!({"sessions": 13, "requests": 1, "now": START + 100, "late_pending": 0}));
    // New sessions whose analysis and category arrive later.
    let r = raw(srv.addr, "POST", "/_sim/create?count=5&late=1", None).await;
    assert_eq!(r.json()["created"], 5);
    let late = raw(srv.addr, "GET", "/_sim/stats", None).await.json()["late_pending"].as_u64();
    assert!(late.is_some_and(|n| n > 0), "{late:?}");
    assert_eq!(s.late_pending() as u64, late.unwrap_or_default());
    raw(srv.addr, "POST", &format!("/_sim/advance?secs={}", 5 * 86_400), None).await;
    assert_eq!(s.late_pending(), 0);
    assert_eq!(raw(srv.addr, "POST", "/_sim/advance?secs=x", None).await.status, 422);
    assert_eq!(raw(srv.addr, "GET", "/_sim/create", None).await.status, 405);
}

#[tokio::test]
async fn empty_simulator() {
    let s = sim(0);
    assert!(s.is_empty());
    let srv = serve(&s).await;
    let (env, items) = get(srv.addr, LIST).await.page();
    assert_eq!((items.len(), env.has_next_page, env.end_cursor, env.total), (0, false, None, Some(0)));
    let ids = s.create(3);
    assert_eq!(walk(srv.addr, 2, "").await.len(), 3);
    assert!(ids.iter().all(|id| s.session(id).is_some()));
}

#[tokio::test]
async fn dropping_the_handle_stops_the_server() {
    let s = sim(5);
    let srv = serve(&s).await;
    let addr = srv.addr;
    assert!(srv.base_url().starts_with("http://127.0.0.1:"));
    assert_eq!(get(addr, LIST).await.status, 200);
    drop(srv);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(tokio::net::TcpStream::connect(addr).await.is_err());
}

/// Release-mode measurement: `cargo test --release --lib simulator::tests::bench -- --ignored --nocapture`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore]
async fn bench_100k() {
    let t = Instant::now();
    let s = Simulator::new(SimulatorConfig { sessions: 100_000, ..config(0) });
    println!("generate 100k: {:?}", t.elapsed());
    {
        let store = read(&s.inner.store);
        let bytes: usize = store.by_key.values().map(|e| e.json.len()).sum();
        let rows: usize = store.by_key.values().map(|e| child_rows(&e.session)).sum();
        println!("avg json {} B, avg child rows {:.2}, total {} MB", bytes / 100_000, rows as f64 / 1e5, bytes >> 20);
    }
    let srv = serve(&s).await;
    let client = reqwest::Client::new();
    let url = format!("{}{LIST}", srv.base_url());
    for round in 0..2 {
        let t = Instant::now();
        let mut after: Option<String> = None;
        let mut n = 0;
        loop {
            let mut req = client.get(&url).bearer_auth(DEFAULT_TOKEN).query(&[("first", "200")]);
            if let Some(a) = &after {
                req = req.query(&[("after", a)]);
            }
            let body = req.send().await.expect("send").bytes().await.expect("body");
            let env: PageEnvelope = serde_json::from_slice(&body).expect("json");
            n += env.items.len();
            match env.end_cursor {
                Some(c) => after = Some(c),
                None => break,
            }
        }
        assert_eq!(n, 100_000);
        println!("walk {round} (incl. client envelope parse): {:?}", t.elapsed());
    }
    let t = Instant::now();
    let after = START - 86_400;
    let (mut pages, mut cursor) = (0, None::<String>);
    loop {
        let mut req =
            client.get(&url).bearer_auth(DEFAULT_TOKEN).query(&[("first", "200")]).query(&[("updated_after", after)]);
        if let Some(c) = &cursor {
            req = req.query(&[("after", c)]);
        }
        let env: PageEnvelope = req.send().await.expect("send").json().await.expect("json");
        pages += 1;
        match env.end_cursor {
            Some(c) => cursor = Some(c),
            None => break,
        }
    }
    println!("incremental walk (updated_after = now - 1 day): {pages} pages in {:?}", t.elapsed());
    let t = Instant::now();
    s.update_some(1000);
    s.create(1000);
    println!("update 1000 + create 1000: {:?}", t.elapsed());
    let t = Instant::now();
    let all = s.sessions();
    println!("sessions(): {} in {:?}", all.len(), t.elapsed());
}

/// Where `Simulator::new` and a walk spend their time, without HTTP (release, `--ignored --nocapture`).
#[test]
#[ignore]
fn bench_pieces() {
    let t = Instant::now();
    let v = data::generate(42, 100_000, START, 730);
    println!("generate structs (parallel): {:?}", t.elapsed());
    let t = Instant::now();
    let c = v.clone();
    println!("clone structs: {:?}", t.elapsed());
    drop(c);
    let t = Instant::now();
    let e = entries_parallel(v);
    println!("serialize (parallel): {:?}", t.elapsed());
    drop(e);
    let t = Instant::now();
    let s = Simulator::new(SimulatorConfig { sessions: 100_000, ..config(0) });
    println!("Simulator::new 100k: {:?}", t.elapsed());
    let sw = Switches::default();
    let t = Instant::now();
    let mut after = String::new();
    let mut bytes = 0;
    loop {
        let q = if after.is_empty() { "first=200".to_owned() } else { format!("first=200&after={after}") };
        let q = server::parse_list_query_for_test(&q);
        let (body, _) = server::page_for_test(&s, &q, &sw);
        bytes += body.len();
        let tail = String::from_utf8_lossy(&body[body.len().saturating_sub(400)..]).into_owned();
        match tail.split("\"end_cursor\":\"").nth(1).and_then(|r| r.split('"').next()) {
            Some(c) => after = c.to_owned(),
            None => break,
        }
    }
    println!("server-side page building, full walk: {:?} ({} MB)", t.elapsed(), bytes >> 20);
}
