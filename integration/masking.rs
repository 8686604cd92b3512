//! Inline masking: covered values never reach a covered identity, on every
//! path rows take (text and binary, simple and extended protocol, views,
//! cursors, SQL PREPARE/EXECUTE, an Execute that was never described), and
//! rules reload while sessions run.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use tokio_postgres::types::{FromSql, Type};
use tokio_postgres::NoTls;

use crate::harness::proc::unique_temp_dir;
use crate::harness::{case, psql, Case, Pgveil, SCRAM_ROLE};
use crate::raw::{self, Raw};
use crate::{bin, blocking, gateway_toml, repo, Ctx, DB, PASSWORD_ENV};

/// The HMAC key of the `hash` rule in the shipped rules.
const MASK_KEY: &str = "integration-test-mask-key-0123456789";
/// Rows the checks read.
const ROWS: i32 = 200;

pub fn cases() -> Vec<Case<Ctx>> {
    vec![
        case!(psql_paths_never_show_covered_values),
        case!(driver_binary_results_are_masked_and_typed),
        case!(execute_without_describe_is_masked),
        case!(rules_reload_while_sessions_run),
        case!(bad_rule_file_is_refused_with_its_name),
        case!(data_team_tools_lint_and_test_rules),
        case!(orm_stacks_read_masked_rows_typed, 400),
        case!(every_function_keeps_every_type_valid, 300),
    ]
}

/// A gateway with trust auth, `ana` in `analysts` (masked) and `dora` in
/// `dba` (exempt), and the rules of `rules_dir`.
fn masked_gateway(ctx: &Ctx, rules_dir: &Path) -> (Pgveil, SocketAddr) {
    gateway_with(
        ctx,
        "trust_groups = { ana = [\"analysts\"], dora = [\"dba\"] }",
        &format!(
            "[masking]\nrules_dir = \"{}\"\ncatalog_refresh = \"5s\"\n",
            rules_dir.display()
        ),
    )
}

/// A trust-auth gateway with `auth` lines added to its `[auth]` table and
/// `tables` after it, with the server password and the shipped rules' hash
/// key in its environment.
pub fn gateway_with(ctx: &Ctx, auth: &str, tables: &str) -> (Pgveil, SocketAddr) {
    let addr: SocketAddr = format!("127.0.0.1:{}", crate::harness::free_port())
        .parse()
        .expect("address");
    let extra = format!("{auth}\n\n{tables}");
    let config = gateway_toml(addr, ctx.pg.port(), SCRAM_ROLE, "tls = \"disable\"", &extra);
    let gateway = Pgveil::start(
        &bin(),
        &config,
        addr,
        &[
            (PASSWORD_ENV, ctx.pg.password(SCRAM_ROLE)),
            ("PGVEIL_MASK_KEY", MASK_KEY),
        ],
    );
    (gateway, addr)
}

fn conninfo(addr: SocketAddr, user: &str) -> String {
    format!(
        "host=127.0.0.1 port={} user={user} dbname={DB} sslmode=disable",
        addr.port()
    )
}

/// Clear values of the covered columns, read straight from the server.
fn clear_values(ctx: &Ctx) -> Vec<String> {
    let out = ctx.pg.psql_socket(
        DB,
        &format!(
            "SELECT concat_ws('|', email, card_number, national_id, full_name, phone) \
             FROM customers WHERE id <= {ROWS}"
        ),
    );
    let values: Vec<String> = out
        .lines()
        .flat_map(|l| l.split('|'))
        .map(str::trim)
        .filter(|v| v.len() >= 6)
        .map(str::to_owned)
        .collect();
    assert!(
        values.len() > ROWS as usize * 3,
        "clear values read: {}",
        values.len()
    );
    values
}

fn assert_hidden(what: &str, output: &str, clear: &[String]) {
    if let Some(v) = clear.iter().find(|v| output.contains(v.as_str())) {
        panic!("{what}: a covered clear value reached the client: {v}");
    }
}

async fn psql_paths_never_show_covered_values(ctx: Arc<Ctx>) {
    let (gateway, addr) = masked_gateway(&ctx, &repo().join("masking-rules"));
    let clear = clear_values(&ctx);
    let statements = [
        format!("SELECT * FROM customers WHERE id <= {ROWS} ORDER BY id"),
        format!(
            "SELECT c.email AS contact, c.card_number AS c FROM customers c WHERE id <= {ROWS}"
        ),
        format!("SELECT * FROM customer_contacts WHERE id <= {ROWS}"),
        format!(
            "WITH x AS (SELECT email, national_id FROM customers) SELECT * FROM x LIMIT {ROWS}"
        ),
        format!("SELECT * FROM (SELECT full_name, phone FROM customers) s LIMIT {ROWS}"),
        format!(
            "BEGIN; DECLARE cur CURSOR FOR SELECT * FROM customers ORDER BY id; \
             FETCH {ROWS} FROM cur; CLOSE cur; COMMIT"
        ),
        format!(
            "BEGIN; DECLARE bcur BINARY CURSOR FOR SELECT email, national_id FROM customers \
             ORDER BY id; FETCH {ROWS} FROM bcur; COMMIT"
        ),
        format!(
            "PREPARE p AS SELECT email, national_id FROM customers WHERE id <= $1; \
             EXECUTE p({ROWS})"
        ),
    ];
    for sql in &statements {
        let info = conninfo(addr, "ana");
        let sql2 = sql.clone();
        let out = blocking(move || psql(&info, None, &sql2)).await;
        let out = out.unwrap_or_else(|e| panic!("{sql}: {e}"));
        assert!(!out.trim().is_empty(), "{sql}: no rows");
        assert_hidden(sql, &out, &clear);
    }

    // The functions keep the shape the rules promise.
    let info = conninfo(addr, "ana");
    let out = blocking(move || {
        psql(
            &info,
            None,
            "SELECT email, card_number, birth_date FROM customers WHERE id = 1",
        )
    })
    .await
    .expect("masked row");
    let fields: Vec<&str> = out.trim().split('|').collect();
    assert!(
        fields[0].starts_with('*') && fields[0].contains('@'),
        "{out}"
    );
    assert!(fields[1].starts_with("XXXX"), "{out}");
    assert!(fields[2].ends_with("-01-01"), "{out}");

    // COPY TO STDOUT in text and CSV is masked column by column; binary
    // COPY is refused.
    let total = ctx.pg.psql_socket(DB, "SELECT count(*) FROM customers");
    let total: usize = total.trim().parse().expect("count");
    for sql in [
        "COPY customers TO STDOUT",
        "COPY (SELECT id, email, notes, national_id FROM customers) TO STDOUT WITH (FORMAT csv, HEADER)",
        "COPY customers (full_name, card_number, city) TO STDOUT WITH CSV DELIMITER ';'",
    ] {
        let info = conninfo(addr, "ana");
        let out = blocking(move || psql(&info, None, sql))
            .await
            .unwrap_or_else(|e| panic!("{sql}: {e}"));
        let header = usize::from(sql.contains("HEADER"));
        if sql.contains("notes") {
            // Notes hold newlines, which CSV keeps inside quotes.
            assert!(out.lines().count() > total + header, "{sql}");
        } else {
            assert_eq!(out.lines().count(), total + header, "{sql}");
        }
        assert_hidden(sql, &out, &clear);
    }
    let info = conninfo(addr, "ana");
    let sql = "COPY customers TO STDOUT WITH (FORMAT binary)";
    let err = blocking(move || psql(&info, None, sql))
        .await
        .expect_err(sql);
    assert!(err.contains("COPY TO STDOUT is refused"), "{err}");
    assert_hidden(sql, &err, &clear);

    // The exempt group sees what the server holds, COPY included.
    let sql = format!("SELECT email, national_id FROM customers WHERE id <= {ROWS} ORDER BY id");
    let direct = ctx.pg.psql_socket(DB, &sql);
    let info = conninfo(addr, "dora");
    let through = blocking(move || psql(&info, None, &sql))
        .await
        .expect("dora");
    assert_eq!(direct.trim(), through.trim());
    let info = conninfo(addr, "dora");
    let copied = blocking(move || psql(&info, None, "COPY customers (email) TO STDOUT"))
        .await
        .expect("dora copy");
    assert!(copied.contains('@'));
    drop(gateway);
}

/// Any value, as the bytes the server sent in binary format.
struct Raw8(Option<Vec<u8>>);

impl<'a> FromSql<'a> for Raw8 {
    fn from_sql(_: &Type, raw: &'a [u8]) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw8(Some(raw.to_vec())))
    }
    fn from_sql_null(_: &Type) -> Result<Self, Box<dyn std::error::Error + Sync + Send>> {
        Ok(Raw8(None))
    }
    fn accepts(_: &Type) -> bool {
        true
    }
}

const BINARY_SQL: &str = "SELECT id, email, card_number, national_id, full_name, birth_date, \
     balance, ip_address, city FROM customers WHERE id <= $1 ORDER BY id";

async fn binary_rows(config: &str) -> Vec<Vec<Option<Vec<u8>>>> {
    let (client, conn) = tokio_postgres::connect(config, NoTls)
        .await
        .expect("connect");
    let task = tokio::spawn(conn);
    let statement = client.prepare(BINARY_SQL).await.expect("prepare");
    let mut last = Vec::new();
    // Re-executed many times: the plan comes from the cached description.
    for _ in 0..20 {
        let rows = client.query(&statement, &[&ROWS]).await.expect("query");
        last = rows
            .iter()
            .map(|r| (0..r.len()).map(|i| r.get::<_, Raw8>(i).0).collect())
            .collect();
    }
    drop(client);
    let _ = task.await;
    last
}

async fn driver_binary_results_are_masked_and_typed(ctx: Arc<Ctx>) {
    let (gateway, addr) = masked_gateway(&ctx, &repo().join("masking-rules"));
    let config = |user: &str| {
        format!(
            "host=127.0.0.1 port={} user={user} dbname={DB}",
            addr.port()
        )
    };
    let direct = format!(
        "host=127.0.0.1 port={} user={SCRAM_ROLE} password={} dbname={DB}",
        ctx.pg.port(),
        ctx.pg.password(SCRAM_ROLE)
    );
    let clear = binary_rows(&direct).await;
    let masked = binary_rows(&config("ana")).await;
    let exempt = binary_rows(&config("dora")).await;
    assert_eq!(clear.len(), ROWS as usize);
    assert_eq!(exempt, clear, "the exempt group sees the server's bytes");
    assert_eq!(masked.len(), clear.len());
    for (c, m) in clear.iter().zip(&masked) {
        assert_eq!(c[0], m[0], "id is not covered");
        assert_eq!(c[8], m[8], "city is not covered");
        // Bucketed balances and truncated dates may equal the clear value;
        // every other covered column must differ.
        for col in [1, 2, 3, 4, 7] {
            if let (Some(cv), Some(mv)) = (&c[col], &m[col]) {
                assert_ne!(cv, mv, "column {col} passed in clear");
            }
        }
        // Types still decode: text is UTF-8, a date is 4 bytes, inet keeps
        // its header.
        for col in [1, 2, 3, 4] {
            if let Some(v) = &m[col] {
                std::str::from_utf8(v).expect("masked text is UTF-8");
            }
        }
        if let Some(v) = &m[5] {
            assert_eq!(v.len(), 4, "date");
        }
        if let Some(v) = &m[7] {
            assert!(v.len() >= 4 && (v[0] == 2 || v[0] == 3), "inet: {v:?}");
        }
        // The text of a binary value never holds the clear text.
        for col in 1..=4 {
            if let (Some(cv), Some(mv)) = (&c[col], &m[col]) {
                assert!(!mv.windows(cv.len()).any(|w| w == &cv[..]), "column {col}");
            }
        }
    }
    // The hash is deterministic: the same national id, the same output.
    let again = binary_rows(&config("ana")).await;
    assert_eq!(again, masked);
    drop(gateway);
}

/// Parse, Bind, Execute and Sync without any Describe, as some drivers
/// send on re-execution: pgveil must still know the row shape.
async fn execute_without_describe_is_masked(ctx: Arc<Ctx>) {
    let (gateway, addr) = masked_gateway(&ctx, &repo().join("masking-rules"));
    let clear = clear_values(&ctx);
    let mut conn = Raw::login(addr, "ana", DB).await;
    let mut batch = Vec::new();
    let sql = format!("SELECT email, card_number FROM customers WHERE id <= {ROWS}");
    batch.extend(raw::message(b'P', format!("s1\0{sql}\0\0\0").as_bytes()));
    // Pipelined: three portals, text, binary and text, before one Sync.
    for format in [0u8, 1, 0] {
        let mut bind = b"\0s1\0\0\0\0\0\0\x01\0".to_vec();
        bind.push(format);
        batch.extend(raw::message(b'B', &bind));
        batch.extend(raw::message(b'E', b"\0\0\0\0\0"));
    }
    batch.extend(raw::message(b'S', b""));
    conn.send(&batch).await;
    let msgs = conn.recv_until(b'Z').await;
    let tags: String = msgs.iter().map(|m| char::from(m.tag)).collect();
    let rows = msgs.iter().filter(|m| m.tag == b'D').count();
    assert_eq!(rows, 3 * ROWS as usize, "tags: {tags}");
    assert!(
        !tags.contains('T') && !tags.contains('n'),
        "pgveil's own Describe leaked: {tags}"
    );
    assert!(tags.starts_with("12") && tags.ends_with("CZ"), "{tags}");
    let bytes: Vec<u8> = msgs.iter().flat_map(|m| m.body.clone()).collect();
    assert_hidden(
        "execute without describe",
        &String::from_utf8_lossy(&bytes),
        &clear,
    );
    drop(gateway);
}

fn copy_rules(to: &Path) {
    std::fs::create_dir_all(to).expect("rules dir");
    for entry in std::fs::read_dir(repo().join("masking-rules")).expect("rules") {
        let path = entry.expect("entry").path();
        if path.extension().is_some_and(|e| e == "toml") {
            std::fs::copy(&path, to.join(path.file_name().expect("name"))).expect("copy");
        }
    }
}

async fn query_one(client: &tokio_postgres::Client, sql: &str) -> Option<String> {
    let row = client.query_one(sql, &[]).await.expect(sql);
    row.get(0)
}

async fn rules_reload_while_sessions_run(ctx: Arc<Ctx>) {
    let dir: PathBuf = unique_temp_dir("pgveil-rules");
    copy_rules(&dir);
    let (gateway, addr) = masked_gateway(&ctx, &dir);
    let config = format!("host=127.0.0.1 port={} user=ana dbname={DB}", addr.port());
    let (client, conn) = tokio_postgres::connect(&config, NoTls)
        .await
        .expect("connect");
    let task = tokio::spawn(conn);
    let sql = "SELECT email FROM customers WHERE id = 1";
    let clear = ctx.pg.psql_socket(DB, sql).trim().to_owned();
    let first = query_one(&client, sql).await.expect("email");
    assert_ne!(first, clear);
    assert!(first.contains('@'), "email keeps its domain: {first}");

    // A new rule set: e-mail addresses become NULL. The running session
    // applies it from its next statement.
    let rules = std::fs::read_to_string(dir.join("customers.toml")).expect("read");
    let changed = rules.replacen("function = \"email\"", "function = \"null\"", 1);
    std::fs::write(dir.join("customers.toml"), changed).expect("write");
    assert!(
        gateway.wait_for_log("masking rules reloaded", Duration::from_secs(20)),
        "no reload seen"
    );
    assert_eq!(query_one(&client, sql).await, None, "the new rule applies");

    // A broken file is refused and the rules in force stay.
    std::fs::write(
        dir.join("zz-broken.toml"),
        "[[rule]]\nname = \"oops\"\nfunction = 1\n",
    )
    .expect("write");
    assert!(
        gateway.wait_for_log("masking rules not reloaded", Duration::from_secs(20)),
        "no refusal seen"
    );
    assert!(gateway.log_text().contains("zz-broken.toml"));
    assert_eq!(query_one(&client, sql).await, None, "the old rules stay");
    drop(client);
    let _ = task.await;
    drop(gateway);
    crate::harness::proc::remove_temp_dir(&dir);
}

async fn bad_rule_file_is_refused_with_its_name(ctx: Arc<Ctx>) {
    let dir = unique_temp_dir("pgveil-bad-rules");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("pii.toml"),
        "[[rule]]\nname = \"ssn\"\ncolumns = [\"customers.national_id\"]\nfunction = \"blur\"\n",
    )
    .expect("write");
    let addr: SocketAddr = "127.0.0.1:1".parse().expect("address");
    let extra = format!("\n[masking]\nrules_dir = \"{}\"\n", dir.display());
    let config = gateway_toml(addr, ctx.pg.port(), SCRAM_ROLE, "", &extra);
    let config_dir = unique_temp_dir("pgveil-bad-rules-config");
    std::fs::create_dir_all(&config_dir).expect("dir");
    let file = config_dir.join("pgveil.toml");
    std::fs::write(&file, config).expect("config");
    let out = blocking(move || {
        let mut cmd = std::process::Command::new(bin());
        cmd.arg("check")
            .arg("--config")
            .arg(&file)
            .env(PASSWORD_ENV, "unused");
        crate::harness::proc::run_bounded(&mut cmd, Duration::from_secs(30))
    })
    .await;
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!out.status.success(), "{text}");
    assert!(
        text.contains("pii.toml")
            && text.contains("rule \"ssn\"")
            && text.contains("unknown function"),
        "{text}"
    );
    crate::harness::proc::remove_temp_dir(&dir);
    crate::harness::proc::remove_temp_dir(&config_dir);
}

fn run_pgveil(args: &[&str], envs: &[(&str, &str)]) -> (bool, String) {
    let mut cmd = std::process::Command::new(bin());
    cmd.args(args).current_dir(repo());
    for (k, v) in envs {
        cmd.env(k, v);
    }
    let out = crate::harness::proc::run_bounded(&mut cmd, Duration::from_secs(60));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    (out.status.success(), text)
}

/// `pgveil rules test` runs the shipped fixtures without a database, and
/// `pgveil check` lints the rules against the live schema.
async fn data_team_tools_lint_and_test_rules(ctx: Arc<Ctx>) {
    let (ok, text) = blocking(|| {
        run_pgveil(
            &["rules", "test", "masking-rules"],
            &[("PGVEIL_MASK_KEY", MASK_KEY)],
        )
    })
    .await;
    assert!(ok, "{text}");
    assert!(text.contains("4 passed, 0 failed"), "{text}");

    let dir = unique_temp_dir("pgveil-lint");
    copy_rules(&dir.join("rules"));
    let check = |rules: &Path| {
        let addr: SocketAddr = "127.0.0.1:1".parse().expect("address");
        let extra = format!(
            "trust_groups = {{ ana = [\"analysts\"], dora = [\"dba\"] }}\n\n\
             [masking]\nrules_dir = \"{}\"\n",
            rules.display()
        );
        let server = format!("tls = \"disable\"\ndatabases = {{ {DB} = \"{DB}\" }}");
        gateway_toml(addr, ctx.pg.port(), SCRAM_ROLE, &server, &extra)
    };
    std::fs::write(dir.join("good.toml"), check(&dir.join("rules"))).expect("config");
    let password = ctx.pg.password(SCRAM_ROLE).to_owned();
    let good = dir.join("good.toml").display().to_string();
    let pw = password.clone();
    let (ok, text) = blocking(move || {
        run_pgveil(
            &["check", "--config", &good],
            &[(PASSWORD_ENV, &pw), ("PGVEIL_MASK_KEY", MASK_KEY)],
        )
    })
    .await;
    assert!(ok, "{text}");
    assert!(text.contains("every rule matches the schema"), "{text}");

    std::fs::write(
        dir.join("rules/typo.toml"),
        "[[rule]]\nname = \"typo\"\ncolumns = [\"customers.emial\"]\nfunction = \"redact\"\n\
         only_groups = [\"contractors\"]\n",
    )
    .expect("typo");
    let bad = dir.join("good.toml").display().to_string();
    let (ok, text) = blocking(move || {
        run_pgveil(
            &["check", "--config", &bad],
            &[(PASSWORD_ENV, &password), ("PGVEIL_MASK_KEY", MASK_KEY)],
        )
    })
    .await;
    assert!(!ok, "{text}");
    assert!(
        text.contains("public.customers.emial does not exist"),
        "{text}"
    );
    assert!(text.contains("group \"contractors\""), "{text}");
    crate::harness::proc::remove_temp_dir(&dir);
}

/// Runs a client script; its JSON output.
fn run_client(mut cmd: std::process::Command) -> serde_json::Value {
    cmd.stdin(std::process::Stdio::null());
    let out = crate::harness::proc::run_bounded(&mut cmd, Duration::from_secs(120));
    assert!(
        out.status.success(),
        "{cmd:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("client JSON")
}

/// Checks a masked client result against the clear one, section by
/// section: same rows, same types where both are non-NULL, the covered
/// columns changed, no clear value anywhere.
fn compare_client(clear: &serde_json::Value, masked: &serde_json::Value, sections: &[&str]) {
    const COVERED: [&str; 4] = ["full_name", "email", "card_number", "national_id"];
    let columns: Vec<&str> = clear["columns"]
        .as_array()
        .expect("columns")
        .iter()
        .map(|c| c.as_str().expect("name"))
        .collect();
    for section in sections {
        let (c_rows, m_rows) = (
            clear[section].as_array().expect("rows"),
            masked[section].as_array().expect("rows"),
        );
        assert_eq!(c_rows.len(), m_rows.len(), "{section}");
        assert!(!c_rows.is_empty(), "{section}");
        for (c_row, m_row) in c_rows.iter().zip(m_rows) {
            for (i, name) in columns.iter().enumerate() {
                let (c, m) = (&c_row[i], &m_row[i]);
                if c["value"].is_null() || m["value"].is_null() {
                    continue;
                }
                assert_eq!(c["type"], m["type"], "{section}.{name}: the type is kept");
                if COVERED.contains(name) {
                    assert_ne!(c["value"], m["value"], "{section}.{name} passed in clear");
                }
                if *name == "id" || *name == "created_at" {
                    assert_eq!(c["value"], m["value"], "{section}.{name} is not covered");
                }
            }
        }
    }
    let text = masked.to_string();
    for row in clear[sections[0]].as_array().expect("rows") {
        for (i, name) in columns.iter().enumerate() {
            if let (true, Some(v)) = (COVERED.contains(name), row[i]["value"].as_str()) {
                assert!(
                    !text.contains(v),
                    "{name}: a clear value reached the client"
                );
            }
        }
    }
}

/// SQLAlchemy on psycopg (text results, and a psycopg binary cursor) and
/// node-postgres (plain and named prepared queries) read masked rows,
/// correctly typed, with no change to the applications.
async fn orm_stacks_read_masked_rows_typed(ctx: Arc<Ctx>) {
    use crate::harness::clients;
    let (gateway, addr) = masked_gateway(&ctx, &repo().join("masking-rules"));
    let python = blocking(clients::python).await;
    let (node, node_path) = blocking(clients::node).await;
    let script = clients::clients_dir();
    let password = ctx.pg.password(SCRAM_ROLE).to_owned();
    let (pg_port, gw_port) = (ctx.pg.port().to_string(), addr.port().to_string());

    let py = |port: &str, user: &str, password: Option<&str>| {
        let mut cmd = std::process::Command::new(&python);
        cmd.arg(script.join("orm_sqlalchemy.py"))
            .args(["127.0.0.1", port, user, DB]);
        if let Some(p) = password {
            cmd.arg(p);
        }
        cmd
    };
    let clear_cmd = py(&pg_port, SCRAM_ROLE, Some(&password));
    let masked_cmd = py(&gw_port, "ana", None);
    let exempt_cmd = py(&gw_port, "dora", None);
    let clear = blocking(move || run_client(clear_cmd)).await;
    let masked = blocking(move || run_client(masked_cmd)).await;
    let exempt = blocking(move || run_client(exempt_cmd)).await;
    compare_client(&clear, &masked, &["orm", "binary"]);
    assert_eq!(
        clear, exempt,
        "the exempt group reads what the server holds"
    );

    let js = |port: &str, user: &str, password: &str| {
        let mut cmd = std::process::Command::new(&node);
        cmd.env("NODE_PATH", &node_path)
            .arg(script.join("node_pg.cjs"))
            .arg(format!(
                "postgresql://{user}:{password}@127.0.0.1:{port}/{DB}?sslmode=disable"
            ));
        cmd
    };
    let clear_cmd = js(&pg_port, SCRAM_ROLE, &password);
    let masked_cmd = js(&gw_port, "ana", "unused");
    let clear = blocking(move || run_client(clear_cmd)).await;
    let masked = blocking(move || run_client(masked_cmd)).await;
    compare_client(&clear, &masked, &["plain", "named", "again"]);
    drop(gateway);
}

/// Columns of every type masking supports, and rows with ordinary, edge
/// and non-ASCII values and NULLs.
const TYPES_TABLE: &str = "
DROP TABLE IF EXISTS mask_types;
CREATE TABLE mask_types (
    id int, c_bool bool, c_bytea bytea, c_name name, c_int8 int8, c_int2 int2,
    c_int4 int4, c_text text, c_json json, c_float4 float4, c_float8 float8,
    c_inet inet, c_bpchar char(12), c_varchar varchar(40), c_date date, c_time time,
    c_timestamp timestamp, c_timestamptz timestamptz, c_numeric numeric(14,4),
    c_uuid uuid, c_jsonb jsonb);
INSERT INTO mask_types VALUES
 (1, true, '\\xdeadbeef', 'pg_user', 9000000000123, -1234, 77,
  'zoë.ångström@example.com', '{\"a\": [1, \"x\"]}', 3.25, -1e-7, '2001:db8::1/64',
  'Zoë 日本', 'café au lait', '1984-07-19', '23:59:59.5', '2024-02-29 13:14:15.123456',
  '1999-12-31 23:59:59+05:30', -12345.6789, 'a0ee0000-0000-4000-8000-000000000a11',
  '{\"k\": \"Ångström\"}'),
 (2, false, '\\x', '', 0, 32767, -2147483648, '', '\"s\"', 'NaN', 'Infinity', '10.0.0.1',
  '', '4111 1111 1111 1111', 'infinity', '00:00:00', '-infinity', 'epoch', 'NaN',
  '00000000-0000-0000-0000-000000000000', '[]'),
 (3, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL,
  NULL, NULL, NULL, NULL, NULL, NULL);
";

const TYPE_NAMES: [&str; 20] = [
    "bool",
    "bytea",
    "name",
    "int8",
    "int2",
    "int4",
    "text",
    "json",
    "float4",
    "float8",
    "inet",
    "bpchar",
    "varchar",
    "date",
    "time",
    "timestamp",
    "timestamptz",
    "numeric",
    "uuid",
    "jsonb",
];

/// Raw bytes sent as a binary parameter of the parameter's declared type,
/// so the server's receive function judges them.
#[derive(Debug)]
struct RawParam(Vec<u8>);

impl tokio_postgres::types::ToSql for RawParam {
    fn to_sql(
        &self,
        _: &Type,
        out: &mut bytes::BytesMut,
    ) -> Result<tokio_postgres::types::IsNull, Box<dyn std::error::Error + Sync + Send>> {
        out.extend_from_slice(&self.0);
        Ok(tokio_postgres::types::IsNull::No)
    }
    fn accepts(_: &Type) -> bool {
        true
    }
    tokio_postgres::types::to_sql_checked!();
}

/// Every masking function on every supported type, in text and binary
/// format: each masked value is valid input of its type for the server
/// itself, or NULL; NULL stays NULL.
async fn every_function_keeps_every_type_valid(ctx: Arc<Ctx>) {
    ctx.pg.psql_socket(DB, TYPES_TABLE);
    ctx.pg
        .psql_socket(DB, &format!("GRANT SELECT ON mask_types TO {SCRAM_ROLE}"));
    let direct = format!(
        "host=127.0.0.1 port={} user={SCRAM_ROLE} password={} dbname={DB}",
        ctx.pg.port(),
        ctx.pg.password(SCRAM_ROLE)
    );
    let (checker, conn) = tokio_postgres::connect(&direct, NoTls)
        .await
        .expect("direct");
    let checker_task = tokio::spawn(conn);
    let functions = [
        "function = \"redact\"",
        "function = \"null\"",
        "function = \"partial\"\nfirst = 1\nlast = 1",
        "function = \"email\"",
        "function = \"hash\"\nkey_env = \"PGVEIL_MASK_KEY\"",
        "function = \"fixed\"\nvalue = \"42\"",
        "function = \"replace\"\npattern = \"[0-9a-z]\"\nreplacement = \"x\"",
        "function = \"truncate\"\npart = \"month\"",
        "function = \"round\"\ndigits = 1",
        "function = \"bucket\"\nwidth = 10",
    ];
    let types = TYPE_NAMES.map(|t| format!("\"{t}\"")).join(", ");
    let select = format!(
        "SELECT c_{} FROM mask_types ORDER BY id",
        TYPE_NAMES.join(", c_")
    );
    for function in functions {
        let dir = unique_temp_dir("pgveil-types");
        std::fs::create_dir_all(&dir).expect("dir");
        std::fs::write(
            dir.join("all.toml"),
            // Predicates allowed: the test orders by a column of a covered
            // type.
            format!(
                "[[rule]]\nname = \"all\"\ntypes = [{types}]\nallow_predicates = true\n{function}\n"
            ),
        )
        .expect("rules");
        let (gateway, addr) = masked_gateway(&ctx, &dir);
        let config = format!("host=127.0.0.1 port={} user=ana dbname={DB}", addr.port());
        let (client, conn) = tokio_postgres::connect(&config, NoTls)
            .await
            .expect("connect");
        let task = tokio::spawn(conn);

        // Binary: every value goes back as a binary parameter of its type.
        let rows = client.query(select.as_str(), &[]).await.expect(function);
        assert_eq!(rows.len(), 3);
        for (r, row) in rows.iter().enumerate() {
            for (i, ty) in TYPE_NAMES.iter().enumerate() {
                let Raw8(value) = row.get(i);
                if r == 2 || function.contains("\"null\"") {
                    assert!(value.is_none(), "{function}: {ty} is NULL");
                }
                let Some(bytes) = value else { continue };
                let sql = format!("SELECT $1::{ty}::text");
                let stmt = checker.prepare(&sql).await.expect("prepare check");
                if let Err(e) = checker.query(&stmt, &[&RawParam(bytes.clone())]).await {
                    panic!("{function}: binary {ty} {bytes:?} is not valid: {e}");
                }
            }
        }
        // Text: every value goes back through the type's input function.
        let messages = client.simple_query(&select).await.expect(function);
        let mut rows_seen = 0;
        for m in messages {
            let tokio_postgres::SimpleQueryMessage::Row(row) = m else {
                continue;
            };
            rows_seen += 1;
            if rows_seen == 1 && function.contains("redact") {
                assert_eq!(row.get(6), Some("****"), "redacted text");
                assert_eq!(row.get(5), Some("0"), "redacted int4");
                assert_eq!(row.get(10), Some("::/64"), "redacted inet");
            }
            for (i, ty) in TYPE_NAMES.iter().enumerate() {
                let Some(text) = row.get(i) else { continue };
                let sql = format!("SELECT $1::text::{ty}::text");
                if let Err(e) = checker.query(&sql, &[&text]).await {
                    panic!("{function}: text {ty} {text:?} is not valid: {e}");
                }
            }
        }
        assert_eq!(rows_seen, 3, "{function}");
        drop(client);
        let _ = task.await;
        drop(gateway);
        crate::harness::proc::remove_temp_dir(&dir);
    }
    drop(checker);
    let _ = checker_task.await;
}
