//! Statement fingerprints: the text with every literal replaced by `?` and
//! comments and runs of white space collapsed.
//!
//! Two statements with the same fingerprint differ only in literal values,
//! which decide neither a statement's class, nor the relations and
//! functions it touches, nor where its result columns come from. So the
//! fingerprint keys the analysis cache (pgbench and ORMs in simple mode send
//! the same statement with new literals each time), and it is what an audit
//! trail can show without the values.
//!
//! The lexer follows PostgreSQL with `standard_conforming_strings` on (the
//! default, which pgveil keeps identities that masking covers from turning
//! off): `'...'` with `''` for a quote, `E'...'` with backslash escapes,
//! `$tag$...$tag$`, `"quoted identifiers"` (kept), numbers, and `--` and
//! nested `/* */` comments. Text it cannot lex with certainty (an
//! unterminated quote or comment) has no fingerprint.

/// The fingerprint of `sql`, or `None` when it cannot be lexed with
/// certainty.
pub fn fingerprint(sql: &str) -> Option<String> {
    let b = sql.as_bytes();
    let mut out = String::with_capacity(sql.len());
    let mut i = 0;
    let ident = |c: u8| c.is_ascii_alphanumeric() || c == b'_' || c >= 0x80;
    let mut space = false;
    while i < b.len() {
        let c = b[i];
        let prev = out.as_bytes().last().copied();
        let literal = |out: &mut String, space: &mut bool| {
            if *space && !out.is_empty() {
                out.push(' ');
            }
            *space = false;
            out.push('?');
        };
        match c {
            b' ' | b'\t' | b'\n' | b'\r' | b'\x0c' => {
                space = true;
                i += 1;
            }
            b'-' if b.get(i + 1) == Some(&b'-') => {
                while i < b.len() && b[i] != b'\n' {
                    i += 1;
                }
                space = true;
            }
            b'/' if b.get(i + 1) == Some(&b'*') => {
                let mut depth = 0usize;
                loop {
                    match (b.get(i), b.get(i + 1)) {
                        (Some(b'/'), Some(b'*')) => {
                            depth += 1;
                            i += 2;
                        }
                        (Some(b'*'), Some(b'/')) => {
                            depth -= 1;
                            i += 2;
                            if depth == 0 {
                                break;
                            }
                        }
                        (Some(_), _) => i += 1,
                        (None, _) => return None,
                    }
                }
                space = true;
            }
            b'\'' => {
                i = skip_quoted(b, i, false)?;
                literal(&mut out, &mut space);
            }
            b'e' | b'E' if b.get(i + 1) == Some(&b'\'') && (space || !prev.is_some_and(ident)) => {
                i = skip_quoted(b, i + 1, true)?;
                literal(&mut out, &mut space);
            }
            b'"' => {
                let end = b[i + 1..].iter().position(|&q| q == b'"')? + i + 2;
                // A doubled quote continues the identifier.
                let mut end = end;
                while b.get(end) == Some(&b'"') {
                    end = b[end + 1..].iter().position(|&q| q == b'"')? + end + 2;
                }
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                out.push_str(&sql[i..end]);
                i = end;
            }
            b'$' if b.get(i + 1).is_some_and(u8::is_ascii_digit) => {
                // A parameter: kept.
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                let start = i;
                i += 1;
                while i < b.len() && b[i].is_ascii_digit() {
                    i += 1;
                }
                out.push_str(&sql[start..i]);
            }
            b'$' if !prev.is_some_and(ident) || space => {
                // `$tag$`: the tag is identifier characters (a digit first
                // would be a parameter, handled above).
                let mut close = i + 1;
                while close < b.len() && b[close] != b'$' && ident(b[close]) {
                    close += 1;
                }
                if b.get(close) != Some(&b'$') {
                    return None;
                }
                let tag = &b[i..=close];
                let body = &b[close + 1..];
                let end = body.windows(tag.len()).position(|w| w == tag)?;
                i = close + 1 + end + tag.len();
                literal(&mut out, &mut space);
            }
            b'0'..=b'9' if !prev.is_some_and(ident) || space => {
                while i < b.len() && (b[i].is_ascii_alphanumeric() || b[i] == b'.' || b[i] == b'_')
                {
                    i += 1;
                }
                literal(&mut out, &mut space);
            }
            _ => {
                if space && !out.is_empty() {
                    out.push(' ');
                }
                space = false;
                let ch_len = sql[i..].chars().next().map_or(1, char::len_utf8);
                out.push_str(&sql[i..i + ch_len]);
                i += ch_len;
            }
        }
    }
    Some(out)
}

/// The index after a quoted string starting at `start` (its opening quote).
fn skip_quoted(b: &[u8], start: usize, backslash: bool) -> Option<usize> {
    let mut i = start + 1;
    loop {
        match b.get(i)? {
            b'\\' if backslash => i += 2,
            b'\'' if b.get(i + 1) == Some(&b'\'') => i += 2,
            b'\'' => return Some(i + 1),
            _ => i += 1,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_become_placeholders() {
        let a = fingerprint("SELECT abalance FROM pgbench_accounts WHERE aid = 76543;");
        let b = fingerprint("select abalance from pgbench_accounts where aid = 12;");
        assert_eq!(
            a.as_deref(),
            Some("SELECT abalance FROM pgbench_accounts WHERE aid = ?;")
        );
        assert_ne!(
            a, b,
            "case of keywords is kept: identifiers fold, and fold is the parser's"
        );
        assert_eq!(
            fingerprint("SELECT 'it''s', E'a\\'b', $x$ $ $x$, $$q$$ /* c /* d */ */ -- e\n FROM t"),
            Some("SELECT ?, ?, ?, ? FROM t".into())
        );
        assert_eq!(
            fingerprint("SELECT \"a'b\", x1, $1 FROM t2 WHERE id IN (1, 2.5e3)"),
            Some("SELECT \"a'b\", x1, $1 FROM t2 WHERE id IN (?, ?)".into())
        );
    }

    #[test]
    fn uncertain_text_has_no_fingerprint() {
        for sql in [
            "SELECT 'open",
            "SELECT /* open",
            "SELECT \"open",
            "SELECT $x$ open",
            "SELECT E'\\'",
        ] {
            assert_eq!(fingerprint(sql), None, "{sql}");
        }
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,200}") {
            let _ = fingerprint(&s);
        }
    }
}
