//! SQLSTATE codes that pgveil itself sends, named as in PostgreSQL's
//! `errcodes.txt`. Codes are never written as string literals elsewhere.

/// A five-character SQLSTATE code.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SqlState(&'static str);

impl SqlState {
    /// The code as sent on the wire.
    pub fn code(self) -> &'static str {
        self.0
    }
}

impl std::fmt::Debug for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl std::fmt::Display for SqlState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

/// 08001: the gateway could not reach or log in to the server.
pub const SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION: SqlState = SqlState("08001");
/// 08006: the server connection was lost mid-session.
pub const CONNECTION_FAILURE: SqlState = SqlState("08006");
/// 08P01: malformed, unexpected or oversized message.
pub const PROTOCOL_VIOLATION: SqlState = SqlState("08P01");
/// 0A000: a protocol feature pgveil does not carry.
pub const FEATURE_NOT_SUPPORTED: SqlState = SqlState("0A000");
/// 28000: the client could not be authenticated or has no role.
pub const INVALID_AUTHORIZATION_SPECIFICATION: SqlState = SqlState("28000");
/// 28P01: the client's password or token was rejected.
pub const INVALID_PASSWORD: SqlState = SqlState("28P01");
/// 3D000: the requested database is not offered by this gateway.
pub const INVALID_CATALOG_NAME: SqlState = SqlState("3D000");
/// 42501: refused by policy.
pub const INSUFFICIENT_PRIVILEGE: SqlState = SqlState("42501");
/// 58030: pgveil cannot write its audit spool, and refuses statements.
pub const IO_ERROR: SqlState = SqlState("58030");
/// 53300: the gateway is at its connection limit.
pub const TOO_MANY_CONNECTIONS: SqlState = SqlState("53300");
/// 57P01: the gateway is shutting down.
pub const ADMIN_SHUTDOWN: SqlState = SqlState("57P01");
/// 57014: the client took too long to complete startup and
/// authentication (PostgreSQL uses it for "canceling authentication due to
/// timeout").
pub const QUERY_CANCELED: SqlState = SqlState("57014");
/// XX000: a fault inside pgveil itself.
pub const INTERNAL_ERROR: SqlState = SqlState("XX000");
