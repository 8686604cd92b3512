//! The `pgveil` command; everything it does lives in the library.

fn main() -> std::process::ExitCode {
    pgveil::cli::main()
}
