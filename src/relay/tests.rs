//! Relay tests over in-memory streams, where the server's side is played by
//! the test with scripted protocol bytes. These pin down ordering and error
//! handling that the integration suite cannot provoke from a real server
//! (policy refusals, oversized frames). Everything a real server can show is
//! tested end to end in `integration/`.

use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt, DuplexStream};

use super::*;
use crate::session::AuthKind;

const LIMIT: Duration = Duration::from_secs(5);

fn identity() -> Identity {
    Identity {
        user: "tester".into(),
        groups: Vec::new(),
        auth: AuthKind::Trust,
        issuer: None,
        subject: None,
        expires_at: None,
    }
}

fn message(tag: u8, body: &[u8]) -> BytesMut {
    let mut b = BytesMut::new();
    wire::put_message(&mut b, tag, |out| out.put_slice(body));
    b
}

fn query(sql: &str) -> BytesMut {
    message(tag::QUERY, format!("{sql}\0").as_bytes())
}

fn parse(sql: &str) -> BytesMut {
    message(tag::PARSE, format!("\0{sql}\0\0\0").as_bytes())
}

/// One end of a duplex pipe with the bytes read but not yet framed.
struct Peer {
    stream: DuplexStream,
    buf: BytesMut,
}

impl Peer {
    fn new(stream: DuplexStream) -> Self {
        Self {
            stream,
            buf: BytesMut::new(),
        }
    }

    async fn write_all(&mut self, bytes: &[u8]) -> std::io::Result<()> {
        self.stream.write_all(bytes).await
    }
}

/// Reads whole messages until one with `last` tag arrives; returns all tags
/// and the bytes.
async fn read_until(peer: &mut Peer, last: u8) -> (Vec<u8>, BytesMut) {
    let Peer { stream, buf } = peer;
    let mut all = BytesMut::new();
    let mut tags = Vec::new();
    loop {
        while let Some(frame) = wire::next_frame(buf, 1 << 20).expect("valid frame") {
            tags.push(frame.tag());
            all.extend_from_slice(frame.bytes());
            if frame.tag() == last {
                return (tags, all);
            }
        }
        let n = tokio::time::timeout(LIMIT, stream.read_buf(buf))
            .await
            .expect("no timeout")
            .expect("read");
        assert!(n > 0, "stream closed; tags so far: {tags:?}");
    }
}

struct Rig {
    client: Peer,
    server: Peer,
    relay: tokio::task::JoinHandle<(Ended, SessionTotals)>,
}

fn start(policy: Policy, max_message: usize) -> Rig {
    let (client, relay_client) = tokio::io::duplex(1 << 16);
    let (server, relay_server) = tokio::io::duplex(1 << 16);
    let relay = tokio::spawn(async move {
        let identity = identity();
        let audit = Audit::log_only();
        let ctx = RelayContext {
            identity: &identity,
            policy: &policy,
            audit: &audit,
            session_id: uuid::Uuid::now_v7(),
            max_message,
            initial_status: b'I',
            expires_at: None,
            mask: None,
        };
        let (client_rd, client_wr) = tokio::io::split(relay_client);
        let (server_rd, server_wr) = tokio::io::split(relay_server);
        run(
            &ctx,
            (client_rd, client_wr, BytesMut::new()),
            (server_rd, server_wr, BytesMut::new()),
        )
        .await
    });
    Rig {
        client: Peer::new(client),
        server: Peer::new(server),
        relay,
    }
}

fn command_complete(tag_text: &str) -> BytesMut {
    message(tag::COMMAND_COMPLETE, format!("{tag_text}\0").as_bytes())
}

fn ready(status: u8) -> BytesMut {
    message(tag::READY_FOR_QUERY, &[status])
}

/// The error a server sends for pgveil's raising statement, with the
/// CONTEXT field that pgveil must strip.
fn raised_error() -> BytesMut {
    let mut body = Vec::new();
    for (kind, text) in [
        (b'S', "ERROR"),
        (b'V', "ERROR"),
        (b'C', "42501"),
        (b'M', "pgveil policy \"test\": refused"),
        (b'W', "PL/pgSQL function inline_code_block line 1 at RAISE"),
    ] {
        body.push(kind);
        body.extend_from_slice(text.as_bytes());
        body.push(0);
    }
    body.push(0);
    message(tag::ERROR_RESPONSE, &body)
}

fn has_field(error: &[u8], kind: u8) -> bool {
    let mut rest = &error[wire::HEADER_LEN..];
    while let Some((&k, after)) = rest.split_first() {
        if k == 0 {
            return false;
        }
        if k == kind {
            return true;
        }
        let end = after.iter().position(|&b| b == 0).unwrap_or(after.len());
        rest = &after[(end + 1).min(after.len())..];
    }
    false
}

#[tokio::test]
async fn refusal_in_simple_mode_is_raised_by_the_server() {
    let mut rig = start(Policy::refusing("secret"), 1 << 20);
    let mut batch = query("begin; select 1");
    batch.extend_from_slice(&query("select secret"));
    rig.client.write_all(&batch).await.expect("write");

    let (tags, forwarded) = read_until(&mut rig.server, tag::QUERY).await;
    assert_eq!(tags, vec![tag::QUERY]);
    let (tags, raised) = read_until(&mut rig.server, tag::QUERY).await;
    assert_eq!(tags, vec![tag::QUERY]);
    assert!(forwarded.windows(8).any(|w| w == b"select 1"));
    assert!(
        raised.windows(11).any(|w| w == b"DO $pgveil$"),
        "{raised:?}"
    );
    assert!(!raised.windows(13).any(|w| w == b"select secret"));

    // The server answers the raising statement as it answers any failed
    // statement in a transaction block.
    let mut answer = command_complete("SELECT 1");
    answer.extend_from_slice(&ready(b'T'));
    answer.extend_from_slice(&raised_error());
    answer.extend_from_slice(&ready(b'E'));
    rig.server.write_all(&answer).await.expect("write");

    let (tags, _) = read_until(&mut rig.client, tag::READY_FOR_QUERY).await;
    assert_eq!(tags, vec![tag::COMMAND_COMPLETE, tag::READY_FOR_QUERY]);
    let (tags, bytes) = read_until(&mut rig.client, tag::READY_FOR_QUERY).await;
    assert_eq!(tags, vec![tag::ERROR_RESPONSE, tag::READY_FOR_QUERY]);
    let fields = wire::parse_error_fields(&bytes[wire::HEADER_LEN..]).expect("fields");
    assert_eq!(fields.code, sqlstate::INSUFFICIENT_PRIVILEGE.code());
    assert!(!has_field(&bytes, b'W'), "the server's CONTEXT is stripped");
    assert_eq!(
        bytes.last(),
        Some(&b'E'),
        "the transaction failed, as on the server"
    );
    rig.relay.abort();
}

#[tokio::test]
async fn refusal_in_extended_mode_is_raised_by_the_server() {
    let mut rig = start(Policy::refusing("secret"), 1 << 20);
    let mut batch = parse("select secret");
    batch.extend_from_slice(&message(tag::BIND, b"\0\0\0\0\0\0\0\0"));
    batch.extend_from_slice(&message(tag::EXECUTE, b"\0\0\0\0\0"));
    batch.extend_from_slice(&message(tag::SYNC, b""));
    rig.client.write_all(&batch).await.expect("write");

    // pgveil's Parse, Bind and Execute of the raising statement take the
    // refused Parse's place; the client's other messages follow, and the
    // server skips them after the error.
    let (tags, bytes) = read_until(&mut rig.server, tag::SYNC).await;
    let want = [
        tag::PARSE,
        tag::BIND,
        tag::EXECUTE,
        tag::BIND,
        tag::EXECUTE,
        tag::SYNC,
    ];
    assert_eq!(tags, want);
    assert!(!bytes.windows(13).any(|w| w == b"select secret"));
    let mut answer = message(tag::PARSE_COMPLETE, b"");
    answer.extend_from_slice(&message(tag::BIND_COMPLETE, b""));
    answer.extend_from_slice(&raised_error());
    answer.extend_from_slice(&ready(b'I'));
    rig.server.write_all(&answer).await.expect("write");

    let (tags, bytes) = read_until(&mut rig.client, tag::READY_FOR_QUERY).await;
    assert_eq!(tags, vec![tag::ERROR_RESPONSE, tag::READY_FOR_QUERY]);
    assert!(!has_field(&bytes, b'W'));

    // The session goes on in step.
    rig.client
        .write_all(&query("select 2"))
        .await
        .expect("write");
    read_until(&mut rig.server, tag::QUERY).await;
    let mut answer = command_complete("SELECT 1");
    answer.extend_from_slice(&ready(b'I'));
    rig.server.write_all(&answer).await.expect("write");
    let (tags, _) = read_until(&mut rig.client, tag::READY_FOR_QUERY).await;
    assert_eq!(tags, vec![tag::COMMAND_COMPLETE, tag::READY_FOR_QUERY]);
    rig.relay.abort();
}

#[tokio::test]
async fn server_error_skips_pending_ops_until_sync() {
    let mut rig = start(Policy::allow_all(), 1 << 20);
    let mut batch = parse("select 1/0");
    batch.extend_from_slice(&message(tag::BIND, b"\0\0\0\0\0\0\0\0"));
    batch.extend_from_slice(&message(tag::EXECUTE, b"\0\0\0\0\0"));
    batch.extend_from_slice(&message(tag::SYNC, b""));
    batch.extend_from_slice(&query("select 2"));
    rig.client.write_all(&batch).await.expect("write");
    read_until(&mut rig.server, tag::QUERY).await;

    let mut error = BytesMut::new();
    wire::put_error(
        &mut error,
        Severity::Error,
        sqlstate::INTERNAL_ERROR,
        "x",
        None,
    );
    let mut answer = BytesMut::new();
    answer.extend_from_slice(&message(tag::PARSE_COMPLETE, b""));
    answer.extend_from_slice(&message(tag::BIND_COMPLETE, b""));
    answer.extend_from_slice(&error);
    answer.extend_from_slice(&ready(b'I'));
    answer.extend_from_slice(&command_complete("SELECT 1"));
    answer.extend_from_slice(&ready(b'I'));
    rig.server.write_all(&answer).await.expect("write");
    read_until(&mut rig.client, tag::READY_FOR_QUERY).await;
    read_until(&mut rig.client, tag::READY_FOR_QUERY).await;

    rig.client
        .write_all(&message(tag::TERMINATE, b""))
        .await
        .expect("write");
    let (ended, totals) = tokio::time::timeout(LIMIT, rig.relay)
        .await
        .expect("relay ends")
        .expect("join");
    assert!(matches!(ended, Ended::Terminated), "{ended:?}");
    assert_eq!(totals.statements, 2, "the failed Execute and the Query");
}

#[tokio::test]
async fn oversized_client_message_is_a_protocol_violation() {
    let mut rig = start(Policy::allow_all(), 1024);
    let mut header = BytesMut::new();
    header.put_u8(tag::QUERY);
    header.put_i32(1 << 20);
    rig.client.write_all(&header).await.expect("write");
    let (tags, bytes) = read_until(&mut rig.client, tag::ERROR_RESPONSE).await;
    assert_eq!(tags, vec![tag::ERROR_RESPONSE]);
    let fields = wire::parse_error_fields(&bytes[wire::HEADER_LEN..]).expect("fields");
    assert_eq!(fields.code, sqlstate::PROTOCOL_VIOLATION.code());
    assert_eq!(fields.severity, "FATAL");
    let (ended, _) = tokio::time::timeout(LIMIT, rig.relay)
        .await
        .expect("relay ends")
        .expect("join");
    assert!(matches!(ended, Ended::ClientProtocol(_)), "{ended:?}");
}

#[tokio::test]
async fn losing_the_server_is_reported_to_the_client() {
    let mut rig = start(Policy::allow_all(), 1 << 20);
    drop(rig.server);
    let (tags, bytes) = read_until(&mut rig.client, tag::ERROR_RESPONSE).await;
    assert_eq!(tags, vec![tag::ERROR_RESPONSE]);
    let fields = wire::parse_error_fields(&bytes[wire::HEADER_LEN..]).expect("fields");
    assert_eq!(fields.code, sqlstate::CONNECTION_FAILURE.code());
}
