//! The command line: `check`, configuration errors, `demo`, and what the
//! logs must never hold.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::harness::{case, free_port, psql, Case, SCRAM_ROLE};
use crate::{bin, blocking, gateway_toml, Ctx, PASSWORD_ENV};

/// How long `pgveil demo` may take to come up.
const DEMO_START: Duration = Duration::from_secs(90);

pub fn cases() -> Vec<Case<Ctx>> {
    vec![
        case!(check_logs_in_and_reports),
        case!(bad_configuration_names_key_and_file),
        case!(demo_serves_sample_data_and_cleans_up, 240),
        case!(logs_hold_no_secrets_or_values),
    ]
}

fn run_pgveil(args: &[&str], envs: &[(&str, &str)]) -> (bool, String, String) {
    let mut cmd = Command::new(bin());
    cmd.args(args)
        .envs(envs.iter().copied())
        .stdin(Stdio::null());
    let out = crate::harness::proc::run_bounded(&mut cmd, Duration::from_secs(60));
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn write_config(text: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let dir = crate::harness::proc::unique_temp_dir("pgveil-it-cfg");
    let path = dir.join("pgveil.toml");
    std::fs::write(&path, text).expect("write config");
    (dir, path)
}

async fn check_logs_in_and_reports(ctx: Arc<Ctx>) {
    let addr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let config = gateway_toml(addr, ctx.pg.port(), SCRAM_ROLE, "tls = \"require\"", "");
    let (dir, path) = write_config(&config);
    let archive = dir.join("archive-check");
    let config = format!("{config}\n[audit]\ndir = \"{}\"\n", archive.display());
    std::fs::write(&path, config).expect("write config");
    let password = ctx.pg.password(SCRAM_ROLE).to_owned();
    let path_s = path.display().to_string();
    let (good, bad, unset) = blocking(move || {
        let good = run_pgveil(
            &["check", "--config", &path_s],
            &[(PASSWORD_ENV, &password)],
        );
        let bad = run_pgveil(&["check", "--config", &path_s], &[(PASSWORD_ENV, "wrong")]);
        let unset = run_pgveil(&["check", "--config", &path_s], &[]);
        (good, bad, unset)
    })
    .await;
    crate::harness::proc::remove_temp_dir(&dir);
    assert!(good.0, "check failed: {}{}", good.1, good.2);
    assert!(
        good.1.contains(&format!("logged in as {SCRAM_ROLE}")),
        "{}",
        good.1
    );
    assert!(good.1.contains("server version 15"), "{}", good.1);
    assert!(good.1.contains("TLSv1_3"), "{}", good.1);
    assert!(
        good.1
            .contains(&format!("audit archive {}: writable", archive.display())),
        "{}",
        good.1
    );
    assert!(!bad.0, "a wrong password must fail the check");
    assert!(bad.1.contains("28P01"), "{}", bad.1);
    assert!(
        !bad.1.contains("wrong") && !bad.2.contains("wrong"),
        "the password must not be printed: {}",
        bad.2
    );
    assert!(!unset.0);
    assert!(unset.2.contains("server.password_env"), "{}", unset.2);
}

async fn bad_configuration_names_key_and_file(ctx: Arc<Ctx>) {
    let addr = format!("127.0.0.1:{}", free_port())
        .parse()
        .expect("address");
    let good = gateway_toml(addr, ctx.pg.port(), SCRAM_ROLE, "", "");
    let cases = [
        (good.replace("listen =", "lisen ="), "lisen"),
        (good.replace("127.0.0.1:", "0.0.0.0:"), "auth.method"),
        (
            format!("{good}\n[timeouts]\nstartup = \"soon\"\n"),
            "startup",
        ),
        (
            good.replace("method = \"trust\"", "method = \"kerberos\""),
            "kerberos",
        ),
        ("listen = [\n".to_owned(), "TOML"),
        (
            format!("{good}\n[audit]\ndir = \"/tmp\"\nfile_max_age = \"2h\"\n"),
            "audit.file_max_age",
        ),
    ];
    for (text, needle) in cases {
        let (dir, path) = write_config(&text);
        let path_s = path.display().to_string();
        let (ok, _, stderr) =
            blocking(move || run_pgveil(&["serve", "--config", &path_s], &[])).await;
        crate::harness::proc::remove_temp_dir(&dir);
        assert!(!ok, "serve accepted a bad configuration ({needle})");
        assert!(
            stderr.contains(needle) || (needle == "TOML" && stderr.contains("line")),
            "{needle}: {stderr}"
        );
        assert!(
            stderr.contains("pgveil.toml"),
            "the file is named: {stderr}"
        );
        assert!(!stderr.contains("panicked"), "{stderr}");
    }
}

async fn demo_serves_sample_data_and_cleans_up(_ctx: Arc<Ctx>) {
    let port = free_port();
    let archive = crate::harness::proc::unique_temp_dir("pgveil-it-demo-archive");
    let archive_arg = archive.clone();
    let result = blocking(move || {
        let mut child = Command::new(bin())
            .args(["demo", "--port", &port.to_string(), "--archive"])
            .arg(&archive_arg)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the demo");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        let deadline = Instant::now() + DEMO_START;
        let mut lines = Vec::new();
        while Instant::now() < deadline {
            match rx.recv_timeout(Duration::from_millis(200)) {
                Ok(line) => {
                    let done = line.contains("Press Ctrl-C");
                    lines.push(line);
                    if done {
                        break;
                    }
                }
                Err(std::sync::mpsc::RecvTimeoutError::Timeout) => {}
                Err(_) => break,
            }
        }
        let token_of = |user: &str| {
            lines
                .iter()
                .find(|l| l.contains(&format!("user={user}\"")))
                .and_then(|l| l.split('\'').nth(1))
                .map(str::to_owned)
                .unwrap_or_default()
        };
        let sql = "SELECT current_user, count(*) FROM customers WHERE city IS NOT NULL";
        let query: Vec<_> = ["ana", "dora"]
            .iter()
            .map(|user| {
                let conninfo = format!("host=127.0.0.1 port={port} dbname=demo user={user}");
                psql(&conninfo, Some(&token_of(user)), sql)
            })
            .collect();
        crate::harness::proc::send_signal(child.id(), libc::SIGINT);
        let status = crate::harness::proc::wait_child(&mut child, Duration::from_secs(30));
        if status.is_none() {
            let _ = child.kill();
            let _ = child.wait();
        }
        // The closing lines, after Ctrl-C.
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(2)) {
            lines.push(line);
        }
        (lines, query, status)
    })
    .await;
    let (lines, query, status) = result;
    let text = lines.join("\n");
    assert!(
        text.contains(&format!("psql \"host=127.0.0.1 port={port} dbname=demo")),
        "{text}"
    );
    // The side-by-side view: the analyst's row is masked, the
    // administrator's is not.
    let row_after = |heading: &str| {
        let at = lines
            .iter()
            .position(|l| l.contains(heading))
            .unwrap_or_else(|| panic!("no {heading:?} in {text}"));
        lines.get(at + 1).cloned().unwrap_or_default()
    };
    let masked = row_after("as ana (analysts):");
    let clear = row_after("as dora (dba):");
    assert!(masked.contains("*@") && masked.contains("XXXX"), "{masked}");
    assert!(!clear.contains('*') && clear.contains('@'), "{clear}");
    let mut query = query.into_iter();
    let analyst = query
        .next()
        .expect("ana")
        .expect("the analyst's token works");
    let admin = query
        .next()
        .expect("dora")
        .expect("the administrator's token works");
    let (role, count) = analyst.split_once('|').expect("two columns");
    assert_eq!(role, "veil_analyst");
    assert!(
        count.parse::<u32>().expect("a count") > 500,
        "{count} customers with a city"
    );
    assert!(admin.starts_with("veil_admin|"), "{admin}");
    assert!(status.expect("the demo stops on Ctrl-C").success());
    let dir = text
        .lines()
        .find_map(|l| l.split("files in ").nth(1))
        .expect("the demo names its directory");
    assert!(
        !std::path::Path::new(dir.trim()).exists(),
        "{dir} was removed"
    );
    // The archive stays, with the demo's statements, and the closing
    // message says how to open it.
    assert!(text.contains("read_parquet("), "{text}");
    let statements = archive.join("archive/statements");
    let files = crate::audit::parquet_files(&statements);
    assert!(!files.is_empty(), "the demo leaves its archive: {files:?}");
    crate::harness::proc::remove_temp_dir(&archive);
}

async fn logs_hold_no_secrets_or_values(ctx: Arc<Ctx>) {
    let marker = "literal-marker-5521";
    let conninfo = ctx.gateway_conninfo("auditor");
    let sql = format!("SELECT '{marker}' AS m, email FROM customers WHERE id = 3");
    let out = blocking(move || psql(&conninfo, None, &sql))
        .await
        .expect("query");
    let email = out.split('|').nth(1).expect("an email").to_owned();
    let log = ctx.gateway.log_text();
    assert!(
        log.contains("statement"),
        "statements are logged at debug level"
    );
    assert!(!log.contains(marker), "a statement literal reached the log");
    assert!(!log.contains(&email), "a row value reached the log");
    assert!(
        !log.contains(ctx.pg.password(SCRAM_ROLE)),
        "the server password reached the log"
    );
}
