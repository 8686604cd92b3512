//! Child-process plumbing for the integration tests: the [`Pgveil`] handle that runs the
//! gateway binary, plus shared helpers (free ports, unique temp dirs, bounded command runs,
//! signals) and a registry of live children so that nothing outlives the test run.

use std::collections::hash_map::RandomState;
use std::fs;
use std::hash::{BuildHasher, Hasher};
use std::io::Read;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Output, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Mutex};
use std::thread;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

/// Environment variable that, when set to a non-empty value, keeps temp dirs for inspection.
pub const KEEP_ENV: &str = "PGVEIL_TEST_KEEP";

/// Polling interval used by the bounded wait loops in this module.
const POLL: Duration = Duration::from_millis(50);

/// How long [`Pgveil::start`] waits for the listen address to accept connections.
pub const GATEWAY_READY_TIMEOUT: Duration = Duration::from_secs(20);

/// How long [`Pgveil::stop`] waits after SIGTERM before sending SIGKILL.
pub const GATEWAY_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// PIDs of children spawned by the harness that have not been reaped yet.
static LIVE_CHILDREN: Mutex<Vec<u32>> = Mutex::new(Vec::new());

static SEQUENCE: AtomicU64 = AtomicU64::new(0);

/// Records `pid` as a live child of the harness (see [`kill_leftovers`]).
pub fn register_child(pid: u32) {
    live_children().push(pid);
}

/// Removes `pid` from the live-children registry once it has been reaped.
pub fn forget_child(pid: u32) {
    live_children().retain(|p| *p != pid);
}

/// Sends SIGKILL to every registered child that was never reaped and returns their PIDs.
///
/// The test runner calls this after all cases finished and the shared context was dropped,
/// as a last line of defence against processes leaked by hung or aborted cases.
pub fn kill_leftovers() -> Vec<u32> {
    let pids: Vec<u32> = std::mem::take(&mut *live_children());
    for pid in &pids {
        send_signal(*pid, libc::SIGKILL);
    }
    // Reap them too (they are our children), so no zombie is left behind.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut pending: Vec<libc::pid_t> = pids
        .iter()
        .filter_map(|p| libc::pid_t::try_from(*p).ok())
        .collect();
    for _ in 0..200 {
        pending.retain(|pid| {
            let mut status = 0;
            // SAFETY: waitpid(2) only writes the status into the provided integer.
            let reaped = unsafe { libc::waitpid(*pid, &mut status, libc::WNOHANG) };
            reaped == 0
        });
        if pending.is_empty() || Instant::now() >= deadline {
            break;
        }
        thread::sleep(Duration::from_millis(25));
    }
    pids
}

fn live_children() -> std::sync::MutexGuard<'static, Vec<u32>> {
    LIVE_CHILDREN
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Returns a TCP port on 127.0.0.1 that was free a moment ago (bind to port 0, read, drop).
///
/// Another process may grab it before it is used; callers that can retry should.
pub fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("binding 127.0.0.1:0 to find a port");
    listener
        .local_addr()
        .expect("reading the local address of a bound listener")
        .port()
}

/// Returns `n_words * 16` lowercase hex characters that differ between calls and runs.
///
/// Not cryptographically strong; good enough for throwaway test passwords and names.
pub fn random_hex(n_words: usize) -> String {
    let nanos = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    let mut out = String::with_capacity(n_words * 16);
    for word in 0..n_words {
        let mut hasher = RandomState::new().build_hasher();
        hasher.write_u128(nanos);
        hasher.write_u32(std::process::id());
        hasher.write_usize(word);
        hasher.write_u64(SEQUENCE.fetch_add(1, Ordering::Relaxed));
        out.push_str(&format!("{:016x}", hasher.finish()));
    }
    out
}

/// Creates a fresh directory `<temp_dir>/<prefix>-<pid>-<n>-<random>` and returns its path.
pub fn unique_temp_dir(prefix: &str) -> PathBuf {
    let base = std::env::temp_dir();
    for _ in 0..20 {
        let seq = SEQUENCE.fetch_add(1, Ordering::Relaxed);
        let token = &random_hex(1)[..8];
        let dir = base.join(format!("{prefix}-{}-{seq}-{token}", std::process::id()));
        match fs::create_dir(&dir) {
            Ok(()) => return dir,
            Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => continue,
            Err(e) => panic!("cannot create temp dir {}: {e}", dir.display()),
        }
    }
    panic!(
        "could not create a unique temp dir under {}",
        base.display()
    );
}

/// True when temp dirs should be kept after the test (the [`KEEP_ENV`] variable is set).
pub fn keep_temp_dirs() -> bool {
    std::env::var_os(KEEP_ENV).is_some_and(|v| !v.is_empty())
}

/// Removes a harness temp dir unless [`keep_temp_dirs`] says otherwise.
pub fn remove_temp_dir(dir: &Path) {
    if keep_temp_dirs() {
        eprintln!("harness: keeping {}", dir.display());
        return;
    }
    if let Err(e) = fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            eprintln!("harness: could not remove {}: {e}", dir.display());
        }
    }
}

/// Sends `signal` to `pid`; returns false if the process does not exist (or is not ours).
pub fn send_signal(pid: u32, signal: libc::c_int) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: kill(2) has no memory-safety preconditions; a positive pid targets one process.
    unsafe { libc::kill(pid, signal) == 0 }
}

/// True while a process with this PID exists (including an unreaped zombie).
pub fn pid_exists(pid: u32) -> bool {
    send_signal(pid, 0)
}

/// Polls `child` until it exits or `limit` elapses; reaps it and returns its status.
pub fn wait_child(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let deadline = Instant::now() + limit;
    let max_polls = limit.as_millis() / POLL.as_millis() + 2;
    for _ in 0..max_polls {
        match child.try_wait() {
            Ok(Some(status)) => {
                forget_child(child.id());
                return Some(status);
            }
            Ok(None) => {}
            Err(e) => {
                eprintln!("harness: waiting for pid {} failed: {e}", child.id());
                return None;
            }
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(POLL);
    }
    None
}

/// Sends `signal` to `child`, waits up to `grace`, then SIGKILLs it and reaps it.
///
/// Returns the exit status when the child was reaped.
pub fn terminate_child(
    child: &mut Child,
    signal: libc::c_int,
    grace: Duration,
) -> Option<ExitStatus> {
    if let Ok(Some(status)) = child.try_wait() {
        forget_child(child.id());
        return Some(status);
    }
    send_signal(child.id(), signal);
    if let Some(status) = wait_child(child, grace) {
        return Some(status);
    }
    eprintln!(
        "harness: pid {} ignored signal {signal} for {grace:?}; sending SIGKILL",
        child.id()
    );
    send_signal(child.id(), libc::SIGKILL);
    wait_child(child, Duration::from_secs(5))
}

/// Program and arguments of `cmd` for messages (environment variables are left out on
/// purpose, as they may carry passwords).
pub fn describe(cmd: &Command) -> String {
    let mut text = cmd.get_program().to_string_lossy().into_owned();
    for arg in cmd.get_args() {
        text.push(' ');
        text.push_str(&arg.to_string_lossy());
    }
    text
}

/// Runs `cmd` to completion with captured stdout/stderr, killing it after `limit`.
///
/// Panics if the command cannot be spawned or does not finish in time. The exit status is
/// returned as-is; check `output.status` yourself.
pub fn run_bounded(cmd: &mut Command, limit: Duration) -> Output {
    try_run_bounded(cmd, limit).unwrap_or_else(|e| panic!("cannot spawn {}: {e}", describe(cmd)))
}

/// Like [`run_bounded`] but returns spawn errors (e.g. program not found) instead of
/// panicking. Still panics when the command outlives `limit`.
pub fn try_run_bounded(cmd: &mut Command, limit: Duration) -> std::io::Result<Output> {
    let shown = describe(cmd);
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn()?;
    register_child(child.id());
    let stdout = read_in_background(child.stdout.take());
    let stderr = read_in_background(child.stderr.take());
    let status = match wait_child(&mut child, limit) {
        Some(status) => status,
        None => {
            send_signal(child.id(), libc::SIGKILL);
            let _ = wait_child(&mut child, Duration::from_secs(5));
            let err = stderr
                .recv_timeout(Duration::from_secs(1))
                .unwrap_or_default();
            panic!(
                "{shown} did not finish within {limit:?}; stderr:\n{}",
                String::from_utf8_lossy(&err)
            );
        }
    };
    // Grandchildren could keep the pipes open, so collecting the output is bounded too.
    let grace = Duration::from_secs(5);
    Ok(Output {
        status,
        stdout: stdout.recv_timeout(grace).unwrap_or_default(),
        stderr: stderr.recv_timeout(grace).unwrap_or_default(),
    })
}

fn read_in_background<R: Read + Send + 'static>(source: Option<R>) -> mpsc::Receiver<Vec<u8>> {
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut buf = Vec::new();
        if let Some(mut source) = source {
            let _ = source.read_to_end(&mut buf);
        }
        let _ = tx.send(buf);
    });
    rx
}

/// Reads a log file lossily; a missing file reads as an empty string.
pub fn read_log(path: &Path) -> String {
    fs::read(path)
        .map(|bytes| String::from_utf8_lossy(&bytes).into_owned())
        .unwrap_or_default()
}

/// The last `lines` lines of a log file.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = read_log(path);
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// Waits until `addr` accepts a TCP connection, for at most `limit`; true on success.
pub fn wait_for_port(addr: SocketAddr, limit: Duration) -> bool {
    let deadline = Instant::now() + limit;
    let max_polls = limit.as_millis() / POLL.as_millis() + 2;
    for _ in 0..max_polls {
        if TcpStream::connect_timeout(&addr, Duration::from_millis(250)).is_ok() {
            return true;
        }
        if Instant::now() >= deadline {
            break;
        }
        thread::sleep(POLL);
    }
    false
}

/// A running gateway process started from the test binary's `pgveil` executable.
///
/// Its config file and combined stdout/stderr log live in a private temp dir that is
/// removed on drop (unless [`KEEP_ENV`] is set). Dropping the handle stops the process; if
/// the drop happens while a test is panicking, the log tail is printed to stderr first.
pub struct Pgveil {
    child: Child,
    pid: u32,
    dir: PathBuf,
    config: PathBuf,
    log: PathBuf,
    status: Option<ExitStatus>,
}

impl Pgveil {
    /// Starts `bin serve --config <file>` with `config_toml` written to a temp file and waits
    /// up to [`GATEWAY_READY_TIMEOUT`] until `listen` accepts TCP connections.
    ///
    /// `envs` are added to the inherited environment; `RUST_LOG` defaults to `pgveil=debug`
    /// when neither `envs` nor the test environment set it. Panics with the log if the
    /// process exits early or never starts listening.
    pub fn start(
        bin: &Path,
        config_toml: &str,
        listen: SocketAddr,
        envs: &[(&str, &str)],
    ) -> Pgveil {
        let mut gateway = Pgveil::spawn(bin, config_toml, envs);
        gateway.wait_ready(listen, GATEWAY_READY_TIMEOUT);
        gateway
    }

    /// Like [`Pgveil::start`] but returns right after spawning, without waiting for a port
    /// (useful for tests that expect the gateway to refuse a config and exit).
    pub fn spawn(bin: &Path, config_toml: &str, envs: &[(&str, &str)]) -> Pgveil {
        let dir = unique_temp_dir("pgveil-it-gw");
        let config = dir.join("pgveil.toml");
        let log = dir.join("pgveil.log");
        fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&config)
            .and_then(|mut f| std::io::Write::write_all(&mut f, config_toml.as_bytes()))
            .unwrap_or_else(|e| panic!("cannot write {}: {e}", config.display()));
        let log_file = fs::File::create(&log)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", log.display()));
        let log_err = log_file
            .try_clone()
            .expect("duplicating the gateway log handle");

        let mut cmd = Command::new(bin);
        cmd.arg("serve")
            .arg("--config")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        let caller_sets = |key: &str| envs.iter().any(|(k, _)| *k == key);
        if !caller_sets("RUST_LOG") && std::env::var_os("RUST_LOG").is_none() {
            cmd.env("RUST_LOG", "pgveil=debug");
        }
        if !caller_sets("RUST_BACKTRACE") && std::env::var_os("RUST_BACKTRACE").is_none() {
            cmd.env("RUST_BACKTRACE", "1");
        }
        cmd.envs(envs.iter().copied());
        let child = match cmd.spawn() {
            Ok(child) => child,
            Err(e) => {
                remove_temp_dir(&dir);
                panic!("cannot spawn gateway binary {}: {e}", bin.display());
            }
        };
        let pid = child.id();
        register_child(pid);
        Pgveil {
            child,
            pid,
            dir,
            config,
            log,
            status: None,
        }
    }

    /// Waits up to `limit` until `listen` accepts TCP connections; panics with the log if the
    /// process exits first or the time runs out.
    ///
    /// The probe opens and immediately closes one TCP connection, which the gateway may log.
    pub fn wait_ready(&mut self, listen: SocketAddr, limit: Duration) {
        let deadline = Instant::now() + limit;
        let max_polls = limit.as_millis() / POLL.as_millis() + 2;
        for _ in 0..max_polls {
            if let Some(status) = self.try_wait() {
                panic!(
                    "gateway (pid {}) exited with {status} before listening on {listen}; log:\n{}",
                    self.pid,
                    self.log_text()
                );
            }
            if TcpStream::connect_timeout(&listen, Duration::from_millis(250)).is_ok() {
                return;
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(POLL);
        }
        let log = self.log_text();
        self.stop();
        panic!("gateway did not listen on {listen} within {limit:?}; log:\n{log}");
    }

    /// The gateway's process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The gateway's combined stdout/stderr so far.
    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// Path of the combined stdout/stderr log file.
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// Path of the config file passed with `--config`.
    pub fn config_path(&self) -> &Path {
        &self.config
    }

    /// The private temp dir holding the config and log (free for tests to put files in).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Polls the log until it contains `needle`, for at most `limit`; true if found.
    pub fn wait_for_log(&self, needle: &str, limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        let max_polls = limit.as_millis() / POLL.as_millis() + 2;
        for _ in 0..max_polls {
            if self.log_text().contains(needle) {
                return true;
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(POLL);
        }
        false
    }

    /// Sends an arbitrary signal (e.g. `libc::SIGHUP`) to the gateway; false if it is gone.
    pub fn signal(&self, signal: libc::c_int) -> bool {
        self.status.is_none() && send_signal(self.pid, signal)
    }

    /// Returns the exit status if the process has exited (reaping it), without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Ok(Some(status)) = self.child.try_wait() {
                forget_child(self.pid);
                self.status = Some(status);
            }
        }
        self.status
    }

    /// True while the process has not exited.
    pub fn is_running(&mut self) -> bool {
        self.try_wait().is_none()
    }

    /// Waits up to `limit` for the process to exit by itself; returns its status if it did.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = wait_child(&mut self.child, limit);
        }
        self.status
    }

    /// Graceful stop: SIGTERM, wait up to [`GATEWAY_STOP_TIMEOUT`], then SIGKILL.
    ///
    /// Returns the exit status (None only if the process could not be reaped).
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            self.status = terminate_child(&mut self.child, libc::SIGTERM, GATEWAY_STOP_TIMEOUT);
        }
        self.status
    }

    /// Hard stop: SIGKILL and reap, simulating a crash.
    pub fn kill9(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            send_signal(self.pid, libc::SIGKILL);
            self.status = wait_child(&mut self.child, Duration::from_secs(5));
        }
        self.status
    }
}

impl Drop for Pgveil {
    fn drop(&mut self) {
        if thread::panicking() {
            eprintln!(
                "harness: gateway pid {} log tail ({}):\n{}",
                self.pid,
                self.log.display(),
                log_tail(&self.log, 60)
            );
        }
        self.stop();
        remove_temp_dir(&self.dir);
    }
}
