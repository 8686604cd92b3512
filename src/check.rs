//! `pgveil check`: validates a configuration and logs in to the server with it.

use std::path::Path;

use anyhow::bail;

use crate::config::Config;
use crate::frontend::Gateway;

/// Loads `path`, builds everything `serve` would, logs in to the server once
/// and prints what it found. Any problem is an error (non-zero exit).
pub async fn run(path: &Path) -> anyhow::Result<()> {
    let config = Config::load(path)?;
    println!("configuration {}: valid", path.display());
    for addr in &config.listen {
        println!("  listen {addr}");
    }
    println!(
        "  client TLS: {}",
        match &config.tls {
            Some(t) if t.required => "required",
            Some(_) => "offered",
            None => "off",
        }
    );
    println!("  auth method: {:?}", config.auth.method);
    let mut problems_before = 0;
    let database = config
        .server
        .databases
        .values()
        .next()
        .cloned()
        .unwrap_or_else(|| "postgres".to_owned());
    if let Some(audit) = &config.audit {
        problems_before += check_archive(audit);
    }
    let gateway = Gateway::new(config, path)?;
    let mut problems = problems_before;
    for issuer in gateway.auth().verifier().issuers() {
        match issuer.refresh().await {
            Ok(keys) => println!("issuer {}: {keys} signing key(s)", issuer.url()),
            Err(e) => {
                println!("issuer {}: FAILED: {e}", issuer.url());
                problems += 1;
            }
        }
    }
    let target = gateway.target();
    for login in gateway.auth().logins() {
        match target.connect(login, &database, &[]).await {
            Ok(conn) => println!(
                "server {}: logged in as {} to database {database} ({}), server version {}",
                target.address(),
                login.user,
                conn.stream.tls_version().unwrap_or("no TLS"),
                server_version(&conn.startup_messages),
            ),
            Err(e) => {
                println!(
                    "server {}: FAILED to log in as {}: {e}",
                    target.address(),
                    login.user
                );
                problems += 1;
            }
        }
    }
    if let Some(masking) = gateway.masking() {
        problems += lint_rules(&gateway, masking, &database).await;
    }
    if problems > 0 {
        bail!("{problems} problem(s) found");
    }
    Ok(())
}

/// Lints the masking rules against the catalog of `database`; returns the
/// number of findings.
async fn lint_rules(gateway: &Gateway, masking: &crate::mask::Masking, database: &str) -> usize {
    let rules = masking.rules();
    println!(
        "masking rules {}: {} rule(s), {} detector rule(s) in {} file(s)",
        masking.dir().display(),
        rules.rules.len(),
        rules.detects.len(),
        rules.files.len()
    );
    let login = gateway.auth().default_login();
    let catalog = match masking
        .read_catalog(database, gateway.target(), login)
        .await
    {
        Ok(catalog) => catalog,
        Err(e) => {
            println!("masking catalog of database {database}: FAILED: {e}");
            return 1;
        }
    };
    let findings = crate::mask::lint::lint(&rules, &catalog, &gateway.auth().mapped_groups());
    for finding in &findings {
        println!("  problem: {finding}");
    }
    if findings.is_empty() {
        println!("  every rule matches the schema of database {database}");
    }
    findings.len()
}

/// Checks that the archive's folders can be created and written; returns
/// the number of problems. (The object store is not contacted.)
fn check_archive(audit: &crate::config::AuditConfig) -> usize {
    let probe = audit.dir.join("spool").join(".pgveil-check");
    let written = std::fs::create_dir_all(audit.dir.join("spool"))
        .and_then(|()| std::fs::create_dir_all(audit.dir.join("archive")))
        .and_then(|()| std::fs::write(&probe, b"check"))
        .and_then(|()| std::fs::remove_file(&probe));
    match written {
        Ok(()) => {
            println!(
                "audit archive {}: writable (instance {}, fsync {:?}{})",
                audit.dir.display(),
                audit.instance,
                audit.fsync,
                audit.s3.as_ref().map_or(String::new(), |s3| format!(
                    ", upload to bucket {}",
                    s3.bucket
                )),
            );
            0
        }
        Err(e) => {
            println!("audit archive {}: FAILED: {e}", audit.dir.display());
            1
        }
    }
}

/// Finds `server_version` among the login's ParameterStatus messages.
fn server_version(messages: &[u8]) -> String {
    let mut buf = bytes::BytesMut::from(messages);
    while let Ok(Some(frame)) = crate::wire::next_frame(&mut buf, usize::MAX) {
        if frame.tag() != crate::wire::tag::PARAMETER_STATUS {
            continue;
        }
        let Some((name, rest)) = crate::wire::take_cstr(frame.body()) else {
            continue;
        };
        if name == b"server_version" {
            if let Some((value, _)) = crate::wire::take_cstr(rest) {
                return String::from_utf8_lossy(value).into_owned();
            }
        }
    }
    "unknown".to_owned()
}
