# bench/lib.sh -- helpers the benchmark scripts share; sourced, not run.
# Expects: SINK, SOURCE, POSTFIX, and for run_source SESSIONS, SIZE, N;
# bench_init makes WORK, PIDS, PF_DIR and EX_PID; ex_ticks needs HZ. Nothing here starts anything by itself.

SINK_OPTS=()

# A free TCP port on address $1 (the kernel picks it; small race until use).
free_port() {
    python3 -c 'import socket,sys; s=socket.socket(); s.bind((sys.argv[1],0)); print(s.getsockname()[1])' "$1"
}

# Waits until $1:$2 accepts connections (10 s).
wait_listening() {
    for _ in $(seq 200); do
        if python3 -c 'import socket,sys; socket.create_connection((sys.argv[1],int(sys.argv[2])),0.2).close()' "$1" "$2" 2>/dev/null; then
            return 0
        fi
        sleep 0.05
    done
    echo "nothing listening on $1:$2" >&2
    return 1
}

# Fields of /proc/PID/stat after the command name: f[0] is field 3 (state).
stat_fields() {
    local s
    s=$(cat "/proc/$1/stat" 2>/dev/null) || return 1
    s=${s##*) }
    echo "$s"
}

# utime+stime+cutime+cstime of PID $1, in clock ticks.
proc_ticks() {
    local f
    f=($(stat_fields "$1")) || { echo 0; return; }
    echo $((f[11] + f[12] + f[13] + f[14]))
}

# Process $1 and its live descendants, one pid a line.
tree_pids() {
    local root=$1 p f
    declare -A parent=()
    for p in /proc/[0-9]*; do
        p=${p#/proc/}
        f=($(stat_fields "$p")) || continue
        parent[$p]=${f[1]}
    done
    for p in "${!parent[@]}"; do
        local q=$p
        while [ -n "$q" ] && [ "$q" != 0 ] && [ "$q" != 1 ]; do
            if [ "$q" = "$root" ]; then
                echo "$p"
                break
            fi
            q=${parent[$q]:-}
        done
    done
}

# CPU ticks of process $1 and all its live descendants (the dead ones are
# in their parents' cutime/cstime once reaped).
tree_ticks() {
    local total=0 p
    for p in $(tree_pids "$1"); do
        total=$((total + $(proc_ticks "$p")))
    done
    echo "$total"
}

# Sum of VmRSS (kB) of process $1 and its live descendants (one that
# exits meanwhile, or is a zombie without VmRSS, counts 0).
tree_rss() {
    local total=0 p kb
    for p in $(tree_pids "$1"); do
        kb=$(awk '/^VmRSS:/ {print $2}' "/proc/$p/status" 2>/dev/null || true)
        total=$((total + ${kb:-0}))
    done
    echo "$total"
}

now() { date +%s.%N; }

# Floating-point arithmetic: calc "1 / 3".
calc() { awk "BEGIN { printf \"%.6f\", $* }"; }

# Starts an smtp-sink on $1:$2 that exits after $3 messages; sets SINK_PID.
# Extra smtp-sink options come from the array SINK_OPTS.
start_sink() {
    local user=()
    [ "$(id -u)" = 0 ] && user=(-u root)
    "$SINK" "${user[@]}" "${SINK_OPTS[@]}" -M "$3" "$1:$2" 256 >/dev/null 2>"$WORK/sink-$2.log" &
    SINK_PID=$!
    PIDS+=("$SINK_PID")
    wait_listening "$1" "$2"
}

# Waits (up to 600 s) for the sink $1 to exit, i.e. to have all messages.
wait_sink_done() {
    for _ in $(seq 6000); do
        [ -d "/proc/$1" ] && [ "$(stat_fields "$1" | cut -d' ' -f1)" != Z ] || return 0
        sleep 0.1
    done
    echo "sink $1 did not receive all messages in 600 s" >&2
    return 1
}

# Runs the load against $1:$2; prints the wall seconds it took.
run_source() {
    local t0 t1
    t0=$(now)
    "$SOURCE" -s "$SESSIONS" -l "$SIZE" -m "$N" -f bench@client.test -t rcpt@example.test \
        -M client.test "$1:$2" >"$WORK/source-$2.log" 2>&1 ||
        { echo "smtp-source failed:" >&2; cat "$WORK/source-$2.log" >&2; return 1; }
    t1=$(now)
    calc "$t1 - $t0"
}


# The service lines of Debian's master.cf without chroot (each bench's
# Postfix has a private queue), to follow the bench's own listener lines.
pf_services() {
    cat <<'EOF'
pickup    unix  n       -       n       60      1       pickup
cleanup   unix  n       -       n       -       0       cleanup
qmgr      unix  n       -       n       300     1       qmgr
tlsmgr    unix  -       -       n       1000?   1       tlsmgr
rewrite   unix  -       -       n       -       -       trivial-rewrite
bounce    unix  -       -       n       -       0       bounce
defer     unix  -       -       n       -       0       bounce
trace     unix  -       -       n       -       0       bounce
verify    unix  -       -       n       -       1       verify
flush     unix  n       -       n       1000?   0       flush
proxymap  unix  -       -       n       -       -       proxymap
proxywrite unix -       -       n       -       1       proxymap
smtp      unix  -       -       n       -       -       smtp
relay     unix  -       -       n       -       -       smtp
showq     unix  n       -       n       -       -       showq
error     unix  -       -       n       -       -       error
retry     unix  -       -       n       -       -       error
discard   unix  -       -       n       -       -       discard
local     unix  -       n       n       -       -       local
virtual   unix  -       n       n       -       -       virtual
lmtp      unix  -       -       n       -       -       lmtp
anvil     unix  -       -       n       -       1       anvil
scache    unix  -       -       n       -       1       scache
postlog   unix-dgram n  -       n       -       1       postlogd
EOF
}

# ---- The work directory and what every script cleans up on exit.

# The posthorn binary to measure: $POSTHORN_BIN, or a release build made
# now (in $CARGO_TARGET_DIR or target/).
posthorn_bin() {
    local bin=${POSTHORN_BIN:-}
    if [ -z "$bin" ]; then
        bin=${CARGO_TARGET_DIR:-$ROOT/target}/release/posthorn
        echo "building $bin ..." >&2
        (cd "$ROOT" && cargo build --release --quiet) >&2
    fi
    echo "$bin"
}

# Makes $WORK (/var/tmp/posthorn-$1.XXXXXX), empties PIDS and PF_DIR, and
# installs bench_cleanup. Call it at the top level of the script.
bench_init() {
    WORK=$(mktemp -d "/var/tmp/posthorn-$1.XXXXXX")
    chmod 755 "$WORK"
    PIDS=()
    PF_DIR=""
    EX_PID=""
    trap bench_cleanup EXIT
    trap 'exit 130' INT TERM
}

# Stops the private Postfix and Exim, then every process in PIDS, and removes $WORK
# (kept with KEEP=1).
bench_cleanup() {
    set +e
    pf_stop
    ex_stop
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null; done
    if [ "${KEEP:-}" = 1 ]; then echo "kept $WORK" >&2; else rm -rf "$WORK"; fi
}

# ---- A private Postfix instance (needs root): config, queue and data
# directories of its own under $WORK/postfix, started with
# `postfix -c DIR start`. Expects POSTFIX (the postfix command).

# Prepares $PF_DIR; false, with a note, when not root.
pf_setup() {
    if [ "$(id -u)" != 0 ]; then
        echo "skipping Postfix: a private Postfix instance needs root" >&2
        return 1
    fi
    [ -x "$POSTFIX" ] || { echo "missing $POSTFIX: apt-get install postfix" >&2; exit 1; }
    PF_DIR=$WORK/postfix
    mkdir -p "$PF_DIR/etc" "$PF_DIR/queue" "$PF_DIR/data"
    chown postfix "$PF_DIR/data"    # master.lock and caches live there
}

# The main.cf lines every bench's instance shares ($1: which bench); each
# adds its routing, relay and TLS lines after these.
pf_main_cf() {
    cat <<EOF
# Private instance for $1.
compatibility_level = 3.6
queue_directory = $PF_DIR/queue
data_directory = $PF_DIR/data
mail_owner = postfix
setgid_group = postdrop
myhostname = bench-postfix.test
mydomain = test
myorigin = \$myhostname
# Postfix only accepts interface addresses here (127.0.0.X is not one);
# the listeners in master.cf bind their own.
inet_interfaces = 127.0.0.1
inet_protocols = ipv4
mydestination =
local_recipient_maps =
alias_maps =
alias_database =
mynetworks = 127.0.0.0/8
maillog_file = $PF_DIR/maillog
syslog_name = postfix-bench
biff = no
EOF
}

pf_master_pid() {
    [ -n "$PF_DIR" ] && head -1 "$PF_DIR/queue/pid/master.pid" 2>/dev/null | tr -d ' ' || true
}

# Checks and starts the instance whose main.cf and master.cf are written,
# waits until each port $2... on address $1 listens, and sets PF_MASTER.
pf_start() {
    local ip=$1 port
    shift
    "$POSTFIX" -c "$PF_DIR/etc" check >"$WORK/postfix-check.log" 2>&1 ||
        { echo "postfix check failed:" >&2; cat "$WORK/postfix-check.log" "$PF_DIR/maillog" >&2; return 1; }
    "$POSTFIX" -c "$PF_DIR/etc" start >"$WORK/postfix-start.log" 2>&1 ||
        { echo "postfix start failed:" >&2; cat "$WORK/postfix-start.log" "$PF_DIR/maillog" >&2; return 1; }
    for port in "$@"; do
        wait_listening "$ip" "$port"
    done
    PF_MASTER=""
    for _ in $(seq 100); do
        PF_MASTER=$(pf_master_pid)
        [ -n "$PF_MASTER" ] && break
        sleep 0.05
    done
}

# Stops the instance, if one was set up, and waits for its master to go
# (`postfix stop` returns at once); safe to call twice.
pf_stop() {
    [ -n "$PF_DIR" ] && [ -f "$PF_DIR/etc/main.cf" ] || return 0
    local m
    m=$(pf_master_pid)
    "$POSTFIX" -c "$PF_DIR/etc" stop >/dev/null 2>&1
    for _ in $(seq 50); do
        [ -n "$m" ] && [ -d "/proc/$m" ] || break
        sleep 0.1
    done
    [ -n "$m" ] && [ -d "/proc/$m" ] && kill -9 "$m"
    return 0
}

# ---- A private Exim instance (needs root), the third MTA on the bench.
# Debian's exim4-daemon-light conflicts with the postfix package the
# benches need, so its .deb is unpacked with `dpkg-deb -x` into
# $EXIM_ROOT (default /var/tmp/posthorn-exim, kept between runs) and run
# from there with `-C` (its own configuration), its own spool and logs under
# $WORK/exim, and `exim_path` pointing back at the unpacked binary so that
# its delivery re-execs find it. The binary's compiled-in account,
# Debian-exim, is created when missing, as the package's postinst would.

# Prepares EX_DIR and EX_BIN; false, with a note, when it cannot.
ex_setup() {
    if [ "$(id -u)" != 0 ]; then
        echo "skipping Exim: a private Exim instance needs root" >&2
        return 1
    fi
    local root=${EXIM_ROOT:-/var/tmp/posthorn-exim}
    EX_BIN=$root/usr/sbin/exim4
    if [ ! -x "$EX_BIN" ]; then
        local debs
        debs=$(mktemp -d /tmp/posthorn-exim-debs.XXXXXX)
        chmod 755 "$debs"    # apt-get download runs as _apt where it can
        if ! (cd "$debs" && apt-get download -q exim4-daemon-light >/dev/null 2>&1); then
            echo "skipping Exim: apt-get download exim4-daemon-light failed" >&2
            rm -rf "$debs"
            return 1
        fi
        mkdir -p "$root"
        dpkg-deb -x "$debs"/exim4-daemon-light_*.deb "$root"
        rm -rf "$debs"
    fi
    if ldd "$EX_BIN" | grep -q 'not found'; then
        echo "skipping Exim: libraries missing for $EX_BIN:" >&2
        ldd "$EX_BIN" | grep 'not found' >&2
        return 1
    fi
    getent passwd Debian-exim >/dev/null ||
        useradd --system --user-group --no-create-home --home-dir /nonexistent \
            --shell /usr/sbin/nologin Debian-exim
    EX_DIR=$WORK/exim
    mkdir -p "$EX_DIR/spool" "$EX_DIR/log"
    chown Debian-exim:Debian-exim "$EX_DIR/spool" "$EX_DIR/log"
}

# The configuration every bench's Exim uses ($1: which bench, $2 the
# listening address, $3 its port, $4 the route_list of its one manualroute
# router, e.g. "* 127.0.0.1::2525"): relay for 127.0.0.0/8, no TLS, no
# ident or reverse lookups, delivery at once (Exim's default: a delivery
# process per message).
ex_conf() {
    cat <<CONF
# Private instance for $1.
exim_path = $EX_BIN
keep_environment =
primary_hostname = bench-exim.test
spool_directory = $EX_DIR/spool
log_file_path = $EX_DIR/log/%slog
pid_file_path = $EX_DIR/exim.pid
local_interfaces = <; $2
daemon_smtp_ports = $3
smtp_accept_max = 1000
smtp_accept_queue_per_connection = 0
deliver_drop_privilege = true
smtp_connect_backlog = 100
rfc1413_hosts =
host_lookup =
tls_advertise_hosts =
hostlist relay_from = 127.0.0.0/8
acl_smtp_rcpt = acl_check_rcpt

begin acl
acl_check_rcpt:
  accept hosts = +relay_from
  deny message = relay not permitted

begin routers
next_hop:
  driver = manualroute
  route_list = $4
  transport = remote_smtp
  self = send

begin transports
remote_smtp:
  driver = smtp
  hosts_avoid_tls = *

begin retry
* * F,2h,1m
CONF
}

# Exim's delivery processes outlive the receiving process that forked them
# and are reparented to init, so the CPU of the daemon's process tree misses
# most of Exim's work. The instance runs in a cgroup of its own instead
# (cgroup v1 cpuacct or v2), whose CPU counter includes every process that
# ever ran in it. EX_CG: that cgroup, when one could be made.
ex_cgroup() {
    EX_CG=""
    local name=posthorn-bench-exim-$$
    if [ -d /sys/fs/cgroup/cpuacct ] && mkdir "/sys/fs/cgroup/cpuacct/$name" 2>/dev/null; then
        EX_CG=/sys/fs/cgroup/cpuacct/$name
    elif [ -f /sys/fs/cgroup/cgroup.controllers ] && mkdir "/sys/fs/cgroup/$name" 2>/dev/null; then
        EX_CG=/sys/fs/cgroup/$name
    else
        echo "exim: no cgroup could be made; its CPU column counts only the daemon's process tree" >&2
    fi
}

# CPU ticks of the Exim instance so far: its cgroup's counter, else its
# daemon's process tree.
ex_ticks() {
    local usec
    if [ -f "${EX_CG:-}/cpuacct.usage" ]; then
        usec=$(($(cat "$EX_CG/cpuacct.usage") / 1000))
    elif [ -f "${EX_CG:-}/cpu.stat" ]; then
        usec=$(awk '$1 == "usage_usec" {print $2}' "$EX_CG/cpu.stat")
    else
        tree_ticks "$EX_PID"
        return
    fi
    echo $((usec * HZ / 1000000))
}

# Starts the instance whose configuration is $EX_DIR/exim.conf in its own
# cgroup, waits until $1:$2 listens, and sets EX_PID (the listening daemon).
ex_start() {
    "$EX_BIN" -C "$EX_DIR/exim.conf" -bV >"$WORK/exim-check.log" 2>&1 ||
        { echo "exim -bV failed:" >&2; cat "$WORK/exim-check.log" >&2; return 1; }
    ex_cgroup
    (
        [ -z "$EX_CG" ] || echo "$BASHPID" >"$EX_CG/cgroup.procs"
        exec "$EX_BIN" -C "$EX_DIR/exim.conf" -bd -oX "$2" -oP "$EX_DIR/exim.pid"
    ) &
    PIDS+=("$!")
    wait_listening "$1" "$2"
    EX_PID=""
    for _ in $(seq 100); do
        EX_PID=$(head -1 "$EX_DIR/exim.pid" 2>/dev/null | tr -d ' ' || true)
        [ -n "$EX_PID" ] && break
        sleep 0.05
    done
}

# Stops the instance, if one was started; safe to call twice.
ex_stop() {
    [ -n "${EX_PID:-}" ] || return 0
    kill "$EX_PID" 2>/dev/null
    for _ in $(seq 50); do
        [ -d "/proc/$EX_PID" ] || break
        sleep 0.1
    done
    [ -d "/proc/$EX_PID" ] && kill -9 "$EX_PID"
    EX_PID=""
    if [ -n "${EX_CG:-}" ]; then
        # Stray delivery processes go too; then the cgroup can be removed.
        xargs -r kill -9 <"$EX_CG/cgroup.procs" 2>/dev/null
        for _ in $(seq 50); do
            rmdir "$EX_CG" 2>/dev/null && break
            sleep 0.1
        done
        EX_CG=""
    fi
    return 0
}
