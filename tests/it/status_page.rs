//! Issue 15, item 3: the status page `devin-etl run` serves at `/` — the facts after a sync (watermark, runs, rows
//! per table, backfill windows), a failing source marked, no secret shown, hostile text escaped, a slow database
//! answered with 503 in bounded time — and, when Chromium is installed (`scripts/install-test-tools`), what a person
//! sees: the page of a running daemon with a failing source, rendered by headless Chromium, with a screenshot left in
//! `target/test-artifacts/status-page.png`.
//!
//! Without `chromium` the browser test prints a loud SKIPPED notice; with `DEVIN_ETL_REQUIRE_CHROMIUM=1` (as in
//! `.ci/run`) it fails instead.

use crate::common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::TestApp;
use common::daemon::{REVOKED_TOKEN, TwoSources};
use common::logs::Logs;
use common::proxy::TcpProxy;
use devin_etl::http::{HttpState, PAGE_TIMEOUT, StatusPage, serve};
use devin_etl::settings::Settings;
use devin_etl::status::BackfillPlan;
use devin_etl::store::Store;
use devin_etl::sync::Mode;
use devin_etl::telemetry::install_metrics;
use devin_sim::Fault;
use secrecy::SecretString;
use tokio::sync::oneshot;

/// The page of `store`'s source `source`, served on a free port until dropped.
struct Served {
    base: String,
    _stop: oneshot::Sender<()>,
}

impl Served {
    async fn start(store: Store, settings: &Settings) -> Served {
        let state = HttpState {
            store,
            source: settings.sync.source.clone(),
            max_staleness: settings.server.max_staleness,
            max_run_duration: settings.server.max_run_duration,
            metrics: install_metrics().unwrap(),
            page: StatusPage::of(&settings.per_source()),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", listener.local_addr().unwrap());
        let (stop, stopped) = oneshot::channel::<()>();
        tokio::spawn(serve(listener, state, async move {
            let _ = stopped.await;
        }));
        Served { base, _stop: stop }
    }

    /// `(status, headers, body)` of `/`.
    async fn page(&self) -> (u16, reqwest::header::HeaderMap, String) {
        let client = reqwest::Client::builder().timeout(Duration::from_secs(30)).build().unwrap();
        let response = client.get(format!("{}/", self.base)).send().await.unwrap();
        let (status, headers) = (response.status().as_u16(), response.headers().clone());
        (status, headers, response.text().await.unwrap())
    }
}

/// The text of an HTML fragment as a reader sees it: tags dropped, character references of the five escaped
/// characters decoded, runs of white space as one space.
fn visible_text(html: &str) -> String {
    let mut text = String::new();
    let mut in_tag = false;
    for c in html.chars() {
        match c {
            '<' => in_tag = true,
            '>' if in_tag => {
                in_tag = false;
                text.push(' ');
            }
            c if !in_tag => text.push(c),
            _ => {}
        }
    }
    let text = text
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&quot;", "\"")
        .replace("&#39;", "'")
        .replace("&amp;", "&");
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The element whose opening tag contains `id="ID"`, up to the end of the first `</TAG>` closing it (sections are
/// not nested in the page).
fn element<'a>(html: &'a str, tag: &str, id: &str) -> &'a str {
    let marker = format!("id=\"{id}\"");
    let at = html.find(&marker).unwrap_or_else(|| panic!("no element with {marker}:\n{html}"));
    let start = html[..at].rfind(&format!("<{tag}")).unwrap();
    let end = html[at..].find(&format!("</{tag}>")).map(|e| at + e + tag.len() + 3).unwrap();
    &html[start..end]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_shows_the_watermark_the_runs_the_backfill_and_the_rows_after_a_sync() {
    let app = TestApp::spawn(45).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    app.sim.advance(60);
    app.sim.update_some(4);
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    let served = Served::start(app.store().clone(), &app.settings).await;

    let (status, headers, html) = served.page().await;
    assert_eq!(status, 200, "{html}");
    assert_eq!(headers["content-type"], "text/html; charset=utf-8");
    assert!(headers["content-security-policy"].to_str().unwrap().contains("default-src 'none'"));
    assert!(html.starts_with("<!DOCTYPE html>"), "{html}");
    assert!(html.contains("<meta http-equiv=\"refresh\" content=\"30\">"), "refreshes itself: {html}");
    assert!(!html.to_ascii_lowercase().contains("<script"), "no script: {html}");
    assert!(!html.contains("http://") && !html.contains("https://"), "no external asset, no URL at all: {html}");

    let source = &app.settings.sync.source;
    let text = visible_text(&html);
    let server_start = app.store().backfill_state(source).await.unwrap().unwrap().server_start;
    let plan = BackfillPlan::of(&app.settings.sync);
    let windows = devin_etl::sync::backfill_plan(plan.start, plan.width, server_start).len();
    assert!(windows > 3, "{windows}");
    let watermark = app.watermark().await.unwrap();
    let shown = chrono::DateTime::from_timestamp(watermark, 0).unwrap().format("%Y-%m-%d %H:%M:%S UTC").to_string();
    assert!(text.contains("All sources OK (1)"), "{text}");
    let section = visible_text(element(&html, "section", &format!("source-{source}")));
    assert!(section.starts_with(&format!("{source} OK")), "{section}");
    for expected in [
        format!("watermark {shown} ("),
        "readiness ready: last successful sync".to_owned(),
        "sessions 45 live, 0 marked deleted".to_owned(),
        format!("backfill completed — {windows} of {windows} windows done"),
    ] {
        assert!(section.contains(&expected), "{expected:?} in:\n{section}");
    }
    // Both runs, the newest first, with their figures.
    let runs: Vec<(i64, String, i64, i64)> =
        sqlx::query_as("select run_id, mode, pages, sessions_upserted from sync_runs order by run_id desc")
            .fetch_all(app.store().pool())
            .await
            .unwrap();
    assert_eq!(runs.len(), 2);
    let table = visible_text(&element(&html, "section", &format!("source-{source}"))[section_runs(&html, source)..]);
    let (incremental, backfill) = (&runs[0], &runs[1]);
    let row = |r: &(i64, String, i64, i64)| format!("{} {} succeeded", r.0, r.1);
    let (first, second) = (table.find(&row(incremental)), table.find(&row(backfill)));
    assert!(first.is_some() && second.is_some() && first < second, "newest first: {table}");
    assert!(table.contains(&format!("{} {}", backfill.2, backfill.3)), "backfill's pages and sessions: {table}");
    assert_eq!(backfill.3, 45);

    // Rows per table: every counted table with its count.
    let tables = visible_text(element(&html, "section", "tables"));
    for (name, rows) in app.store().table_counts().await.unwrap() {
        assert!(
            tables.contains(&format!(" {name} {rows} ")) || tables.ends_with(&format!(" {name} {rows}")),
            "{name} {rows}: {tables}"
        );
    }
    assert!(tables.contains(" sessions 45 "), "{tables}");
}

/// Where the runs' table of `source`'s section starts, within that section.
fn section_runs(html: &str, source: &str) -> usize {
    element(html, "section", &format!("source-{source}")).find("<table class=\"runs\"").expect("a runs table")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_source_is_marked_its_error_escaped_and_no_secret_is_shown() {
    let app = TestApp::spawn(30).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    // A real failure: the API refuses the token.
    app.sim.inject(0, Fault::Status { code: 401, retry_after: None }, 1_000);
    app.syncer.run_once(Mode::Incremental).await.expect_err("the API refuses the token");
    // And a hostile one planted as the newest run: markup, and the token itself (stored errors are scrubbed where
    // they are written; the page scrubs again).
    let token = app.sim.token().to_owned();
    let hostile = format!(
        "upstream said <script>alert('x')</script><img src=x onerror=\"alert(1)\"> & \"quoted\" for Bearer {token}"
    );
    sqlx::query(
        "insert into sync_runs (source, mode, status, started_at, finished_at, error)
         values ($1, 'incremental', 'failed', now(), now(), $2)",
    )
    .bind(&app.settings.sync.source)
    .bind(&hostile)
    .execute(app.store().pool())
    .await
    .unwrap();
    // A drift entry and an alert whose texts are hostile too.
    sqlx::query(
        "insert into schema_drift (source, path, kind, value, times_seen, example_session_id)
         values ($1, 'items[].<b>bold</b>', 'unknown_field', '</td></tr></table><h1>x</h1>', 1, 's1')",
    )
    .bind(&app.settings.sync.source)
    .execute(app.store().pool())
    .await
    .unwrap();
    sqlx::query(
        "insert into alerts (alert_key, kind, source, one_shot, summary, details)
         values ('source_failing/devin', 'source_failing', $1, false, $2, '{}')",
    )
    .bind(&app.settings.sync.source)
    .bind(format!("3 runs failed: <i>{token}</i>"))
    .execute(app.store().pool())
    .await
    .unwrap();

    let mut settings = app.settings.clone();
    settings.database.url = SecretString::from(app.db.url.replace("postgres@", "postgres:pw_in_url_7331@"));
    settings.alerts.webhook_url = Some(SecretString::from("https://hooks.example.com/services/T0/B0/xyzzy".to_owned()));
    let served = Served::start(app.store().clone(), &settings).await;
    let (status, _, html) = served.page().await;
    assert_eq!(status, 200, "{html}");

    let source = settings.sync.source.clone();
    let text = visible_text(&html);
    assert!(text.contains(&format!("FAILING: 1 of 1 sources ({source})")), "{text}");
    assert!(html.contains("<div class=\"banner failing\" id=\"overall\">"), "a red banner: {html}");
    let section = element(&html, "section", &format!("source-{source}"));
    assert!(section.starts_with("<section class=\"source failing\""), "{section}");
    assert!(visible_text(section).starts_with(&format!("{source} FAILING the last run (incremental run")), "{section}");
    assert!(section.contains("<tr class=\"failed\">"), "failed runs are marked: {section}");
    assert!(visible_text(section).contains("401"), "the real failure's error: {section}");

    // Escaped, so shown as text; nothing of it is markup.
    assert!(!html.contains("<script") && !html.contains("<img") && !html.contains("<b>") && !html.contains("<h1>x"));
    assert!(html.contains("upstream said &lt;script&gt;alert(&#39;x&#39;)&lt;/script&gt;&lt;img src=x onerror=&quot;alert(1)&quot;&gt; &amp; &quot;quoted&quot;"), "{html}");
    assert!(text.contains("items[].<b>bold</b>") && text.contains("</td></tr></table><h1>x</h1>"), "{text}");
    // No secret: the token (in the error and the alert), the database password, the webhook URL.
    for secret in [token.as_str(), "pw_in_url_7331", "hooks.example.com", "xyzzy"] {
        assert!(!html.contains(secret), "{secret} shown:\n{html}");
    }
    assert!(text.contains("for Bearer [REDACTED]") && text.contains("3 runs failed: <i>[REDACTED]</i>"), "{text}");
}

/// Current-thread runtime: the server's tasks run on the test's thread, so their warnings are captured.
#[tokio::test]
async fn a_database_that_stops_answering_gets_a_503_from_one_bounded_gathering_for_all_viewers() {
    let (logs, _guard) = Logs::capture();
    let app = TestApp::spawn(20).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    let proxy = TcpProxy::in_front_of(&app.db.url).await;
    let mut through = app.settings.clone();
    through.database.url = SecretString::from(proxy.url_for(&app.db.url));
    through.database.connect_timeout = Duration::from_secs(2);
    let store = devin_etl::app::http_store(&through).await.unwrap();
    let served = Served::start(store, &app.settings).await;
    assert_eq!(served.page().await.0, 200);

    // Past the page's reuse of its last gathering, the database goes silent: ten viewers at once.
    tokio::time::sleep(devin_etl::http::PAGE_REUSE).await;
    proxy.blackhole();
    let accepted = proxy.accepted();
    let started = Instant::now();
    let mut viewers = tokio::task::JoinSet::new();
    for _ in 0..10 {
        let base = served.base.clone();
        viewers.spawn(async move {
            let client = reqwest::Client::builder().timeout(Duration::from_secs(60)).build().unwrap();
            let response = client.get(format!("{base}/")).send().await.expect("an answer, not a hang");
            (response.status().as_u16(), response.text().await.unwrap())
        });
    }
    while let Some(answer) = viewers.join_next().await {
        let (status, html) = answer.unwrap();
        assert_eq!(status, 503, "{html}");
        let text = visible_text(&html);
        assert!(text.contains("FAILING: cannot read the status from the database"), "{text}");
        // Bounded by the pool's wait for a working connection (`database.connect_timeout`, its idle ones are
        // pinged first) or by the page's own PAGE_TIMEOUT, whichever comes first.
        let page_timeout = format!("did not answer within {}s", PAGE_TIMEOUT.as_secs());
        assert!(text.contains("pool timed out") || text.contains(&page_timeout), "{text}");
    }
    eprintln!("ten viewers of a silent database answered 503 within {:?}", started.elapsed());
    // One gathering served them all (it timed out once), on at most the pool's two connections.
    let warnings = logs.text();
    assert_eq!(warnings.matches("the status page cannot read the status").count(), 1, "{warnings}");
    assert!(proxy.accepted() - accepted <= 2, "{} connections opened", proxy.accepted() - accepted);

    // The database answers again: so does the page.
    proxy.forward();
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let (status, _, html) = served.page().await;
        if status == 200 {
            assert!(visible_text(&html).contains("All sources OK (1)"), "{html}");
            break;
        }
        assert!(Instant::now() < deadline, "the page did not recover: {html}");
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_server_listen_off_the_daemon_serves_nothing_and_still_syncs() {
    let app = TestApp::spawn(15).await;
    let log = common::child::ChildLog::new(&format!("{}-off", app.db.name));
    let mut command = common::child::devin_etl(&["run", "--backfill"], common::child::child_env(&app));
    command.env("DEVIN_ETL__SERVER__LISTEN", "off").env("DEVIN_ETL__SYNC__SCHEDULE", "0 0 0 1 1 * 2099");
    let mut daemon = log.spawn(&mut command);
    log.wait_for("server.listen is \\\"off\\\"", Duration::from_secs(30)).await;
    common::eventually("the backfill succeeds", Duration::from_secs(30), async || {
        app.store().last_success(&app.settings.sync.source).await.unwrap().is_some()
    })
    .await;
    common::child::signal(&daemon, "TERM");
    assert!(daemon.wait().await.unwrap().success(), "{}", log.tail());
    assert!(!log.text().contains("serving /healthz"), "{}", log.tail());
    app.assert_matches_truth().await;
}

/// Runs headless Chromium with `args` (a fresh profile in `profile`); fails the test unless it succeeds.
async fn chromium(chromium: &Path, profile: &Path, args: &[String]) -> std::process::Output {
    let run = tokio::process::Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--hide-scrollbars"])
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(args)
        .kill_on_drop(true)
        .output();
    let out = tokio::time::timeout(Duration::from_secs(60), run).await.expect("chromium ends within 60 s").unwrap();
    assert!(out.status.success(), "chromium {args:?}: {}\n{}", out.status, String::from_utf8_lossy(&out.stderr));
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headless_chromium_shows_the_failing_source_highlighted() {
    let test = "status_page::headless_chromium_shows_the_failing_source_highlighted";
    let Some(browser) = common::tools::required("chromium", "DEVIN_ETL_REQUIRE_CHROMIUM", test) else {
        return;
    };
    let started = Instant::now();
    let mut daemon = TwoSources::start(&[]).await;
    daemon.wait_for_runs(2).await;
    let url = format!("{}/", daemon.base_url());
    let profile = std::env::temp_dir().join(common::unique_name("devin-etl-chromium"));

    let dom = String::from_utf8(chromium(&browser, &profile, &["--dump-dom".to_owned(), url.clone()]).await.stdout)
        .expect("UTF-8");
    let text = visible_text(dom.split("</style>").nth(1).unwrap_or(&dom));
    assert!(text.contains("FAILING: 1 of 2 sources (revoked)"), "the headline names the failing source: {text}");
    assert!(dom.contains("class=\"banner failing\""), "{dom}");
    let revoked = element(&dom, "section", "source-revoked");
    assert!(revoked.contains("class=\"source failing\""), "{revoked}");
    let revoked_text = visible_text(revoked);
    for expected in [
        "revoked FAILING",
        "the last run (incremental run",
        "not ready: last successful sync 2h",
        "401",
        "sessions 0 live",
    ] {
        assert!(revoked_text.contains(expected), "{expected:?} in the failing source's section: {revoked_text}");
    }
    let good = visible_text(element(&dom, "section", "source-good"));
    assert!(good.starts_with("good OK") && good.contains("sessions 60 live") && good.contains("succeeded"), "{good}");
    for token in daemon.tokens() {
        assert!(!dom.contains(token), "a token in the page");
    }
    assert!(!dom.contains(REVOKED_TOKEN));

    let png = common::tools::artifacts_dir().join("status-page.png");
    let _ = std::fs::remove_file(&png);
    chromium(
        &browser,
        &profile,
        &[format!("--screenshot={}", png.display()), "--window-size=1280,1000".to_owned(), url],
    )
    .await;
    daemon.stop().await;
    let _ = std::fs::remove_dir_all(&profile);

    let bytes = std::fs::read(&png).expect("the screenshot was written");
    let image = decode_png(&bytes);
    assert_eq!((image.width, image.height), (1280, 1000));
    // Not blank: the red of the FAILING banner and badges covers a good part of it, and there is text (dark pixels).
    let red = image.count(|[r, g, b]| r > 180 && g < 80 && b < 80);
    let dark = image.count(|[r, g, b]| r < 90 && g < 90 && b < 90);
    assert!(red > 20_000, "the FAILING banner is red on screen: {red} red pixels");
    assert!(dark > 2_000, "text is drawn: {dark} dark pixels");
    eprintln!(
        "status page screenshot: {} ({} bytes, {red} red and {dark} dark pixels); browser test took {:?}",
        png.display(),
        bytes.len(),
        started.elapsed()
    );
}

/// An 8-bit RGB(A) picture, rows of pixels.
struct Picture {
    width: usize,
    height: usize,
    channels: usize,
    pixels: Vec<u8>,
}

impl Picture {
    fn count(&self, matches: impl Fn([u8; 3]) -> bool) -> usize {
        self.pixels.chunks(self.channels).filter(|p| matches([p[0], p[1], p[2]])).count()
    }
}

/// Decodes a non-interlaced 8-bit RGB or RGBA PNG (what Chromium writes): the chunks, zlib, the scanline filters.
fn decode_png(bytes: &[u8]) -> Picture {
    use std::io::Read as _;
    assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n", "a PNG file");
    let (mut at, mut idat) = (8, Vec::new());
    let (mut width, mut height, mut channels) = (0, 0, 0);
    while at + 8 <= bytes.len() {
        let length = u32::from_be_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        let kind = &bytes[at + 4..at + 8];
        let data = &bytes[at + 8..at + 8 + length];
        match kind {
            b"IHDR" => {
                width = u32::from_be_bytes(data[0..4].try_into().unwrap()) as usize;
                height = u32::from_be_bytes(data[4..8].try_into().unwrap()) as usize;
                assert_eq!(data[8], 8, "8 bits per channel");
                channels = match data[9] {
                    2 => 3,
                    6 => 4,
                    other => panic!("PNG colour type {other}"),
                };
                assert_eq!(data[12], 0, "not interlaced");
            }
            b"IDAT" => idat.extend_from_slice(data),
            b"IEND" => break,
            _ => {}
        }
        at += 12 + length;
    }
    let mut raw = Vec::new();
    flate2::read::ZlibDecoder::new(&idat[..]).read_to_end(&mut raw).unwrap();
    let stride = width * channels;
    assert_eq!(raw.len(), height * (stride + 1), "scanlines");
    let mut pixels = vec![0u8; height * stride];
    for y in 0..height {
        let filter = raw[y * (stride + 1)];
        let line = &raw[y * (stride + 1) + 1..(y + 1) * (stride + 1)];
        for x in 0..stride {
            let a = if x >= channels { pixels[y * stride + x - channels] as i16 } else { 0 };
            let b = if y > 0 { pixels[(y - 1) * stride + x] as i16 } else { 0 };
            let c = if x >= channels && y > 0 { pixels[(y - 1) * stride + x - channels] as i16 } else { 0 };
            let predicted = match filter {
                0 => 0,
                1 => a,
                2 => b,
                3 => (a + b) / 2,
                4 => {
                    let p = a + b - c;
                    let (pa, pb, pc) = ((p - a).abs(), (p - b).abs(), (p - c).abs());
                    if pa <= pb && pa <= pc {
                        a
                    } else if pb <= pc {
                        b
                    } else {
                        c
                    }
                }
                other => panic!("PNG filter {other}"),
            };
            pixels[y * stride + x] = line[x].wrapping_add(predicted as u8);
        }
    }
    Picture { width, height, channels, pixels }
}
