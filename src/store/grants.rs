//! Read-only access for BI: `devin-etl grant-readonly ROLE`.
//!
//! The role gets usage on the schema and select on every table and view in it, now and for tables and views
//! created later by the role that runs the migrations (this connection's user), and nothing else: no
//! insert, update, delete, truncate, references, trigger or create.

use anyhow::Context as _;

use super::Store;

impl Store {
    /// Grants `role` usage and select on the schema's tables and views, present and future, and nothing else.
    ///
    /// The role must exist. Future grants (`alter default privileges`) cover objects created by the user this
    /// store connects as, so run it with the same `DATABASE_URL` as `migrate` and `sync`.
    pub async fn grant_readonly(&self, role: &str) -> anyhow::Result<()> {
        let exists: bool = sqlx::query_scalar("select exists (select 1 from pg_roles where rolname = $1)")
            .bind(role)
            .fetch_one(&self.pool)
            .await
            .with_context(|| format!("cannot look up role {role:?} in pg_roles"))?;
        if !exists {
            anyhow::bail!(
                "role {role:?} does not exist; create it first: CREATE ROLE {} LOGIN PASSWORD '…'; then run grant-readonly again",
                quote_identifier(role)
            );
        }

        // Identifiers cannot be bound as parameters: both are quoted as identifiers instead.
        let role_sql = quote_identifier(role);
        let schema_sql = quote_identifier(&self.schema);
        let statements = [
            format!("grant usage on schema {schema_sql} to {role_sql}"),
            // "all tables" includes views, materialized views and foreign tables.
            format!("grant select on all tables in schema {schema_sql} to {role_sql}"),
            format!("alter default privileges in schema {schema_sql} grant select on tables to {role_sql}"),
        ];
        let mut tx = self.pool.begin().await.context("cannot start the grant transaction")?;
        for statement in &statements {
            sqlx::raw_sql(statement).execute(&mut *tx).await.with_context(|| format!("{statement} failed"))?;
        }
        tx.commit().await.context("cannot commit the grants")?;

        let superuser: bool = sqlx::query_scalar("select rolsuper from pg_roles where rolname = $1")
            .bind(role)
            .fetch_one(&self.pool)
            .await
            .with_context(|| format!("cannot look up role {role:?} in pg_roles"))?;
        if superuser {
            tracing::warn!(
                role,
                "the role is a superuser: it can still write everything; use a plain LOGIN role for BI"
            );
        }
        Ok(())
    }
}

/// `name` as a PostgreSQL quoted identifier: in double quotes, embedded double quotes doubled.
fn quote_identifier(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

#[cfg(test)]
mod tests {
    use super::quote_identifier;

    #[test]
    fn identifiers_are_double_quoted_with_embedded_quotes_doubled() {
        assert_eq!(quote_identifier("bi"), "\"bi\"");
        assert_eq!(quote_identifier("Bi Reader"), "\"Bi Reader\"");
        assert_eq!(quote_identifier("a\"; drop table sessions; --"), "\"a\"\"; drop table sessions; --\"");
    }
}
