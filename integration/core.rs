//! The gateway carries real clients faithfully: psql, pgbench and
//! tokio-postgres see what they would see talking to PostgreSQL directly.

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures_util::{future, SinkExt, StreamExt};
use tokio_postgres::{AsyncMessage, NoTls, SimpleQueryMessage};

use crate::harness::pg::{pg_bin_dir, scrub_libpq_env};
use crate::harness::{case, Case, SCRAM_ROLE};
use crate::raw::{self, Raw};
use crate::{blocking, repo, Ctx, DB};

/// How long psql and pgbench runs may take.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(120);

pub fn cases() -> Vec<Case<Ctx>> {
    vec![
        case!(psql_output_is_byte_identical),
        case!(psql_copy_both_ways),
        case!(pgbench_all_modes_without_failures, 300),
        case!(driver_binary_results_and_prepared_statements),
        case!(driver_pipelined_queries),
        case!(driver_transactions),
        case!(driver_copy_in_and_out),
        case!(driver_listen_notify),
        case!(driver_cancel_reaches_only_its_own_query),
        case!(function_call_is_carried),
    ]
}

/// Runs psql with a script file; returns (stdout, stderr).
fn psql_file(conninfo: &str, password: Option<&str>, file: &std::path::Path) -> (String, String) {
    let mut cmd = Command::new(pg_bin_dir().join("psql"));
    scrub_libpq_env(&mut cmd);
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    cmd.args(["-X", "-d", conninfo, "-f"])
        .arg(file)
        .current_dir(repo())
        .stdin(Stdio::null());
    let out = crate::harness::proc::run_bounded(&mut cmd, CLIENT_TIMEOUT);
    (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

async fn psql_output_is_byte_identical(ctx: Arc<Ctx>) {
    let file = repo().join("testdata/queries.sql");
    let direct = ctx.direct_conninfo();
    let password = ctx.pg.password(SCRAM_ROLE).to_owned();
    let through = ctx.gateway_conninfo("alice");
    let (f1, f2) = (file.clone(), file);
    let direct_out = blocking(move || psql_file(&direct, Some(&password), &f1)).await;
    let gateway_out = blocking(move || psql_file(&through, None, &f2)).await;
    assert!(
        direct_out.0.len() > 10_000,
        "the script produced little output"
    );
    assert!(direct_out.1.contains("ERROR"), "the script includes errors");
    assert!(direct_out.0.contains("(3 rows)") || direct_out.0.contains("rows)"));
    assert_eq!(direct_out.0, gateway_out.0, "stdout differs");
    assert_eq!(direct_out.1, gateway_out.1, "stderr differs");
}

async fn psql_copy_both_ways(ctx: Arc<Ctx>) {
    let conninfo = ctx.gateway_conninfo("alice");
    let dir = crate::harness::proc::unique_temp_dir("pgveil-it-copy");
    let out_file = dir.join("orders.csv");
    let script = format!(
        "CREATE TABLE copy_target (LIKE orders);\n\
         \\copy (SELECT * FROM orders ORDER BY id) TO '{out}' WITH (FORMAT csv)\n\
         \\copy copy_target FROM '{out}' WITH (FORMAT csv)\n\
         SELECT count(*) FROM copy_target;\n\
         SELECT count(*) FROM (SELECT * FROM orders EXCEPT SELECT * FROM copy_target) d;\n\
         DROP TABLE copy_target;\n",
        out = out_file.display()
    );
    let script_file = dir.join("copy.sql");
    std::fs::write(&script_file, script).expect("script");
    let (stdout, stderr) = blocking(move || {
        let conninfo = format!("{conninfo} options='-c client_min_messages=warning'");
        psql_file(&conninfo, None, &script_file)
    })
    .await;
    assert!(stderr.is_empty(), "{stderr}");
    let lines: Vec<String> = stdout
        .lines()
        .map(str::trim)
        .filter(|l| l.chars().all(|c| c.is_ascii_digit()) && !l.is_empty())
        .map(str::to_owned)
        .collect();
    let exported = std::fs::read_to_string(&out_file).expect("exported file");
    crate::harness::proc::remove_temp_dir(&dir);
    let rows = exported.lines().count();
    assert!(rows >= 1000, "exported {rows} rows");
    assert_eq!(
        lines,
        vec![rows.to_string(), "0".to_owned()],
        "COPY FROM loaded every row"
    );
}

/// Runs pgbench through the gateway and returns its output.
fn pgbench(port: u16, db: &str, args: &[&str]) -> String {
    let mut cmd = Command::new(pg_bin_dir().join("pgbench"));
    scrub_libpq_env(&mut cmd);
    cmd.args([
        "-h",
        "127.0.0.1",
        "-p",
        &port.to_string(),
        "-U",
        "bench_user",
    ])
    .args(args)
    .arg(db)
    .stdin(Stdio::null());
    let out = crate::harness::proc::run_bounded(&mut cmd, CLIENT_TIMEOUT);
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "pgbench {args:?} failed:\n{text}");
    text
}

async fn pgbench_all_modes_without_failures(ctx: Arc<Ctx>) {
    ctx.pg.create_database("bench");
    let port = ctx.addr.port();
    blocking(move || {
        let init = pgbench(port, "bench", &["-i", "-s", "2", "-q"]);
        assert!(init.contains("done"), "{init}");
        for mode in ["simple", "extended", "prepared"] {
            let out = pgbench(
                port,
                "bench",
                &["-S", "-n", "-c", "8", "-j", "2", "-t", "300", "-M", mode],
            );
            assert!(
                out.contains("number of transactions actually processed: 2400/2400"),
                "{mode}: {out}"
            );
            assert!(
                out.contains("number of failed transactions: 0 "),
                "{mode}: {out}"
            );
        }
    })
    .await;
}

async fn connect(ctx: &Ctx, user: &str) -> tokio_postgres::Client {
    let (client, connection) = tokio_postgres::connect(&ctx.gateway_config(user), NoTls)
        .await
        .expect("connect through the gateway");
    tokio::spawn(connection);
    client
}

async fn driver_binary_results_and_prepared_statements(ctx: Arc<Ctx>) {
    let client = connect(&ctx, "driver").await;
    let row = client
        .query_one(
            "SELECT id, full_name, balance::float8, is_active, created_at, birth_date, \
             external_ref::text, 42::int2, 7::int8, 1.5::float4, '\\x00ff'::bytea \
             FROM customers WHERE id = $1",
            &[&1i32],
        )
        .await
        .expect("typed row");
    assert_eq!(row.get::<_, i32>(0), 1);
    assert!(!row.get::<_, String>(1).is_empty());
    let _: Option<f64> = row.get(2);
    let _: Option<bool> = row.get(3);
    let _: Option<std::time::SystemTime> = row.get(4);
    assert_eq!(row.get::<_, i16>(7), 42);
    assert_eq!(row.get::<_, i64>(8), 7);
    assert_eq!(row.get::<_, f32>(9), 1.5);
    assert_eq!(row.get::<_, Vec<u8>>(10), vec![0u8, 255]);

    let statement = client
        .prepare("SELECT full_name FROM customers WHERE id = $1")
        .await
        .expect("prepare");
    let direct = ctx
        .pg
        .psql_socket(DB, "SELECT full_name FROM customers WHERE id = 17");
    for i in 0..500 {
        let id: i32 = if i % 2 == 0 { 17 } else { 18 };
        let row = client.query_one(&statement, &[&id]).await.expect("execute");
        if id == 17 {
            assert_eq!(row.get::<_, String>(0), direct);
        }
    }
}

async fn driver_pipelined_queries(ctx: Arc<Ctx>) {
    let client = connect(&ctx, "driver").await;
    let statement = client
        .prepare("SELECT id, email FROM customers WHERE id = $1")
        .await
        .expect("prepare");
    // tokio-postgres sends all of these before reading any answer.
    let ids: Vec<i32> = (1..=50).collect();
    let params: Vec<[&(dyn tokio_postgres::types::ToSql + Sync); 1]> =
        ids.iter().map(|id| [id as _]).collect();
    let queries = params.iter().map(|p| client.query_one(&statement, p));
    let rows = future::try_join_all(queries).await.expect("pipelined");
    for (row, id) in rows.iter().zip(&ids) {
        assert_eq!(row.get::<_, i32>(0), *id);
    }
    // An error in the middle of a pipeline fails only its own query.
    let bad = client.query("SELECT 1/0", &[]);
    let good = client.query("SELECT 2", &[]);
    let (bad, good) = future::join(bad, good).await;
    assert_eq!(
        bad.expect_err("division by zero").code(),
        Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
    );
    assert_eq!(good.expect("after the error").len(), 1);
}

async fn driver_transactions(ctx: Arc<Ctx>) {
    let mut client = connect(&ctx, "driver").await;
    client
        .batch_execute("CREATE TABLE tx_probe (v int)")
        .await
        .expect("create");
    let tx = client.transaction().await.expect("begin");
    tx.execute("INSERT INTO tx_probe VALUES (1)", &[])
        .await
        .expect("insert");
    tx.rollback().await.expect("rollback");
    let tx = client.transaction().await.expect("begin");
    tx.execute("INSERT INTO tx_probe VALUES (2)", &[])
        .await
        .expect("insert");
    tx.commit().await.expect("commit");
    // A failed statement aborts the transaction as on the server.
    let tx = client.transaction().await.expect("begin");
    assert!(tx
        .execute("INSERT INTO tx_probe VALUES (1/0)", &[])
        .await
        .is_err());
    let err = tx
        .execute("SELECT 1", &[])
        .await
        .expect_err("aborted transaction");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::IN_FAILED_SQL_TRANSACTION)
    );
    drop(tx);
    let values: Vec<i32> = client
        .query("SELECT v FROM tx_probe", &[])
        .await
        .expect("select")
        .iter()
        .map(|r| r.get(0))
        .collect();
    client
        .batch_execute("DROP TABLE tx_probe")
        .await
        .expect("drop");
    assert_eq!(values, vec![2]);
}

async fn driver_copy_in_and_out(ctx: Arc<Ctx>) {
    let client = connect(&ctx, "driver").await;
    client
        .batch_execute("CREATE TABLE copy_probe (id int, note text)")
        .await
        .expect("create");
    let sink = client
        .copy_in("COPY copy_probe FROM STDIN")
        .await
        .expect("copy in");
    let mut sink = std::pin::pin!(sink);
    let mut data = String::new();
    for i in 0..5000 {
        data.push_str(&format!("{i}\tnote {i} ünïcode\n"));
    }
    sink.send(bytes::Bytes::from(data.clone()))
        .await
        .expect("send");
    let loaded = sink.finish().await.expect("finish");
    assert_eq!(loaded, 5000);

    let stream = client
        .copy_out("COPY (SELECT * FROM copy_probe ORDER BY id) TO STDOUT")
        .await
        .expect("copy out");
    let chunks: Vec<bytes::Bytes> = stream.map(|c| c.expect("chunk")).collect().await;
    let out: Vec<u8> = chunks.concat();
    client
        .batch_execute("DROP TABLE copy_probe")
        .await
        .expect("drop");
    assert_eq!(String::from_utf8(out).expect("utf-8"), data);
}

async fn driver_listen_notify(ctx: Arc<Ctx>) {
    let (listener, mut connection) =
        tokio_postgres::connect(&ctx.gateway_config("listener"), NoTls)
            .await
            .expect("connect");
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let driver = tokio::spawn(async move {
        let mut messages = futures_util::stream::poll_fn(move |cx| connection.poll_message(cx));
        while let Some(message) = messages.next().await {
            match message {
                Ok(AsyncMessage::Notification(n)) => {
                    let _ = tx.send((n.channel().to_owned(), n.payload().to_owned()));
                }
                Ok(_) => {}
                Err(_) => break,
            }
        }
    });
    listener
        .batch_execute("LISTEN veil_events")
        .await
        .expect("listen");
    let notifier = connect(&ctx, "notifier").await;
    notifier
        .batch_execute("NOTIFY veil_events, 'hello through pgveil'")
        .await
        .expect("notify");
    let got = tokio::time::timeout(Duration::from_secs(10), rx.recv())
        .await
        .expect("notification in time")
        .expect("notification");
    assert_eq!(
        got,
        ("veil_events".to_owned(), "hello through pgveil".to_owned())
    );

    // NOTICE messages reach the client too.
    let messages = notifier
        .simple_query("DO $$ BEGIN RAISE NOTICE 'notice through pgveil'; END $$")
        .await
        .expect("do");
    assert!(messages
        .iter()
        .any(|m| matches!(m, SimpleQueryMessage::CommandComplete(_))));
    drop(listener);
    driver.abort();
}

async fn driver_cancel_reaches_only_its_own_query(ctx: Arc<Ctx>) {
    let victim = connect(&ctx, "victim").await;
    let bystander = connect(&ctx, "bystander").await;
    let token = victim.cancel_token();
    let bystander_token = bystander.cancel_token();
    let sleeper = tokio::spawn(async move { victim.simple_query("SELECT pg_sleep(30)").await });
    // Let the query reach the server before cancelling it.
    tokio::time::sleep(Duration::from_millis(300)).await;
    let long_bystander = tokio::spawn(async move {
        let result = bystander.simple_query("SELECT pg_sleep(1)").await;
        (result, bystander)
    });
    let started = Instant::now();
    token
        .cancel_query(NoTls)
        .await
        .expect("cancel request sent");
    let result = tokio::time::timeout(Duration::from_secs(5), sleeper)
        .await
        .expect("the query ends after the cancel")
        .expect("join");
    let took = started.elapsed();
    let err = result.expect_err("the query was cancelled");
    assert_eq!(
        err.code(),
        Some(&tokio_postgres::error::SqlState::QUERY_CANCELED)
    );
    assert!(took < Duration::from_secs(1), "cancel took {took:?}");
    // The other session's query was not touched.
    let (bystander_result, _bystander) = long_bystander.await.expect("join");
    bystander_result.expect("the bystander's query completed");
    drop(bystander_token);
}

async fn function_call_is_carried(ctx: Arc<Ctx>) {
    let oid: u32 = ctx
        .pg
        .psql_socket(DB, "SELECT 'int4pl'::regproc::oid")
        .trim()
        .parse()
        .expect("oid");
    let mut raw = Raw::login(ctx.addr, "fastpath", DB).await;
    let mut body = Vec::new();
    body.extend_from_slice(&oid.to_be_bytes());
    body.extend_from_slice(&1i16.to_be_bytes()); // one format code
    body.extend_from_slice(&1i16.to_be_bytes()); // binary
    body.extend_from_slice(&2i16.to_be_bytes()); // two arguments
    for arg in [40i32, 2] {
        body.extend_from_slice(&4i32.to_be_bytes());
        body.extend_from_slice(&arg.to_be_bytes());
    }
    body.extend_from_slice(&1i16.to_be_bytes()); // binary result
    raw.send(&raw::message(b'F', &body)).await;
    let msgs = raw.recv_until(b'Z').await;
    assert_eq!(msgs[0].tag, b'V', "FunctionCallResponse");
    assert_eq!(msgs[0].body, [0, 0, 0, 4, 0, 0, 0, 42]);
}
