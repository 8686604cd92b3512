//! OIDC sign-in against a real identity provider (the npm package
//! `oidc-provider` on loopback, HTTPS with the tests' CA): real tokens, real
//! key rotation, and every kind of bad token.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use crate::harness::idp::{Idp, IdpClient, AUDIENCE};
use crate::harness::{case, free_port, psql, Case, Pgveil, CLEAR_ROLE, SCRAM_ROLE};
use crate::raw::{self, Raw};
use crate::tlsclient::MakeRustls;
use crate::{bin, blocking, Ctx, DB};

/// Clients the IdP knows: two mapped groups, one unmapped.
fn clients() -> Vec<IdpClient> {
    vec![
        IdpClient::new("alice", "alice", &["analysts", "readers"]),
        IdpClient::new("bob", "bob", &["dba"]),
        IdpClient::new("carol", "carol", &["interns"]),
    ]
}

pub fn cases() -> Vec<Case<Ctx>> {
    vec![
        case!(oidc_sign_in_maps_groups_to_roles, 240),
        case!(token_expiry_ends_the_session, 240),
    ]
}

/// A gateway trusting `idp`, with TLS towards clients; `extra_auth` lines
/// are added to `[auth]`.
fn start_gateway(ctx: &Ctx, idp: &Idp, extra_auth: &str) -> (Pgveil, SocketAddr) {
    let ca = ctx.pg.ca().expect("CA");
    let leaf = ca.issue_leaf("gateway-oidc", &["localhost", "127.0.0.1"]);
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let config = format!(
        r#"listen = ["{addr}"]

[tls]
cert = "{cert}"
key = "{key}"

[server]
address = "127.0.0.1:{pg_port}"
user = "{SCRAM_ROLE}"
password_env = "SCRAM_PASSWORD"
tls = "disable"

[auth]
method = "oidc"
{extra_auth}

[[auth.issuers]]
issuer = "{issuer}"
audiences = ["{AUDIENCE}"]
ca_file = "{ca}"

[[roles]]
group = "analysts"
role = "{SCRAM_ROLE}"
password_env = "SCRAM_PASSWORD"

[[roles]]
group = "dba"
role = "{CLEAR_ROLE}"
password_env = "CLEAR_PASSWORD"
"#,
        cert = leaf.cert.display(),
        key = leaf.key.display(),
        pg_port = ctx.pg.port(),
        issuer = idp.issuer(),
        ca = idp.ca_pem().display(),
    );
    let envs = [
        ("SCRAM_PASSWORD", ctx.pg.password(SCRAM_ROLE)),
        ("CLEAR_PASSWORD", ctx.pg.password(CLEAR_ROLE)),
        ("RUST_LOG", "pgveil=debug"),
    ];
    let gateway = Pgveil::start(&bin(), &config, addr, &envs);
    assert!(
        gateway.wait_for_log("issuer keys fetched", Duration::from_secs(20)),
        "the gateway fetched the IdP's keys:\n{}",
        gateway.log_text()
    );
    (gateway, addr)
}

fn tls_conninfo(ctx: &Ctx, addr: SocketAddr, user: &str) -> String {
    format!(
        "host=localhost port={} user={user} dbname={DB} sslmode=verify-full sslrootcert={}",
        addr.port(),
        ctx.pg.ca_pem().display()
    )
}

async fn oidc_sign_in_maps_groups_to_roles(ctx: Arc<Ctx>) {
    // The IdP helpers block briefly (curl, node); the runner has threads to spare.
    crate::harness::idp::ensure_npm_deps();
    let idp = Idp::start(ctx.pg.ca().expect("CA"), &clients());
    let (gateway, addr) = start_gateway(&ctx, &idp, "");

    // psql with the token in PGPASSWORD, over verified TLS, for two groups
    // mapped to two server roles.
    for (client, role) in [("alice", SCRAM_ROLE), ("bob", CLEAR_ROLE)] {
        let token = idp.token(client);
        let conninfo = tls_conninfo(&ctx, addr, client);
        let out = blocking(move || psql(&conninfo, Some(&token), "SELECT current_user")).await;
        assert_eq!(out.expect("psql signs in with a token"), role, "{client}");
    }

    // tokio-postgres over TLS with the token as its password.
    for (client, role) in [("alice", SCRAM_ROLE), ("bob", CLEAR_ROLE)] {
        let token = idp.token(client);
        let config = format!(
            "host=localhost port={} user={client} dbname={DB} sslmode=require password={token}",
            addr.port()
        );
        let (db, connection) = tokio_postgres::connect(&config, MakeRustls::new(ctx.pg.ca_pem()))
            .await
            .expect("tokio-postgres signs in with a token");
        tokio::spawn(connection);
        let row = db
            .query_one("SELECT current_user::text", &[])
            .await
            .expect("query");
        assert_eq!(row.get::<_, String>(0), role);
    }

    // ES256 tokens from the same IdP.
    let token = idp.token_es256("alice");
    let conninfo = tls_conninfo(&ctx, addr, "alice");
    let out = blocking(move || psql(&conninfo, Some(&token), "SELECT 1")).await;
    assert_eq!(out.expect("ES256 token"), "1");

    // Key rotation: tokens signed with the new key are accepted at once
    // (an unknown key id makes pgveil fetch the key set again).
    let rotation = idp.rotate(false);
    let token = idp.token("alice");
    let kid = crate::harness::idp::jwt_header(&token)["kid"]
        .as_str()
        .unwrap_or_default()
        .to_owned();
    assert_eq!(kid, rotation.rs256_kid, "the new token uses the new key");
    let conninfo = tls_conninfo(&ctx, addr, "alice");
    let out = blocking(move || psql(&conninfo, Some(&token), "SELECT 1")).await;
    assert_eq!(out.expect("a token signed with the rotated key"), "1");

    // Every kind of bad token is refused with its reason.
    let expected = [
        ("expired", "expired"),
        ("wrong_audience", "wrong audience"),
        ("wrong_issuer", "unknown issuer"),
        ("tampered", "bad signature"),
        ("alg_none", "signature algorithm not accepted"),
        ("hs256_with_public_key", "signature algorithm not accepted"),
        ("unknown_kid", "unknown signing key"),
        ("not_yet_valid", "not valid yet"),
    ];
    let mut tokens_seen = Vec::new();
    for (kind, reason) in expected {
        let token = idp.forge(kind, "alice");
        tokens_seen.push(token.clone());
        let conninfo = tls_conninfo(&ctx, addr, "alice");
        let err = blocking(move || psql(&conninfo, Some(&token), "SELECT 1"))
            .await
            .expect_err(kind);
        assert!(
            err.contains(&format!("OIDC token rejected: {reason}")),
            "{kind}: {err}"
        );
    }
    let junk = "not-a-token".to_owned();
    let conninfo = tls_conninfo(&ctx, addr, "alice");
    let err = blocking(move || psql(&conninfo, Some(&junk), "SELECT 1"))
        .await
        .expect_err("junk");
    assert!(err.contains("not a well-formed token"), "{err}");

    // Refused identities: no mapping for the group; a user name that is not
    // the token's.
    let token = idp.token("carol");
    let conninfo = tls_conninfo(&ctx, addr, "carol");
    let err = blocking(move || psql(&conninfo, Some(&token), "SELECT 1"))
        .await
        .expect_err("carol");
    assert!(err.contains("no database role is granted"), "{err}");
    let token = idp.token("alice");
    tokens_seen.push(token.clone());
    let conninfo = tls_conninfo(&ctx, addr, "mallory");
    let err = blocking(move || psql(&conninfo, Some(&token), "SELECT 1"))
        .await
        .expect_err("mallory");
    assert!(err.contains("does not match the token's identity"), "{err}");

    // A token sent without TLS is refused before it is even asked for.
    let token = idp.token("alice");
    tokens_seen.push(token.clone());
    let plain = format!(
        "host=127.0.0.1 port={} user=alice dbname={DB} sslmode=disable",
        addr.port()
    );
    let err = blocking(move || psql(&plain, Some(&token), "SELECT 1"))
        .await
        .expect_err("cleartext");
    assert!(err.contains("only over TLS"), "{err}");

    // Neither tokens nor their signatures reach the log.
    let log = gateway.log_text();
    assert!(
        log.contains("reason=\"expired\""),
        "refusals are logged with their reason"
    );
    for token in &tokens_seen {
        let signature = token.rsplit('.').next().unwrap_or_default();
        assert!(!log.contains(token.as_str()), "a token reached the log");
        if signature.len() > 16 {
            assert!(
                !log.contains(signature),
                "a token signature reached the log"
            );
        }
    }
}

async fn token_expiry_ends_the_session(ctx: Arc<Ctx>) {
    crate::harness::idp::ensure_npm_deps();
    let idp = Idp::start_with_ttl(ctx.pg.ca().expect("CA"), &clients(), Duration::from_secs(4));
    let (_gateway, addr) = start_gateway(
        &ctx,
        &idp,
        "allow_cleartext_on_loopback = true\nleeway = \"0s\"",
    );
    let token = idp.token("alice");
    let exp = crate::harness::idp::jwt_claims(&token)["exp"]
        .as_u64()
        .expect("exp");

    // A raw session on loopback without TLS, as the configuration allows.
    let mut raw = Raw::connect(addr).await;
    raw.startup(0, &[("user", "alice"), ("database", DB)]).await;
    let ask = raw.recv().await.expect("a password request");
    assert_eq!((ask.tag, &ask.body[..]), (b'R', &[0, 0, 0, 3][..]));
    raw.send(&raw::message(b'p', format!("{token}\0").as_bytes()))
        .await;
    raw.recv_until(b'Z').await;

    // A statement that runs across the expiry may finish ...
    let now = crate::harness::idp::unix_now();
    let sleep = exp.saturating_sub(now) + 2;
    raw.send(&raw::query(&format!(
        "SELECT pg_sleep({sleep}), 'finished'"
    )))
    .await;
    let msgs = raw.recv_until(b'Z').await;
    assert!(
        msgs.iter().any(|m| m.tag == b'D'),
        "the running statement finished"
    );
    // ... then the session ends with a FATAL error naming the token.
    let msg = raw.recv().await.expect("the expiry error");
    assert_eq!((msg.tag, msg.sqlstate()), (b'E', "28000".to_owned()));
    assert_eq!(msg.field(b'S'), "FATAL");
    assert!(
        msg.field(b'M').contains("token has expired"),
        "{}",
        msg.field(b'M')
    );
    assert!(msg.field(b'H').contains("fresh token"));
    raw.expect_closed().await;
}
