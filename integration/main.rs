//! End-to-end tests: a real PostgreSQL 15, the real `pgveil` binary, real
//! clients (psql, pgbench, tokio-postgres) and raw protocol bytes where no
//! client would send them.
//!
//! One cluster (with TLS) and one default gateway are shared by all cases;
//! cases that need another configuration start a gateway of their own. Every
//! process is stopped by PID when its handle drops.

mod audit;
mod bad_input;
mod cli;
mod core;
mod harness;
mod masking;
mod oidc;
mod policy;
mod raw;
mod tls;
mod tlsclient;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::Arc;

use harness::{free_port, run_cases, PgCluster, PgOptions, Pgveil, SCRAM_ROLE};

/// Database loaded with `testdata/schema.sql`.
pub const DB: &str = "veil";
/// Environment variable the test gateways read the server password from.
pub const PASSWORD_ENV: &str = "PGVEIL_TEST_SERVER_PASSWORD";

/// What every case shares.
pub struct Ctx {
    pub pg: PgCluster,
    pub gateway: Pgveil,
    pub addr: SocketAddr,
}

impl Ctx {
    /// libpq conninfo for the default gateway.
    pub fn gateway_conninfo(&self, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={DB} sslmode=disable",
            self.addr.port()
        )
    }

    /// libpq conninfo straight to the server as the SCRAM role.
    pub fn direct_conninfo(&self) -> String {
        format!(
            "host=127.0.0.1 port={} user={SCRAM_ROLE} dbname={DB} sslmode=disable",
            self.pg.port()
        )
    }

    /// tokio-postgres config string for the default gateway.
    pub fn gateway_config(&self, user: &str) -> String {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={DB}",
            self.addr.port()
        )
    }

    /// Starts a gateway logging in as `role`, with `extra` appended to the
    /// generated configuration (whole tables only).
    pub fn start_gateway(
        &self,
        role: &str,
        server_extra: &str,
        extra: &str,
    ) -> (Pgveil, SocketAddr) {
        let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
            .parse()
            .expect("address");
        let config = gateway_toml(addr, self.pg.port(), role, server_extra, extra);
        let gateway = Pgveil::start(
            &bin(),
            &config,
            addr,
            &[(PASSWORD_ENV, self.pg.password(role))],
        );
        (gateway, addr)
    }
}

/// A gateway configuration: trust auth on `addr`, server login as `role`.
pub fn gateway_toml(
    addr: SocketAddr,
    pg_port: u16,
    role: &str,
    server_extra: &str,
    extra: &str,
) -> String {
    format!(
        r#"listen = ["{addr}"]

[server]
address = "127.0.0.1:{pg_port}"
user = "{role}"
password_env = "{PASSWORD_ENV}"
{server_extra}

[auth]
method = "trust"

{extra}
"#
    )
}

/// The pgveil binary under test.
pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_pgveil"))
}

/// The repository root.
pub fn repo() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// An async block as a boxed case future.
pub async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("blocking task")
}

fn main() -> ExitCode {
    let pg = PgCluster::start(PgOptions::tls());
    pg.create_database(DB);
    pg.load_sql(DB, &repo().join("testdata/schema.sql"));
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let config = gateway_toml(addr, pg.port(), SCRAM_ROLE, "tls = \"disable\"", "");
    let gateway = Pgveil::start(
        &bin(),
        &config,
        addr,
        &[(PASSWORD_ENV, pg.password(SCRAM_ROLE))],
    );
    let ctx = Arc::new(Ctx { pg, gateway, addr });
    let mut cases = Vec::new();
    cases.extend(core::cases());
    cases.extend(tls::cases());
    cases.extend(oidc::cases());
    cases.extend(masking::cases());
    cases.extend(policy::cases());
    cases.extend(audit::cases());
    cases.extend(bad_input::cases());
    cases.extend(cli::cases());
    run_cases(ctx, cases)
}
