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
//! A reply that pgveil makes itself (a policy refusal) is queued as an entry
//! of its own and written when it reaches the front of the queue, so it
//! reaches the client in order after every response to earlier requests.
//!
//! Each pump walks the messages of its read buffer in place and writes the
//! forwarded ones straight from that buffer; only what pgveil drops, adds or
//! rewrites costs a copy. Writes are coalesced: each pump forwards everything
//! one read returned in a single write, and flushes early only past a
//! high-water mark. A slow client therefore stops the server pump at its
//! write, which stops reads from the server: backpressure reaches the server
//! instead of filling memory.
//!
//! Limits of this version: a refused statement inside an explicit
//! transaction does not put the server's transaction into the failed state,
//! and statements before a refused one in the same extended-protocol batch
//! still run.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Instant;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::Notify;

use crate::audit::{Audit, Outcome, SessionTotals, StatementEvent};
use crate::policy::{Decision, Policy};
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
    /// Largest message accepted from the client.
    pub max_message: usize,
    /// Transaction status of the server when the relay starts.
    pub initial_status: u8,
    /// When the client's proof of identity expires. The statement running
    /// then may finish; then the session ends with a FATAL error.
    pub expires_at: Option<std::time::SystemTime>,
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
    /// A simple-protocol Query; answered up to ReadyForQuery.
    Query(Tracker),
    Parse,
    Bind,
    Describe,
    /// An Execute; answered by CommandComplete, EmptyQueryResponse,
    /// PortalSuspended or ErrorResponse.
    Execute(Tracker),
    Close,
    Sync,
    /// A FunctionCall; answered up to ReadyForQuery.
    FunctionCall(Tracker),
    /// A reply pgveil makes itself; `then_ready` appends ReadyForQuery with
    /// the current transaction status.
    Reply {
        message: Bytes,
        then_ready: bool,
        rule: String,
    },
}

/// Timing of the statement an Op stands for.
#[derive(Debug)]
struct Tracker {
    started: Instant,
}

impl Tracker {
    fn now() -> Self {
        Self {
            started: Instant::now(),
        }
    }
}

/// State shared by the two pumps.
struct Shared {
    ops: Mutex<VecDeque<Op>>,
    /// Wakes the server pump when a Reply is queued.
    reply_queued: Notify,
    /// Replies in `ops`; lets the server pump skip the lock when zero.
    replies: AtomicUsize,
    bytes_from_client: AtomicU64,
    bytes_to_client: AtomicU64,
    statements: AtomicU64,
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
        reply_queued: Notify::new(),
        replies: AtomicUsize::new(0),
        bytes_from_client: AtomicU64::new(0),
        bytes_to_client: AtomicU64::new(0),
        statements: AtomicU64::new(0),
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

/// Client to server: frame, decide, forward.
struct ClientPump<'a> {
    ctx: &'a RelayContext<'a>,
    shared: &'a Shared,
    /// After a refusal in the extended protocol: drop messages until Sync.
    discarding: bool,
    ops: Vec<Op>,
    inbuf: BytesMut,
}

impl<'a> ClientPump<'a> {
    fn new(ctx: &'a RelayContext<'a>, shared: &'a Shared, leftover: BytesMut) -> Self {
        Self {
            ctx,
            shared,
            discarding: false,
            ops: Vec::new(),
            inbuf: leftover,
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
                    Route::Drop => {
                        out.extend_from_slice(&inbuf[fwd..pos]);
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
            let replies = self
                .ops
                .iter()
                .filter(|op| matches!(op, Op::Reply { .. }))
                .count();
            self.shared.ops().extend(self.ops.drain(..));
            if replies > 0 {
                self.shared.replies.fetch_add(replies, Ordering::Release);
                self.shared.reply_queued.notify_one();
            }
        }
        send(server, out, tail).await.map(drop)
    }

    /// Decides what to do with one client message.
    fn route(&mut self, tag: u8, body: &[u8]) -> Result<Route, String> {
        if self.discarding && tag != tag::SYNC {
            return Ok(Route::Drop);
        }
        let op = match tag {
            tag::QUERY => {
                let sql = cstr_field(body, "Query")?;
                return Ok(self.decide(sql, true, || Op::Query(Tracker::now())));
            }
            tag::PARSE => {
                let (_name, rest) = wire::take_cstr(body).ok_or("malformed Parse message")?;
                let sql = cstr_field(rest, "Parse")?;
                return Ok(self.decide(sql, false, || Op::Parse));
            }
            tag::SYNC => {
                self.discarding = false;
                Op::Sync
            }
            tag::BIND => Op::Bind,
            tag::DESCRIBE => Op::Describe,
            tag::EXECUTE => Op::Execute(Tracker::now()),
            tag::CLOSE => Op::Close,
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

    /// Asks the policy about a statement and queues either its op or a refusal.
    fn decide(&mut self, sql: &[u8], simple: bool, op: impl FnOnce() -> Op) -> Route {
        match self.ctx.policy.decide(self.ctx.identity, sql) {
            Decision::Allow => {
                self.ops.push(op());
                Route::Forward
            }
            Decision::Refuse { rule, message } => {
                let mut reply = BytesMut::new();
                let hint = "Ask the data owners for access, or change the statement.";
                wire::put_error(
                    &mut reply,
                    Severity::Error,
                    sqlstate::INSUFFICIENT_PRIVILEGE,
                    &format!("pgveil policy \"{rule}\": {message}"),
                    Some(hint),
                );
                self.ops.push(Op::Reply {
                    message: reply.freeze(),
                    then_ready: simple,
                    rule,
                });
                self.discarding = !simple;
                Route::Drop
            }
        }
    }
}

/// What the client pump does with a message.
enum Route {
    Forward,
    Drop,
    Terminate,
}

fn cstr_field<'b>(body: &'b [u8], what: &str) -> Result<&'b [u8], String> {
    wire::take_cstr(body)
        .map(|(s, _)| s)
        .ok_or_else(|| format!("malformed {what} message"))
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
                self.on_message(inbuf[pos], &inbuf[pos + wire::HEADER_LEN..pos + total]);
                pos += total;
                if self.shared.replies.load(Ordering::Acquire) > 0 {
                    out.extend_from_slice(&inbuf[fwd..pos]);
                    fwd = pos;
                    self.drain_replies(&mut out);
                }
                if out.len() + (pos - fwd) >= WRITE_HIGH_WATER {
                    if let Err(e) = self.write(client, &mut out, &inbuf[fwd..pos]).await {
                        return Ended::ClientIo(e);
                    }
                    fwd = pos;
                }
            }
            if self.shared.replies.load(Ordering::Acquire) > 0 {
                out.extend_from_slice(&inbuf[fwd..pos]);
                fwd = pos;
                self.drain_replies(&mut out);
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
                () = self.shared.reply_queued.notified() => {}
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
        &self,
        client: &mut W,
        out: &mut BytesMut,
        tail: &[u8],
    ) -> std::io::Result<()> {
        let sent = send(client, out, tail).await?;
        self.shared
            .bytes_to_client
            .fetch_add(sent as u64, Ordering::Relaxed);
        Ok(())
    }

    /// Writes pgveil's own replies that have reached the front of the queue.
    fn drain_replies(&mut self, out: &mut BytesMut) {
        let mut ops = self.shared.ops();
        while let Some(Op::Reply { .. }) = ops.front() {
            let Some(Op::Reply {
                message,
                then_ready,
                rule,
            }) = ops.pop_front()
            else {
                break;
            };
            self.shared.replies.fetch_sub(1, Ordering::AcqRel);
            out.extend_from_slice(&message);
            if then_ready {
                wire::put_ready(out, self.status);
            }
            drop(ops);
            self.record(0, Instant::now(), "query", Outcome::Refused(rule));
            ops = self.shared.ops();
        }
    }

    /// Accounts one server message against the queue of pending ops.
    fn on_message(&mut self, tag: u8, body: &[u8]) {
        match tag {
            tag::PARSE_COMPLETE => self.complete(|op| matches!(op, Op::Parse)),
            tag::BIND_COMPLETE => self.complete(|op| matches!(op, Op::Bind)),
            tag::CLOSE_COMPLETE => self.complete(|op| matches!(op, Op::Close)),
            tag::NO_DATA => self.complete(|op| matches!(op, Op::Describe)),
            tag::ROW_DESCRIPTION => self.on_row_description(),
            tag::COMMAND_COMPLETE => {
                let rows = rows_from_command_tag(body);
                self.end_statement(Outcome::Complete(command_word(body)), rows);
            }
            tag::EMPTY_QUERY_RESPONSE => self.end_statement(Outcome::Empty, 0),
            tag::PORTAL_SUSPENDED => self.end_statement(Outcome::Suspended, 0),
            tag::FUNCTION_CALL_RESPONSE => {
                self.end_statement(Outcome::Complete("FUNCTION_CALL".into()), 0)
            }
            tag::ERROR_RESPONSE => self.on_error(body),
            tag::READY_FOR_QUERY => {
                self.status = body.first().copied().unwrap_or(STATUS_IDLE);
                self.complete(|op| matches!(op, Op::Sync | Op::Query(_) | Op::FunctionCall(_)));
            }
            _ => {}
        }
    }

    fn on_row_description(&mut self) {
        let mut ops = self.shared.ops();
        if let Some(Op::Describe) = ops.front() {
            ops.pop_front();
        }
    }

    /// Records the statement at the front of the queue; an Execute ends there,
    /// a Query goes on to its next statement or ReadyForQuery.
    fn end_statement(&mut self, outcome: Outcome, rows: u64) {
        let mut ops = self.shared.ops();
        let (protocol, started) = match ops.front_mut() {
            Some(Op::Query(t)) => ("query", std::mem::replace(&mut t.started, Instant::now())),
            Some(Op::Execute(t)) => ("execute", t.started),
            Some(Op::FunctionCall(t)) => ("function_call", t.started),
            _ => {
                drop(ops);
                self.note_out_of_step();
                return;
            }
        };
        if protocol == "execute" {
            ops.pop_front();
        }
        drop(ops);
        self.record(rows, started, protocol, outcome);
    }

    fn on_error(&mut self, body: &[u8]) {
        let fields = wire::parse_error_fields(body).unwrap_or_default();
        if matches!(fields.severity.as_str(), "FATAL" | "PANIC") {
            self.server_fatal = true;
        }
        let failed = Outcome::Failed(fields.code);
        let mut ops = self.shared.ops();
        match ops.front() {
            Some(Op::Query(_) | Op::FunctionCall(_) | Op::Execute(_)) => {
                drop(ops);
                self.end_statement(failed, 0);
                ops = self.shared.ops();
            }
            // An error with nothing of ours pending (a FATAL at idle) or ahead
            // of one of pgveil's own replies ends nothing.
            Some(Op::Sync | Op::Reply { .. }) | None => return,
            Some(_) => {
                ops.pop_front();
            }
        }
        // Simple-protocol errors end at ReadyForQuery; extended-protocol
        // errors make the server skip everything up to the next Sync.
        if matches!(ops.front(), Some(Op::Query(_) | Op::FunctionCall(_))) {
            return;
        }
        while let Some(op) = ops.front() {
            if matches!(op, Op::Sync | Op::Reply { .. }) {
                break;
            }
            ops.pop_front();
        }
    }

    /// Pops the front op if `is_expected` says it is the one answered.
    fn complete(&mut self, is_expected: impl Fn(&Op) -> bool) {
        let mut ops = self.shared.ops();
        if ops.front().is_some_and(is_expected) {
            ops.pop_front();
        } else {
            drop(ops);
            self.note_out_of_step();
        }
    }

    fn note_out_of_step(&mut self) {
        if !self.out_of_step {
            self.out_of_step = true;
            tracing::warn!("response did not match the pending request queue");
        }
    }

    fn record(&self, rows: u64, started: Instant, protocol: &'static str, outcome: Outcome) {
        let seq = self.shared.statements.fetch_add(1, Ordering::Relaxed) + 1;
        self.ctx.audit.statement(&StatementEvent {
            seq,
            protocol,
            duration: started.elapsed(),
            rows,
            outcome,
        });
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

/// Sleeps until `deadline`, or forever without one.
async fn sleep_until(deadline: Option<tokio::time::Instant>) {
    match deadline {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
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
