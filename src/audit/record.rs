//! The rows of the audit archive, as the relay hands them over.
//!
//! Plain data: a [`SessionRecord`] per connection attempt and a
//! [`StatementRecord`] per statement, wrapped in an [`Entry`] for the spool.
//! What a record holds is decided by the caller: statement text is already
//! redacted (or absent) and parameters are already rendered (or absent) when
//! a record reaches this module; [`StatementText`] and [`ParameterPolicy`]
//! do that rendering for the configured policy.
//!
//! Timestamps are microseconds since the Unix epoch, UTC. `Debug` of both
//! records is written by hand and leaves out what may be personal or secret
//! (statement text, parameters, error messages, client address, subject).

use std::time::{SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The current time in microseconds since the Unix epoch, UTC.
pub fn now_micros() -> i64 {
    micros(SystemTime::now())
}

/// `t` in microseconds since the Unix epoch (negative before it; saturating).
pub fn micros(t: SystemTime) -> i64 {
    match t.duration_since(UNIX_EPOCH) {
        Ok(d) => i64::try_from(d.as_micros()).unwrap_or(i64::MAX),
        Err(e) => i64::try_from(e.duration().as_micros()).map_or(i64::MIN, |us| -us),
    }
}

/// Whether a connection attempt became a session.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum SessionOutcome {
    /// Authenticated and connected to the server.
    Established,
    /// Refused before a session existed (authentication, limits, routing).
    Refused,
}

impl SessionOutcome {
    /// The value stored in the archive.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Established => "established",
            Self::Refused => "refused",
        }
    }
}

/// One connection attempt: written as `SessionOpened` when it starts and
/// `SessionClosed` (complete) when it ends; the archive keeps one row.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SessionRecord {
    /// The session's UUIDv7.
    pub session_id: Uuid,
    /// Name of the gateway instance that carried the session.
    pub instance: String,
    /// When the client connected (µs since the epoch, UTC).
    pub started_at: i64,
    /// When the session ended (µs since the epoch, UTC); at open, the
    /// caller may set it equal to `started_at`.
    pub ended_at: i64,
    /// Client address as `ip:port`.
    pub client_addr: String,
    /// TLS version towards the client, if TLS was used.
    pub tls_version: Option<String>,
    /// `trust` or `oidc`.
    pub auth_method: String,
    /// Token issuer (`oidc`).
    pub issuer: Option<String>,
    /// Token subject (`oidc`).
    pub subject: Option<String>,
    /// User name as proven (or as claimed, for refused attempts).
    pub user_name: String,
    /// Groups of the identity.
    pub groups: Vec<String>,
    /// Role pgveil logged in as on the server.
    pub server_role: Option<String>,
    /// Database name on the server.
    pub database: Option<String>,
    /// The client's `application_name`.
    pub application_name: Option<String>,
    /// Established or refused.
    pub outcome: SessionOutcome,
    /// Why the attempt was refused (never a token or a password).
    pub refusal_reason: Option<String>,
    /// Statements recorded in the session.
    pub statements: u64,
    /// Bytes received from the client.
    pub bytes_from_client: u64,
    /// Bytes sent to the client.
    pub bytes_to_client: u64,
    /// How the session ended: `terminate`, `client_closed`, `refused`,
    /// `gateway_restart`, `gateway_shutdown`, ...
    pub end_reason: String,
}

impl std::fmt::Debug for SessionRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SessionRecord")
            .field("session_id", &self.session_id)
            .field("instance", &self.instance)
            .field("user_name", &self.user_name)
            .field("outcome", &self.outcome)
            .field("statements", &self.statements)
            .field("end_reason", &self.end_reason)
            .finish_non_exhaustive()
    }
}

/// How a statement reached the server.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Protocol {
    /// Simple query protocol (Query message).
    Query,
    /// Extended protocol (Execute of a bound portal).
    Execute,
    /// FunctionCall message.
    FunctionCall,
}

impl Protocol {
    /// The value stored in the archive.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Query => "query",
            Self::Execute => "execute",
            Self::FunctionCall => "function_call",
        }
    }
}

/// What policy decided for a statement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Decision {
    /// Passed unchanged.
    Allowed,
    /// Passed with result columns masked.
    Masked,
    /// Refused by a rule.
    Refused,
    /// Held for approval.
    Held,
    /// Held, then approved.
    Approved,
    /// A rule in report-only mode would have refused it.
    WouldRefuse,
}

impl Decision {
    /// The value stored in the archive.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Allowed => "allowed",
            Self::Masked => "masked",
            Self::Refused => "refused",
            Self::Held => "held",
            Self::Approved => "approved",
            Self::WouldRefuse => "would_refuse",
        }
    }
}

/// One statement of a session.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatementRecord {
    /// The session it ran in.
    pub session_id: Uuid,
    /// Position in the session, from 1.
    pub seq: u64,
    /// User name of the session (denormalised for filtering without a join).
    pub user_name: String,
    /// Groups of the session's identity (denormalised).
    pub groups: Vec<String>,
    /// When it was forwarded (µs since the epoch, UTC).
    pub started_at: i64,
    /// Time from forwarding to completion, in microseconds.
    pub duration_us: u64,
    /// Simple query, extended execute or function call.
    pub protocol: Protocol,
    /// Hex hash of the redacted text: equal for statements that differ
    /// only in literals.
    pub fingerprint: Option<String>,
    /// Statement text as the audit policy allows (redacted or full).
    pub text: Option<String>,
    /// Bind parameters as the audit policy allows.
    pub parameters: Option<Vec<String>>,
    /// Statement class (`read`, `write`, `ddl`, ...).
    pub class: Option<String>,
    /// Relations it touches, `schema.name` or `name`.
    pub relations: Vec<String>,
    /// Functions it calls.
    pub functions: Vec<String>,
    /// What policy decided.
    pub decision: Decision,
    /// Names of the rules that decided it.
    pub rules: Vec<String>,
    /// Result columns masked, as `column(rule)`.
    pub masked_columns: Vec<String>,
    /// Rows sent to the client.
    pub rows: u64,
    /// Bytes sent to the client for this statement.
    pub bytes_sent: u64,
    /// SQLSTATE of the error, if it failed.
    pub sqlstate: Option<String>,
    /// The error's message, if it failed.
    pub error_message: Option<String>,
}

impl std::fmt::Debug for StatementRecord {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatementRecord")
            .field("session_id", &self.session_id)
            .field("seq", &self.seq)
            .field("protocol", &self.protocol)
            .field("decision", &self.decision)
            .field("rules", &self.rules)
            .field("rows", &self.rows)
            .field("sqlstate", &self.sqlstate)
            .finish_non_exhaustive()
    }
}

/// One record in the spool.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", content = "record", rename_all = "snake_case")]
pub enum Entry {
    /// A session started; written at once so that a crash still leaves a row.
    SessionOpened(SessionRecord),
    /// A session ended; the record is complete and replaces the opened one.
    SessionClosed(SessionRecord),
    /// A statement finished.
    Statement(StatementRecord),
}

impl Entry {
    /// The latest time the entry tells of (µs since the epoch).
    pub fn latest_time(&self) -> i64 {
        match self {
            Self::SessionOpened(s) | Self::SessionClosed(s) => s.started_at.max(s.ended_at),
            Self::Statement(s) => s
                .started_at
                .saturating_add(i64::try_from(s.duration_us).unwrap_or(i64::MAX)),
        }
    }
}

/// `[audit] statement_text`: how much statement text the archive keeps.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StatementText {
    /// Literals replaced by `?`, comments dropped. Text that cannot be
    /// lexed with certainty is left out.
    #[default]
    Redacted,
    /// The text as the client sent it, except texts that mention a
    /// password (kept redacted); see [`super::note`].
    Full,
    /// No text.
    None,
}

/// `[audit] parameters`: what the archive keeps of bind parameters.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ParameterPolicy {
    /// Nothing.
    #[default]
    None,
    /// Each parameter's size only: `null` or `<N bytes>`, never its value.
    Redacted,
}

impl ParameterPolicy {
    /// The parameters to record for the values of a Bind.
    pub fn render(self, values: &[Option<&[u8]>]) -> Option<Vec<String>> {
        match self {
            Self::None => None,
            Self::Redacted => Some(
                values
                    .iter()
                    .map(|v| match v {
                        None => "null".to_owned(),
                        Some(b) => format!("<{} bytes>", b.len()),
                    })
                    .collect(),
            ),
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// A session record with every field set, for tests.
    pub(crate) fn session(id: Uuid, started_at: i64) -> SessionRecord {
        SessionRecord {
            session_id: id,
            instance: "gw-test".into(),
            started_at,
            ended_at: started_at,
            client_addr: "127.0.0.1:50000".into(),
            tls_version: Some("TLSv1.3".into()),
            auth_method: "oidc".into(),
            issuer: Some("https://idp.example".into()),
            subject: Some("sub-123".into()),
            user_name: "alice".into(),
            groups: vec!["analysts".into(), "eu".into()],
            server_role: Some("reader".into()),
            database: Some("app".into()),
            application_name: None,
            outcome: SessionOutcome::Established,
            refusal_reason: None,
            statements: 0,
            bytes_from_client: 0,
            bytes_to_client: 0,
            end_reason: String::new(),
        }
    }

    /// A statement record with every field set, for tests.
    pub(crate) fn statement(id: Uuid, seq: u64, started_at: i64) -> StatementRecord {
        StatementRecord {
            session_id: id,
            seq,
            user_name: "alice".into(),
            groups: vec!["analysts".into()],
            started_at,
            duration_us: 1500 + seq,
            protocol: Protocol::Execute,
            fingerprint: Some("select * from t where id = ?".into()),
            text: Some("select * from t where id = 42".into()),
            parameters: Some(vec!["<4 bytes>".into()]),
            class: Some("read".into()),
            relations: vec!["public.t".into()],
            functions: vec![],
            decision: Decision::Masked,
            rules: vec!["pii".into()],
            masked_columns: vec!["email(pii)".into()],
            rows: seq * 10,
            bytes_sent: seq * 100,
            sqlstate: None,
            error_message: Some("secret detail".into()),
        }
    }

    #[test]
    fn debug_leaves_out_text_parameters_and_personal_fields() {
        // A fixed id: a random one could itself hold "42".
        let id = Uuid::nil();
        let s = format!("{:?}", statement(id, 1, 0));
        assert!(
            !s.contains("42") && !s.contains("bytes") && !s.contains("secret"),
            "{s}"
        );
        let s = format!("{:?}", session(id, 0));
        assert!(!s.contains("127.0.0.1") && !s.contains("sub-123"), "{s}");
    }

    #[test]
    fn parameters_render_as_configured() {
        let values = [Some(&b"abc"[..]), None];
        assert_eq!(
            ParameterPolicy::Redacted.render(&values),
            Some(vec!["<3 bytes>".to_owned(), "null".to_owned()])
        );
        assert_eq!(ParameterPolicy::None.render(&values), None);
    }

    #[test]
    fn entries_round_trip_through_json() {
        let id = Uuid::now_v7();
        let entries = [
            Entry::SessionOpened(session(id, 5)),
            Entry::Statement(statement(id, 1, 7)),
        ];
        for e in entries {
            let json = serde_json::to_vec(&e).unwrap();
            assert_eq!(serde_json::from_slice::<Entry>(&json).unwrap(), e);
        }
    }
}
