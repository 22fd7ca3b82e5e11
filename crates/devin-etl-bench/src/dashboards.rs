//! `--time-dashboards`: times every shipped dashboard query against an existing warehouse (`--database`, not
//! recreated): every panel of the Grafana dashboard over its default time range with `$org` at "all", and every
//! query of sections 4 and 6 of `docs/queries.md`, read from the shipped files at run time
//! (`devin_etl::shipped_queries`), so the timer never drifts from what is shipped. `jit = off`, as section 5 of
//! `docs/queries.md` recommends for the BI role; one warm-up run, then the median of `--time-runs` runs,
//! client-side (rows fetched included). Prints a table (name, ms, rows), or JSON with `--json`.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context as _;
use secrecy::ExposeSecret as _;
use sqlx::Connection as _;

use devin_etl::settings::Settings;
use devin_etl::shipped_queries;

use crate::args::BenchArgs;
use crate::database::{connect, database_url};

/// One query's timing.
struct Timing {
    name: String,
    /// Median of the timed runs, ms; None when it failed (the error is in `error`).
    median_ms: Option<f64>,
    runs_ms: Vec<f64>,
    rows: usize,
    error: Option<String>,
}

/// The repository the shipped files are read from: `--repo-root`, else the one this benchmark was built from.
fn repo_root(args: &BenchArgs) -> PathBuf {
    args.repo_root.clone().unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../.."))
}

pub async fn run(settings: Settings, args: &BenchArgs) -> anyhow::Result<()> {
    let url = database_url(settings.database.url.expose_secret(), &args.database)?;
    let mut conn = connect(&url).await?;
    // The schema name was validated by the settings (a plain identifier).
    sqlx::raw_sql(&format!(
        "set search_path = {}, public; set jit = off; set statement_timeout = '{}s'",
        settings.database.schema, args.query_timeout
    ))
    .execute(&mut conn)
    .await
    .context("setting up the timing connection")?;
    let sessions: i64 = sqlx::query_scalar("select count(*) from sessions where deleted_at is null")
        .fetch_one(&mut conn)
        .await
        .with_context(|| {
            format!("database {} holds no warehouse (schema {})", args.database, settings.database.schema)
        })?;
    let queries = shipped_queries::ready_to_run(&mut conn, &repo_root(args)).await?;
    eprintln!("bench: timing {} shipped queries on {} ({sessions} live sessions)", queries.len(), args.database);
    let runs = args.time_runs.max(1);
    let mut timings = Vec::with_capacity(queries.len());
    for query in &queries {
        let mut timing =
            Timing { name: query.name.clone(), median_ms: None, runs_ms: Vec::new(), rows: 0, error: None };
        // The warm-up, then the timed runs.
        for run in 0..=runs {
            let started = Instant::now();
            match sqlx::raw_sql(&query.sql).fetch_all(&mut conn).await {
                Ok(rows) => {
                    timing.rows = rows.len();
                    if run > 0 {
                        timing.runs_ms.push(started.elapsed().as_secs_f64() * 1e3);
                    }
                }
                Err(e) => {
                    timing.error = Some(format!("{e}"));
                    break;
                }
            }
        }
        if timing.error.is_none() {
            let mut sorted = timing.runs_ms.clone();
            sorted.sort_by(f64::total_cmp);
            timing.median_ms = Some(sorted[sorted.len() / 2]);
        }
        eprintln!(
            "bench: {:>10} ms  {}",
            timing.median_ms.map_or("failed".to_owned(), |ms| format!("{ms:.1}")),
            timing.name
        );
        timings.push(timing);
    }
    conn.close().await.ok();
    if args.json {
        println!("{}", json(&args.database, sessions, runs, &timings));
    } else {
        print!("{}", table(&timings));
    }
    let failed = timings.iter().filter(|t| t.error.is_some()).count();
    anyhow::ensure!(failed == 0, "{failed} shipped quer{} failed (see above)", if failed == 1 { "y" } else { "ies" });
    Ok(())
}

fn table(timings: &[Timing]) -> String {
    let width = timings.iter().map(|t| t.name.chars().count()).max().unwrap_or(4).clamp(4, 100);
    let mut out = format!("{:<width$}  {:>10}  {:>8}\n", "name", "ms", "rows");
    for t in timings {
        let name: String = t.name.chars().take(width).collect();
        match (&t.median_ms, &t.error) {
            (Some(ms), _) => out.push_str(&format!("{name:<width$}  {ms:>10.1}  {:>8}\n", t.rows)),
            (None, error) => out.push_str(&format!(
                "{name:<width$}  {:>10}  {:>8}  {}\n",
                "failed",
                "-",
                error.as_deref().unwrap_or_default()
            )),
        }
    }
    out
}

fn json(database: &str, sessions: i64, runs: usize, timings: &[Timing]) -> serde_json::Value {
    serde_json::json!({
        "database": database,
        "live_sessions": sessions,
        "timed_runs": runs,
        "jit": "off",
        "queries": timings.iter().map(|t| serde_json::json!({
            "name": t.name,
            "median_ms": t.median_ms,
            "runs_ms": t.runs_ms,
            "rows": t.rows,
            "error": t.error,
        })).collect::<Vec<_>>(),
    })
}
