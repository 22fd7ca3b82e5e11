//! `devin-etl migrate`: create the schema and apply pending migrations.

use crate::app;
use crate::settings::Settings;

pub async fn run(settings: &Settings) -> anyhow::Result<()> {
    let store = app::migrated_store(settings).await?;
    println!("schema {} is up to date", store.schema());
    Ok(())
}
