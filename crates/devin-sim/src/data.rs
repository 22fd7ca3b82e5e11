//! Deterministic synthetic data: sessions that exercise every field and every enum value of the spec.
//!
//! Everything is derived from a hand-written splitmix64 PRNG, so a seed (plus the start time) fully
//! determines the data set. The generator deliberately produces the awkward cases a loader has to get right:
//! nulls vs empty arrays, unicode (CJK, emoji, combining marks), characters that matter to PostgreSQL
//! `COPY` and array literals (tab, newline, CR, backslash, quote, comma, braces, `\N`, `NULL`), very long
//! strings, free-form nested `structured_output`, PR URLs from several hosts, parent/child links, and many
//! sessions sharing one `updated_at` second.

use serde_json::{Map, Value, json};

use devin_api_model::{
    ActionItem, Analysis, Classification, FeedbackItem, Issue, NoteUsage, NoteUsageItem, PullRequest, SessionInsights,
    SuggestedPrompt, TimelineEvent, known,
};

/// splitmix64: tiny, fast, good enough for test data, and stable across platforms and releases.
#[derive(Debug, Clone)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n` (`n == 0` gives 0).
    pub(crate) fn below(&mut self, n: usize) -> usize {
        if n == 0 {
            return 0;
        }
        // Multiply-shift: unbiased enough for test data and avoids a division.
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `lo..=hi` (`hi < lo` gives `lo`).
    pub(crate) fn range_i64(&mut self, lo: i64, hi: i64) -> i64 {
        if hi <= lo {
            return lo;
        }
        let span = (hi - lo) as u64 + 1;
        lo + ((u128::from(self.next_u64()) * u128::from(span)) >> 64) as i64
    }

    /// True with probability `pct` percent.
    pub(crate) fn pct(&mut self, pct: u32) -> bool {
        self.below(100) < pct as usize
    }

    pub(crate) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }

    fn hex32(&mut self) -> String {
        format!("{:016x}{:016x}", self.next_u64(), self.next_u64())
    }
}

/// FNV-1a, used to make per-session decisions (e.g. "omit defaults") that depend only on the id.
pub(crate) fn fnv1a(s: &str) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in s.bytes() {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

#[rustfmt::skip]
const WORDS: &[&str] = &[
    "fix", "flaky", "test", "in", "the", "payment", "service", "add", "retry", "logic", "to", "webhook",
    "handler", "migrate", "database", "schema", "for", "orders", "refactor", "auth", "middleware", "update",
    "dependencies", "and", "bump", "version", "investigate", "memory", "leak", "worker", "pool", "implement",
    "pagination", "API", "endpoint", "write", "unit", "tests", "parser", "improve", "error", "messages",
    "CLI", "document", "deployment", "process", "Kubernetes", "manifests", "Terraform", "module", "cache",
    "invalidation", "race", "condition", "scheduler", "frontend", "React", "component", "TypeScript", "types",
    "Python", "script", "nightly", "job", "metrics", "dashboard", "Grafana", "alert", "rules", "upgrade",
    "Node", "runtime", "lint", "warnings", "config", "loader", "feature", "flag", "rollout", "checkout",
    "flow", "search", "index", "latency", "regression", "benchmark", "repository", "branch", "pull",
    "request", "review", "comments", "session", "prompt", "knowledge", "note", "setup", "environment",
    "secrets", "permissions", "because", "which", "was", "could", "not", "find", "after", "before", "while",
    "with",
];

/// Awkward fragments sprinkled into text: each one has broken some loader somewhere.
#[rustfmt::skip]
const SPICE: &[&str] = &[
    "\t", "\n", "\r\n", "\\", "\"", ",", "{}", "{a,b}", "'", "\\N", "NULL", "日本語のテキスト", "中文字符", "한국어", "🚀",
    "👩\u{200d}💻", "e\u{301}", "Ünïcödé", "naïve café", "Ω≈ç√", "a\\\"b", "[x]", "$1", "%s", "<b>html</b>",
    "path\\to\\file", "C:\\Users\\", "\u{a0}nbsp", "tab\tsep", "emoji 🎉✅",
];

/// Tags: short, some with characters that need quoting in PostgreSQL array literals and COPY.
#[rustfmt::skip]
const TAG_POOL: &[&str] = &[
    "backend", "frontend", "urgent", "infra", "security", "needs,comma", "brace{}", "quote\"d", "back\\slash",
    "tab\there", "new\nline", "日本語", "🚀 launch", "e\u{301}", "NULL", "\\N", " leading space", "trailing ",
    "team:payments", "team:search", "q3-okr", "customer/acme", "p0", "p1", "tech-debt", "{braced}",
];

const LANGUAGES: &[&str] = &["Rust", "Python", "TypeScript", "Go", "Java", "C++", "Ruby", "SQL", "Bash", "Kotlin"];
const TOOLS: &[&str] = &[
    "tokio",
    "React",
    "Django",
    "PostgreSQL",
    "Docker",
    "Kubernetes",
    "Terraform",
    "GitHub Actions",
    "pytest",
    "Next.js",
    "Redis",
    "Kafka",
];
const SUBCATEGORIES: &[&str] =
    &["Other", "Flaky test fix", "Dependency upgrade", "API endpoint", "Performance", "Docs update", "CI pipeline"];
const COLORS: &[&str] = &["", "green", "red", "yellow", "blue", "#ff8800", "gray"];
const LABELS: &[&str] = &["environment", "knowledge", "prompt", "tooling", "repo_setup", "flaky_ci", "permissions"];
const IMPACTS: &[&str] = &["high", "medium", "low"];
const PR_STATES: &[Option<&str>] = &[Some("open"), Some("merged"), Some("merged"), Some("closed"), None];
const GITHUB_REPOS: &[&str] = &["acme/payments", "acme/web", "acme/infra", "octo-org/search", "octo-org/cli"];
const GITLAB_REPOS: &[&str] = &["acme-group/platform/api", "acme-group/data/pipelines", "team/mobile"];

/// Unknown enum values served when [`super::Switches::unknown_enum_values`] is on.
pub(crate) const UNKNOWN_STATUS: &[&str] = &["paused_for_review", "archiving"];
pub(crate) const UNKNOWN_STATUS_DETAIL: &[&str] = &["waiting_for_quantum_review", "rate_limited"];
pub(crate) const UNKNOWN_ORIGIN: &[&str] = &["carrier_pigeon", "vscode_extension"];
pub(crate) const UNKNOWN_CATEGORY: &[&str] = &["time_travel_debugging", "legal_review"];
pub(crate) const UNKNOWN_SESSION_SIZE: &[&str] = &["xxl", "xxs"];
pub(crate) const UNKNOWN_ACTION_TYPE: &[&str] = &["escalate_to_human", "billing"];

/// Fixed pools of principals, derived from the seed so they look like opaque ids.
pub(crate) struct Principals {
    orgs: Vec<String>,
    users: Vec<String>,
    service_users: Vec<String>,
    playbooks: Vec<String>,
}

impl Principals {
    pub(crate) fn new(seed: u64) -> Principals {
        let mut rng = Rng::new(seed ^ 0x005E_ED0F_0AC7);
        let mut ids = |prefix: &str, n: usize| -> Vec<String> {
            (0..n).map(|_| format!("{prefix}{:016x}", rng.next_u64())).collect()
        };
        Principals {
            orgs: ids("org-", 4),
            users: ids("user-", 30),
            service_users: ids("service-user-", 3),
            playbooks: ids("playbook-", 6),
        }
    }
}

/// Text helpers: word salad with the occasional awkward fragment.
fn words(rng: &mut Rng, min: usize, max: usize, spice_pct: u32) -> String {
    let n = min + rng.below(max - min + 1);
    let mut out = String::with_capacity(n * 8);
    for i in 0..n {
        if i > 0 {
            out.push(' ');
        }
        let list = if rng.pct(spice_pct) { SPICE } else { WORDS };
        out.push_str(list[rng.below(list.len())]);
    }
    out
}

/// A string of at least `min_chars` characters (used for the "very long string" cases).
fn long_text(rng: &mut Rng, min_chars: usize) -> String {
    let mut out = String::with_capacity(min_chars + 64);
    while out.chars().count() < min_chars {
        out.push_str(&words(rng, 40, 60, 4));
        out.push_str(". ");
    }
    out
}

/// Every awkward fragment at once, so a small data set is guaranteed to contain all of them.
fn all_spice() -> String {
    SPICE.join(" | ")
}

fn session_size_for(rng: &mut Rng, forced: Option<usize>) -> (String, f64) {
    let idx = forced.unwrap_or_else(|| [0, 0, 1, 1, 1, 2, 2, 2, 3, 4][rng.below(10)]);
    // acus in thousandths so the decimal text round-trips exactly through any JSON parser.
    let (lo, hi) = [(0, 999), (1_000, 4_999), (5_000, 19_999), (20_000, 59_999), (60_000, 400_000)][idx];
    let acus = rng.range_i64(lo, hi) as f64 / 1000.0;
    (known::SESSION_SIZE[idx].to_owned(), acus)
}

/// Status and a plausible detail for it; `forced` walks through every detail (and then every status).
fn status_pair(rng: &mut Rng, forced: Option<usize>) -> (String, Option<String>) {
    const RUNNING: &[&str] = &["working", "waiting_for_user", "waiting_for_approval", "finished"];
    if let Some(i) = forced {
        if i < known::STATUS_DETAIL.len() {
            let detail = known::STATUS_DETAIL[i];
            let status = if RUNNING.contains(&detail) {
                "running"
            } else if detail == "error" && i % 2 == 1 {
                "error"
            } else {
                "suspended"
            };
            return (status.to_owned(), Some(detail.to_owned()));
        }
        let status = known::STATUS[(i - known::STATUS_DETAIL.len()) % known::STATUS.len()];
        return (status.to_owned(), None);
    }
    let status = *rng.pick(&[
        "exit",
        "exit",
        "exit",
        "running",
        "running",
        "suspended",
        "suspended",
        "error",
        "new",
        "claimed",
        "resuming",
    ]);
    let detail = match status {
        "running" => Some(*rng.pick(RUNNING)),
        "suspended" => Some(known::STATUS_DETAIL[4 + rng.below(known::STATUS_DETAIL.len() - 4)]),
        "error" if rng.pct(50) => Some("error"),
        "exit" if rng.pct(30) => Some("finished"),
        _ => None,
    };
    (status.to_owned(), detail.map(str::to_owned))
}

fn pull_request_url(rng: &mut Rng) -> String {
    let n = rng.range_i64(1, 9_999);
    match rng.below(10) {
        0..=5 => format!("https://github.com/{}/pull/{n}", rng.pick(GITHUB_REPOS)),
        6..=8 => format!("https://gitlab.com/{}/-/merge_requests/{n}", rng.pick(GITLAB_REPOS)),
        _ => {
            if rng.pct(50) {
                format!("https://bitbucket.org/acme/legacy/pull-requests/{n}")
            } else {
                format!("https://git.internal.example.com/platform/tools/pulls/{n}")
            }
        }
    }
}

/// Adds one PR with a URL not already in the list.
pub(crate) fn add_pull_request(rng: &mut Rng, prs: &mut Vec<PullRequest>) {
    loop {
        let url = pull_request_url(rng);
        if !prs.iter().any(|p| p.pr_url == url) {
            let state = rng.pick(PR_STATES).map(str::to_owned);
            prs.push(PullRequest { pr_url: url, pr_state: state });
            return;
        }
    }
}

/// Adds one tag not already in the list.
pub(crate) fn add_tag(rng: &mut Rng, tags: &mut Vec<String>) {
    for _ in 0..8 {
        let tag = (*rng.pick(TAG_POOL)).to_owned();
        if !tags.contains(&tag) {
            tags.push(tag);
            return;
        }
    }
    // The pool may be exhausted for this session: fall back to a fresh unique tag.
    let tag = format!("tag-{:08x}", rng.next_u64() as u32);
    if !tags.contains(&tag) {
        tags.push(tag);
    }
}

fn issue(rng: &mut Rng, n: usize) -> Issue {
    Issue {
        // The spec default is "": keep some so the "omit defaults" encoding has something to omit.
        id: if rng.pct(30) { String::new() } else { format!("issue-{n}-{:06x}", rng.next_u64() as u32 & 0xFF_FFFF) },
        issue: words(rng, 10, 22, 3),
        impact: format!("{}: {}", rng.pick(IMPACTS), words(rng, 5, 12, 2)),
        label: (*rng.pick(LABELS)).to_owned(),
    }
}

fn issue_ref(rng: &mut Rng, issues: &[Issue]) -> Option<String> {
    let with_id: Vec<&Issue> = issues.iter().filter(|i| !i.id.is_empty()).collect();
    if with_id.is_empty() || rng.pct(40) { None } else { Some(rng.pick(&with_id).id.clone()) }
}

fn action_item(rng: &mut Rng, issues: &[Issue], forced_type: Option<usize>) -> ActionItem {
    let kind = match forced_type {
        Some(i) => known::ACTION_ITEM_TYPE[i % known::ACTION_ITEM_TYPE.len()],
        // "other" is the spec default: make it common so default-omission is exercised.
        None if rng.pct(30) => "other",
        None => rng.pick(known::ACTION_ITEM_TYPE),
    };
    ActionItem { action_item: words(rng, 8, 20, 3), issue_id: issue_ref(rng, issues), kind: kind.to_owned() }
}

fn timeline_event(rng: &mut Rng, issues: &[Issue]) -> TimelineEvent {
    TimelineEvent {
        title: words(rng, 3, 7, 2),
        description: words(rng, 14, 30, 3),
        color: (*rng.pick(COLORS)).to_owned(),
        issue_id: issue_ref(rng, issues),
    }
}

fn note_usage_item(rng: &mut Rng) -> NoteUsageItem {
    NoteUsageItem {
        note_id: format!("note-{:012x}", rng.next_u64() & 0xFFFF_FFFF_FFFF),
        message: words(rng, 10, 24, 3),
        reason: words(rng, 8, 18, 3),
    }
}

fn feedback_item(rng: &mut Rng, issues: &[Issue]) -> FeedbackItem {
    FeedbackItem {
        summary: words(rng, 4, 9, 2),
        excerpt: words(rng, 8, 18, 3),
        details: words(rng, 14, 30, 3),
        issue_id: issue_ref(rng, issues),
    }
}

fn classification(rng: &mut Rng) -> Classification {
    let langs = rng.below(4);
    let tools = rng.below(4);
    let mut c = Classification {
        category: (*rng.pick(known::CATEGORY)).to_owned(),
        confidence: rng.range_i64(0, 100) as f64 / 100.0,
        programming_languages: Vec::new(),
        tools_and_frameworks: Vec::new(),
    };
    for _ in 0..langs {
        let l = (*rng.pick(LANGUAGES)).to_owned();
        if !c.programming_languages.contains(&l) {
            c.programming_languages.push(l);
        }
    }
    for _ in 0..tools {
        let t = (*rng.pick(TOOLS)).to_owned();
        if !c.tools_and_frameworks.contains(&t) {
            c.tools_and_frameworks.push(t);
        }
    }
    c
}

fn suggested_prompt(rng: &mut Rng, issues: &[Issue]) -> SuggestedPrompt {
    let n = rng.below(5);
    SuggestedPrompt {
        original_prompt: words(rng, 15, 45, 3),
        suggested_prompt: words(rng, 25, 70, 3),
        feedback_items: (0..n).map(|_| feedback_item(rng, issues)).collect(),
    }
}

fn note_usage(rng: &mut Rng) -> NoteUsage {
    let good = rng.below(4);
    let bad = rng.below(4);
    NoteUsage {
        good_usages: (0..good).map(|_| note_usage_item(rng)).collect(),
        bad_usages: (0..bad).map(|_| note_usage_item(rng)).collect(),
    }
}

/// A full analysis with random piece counts; `forced_type` makes the first action item that type.
pub(crate) fn analysis(rng: &mut Rng, forced_type: Option<usize>) -> Analysis {
    let n_issues = rng.below(6);
    let issues: Vec<Issue> = (0..n_issues).map(|n| issue(rng, n)).collect();
    let n_actions = rng.below(6).max(usize::from(forced_type.is_some()));
    let action_items =
        (0..n_actions).map(|i| action_item(rng, &issues, if i == 0 { forced_type } else { None })).collect();
    let n_timeline = 1 + rng.below(9);
    let timeline = (0..n_timeline).map(|_| timeline_event(rng, &issues)).collect();
    Analysis {
        classification: if rng.pct(80) { Some(classification(rng)) } else { None },
        note_usage: if rng.pct(70) { Some(note_usage(rng)) } else { None },
        suggested_prompt: if rng.pct(75) { Some(suggested_prompt(rng, &issues)) } else { None },
        action_items,
        issues,
        timeline,
    }
}

fn structured_output(rng: &mut Rng) -> Map<String, Value> {
    let mut m = Map::new();
    m.insert("summary".into(), Value::String(words(rng, 6, 20, 5)));
    m.insert("confidence".into(), json!(rng.range_i64(0, 100) as f64 / 4.0));
    m.insert("count".into(), json!(rng.range_i64(-5, 5000)));
    m.insert("ok".into(), json!(rng.pct(50)));
    m.insert("missing".into(), Value::Null);
    m.insert(
        "items".into(),
        json!([1, "two", null, {"deep": {"deeper": [true, false, {"k": "日本語 🚀 \"q\" \\ {x}"}]}}]),
    );
    if rng.pct(50) {
        m.insert("files_changed".into(), json!([format!("src/{}.rs", rng.pick(WORDS)), "README.md"]));
    }
    m
}

/// Which "forced" coverage slot session number `i` of the initial data set fills (see [`generate`]).
struct Forced {
    status: Option<usize>,
    origin: Option<usize>,
    category: Option<usize>,
    size: Option<usize>,
    action_type: Option<usize>,
}

impl Forced {
    fn for_index(i: usize) -> Forced {
        let statuses = known::STATUS_DETAIL.len() + known::STATUS.len();
        Forced {
            status: (i < statuses).then_some(i),
            // Slot 0 is "null", then every enum value.
            origin: (i <= known::ORIGIN.len()).then_some(i),
            category: (i <= known::CATEGORY.len()).then_some(i),
            size: (i < known::SESSION_SIZE.len()).then_some(i),
            action_type: (i < known::ACTION_ITEM_TYPE.len()).then_some(i),
        }
    }

    fn none() -> Forced {
        Forced { status: None, origin: None, category: None, size: None, action_type: None }
    }
}

/// Builds one session (without parent/child links; the caller adds those).
/// Parent/child links of one session, decided before the session is built.
#[derive(Default, Clone)]
struct Links {
    parent: Option<String>,
    children: Vec<String>,
}

/// Builds one session with id `devin-<hex>`.
fn session(
    rng: &mut Rng,
    p: &Principals,
    hex: &str,
    created_at: i64,
    updated_at: i64,
    index: Option<usize>,
    links: Links,
) -> SessionInsights {
    let forced = index.map_or_else(Forced::none, Forced::for_index);
    let (status, status_detail) = status_pair(rng, forced.status);
    let (session_size, acus_consumed) = session_size_for(rng, forced.size);

    let origin = match forced.origin {
        Some(0) => None,
        Some(i) => Some(known::ORIGIN[i - 1].to_owned()),
        None if rng.pct(8) => None,
        None => Some((*rng.pick(known::ORIGIN)).to_owned()),
    };
    let category = match forced.category {
        Some(0) => None,
        Some(i) => Some(known::CATEGORY[i - 1].to_owned()),
        None if rng.pct(15) => None,
        None => Some((*rng.pick(known::CATEGORY)).to_owned()),
    };
    let subcategory = category.as_ref().map(|_| (*rng.pick(SUBCATEGORIES)).to_owned());

    let (user_id, service_user_id) = match rng.below(100) {
        0..=79 => (Some(rng.pick(&p.users).clone()), None),
        80..=94 => (None, Some(rng.pick(&p.service_users).clone())),
        95..=98 => (Some(rng.pick(&p.users).clone()), Some(rng.pick(&p.service_users).clone())),
        _ => (None, None),
    };

    // Fixed slots guarantee the rare shapes exist in any data set of a few dozen sessions.
    let slot = index.unwrap_or(usize::MAX);
    let title = match slot {
        3 => Some(long_text(rng, 5_000)),
        9 => Some(all_spice()),
        _ if rng.pct(5) => None,
        _ if rng.below(1000) < 3 => Some(long_text(rng, 5_000)),
        _ => Some(words(rng, 4, 12, 6)),
    };

    let n_tags = [0, 0, 1, 1, 2, 2, 2, 3, 3, 4, 5][rng.below(11)];
    let mut tags = Vec::with_capacity(n_tags + 1);
    for _ in 0..n_tags {
        add_tag(rng, &mut tags);
    }
    if slot == 7 || (index.is_none() && rng.below(2000) == 0) {
        tags.push(long_text(rng, 5_000));
    }
    if slot == 10 {
        for t in TAG_POOL {
            if !tags.iter().any(|x| x == t) {
                tags.push((*t).to_owned());
            }
        }
    }

    let n_prs = [0, 0, 0, 1, 1, 1, 1, 2, 2, 3, 4][rng.below(11)];
    let mut pull_requests = Vec::with_capacity(n_prs);
    for _ in 0..n_prs {
        add_pull_request(rng, &mut pull_requests);
    }

    let mut analysis = match (slot, forced.action_type) {
        (_, Some(t)) => Some(analysis(rng, Some(t))),
        (5, _) => Some(analysis(rng, None)),
        (11, _) => Some(Analysis::default()),
        (12, _) => None,
        _ if rng.pct(30) => None,
        _ if rng.pct(3) => Some(Analysis::default()),
        _ => Some(analysis(rng, None)),
    };
    if let Some(a) = analysis.as_mut()
        && (slot == 5 || rng.below(1000) < 3)
    {
        // A very long "message" in an analysis piece.
        a.note_usage.get_or_insert_with(NoteUsage::default).good_usages.push(NoteUsageItem {
            note_id: "note-long".to_owned(),
            message: long_text(rng, 5_000),
            reason: words(rng, 5, 10, 2),
        });
    }

    let user_msgs = rng.range_i64(0, 40);
    SessionInsights {
        session_id: format!("devin-{hex}"),
        org_id: rng.pick(&p.orgs).clone(),
        user_id,
        service_user_id,
        title,
        url: format!("https://app.devin.ai/sessions/{hex}"),
        status,
        status_detail,
        origin,
        category,
        subcategory,
        session_size,
        acus_consumed,
        num_user_messages: user_msgs,
        num_devin_messages: user_msgs * 2 + rng.range_i64(0, 60),
        is_archived: rng.pct(10),
        playbook_id: if rng.pct(25) { Some(rng.pick(&p.playbooks).clone()) } else { None },
        parent_session_id: links.parent,
        // Slot 4 is null and slot 6 an empty array unless they have children; otherwise a mix.
        child_session_ids: match slot {
            _ if !links.children.is_empty() => Some(links.children),
            4 => None,
            6 => Some(Vec::new()),
            _ if rng.pct(45) => None,
            _ => Some(Vec::new()),
        },
        tags,
        structured_output: if slot == 2 || rng.pct(35) { Some(structured_output(rng)) } else { None },
        pull_requests,
        created_at,
        updated_at,
        analysis,
    }
}

/// A seed for per-index generators, so sessions can be built in parallel and still deterministically.
fn index_seed(seed: u64, stream: u64, i: usize) -> u64 {
    Rng::new(seed ^ stream.wrapping_mul(0xA076_1D64_78BD_642F) ^ (i as u64).wrapping_mul(0xE703_7ED1_A0B4_28DB))
        .next_u64()
}

/// Runs `f(0..n)` on all cores, in order.
fn par_map<U: Send>(n: usize, f: impl Fn(usize) -> U + Sync) -> Vec<U> {
    let threads = std::thread::available_parallelism().map_or(1, |t| t.get()).clamp(1, 8);
    if threads == 1 || n < 2000 {
        return (0..n).map(f).collect();
    }
    let chunk = n.div_ceil(threads);
    let f = &f;
    std::thread::scope(|scope| {
        let handles: Vec<_> = (0..threads)
            .map(|t| scope.spawn(move || (t * chunk..((t + 1) * chunk).min(n)).map(f).collect::<Vec<U>>()))
            .collect();
        handles
            .into_iter()
            // A worker only panics on a bug in the generator: propagate it.
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

/// The initial data set: `n` sessions created over `[start - history_days, start - 1h]`, in ascending
/// `created_at` order, each passed through `f` (e.g. serialization) on the worker that built it.
/// Deterministic in (`seed`, `start`, `history_days`, `n`).
pub(crate) fn generate_map<U: Send>(
    seed: u64,
    n: usize,
    start: i64,
    history_days: i64,
    f: impl Fn(SessionInsights) -> U + Sync,
) -> Vec<U> {
    let p = Principals::new(seed);
    let mut rng = Rng::new(seed);
    let hi = start - 3_600;
    let lo = (start - history_days.max(0) * 86_400).min(hi - 1);

    let mut created: Vec<i64> = (0..n).map(|_| rng.range_i64(lo, hi)).collect();
    created.sort_unstable();

    // updated_at: in groups of ~50 consecutive sessions, half the groups share one updated_at second
    // (a bulk change upstream), the rest are updated individually (or never).
    let mut updated = vec![0i64; n];
    let latest = start - 1;
    let mut i = 0;
    while i < n {
        let len = (30 + rng.below(41)).min(n - i);
        let group = &created[i..i + len];
        let max_created = group[len - 1];
        if rng.pct(50) {
            let t = rng.range_i64(max_created, (max_created + 3 * 86_400).min(latest));
            updated[i..i + len].fill(t);
        } else {
            for (k, c) in group.iter().enumerate() {
                updated[i + k] = if rng.pct(20) { *c } else { rng.range_i64(*c, (*c + 30 * 86_400).min(latest)) };
            }
        }
        i += len;
    }

    // Ids and parent/child links first (cheap, sequential), so the sessions can be built in parallel.
    let hexes: Vec<String> = (0..n).map(|k| Rng::new(index_seed(seed, 1, k)).hex32()).collect();
    let mut links: Vec<Links> = (0..n).map(|_| Links::default()).collect();
    let link = |links: &mut [Links], parent: usize, child: usize| {
        links[child].parent = Some(format!("devin-{}", hexes[parent]));
        links[parent].children.push(format!("devin-{}", hexes[child]));
    };
    for child in 1..n {
        if rng.pct(12) {
            let parent = child - 1 - rng.below(child.min(200));
            link(&mut links, parent, child);
        } else if rng.below(100) == 0 {
            // Parent that no longer exists (deleted upstream).
            links[child].parent = Some(format!("devin-{}", rng.hex32()));
        }
    }
    // A guaranteed parent with several children when the data set is big enough.
    if n >= 8 {
        for child in [n - 1, n - 2, n - 3] {
            if links[child].parent.is_none() {
                link(&mut links, n - 4, child);
            }
        }
    }

    // The forced coverage slots should not all sit at the oldest end of history: rotate them into
    // the data set at a seed-dependent offset.
    let offset = if n > 0 { rng.below(n) } else { 0 };
    par_map(n, |k| {
        let slot = (k + n - offset) % n;
        let mut r = Rng::new(index_seed(seed, 2, k));
        let l = links[k].clone();
        f(session(&mut r, &p, &hexes[k], created[k], updated[k].max(created[k]), Some(slot), l))
    })
}

/// [`generate_map`] without mapping.
#[cfg(test)]
pub(crate) fn generate(seed: u64, n: usize, start: i64, history_days: i64) -> Vec<SessionInsights> {
    generate_map(seed, n, start, history_days, |s| s)
}

/// `n` new sessions created at `now`; some of them children of earlier ones in the same batch.
pub(crate) fn generate_new(rng: &mut Rng, p: &Principals, n: usize, now: i64) -> Vec<SessionInsights> {
    let hexes: Vec<String> = (0..n).map(|_| rng.hex32()).collect();
    let mut links: Vec<Links> = (0..n).map(|_| Links::default()).collect();
    for child in 1..n {
        if rng.pct(10) {
            let parent = rng.below(child);
            links[child].parent = Some(format!("devin-{}", hexes[parent]));
            links[parent].children.push(format!("devin-{}", hexes[child]));
        }
    }
    hexes.iter().zip(links).map(|(hex, l)| session(rng, p, hex, now, now, None, l)).collect()
}

/// A meaningful upstream change to one session; the caller sets `updated_at`.
pub(crate) fn mutate(rng: &mut Rng, s: &mut SessionInsights) {
    s.title = Some(format!("{} (rev {})", words(rng, 4, 10, 6), rng.below(1000)));
    // Always a different status (a few draws; the list has seven values).
    for _ in 0..16 {
        let (status, detail) = status_pair(rng, None);
        if status != s.status {
            s.status = status;
            s.status_detail = detail;
            break;
        }
    }
    s.acus_consumed = ((s.acus_consumed * 1000.0).round() + rng.range_i64(1, 5_000) as f64) / 1000.0;
    s.num_user_messages += rng.range_i64(1, 5);
    s.num_devin_messages += rng.range_i64(1, 12);

    if !s.pull_requests.is_empty() {
        let i = rng.below(s.pull_requests.len());
        s.pull_requests.remove(i);
    }
    add_pull_request(rng, &mut s.pull_requests);
    if let Some(pr) = s.pull_requests.first_mut() {
        pr.pr_state = Some(if pr.pr_state.as_deref() == Some("open") { "merged" } else { "open" }.to_owned());
    }

    if !s.tags.is_empty() && rng.pct(60) {
        let i = rng.below(s.tags.len());
        s.tags.remove(i);
    }
    add_tag(rng, &mut s.tags);

    match s.analysis.as_mut() {
        None => s.analysis = Some(analysis(rng, None)),
        Some(a) => {
            // Add an issue, change a timeline event, drop an action item, flip an optional piece.
            let n = a.issues.len();
            a.issues.push(issue(rng, n + 100));
            if a.timeline.is_empty() {
                a.timeline.push(timeline_event(rng, &a.issues));
            } else {
                let i = rng.below(a.timeline.len());
                a.timeline[i].description = words(rng, 10, 30, 3);
                a.timeline[i].color = (*rng.pick(COLORS)).to_owned();
            }
            if !a.action_items.is_empty() {
                let i = rng.below(a.action_items.len());
                a.action_items.remove(i);
            }
            a.action_items.push(action_item(rng, &a.issues, None));
            match rng.below(3) {
                0 => a.classification = if a.classification.is_some() { None } else { Some(classification(rng)) },
                1 => a.note_usage = if a.note_usage.is_some() { None } else { Some(note_usage(rng)) },
                _ => {
                    a.suggested_prompt =
                        if a.suggested_prompt.is_some() { None } else { Some(suggested_prompt(rng, &a.issues)) }
                }
            }
        }
    }
    if rng.pct(30) {
        s.category = Some((*rng.pick(known::CATEGORY)).to_owned());
        s.subcategory = Some((*rng.pick(SUBCATEGORIES)).to_owned());
    }
}

/// Rewrites a session with enum values the spec does not list (for the `unknown_enum_values` switch).
pub(crate) fn apply_unknown_enums(s: &mut SessionInsights) {
    let h = fnv1a(&s.session_id) as usize;
    s.status = UNKNOWN_STATUS[h % 2].to_owned();
    s.status_detail = Some(UNKNOWN_STATUS_DETAIL[(h >> 1) % 2].to_owned());
    s.origin = Some(UNKNOWN_ORIGIN[(h >> 2) % 2].to_owned());
    s.category = Some(UNKNOWN_CATEGORY[(h >> 3) % 2].to_owned());
    s.session_size = UNKNOWN_SESSION_SIZE[(h >> 4) % 2].to_owned();
    if let Some(item) = s.analysis.as_mut().and_then(|a| a.action_items.first_mut()) {
        item.kind = UNKNOWN_ACTION_TYPE[(h >> 5) % 2].to_owned();
    }
}

/// Whether the served JSON of this session omits keys equal to their spec default (~10% of sessions).
pub(crate) fn omits_defaults(session_id: &str) -> bool {
    fnv1a(session_id).is_multiple_of(10)
}

/// The served JSON of one session. All keys are present (None → null) except for the ~10% of sessions
/// that omit keys equal to the spec default, so clients exercise their defaults.
pub(crate) fn to_json(s: &SessionInsights) -> Box<[u8]> {
    thread_local! {
        // Reused per thread: one exact-size allocation per session instead of grow-and-shrink.
        static BUF: std::cell::RefCell<Vec<u8>> = const { std::cell::RefCell::new(Vec::new()) };
    }
    BUF.with_borrow_mut(|buf| {
        buf.clear();
        // Writing into a Vec cannot fail, and these types always serialize.
        let _ = if omits_defaults(&s.session_id) {
            serde_json::to_writer(&mut *buf, &to_value(s))
        } else {
            serde_json::to_writer(&mut *buf, s)
        };
        buf.as_slice().into()
    })
}

/// [`to_json`] as a `Value` (for the served variants that alter items).
pub(crate) fn to_value(s: &SessionInsights) -> Value {
    // Cannot fail for this type (see `to_json`).
    let mut v = serde_json::to_value(s).unwrap_or(Value::Null);
    if omits_defaults(&s.session_id) {
        strip_defaults(&mut v);
    }
    v
}

fn strip_defaults(v: &mut Value) {
    let Some(obj) = v.as_object_mut() else { return };
    if obj.get("is_archived") == Some(&Value::Bool(false)) {
        obj.remove("is_archived");
    }
    if obj.get("origin") == Some(&Value::Null) {
        obj.remove("origin");
    }
    let Some(analysis) = obj.get_mut("analysis").and_then(Value::as_object_mut) else {
        return;
    };
    let mut strip = |list: &str, key: &str, default: &str| {
        if let Some(items) = analysis.get_mut(list).and_then(Value::as_array_mut) {
            for item in items.iter_mut().filter_map(Value::as_object_mut) {
                if item.get(key).and_then(Value::as_str) == Some(default) {
                    item.remove(key);
                }
            }
        }
    };
    strip("issues", "id", "");
    strip("timeline", "color", "");
    strip("action_items", "type", "other");
}

/// Adds unknown fields to an item and every nested object of the schema (not inside `structured_output`,
/// which is free-form and part of the truth).
pub(crate) fn add_extra_fields(v: &mut Value) {
    fn extra() -> Value {
        json!({"nested": [1, "two"]})
    }
    fn tag(v: &mut Value) {
        if let Some(o) = v.as_object_mut() {
            o.insert("x_future_field".to_owned(), extra());
        }
    }
    fn tag_all(v: Option<&mut Value>) {
        if let Some(items) = v.and_then(Value::as_array_mut) {
            items.iter_mut().for_each(tag);
        }
    }
    let Some(obj) = v.as_object_mut() else { return };
    obj.insert("x_future_field".to_owned(), extra());
    obj.insert("x_added_in_v4".to_owned(), json!("surprise"));
    tag_all(obj.get_mut("pull_requests"));
    let Some(a) = obj.get_mut("analysis").filter(|a| a.is_object()) else {
        return;
    };
    tag(a);
    tag_all(a.get_mut("issues"));
    tag_all(a.get_mut("action_items"));
    tag_all(a.get_mut("timeline"));
    if let Some(c) = a.get_mut("classification") {
        tag(c);
    }
    if let Some(n) = a.get_mut("note_usage").filter(|n| n.is_object()) {
        tag(n);
        tag_all(n.get_mut("good_usages"));
        tag_all(n.get_mut("bad_usages"));
    }
    if let Some(sp) = a.get_mut("suggested_prompt").filter(|s| s.is_object()) {
        tag(sp);
        tag_all(sp.get_mut("feedback_items"));
    }
}
