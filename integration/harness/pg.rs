//! A disposable PostgreSQL cluster for integration tests: initdb into a unique temp dir,
//! a postmaster run directly as a child process on a free loopback port, test roles for each
//! password method, optional TLS from a test CA, and teardown that also runs on panic.

use std::fs;
use std::io::Write;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::os::unix::fs::{chown, PermissionsExt};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::thread;
use std::time::{Duration, Instant};

use super::certs::{LeafFiles, TestCa};
use super::proc::{
    forget_child, free_port, log_tail, random_hex, read_log, register_child, remove_temp_dir,
    run_bounded, send_signal, try_run_bounded, unique_temp_dir, wait_child,
};

/// The bootstrap superuser created by initdb.
pub const SUPERUSER: &str = "postgres";
/// Login role with a SCRAM-SHA-256 password (the default `host all all` rule).
pub const SCRAM_ROLE: &str = "pgveil_scram";
/// Login role with an MD5-hashed password, authenticated with the `md5` method.
pub const MD5_ROLE: &str = "md5_user";
/// Login role authenticated with the cleartext `password` method.
pub const CLEAR_ROLE: &str = "clear_user";
/// Login role accepted by `trust` over TCP (it still has a password set).
pub const TRUST_ROLE: &str = "trust_user";
/// All non-superuser roles created by [`PgCluster::start`].
pub const TEST_ROLES: [&str; 4] = [SCRAM_ROLE, MD5_ROLE, CLEAR_ROLE, TRUST_ROLE];

/// Default PostgreSQL server binary directory when neither `PG_BIN` nor `pg_config` help.
pub const DEFAULT_PG_BIN: &str = "/usr/lib/postgresql/15/bin";

/// Upper bound for the server to accept connections after launch.
const READY_TIMEOUT: Duration = Duration::from_secs(30);
/// Upper bound for initdb.
const INITDB_TIMEOUT: Duration = Duration::from_secs(120);
/// Upper bound for one psql invocation made by the harness.
const PSQL_TIMEOUT: Duration = Duration::from_secs(120);
/// Wait after SIGINT (fast shutdown) before escalating.
const STOP_TIMEOUT: Duration = Duration::from_secs(15);
/// Attempts to launch when the chosen port was taken in the meantime.
const PORT_ATTEMPTS: usize = 3;

/// Environment variables of libpq that must not leak into the harness's own tool calls.
const LIBPQ_ENV: [&str; 14] = [
    "PGHOST",
    "PGHOSTADDR",
    "PGPORT",
    "PGUSER",
    "PGDATABASE",
    "PGPASSWORD",
    "PGPASSFILE",
    "PGSERVICE",
    "PGSERVICEFILE",
    "PGOPTIONS",
    "PGSSLMODE",
    "PGSSLROOTCERT",
    "PGDATA",
    "PGTARGETSESSIONATTRS",
];

/// Options for [`PgCluster::start`].
#[derive(Debug, Clone, Default)]
pub struct PgOptions {
    /// Enable `ssl = on` with a server certificate (SANs localhost, 127.0.0.1, ::1) issued by
    /// a test CA whose certificate is available from [`PgCluster::ca_pem`].
    pub tls: bool,
    /// Extra `postgresql.conf` lines appended after the harness settings
    /// (e.g. `"log_statement = 'all'"`).
    pub extra_conf: Vec<String>,
}

impl PgOptions {
    /// Options with TLS enabled.
    pub fn tls() -> PgOptions {
        PgOptions {
            tls: true,
            ..PgOptions::default()
        }
    }
}

/// A running throwaway PostgreSQL cluster; stopped and deleted on [`PgCluster::stop`] or drop.
pub struct PgCluster {
    bin: PathBuf,
    dir: PathBuf,
    data: PathBuf,
    log: PathBuf,
    owner: Option<(u32, u32)>,
    port: u16,
    child: Option<Child>,
    pid: u32,
    superuser_password: String,
    passwords: Vec<(&'static str, String)>,
    ca: Option<TestCa>,
    server_tls: Option<LeafFiles>,
    extra_conf: Vec<String>,
    stopped: bool,
    /// Set once a panic message already carries the log, so drop does not repeat it.
    log_shown: bool,
}

impl PgCluster {
    /// Creates, configures and starts a cluster, then creates the test roles.
    ///
    /// Blocking; call it before entering the async runtime or from `spawn_blocking`.
    /// Panics with a descriptive message (including the server log tail) on any failure; the
    /// partially built cluster is cleaned up by the unwinding drop.
    pub fn start(opts: PgOptions) -> PgCluster {
        let bin = pg_bin_dir();
        let owner = server_owner();
        let dir = unique_temp_dir("pgveil-it-pg");
        let mut cluster = PgCluster {
            bin,
            data: dir.join("data"),
            log: dir.join("postgres.log"),
            dir,
            owner,
            port: 0,
            child: None,
            pid: 0,
            superuser_password: random_hex(2),
            passwords: TEST_ROLES.iter().map(|r| (*r, random_hex(2))).collect(),
            ca: None,
            server_tls: None,
            extra_conf: opts.extra_conf,
            stopped: false,
            log_shown: false,
        };
        // Other users (e.g. a client run as root reading ca.pem) may traverse the top dir;
        // the data dir itself is created 0700 by initdb.
        fs::set_permissions(&cluster.dir, fs::Permissions::from_mode(0o755))
            .expect("setting the cluster temp dir mode");
        cluster.give_to_owner(&cluster.dir);
        let socket = cluster.dir.join(".s.PGSQL.65535");
        assert!(
            socket.as_os_str().len() < 100,
            "temp dir path {} is too long for a unix socket; set TMPDIR to a shorter path",
            cluster.dir.display()
        );
        cluster.initdb();
        if opts.tls {
            cluster.setup_tls();
        }
        cluster.write_hba();
        cluster.launch_with_free_port();
        cluster.create_roles();
        cluster
    }

    fn initdb(&self) {
        let pwfile = self.dir.join("superuser.pw");
        write_private(&pwfile, self.superuser_password.as_bytes());
        self.give_to_owner(&pwfile);
        let mut cmd = self.server_command("initdb");
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-U", SUPERUSER, "-E", "UTF8", "--locale=C"])
            .args(["--auth-local=trust", "--auth-host=scram-sha-256"])
            .arg(format!("--pwfile={}", pwfile.display()))
            .args(["--no-sync", "--no-instructions"]);
        let out = run_bounded(&mut cmd, INITDB_TIMEOUT);
        let _ = fs::remove_file(&pwfile);
        assert!(
            out.status.success(),
            "initdb failed ({}):\nstdout:\n{}\nstderr:\n{}",
            out.status,
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let include = format!(
            "\n# Added by the pgveil integration harness.\ninclude = '{}'\n",
            conf_quote(&self.harness_conf_path())
        );
        fs::OpenOptions::new()
            .append(true)
            .open(self.data.join("postgresql.conf"))
            .and_then(|mut f| f.write_all(include.as_bytes()))
            .expect("appending the include line to postgresql.conf");
    }

    fn setup_tls(&mut self) {
        let ca = TestCa::new(&self.dir.join("tls"));
        let leaf = ca.issue_leaf("server", &["localhost", "127.0.0.1", "::1"]);
        for path in [ca.dir(), ca.ca_pem(), &leaf.cert, &leaf.key] {
            self.give_to_owner(path);
        }
        self.ca = Some(ca);
        self.server_tls = Some(leaf);
    }

    fn write_hba(&self) {
        let mut hba = String::from("# Written by the pgveil integration harness.\n");
        hba.push_str("local all all trust\n");
        for net in ["127.0.0.1/32", "::1/128"] {
            hba.push_str(&format!("host all {MD5_ROLE} {net} md5\n"));
            hba.push_str(&format!("host all {CLEAR_ROLE} {net} password\n"));
            hba.push_str(&format!("host all {TRUST_ROLE} {net} trust\n"));
            hba.push_str(&format!("host all all {net} scram-sha-256\n"));
        }
        let path = self.data.join("pg_hba.conf");
        fs::write(&path, hba).expect("writing pg_hba.conf");
        self.give_to_owner(&path);
    }

    fn harness_conf_path(&self) -> PathBuf {
        self.data.join("pgveil_harness.conf")
    }

    /// Writes the harness settings (including the current port) read via `include`.
    fn write_conf(&self) {
        let mut conf = String::from("# Written by the pgveil integration harness.\n");
        let mut set = |key: &str, value: &str| conf.push_str(&format!("{key} = {value}\n"));
        set("listen_addresses", "'127.0.0.1'");
        set("port", &self.port.to_string());
        set(
            "unix_socket_directories",
            &format!("'{}'", conf_quote(&self.dir)),
        );
        set("fsync", "off");
        set("synchronous_commit", "off");
        set("full_page_writes", "off");
        set("max_connections", "200");
        set("log_connections", "on");
        set("log_line_prefix", "'%m [%p] %q%u@%d '");
        set("logging_collector", "off");
        if let Some(leaf) = &self.server_tls {
            set("ssl", "on");
            set("ssl_cert_file", &format!("'{}'", conf_quote(&leaf.cert)));
            set("ssl_key_file", &format!("'{}'", conf_quote(&leaf.key)));
        }
        for line in &self.extra_conf {
            conf.push_str(line);
            conf.push('\n');
        }
        let path = self.harness_conf_path();
        fs::write(&path, conf).expect("writing the harness postgresql settings");
        self.give_to_owner(&path);
    }

    /// Picks a free port and launches; retries with another port if it was taken meanwhile.
    fn launch_with_free_port(&mut self) {
        for attempt in 1..=PORT_ATTEMPTS {
            self.port = free_port();
            self.write_conf();
            match self.launch() {
                Ok(()) => return,
                Err(log) if attempt < PORT_ATTEMPTS && port_conflict(&log) => {
                    eprintln!("harness: port {} was taken, retrying", self.port);
                }
                Err(log) => {
                    self.log_shown = true;
                    panic!(
                        "postgres did not start on port {} (attempt {attempt}); log tail:\n{}",
                        self.port,
                        last_lines(&log, 40)
                    )
                }
            }
        }
    }

    /// Starts the postmaster and waits for it; on failure returns this launch's log output.
    fn launch(&mut self) -> Result<(), String> {
        let log_start = fs::metadata(&self.log).map(|m| m.len()).unwrap_or(0);
        let log_file = fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("opening the postgres log file");
        let log_err = log_file
            .try_clone()
            .expect("duplicating the postgres log handle");
        let mut cmd = self.server_command("postgres");
        cmd.arg("-D")
            .arg(&self.data)
            .stdin(Stdio::null())
            .stdout(log_file)
            .stderr(log_err);
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("cannot spawn {}: {e}", describe_cmd(&cmd)));
        self.pid = child.id();
        register_child(self.pid);
        self.child = Some(child);

        let since_launch = |this: &PgCluster| {
            let bytes = fs::read(&this.log).unwrap_or_default();
            let start = usize::try_from(log_start).unwrap_or(0).min(bytes.len());
            String::from_utf8_lossy(&bytes[start..]).into_owned()
        };
        let deadline = Instant::now() + READY_TIMEOUT;
        for _ in 0..(READY_TIMEOUT.as_millis() / 100 + 2) {
            if let Some(child) = self.child.as_mut() {
                if let Ok(Some(status)) = child.try_wait() {
                    forget_child(self.pid);
                    self.child = None;
                    return Err(format!(
                        "postgres exited with {status}\n{}",
                        since_launch(self)
                    ));
                }
            }
            if self.is_ready() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                break;
            }
            thread::sleep(Duration::from_millis(100));
        }
        let log = since_launch(self);
        self.halt_server();
        Err(format!(
            "postgres not ready within {READY_TIMEOUT:?}\n{log}"
        ))
    }

    fn is_ready(&self) -> bool {
        let mut cmd = Command::new(self.bin.join("pg_isready"));
        scrub_libpq_env(&mut cmd);
        cmd.arg("-h")
            .arg(&self.dir)
            .args([
                "-p",
                &self.port.to_string(),
                "-U",
                SUPERUSER,
                "-d",
                "postgres",
                "-t",
                "2",
            ])
            .arg("-q");
        run_bounded(&mut cmd, Duration::from_secs(10))
            .status
            .success()
    }

    fn create_roles(&self) {
        let mut stmts = Vec::new();
        for role in [SCRAM_ROLE, CLEAR_ROLE, TRUST_ROLE] {
            stmts.push(format!(
                "CREATE ROLE {role} LOGIN PASSWORD '{}'",
                self.password(role)
            ));
        }
        stmts.push("SET password_encryption = 'md5'".to_string());
        stmts.push(format!(
            "CREATE ROLE {MD5_ROLE} LOGIN PASSWORD '{}'",
            self.password(MD5_ROLE)
        ));
        stmts.push("RESET password_encryption".to_string());
        let all = TEST_ROLES.join(", ");
        stmts.push(format!(
            "GRANT pg_read_all_data, pg_write_all_data TO {all}"
        ));
        self.psql_statements("postgres", &stmts)
            .unwrap_or_else(|e| panic!("creating the test roles failed:\n{e}"));
        // template1 too, so databases made later by create_database inherit the grant.
        for db in ["postgres", "template1"] {
            self.psql_statements(db, &[format!("GRANT CREATE ON SCHEMA public TO {all}")])
                .unwrap_or_else(|e| panic!("granting CREATE on schema public in {db}:\n{e}"));
        }
    }

    /// A psql command as superuser over the unix socket, with libpq env vars removed.
    ///
    /// psql runs as the current OS user; `local all all trust` makes that sufficient, and it
    /// keeps files given to `-f` readable even when they are not readable by `postgres`.
    fn psql_base(&self, db: &str) -> Command {
        let mut cmd = Command::new(self.tool("psql"));
        scrub_libpq_env(&mut cmd);
        cmd.env("PGCONNECT_TIMEOUT", "10")
            .stdin(Stdio::null())
            .args(["-X", "-q", "-A", "-t", "-v", "ON_ERROR_STOP=1", "-h"])
            .arg(&self.dir)
            .args(["-p", &self.port.to_string(), "-U", SUPERUSER, "-d", db]);
        cmd
    }

    fn psql_statements(&self, db: &str, stmts: &[String]) -> Result<String, String> {
        let mut cmd = self.psql_base(db);
        for stmt in stmts {
            cmd.arg("-c").arg(stmt);
        }
        output_result(run_bounded(&mut cmd, PSQL_TIMEOUT))
    }

    /// Runs `sql` as superuser over the unix socket; returns unaligned tuples-only output
    /// (`|`-separated columns, one row per line, trailing newline removed). Panics on error.
    pub fn psql_socket(&self, db: &str, sql: &str) -> String {
        self.try_psql_socket(db, sql)
            .unwrap_or_else(|e| panic!("psql as superuser on {db} failed for {sql:?}:\n{e}"))
    }

    /// Like [`PgCluster::psql_socket`] but returns psql's stderr as the error.
    pub fn try_psql_socket(&self, db: &str, sql: &str) -> Result<String, String> {
        self.psql_statements(db, &[sql.to_string()])
    }

    /// Creates database `name` (quoted as an identifier), owned by the superuser.
    pub fn create_database(&self, name: &str) {
        self.psql_socket(
            "postgres",
            &format!("CREATE DATABASE {}", quote_ident(name)),
        );
    }

    /// Runs the SQL file at `path` in `db` as superuser with `ON_ERROR_STOP=1`; panics with
    /// psql's stderr on failure and returns its stdout otherwise.
    pub fn load_sql(&self, db: &str, path: &Path) -> String {
        let mut cmd = self.psql_base(db);
        cmd.arg("-f").arg(path);
        output_result(run_bounded(&mut cmd, PSQL_TIMEOUT))
            .unwrap_or_else(|e| panic!("loading {} into {db} failed:\n{e}", path.display()))
    }

    /// The TCP host the server listens on.
    pub fn host(&self) -> &'static str {
        "127.0.0.1"
    }

    /// The TCP port the server listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:<port>` as a socket address.
    pub fn addr(&self) -> SocketAddr {
        SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), self.port)
    }

    /// Directory holding the server's unix socket (`.s.PGSQL.<port>`).
    pub fn socket_dir(&self) -> &Path {
        &self.dir
    }

    /// The cluster's private temp dir (data dir, log, TLS files live below it).
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// The PostgreSQL data directory.
    pub fn data_dir(&self) -> &Path {
        &self.data
    }

    /// Path of the server log (postmaster stdout and stderr).
    pub fn log_path(&self) -> &Path {
        &self.log
    }

    /// The server log so far.
    pub fn log_text(&self) -> String {
        read_log(&self.log)
    }

    /// PID of the postmaster (0 before the first launch).
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Directory of the PostgreSQL binaries in use.
    pub fn bin_dir(&self) -> &Path {
        &self.bin
    }

    /// Password of the `postgres` superuser (SCRAM over TCP).
    pub fn superuser_password(&self) -> &str {
        &self.superuser_password
    }

    /// Password of one of [`TEST_ROLES`] or [`SUPERUSER`]; panics for other roles.
    pub fn password(&self, role: &str) -> &str {
        if role == SUPERUSER {
            return &self.superuser_password;
        }
        self.passwords
            .iter()
            .find(|(r, _)| *r == role)
            .map(|(_, p)| p.as_str())
            .unwrap_or_else(|| panic!("the harness created no role named {role:?}"))
    }

    /// Path of the test CA certificate that signed the server certificate. Panics when the
    /// cluster was started without TLS.
    pub fn ca_pem(&self) -> &Path {
        self.ca()
            .expect("ca_pem() needs a cluster started with PgOptions { tls: true }")
            .ca_pem()
    }

    /// The test CA when TLS is on; it can issue more leaves (e.g. for the gateway).
    pub fn ca(&self) -> Option<&TestCa> {
        self.ca.as_ref()
    }

    /// The server's certificate and key files when TLS is on.
    pub fn server_tls(&self) -> Option<&LeafFiles> {
        self.server_tls.as_ref()
    }

    /// A libpq/tokio-postgres key=value connection string for TCP to this cluster.
    pub fn conn_string(&self, db: &str, user: &str, password: &str) -> String {
        format!(
            "host={} port={} user={} password={} dbname={}",
            self.host(),
            self.port,
            conninfo_quote(user),
            conninfo_quote(password),
            conninfo_quote(db)
        )
    }

    /// Stops the postmaster (fast shutdown) but keeps the data dir, e.g. to test a gateway
    /// whose backend went away. Use [`PgCluster::start_server`] to bring it back.
    pub fn stop_server(&mut self) {
        self.halt_server();
    }

    /// Starts the postmaster again on the same port after [`PgCluster::stop_server`].
    /// Panics if it does not come up (e.g. the port was taken in the meantime).
    pub fn start_server(&mut self) {
        assert!(
            !self.stopped,
            "start_server() on a cluster that was already removed"
        );
        if self.child.is_some() {
            return;
        }
        if let Err(log) = self.launch() {
            self.log_shown = true;
            panic!(
                "postgres did not restart on port {}; log tail:\n{}",
                self.port,
                last_lines(&log, 40)
            );
        }
    }

    /// Stops the server and starts it again on the same port.
    pub fn restart(&mut self) {
        self.stop_server();
        self.start_server();
    }

    /// SIGINT (fast shutdown) with a bounded wait, then SIGQUIT, then SIGKILL; finally removes
    /// the temp dir. Idempotent and never panics.
    pub fn stop(&mut self) {
        if self.stopped {
            return;
        }
        self.stopped = true;
        self.halt_server();
        remove_temp_dir(&self.dir);
    }

    fn halt_server(&mut self) {
        let Some(mut child) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = child.try_wait() {
            forget_child(child.id());
            return;
        }
        for (signal, grace) in [
            (libc::SIGINT, STOP_TIMEOUT),
            (libc::SIGQUIT, Duration::from_secs(5)),
            (libc::SIGKILL, Duration::from_secs(5)),
        ] {
            send_signal(child.id(), signal);
            if wait_child(&mut child, grace).is_some() {
                return;
            }
            eprintln!(
                "harness: postgres pid {} still running after signal {signal}",
                child.id()
            );
        }
    }

    /// Chowns `path` to the server's OS user when the tests run as root.
    fn give_to_owner(&self, path: &Path) {
        if let Some((uid, gid)) = self.owner {
            chown(path, Some(uid), Some(gid)).unwrap_or_else(|e| {
                panic!("cannot chown {} to the postgres user: {e}", path.display())
            });
        }
    }

    fn tool(&self, name: &str) -> PathBuf {
        let local = self.bin.join(name);
        if local.exists() {
            local
        } else {
            PathBuf::from(name)
        }
    }

    /// A command for a server-side binary, run as the server owner when we are root.
    fn server_command(&self, name: &str) -> Command {
        let mut cmd = Command::new(self.bin.join(name));
        scrub_libpq_env(&mut cmd);
        cmd.env("LC_ALL", "C").current_dir(&self.dir);
        if let Some((uid, gid)) = self.owner {
            cmd.uid(uid).gid(gid);
        }
        cmd
    }
}

impl Drop for PgCluster {
    fn drop(&mut self) {
        if thread::panicking() && !self.stopped && !self.log_shown {
            eprintln!(
                "harness: postgres log tail ({}):\n{}",
                self.log.display(),
                log_tail(&self.log, 40)
            );
        }
        self.stop();
    }
}

/// Locates the PostgreSQL server binaries: `$PG_BIN`, then `pg_config --bindir`, then
/// [`DEFAULT_PG_BIN`]. A candidate counts only if it contains a `postgres` executable.
pub fn pg_bin_dir() -> PathBuf {
    static BIN_DIR: OnceLock<PathBuf> = OnceLock::new();
    BIN_DIR.get_or_init(find_pg_bin_dir).clone()
}

fn find_pg_bin_dir() -> PathBuf {
    let has_postgres = |dir: &Path| dir.join("postgres").is_file();
    if let Some(dir) = std::env::var_os("PG_BIN").map(PathBuf::from) {
        if has_postgres(&dir) {
            return dir;
        }
        eprintln!(
            "harness: PG_BIN={} has no postgres binary, ignoring",
            dir.display()
        );
    }
    let mut cmd = Command::new("pg_config");
    cmd.arg("--bindir").stdin(Stdio::null());
    if let Ok(out) = try_run_bounded(&mut cmd, Duration::from_secs(10)) {
        let dir = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if out.status.success() && has_postgres(&dir) {
            return dir;
        }
    }
    let dir = PathBuf::from(DEFAULT_PG_BIN);
    assert!(
        has_postgres(&dir),
        "no PostgreSQL server binaries found: set PG_BIN to the directory holding postgres"
    );
    dir
}

/// `Some((uid, gid))` of the `postgres` OS user when running as root (PostgreSQL refuses to
/// run as root), `None` otherwise. Panics when root but no such user exists.
pub fn server_owner() -> Option<(u32, u32)> {
    // SAFETY: geteuid(2) has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        return None;
    }
    let passwd = fs::read_to_string("/etc/passwd").expect("reading /etc/passwd");
    let ids = passwd.lines().find_map(|line| {
        let fields: Vec<&str> = line.split(':').collect();
        if fields.len() >= 4 && fields[0] == "postgres" {
            Some((fields[2].parse().ok()?, fields[3].parse().ok()?))
        } else {
            None
        }
    });
    Some(
        ids.expect("running as root, but /etc/passwd has no valid postgres user to run the server"),
    )
}

/// Runs psql against any server (e.g. the gateway) with a conninfo string, returning the
/// unaligned tuples-only output or psql's stderr. `password` is passed via `PGPASSWORD`.
pub fn psql(conninfo: &str, password: Option<&str>, sql: &str) -> Result<String, String> {
    let mut cmd = Command::new(pg_bin_dir().join("psql"));
    scrub_libpq_env(&mut cmd);
    if let Some(password) = password {
        cmd.env("PGPASSWORD", password);
    }
    cmd.env("PGCONNECT_TIMEOUT", "10")
        .stdin(Stdio::null())
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-d",
            conninfo,
            "-c",
            sql,
        ]);
    output_result(run_bounded(&mut cmd, PSQL_TIMEOUT))
}

/// Removes libpq's environment variables so only explicit arguments take effect.
pub fn scrub_libpq_env(cmd: &mut Command) {
    for var in LIBPQ_ENV {
        cmd.env_remove(var);
    }
}

/// Quotes an SQL identifier with double quotes.
pub fn quote_ident(name: &str) -> String {
    format!("\"{}\"", name.replace('"', "\"\""))
}

/// Quotes a value for a libpq key=value connection string.
pub fn conninfo_quote(value: &str) -> String {
    format!("'{}'", value.replace('\\', "\\\\").replace('\'', "\\'"))
}

fn conf_quote(path: &Path) -> String {
    path.display().to_string().replace('\'', "''")
}

fn output_result(out: std::process::Output) -> Result<String, String> {
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout)
            .trim_end_matches('\n')
            .to_string())
    } else {
        Err(format!(
            "{}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim_end()
        ))
    }
}

fn port_conflict(log: &str) -> bool {
    log.contains("could not bind") || log.contains("could not create any TCP/IP sockets")
}

fn last_lines(text: &str, n: usize) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(n)..].join("\n")
}

fn describe_cmd(cmd: &Command) -> String {
    super::proc::describe(cmd)
}

fn write_private(path: &Path, data: &[u8]) {
    use std::os::unix::fs::OpenOptionsExt;
    fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .and_then(|mut f| f.write_all(data))
        .unwrap_or_else(|e| panic!("cannot write {}: {e}", path.display()));
}
