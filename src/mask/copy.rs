//! COPY TO STDOUT of a covered identity: the rows leave as CopyData, not
//! DataRow, so they need a plan of their own.
//!
//! The relay recognises a simple Query that is exactly one `COPY ... TO
//! STDOUT` statement, and before forwarding it asks the server to describe
//! the equivalent SELECT (`SELECT cols FROM table`, or the query of
//! `COPY (query)`). The description gives the same plan a SELECT would get,
//! and each CopyData row is rewritten column by column in the text or CSV
//! format that the statement chose.
//!
//! Binary COPY is refused for covered identities: its values would need
//! every type's binary encoding inside a stream of its own framing, and a
//! refusal is the safe answer. So is a COPY that pgveil cannot describe
//! (sent through the extended protocol, or in a multi-statement Query).

use sqlparser::ast::{
    CopyLegacyCsvOption, CopyLegacyOption, CopyOption, CopySource, CopyTarget, Statement,
};
use sqlparser::dialect::PostgreSqlDialect;
use sqlparser::parser::Parser;

use crate::mask::plan::Plan;

/// The row format of a COPY.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CopyFormat {
    /// PostgreSQL's text format.
    Text {
        /// Column separator.
        delimiter: u8,
        /// How NULL is written.
        null: Vec<u8>,
    },
    /// CSV.
    Csv {
        /// Column separator.
        delimiter: u8,
        /// Quote character.
        quote: u8,
        /// Character that escapes a quote inside a quoted value.
        escape: u8,
        /// How NULL is written (unquoted).
        null: Vec<u8>,
        /// Whether the first row is a header.
        header: bool,
    },
    /// Binary format.
    Binary,
}

/// A `COPY ... TO STDOUT` and what describes its rows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CopyOut {
    /// A SELECT with the same result columns.
    pub describe_sql: String,
    /// The row format.
    pub format: CopyFormat,
}

/// Whether `sql` is one `COPY ... TO STDOUT` statement, and if so how to
/// describe and read its rows.
pub fn parse_copy_out(sql: &str) -> Option<CopyOut> {
    // Cheap test first: most statements are not COPY.
    if !sql
        .as_bytes()
        .windows(4)
        .any(|w| w.eq_ignore_ascii_case(b"copy"))
    {
        return None;
    }
    let mut statements = Parser::parse_sql(&PostgreSqlDialect {}, sql).ok()?;
    if statements.len() != 1 {
        return None;
    }
    let Statement::Copy {
        source,
        to: true,
        target: CopyTarget::Stdout,
        options,
        legacy_options,
        ..
    } = statements.pop()?
    else {
        return None;
    };
    let describe_sql = match source {
        CopySource::Table {
            table_name,
            columns,
        } if columns.is_empty() => format!("SELECT * FROM {table_name}"),
        CopySource::Table {
            table_name,
            columns,
        } => {
            let cols: Vec<String> = columns.iter().map(ToString::to_string).collect();
            format!("SELECT {} FROM {table_name}", cols.join(", "))
        }
        CopySource::Query(query) => query.to_string(),
    };
    Some(CopyOut {
        describe_sql,
        format: copy_format(&options, &legacy_options)?,
    })
}

/// The format the options choose; `None` for options pgveil cannot follow
/// (a multi-byte delimiter, say), which makes the COPY refused.
fn copy_format(options: &[CopyOption], legacy: &[CopyLegacyOption]) -> Option<CopyFormat> {
    let mut kind = "text".to_owned();
    let (mut delimiter, mut quote, mut escape) = (None, b'"', None);
    let (mut null, mut header) = (None, false);
    let byte = |c: char| u8::try_from(c).ok().filter(u8::is_ascii);
    for o in options {
        match o {
            CopyOption::Format(f) => kind = f.value.to_lowercase(),
            CopyOption::Delimiter(c) => delimiter = Some(byte(*c)?),
            CopyOption::Null(s) => null = Some(s.clone().into_bytes()),
            CopyOption::Header(h) => header = *h,
            CopyOption::Quote(c) => quote = byte(*c)?,
            CopyOption::Escape(c) => escape = Some(byte(*c)?),
            // FORCE_QUOTE changes quoting only, which the reader handles.
            _ => {}
        }
    }
    for o in legacy {
        match o {
            CopyLegacyOption::Binary => kind = "binary".into(),
            CopyLegacyOption::Delimiter(c) => delimiter = Some(byte(*c)?),
            CopyLegacyOption::Null(s) => null = Some(s.clone().into_bytes()),
            CopyLegacyOption::Header => header = true,
            CopyLegacyOption::Csv(csv) => {
                kind = "csv".into();
                for c in csv {
                    match c {
                        CopyLegacyCsvOption::Header => header = true,
                        CopyLegacyCsvOption::Quote(q) => quote = byte(*q)?,
                        CopyLegacyCsvOption::Escape(e) => escape = Some(byte(*e)?),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(match kind.as_str() {
        "text" => CopyFormat::Text {
            delimiter: delimiter.unwrap_or(b'\t'),
            null: null.unwrap_or_else(|| b"\\N".to_vec()),
        },
        "csv" => CopyFormat::Csv {
            delimiter: delimiter.unwrap_or(b','),
            quote,
            escape: escape.unwrap_or(quote),
            null: null.unwrap_or_default(),
            header,
        },
        "binary" => CopyFormat::Binary,
        _ => return None,
    })
}

/// Rewrites one row (a CopyData payload, with its line end) by `plan`.
/// `None` when the row does not have the plan's shape.
pub fn rewrite_row(format: &CopyFormat, plan: &Plan, row: &[u8]) -> Option<Vec<u8>> {
    let line = row.strip_suffix(b"\n")?;
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    let mut out = Vec::with_capacity(row.len());
    match format {
        CopyFormat::Text { delimiter, null } => {
            let fields = split_text(line, *delimiter);
            if fields.len() != plan.width() {
                return None;
            }
            for (i, raw) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(*delimiter);
                }
                let value = (raw != null).then(|| unescape_text(raw));
                match plan.mask_column(i, value.as_deref()) {
                    None => out.extend_from_slice(raw),
                    Some(None) => out.extend_from_slice(null),
                    Some(Some(v)) => escape_text(&v, *delimiter, &mut out),
                }
            }
        }
        CopyFormat::Csv {
            delimiter,
            quote,
            escape,
            null,
            ..
        } => {
            let fields = split_csv(line, *delimiter, *quote, *escape)?;
            if fields.len() != plan.width() {
                return None;
            }
            for (i, (raw, quoted, value)) in fields.iter().enumerate() {
                if i > 0 {
                    out.push(*delimiter);
                }
                let value = (*quoted || raw != null).then_some(value.as_slice());
                match plan.mask_column(i, value) {
                    None => out.extend_from_slice(raw),
                    Some(None) => out.extend_from_slice(null),
                    Some(Some(v)) => quote_csv(&v, *quote, *escape, &mut out),
                }
            }
        }
        CopyFormat::Binary => return None,
    }
    out.push(b'\n');
    Some(out)
}

/// Splits a text-format line at unescaped delimiters (raw field bytes).
fn split_text(line: &[u8], delimiter: u8) -> Vec<&[u8]> {
    let mut fields = Vec::new();
    let (mut start, mut i) = (0, 0);
    while i < line.len() {
        if line[i] == b'\\' {
            i += 2;
            continue;
        }
        if line[i] == delimiter {
            fields.push(&line[start..i]);
            start = i + 1;
        }
        i += 1;
    }
    fields.push(&line[start.min(line.len())..]);
    fields
}

/// Decodes the backslash escapes of a text-format field.
fn unescape_text(raw: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(raw.len());
    let mut i = 0;
    while i < raw.len() {
        let b = raw[i];
        i += 1;
        if b != b'\\' || i >= raw.len() {
            out.push(b);
            continue;
        }
        let c = raw[i];
        i += 1;
        match c {
            b'b' => out.push(8),
            b'f' => out.push(12),
            b'n' => out.push(b'\n'),
            b'r' => out.push(b'\r'),
            b't' => out.push(b'\t'),
            b'v' => out.push(11),
            b'0'..=b'7' => {
                let mut v = u32::from(c - b'0');
                for _ in 0..2 {
                    match raw.get(i) {
                        Some(d @ b'0'..=b'7') => {
                            v = v * 8 + u32::from(d - b'0');
                            i += 1;
                        }
                        _ => break,
                    }
                }
                out.push((v & 0xff) as u8);
            }
            b'x' if raw.get(i).is_some_and(u8::is_ascii_hexdigit) => {
                let mut v = 0u32;
                for _ in 0..2 {
                    match raw.get(i).and_then(|d| char::from(*d).to_digit(16)) {
                        Some(d) => {
                            v = v * 16 + d;
                            i += 1;
                        }
                        None => break,
                    }
                }
                out.push(v as u8);
            }
            other => out.push(other),
        }
    }
    out
}

/// Writes a value in text format, escaping what the reader would take for
/// structure.
fn escape_text(v: &[u8], delimiter: u8, out: &mut Vec<u8>) {
    for &b in v {
        match b {
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            8 => out.extend_from_slice(b"\\b"),
            12 => out.extend_from_slice(b"\\f"),
            11 => out.extend_from_slice(b"\\v"),
            _ if b == delimiter => {
                out.push(b'\\');
                out.push(b);
            }
            _ => out.push(b),
        }
    }
}

/// A CSV field: its raw bytes, whether it was quoted, and its value. An
/// unquoted field equal to the NULL string is NULL.
type CsvField<'a> = (&'a [u8], bool, Vec<u8>);

/// Splits a CSV line into fields; `None` for an unterminated quote.
fn split_csv(line: &[u8], delimiter: u8, quote: u8, escape: u8) -> Option<Vec<CsvField<'_>>> {
    let mut fields = Vec::new();
    let mut i = 0;
    loop {
        let start = i;
        let mut value = Vec::new();
        let mut quoted = false;
        while i < line.len() && line[i] != delimiter {
            if line[i] != quote {
                value.push(line[i]);
                i += 1;
                continue;
            }
            quoted = true;
            i += 1;
            loop {
                let b = *line.get(i)?;
                // Inside quotes, the escape character before a quote or
                // another escape stands for that character (with the
                // default escape, a doubled quote).
                let next = line.get(i + 1).copied();
                if b == escape && next.is_some_and(|n| n == quote || n == escape) {
                    value.push(next.unwrap_or(quote));
                    i += 2;
                } else if b == quote {
                    i += 1;
                    break;
                } else {
                    value.push(b);
                    i += 1;
                }
            }
        }
        let raw = &line[start..i];
        fields.push((raw, quoted, value));
        if i >= line.len() {
            return Some(fields);
        }
        i += 1;
    }
}

/// Writes a value as a quoted CSV field.
fn quote_csv(v: &[u8], quote: u8, escape: u8, out: &mut Vec<u8>) {
    out.push(quote);
    for &b in v {
        if b == quote || (b == escape && escape != quote) {
            out.push(escape);
        }
        out.push(b);
    }
    out.push(quote);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recognises_copy_out_and_its_format() {
        let c =
            parse_copy_out("copy customers (email, \"Name\") to stdout with (format csv, header)")
                .unwrap();
        assert_eq!(c.describe_sql, "SELECT email, \"Name\" FROM customers");
        assert!(matches!(
            c.format,
            CopyFormat::Csv {
                header: true,
                delimiter: b',',
                ..
            }
        ));
        let c =
            parse_copy_out("COPY (SELECT email FROM customers WHERE id < 5) TO STDOUT").unwrap();
        assert_eq!(c.describe_sql, "SELECT email FROM customers WHERE id < 5");
        assert!(matches!(
            c.format,
            CopyFormat::Text {
                delimiter: b'\t',
                ..
            }
        ));
        let c =
            parse_copy_out("COPY public.orders TO STDOUT WITH CSV HEADER DELIMITER ';'").unwrap();
        assert!(matches!(
            c.format,
            CopyFormat::Csv {
                delimiter: b';',
                header: true,
                ..
            }
        ));
        let c = parse_copy_out("COPY customers TO STDOUT (FORMAT binary)").unwrap();
        assert_eq!(c.format, CopyFormat::Binary);
        assert!(parse_copy_out("COPY customers FROM STDIN").is_none());
        assert!(parse_copy_out("COPY customers TO '/tmp/x'").is_none());
        assert!(parse_copy_out("SELECT 1; COPY customers TO STDOUT").is_none());
        assert!(parse_copy_out("SELECT copycat FROM t").is_none());
    }

    #[test]
    fn text_fields_round_trip() {
        let line = b"a\\tb\tx\\\\y\t\\N\tend";
        let fields = split_text(line, b'\t');
        assert_eq!(fields.len(), 4);
        assert_eq!(unescape_text(fields[0]), b"a\tb");
        assert_eq!(unescape_text(fields[1]), b"x\\y");
        assert_eq!(fields[2], b"\\N");
        assert_eq!(unescape_text(b"\\101\\x42"), b"AB");
        let mut out = Vec::new();
        escape_text(b"a\tb\\c\n", b'\t', &mut out);
        assert_eq!(out, b"a\\tb\\\\c\\n");
    }

    #[test]
    fn csv_fields_with_quotes_and_nulls() {
        let fields = split_csv(b"1,\"a,\"\"b\"\"\",,\"\"", b',', b'"', b'"').unwrap();
        assert_eq!(fields.len(), 4);
        assert_eq!(fields[1].2, b"a,\"b\"");
        assert_eq!(
            (fields[2].0, fields[2].1),
            (&b""[..], false),
            "unquoted empty"
        );
        assert_eq!(
            (fields[3].2.as_slice(), fields[3].1),
            (&b""[..], true),
            "quoted empty"
        );
        assert!(split_csv(b"\"open", b',', b'"', b'"').is_none());
        let mut out = Vec::new();
        quote_csv(b"x\"y", b'"', b'"', &mut out);
        assert_eq!(out, b"\"x\"\"y\"");
    }
}
