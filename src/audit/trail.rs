//! What the frontend and the relay report, and how it becomes archive
//! records and log lines.
//!
//! [`Audit`] is shared by every session. Without `[audit]` it only logs.
//! With it, each statement becomes a [`StatementRecord`] and each
//! connection attempt a [`SessionRecord`] in the spool; the relay holds the
//! bytes that tell a client its statement ended until the record is
//! durable ([`Ticket`]), and while the spool cannot be written it refuses
//! new statements (or, with `on_failure = "continue"`, runs them
//! unrecorded and logs an error).
//!
//! Log lines hold no statement text, parameters or row values; the archive
//! holds statement text only as [`super::note`] allows.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use uuid::Uuid;

use super::note::{redact_message, Note};
use super::record::{
    micros, now_micros, Decision, Entry, ParameterPolicy, Protocol, SessionOutcome, SessionRecord,
    StatementRecord, StatementText,
};
use super::spool::AuditHandle;
use crate::config::{AuditConfig, AuditFailure};
use crate::policy::analyze::StatementInfo;
use crate::policy::rules::display_rel;
use crate::policy::Refusal;
use crate::session::{Identity, SessionInfo};
use crate::wire::sqlstate;

pub use super::spool::Ticket;

/// The rule name that refusals for an unwritable spool carry.
pub const SPOOL_RULE: &str = "audit:spool";

/// How a statement ended. `Debug` leaves out the server's error message,
/// which may quote values.
#[derive(Clone, PartialEq, Eq)]
pub enum Outcome {
    /// CommandComplete with the command's first word (e.g. `SELECT`).
    Complete(String),
    /// EmptyQueryResponse.
    Empty,
    /// PortalSuspended: the portal has more rows.
    Suspended,
    /// ErrorResponse with its SQLSTATE and its message.
    Failed {
        /// The SQLSTATE.
        code: String,
        /// The server's message; redacted before it is recorded.
        message: String,
    },
    /// Refused by policy or masking, with the rule's name.
    Refused(String),
}

impl std::fmt::Debug for Outcome {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Complete(word) => f.debug_tuple("Complete").field(word).finish(),
            Self::Empty => f.write_str("Empty"),
            Self::Suspended => f.write_str("Suspended"),
            Self::Failed { code, .. } => f
                .debug_struct("Failed")
                .field("code", code)
                .finish_non_exhaustive(),
            Self::Refused(rule) => f.debug_tuple("Refused").field(rule).finish(),
        }
    }
}

/// One statement's record, as the relay reports it.
#[derive(Debug, Clone)]
pub struct StatementEvent {
    /// Position in the session, from 1.
    pub seq: u64,
    /// `query` (simple protocol), `execute` (extended) or `function_call`.
    pub protocol: &'static str,
    /// When it was forwarded.
    pub started_at: SystemTime,
    /// Time from forwarding to completion.
    pub duration: Duration,
    /// Rows returned or affected (the command tag's count).
    pub rows: u64,
    /// Bytes of the server's answer to it.
    pub bytes: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Result columns masked, as `column(rule)`.
    pub masked: Vec<String>,
    /// The statement's text as the archive may keep it.
    pub note: Option<Arc<Note>>,
    /// Which statement of the note's text this is (a Query may hold
    /// several).
    pub index: usize,
    /// In dry-run mode, the rule that would have refused it.
    pub would_refuse: Option<String>,
    /// Its Bind parameters as the archive may keep them.
    pub parameters: Option<Arc<[String]>>,
}

impl StatementEvent {
    /// The decision as the archive names it.
    pub fn decision(&self) -> Decision {
        match (&self.outcome, &self.would_refuse, self.masked.is_empty()) {
            (Outcome::Refused(_), _, _) => Decision::Refused,
            (_, Some(_), _) => Decision::WouldRefuse,
            (_, None, false) => Decision::Masked,
            (_, None, true) => Decision::Allowed,
        }
    }

    /// The rules behind the decision: the refusing one, or the masking
    /// rules named in `column(rule)`.
    pub fn rules(&self) -> Vec<String> {
        if let Outcome::Refused(rule) = &self.outcome {
            return vec![rule.clone()];
        }
        let mut rules: Vec<String> = self.would_refuse.iter().cloned().collect();
        for masked in &self.masked {
            let rule = masked
                .rsplit_once('(')
                .map_or("", |(_, r)| r.trim_end_matches(')'));
            if !rule.is_empty() && !rules.iter().any(|r| r == rule) {
                rules.push(rule.to_owned());
            }
        }
        rules
    }
}

/// Totals for a session, reported when it ends.
#[derive(Debug, Clone, Default)]
pub struct SessionTotals {
    /// Statements recorded.
    pub statements: u64,
    /// Bytes received from the client.
    pub bytes_from_client: u64,
    /// Bytes sent to the client.
    pub bytes_to_client: u64,
}

/// Where events go.
#[derive(Debug, Default)]
pub struct Audit {
    archive: Option<AuditHandle>,
    instance: String,
    text: StatementText,
    parameters: ParameterPolicy,
    on_failure: AuditFailure,
    /// Whether the spool failure was already logged (once per outage).
    failure_logged: AtomicBool,
}

impl Audit {
    /// Events to the log only.
    pub fn log_only() -> Self {
        Self::default()
    }

    /// Events to the archive behind `handle` as well.
    pub fn archive(config: &AuditConfig, handle: AuditHandle) -> Self {
        Self {
            archive: Some(handle),
            instance: config.instance.clone(),
            text: config.statement_text,
            parameters: config.parameters,
            on_failure: config.on_failure,
            failure_logged: AtomicBool::new(false),
        }
    }

    /// Whether statements need a [`Note`] (the archive is on).
    pub fn archiving(&self) -> bool {
        self.archive.is_some()
    }

    /// The note for a statement text.
    pub fn note(&self, sql: &[u8], analysis: Option<Arc<[StatementInfo]>>) -> Arc<Note> {
        Arc::new(Note::new(sql, self.text, analysis))
    }

    /// A Bind's parameter values as the archive may keep them.
    pub fn parameters(&self, values: &[Option<&[u8]>]) -> Option<Arc<[String]>> {
        self.parameters.render(values).map(Arc::from)
    }

    /// Why statements must be refused now, if they must: the spool cannot
    /// be written and the configuration says to refuse.
    pub fn refusal(&self) -> Option<Refusal> {
        let archive = self.archive.as_ref()?;
        if archive.healthy() {
            if self.failure_logged.load(Ordering::Relaxed) {
                self.failure_logged.store(false, Ordering::Relaxed);
            }
            return None;
        }
        if !self.failure_logged.swap(true, Ordering::Relaxed) {
            tracing::error!(
                on_failure = ?self.on_failure,
                "the audit spool cannot be written; statements are {}",
                match self.on_failure {
                    AuditFailure::Refuse => "refused until it can",
                    AuditFailure::Continue => "run unrecorded",
                }
            );
        }
        (self.on_failure == AuditFailure::Refuse).then(|| Refusal {
            code: sqlstate::IO_ERROR,
            rule: SPOOL_RULE.into(),
            message: "pgveil cannot write its audit spool, and runs no statement it cannot \
                      record; the gateway's operator finds the reason in its log"
                .into(),
        })
    }

    /// Records one statement of session `session`; the ticket says when
    /// its record is durable (with the archive on).
    pub fn statement(
        &self,
        session: Uuid,
        identity: &Identity,
        event: &StatementEvent,
    ) -> Option<Ticket> {
        let (code, message) = match &event.outcome {
            Outcome::Failed { code, message } => (Some(code), Some(message)),
            _ => (None, None),
        };
        tracing::debug!(
            seq = event.seq,
            protocol = event.protocol,
            rows = event.rows,
            duration_us = event.duration.as_micros() as u64,
            decision = event.decision().as_str(),
            rules = ?event.rules(),
            sqlstate = code.map_or("", String::as_str),
            masked = ?event.masked,
            "statement"
        );
        let archive = self.archive.as_ref()?;
        let info = event.note.as_ref().and_then(|n| n.statement(event.index));
        let record = StatementRecord {
            session_id: session,
            seq: event.seq,
            user_name: identity.user.clone(),
            groups: identity.groups.clone(),
            started_at: micros(event.started_at),
            duration_us: u64::try_from(event.duration.as_micros()).unwrap_or(u64::MAX),
            protocol: match event.protocol {
                "query" => Protocol::Query,
                "execute" => Protocol::Execute,
                _ => Protocol::FunctionCall,
            },
            fingerprint: event
                .note
                .as_ref()
                .and_then(|n| n.fingerprint.as_deref().map(str::to_owned)),
            text: event
                .note
                .as_ref()
                .and_then(|n| n.text.as_deref().map(str::to_owned)),
            parameters: event.parameters.as_deref().map(<[String]>::to_vec),
            class: info.map(|s| s.class.as_str().to_owned()),
            relations: info.map(relations).unwrap_or_default(),
            functions: info.map(|s| s.functions.clone()).unwrap_or_default(),
            decision: event.decision(),
            rules: event.rules(),
            masked_columns: event.masked.clone(),
            rows: event.rows,
            bytes_sent: event.bytes,
            sqlstate: code.cloned(),
            error_message: message.map(|m| redact_message(m)),
        };
        Some(archive.submit(Entry::Statement(record)))
    }

    /// Waits until `ticket`'s record is durable. A failure is logged (the
    /// statement has run; the next one is refused while the spool fails,
    /// if so configured).
    pub async fn settle(&self, ticket: Ticket) {
        if let Err(e) = ticket.durable().await {
            if !self.failure_logged.swap(true, Ordering::Relaxed) {
                tracing::error!(error = %e, "a statement's audit record could not be written");
            }
        }
    }

    /// Starts the record of a connection attempt from `peer`.
    pub fn attempt(&self, id: Uuid, peer: SocketAddr) -> Attempt<'_> {
        let now = now_micros();
        Attempt {
            audit: self,
            record: SessionRecord {
                session_id: id,
                instance: self.instance.clone(),
                started_at: now,
                ended_at: now,
                client_addr: peer.to_string(),
                tls_version: None,
                auth_method: String::new(),
                issuer: None,
                subject: None,
                user_name: String::new(),
                groups: Vec::new(),
                server_role: None,
                database: None,
                application_name: None,
                outcome: SessionOutcome::Refused,
                refusal_reason: None,
                statements: 0,
                bytes_from_client: 0,
                bytes_to_client: 0,
                end_reason: "closed_before_startup".into(),
            },
            counted: true,
        }
    }

    /// Records a successful authentication.
    pub fn authenticated(&self, identity: &Identity, server_role: &str) {
        tracing::info!(
            outcome = "success",
            auth = identity.auth.as_str(),
            issuer = identity.issuer.as_deref().unwrap_or(""),
            subject = identity.subject.as_deref().unwrap_or(""),
            groups = ?identity.groups,
            server_role,
            "authentication"
        );
    }

    /// Records a refused authentication with its reason (never the token).
    pub fn auth_refused(&self, reason: &str, startup_user: &str) {
        tracing::warn!(outcome = "refused", reason, startup_user, "authentication");
    }
}

/// Relations a statement reads or writes, `schema.name` or `name`, once
/// each.
fn relations(info: &StatementInfo) -> Vec<String> {
    let mut names: Vec<String> = Vec::new();
    for name in info.reads.iter().chain(&info.writes).map(display_rel) {
        if !names.contains(&name) {
            names.push(name);
        }
    }
    names
}

/// The record of one connection attempt, filled in as the attempt goes
/// and written to the archive when it is dropped: every attempt leaves
/// exactly one row, whichever way it ends.
pub struct Attempt<'a> {
    audit: &'a Audit,
    record: SessionRecord,
    /// False for attempts that are no session (a CancelRequest).
    counted: bool,
}

impl Attempt<'_> {
    /// The client asked for `user` on `database` (as named on the server).
    pub fn startup(&mut self, user: &str, application_name: Option<&str>, tls: Option<&str>) {
        self.record.user_name = user.to_owned();
        self.record.application_name = application_name.map(str::to_owned);
        self.record.tls_version = tls.map(str::to_owned);
        self.record.end_reason = "refused".into();
    }

    /// The attempt was a CancelRequest: no session row.
    pub fn cancel(&mut self) {
        self.counted = false;
    }

    /// The attempt was refused for `reason` (never a token or password),
    /// possibly after the server login (a catalog masking needs could not
    /// be read, say).
    pub fn refused(&mut self, reason: &str) {
        self.record.outcome = SessionOutcome::Refused;
        self.record.refusal_reason = Some(reason.to_owned());
        self.record.end_reason = "refused".into();
    }

    /// The session is established: written as opened at once, so that a
    /// crash still leaves its row.
    pub fn established(&mut self, info: &SessionInfo) {
        let r = &mut self.record;
        let identity = &info.identity;
        r.user_name = identity.user.clone();
        r.groups = identity.groups.clone();
        r.auth_method = identity.auth.as_str().into();
        r.issuer = identity.issuer.clone();
        r.subject = identity.subject.clone();
        r.server_role = Some(info.server_role.clone());
        r.database = Some(info.database.clone());
        r.application_name = info.application_name.clone();
        r.tls_version = info.client_tls.map(str::to_owned);
        r.outcome = SessionOutcome::Established;
        r.refusal_reason = None;
        r.end_reason = "open".into();
        tracing::info!(
            auth = identity.auth.as_str(),
            server_role = %info.server_role,
            tls = info.client_tls.unwrap_or("none"),
            "session started"
        );
        if let Some(archive) = &self.audit.archive {
            // Its durability is awaited by the session's first statement.
            drop(archive.submit(Entry::SessionOpened(self.record.clone())));
        }
    }

    /// The session ended: `how` and its totals.
    pub fn ended(&mut self, totals: &SessionTotals, how: &str) {
        tracing::info!(
            statements = totals.statements,
            bytes_in = totals.bytes_from_client,
            bytes_out = totals.bytes_to_client,
            ended = how,
            "session ended"
        );
        let r = &mut self.record;
        r.statements = totals.statements;
        r.bytes_from_client = totals.bytes_from_client;
        r.bytes_to_client = totals.bytes_to_client;
        r.end_reason = how.to_owned();
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        let Some(archive) = self.audit.archive.as_ref().filter(|_| self.counted) else {
            return;
        };
        self.record.ended_at = now_micros();
        if self.record.end_reason == "open" {
            self.record.end_reason = "gateway_error".into();
        }
        drop(archive.submit(Entry::SessionClosed(self.record.clone())));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(outcome: Outcome, masked: &[&str], would_refuse: Option<&str>) -> StatementEvent {
        StatementEvent {
            seq: 1,
            protocol: "query",
            started_at: SystemTime::now(),
            duration: Duration::from_micros(5),
            rows: 0,
            bytes: 0,
            outcome,
            masked: masked.iter().map(|m| (*m).to_owned()).collect(),
            note: None,
            index: 0,
            would_refuse: would_refuse.map(str::to_owned),
            parameters: None,
        }
    }

    #[test]
    fn decision_and_rules_follow_the_event() {
        let done = || Outcome::Complete("SELECT".into());
        let refused = event(Outcome::Refused("no-dml".into()), &[], None);
        assert_eq!(refused.decision(), Decision::Refused);
        assert_eq!(refused.rules(), vec!["no-dml"]);
        let masked = event(done(), &["email(pii)", "phone(pii)", "ssn(ids)"], None);
        assert_eq!(masked.decision(), Decision::Masked);
        assert_eq!(masked.rules(), vec!["pii", "ids"]);
        let dry = event(done(), &["email(pii)"], Some("no-dml"));
        assert_eq!(dry.decision(), Decision::WouldRefuse);
        assert_eq!(dry.rules(), vec!["no-dml", "pii"]);
        assert_eq!(event(done(), &[], None).decision(), Decision::Allowed);
    }

    #[test]
    fn debug_leaves_out_error_messages() {
        let failed = Outcome::Failed {
            code: "22P02".into(),
            message: "invalid input syntax for type integer: \"secret-77\"".into(),
        };
        let shown = format!("{:?}", event(failed, &[], None));
        assert!(
            shown.contains("22P02") && !shown.contains("secret-77"),
            "{shown}"
        );
    }

    #[test]
    fn relations_are_named_once_with_their_schema() {
        let analysis = crate::policy::analyze::analyze(
            "INSERT INTO audit.copy SELECT * FROM public.t JOIN t AS u USING (id)",
            &crate::mask::catalog::Catalog::default(),
        )
        .expect("parses");
        let names = relations(&analysis[0]);
        assert!(names.contains(&"audit.copy".to_owned()), "{names:?}");
        let unique: std::collections::HashSet<_> = names.iter().collect();
        assert_eq!(unique.len(), names.len(), "{names:?}");
    }
}
