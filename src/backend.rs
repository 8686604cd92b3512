//! Connections to the real PostgreSQL server, made with pgveil's own
//! credential.
//!
//! pgveil logs in with SCRAM-SHA-256, md5, a cleartext password or trust,
//! as the server asks, optionally over TLS. The login is complete when the
//! server sends ReadyForQuery; the ParameterStatus messages it sent on the
//! way are kept verbatim for the client, and its BackendKeyData is kept for
//! cancel requests (the client is shown pgveil's own key instead).

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use postgres_protocol::authentication::md5_hash;
use postgres_protocol::authentication::sasl::{ChannelBinding, ScramSha256, SCRAM_SHA_256};
use postgres_protocol::message::backend::Message;
use postgres_protocol::message::frontend;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use tokio_rustls::TlsConnector;

use crate::auth::Login;
use crate::config::{Config, Secret, ServerTlsMode};
use crate::net::Stream;
use crate::tls::{self, TlsError};
use crate::wire::{self, tag, Frame, FrameError};

/// Largest message accepted from the server during login.
const MAX_LOGIN_MESSAGE: usize = 1 << 20;

/// Why pgveil could not log in to the server.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// TCP connect or IO failed.
    #[error("cannot reach the server: {0}")]
    Io(#[from] std::io::Error),
    /// The connect-and-login deadline passed.
    #[error("the server did not answer within {0:?}")]
    Timeout(Duration),
    /// TLS was required and the server refused it, or the handshake failed.
    #[error("TLS to the server failed: {0}")]
    Tls(String),
    /// The server asked for a password and none is configured.
    #[error("the server asks for a password and none is configured")]
    NoPassword,
    /// The server asked for an authentication method pgveil does not speak.
    #[error("the server asks for an unsupported authentication method ({0})")]
    UnsupportedAuth(&'static str),
    /// The server answered with an ErrorResponse during login.
    #[error("the server refused the login (SQLSTATE {code})")]
    Refused {
        /// SQLSTATE from the server.
        code: String,
        /// The whole ErrorResponse, to pass on to the client when it is
        /// not about pgveil's own credential.
        frame: Frame,
    },
    /// The server sent something that is not valid protocol.
    #[error("protocol error from the server: {0}")]
    Protocol(String),
}

impl From<FrameError> for BackendError {
    fn from(e: FrameError) -> Self {
        Self::Protocol(e.to_string())
    }
}

/// Where the server is and how to log in to it; shared by all sessions.
pub struct ServerTarget {
    address: String,
    host: String,
    mode: ServerTlsMode,
    connector: Option<TlsConnector>,
    connect_timeout: Duration,
}

impl std::fmt::Debug for ServerTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServerTarget")
            .field("address", &self.address)
            .field("mode", &self.mode)
            .finish_non_exhaustive()
    }
}

/// The result of a login: the connection, ready for queries.
pub struct ServerConn {
    /// The connection.
    pub stream: Stream,
    /// ParameterStatus and NoticeResponse messages of the login, verbatim.
    pub startup_messages: BytesMut,
    /// The server's cancel key (process id, secret).
    pub key: Option<(i32, i32)>,
    /// Transaction status from the first ReadyForQuery.
    pub status: u8,
    /// Bytes the server sent after ReadyForQuery (normally none).
    pub leftover: BytesMut,
}

/// Why a ServerTarget could not be built from the configuration.
#[derive(Debug, thiserror::Error)]
pub enum TargetError {
    /// TLS set-up problem.
    #[error("server TLS: {0}")]
    Tls(#[from] TlsError),
}

impl ServerTarget {
    /// Builds the target from `[server]`.
    pub fn from_config(config: &Config) -> Result<Self, TargetError> {
        let server = &config.server;
        let (host, _) = server
            .address
            .rsplit_once(':')
            .unwrap_or((&server.address, ""));
        let host = server
            .server_name
            .clone()
            .unwrap_or_else(|| host.to_owned());
        tls::server_name(&host)?;
        Ok(Self {
            address: server.address.clone(),
            host,
            mode: server.tls,
            connector: tls::connector(server.tls, server.ca_file.as_deref())?,
            connect_timeout: config.timeouts.server_connect,
        })
    }

    /// A plain-TCP target at `address` (the demo's own client).
    pub fn plain(address: &str, connect_timeout: Duration) -> Self {
        Self {
            address: address.to_owned(),
            host: String::new(),
            mode: ServerTlsMode::Disable,
            connector: None,
            connect_timeout,
        }
    }

    /// The configured address.
    pub fn address(&self) -> &str {
        &self.address
    }

    /// Connects and logs in as `login` to `database` with the client's
    /// other startup parameters passed through, within the connect timeout.
    pub async fn connect(
        &self,
        login: &Login,
        database: &str,
        params: &[(String, String)],
    ) -> Result<ServerConn, BackendError> {
        let limit = self.connect_timeout;
        tokio::time::timeout(limit, self.connect_inner(login, database, params))
            .await
            .map_err(|_| BackendError::Timeout(limit))?
    }

    async fn connect_inner(
        &self,
        login: &Login,
        database: &str,
        params: &[(String, String)],
    ) -> Result<ServerConn, BackendError> {
        let mut stream = self.open().await?;
        let mut out = BytesMut::new();
        let mut startup: Vec<(&str, &str)> = vec![("user", &login.user), ("database", database)];
        startup.extend(params.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        wire::put_startup(&mut out, &startup);
        stream.write_all(&out).await?;
        authenticate(login, stream).await
    }

    /// Opens TCP and, as the mode says, TLS.
    async fn open(&self) -> Result<Stream, BackendError> {
        let tcp = TcpStream::connect(&self.address).await?;
        tcp.set_nodelay(true)?;
        let Some(connector) = &self.connector else {
            return Ok(Stream::Plain(tcp));
        };
        let mut tcp = tcp;
        let mut req = BytesMut::new();
        frontend::ssl_request(&mut req);
        tcp.write_all(&req).await?;
        let answer = tcp.read_u8().await?;
        match (answer, self.mode) {
            (b'S', _) => {}
            (b'N', ServerTlsMode::Prefer) => return Ok(Stream::Plain(tcp)),
            (b'N', _) => return Err(BackendError::Tls("the server does not offer TLS".into())),
            _ => {
                return Err(BackendError::Protocol(
                    "unexpected answer to SSLRequest".into(),
                ))
            }
        }
        let name = tls::server_name(&self.host).map_err(|e| BackendError::Tls(e.to_string()))?;
        let tls = connector
            .connect(name, tcp)
            .await
            .map_err(|e| BackendError::Tls(e.to_string()))?;
        Ok(Stream::Tls(Box::new(tokio_rustls::TlsStream::Client(tls))))
    }

    /// Sends a CancelRequest for the server-side key on a new connection.
    pub async fn cancel(&self, process_id: i32, secret_key: i32) -> Result<(), BackendError> {
        let limit = self.connect_timeout;
        let send = async {
            let mut stream = self.open().await?;
            let mut out = BytesMut::new();
            frontend::cancel_request(process_id, secret_key, &mut out);
            stream.write_all(&out).await?;
            stream.flush().await?;
            // The server closes the connection without answering.
            let _ = stream.read_u8().await;
            Ok(())
        };
        tokio::time::timeout(limit, send)
            .await
            .map_err(|_| BackendError::Timeout(limit))?
    }
}

/// Runs the authentication exchange and collects the startup messages.
async fn authenticate(login: &Login, mut stream: Stream) -> Result<ServerConn, BackendError> {
    let password = || {
        login
            .password
            .as_ref()
            .map(Secret::expose)
            .ok_or(BackendError::NoPassword)
    };
    let mut buf = BytesMut::with_capacity(4096);
    let mut kept = BytesMut::new();
    let mut key = None;
    let mut scram: Option<ScramSha256> = None;
    loop {
        let frame = read_frame(&mut stream, &mut buf).await?;
        let mut copy = BytesMut::from(frame.bytes().as_ref());
        let message = Message::parse(&mut copy)
            .map_err(|e| BackendError::Protocol(e.to_string()))?
            .ok_or_else(|| BackendError::Protocol("truncated message".into()))?;
        let mut reply = BytesMut::new();
        match message {
            Message::AuthenticationOk => {}
            Message::AuthenticationCleartextPassword => {
                frontend::password_message(password()?.as_bytes(), &mut reply)?;
            }
            Message::AuthenticationMd5Password(body) => {
                let hash = md5_hash(login.user.as_bytes(), password()?.as_bytes(), body.salt());
                frontend::password_message(hash.as_bytes(), &mut reply)?;
            }
            Message::AuthenticationSasl(body) => {
                let mut offered = body.mechanisms();
                let mut has_scram = false;
                while let Some(m) = fallible_next(&mut offered)? {
                    has_scram |= m == SCRAM_SHA_256;
                }
                if !has_scram {
                    return Err(BackendError::UnsupportedAuth("SASL without SCRAM-SHA-256"));
                }
                // Channel binding is not used ('n'): the server accepts
                // that, and TLS still protects the exchange.
                let s = ScramSha256::new(password()?.as_bytes(), ChannelBinding::unsupported());
                frontend::sasl_initial_response(SCRAM_SHA_256, s.message(), &mut reply)?;
                scram = Some(s);
            }
            Message::AuthenticationSaslContinue(body) => {
                let s = scram.as_mut().ok_or_else(|| unexpected("SASLContinue"))?;
                s.update(body.data())
                    .map_err(|e| BackendError::Protocol(e.to_string()))?;
                frontend::sasl_response(s.message(), &mut reply)?;
            }
            Message::AuthenticationSaslFinal(body) => {
                let s = scram.as_mut().ok_or_else(|| unexpected("SASLFinal"))?;
                s.finish(body.data())
                    .map_err(|e| BackendError::Protocol(e.to_string()))?;
            }
            Message::AuthenticationKerberosV5
            | Message::AuthenticationScmCredential
            | Message::AuthenticationGss
            | Message::AuthenticationSspi
            | Message::AuthenticationGssContinue(_) => {
                return Err(BackendError::UnsupportedAuth("GSSAPI, SSPI or Kerberos"));
            }
            Message::ParameterStatus(_) | Message::NoticeResponse(_) => {
                kept.put_slice(frame.bytes());
            }
            Message::BackendKeyData(body) => key = Some((body.process_id(), body.secret_key())),
            Message::ReadyForQuery(body) => {
                return Ok(ServerConn {
                    stream,
                    startup_messages: kept,
                    key,
                    status: body.status(),
                    leftover: buf,
                });
            }
            Message::ErrorResponse(_) => {
                let fields = wire::parse_error_fields(frame.body())?;
                return Err(BackendError::Refused {
                    code: fields.code,
                    frame,
                });
            }
            _ => return Err(unexpected("message during login")),
        }
        if !reply.is_empty() {
            stream.write_all(&reply).await?;
        }
    }
}

fn unexpected(what: &str) -> BackendError {
    BackendError::Protocol(format!("unexpected {what}"))
}

fn fallible_next<'a>(
    it: &mut postgres_protocol::message::backend::SaslMechanisms<'a>,
) -> Result<Option<&'a str>, BackendError> {
    use fallible_iterator::FallibleIterator;
    it.next().map_err(|e| BackendError::Protocol(e.to_string()))
}

/// Reads one whole message from the server during login.
async fn read_frame(stream: &mut Stream, buf: &mut BytesMut) -> Result<Frame, BackendError> {
    loop {
        if let Some(frame) = wire::next_frame(buf, MAX_LOGIN_MESSAGE)? {
            if frame.tag() == tag::NEGOTIATE_PROTOCOL_VERSION {
                // Only sent when we ask for more than 3.0, which we never do.
                return Err(unexpected("NegotiateProtocolVersion"));
            }
            return Ok(frame);
        }
        if stream.read_buf(buf).await? == 0 {
            return Err(BackendError::Io(std::io::ErrorKind::UnexpectedEof.into()));
        }
    }
}
