//! Column-oriented buffers: the rows of one table as one vector per column, in the catalogue's order. The loader
//! sends them either as COPY text (new sessions, see `copy_new_sessions` in `load.rs`) or bound as one array
//! parameter per column and expanded server-side with `unnest(...)` (the merge): either way a whole batch
//! goes out in a single statement per table.
//!
//! Each push names its column; debug builds check that it is the catalogue's next column and that the push
//! stages the column's kind, so two swapped pushes fail the tests instead of writing the wrong columns.

use super::catalogue::{ColumnDef, Staging, TableDef};

/// One column's values.
#[derive(Debug)]
pub(super) enum Column {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<bool>),
}

impl Column {
    fn new(staging: Staging) -> Column {
        match staging {
            Staging::Text | Staging::TextArray | Staging::Jsonb => Column::Text(Vec::new()),
            Staging::Int8 | Staging::UnixSeconds => Column::Int(Vec::new()),
            Staging::Float8 => Column::Float(Vec::new()),
            Staging::Bool => Column::Bool(Vec::new()),
        }
    }
}

/// The rows of one table, column by column.
#[derive(Debug)]
pub(super) struct ColumnBuffer {
    table: &'static TableDef,
    pub(super) columns: Vec<Column>,
    next: usize,
    rows: usize,
}

impl ColumnBuffer {
    pub(super) fn new(table: &'static TableDef) -> ColumnBuffer {
        ColumnBuffer {
            table,
            columns: table.columns.iter().map(|c| Column::new(c.staging)).collect(),
            next: 0,
            rows: 0,
        }
    }

    pub(super) fn rows(&self) -> usize {
        self.rows
    }

    pub(super) fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The column the next value goes to, which must be `name`, staged as `staging`.
    fn column(&mut self, name: &'static str, staging: Staging) -> &mut Column {
        let i = self.next;
        if cfg!(debug_assertions) {
            self.check(i, name, staging);
        }
        self.next += 1;
        &mut self.columns[i]
    }

    /// Panics unless the catalogue's column `i` is `name`, staged as `staging`: a push out of order or of the
    /// wrong kind (debug builds only; release builds only check that the value fits the column's vector).
    fn check(&self, i: usize, name: &'static str, staging: Staging) {
        let table = self.table.name;
        match self.table.columns.get(i) {
            Some(ColumnDef { name: expected, staging: kind, .. }) => assert!(
                *expected == name && *kind == staging,
                "{table}: pushed {name} as {staging:?} where the catalogue's column {} is {expected} ({kind:?})",
                i + 1,
            ),
            None => panic!("{table}: pushed {name} after the catalogue's last column"),
        }
    }

    pub(super) fn opt_text(&mut self, name: &'static str, value: Option<&str>) -> &mut Self {
        self.push_text(name, Staging::Text, value.map(without_nul))
    }

    pub(super) fn text(&mut self, name: &'static str, value: &str) -> &mut Self {
        self.opt_text(name, Some(value))
    }

    /// A JSON document as text (for a `jsonb` column).
    pub(super) fn opt_json(&mut self, name: &'static str, value: Option<&str>) -> &mut Self {
        self.push_text(name, Staging::Jsonb, value.map(without_nul))
    }

    pub(super) fn json(&mut self, name: &'static str, value: &str) -> &mut Self {
        self.opt_json(name, Some(value))
    }

    fn push_text(&mut self, name: &'static str, staging: Staging, value: Option<String>) -> &mut Self {
        match self.column(name, staging) {
            Column::Text(values) => values.push(value),
            other => unreachable!("{name} pushed as text, created as {other:?}"),
        }
        self
    }

    pub(super) fn opt_int(&mut self, name: &'static str, value: Option<i64>) -> &mut Self {
        self.push_int(name, Staging::Int8, value)
    }

    pub(super) fn int(&mut self, name: &'static str, value: i64) -> &mut Self {
        self.opt_int(name, Some(value))
    }

    /// Unix seconds (for a `timestamptz` column).
    pub(super) fn unix_seconds(&mut self, name: &'static str, value: i64) -> &mut Self {
        self.push_int(name, Staging::UnixSeconds, Some(value))
    }

    fn push_int(&mut self, name: &'static str, staging: Staging, value: Option<i64>) -> &mut Self {
        match self.column(name, staging) {
            Column::Int(values) => values.push(value),
            other => unreachable!("{name} pushed as int, created as {other:?}"),
        }
        self
    }

    pub(super) fn opt_float(&mut self, name: &'static str, value: Option<f64>) -> &mut Self {
        match self.column(name, Staging::Float8) {
            Column::Float(values) => values.push(value),
            other => unreachable!("{name} pushed as float, created as {other:?}"),
        }
        self
    }

    pub(super) fn float(&mut self, name: &'static str, value: f64) -> &mut Self {
        self.opt_float(name, Some(value))
    }

    pub(super) fn bool(&mut self, name: &'static str, value: bool) -> &mut Self {
        match self.column(name, Staging::Bool) {
            Column::Bool(values) => values.push(value),
            other => unreachable!("{name} pushed as bool, created as {other:?}"),
        }
        self
    }

    /// A `text[]` value, sent as an array literal (`{"a","b"}`) that the statement casts. Every element is
    /// quoted, so commas, braces, quotes and the word NULL stay text.
    pub(super) fn opt_text_array<'a>(
        &mut self,
        name: &'static str,
        items: Option<impl IntoIterator<Item = &'a str>>,
    ) -> &mut Self {
        let literal = items.map(|items| {
            let mut literal = String::from("{");
            for (i, item) in items.into_iter().enumerate() {
                if i > 0 {
                    literal.push(',');
                }
                literal.push('"');
                for c in item.chars() {
                    if c == '"' || c == '\\' {
                        literal.push('\\');
                    }
                    literal.push(c);
                }
                literal.push('"');
            }
            literal.push('}');
            if literal.contains('\0') { literal.replace('\0', "\u{FFFD}") } else { literal }
        });
        self.push_text(name, Staging::TextArray, literal)
    }

    pub(super) fn text_array<'a>(&mut self, name: &'static str, items: impl IntoIterator<Item = &'a str>) -> &mut Self {
        self.opt_text_array(name, Some(items))
    }

    pub(super) fn end_row(&mut self) {
        debug_assert_eq!(self.next, self.columns.len(), "{}: every row must push every column", self.table.name);
        self.next = 0;
        self.rows += 1;
    }

    /// The column `name`'s values, if the table has it.
    fn named(&self, name: &str) -> Option<&Column> {
        self.table.position(name).map(|i| &self.columns[i])
    }

    /// The values of the text column `name` (empty if the table has no such text column).
    pub(super) fn text_column(&self, name: &str) -> &[Option<String>] {
        match self.named(name) {
            Some(Column::Text(values)) => values,
            _ => &[],
        }
    }

    /// The values of the integer column `name` (empty if the table has no such integer column).
    pub(super) fn int_column(&self, name: &str) -> &[Option<i64>] {
        match self.named(name) {
            Some(Column::Int(values)) => values,
            _ => &[],
        }
    }

    /// The values of the float column `name` (empty if the table has no such float column).
    pub(super) fn float_column(&self, name: &str) -> &[Option<f64>] {
        match self.named(name) {
            Some(Column::Float(values)) => values,
            _ => &[],
        }
    }

    /// The values of the boolean column `name` (empty if the table has no such boolean column).
    pub(super) fn bool_column(&self, name: &str) -> &[bool] {
        match self.named(name) {
            Some(Column::Bool(values)) => values,
            _ => &[],
        }
    }

    /// The rows in PostgreSQL's COPY text format, in the catalogue's column order. Unix seconds are written as
    /// UTC timestamps.
    pub(super) fn copy_text(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes());
        for row in 0..self.rows {
            for (i, (column, def)) in self.columns.iter().zip(self.table.columns).enumerate() {
                if i > 0 {
                    out.push(b'\t');
                }
                match column {
                    Column::Text(v) => match &v[row] {
                        Some(text) => escape_copy(&mut out, text),
                        None => out.extend_from_slice(b"\\N"),
                    },
                    Column::Int(v) => match v[row] {
                        Some(n) if def.staging == Staging::UnixSeconds => {
                            match chrono::DateTime::from_timestamp(n, 0) {
                                Some(t) => {
                                    out.extend_from_slice(t.format("%Y-%m-%d %H:%M:%S+00").to_string().as_bytes())
                                }
                                None => out.extend_from_slice(b"\\N"),
                            }
                        }
                        Some(n) => out.extend_from_slice(n.to_string().as_bytes()),
                        None => out.extend_from_slice(b"\\N"),
                    },
                    // Rust's shortest round-trip form reads back as the same double in PostgreSQL.
                    Column::Float(v) => match v[row] {
                        Some(f) => out.extend_from_slice(format!("{f:?}").as_bytes()),
                        None => out.extend_from_slice(b"\\N"),
                    },
                    Column::Bool(v) => out.push(if v[row] { b't' } else { b'f' }),
                }
            }
            out.push(b'\n');
        }
        out
    }

    /// Approximate bytes held (the COPY text's first allocation).
    fn bytes(&self) -> usize {
        self.columns
            .iter()
            .map(|c| match c {
                Column::Text(v) => v.iter().map(|s| s.as_ref().map_or(0, String::len) + 24).sum(),
                Column::Int(v) => v.len() * 16,
                Column::Float(v) => v.len() * 16,
                Column::Bool(v) => v.len(),
            })
            .sum()
    }
}

/// One table's rows of a batch in PostgreSQL's COPY text format, with the columns they follow.
#[derive(Debug)]
pub struct CopyPayload {
    pub table: &'static str,
    pub columns: Vec<&'static str>,
    pub rows: usize,
    pub text: Vec<u8>,
}

impl CopyPayload {
    /// `buffer`'s rows of `table`.
    pub(super) fn of(table: &TableDef, buffer: &ColumnBuffer) -> CopyPayload {
        CopyPayload {
            table: table.name,
            columns: table.columns.iter().map(|c| c.name).collect(),
            rows: buffer.rows(),
            text: buffer.copy_text(),
        }
    }

    /// `copy {qualifier}{table} (cols) from stdin`.
    pub fn statement(&self, qualifier: &str) -> String {
        format!("copy {qualifier}{} ({}) from stdin", self.table, self.columns.join(", "))
    }
}

/// PostgreSQL text cannot hold NUL; keep the row rather than fail the page.
fn without_nul(value: &str) -> String {
    if value.contains('\0') { value.replace('\0', "\u{FFFD}") } else { value.to_owned() }
}

/// COPY text escaping: backslash, tab, newline and carriage return (NUL was replaced when the value was pushed).
/// Copies the runs between special bytes whole: every `raw` JSON has some backslashes, few of them.
fn escape_copy(out: &mut Vec<u8>, value: &str) {
    let mut rest = value.as_bytes();
    while let Some(at) = rest.iter().position(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r')) {
        out.extend_from_slice(&rest[..at]);
        out.extend_from_slice(match rest[at] {
            b'\\' => b"\\\\",
            b'\t' => b"\\t",
            b'\n' => b"\\n",
            _ => b"\\r",
        });
        rest = &rest[at + 1..];
    }
    out.extend_from_slice(rest);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::catalogue::Staging::*;

    const fn col(name: &'static str, staging: Staging) -> ColumnDef {
        ColumnDef { name, sql_type: "", staging }
    }

    /// A table with a column of every staging.
    const EVERY_KIND: TableDef = TableDef {
        name: "every_kind",
        columns: &[
            col("a", Text),
            col("b", Text),
            col("c", UnixSeconds),
            col("d", Int8),
            col("e", Float8),
            col("f", Bool),
            col("g", TextArray),
            col("h", Jsonb),
        ],
        unloaded: &[],
    };

    const TWO_TEXTS: TableDef =
        TableDef { name: "two_texts", columns: &[col("a", Text), col("b", Text)], unloaded: &[] };

    const ARRAYS: TableDef = TableDef { name: "arrays", columns: &[col("a", TextArray)], unloaded: &[] };

    #[test]
    fn array_literals_quote_every_element() {
        let mut b = ColumnBuffer::new(&ARRAYS);
        b.text_array("a", ["a,b", "{x}", "q\"", "NULL", "back\\slash"]).end_row();
        b.text_array("a", []).end_row();
        b.text_array("a", ["n\0ul"]).end_row();
        let Column::Text(values) = &b.columns[0] else { panic!() };
        assert_eq!(values[0].as_deref(), Some(r#"{"a,b","{x}","q\"","NULL","back\\slash"}"#));
        assert_eq!(values[1].as_deref(), Some("{}"));
        assert_eq!(values[2].as_deref(), Some("{\"n\u{FFFD}ul\"}"));
    }

    #[test]
    fn copy_text_escapes_and_formats_every_type() {
        let mut b = ColumnBuffer::new(&EVERY_KIND);
        b.text("a", "a\tb\nc\\d\re").opt_text("b", None).unix_seconds("c", 1_700_000_000).int("d", -5);
        b.float("e", 0.1).bool("f", true).text_array("g", ["x\\y"]).json("h", r#"{"k":"\n"}"#).end_row();
        let text = String::from_utf8(b.copy_text()).unwrap();
        assert_eq!(
            text,
            "a\\tb\\nc\\\\d\\re\t\\N\t2023-11-14 22:13:20+00\t-5\t0.1\tt\t{\"x\\\\\\\\y\"}\t{\"k\":\"\\\\n\"}\n"
        );
    }

    #[test]
    fn nul_becomes_replacement_character() {
        let mut b = ColumnBuffer::new(&TWO_TEXTS);
        b.text("a", "a\0b").opt_text("b", None).end_row();
        let Column::Text(values) = &b.columns[0] else { panic!() };
        assert_eq!(values[0].as_deref(), Some("a\u{FFFD}b"));
        assert_eq!(b.columns.len(), 2);
        assert_eq!(b.rows(), 1);
        assert_eq!(b.text_column("a").len(), 1);
        assert!(b.text_column("z").is_empty());
    }

    #[test]
    #[cfg_attr(debug_assertions, should_panic(expected = "pushed b as Text where the catalogue's column 1 is a"))]
    fn a_push_out_of_order_panics_in_debug_builds() {
        ColumnBuffer::new(&TWO_TEXTS).text("b", "x").text("a", "y").end_row();
    }

    #[test]
    #[cfg_attr(
        debug_assertions,
        should_panic(expected = "pushed h as Text where the catalogue's column 8 is h (Jsonb)")
    )]
    fn a_push_of_the_wrong_kind_panics_in_debug_builds() {
        let mut b = ColumnBuffer::new(&EVERY_KIND);
        b.text("a", "").text("b", "").unix_seconds("c", 0).int("d", 0).float("e", 0.0).bool("f", false);
        b.text_array("g", []).text("h", "{}").end_row();
    }

    #[test]
    #[should_panic(expected = "after the catalogue's last column")]
    #[cfg(debug_assertions)]
    fn a_push_past_the_last_column_panics() {
        ColumnBuffer::new(&TWO_TEXTS).text("a", "").text("b", "").text("c", "");
    }
}
