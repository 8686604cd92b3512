#!/usr/bin/env bash
# pgveil benchmark: direct PostgreSQL vs pgbouncer vs pgveil on this machine.
#
# Starts a throwaway PostgreSQL, pgbouncer (session pooling), pgveil and a
# second pgveil that masks the bulk table on free loopback ports, runs
# read-only pgbench workloads and bulk reads (text and binary format) in
# interleaved rounds, and prints the median of each. See bench/README.md.
#
# Environment:
#   DURATION=10      seconds per pgbench run
#   ROUNDS=3         rounds; each round runs every workload on every target
#   BULK_REPS=3      bulk reads per target per round
#   QUICK=1          shorthand for DURATION=3 ROUNDS=1 BULK_REPS=1
#   SCALE=10         pgbench scale factor
#   TARGETS="direct pgbouncer pgveil pgveil-masked"   arms to run (any
#                    subset; pgveil-masked runs the bulk reads only)
#   BULK_BINARY=1    also run the binary-format bulk read (0: skip it)
#   BENCH_PYTHON     Python with psycopg 3 for the binary bulk read (default:
#                    python3 if it has psycopg, else the integration suite's
#                    target/test-python, else a venv made in the temp dir)
#   AUDIT=1          the pgveil arm records every session and statement in
#                    an audit archive; 0: no archive
#   AUDIT_FSYNC=interval   the archive's fsync policy (or every_batch)
#   PGVEIL_THREADS=1 pgveil's worker_threads (pgbouncer runs one thread;
#                    on a small machine shared with PostgreSQL and pgbench,
#                    one thread leaves the most CPU to the server)
#   PGVEIL_BIN       pgveil binary (default target/release/pgveil, built
#                    with cargo if missing)
#   PGBIN            PostgreSQL server binaries (default: pg_config --bindir,
#                    then /usr/lib/postgresql/15/bin)
set -euo pipefail

cd "$(dirname "$0")/.."
REPO_ROOT=$(pwd)

# ---------------------------------------------------------------- settings
if [[ "${QUICK:-0}" == 1 ]]; then
    DURATION=${DURATION:-3}
    ROUNDS=${ROUNDS:-1}
    BULK_REPS=${BULK_REPS:-1}
else
    DURATION=${DURATION:-10}
    ROUNDS=${ROUNDS:-3}
    BULK_REPS=${BULK_REPS:-3}
fi
SCALE=${SCALE:-10}
PGVEIL_THREADS=${PGVEIL_THREADS:-1}
POLICY=${POLICY:-1}
AUDIT=${AUDIT:-1}
AUDIT_FSYNC=${AUDIT_FSYNC:-interval}
TARGETS=${TARGETS:-"direct pgbouncer pgveil pgveil-masked"}
BULK_BINARY=${BULK_BINARY:-1}

die() { echo "bench: error: $*" >&2; exit 1; }
log() { echo "bench: $(date -u +%H:%M:%S) $*" >&2; }

is_uint() { [[ "$1" =~ ^[0-9]+$ ]]; }
is_uint "$DURATION" && (( DURATION >= 1 && DURATION <= 600 )) || die "DURATION must be 1..600 seconds"
is_uint "$ROUNDS" && (( ROUNDS >= 1 && ROUNDS <= 50 )) || die "ROUNDS must be 1..50"
is_uint "$BULK_REPS" && (( BULK_REPS >= 1 && BULK_REPS <= 20 )) || die "BULK_REPS must be 1..20"
[[ "$POLICY" == 0 || "$POLICY" == 1 ]] || die "POLICY must be 0 or 1"
[[ "$AUDIT" == 0 || "$AUDIT" == 1 ]] || die "AUDIT must be 0 or 1"
[[ "$AUDIT_FSYNC" == every_batch || "$AUDIT_FSYNC" == interval ]] \
    || die "AUDIT_FSYNC must be every_batch or interval"
is_uint "$PGVEIL_THREADS" && (( PGVEIL_THREADS >= 1 && PGVEIL_THREADS <= 1024 )) || die "PGVEIL_THREADS must be 1..1024"
is_uint "$SCALE" && (( SCALE >= 1 && SCALE <= 1000 )) || die "SCALE must be 1..1000"
[[ "$BULK_BINARY" == 0 || "$BULK_BINARY" == 1 ]] || die "BULK_BINARY must be 0 or 1"

want() { [[ " $TARGETS " == *" $1 "* ]]; }
for t in $TARGETS; do
    case "$t" in
        direct|pgbouncer|pgveil|pgveil-masked) ;;
        *) die "unknown target '$t' (use direct, pgbouncer, pgveil, pgveil-masked)" ;;
    esac
done
# ARMS run every workload; the masked arm only the bulk reads, since the
# pgbench tables have no masking rules and would measure nothing new.
ARMS=()
for t in direct pgbouncer pgveil; do
    if want "$t"; then ARMS+=("$t"); fi
done
BULK_ARMS=("${ARMS[@]}")
if want pgveil-masked; then BULK_ARMS+=(pgveil-masked); fi
(( ${#BULK_ARMS[@]} > 0 )) || die "TARGETS is empty"

# PostgreSQL binaries: $PGBIN, else pg_config --bindir, else the Debian path.
find_pgbin() {
    local c
    for c in "${PGBIN:-}" "$(pg_config --bindir 2>/dev/null || true)" /usr/lib/postgresql/15/bin; do
        if [[ -n "$c" && -x "$c/initdb" && -x "$c/postgres" && -x "$c/pgbench" ]]; then
            echo "$c"
            return 0
        fi
    done
    return 1
}
PGBIN=$(find_pgbin) || die "PostgreSQL server binaries not found (set PGBIN)"
PSQL="$PGBIN/psql"
[[ -x "$PSQL" ]] || PSQL=$(command -v psql) || die "psql not found"
PGBENCH="$PGBIN/pgbench"

# Only the connection settings given on each command line may apply.
unset PGHOST PGHOSTADDR PGPORT PGUSER PGDATABASE PGOPTIONS PGSERVICE PGPASSWORD PGAPPNAME
export PGSSLMODE=disable PGGSSENCMODE=disable PGCONNECT_TIMEOUT=10

# ------------------------------------------------------- process tracking
TMP=""
PIDS=()       # processes to stop, in start order
SIGS=()       # signal that shuts each one down cleanly
WRAPPERS=()   # runuser/sh wrappers to reap
NAMES=()

cleanup() {
    local rc=$? i pid n
    set +e
    trap - EXIT INT TERM
    for (( i = ${#PIDS[@]} - 1; i >= 0; i-- )); do
        pid=${PIDS[$i]}
        if kill -0 "$pid" 2>/dev/null; then
            log "stopping ${NAMES[$i]} (pid $pid)"
            kill "-${SIGS[$i]}" "$pid" 2>/dev/null
            for (( n = 0; n < 150; n++ )); do
                kill -0 "$pid" 2>/dev/null || break
                sleep 0.1
            done
            if kill -0 "$pid" 2>/dev/null; then
                log "${NAMES[$i]} (pid $pid) did not stop in 15 s, killing it"
                kill -KILL "$pid" 2>/dev/null
            fi
        fi
    done
    for pid in "${WRAPPERS[@]}"; do
        wait "$pid" 2>/dev/null
    done
    if [[ -n "$TMP" && -d "$TMP" ]]; then
        rm -rf -- "$TMP"
    fi
    exit "$rc"
}
trap cleanup EXIT
trap 'exit 130' INT
trap 'exit 143' TERM

IS_ROOT=0
[[ "$(id -u)" == 0 ]] && IS_ROOT=1

# Run a command as the postgres OS user when we are root (PostgreSQL and
# pgbouncer refuse to run as root); as ourselves otherwise.
as_pg() {
    if (( IS_ROOT )); then
        if command -v runuser >/dev/null; then
            runuser -u postgres -- "$@"
        else
            su postgres -s /bin/sh -c "$(printf '%q ' "$@")"
        fi
    else
        "$@"
    fi
}

# start_bg NAME SIGNAL AS_PG(0|1) LOGFILE CMD...
# Starts CMD in the background. The inner shell writes its own PID and then
# execs CMD, so the recorded PID is the server itself, not a wrapper.
start_bg() {
    local name=$1 sig=$2 aspg=$3 logfile=$4 pidfile n pid
    shift 4
    pidfile="$TMP/$name.pid"
    rm -f "$pidfile"
    if (( aspg )); then
        as_pg sh -c 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" >"$logfile" 2>&1 &
    else
        sh -c 'echo $$ > "$0.tmp" && mv "$0.tmp" "$0" && exec "$@"' "$pidfile" "$@" >"$logfile" 2>&1 &
    fi
    WRAPPERS+=("$!")
    for (( n = 0; n < 100; n++ )); do
        [[ -s "$pidfile" ]] && break
        sleep 0.1
    done
    [[ -s "$pidfile" ]] || die "$name did not start (see $logfile)"
    pid=$(cat "$pidfile")
    PIDS+=("$pid")
    SIGS+=("$sig")
    NAMES+=("$name")
    STARTED_PID=$pid
}

port_open() {
    timeout 2 bash -c 'exec 3<>"/dev/tcp/127.0.0.1/$0"' "$1" 2>/dev/null
}

# free_port: sets FREE_PORT to a loopback port nobody listens on and that
# this script has not handed out yet.
USED_PORTS=" "
FREE_PORT=""
free_port() {
    local n p
    for (( n = 0; n < 200; n++ )); do
        p=$(( 20000 + RANDOM % 30000 ))
        [[ "$USED_PORTS" == *" $p "* ]] && continue
        if ! port_open "$p"; then
            USED_PORTS+="$p "
            FREE_PORT=$p
            return 0
        fi
    done
    die "no free loopback port found"
}

# wait_port NAME PID PORT LOGFILE: up to 100 x 0.1 s for PORT to accept.
wait_port() {
    local name=$1 pid=$2 port=$3 logfile=$4 n
    for (( n = 0; n < 100; n++ )); do
        if ! kill -0 "$pid" 2>/dev/null; then
            tail -n 20 "$logfile" >&2 || true
            die "$name exited during startup"
        fi
        port_open "$port" && return 0
        sleep 0.1
    done
    tail -n 20 "$logfile" >&2 || true
    die "$name did not accept connections on 127.0.0.1:$port within 10 s"
}

# ------------------------------------------------------------------ pgveil
PGVEIL_BIN=${PGVEIL_BIN:-target/release/pgveil}
if { want pgveil || want pgveil-masked; } && [[ ! -x "$PGVEIL_BIN" ]]; then
    [[ "$PGVEIL_BIN" == target/release/pgveil ]] || die "PGVEIL_BIN=$PGVEIL_BIN is not executable"
    command -v cargo >/dev/null || die "target/release/pgveil is missing and cargo is not installed"
    log "target/release/pgveil is missing: building it (cargo build --release)"
    cargo build --release >&2
    [[ -x "$PGVEIL_BIN" ]] || die "cargo build --release did not produce $PGVEIL_BIN"
fi
PGBOUNCER=""
if want pgbouncer; then
    PGBOUNCER=$(command -v pgbouncer) || die "pgbouncer not installed (apt-get install -y pgbouncer)"
fi

# -------------------------------------------------------------- PostgreSQL
TMP=$(mktemp -d "${TMPDIR:-/tmp}/pgveil-bench.XXXXXX")
chmod 755 "$TMP"
if (( IS_ROOT )); then
    chown postgres: "$TMP"
fi
export PGPASSFILE="$TMP/no-such-pgpass"   # ignore any ~/.pgpass

# ------------------------------------------------- binary bulk-read client
# psql can only ask for text results, so the binary bulk read uses libpq
# through psycopg 3. The script receives the whole result (libpq parses
# every row) but does not turn the values into Python objects: that would
# cost the client seconds per million rows and hide the proxy's share.
PY=""
BINARY_SKIP=""   # why the binary row is not run, for the report
has_psycopg() { [[ -n "$1" ]] && "$1" -c 'import psycopg' >/dev/null 2>&1; }
if (( BULK_BINARY )); then
    if [[ -n "${BENCH_PYTHON:-}" ]]; then
        has_psycopg "$BENCH_PYTHON" || die "BENCH_PYTHON=$BENCH_PYTHON cannot import psycopg"
        PY=$BENCH_PYTHON
    elif has_psycopg "$(command -v python3 || true)"; then
        PY=$(command -v python3)
    elif has_psycopg "$REPO_ROOT/target/test-python/bin/python"; then
        PY="$REPO_ROOT/target/test-python/bin/python"
    elif command -v python3 >/dev/null; then
        log "psycopg not found: installing psycopg[binary] into a venv under $TMP"
        if python3 -m venv "$TMP/venv" >"$TMP/venv.log" 2>&1 \
            && timeout 300 "$TMP/venv/bin/pip" install -q "psycopg[binary]" >>"$TMP/venv.log" 2>&1 \
            && has_psycopg "$TMP/venv/bin/python"; then
            PY="$TMP/venv/bin/python"
        else
            tail -n 5 "$TMP/venv.log" >&2 || true
            BINARY_SKIP="psycopg could not be installed (see the lines above)"
        fi
    else
        BINARY_SKIP="python3 not found"
    fi
else
    BINARY_SKIP="BULK_BINARY=0"
fi
if [[ -n "$BINARY_SKIP" ]]; then
    log "skipping the binary bulk read: $BINARY_SKIP"
else
    log "binary bulk read client: $PY (psycopg $("$PY" -c 'import psycopg; print(psycopg.__version__)'))"
fi
cat >"$TMP/bulk_binary.py" <<'EOF_PY'
# Binary-format bulk read for bench/run.sh (see the comment there).
#   bulk_binary.py read PORT USER ROWS   -> prints rows/s
#   bulk_binary.py probe PORT USER       -> prints row id 1 as id|email|name|ssn
# Host, database and TLS are fixed by the script; a password, if any,
# comes from PGPASSWORD.
import sys
import time

import psycopg


def connect(port, user):
    # autocommit: no BEGIN/COMMIT around the one query.
    return psycopg.connect(host="127.0.0.1", port=port, user=user, dbname="bench", autocommit=True)


def main():
    mode, port, user = sys.argv[1:4]
    if mode == "probe":
        with connect(port, user) as conn:
            cur = conn.cursor(binary=True)
            cur.execute("SELECT id, email, name, ssn FROM bulk_people WHERE id = 1")
            print("|".join(str(v) for v in cur.fetchone()))
        return
    expect = int(sys.argv[4])
    # Timed from before the connection to after the last row, as psql is
    # timed from start to exit, less the interpreter's own start-up.
    t0 = time.perf_counter()
    with connect(port, user) as conn:
        cur = conn.cursor(binary=True)
        cur.execute("SELECT * FROM bulk_people")
        res = cur.pgresult
        rows = res.ntuples
        formats = {res.fformat(i) for i in range(res.nfields)}
        cur.close()
    t1 = time.perf_counter()
    if rows != expect or formats != {1}:
        sys.exit(f"got {rows} rows in formats {sorted(formats)}; expected {expect} rows, all binary")
    print(round(rows / (t1 - t0)))


main()
EOF_PY

free_port; PGPORT_=$FREE_PORT
ROLE=bench_user
PASSWORD=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')

log "initdb ($PGBIN)"
as_pg "$PGBIN/initdb" -D "$TMP/data" -U postgres -A trust -E UTF8 --no-locale >"$TMP/initdb.log" 2>&1 \
    || { cat "$TMP/initdb.log" >&2; die "initdb failed"; }
as_pg sh -c 'cat > "$0/pg_hba.conf"' "$TMP/data" <<'EOF'
local all all                trust
host  all all 127.0.0.1/32   scram-sha-256
EOF

log "starting PostgreSQL on 127.0.0.1:$PGPORT_"
start_bg postgres INT 1 "$TMP/postgres.log" "$PGBIN/postgres" -D "$TMP/data" \
    -c listen_addresses=127.0.0.1 -c port="$PGPORT_" -c unix_socket_directories="$TMP" \
    -c max_connections=100 -c shared_buffers=512MB -c password_encryption=scram-sha-256 \
    -c fsync=off -c synchronous_commit=off -c full_page_writes=off \
    -c logging_collector=off -c log_min_messages=warning
PG_PID=$STARTED_PID
ready=0
for (( n = 0; n < 300; n++ )); do
    kill -0 "$PG_PID" 2>/dev/null || { tail -n 20 "$TMP/postgres.log" >&2; die "postgres exited"; }
    if "$PSQL" -X -q -h "$TMP" -p "$PGPORT_" -U postgres -d postgres -c 'SELECT 1' >/dev/null 2>&1; then
        ready=1
        break
    fi
    sleep 0.1
done
(( ready )) || die "PostgreSQL did not become ready in 30 s"

su_sql() { "$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$TMP" -p "$PGPORT_" -U postgres -d postgres "$@"; }
su_sql -v role="$ROLE" -v pw="$PASSWORD" <<'EOF'
SET password_encryption = 'scram-sha-256';
CREATE ROLE :"role" LOGIN PASSWORD :'pw';
CREATE DATABASE bench OWNER :"role";
EOF

log "pgbench -i -s $SCALE"
"$PGBENCH" -i -s "$SCALE" -q -h "$TMP" -p "$PGPORT_" -U "$ROLE" bench >"$TMP/pgbench-init.log" 2>&1 \
    || { tail -n 20 "$TMP/pgbench-init.log" >&2; die "pgbench -i failed"; }
log "loading testdata/bulk.sql"
"$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$TMP" -p "$PGPORT_" -U "$ROLE" -d bench -f testdata/bulk.sql >/dev/null
"$PSQL" -X -q -v ON_ERROR_STOP=1 -h "$TMP" -p "$PGPORT_" -U "$ROLE" -d bench -c 'VACUUM (FREEZE, ANALYZE) bulk_people'
BULK_ROWS=$("$PSQL" -X -At -h "$TMP" -p "$PGPORT_" -U "$ROLE" -d bench -c 'SELECT count(*) FROM bulk_people')

declare -A PORT USER_ PASS
PORT[direct]=$PGPORT_; USER_[direct]=$ROLE; PASS[direct]=$PASSWORD

# --------------------------------------------------------------- pgbouncer
if want pgbouncer; then
    free_port; BPORT=$FREE_PORT
    as_pg sh -c 'umask 077 && cat > "$0"' "$TMP/pgbouncer.ini" <<EOF
[databases]
bench = host=127.0.0.1 port=$PGPORT_ dbname=bench user=$ROLE password=$PASSWORD

[pgbouncer]
listen_addr = 127.0.0.1
listen_port = $BPORT
unix_socket_dir =
auth_type = any
pool_mode = session
max_client_conn = 100
default_pool_size = 20
server_tls_sslmode = disable
client_tls_sslmode = disable
ignore_startup_parameters = extra_float_digits
log_connections = 0
log_disconnections = 0
EOF
    log "starting pgbouncer on 127.0.0.1:$BPORT"
    start_bg pgbouncer TERM 1 "$TMP/pgbouncer.log" "$PGBOUNCER" "$TMP/pgbouncer.ini"
    wait_port pgbouncer "$STARTED_PID" "$BPORT" "$TMP/pgbouncer.log"
    PORT[pgbouncer]=$BPORT; USER_[pgbouncer]=bench_client; PASS[pgbouncer]=""
fi

# ------------------------------------------------------------------ pgveil
if want pgveil; then
    free_port; VPORT=$FREE_PORT
    cat >"$TMP/pgveil.toml" <<EOF
listen = ["127.0.0.1:$VPORT"]
worker_threads = $PGVEIL_THREADS

[server]
address = "127.0.0.1:$PGPORT_"
user = "$ROLE"
password_env = "PGVEIL_SERVER_PASSWORD"
tls = "disable"

[auth]
method = "trust"
EOF
    if [[ "$POLICY" != 0 ]]; then
        # Statement policy on: rules that apply to every identity, so every
        # statement is parsed (or found in the analysis cache) and decided.
        mkdir -p "$TMP/policy-rules"
        cat >"$TMP/policy-rules/bench.toml" <<'EOF'
[[policy]]
name = "bounded-writes"
unbounded_writes = true
action = "refuse"

[[policy]]
name = "no-file-access"
functions = ["pg_read_file", "lo_*"]
action = "refuse"
EOF
        printf '\n[policy]\nrules_dir = "%s"\n' "$TMP/policy-rules" >>"$TMP/pgveil.toml"
    fi
    if [[ "$AUDIT" != 0 ]]; then
        # The archive on: every statement's record is in the spool (and,
        # with every_batch, fdatasync'ed) before the client sees its result.
        printf '\n[audit]\ndir = "%s"\ninstance = "bench"\nfsync = "%s"\n' \
            "$TMP/audit" "$AUDIT_FSYNC" >>"$TMP/pgveil.toml"
    fi
    log "starting pgveil on 127.0.0.1:$VPORT ($PGVEIL_BIN)"
    export PGVEIL_SERVER_PASSWORD="$PASSWORD" RUST_LOG="${RUST_LOG:-warn}"
    start_bg pgveil TERM 0 "$TMP/pgveil.log" "$PGVEIL_BIN" serve --config "$TMP/pgveil.toml"
    wait_port pgveil "$STARTED_PID" "$VPORT" "$TMP/pgveil.log"
    PORT[pgveil]=$VPORT; USER_[pgveil]=bench_client; PASS[pgveil]=""
fi

# ---------------------------------------------------------- pgveil-masked
# A second pgveil with [masking]: email hashed, name partial, ssn redacted
# for the group "analysts", which the trust-mode user benchuser is in. A
# separate process, so the plain pgveil arm runs exactly as before.
if want pgveil-masked; then
    free_port; MPORT=$FREE_PORT
    mkdir -p "$TMP/mask-rules"
    cat >"$TMP/mask-rules/bulk.toml" <<'EOF'
[[rule]]
name = "bulk-email"
columns = ["public.bulk_people.email"]
function = "hash"
key_env = "PGVEIL_MASK_KEY"
only_groups = ["analysts"]

[[rule]]
name = "bulk-name"
columns = ["public.bulk_people.name"]
function = "partial"
first = 1
only_groups = ["analysts"]

[[rule]]
name = "bulk-ssn"
columns = ["public.bulk_people.ssn"]
function = "redact"
only_groups = ["analysts"]
EOF
    cat >"$TMP/pgveil-masked.toml" <<EOF
listen = ["127.0.0.1:$MPORT"]
worker_threads = $PGVEIL_THREADS

[server]
address = "127.0.0.1:$PGPORT_"
user = "$ROLE"
password_env = "PGVEIL_SERVER_PASSWORD"
tls = "disable"

[auth]
method = "trust"
trust_groups = { benchuser = ["analysts"] }

[masking]
rules_dir = "$TMP/mask-rules"
EOF
    log "starting pgveil-masked on 127.0.0.1:$MPORT ($PGVEIL_BIN)"
    # A throwaway HMAC key for the hash rule (32 hex characters).
    PGVEIL_MASK_KEY=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
    export PGVEIL_SERVER_PASSWORD="$PASSWORD" PGVEIL_MASK_KEY RUST_LOG="${RUST_LOG:-warn}"
    start_bg pgveil-masked TERM 0 "$TMP/pgveil-masked.log" "$PGVEIL_BIN" serve --config "$TMP/pgveil-masked.toml"
    wait_port pgveil-masked "$STARTED_PID" "$MPORT" "$TMP/pgveil-masked.log"
    PORT[pgveil-masked]=$MPORT; USER_[pgveil-masked]=benchuser; PASS[pgveil-masked]=""
fi

# Run a client command against target $1 (host, port and user go on the
# command line; the password, if any, through the environment).
client_env() {
    local t=$1
    shift
    if [[ -n "${PASS[$t]}" ]]; then
        env PGPASSWORD="${PASS[$t]}" "$@"
    else
        "$@"
    fi
}

for t in "${BULK_ARMS[@]}"; do
    got=$(client_env "$t" "$PSQL" -X -At -h 127.0.0.1 -p "${PORT[$t]}" -U "${USER_[$t]}" -d bench \
        -c 'SELECT count(*) FROM pgbench_branches') || die "cannot query through $t"
    [[ "$got" == "$SCALE" ]] || die "unexpected answer through $t: $got"
done

# --------------------------------------------------------------- workloads
WORKLOADS=(
    "S simple c8 j2"
    "S extended c8 j2"
    "S prepared c8 j2"
    "S simple c1 j1"
    "S extended c1 j1"
    "S prepared c1 j1"
)
BULK_LABEL="bulk SELECT * ($BULK_ROWS rows)"
BULK_BIN_LABEL="bulk SELECT * binary ($BULK_ROWS rows)"
BULKS=("$BULK_LABEL")
if [[ -z "$BINARY_SKIP" ]]; then BULKS+=("$BULK_BIN_LABEL"); fi
is_bulk() { [[ "$1" == "$BULK_LABEL" || "$1" == "$BULK_BIN_LABEL" ]]; }

declare -A SAMPLES
FAILURES=0
RAW="$TMP/raw.txt"
: >"$RAW"

run_pgbench() {   # target "S mode cN jM" -> prints TPS
    local t=$1 wl=$2 mode c j out
    read -r _ mode c j <<<"$wl"
    c=${c#c}; j=${j#j}
    out=$(client_env "$t" timeout --foreground $(( DURATION + 60 )) "$PGBENCH" -h 127.0.0.1 -p "${PORT[$t]}" \
        -U "${USER_[$t]}" -S -n -T "$DURATION" -c "$c" -j "$j" -M "$mode" bench 2>&1) || {
        echo "$out" | tail -n 5 >&2
        return 1
    }
    awk '/^tps = / { print $3; found = 1; exit } END { if (!found) exit 1 }' <<<"$out"
}

run_bulk() {      # target -> prints rows/s
    local t=$1 t0 t1
    t0=$(date +%s%N)
    client_env "$t" timeout --foreground 600 "$PSQL" -X -q -A -t -h 127.0.0.1 -p "${PORT[$t]}" -U "${USER_[$t]}" \
        -d bench -c 'SELECT * FROM bulk_people' -o /dev/null || return 1
    t1=$(date +%s%N)
    awk -v r="$BULK_ROWS" -v ns="$(( t1 - t0 ))" 'BEGIN { printf "%.0f\n", r / (ns / 1e9) }'
}

run_bulk_binary() {   # target -> prints rows/s
    client_env "$1" timeout --foreground 600 "$PY" "$TMP/bulk_binary.py" read "${PORT[$1]}" "${USER_[$1]}" "$BULK_ROWS"
}

record() {        # workload target value
    SAMPLES["$1|$2"]+="$3 "
    printf '%s\t%s\t%s\n' "$1" "$2" "$3" >>"$RAW"
}

alive() {         # is target's process (if any) still running?
    local i
    for i in "${!NAMES[@]}"; do
        if [[ "${NAMES[$i]}" == "$1" ]]; then
            kill -0 "${PIDS[$i]}" 2>/dev/null
            return
        fi
    done
    return 0
}

measure() {       # workload target
    local wl=$1 t=$2 v
    if ! alive "$t"; then
        log "  $t is no longer running; skipping"
        FAILURES=$(( FAILURES + 1 ))
        return
    fi
    if [[ "$wl" == "$BULK_LABEL" ]]; then
        v=$(run_bulk "$t") || v=""
    elif [[ "$wl" == "$BULK_BIN_LABEL" ]]; then
        v=$(run_bulk_binary "$t") || v=""
    else
        v=$(run_pgbench "$t" "$wl") || v=""
    fi
    if [[ -z "$v" ]]; then
        log "  $t: $wl FAILED"
        FAILURES=$(( FAILURES + 1 ))
        return
    fi
    log "  $t: $wl -> $v"
    record "$wl" "$t" "$v"
}

log "warm-up"
for t in "${ARMS[@]}"; do
    client_env "$t" timeout --foreground 60 "$PGBENCH" -h 127.0.0.1 -p "${PORT[$t]}" -U "${USER_[$t]}" \
        -S -n -T 2 -c 8 -j 2 bench >/dev/null 2>&1 || log "warm-up through $t failed"
done
run_bulk "${BULK_ARMS[0]}" >/dev/null || true
if want pgveil-masked; then
    # Loads the masked instance's catalog map before anything is timed.
    client_env pgveil-masked timeout --foreground 60 "$PSQL" -X -q -A -t -h 127.0.0.1 -p "${PORT[pgveil-masked]}" \
        -U "${USER_[pgveil-masked]}" -d bench -c 'SELECT * FROM bulk_people LIMIT 1000' -o /dev/null \
        || log "warm-up through pgveil-masked failed"
fi

# The masked arm must really mask, in both formats: row 1 keeps its id and
# differs from the direct read in email, name and ssn.
probe_row() {     # format target -> prints id|email|name|ssn of row 1
    if [[ "$1" == text ]]; then
        client_env "$2" timeout --foreground 60 "$PSQL" -X -At -F '|' -h 127.0.0.1 -p "${PORT[$2]}" \
            -U "${USER_[$2]}" -d bench -c 'SELECT id, email, name, ssn FROM bulk_people WHERE id = 1'
    else
        client_env "$2" timeout --foreground 60 "$PY" "$TMP/bulk_binary.py" probe "${PORT[$2]}" "${USER_[$2]}"
    fi
}
check_masked() {  # format -> dies when a value of row 1 passes in clear
    local fmt=$1 clear masked i
    local -a c m
    clear=$(probe_row "$fmt" direct) || die "probe of row 1 through direct ($fmt) failed"
    masked=$(probe_row "$fmt" pgveil-masked) || die "probe of row 1 through pgveil-masked ($fmt) failed"
    IFS='|' read -r -a c <<<"$clear"
    IFS='|' read -r -a m <<<"$masked"
    (( ${#c[@]} == 4 && ${#m[@]} == 4 )) || die "unexpected probe rows ($fmt)"
    [[ "${c[0]}" == "${m[0]}" ]] || die "pgveil-masked changed the id ($fmt)"
    for i in 1 2 3; do
        [[ "${c[$i]}" != "${m[$i]}" ]] || die "pgveil-masked returned column $i of row 1 in clear ($fmt)"
    done
    log "pgveil-masked masks row 1 in $fmt format: ${m[1]:0:12}... | ${m[2]} | ${m[3]}"
}
if want pgveil-masked; then
    check_masked text
    if [[ -z "$BINARY_SKIP" ]]; then check_masked binary; fi
fi

total_runs=$(( ROUNDS * (${#ARMS[@]} * ${#WORKLOADS[@]} + ${#BULK_ARMS[@]} * ${#BULKS[@]} * BULK_REPS) ))
approx=$(( ROUNDS * ${#ARMS[@]} * ${#WORKLOADS[@]} * DURATION ))
log "targets: ${BULK_ARMS[*]}; $ROUNDS round(s) x ${#WORKLOADS[@]} pgbench workloads x ${DURATION}s + ${#BULKS[@]} bulk read(s) x $BULK_REPS ($total_runs runs, ~${approx}s of pgbench)"

for (( r = 1; r <= ROUNDS; r++ )); do
    log "round $r/$ROUNDS"
    for wl in "${WORKLOADS[@]}"; do
        for t in "${ARMS[@]}"; do
            measure "$wl" "$t"
        done
    done
    for (( b = 1; b <= BULK_REPS; b++ )); do
        for wl in "${BULKS[@]}"; do
            for t in "${BULK_ARMS[@]}"; do
                measure "$wl" "$t"
            done
        done
    done
done

# ------------------------------------------------------------- archive size
# Stops the pgveil arm (which closes and compacts its spool) and measures the
# Parquet bytes per statement row, counted with DuckDB when a Python that
# has it is at hand (the integration suite's venv has it).
ARCHIVE_LINE=""
archive_size() {
    local i pid n bytes rows="" py=""
    for (( i = 0; i < ${#PIDS[@]}; i++ )); do
        [[ "${NAMES[$i]}" == pgveil ]] || continue
        pid=${PIDS[$i]}
        kill -TERM "$pid" 2>/dev/null || true
        for (( n = 0; n < 300; n++ )); do
            kill -0 "$pid" 2>/dev/null || break
            sleep 0.1
        done
    done
    bytes=$(find "$TMP/audit/archive/statements" -name '*.parquet' -printf '%s\n' 2>/dev/null \
        | awk '{ s += $1 } END { print s + 0 }')
    for py in "${BENCH_PYTHON:-}" python3 "$REPO_ROOT/target/test-python/bin/python"; do
        [[ -n "$py" ]] && "$py" -c 'import duckdb' 2>/dev/null && break
        py=""
    done
    if [[ -n "$py" ]]; then
        rows=$("$py" -c 'import duckdb, sys; print(duckdb.connect().execute(
            "SELECT count(*) FROM read_parquet(?)", [sys.argv[1]]).fetchall()[0][0])' \
            "$TMP/audit/archive/statements/*/*.parquet" 2>/dev/null || true)
    fi
    if [[ -n "$rows" && "$rows" -gt 0 ]]; then
        ARCHIVE_LINE=$(awk -v b="$bytes" -v r="$rows" \
            'BEGIN { printf "audit archive: %d statement rows in %d Parquet bytes, %.1f bytes per statement", r, b, b / r }')
    else
        ARCHIVE_LINE="audit archive: $bytes Parquet bytes of statements (no DuckDB found to count rows)"
    fi
}
if want pgveil && [[ "$AUDIT" != 0 ]]; then
    archive_size
fi

# ------------------------------------------------------------------ report
median() {
    tr ' ' '\n' | awk 'NF' | sort -g | awk '
        { v[NR] = $1 }
        END {
            if (NR == 0) exit
            if (NR % 2) printf "%.1f\n", v[(NR + 1) / 2]
            else printf "%.1f\n", (v[NR / 2] + v[NR / 2 + 1]) / 2
        }'
}
ratio() {
    if [[ -n "$1" && -n "$2" ]]; then
        awk -v a="$1" -v b="$2" 'BEGIN { if (b > 0) printf "%.2fx", a / b; else printf "-" }'
    else
        printf -- "-"
    fi
}
fmt() { if [[ -n "$1" ]]; then printf "%.0f" "$1"; else printf -- "-"; fi; }

pg_version=$("$PGBIN/postgres" --version)
bouncer_version=$( { ${PGBOUNCER:-false} --version 2>/dev/null || true; } | head -n 1)
veil_version=""
if want pgveil; then
    veil_version=$( { "$PGVEIL_BIN" --version 2>/dev/null || true; } | head -n 1)
fi
commit=$(git -C "$REPO_ROOT" rev-parse --short HEAD 2>/dev/null || echo unknown)

REPORT="$TMP/report.txt"
{
    echo "pgveil benchmark  $(date -u +%Y-%m-%dT%H:%M:%SZ)  commit $commit"
    echo "machine: $(nproc) cores; $pg_version; ${bouncer_version:-pgbouncer n/a}; ${veil_version:-pgveil n/a}"
    echo "targets: ${BULK_ARMS[*]}; rounds=$ROUNDS duration=${DURATION}s bulk_reps=$BULK_REPS scale=$SCALE pgveil_threads=$PGVEIL_THREADS policy=$POLICY audit=$AUDIT ($AUDIT_FSYNC); medians"
    echo "pgbench rows: TPS (pgbench -S -n -M mode -c N -j M); bulk rows: rows/s (text: psql -A -t, output to /dev/null;"
    echo "  binary: psycopg binary cursor, result received by libpq and dropped)"
    echo "pgveil masked: a second pgveil masking email (hash), name (partial) and ssn (redact) of bulk_people; bulk rows only"
    echo
    printf '%-36s | %12s | %12s | %12s | %13s | %13s | %16s | %13s\n' \
        workload "direct" "pgbouncer" "pgveil" "pgveil masked" "pgveil/direct" "pgveil/pgbouncer" "masked/direct"
    printf '%s\n' "-------------------------------------+--------------+--------------+--------------+---------------+---------------+------------------+--------------"
    verdict=""
    for wl in "${WORKLOADS[@]}" "${BULKS[@]}"; do
        d=$(median <<<"${SAMPLES["$wl|direct"]:-}")
        b=$(median <<<"${SAMPLES["$wl|pgbouncer"]:-}")
        v=$(median <<<"${SAMPLES["$wl|pgveil"]:-}")
        m=$(median <<<"${SAMPLES["$wl|pgveil-masked"]:-}")
        if is_bulk "$wl"; then
            label="$wl"
        else
            read -r _ mode c j <<<"$wl"
            label="pgbench -S -M $mode -c ${c#c} -j ${j#j}"
        fi
        printf '%-36s | %12s | %12s | %12s | %13s | %13s | %16s | %13s\n' "$label" "$(fmt "$d")" "$(fmt "$b")" \
            "$(fmt "$v")" "$(fmt "$m")" "$(ratio "$v" "$d")" "$(ratio "$v" "$b")" "$(ratio "$m" "$d")"
        if is_bulk "$wl"; then
            [[ -n "$v" && -n "$d" ]] && verdict+=$(awk -v a="$v" -v b="$d" -v l="$label" \
                'BEGIN { printf "%s: pgveil/direct %.2fx (target >= 0.95x) %s\n", l, a / b, (a >= 0.95 * b ? "ok" : "MISSED") }')$'\n'
            [[ -n "$m" && -n "$d" ]] && verdict+=$(awk -v a="$m" -v b="$d" -v l="$label" \
                'BEGIN { printf "%s: masked/direct %.2fx (target >= 0.90x) %s\n", l, a / b, (a >= 0.9 * b ? "ok" : "MISSED") }')$'\n'
        elif [[ -n "$v" && -n "$b" ]]; then
            verdict+=$(awk -v a="$v" -v b="$b" -v l="$label" \
                'BEGIN { printf "%s: pgveil/pgbouncer %.2fx (target >= 1.10x) %s\n", l, a / b, (a >= 1.1 * b ? "ok" : "MISSED") }')$'\n'
        fi
    done
    if [[ -n "$verdict" ]]; then
        echo
        printf '%s' "$verdict"
    fi
    if [[ -n "$BINARY_SKIP" ]]; then
        echo
        echo "binary bulk read not run: $BINARY_SKIP"
    fi
    if [[ -n "$ARCHIVE_LINE" ]]; then
        echo
        echo "$ARCHIVE_LINE"
    fi
    if (( FAILURES > 0 )); then
        echo
        echo "WARNING: $FAILURES run(s) failed; their medians use the remaining samples"
    fi
} >"$REPORT"

mkdir -p bench/results
cp "$REPORT" bench/results/latest.txt
cp "$RAW" bench/results/latest-raw.tsv
echo
cat "$REPORT"
echo
log "wrote bench/results/latest.txt (raw samples: bench/results/latest-raw.tsv)"
(( FAILURES == 0 ))
