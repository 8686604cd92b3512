//! Bad input of every kind gets a specific error, and one session's failure
//! never affects another.

use std::sync::Arc;

use tokio_postgres::error::SqlState;
use tokio_postgres::NoTls;

use crate::harness::{case, free_port, Case, PgCluster, PgOptions, Pgveil, SCRAM_ROLE};
use crate::raw::{self, Raw};
use crate::{bin, gateway_toml, Ctx, DB, PASSWORD_ENV};

const PROTOCOL_VIOLATION: &str = "08P01";

pub fn cases() -> Vec<Case<Ctx>> {
    vec![
        case!(bad_input_leaves_other_sessions_working),
        case!(bytes_after_ssl_request_are_refused),
        case!(startup_that_never_completes_times_out),
        case!(newer_protocol_version_is_negotiated_down),
        case!(unreachable_server_is_08001),
        case!(lost_server_is_08006),
        case!(terminated_server_session_passes_the_fatal_error),
    ]
}

async fn check_alive(client: &tokio_postgres::Client) {
    let row = client
        .query_one("SELECT 41 + 1", &[])
        .await
        .expect("the bystander still works");
    assert_eq!(row.get::<_, i32>(0), 42);
}

async fn bad_input_leaves_other_sessions_working(ctx: Arc<Ctx>) {
    let (bystander, connection) = tokio_postgres::connect(&ctx.gateway_config("bystander"), NoTls)
        .await
        .expect("connect");
    tokio::spawn(connection);

    // Garbage before startup: an HTTP request is not a startup packet.
    let mut raw = Raw::connect(ctx.addr).await;
    raw.send(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n").await;
    let msg = raw.recv().await.expect("an error");
    assert_eq!(
        (msg.tag, msg.sqlstate()),
        (b'E', PROTOCOL_VIOLATION.to_owned())
    );
    raw.expect_closed().await;
    check_alive(&bystander).await;

    // A startup packet cut short, then the client goes away.
    let mut raw = Raw::connect(ctx.addr).await;
    raw.send(&[0, 0, 0, 40, 0, 3, 0, 0, b'u', b's']).await;
    drop(raw);
    check_alive(&bystander).await;

    // An oversized message after login.
    let mut raw = Raw::login(ctx.addr, "big", DB).await;
    raw.send(&[b'Q', 0x7f, 0xff, 0xff, 0xff]).await;
    let msg = raw.recv().await.expect("an error");
    assert_eq!(
        (msg.tag, msg.sqlstate()),
        (b'E', PROTOCOL_VIOLATION.to_owned())
    );
    assert_eq!(msg.field(b'S'), "FATAL");
    assert!(msg.field(b'M').contains("exceeds"), "{}", msg.field(b'M'));
    raw.expect_closed().await;
    check_alive(&bystander).await;

    // A message with an invalid length.
    let mut raw = Raw::login(ctx.addr, "short", DB).await;
    raw.send(&[b'Q', 0, 0, 0, 2]).await;
    let msg = raw.recv().await.expect("an error");
    assert_eq!(msg.sqlstate(), PROTOCOL_VIOLATION);
    raw.expect_closed().await;

    // An unknown message type.
    let mut raw = Raw::login(ctx.addr, "unknown", DB).await;
    raw.send(&raw::message(b'Y', b"")).await;
    let msg = raw.recv().await.expect("an error");
    assert_eq!(msg.sqlstate(), PROTOCOL_VIOLATION);
    raw.expect_closed().await;

    // A message truncated mid-body, then the client vanishes.
    let mut raw = Raw::login(ctx.addr, "truncated", DB).await;
    let mut partial = raw::query("SELECT 'never finished'");
    partial.truncate(9);
    raw.send(&partial).await;
    drop(raw);

    // SSLRequest on a gateway without TLS is answered 'N'; GSSENCRequest too.
    let mut raw = Raw::connect(ctx.addr).await;
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f]).await;
    assert_eq!(raw.recv_byte().await, b'N');
    raw.send(&[0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x30]).await;
    assert_eq!(raw.recv_byte().await, b'N');
    raw.startup(0, &[("user", "after_n"), ("database", DB)])
        .await;
    let msgs = raw.recv_until(b'Z').await;
    assert_eq!(msgs[0].tag, b'R');

    check_alive(&bystander).await;
    let log = ctx.gateway.log_text();
    assert!(!log.contains("panicked"), "the gateway panicked:\n{log}");
}

async fn bytes_after_ssl_request_are_refused(ctx: Arc<Ctx>) {
    let ca = ctx.pg.ca().expect("CA");
    let leaf = ca.issue_leaf("gateway-inject", &["localhost", "127.0.0.1"]);
    let tls = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"",
        leaf.cert.display(),
        leaf.key.display()
    );
    let (_gateway, addr) = ctx.start_gateway(SCRAM_ROLE, "tls = \"disable\"", &tls);
    let mut raw = Raw::connect(addr).await;
    let mut bytes = vec![0, 0, 0, 8, 0x04, 0xd2, 0x16, 0x2f];
    bytes.extend_from_slice(&raw::query("SELECT 'injected'"));
    raw.send(&bytes).await;
    let msg = raw.recv().await.expect("an error instead of 'S'");
    assert_eq!(
        (msg.tag, msg.sqlstate()),
        (b'E', PROTOCOL_VIOLATION.to_owned())
    );
    assert!(msg
        .field(b'M')
        .contains("unencrypted data after SSL request"));
    raw.expect_closed().await;
}

async fn startup_that_never_completes_times_out(ctx: Arc<Ctx>) {
    let (_gateway, addr) = ctx.start_gateway(
        SCRAM_ROLE,
        "tls = \"disable\"",
        "[timeouts]\nstartup = \"1s\"",
    );
    let mut raw = Raw::connect(addr).await;
    raw.send(&[0, 0, 0]).await;
    let msg = raw.recv().await.expect("a timeout error");
    assert_eq!((msg.tag, msg.sqlstate()), (b'E', "57014".to_owned()));
    assert!(msg.field(b'M').contains("timeout"));
    raw.expect_closed().await;
}

async fn newer_protocol_version_is_negotiated_down(ctx: Arc<Ctx>) {
    let mut raw = Raw::connect(ctx.addr).await;
    raw.startup(
        2,
        &[
            ("user", "newer"),
            ("database", DB),
            ("_pq_.compression", "on"),
        ],
    )
    .await;
    let msgs = raw.recv_until(b'Z').await;
    assert_eq!(msgs[0].tag, b'v', "NegotiateProtocolVersion first");
    let mut expected = Vec::new();
    expected.extend_from_slice(&0x0003_0000i32.to_be_bytes());
    expected.extend_from_slice(&1i32.to_be_bytes());
    expected.extend_from_slice(b"_pq_.compression\0");
    assert_eq!(msgs[0].body, expected);
    assert_eq!(msgs[1].tag, b'R');
    raw.send(&raw::query("SELECT 1")).await;
    let msgs = raw.recv_until(b'Z').await;
    assert!(msgs.iter().any(|m| m.tag == b'D'));
}

async fn unreachable_server_is_08001(ctx: Arc<Ctx>) {
    let addr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let config = gateway_toml(addr, free_port(), SCRAM_ROLE, "tls = \"disable\"", "");
    let _gateway = Pgveil::start(
        &bin(),
        &config,
        addr,
        &[(PASSWORD_ENV, ctx.pg.password(SCRAM_ROLE))],
    );
    let err = tokio_postgres::connect(
        &format!("host=127.0.0.1 port={} user=x dbname={DB}", addr.port()),
        NoTls,
    )
    .await
    .err()
    .expect("no server to reach");
    assert_eq!(
        err.code(),
        Some(&SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION)
    );
}

async fn lost_server_is_08006(_ctx: Arc<Ctx>) {
    // A cluster of its own: this case kills a server process.
    let pg = crate::blocking(|| PgCluster::start(PgOptions::default())).await;
    let addr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let config = gateway_toml(addr, pg.port(), SCRAM_ROLE, "tls = \"disable\"", "");
    let _gateway = Pgveil::start(
        &bin(),
        &config,
        addr,
        &[(PASSWORD_ENV, pg.password(SCRAM_ROLE))],
    );
    let mut raw = Raw::login(addr, "doomed", "postgres").await;
    let pid = backend_pid(&mut raw).await;
    assert!(crate::harness::proc::send_signal(pid, libc::SIGKILL));
    let msg = raw.recv().await.expect("pgveil reports the loss");
    assert_eq!((msg.tag, msg.sqlstate()), (b'E', "08006".to_owned()));
    assert_eq!(msg.field(b'S'), "FATAL");
    raw.expect_closed().await;
    crate::blocking(move || drop(pg)).await;
}

/// The server process id behind a raw session.
async fn backend_pid(raw: &mut Raw) -> u32 {
    raw.send(&raw::query("SELECT pg_backend_pid()")).await;
    let msgs = raw.recv_until(b'Z').await;
    let row = msgs.iter().find(|m| m.tag == b'D').expect("a row");
    // DataRow: column count (2 bytes), length (4 bytes), text value.
    std::str::from_utf8(&row.body[6..])
        .expect("text")
        .parse()
        .expect("a pid")
}

async fn terminated_server_session_passes_the_fatal_error(ctx: Arc<Ctx>) {
    let mut raw = Raw::login(ctx.addr, "terminated", DB).await;
    let pid = backend_pid(&mut raw).await;
    ctx.pg
        .psql_socket(DB, &format!("SELECT pg_terminate_backend({pid})"));
    // The server's own FATAL passes through, and pgveil adds nothing after it.
    let msg = raw.recv().await.expect("the server's error");
    assert_eq!((msg.tag, msg.sqlstate()), (b'E', "57P01".to_owned()));
    raw.expect_closed().await;
}
