//! A raw protocol client for the tests that must send what no driver sends:
//! malformed and oversized messages, bytes after SSLRequest, startups that
//! never finish, FunctionCall, newer protocol versions.

use std::net::SocketAddr;
use std::time::Duration;

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Longest wait for any single answer.
pub const ANSWER_TIMEOUT: Duration = Duration::from_secs(10);

/// A message from the gateway: tag and body.
#[derive(Debug)]
pub struct Msg {
    pub tag: u8,
    pub body: Vec<u8>,
}

impl Msg {
    /// The SQLSTATE of an ErrorResponse.
    pub fn sqlstate(&self) -> String {
        self.field(b'C')
    }

    /// A field of an ErrorResponse or NoticeResponse.
    pub fn field(&self, kind: u8) -> String {
        let mut rest = &self.body[..];
        while let Some((&k, after)) = rest.split_first() {
            if k == 0 {
                break;
            }
            let end = after.iter().position(|&b| b == 0).unwrap_or(after.len());
            if k == kind {
                return String::from_utf8_lossy(&after[..end]).into_owned();
            }
            rest = &after[(end + 1).min(after.len())..];
        }
        String::new()
    }
}

/// A raw connection.
pub struct Raw {
    pub stream: TcpStream,
    buf: BytesMut,
}

impl Raw {
    pub async fn connect(addr: SocketAddr) -> Raw {
        let stream = TcpStream::connect(addr)
            .await
            .expect("connect to the gateway");
        Raw {
            stream,
            buf: BytesMut::new(),
        }
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    /// Sends a StartupMessage for protocol 3.`minor` with `params`.
    pub async fn startup(&mut self, minor: u16, params: &[(&str, &str)]) {
        let mut body = BytesMut::new();
        body.put_i32((3 << 16) | i32::from(minor));
        for (k, v) in params {
            body.put_slice(k.as_bytes());
            body.put_u8(0);
            body.put_slice(v.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        let mut packet = BytesMut::new();
        packet.put_i32(body.len() as i32 + 4);
        packet.put_slice(&body);
        self.send(&packet).await;
    }

    /// Reads one tagged message, or `None` if the connection closed.
    pub async fn recv(&mut self) -> Option<Msg> {
        loop {
            if self.buf.len() >= 5 {
                let len = i32::from_be_bytes([self.buf[1], self.buf[2], self.buf[3], self.buf[4]]);
                let total = len as usize + 1;
                if self.buf.len() >= total {
                    let frame = self.buf.split_to(total);
                    return Some(Msg {
                        tag: frame[0],
                        body: frame[5..].to_vec(),
                    });
                }
            }
            let read = tokio::time::timeout(ANSWER_TIMEOUT, self.stream.read_buf(&mut self.buf))
                .await
                .expect("the gateway answers in time");
            match read {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    /// Reads one raw byte (the answer to SSLRequest or GSSENCRequest).
    pub async fn recv_byte(&mut self) -> u8 {
        tokio::time::timeout(ANSWER_TIMEOUT, self.stream.read_u8())
            .await
            .expect("the gateway answers in time")
            .expect("one byte")
    }

    /// Reads messages until one with `tag`, returning all of them.
    pub async fn recv_until(&mut self, tag: u8) -> Vec<Msg> {
        let mut seen = Vec::new();
        for _ in 0..10_000 {
            let msg = self.recv().await.unwrap_or_else(|| {
                panic!(
                    "connection closed before {:?}; saw {:?}",
                    char::from(tag),
                    seen.iter()
                        .map(|m: &Msg| char::from(m.tag))
                        .collect::<String>()
                )
            });
            let done = msg.tag == tag;
            seen.push(msg);
            if done {
                return seen;
            }
        }
        panic!("no {:?} within 10000 messages", char::from(tag));
    }

    /// Expects the connection to end (EOF) soon.
    pub async fn expect_closed(&mut self) {
        for _ in 0..100 {
            if self.recv().await.is_none() {
                return;
            }
        }
        panic!("the gateway kept the connection open");
    }

    /// Startup as `user` on `database`, through AuthenticationOk to ReadyForQuery.
    pub async fn login(addr: SocketAddr, user: &str, database: &str) -> Raw {
        let mut raw = Raw::connect(addr).await;
        raw.startup(0, &[("user", user), ("database", database)])
            .await;
        let msgs = raw.recv_until(b'Z').await;
        assert_eq!(msgs[0].tag, b'R', "AuthenticationOk comes first");
        raw
    }
}

/// A tagged message with `body`.
pub fn message(tag: u8, body: &[u8]) -> Vec<u8> {
    let mut out = vec![tag];
    out.extend_from_slice(&(body.len() as i32 + 4).to_be_bytes());
    out.extend_from_slice(body);
    out
}

/// A simple-protocol Query.
pub fn query(sql: &str) -> Vec<u8> {
    message(b'Q', format!("{sql}\0").as_bytes())
}
