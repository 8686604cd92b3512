//! A real OpenID Connect identity provider for the integration tests: `oidc-provider` (Node.js)
//! run from `integration/idp/server.mjs`, serving HTTPS on 127.0.0.1 with a leaf certificate
//! from the test CA.
//!
//! Every test identity is an OAuth client that obtains JWT access tokens with the
//! client-credentials grant; the tokens carry `preferred_username` and `groups` and their
//! audience is [`AUDIENCE`]. Test-only endpoints of that server rotate the signing keys
//! ([`Idp::rotate`]) and forge broken tokens for negative tests ([`Idp::forge`]).
//!
//! HTTP requests are made by running `curl`, and the npm dependencies are installed on first
//! use by [`ensure_npm_deps`]; both `node` (>= 20.19) and `npm` must be on `PATH`. All calls
//! block the current thread for the duration of one short HTTP request or process start.

use std::fs;
use std::io::Write;
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant, SystemTime};

use serde_json::Value;

use super::certs::TestCa;
use super::proc::{
    forget_child, free_port, log_tail, random_hex, read_log, register_child, remove_temp_dir,
    run_bounded, send_signal, unique_temp_dir, wait_child,
};

/// Audience (resource indicator) of the access tokens that [`Idp::token`] returns.
pub const AUDIENCE: &str = "pgveil://db";

/// Resource indicator that yields a token for [`AUDIENCE`] signed with the IdP's ES256 key.
pub const ES256_RESOURCE: &str = "pgveil://db?alg=ES256";

/// The token defects [`Idp::forge`] understands.
pub const FORGE_KINDS: [&str; 8] = [
    "expired",
    "not_yet_valid",
    "wrong_audience",
    "wrong_issuer",
    "tampered",
    "alg_none",
    "hs256_with_public_key",
    "unknown_kid",
];

/// Lifetime of the access tokens unless [`Idp::start_with_ttl`] says otherwise.
pub const DEFAULT_TOKEN_TTL: Duration = Duration::from_secs(300);

/// How long [`Idp::start`] waits for the `IDP READY` line.
pub const IDP_READY_TIMEOUT: Duration = Duration::from_secs(30);

/// How long [`Idp::stop`] waits after SIGTERM before sending SIGKILL.
pub const IDP_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// Upper bound for `npm ci` in [`ensure_npm_deps`].
pub const NPM_TIMEOUT: Duration = Duration::from_secs(300);

/// Upper bound for one `curl` request to the IdP (curl itself gives up a bit earlier).
const HTTP_TIMEOUT: Duration = Duration::from_secs(30);
const CURL_MAX_TIME_SECS: &str = "20";

/// Exit code of `server.mjs` when its port is already taken.
const EXIT_ADDR_IN_USE: i32 = 3;

/// Attempts with a fresh port when the chosen one turned out to be taken.
const START_ATTEMPTS: usize = 3;

const POLL: Duration = Duration::from_millis(50);

/// One test identity: an OAuth client of the IdP and the claims its tokens carry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IdpClient {
    /// OAuth `client_id`; also the token's `sub` and `client_id` claims.
    pub client_id: String,
    /// Client secret used at the token endpoint (`client_secret_post`).
    pub secret: String,
    /// Value of the `preferred_username` claim.
    pub username: String,
    /// Value of the `groups` claim (may be empty).
    pub groups: Vec<String>,
}

impl IdpClient {
    /// A client with a random secret whose tokens name `username` and `groups`.
    pub fn new(client_id: &str, username: &str, groups: &[&str]) -> IdpClient {
        IdpClient {
            client_id: client_id.to_string(),
            secret: random_hex(2),
            username: username.to_string(),
            groups: groups.iter().map(|g| g.to_string()).collect(),
        }
    }
}

/// Signing keys after [`Idp::rotate`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rotation {
    /// `kid` of the RSA key that signs RS256 tokens from now on.
    pub rs256_kid: String,
    /// `kid` of the P-256 key that signs ES256 tokens from now on.
    pub es256_kid: String,
    /// Every `kid` in the JWKS, active keys first.
    pub published: Vec<String>,
}

/// Directory of the IdP's Node.js package (`server.mjs`, `package.json`, lockfile).
pub fn idp_package_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("integration/idp")
}

/// Runs `npm ci --no-audit --no-fund` in [`idp_package_dir`] unless `node_modules` is already
/// at least as new as `package-lock.json`.
///
/// Runs at most once per process (later calls repeat the first outcome) and is serialized
/// across processes with a `flock` on the lockfile. Panics with npm's output on failure or
/// after [`NPM_TIMEOUT`].
pub fn ensure_npm_deps() {
    static OUTCOME: OnceLock<Result<(), String>> = OnceLock::new();
    if let Err(message) = OUTCOME.get_or_init(install_npm_deps) {
        panic!("{message}");
    }
}

fn npm_deps_current(dir: &Path) -> bool {
    let modified = |p: PathBuf| fs::metadata(p).and_then(|m| m.modified()).ok();
    let installed = modified(dir.join("node_modules/.package-lock.json"));
    let wanted = modified(dir.join("package-lock.json"));
    let complete = dir
        .join("node_modules/oidc-provider/package.json")
        .is_file()
        && dir.join("node_modules/jose/package.json").is_file()
        && dir.join("node_modules/pg/package.json").is_file();
    match (installed, wanted) {
        (Some(installed), Some(wanted)) => complete && installed >= wanted,
        _ => false,
    }
}

fn install_npm_deps() -> Result<(), String> {
    let dir = idp_package_dir();
    if npm_deps_current(&dir) {
        return Ok(());
    }
    let _lock = FileLock::acquire(
        &dir.join("package-lock.json"),
        NPM_TIMEOUT + Duration::from_secs(30),
    )?;
    // Another process may have finished the install while we waited for the lock.
    if npm_deps_current(&dir) {
        return Ok(());
    }
    eprintln!("harness: installing the IdP's npm dependencies (npm ci)");
    let mut cmd = Command::new("npm");
    cmd.args(["ci", "--no-audit", "--no-fund"])
        .current_dir(&dir)
        .env("NPM_CONFIG_UPDATE_NOTIFIER", "false")
        .stdin(Stdio::null());
    let output = run_bounded(&mut cmd, NPM_TIMEOUT);
    if !output.status.success() {
        return Err(format!(
            "npm ci in {} failed with {}:\n{}\n{}",
            dir.display(),
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        ));
    }
    if !npm_deps_current(&dir) {
        return Err(format!(
            "npm ci in {} succeeded but node_modules still looks incomplete",
            dir.display()
        ));
    }
    Ok(())
}

/// Exclusive `flock` on a file (opened read-only, never changed), released on drop; keeps
/// concurrent test processes from installing the same packages at the same time.
pub struct FileLock {
    file: fs::File,
}

impl FileLock {
    /// Waits up to `limit` for the lock on `path`.
    pub fn acquire(path: &Path, limit: Duration) -> Result<FileLock, String> {
        let file =
            fs::File::open(path).map_err(|e| format!("cannot open {}: {e}", path.display()))?;
        let deadline = Instant::now() + limit;
        let max_polls = limit.as_millis() / 200 + 2;
        for _ in 0..max_polls {
            // SAFETY: flock(2) on a descriptor owned by `file`, which outlives the call.
            if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
                return Ok(FileLock { file });
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(200));
        }
        Err(format!(
            "another process held {} for more than {limit:?}",
            path.display()
        ))
    }
}

impl Drop for FileLock {
    fn drop(&mut self) {
        // SAFETY: as in `acquire`; closing the file would release the lock as well.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
    }
}

/// A running test IdP. Dropping it stops the process and removes its temp dir (keys, client
/// list, log) unless `PGVEIL_TEST_KEEP` is set; while a test panics, the log tail is printed.
pub struct Idp {
    child: Option<Child>,
    pid: u32,
    port: u16,
    issuer: String,
    dir: PathBuf,
    ca_pem: PathBuf,
    cert: PathBuf,
    key: PathBuf,
    clients_file: PathBuf,
    secret_files: Vec<(String, PathBuf)>,
    log: PathBuf,
    token_ttl: Duration,
    status: Option<ExitStatus>,
    /// Set once a panic message already carried the whole log.
    log_reported: bool,
}

impl Idp {
    /// Installs the npm dependencies if needed, issues a TLS certificate for 127.0.0.1 and
    /// localhost from `ca`, and starts the IdP with `clients` on a free loopback port.
    ///
    /// Panics with the IdP's output if it does not report readiness within
    /// [`IDP_READY_TIMEOUT`].
    pub fn start(ca: &TestCa, clients: &[IdpClient]) -> Idp {
        Idp::start_with_ttl(ca, clients, DEFAULT_TOKEN_TTL)
    }

    /// Like [`Idp::start`] with access tokens that live `token_ttl` (whole seconds, >= 1).
    pub fn start_with_ttl(ca: &TestCa, clients: &[IdpClient], token_ttl: Duration) -> Idp {
        assert!(!clients.is_empty(), "the IdP needs at least one client");
        assert!(
            token_ttl.as_secs() >= 1,
            "token lifetime must be at least one second"
        );
        ensure_npm_deps();
        let dir = unique_temp_dir("pgveil-it-idp");
        let leaf = ca.issue_leaf(
            &format!("idp-{}", &random_hex(1)[..8]),
            &["127.0.0.1", "localhost"],
        );
        let clients_file = dir.join("clients.json");
        write_private(&clients_file, clients_json(clients).as_bytes());
        let secrets_dir = dir.join("secrets");
        fs::create_dir(&secrets_dir)
            .unwrap_or_else(|e| panic!("cannot create {}: {e}", secrets_dir.display()));
        let secret_files = clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                let path = secrets_dir.join(format!("{i}.secret"));
                write_private(&path, c.secret.as_bytes());
                (c.client_id.clone(), path)
            })
            .collect();
        fs::create_dir(dir.join("state"))
            .unwrap_or_else(|e| panic!("cannot create the IdP state dir: {e}"));

        let mut idp = Idp {
            child: None,
            pid: 0,
            port: 0,
            issuer: String::new(),
            log: dir.join("idp.log"),
            dir,
            ca_pem: ca.ca_pem().to_path_buf(),
            cert: leaf.cert,
            key: leaf.key,
            clients_file,
            secret_files,
            token_ttl,
            status: None,
            log_reported: false,
        };
        for attempt in 1..=START_ATTEMPTS {
            idp.port = free_port();
            idp.issuer = format!("https://127.0.0.1:{}", idp.port);
            match idp.launch() {
                Ok(()) => return idp,
                Err(status)
                    if status.code() == Some(EXIT_ADDR_IN_USE) && attempt < START_ATTEMPTS =>
                {
                    eprintln!("harness: IdP port {} was taken; retrying", idp.port);
                }
                Err(status) => idp.fail_start(&format!("exited with {status}")),
            }
        }
        unreachable!("the last start attempt either succeeds or panics")
    }

    /// Spawns node and waits for the READY line; returns the exit status if it died first.
    fn launch(&mut self) -> Result<(), ExitStatus> {
        let log_start = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap_or_else(|e| panic!("cannot open {}: {e}", self.log.display()));
        let log_err = log_file
            .try_clone()
            .expect("duplicating the IdP log handle");
        let mut cmd = Command::new("node");
        cmd.arg(idp_package_dir().join("server.mjs"))
            .current_dir(idp_package_dir())
            .env("IDP_PORT", self.port.to_string())
            .env("IDP_CERT", &self.cert)
            .env("IDP_KEY", &self.key)
            .env("IDP_ISSUER", &self.issuer)
            .env("IDP_STATE_DIR", self.dir.join("state"))
            .env("IDP_CLIENTS", &self.clients_file)
            .env("IDP_TOKEN_TTL", self.token_ttl.as_secs().to_string())
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn node (Node.js >= 20.19 is required): {e}"));
        self.pid = child.id();
        register_child(self.pid);
        self.child = Some(child);
        self.status = None;

        let ready = format!("IDP READY {}", self.issuer);
        let deadline = Instant::now() + IDP_READY_TIMEOUT;
        let max_polls = IDP_READY_TIMEOUT.as_millis() / POLL.as_millis() + 2;
        for _ in 0..max_polls {
            let text = read_log(&self.log);
            let fresh = text
                .get(usize::try_from(log_start).unwrap_or(0)..)
                .unwrap_or("");
            if fresh.lines().any(|line| line == ready) {
                return Ok(());
            }
            if let Some(status) = self.try_wait() {
                return Err(status);
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(POLL);
        }
        self.fail_start(&format!(
            "did not print {ready:?} within {IDP_READY_TIMEOUT:?}"
        ))
    }

    fn fail_start(&mut self, what: &str) -> ! {
        self.stop();
        self.log_reported = true;
        panic!(
            "test IdP (pid {}) {what}; log:\n{}",
            self.pid,
            read_log(&self.log)
        );
    }

    /// Issuer identifier, `https://127.0.0.1:<port>` (no trailing slash).
    pub fn issuer(&self) -> String {
        self.issuer.clone()
    }

    /// URL of the JWKS document (the discovery document's `jwks_uri`).
    pub fn jwks_uri(&self) -> String {
        format!("{}/jwks", self.issuer)
    }

    /// URL of the OpenID discovery document.
    pub fn discovery_url(&self) -> String {
        format!("{}/.well-known/openid-configuration", self.issuer)
    }

    /// The TCP port the IdP listens on (127.0.0.1).
    pub fn port(&self) -> u16 {
        self.port
    }

    /// Path of the CA certificate that verifies the IdP's TLS certificate.
    pub fn ca_pem(&self) -> PathBuf {
        self.ca_pem.clone()
    }

    /// Lifetime of the access tokens this IdP issues.
    pub fn token_ttl(&self) -> Duration {
        self.token_ttl
    }

    /// Process id of the node process (of the latest start).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// The IdP's combined stdout/stderr so far (never contains tokens or secrets).
    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// A fresh RS256 access token of `client_id` for [`AUDIENCE`], obtained with the
    /// client-credentials grant. Panics if the IdP refuses.
    pub fn token(&self, client_id: &str) -> String {
        self.token_for(client_id, AUDIENCE)
    }

    /// Like [`Idp::token`] but signed with the IdP's ES256 key (see [`ES256_RESOURCE`]).
    pub fn token_es256(&self, client_id: &str) -> String {
        self.token_for(client_id, ES256_RESOURCE)
    }

    /// A token of `client_id` requested for the resource indicator `resource`; its audience is
    /// `resource` without a query, and a query `alg=ES256` selects the ES256 key.
    pub fn token_for(&self, client_id: &str, resource: &str) -> String {
        let body = self
            .try_token_for(client_id, resource)
            .unwrap_or_else(|e| panic!("token request for client {client_id:?} failed: {e}"));
        let response: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("token response is not JSON ({e})"));
        match response.get("access_token").and_then(Value::as_str) {
            Some(token) => token.to_string(),
            None => panic!(
                "token response has no access_token; fields: {:?}",
                keys(&response)
            ),
        }
    }

    /// Performs the token request and returns the raw response body, or an error text (curl's
    /// message plus the IdP's OAuth error response) when the request fails.
    pub fn try_token_for(&self, client_id: &str, resource: &str) -> Result<String, String> {
        let Some((_, secret_file)) = self.secret_files.iter().find(|(id, _)| id == client_id)
        else {
            return Err(format!(
                "client {client_id:?} was not configured in this IdP"
            ));
        };
        let mut secret_arg = std::ffi::OsString::from("client_secret@");
        secret_arg.push(secret_file);
        let mut cmd = self.curl();
        cmd.args(["--data-urlencode", "grant_type=client_credentials"])
            .arg("--data-urlencode")
            .arg(format!("client_id={client_id}"))
            .arg("--data-urlencode")
            .arg(secret_arg)
            .arg("--data-urlencode")
            .arg(format!("resource={resource}"))
            .arg(format!("{}/token", self.issuer));
        run_curl(&mut cmd)
    }

    /// A token of `client_id` that is genuine except for the defect `kind` (one of
    /// [`FORGE_KINDS`]); see `integration/idp/README.md` for what each kind changes.
    pub fn forge(&self, kind: &str, client_id: &str) -> String {
        let body = serde_json::json!({ "kind": kind, "client_id": client_id }).to_string();
        let mut cmd = self.curl();
        cmd.args(["-H", "content-type: application/json", "--data-binary"])
            .arg(body)
            .arg(format!("{}/test/forge", self.issuer));
        run_curl(&mut cmd)
            .unwrap_or_else(|e| panic!("forging a {kind:?} token for {client_id:?} failed: {e}"))
            .trim()
            .to_string()
    }

    /// Makes the IdP sign with new RS256 and ES256 keys (new kids). The old keys stay in the
    /// JWKS unless `retire_old`, in which case only the new ones are published.
    pub fn rotate(&self, retire_old: bool) -> Rotation {
        let query = if retire_old { "?retire=1" } else { "" };
        let mut cmd = self.curl();
        cmd.args(["-X", "POST"])
            .arg(format!("{}/test/rotate{query}", self.issuer));
        let body = run_curl(&mut cmd).unwrap_or_else(|e| panic!("key rotation failed: {e}"));
        let answer: Value = serde_json::from_str(&body)
            .unwrap_or_else(|e| panic!("rotation answer is not JSON ({e}): {body}"));
        let text = |pointer: &str| {
            answer
                .pointer(pointer)
                .and_then(Value::as_str)
                .unwrap_or_else(|| panic!("rotation answer lacks {pointer}: {body}"))
                .to_string()
        };
        Rotation {
            rs256_kid: text("/active/RS256"),
            es256_kid: text("/active/ES256"),
            published: answer["published"]
                .as_array()
                .map(|kids| {
                    kids.iter()
                        .filter_map(|k| k.as_str().map(str::to_string))
                        .collect()
                })
                .unwrap_or_default(),
        }
    }

    /// The JWKS document as currently served.
    pub fn jwks(&self) -> Value {
        self.get_json(&self.jwks_uri())
    }

    /// The `kid`s currently published in the JWKS.
    pub fn published_kids(&self) -> Vec<String> {
        self.jwks()["keys"]
            .as_array()
            .map(|keys| {
                keys.iter()
                    .filter_map(|k| k["kid"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The discovery document as currently served.
    pub fn discovery(&self) -> Value {
        self.get_json(&self.discovery_url())
    }

    fn get_json(&self, url: &str) -> Value {
        let mut cmd = self.curl();
        cmd.arg(url);
        let body = run_curl(&mut cmd).unwrap_or_else(|e| panic!("GET {url} failed: {e}"));
        serde_json::from_str(&body).unwrap_or_else(|e| panic!("{url} is not JSON ({e}): {body}"))
    }

    /// A `curl` command trusting only the test CA, bounded in time, ignoring proxies and
    /// `.curlrc`.
    fn curl(&self) -> Command {
        let mut cmd = Command::new("curl");
        cmd.arg("-q")
            .args([
                "-sS",
                "--fail-with-body",
                "--proto",
                "=https",
                "--noproxy",
                "*",
            ])
            .args(["--connect-timeout", "5", "--max-time", CURL_MAX_TIME_SECS])
            .arg("--cacert")
            .arg(&self.ca_pem)
            .stdin(Stdio::null());
        cmd
    }

    /// Returns the exit status if the IdP has exited (reaping it), without blocking.
    pub fn try_wait(&mut self) -> Option<ExitStatus> {
        if self.status.is_none() {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    forget_child(self.pid);
                    self.status = Some(status);
                }
            }
        }
        self.status
    }

    /// True while the IdP process runs.
    pub fn is_running(&mut self) -> bool {
        self.child.is_some() && self.try_wait().is_none()
    }

    /// Stops the IdP: SIGTERM, up to [`IDP_STOP_TIMEOUT`], then SIGKILL. Keys and clients
    /// are kept, so [`Idp::restart`] brings the same IdP back. Returns the exit status.
    pub fn stop(&mut self) -> Option<ExitStatus> {
        if self.try_wait().is_some() {
            return self.status;
        }
        let child = self.child.as_mut()?;
        send_signal(self.pid, libc::SIGTERM);
        let mut status = wait_child(child, IDP_STOP_TIMEOUT);
        if status.is_none() {
            eprintln!(
                "harness: IdP pid {} ignored SIGTERM for {IDP_STOP_TIMEOUT:?}; sending SIGKILL",
                self.pid
            );
            send_signal(self.pid, libc::SIGKILL);
            status = wait_child(child, Duration::from_secs(5));
        }
        self.status = status;
        status
    }

    /// Starts the IdP again on the same port with the same keys and clients (stopping it
    /// first if it runs). Panics if it does not come up.
    pub fn restart(&mut self) {
        self.stop();
        if let Err(status) = self.launch() {
            self.fail_start(&format!("exited with {status} on restart"));
        }
    }
}

impl Drop for Idp {
    fn drop(&mut self) {
        if thread::panicking() && !self.log_reported {
            eprintln!(
                "harness: IdP pid {} log tail ({}):\n{}",
                self.pid,
                self.log.display(),
                log_tail(&self.log, 40)
            );
        }
        self.stop();
        remove_temp_dir(&self.dir);
    }
}

/// Runs a prepared curl command; Ok(body) on a 2xx answer, else curl's error and the body.
fn run_curl(cmd: &mut Command) -> Result<String, String> {
    let output = run_bounded(cmd, HTTP_TIMEOUT);
    let body = String::from_utf8_lossy(&output.stdout).into_owned();
    if output.status.success() {
        Ok(body)
    } else {
        Err(format!(
            "curl exited with {}: {} {}",
            output.status,
            String::from_utf8_lossy(&output.stderr).trim(),
            body.trim()
        ))
    }
}

fn keys(value: &Value) -> Vec<String> {
    value
        .as_object()
        .map(|o| o.keys().cloned().collect())
        .unwrap_or_default()
}

fn clients_json(clients: &[IdpClient]) -> String {
    let list: Vec<Value> = clients
        .iter()
        .map(|c| {
            serde_json::json!({
                "client_id": c.client_id,
                "client_secret": c.secret,
                "username": c.username,
                "groups": c.groups,
            })
        })
        .collect();
    Value::Array(list).to_string()
}

/// Creates `path` with mode 0600 and writes `data` (no trailing newline added).
fn write_private(path: &Path, data: &[u8]) {
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}

/// Decodes the JOSE header (first segment) of a compact JWT. Panics on malformed input.
pub fn jwt_header(token: &str) -> Value {
    jwt_segment(token, 0)
}

/// Decodes the claims (second segment) of a compact JWT without verifying anything. Panics on
/// malformed input.
pub fn jwt_claims(token: &str) -> Value {
    jwt_segment(token, 1)
}

fn jwt_segment(token: &str, index: usize) -> Value {
    let segment = token
        .split('.')
        .nth(index)
        .unwrap_or_else(|| panic!("JWT has no segment {index}"));
    let bytes =
        base64url_decode(segment).unwrap_or_else(|| panic!("JWT segment {index} is not base64url"));
    serde_json::from_slice(&bytes)
        .unwrap_or_else(|e| panic!("JWT segment {index} is not JSON: {e}"))
}

/// Decodes unpadded base64url; None on any character outside the alphabet.
fn base64url_decode(text: &str) -> Option<Vec<u8>> {
    let mut out = Vec::with_capacity(text.len() * 3 / 4);
    let mut acc: u32 = 0;
    let mut bits = 0;
    for byte in text.bytes() {
        let value = match byte {
            b'A'..=b'Z' => byte - b'A',
            b'a'..=b'z' => byte - b'a' + 26,
            b'0'..=b'9' => byte - b'0' + 52,
            b'-' => 62,
            b'_' => 63,
            _ => return None,
        };
        acc = (acc << 6) | u32::from(value);
        bits += 6;
        if bits >= 8 {
            bits -= 8;
            out.push((acc >> bits) as u8);
            acc &= (1 << bits) - 1;
        }
    }
    Some(out)
}

/// Seconds since the Unix epoch, for comparing with `iat`/`exp` claims.
pub fn unix_now() -> u64 {
    SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or_default()
}
