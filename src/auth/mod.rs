//! Who a client is, and which server role it reaches the database as.
//!
//! With `oidc`, pgveil asks the client for a cleartext password and takes an
//! OIDC token from it; the token is accepted only over TLS, or on a loopback
//! listener when the configuration allows it. The identity's name and groups
//! come from the token. With `trust` (development, loopback only) the startup
//! user name is believed and its groups come from a table in the
//! configuration.
//!
//! The groups choose the server role: the ordered `[[roles]]` list maps a
//! group to a role with its own credential, and the first match wins. An
//! identity that matches none is refused. The credential never leaves pgveil.

pub mod http;
pub mod oidc;

use std::path::Path;
use std::sync::Arc;
use std::time::SystemTime;

use crate::config::{read_secret, AuthMethod, Config, ConfigError, Secret};
use crate::session::{AuthKind, Identity};
use crate::wire::{sqlstate, SqlState};

pub use oidc::{TokenError, Verifier, MAX_TOKEN_BYTES};

/// A server login: role name and credential.
#[derive(Debug, Clone)]
pub struct Login {
    /// Server role.
    pub user: String,
    /// Its password, if the server asks for one.
    pub password: Option<Secret>,
}

/// One `[[roles]]` entry, with its credential resolved.
#[derive(Debug)]
struct Route {
    group: String,
    login: Login,
    databases: Vec<String>,
}

/// Why a client was refused during authentication.
#[derive(Debug, Clone)]
pub struct Refused {
    /// SQLSTATE for the client.
    pub code: SqlState,
    /// Message for the client (never quotes the token).
    pub message: String,
    /// Short reason for events.
    pub reason: &'static str,
}

impl Refused {
    fn new(code: SqlState, reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            reason,
        }
    }
}

/// The authentication set-up of the gateway.
#[derive(Debug)]
pub struct Auth {
    method: AuthMethod,
    verifier: Verifier,
    routes: Vec<Route>,
    default_login: Login,
    trust_groups: std::collections::BTreeMap<String, Vec<String>>,
    allow_cleartext_on_loopback: bool,
    ignore_startup_user: bool,
}

/// Why authentication could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum SetupError {
    /// Configuration problem (a credential that cannot be read).
    #[error(transparent)]
    Config(#[from] ConfigError),
    /// An issuer's HTTPS client could not be built.
    #[error("issuer TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
}

impl Auth {
    /// Builds the set-up from the configuration, reading every credential now.
    pub fn from_config(config: &Config, path: &Path) -> Result<Self, SetupError> {
        let mut routes = Vec::new();
        for role in &config.roles {
            let keys = ("roles.password_env", "roles.password_file");
            let password = read_secret(
                path,
                keys,
                role.password_env.as_deref(),
                role.password_file.as_deref(),
            )?;
            routes.push(Route {
                group: role.group.clone(),
                login: Login {
                    user: role.role.clone(),
                    password,
                },
                databases: role.databases.clone(),
            });
        }
        let issuers = config
            .auth
            .issuers
            .iter()
            .map(|i| oidc::Issuer::new(i.clone(), config.auth.leeway).map(Arc::new))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(Self {
            method: config.auth.method,
            verifier: Verifier::new(issuers),
            routes,
            default_login: Login {
                user: config.server.user.clone(),
                password: config.server_password(path)?,
            },
            trust_groups: config.auth.trust_groups.clone(),
            allow_cleartext_on_loopback: config.auth.allow_cleartext_on_loopback,
            ignore_startup_user: config.auth.ignore_startup_user,
        })
    }

    /// The token verifier (empty unless the method is `oidc`).
    pub fn verifier(&self) -> &Verifier {
        &self.verifier
    }

    /// pgveil's own login (`[server]`), used for catalog reads.
    pub fn default_login(&self) -> &Login {
        &self.default_login
    }

    /// Every group that a role mapping or a trust entry names.
    pub fn mapped_groups(&self) -> Vec<String> {
        let mut groups: Vec<String> = self.routes.iter().map(|r| r.group.clone()).collect();
        groups.extend(self.trust_groups.values().flatten().cloned());
        groups.sort();
        groups.dedup();
        groups
    }

    /// Every distinct server login the configuration can use.
    pub fn logins(&self) -> Vec<&Login> {
        let mut logins: Vec<&Login> = Vec::new();
        if self.routes.is_empty() {
            logins.push(&self.default_login);
        }
        for route in &self.routes {
            if !logins.iter().any(|l| l.user == route.login.user) {
                logins.push(&route.login);
            }
        }
        logins
    }

    /// Starts the background key refresh of every issuer.
    pub fn spawn_key_refresh(&self) {
        for issuer in self.verifier.issuers() {
            tokio::spawn(issuer.clone().keep_fresh());
        }
    }

    /// Whether the client must send a token (as a password).
    pub fn wants_token(&self) -> bool {
        self.method == AuthMethod::Oidc
    }

    /// Refuses to take a token over a connection that could expose it.
    pub fn check_transport(&self, tls: bool, loopback_listener: bool) -> Result<(), Refused> {
        if tls || (loopback_listener && self.allow_cleartext_on_loopback) {
            return Ok(());
        }
        Err(Refused::new(
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "cleartext_transport",
            "pgveil accepts tokens only over TLS: connect with sslmode=require or stronger",
        ))
    }

    /// Establishes the identity from the startup user name and, for `oidc`,
    /// the token the client sent as its password.
    pub async fn identify(
        &self,
        startup_user: &str,
        token: Option<&str>,
    ) -> Result<Identity, Refused> {
        let Some(token) = token.filter(|_| self.method == AuthMethod::Oidc) else {
            return Ok(Identity {
                user: startup_user.to_owned(),
                groups: self
                    .trust_groups
                    .get(startup_user)
                    .cloned()
                    .unwrap_or_default(),
                auth: AuthKind::Trust,
                issuer: None,
                subject: None,
                expires_at: None,
            });
        };
        let verified = self.verifier.verify(token).await.map_err(|e| {
            Refused::new(
                sqlstate::INVALID_PASSWORD,
                e.reason(),
                format!("OIDC token rejected: {e}"),
            )
        })?;
        if !self.ignore_startup_user && verified.user != startup_user {
            return Err(Refused::new(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                "user_mismatch",
                format!(
                    "user name \"{startup_user}\" does not match the token's identity \"{}\"",
                    verified.user
                ),
            ));
        }
        Ok(Identity {
            user: verified.user,
            groups: verified.groups,
            auth: AuthKind::Oidc,
            issuer: Some(verified.issuer),
            subject: Some(verified.subject),
            expires_at: Some(verified.expires_at),
        })
    }

    /// The server login for `identity` on the client-visible `database`.
    pub fn route(&self, identity: &Identity, database: &str) -> Result<&Login, Refused> {
        if self.routes.is_empty() {
            return Ok(&self.default_login);
        }
        let Some(route) = self
            .routes
            .iter()
            .find(|r| identity.groups.contains(&r.group))
        else {
            return Err(Refused::new(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                "no_role",
                format!(
                    "no database role is granted to \"{}\" by its groups",
                    identity.user
                ),
            ));
        };
        if !route.databases.is_empty() && !route.databases.iter().any(|d| d == database) {
            return Err(Refused::new(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                "database_not_granted",
                format!(
                    "role mapping for group \"{}\" does not grant database \"{database}\"",
                    route.group
                ),
            ));
        }
        Ok(&route.login)
    }
}

/// Seconds until `expires_at`, for the relay's deadline.
pub fn remaining(expires_at: SystemTime) -> std::time::Duration {
    expires_at
        .duration_since(SystemTime::now())
        .unwrap_or_default()
}
