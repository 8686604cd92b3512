//! What the audit trail may keep of a statement's text and of an error.
//!
//! A statement is kept as its fingerprint (a short hash of the text with
//! every literal replaced by `?`) and, as configured, that redacted text,
//! the full text, or nothing. Text that cannot be lexed with certainty (an
//! unterminated quote, say) has neither: it could hide a literal. A text
//! that mentions a password keeps its redacted form even where the full
//! text is configured, so `ALTER ROLE ... PASSWORD '...'` never reaches the
//! archive.
//!
//! Error messages from the server can quote the values they choke on
//! (`invalid input syntax for type integer: "12ab"`), so every quoted part
//! of a message is replaced by `?` before it is recorded.

use std::sync::Arc;

use super::record::StatementText;
use crate::policy::analyze::StatementInfo;
use crate::policy::fingerprint::fingerprint;

/// Hex digits of the fingerprint hash (64 bits: unique enough to group
/// statements, short enough to read).
const FINGERPRINT_HEX: usize = 16;

/// What the archive keeps of one statement text (a Query string or the
/// text of a Parse), shared by every execution of it.
#[derive(Clone, Default)]
pub struct Note {
    /// The text as the configuration allows it to be kept.
    pub text: Option<Arc<str>>,
    /// Hex hash of the redacted text.
    pub fingerprint: Option<Arc<str>>,
    /// The policy's analysis, one entry per statement of the text.
    pub analysis: Option<Arc<[StatementInfo]>>,
}

impl std::fmt::Debug for Note {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Note")
            .field("fingerprint", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl Note {
    /// The note for `sql` under `mode`.
    pub fn new(sql: &[u8], mode: StatementText, analysis: Option<Arc<[StatementInfo]>>) -> Self {
        let Ok(sql) = std::str::from_utf8(sql) else {
            return Self {
                analysis,
                ..Self::default()
            };
        };
        let Some(redacted) = fingerprint(sql) else {
            return Self {
                analysis,
                ..Self::default()
            };
        };
        let hash = fingerprint_hash(&redacted);
        let text = match mode {
            StatementText::None => None,
            StatementText::Full if !mentions_password(sql) => Some(Arc::from(sql)),
            StatementText::Full | StatementText::Redacted => Some(Arc::from(redacted)),
        };
        Self {
            text,
            fingerprint: Some(hash.into()),
            analysis,
        }
    }

    /// The analysis of statement `index` of the text, if there is one.
    pub fn statement(&self, index: usize) -> Option<&StatementInfo> {
        self.analysis.as_deref()?.get(index)
    }
}

/// The short hex hash that names a redacted text.
pub fn fingerprint_hash(redacted: &str) -> String {
    let digest = ring::digest::digest(&ring::digest::SHA256, redacted.as_bytes());
    crate::mask::value::to_hex(&digest.as_ref()[..FINGERPRINT_HEX / 2])
}

fn mentions_password(sql: &str) -> bool {
    const WORD: &[u8] = b"password";
    sql.as_bytes()
        .windows(WORD.len())
        .any(|w| w.eq_ignore_ascii_case(WORD))
}

/// `message` with every part in single or double quotes replaced by `?`.
/// An unterminated quote hides the rest of the message.
pub fn redact_message(message: &str) -> String {
    let mut out = String::with_capacity(message.len());
    let mut chars = message.chars();
    while let Some(c) = chars.next() {
        if c != '"' && c != '\'' {
            out.push(c);
            continue;
        }
        out.push(c);
        out.push('?');
        if chars.any(|q| q == c) {
            out.push(c);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_never_reach_the_note() {
        let sql = b"SELECT * FROM customers WHERE email = 'ann@example.com' AND id = 42";
        for mode in [StatementText::Redacted, StatementText::None] {
            let note = Note::new(sql, mode, None);
            let text = note.text.as_deref().unwrap_or("");
            assert!(!text.contains("ann@example.com") && !text.contains("42"));
            assert_eq!(note.fingerprint.as_deref().map(str::len), Some(16));
        }
        let redacted = Note::new(sql, StatementText::Redacted, None);
        assert_eq!(
            redacted.text.as_deref(),
            Some("SELECT * FROM customers WHERE email = ? AND id = ?")
        );
        assert_eq!(Note::new(sql, StatementText::None, None).text, None);
    }

    #[test]
    fn same_shape_same_fingerprint() {
        let a = Note::new(
            b"SELECT 1 FROM t WHERE a = 'x'",
            StatementText::Redacted,
            None,
        );
        let b = Note::new(
            b"SELECT 2 FROM t WHERE a = 'y'",
            StatementText::Redacted,
            None,
        );
        let c = Note::new(
            b"SELECT 2 FROM u WHERE a = 'y'",
            StatementText::Redacted,
            None,
        );
        assert_eq!(a.fingerprint, b.fingerprint);
        assert_ne!(a.fingerprint, c.fingerprint);
    }

    #[test]
    fn full_text_except_passwords() {
        let sql = b"SELECT name FROM t WHERE id = 7";
        let note = Note::new(sql, StatementText::Full, None);
        assert_eq!(
            note.text.as_deref(),
            Some("SELECT name FROM t WHERE id = 7")
        );
        let secret = b"ALTER ROLE app PASSWORD 'hunter2-secret'";
        let note = Note::new(secret, StatementText::Full, None);
        assert_eq!(note.text.as_deref(), Some("ALTER ROLE app PASSWORD ?"));
    }

    #[test]
    fn unlexable_text_is_not_kept() {
        let note = Note::new(b"SELECT 'unterminated secret", StatementText::Full, None);
        assert_eq!((note.text, note.fingerprint), (None, None));
        let note = Note::new(&[0xff, 0xfe, b'\''], StatementText::Redacted, None);
        assert_eq!((note.text, note.fingerprint), (None, None));
    }

    #[test]
    fn quoted_parts_of_messages_are_redacted() {
        assert_eq!(
            redact_message("invalid input syntax for type integer: \"12ab\""),
            "invalid input syntax for type integer: \"?\""
        );
        assert_eq!(
            redact_message("relation \"secret_table\" does not exist at 'x"),
            "relation \"?\" does not exist at '?"
        );
        assert_eq!(redact_message("division by zero"), "division by zero");
    }
}
