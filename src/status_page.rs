//! The status page `devin-etl run` serves at `/` (module `http`): what `devin-etl status` shows (the same
//! [`Several`], gathered by [`crate::status`]) plus each source's readiness, as one small HTML document for a
//! person who just deployed the sync and wants to know whether it is healthy.
//!
//! Server-rendered, no script, no external asset (the CSS is inline), readable without styles too; it refreshes
//! itself every [`REFRESH`] (`<meta http-equiv="refresh">`). A source is **FAILING** when its last finished run
//! failed or it is not ready for a reason other than never having synced (stale, a run stuck, the database); the
//! page says so in a red banner at the top and marks the source's section, row and badge.
//!
//! Every value from the database goes through [`Html::text`]: first the [`Scrubber`] (every secret of the
//! configuration becomes `[REDACTED]`: error texts are scrubbed where they are stored, this is a second line), then
//! [`escape`]. Nothing of the configuration is shown except the schema and `server.max_staleness`.

use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::alerts::Scrubber;
use crate::human;
use crate::status::{self, Readiness, Several, Status};
use crate::store::RunRow;

/// How often the page reloads itself.
pub const REFRESH: Duration = Duration::from_secs(30);

/// An error text is cut after this many characters (the whole of it is in `sync_runs.error`).
const ERROR_CHARS: usize = 2_000;

/// What the page shows.
pub struct Page<'a> {
    pub several: &'a Several,
    /// Each source's readiness, in the order of `several.sources`.
    pub readiness: &'a [Readiness],
    pub generated_at: DateTime<Utc>,
}

/// How a source is doing, as the page marks it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Health {
    Ok,
    /// Not ready yet and nothing failed: a fresh deployment before its first successful run.
    Pending,
    Failing,
}

impl Health {
    /// The CSS class (`ok`, `pending`, `failing`).
    pub fn class(self) -> &'static str {
        match self {
            Health::Ok => "ok",
            Health::Pending => "pending",
            Health::Failing => "failing",
        }
    }

    /// The badge's text.
    pub fn label(self) -> &'static str {
        match self {
            Health::Ok => "OK",
            Health::Pending => "NOT READY YET",
            Health::Failing => "FAILING",
        }
    }
}

/// A source's health and the reasons for it (empty when it is OK).
pub fn health(status: &Status, readiness: &Readiness) -> (Health, Vec<String>) {
    let mut reasons = Vec::new();
    let mut health = Health::Ok;
    if let Some(run) = status.last_finished_run().filter(|r| r.status == "failed") {
        health = Health::Failing;
        reasons.push(format!("the last run ({} run {}) failed", run.mode, run.run_id));
    }
    match readiness {
        Readiness::Ready(_) => {}
        Readiness::NotYet(reason) => {
            if health == Health::Ok {
                health = Health::Pending;
            }
            reasons.push(format!("not ready: {reason}"));
        }
        Readiness::Unready(reason) => {
            health = Health::Failing;
            reasons.push(format!("not ready: {reason}"));
        }
    }
    (health, reasons)
}

/// `text` safe in HTML text and in quoted attribute values: `&`, `<`, `>`, `"` and `'` as character references.
pub fn escape(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            c => out.push(c),
        }
    }
    out
}

/// The document being written: markup as is ([`Html::raw`]), values scrubbed and escaped ([`Html::text`]).
struct Html<'a> {
    out: String,
    scrubber: &'a Scrubber,
}

impl Html<'_> {
    fn raw(&mut self, markup: &str) -> &mut Self {
        self.out.push_str(markup);
        self
    }

    fn text(&mut self, value: &str) -> &mut Self {
        self.out.push_str(&escape(&self.scrubber.text(value)));
        self
    }

    /// `<tag class="class">value</tag>`.
    fn element(&mut self, tag: &str, class: &str, value: &str) -> &mut Self {
        if class.is_empty() {
            self.raw(&format!("<{tag}>"));
        } else {
            self.raw(&format!("<{tag} class=\"{class}\">"));
        }
        self.text(value).raw(&format!("</{tag}>"))
    }

    fn cell(&mut self, value: &str) -> &mut Self {
        self.element("td", "", value)
    }

    fn number(&mut self, value: i64) -> &mut Self {
        self.element("td", "num", &value.to_string())
    }
}

const STYLE: &str = "\
:root{color-scheme:light}\
body{font:14px/1.45 system-ui,-apple-system,'Segoe UI',Roboto,Helvetica,Arial,sans-serif;margin:0;color:#1f2328;background:#f6f8fa}\
header,main,footer{max-width:1240px;margin:0 auto;padding:0 20px}\
h1{font-size:22px;margin:18px 0 2px}h2{font-size:18px;margin:0 0 6px}\
h3{font-size:12px;margin:16px 0 6px;text-transform:uppercase;letter-spacing:.05em;color:#59636e}\
.meta{color:#59636e;margin:0 0 8px}\
.banner{padding:10px 16px;border-radius:6px;font-weight:600;font-size:15px;margin:12px 0}\
.banner.failing{background:#cf222e;color:#fff}.banner.ok{background:#1a7f37;color:#fff}\
.banner.pending{background:#9a6700;color:#fff}\
section{background:#fff;border:1px solid #d1d9e0;border-radius:6px;padding:14px 18px;margin:14px 0}\
section.failing{border:2px solid #cf222e;background:#fff8f8}section.pending{border-left:6px solid #9a6700}\
.badge{display:inline-block;padding:1px 9px;border-radius:10px;font-size:12px;font-weight:700;margin-left:8px;\
vertical-align:2px;color:#fff}\
.badge.failing,.outcome.failed{background:#cf222e}.badge.ok,.outcome.succeeded{background:#1a7f37}\
.badge.pending,.outcome.running{background:#9a6700}.outcome.aborted{background:#59636e}\
.outcome{display:inline-block;padding:0 7px;border-radius:9px;color:#fff;font-size:12px;font-weight:600}\
ul.reasons{margin:4px 0 8px;padding-left:20px;color:#a40e26;font-weight:600}\
table{border-collapse:collapse;width:100%;font-size:13px}\
th,td{text-align:left;padding:4px 8px;border-bottom:1px solid #eef1f4;vertical-align:top}\
th{color:#59636e;font-weight:600;white-space:nowrap}.num{text-align:right;font-variant-numeric:tabular-nums}\
tr.failing td,tr.failed td{background:#ffebe9}\
.error{white-space:pre-wrap;word-break:break-word;font-family:ui-monospace,SFMono-Regular,Menlo,monospace;\
font-size:12px;color:#82071e;margin:2px 0 0}\
dl{display:grid;grid-template-columns:max-content 1fr;gap:3px 18px;margin:6px 0}dt{color:#59636e}dd{margin:0}\
progress{width:180px;vertical-align:middle;margin-right:8px}.none{color:#59636e}\
footer{color:#59636e;font-size:12px;padding-bottom:24px}\
";

/// The whole page.
pub fn render(page: &Page<'_>, scrubber: &Scrubber) -> String {
    let sources = &page.several.sources;
    let healths: Vec<(Health, Vec<String>)> = sources
        .iter()
        .zip(page.readiness.iter().chain(std::iter::repeat(&Readiness::NotYet("unknown".to_owned()))))
        .map(|(s, r)| health(s, r))
        .collect();
    let failing: Vec<&str> = sources
        .iter()
        .zip(&healths)
        .filter(|(_, (h, _))| *h == Health::Failing)
        .map(|(s, _)| s.source.as_str())
        .collect();
    let pending = healths.iter().filter(|(h, _)| *h == Health::Pending).count();
    let overall = if !failing.is_empty() {
        Health::Failing
    } else if pending > 0 {
        Health::Pending
    } else {
        Health::Ok
    };
    let headline = match overall {
        Health::Failing => format!("FAILING: {} of {} sources ({})", failing.len(), sources.len(), failing.join(", ")),
        Health::Pending => format!("Not ready yet: {pending} of {} sources have not synced yet", sources.len()),
        Health::Ok => format!("All sources OK ({})", sources.len()),
    };

    let mut h = Html { out: String::with_capacity(16 * 1024), scrubber };
    h.raw("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n")
        .raw(&format!("<meta http-equiv=\"refresh\" content=\"{}\">\n", REFRESH.as_secs()))
        .raw("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>")
        .text(&format!("devin-etl status: {}", overall.label()))
        .raw("</title>\n<style>")
        .raw(STYLE)
        .raw("</style>\n</head>\n<body>\n<header>\n<h1>devin-etl status</h1>\n<p class=\"meta\">")
        .text(&format!(
            "Schema {} · generated {} · this page refreshes itself every {} · version {}",
            page.several.schema,
            page.generated_at.format("%Y-%m-%d %H:%M:%S UTC"),
            human::duration(REFRESH),
            env!("CARGO_PKG_VERSION")
        ))
        .raw("</p>\n")
        .raw(&format!("<div class=\"banner {}\" id=\"overall\">", overall.class()))
        .text(&headline)
        .raw("</div>\n</header>\n<main>\n");

    summary(&mut h, sources, &healths);
    for (status, (readiness, (health, reasons))) in sources.iter().zip(page.readiness.iter().zip(&healths)) {
        source_section(&mut h, status, readiness, *health, reasons);
    }
    tables(&mut h, page.several);
    h.raw("</main>\n<footer>")
        .text("Also: /readyz (readiness, plain text), /metrics (Prometheus), /healthz. `devin-etl status` shows the same facts in a terminal.")
        .raw("</footer>\n</body>\n</html>\n");
    h.out
}

/// The page when the status cannot be read (the database is away or too slow): the reason, scrubbed.
pub fn render_error(reason: &str, scrubber: &Scrubber) -> String {
    let mut h = Html { out: String::new(), scrubber };
    h.raw("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n")
        .raw(&format!("<meta http-equiv=\"refresh\" content=\"{}\">\n", REFRESH.as_secs()))
        .raw("<title>devin-etl status: UNAVAILABLE</title>\n<style>")
        .raw(STYLE)
        .raw("</style>\n</head>\n<body>\n<header>\n<h1>devin-etl status</h1>\n")
        .raw("<div class=\"banner failing\" id=\"overall\">FAILING: cannot read the status from the database</div>\n")
        .raw("</header>\n<main>\n<section class=\"failing\">")
        .element("p", "error", reason)
        .raw("</section>\n</main>\n</body>\n</html>\n");
    h.out
}

/// `2025-12-01 09:45:08 UTC`.
fn time(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%d %H:%M:%S UTC").to_string()
}

/// The watermark with its lag: `2025-12-01 09:45:08 UTC (5m ago)`, or why there is none.
fn watermark(s: &Status) -> String {
    match (s.watermark_time, s.lag_seconds) {
        (Some(t), Some(lag)) if lag >= 0 => {
            format!("{} ({} ago)", time(t), human::duration(Duration::from_secs(lag.unsigned_abs())))
        }
        (Some(t), Some(lag)) => format!(
            "{} ({} ahead of this machine's clock)",
            time(t),
            human::duration(Duration::from_secs(lag.unsigned_abs()))
        ),
        _ => "none yet (no walk has completed)".to_owned(),
    }
}

/// `12.3s`, or `running` while the run goes on.
fn duration_of(r: &RunRow) -> String {
    match r.finished_at {
        Some(f) => human::duration((f - r.started_at).to_std().unwrap_or_default()),
        None => "running".to_owned(),
    }
}

fn anchor(source: &str) -> String {
    let id: String = source.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect();
    format!("source-{id}")
}

/// One row per source: the overview at the top.
fn summary(h: &mut Html<'_>, sources: &[Status], healths: &[(Health, Vec<String>)]) {
    h.raw("<section id=\"summary\">\n<h2>Sources</h2>\n<table>\n<thead><tr><th>source</th><th>state</th>")
        .raw("<th>watermark (lag)</th><th>last run</th><th>backfill</th><th class=\"num\">live sessions</th>")
        .raw("</tr></thead>\n<tbody>\n");
    for (s, (health, _)) in sources.iter().zip(healths) {
        h.raw(&format!("<tr class=\"{}\"><td><a href=\"#{}\">", health.class(), anchor(&s.source)))
            .text(&s.source)
            .raw("</a></td>")
            .raw(&format!("<td><span class=\"badge {}\">{}</span></td>", health.class(), health.label()))
            .cell(&watermark(s));
        match s.runs.first() {
            Some(r) => h.cell(&format!("{} {} · started {}", r.mode, r.status, time(r.started_at))),
            None => h.cell("no runs yet"),
        };
        h.cell(&s.backfill_summary()).number(s.live_sessions).raw("</tr>\n");
    }
    h.raw("</tbody>\n</table>\n</section>\n");
}

fn source_section(h: &mut Html<'_>, s: &Status, readiness: &Readiness, health: Health, reasons: &[String]) {
    h.raw(&format!("<section class=\"source {}\" id=\"{}\">\n<h2>", health.class(), anchor(&s.source)))
        .text(&s.source)
        .raw(&format!("<span class=\"badge {}\">{}</span></h2>\n", health.class(), health.label()));
    if !reasons.is_empty() {
        h.raw("<ul class=\"reasons\">");
        for reason in reasons {
            h.element("li", "", reason);
        }
        h.raw("</ul>\n");
    }
    let ready = match readiness {
        Readiness::Ready(detail) => format!("ready: {detail}"),
        Readiness::NotYet(reason) | Readiness::Unready(reason) => format!("not ready: {reason}"),
    };
    h.raw("<dl>\n<dt>watermark</dt>")
        .element("dd", "", &watermark(s))
        .raw("\n<dt>readiness</dt>")
        .element("dd", "", &ready)
        .raw("\n<dt>backfill</dt><dd>");
    if let Some(p) = s.backfill_windows {
        h.raw(&format!("<progress value=\"{}\" max=\"{}\"></progress>", p.done, p.total.max(1)));
    }
    h.text(&s.backfill_summary()).raw("</dd>\n<dt>sessions</dt>").element(
        "dd",
        "",
        &format!("{} live, {} marked deleted", s.live_sessions, s.deleted_sessions),
    );
    if let Some(a) = &s.clock_anomaly {
        h.raw("\n<dt>clock</dt>").element("dd", "", &format!("last clock anomaly at {}: {}", time(a.at), a.what));
    }
    h.raw("\n</dl>\n");

    h.raw(&format!("<h3>Last runs (newest first, at most {})</h3>\n", status::RECENT_RUNS));
    if s.runs.is_empty() {
        h.element("p", "none", "No runs yet.");
    } else {
        h.raw("<table class=\"runs\">\n<thead><tr><th class=\"num\">run</th><th>mode</th><th>outcome</th>")
            .raw("<th>started</th><th class=\"num\">duration</th><th class=\"num\">pages</th>")
            .raw("<th class=\"num\">sessions</th><th class=\"num\">requests</th><th class=\"num\">retries</th>")
            .raw("<th>error</th></tr></thead>\n<tbody>\n");
        for r in &s.runs {
            let status = match r.status.as_str() {
                known @ ("succeeded" | "failed" | "running" | "aborted") => known,
                _ => "other",
            };
            h.raw(&format!("<tr class=\"{status}\">"))
                .number(r.run_id)
                .cell(&r.mode)
                .raw(&format!("<td><span class=\"outcome {status}\">"))
                .text(&r.status)
                .raw("</span></td>")
                .cell(&time(r.started_at))
                .element("td", "num", &duration_of(r))
                .number(r.pages)
                .number(r.sessions_upserted)
                .number(r.requests)
                .number(r.retries)
                .raw("<td>");
            if let Some(e) = &r.error {
                let mut shown: String = e.chars().take(ERROR_CHARS).collect();
                if e.chars().count() > ERROR_CHARS {
                    shown.push('…');
                }
                h.element("div", "error", &shown);
            }
            h.raw("</td></tr>\n");
        }
        h.raw("</tbody>\n</table>\n");
    }

    if !s.schema_drift.is_empty() {
        let n = s.schema_drift.len();
        h.raw("<h3>Schema drift</h3>\n<p class=\"meta\">")
            .text(&format!(
                "{n} entr{} (the newest {} here; `devin-etl drift` lists them all)",
                if n == 1 { "y" } else { "ies" },
                n.min(status::STATUS_DRIFT_ROWS)
            ))
            .raw("</p>\n<table>\n<thead><tr><th>kind</th><th>path</th><th>value</th><th class=\"num\">times seen</th>")
            .raw("<th>first seen</th><th>last seen</th></tr></thead>\n<tbody>\n");
        for d in s.schema_drift.iter().take(status::STATUS_DRIFT_ROWS) {
            h.raw("<tr>")
                .cell(&d.kind)
                .cell(&d.path)
                .cell(&d.value.chars().take(120).collect::<String>())
                .number(d.times_seen)
                .cell(&time(d.first_seen))
                .cell(&time(d.last_seen))
                .raw("</tr>\n");
        }
        h.raw("</tbody>\n</table>\n");
    }

    if !s.alerts.is_empty() {
        h.raw("<h3>Alerts (open or not yet delivered)</h3>\n<table>\n<thead><tr><th>state</th><th>alert</th>")
            .raw("<th>since</th><th>delivery</th><th>summary</th></tr></thead>\n<tbody>\n");
        for a in &s.alerts {
            h.raw("<tr>")
                .cell(status::alert_state(a))
                .cell(&a.alert_key)
                .cell(&time(a.opened_at))
                .cell(&status::alert_delivery(a, 300))
                .cell(&a.summary)
                .raw("</tr>\n");
        }
        h.raw("</tbody>\n</table>\n");
    }
    h.raw("</section>\n");
}

fn tables(h: &mut Html<'_>, several: &Several) {
    h.raw("<section id=\"tables\">\n<h2>Rows per table</h2>\n<table>\n<thead><tr><th>table</th>")
        .raw("<th class=\"num\">rows</th></tr></thead>\n<tbody>\n");
    for t in &several.tables {
        h.raw("<tr>").cell(t.table).number(t.rows).raw("</tr>\n");
    }
    h.raw("</tbody>\n</table>\n</section>\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn escape_replaces_the_five_characters_that_matter_and_nothing_else() {
        assert_eq!(
            escape(r#"<a href="x" onclick='y'>&amp;</a>"#),
            "&lt;a href=&quot;x&quot; onclick=&#39;y&#39;&gt;&amp;amp;&lt;/a&gt;"
        );
        assert_eq!(escape("plain text, ünïcödé — 100%"), "plain text, ünïcödé — 100%");
        assert_eq!(escape(""), "");
        // Escaping twice shows the first escape literally: values are escaped once, at the end.
        assert_eq!(escape(&escape("<")), "&amp;lt;");
    }

    #[test]
    fn values_are_scrubbed_then_escaped() {
        let scrubber = Scrubber::new(["cog_s3cret<&>".to_owned()]);
        let mut h = Html { out: String::new(), scrubber: &scrubber };
        h.text("token cog_s3cret<&> refused <script>alert(1)</script>");
        assert_eq!(h.out, "token [REDACTED] refused &lt;script&gt;alert(1)&lt;/script&gt;");
    }

    #[test]
    fn anchors_are_plain_identifiers() {
        assert_eq!(anchor("acme-eu"), "source-acme-eu");
        assert_eq!(anchor("a\"b c<"), "source-a_b_c_");
    }
}
