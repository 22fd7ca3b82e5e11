//! An in-process stand-in for the Devin endpoint `GET /v3/enterprise/sessions/insights`.
//!
//! Used by the integration tests (on an ephemeral port), by `devin-etl demo` / `simulate`, and by the
//! benchmark. It is deterministic (data derived from a seed), fast (each session's JSON is serialized once
//! and pages are built by concatenation; keyset pagination over a sorted index) and controllable from
//! tests: a simulation clock that drives `updated_at` and the `Date` header, data changes ([`Simulator::create`],
//! [`Simulator::update_some`], [`Simulator::modify`], [`Simulator::remove`], ...), behaviour [`Switches`]
//! and a queue of injected [`Fault`]s, plus a log of every list request.
//!
//! Layout: this file holds the handle, state, clock and fault queue; `data` generates sessions; `server`
//! speaks HTTP.

mod data;
mod server;
#[cfg(test)]
mod tests;

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use devin_api_model::{Analysis, SessionInsights};

/// The bearer token the simulator accepts unless configured otherwise.
pub const DEFAULT_TOKEN: &str = "cog_simulator_token";

/// How to build a [`Simulator`].
#[derive(Debug, Clone)]
pub struct SimulatorConfig {
    /// Number of sessions generated up front (default 2000).
    pub sessions: usize,
    /// PRNG seed: the same seed (and `start_time`) gives the same data (default 42).
    pub seed: u64,
    /// The bearer token requests must carry (default [`DEFAULT_TOKEN`]).
    pub token: String,
    /// Initial simulation clock in unix seconds; `None` = the real clock now.
    pub start_time: Option<i64>,
    /// `created_at` is spread over `[start - history_days, start - 1h]` (default 730).
    pub history_days: i64,
    /// `false` (default): the clock follows real time plus an offset; `true`: it only moves through
    /// [`Simulator::set_now`] / [`Simulator::advance`].
    pub manual_clock: bool,
}

impl Default for SimulatorConfig {
    fn default() -> Self {
        SimulatorConfig {
            sessions: 2000,
            seed: 42,
            token: DEFAULT_TOKEN.to_owned(),
            start_time: None,
            history_days: 730,
            manual_clock: false,
        }
    }
}

/// Behaviour switches; all off by default. They apply to every request until switched off.
#[derive(Debug, Clone, Default)]
pub struct Switches {
    /// Switching on rewrites a deterministic subset of the sessions (about a third, at least one, and
    /// at least one with an action item) with values the spec does not list for status, status_detail,
    /// origin, category, session_size and the first action item's type, bumping their `updated_at`.
    /// This is a change of the data (the truth): [`Simulator::sessions`] reports it, and switching
    /// off does not revert it. While on, new sessions from [`Simulator::create`] get the same treatment.
    pub unknown_enum_values: bool,
    /// Every served item, its nested analysis objects and PR objects, and the page envelope get unknown
    /// fields such as `"x_future_field": {"nested":[1,"two"]}`. The truth is unaffected.
    pub extra_fields: bool,
    /// Every served item carries `acus_consumed` as a JSON string holding the number (`"12.5"`), as an API that
    /// moved to decimals might. The truth is unaffected.
    pub numbers_as_strings: bool,
    /// The server ignores every filter (`updated_*`, `created_*`, `session_ids`, `tags`, ...): it
    /// returns everything. Parameters are still validated.
    pub ignore_filters: bool,
    /// Each page after the first starts with the last item of the previous page (so it holds up to
    /// `first + 1` items).
    pub repeat_items: bool,
    /// `end_cursor` never advances: it is always the cursor the request came with (the first page's own
    /// cursor on the first request) and `has_next_page` is always true.
    pub stuck_cursor: bool,
    /// Every other page is empty with `has_next_page: true` and a valid (new) cursor that resumes where
    /// the previous page ended.
    pub empty_pages: bool,
    /// Leave `total` out of the envelope.
    pub omit_total: bool,
    /// Send no `Date` header.
    pub omit_date: bool,
    /// Read `updated_after` as inclusive (`>=`) instead of exclusive (`>`): the spec does not say which it is.
    pub updated_after_inclusive: bool,
}

/// A fault injected into list responses with [`Simulator::inject`].
#[derive(Debug, Clone)]
pub enum Fault {
    /// An error status with a short JSON body (`{"detail":"..."}`) and optionally a `Retry-After`.
    Status { code: u16, retry_after: Option<String> },
    /// Sleep this long, then answer normally.
    Slow(Duration),
    /// `200` with the full `Content-Length`, then only the first half of the body bytes, then the
    /// connection is closed.
    TruncatedBody,
    /// The connection is closed after the request is read, before any response byte.
    DropConnection,
    /// A normal page whose first item lacks the required field `session_id`.
    MalformedItem,
    /// `200` with the complete body `{"items": [` (a JSON syntax error).
    InvalidJson,
    /// A normal page whose `Date` header is this many seconds off the simulator's clock (one API node with a
    /// wrong clock).
    SkewedDate(i64),
}

impl Fault {
    /// Short name used in [`RequestRecord::fault`]: `status_429`, `slow`, `truncated_body`,
    /// `drop_connection`, `malformed_item`, `invalid_json`.
    pub fn name(&self) -> String {
        match self {
            Fault::Status { code, .. } => format!("status_{code}"),
            Fault::Slow(_) => "slow".to_owned(),
            Fault::TruncatedBody => "truncated_body".to_owned(),
            Fault::DropConnection => "drop_connection".to_owned(),
            Fault::MalformedItem => "malformed_item".to_owned(),
            Fault::InvalidJson => "invalid_json".to_owned(),
            Fault::SkewedDate(_) => "skewed_date".to_owned(),
        }
    }
}

/// One request to the list endpoint, as answered.
#[derive(Debug, Clone)]
pub struct RequestRecord {
    /// The request target, e.g. `/v3/enterprise/sessions/insights?first=200&after=...`.
    pub path_and_query: String,
    /// The status sent; `0` when the connection was dropped without a response.
    pub status: u16,
    /// Number of items in the (intended) page; 0 for errors.
    pub items: usize,
    /// [`Fault::name`] of the injected fault that hit this request, if any.
    pub fault: Option<String>,
}

impl RequestRecord {
    /// The integer query parameter `name` of the request (the first, if repeated), e.g. `updated_after`.
    pub fn int_param(&self, name: &str) -> Option<i64> {
        let query = self.path_and_query.split_once('?')?.1;
        query.split('&').find_map(|kv| kv.strip_prefix(name)?.strip_prefix('=')?.parse().ok())
    }

    /// The backfill window the request asked for, keyed as `sync_backfill_windows` keys it (an open end is
    /// `i64::MIN` / `i64::MAX`); `None` without `created_after`/`created_before`.
    pub fn window(&self) -> Option<(i64, i64)> {
        let (after, before) = (self.int_param("created_after"), self.int_param("created_before"));
        (after.is_some() || before.is_some()).then(|| (after.unwrap_or(i64::MIN), before.unwrap_or(i64::MAX)))
    }
}

/// Sort key of the index: ascending `(created_at, session_id)`; the API order is its reverse.
type Key = (i64, String);

/// One session: the truth and its served JSON, serialized once.
struct Entry {
    session: SessionInsights,
    json: Box<[u8]>,
}

impl Entry {
    fn new(session: SessionInsights) -> Entry {
        let json = data::to_json(&session);
        Entry { session, json }
    }
}

#[derive(Default)]
struct Store {
    by_key: BTreeMap<Key, Entry>,
    created_at: HashMap<String, i64>,
    /// Bumped on every change; invalidates cached totals.
    version: u64,
}

impl Store {
    fn key_of(&self, id: &str) -> Option<Key> {
        self.created_at.get(id).map(|c| (*c, id.to_owned()))
    }

    fn get(&self, id: &str) -> Option<&Entry> {
        self.by_key.get(&self.key_of(id)?)
    }

    fn remove(&mut self, id: &str) -> Option<Entry> {
        let key = self.key_of(id)?;
        self.created_at.remove(id);
        self.version += 1;
        self.by_key.remove(&key)
    }

    /// Inserts or replaces (by `session_id`).
    fn put(&mut self, entry: Entry) {
        let id = entry.session.session_id.clone();
        self.remove(&id);
        self.created_at.insert(id.clone(), entry.session.created_at);
        self.by_key.insert((entry.session.created_at, id), entry);
        self.version += 1;
    }
}

/// A queued step of the fault schedule.
enum Step {
    Normal(usize),
    Fault(Fault, usize),
}

struct Inner {
    config: SimulatorConfig,
    /// Manual clock: the time itself; real clock: the offset added to real time.
    clock: AtomicI64,
    store: RwLock<Store>,
    switches: RwLock<Switches>,
    faults: Mutex<VecDeque<Step>>,
    requests: Mutex<Vec<RequestRecord>>,
    /// Drives `create` and `update_some`, so a test script replays identically.
    rng: Mutex<data::Rng>,
    principals: data::Principals,
    /// Cached `total` per filter set, valid for one store version (a walk asks the same count per page).
    totals: Mutex<Vec<(String, u64, usize)>>,
    /// Analysis and categories withheld by [`Simulator::create_late`], by (arrival time, order of scheduling).
    late: Mutex<BTreeMap<(i64, u64), (String, Late)>>,
    late_scheduled: AtomicU64,
}

/// What arrives late for a session, without bumping its `updated_at`.
enum Late {
    Analysis(Box<Analysis>),
    Category(Option<String>, Option<String>),
}

/// The simulator: data, clock, switches and fault queue. Cheap to clone (an `Arc` inside).
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("sessions", &self.len()).field("now", &self.now()).finish()
    }
}

/// A poisoned lock only means a test closure panicked; the data is still consistent enough for a simulator.
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}
fn read<T>(l: &RwLock<T>) -> RwLockReadGuard<'_, T> {
    l.read().unwrap_or_else(PoisonError::into_inner)
}
fn write<T>(l: &RwLock<T>) -> RwLockWriteGuard<'_, T> {
    l.write().unwrap_or_else(PoisonError::into_inner)
}

fn real_now() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs() as i64)
}

/// Serializes entries on all cores (100k sessions are ~350 MB of JSON).
fn entries_parallel(sessions: Vec<SessionInsights>) -> Vec<Entry> {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get()).clamp(1, 8);
    if threads == 1 || sessions.len() < 1000 {
        return sessions.into_iter().map(Entry::new).collect();
    }
    let chunk = sessions.len().div_ceil(threads);
    let mut chunks: Vec<Vec<SessionInsights>> = Vec::with_capacity(threads);
    let mut rest = sessions;
    while rest.len() > chunk {
        let tail = rest.split_off(chunk);
        chunks.push(rest);
        rest = tail;
    }
    chunks.push(rest);
    std::thread::scope(|scope| {
        let handles: Vec<_> = chunks
            .into_iter()
            .map(|c| scope.spawn(move || c.into_iter().map(Entry::new).collect::<Vec<_>>()))
            .collect();
        handles
            .into_iter()
            // A worker only panics if serialization panics, which would be a bug: propagate it.
            .flat_map(|h| h.join().unwrap_or_else(|e| std::panic::resume_unwind(e)))
            .collect()
    })
}

impl Simulator {
    /// Generates the data set (100k sessions take about a second in release).
    pub fn new(config: SimulatorConfig) -> Simulator {
        let start = config.start_time.unwrap_or_else(real_now);
        let entries = data::generate_map(config.seed, config.sessions, start, config.history_days, Entry::new);
        let mut store = Store::default();
        for entry in entries {
            store.created_at.insert(entry.session.session_id.clone(), entry.session.created_at);
            store.by_key.insert((entry.session.created_at, entry.session.session_id.clone()), entry);
        }
        let clock = if config.manual_clock { start } else { start - real_now() };
        let inner = Inner {
            clock: AtomicI64::new(clock),
            store: RwLock::new(store),
            switches: RwLock::new(Switches::default()),
            faults: Mutex::new(VecDeque::new()),
            requests: Mutex::new(Vec::new()),
            rng: Mutex::new(data::Rng::new(config.seed ^ 0xC4A1_6E5E_ED00_0001)),
            principals: data::Principals::new(config.seed),
            totals: Mutex::new(Vec::new()),
            late: Mutex::new(BTreeMap::new()),
            late_scheduled: AtomicU64::new(0),
            config,
        };
        Simulator { inner: Arc::new(inner) }
    }

    /// Binds `addr` (port 0 picks a free port) and serves the API on the current tokio runtime.
    pub async fn serve(&self, addr: SocketAddr) -> std::io::Result<RunningSimulator> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let task = tokio::spawn(server::run(self.clone(), listener));
        Ok(RunningSimulator { addr, task: Some(task) })
    }

    /// The configured bearer token.
    pub fn token(&self) -> &str {
        &self.inner.config.token
    }

    /// The simulation clock, unix seconds. Drives `updated_at` of changes and the `Date` header.
    pub fn now(&self) -> i64 {
        let v = self.inner.clock.load(Ordering::SeqCst);
        if self.inner.config.manual_clock { v } else { real_now() + v }
    }

    /// Sets the simulation clock.
    pub fn set_now(&self, t: i64) {
        let v = if self.inner.config.manual_clock { t } else { t - real_now() };
        self.inner.clock.store(v, Ordering::SeqCst);
        self.deliver_late();
    }

    /// Moves the simulation clock by `secs` (may be negative).
    pub fn advance(&self, secs: i64) {
        self.inner.clock.fetch_add(secs, Ordering::SeqCst);
        self.deliver_late();
    }

    /// As [`Simulator::create`], but the new sessions' analysis and category are withheld and arrive later, each
    /// on its own, without bumping `updated_at` — as upstream is believed to behave (insights are generated on
    /// demand, categories filled in later). Of those a session has, an analysis arrives 1 min to 1 h after
    /// creation (85%) or 1 h to 5 days after (15%: asked for later); a category 5 min to 2 h after (80%) or 2 h to
    /// 3 days after (20%). A session generated without them (about 30% and 15%) never gets them. Arrivals happen
    /// when the clock is moved ([`Simulator::advance`], [`Simulator::set_now`]) or a list request is served.
    pub fn create_late(&self, n: usize) -> Vec<String> {
        let ids = self.create(n);
        let now = self.now();
        for id in &ids {
            let mut withheld = None;
            self.modify_keep_updated_at(id, |s| {
                withheld = Some((s.analysis.take(), s.category.take(), s.subcategory.take()));
            });
            let Some((analysis, category, subcategory)) = withheld else { continue };
            let mut arrivals = Vec::new();
            {
                let mut rng = lock(&self.inner.rng);
                if let Some(analysis) = analysis {
                    let delay = if rng.pct(85) { rng.range_i64(60, 3_600) } else { rng.range_i64(3_600, 5 * 86_400) };
                    arrivals.push((now + delay, Late::Analysis(Box::new(analysis))));
                }
                if category.is_some() {
                    let delay = if rng.pct(80) { rng.range_i64(300, 7_200) } else { rng.range_i64(7_200, 3 * 86_400) };
                    arrivals.push((now + delay, Late::Category(category, subcategory)));
                }
            }
            let mut late = lock(&self.inner.late);
            for (at, what) in arrivals {
                let order = self.inner.late_scheduled.fetch_add(1, Ordering::SeqCst);
                late.insert((at, order), (id.clone(), what));
            }
        }
        ids
    }

    /// Withheld analysis and categories not arrived yet.
    pub fn late_pending(&self) -> usize {
        lock(&self.inner.late).len()
    }

    /// Applies every withheld piece whose time has come.
    pub(crate) fn deliver_late(&self) {
        let now = self.now();
        let due: Vec<(String, Late)> = {
            let mut late = lock(&self.inner.late);
            if late.first_key_value().is_none_or(|((at, _), _)| *at > now) {
                return;
            }
            let rest = late.split_off(&(now + 1, 0));
            std::mem::replace(&mut *late, rest).into_values().collect()
        };
        for (id, what) in due {
            self.modify_keep_updated_at(&id, |s| match what {
                Late::Analysis(a) => s.analysis = Some(*a),
                Late::Category(c, sub) => (s.category, s.subcategory) = (c, sub),
            });
        }
    }

    /// The truth: every session the API would return (without filters), sorted by `session_id`.
    pub fn sessions(&self) -> Vec<SessionInsights> {
        let mut all: Vec<SessionInsights> =
            read(&self.inner.store).by_key.values().map(|e| e.session.clone()).collect();
        all.sort_unstable_by(|a, b| a.session_id.cmp(&b.session_id));
        all
    }

    /// One session of the truth.
    pub fn session(&self, id: &str) -> Option<SessionInsights> {
        read(&self.inner.store).get(id).map(|e| e.session.clone())
    }

    /// Number of sessions.
    pub fn len(&self) -> usize {
        read(&self.inner.store).by_key.len()
    }

    /// Whether there are no sessions.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Inserts or replaces a session verbatim (the caller controls every field, `updated_at` included).
    pub fn put(&self, s: SessionInsights) {
        let entry = Entry::new(s);
        write(&self.inner.store).put(entry);
    }

    /// Applies `f`, then sets `updated_at = now()`. False if the id is unknown.
    pub fn modify(&self, id: &str, f: impl FnOnce(&mut SessionInsights)) -> bool {
        let now = self.now();
        self.modify_inner(id, |s| {
            f(s);
            s.updated_at = now;
        })
    }

    /// Applies `f` without touching `updated_at` (e.g. late analysis that does not bump it upstream).
    pub fn modify_keep_updated_at(&self, id: &str, f: impl FnOnce(&mut SessionInsights)) -> bool {
        self.modify_inner(id, f)
    }

    fn modify_inner(&self, id: &str, f: impl FnOnce(&mut SessionInsights)) -> bool {
        let mut store = write(&self.inner.store);
        let Some(entry) = store.get(id) else {
            return false;
        };
        // Work on a copy so a panicking closure leaves the session in place.
        let mut s = entry.session.clone();
        f(&mut s);
        if s.session_id != id {
            store.remove(id);
        }
        store.put(Entry::new(s));
        true
    }

    /// Creates `n` generated sessions with `created_at = updated_at = now()`; returns their ids.
    pub fn create(&self, n: usize) -> Vec<String> {
        let now = self.now();
        let unknown = read(&self.inner.switches).unknown_enum_values;
        let mut sessions = {
            let mut rng = lock(&self.inner.rng);
            let mut sessions = data::generate_new(&mut rng, &self.inner.principals, n, now);
            // 128 random bits make a clash practically impossible, but never replace an existing session.
            let store = read(&self.inner.store);
            for s in &mut sessions {
                while store.created_at.contains_key(&s.session_id) {
                    let hex = format!("{:016x}{:016x}", rng.next_u64(), rng.next_u64());
                    s.session_id = format!("devin-{hex}");
                    s.url = format!("https://app.devin.ai/sessions/{hex}");
                }
            }
            sessions
        };
        if unknown {
            sessions.iter_mut().filter(|s| unknown_selected(&s.session_id)).for_each(data::apply_unknown_enums);
        }
        let ids = sessions.iter().map(|s| s.session_id.clone()).collect();
        let entries = entries_parallel(sessions);
        let mut store = write(&self.inner.store);
        for e in entries {
            store.put(e);
        }
        ids
    }

    /// Picks `n` distinct existing sessions (deterministically) and changes each meaningfully: title,
    /// status, ACUs, message counts, a PR removed and one added, analysis pieces added/changed/removed,
    /// tags; `updated_at = now()`. Returns their ids.
    pub fn update_some(&self, n: usize) -> Vec<String> {
        let now = self.now();
        let mut rng = lock(&self.inner.rng);
        let mut store = write(&self.inner.store);
        let m = store.by_key.len();
        let n = n.min(m);
        // Partial Fisher-Yates over positions in index order: deterministic for a given data set.
        let mut positions: Vec<usize> = (0..m).collect();
        for i in 0..n {
            let j = i + rng.below(m - i);
            positions.swap(i, j);
        }
        let ids: Vec<String> = {
            let keys: Vec<&Key> = store.by_key.keys().collect();
            positions[..n].iter().map(|p| keys[*p].1.clone()).collect()
        };
        for id in &ids {
            let Some(entry) = store.get(id) else { continue };
            let mut s = entry.session.clone();
            data::mutate(&mut rng, &mut s);
            s.updated_at = now;
            store.put(Entry::new(s));
        }
        ids
    }

    /// Deletes a session upstream: it disappears from the API. False if unknown.
    pub fn remove(&self, id: &str) -> bool {
        write(&self.inner.store).remove(id).is_some()
    }

    /// Replaces the switches. Turning `unknown_enum_values` on rewrites data (see [`Switches`]).
    pub fn set_switches(&self, s: Switches) {
        let mut current = write(&self.inner.switches);
        if s.unknown_enum_values && !current.unknown_enum_values {
            self.apply_unknown_enums();
        }
        *current = s;
    }

    /// The current switches.
    pub fn switches(&self) -> Switches {
        read(&self.inner.switches).clone()
    }

    fn apply_unknown_enums(&self) {
        let now = self.now();
        let mut store = write(&self.inner.store);
        let mut ids: Vec<String> = store
            .by_key
            .values()
            .filter(|e| unknown_selected(&e.session.session_id))
            .map(|e| e.session.session_id.clone())
            .collect();
        // Make sure the action item type and at least one session are covered in any data set.
        let with_action =
            store.by_key.values().find(|e| e.session.analysis.as_ref().is_some_and(|a| !a.action_items.is_empty()));
        if let Some(e) = with_action.or_else(|| store.by_key.values().next())
            && !ids.contains(&e.session.session_id)
        {
            ids.push(e.session.session_id.clone());
        }
        for id in ids {
            let Some(entry) = store.get(&id) else {
                continue;
            };
            let mut s = entry.session.clone();
            data::apply_unknown_enums(&mut s);
            s.updated_at = now;
            store.put(Entry::new(s));
        }
    }

    /// Queues a fault: after `skip` more list requests are answered normally, the next `times` list
    /// requests get `fault`. Injections queue up behind each other: `inject(0, A, 2); inject(1, B, 1)`
    /// gives A, A, normal, B, then normal again. Every request to the list endpoint counts (401 and 422
    /// included).
    pub fn inject(&self, skip: usize, fault: Fault, times: usize) {
        let mut q = lock(&self.inner.faults);
        q.push_back(Step::Normal(skip));
        q.push_back(Step::Fault(fault, times));
    }

    /// Drops every queued fault.
    pub fn clear_faults(&self) {
        lock(&self.inner.faults).clear();
    }

    /// Takes the next step of the fault schedule for one list request.
    fn next_fault(&self) -> Option<Fault> {
        let mut q = lock(&self.inner.faults);
        loop {
            match q.front_mut()? {
                Step::Normal(0) | Step::Fault(_, 0) => {
                    q.pop_front();
                }
                Step::Normal(n) => {
                    *n -= 1;
                    return None;
                }
                Step::Fault(f, n) => {
                    *n -= 1;
                    return Some(f.clone());
                }
            }
        }
    }

    /// Every request to the list endpoint so far, in arrival order.
    pub fn requests(&self) -> Vec<RequestRecord> {
        lock(&self.inner.requests).clone()
    }

    /// Empties the request log.
    pub fn clear_requests(&self) {
        lock(&self.inner.requests).clear();
    }

    fn record(&self, r: RequestRecord) {
        lock(&self.inner.requests).push(r);
    }
}

/// The deterministic third of the sessions that `unknown_enum_values` rewrites.
fn unknown_selected(id: &str) -> bool {
    data::fnv1a(id).is_multiple_of(3)
}

/// A running server. Dropping it stops the server (open connections are closed).
#[derive(Debug)]
pub struct RunningSimulator {
    /// The bound address (the real port when bound with port 0).
    pub addr: SocketAddr,
    task: Option<tokio::task::JoinHandle<()>>,
}

impl RunningSimulator {
    /// `http://IP:PORT`; an unspecified bind address (0.0.0.0 / ::) is reported as loopback.
    pub fn base_url(&self) -> String {
        let ip = match self.addr.ip() {
            IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
            IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
            ip => ip,
        };
        format!("http://{}", SocketAddr::new(ip, self.addr.port()))
    }

    /// Stops accepting, closes every connection and waits until the server task is gone.
    pub async fn shutdown(mut self) {
        if let Some(task) = self.task.take() {
            task.abort();
            // The only expected error is the cancellation we just asked for.
            let _ = task.await;
        }
    }
}

impl Drop for RunningSimulator {
    fn drop(&mut self) {
        // Aborting the accept loop drops its JoinSet, which aborts every connection task.
        if let Some(task) = &self.task {
            task.abort();
        }
    }
}
