//! `pgveil check`: validates a configuration and logs in to the server with it.

use std::path::Path;

use anyhow::Context;

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
    let database = config
        .server
        .databases
        .values()
        .next()
        .cloned()
        .unwrap_or_else(|| "postgres".to_owned());
    let gateway = Gateway::new(config, path)?;
    let target = gateway.target();
    let conn = target
        .connect(&database, &[])
        .await
        .with_context(|| format!("logging in to {} as {}", target.address(), target.user()))?;
    let version = server_version(&conn.startup_messages);
    println!(
        "server {}: logged in as {} to database {database} ({}), server version {version}",
        target.address(),
        target.user(),
        conn.stream.tls_version().unwrap_or("no TLS"),
    );
    Ok(())
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
