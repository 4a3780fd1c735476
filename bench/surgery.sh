#!/usr/bin/env bash
# bench/surgery.sh -- the spam drill on a big queue ("stop, purge, start"):
# `postsuper -d ALL` and `mailq | wc -l` with the MTA stopped and running,
# posthorn beside a private Postfix, in the same run.
#
# How the queue is filled: through the normal path. Postfix's smtp-source
# sends N messages (default 100,000) by SMTP to
#   1. a posthorn satellite whose smarthost refuses connections (retries
#      hourly), and
#   2. a private Postfix instance (own config dir and queue, needs root)
#      whose relayhost refuses connections,
# and the script waits until every message is deferred. Each MTA is then
# stopped and its queue directory copied (`cp -a`), so that the same N
# messages are timed twice:
#   stopped: mailq | wc -l, then postsuper -d ALL (posthorn changes the
#            files itself under the spool lock; Postfix's postsuper always
#            does), and the files left afterwards;
#   running: the copy put back, the MTA started, then the same two commands
#            (posthorn through the daemon, which unlinks the bodies after
#            answering: the time until they are gone is printed too).
# Figures are printed, never asserted on (target, issue 14: postsuper -d ALL
# on 100,000 messages with the daemon down in under 10 s). Everything
# started here is stopped and removed on exit. Not part of the test suite.
#
# usage: bench/surgery.sh [N]           (default N=100000)
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

# Shared helpers: free_port, the private Postfix instance (pf_*), bench_init.
. "$ROOT/bench/lib.sh"
bench_init surgery-bench

now() { date +%s.%N; }
calc() { awk "BEGIN { printf \"%.3f\", $* }"; }
count_files() { find "$1" -type f 2>/dev/null | wc -l; }

# Waits until directory $1 holds N files; gives up after $2 s without progress.
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

# Sends N messages to $1:$2.
fill() {
    "$SOURCE" -s "$SESSIONS" -l "$SIZE" -m "$N" -f bench@client.test -t rcpt@example.test \
        -M client.test "$1:$2" >"$WORK/source-$2.log" 2>&1 ||
        { echo "smtp-source failed:" >&2; cat "$WORK/source-$2.log" >&2; return 1; }
}

# Times the shell pipeline $1; sets T (seconds) and OUT (its last line).
timed() {
    local t0
    t0=$(now)
    OUT=$(bash -c "$1" 2>&1 | tail -1) || true
    T=$(calc "$(now) - $t0")
}

RESULTS=()
result() { RESULTS+=("$(printf '%-9s %-8s %-38s %8s  %s' "$1" "$2" "$3" "$4" "$5")"); }

# ---- posthorn

PH_PID=""
ph_start() {
    local dir=$1
    : >"$dir/posthorn.log"
    "$PH_BIN" serve -c "$dir/posthorn.toml" 2>"$dir/posthorn.log" &
    PH_PID=$!
    PIDS+=("$PH_PID")
    for _ in $(seq 1200); do
        grep -qx 'ready' "$dir/posthorn.log" 2>/dev/null && return 0
        [ -d "/proc/$PH_PID" ] || break
        sleep 0.05
    done
    echo "posthorn not ready:" >&2
    cat "$dir/posthorn.log" >&2
    return 1
}

ph_stop() {
    kill "$PH_PID"
    wait "$PH_PID" 2>/dev/null || true
}

bench_posthorn() {
    PH_BIN=${POSTHORN_BIN:-}
    if [ -z "$PH_BIN" ]; then
        PH_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/posthorn
        echo "building $PH_BIN ..." >&2
        (cd "$ROOT" && cargo build --release --quiet) >&2
    fi
    local dir=$WORK/posthorn dead
    mkdir -p "$dir/bin"
    "$PH_BIN" install-links "$dir/bin" >/dev/null
    dead=$(free_port 127.0.0.1)
    cat >"$dir/posthorn.toml" <<TOML
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
TOML
    ph_start "$dir"
    local addr
    addr=$(sed -n 's/.*listening smtp=\([0-9.]*:[0-9]*\).*/\1/p' "$dir/posthorn.log" | head -1)
    echo "posthorn: submitting $N messages ..." >&2
    fill "${addr%:*}" "${addr##*:}"
    wait_deferred "$dir/spool/deferred" 120
    ph_stop
    cp -a "$dir/spool" "$dir/spool.copy"

    local env="PATH=$dir/bin:\$PATH POSTHORN_CONFIG=$dir/posthorn.toml"
    timed "$env mailq | wc -l"
    result posthorn stopped "mailq | wc -l (s)" "$T" "$OUT lines"
    timed "$env postsuper -d ALL"
    result posthorn stopped "postsuper -d ALL (s)" "$T" "$OUT"
    result posthorn stopped "  files left in deferred/, data/" "" \
        "$(count_files "$dir/spool/deferred"), $(count_files "$dir/spool/data")"

    rm -rf "$dir/spool"
    mv "$dir/spool.copy" "$dir/spool"
    local t0
    t0=$(now)
    ph_start "$dir"
    result posthorn running "start with the queue, until ready (s)" "$(calc "$(now) - $t0")" ""
    timed "$env mailq | wc -l"
    result posthorn running "mailq | wc -l (s)" "$T" "$OUT lines"
    t0=$(now)
    timed "$env postsuper -d ALL"
    result posthorn running "postsuper -d ALL (s)" "$T" "$OUT"
    for _ in $(seq 600); do
        [ "$(count_files "$dir/spool/data")" = 0 ] && break
        sleep 0.1
    done
    result posthorn running "  until the bodies are unlinked (s)" "$(calc "$(now) - $t0")" \
        "$(count_files "$dir/spool/data") left"
    ph_stop
}

# ---- Postfix

bench_postfix() {
    pf_setup || return 0
    local ip=127.0.0.$((100 + RANDOM % 100))
    local port dead
    port=$(free_port "$ip")
    dead=$(free_port 127.0.0.1)
    {
        pf_main_cf "bench/surgery.sh: the relayhost refuses connections"
        cat <<CF
relayhost = [127.0.0.1]:$dead
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_tls_security_level = none
smtp_tls_security_level = none
minimal_backoff_time = 1h
maximal_backoff_time = 1h
queue_run_delay = 1h
# Stopped, Postfix's commands write maillog_file themselves, and cannot
# open the one postlogd made: syslog (dropped here) instead.
maillog_file =
CF
    } >"$PF_DIR/etc/main.cf"
    {
        echo "$ip:$port inet n - n - - smtpd"
        pf_services
    } >"$PF_DIR/etc/master.cf"
    pf_start "$ip" "$port"
    echo "Postfix: submitting $N messages ..." >&2
    fill "$ip" "$port"
    wait_deferred "$PF_DIR/queue/deferred" 300
    pf_stop || true
    cp -a "$PF_DIR/queue" "$PF_DIR/queue.copy"

    local c="-c $PF_DIR/etc"
    timed "/usr/sbin/postqueue $c -p | wc -l"
    result postfix stopped "mailq | wc -l (s)" "$T" "$OUT lines"
    timed "/usr/sbin/postsuper $c -d ALL"
    result postfix stopped "postsuper -d ALL (s)" "$T" "$OUT"

    rm -rf "$PF_DIR/queue"
    mv "$PF_DIR/queue.copy" "$PF_DIR/queue"
    pf_start "$ip" "$port"
    timed "/usr/sbin/postqueue $c -p | wc -l"
    result postfix running "mailq | wc -l (s)" "$T" "$OUT lines"
    timed "/usr/sbin/postsuper $c -d ALL"
    result postfix running "postsuper -d ALL (s)" "$T" "$OUT"
    # pf_stop's status is its last test's, false when the master is gone.
    pf_stop || true
}

[ "${SKIP_POSTHORN:-}" = 1 ] || bench_posthorn
[ "${SKIP_POSTFIX:-}" = 1 ] || bench_postfix

echo
echo "queue surgery: $N deferred messages of $SIZE bytes (next hop down); $(nproc) cores"
printf '%-9s %-8s %-38s %8s  %s\n' MTA MTA-is measure value output
for r in "${RESULTS[@]}"; do
    echo "$r"
done
echo "(target: postsuper -d ALL with the daemon down < 10 s)"
