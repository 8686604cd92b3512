//! The relay: carries one established session between client and server.
//!
//! Two pumps run in the session's task. The client pump frames each message
//! from the client, asks the policy about every Query and Parse, and forwards
//! the exact bytes it received. The server pump frames each message from the
//! server and forwards it, rewriting nothing unless a result plan says so.
//! Neither pump decodes more than a message's tag and length except where a
//! capability needs the body.
//!
//! The pumps share one ordered queue of pending operations. The client pump
//! pushes an entry for every message that the server will answer (Query,
//! Parse, Bind, Describe, Execute, Close, Sync, FunctionCall) *before* it
//! writes the bytes, so the server pump always knows which request a response
//! belongs to: a DataRow to its statement (for masking and row counts), a
//! CommandComplete or ErrorResponse to the statement it ends (for the audit
//! trail). An ErrorResponse in the extended protocol makes the server skip
//! everything up to Sync, and the queue drops those entries the same way.
//!
//! A statement the policy refuses is replaced, on its way to the server, by
//! a statement of pgveil's own that makes the server raise the refusal, so
//! the server fails it in order, as it fails any statement: a transaction
//! block is aborted, and the extended protocol skips to Sync. Masking adds
//! messages of pgveil's own too (a Describe for a portal the client never
//! described, a description of a COPY's rows); their answers are swallowed.
//!
//! Each pump walks the messages of its read buffer in place and writes the
//! forwarded ones straight from that buffer; only what pgveil drops, adds or
//! rewrites costs a copy. Writes are coalesced: each pump forwards everything
//! one read returned in a single write, and flushes early only past a
//! high-water mark. A slow client therefore stops the server pump at its
//! write, which stops reads from the server: backpressure reaches the server
//! instead of filling memory.
//!
//! Limits of this version: a refused Parse in the extended protocol leaves
//! the unnamed statement and portal replaced by pgveil's own (the client's
//! statements named in that batch are unaffected).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::sync::Mutex;
use std::time::{Instant, SystemTime};

use bytes::{Buf, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::audit::note::Note;
use crate::audit::{Audit, Outcome, SessionTotals, StatementEvent, Ticket};
use crate::mask::copy::{self, CopyFormat};
use crate::mask::plan::{self, Field, Plan};
use crate::mask::SessionMask;
use crate::policy::analyze::{Output, StatementInfo};
use crate::policy::{Decision, Policy, Refusal};
use crate::session::Identity;
use crate::wire::{self, sqlstate, tag, FrameError, Severity};

/// Bytes reserved for each read.
const READ_CHUNK: usize = 64 * 1024;
/// Largest message accepted from the server (PostgreSQL's own ceiling).
const MAX_SERVER_MESSAGE: usize = 1 << 30;
/// Pending output that is written before the read batch is done.
const WRITE_HIGH_WATER: usize = 256 * 1024;
/// ReadyForQuery status byte for "idle".
const STATUS_IDLE: u8 = b'I';

/// What the relay needs from the session around it.
pub struct RelayContext<'a> {
    /// Who the client is.
    pub identity: &'a Identity,
    /// The statement policy.
    pub policy: &'a Policy,
    /// Where events go.
    pub audit: &'a Audit,
    /// The session's id in the audit trail.
    pub session_id: uuid::Uuid,
    /// Largest message accepted from the client.
    pub max_message: usize,
    /// Transaction status of the server when the relay starts.
    pub initial_status: u8,
    /// When the client's proof of identity expires. The statement running
    /// then may finish; then the session ends with a FATAL error.
    pub expires_at: Option<std::time::SystemTime>,
    /// Masking, when rules are configured.
    pub mask: Option<&'a SessionMask<'a>>,
}

impl RelayContext<'_> {
    /// The expiry as a point on the monotonic clock.
    fn deadline(&self) -> Option<tokio::time::Instant> {
        let at = self.expires_at?;
        let left = at
            .duration_since(std::time::SystemTime::now())
            .unwrap_or_default();
        Some(tokio::time::Instant::now() + left)
    }
}

/// How a session ended.
#[derive(Debug)]
pub enum Ended {
    /// The client sent Terminate.
    Terminated,
    /// The client closed its connection without Terminate.
    ClientClosed,
    /// The server closed the connection (after a FATAL error if it sent one).
    ServerClosed {
        /// Whether the server explained itself with a FATAL ErrorResponse.
        explained: bool,
    },
    /// The client's token expired; the session was ended between statements.
    Expired,
    /// The client broke the protocol.
    ClientProtocol(String),
    /// The server broke the protocol.
    ServerProtocol(String),
    /// The client's socket failed.
    ClientIo(std::io::Error),
    /// The server's socket failed (a reset when its process died, say).
    ServerIo(std::io::Error),
}

impl Ended {
    /// Short name for logs and the audit trail.
    pub fn as_str(&self) -> &'static str {
        match self {
            Self::Terminated => "terminate",
            Self::ClientClosed => "client_closed",
            Self::Expired => "token_expired",
            Self::ServerClosed { .. } => "server_closed",
            Self::ClientProtocol(_) => "client_protocol_error",
            Self::ServerProtocol(_) => "server_protocol_error",
            Self::ClientIo(_) => "client_io_error",
            Self::ServerIo(_) => "server_io_error",
        }
    }
}

/// One request awaiting its response, in the order sent.
#[derive(Debug)]
enum Op {
    /// A simple-protocol Query, with its analysis when it was analyzed and
    /// the index of the statement now answered; up to ReadyForQuery.
    Query(Tracker, Option<Arc<[StatementInfo]>>, usize),
    /// A Parse of the named statement, with its analysis (both kept only
    /// with masking).
    Parse(Vec<u8>, Option<Arc<[StatementInfo]>>),
    /// A Bind of a portal to a statement, with its result format codes.
    Bind {
        portal: Vec<u8>,
        statement: Vec<u8>,
        formats: Vec<i16>,
    },
    /// A Describe of a statement (`S`) or portal (`P`); `injected` when
    /// pgveil sent it itself and swallows the answer.
    Describe {
        kind: u8,
        name: Vec<u8>,
        injected: bool,
    },
    /// An Execute of a portal; answered by CommandComplete,
    /// EmptyQueryResponse, PortalSuspended or ErrorResponse.
    Execute(Tracker, Vec<u8>),
    Close,
    Sync,
    /// A FunctionCall; answered up to ReadyForQuery.
    FunctionCall(Tracker),
    /// pgveil's own Parse, Describe and Sync of the SELECT equivalent to
    /// the COPY TO STDOUT queued after it; every answer up to its
    /// ReadyForQuery is swallowed.
    CopyProbe {
        format: CopyFormat,
        fields: Option<Vec<Field>>,
        failed: bool,
    },
    /// A statement policy refused: pgveil sent, in its place, a statement
    /// of its own that raises the refusal on the server, so that the
    /// server fails it as it would fail any statement (the transaction
    /// aborts; the extended protocol skips to Sync). Its answers up to the
    /// error are swallowed, and the error loses the server's CONTEXT line.
    Refused {
        tracker: Tracker,
        rule: String,
        simple: bool,
    },
}

/// The statement an Op stands for: when it started, and what the audit
/// trail records of it.
#[derive(Debug)]
struct Tracker {
    started: Instant,
    /// Its text as the archive may keep it (with the archive on).
    note: Option<Arc<Note>>,
    /// In dry-run mode, the rule that would have refused it.
    would_refuse: Option<String>,
    /// Its Bind parameters as the archive may keep them.
    parameters: Option<Arc<[String]>>,
}

impl Tracker {
    fn now() -> Self {
        Self::noted(None, None)
    }

    fn noted(note: Option<Arc<Note>>, would_refuse: Option<String>) -> Self {
        Self {
            started: Instant::now(),
            note,
            would_refuse,
            parameters: None,
        }
    }

    /// Starts the clock again for the next statement of a Query.
    fn restart(&mut self) -> Instant {
        std::mem::replace(&mut self.started, Instant::now())
    }
}

/// State shared by the two pumps.
struct Shared {
    ops: Mutex<VecDeque<Op>>,
    /// Refusals in `ops`; lets the server pump skip the lock when zero.
    refusals: AtomicUsize,
    /// Copy probes in `ops`; likewise.
    probes: AtomicUsize,
    bytes_from_client: AtomicU64,
    bytes_to_client: AtomicU64,
    statements: AtomicU64,
    /// DDL passed through: read the masking catalog again before the next
    /// statement.
    catalog_stale: AtomicBool,
}

impl Shared {
    fn ops(&self) -> std::sync::MutexGuard<'_, VecDeque<Op>> {
        // Each critical section is a push or pop; a poisoned lock holds a
        // consistent queue.
        self.ops.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// Runs the session until either side ends it, then says goodbye to the
/// other side as the protocol expects. Not cancel safe: dropping it mid-way
/// may cut a message in half (the session is over in that case anyway).
///
/// Each side comes as its read half, its write half and the bytes already
/// read from it during startup (messages the client pipelined behind its
/// StartupMessage, say).
pub async fn run<CR, CW, SR, SW>(
    ctx: &RelayContext<'_>,
    (mut client_rd, mut client_wr, client_leftover): (CR, CW, BytesMut),
    (mut server_rd, mut server_wr, server_leftover): (SR, SW, BytesMut),
) -> (Ended, SessionTotals)
where
    CR: AsyncRead + Unpin,
    CW: AsyncWrite + Unpin,
    SR: AsyncRead + Unpin,
    SW: AsyncWrite + Unpin,
{
    let shared = Shared {
        ops: Mutex::new(VecDeque::new()),
        refusals: AtomicUsize::new(0),
        probes: AtomicUsize::new(0),
        bytes_from_client: AtomicU64::new(0),
        bytes_to_client: AtomicU64::new(0),
        statements: AtomicU64::new(0),
        catalog_stale: AtomicBool::new(false),
    };
    let ended = {
        let mut up = ClientPump::new(ctx, &shared, client_leftover);
        let mut down = ServerPump::new(ctx, &shared, server_leftover);
        tokio::select! {
            ended = up.run(&mut client_rd, &mut server_wr) => ended,
            ended = down.run(&mut server_rd, &mut client_wr) => ended,
        }
    };
    say_goodbye(&ended, &mut client_wr, &mut server_wr).await;
    let totals = SessionTotals {
        statements: shared.statements.load(Ordering::Relaxed),
        bytes_from_client: shared.bytes_from_client.load(Ordering::Relaxed),
        bytes_to_client: shared.bytes_to_client.load(Ordering::Relaxed),
    };
    (ended, totals)
}

/// Tells the side that did not end the session why it ends.
async fn say_goodbye<CW, SW>(ended: &Ended, client_wr: &mut CW, server_wr: &mut SW)
where
    CW: AsyncWrite + Unpin,
    SW: AsyncWrite + Unpin,
{
    let mut to_client = BytesMut::new();
    match ended {
        Ended::ClientProtocol(message) => wire::put_error(
            &mut to_client,
            Severity::Fatal,
            sqlstate::PROTOCOL_VIOLATION,
            message,
            None,
        ),
        Ended::ServerClosed { explained: false }
        | Ended::ServerProtocol(_)
        | Ended::ServerIo(_) => wire::put_error(
            &mut to_client,
            Severity::Fatal,
            sqlstate::CONNECTION_FAILURE,
            "pgveil lost its connection to the database server",
            Some("Reconnect; the statement in progress may or may not have completed."),
        ),
        Ended::Expired => wire::put_error(
            &mut to_client,
            Severity::Fatal,
            sqlstate::INVALID_AUTHORIZATION_SPECIFICATION,
            "the session's OIDC token has expired",
            Some("Reconnect with a fresh token."),
        ),
        _ => {}
    }
    if !to_client.is_empty() {
        let _ = client_wr.write_all(&to_client).await;
    }
    let _ = client_wr.shutdown().await;
    if !matches!(ended, Ended::ServerClosed { .. } | Ended::Terminated) {
        let mut terminate = BytesMut::new();
        wire::put_message(&mut terminate, tag::TERMINATE, |_| {});
        let _ = server_wr.write_all(&terminate).await;
        let _ = server_wr.shutdown().await;
    }
}

/// What the archive records of an Execute of a portal: its statement's
/// note and its Bind parameters.
type PortalNote = (Option<Arc<Note>>, Option<Arc<[String]>>);

/// Client to server: frame, decide, forward.
struct ClientPump<'a> {
    ctx: &'a RelayContext<'a>,
    shared: &'a Shared,
    ops: Vec<Op>,
    inbuf: BytesMut,
    /// Prepared statements whose description the server pump will know
    /// (the client described them since their Parse); with masking only.
    described: HashSet<Vec<u8>>,
    /// With the archive on: the note of each prepared statement and of each
    /// portal, so that an Execute is recorded with its statement's text.
    notes: HashMap<Vec<u8>, Arc<Note>>,
    portal_notes: HashMap<Vec<u8>, PortalNote>,
}

impl<'a> ClientPump<'a> {
    fn new(ctx: &'a RelayContext<'a>, shared: &'a Shared, leftover: BytesMut) -> Self {
        Self {
            ctx,
            shared,
            ops: Vec::new(),
            inbuf: leftover,
            described: HashSet::new(),
            notes: HashMap::new(),
            portal_notes: HashMap::new(),
        }
    }

    async fn run<R, W>(&mut self, client: &mut R, server: &mut W) -> Ended
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut inbuf = std::mem::take(&mut self.inbuf);
        // Bytes that cannot be forwarded straight from `inbuf` (the part
        // before a dropped message); empty in the common case.
        let mut out = BytesMut::new();
        let deadline = self.ctx.deadline();
        loop {
            if deadline.is_some_and(|d| tokio::time::Instant::now() >= d) {
                // Past the token's expiry nothing new is forwarded; the
                // server pump ends the session once the queue is empty.
                return std::future::pending().await;
            }
            if self.shared.catalog_stale.swap(false, Ordering::AcqRel) {
                if let Some(mask) = self.ctx.mask {
                    mask.refresh().await;
                }
            }
            // Walk the buffered messages in place (startup leftovers on the
            // first pass). Everything in `inbuf[fwd..pos]` is forwarded
            // verbatim; a dropped message moves `fwd` past itself.
            let (mut pos, mut fwd, mut need) = (0, 0, 0);
            loop {
                let total = match wire::frame_len(&inbuf[pos..], self.ctx.max_message) {
                    Ok(Some(total)) => total,
                    Ok(None) => break,
                    Err(e) => return Ended::ClientProtocol(client_frame_error(&e)),
                };
                if inbuf.len() - pos < total {
                    need = total - (inbuf.len() - pos);
                    break;
                }
                let body = &inbuf[pos + wire::HEADER_LEN..pos + total];
                let route = match self.route(inbuf[pos], body) {
                    Ok(route) => route,
                    Err(message) => return Ended::ClientProtocol(message),
                };
                match route {
                    Route::Forward => pos += total,
                    Route::Prefix(extra) => {
                        out.extend_from_slice(&inbuf[fwd..pos]);
                        out.extend_from_slice(&extra);
                        fwd = pos;
                        pos += total;
                    }
                    Route::Inject(extra) => {
                        pos += total;
                        out.extend_from_slice(&inbuf[fwd..pos]);
                        out.extend_from_slice(&extra);
                        fwd = pos;
                    }
                    Route::Replace(own) => {
                        out.extend_from_slice(&inbuf[fwd..pos]);
                        out.extend_from_slice(&own);
                        pos += total;
                        fwd = pos;
                    }
                    Route::Terminate => {
                        pos += total;
                        return match self.flush(server, &mut out, &inbuf[fwd..pos]).await {
                            Ok(()) => Ended::Terminated,
                            Err(e) => Ended::ServerIo(e),
                        };
                    }
                }
                if out.len() + (pos - fwd) >= WRITE_HIGH_WATER {
                    if let Err(e) = self.flush(server, &mut out, &inbuf[fwd..pos]).await {
                        return Ended::ServerIo(e);
                    }
                    fwd = pos;
                }
            }
            if let Err(e) = self.flush(server, &mut out, &inbuf[fwd..pos]).await {
                return Ended::ServerIo(e);
            }
            inbuf.advance(pos);
            inbuf.reserve(need.max(READ_CHUNK));
            match client.read_buf(&mut inbuf).await {
                Ok(0) => return Ended::ClientClosed,
                Ok(n) => {
                    self.shared
                        .bytes_from_client
                        .fetch_add(n as u64, Ordering::Relaxed);
                }
                // TLS clients that vanish without close_notify end here.
                Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return Ended::ClientClosed
                }
                Err(e) => return Ended::ClientIo(e),
            }
        }
    }

    /// Queues the pending ops, then writes `out` followed by `tail`: a
    /// response can never arrive before the op it answers is in the queue.
    async fn flush<W: AsyncWrite + Unpin>(
        &mut self,
        server: &mut W,
        out: &mut BytesMut,
        tail: &[u8],
    ) -> std::io::Result<()> {
        if !self.ops.is_empty() {
            self.shared.ops().extend(self.ops.drain(..));
        }
        send(server, out, tail).await.map(drop)
    }

    /// Decides what to do with one client message.
    fn route(&mut self, tag: u8, body: &[u8]) -> Result<Route, String> {
        let op = match tag {
            tag::QUERY => {
                let sql = cstr_field(body, "Query")?;
                let route = self.decide(sql, true, |t, a| Op::Query(t, a, 0));
                return Ok(match route {
                    Route::Forward => self.probe_copy(sql).unwrap_or(Route::Forward),
                    other => other,
                });
            }
            tag::PARSE => {
                let (name, rest) = wire::take_cstr(body).ok_or("malformed Parse message")?;
                let sql = cstr_field(rest, "Parse")?;
                let keep_analysis = self.ctx.mask.is_some();
                let archiving = self.ctx.audit.archiving();
                let name = if keep_analysis || archiving {
                    self.described.remove(name);
                    name.to_vec()
                } else {
                    Vec::new()
                };
                let mut note = None;
                let key = name.clone();
                let route = self.decide(sql, false, |t, a| {
                    note = t.note;
                    Op::Parse(name, a.filter(|_| keep_analysis))
                });
                match note {
                    Some(note) => self.notes.insert(key, note),
                    None => self.notes.remove(&key),
                };
                return Ok(route);
            }
            tag::SYNC => Op::Sync,
            tag::BIND => return self.bind(body),
            tag::DESCRIBE => {
                let (&kind, rest) = body.split_first().ok_or("malformed Describe message")?;
                let name = cstr_field(rest, "Describe")?;
                let name = match self.ctx.mask {
                    Some(_) if kind == b'S' => {
                        self.described.insert(name.to_vec());
                        name.to_vec()
                    }
                    Some(_) => name.to_vec(),
                    None => Vec::new(),
                };
                Op::Describe {
                    kind,
                    name,
                    injected: false,
                }
            }
            tag::EXECUTE => {
                let archiving = self.ctx.audit.archiving();
                let portal = match self.ctx.mask.is_some() || archiving {
                    true => cstr_field(body, "Execute")?,
                    false => &[],
                };
                let (note, parameters) = match self.portal_notes.get(portal) {
                    Some(noted) if archiving => noted.clone(),
                    _ => (None, None),
                };
                let portal = if self.ctx.mask.is_some() {
                    portal.to_vec()
                } else {
                    Vec::new()
                };
                let mut tracker = Tracker::noted(note, None);
                tracker.parameters = parameters;
                Op::Execute(tracker, portal)
            }
            tag::CLOSE => {
                if self.ctx.audit.archiving() {
                    self.forget_note(body)?;
                }
                Op::Close
            }
            tag::FUNCTION_CALL => Op::FunctionCall(Tracker::now()),
            tag::FLUSH | tag::COPY_DATA | tag::COPY_DONE | tag::COPY_FAIL => {
                return Ok(Route::Forward)
            }
            tag::TERMINATE => return Ok(Route::Terminate),
            other => {
                return Err(format!(
                    "invalid frontend message type {}",
                    char::from(other).escape_default()
                ))
            }
        };
        self.ops.push(op);
        Ok(Route::Forward)
    }

    /// Drops the archive's note of the statement or portal a Close names.
    fn forget_note(&mut self, body: &[u8]) -> Result<(), String> {
        let (&kind, rest) = body.split_first().ok_or("malformed Close message")?;
        let name = cstr_field(rest, "Close")?;
        match kind {
            b'S' => drop(self.notes.remove(name)),
            _ => drop(self.portal_notes.remove(name)),
        }
        Ok(())
    }

    /// Queues a Bind. With masking, it notes the portal's statement and
    /// result formats, and when the statement was never described and the
    /// identity is covered, follows the Bind with a Describe of the portal
    /// whose answer the server pump swallows: the rows of an Execute must
    /// always have a known shape.
    fn bind(&mut self, body: &[u8]) -> Result<Route, String> {
        let archiving = self.ctx.audit.archiving();
        let (mask, parsed) = match self.ctx.mask {
            None if !archiving => (None, None),
            mask => (
                mask,
                Some(parse_bind(body).ok_or("malformed Bind message")?),
            ),
        };
        if let Some(bind) = parsed.as_ref().filter(|_| archiving) {
            let portal = bind.portal.to_vec();
            let note = self.notes.get(bind.statement).cloned();
            let parameters = self.ctx.audit.parameters(&bind.values);
            self.portal_notes.insert(portal, (note, parameters));
        }
        let (Some(mask), Some(bind)) = (mask, parsed) else {
            self.ops.push(Op::Bind {
                portal: Vec::new(),
                statement: Vec::new(),
                formats: Vec::new(),
            });
            return Ok(Route::Forward);
        };
        let blind = !self.described.contains(bind.statement) && mask.covered();
        let portal = bind.portal.to_vec();
        self.ops.push(Op::Bind {
            portal: portal.clone(),
            statement: bind.statement.to_vec(),
            formats: bind.formats,
        });
        if !blind {
            return Ok(Route::Forward);
        }
        let mut describe = BytesMut::new();
        wire::put_message(&mut describe, tag::DESCRIBE, |b| {
            b.extend_from_slice(b"P");
            wire::put_cstr(b, &portal);
        });
        self.ops.push(Op::Describe {
            kind: b'P',
            name: portal,
            injected: true,
        });
        Ok(Route::Inject(describe))
    }

    /// For a covered identity whose Query is one COPY TO STDOUT: puts a
    /// description of its rows ahead of it (see [`crate::mask::copy`]).
    fn probe_copy(&mut self, sql: &[u8]) -> Option<Route> {
        let mask = self.ctx.mask?;
        let copy = copy::parse_copy_out(std::str::from_utf8(sql).ok()?)?;
        if !mask.covered() {
            return None;
        }
        let mut probe = BytesMut::new();
        wire::put_message(&mut probe, tag::PARSE, |b| {
            wire::put_cstr(b, b"");
            wire::put_cstr(b, copy.describe_sql.as_bytes());
            b.extend_from_slice(&0i16.to_be_bytes());
        });
        wire::put_message(&mut probe, tag::DESCRIBE, |b| {
            b.extend_from_slice(b"S");
            wire::put_cstr(b, b"");
        });
        wire::put_message(&mut probe, tag::SYNC, |_| {});
        // The Query's op was just queued; the probe's goes before it.
        let at = self.ops.len().saturating_sub(1);
        self.ops.insert(
            at,
            Op::CopyProbe {
                format: copy.format,
                fields: None,
                failed: false,
            },
        );
        self.shared.probes.fetch_add(1, Ordering::AcqRel);
        Some(Route::Prefix(probe))
    }

    /// Asks the policy about a statement and queues either its op, or the
    /// refusal and the statement that raises it on the server.
    fn decide(
        &mut self,
        sql: &[u8],
        simple: bool,
        op: impl FnOnce(Tracker, Option<Arc<[StatementInfo]>>) -> Op,
    ) -> Route {
        let audit = self.ctx.audit;
        let archiving = audit.archiving();
        let decision = match audit.refusal() {
            Some(refusal) => Decision::Refuse(refusal),
            None => self
                .ctx
                .policy
                .decide(self.ctx.identity, sql, self.ctx.mask, archiving),
        };
        match decision {
            Decision::Allow {
                analysis,
                would_refuse,
            } => {
                let note = archiving.then(|| audit.note(sql, analysis.clone()));
                let tracker = Tracker::noted(note, would_refuse.map(|r| r.rule));
                self.ops.push(op(tracker, analysis));
                Route::Forward
            }
            Decision::Refuse(refusal) => {
                let raise = raise_statement(&refusal);
                let mut out = BytesMut::new();
                if simple {
                    wire::put_message(&mut out, tag::QUERY, |b| {
                        wire::put_cstr(b, raise.as_bytes())
                    });
                } else {
                    // In the unnamed statement and portal, which the error
                    // leaves behind as a server parse error would.
                    wire::put_message(&mut out, tag::PARSE, |b| {
                        wire::put_cstr(b, b"");
                        wire::put_cstr(b, raise.as_bytes());
                        b.extend_from_slice(&0i16.to_be_bytes());
                    });
                    wire::put_message(&mut out, tag::BIND, |b| {
                        wire::put_cstr(b, b"");
                        wire::put_cstr(b, b"");
                        b.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
                    });
                    wire::put_message(&mut out, tag::EXECUTE, |b| {
                        wire::put_cstr(b, b"");
                        b.extend_from_slice(&0i32.to_be_bytes());
                    });
                }
                let note = archiving.then(|| audit.note(sql, None));
                self.ops.push(Op::Refused {
                    tracker: Tracker::noted(note, None),
                    rule: refusal.rule,
                    simple,
                });
                self.shared.refusals.fetch_add(1, Ordering::AcqRel);
                Route::Replace(out)
            }
        }
    }
}

/// A statement that makes the server raise `refusal` as a 42501 error.
fn raise_statement(refusal: &Refusal) -> String {
    // Dollar quoting needs no escaping; the tags cannot occur in texts
    // from which every `$` is removed.
    let clean = |s: &str| s.replace('$', "");
    let message = format!("pgveil policy \"{}\": {}", refusal.rule, refusal.message);
    // A rule's refusal is about access; pgveil's own conditions pass.
    let hint = if refusal.code == sqlstate::INSUFFICIENT_PRIVILEGE {
        REFUSAL_HINT
    } else {
        "Retry later; the gateway's operator can see the cause in its log."
    };
    format!(
        "DO $pgveil$ BEGIN RAISE EXCEPTION USING ERRCODE = '{}', MESSAGE = $m${}$m$, \
         HINT = $h${}$h$; END $pgveil$",
        refusal.code,
        clean(&message),
        hint
    )
}

/// Why a COPY TO STDOUT is refused for a covered identity.
const COPY_REFUSED: &str = "pgveil masking: COPY TO STDOUT is refused for identities that masking \
     rules cover when it is binary or pgveil cannot describe its rows";

/// The hint of every refusal.
const REFUSAL_HINT: &str = "Ask the data owners for access, or change the statement.";

/// What the client pump does with a message.
enum Route {
    Forward,
    /// Send these bytes of pgveil's own instead.
    Replace(BytesMut),
    /// Forward it, then send these bytes of pgveil's own.
    Inject(BytesMut),
    /// Send these bytes of pgveil's own, then forward it.
    Prefix(BytesMut),
    Terminate,
}

fn cstr_field<'b>(body: &'b [u8], what: &str) -> Result<&'b [u8], String> {
    wire::take_cstr(body)
        .map(|(s, _)| s)
        .ok_or_else(|| format!("malformed {what} message"))
}

/// What a Bind body says.
struct BindBody<'b> {
    portal: &'b [u8],
    statement: &'b [u8],
    /// Parameter values (`None`: NULL).
    values: Vec<Option<&'b [u8]>>,
    /// Result format codes.
    formats: Vec<i16>,
}

fn parse_bind(body: &[u8]) -> Option<BindBody<'_>> {
    let (portal, rest) = wire::take_cstr(body)?;
    let (statement, rest) = wire::take_cstr(rest)?;
    let (n, mut rest) = take_count(rest)?;
    rest = rest.get(n * 2..)?;
    let (n, after) = take_count(rest)?;
    rest = after;
    let mut values = Vec::with_capacity(n);
    for _ in 0..n {
        let (len, after) = rest.split_first_chunk::<4>()?;
        let len = i32::from_be_bytes(*len);
        rest = match usize::try_from(len) {
            Ok(len) => {
                values.push(Some(after.get(..len)?));
                after.get(len..)?
            }
            Err(_) => {
                values.push(None);
                after
            }
        };
    }
    let (n, rest) = take_count(rest)?;
    let formats = rest
        .get(..n * 2)?
        .chunks_exact(2)
        .map(|c| i16::from_be_bytes([c[0], c[1]]))
        .collect();
    Some(BindBody {
        portal,
        statement,
        values,
        formats,
    })
}

/// A non-negative Int16 count at the front of `b`.
fn take_count(b: &[u8]) -> Option<(usize, &[u8])> {
    let (n, rest) = b.split_first_chunk::<2>()?;
    Some((usize::try_from(i16::from_be_bytes(*n)).ok()?, rest))
}

fn client_frame_error(e: &FrameError) -> String {
    match e {
        FrameError::Oversized { len, limit } => {
            format!("message of {len} bytes exceeds pgveil's limit of {limit} bytes")
        }
        other => format!("invalid message from client: {other}"),
    }
}

/// Server to client: frame, account, forward.
struct ServerPump<'a> {
    ctx: &'a RelayContext<'a>,
    shared: &'a Shared,
    inbuf: BytesMut,
    status: u8,
    server_fatal: bool,
    out_of_step: bool,
    expired: bool,
    /// Masking state of the extended protocol; filled only with masking.
    statements: HashMap<Vec<u8>, Prepared>,
    portals: HashMap<Vec<u8>, Shape>,
    /// The statement each portal was bound to.
    portal_statements: HashMap<Vec<u8>, Vec<u8>>,
    /// The plan of the rows now arriving; `None` until resolved for the
    /// current statement.
    row_plan: Option<Option<Arc<Plan>>>,
    /// A result whose rows are swallowed because masking refuses it (a
    /// binary COPY, a result computed from a column whose rule refuses
    /// that); its end becomes this error message.
    refusing: Option<String>,
    /// What the probe learnt of the COPY queued next.
    pending_copy: Option<(CopyFormat, Probed)>,
    /// A COPY TO STDOUT whose rows are being masked, and whether its
    /// header row is still to come.
    copy_rewrite: Option<(CopyFormat, Arc<Plan>, bool)>,
    /// What pgveil writes instead of the message just handled.
    scratch: BytesMut,
    /// Bytes of the server's answer to the statement now running.
    statement_bytes: u64,
    /// The audit record of the last statement ended in this batch: the
    /// batch is written to the client once it is durable.
    ticket: Option<Ticket>,
}

/// What the server pump knows of a prepared statement.
#[derive(Default)]
struct Prepared {
    /// Its description, once described.
    fields: Option<Arc<Vec<Field>>>,
    /// Its analysis, when the policy analyzed it.
    analysis: Option<Arc<[StatementInfo]>>,
}

impl Prepared {
    /// What the statement's result columns are computed from.
    fn lineage(&self) -> Option<&[Output]> {
        lineage_of(self.analysis.as_deref(), 0)
    }
}

/// The outputs of statement `i` of an analysis, when they are its exact
/// result shape.
fn lineage_of(analysis: Option<&[StatementInfo]>, i: usize) -> Option<&[Output]> {
    let s = analysis?.get(i)?;
    s.outputs_known.then_some(s.outputs.as_slice())
}

/// What a copy probe found.
enum Probed {
    /// The rows have columns to mask.
    Masked(Arc<Plan>),
    /// Nothing in them is masked for this identity.
    Clear,
    /// The server could not describe them.
    Failed,
}

/// What the server pump knows of a portal's rows.
enum Shape {
    /// Described: its plan (`None`: nothing masked).
    Known(Option<Arc<Plan>>),
    /// Bound to a statement whose description never came.
    Unknown,
}

/// What the server pump does with one message.
enum Pass {
    Forward,
    /// Send `scratch` instead (empty: drop the message).
    Replace,
}

impl<'a> ServerPump<'a> {
    fn new(ctx: &'a RelayContext<'a>, shared: &'a Shared, leftover: BytesMut) -> Self {
        Self {
            ctx,
            shared,
            inbuf: leftover,
            status: ctx.initial_status,
            server_fatal: false,
            out_of_step: false,
            expired: false,
            statements: HashMap::new(),
            portals: HashMap::new(),
            portal_statements: HashMap::new(),
            row_plan: None,
            refusing: None,
            pending_copy: None,
            copy_rewrite: None,
            scratch: BytesMut::new(),
            statement_bytes: 0,
            ticket: None,
        }
    }

    async fn run<R, W>(&mut self, server: &mut R, client: &mut W) -> Ended
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
    {
        let mut inbuf = std::mem::take(&mut self.inbuf);
        // Bytes that cannot be forwarded straight from `inbuf` (pgveil's own
        // replies and what precedes them); empty in the common case.
        let mut out = BytesMut::new();
        let deadline = self.ctx.deadline();
        loop {
            // Walk the buffered messages in place; `inbuf[fwd..pos]` goes to
            // the client verbatim.
            let (mut pos, mut fwd, mut need) = (0, 0, 0);
            loop {
                let total = match wire::frame_len(&inbuf[pos..], MAX_SERVER_MESSAGE) {
                    Ok(Some(total)) => total,
                    Ok(None) => break,
                    Err(e) => return Ended::ServerProtocol(e.to_string()),
                };
                if inbuf.len() - pos < total {
                    need = total - (inbuf.len() - pos);
                    break;
                }
                let start = pos;
                self.statement_bytes += total as u64;
                let pass = self.on_message(inbuf[pos], &inbuf[pos + wire::HEADER_LEN..pos + total]);
                pos += total;
                if let Pass::Replace = pass {
                    out.extend_from_slice(&inbuf[fwd..start]);
                    out.extend_from_slice(&self.scratch);
                    self.scratch.clear();
                    fwd = pos;
                }
                if out.len() + (pos - fwd) >= WRITE_HIGH_WATER {
                    if let Err(e) = self.write(client, &mut out, &inbuf[fwd..pos]).await {
                        return Ended::ClientIo(e);
                    }
                    fwd = pos;
                }
            }
            if let Err(e) = self.write(client, &mut out, &inbuf[fwd..pos]).await {
                return Ended::ClientIo(e);
            }
            inbuf.advance(pos);
            if self.expired && self.shared.ops().is_empty() {
                return Ended::Expired;
            }
            inbuf.reserve(need.max(READ_CHUNK));
            tokio::select! {
                biased;
                () = sleep_until(deadline), if !self.expired => self.expired = true,
                read = server.read_buf(&mut inbuf) => match read {
                    Ok(0) => return Ended::ServerClosed { explained: self.server_fatal },
                    Ok(_) => {}
                    Err(e) => return Ended::ServerIo(e),
                },
            }
        }
    }

    async fn write<W: AsyncWrite + Unpin>(
        &mut self,
        client: &mut W,
        out: &mut BytesMut,
        tail: &[u8],
    ) -> std::io::Result<()> {
        if let Some(ticket) = self.ticket.take() {
            // The client learns that a statement ended only once its record
            // is in the spool (records are durable in order).
            self.ctx.audit.settle(ticket).await;
        }
        let sent = send(client, out, tail).await?;
        self.shared
            .bytes_to_client
            .fetch_add(sent as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Accounts one server message against the queue of pending ops, and
    /// masks what the session's plans say.
    fn on_message(&mut self, tag: u8, body: &[u8]) -> Pass {
        let masking = self.ctx.mask.is_some();
        if self.shared.refusals.load(Ordering::Acquire) > 0 {
            if let Some(pass) = self.on_refusal_answer(tag, body) {
                return pass;
            }
        }
        if masking && self.shared.probes.load(Ordering::Acquire) > 0 {
            if let Some(pass) = self.on_probe_answer(tag, body) {
                return pass;
            }
        }
        match tag {
            tag::DATA_ROW if masking => return self.on_data_row(body),
            tag::DATA_ROW | tag::COPY_DATA | tag::COPY_DONE if self.refusing.is_some() => {
                return Pass::Replace
            }
            tag::COMMAND_COMPLETE | tag::PORTAL_SUSPENDED if self.refusing.is_some() => {
                return self.end_refused_result();
            }
            tag::PARSE_COMPLETE => {
                let parsed = self.complete(|op| matches!(op, Op::Parse(..)));
                if let (true, Some(Op::Parse(name, analysis))) = (masking, parsed) {
                    let prepared = Prepared {
                        fields: None,
                        analysis,
                    };
                    self.statements.insert(name, prepared);
                }
            }
            tag::BIND_COMPLETE => {
                let bound = self.complete(|op| matches!(op, Op::Bind { .. }));
                if let (
                    true,
                    Some(Op::Bind {
                        portal,
                        statement,
                        formats,
                    }),
                ) = (masking, bound)
                {
                    let shape = self.portal_shape(&statement, &formats);
                    self.portals.insert(portal.clone(), shape);
                    self.portal_statements.insert(portal, statement);
                }
            }
            tag::CLOSE_COMPLETE => drop(self.complete(|op| matches!(op, Op::Close))),
            tag::NO_DATA | tag::ROW_DESCRIPTION => return self.on_description(tag, body),
            tag::COPY_OUT_RESPONSE if masking && self.ctx.mask.is_some_and(|m| m.covered()) => {
                return self.on_copy_out(body);
            }
            tag::COPY_DATA if self.copy_rewrite.is_some() => return self.on_copy_row(body),
            tag::COMMAND_COMPLETE => {
                self.copy_rewrite = None;
                let rows = rows_from_command_tag(body);
                let word = command_word(body);
                if masking && is_ddl(&word) {
                    self.shared.catalog_stale.store(true, Ordering::Release);
                }
                self.end_statement(Outcome::Complete(word), rows);
            }
            tag::EMPTY_QUERY_RESPONSE => self.end_statement(Outcome::Empty, 0),
            tag::PORTAL_SUSPENDED => self.end_statement(Outcome::Suspended, 0),
            tag::FUNCTION_CALL_RESPONSE => {
                self.end_statement(Outcome::Complete("FUNCTION_CALL".into()), 0)
            }
            tag::ERROR_RESPONSE => {
                self.refusing = None;
                self.copy_rewrite = None;
                self.on_error(body);
            }
            tag::READY_FOR_QUERY => {
                self.status = body.first().copied().unwrap_or(STATUS_IDLE);
                self.row_plan = None;
                self.pending_copy = None;
                drop(
                    self.complete(|op| {
                        matches!(op, Op::Sync | Op::Query(..) | Op::FunctionCall(_))
                    }),
                );
            }
            _ => {}
        }
        Pass::Forward
    }

    /// The end of a result that masking refuses: an error instead.
    fn end_refused_result(&mut self) -> Pass {
        let message = self.refusing.take().unwrap_or_default();
        self.copy_rewrite = None;
        wire::put_error(
            &mut self.scratch,
            Severity::Error,
            sqlstate::INSUFFICIENT_PRIVILEGE,
            &message,
            Some(REFUSAL_HINT),
        );
        self.end_statement(Outcome::Refused("masking".into()), 0);
        Pass::Replace
    }

    /// The answers to the statement pgveil sent in place of a refused one:
    /// swallowed up to its error, which goes to the client without the
    /// server's CONTEXT (it would name pgveil's own code).
    fn on_refusal_answer(&mut self, tag: u8, body: &[u8]) -> Option<Pass> {
        if matches!(
            tag,
            tag::NOTICE_RESPONSE | tag::NOTIFICATION_RESPONSE | tag::PARAMETER_STATUS
        ) {
            return None;
        }
        let mut ops = self.shared.ops();
        let Some(Op::Refused { .. }) = ops.front() else {
            return None;
        };
        match tag {
            tag::ERROR_RESPONSE | tag::COMMAND_COMPLETE => {
                let Some(Op::Refused {
                    tracker,
                    rule,
                    simple,
                }) = ops.pop_front()
                else {
                    return None;
                };
                self.shared.refusals.fetch_sub(1, Ordering::AcqRel);
                if simple {
                    // The Query's ReadyForQuery follows; it completes this.
                    ops.push_front(Op::Query(Tracker::now(), None, 0));
                }
                // In the extended protocol the server now skips to Sync.
                while let Some(op) = ops.front().filter(|_| !simple) {
                    if matches!(
                        op,
                        Op::Sync | Op::Query(..) | Op::FunctionCall(_) | Op::Refused { .. }
                    ) {
                        break;
                    }
                    ops.pop_front();
                }
                drop(ops);
                if tag == tag::ERROR_RESPONSE {
                    wire::put_error_without(&mut self.scratch, body, b'W');
                } else {
                    // The raising statement completed, which it cannot;
                    // the client still gets the refusal.
                    wire::put_error(
                        &mut self.scratch,
                        Severity::Error,
                        sqlstate::INSUFFICIENT_PRIVILEGE,
                        &format!("pgveil policy \"{rule}\" refused the statement"),
                        Some(REFUSAL_HINT),
                    );
                }
                let bytes = std::mem::take(&mut self.statement_bytes);
                self.record(StatementEvent {
                    seq: 0,
                    protocol: if simple { "query" } else { "execute" },
                    started_at: started_at(tracker.started),
                    duration: tracker.started.elapsed(),
                    rows: 0,
                    bytes,
                    outcome: Outcome::Refused(rule),
                    masked: Vec::new(),
                    note: tracker.note,
                    index: 0,
                    would_refuse: None,
                    parameters: None,
                });
                Some(Pass::Replace)
            }
            // ParseComplete and BindComplete of pgveil's own statement.
            tag::PARSE_COMPLETE | tag::BIND_COMPLETE => Some(Pass::Replace),
            _ => None,
        }
    }

    /// Swallows the answers to a copy probe at the front of the queue and
    /// keeps what they say; `None` when the message is not one of them.
    fn on_probe_answer(&mut self, tag: u8, body: &[u8]) -> Option<Pass> {
        // Asynchronous messages belong to the client whatever is pending.
        if matches!(
            tag,
            tag::NOTICE_RESPONSE | tag::NOTIFICATION_RESPONSE | tag::PARAMETER_STATUS
        ) {
            return None;
        }
        let mut ops = self.shared.ops();
        let Some(Op::CopyProbe { fields, failed, .. }) = ops.front_mut() else {
            return None;
        };
        match tag {
            tag::ROW_DESCRIPTION => match plan::parse_row_description(body) {
                Some(f) => *fields = Some(f),
                None => *failed = true,
            },
            tag::NO_DATA => *fields = Some(Vec::new()),
            tag::ERROR_RESPONSE => *failed = true,
            tag::READY_FOR_QUERY => {
                let Some(Op::CopyProbe {
                    format,
                    fields,
                    failed,
                }) = ops.pop_front()
                else {
                    return None;
                };
                drop(ops);
                self.shared.probes.fetch_sub(1, Ordering::AcqRel);
                let probed = match (fields, failed, self.ctx.mask) {
                    (Some(f), false, Some(mask)) => match mask.plan(&f, None) {
                        Some(plan) => Probed::Masked(plan),
                        None => Probed::Clear,
                    },
                    _ => Probed::Failed,
                };
                self.pending_copy = Some((format, probed));
            }
            _ => {}
        }
        Some(Pass::Replace)
    }

    /// A CopyOutResponse for a covered identity: masked row by row when the
    /// probe described the rows in text or CSV, refused otherwise.
    fn on_copy_out(&mut self, body: &[u8]) -> Pass {
        let binary = body.first() != Some(&0);
        match self.pending_copy.take() {
            Some((format, Probed::Masked(plan))) if !binary && format != CopyFormat::Binary => {
                let header = matches!(format, CopyFormat::Csv { header: true, .. });
                self.row_plan = Some(Some(plan.clone()));
                self.copy_rewrite = Some((format, plan, header));
                Pass::Forward
            }
            Some((format, Probed::Clear)) if !binary && format != CopyFormat::Binary => {
                Pass::Forward
            }
            _ => {
                self.refusing = Some(COPY_REFUSED.into());
                Pass::Replace
            }
        }
    }

    /// One row of a masked COPY TO STDOUT. A row that does not parse ends
    /// the COPY with a refusal; rows already sent were masked.
    fn on_copy_row(&mut self, body: &[u8]) -> Pass {
        let Some((format, plan, header)) = &mut self.copy_rewrite else {
            return Pass::Forward;
        };
        if std::mem::take(header) {
            return Pass::Forward;
        }
        match copy::rewrite_row(format, plan, body) {
            Some(row) => {
                wire::put_message(&mut self.scratch, tag::COPY_DATA, |b| {
                    b.extend_from_slice(&row)
                });
            }
            None => {
                self.copy_rewrite = None;
                self.refusing = Some(COPY_REFUSED.into());
            }
        }
        Pass::Replace
    }

    /// A RowDescription or NoData: the answer to a Describe, or the shape of
    /// a simple query's rows.
    fn on_description(&mut self, tag: u8, body: &[u8]) -> Pass {
        let fields = match tag {
            tag::ROW_DESCRIPTION => plan::parse_row_description(body),
            _ => Some(Vec::new()),
        };
        // The op this answers, and for a simple Query's rows, what the
        // statement now answered computes its columns from.
        let (described, query_lineage) = {
            let mut ops = self.shared.ops();
            match ops.front() {
                Some(Op::Describe { .. }) => (ops.pop_front(), None),
                Some(Op::Query(_, analysis, i)) => (None, Some((analysis.clone(), *i))),
                _ => (None, None),
            }
        };
        let Some(mask) = self.ctx.mask else {
            if described.is_none() && tag == tag::NO_DATA {
                self.note_out_of_step();
            }
            return Pass::Forward;
        };
        // An unreadable description fails closed: an empty plan matches no
        // row, and rows that match no plan are sent as NULLs.
        let plan_of = |fields: &Option<Vec<Field>>, lineage: Option<&[Output]>| match fields {
            Some(f) => mask.plan(f, lineage),
            None => Some(Arc::new(Plan::all_null(0))),
        };
        match described {
            Some(Op::Describe {
                kind,
                name,
                injected,
            }) => {
                if kind == b'S' {
                    self.statements.entry(name).or_default().fields = fields.map(Arc::new);
                } else {
                    let lineage = self
                        .portal_statements
                        .get(&name)
                        .and_then(|st| self.statements.get(st))
                        .and_then(Prepared::lineage);
                    let plan = plan_of(&fields, lineage);
                    self.portals.insert(name, Shape::Known(plan));
                }
                if injected {
                    return Pass::Replace;
                }
            }
            _ if tag == tag::ROW_DESCRIPTION => {
                let lineage = query_lineage
                    .as_ref()
                    .and_then(|(a, i)| lineage_of(a.as_deref(), *i));
                let plan = plan_of(&fields, lineage);
                self.refusing = plan.as_ref().and_then(|p| p.refusal.clone());
                self.row_plan = Some(plan);
            }
            _ => self.note_out_of_step(),
        }
        Pass::Forward
    }

    /// The shape of a portal bound to `statement` with result `formats`.
    fn portal_shape(&self, statement: &[u8], formats: &[i16]) -> Shape {
        let Some(mask) = self.ctx.mask else {
            return Shape::Unknown;
        };
        let Some(prepared) = self.statements.get(statement) else {
            return Shape::Unknown;
        };
        let Some(fields) = &prepared.fields else {
            return Shape::Unknown;
        };
        // A statement's description reports text for every column; the
        // formats that apply are the ones in Bind.
        let Some(formats) = plan::bind_formats(formats, fields.len()) else {
            return Shape::Unknown;
        };
        let fields: Vec<Field> = fields
            .iter()
            .zip(formats)
            .map(|(f, format)| Field {
                format,
                ..f.clone()
            })
            .collect();
        Shape::Known(mask.plan(&fields, prepared.lineage()))
    }

    /// A DataRow of a masked session: rewritten when its plan masks.
    fn on_data_row(&mut self, body: &[u8]) -> Pass {
        let plan = match &self.row_plan {
            Some(plan) => plan.clone(),
            None => {
                let plan = self.resolve_row_plan();
                self.row_plan = Some(plan.clone());
                plan
            }
        };
        let Some(plan) = plan else {
            return Pass::Forward;
        };
        if !self.ctx.mask.is_some_and(|m| m.masking.enforce()) {
            // Dry run: the plan is recorded at the statement's end.
            return Pass::Forward;
        }
        if let Some(refusal) = &plan.refusal {
            self.refusing = Some(refusal.clone());
            return Pass::Replace;
        }
        if plan.rewrite(body, &mut self.scratch).is_none() {
            // Rows of an unknown shape: every value becomes NULL.
            self.scratch.clear();
            let n = body
                .first_chunk::<2>()
                .map_or(0, |c| usize::try_from(i16::from_be_bytes(*c)).unwrap_or(0));
            let nulls = Plan::all_null(n);
            if nulls.rewrite(body, &mut self.scratch).is_none() {
                wire::put_message(&mut self.scratch, tag::DATA_ROW, |b| {
                    b.extend_from_slice(&0i16.to_be_bytes());
                });
            }
        }
        Pass::Replace
    }

    /// The plan for rows that arrive without a RowDescription of their own:
    /// an Execute's, from its portal.
    fn resolve_row_plan(&self) -> Option<Arc<Plan>> {
        let covered = self.ctx.mask.is_some_and(|m| m.covered());
        let ops = self.shared.ops();
        let shape = match ops.front() {
            Some(Op::Execute(_, portal)) => self.portals.get(portal),
            _ => None,
        };
        match shape {
            Some(Shape::Known(plan)) => plan.clone(),
            _ if covered => Some(Arc::new(Plan::all_null(0))),
            _ => None,
        }
    }

    /// Pops the front op if `is_expected` says it is the one answered.
    fn complete(&mut self, is_expected: impl Fn(&Op) -> bool) -> Option<Op> {
        let mut ops = self.shared.ops();
        if ops.front().is_some_and(is_expected) {
            ops.pop_front()
        } else {
            drop(ops);
            self.note_out_of_step();
            None
        }
    }

    fn note_out_of_step(&mut self) {
        if !self.out_of_step {
            self.out_of_step = true;
            tracing::warn!("response did not match the pending request queue");
        }
    }

    /// Records the statement at the front of the queue; an Execute ends there,
    /// a Query goes on to its next statement or ReadyForQuery.
    fn end_statement(&mut self, outcome: Outcome, rows: u64) {
        let mut ops = self.shared.ops();
        let (protocol, started, t, index) = match ops.front_mut() {
            Some(Op::Query(t, _, i)) => {
                *i += 1;
                ("query", t.restart(), &*t, *i - 1)
            }
            Some(Op::Execute(t, _)) => ("execute", t.started, &*t, 0),
            Some(Op::FunctionCall(t)) => ("function_call", t.started, &*t, 0),
            _ => {
                drop(ops);
                self.note_out_of_step();
                return;
            }
        };
        let masked = match self.row_plan.take() {
            Some(Some(plan)) => plan.masked.clone(),
            _ => Vec::new(),
        };
        let event = StatementEvent {
            seq: 0,
            protocol,
            started_at: started_at(started),
            duration: started.elapsed(),
            rows,
            bytes: std::mem::take(&mut self.statement_bytes),
            outcome,
            masked,
            note: t.note.clone(),
            index,
            would_refuse: t.would_refuse.clone(),
            parameters: t.parameters.clone(),
        };
        if protocol == "execute" {
            ops.pop_front();
        }
        drop(ops);
        self.record(event);
    }

    fn on_error(&mut self, body: &[u8]) {
        let fields = wire::parse_error_fields(body).unwrap_or_default();
        if matches!(fields.severity.as_str(), "FATAL" | "PANIC") {
            self.server_fatal = true;
        }
        let failed = Outcome::Failed {
            code: fields.code,
            message: fields.message,
        };
        let mut ops = self.shared.ops();
        match ops.front() {
            Some(Op::Query(..) | Op::FunctionCall(_) | Op::Execute(..)) => {
                drop(ops);
                self.end_statement(failed, 0);
                ops = self.shared.ops();
            }
            // An error with nothing of ours pending (a FATAL at idle) or ahead
            // of one of pgveil's own replies ends nothing.
            Some(Op::Sync | Op::Refused { .. }) | None => return,
            Some(_) => {
                ops.pop_front();
            }
        }
        // Simple-protocol errors end at ReadyForQuery; extended-protocol
        // errors make the server skip everything up to the next Sync.
        if matches!(ops.front(), Some(Op::Query(..) | Op::FunctionCall(_))) {
            return;
        }
        while let Some(op) = ops.front() {
            if matches!(op, Op::Sync | Op::Refused { .. }) {
                break;
            }
            ops.pop_front();
        }
    }

    /// Hands a statement's event to the audit trail; the batch that holds
    /// its end waits for the record to be durable before it is written.
    fn record(&mut self, mut event: StatementEvent) {
        event.seq = self.shared.statements.fetch_add(1, Ordering::Relaxed) + 1;
        let ctx = self.ctx;
        if let Some(ticket) = ctx.audit.statement(ctx.session_id, ctx.identity, &event) {
            self.ticket = Some(ticket);
        }
    }
}

/// Writes `out` followed by `tail` in one write, straight from `tail` when
/// `out` is empty (the common case: nothing rewritten). Returns the bytes
/// written.
async fn send<W: AsyncWrite + Unpin>(
    to: &mut W,
    out: &mut BytesMut,
    tail: &[u8],
) -> std::io::Result<usize> {
    if out.is_empty() {
        if !tail.is_empty() {
            to.write_all(tail).await?;
        }
        return Ok(tail.len());
    }
    out.extend_from_slice(tail);
    to.write_all(out).await?;
    let sent = out.len();
    out.clear();
    Ok(sent)
}

/// The wall-clock time of `started` (only the archive needs it, so it is
/// derived when a statement is recorded rather than read for every one).
fn started_at(started: Instant) -> SystemTime {
    SystemTime::now() - started.elapsed()
}

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Whether a command tag's first word is DDL, after which the catalog
/// map may be out of date.
fn is_ddl(word: &str) -> bool {
    matches!(
        word,
        "CREATE" | "ALTER" | "DROP" | "COMMENT" | "GRANT" | "REVOKE"
    )
}

/// The first word of a CommandComplete tag (`SELECT 5` → `SELECT`).
fn command_word(body: &[u8]) -> String {
    let text = wire::take_cstr(body).map_or(body, |(s, _)| s);
    let word = text.split(|&b| b == b' ').next().unwrap_or_default();
    String::from_utf8_lossy(word).into_owned()
}

/// Rows returned or affected: the last number in a CommandComplete tag.
fn rows_from_command_tag(body: &[u8]) -> u64 {
    let text = wire::take_cstr(body).map_or(body, |(s, _)| s);
    text.rsplit(|&b| b == b' ')
        .next()
        .and_then(|n| std::str::from_utf8(n).ok())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests;
