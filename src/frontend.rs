//! The client side: listeners, the startup phase, authentication, and the
//! hand-over to the relay.
//!
//! Each accepted connection runs in its own task under one tracing span
//! (session id and peer; user and database filled in after startup). The
//! startup phase answers SSLRequest with TLS or 'N', GSSENCRequest with 'N',
//! passes CancelRequest on to the server under the server's own key, and
//! answers a StartupMessage that asks for a newer minor protocol version with
//! NegotiateProtocolVersion, as PostgreSQL does. Only then is the client
//! authenticated and a server connection opened with pgveil's credential.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tracing::Instrument;
use uuid::Uuid;

use crate::audit::trail::Attempt;
use crate::audit::{Archive, Audit};
use crate::auth::{self, Auth, Login, MAX_TOKEN_BYTES};
use crate::backend::{BackendError, ServerTarget};
use crate::cancel::{CancelRegistry, Key};
use crate::config::Config;
use crate::mask::{Masking, SessionMask};
use crate::net::Stream;
use crate::policy::Policy;
use crate::relay::{self, RelayContext};
use crate::session::{Identity, SessionInfo};
use crate::wire::{self, sqlstate, tag, FrameError, Severity, SqlState, StartupPacket};

/// Startup parameters that pgveil sets itself or does not pass on.
const RESERVED_PARAMS: [&str; 3] = ["user", "database", "replication"];
/// Packets a client may send before its StartupMessage (SSLRequest, GSSENCRequest).
const MAX_PRELUDE_PACKETS: usize = 3;
/// Largest password message: a token of the largest accepted size plus the
/// header and terminator.
const MAX_PASSWORD_MESSAGE: usize = MAX_TOKEN_BYTES + 16;
/// Newest minor version of protocol 3 that pgveil speaks.
const PROTOCOL_MINOR: u16 = 0;

/// Why the gateway could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    /// Server connection set-up problem.
    #[error(transparent)]
    Target(#[from] crate::backend::TargetError),
    /// Authentication set-up problem.
    #[error(transparent)]
    Auth(#[from] auth::SetupError),
    /// Client TLS set-up problem.
    #[error("client TLS: {0}")]
    Tls(#[from] crate::tls::TlsError),
    /// The audit archive cannot start.
    #[error(transparent)]
    Audit(#[from] crate::audit::AuditError),
    /// A masking rule file is bad.
    #[error(transparent)]
    Rules(#[from] crate::mask::rules::RuleError),
    /// A listen address could not be bound.
    #[error("cannot listen on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// The error.
        source: std::io::Error,
    },
}

/// A refusal during startup: the client gets a FATAL ErrorResponse.
#[derive(Debug)]
struct Refusal {
    code: SqlState,
    message: String,
}

impl Refusal {
    fn new(code: SqlState, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
        }
    }
}

impl From<FrameError> for Refusal {
    fn from(e: FrameError) -> Self {
        Self::new(
            sqlstate::PROTOCOL_VIOLATION,
            format!("invalid startup packet: {e}"),
        )
    }
}

impl From<std::io::Error> for Refusal {
    fn from(e: std::io::Error) -> Self {
        Self::new(
            sqlstate::PROTOCOL_VIOLATION,
            format!("connection error during startup: {e}"),
        )
    }
}

/// The running gateway: configuration and everything sessions share.
pub struct Gateway {
    config: Config,
    acceptor: Option<TlsAcceptor>,
    target: ServerTarget,
    auth: Auth,
    cancels: CancelRegistry,
    policy: Policy,
    audit: Audit,
    slots: Arc<Semaphore>,
    masking: Option<Masking>,
    /// The running archive, stopped when serving stops.
    archive: std::sync::Mutex<Option<Archive>>,
}

/// Where and when a connection started, and the protocol it asked for.
struct Start {
    peer: SocketAddr,
    id: Uuid,
    deadline: tokio::time::Instant,
    minor: u16,
}

/// What the client asked for in its first packets.
enum Hello {
    Cancel(Key),
    Startup {
        minor: u16,
        params: Vec<(String, String)>,
    },
}

impl Gateway {
    /// Builds the gateway from a validated configuration.
    pub fn new(config: Config, path: &Path) -> Result<Self, StartError> {
        let acceptor = config.tls.as_ref().map(crate::tls::acceptor).transpose()?;
        let target = ServerTarget::from_config(&config)?;
        let auth = Auth::from_config(&config, path)?;
        let slots = Arc::new(Semaphore::new(config.limits.max_connections));
        let masking = config
            .masking
            .as_ref()
            .map(|m| Masking::load(&m.rules_dir, m.catalog_refresh, m.enforce))
            .transpose()?;
        let policy = Policy::load(
            config.policy.as_ref().and_then(|p| p.rules_dir.as_deref()),
            config.policy.as_ref().is_none_or(|p| p.enforce),
            config.masking.as_ref().is_none_or(|m| m.enforce),
        )?;
        Ok(Self {
            config,
            acceptor,
            target,
            auth,
            cancels: CancelRegistry::default(),
            policy,
            audit: Audit::log_only(),
            slots,
            masking,
            archive: std::sync::Mutex::new(None),
        })
    }

    /// Starts the audit archive of `[audit]`, recovering what an earlier
    /// run left in its spool (blocking file IO: call it at start-up).
    pub fn start_archive(&mut self) -> Result<(), StartError> {
        let Some(config) = &self.config.audit else {
            return Ok(());
        };
        let (archive, handle) = Archive::start(config, tokio::runtime::Handle::current())?;
        self.audit = Audit::archive(config, handle);
        *self.archive.get_mut().unwrap_or_else(|p| p.into_inner()) = Some(archive);
        Ok(())
    }

    /// The masking state, when `[masking]` is configured.
    pub fn masking(&self) -> Option<&Masking> {
        self.masking.as_ref()
    }

    /// The server target, for `pgveil check`.
    pub fn target(&self) -> &ServerTarget {
        &self.target
    }

    /// The authentication set-up, for `pgveil check`.
    pub fn auth(&self) -> &Auth {
        &self.auth
    }

    /// Binds every listen address; fails if any cannot be bound.
    pub async fn bind(&self) -> Result<Vec<TcpListener>, StartError> {
        let mut listeners = Vec::new();
        for &addr in &self.config.listen {
            let listener = TcpListener::bind(addr)
                .await
                .map_err(|source| StartError::Bind { addr, source })?;
            tracing::info!(%addr, "listening");
            listeners.push(listener);
        }
        Ok(listeners)
    }

    /// Accepts clients on `listeners` until `shutdown` completes.
    pub async fn serve(
        self: Arc<Self>,
        listeners: Vec<TcpListener>,
        shutdown: impl std::future::Future<Output = ()>,
    ) {
        self.auth.spawn_key_refresh();
        let mut tasks = tokio::task::JoinSet::new();
        if self.masking.is_some() || self.policy.dir().is_some() {
            tasks.spawn(self.clone().watch_rules());
        }
        if self.masking.is_some() {
            tasks.spawn(self.clone().refresh_catalogs());
        }
        for listener in listeners {
            tasks.spawn(self.clone().accept_loop(listener));
        }
        shutdown.await;
        tracing::info!("shutting down");
        tasks.abort_all();
        let archive = self
            .archive
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .take();
        if let Some(archive) = archive {
            archive.shutdown().await;
        }
    }

    async fn accept_loop(self: Arc<Self>, listener: TcpListener) {
        loop {
            match listener.accept().await {
                Ok((tcp, peer)) => {
                    let gateway = self.clone();
                    let id = Uuid::now_v7();
                    let span = tracing::info_span!(
                        "session",
                        id = %id,
                        peer = %peer,
                        user = tracing::field::Empty,
                        database = tracing::field::Empty,
                    );
                    tokio::spawn(gateway.handle(tcp, peer, id).instrument(span));
                }
                Err(e) => {
                    // Out of file descriptors and the like: wait rather than spin.
                    tracing::error!(error = %e, "accept failed");
                    tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                }
            }
        }
    }

    /// Runs one client connection from accept to close.
    async fn handle(self: Arc<Self>, tcp: TcpStream, peer: SocketAddr, id: Uuid) {
        let _ = tcp.set_nodelay(true);
        let mut attempt = self.audit.attempt(id, peer);
        let mut slot = Some(Stream::Plain(tcp));
        let Ok(_permit) = self.slots.clone().try_acquire_owned() else {
            let refusal = Refusal::new(
                sqlstate::TOO_MANY_CONNECTIONS,
                "sorry, too many clients already",
            );
            refuse(&mut slot, &refusal, &mut attempt).await;
            return;
        };
        let mut buf = BytesMut::with_capacity(1024);
        // One deadline for TLS, startup and authentication together.
        let deadline = tokio::time::Instant::now() + self.config.timeouts.startup;
        let hello = match tokio::time::timeout_at(deadline, self.hello(&mut slot, &mut buf)).await {
            Ok(Ok(hello)) => hello,
            Ok(Err(refusal)) => return refuse(&mut slot, &refusal, &mut attempt).await,
            Err(_) => return refuse(&mut slot, &startup_timeout(), &mut attempt).await,
        };
        let Some(stream) = slot.take() else { return };
        match hello {
            Hello::Cancel(key) => {
                attempt.cancel();
                self.cancel(key).await;
            }
            Hello::Startup { minor, params } => {
                let start = Start {
                    peer,
                    id,
                    deadline,
                    minor,
                };
                self.start_session(stream, buf, start, params, &mut attempt)
                    .await;
            }
        }
    }

    /// Reads packets until a StartupMessage or CancelRequest, answering
    /// SSLRequest and GSSENCRequest on the way.
    async fn hello(&self, slot: &mut Option<Stream>, buf: &mut BytesMut) -> Result<Hello, Refusal> {
        for _ in 0..MAX_PRELUDE_PACKETS {
            let packet = read_startup_packet(slot, buf).await?;
            match packet {
                StartupPacket::SslRequest => self.start_tls(slot, buf).await?,
                StartupPacket::GssEncRequest => {
                    reject_buffered_plaintext(buf)?;
                    write_raw(slot, b"N").await?;
                }
                StartupPacket::CancelRequest {
                    process_id,
                    secret_key,
                } => {
                    return Ok(Hello::Cancel(Key {
                        process_id,
                        secret_key,
                    }))
                }
                StartupPacket::Startup {
                    major,
                    minor,
                    params,
                } => {
                    if major != 3 {
                        return Err(Refusal::new(
                            sqlstate::FEATURE_NOT_SUPPORTED,
                            format!("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.{PROTOCOL_MINOR}"),
                        ));
                    }
                    let is_tls = matches!(slot, Some(Stream::Tls(_)));
                    if !is_tls && self.config.tls.as_ref().is_some_and(|t| t.required) {
                        return Err(Refusal::new(
                            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                            "pgveil requires TLS: connect with sslmode=require or stronger",
                        ));
                    }
                    return Ok(Hello::Startup { minor, params });
                }
            }
        }
        Err(Refusal::new(
            sqlstate::PROTOCOL_VIOLATION,
            "too many startup requests",
        ))
    }

    /// Answers an SSLRequest: 'S' and a TLS handshake, or 'N'.
    async fn start_tls(
        &self,
        slot: &mut Option<Stream>,
        buf: &mut BytesMut,
    ) -> Result<(), Refusal> {
        if matches!(slot, Some(Stream::Tls(_))) {
            return Err(Refusal::new(
                sqlstate::PROTOCOL_VIOLATION,
                "SSLRequest inside TLS",
            ));
        }
        // Bytes sent after SSLRequest but before the handshake would be read
        // as if they came over TLS: refuse them, as PostgreSQL does.
        reject_buffered_plaintext(buf)?;
        let Some(acceptor) = &self.acceptor else {
            return write_raw(slot, b"N").await;
        };
        write_raw(slot, b"S").await?;
        let Some(Stream::Plain(tcp)) = slot.take() else {
            return Err(Refusal::new(
                sqlstate::PROTOCOL_VIOLATION,
                "connection lost",
            ));
        };
        let tls = acceptor.accept(tcp).await.map_err(|e| {
            Refusal::new(
                sqlstate::PROTOCOL_VIOLATION,
                format!("TLS handshake failed: {e}"),
            )
        })?;
        *slot = Some(Stream::Tls(Box::new(tokio_rustls::TlsStream::Server(tls))));
        Ok(())
    }

    /// Passes a CancelRequest on under the server's key, if the key is live.
    async fn cancel(&self, key: Key) {
        let Some(server_key) = self.cancels.lookup(key) else {
            tracing::info!("cancel request with an unknown key ignored");
            return;
        };
        match self
            .target
            .cancel(server_key.process_id, server_key.secret_key)
            .await
        {
            Ok(()) => tracing::info!("cancel request passed to the server"),
            Err(e) => tracing::warn!(error = %e, "cancel request could not reach the server"),
        }
    }

    /// Authenticates the client, logs in to the server and runs the relay.
    async fn start_session(
        &self,
        mut client: Stream,
        mut leftover: BytesMut,
        start: Start,
        params: Vec<(String, String)>,
        attempt: &mut Attempt<'_>,
    ) {
        let Start {
            peer,
            id,
            deadline,
            minor,
        } = start;
        let unrecognised: Vec<&str> = params
            .iter()
            .map(|(k, _)| k.as_str())
            .filter(|k| k.starts_with("_pq_."))
            .collect();
        if minor > PROTOCOL_MINOR || !unrecognised.is_empty() {
            let mut negotiate = BytesMut::new();
            wire::put_negotiate_version(&mut negotiate, &unrecognised);
            if client.write_all(&negotiate).await.is_err() {
                return;
            }
        }
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        attempt.startup(
            param("user").unwrap_or_default(),
            param("application_name"),
            client.tls_version(),
        );
        let request = match self.requested(&params) {
            Ok(request) => request,
            Err(refusal) => return refuse(&mut Some(client), &refusal, attempt).await,
        };
        let authenticated = tokio::time::timeout_at(
            deadline,
            self.authenticate(&mut client, &mut leftover, &request),
        )
        .await
        .unwrap_or_else(|_| Err(startup_timeout()));
        let (identity, login) = match authenticated {
            Ok(found) => found,
            Err(refusal) => return refuse(&mut Some(client), &refusal, attempt).await,
        };
        let info = SessionInfo {
            id,
            peer,
            client_tls: client.tls_version(),
            identity,
            database: request.database.clone(),
            server_role: login.user.clone(),
            application_name: request.application_name.clone(),
        };
        let span = tracing::Span::current();
        span.record("user", info.identity.user.as_str());
        span.record("database", info.database.as_str());

        let passed: Vec<(String, String)> = params
            .into_iter()
            .filter(|(k, _)| !RESERVED_PARAMS.contains(&k.as_str()) && !k.starts_with("_pq_."))
            .collect();
        let covered = self
            .masking
            .as_ref()
            .is_some_and(|m| m.rules().covers_any(&info.identity.groups));
        if covered && crate::policy::startup_changes_string_syntax(&passed) {
            let refusal = Refusal::new(
                sqlstate::INSUFFICIENT_PRIVILEGE,
                "standard_conforming_strings may not be set by identities that masking rules cover",
            );
            return refuse(&mut Some(client), &refusal, attempt).await;
        }
        let server = match self.target.connect(login, &info.database, &passed).await {
            Ok(server) => server,
            Err(e) => {
                attempt.refused("the server connection failed");
                return self.server_refused(client, e).await;
            }
        };
        let Some((process_id, secret_key)) = server.key else {
            tracing::warn!("the server sent no cancel key");
            attempt.refused("the server sent no cancel key");
            return;
        };
        let cancel = self.cancels.register(Key {
            process_id,
            secret_key,
        });
        let mut greeting = BytesMut::new();
        wire::put_auth_ok(&mut greeting);
        greeting.extend_from_slice(&server.startup_messages);
        wire::put_backend_key(
            &mut greeting,
            cancel.key().process_id,
            cancel.key().secret_key,
        );
        wire::put_ready(&mut greeting, server.status);
        if client.write_all(&greeting).await.is_err() {
            attempt.refused("the client left during startup");
            return;
        }
        attempt.established(&info);
        let mask = match self.session_mask(&info).await {
            Ok(mask) => mask,
            Err(refusal) => return refuse(&mut Some(client), &refusal, attempt).await,
        };
        let ctx = RelayContext {
            identity: &info.identity,
            policy: &self.policy,
            audit: &self.audit,
            session_id: info.id,
            max_message: self.config.limits.max_message_bytes,
            initial_status: server.status,
            expires_at: info.identity.expires_at,
            mask: mask.as_ref(),
        };
        let mut server_stream = server.stream;
        let (client_rd, client_wr) = client.split();
        let (server_rd, server_wr) = server_stream.split();
        let (ended, totals) = relay::run(
            &ctx,
            (client_rd, client_wr, leftover),
            (server_rd, server_wr, server.leftover),
        )
        .await;
        if let relay::Ended::ClientProtocol(reason) | relay::Ended::ServerProtocol(reason) = &ended
        {
            tracing::warn!(reason = %reason, "protocol violation");
        }
        attempt.ended(&totals, ended.as_str());
    }

    /// The session's view of masking. A covered identity needs the catalog
    /// of its database; if it cannot be read, the session is refused rather
    /// than served without masking.
    async fn session_mask(&self, info: &SessionInfo) -> Result<Option<SessionMask<'_>>, Refusal> {
        let Some(masking) = &self.masking else {
            return Ok(None);
        };
        let mask = SessionMask {
            masking,
            target: &self.target,
            login: self.auth.default_login(),
            database: info.database.clone(),
            groups: info.identity.groups.clone(),
        };
        if mask.covered() {
            if let Err(e) = masking
                .catalog(&info.database, &self.target, self.auth.default_login())
                .await
            {
                tracing::error!(error = %e, "cannot read the catalog for masking");
                return Err(Refusal::new(
                    sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                    "pgveil cannot read the database catalog that masking needs",
                ));
            }
        }
        Ok(Some(mask))
    }

    /// Reloads the masking and policy rules on SIGHUP and when a rule file
    /// changes. A bad file is logged and the rules in force stay.
    async fn watch_rules(self: Arc<Self>) {
        let mut hup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
            Ok(hup) => Some(hup),
            Err(e) => {
                tracing::warn!(error = %e, "cannot watch SIGHUP; rules reload on change only");
                None
            }
        };
        let signature = |dir: Option<&Path>| dir.map(crate::mask::dir_signature);
        let mask_dir = self.masking.as_ref().map(Masking::dir);
        let policy_dir = self.policy.dir();
        let mut seen = (signature(mask_dir), signature(policy_dir));
        let mut poll = tokio::time::interval(crate::mask::RULES_POLL);
        loop {
            let by_signal = async {
                match hup.as_mut() {
                    Some(h) => drop(h.recv().await),
                    None => std::future::pending().await,
                }
            };
            let (masks, policies) = tokio::select! {
                () = by_signal => (true, true),
                _ = poll.tick() => {
                    let now = (signature(mask_dir), signature(policy_dir));
                    let changed = (now.0 != seen.0, now.1 != seen.1);
                    seen = now;
                    changed
                }
            };
            if let (true, Some(masking)) = (masks, &self.masking) {
                match masking.reload() {
                    Ok(count) => tracing::info!(rules = count, "masking rules reloaded"),
                    Err(e) => tracing::error!(
                        error = %e,
                        "masking rules not reloaded; the old rules stay"
                    ),
                }
            }
            if policies && policy_dir.is_some() {
                match self.policy.reload() {
                    Ok(count) => tracing::info!(rules = count, "policy rules reloaded"),
                    Err(e) => tracing::error!(
                        error = %e,
                        "policy rules not reloaded; the old rules stay"
                    ),
                }
            }
        }
    }

    /// Reads every kept catalog again on the refresh interval.
    async fn refresh_catalogs(self: Arc<Self>) {
        let Some(masking) = &self.masking else { return };
        let mut tick = tokio::time::interval(masking.refresh());
        tick.tick().await;
        loop {
            tick.tick().await;
            for db in masking.databases() {
                if let Err(e) = masking
                    .read_catalog(&db, &self.target, self.auth.default_login())
                    .await
                {
                    tracing::warn!(error = %e, database = %db, "masking catalog refresh failed");
                }
            }
        }
    }

    /// Reads what the client asks for from its startup parameters.
    fn requested(&self, params: &[(String, String)]) -> Result<Request, Refusal> {
        let param = |name: &str| {
            params
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.as_str())
        };
        if param("replication").is_some_and(|v| !matches!(v, "false" | "off" | "no" | "0")) {
            return Err(Refusal::new(
                sqlstate::FEATURE_NOT_SUPPORTED,
                "pgveil does not carry replication connections",
            ));
        }
        let Some(user) = param("user").filter(|u| !u.is_empty()) else {
            return Err(Refusal::new(
                sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
                "no PostgreSQL user name specified in startup packet",
            ));
        };
        let requested = param("database").filter(|d| !d.is_empty()).unwrap_or(user);
        let Some(database) = self.config.server_database(requested) else {
            return Err(Refusal::new(
                sqlstate::INVALID_CATALOG_NAME,
                format!("database \"{requested}\" is not offered by this gateway"),
            ));
        };
        Ok(Request {
            user: user.to_owned(),
            client_database: requested.to_owned(),
            database: database.to_owned(),
            application_name: param("application_name").map(str::to_owned),
        })
    }

    /// Establishes who the client is and which server login it gets.
    async fn authenticate(
        &self,
        client: &mut Stream,
        leftover: &mut BytesMut,
        request: &Request,
    ) -> Result<(Identity, &Login), Refusal> {
        let token = if self.auth.wants_token() {
            let tls = matches!(client, Stream::Tls(_));
            let loopback = client.local_addr().is_some_and(|a| a.ip().is_loopback());
            self.auth
                .check_transport(tls, loopback)
                .map_err(|r| self.refused(r, request))?;
            Some(read_token(client, leftover).await?)
        } else {
            None
        };
        let identity = self
            .auth
            .identify(&request.user, token.as_deref())
            .await
            .map_err(|r| self.refused(r, request))?;
        let login = self
            .auth
            .route(&identity, &request.client_database)
            .map_err(|r| self.refused(r, request))?;
        self.audit.authenticated(&identity, &login.user);
        Ok((identity, login))
    }

    /// Records a refused authentication and turns it into a refusal.
    fn refused(&self, refused: auth::Refused, request: &Request) -> Refusal {
        self.audit.auth_refused(refused.reason, &request.user);
        Refusal::new(refused.code, refused.message)
    }

    /// Tells the client why the server connection failed.
    async fn server_refused(&self, mut client: Stream, e: BackendError) {
        let mut greeting = BytesMut::new();
        tracing::warn!(error = %e, "server connection failed");
        match e {
            // The server's own answer about the client's request (no such
            // database, too many connections) is passed on as it is; an
            // answer about pgveil's credential is not the client's business.
            BackendError::Refused { code, frame } if !code.starts_with("28") => {
                greeting.put_slice(frame.bytes());
            }
            _ => wire::put_error(
                &mut greeting,
                Severity::Fatal,
                sqlstate::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION,
                "pgveil could not connect to the database server",
                Some("The gateway's operator can find the reason in its log."),
            ),
        }
        let _ = client.write_all(&greeting).await;
        let _ = client.shutdown().await;
    }
}

/// The client's startup request, as pgveil understood it.
struct Request {
    /// Startup user name.
    user: String,
    /// Database name as the client gave it.
    client_database: String,
    /// Database name on the server.
    database: String,
    application_name: Option<String>,
}

fn startup_timeout() -> Refusal {
    Refusal::new(
        sqlstate::QUERY_CANCELED,
        "canceling authentication due to timeout",
    )
}

/// Asks for a cleartext password and reads the token the client sends in it.
async fn read_token(client: &mut Stream, buf: &mut BytesMut) -> Result<String, Refusal> {
    let mut request = BytesMut::new();
    wire::put_auth_cleartext(&mut request);
    client.write_all(&request).await?;
    let frame = loop {
        match wire::next_frame(buf, MAX_PASSWORD_MESSAGE) {
            Ok(Some(frame)) => break frame,
            Ok(None) => {}
            Err(FrameError::Oversized { .. }) => {
                return Err(Refusal::new(
                    sqlstate::PROTOCOL_VIOLATION,
                    format!("password message too long: tokens of up to {MAX_TOKEN_BYTES} bytes are accepted"),
                ))
            }
            Err(e) => return Err(e.into()),
        }
        buf.reserve(1024);
        if client.read_buf(buf).await? == 0 {
            return Err(Refusal::new(
                sqlstate::PROTOCOL_VIOLATION,
                "the client closed the connection during authentication",
            ));
        }
    };
    if frame.tag() != tag::PASSWORD {
        return Err(Refusal::new(
            sqlstate::PROTOCOL_VIOLATION,
            "expected a password message",
        ));
    }
    let token = wire::take_cstr(frame.body())
        .map(|(t, _)| t)
        .unwrap_or_default();
    String::from_utf8(token.to_vec()).map_err(|_| {
        Refusal::new(
            sqlstate::INVALID_PASSWORD,
            "OIDC token rejected: not a well-formed token",
        )
    })
}

/// Refuses bytes that arrived behind SSLRequest or GSSENCRequest.
fn reject_buffered_plaintext(buf: &BytesMut) -> Result<(), Refusal> {
    if buf.is_empty() {
        return Ok(());
    }
    Err(Refusal::new(
        sqlstate::PROTOCOL_VIOLATION,
        "received unencrypted data after SSL request",
    ))
}

async fn read_startup_packet(
    slot: &mut Option<Stream>,
    buf: &mut BytesMut,
) -> Result<StartupPacket, Refusal> {
    let Some(stream) = slot.as_mut() else {
        return Err(Refusal::new(
            sqlstate::PROTOCOL_VIOLATION,
            "connection lost",
        ));
    };
    loop {
        if let Some(packet) = wire::next_startup_packet(buf)? {
            return Ok(packet);
        }
        buf.reserve(1024);
        if stream.read_buf(buf).await? == 0 {
            return Err(Refusal::new(
                sqlstate::PROTOCOL_VIOLATION,
                "incomplete startup packet",
            ));
        }
    }
}

async fn write_raw(slot: &mut Option<Stream>, bytes: &[u8]) -> Result<(), Refusal> {
    let Some(stream) = slot.as_mut() else {
        return Err(Refusal::new(
            sqlstate::PROTOCOL_VIOLATION,
            "connection lost",
        ));
    };
    stream.write_all(bytes).await?;
    Ok(())
}

/// Sends a FATAL ErrorResponse, if the connection is still there, and
/// closes; the attempt's record keeps the reason.
async fn refuse(slot: &mut Option<Stream>, refusal: &Refusal, attempt: &mut Attempt<'_>) {
    tracing::info!(code = %refusal.code, reason = %refusal.message, "connection refused");
    attempt.refused(&refusal.message);
    let Some(stream) = slot.as_mut() else { return };
    let mut out = BytesMut::new();
    wire::put_error(
        &mut out,
        Severity::Fatal,
        refusal.code,
        &refusal.message,
        None,
    );
    let _ = stream.write_all(&out).await;
    let _ = stream.shutdown().await;
}
