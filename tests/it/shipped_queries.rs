//! Issue 14, item 4: the dashboard timer (`devin-etl-bench --time-dashboards`) finds every shipped query — every
//! panel of the Grafana dashboard and every block of sections 4 and 6 of `docs/queries.md` — and each runs, once
//! expanded (time range, `$org`, a session id), on a small synced warehouse. No timing is asserted.

use crate::common;

use common::TestApp;
use devin_etl::shipped_queries::{self, DASHBOARD, QUERIES};
use devin_etl::sync::Mode;

/// The ```sql blocks between the heading starting with `from` and the next `## ` heading, counted by hand.
fn blocks_in_section(markdown: &str, from: &str) -> usize {
    let start = markdown.find(from).unwrap_or_else(|| panic!("{QUERIES} has no section {from:?}"));
    let rest = &markdown[start + from.len()..];
    let end = rest.find("\n## ").unwrap_or(rest.len());
    rest[..end].lines().filter(|l| l.trim() == "```sql").count()
}

#[tokio::test]
async fn the_dashboard_timer_finds_every_shipped_query_and_each_runs_on_a_small_warehouse() {
    let app = TestApp::spawn(200).await;
    app.syncer.run_once(Mode::Backfill).await.unwrap();
    app.sim.advance(3600);
    app.sim.update_some(20);
    app.syncer.run_once(Mode::Incremental).await.unwrap();
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let mut conn = app.store().pool().acquire().await.unwrap();
    let queries = shipped_queries::ready_to_run(&mut conn, root).await.unwrap();

    let dashboard = std::fs::read_to_string(root.join(DASHBOARD)).unwrap();
    let panels = dashboard.matches("\"rawSql\"").count();
    let variables = dashboard.matches("\"definition\"").count().max(1);
    let docs = std::fs::read_to_string(root.join(QUERIES)).unwrap();
    let blocks = blocks_in_section(&docs, "\n## 4.") + blocks_in_section(&docs, "\n## 6.");
    assert!(panels >= 20 && blocks >= 25, "{panels} panels, {blocks} docs blocks");
    let grafana = queries.iter().filter(|q| q.name.starts_with("Grafana: ")).count();
    assert!(grafana >= panels && grafana <= panels + variables, "{grafana} Grafana queries for {panels} panels");
    assert_eq!(queries.len() - grafana, blocks, "docs blocks of sections 4 and 6");
    assert!(queries.iter().any(|q| q.name.starts_with("6.7 ")), "6.7 is timed");

    let mut names = std::collections::BTreeSet::new();
    for query in &queries {
        assert!(names.insert(&query.name) || query.name.starts_with("Grafana: "), "two queries named {}", query.name);
        assert!(!query.sql.contains("$__") && !query.sql.contains(":'session_id'"), "{}: not expanded", query.name);
        let rows = sqlx::raw_sql(&query.sql)
            .fetch_all(&mut *conn)
            .await
            .unwrap_or_else(|e| panic!("{} failed: {e}\n{}", query.name, query.sql));
        if query.name.starts_with("6.7 ") {
            assert!(!rows.is_empty(), "6.7 shows no period of the session it was given");
        }
    }
}
