//! Configuration: one TOML file, read once at start.
//!
//! Unknown keys are refused so that a typo never silently falls back to a
//! default. Every error names the file and the key. Secrets (the server
//! password) are never inline: the file names an environment variable or a
//! file that holds them. Each key is documented in README.md.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::Deserialize;

/// Default largest message accepted from a client.
pub const DEFAULT_MAX_MESSAGE_BYTES: usize = 64 << 20;
/// Default limit on concurrent client connections.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;
/// Default time a client has to complete TLS, startup and authentication.
pub const DEFAULT_STARTUP_TIMEOUT: Duration = Duration::from_secs(10);
/// Default time to connect and log in to the server.
pub const DEFAULT_SERVER_CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// Largest clock-skew allowance for token times that may be configured.
pub const MAX_TOKEN_LEEWAY: Duration = Duration::from_secs(60);
/// Default interval between routine refreshes of an issuer's keys.
pub const DEFAULT_KEY_REFRESH: Duration = Duration::from_secs(15 * 60);

/// Why the configuration could not be used.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The file could not be read.
    #[error("{path}: cannot read: {source}")]
    Read {
        /// The configuration file.
        path: PathBuf,
        /// The IO error.
        source: std::io::Error,
    },
    /// The file is not valid TOML or does not fit the schema.
    #[error("{path}: {message}")]
    Parse {
        /// The configuration file.
        path: PathBuf,
        /// The parser's message, which names the key and line.
        message: String,
    },
    /// A value parsed but cannot be used.
    #[error("{path}: key `{key}`: {message}")]
    Invalid {
        /// The configuration file.
        path: PathBuf,
        /// Dotted key path.
        key: &'static str,
        /// What is wrong.
        message: String,
    },
}

/// The whole configuration file.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Config {
    /// Addresses to accept clients on.
    pub listen: Vec<SocketAddr>,
    /// Threads that run sessions; absent means one per CPU core.
    #[serde(default)]
    pub worker_threads: Option<usize>,
    /// TLS towards clients; absent means clients are answered 'N' to SSLRequest.
    pub tls: Option<TlsConfig>,
    /// The real PostgreSQL server.
    pub server: ServerConfig,
    /// How clients prove who they are.
    pub auth: AuthConfig,
    /// Ordered mappings from group to server role; the first match wins.
    /// Empty: every client gets `[server].user`.
    #[serde(default)]
    pub roles: Vec<RoleConfig>,
    /// Size and count limits.
    #[serde(default)]
    pub limits: Limits,
    /// Timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,
    /// Inline masking of result rows; absent means rows pass unchanged.
    pub masking: Option<MaskingConfig>,
    /// Statement policy rules; absent means no rules (the masking
    /// defaults still apply to identities that masking rules cover).
    pub policy: Option<PolicyConfig>,
    /// The audit archive; absent means events go to the log only.
    pub audit: Option<AuditConfig>,
}

/// `[policy]`: where the policy rule files are, and whether they are
/// enforced.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PolicyConfig {
    /// Directory of `*.toml` policy rule files.
    pub rules_dir: Option<PathBuf>,
    /// False: record what the rules would refuse without refusing it.
    #[serde(default = "yes")]
    pub enforce: bool,
}

fn yes() -> bool {
    true
}

/// Default time between fdatasyncs with `fsync = "interval"`.
pub const DEFAULT_AUDIT_FSYNC_INTERVAL: Duration = Duration::from_millis(100);
/// Default rows per spool segment, and so at most per Parquet file.
pub const DEFAULT_AUDIT_FILE_MAX_ROWS: u64 = 100_000;
/// Default spool bytes per segment (Parquet files come out smaller).
pub const DEFAULT_AUDIT_FILE_MAX_BYTES: u64 = 64 << 20;
/// Default age at which a segment is closed and compacted.
pub const DEFAULT_AUDIT_FILE_MAX_AGE: Duration = Duration::from_secs(60);
/// Largest `file_max_age` that may be configured: rows must not wait
/// longer than this to reach the archive.
pub const MAX_AUDIT_FILE_MAX_AGE: Duration = Duration::from_secs(3600);
/// Default rows per Parquet row group.
pub const DEFAULT_AUDIT_ROW_GROUP_ROWS: usize = 100_000;

/// `[audit]`: the durable spool and the Parquet archive it is compacted
/// into. Durations are human-readable ("100ms", "1m").
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuditConfig {
    /// Local root: the spool in `<dir>/spool`, Parquet in `<dir>/archive`.
    pub dir: PathBuf,
    /// Name of this gateway instance in rows and file names (letters,
    /// digits, `.`, `_`, `-`); default: the host name, else a random id.
    #[serde(default = "default_instance")]
    pub instance: String,
    /// When spool writes are synced to disk; default `interval`.
    #[serde(default)]
    pub fsync: FsyncPolicy,
    /// With `fsync = "interval"`: longest time between syncs; default 100ms.
    #[serde(default = "default_fsync_interval", with = "humantime_serde")]
    pub fsync_interval: Duration,
    /// Rows after which a spool segment is closed; default 100000.
    #[serde(default = "default_file_max_rows")]
    pub file_max_rows: u64,
    /// Spool bytes after which a segment is closed; default 64 MiB.
    #[serde(default = "default_file_max_bytes")]
    pub file_max_bytes: u64,
    /// Age after which a segment holding rows is closed; default 60s,
    /// at most 1h.
    #[serde(default = "default_file_max_age", with = "humantime_serde")]
    pub file_max_age: Duration,
    /// Rows per Parquet row group; default 100000.
    #[serde(default = "default_row_group_rows")]
    pub row_group_rows: usize,
    /// What the relay does when the spool cannot be written; default
    /// `refuse`.
    #[serde(default)]
    pub on_failure: AuditFailure,
    /// Statement text kept: `redacted` (default), `full` or `none`.
    #[serde(default)]
    pub statement_text: crate::audit::record::StatementText,
    /// Bind parameters kept: `none` (default) or `redacted` (sizes only).
    #[serde(default)]
    pub parameters: crate::audit::record::ParameterPolicy,
    /// Upload to an S3-compatible object store; absent: files stay local.
    pub s3: Option<S3Config>,
}

/// `[audit.s3]`: where published Parquet files are uploaded. Credentials
/// come from the environment only (`AWS_ACCESS_KEY_ID`,
/// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct S3Config {
    /// Bucket name.
    pub bucket: String,
    /// Key prefix (no leading or trailing `/` needed); default: none.
    #[serde(default)]
    pub prefix: String,
    /// Endpoint URL of an S3-compatible server; default: AWS.
    pub endpoint: Option<String>,
    /// Region; default `us-east-1`.
    #[serde(default = "default_region")]
    pub region: String,
    /// Allow a plain `http://` endpoint (a loopback test server); default
    /// false.
    #[serde(default)]
    pub allow_http: bool,
    /// CA bundle for the endpoint's certificate; the system roots when
    /// absent.
    pub ca_file: Option<PathBuf>,
    /// Keep the local copy after a successful upload; default false.
    #[serde(default)]
    pub keep_local: bool,
}

/// `[audit] fsync`: when spool writes reach the disk.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum FsyncPolicy {
    /// fdatasync after each batch, before its entries are acknowledged:
    /// survives power loss, at the cost of a sync per batch.
    EveryBatch,
    /// Acknowledge after the write (the record is in the kernel, which a
    /// crash of pgveil cannot lose); fdatasync at most every
    /// `fsync_interval` (power loss or a kernel crash may lose that much).
    #[default]
    Interval,
}

/// `[audit] on_failure`: what the relay does when the spool fails.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum AuditFailure {
    /// Refuse statements that cannot be recorded.
    #[default]
    Refuse,
    /// Let statements run unrecorded (logged as an error).
    Continue,
}

fn default_instance() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname").unwrap_or_default();
    let host: String = host
        .trim()
        .chars()
        .filter(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        .take(64)
        .collect();
    if host.is_empty() {
        let id = uuid::Uuid::now_v7().simple().to_string();
        format!("gw-{}", &id[id.len() - 8..])
    } else {
        host
    }
}

fn default_fsync_interval() -> Duration {
    DEFAULT_AUDIT_FSYNC_INTERVAL
}

fn default_file_max_rows() -> u64 {
    DEFAULT_AUDIT_FILE_MAX_ROWS
}

fn default_file_max_bytes() -> u64 {
    DEFAULT_AUDIT_FILE_MAX_BYTES
}

fn default_file_max_age() -> Duration {
    DEFAULT_AUDIT_FILE_MAX_AGE
}

fn default_row_group_rows() -> usize {
    DEFAULT_AUDIT_ROW_GROUP_ROWS
}

fn default_region() -> String {
    "us-east-1".to_owned()
}

impl AuditConfig {
    /// A configuration with every default, rooted at `dir`.
    pub fn with_dir(dir: PathBuf) -> Self {
        Self {
            dir,
            instance: default_instance(),
            fsync: FsyncPolicy::default(),
            fsync_interval: DEFAULT_AUDIT_FSYNC_INTERVAL,
            file_max_rows: DEFAULT_AUDIT_FILE_MAX_ROWS,
            file_max_bytes: DEFAULT_AUDIT_FILE_MAX_BYTES,
            file_max_age: DEFAULT_AUDIT_FILE_MAX_AGE,
            row_group_rows: DEFAULT_AUDIT_ROW_GROUP_ROWS,
            on_failure: AuditFailure::default(),
            statement_text: Default::default(),
            parameters: Default::default(),
            s3: None,
        }
    }

    /// Checks the values; `Err` holds the dotted key and what is wrong.
    pub fn check(&self) -> Result<(), (&'static str, &'static str)> {
        let instance_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
        if self.instance.is_empty()
            || self.instance.len() > 64
            || !self.instance.chars().all(instance_ok)
        {
            return Err(("audit.instance", "1 to 64 letters, digits, '.', '_' or '-'"));
        }
        if self.dir.as_os_str().is_empty() {
            return Err(("audit.dir", "must not be empty"));
        }
        if self.fsync_interval < Duration::from_millis(1)
            || self.fsync_interval > Duration::from_secs(10)
        {
            return Err(("audit.fsync_interval", "must be between 1ms and 10s"));
        }
        if self.file_max_rows == 0 {
            return Err(("audit.file_max_rows", "must be at least 1"));
        }
        if self.file_max_bytes < 4096 {
            return Err(("audit.file_max_bytes", "must be at least 4096"));
        }
        if self.file_max_age < Duration::from_millis(100)
            || self.file_max_age > MAX_AUDIT_FILE_MAX_AGE
        {
            return Err(("audit.file_max_age", "must be between 100ms and 1h"));
        }
        if self.row_group_rows == 0 {
            return Err(("audit.row_group_rows", "must be at least 1"));
        }
        if let Some(s3) = &self.s3 {
            if s3.bucket.is_empty() {
                return Err(("audit.s3.bucket", "must not be empty"));
            }
            let http = s3
                .endpoint
                .as_deref()
                .is_some_and(|e| e.starts_with("http://"));
            if http && !s3.allow_http {
                return Err(("audit.s3.endpoint", "an http:// endpoint needs allow_http"));
            }
        }
        Ok(())
    }
}

/// `[masking]`: where the rule files are and how often the catalog is read.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MaskingConfig {
    /// Directory of `*.toml` rule files.
    pub rules_dir: PathBuf,
    /// How often each database's catalog map is read again.
    #[serde(default = "default_catalog_refresh", with = "humantime_serde")]
    pub catalog_refresh: Duration,
    /// False: record what would be masked or refused without doing it.
    #[serde(default = "yes")]
    pub enforce: bool,
}

fn default_catalog_refresh() -> Duration {
    Duration::from_secs(60)
}

/// `[tls]`: the certificate pgveil shows to clients.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TlsConfig {
    /// PEM certificate chain, leaf first.
    pub cert: PathBuf,
    /// PEM private key.
    pub key: PathBuf,
    /// Refuse clients that do not ask for TLS.
    #[serde(default)]
    pub required: bool,
}

/// `[server]`: where the real database is and how pgveil logs in to it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// `host:port` of the server.
    pub address: String,
    /// Role pgveil logs in as.
    pub user: String,
    /// Environment variable holding the password.
    pub password_env: Option<String>,
    /// File holding the password (trailing newline ignored).
    pub password_file: Option<PathBuf>,
    /// Database names offered to clients, mapped to server database names.
    /// Empty: the client's database name passes through unchanged.
    #[serde(default)]
    pub databases: BTreeMap<String, String>,
    /// TLS towards the server.
    #[serde(default)]
    pub tls: ServerTlsMode,
    /// CA bundle for `verify-full`; the system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// Name to verify in the server certificate; the host of `address` when absent.
    pub server_name: Option<String>,
}

/// How pgveil secures its connection to the server (libpq's sslmode names).
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum ServerTlsMode {
    /// Plain TCP.
    Disable,
    /// TLS when the server offers it, without verification.
    #[default]
    Prefer,
    /// TLS or fail, without verification of the certificate.
    Require,
    /// TLS with the chain verified against the CA and the host name checked.
    VerifyFull,
}

/// `[auth]`: how clients are authenticated.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AuthConfig {
    /// The method.
    pub method: AuthMethod,
    /// `oidc`: accept a token sent without TLS when the client reached a
    /// loopback listener (a local sidecar, a development machine).
    #[serde(default)]
    pub allow_cleartext_on_loopback: bool,
    /// `oidc`: do not require the startup user name to match the token's
    /// identity (the identity's name is used either way).
    #[serde(default)]
    pub ignore_startup_user: bool,
    /// `oidc`: clock-skew allowance for `exp`, `nbf` and `iat`; at most 60 s.
    #[serde(default = "default_leeway", with = "humantime_serde")]
    pub leeway: Duration,
    /// `oidc`: the trusted issuers.
    #[serde(default)]
    pub issuers: Vec<IssuerConfig>,
    /// `trust`: groups of each user name, so that roles and rules apply
    /// in development as they will with tokens.
    #[serde(default)]
    pub trust_groups: BTreeMap<String, Vec<String>>,
}

fn default_leeway() -> Duration {
    MAX_TOKEN_LEEWAY
}

/// Authentication methods.
#[derive(Debug, Clone, Copy, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "kebab-case")]
pub enum AuthMethod {
    /// Development only: the startup user name is taken on trust. Allowed
    /// only when every listen address is loopback.
    Trust,
    /// The client sends an OIDC token (a signed JWT) as its password.
    Oidc,
}

/// `[[auth.issuers]]`: one trusted OpenID provider.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IssuerConfig {
    /// Issuer URL, exactly as in the tokens' `iss` (https).
    pub issuer: String,
    /// Accepted audiences; a token's `aud` must contain one.
    pub audiences: Vec<String>,
    /// Claim that names the user; absent: `preferred_username`, then
    /// `email`, then `sub`.
    pub username_claim: Option<String>,
    /// Claim that holds the groups, as a key or a dotted path
    /// (`groups`, `realm_access.roles`, `cognito:groups`).
    #[serde(default = "default_groups_claim")]
    pub groups_claim: String,
    /// Scopes a token must carry (in `scope` or `scp`).
    #[serde(default)]
    pub required_scopes: Vec<String>,
    /// CA bundle for the issuer's HTTPS endpoints; the system roots when absent.
    pub ca_file: Option<PathBuf>,
    /// Routine key refresh interval.
    #[serde(default = "default_key_refresh", with = "humantime_serde")]
    pub key_refresh: Duration,
    /// Read the keys from this JWKS file instead of discovery (air-gapped
    /// set-ups); reread on the refresh interval.
    pub jwks_file: Option<PathBuf>,
}

fn default_groups_claim() -> String {
    "groups".to_owned()
}

fn default_key_refresh() -> Duration {
    DEFAULT_KEY_REFRESH
}

/// `[[roles]]`: clients in `group` reach the server as `role`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RoleConfig {
    /// Group name as it appears in the identity's groups.
    pub group: String,
    /// Server role to log in as.
    pub role: String,
    /// Environment variable holding the role's password.
    pub password_env: Option<String>,
    /// File holding the role's password.
    pub password_file: Option<PathBuf>,
    /// Databases (client-visible names) this mapping may reach; empty: all.
    #[serde(default)]
    pub databases: Vec<String>,
}

/// `[limits]`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Limits {
    /// Largest message accepted from a client, in bytes.
    pub max_message_bytes: usize,
    /// Concurrent client connections; more are refused with 53300.
    pub max_connections: usize,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            max_message_bytes: DEFAULT_MAX_MESSAGE_BYTES,
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

/// `[timeouts]`, written as human-readable durations ("10s", "1m 30s").
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Timeouts {
    /// Time a client has for TLS, startup and authentication.
    #[serde(with = "humantime_serde")]
    pub startup: Duration,
    /// Time to connect and log in to the server.
    #[serde(with = "humantime_serde")]
    pub server_connect: Duration,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            startup: DEFAULT_STARTUP_TIMEOUT,
            server_connect: DEFAULT_SERVER_CONNECT_TIMEOUT,
        }
    }
}

/// A secret value: never printed.
#[derive(Clone)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret.
    pub fn new(value: String) -> Self {
        Self(value)
    }

    /// The secret itself, for the one place that must send it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("[redacted]")
    }
}

impl Config {
    /// Reads, parses and validates the file at `path`.
    pub fn load(path: &Path) -> Result<Self, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|source| ConfigError::Read {
            path: path.to_owned(),
            source,
        })?;
        Self::parse(&text, path)
    }

    /// Parses and validates `text`; `path` is used in error messages.
    pub fn parse(text: &str, path: &Path) -> Result<Self, ConfigError> {
        let config: Config = toml::from_str(text).map_err(|e| ConfigError::Parse {
            path: path.to_owned(),
            message: e.to_string().trim_end().to_owned(),
        })?;
        config.validate(path)?;
        Ok(config)
    }

    fn validate(&self, path: &Path) -> Result<(), ConfigError> {
        let invalid = |key, message: &str| ConfigError::Invalid {
            path: path.to_owned(),
            key,
            message: message.to_owned(),
        };
        if self.listen.is_empty() {
            return Err(invalid("listen", "at least one address is needed"));
        }
        if self
            .worker_threads
            .is_some_and(|n| !(1..=1024).contains(&n))
        {
            return Err(invalid("worker_threads", "must be between 1 and 1024"));
        }
        if let Some(m) = &self.masking {
            if m.catalog_refresh < Duration::from_secs(1) {
                return Err(invalid("masking.catalog_refresh", "must be at least 1s"));
            }
        }
        if self.auth.method == AuthMethod::Trust
            && !self.listen.iter().all(|a| a.ip().is_loopback())
        {
            return Err(invalid(
                "auth.method",
                "\"trust\" is for development and needs every listen address to be loopback",
            ));
        }
        if self.auth.method == AuthMethod::Oidc && self.auth.issuers.is_empty() {
            return Err(invalid(
                "auth.issuers",
                "method \"oidc\" needs at least one issuer",
            ));
        }
        if self.auth.leeway > MAX_TOKEN_LEEWAY {
            return Err(invalid("auth.leeway", "may be at most 60s"));
        }
        for issuer in &self.auth.issuers {
            if !issuer.issuer.starts_with("https://") {
                return Err(invalid("auth.issuers.issuer", "must be an https:// URL"));
            }
            if issuer.audiences.is_empty() {
                return Err(invalid(
                    "auth.issuers.audiences",
                    "at least one audience is needed",
                ));
            }
        }
        for role in &self.roles {
            if role.password_env.is_some() && role.password_file.is_some() {
                return Err(invalid(
                    "roles.password_env",
                    "give either password_env or password_file, not both",
                ));
            }
        }
        if self.server.password_env.is_some() && self.server.password_file.is_some() {
            return Err(invalid(
                "server.password_env",
                "give either password_env or password_file, not both",
            ));
        }
        if self.limits.max_message_bytes < 1024 {
            return Err(invalid("limits.max_message_bytes", "must be at least 1024"));
        }
        if self.server.address.rsplit_once(':').is_none() {
            return Err(invalid("server.address", "expected host:port"));
        }
        if let Some(audit) = &self.audit {
            audit
                .check()
                .map_err(|(key, message)| invalid(key, message))?;
        }
        Ok(())
    }

    /// Resolves the server password from the environment or its file.
    /// `None` when neither is configured (trust on the server side).
    pub fn server_password(&self, path: &Path) -> Result<Option<Secret>, ConfigError> {
        let server = &self.server;
        let keys = ("server.password_env", "server.password_file");
        read_secret(
            path,
            keys,
            server.password_env.as_deref(),
            server.password_file.as_deref(),
        )
    }

    /// Maps a client's database name to the server's, or `None` if not offered.
    pub fn server_database<'a>(&'a self, requested: &'a str) -> Option<&'a str> {
        if self.server.databases.is_empty() {
            return Some(requested);
        }
        self.server.databases.get(requested).map(String::as_str)
    }
}

/// Reads a secret from the environment variable or the file named by a
/// pair of keys (`keys` names them for error messages).
pub fn read_secret(
    path: &Path,
    keys: (&'static str, &'static str),
    env: Option<&str>,
    file: Option<&Path>,
) -> Result<Option<Secret>, ConfigError> {
    let invalid = |key, message: String| ConfigError::Invalid {
        path: path.to_owned(),
        key,
        message,
    };
    if let Some(var) = env {
        return match std::env::var(var) {
            Ok(value) => Ok(Some(Secret::new(value))),
            Err(_) => Err(invalid(
                keys.0,
                format!("environment variable {var} is not set"),
            )),
        };
    }
    if let Some(file) = file {
        let text = std::fs::read_to_string(file)
            .map_err(|e| invalid(keys.1, format!("cannot read {}: {e}", file.display())))?;
        return Ok(Some(Secret::new(
            text.trim_end_matches(['\r', '\n']).to_owned(),
        )));
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    const MINIMAL: &str = r#"
listen = ["127.0.0.1:6432"]
[server]
address = "127.0.0.1:5432"
user = "pgveil"
[auth]
method = "trust"
"#;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        Config::parse(text, Path::new("pgveil.toml"))
    }

    #[test]
    fn minimal_file_gets_defaults() {
        let config = parse(MINIMAL).unwrap();
        assert_eq!(config.timeouts.startup, DEFAULT_STARTUP_TIMEOUT);
        assert_eq!(config.server.tls, ServerTlsMode::Prefer);
        assert_eq!(config.server_database("app"), Some("app"));
    }

    #[test]
    fn unknown_key_names_key_and_file() {
        let err = parse(&MINIMAL.replace("user = ", "usr = "))
            .unwrap_err()
            .to_string();
        assert!(err.contains("pgveil.toml"), "{err}");
        assert!(err.contains("usr"), "{err}");
    }

    #[test]
    fn trust_refused_off_loopback() {
        let err = parse(&MINIMAL.replace("127.0.0.1:6432", "0.0.0.0:6432")).unwrap_err();
        assert!(err.to_string().contains("auth.method"), "{err}");
    }

    #[test]
    fn durations_are_human_readable() {
        let text = format!("{MINIMAL}\n[timeouts]\nstartup = \"1m 30s\"\n");
        let config = parse(&text).unwrap();
        assert_eq!(config.timeouts.startup, Duration::from_secs(90));
    }

    #[test]
    fn database_map_restricts_names() {
        let text = MINIMAL.replace(
            "user = \"pgveil\"",
            "user = \"pgveil\"\ndatabases = { app = \"prod\" }",
        );
        let config = parse(&text).unwrap();
        assert_eq!(config.server_database("app"), Some("prod"));
        assert_eq!(config.server_database("other"), None);
    }

    #[test]
    fn worker_threads_are_bounded() {
        let with =
            |n: &str| MINIMAL.replace("[server]", &format!("worker_threads = {n}\n[server]"));
        assert_eq!(parse(&with("2")).unwrap().worker_threads, Some(2));
        let err = parse(&with("0")).unwrap_err().to_string();
        assert!(err.contains("worker_threads"), "{err}");
    }

    #[test]
    fn audit_table_gets_defaults_and_checks_keys() {
        let text = format!("{MINIMAL}\n[audit]\ndir = \"/var/lib/pgveil\"\n");
        let audit = parse(&text).unwrap().audit.unwrap();
        assert_eq!(audit.fsync, FsyncPolicy::Interval);
        assert_eq!(audit.file_max_age, DEFAULT_AUDIT_FILE_MAX_AGE);
        assert_eq!(audit.on_failure, AuditFailure::Refuse);
        assert!(
            audit.check().is_ok(),
            "default instance {:?}",
            audit.instance
        );

        let err = parse(&format!("{text}file_max_age = \"2h\"\n"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("audit.file_max_age") && err.contains("pgveil.toml"),
            "{err}"
        );
        let err = parse(&format!("{text}fsync = \"sometimes\"\n")).unwrap_err();
        assert!(err.to_string().contains("fsync"), "{err}");
        let s3 = "[audit.s3]\nbucket = \"b\"\nendpoint = \"http://127.0.0.1:9000\"\n";
        let err = parse(&format!("{text}{s3}")).unwrap_err().to_string();
        assert!(err.contains("audit.s3.endpoint"), "{err}");
        let config = parse(&format!("{text}{s3}allow_http = true\n")).unwrap();
        let s3 = config.audit.unwrap().s3.unwrap();
        assert_eq!((s3.region.as_str(), s3.keep_local), ("us-east-1", false));
    }

    #[test]
    fn secret_debug_is_redacted() {
        assert_eq!(format!("{:?}", Secret::new("hunter2".into())), "[redacted]");
    }
}
