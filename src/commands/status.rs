//! `devin-etl status [--json]`: what [`crate::status`] collects, as a table or as JSON.

use crate::app;
use crate::settings::Settings;

/// Shows each source of `sources`. One source (a single-source configuration, or `--source NAME`): the report of
/// that source, as before. Several: a section per source, then the row counts once; `--json` prints
/// `{"schema": …, "sources": [<one source's object>, …], "tables": […]}`.
pub async fn run(sources: &[Settings], json: bool) -> anyhow::Result<()> {
    let Some(first) = sources.first() else {
        anyhow::bail!("no source to show");
    };
    let store = app::migrated_store(first).await?;
    let mut statuses = Vec::new();
    for settings in sources {
        statuses.push(crate::status::collect(&store, &settings.sync.source).await?);
    }
    match (statuses.len(), json) {
        (1, true) => println!("{}", serde_json::to_string_pretty(&statuses[0])?),
        (1, false) => print!("{}", crate::status::render(&statuses[0])),
        (_, true) => println!("{}", serde_json::to_string_pretty(&crate::status::Several::of(statuses))?),
        (_, false) => print!("{}", crate::status::render_several(&statuses)),
    }
    Ok(())
}
