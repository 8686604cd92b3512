//! Command-line interface: `serve`, `check` and `demo`.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;

use clap::{Parser, Subcommand};

use crate::config::Config;
use crate::frontend::Gateway;

/// Log filter used when `RUST_LOG` is not set.
const DEFAULT_LOG_FILTER: &str = "pgveil=info";

/// pgveil: a PostgreSQL gateway with OIDC sign-in, statement policy, inline
/// masking and a Parquet audit archive.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the gateway.
    Serve {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Validate the configuration and log in to the server with it.
    Check {
        /// Configuration file (TOML).
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Start a throwaway PostgreSQL with sample data and pgveil in front of it.
    Demo {
        /// Port for pgveil to listen on (loopback only).
        #[arg(long, default_value_t = 6432)]
        port: u16,
        /// Folder for the demo's audit archive, which stays after the demo.
        #[arg(long, default_value = "pgveil-demo-archive")]
        archive: PathBuf,
    },
    /// Work with masking rules.
    Rules {
        #[command(subcommand)]
        command: RulesCommand,
    },
}

#[derive(Debug, Subcommand)]
enum RulesCommand {
    /// Run the fixtures in DIR/tests against the rules in DIR (no database).
    Test {
        /// The rule directory.
        dir: PathBuf,
    },
}

/// A command, ready to run.
enum Job {
    Serve(Box<Config>, PathBuf),
    Check(PathBuf),
    Demo(u16, PathBuf),
}

/// Parses the command line and runs the command.
pub fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logging();
    // `serve` reads its configuration before the runtime starts: the
    // configuration sizes the runtime.
    let job = match cli.command {
        Command::Serve { config: path } => match Config::load(&path) {
            Ok(config) => Job::Serve(Box::new(config), path),
            Err(e) => {
                eprintln!("pgveil: {e}");
                return ExitCode::FAILURE;
            }
        },
        Command::Check { config } => Job::Check(config),
        Command::Demo { port, archive } => Job::Demo(port, archive),
        Command::Rules {
            command: RulesCommand::Test { dir },
        } => return rules_test(&dir),
    };
    let mut builder = tokio::runtime::Builder::new_multi_thread();
    if let Job::Serve(config, _) = &job {
        if let Some(threads) = config.worker_threads {
            builder.worker_threads(threads);
        }
    }
    let runtime = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("pgveil: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    let result = runtime.block_on(async {
        match job {
            Job::Serve(config, path) => serve(*config, path).await,
            Job::Check(path) => crate::check::run(&path).await,
            Job::Demo(port, archive) => crate::demo::run(port, &archive).await,
        }
    });
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("pgveil: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Runs rule fixtures and prints a line per failure and a total.
fn rules_test(dir: &std::path::Path) -> ExitCode {
    let report = match crate::mask::fixtures::run(dir) {
        Ok(report) => report,
        Err(e) => {
            eprintln!("pgveil: {e:#}");
            return ExitCode::FAILURE;
        }
    };
    for failure in &report.failures {
        println!("FAILED {failure}");
    }
    println!("{} passed, {} failed", report.passed, report.failures.len());
    if report.failures.is_empty() && report.passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

fn init_logging() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env()
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(DEFAULT_LOG_FILTER));
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
}

async fn serve(config: Config, path: PathBuf) -> anyhow::Result<()> {
    let mut gateway = Gateway::new(config, &path)?;
    gateway.start_archive()?;
    let gateway = Arc::new(gateway);
    let listeners = gateway.bind().await?;
    gateway.serve(listeners, shutdown_signal()).await;
    Ok(())
}

/// Completes on Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            tracing::warn!(error = %e, "cannot watch SIGTERM; only Ctrl-C stops pgveil");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {}
        _ = term.recv() => {}
    }
}
