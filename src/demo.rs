//! `pgveil demo`: a throwaway PostgreSQL with sample personal data and pgveil
//! in front of it, on loopback, until Ctrl-C.
//!
//! The demo runs its own development token issuer: a signing key made at
//! start, published to pgveil as a key-set file, and two ready-made tokens
//! (an analyst and a database administrator, mapped to two server roles).
//! Only the demo has this issuer; `serve` trusts only configured issuers.

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use anyhow::Context;
use jsonwebtoken::jwk::{Jwk, JwkSet, KeyAlgorithm};
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use ring::signature::{EcdsaKeyPair, ECDSA_P256_SHA256_FIXED_SIGNING};

use crate::config::Config;
use crate::frontend::Gateway;
use crate::pgtemp::{Options, TempCluster};

/// The sample schema and rows, built into the binary so the demo runs from
/// any directory.
const SAMPLE_SCHEMA: &str = include_str!("../testdata/schema.sql");
/// The shipped masking rules, written beside the cluster for the demo.
const DEMO_RULES: [(&str, &str); 2] = [
    (
        "customers.toml",
        include_str!("../masking-rules/customers.toml"),
    ),
    (
        "free-text.toml",
        include_str!("../masking-rules/free-text.toml"),
    ),
];
/// The query the demo shows for both identities.
const SIDE_BY_SIDE_SQL: &str = "SELECT id, full_name, email, card_number, national_id, \
     birth_date FROM customers ORDER BY id LIMIT 3";
/// Database holding the sample data.
const DEMO_DATABASE: &str = "demo";
/// The demo issuer's name (never reachable: its keys come from a file).
const DEMO_ISSUER: &str = "https://issuer.pgveil-demo.invalid";
/// Audience of the demo tokens.
const DEMO_AUDIENCE: &str = "pgveil-demo";
/// Lifetime of the demo tokens.
const DEMO_TOKEN_TTL: Duration = Duration::from_secs(8 * 3600);

/// A demo identity: user, group, and the server role the group maps to.
struct Persona {
    user: &'static str,
    group: &'static str,
    role: &'static str,
    what: &'static str,
}

const PERSONAS: [Persona; 2] = [
    Persona {
        user: "ana",
        group: "analysts",
        role: "veil_analyst",
        what: "an analyst (masking rules restrict this group)",
    },
    Persona {
        user: "dora",
        group: "dba",
        role: "veil_admin",
        what: "a database administrator (privileged)",
    },
];

/// Runs the demo until Ctrl-C, then stops everything and removes its files
/// (all but the audit archive in `archive`, which the closing message
/// tells how to open).
pub async fn run(port: u16, archive: &std::path::Path) -> anyhow::Result<()> {
    std::fs::create_dir_all(archive)
        .with_context(|| format!("cannot create the archive folder {}", archive.display()))?;
    let archive = std::fs::canonicalize(archive)?;
    println!("Starting a throwaway PostgreSQL ...");
    let cluster = tokio::task::spawn_blocking(prepare_cluster).await??;
    let (jwks, key) = demo_issuer_key()?;
    let jwks_file = cluster.dir().join("demo-issuer-jwks.json");
    std::fs::write(&jwks_file, serde_json::to_vec(&jwks)?)?;
    let rules_dir = write_demo_rules(&cluster)?;
    let mut config_text = demo_config(port, cluster.port(), &cluster, &jwks_file);
    config_text.push_str(&format!(
        "\n[masking]\nrules_dir = \"{}\"\n",
        rules_dir.display()
    ));
    config_text.push_str(&format!(
        "\n[audit]\ndir = \"{}\"\ninstance = \"demo\"\nfile_max_age = \"5s\"\n",
        archive.display()
    ));
    let config_path = cluster.dir().join("pgveil-demo.toml");
    std::fs::write(&config_path, &config_text)?;
    let config = Config::parse(&config_text, &config_path)?;
    let mut gateway = Gateway::new(config, &config_path)?;
    gateway.start_archive()?;
    let gateway = Arc::new(gateway);
    for issuer in gateway.auth().verifier().issuers() {
        issuer.refresh().await?;
    }
    let listeners = gateway.bind().await.with_context(|| {
        format!("port {port} is taken; run `pgveil demo --port N` with a free port")
    })?;
    let tokens = PERSONAS
        .iter()
        .map(|p| mint_token(&key, p))
        .collect::<anyhow::Result<Vec<_>>>()?;
    let serving = gateway.serve(listeners, crate::cli::shutdown_signal());
    tokio::pin!(serving);
    let stopped = tokio::select! {
        () = &mut serving => true,
        () = show_side_by_side(port, &tokens) => false,
    };
    if !stopped {
        print_instructions(port, &cluster, &tokens);
        serving.await;
    }
    println!(
        "\nStopping PostgreSQL and removing {} ...",
        cluster.dir().display()
    );
    tokio::task::spawn_blocking(move || drop(cluster)).await?;
    print_archive(&archive);
    Ok(())
}

/// Tells where the demo's audit archive is and how to open it.
fn print_archive(dir: &std::path::Path) {
    let statements = dir.join("archive/statements/*/*.parquet");
    println!(
        "\nThe audit archive of this demo stays in {}.\n\
         Every session and statement is there; open it with DuckDB, e.g.:\n\
         \n  duckdb -c \"SELECT started_at, user_name, decision, masked_columns, text \
         FROM read_parquet('{}') ORDER BY started_at\"\n\
         \n(or pandas.read_parquet, or Spark; see the README's audit section)",
        dir.join("archive").display(),
        statements.display()
    );
}

fn demo_config(
    port: u16,
    pg_port: u16,
    cluster: &TempCluster,
    jwks_file: &std::path::Path,
) -> String {
    let mut text = format!(
        r#"
listen = ["127.0.0.1:{port}"]

[server]
address = "127.0.0.1:{pg_port}"
user = "{admin}"
password_file = "{dir}/password-{admin}"
tls = "disable"

[auth]
method = "oidc"
allow_cleartext_on_loopback = true

[[auth.issuers]]
issuer = "{DEMO_ISSUER}"
audiences = ["{DEMO_AUDIENCE}"]
jwks_file = "{jwks}"
"#,
        admin = PERSONAS[1].role,
        dir = cluster.dir().display(),
        jwks = jwks_file.display(),
    );
    for p in &PERSONAS {
        text.push_str(&format!(
            "\n[[roles]]\ngroup = \"{}\"\nrole = \"{}\"\npassword_file = \"{}/password-{}\"\n",
            p.group,
            p.role,
            cluster.dir().display(),
            p.role
        ));
    }
    text
}

/// Writes the shipped rules to the cluster's directory, with a fresh hash
/// key in a file instead of the environment variable they name.
fn write_demo_rules(cluster: &TempCluster) -> anyhow::Result<std::path::PathBuf> {
    let dir = cluster.dir().join("masking-rules");
    std::fs::create_dir_all(&dir)?;
    let key = format!("{:032x}", rand::random::<u128>());
    std::fs::write(dir.join("demo-mask-key"), key)?;
    for (name, text) in DEMO_RULES {
        let text = text.replace(
            "key_env = \"PGVEIL_MASK_KEY\"",
            "key_file = \"demo-mask-key\"",
        );
        std::fs::write(dir.join(name), text)?;
    }
    Ok(dir)
}

/// Runs the same query through the gateway as each demo identity and prints
/// the results one after the other: what masking does, at a glance.
async fn show_side_by_side(port: u16, tokens: &[String]) {
    let target =
        crate::backend::ServerTarget::plain(&format!("127.0.0.1:{port}"), Duration::from_secs(5));
    println!("\nThe same query through pgveil for each identity:\n  {SIDE_BY_SIDE_SQL}\n");
    for (persona, token) in PERSONAS.iter().zip(tokens) {
        let login = crate::auth::Login {
            user: persona.user.to_owned(),
            password: Some(crate::config::Secret::new(token.clone())),
        };
        let rows = async {
            let mut conn = target.connect(&login, DEMO_DATABASE, &[]).await.ok()?;
            crate::mask::catalog::simple_query(&mut conn, SIDE_BY_SIDE_SQL)
                .await
                .ok()
        };
        println!("  as {} ({}):", persona.user, persona.group);
        match rows.await {
            Some(rows) => {
                for row in rows {
                    let cells: Vec<&str> =
                        row.iter().map(|v| v.as_deref().unwrap_or("NULL")).collect();
                    println!("    {}", cells.join(" | "));
                }
            }
            None => println!("    (the query failed; see the log)"),
        }
    }
    println!();
}

/// Starts the cluster, creates the server roles and loads the sample data.
fn prepare_cluster() -> anyhow::Result<TempCluster> {
    let options = Options {
        hba: vec![
            "host all all 127.0.0.1/32 scram-sha-256".into(),
            "host all all ::1/128 scram-sha-256".into(),
        ],
        ..Options::default()
    };
    let cluster = TempCluster::start(&options)?;
    let mut sql = String::new();
    for p in &PERSONAS {
        let password = format!("{:032x}", rand::random::<u128>());
        sql.push_str(&format!(
            "CREATE ROLE {} LOGIN PASSWORD '{password}';\n",
            p.role
        ));
        std::fs::write(
            cluster.dir().join(format!("password-{}", p.role)),
            &password,
        )?;
    }
    let owner = PERSONAS[1].role;
    sql.push_str(&format!("CREATE DATABASE {DEMO_DATABASE} OWNER {owner};\n"));
    cluster.psql("postgres", &sql)?;
    let load = format!(
        "SET ROLE {owner};\n{SAMPLE_SCHEMA}\nRESET ROLE;\n\
         GRANT SELECT ON ALL TABLES IN SCHEMA public TO {analyst};\n",
        analyst = PERSONAS[0].role
    );
    cluster
        .psql(DEMO_DATABASE, &load)
        .context("loading the sample schema")?;
    Ok(cluster)
}

/// A fresh ES256 key for the demo issuer, and its public key set.
fn demo_issuer_key() -> anyhow::Result<(JwkSet, EncodingKey)> {
    let rng = ring::rand::SystemRandom::new();
    let pkcs8 = EcdsaKeyPair::generate_pkcs8(&ECDSA_P256_SHA256_FIXED_SIGNING, &rng)
        .map_err(|_| anyhow::anyhow!("cannot generate the demo issuer's key"))?;
    let key = EncodingKey::from_ec_der(pkcs8.as_ref());
    let mut jwk = Jwk::from_encoding_key(&key, Algorithm::ES256)?;
    jwk.common.key_id = Some("demo-1".into());
    jwk.common.key_algorithm = Some(KeyAlgorithm::ES256);
    Ok((JwkSet { keys: vec![jwk] }, key))
}

/// A signed access token for `persona`.
fn mint_token(key: &EncodingKey, persona: &Persona) -> anyhow::Result<String> {
    let now = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs();
    let claims = serde_json::json!({
        "iss": DEMO_ISSUER,
        "aud": DEMO_AUDIENCE,
        "sub": format!("demo|{}", persona.user),
        "preferred_username": persona.user,
        "groups": [persona.group],
        "iat": now,
        "nbf": now,
        "exp": now + DEMO_TOKEN_TTL.as_secs(),
    });
    let mut header = Header::new(Algorithm::ES256);
    header.kid = Some("demo-1".into());
    header.typ = Some("at+jwt".into());
    Ok(jsonwebtoken::encode(&header, &claims, key)?)
}

fn print_instructions(port: u16, cluster: &TempCluster, tokens: &[String]) {
    println!(
        r#"
pgveil demo is running.

  PostgreSQL (throwaway)  127.0.0.1:{pg_port}, files in {dir}
  pgveil                  127.0.0.1:{port}, OIDC tokens from the demo issuer
"#,
        pg_port = cluster.port(),
        dir = cluster.dir().display(),
    );
    for (persona, token) in PERSONAS.iter().zip(tokens) {
        println!(
            "As {user}, {what}; group \"{group}\" reaches the server as {role}:\n\n  \
             PGPASSWORD='{token}' psql \"host=127.0.0.1 port={port} dbname={DEMO_DATABASE} user={user}\"\n",
            user = persona.user,
            what = persona.what,
            group = persona.group,
            role = persona.role,
        );
    }
    println!(
        r#"Then try:

  SELECT current_user;
  SELECT id, full_name, email, card_number, national_id FROM customers ORDER BY id LIMIT 5;

The tokens are valid for {hours} hours. Press Ctrl-C to stop; the database and
all its files are removed."#,
        hours = DEMO_TOKEN_TTL.as_secs() / 3600
    );
}
