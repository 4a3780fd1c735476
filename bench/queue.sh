#!/usr/bin/env bash
# bench/queue.sh -- the operator commands on a big queue, side by side with
# Postfix.
#
# N messages (default 100,000) go by SMTP (Postfix's smtp-source) into
#   1. a posthorn satellite whose smarthost refuses connections, and
#   2. a private Postfix instance (own config dir and queue, needs root)
#      whose relayhost refuses connections,
# and the script waits until every message is deferred. Then it times:
#   posthorn: mailq | wc -l, exiqgrep -c -f RE, posthorn queue list --json | wc -l,
#             postsuper -d ALL (through the daemon) and the time until the
#             daemon has unlinked the bodies too, and the daemon's RSS
#             (VmRSS with the full queue, and its peak VmHWM);
#   Postfix:  mailq | wc -l (postqueue -p), postqueue -j | wc -l,
#             postsuper -d ALL, and the memory of its processes with the full
#             queue (summed PSS, so shared pages count once).
# Targets (issue 5): listing and counting under 1 s, deleting all under
# 10 s, daemon RSS under 200 MB. Figures are printed, never asserted on.
# Everything started here is stopped and removed on exit.
#
# usage: bench/queue.sh [N]             (default N=100000)
# env:   SESSIONS=20 SIZE=512 POSTHORN_BIN=path SKIP_POSTFIX=1 SKIP_POSTHORN=1
#        CARGO_TARGET_DIR (where to find or build target/release/posthorn)
set -euo pipefail

N=${1:-${N:-100000}}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-512}
SOURCE=/usr/sbin/smtp-source
POSTFIX=/usr/sbin/postfix
ROOT=$(cd "$(dirname "$0")/.." && pwd)

[ -x "$SOURCE" ] || { echo "missing $SOURCE: apt-get install postfix" >&2; exit 1; }
command -v python3 >/dev/null || { echo "missing python3" >&2; exit 1; }

# Shared helpers: free_port, wait_listening, tree_ticks, calc, the sink
# and source, the private Postfix instance (pf_*), bench_init.
. "$ROOT/bench/lib.sh"
bench_init queue-bench

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.3f\", $* }"; }

# Files under directory $1 (recursively), fast for big directories.
count_files() { find "$1" -type f 2>/dev/null | wc -l; }

# Waits until count_files $1 reaches N, printing progress; gives up after
# $2 seconds without progress.
wait_deferred() {
    local dir=$1 stall=$2 last=-1 since n
    since=$(date +%s)
    while :; do
        n=$(count_files "$dir")
        [ "$n" -ge "$N" ] && { echo "  $n deferred" >&2; return 0; }
        if [ "$n" != "$last" ]; then
            last=$n
            since=$(date +%s)
            echo "  $n deferred ..." >&2
        elif [ $(($(date +%s) - since)) -gt "$stall" ]; then
            echo "stuck at $n deferred messages of $N" >&2
            return 1
        fi
        sleep 2
    done
}

# Sends N messages to $1:$2; prints the wall seconds it took.
fill() {
    local t0
    t0=$(now)
    "$SOURCE" -s "$SESSIONS" -l "$SIZE" -m "$N" -f bench@client.test -t rcpt@example.test \
        -M client.test "$1:$2" >"$WORK/source-$2.log" 2>&1 ||
        { echo "smtp-source failed:" >&2; cat "$WORK/source-$2.log" >&2; return 1; }
    calc "$(now) - $t0"
}

# Times the shell pipeline $1 (run with bash -c); prints "seconds output".
timed() {
    local t0 out
    t0=$(now)
    out=$(bash -c "$1" 2>&1 | tail -1)
    echo "$(calc "$(now) - $t0") $out"
}

RESULTS=()
result() { RESULTS+=("$(printf '%-9s %-44s %9s  %s' "$1" "$2" "$3" "$4")"); }

bench_posthorn() {
    local bin=${POSTHORN_BIN:-}
    if [ -z "$bin" ]; then
        bin=${CARGO_TARGET_DIR:-$ROOT/target}/release/posthorn
        echo "building $bin ..." >&2
        (cd "$ROOT" && cargo build --release --quiet) >&2
    fi
    local dir=$WORK/posthorn
    mkdir -p "$dir/bin"
    "$bin" install-links "$dir/bin" >/dev/null
    local dead
    dead=$(free_port 127.0.0.1)
    cat >"$dir/posthorn.toml" <<EOF
role = "satellite"
user = "root"                 # the benchmark runs as root (for Postfix); the daemon stays root
hostname = "bench-posthorn.test"
spool = "$dir/spool"

[smtp]
listen = ["127.0.0.1:0"]

[relay]
smarthosts = ["127.0.0.1:$dead"]
tls = "none"

[queue]
retry_min = "1h"
retry_max = "1h"
EOF
    "$bin" serve -c "$dir/posthorn.toml" 2>"$dir/posthorn.log" &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 400); do
        grep -qx 'ready' "$dir/posthorn.log" 2>/dev/null && break
        [ -d "/proc/$pid" ] || { cat "$dir/posthorn.log" >&2; return 1; }
        sleep 0.05
    done
    grep -qx 'ready' "$dir/posthorn.log" || { echo "posthorn not ready:" >&2; cat "$dir/posthorn.log" >&2; return 1; }
    local addr secs
    addr=$(sed -n 's/.*listening smtp=\([0-9.]*:[0-9]*\).*/\1/p' "$dir/posthorn.log" | head -1)
    echo "posthorn: submitting $N messages ..." >&2
    secs=$(fill "${addr%:*}" "${addr##*:}")
    result posthorn "submit $N by SMTP (s)" "$secs" ""
    wait_deferred "$dir/spool/deferred" 120
    sleep 2
    local rss hwm
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
    result posthorn "daemon RSS with the queue / peak (MiB)" "$(calc "$rss / 1024")" "peak $(calc "$hwm / 1024")"

    local env="PATH=$dir/bin:\$PATH POSTHORN_CONFIG=$dir/posthorn.toml"
    local r
    r=$(timed "$env mailq | wc -l"); result posthorn "mailq | wc -l (s)" "${r%% *}" "${r#* } lines"
    r=$(timed "$env mailq | tail -1"); result posthorn "mailq footer" "" "${r#* }"
    r=$(timed "$env exiqgrep -c -f '^<bench@'"); result posthorn "exiqgrep -c -f RE (s)" "${r%% *}" "${r#* }"
    r=$(timed "$env $bin queue list --json | wc -l"); result posthorn "posthorn queue list --json | wc -l (s)" "${r%% *}" "${r#* } lines"
    local t0
    t0=$(now)
    r=$(timed "$env postsuper -d ALL"); result posthorn "postsuper -d ALL (s)" "${r%% *}" "${r#* }"
    # postsuper returns once the envelopes are gone (nothing listed, nothing
    # delivered); the daemon unlinks the bodies after, in the background.
    for _ in $(seq 600); do
        [ "$(count_files "$dir/spool/data")" = 0 ] && break
        sleep 0.1
    done
    result posthorn "  and until the bodies are unlinked too (s)" "$(calc "$(now) - $t0")" "$(count_files "$dir/spool/data") left"
    r=$(timed "$env mailq"); result posthorn "mailq afterwards" "" "${r#* }"
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

# Sum of the proportional set sizes (kB) of process $1 and its children:
# shared pages (libraries, Postfix's shared code) are counted once overall,
# not once per process as a sum of RSS would.
tree_pss() {
    local total=0 p
    for p in "$1" $(pgrep -P "$1"); do
        total=$((total + $(awk '/^Pss:/ {print $2}' "/proc/$p/smaps_rollup" 2>/dev/null || echo 0)))
    done
    echo "$total"
}

bench_postfix() {
    pf_setup || return 0
    local ip=127.0.0.$((100 + RANDOM % 100))
    local port dead
    port=$(free_port "$ip")
    dead=$(free_port 127.0.0.1)
    {
        pf_main_cf "bench/queue.sh: the relayhost refuses connections"
        cat <<EOF
relayhost = [127.0.0.1]:$dead
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_tls_security_level = none
smtp_tls_security_level = none
minimal_backoff_time = 1h
maximal_backoff_time = 1h
queue_run_delay = 1h
EOF
    } >"$PF_DIR/etc/main.cf"
    {
        echo "$ip:$port inet n - n - - smtpd"
        pf_services
    } >"$PF_DIR/etc/master.cf"
    pf_start "$ip" "$port"
    local master=$PF_MASTER secs
    echo "Postfix: submitting $N messages ..." >&2
    secs=$(fill "$ip" "$port")
    result postfix "submit $N by SMTP (s)" "$secs" ""
    wait_deferred "$PF_DIR/queue/deferred" 300
    sleep 2
    result postfix "PSS of its processes with the queue (MiB)" "$(calc "$(tree_pss "$master") / 1024")" "$(($(pgrep -P "$master" | wc -l) + 1)) processes"
    local c="-c $PF_DIR/etc" r
    r=$(timed "/usr/sbin/postqueue $c -p | wc -l"); result postfix "mailq | wc -l (s)" "${r%% *}" "${r#* } lines"
    r=$(timed "/usr/sbin/postqueue $c -p | tail -1"); result postfix "mailq footer" "" "${r#* }"
    r=$(timed "/usr/sbin/postqueue $c -j | wc -l"); result postfix "postqueue -j | wc -l (s)" "${r%% *}" "${r#* } lines"
    r=$(timed "/usr/sbin/postsuper $c -d ALL"); result postfix "postsuper -d ALL (s)" "${r%% *}" "${r#* }"
    pf_stop
}

[ "${SKIP_POSTHORN:-}" = 1 ] || bench_posthorn
[ "${SKIP_POSTFIX:-}" = 1 ] || bench_postfix

echo
echo "queue benchmark: $N deferred messages of $SIZE bytes (next hop down); $(nproc) cores"
printf '%-9s %-44s %9s  %s\n' MTA measure value output
for r in "${RESULTS[@]}"; do
    echo "$r"
done
echo "(targets: listing and counting < 1 s, deleting all < 10 s, daemon RSS < 200 MiB)"
