//! The PostgreSQL v3 wire protocol as pgveil needs it: framing, the startup
//! phase, and the few messages the gateway writes itself.
//!
//! The codec does no IO and never panics. Decoding works on a byte buffer: an
//! incomplete buffer is "not yet" (`Ok(None)`), malformed input is a typed
//! [`FrameError`]. Every declared length is checked against a named limit
//! before anything is allocated. Messages that pgveil does not inspect are
//! never decoded past their tag and length; they are forwarded as the exact
//! bytes that arrived.
//!
//! Protocol reference: <https://www.postgresql.org/docs/15/protocol-message-formats.html>.

pub mod sqlstate;

use bytes::{Buf, BufMut, Bytes, BytesMut};

pub use sqlstate::SqlState;

/// Largest startup-phase packet accepted, as in PostgreSQL (`MAX_STARTUP_PACKET_LENGTH`).
pub const MAX_STARTUP_PACKET: usize = 10_000;
/// Length of a tagged message header: one tag byte and a four-byte length.
pub const HEADER_LEN: usize = 5;

/// Protocol 3.0, the version pgveil speaks on both sides.
pub const PROTOCOL_3_0: i32 = 196_608;
/// The magic "version" of an SSLRequest.
pub const SSL_REQUEST_CODE: i32 = 80_877_103;
/// The magic "version" of a GSSENCRequest.
pub const GSSENC_REQUEST_CODE: i32 = 80_877_104;
/// The magic "version" of a CancelRequest.
pub const CANCEL_REQUEST_CODE: i32 = 80_877_102;

/// Frontend (F) and backend (B) message tags that pgveil routes on.
pub mod tag {
    /// Query (F): a simple-protocol query string.
    pub const QUERY: u8 = b'Q';
    /// Parse (F): creates a prepared statement.
    pub const PARSE: u8 = b'P';
    /// Bind (F): creates a portal from a statement.
    pub const BIND: u8 = b'B';
    /// Describe (F): asks for a statement's or portal's description.
    pub const DESCRIBE: u8 = b'D';
    /// Execute (F): runs a portal.
    pub const EXECUTE: u8 = b'E';
    /// Close (F): closes a statement or portal.
    pub const CLOSE: u8 = b'C';
    /// Sync (F): ends an extended-protocol batch.
    pub const SYNC: u8 = b'S';
    /// Flush (F): asks the server to send what it has.
    pub const FLUSH: u8 = b'H';
    /// FunctionCall (F): the legacy fast-path function call.
    pub const FUNCTION_CALL: u8 = b'F';
    /// CopyData (F & B).
    pub const COPY_DATA: u8 = b'd';
    /// CopyDone (F & B).
    pub const COPY_DONE: u8 = b'c';
    /// CopyFail (F).
    pub const COPY_FAIL: u8 = b'f';
    /// Terminate (F).
    pub const TERMINATE: u8 = b'X';
    /// PasswordMessage, SASLInitialResponse, SASLResponse (F).
    pub const PASSWORD: u8 = b'p';

    /// Authentication request (B).
    pub const AUTHENTICATION: u8 = b'R';
    /// ParameterStatus (B).
    pub const PARAMETER_STATUS: u8 = b'S';
    /// BackendKeyData (B).
    pub const BACKEND_KEY_DATA: u8 = b'K';
    /// ReadyForQuery (B).
    pub const READY_FOR_QUERY: u8 = b'Z';
    /// RowDescription (B).
    pub const ROW_DESCRIPTION: u8 = b'T';
    /// DataRow (B).
    pub const DATA_ROW: u8 = b'D';
    /// CommandComplete (B).
    pub const COMMAND_COMPLETE: u8 = b'C';
    /// EmptyQueryResponse (B).
    pub const EMPTY_QUERY_RESPONSE: u8 = b'I';
    /// ErrorResponse (B).
    pub const ERROR_RESPONSE: u8 = b'E';
    /// NoticeResponse (B).
    pub const NOTICE_RESPONSE: u8 = b'N';
    /// NotificationResponse (B).
    pub const NOTIFICATION_RESPONSE: u8 = b'A';
    /// ParseComplete (B).
    pub const PARSE_COMPLETE: u8 = b'1';
    /// BindComplete (B).
    pub const BIND_COMPLETE: u8 = b'2';
    /// CloseComplete (B).
    pub const CLOSE_COMPLETE: u8 = b'3';
    /// NoData (B).
    pub const NO_DATA: u8 = b'n';
    /// ParameterDescription (B).
    pub const PARAMETER_DESCRIPTION: u8 = b't';
    /// PortalSuspended (B).
    pub const PORTAL_SUSPENDED: u8 = b's';
    /// CopyInResponse (B).
    pub const COPY_IN_RESPONSE: u8 = b'G';
    /// CopyOutResponse (B).
    pub const COPY_OUT_RESPONSE: u8 = b'H';
    /// CopyBothResponse (B).
    pub const COPY_BOTH_RESPONSE: u8 = b'W';
    /// FunctionCallResponse (B).
    pub const FUNCTION_CALL_RESPONSE: u8 = b'V';
    /// NegotiateProtocolVersion (B).
    pub const NEGOTIATE_PROTOCOL_VERSION: u8 = b'v';
}

/// Why a byte stream could not be framed.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The declared length is below the minimum of four.
    #[error("message length {0} is invalid")]
    BadLength(i32),
    /// The declared length exceeds the configured limit.
    #[error("message of {len} bytes exceeds the limit of {limit} bytes")]
    Oversized {
        /// Declared length.
        len: usize,
        /// The limit in force.
        limit: usize,
    },
    /// A field inside a message does not parse.
    #[error("malformed {0} message")]
    Malformed(&'static str),
}

/// One tagged message, exactly as it was framed (tag, length and body).
#[derive(Clone)]
pub struct Frame {
    bytes: Bytes,
}

impl Frame {
    /// The message's tag byte.
    pub fn tag(&self) -> u8 {
        self.bytes[0]
    }

    /// The message body after the header.
    pub fn body(&self) -> &[u8] {
        &self.bytes[HEADER_LEN..]
    }

    /// The whole message, header included.
    pub fn bytes(&self) -> &Bytes {
        &self.bytes
    }

    /// Takes the message's bytes.
    pub fn into_bytes(self) -> Bytes {
        self.bytes
    }
}

/// Frame contents are never printed: they may hold statement text or row values.
impl std::fmt::Debug for Frame {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Frame")
            .field("tag", &char::from(self.tag()))
            .field("len", &self.bytes.len())
            .finish()
    }
}

/// Splits the next tagged message off `buf`.
///
/// Returns `Ok(None)` while the buffer holds less than one whole message. The
/// length is checked against `limit` as soon as the header is in, so an
/// oversized message is refused before its body is read.
pub fn next_frame(buf: &mut BytesMut, limit: usize) -> Result<Option<Frame>, FrameError> {
    let Some(total) = frame_len(buf, limit)? else {
        return Ok(None);
    };
    if buf.len() < total {
        buf.reserve(total - buf.len());
        return Ok(None);
    }
    Ok(Some(Frame {
        bytes: buf.split_to(total).freeze(),
    }))
}

/// The total size (header included) of the message at the front of `buf`,
/// once its header has arrived; the body may still be incomplete. Lets a
/// pump walk the messages of a buffer in place, without splitting it.
pub fn frame_len(buf: &[u8], limit: usize) -> Result<Option<usize>, FrameError> {
    if buf.len() < HEADER_LEN {
        return Ok(None);
    }
    let declared = i32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
    if declared < 4 {
        return Err(FrameError::BadLength(declared));
    }
    let len = declared as usize;
    if len > limit {
        return Err(FrameError::Oversized { len, limit });
    }
    Ok(Some(len + 1))
}

/// A packet of the startup phase, which has no tag byte.
#[derive(PartialEq, Eq)]
pub enum StartupPacket {
    /// SSLRequest: the client asks for TLS.
    SslRequest,
    /// GSSENCRequest: the client asks for GSSAPI encryption.
    GssEncRequest,
    /// CancelRequest with the key the client was given.
    CancelRequest {
        /// Process id from BackendKeyData.
        process_id: i32,
        /// Secret key from BackendKeyData.
        secret_key: i32,
    },
    /// StartupMessage with the protocol version and parameters in order.
    Startup {
        /// Requested major version (high 16 bits).
        major: u16,
        /// Requested minor version (low 16 bits).
        minor: u16,
        /// Parameters as name/value pairs, in the order sent.
        params: Vec<(String, String)>,
    },
}

impl std::fmt::Debug for StartupPacket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::SslRequest => f.write_str("SslRequest"),
            Self::GssEncRequest => f.write_str("GssEncRequest"),
            Self::CancelRequest { .. } => f.write_str("CancelRequest"),
            Self::Startup {
                major,
                minor,
                params,
            } => f
                .debug_struct("Startup")
                .field("version", &format_args!("{major}.{minor}"))
                .field("params", &params.iter().map(|(k, _)| k).collect::<Vec<_>>())
                .finish(),
        }
    }
}

/// Splits the next startup-phase packet off `buf`.
pub fn next_startup_packet(buf: &mut BytesMut) -> Result<Option<StartupPacket>, FrameError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let declared = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if declared < 8 {
        return Err(FrameError::BadLength(declared));
    }
    let len = declared as usize;
    if len > MAX_STARTUP_PACKET {
        return Err(FrameError::Oversized {
            len,
            limit: MAX_STARTUP_PACKET,
        });
    }
    if buf.len() < len {
        return Ok(None);
    }
    let mut packet = buf.split_to(len).freeze();
    packet.advance(4);
    parse_startup_body(packet).map(Some)
}

fn parse_startup_body(mut body: Bytes) -> Result<StartupPacket, FrameError> {
    let code = body.get_i32();
    match code {
        SSL_REQUEST_CODE if body.is_empty() => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST_CODE if body.is_empty() => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST_CODE if body.len() == 8 => Ok(StartupPacket::CancelRequest {
            process_id: body.get_i32(),
            secret_key: body.get_i32(),
        }),
        SSL_REQUEST_CODE | GSSENC_REQUEST_CODE | CANCEL_REQUEST_CODE => {
            Err(FrameError::Malformed("startup request"))
        }
        version => Ok(StartupPacket::Startup {
            major: (version >> 16) as u16,
            minor: (version & 0xffff) as u16,
            params: parse_startup_params(&body)?,
        }),
    }
}

fn parse_startup_params(body: &[u8]) -> Result<Vec<(String, String)>, FrameError> {
    let mut params = Vec::new();
    let mut rest = body;
    loop {
        let (name, after) = take_cstr(rest).ok_or(FrameError::Malformed("startup"))?;
        if name.is_empty() {
            // The list ends with an empty name; nothing may follow it.
            return if after.is_empty() {
                Ok(params)
            } else {
                Err(FrameError::Malformed("startup"))
            };
        }
        let (value, after) = take_cstr(after).ok_or(FrameError::Malformed("startup"))?;
        let name =
            String::from_utf8(name.to_vec()).map_err(|_| FrameError::Malformed("startup"))?;
        let value =
            String::from_utf8(value.to_vec()).map_err(|_| FrameError::Malformed("startup"))?;
        params.push((name, value));
        rest = after;
    }
}

/// Splits a NUL-terminated string off the front of `buf`.
pub fn take_cstr(buf: &[u8]) -> Option<(&[u8], &[u8])> {
    let nul = buf.iter().position(|&b| b == 0)?;
    Some((&buf[..nul], &buf[nul + 1..]))
}

/// Appends a tagged message whose body `write_body` produces; fills in the length.
pub fn put_message(out: &mut BytesMut, tag: u8, write_body: impl FnOnce(&mut BytesMut)) {
    let start = out.len();
    out.put_u8(tag);
    out.put_i32(0);
    write_body(out);
    let len = (out.len() - start - 1) as i32;
    out[start + 1..start + HEADER_LEN].copy_from_slice(&len.to_be_bytes());
}

/// Appends a NUL-terminated string.
pub fn put_cstr(out: &mut BytesMut, s: &[u8]) {
    out.put_slice(s);
    out.put_u8(0);
}

/// Appends a StartupMessage for protocol 3.0 with `params` in order.
pub fn put_startup(out: &mut BytesMut, params: &[(&str, &str)]) {
    let start = out.len();
    out.put_i32(0);
    out.put_i32(PROTOCOL_3_0);
    for (name, value) in params {
        put_cstr(out, name.as_bytes());
        put_cstr(out, value.as_bytes());
    }
    out.put_u8(0);
    let len = (out.len() - start) as i32;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
}

/// Severity of an ErrorResponse that pgveil writes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Severity {
    /// The statement failed; the session goes on.
    Error,
    /// The session ends after this message.
    Fatal,
}

impl Severity {
    fn as_str(self) -> &'static str {
        match self {
            Self::Error => "ERROR",
            Self::Fatal => "FATAL",
        }
    }
}

/// Appends an ErrorResponse with severity, SQLSTATE, message and an optional hint.
pub fn put_error(
    out: &mut BytesMut,
    severity: Severity,
    code: SqlState,
    message: &str,
    hint: Option<&str>,
) {
    put_message(out, tag::ERROR_RESPONSE, |b| {
        for field in [b'S', b'V'] {
            b.put_u8(field);
            put_cstr(b, severity.as_str().as_bytes());
        }
        b.put_u8(b'C');
        put_cstr(b, code.code().as_bytes());
        b.put_u8(b'M');
        put_cstr(b, message.as_bytes());
        if let Some(hint) = hint {
            b.put_u8(b'H');
            put_cstr(b, hint.as_bytes());
        }
        b.put_u8(0);
    });
}

/// Appends AuthenticationOk.
pub fn put_auth_ok(out: &mut BytesMut) {
    put_message(out, tag::AUTHENTICATION, |b| b.put_i32(0));
}

/// Appends AuthenticationCleartextPassword.
pub fn put_auth_cleartext(out: &mut BytesMut) {
    put_message(out, tag::AUTHENTICATION, |b| b.put_i32(3));
}

/// Appends BackendKeyData.
pub fn put_backend_key(out: &mut BytesMut, process_id: i32, secret_key: i32) {
    put_message(out, tag::BACKEND_KEY_DATA, |b| {
        b.put_i32(process_id);
        b.put_i32(secret_key);
    });
}

/// Appends ReadyForQuery with the given transaction status byte.
pub fn put_ready(out: &mut BytesMut, status: u8) {
    put_message(out, tag::READY_FOR_QUERY, |b| b.put_u8(status));
}

/// Appends NegotiateProtocolVersion: the newest minor version pgveil speaks
/// (0) and the protocol options it did not recognise.
pub fn put_negotiate_version(out: &mut BytesMut, unrecognised: &[&str]) {
    put_message(out, tag::NEGOTIATE_PROTOCOL_VERSION, |b| {
        b.put_i32(PROTOCOL_3_0);
        b.put_i32(unrecognised.len() as i32);
        for name in unrecognised {
            put_cstr(b, name.as_bytes());
        }
    });
}

/// The fields of an ErrorResponse or NoticeResponse that pgveil reads.
#[derive(Default, PartialEq, Eq)]
pub struct ErrorFields {
    /// Non-localised severity (`V`), or the localised one (`S`) if absent.
    pub severity: String,
    /// SQLSTATE (`C`).
    pub code: String,
    /// Primary message (`M`). It may quote values: redact before keeping.
    pub message: String,
}

/// Appends the ErrorResponse whose body is `body` without its fields of
/// kind `drop` (a server's CONTEXT, say).
pub fn put_error_without(out: &mut BytesMut, body: &[u8], drop: u8) {
    put_message(out, tag::ERROR_RESPONSE, |b| {
        let mut rest = body;
        while let Some((&kind, after)) = rest.split_first() {
            if kind == 0 {
                break;
            }
            let end = after.iter().position(|&c| c == 0).unwrap_or(after.len());
            if kind != drop {
                b.put_u8(kind);
                put_cstr(b, &after[..end]);
            }
            rest = after.get(end + 1..).unwrap_or_default();
        }
        b.put_u8(0);
    });
}

/// Reads severity and SQLSTATE from an ErrorResponse body, ignoring the
/// message text (it may quote row values).
pub fn parse_error_fields(body: &[u8]) -> Result<ErrorFields, FrameError> {
    let mut fields = ErrorFields::default();
    let mut rest = body;
    while let Some((&kind, after)) = rest.split_first() {
        if kind == 0 {
            return Ok(fields);
        }
        let (value, after) = take_cstr(after).ok_or(FrameError::Malformed("ErrorResponse"))?;
        let value = String::from_utf8_lossy(value);
        match kind {
            b'V' => fields.severity = value.into_owned(),
            b'S' if fields.severity.is_empty() => fields.severity = value.into_owned(),
            b'C' => fields.code = value.into_owned(),
            b'M' => fields.message = value.into_owned(),
            _ => {}
        }
        rest = after;
    }
    Err(FrameError::Malformed("ErrorResponse"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn msg(tag: u8, body: &[u8]) -> BytesMut {
        let mut b = BytesMut::new();
        put_message(&mut b, tag, |out| out.put_slice(body));
        b
    }

    #[test]
    fn frames_whole_messages_only() {
        let mut buf = msg(b'Q', b"select 1\0");
        let whole = buf.clone();
        let mut partial = BytesMut::from(&whole[..whole.len() - 1]);
        assert_eq!(
            next_frame(&mut partial, 1024).map(|f| f.is_some()),
            Ok(false)
        );
        let frame = next_frame(&mut buf, 1024).unwrap().unwrap();
        assert_eq!(frame.tag(), b'Q');
        assert_eq!(frame.body(), b"select 1\0");
        assert!(buf.is_empty());
    }

    #[test]
    fn refuses_oversized_before_body_arrives() {
        let mut buf = BytesMut::from(&[b'Q', 0, 0x10, 0, 0][..]);
        let err = next_frame(&mut buf, 1024).unwrap_err();
        assert_eq!(
            err,
            FrameError::Oversized {
                len: 0x0010_0000,
                limit: 1024
            }
        );
    }

    #[test]
    fn refuses_negative_and_short_lengths() {
        for len in [-1i32, 0, 3] {
            let mut buf = BytesMut::new();
            buf.put_u8(b'Q');
            buf.put_i32(len);
            assert_eq!(
                next_frame(&mut buf, 1024).unwrap_err(),
                FrameError::BadLength(len)
            );
        }
    }

    #[test]
    fn parses_startup_requests() {
        let mut buf = BytesMut::new();
        buf.put_i32(8);
        buf.put_i32(SSL_REQUEST_CODE);
        assert_eq!(
            next_startup_packet(&mut buf).unwrap(),
            Some(StartupPacket::SslRequest)
        );

        let mut buf = BytesMut::new();
        put_startup(&mut buf, &[("user", "alice"), ("database", "app")]);
        let Some(StartupPacket::Startup {
            major,
            minor,
            params,
        }) = next_startup_packet(&mut buf).unwrap()
        else {
            panic!("expected a startup message");
        };
        assert_eq!((major, minor), (3, 0));
        assert_eq!(params[0], ("user".into(), "alice".into()));
        assert_eq!(params[1], ("database".into(), "app".into()));
    }

    #[test]
    fn refuses_startup_without_terminator() {
        let mut buf = BytesMut::new();
        buf.put_i32(4 + 4 + 5);
        buf.put_i32(PROTOCOL_3_0);
        buf.put_slice(b"user\0");
        assert_eq!(
            next_startup_packet(&mut buf).unwrap_err(),
            FrameError::Malformed("startup")
        );
    }

    #[test]
    fn error_response_round_trips_code() {
        let mut buf = BytesMut::new();
        put_error(
            &mut buf,
            Severity::Fatal,
            sqlstate::PROTOCOL_VIOLATION,
            "bad",
            Some("hint"),
        );
        let frame = next_frame(&mut buf, 1024).unwrap().unwrap();
        let fields = parse_error_fields(frame.body()).unwrap();
        assert_eq!(fields.code, "08P01");
        assert_eq!(fields.severity, "FATAL");
    }

    proptest! {
        /// Random bytes never panic the framer, and whatever it frames
        /// re-assembles to the input prefix it consumed.
        #[test]
        fn framing_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..512)) {
            let mut buf = BytesMut::from(&data[..]);
            let mut consumed = Vec::new();
            while let Ok(Some(frame)) = next_frame(&mut buf, 256) {
                consumed.extend_from_slice(frame.bytes());
            }
            prop_assert_eq!(&data[..consumed.len()], &consumed[..]);
        }

        /// Any valid message stream cut at any point frames the whole
        /// messages before the cut and waits for the rest.
        #[test]
        fn framing_truncated_streams(
            bodies in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 1..8),
            cut in any::<prop::sample::Index>(),
        ) {
            let mut stream = BytesMut::new();
            let mut ends = Vec::new();
            for body in &bodies {
                put_message(&mut stream, b'd', |b| b.put_slice(body));
                ends.push(stream.len());
            }
            let cut = cut.index(stream.len() + 1);
            let mut buf = BytesMut::from(&stream[..cut]);
            let mut framed = 0;
            while let Some(frame) = next_frame(&mut buf, 1024).unwrap() {
                prop_assert_eq!(frame.body(), &bodies[framed][..]);
                framed += 1;
            }
            prop_assert_eq!(framed, ends.iter().filter(|&&e| e <= cut).count());
        }

        /// Random startup packets never panic the startup parser.
        #[test]
        fn startup_random_bytes(data in proptest::collection::vec(any::<u8>(), 0..256)) {
            let mut buf = BytesMut::from(&data[..]);
            let _ = next_startup_packet(&mut buf);
        }

        /// Random ErrorResponse bodies never panic the field reader.
        #[test]
        fn error_fields_random(data in proptest::collection::vec(any::<u8>(), 0..128)) {
            let _ = parse_error_fields(&data);
        }
    }
}
