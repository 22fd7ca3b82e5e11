//! The SQL the project ships for BI users, read from the shipped files themselves: the ```` ```sql ```` blocks of
//! `docs/queries.md` (named by their `###` heading) and the panel queries of the Grafana dashboard, with Grafana's
//! macros and variables expanded to plain PostgreSQL. The benchmark's dashboard timer
//! (`devin-etl-bench --time-dashboards`) and the tests that run every shipped query read them through this module,
//! so neither keeps a copy that could drift from what is shipped.

use serde_json::Value;

/// One shipped query.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShippedQuery {
    /// `4.1 Daily usage, …` for a docs block, `Grafana: <panel title>` for a panel.
    pub name: String,
    /// The SQL as shipped (docs: with its parameters, see [`SESSION_ID_PARAMETER`]; panels: with Grafana macros).
    pub sql: String,
    /// Panels: `table` or `time_series`; docs blocks: `table`.
    pub format: String,
}

/// How a docs query names a session it is about (psql's quoted variable): the timer and the tests put a real
/// session id in its place.
pub const SESSION_ID_PARAMETER: &str = ":'session_id'";

/// The ```` ```sql ```` blocks of a Markdown file, each named by the nearest `###` (else `##`) heading above it.
pub fn sql_blocks(markdown: &str) -> Vec<ShippedQuery> {
    let mut blocks = Vec::new();
    let (mut heading, mut current): (String, Option<String>) = (String::new(), None);
    for line in markdown.lines() {
        match &mut current {
            None if line.trim() == "```sql" => current = Some(String::new()),
            None => {
                if let Some(h) = line.strip_prefix("### ").or_else(|| line.strip_prefix("## ")) {
                    heading = h.trim().to_owned();
                }
            }
            Some(_) if line.trim() == "```" => {
                let sql = current.take().unwrap_or_default();
                blocks.push(ShippedQuery { name: heading.clone(), sql, format: "table".to_owned() });
            }
            Some(block) => {
                block.push_str(line);
                block.push('\n');
            }
        }
    }
    blocks
}

/// The blocks of `docs/queries.md` under the given numbered sections (`"4"` takes 4.1, 4.2, …).
pub fn docs_queries(markdown: &str, sections: &[&str]) -> Vec<ShippedQuery> {
    sql_blocks(markdown)
        .into_iter()
        .filter(|q| sections.iter().any(|s| q.name.strip_prefix(s).is_some_and(|rest| rest.starts_with('.'))))
        .collect()
}

/// Every Postgres query of a Grafana dashboard (panel title, format, rawSql), the template variables' queries
/// included (named `variable <name>`).
pub fn dashboard_queries(dashboard: &Value) -> Vec<ShippedQuery> {
    fn walk(v: &Value, title: &str, out: &mut Vec<ShippedQuery>) {
        match v {
            Value::Object(o) => {
                let title = o.get("title").and_then(Value::as_str).unwrap_or(title);
                if let Some(sql) = o.get("rawSql").and_then(Value::as_str) {
                    let format = o.get("format").and_then(Value::as_str).unwrap_or("table");
                    out.push(ShippedQuery { name: title.to_owned(), sql: sql.to_owned(), format: format.to_owned() });
                }
                for (k, child) in o {
                    if k != "rawSql" {
                        walk(child, title, out);
                    }
                }
            }
            Value::Array(a) => a.iter().for_each(|c| walk(c, title, out)),
            _ => {}
        }
    }
    let mut out = Vec::new();
    walk(&dashboard["panels"], "", &mut out);
    for var in dashboard["templating"]["list"].as_array().into_iter().flatten() {
        if var["type"] == "query"
            && let Some(sql) = var["query"].as_str().or_else(|| var["query"]["rawSql"].as_str())
        {
            out.push(ShippedQuery {
                name: format!("variable {}", var["name"].as_str().unwrap_or_default()),
                sql: sql.to_owned(),
                format: "table".to_owned(),
            });
        }
    }
    out
}

/// The dashboard's default time range (`time.from`, `time.to`, e.g. `now-90d`, `now`) as SQL expressions.
pub fn default_time_range(dashboard: &Value) -> Result<(String, String), String> {
    let from = dashboard["time"]["from"].as_str().unwrap_or("now-6h");
    let to = dashboard["time"]["to"].as_str().unwrap_or("now");
    Ok((grafana_time(from)?, grafana_time(to)?))
}

/// `now`, `now-90d`, `now-12h`, … as a `timestamptz` expression.
fn grafana_time(t: &str) -> Result<String, String> {
    let Some(rest) = t.strip_prefix("now") else {
        return Ok(format!("'{}'::timestamptz", t.replace('\'', "''")));
    };
    if rest.is_empty() {
        return Ok("now()".to_owned());
    }
    let (sign, amount) = rest.split_at(1);
    let split = amount.find(|c: char| !c.is_ascii_digit()).ok_or_else(|| format!("time {t:?} has no unit"))?;
    let (n, unit) = amount.split_at(split);
    let unit = match unit {
        "s" => "seconds",
        "m" => "minutes",
        "h" => "hours",
        "d" => "days",
        "w" => "weeks",
        "M" => "months",
        "y" => "years",
        _ => return Err(format!("time {t:?}: unknown unit {unit:?}")),
    };
    match sign {
        "-" | "+" => Ok(format!("(now() {sign} interval '{n} {unit}')")),
        _ => Err(format!("time {t:?} is not now±N<unit>")),
    }
}

fn interval_unit(arg: &str) -> Result<&'static str, String> {
    Ok(match arg.trim().trim_matches('\'') {
        "1m" => "minute",
        "1h" => "hour",
        "1d" | "24h" => "day",
        "1w" | "7d" => "week",
        "1M" => "month",
        other => return Err(format!("unsupported interval {other:?} in a Grafana macro")),
    })
}

/// Splits `a, 'b', f(c, d)` on top-level commas.
fn split_args(args: &str) -> Vec<String> {
    let (mut out, mut depth, mut quoted, mut current) = (Vec::new(), 0, false, String::new());
    for c in args.chars() {
        match c {
            '\'' => quoted = !quoted,
            '(' if !quoted => depth += 1,
            ')' if !quoted => depth -= 1,
            ',' if !quoted && depth == 0 => {
                out.push(std::mem::take(&mut current).trim().to_owned());
                continue;
            }
            _ => {}
        }
        current.push(c);
    }
    if !current.trim().is_empty() {
        out.push(current.trim().to_owned());
    }
    out
}

/// Expands the Grafana macros used by the shipped dashboard (`$__timeFilter`, `$__timeFrom()`, `$__timeTo()`,
/// `$__time`, `$__timeGroup`, `$__timeGroupAlias`) for the time range `from`..`to` (SQL expressions), and its
/// variables (`$name` / `${name}`) to the SQL text given in `vars` (for a multi-value variable: the quoted list).
pub fn expand_grafana(sql: &str, from: &str, to: &str, vars: &[(&str, &str)]) -> Result<String, String> {
    let mut out = String::new();
    let mut rest = sql;
    while let Some(at) = rest.find('$') {
        out.push_str(&rest[..at]);
        rest = &rest[at..];
        if let Some(after) = rest.strip_prefix("$__") {
            let name: String = after.chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let after_name = &after[name.len()..];
            let (args, tail) = if let Some(inner) = after_name.strip_prefix('(') {
                let mut depth = 1;
                let end = inner
                    .char_indices()
                    .find(|&(_, c)| {
                        depth += match c {
                            '(' => 1,
                            ')' => -1,
                            _ => 0,
                        };
                        depth == 0
                    })
                    .map(|(i, _)| i)
                    .ok_or_else(|| format!("unbalanced macro in {sql}"))?;
                (split_args(&inner[..end]), &inner[end + 1..])
            } else {
                (Vec::new(), after_name)
            };
            let arg = |i: usize| args.get(i).cloned().ok_or_else(|| format!("$__{name} needs {} argument(s)", i + 1));
            let expanded = match name.as_str() {
                "timeFilter" => format!("{} between {from} and {to}", arg(0)?),
                "timeFrom" => from.to_owned(),
                "timeTo" => to.to_owned(),
                "time" => format!("{} as time", arg(0)?),
                "timeGroup" => format!("date_trunc('{}', {})", interval_unit(&arg(1)?)?, arg(0)?),
                "timeGroupAlias" => format!("date_trunc('{}', {}) as time", interval_unit(&arg(1)?)?, arg(0)?),
                other => return Err(format!("Grafana macro $__{other} is not expanded here; add it")),
            };
            out.push_str(&expanded);
            rest = tail;
        } else {
            let braced = rest.strip_prefix("${");
            let name: String =
                braced.unwrap_or(&rest[1..]).chars().take_while(|c| c.is_alphanumeric() || *c == '_').collect();
            let value = vars
                .iter()
                .find(|(n, _)| *n == name)
                .map(|(_, v)| *v)
                .ok_or_else(|| format!("unknown Grafana variable at {:?}", &rest[..rest.len().min(20)]))?;
            out.push_str(value);
            rest = match braced {
                Some(b) => b[name.len()..].strip_prefix('}').ok_or_else(|| format!("unclosed ${{{name}"))?,
                None => &rest[1 + name.len()..],
            };
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// `sql` with [`SESSION_ID_PARAMETER`] replaced by the quoted `session_id`.
pub fn with_session_id(sql: &str, session_id: &str) -> String {
    sql.replace(SESSION_ID_PARAMETER, &format!("'{}'", session_id.replace('\'', "''")))
}

/// The shipped dashboard, relative to the repository's root.
pub const DASHBOARD: &str = "deploy/grafana/dashboards/devin-etl.json";
/// The ready queries, relative to the repository's root.
pub const QUERIES: &str = "docs/queries.md";
/// The sections of [`QUERIES`] that BI users run as they are: 4 (ready queries) and 6 (history).
pub const QUERY_SECTIONS: &[&str] = &["4", "6"];

/// Every shipped query, ready to run on the warehouse `conn` is connected to (its schema on the search path): the
/// panels of [`DASHBOARD`] (named `Grafana: <title>`) over the dashboard's default time range with every variable
/// at "all" (the values its own query returns), then the blocks of [`QUERY_SECTIONS`] of [`QUERIES`] with a real
/// session id (the most recently updated live session) for [`SESSION_ID_PARAMETER`].
pub async fn ready_to_run(conn: &mut sqlx::PgConnection, root: &std::path::Path) -> anyhow::Result<Vec<ShippedQuery>> {
    use anyhow::Context as _;
    let read = |file: &str| {
        std::fs::read_to_string(root.join(file)).with_context(|| format!("reading {}", root.join(file).display()))
    };
    let dashboard: Value =
        serde_json::from_str(&read(DASHBOARD)?).with_context(|| format!("{DASHBOARD} is not JSON"))?;
    let (from, to) = default_time_range(&dashboard).map_err(anyhow::Error::msg)?;
    let mut panels = Vec::new();
    let mut vars: Vec<(String, String)> = Vec::new();
    for query in dashboard_queries(&dashboard) {
        match query.name.strip_prefix("variable ") {
            Some(var) => {
                let values: Vec<String> = sqlx::query_scalar(&query.sql)
                    .fetch_all(&mut *conn)
                    .await
                    .with_context(|| format!("the values of variable {var}"))?;
                let quoted: Vec<String> = values.iter().map(|v| format!("'{}'", v.replace('\'', "''"))).collect();
                // An empty warehouse: a list that matches nothing, as Grafana's "All" of no values would.
                vars.push((var.to_owned(), if quoted.is_empty() { "null".to_owned() } else { quoted.join(",") }));
                panels.push(ShippedQuery { name: format!("Grafana: {}", query.name), ..query });
            }
            None => panels.push(query),
        }
    }
    let vars: Vec<(&str, &str)> = vars.iter().map(|(n, v)| (n.as_str(), v.as_str())).collect();
    let mut out = Vec::new();
    for panel in panels {
        let sql = expand_grafana(&panel.sql, &from, &to, &vars).map_err(anyhow::Error::msg)?;
        let name = if panel.name.starts_with("Grafana: ") { panel.name } else { format!("Grafana: {}", panel.name) };
        out.push(ShippedQuery { name, sql, format: panel.format });
    }
    let session_id: Option<String> = sqlx::query_scalar(
        "select session_id from sessions where deleted_at is null order by updated_at desc, session_id limit 1",
    )
    .fetch_optional(&mut *conn)
    .await
    .context("picking a session for the queries about one session")?;
    for block in docs_queries(&read(QUERIES)?, QUERY_SECTIONS) {
        let sql = with_session_id(&block.sql, session_id.as_deref().unwrap_or_default());
        out.push(ShippedQuery { sql, ..block });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grafana_macros_expand_to_plain_sql() {
        let (from, to) = ("'2000-01-01T00:00:00Z'", "'2100-01-01T00:00:00Z'");
        assert_eq!(
            expand_grafana(
                "select $__timeGroupAlias(created_at, '1d'), count(*) where $__timeFilter(day) and org_id in ($org)",
                from,
                to,
                &[("org", "'a'")]
            )
            .unwrap(),
            "select date_trunc('day', created_at) as time, count(*) where day between '2000-01-01T00:00:00Z' and \
             '2100-01-01T00:00:00Z' and org_id in ('a')"
        );
        assert_eq!(
            expand_grafana("$__timeGroup(f(x, y),'1w') < $__timeTo() and o in (${org})", from, to, &[("org", "1")])
                .unwrap(),
            "date_trunc('week', f(x, y)) < '2100-01-01T00:00:00Z' and o in (1)"
        );
        assert!(expand_grafana("$__nope(x)", from, to, &[]).is_err());
        assert!(expand_grafana("$other", from, to, &[]).is_err());
    }

    #[test]
    fn grafana_times_are_sql() {
        assert_eq!(grafana_time("now").unwrap(), "now()");
        assert_eq!(grafana_time("now-90d").unwrap(), "(now() - interval '90 days')");
        assert!(grafana_time("now-90").is_err());
    }

    #[test]
    fn docs_blocks_are_named_by_their_heading_and_picked_by_section() {
        let md = "## 4. Ready\n### 4.1 One\n```sql\nselect 1;\n```\n## 5. Perf\n```sql\nset jit = off;\n```\n\
                  ### 6.7 Story\n```sql\nselect :'session_id';\n```\n";
        let all = sql_blocks(md);
        assert_eq!(all.len(), 3);
        let picked = docs_queries(md, &["4", "6"]);
        assert_eq!(picked.iter().map(|q| q.name.as_str()).collect::<Vec<_>>(), ["4.1 One", "6.7 Story"]);
        assert_eq!(with_session_id(&picked[1].sql, "a'b"), "select 'a''b';\n");
    }
}
