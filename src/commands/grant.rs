//! `devin-etl grant-readonly ROLE`: read-only access to the warehouse for an existing role.

use crate::app;
use crate::settings::Settings;

pub async fn run(settings: &Settings, role: &str) -> anyhow::Result<()> {
    let store = app::migrated_store(settings).await?;
    store.grant_readonly(role).await?;
    println!("granted {role} read-only access to schema {}", store.schema());
    Ok(())
}
