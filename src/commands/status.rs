//! `devin-etl status [--json]`: what [`crate::status`] collects, as a table or as JSON.

use crate::app;
use crate::settings::Settings;
use crate::status::{self, BackfillPlan};

/// Shows each source of `sources`. One source (a single-source configuration, or `--source NAME`): the report of
/// that source, as before. Several: a section per source, then the row counts once; `--json` prints
/// `{"schema": …, "sources": [<one source's object>, …], "tables": […]}`.
pub async fn run(sources: &[Settings], json: bool) -> anyhow::Result<()> {
    let Some(first) = sources.first() else {
        anyhow::bail!("no source to show");
    };
    let store = app::migrated_store(first).await?;
    let plan = Some(BackfillPlan::of(&first.sync));
    if let [only] = sources {
        let status = status::collect(&store, &only.sync.source, plan).await?;
        if json {
            println!("{}", serde_json::to_string_pretty(&status)?);
        } else {
            print!("{}", status::render(&status));
        }
        return Ok(());
    }
    let names: Vec<&str> = sources.iter().map(|s| s.sync.source.as_str()).collect();
    let several = status::collect_several(&store, &names, plan).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&several)?);
    } else {
        print!("{}", status::render_several(&several));
    }
    Ok(())
}
