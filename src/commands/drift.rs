//! `devin-etl drift [--json] [--source NAME]`: what the API sent that the models do not know (`schema_drift`).

use crate::app;
use crate::settings::Settings;

/// Prints the drift entries of `sources` (every entry of each), as a table or as a JSON array of rows.
pub async fn run(sources: &[Settings], json: bool) -> anyhow::Result<()> {
    let Some(first) = sources.first() else {
        anyhow::bail!("no source to show");
    };
    let store = app::migrated_store(first).await?;
    let mut rows = Vec::new();
    for settings in sources {
        rows.extend(store.drift_report(Some(&settings.sync.source)).await?);
    }
    if json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
    } else if rows.is_empty() {
        println!("No schema drift: every item read so far matched the models (fields, enum values and JSON types).");
    } else {
        print!("{}", crate::status::render_drift(&rows, true));
        println!(
            "\nThe data is loaded as usual (new enum values as text, every item whole in sessions.raw); query new \
             fields with e.g. raw->'analysis'->'issues'. Reference: README, \"Schema drift\"."
        );
    }
    Ok(())
}
