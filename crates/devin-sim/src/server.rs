//! The simulator's HTTP side: a small HTTP/1.1 server on tokio, the list endpoint and the control endpoints.
//!
//! Why not axum/hyper: hyper always adds its own `Date` header unless its connection builder is told
//! otherwise, and `axum::serve` does not expose that builder. The simulator must be able to send no
//! `Date` at all ([`super::Switches::omit_date`]), and to cut a connection at an exact byte
//! ([`super::Fault::TruncatedBody`], [`super::Fault::DropConnection`]); owning the (tiny) HTTP/1.1
//! framing makes all three exact. Requests are `GET`/`POST` without bodies of interest, responses
//! always carry `Content-Length`, connections are kept alive.

use std::borrow::Cow;
use std::ops::Bound;
use std::time::Duration;

use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

use super::{Entry, Fault, Key, RequestRecord, Simulator, Store, Switches, data, lock, read};
use devin_api_model::{SessionInsights, known};

/// The one API endpoint the simulator implements.
pub(super) const LIST_PATH: &str = "/v3/enterprise/sessions/insights";
const MAX_HEAD: usize = 64 * 1024;
const MAX_BODY: usize = 1024 * 1024;
const DEFAULT_FIRST: usize = 100;
const MAX_FIRST: i64 = 200;

/// Accepts connections until the task is aborted; aborting drops the `JoinSet`, which aborts every
/// connection task too.
pub(super) async fn run(sim: Simulator, listener: TcpListener) {
    let mut conns = tokio::task::JoinSet::new();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    // Small responses (errors, short pages) should not wait for Nagle.
                    let _ = stream.set_nodelay(true);
                    conns.spawn(connection(sim.clone(), stream));
                }
                Err(e) => {
                    // E.g. out of file descriptors: back off instead of spinning.
                    tracing::warn!(error = %e, "simulator: accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// A parsed request head.
struct Request {
    method: String,
    target: String,
    version_11: bool,
    headers: Vec<(String, String)>,
}

impl Request {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn keep_alive(&self) -> bool {
        match self.header("connection").map(str::to_ascii_lowercase) {
            Some(c) if c.contains("close") => false,
            Some(c) if c.contains("keep-alive") => true,
            _ => self.version_11,
        }
    }

    /// `(path, query)`; an absolute-form target (`http://host/path?q`) is reduced to its path.
    fn path_and_query(&self) -> (&str, &str) {
        let mut t = self.target.as_str();
        if let Some(rest) = t.strip_prefix("http://").or_else(|| t.strip_prefix("https://")) {
            t = rest.find('/').map_or("/", |i| &rest[i..]);
        }
        match t.split_once('?') {
            Some((p, q)) => (p, q),
            None => (t, ""),
        }
    }
}

fn parse_head(head: &[u8]) -> Option<Request> {
    let text = std::str::from_utf8(head).ok()?;
    let mut lines = text.split("\r\n");
    let mut parts = lines.next()?.split(' ');
    let method = parts.next()?.to_owned();
    let target = parts.next()?.to_owned();
    let version = parts.next()?;
    if !version.starts_with("HTTP/1.") || method.is_empty() || target.is_empty() {
        return None;
    }
    let headers = lines
        .filter(|l| !l.is_empty())
        .map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().to_owned()))
        })
        .collect::<Option<Vec<_>>>()?;
    Some(Request { method, target, version_11: version == "HTTP/1.1", headers })
}

/// How the response leaves the socket.
enum Delivery {
    Full,
    /// Head with the full `Content-Length`, half the body, then close.
    Truncated,
    /// Close without writing anything.
    Dropped,
}

struct Reply {
    status: u16,
    body: Vec<u8>,
    headers: Vec<(&'static str, String)>,
    /// Unix seconds for the `Date` header; `None` sends none.
    date: Option<i64>,
    delivery: Delivery,
}

impl Reply {
    fn json(status: u16, body: Vec<u8>) -> Reply {
        Reply { status, body, headers: Vec::new(), date: None, delivery: Delivery::Full }
    }

    fn detail(status: u16, detail: &str) -> Reply {
        Reply::json(status, json!({ "detail": detail }).to_string().into_bytes())
    }
}

fn reason(status: u16) -> &'static str {
    match status {
        200 => "OK",
        400 => "Bad Request",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        405 => "Method Not Allowed",
        413 => "Content Too Large",
        422 => "Unprocessable Entity",
        429 => "Too Many Requests",
        431 => "Request Header Fields Too Large",
        500 => "Internal Server Error",
        501 => "Not Implemented",
        502 => "Bad Gateway",
        503 => "Service Unavailable",
        504 => "Gateway Timeout",
        _ => "Status",
    }
}

/// RFC 1123 date, e.g. `Sun, 29 Nov 2026 04:08:18 GMT`.
pub(super) fn http_date(t: i64) -> Option<String> {
    chrono::DateTime::from_timestamp(t, 0).map(|d| d.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
}

/// Writes the reply; `Ok(false)` means the connection must be closed.
async fn write_reply(stream: &mut TcpStream, reply: Reply, keep_alive: bool) -> std::io::Result<bool> {
    if let Delivery::Dropped = reply.delivery {
        return Ok(false);
    }
    let mut head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        reply.status,
        reason(reply.status),
        reply.body.len()
    );
    if let Some(date) = reply.date.and_then(http_date) {
        head.push_str(&format!("date: {date}\r\n"));
    }
    for (k, v) in &reply.headers {
        head.push_str(&format!("{k}: {v}\r\n"));
    }
    let truncated = matches!(reply.delivery, Delivery::Truncated);
    if !keep_alive || truncated {
        head.push_str("connection: close\r\n");
    }
    head.push_str("\r\n");
    let body = if truncated { &reply.body[..reply.body.len() / 2] } else { &reply.body[..] };
    if body.len() < 16 * 1024 {
        // One write (one segment) for small responses.
        let mut all = head.into_bytes();
        all.extend_from_slice(body);
        stream.write_all(&all).await?;
    } else {
        stream.write_all(head.as_bytes()).await?;
        stream.write_all(body).await?;
    }
    stream.flush().await?;
    if truncated {
        // FIN after half the promised bytes: the client's body stream ends in an error.
        let _ = stream.shutdown().await;
        return Ok(false);
    }
    Ok(keep_alive)
}

async fn connection(sim: Simulator, mut stream: TcpStream) {
    let mut buf: Vec<u8> = Vec::with_capacity(4096);
    let mut chunk = [0u8; 8192];
    loop {
        let head_len = loop {
            if let Some(i) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                break i + 4;
            }
            if buf.len() > MAX_HEAD {
                let _ = write_reply(&mut stream, Reply::detail(431, "Request header too large"), false).await;
                return;
            }
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        };
        let Some(req) = parse_head(&buf[..head_len]) else {
            let _ = write_reply(&mut stream, Reply::detail(400, "Bad request"), false).await;
            return;
        };
        if req.header("transfer-encoding").is_some() {
            let _ =
                write_reply(&mut stream, Reply::detail(501, "Chunked request bodies are not supported"), false).await;
            return;
        }
        let body_len = match req.header("content-length").map(str::parse::<usize>) {
            None => 0,
            Some(Ok(n)) if n <= MAX_BODY => n,
            Some(Ok(_)) => {
                let _ = write_reply(&mut stream, Reply::detail(413, "Request body too large"), false).await;
                return;
            }
            Some(Err(_)) => {
                let _ = write_reply(&mut stream, Reply::detail(400, "Bad Content-Length"), false).await;
                return;
            }
        };
        // Request bodies are not used by any endpoint: read and discard.
        while buf.len() < head_len + body_len {
            match stream.read(&mut chunk).await {
                Ok(0) | Err(_) => return,
                Ok(n) => buf.extend_from_slice(&chunk[..n]),
            }
        }
        buf.drain(..head_len + body_len);
        let keep_alive = req.keep_alive();
        let reply = handle(&sim, &req).await;
        match write_reply(&mut stream, reply, keep_alive).await {
            Ok(true) => {}
            Ok(false) | Err(_) => return,
        }
    }
}

async fn handle(sim: &Simulator, req: &Request) -> Reply {
    let (path, query) = req.path_and_query();
    let method = req.method.as_str();
    let mut reply = match (path, method) {
        (LIST_PATH, "GET") => return list(sim, req).await,
        ("/_sim/create", "POST") | ("/_sim/update", "POST") => {
            let count = match control_int(query, "count", 1) {
                Ok(n) => usize::try_from(n).unwrap_or(0),
                Err(r) => return r,
            };
            let late = match control_int(query, "late", 0) {
                Ok(n) => n != 0,
                Err(r) => return r,
            };
            let creating = path == "/_sim/create";
            let s = sim.clone();
            // Large batches take a while (generation + serialization): keep them off the async workers.
            let ids = tokio::task::spawn_blocking(move || match (creating, late) {
                (true, true) => s.create_late(count),
                (true, false) => s.create(count),
                (false, _) => s.update_some(count),
            })
            .await
            .unwrap_or_default();
            let key = if creating { "created" } else { "updated" };
            Reply::json(200, json!({ key: ids.len(), "ids": ids, "now": sim.now() }).to_string().into_bytes())
        }
        ("/_sim/advance", "POST") => match control_int(query, "secs", 0) {
            Ok(secs) => {
                sim.advance(secs);
                Reply::json(200, json!({ "now": sim.now() }).to_string().into_bytes())
            }
            Err(r) => return r,
        },
        ("/_sim/stats", "GET") => {
            let body = json!({
                "sessions": sim.len(),
                "requests": lock(&sim.inner.requests).len(),
                "late_pending": sim.late_pending(),
                "now": sim.now(),
            });
            Reply::json(200, body.to_string().into_bytes())
        }
        (LIST_PATH | "/_sim/create" | "/_sim/update" | "/_sim/advance" | "/_sim/stats", _) => {
            Reply::detail(405, "Method Not Allowed")
        }
        _ => Reply::detail(404, "Not Found"),
    };
    reply.date = Some(sim.now());
    reply
}

/// An integer query parameter of a control endpoint, with a default when absent.
fn control_int(query: &str, name: &str, default: i64) -> Result<i64, Reply> {
    let value = url::form_urlencoded::parse(query.as_bytes()).filter(|(k, _)| k == name).last();
    match value {
        None => Ok(default),
        Some((_, v)) => v.trim().parse::<i64>().map_err(|_| {
            let detail = vec![validation_error(name, None, "int_parsing", INT_MSG, &v, None)];
            Reply::json(422, json!({ "detail": detail }).to_string().into_bytes())
        }),
    }
}

/// The list endpoint: fault schedule, auth, validation, page.
async fn list(sim: &Simulator, req: &Request) -> Reply {
    // With a real clock, time moves without `advance`: what is due by now has arrived.
    sim.deliver_late();
    let fault = sim.next_fault();
    let switches = sim.switches();
    let malformed = matches!(fault, Some(Fault::MalformedItem));
    let (mut reply, mut items) = list_reply(sim, req, &switches, malformed);
    let mut recorded_status = reply.status;
    match &fault {
        Some(Fault::Status { code, retry_after }) => {
            reply = Reply::detail(*code, "Simulated fault");
            if let Some(ra) = retry_after {
                reply.headers.push(("retry-after", ra.clone()));
            }
            recorded_status = *code;
            items = 0;
        }
        Some(Fault::TruncatedBody) => reply.delivery = Delivery::Truncated,
        Some(Fault::DropConnection) => {
            reply.delivery = Delivery::Dropped;
            recorded_status = 0;
        }
        Some(Fault::InvalidJson) => {
            reply = Reply::json(200, b"{\"items\": [".to_vec());
            recorded_status = 200;
            items = 0;
        }
        Some(Fault::Slow(_) | Fault::MalformedItem | Fault::SkewedDate(_)) | None => {}
    }
    sim.record(RequestRecord {
        path_and_query: req.target.clone(),
        status: recorded_status,
        items,
        fault: fault.as_ref().map(Fault::name),
    });
    if let Some(Fault::Slow(d)) = fault {
        tokio::time::sleep(d).await;
    }
    // Stamped when the response leaves, like a real server (after a slow fault's delay).
    let skew = if let Some(Fault::SkewedDate(s)) = fault { s } else { 0 };
    reply.date = if switches.omit_date { None } else { Some(sim.now() + skew) };
    reply
}

fn list_reply(sim: &Simulator, req: &Request, switches: &Switches, malformed: bool) -> (Reply, usize) {
    if let Some(r) = check_auth(req, sim.token()) {
        return (r, 0);
    }
    let (_, query) = req.path_and_query();
    let q = match parse_list_query(query) {
        Ok(q) => q,
        Err(detail) => {
            return (Reply::json(422, json!({ "detail": detail }).to_string().into_bytes()), 0);
        }
    };
    let (body, items) = page(sim, &q, switches, malformed);
    (Reply::json(200, body), items)
}

fn check_auth(req: &Request, token: &str) -> Option<Reply> {
    let unauthorized = |detail: &str| {
        let mut r = Reply::detail(401, detail);
        r.headers.push(("www-authenticate", "Bearer".to_owned()));
        Some(r)
    };
    let Some(value) = req.header("authorization") else {
        return unauthorized("Not authenticated");
    };
    match value.split_once(' ') {
        Some((scheme, given)) if scheme.eq_ignore_ascii_case("bearer") && given.trim() == token => None,
        Some((scheme, _)) if scheme.eq_ignore_ascii_case("bearer") => unauthorized("Invalid or expired token"),
        _ => unauthorized("Not authenticated"),
    }
}

// ---------------------------------------------------------------------------------------------------
// Query parameters

/// An opaque keyset cursor: hex of `v1:<tag>:<created_at>:<session_id>` (or `v1:<tag>:-` for "the top").
/// Tag `p` is a normal cursor; `e` marks the cursor of an artificial empty page (switch `empty_pages`),
/// so that cursor differs from the one before it while pointing at the same position.
#[derive(Debug, Clone, PartialEq)]
pub(super) struct Cursor {
    pub(super) empty_marker: bool,
    pub(super) pos: Option<Key>,
}

impl Cursor {
    pub(super) fn encode(&self) -> String {
        let tag = if self.empty_marker { 'e' } else { 'p' };
        let payload = match &self.pos {
            Some((c, id)) => format!("v1:{tag}:{c}:{id}"),
            None => format!("v1:{tag}:-"),
        };
        payload.bytes().map(|b| format!("{b:02x}")).collect()
    }

    pub(super) fn decode(s: &str) -> Option<Cursor> {
        if s.is_empty() || !s.len().is_multiple_of(2) {
            return None;
        }
        let bytes = (0..s.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(s.get(i..i + 2)?, 16).ok())
            .collect::<Option<Vec<u8>>>()?;
        let text = String::from_utf8(bytes).ok()?;
        let rest = text.strip_prefix("v1:")?;
        let (tag, rest) = rest.split_once(':')?;
        let empty_marker = match tag {
            "p" => false,
            "e" => true,
            _ => return None,
        };
        let pos = if rest == "-" {
            None
        } else {
            let (c, id) = rest.split_once(':')?;
            Some((c.parse().ok()?, id.to_owned()))
        };
        Some(Cursor { empty_marker, pos })
    }
}

/// Filters of the list endpoint. `None` = not given.
#[derive(Debug, Clone, Default, PartialEq)]
struct Filters {
    session_ids: Option<Vec<String>>,
    created_after: Option<i64>,
    created_before: Option<i64>,
    updated_after: Option<i64>,
    updated_before: Option<i64>,
    tags: Option<Vec<String>>,
    user_ids: Option<Vec<String>>,
    service_user_ids: Option<Vec<String>>,
    org_ids: Option<Vec<String>>,
    origins: Option<Vec<String>>,
    category: Option<String>,
    playbook_id: Option<String>,
}

fn any_of(list: &Option<Vec<String>>, value: Option<&String>) -> bool {
    list.as_ref().is_none_or(|l| value.is_some_and(|v| l.contains(v)))
}

impl Filters {
    fn is_empty(&self) -> bool {
        *self == Filters::default()
    }

    /// Everything except the `created_*` window, which [`Filters::bounds`] handles.
    fn matches(&self, s: &SessionInsights) -> bool {
        self.updated_after.is_none_or(|t| s.updated_at > t)
            && self.updated_before.is_none_or(|t| s.updated_at < t)
            && self.tags.as_ref().is_none_or(|tags| s.tags.iter().any(|t| tags.contains(t)))
            && any_of(&self.user_ids, s.user_id.as_ref())
            && any_of(&self.service_user_ids, s.service_user_id.as_ref())
            && any_of(&self.org_ids, Some(&s.org_id))
            && any_of(&self.origins, s.origin.as_ref())
            && self.category.as_ref().is_none_or(|c| s.category.as_ref() == Some(c))
            && self.playbook_id.as_ref().is_none_or(|p| s.playbook_id.as_ref() == Some(p))
    }

    /// Index range `[lo, hi)` of the `created_*` window, further limited to keys before `before`
    /// (the cursor position; the API order is descending). `None` when the range is empty.
    fn bounds(&self, before: Option<&Key>) -> Option<(Bound<Key>, Bound<Key>)> {
        let lo = self.created_after.map(|a| (a.saturating_add(1), String::new()));
        let window_hi = self.created_before.map(|b| (b, String::new()));
        let hi = match (window_hi, before) {
            (Some(w), Some(c)) => Some(if *c < w { c.clone() } else { w }),
            (w, c) => w.or_else(|| c.cloned()),
        };
        if let (Some(l), Some(h)) = (&lo, &hi)
            && l >= h
        {
            return None;
        }
        Some((lo.map_or(Bound::Unbounded, Bound::Included), hi.map_or(Bound::Unbounded, Bound::Excluded)))
    }

    fn admits(&self, key: &Key, s: &SessionInsights) -> bool {
        self.created_after.is_none_or(|a| key.0 > a) && self.created_before.is_none_or(|b| key.0 < b) && self.matches(s)
    }
}

pub(super) struct ListQuery {
    first: usize,
    after: Option<Cursor>,
    /// The cursor exactly as sent (echoed back by the `stuck_cursor` switch).
    after_raw: Option<String>,
    filters: Filters,
}

const INT_MSG: &str = "Input should be a valid integer, unable to parse string as an integer";

fn validation_error(name: &str, index: Option<usize>, kind: &str, msg: &str, input: &str, ctx: Option<Value>) -> Value {
    let mut loc = vec![json!("query"), json!(name)];
    if let Some(i) = index {
        loc.push(json!(i));
    }
    let mut e = json!({ "type": kind, "loc": loc, "msg": msg, "input": input });
    if let (Some(ctx), Some(o)) = (ctx, e.as_object_mut()) {
        o.insert("ctx".to_owned(), ctx);
    }
    e
}

/// Pydantic's wording for an enum mismatch: `Input should be 'a', 'b' or 'c'`.
fn enum_msg(values: &[&str]) -> String {
    let quoted: Vec<String> = values.iter().map(|v| format!("'{v}'")).collect();
    match quoted.split_last() {
        Some((last, rest)) if !rest.is_empty() => {
            format!("Input should be {} or {last}", rest.join(", "))
        }
        Some((last, _)) => format!("Input should be {last}"),
        None => "Input should be a valid value".to_owned(),
    }
}

/// Parses the raw query string (array parameters are repeated keys). Errors are FastAPI-shaped
/// `detail` entries; unknown parameters are ignored.
fn parse_list_query(query: &str) -> Result<ListQuery, Vec<Value>> {
    let mut q = ListQuery { first: DEFAULT_FIRST, after: None, after_raw: None, filters: Filters::default() };
    let mut errors = Vec::new();
    let f = &mut q.filters;
    for (key, value) in url::form_urlencoded::parse(query.as_bytes()) {
        let int = |errors: &mut Vec<Value>| match value.trim().parse::<i64>() {
            Ok(n) => Some(n),
            Err(_) => {
                errors.push(validation_error(&key, None, "int_parsing", INT_MSG, &value, None));
                None
            }
        };
        match &*key {
            "first" => match int(&mut errors) {
                Some(n) if n < 1 => errors.push(validation_error(
                    &key,
                    None,
                    "greater_than_equal",
                    "Input should be greater than or equal to 1",
                    &value,
                    Some(json!({ "ge": 1 })),
                )),
                Some(n) if n > MAX_FIRST => errors.push(validation_error(
                    &key,
                    None,
                    "less_than_equal",
                    &format!("Input should be less than or equal to {MAX_FIRST}"),
                    &value,
                    Some(json!({ "le": MAX_FIRST })),
                )),
                // In 1..=200 here, so the conversion cannot fail.
                Some(n) => q.first = usize::try_from(n).unwrap_or(DEFAULT_FIRST),
                None => {}
            },
            "after" => match Cursor::decode(&value) {
                Some(c) => {
                    q.after = Some(c);
                    q.after_raw = Some(value.into_owned());
                }
                None => errors.push(validation_error(
                    &key,
                    None,
                    "value_error",
                    "Value error, invalid cursor",
                    &value,
                    Some(json!({ "error": {} })),
                )),
            },
            "created_after" => f.created_after = int(&mut errors).or(f.created_after),
            "created_before" => f.created_before = int(&mut errors).or(f.created_before),
            "updated_after" => f.updated_after = int(&mut errors).or(f.updated_after),
            "updated_before" => f.updated_before = int(&mut errors).or(f.updated_before),
            "session_ids" => f.session_ids.get_or_insert_with(Vec::new).push(value.into_owned()),
            "tags" => f.tags.get_or_insert_with(Vec::new).push(value.into_owned()),
            "user_ids" => f.user_ids.get_or_insert_with(Vec::new).push(value.into_owned()),
            "service_user_ids" => f.service_user_ids.get_or_insert_with(Vec::new).push(value.into_owned()),
            "org_ids" => f.org_ids.get_or_insert_with(Vec::new).push(value.into_owned()),
            "origins" => {
                let list = f.origins.get_or_insert_with(Vec::new);
                if known::ORIGIN.contains(&&*value) {
                    list.push(value.into_owned());
                } else {
                    let msg = enum_msg(known::ORIGIN);
                    let ctx = json!({ "expected": msg.trim_start_matches("Input should be ") });
                    errors.push(validation_error(&key, Some(list.len()), "enum", &msg, &value, Some(ctx)));
                    // Keep indices of later entries aligned with the query.
                    list.push(String::new());
                }
            }
            "category" => {
                if known::CATEGORY.contains(&&*value) {
                    f.category = Some(value.into_owned());
                } else {
                    let msg = enum_msg(known::CATEGORY);
                    let ctx = json!({ "expected": msg.trim_start_matches("Input should be ") });
                    errors.push(validation_error(&key, None, "enum", &msg, &value, Some(ctx)));
                }
            }
            "playbook_id" => f.playbook_id = Some(value.into_owned()),
            "include_deleted_orgs" => {
                // Pydantic's lax booleans. There are no deleted orgs in the simulator, so the value is unused.
                const BOOLS: &[&str] = &["0", "1", "true", "false", "t", "f", "yes", "no", "y", "n", "on", "off"];
                if !BOOLS.contains(&value.to_ascii_lowercase().as_str()) {
                    errors.push(validation_error(
                        &key,
                        None,
                        "bool_parsing",
                        "Input should be a valid boolean, unable to interpret input",
                        &value,
                        None,
                    ));
                }
            }
            // Known to the spec but without an effect here (no schedules in the simulator); others unknown.
            _ => {}
        }
    }
    if errors.is_empty() { Ok(q) } else { Err(errors) }
}

// ---------------------------------------------------------------------------------------------------
// Pages

/// Up to `limit` matching keys after the cursor position, in API order (newest first).
fn select<'a>(store: &'a Store, f: &Filters, before: Option<&Key>, limit: usize) -> Vec<&'a Key> {
    let Some(range) = f.bounds(before) else {
        return Vec::new();
    };
    if let Some(ids) = &f.session_ids {
        // Look the ids up instead of scanning the index.
        let mut keys: Vec<&Key> = ids
            .iter()
            .filter_map(|id| store.key_of(id))
            .filter_map(|k| store.by_key.get_key_value(&k))
            .filter(|(k, e)| std::ops::RangeBounds::contains(&range, *k) && f.matches(&e.session))
            .map(|(k, _)| k)
            .collect();
        keys.sort_unstable_by(|a, b| b.cmp(a));
        keys.dedup();
        keys.truncate(limit);
        return keys;
    }
    store.by_key.range(range).rev().filter(|(_, e)| f.matches(&e.session)).take(limit).map(|(k, _)| k).collect()
}

/// Number of matches of `f`; cached per filter set and store version (every page of a walk asks again).
fn total(sim: &Simulator, store: &Store, f: &Filters) -> usize {
    if f.is_empty() {
        return store.by_key.len();
    }
    let key = format!("{f:?}");
    let mut cache = lock(&sim.inner.totals);
    if let Some((_, _, n)) = cache.iter().find(|(k, v, _)| *k == key && *v == store.version) {
        return *n;
    }
    let n = select(store, f, None, usize::MAX).len();
    cache.retain(|(_, v, _)| *v == store.version);
    if cache.len() >= 32 {
        cache.remove(0);
    }
    cache.push((key, store.version, n));
    n
}

/// The JSON of one served item: the cached bytes, or re-encoded when it must be altered.
fn item_bytes<'e>(e: &'e Entry, sw: &Switches, drop_id: bool) -> Cow<'e, [u8]> {
    if !sw.extra_fields && !sw.numbers_as_strings && !drop_id {
        return Cow::Borrowed(&e.json);
    }
    let mut v = data::to_value(&e.session);
    if sw.extra_fields {
        data::add_extra_fields(&mut v);
    }
    if sw.numbers_as_strings
        && let Some(o) = v.as_object_mut()
    {
        o.insert("acus_consumed".to_owned(), serde_json::Value::String(e.session.acus_consumed.to_string()));
    }
    if drop_id && let Some(o) = v.as_object_mut() {
        o.remove("session_id");
    }
    Cow::Owned(serde_json::to_vec(&v).unwrap_or_default())
}

/// Builds a page body; returns it with its number of items.
fn page(sim: &Simulator, q: &ListQuery, sw: &Switches, malformed: bool) -> (Vec<u8>, usize) {
    let mut filters = if sw.ignore_filters { Filters::default() } else { q.filters.clone() };
    if sw.updated_after_inclusive {
        // Whole seconds: `>= t` is `> t - 1`.
        filters.updated_after = filters.updated_after.map(|t| t - 1);
    }
    let store = read(&sim.inner.store);
    let total = (!sw.omit_total).then(|| total(sim, &store, &filters));
    let before = q.after.as_ref().and_then(|c| c.pos.clone());

    if sw.empty_pages && q.after.as_ref().is_some_and(|c| !c.empty_marker) {
        let cursor = Cursor { empty_marker: true, pos: before };
        return (envelope(&[], Some(cursor.encode()), true, total, sw.extra_fields), 0);
    }

    let mut keys = select(&store, &filters, before.as_ref(), q.first + 1);
    let has_next = keys.len() > q.first;
    keys.truncate(q.first);
    let last = keys.last().map(|k| (*k).clone());
    let (end_cursor, has_next_page) = if sw.stuck_cursor {
        let c = q.after_raw.clone().unwrap_or_else(|| Cursor { empty_marker: false, pos: last }.encode());
        (Some(c), true)
    } else if has_next {
        (Some(Cursor { empty_marker: false, pos: last }.encode()), true)
    } else {
        (None, false)
    };
    if sw.repeat_items
        && let Some(pos) = &before
        && let Some((k, e)) = store.by_key.get_key_value(pos)
        && filters.admits(k, &e.session)
    {
        keys.insert(0, k);
    }

    let items: Vec<Cow<'_, [u8]>> = keys
        .iter()
        .enumerate()
        .filter_map(|(i, k)| store.by_key.get(*k).map(|e| item_bytes(e, sw, malformed && i == 0)))
        .collect();
    let n = items.len();
    (envelope(&items, end_cursor, has_next_page, total, sw.extra_fields), n)
}

fn envelope(
    items: &[Cow<'_, [u8]>],
    end_cursor: Option<String>,
    has_next_page: bool,
    total: Option<usize>,
    extra_fields: bool,
) -> Vec<u8> {
    let size: usize = items.iter().map(|i| i.len() + 1).sum();
    let mut out = Vec::with_capacity(size + 256);
    out.extend_from_slice(b"{\"items\":[");
    for (i, item) in items.iter().enumerate() {
        if i > 0 {
            out.push(b',');
        }
        out.extend_from_slice(item);
    }
    out.extend_from_slice(b"],\"end_cursor\":");
    match end_cursor {
        // Cursors are hex, but encode properly anyway.
        Some(c) => out.extend_from_slice(Value::String(c).to_string().as_bytes()),
        None => out.extend_from_slice(b"null"),
    }
    out.extend_from_slice(if has_next_page { b",\"has_next_page\":true" } else { b",\"has_next_page\":false" });
    if let Some(t) = total {
        out.extend_from_slice(format!(",\"total\":{t}").as_bytes());
    }
    if extra_fields {
        out.extend_from_slice(b",\"x_envelope_extra\":{\"nested\":[1,\"two\"]}");
    }
    out.push(b'}');
    out
}

#[cfg(test)]
pub(super) fn parse_list_query_for_test(q: &str) -> ListQuery {
    parse_list_query(q).unwrap_or_else(|e| panic!("{e:?}"))
}

#[cfg(test)]
pub(super) fn page_for_test(sim: &Simulator, q: &ListQuery, sw: &Switches) -> (Vec<u8>, usize) {
    page(sim, q, sw, false)
}
