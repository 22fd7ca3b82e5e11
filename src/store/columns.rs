//! Column-oriented buffers: the rows of one table as one array per column, bound as statement parameters and
//! expanded server-side with `unnest(...)`. One statement carries a whole batch in a single write.
//!
//! Why not COPY: sqlx 0.9.0 no longer sets TCP_NODELAY, and COPY's write–write–read pattern (CopyData, then
//! CopyDone) then waits for a delayed ACK — about 40 ms per COPY on TCP. A bound statement goes out in one write.

/// One column's values.
#[derive(Debug)]
pub(super) enum Column {
    Text(Vec<Option<String>>),
    Int(Vec<Option<i64>>),
    Float(Vec<Option<f64>>),
    Bool(Vec<bool>),
}

/// The rows of one table, column by column, in the order the values are pushed.
#[derive(Debug, Default)]
pub struct ColumnBuffer {
    pub(super) columns: Vec<Column>,
    next: usize,
    rows: usize,
}

impl ColumnBuffer {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    /// The column the next value goes to, created by the first row.
    fn column(&mut self, make: fn() -> Column) -> &mut Column {
        if self.next == self.columns.len() {
            debug_assert_eq!(self.rows, 0, "every row must push the same columns");
            self.columns.push(make());
        }
        self.next += 1;
        &mut self.columns[self.next - 1]
    }

    pub fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        // PostgreSQL text cannot hold NUL; keep the row rather than fail the page.
        let value = value.map(|v| if v.contains('\0') { v.replace('\0', "\u{FFFD}") } else { v.to_owned() });
        match self.column(|| Column::Text(Vec::new())) {
            Column::Text(values) => values.push(value),
            other => unreachable!("column pushed as text, created as {other:?}"),
        }
        self
    }

    pub fn text(&mut self, value: &str) -> &mut Self {
        self.opt_text(Some(value))
    }

    pub fn opt_int(&mut self, value: Option<i64>) -> &mut Self {
        match self.column(|| Column::Int(Vec::new())) {
            Column::Int(values) => values.push(value),
            other => unreachable!("column pushed as int, created as {other:?}"),
        }
        self
    }

    pub fn int(&mut self, value: i64) -> &mut Self {
        self.opt_int(Some(value))
    }

    pub fn opt_float(&mut self, value: Option<f64>) -> &mut Self {
        match self.column(|| Column::Float(Vec::new())) {
            Column::Float(values) => values.push(value),
            other => unreachable!("column pushed as float, created as {other:?}"),
        }
        self
    }

    pub fn float(&mut self, value: f64) -> &mut Self {
        self.opt_float(Some(value))
    }

    pub fn bool(&mut self, value: bool) -> &mut Self {
        match self.column(|| Column::Bool(Vec::new())) {
            Column::Bool(values) => values.push(value),
            other => unreachable!("column pushed as bool, created as {other:?}"),
        }
        self
    }

    /// A `text[]` value, sent as an array literal (`{"a","b"}`) that the statement casts: unnest cannot
    /// take an array of arrays of different lengths. Every element is quoted, so commas, braces, quotes and
    /// the word NULL stay text.
    pub fn opt_text_array<'a>(&mut self, items: Option<impl IntoIterator<Item = &'a str>>) -> &mut Self {
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
            literal
        });
        self.opt_text(literal.as_deref())
    }

    pub fn text_array<'a>(&mut self, items: impl IntoIterator<Item = &'a str>) -> &mut Self {
        self.opt_text_array(Some(items))
    }

    pub fn end_row(&mut self) {
        debug_assert_eq!(self.next, self.columns.len(), "every row must push the same columns");
        self.next = 0;
        self.rows += 1;
    }

    /// The values of a text column (e.g. `session_id`, always column 0 of every table).
    pub(super) fn text_column(&self, index: usize) -> &[Option<String>] {
        match self.columns.get(index) {
            Some(Column::Text(values)) => values,
            _ => &[],
        }
    }

    /// The rows in PostgreSQL's COPY text format. Columns listed in `timestamps` hold Unix seconds and are
    /// written as UTC timestamps.
    pub(super) fn copy_text(&self, timestamps: &[usize]) -> Vec<u8> {
        let mut out = Vec::with_capacity(self.bytes());
        for row in 0..self.rows {
            for (i, column) in self.columns.iter().enumerate() {
                if i > 0 {
                    out.push(b'\t');
                }
                match column {
                    Column::Text(v) => match &v[row] {
                        Some(text) => escape_copy(&mut out, text),
                        None => out.extend_from_slice(b"\\N"),
                    },
                    Column::Int(v) => match v[row] {
                        Some(n) if timestamps.contains(&i) => match chrono::DateTime::from_timestamp(n, 0) {
                            Some(t) => out.extend_from_slice(t.format("%Y-%m-%d %H:%M:%S+00").to_string().as_bytes()),
                            None => out.extend_from_slice(b"\\N"),
                        },
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

    /// Approximate bytes held, to bound a batch's memory.
    pub fn bytes(&self) -> usize {
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

    #[test]
    fn array_literals_quote_every_element() {
        let mut b = ColumnBuffer::default();
        b.text_array(["a,b", "{x}", "q\"", "NULL", "back\\slash"]).end_row();
        b.text_array([]).end_row();
        let Column::Text(values) = &b.columns[0] else { panic!() };
        assert_eq!(values[0].as_deref(), Some(r#"{"a,b","{x}","q\"","NULL","back\\slash"}"#));
        assert_eq!(values[1].as_deref(), Some("{}"));
    }

    #[test]
    fn copy_text_escapes_and_formats_every_type() {
        let mut b = ColumnBuffer::default();
        b.text("a\tb\nc\\d\re").opt_text(None).int(1_700_000_000).int(-5).float(0.1).bool(true);
        b.text_array(["x\\y"]).end_row();
        let text = String::from_utf8(b.copy_text(&[2])).unwrap();
        assert_eq!(text, "a\\tb\\nc\\\\d\\re\t\\N\t2023-11-14 22:13:20+00\t-5\t0.1\tt\t{\"x\\\\\\\\y\"}\n");
    }

    #[test]
    fn nul_becomes_replacement_character() {
        let mut b = ColumnBuffer::default();
        b.text("a\0b").opt_text(None).end_row();
        let Column::Text(values) = &b.columns[0] else { panic!() };
        assert_eq!(values[0].as_deref(), Some("a\u{FFFD}b"));
        assert_eq!(b.columns.len(), 2);
        assert_eq!(b.rows(), 1);
    }
}
