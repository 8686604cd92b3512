//! The audit archive: sessions and statements driven through pgveil are
//! read back from the Parquet files with DuckDB (the Python package, as
//! auditors would), after a clean stop, after a SIGKILL in the middle of a
//! pgbench run, with a spool that cannot be written, and through a local
//! S3-compatible server that is down for a while.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use tokio_postgres::NoTls;

use crate::harness::clients::{clients_dir, python};
use crate::harness::pg::{pg_bin_dir, scrub_libpq_env};
use crate::harness::proc::{
    run_bounded, terminate_child, unique_temp_dir, wait_child, wait_for_port,
};
use crate::harness::{case, free_port, Case, Pgveil, SCRAM_ROLE};
use crate::{bin, blocking, gateway_toml, repo, Ctx, DB, PASSWORD_ENV};

pub fn cases() -> Vec<Case<Ctx>> {
    vec![
        case!(archive_records_every_session_and_statement, 240),
        case!(archive_survives_sigkill_during_pgbench, 300),
        case!(unwritable_spool_refuses_statements),
        case!(upload_reaches_object_store_after_outage, 300),
    ]
}

/// Literals that must never reach the archive.
const SECRET_LITERAL: &str = "sekret-literal-8812";
const SECRET_PASSWORD: &str = "pw-secret-7731";

/// Bound on DuckDB runs and on waits for files to appear.
const DUCKDB_TIMEOUT: Duration = Duration::from_secs(120);

/// A gateway with masking, policy and the archive in `dir`; trust users
/// ana (analysts, masked) and dora (dba); mallory has no role.
fn audit_gateway(ctx: &Ctx, dir: &Path, audit_extra: &str) -> (Pgveil, SocketAddr) {
    let auth = format!(
        "trust_groups = {{ ana = [\"analysts\"], dora = [\"dba\"], mallory = [\"visitors\"] }}\n\n\
         [[roles]]\ngroup = \"analysts\"\nrole = \"{SCRAM_ROLE}\"\npassword_env = \"{PASSWORD_ENV}\"\n\n\
         [[roles]]\ngroup = \"dba\"\nrole = \"{SCRAM_ROLE}\"\npassword_env = \"{PASSWORD_ENV}\""
    );
    let tables = format!(
        "[masking]\nrules_dir = \"{}\"\n\n\
         [policy]\nrules_dir = \"{}\"\n\n\
         [audit]\ndir = \"{}\"\ninstance = \"it-gw\"\n{audit_extra}\n",
        repo().join("masking-rules").display(),
        repo().join("testdata/policy-rules").display(),
        dir.display(),
    );
    crate::masking::gateway_with(ctx, &auth, &tables)
}

fn config(addr: SocketAddr, user: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} dbname={DB}",
        addr.port()
    )
}

async fn connect(addr: SocketAddr, user: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&config(addr, user), NoTls)
        .await
        .unwrap_or_else(|e| panic!("{user} connects: {e}"));
    tokio::spawn(connection);
    client
}

/// Runs DuckDB over the archive in `root` (views `sessions` and
/// `statements`) and returns each query's rows as JSON.
fn duckdb(root: &Path, queries: &[&str]) -> Vec<serde_json::Value> {
    let mut cmd = Command::new(python());
    cmd.arg(clients_dir().join("archive_query.py"))
        .arg(root)
        .args(queries)
        .stdin(Stdio::null());
    let out = run_bounded(&mut cmd, DUCKDB_TIMEOUT);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "duckdb failed: {}\n{stdout}",
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
        .lines()
        .map(|l| serde_json::from_str(l).expect("one JSON document per query"))
        .collect()
}

/// The single number a query returns.
fn number(v: &serde_json::Value) -> i64 {
    v[0][0]
        .as_i64()
        .unwrap_or_else(|| panic!("not a number: {v}"))
}

/// Every `*.parquet` file under `root`; no temporary file may be visible
/// there.
pub fn parquet_files(root: &Path) -> Vec<PathBuf> {
    let mut found = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries.flatten() {
            let path = entry.path();
            if path.is_dir() {
                stack.push(path);
            } else if path.extension().is_some_and(|e| e == "parquet") {
                let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
                assert!(!name.starts_with('.'), "temporary file visible: {path:?}");
                found.push(path);
            }
        }
    }
    found
}

async fn archive_records_every_session_and_statement(ctx: Arc<Ctx>) {
    let dir = unique_temp_dir("pgveil-it-audit");
    let (mut gateway, addr) = audit_gateway(&ctx, &dir, "");

    let ana = connect(addr, "ana").await;
    let rows = ana
        .simple_query("SELECT id, email FROM customers WHERE id <= 3 ORDER BY id")
        .await
        .expect("masked read");
    let returned = rows
        .iter()
        .filter(|m| matches!(m, tokio_postgres::SimpleQueryMessage::Row(_)))
        .count();
    assert_eq!(returned, 3, "three rows");
    let refused = ana
        .simple_query("CREATE TABLE leak AS SELECT email FROM customers")
        .await
        .expect_err("copying a covered column is refused");
    assert_eq!(refused.code().map(|c| c.code()), Some("42501"));
    drop(ana);

    let dora = connect(addr, "dora").await;
    dora.simple_query(&format!("SELECT '{SECRET_LITERAL}' AS x"))
        .await
        .expect("literal select");
    let failed = dora.simple_query("SELECT 1/0").await.expect_err("error");
    assert_eq!(failed.code().map(|c| c.code()), Some("22012"));
    let failed = dora
        .simple_query(&format!(
            "ALTER ROLE no_such_role PASSWORD '{SECRET_PASSWORD}'"
        ))
        .await
        .expect_err("no such role");
    assert_eq!(failed.code().map(|c| c.code()), Some("42704"));
    let statement = dora
        .prepare("SELECT id FROM orders WHERE id = $1")
        .await
        .expect("prepare");
    for id in 1_000_001..=1_000_003i64 {
        dora.query(&statement, &[&id]).await.expect("execute");
    }
    let copy = dora
        .copy_out("COPY (SELECT id FROM orders ORDER BY id LIMIT 5) TO STDOUT")
        .await
        .expect("copy out");
    futures_util::pin_mut!(copy);
    let mut copied = Vec::new();
    while let Some(chunk) = futures_util::StreamExt::next(&mut copy).await {
        copied.extend_from_slice(&chunk.expect("copy rows"));
    }
    assert_eq!(copied.iter().filter(|&&b| b == b'\n').count(), 5);
    drop(dora);

    let refused = tokio_postgres::connect(&config(addr, "mallory"), NoTls).await;
    let Err(refused) = refused else {
        panic!("mallory has no role and must be refused")
    };
    assert_eq!(refused.code().map(|c| c.code()), Some("28000"));

    // Sessions end in the background: give the relay tasks a moment, then
    // stop, which closes and compacts the open spool segment.
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(gateway.stop().is_some(), "gateway stops on SIGTERM");
    let archive = dir.join("archive");
    assert!(
        !parquet_files(&archive).is_empty(),
        "Parquet files published"
    );

    let results = blocking(move || {
        duckdb(
            &archive,
            &[
                // 0: sessions by outcome (the harness's readiness probe, a
                // connection without a startup packet, has no user name).
                "SELECT outcome, count(*) FROM sessions WHERE user_name <> '' \
                 GROUP BY outcome ORDER BY outcome",
                // 1: the refused attempt.
                "SELECT user_name, refusal_reason, end_reason FROM sessions \
                 WHERE outcome = 'refused' AND user_name <> ''",
                // 2: ana's statements in order.
                "SELECT decision, rules, masked_columns, rows, class, text FROM statements \
                 WHERE user_name = 'ana' ORDER BY started_at, seq",
                // 3: dora's failed statements.
                "SELECT sqlstate, error_message, text FROM statements \
                 WHERE user_name = 'dora' AND sqlstate IS NOT NULL ORDER BY seq",
                // 4: the prepared statement's executions.
                "SELECT protocol, count(*), count(DISTINCT fingerprint), min(text), sum(rows) \
                 FROM statements WHERE text = 'SELECT id FROM orders WHERE id = $1' \
                 GROUP BY protocol",
                // 5: the COPY.
                "SELECT class, rows, relations FROM statements WHERE text LIKE 'COPY%'",
                // 6: every text the archive holds, to search for secrets.
                "SELECT string_agg(coalesce(text, '') || ' ' || coalesce(error_message, ''), \
                 ' | ') FROM statements",
                // 7: statement counts per session agree with the rows.
                "SELECT count(*) FROM sessions s WHERE outcome = 'established' AND \
                 statements <> (SELECT count(*) FROM statements t \
                 WHERE t.session_id = s.session_id)",
                // 8: the columns auditors rely on are filled in.
                "SELECT count(*) FROM sessions WHERE outcome = 'established' AND \
                 (instance <> 'it-gw' OR auth_method <> 'trust' OR server_role IS NULL \
                  OR database <> 'veil' OR ended_at < started_at OR bytes_to_client = 0)",
            ],
        )
    })
    .await;

    assert_eq!(
        results[0],
        serde_json::json!([["established", 2], ["refused", 1]]),
        "two sessions and one refused attempt"
    );
    let refused = &results[1][0];
    assert_eq!(refused[0], "mallory");
    assert!(
        refused[1]
            .as_str()
            .is_some_and(|r| r.contains("no database role")),
        "refusal reason: {refused}"
    );

    let ana = results[2].as_array().expect("rows");
    assert_eq!(ana.len(), 2, "ana's statements: {ana:?}");
    assert_eq!(ana[0][0], "masked");
    assert!(
        ana[0][2].as_array().is_some_and(|m| m
            .iter()
            .any(|c| c.as_str().is_some_and(|c| c.starts_with("email")))),
        "masked columns name email: {}",
        ana[0][2]
    );
    assert_eq!(ana[0][3], 3, "rows returned");
    assert_eq!(ana[0][4], "read");
    assert_eq!(
        ana[0][5],
        "SELECT id, email FROM customers WHERE id <= ? ORDER BY id"
    );
    assert_eq!(ana[1][0], "refused");
    assert!(
        ana[1][1].as_array().is_some_and(|r| r
            .iter()
            .any(|r| r.as_str().is_some_and(|r| r.starts_with("masking-default")))),
        "refusing rule recorded: {}",
        ana[1][1]
    );

    let failed = results[3].as_array().expect("rows");
    assert_eq!(failed.len(), 2, "dora's errors: {failed:?}");
    assert_eq!(failed[0][0], "22012");
    assert_eq!(failed[0][1], "division by zero");
    assert_eq!(failed[1][0], "42704");
    assert_eq!(failed[1][2], "ALTER ROLE no_such_role PASSWORD ?");

    assert_eq!(
        results[4],
        serde_json::json!([["execute", 3, 1, "SELECT id FROM orders WHERE id = $1", 3]]),
        "each execution of the prepared statement is a row"
    );
    assert_eq!(results[5][0][0], "copy");
    assert_eq!(results[5][0][1], 5);

    let texts = results[6][0][0].as_str().unwrap_or_default().to_owned();
    for secret in [SECRET_LITERAL, SECRET_PASSWORD] {
        assert!(!texts.contains(secret), "{secret} reached the archive");
    }
    assert_eq!(number(&results[7]), 0, "statement counts match");
    assert_eq!(number(&results[8]), 0, "session columns are filled in");

    // The README's queries for auditors run as written and find rows.
    let queries = readme_queries();
    assert_eq!(queries.len(), 4, "README queries: {queries:?}");
    let archive = dir.join("archive");
    let answers = blocking(move || {
        let refs: Vec<&str> = queries.iter().map(String::as_str).collect();
        duckdb(&archive, &refs)
    })
    .await;
    for answer in &answers {
        assert!(
            answer.as_array().is_some_and(|rows| !rows.is_empty()),
            "a README query found nothing: {answers:?}"
        );
    }
    crate::harness::proc::remove_temp_dir(&dir);
}

/// The `sql` blocks of the README's "Queries for auditors", less the view
/// definitions (the query script makes its own).
fn readme_queries() -> Vec<String> {
    let readme = std::fs::read_to_string(repo().join("README.md")).expect("README.md");
    let section = readme
        .split("### Queries for auditors")
        .nth(1)
        .and_then(|rest| rest.split("\n## ").next())
        .expect("the README has queries for auditors");
    section
        .split("```sql")
        .skip(1)
        .filter_map(|block| block.split("```").next())
        .map(|q| q.trim().trim_end_matches(';').to_owned())
        .filter(|q| !q.starts_with("CREATE VIEW"))
        .collect()
}

/// pgbench's count of completed transactions.
fn processed(output: &str) -> u64 {
    output
        .lines()
        .find_map(|l| l.strip_prefix("number of transactions actually processed: "))
        .and_then(|rest| rest.split(|c: char| !c.is_ascii_digit()).next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no transaction count in pgbench output:\n{output}"))
}

fn pgbench_command(port: u16, user: &str, db: &str, args: &[&str]) -> Command {
    let mut cmd = Command::new(pg_bin_dir().join("pgbench"));
    scrub_libpq_env(&mut cmd);
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string(), "-U", user])
        .args(args)
        .arg(db)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    cmd
}

async fn archive_survives_sigkill_during_pgbench(ctx: Arc<Ctx>) {
    const BENCH_DB: &str = "auditbench";
    ctx.pg.create_database(BENCH_DB);
    let mut init = pgbench_command(
        ctx.pg.port(),
        SCRAM_ROLE,
        BENCH_DB,
        &["-i", "-s", "1", "-q"],
    );
    init.env("PGPASSWORD", ctx.pg.password(SCRAM_ROLE));
    let out = run_bounded(&mut init, Duration::from_secs(120));
    assert!(out.status.success(), "pgbench -i: {out:?}");

    let dir = unique_temp_dir("pgveil-it-audit-crash");
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let audit = format!(
        "[audit]\ndir = \"{}\"\ninstance = \"crash-gw\"\n",
        dir.display()
    );
    let toml = gateway_toml(addr, ctx.pg.port(), SCRAM_ROLE, "tls = \"disable\"", &audit);
    let envs = [(PASSWORD_ENV, ctx.pg.password(SCRAM_ROLE))];
    let mut gateway = Pgveil::start(&bin(), &toml, addr, &envs);

    let bench = pgbench_command(
        addr.port(),
        "bench_user",
        BENCH_DB,
        &["-S", "-n", "-c", "4", "-j", "2", "-T", "20"],
    );
    let output = blocking(move || {
        let mut bench = bench;
        let child = bench.spawn().expect("pgbench starts");
        std::thread::sleep(Duration::from_secs(4));
        assert!(gateway.kill9().is_some(), "gateway killed");
        (finish(child), gateway)
    })
    .await;
    let (output, _killed) = output;
    let done = processed(&output);
    assert!(done > 100, "pgbench ran before the kill: {done}\n{output}");

    // Restart on the same archive: recovery compacts the spool.
    let mut gateway = Pgveil::start(&bin(), &toml, addr, &envs);
    assert!(gateway.stop().is_some(), "restarted gateway stops");
    let archive = dir.join("archive");
    let files = parquet_files(&archive);
    assert!(!files.is_empty(), "recovered files published");
    let results = blocking(move || {
        duckdb(
            &archive,
            &[
                "SELECT count(*) FROM statements \
                 WHERE text LIKE 'SELECT abalance FROM pgbench_accounts WHERE aid = %' \
                 AND sqlstate IS NULL",
                "SELECT count(*) FROM sessions WHERE end_reason = 'gateway_restart'",
            ],
        )
    })
    .await;
    let archived = number(&results[0]);
    assert!(
        archived >= i64::try_from(done).unwrap_or(i64::MAX),
        "pgbench completed {done} transactions, the archive holds {archived}"
    );
    assert!(
        number(&results[1]) >= 4,
        "sessions cut by the crash are closed as gateway_restart"
    );
    crate::harness::proc::remove_temp_dir(&dir);
}

/// Waits (bounded) for a piped child and returns its output.
fn finish(mut child: Child) -> String {
    let status = wait_child(&mut child, Duration::from_secs(60));
    if status.is_none() {
        terminate_child(&mut child, libc::SIGKILL, Duration::from_secs(5));
    }
    let mut text = String::new();
    if let Some(mut out) = child.stdout.take() {
        let _ = std::io::Read::read_to_string(&mut out, &mut text);
    }
    if let Some(mut err) = child.stderr.take() {
        let _ = std::io::Read::read_to_string(&mut err, &mut text);
    }
    text
}

async fn unwritable_spool_refuses_statements(ctx: Arc<Ctx>) {
    let dir = unique_temp_dir("pgveil-it-audit-full");
    // One row per segment: every statement opens a new spool file; the
    // writer thread's path (every_batch) is the one under test.
    let (gateway, addr) = audit_gateway(&ctx, &dir, "file_max_rows = 1\nfsync = \"every_batch\"\n");
    let dora = connect(addr, "dora").await;
    dora.simple_query("SELECT 1").await.expect("recorded");

    // The spool folder becomes a file: no new segment can be created
    // there, for root as for anyone.
    let spool = dir.join("spool");
    let aside = dir.join("spool-aside");
    std::fs::rename(&spool, &aside).expect("move spool away");
    std::fs::write(&spool, b"not a directory").expect("block the spool path");

    let deadline = Instant::now() + Duration::from_secs(20);
    let refusal = loop {
        match dora.simple_query("SELECT 2").await {
            Err(e) => break e,
            Ok(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(200)).await
            }
            Ok(_) => panic!("statements still run with an unwritable spool"),
        }
    };
    assert_eq!(
        refusal.code().map(|c| c.code()),
        Some("58030"),
        "{refusal:?}"
    );
    let message = refusal.as_db_error().map(|e| e.message().to_owned());
    assert!(
        message
            .as_deref()
            .is_some_and(|m| m.contains("audit spool")),
        "the message says why: {message:?}"
    );
    let hint = refusal
        .as_db_error()
        .and_then(|e| e.hint().map(str::to_owned));
    assert!(
        hint.as_deref()
            .is_some_and(|h| h.starts_with("Retry later")),
        "{hint:?}"
    );
    assert!(gateway.log_text().contains("spool"), "logged loudly");

    // The disk comes back: statements run again.
    std::fs::remove_file(&spool).expect("unblock");
    std::fs::rename(&aside, &spool).expect("restore spool");
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match dora.simple_query("SELECT 3").await {
            Ok(_) => break,
            Err(_) if Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(300)).await
            }
            Err(e) => panic!("statements stay refused after the spool recovered: {e}"),
        }
    }
    drop(gateway);
    crate::harness::proc::remove_temp_dir(&dir);
}

/// A local S3-compatible server (moto's server mode) on loopback.
struct S3Server {
    child: Child,
}

impl S3Server {
    fn start(port: u16) -> S3Server {
        let mut cmd = Command::new(python());
        cmd.args([
            "-m",
            "moto.server",
            "-H",
            "127.0.0.1",
            "-p",
            &port.to_string(),
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd.spawn().expect("moto server starts");
        crate::harness::proc::register_child(child.id());
        let addr: SocketAddr = format!("127.0.0.1:{port}").parse().expect("address");
        assert!(
            wait_for_port(addr, Duration::from_secs(60)),
            "S3 server listens"
        );
        S3Server { child }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        terminate_child(&mut self.child, libc::SIGTERM, Duration::from_secs(10));
        crate::harness::proc::forget_child(self.child.id());
    }
}

/// Runs the S3 helper script: `mkbucket` or `list` against the endpoint.
fn s3(port: u16, command: &str) -> Vec<String> {
    let mut cmd = Command::new(python());
    cmd.arg(clients_dir().join("s3_bucket.py"))
        .arg(format!("http://127.0.0.1:{port}"))
        .arg(command)
        .envs(S3_ENV)
        .stdin(Stdio::null());
    let out = run_bounded(&mut cmd, DUCKDB_TIMEOUT);
    assert!(out.status.success(), "s3 {command}: {out:?}");
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// Credentials for the test server (moto accepts any).
const S3_ENV: [(&str, &str); 2] = [
    ("AWS_ACCESS_KEY_ID", "pgveil-test"),
    ("AWS_SECRET_ACCESS_KEY", "pgveil-test-secret"),
];

async fn upload_reaches_object_store_after_outage(ctx: Arc<Ctx>) {
    let dir = unique_temp_dir("pgveil-it-audit-s3");
    let port = free_port();
    let addr: SocketAddr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let audit = format!(
        "[audit]\ndir = \"{}\"\ninstance = \"s3-gw\"\nfile_max_age = \"1s\"\n\n\
         [audit.s3]\nbucket = \"audit\"\nprefix = \"pgveil\"\n\
         endpoint = \"http://127.0.0.1:{port}\"\nallow_http = true\n",
        dir.display()
    );
    let toml = gateway_toml(addr, ctx.pg.port(), SCRAM_ROLE, "tls = \"disable\"", &audit);
    let mut envs = vec![(PASSWORD_ENV, ctx.pg.password(SCRAM_ROLE))];
    envs.extend(S3_ENV);
    let mut gateway = Pgveil::start(&bin(), &toml, addr, &envs);

    // The object store is down: statements still run, files wait locally.
    let client = connect(addr, "uploader").await;
    for i in 0..5 {
        client
            .simple_query(&format!("SELECT {i}"))
            .await
            .expect("statement");
    }
    drop(client);
    let archive = dir.join("archive");
    let deadline = Instant::now() + Duration::from_secs(30);
    while parquet_files(&archive).is_empty() {
        assert!(
            Instant::now() < deadline,
            "no file published while S3 was down"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert!(
        !parquet_files(&archive).is_empty(),
        "local files are kept while uploads fail"
    );

    // The server comes up with its bucket: the files arrive, and the local
    // copies go.
    let keys = blocking(move || {
        let _server = S3Server::start(port);
        s3(port, "mkbucket");
        let deadline = Instant::now() + Duration::from_secs(90);
        loop {
            let keys = s3(port, "list");
            let statements = keys
                .iter()
                .any(|k| k.starts_with("pgveil/statements/date="));
            let sessions = keys.iter().any(|k| k.starts_with("pgveil/sessions/date="));
            if statements && sessions {
                break keys;
            }
            assert!(Instant::now() < deadline, "files never arrived: {keys:?}");
            std::thread::sleep(Duration::from_millis(500));
        }
    })
    .await;
    assert!(
        keys.iter()
            .all(|k| k.ends_with(".parquet") && k.contains("s3-gw")),
        "keys: {keys:?}"
    );
    let deadline = Instant::now() + Duration::from_secs(30);
    while !parquet_files(&archive).is_empty() {
        assert!(Instant::now() < deadline, "local copies stay after upload");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    gateway.stop();
    crate::harness::proc::remove_temp_dir(&dir);
}
