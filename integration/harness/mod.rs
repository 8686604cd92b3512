//! Reusable harness for the `integration` test binary (built with `harness = false`): a small
//! sequential async test runner plus helpers for a throwaway PostgreSQL cluster ([`pg`]), a
//! test PKI ([`certs`]) and the gateway process ([`proc`]).
//!
//! Usage from the test binary's `main.rs`:
//!
//! ```ignore
//! mod harness;
//! use harness::{case, run_cases};
//!
//! struct Ctx { pg: harness::PgCluster }
//! async fn select_one(ctx: std::sync::Arc<Ctx>) { /* ... */ }
//!
//! fn main() -> std::process::ExitCode {
//!     let ctx = std::sync::Arc::new(Ctx { pg: harness::PgCluster::start(Default::default()) });
//!     run_cases(ctx, vec![case!(select_one), case!(select_one, 30)])
//! }
//! ```

// Each test binary uses a different subset of the harness.
#![allow(dead_code, unused_imports, unused_macros)]

pub mod certs;
pub mod clients;
pub mod idp;
pub mod pg;
pub mod proc;

use std::any::Any;
use std::future::Future;
use std::io::Write;
use std::pin::Pin;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::{Duration, Instant};

pub use certs::{LeafFiles, TestCa};
pub use pg::{
    psql, PgCluster, PgOptions, CLEAR_ROLE, MD5_ROLE, SCRAM_ROLE, SUPERUSER, TEST_ROLES, TRUST_ROLE,
};
pub use proc::{free_port, Pgveil};

/// Time limit of a case unless [`Case::with_timeout`] says otherwise.
pub const DEFAULT_CASE_TIMEOUT: Duration = Duration::from_secs(180);

/// How long an aborted (timed-out) case gets to unwind before the runner moves on.
const ABORT_GRACE: Duration = Duration::from_secs(5);

/// The boxed future a case function returns.
pub type CaseFuture = Pin<Box<dyn Future<Output = ()> + Send + 'static>>;

/// One named test case over a shared context `C`. A case fails by panicking (e.g. through
/// `assert!` or `expect`) or by exceeding its timeout.
pub struct Case<C> {
    /// Name printed in the report and matched by command-line filters.
    pub name: &'static str,
    /// Builds the case's future from the shared context.
    pub run: fn(Arc<C>) -> CaseFuture,
    /// Time limit for the whole case.
    pub timeout: Duration,
}

impl<C> Case<C> {
    /// A case with the [`DEFAULT_CASE_TIMEOUT`]; see also the [`case!`] macro.
    pub fn new(name: &'static str, run: fn(Arc<C>) -> CaseFuture) -> Case<C> {
        Case {
            name,
            run,
            timeout: DEFAULT_CASE_TIMEOUT,
        }
    }

    /// Replaces the case's time limit.
    pub fn with_timeout(mut self, timeout: Duration) -> Case<C> {
        self.timeout = timeout;
        self
    }
}

/// Builds a [`Case`] from an `async fn NAME(ctx: Arc<Ctx>)`, named after the function:
/// `case!(my_test)`, or with a timeout in seconds: `case!(my_test, 30)`.
///
/// Expands to `$crate::harness::Case`, so the harness must be declared as `mod harness;` at
/// the root of the test crate.
macro_rules! case {
    ($test:path) => {
        $crate::harness::Case::new(stringify!($test), |ctx| ::std::boxed::Box::pin($test(ctx)))
    };
    ($test:path, $secs:expr) => {
        $crate::harness::case!($test).with_timeout(::std::time::Duration::from_secs($secs))
    };
}
pub(crate) use case;

/// What the command line asked for.
#[derive(Debug, Default, PartialEq, Eq)]
struct RunArgs {
    filters: Vec<String>,
    skips: Vec<String>,
    exact: bool,
    list: bool,
}

impl RunArgs {
    /// Positional arguments are name-substring filters; arguments starting with `-` are
    /// ignored (cargo and libtest options), except `--skip NAME`, `--exact` and `--list`.
    /// Libtest options that take a separate value also consume that value.
    fn parse<I: IntoIterator<Item = String>>(args: I) -> RunArgs {
        const WITH_VALUE: [&str; 6] = [
            "--test-threads",
            "--format",
            "--logfile",
            "--color",
            "--shuffle-seed",
            "-Z",
        ];
        let mut parsed = RunArgs::default();
        let mut args = args.into_iter();
        while let Some(arg) = args.next() {
            match arg.as_str() {
                "--skip" => parsed.skips.extend(args.next()),
                "--exact" => parsed.exact = true,
                "--list" => parsed.list = true,
                flag if WITH_VALUE.contains(&flag) => {
                    args.next();
                }
                flag if flag.starts_with('-') => {}
                _ => parsed.filters.push(arg),
            }
        }
        parsed
    }

    fn selects(&self, name: &str) -> bool {
        let matches = |pattern: &String| {
            if self.exact {
                name == pattern
            } else {
                name.contains(pattern.as_str())
            }
        };
        (self.filters.is_empty() || self.filters.iter().any(matches))
            && !self.skips.iter().any(matches)
    }
}

/// Runs `cases` one after another on a two-worker multi-thread tokio runtime and reports
/// like libtest: `test NAME ... ok (1.23s)` / `test NAME ... FAILED (reason) (1.23s)`, a
/// failure section, and finally the line `N passed, N failed`.
///
/// Each case is spawned as its own task under its timeout; a panic or timeout fails the case
/// and the run continues. Command-line arguments not starting with `-` filter cases by name
/// substring (`--skip NAME`, `--exact` and `--list` work as in libtest). After the last case
/// the runtime is shut down; if `ctx` was the last reference it is dropped (stopping what it
/// owns) and any harness child process still alive is then killed, so pass the only `Arc`.
/// Returns `ExitCode::FAILURE` if a case failed or if no case ran.
pub fn run_cases<C: Send + Sync + 'static>(ctx: Arc<C>, cases: Vec<Case<C>>) -> ExitCode {
    let args = RunArgs::parse(std::env::args().skip(1));
    if args.list {
        for case in &cases {
            println!("{}: test", case.name);
        }
        return ExitCode::SUCCESS;
    }
    let selected: Vec<&Case<C>> = cases.iter().filter(|c| args.selects(c.name)).collect();
    let filtered_out = cases.len() - selected.len();
    println!("\nrunning {} cases", selected.len());

    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .thread_name("it-worker")
        .build()
        .expect("building the tokio runtime for the integration cases");
    let total_start = Instant::now();
    let mut passed = 0usize;
    let mut failures: Vec<(&'static str, String)> = Vec::new();
    for case in selected {
        let start = Instant::now();
        let outcome = runtime.block_on(run_one(Arc::clone(&ctx), case));
        let secs = start.elapsed().as_secs_f64();
        match outcome {
            Ok(()) => {
                passed += 1;
                println!("test {} ... ok ({secs:.2}s)", case.name);
            }
            Err(reason) => {
                let short = reason.lines().next().unwrap_or_default();
                println!("test {} ... FAILED ({short}) ({secs:.2}s)", case.name);
                failures.push((case.name, reason));
            }
        }
        let _ = std::io::stdout().flush();
    }
    runtime.shutdown_timeout(ABORT_GRACE);
    // Only when this was the last reference (the usual case) is everything the context owns
    // stopped now, so any child still registered afterwards was leaked by a case.
    if let Ok(ctx) = Arc::try_unwrap(ctx) {
        drop(ctx);
        let leaked = proc::kill_leftovers();
        if !leaked.is_empty() {
            eprintln!("harness: killed leftover child processes {leaked:?}");
        }
    }

    if !failures.is_empty() {
        println!("\nfailures:");
        for (name, reason) in &failures {
            println!("    {name}: {reason}");
        }
    }
    println!(
        "\n{filtered_out} filtered out; finished in {:.2}s",
        total_start.elapsed().as_secs_f64()
    );
    println!("{passed} passed, {} failed", failures.len());
    let _ = std::io::stdout().flush();
    if failures.is_empty() && passed > 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}

/// Runs one case as a task under its timeout and turns panics and timeouts into reasons.
async fn run_one<C: Send + Sync + 'static>(ctx: Arc<C>, case: &Case<C>) -> Result<(), String> {
    let mut task = tokio::spawn((case.run)(ctx));
    match tokio::time::timeout(case.timeout, &mut task).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(err)) if err.is_panic() => Err(format!(
            "panicked: {}",
            panic_message(err.into_panic().as_ref())
        )),
        Ok(Err(err)) => Err(format!("task did not complete: {err}")),
        Err(_) => {
            task.abort();
            let _ = tokio::time::timeout(ABORT_GRACE, task).await;
            Err(format!("timed out after {}s", case.timeout.as_secs_f64()))
        }
    }
}

/// The text of a panic payload (`panic!` produces `&str` or `String`).
fn panic_message(payload: &(dyn Any + Send)) -> String {
    if let Some(text) = payload.downcast_ref::<&str>() {
        (*text).to_string()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "non-string panic payload".to_string()
    }
}
