//! The floors: every page fetched and discarded (fetch floor), and the loader's own COPY text of every row copied
//! into fresh tables like the warehouse's (COPY floor).

use std::collections::HashSet;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use sqlx::PgConnection;

use devin_etl::api::{ApiClient, ListQuery};
use devin_etl::settings::Settings;
use devin_etl::store::{Batch, CopyPayload, copy_in};
use devin_etl::sync::normalize::{self, DecodedItem};

use crate::measure::{Meter, Phase};

/// Items per page for the floors (the API's maximum).
pub(crate) const FLOOR_PAGE_SIZE: u32 = 200;
/// The scratch schema of the COPY floor.
pub(crate) const FLOOR_SCHEMA: &str = "bench_floor";
pub(crate) fn floor_query(after: Option<String>) -> ListQuery {
    ListQuery { first: FLOOR_PAGE_SIZE, after, ..ListQuery::default() }
}

/// Every page of the full list, one after the other, read (envelope parsed, items kept raw) and discarded.
pub(crate) async fn fetch_floor(
    settings: &Settings,
    sim_pid: Option<u32>,
    admin: &mut PgConnection,
) -> anyhow::Result<Phase> {
    let api = ApiClient::new(&settings.api)?;
    let meter = Meter::start(sim_pid);
    let mut after = None;
    let (mut pages, mut items) = (0u64, 0u64);
    loop {
        let page = api.list_page(&floor_query(after)).await?;
        pages += 1;
        items += page.items.len() as u64;
        if !page.has_next_page {
            break;
        }
        after = page.end_cursor;
    }
    let measured = meter.stop(admin).await?;
    Ok(Phase {
        name: "fetch floor",
        measured,
        sessions: items,
        written: None,
        rows: None,
        requests: Some(api.stats().requests.load(std::sync::atomic::Ordering::Relaxed)),
        pages: Some(pages),
    })
}

/// Every page of the full list, decoded and normalized into COPY text, in memory.
pub(crate) async fn encode_all_pages(settings: &Settings) -> anyhow::Result<FloorRows> {
    let api = ApiClient::new(&settings.api)?;
    let mut rows = FloorRows::default();
    let mut seen = HashSet::new();
    let mut after = None;
    loop {
        let page = api.list_page(&floor_query(after)).await?;
        let decoding = Instant::now();
        let mut items = normalize::decode_page(page.items, &page.request)?;
        rows.decoding += decoding.elapsed();
        // The schema drift comparison is part of decoding; timed again alone to show its share.
        let comparing = Instant::now();
        for item in &items {
            std::hint::black_box(devin_etl::drift::inspect(std::hint::black_box(&item.raw)));
        }
        rows.comparing += comparing.elapsed();
        rows.items += items.len() as u64;
        items.retain(|item| seen.insert(item.session.session_id.clone()));
        rows.push(&items);
        if !page.has_next_page {
            break;
        }
        after = page.end_cursor;
    }
    Ok(rows)
}

/// Fresh tables `like` the warehouse's (columns, defaults, not-null and check constraints, primary keys,
/// indexes, compression), optionally with the foreign keys too.
pub(crate) async fn create_floor_tables(
    conn: &mut PgConnection,
    schema: &str,
    rows: &FloorRows,
    foreign_keys: bool,
) -> anyhow::Result<()> {
    let mut sql = format!("drop schema if exists {FLOOR_SCHEMA} cascade; create schema {FLOOR_SCHEMA};\n");
    for table in &rows.tables {
        let name = table.table;
        writeln!(sql, "create table {FLOOR_SCHEMA}.{name} (like {schema}.{name} including all);")?;
        if foreign_keys && name != "sessions" {
            writeln!(
                sql,
                "alter table {FLOOR_SCHEMA}.{name} add foreign key (session_id) \
                 references {FLOOR_SCHEMA}.sessions (session_id) on delete cascade;"
            )?;
        }
    }
    sqlx::raw_sql(&sql).execute(&mut *conn).await.context("creating the COPY floor's tables")?;
    Ok(())
}

/// Times `COPY … FROM STDIN` of every table (sessions first, each table done before the next starts), each
/// table split into one row-aligned part per connection, the parts copied at once, each its own statement.
pub(crate) async fn copy_floor(
    conns: &mut [PgConnection],
    rows: &FloorRows,
    sim_pid: Option<u32>,
    admin: &mut PgConnection,
) -> anyhow::Result<(Phase, Vec<(&'static str, u64, Duration)>)> {
    let meter = Meter::start(sim_pid);
    let mut by_table = Vec::new();
    let mut total = 0;
    for data in &rows.tables {
        let started = Instant::now();
        let statement = data.statement(&format!("{FLOOR_SCHEMA}."));
        let parts = split_rows(&data.text, conns.len());
        // The loader's own COPY path, each part on its own connection.
        let copies = conns.iter_mut().zip(parts).map(|(conn, part)| copy_in(conn, &statement, data.table, part));
        let copied: u64 = futures_util::future::try_join_all(copies)
            .await
            .with_context(|| format!("the COPY floor, into {FLOOR_SCHEMA}.{}", data.table))?
            .into_iter()
            .sum();
        total += copied;
        by_table.push((data.table, copied, started.elapsed()));
    }
    let measured = meter.stop(admin).await?;
    let phase = Phase {
        name: "COPY floor",
        measured,
        sessions: rows.sessions,
        written: None,
        rows: Some(total),
        requests: None,
        pages: None,
    };
    Ok((phase, by_table))
}

/// `text` cut into `n` parts of about equal size at row ends (a raw newline only ever ends a row in COPY text).
pub(crate) fn split_rows(text: &[u8], n: usize) -> Vec<&[u8]> {
    let mut parts = Vec::with_capacity(n);
    let mut start = 0;
    for i in 1..=n {
        let target = (text.len() * i / n).max(start);
        let end = if i == n {
            text.len()
        } else {
            text[target..].iter().position(|&b| b == b'\n').map_or(text.len(), |p| target + p + 1)
        };
        parts.push(&text[start..end]);
        start = end;
    }
    parts
}

// ---------------------------------------------------------------------------------------------------------------
// COPY text of the normalized rows: exactly what the loader's COPY path sends (`Batch::copy_payloads`).

/// The normalized rows of every session, as COPY text per table (`sessions` first).
#[derive(Debug, Default)]
pub(crate) struct FloorRows {
    /// The loader's own payloads (`Batch::copy_payloads`), one per table, each page's appended.
    pub(crate) tables: Vec<CopyPayload>,
    pub(crate) sessions: u64,
    /// Items decoded (repeats included), the time `decode_page` took (schema drift comparison included), and the
    /// time the drift comparison alone takes on the same items.
    pub(crate) items: u64,
    pub(crate) decoding: Duration,
    pub(crate) comparing: Duration,
}

impl FloorRows {
    pub(crate) fn total_rows(&self) -> u64 {
        self.tables.iter().map(|t| t.rows as u64).sum()
    }

    pub(crate) fn bytes(&self) -> usize {
        self.tables.iter().map(|t| t.text.len()).sum()
    }

    /// Appends a page's items, normalized and encoded by the loader's own code.
    pub(crate) fn push(&mut self, items: &[DecodedItem]) {
        let mut batch = Batch::new();
        for item in items {
            normalize::stage(&mut batch, "bench", item);
        }
        self.sessions += batch.sessions() as u64;
        for (i, payload) in batch.copy_payloads().into_iter().enumerate() {
            match self.tables.get_mut(i) {
                Some(table) => {
                    table.text.extend_from_slice(&payload.text);
                    table.rows += payload.rows;
                }
                None => self.tables.push(payload),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_split_at_row_ends() {
        let text = b"a\tb\ncc\ndddd\ne\n";
        let parts = split_rows(text, 3);
        assert_eq!(parts.concat(), text.to_vec());
        assert!(parts.iter().all(|p| p.is_empty() || p.ends_with(b"\n")), "{parts:?}");
        assert_eq!(split_rows(b"", 2), vec![b"".as_slice(), b"".as_slice()]);
        assert_eq!(split_rows(text, 1), vec![text.as_slice()]);
    }
}
