//! Events for every session and statement.
//!
//! The relay reports each session's start and end and each statement's
//! outcome here. This version writes them to the log (without statement text,
//! parameters or row values); the Parquet archive consumes the same events.

use std::time::Duration;

use crate::session::SessionInfo;

/// How a statement ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// CommandComplete with the command's first word (e.g. `SELECT`).
    Complete(String),
    /// EmptyQueryResponse.
    Empty,
    /// PortalSuspended: the portal has more rows.
    Suspended,
    /// ErrorResponse with its SQLSTATE.
    Failed(String),
    /// Refused by policy, with the rule's name.
    Refused(String),
}

/// One statement's record.
#[derive(Debug, Clone)]
pub struct StatementEvent {
    /// Position in the session, from 1.
    pub seq: u64,
    /// `query` (simple protocol), `execute` (extended) or `function_call`.
    pub protocol: &'static str,
    /// Time from forwarding to completion.
    pub duration: Duration,
    /// DataRows sent to the client.
    pub rows: u64,
    /// How it ended.
    pub outcome: Outcome,
    /// Result columns masked, as `column(rule)`.
    pub masked: Vec<String>,
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
pub struct Audit;

impl Audit {
    /// Records a session that is established.
    pub fn session_started(&self, info: &SessionInfo) {
        tracing::info!(
            auth = info.identity.auth.as_str(),
            server_role = %info.server_role,
            tls = info.client_tls.unwrap_or("none"),
            "session started"
        );
    }

    /// Records a successful authentication.
    pub fn authenticated(&self, identity: &crate::session::Identity, server_role: &str) {
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

    /// Records one statement.
    pub fn statement(&self, event: &StatementEvent) {
        tracing::debug!(
            seq = event.seq,
            protocol = event.protocol,
            rows = event.rows,
            duration_us = event.duration.as_micros() as u64,
            outcome = ?event.outcome,
            masked = ?event.masked,
            "statement"
        );
    }

    /// Records a session's end.
    pub fn session_ended(&self, totals: &SessionTotals, how: &str) {
        tracing::info!(
            statements = totals.statements,
            bytes_in = totals.bytes_from_client,
            bytes_out = totals.bytes_to_client,
            ended = how,
            "session ended"
        );
    }
}
