//! Read-only access for BI: `devin-etl grant-readonly ROLE`. (Being implemented; see issues 4 and 6.)

use super::Store;

impl Store {
    /// Grants `role` usage and select on the schema's tables and views, present and future, and nothing else.
    pub async fn grant_readonly(&self, _role: &str) -> anyhow::Result<()> {
        anyhow::bail!("grant-readonly is not implemented yet")
    }
}
