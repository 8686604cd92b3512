//! `pgveil demo`: a throwaway PostgreSQL with sample personal data and pgveil
//! in front of it, on loopback, until Ctrl-C.

use std::sync::Arc;

use anyhow::Context;

use crate::config::Config;
use crate::frontend::Gateway;
use crate::pgtemp::{Options, TempCluster};

/// The sample schema and rows, built into the binary so the demo runs from
/// any directory.
const SAMPLE_SCHEMA: &str = include_str!("../testdata/schema.sql");
/// Role pgveil logs in as; only pgveil knows its password.
const APP_ROLE: &str = "veil_app";
/// Database holding the sample data.
const DEMO_DATABASE: &str = "demo";

/// Runs the demo until Ctrl-C, then stops everything and removes its files.
pub async fn run(port: u16) -> anyhow::Result<()> {
    println!("Starting a throwaway PostgreSQL ...");
    let cluster = tokio::task::spawn_blocking(prepare_cluster).await??;
    let password_file = cluster.dir().join("pgveil-server-password");
    let config_text = format!(
        r#"
listen = ["127.0.0.1:{port}"]

[server]
address = "127.0.0.1:{pg_port}"
user = "{APP_ROLE}"
password_file = "{password}"
tls = "disable"

[auth]
method = "trust"
"#,
        pg_port = cluster.port(),
        password = password_file.display(),
    );
    let config_path = cluster.dir().join("pgveil-demo.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = Config::parse(&config_text, &config_path)?;
    let gateway = Arc::new(Gateway::new(config, &config_path)?);
    let listeners = gateway.bind().await.with_context(|| {
        format!("port {port} is taken; run `pgveil demo --port N` with a free port")
    })?;
    print_instructions(port, &cluster);
    gateway
        .serve(listeners, crate::cli::shutdown_signal())
        .await;
    println!(
        "\nStopping PostgreSQL and removing {} ...",
        cluster.dir().display()
    );
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    Ok(())
}

/// Starts the cluster, creates pgveil's role and loads the sample data.
fn prepare_cluster() -> anyhow::Result<TempCluster> {
    let options = Options {
        hba: vec![
            "host all all 127.0.0.1/32 scram-sha-256".into(),
            "host all all ::1/128 scram-sha-256".into(),
        ],
        ..Options::default()
    };
    let cluster = TempCluster::start(&options)?;
    let password = format!("{:032x}", rand::random::<u128>());
    cluster.psql(
        "postgres",
        &format!(
            "CREATE ROLE {APP_ROLE} LOGIN PASSWORD '{password}';\n\
             CREATE DATABASE {DEMO_DATABASE} OWNER {APP_ROLE};\n"
        ),
    )?;
    cluster
        .psql(
            DEMO_DATABASE,
            &format!("SET ROLE {APP_ROLE};\n{SAMPLE_SCHEMA}"),
        )
        .context("loading the sample schema")?;
    let file = cluster.dir().join("pgveil-server-password");
    std::fs::write(&file, &password)?;
    Ok(cluster)
}

fn print_instructions(port: u16, cluster: &TempCluster) {
    println!(
        r#"
pgveil demo is running.

  PostgreSQL (throwaway)  127.0.0.1:{pg_port}, files in {dir}
  pgveil                  127.0.0.1:{port}, auth "trust" (loopback only)
  pgveil logs in as       {APP_ROLE} (a password only pgveil holds)

Connect through pgveil with any user name:

  psql "host=127.0.0.1 port={port} dbname={DEMO_DATABASE} user=analyst"

and try:

  SELECT id, full_name, email, card_number, national_id FROM customers ORDER BY id LIMIT 5;
  SELECT status, count(*), sum(amount) FROM orders GROUP BY status;

Press Ctrl-C to stop; the database and all its files are removed."#,
        pg_port = cluster.port(),
        dir = cluster.dir().display(),
    );
}
