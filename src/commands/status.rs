//! `devin-etl status [--json]`: what [`crate::status`] collects, as a table or as JSON.

use crate::app;
use crate::settings::Settings;

pub async fn run(settings: &Settings, json: bool) -> anyhow::Result<()> {
    let store = app::migrated_store(settings).await?;
    let status = crate::status::collect(&store, &settings.sync.source).await?;
    if json {
        println!("{}", serde_json::to_string_pretty(&status)?);
    } else {
        print!("{}", crate::status::render(&status));
    }
    Ok(())
}
