//! Real clients beyond libpq and tokio-postgres: SQLAlchemy on psycopg, in a
//! virtual environment the harness builds under `target/`, and node-postgres
//! from the tests' Node.js package (installed with the IdP's packages).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

use super::idp::{ensure_npm_deps, idp_package_dir, FileLock};
use super::proc::run_bounded;

/// Upper bound for creating the virtual environment and installing into it.
pub const PIP_TIMEOUT: Duration = Duration::from_secs(300);

/// The folder of the client scripts and `requirements.txt`.
pub fn clients_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/clients")
}

/// The Python of a virtual environment holding `requirements.txt`, built on
/// first use (once per process, serialized across processes).
pub fn python() -> PathBuf {
    static OUTCOME: OnceLock<Result<PathBuf, String>> = OnceLock::new();
    match OUTCOME.get_or_init(install_python) {
        Ok(path) => path.clone(),
        Err(message) => panic!("{message}"),
    }
}

/// The `node` command and the `NODE_PATH` that finds node-postgres.
pub fn node() -> (PathBuf, PathBuf) {
    ensure_npm_deps();
    (
        PathBuf::from("node"),
        idp_package_dir().join("node_modules"),
    )
}

fn install_python() -> Result<PathBuf, String> {
    let requirements = clients_dir().join("requirements.txt");
    let venv = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/test-python");
    let python = venv.join("bin/python");
    let stamp = venv.join("installed-requirements.txt");
    let wanted = std::fs::read_to_string(&requirements)
        .map_err(|e| format!("cannot read {}: {e}", requirements.display()))?;
    let current = || std::fs::read_to_string(&stamp).ok().as_deref() == Some(wanted.as_str());
    if current() {
        return Ok(python);
    }
    let _lock = FileLock::acquire(&requirements, PIP_TIMEOUT + Duration::from_secs(30))?;
    if current() {
        return Ok(python);
    }
    eprintln!("harness: installing the Python clients (pip)");
    let run = |cmd: &mut Command| {
        cmd.stdin(Stdio::null())
            .env("PIP_DISABLE_PIP_VERSION_CHECK", "1");
        let out = run_bounded(cmd, PIP_TIMEOUT);
        if out.status.success() {
            Ok(())
        } else {
            Err(format!(
                "{cmd:?} failed with {}:\n{}\n{}",
                out.status,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            ))
        }
    };
    run(Command::new("python3").arg("-m").arg("venv").arg(&venv))?;
    run(Command::new(&python)
        .args(["-m", "pip", "install", "--quiet", "-r"])
        .arg(&requirements))?;
    std::fs::write(&stamp, wanted).map_err(|e| format!("cannot write {}: {e}", stamp.display()))?;
    Ok(python)
}
