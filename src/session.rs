//! Who is on a session, and the facts every capability reads about it.

use std::net::SocketAddr;

use uuid::Uuid;

/// How a client proved who it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AuthKind {
    /// Development trust on a loopback listener.
    Trust,
    /// A verified OIDC token.
    Oidc,
}

impl AuthKind {
    /// Name used in logs and the audit trail.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Trust => "trust",
            Self::Oidc => "oidc",
        }
    }
}

/// A proven identity: the name and groups that policy, masking and audit use.
#[derive(Clone, PartialEq, Eq)]
pub struct Identity {
    /// User name as proven (for trust, as claimed by a loopback client).
    pub user: String,
    /// Groups from the identity provider.
    pub groups: Vec<String>,
    /// How it was proven.
    pub auth: AuthKind,
    /// The token's issuer (`oidc`).
    pub issuer: Option<String>,
    /// The token's subject (`oidc`).
    pub subject: Option<String>,
    /// When the proof expires; the session ends then (`oidc`).
    pub expires_at: Option<std::time::SystemTime>,
}

impl std::fmt::Debug for Identity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Identity")
            .field("user", &self.user)
            .field("groups", &self.groups)
            .field("auth", &self.auth)
            .field("issuer", &self.issuer)
            .finish_non_exhaustive()
    }
}

/// Facts about one client session, fixed once it is established.
#[derive(Debug, Clone)]
pub struct SessionInfo {
    /// Time-ordered unique id (UUIDv7).
    pub id: Uuid,
    /// Client address.
    pub peer: SocketAddr,
    /// Negotiated TLS version towards the client, if any.
    pub client_tls: Option<&'static str>,
    /// Who the client is.
    pub identity: Identity,
    /// Database name on the server.
    pub database: String,
    /// Role pgveil logged in as on the client's behalf.
    pub server_role: String,
    /// The client's application_name, if sent.
    pub application_name: Option<String>,
}
