//! TLS on both sides and every way pgveil can log in to the server.

use std::sync::Arc;

use crate::harness::{case, psql, Case, TestCa, CLEAR_ROLE, MD5_ROLE, SCRAM_ROLE, TRUST_ROLE};
use crate::{blocking, Ctx, DB};

pub fn cases() -> Vec<Case<Ctx>> {
    vec![
        case!(tls_verify_full_on_both_sides),
        case!(server_certificate_from_unknown_ca_is_refused),
        case!(every_server_auth_method_logs_in),
    ]
}

async fn tls_verify_full_on_both_sides(ctx: Arc<Ctx>) {
    let ca = ctx.pg.ca().expect("the cluster has a CA");
    let leaf = ca.issue_leaf("gateway", &["localhost", "127.0.0.1"]);
    let server = format!(
        "tls = \"verify-full\"\nca_file = \"{}\"",
        ctx.pg.ca_pem().display()
    );
    let client_tls = format!(
        "[tls]\ncert = \"{}\"\nkey = \"{}\"\nrequired = true",
        leaf.cert.display(),
        leaf.key.display()
    );
    let (gateway, addr) = ctx.start_gateway(SCRAM_ROLE, &server, &client_tls);
    let ca_pem = ctx.pg.ca_pem().to_owned();
    let port = addr.port();
    let (verified, plain) = blocking(move || {
        let conninfo = format!(
            "host=localhost port={port} user=tls_client dbname={DB} sslmode=verify-full sslrootcert={}",
            ca_pem.display()
        );
        let verified = psql(
            &conninfo,
            None,
            "SELECT ssl, current_user FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
        );
        let plain = psql(&format!("host=127.0.0.1 port={port} user=x dbname={DB} sslmode=disable"), None, "SELECT 1");
        (verified, plain)
    })
    .await;
    // The client verified pgveil's certificate; the server saw TLS from pgveil,
    // which verified the server's certificate and logged in with SCRAM.
    assert_eq!(
        verified.expect("verify-full through pgveil"),
        format!("t|{SCRAM_ROLE}")
    );
    let refused = plain.expect_err("plaintext is refused when TLS is required");
    assert!(refused.contains("requires TLS"), "{refused}");
    assert!(
        gateway.log_text().contains("tls=\"TLSv1_3\""),
        "the session log names the TLS version"
    );
}

async fn server_certificate_from_unknown_ca_is_refused(ctx: Arc<Ctx>) {
    let other = crate::harness::proc::unique_temp_dir("pgveil-it-ca");
    let stranger = TestCa::new(&other);
    let server = format!(
        "tls = \"verify-full\"\nca_file = \"{}\"",
        stranger.ca_pem().display()
    );
    let (gateway, addr) = ctx.start_gateway(SCRAM_ROLE, &server, "");
    let config = format!("host=127.0.0.1 port={} user=x dbname={DB}", addr.port());
    let err = tokio_postgres::connect(&config, tokio_postgres::NoTls)
        .await
        .err()
        .expect("the gateway cannot verify the server");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::SQLCLIENT_UNABLE_TO_ESTABLISH_SQLCONNECTION)
    );
    assert!(gateway.log_text().contains("server connection failed"));
    crate::harness::proc::remove_temp_dir(&other);
}

async fn every_server_auth_method_logs_in(ctx: Arc<Ctx>) {
    for (role, tls) in [
        (SCRAM_ROLE, "disable"),
        (SCRAM_ROLE, "require"),
        (MD5_ROLE, "prefer"),
        (CLEAR_ROLE, "require"),
        (TRUST_ROLE, "disable"),
    ] {
        let (_gateway, addr) = ctx.start_gateway(role, &format!("tls = \"{tls}\""), "");
        let conninfo = format!(
            "host=127.0.0.1 port={} user=someone dbname={DB}",
            addr.port()
        );
        let sql = "SELECT current_user, coalesce((SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()), false)";
        let out = blocking(move || psql(&conninfo, None, sql)).await;
        let expected_tls = if tls == "disable" { "f" } else { "t" };
        assert_eq!(
            out.expect(role),
            format!("{role}|{expected_tls}"),
            "{role} over tls={tls}"
        );
    }
}
