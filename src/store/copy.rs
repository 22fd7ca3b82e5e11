//! Encoder for PostgreSQL's `COPY … FROM STDIN` text format: one buffer per staging table, filled row by row.
//!
//! Text format rules: columns separated by tab, rows ended by newline, `\N` for NULL, and backslash, tab,
//! newline and carriage return escaped. Arrays are array literals (`{"a","b"}`) escaped once more for COPY.
//! PostgreSQL text cannot hold NUL, so a NUL from the API becomes U+FFFD rather than failing the page.

use std::fmt::Write as _;

/// Rows of one table in COPY text format.
#[derive(Debug)]
pub struct CopyBuffer {
    bytes: Vec<u8>,
    rows: usize,
    at_row_start: bool,
}

impl Default for CopyBuffer {
    fn default() -> CopyBuffer {
        CopyBuffer { bytes: Vec::new(), rows: 0, at_row_start: true }
    }
}

impl CopyBuffer {
    pub fn rows(&self) -> usize {
        self.rows
    }

    pub fn is_empty(&self) -> bool {
        self.rows == 0
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.bytes
    }

    fn separator(&mut self) {
        if self.at_row_start {
            self.at_row_start = false;
        } else {
            self.bytes.push(b'\t');
        }
    }

    pub fn null(&mut self) -> &mut Self {
        self.separator();
        self.bytes.extend_from_slice(b"\\N");
        self
    }

    pub fn text(&mut self, value: &str) -> &mut Self {
        self.separator();
        escape_into(&mut self.bytes, value);
        self
    }

    pub fn opt_text(&mut self, value: Option<&str>) -> &mut Self {
        match value {
            Some(v) => self.text(v),
            None => self.null(),
        }
    }

    pub fn int(&mut self, value: i64) -> &mut Self {
        self.separator();
        let _ = write!(Utf8Sink(&mut self.bytes), "{value}");
        self
    }

    pub fn opt_int(&mut self, value: Option<i64>) -> &mut Self {
        match value {
            Some(v) => self.int(v),
            None => self.null(),
        }
    }

    /// Finite floats only reach here (JSON has no NaN or infinity); Rust's shortest round-trip form parses
    /// back to the same double in PostgreSQL.
    pub fn float(&mut self, value: f64) -> &mut Self {
        self.separator();
        let _ = write!(Utf8Sink(&mut self.bytes), "{value:?}");
        self
    }

    pub fn opt_float(&mut self, value: Option<f64>) -> &mut Self {
        match value {
            Some(v) => self.float(v),
            None => self.null(),
        }
    }

    pub fn bool(&mut self, value: bool) -> &mut Self {
        self.separator();
        self.bytes.push(if value { b't' } else { b'f' });
        self
    }

    /// A `text[]` value: every element quoted, so commas, braces, quotes and the word NULL stay text.
    pub fn text_array<'a>(&mut self, items: impl IntoIterator<Item = &'a str>) -> &mut Self {
        self.separator();
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
        escape_into(&mut self.bytes, &literal);
        self
    }

    pub fn opt_text_array<'a>(&mut self, items: Option<impl IntoIterator<Item = &'a str>>) -> &mut Self {
        match items {
            Some(items) => self.text_array(items),
            None => self.null(),
        }
    }

    pub fn end_row(&mut self) {
        self.bytes.push(b'\n');
        self.rows += 1;
        self.at_row_start = true;
    }
}

fn escape_into(out: &mut Vec<u8>, value: &str) {
    // Fast path: most values need no escaping.
    if !value.bytes().any(|b| matches!(b, b'\\' | b'\t' | b'\n' | b'\r' | 0)) {
        out.extend_from_slice(value.as_bytes());
        return;
    }
    for &b in value.as_bytes() {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\t' => out.extend_from_slice(b"\\t"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            0 => out.extend_from_slice("\u{FFFD}".as_bytes()),
            _ => out.push(b),
        }
    }
}

/// Lets `write!` format numbers straight into the byte buffer (writing to a Vec cannot fail).
struct Utf8Sink<'a>(&'a mut Vec<u8>);

impl std::fmt::Write for Utf8Sink<'_> {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.0.extend_from_slice(s.as_bytes());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn encoded(f: impl FnOnce(&mut CopyBuffer)) -> String {
        let mut b = CopyBuffer::default();
        f(&mut b);
        b.end_row();
        String::from_utf8(b.as_bytes().to_vec()).unwrap()
    }

    #[test]
    fn escapes_text_and_nulls() {
        let row = encoded(|b| {
            b.text("a\tb\nc\\d\re").null().int(-5).bool(true).float(0.1);
        });
        assert_eq!(row, "a\\tb\\nc\\\\d\\re\t\\N\t-5\tt\t0.1\n");
    }

    #[test]
    fn arrays_quote_every_element() {
        let row = encoded(|b| {
            b.text_array(["a,b", "{x}", "q\"", "NULL", "back\\slash"]);
        });
        assert_eq!(row, "{\"a,b\",\"{x}\",\"q\\\\\"\",\"NULL\",\"back\\\\\\\\slash\"}\n");
        assert_eq!(
            encoded(|b| {
                b.text_array([]);
            }),
            "{}\n"
        );
    }

    #[test]
    fn nul_becomes_replacement_character() {
        assert_eq!(
            encoded(|b| {
                b.text("a\0b");
            }),
            "a\u{FFFD}b\n"
        );
    }
}
