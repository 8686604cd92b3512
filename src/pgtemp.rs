//! A throwaway PostgreSQL cluster for `pgveil demo` and the test suite.
//!
//! The cluster lives in a fresh temporary directory, listens on a free
//! loopback port and on a Unix socket in that directory, and is stopped by
//! PID and removed when the handle drops. PostgreSQL refuses to run as root,
//! so when pgveil runs as root the server runs as the `postgres` OS user.

use std::ffi::OsStr;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};

/// How long the server may take to accept connections after start.
const START_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a fast shutdown may take before the server is killed.
const STOP_TIMEOUT: Duration = Duration::from_secs(20);
/// OS user that runs the server when pgveil runs as root.
const SERVICE_USER: &str = "postgres";

/// Where to look for the server binaries when `PG_BIN` is not set and
/// `initdb` is not on PATH.
const BIN_DIR_PATTERNS: [&str; 4] = [
    "/usr/lib/postgresql",
    "/usr/local/pgsql/bin",
    "/opt/homebrew/bin",
    "/usr/pgsql",
];

/// Options for a new cluster.
#[derive(Debug, Default, Clone)]
pub struct Options {
    /// Extra `postgresql.conf` lines.
    pub conf: Vec<String>,
    /// `pg_hba.conf` lines for TCP; the Unix socket is always `trust`.
    pub hba: Vec<String>,
    /// Files to place in the data directory (name, contents), owned by the
    /// server's user with mode 0600 (TLS keys and certificates).
    pub files: Vec<(String, Vec<u8>)>,
}

/// A running throwaway cluster.
pub struct TempCluster {
    dir: PathBuf,
    bin: PathBuf,
    port: u16,
    child: Option<Child>,
    owner: Option<(u32, u32)>,
}

impl std::fmt::Debug for TempCluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TempCluster")
            .field("dir", &self.dir)
            .field("port", &self.port)
            .finish_non_exhaustive()
    }
}

impl TempCluster {
    /// Creates, configures and starts a cluster; waits until it accepts
    /// connections. The superuser is `postgres`, with no password over the
    /// Unix socket.
    pub fn start(options: &Options) -> anyhow::Result<Self> {
        let bin = find_bin_dir()?;
        let owner = service_owner()?;
        let dir = make_temp_dir(owner)?;
        let port = free_port()?;
        let mut cluster = Self {
            dir,
            bin,
            port,
            child: None,
            owner,
        };
        cluster.init(options)?;
        cluster.launch()?;
        Ok(cluster)
    }

    /// TCP port on 127.0.0.1.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The cluster's temporary directory (also its Unix socket directory).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Directory holding the server binaries (psql, pgbench, ...).
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// PID of the postmaster.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    fn init(&self, options: &Options) -> anyhow::Result<()> {
        let data = self.dir.join("data");
        let status = self
            .command("initdb")
            .args(["-D"])
            .arg(&data)
            .args([
                "-U",
                "postgres",
                "-E",
                "UTF8",
                "--locale=C",
                "--auth-local=trust",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .output()
            .context("running initdb")?;
        if !status.status.success() {
            bail!(
                "initdb failed: {}",
                String::from_utf8_lossy(&status.stderr).trim()
            );
        }
        let mut conf = vec![
            "listen_addresses = '127.0.0.1'".to_owned(),
            format!("port = {}", self.port),
            format!("unix_socket_directories = '{}'", self.dir.display()),
            "fsync = off".to_owned(),
            "synchronous_commit = off".to_owned(),
            "full_page_writes = off".to_owned(),
        ];
        conf.extend(options.conf.iter().cloned());
        append(&data.join("postgresql.conf"), &conf.join("\n"))?;
        let mut hba = vec!["local all all trust".to_owned()];
        hba.extend(options.hba.iter().cloned());
        write_owned(
            &data.join("pg_hba.conf"),
            (hba.join("\n") + "\n").as_bytes(),
            self.owner,
        )?;
        for (name, contents) in &options.files {
            write_owned(&data.join(name), contents, self.owner)?;
        }
        Ok(())
    }

    fn launch(&mut self) -> anyhow::Result<()> {
        let log =
            std::fs::File::create(self.dir.join("server.log")).context("creating server.log")?;
        if let Some((uid, gid)) = self.owner {
            std::os::unix::fs::chown(self.dir.join("server.log"), Some(uid), Some(gid))?;
        }
        let child = self
            .command("postgres")
            .arg("-D")
            .arg(self.dir.join("data"))
            .stdout(log.try_clone()?)
            .stderr(log)
            .stdin(Stdio::null())
            // Its own process group: a Ctrl-C meant for pgveil does not reach
            // the server, which is stopped by PID in order instead.
            .process_group(0)
            .spawn()
            .context("starting postgres")?;
        self.child = Some(child);
        let deadline = Instant::now() + START_TIMEOUT;
        while Instant::now() < deadline {
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    bail!("postgres exited ({status}): {}", self.log_tail());
                }
            }
            let ready = self
                .command("pg_isready")
                .args(["-q", "-h"])
                .arg(&self.dir)
                .args(["-p", &self.port.to_string()])
                .status()
                .context("running pg_isready")?;
            if ready.success() {
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        bail!(
            "postgres did not accept connections in time: {}",
            self.log_tail()
        )
    }

    /// The end of the server log, for error messages.
    pub fn log_tail(&self) -> String {
        let log = std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default();
        let lines: Vec<&str> = log.lines().rev().take(15).collect();
        lines.into_iter().rev().collect::<Vec<_>>().join("\n")
    }

    /// Runs SQL through psql over the Unix socket as the superuser.
    /// Stops at the first error.
    pub fn psql(&self, database: &str, sql: &str) -> anyhow::Result<String> {
        use std::io::Write;
        let mut child = self
            .command("psql")
            .args(["-X", "-q", "-v", "ON_ERROR_STOP=1", "-U", "postgres", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-d", database, "-f", "-"])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .context("running psql")?;
        if let Some(mut stdin) = child.stdin.take() {
            stdin.write_all(sql.as_bytes())?;
        }
        let output = child.wait_with_output()?;
        if !output.status.success() {
            bail!(
                "psql failed: {}",
                String::from_utf8_lossy(&output.stderr).trim()
            );
        }
        Ok(String::from_utf8_lossy(&output.stdout).into_owned())
    }

    /// A command for a server binary, run as the server's user when root.
    fn command(&self, program: impl AsRef<OsStr>) -> Command {
        let mut cmd = Command::new(self.bin.join(program.as_ref()));
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd.current_dir(&self.dir);
        cmd
    }

    /// Fast shutdown by PID, then SIGKILL if it takes too long; removes the
    /// directory.
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            signal(&child, libc::SIGINT);
            let deadline = Instant::now() + STOP_TIMEOUT;
            while Instant::now() < deadline {
                if matches!(child.try_wait(), Ok(Some(_))) {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            if !matches!(child.try_wait(), Ok(Some(_))) {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

impl Drop for TempCluster {
    fn drop(&mut self) {
        self.stop();
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    if let Ok(pid) = libc::pid_t::try_from(child.id()) {
        // SAFETY: kill(2) with a PID we spawned and still own; no memory is touched.
        unsafe {
            libc::kill(pid, sig);
        }
    }
}

/// Finds the directory holding `initdb` and `postgres`.
pub fn find_bin_dir() -> anyhow::Result<PathBuf> {
    if let Some(dir) = std::env::var_os("PG_BIN") {
        return Ok(PathBuf::from(dir));
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            // Follow links: PATH often holds links to a few of the binaries
            // only, while the real directory has all of them.
            if let Ok(initdb) = std::fs::canonicalize(dir.join("initdb")) {
                if let Some(real) = initdb.parent().filter(|d| d.join("postgres").is_file()) {
                    return Ok(real.to_owned());
                }
            }
        }
    }
    let mut found: Vec<PathBuf> = Vec::new();
    for base in BIN_DIR_PATTERNS {
        let base = Path::new(base);
        if base.join("initdb").is_file() {
            found.push(base.to_owned());
        }
        // Debian and Ubuntu: /usr/lib/postgresql/<major>/bin; RPM: /usr/pgsql-<major>/bin.
        if let Ok(entries) = std::fs::read_dir(base) {
            for entry in entries.flatten() {
                let bin = entry.path().join("bin");
                if bin.join("initdb").is_file() {
                    found.push(bin);
                }
            }
        }
    }
    // The highest major version wins.
    found.sort_by_key(|p| {
        p.components()
            .filter_map(|c| c.as_os_str().to_str()?.parse::<u32>().ok())
            .next_back()
            .unwrap_or(0)
    });
    found.pop().context(
        "PostgreSQL server binaries (initdb, postgres) not found: install the PostgreSQL \
         server package, or set PG_BIN to the directory that holds them",
    )
}

/// The uid and gid to run the server as: the `postgres` user when we are root.
fn service_owner() -> anyhow::Result<Option<(u32, u32)>> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Ok(None);
    }
    let passwd = std::fs::read_to_string("/etc/passwd").context("reading /etc/passwd")?;
    for line in passwd.lines() {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.first() == Some(&SERVICE_USER) && fields.len() > 3 {
            let uid = fields[2].parse().context("uid of postgres")?;
            let gid = fields[3].parse().context("gid of postgres")?;
            return Ok(Some((uid, gid)));
        }
    }
    bail!("running as root, and there is no `{SERVICE_USER}` user to run PostgreSQL as")
}

fn make_temp_dir(owner: Option<(u32, u32)>) -> anyhow::Result<PathBuf> {
    let unique = format!(
        "pgveil-pg-{}-{}",
        std::process::id(),
        uuid::Uuid::now_v7().simple()
    );
    let dir = std::env::temp_dir().join(unique);
    std::fs::create_dir(&dir).with_context(|| format!("creating {}", dir.display()))?;
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(&dir, Some(uid), Some(gid))?;
    }
    Ok(dir)
}

/// A port that was free on 127.0.0.1 a moment ago.
pub fn free_port() -> anyhow::Result<u16> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0")?;
    Ok(listener.local_addr()?.port())
}

fn append(path: &Path, text: &str) -> anyhow::Result<()> {
    use std::io::Write;
    let mut file = std::fs::OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| format!("opening {}", path.display()))?;
    writeln!(file, "\n{text}")?;
    Ok(())
}

fn write_owned(path: &Path, contents: &[u8], owner: Option<(u32, u32)>) -> anyhow::Result<()> {
    std::fs::write(path, contents).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    Ok(())
}
