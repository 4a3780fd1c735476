#!/usr/bin/env bash
# bench/milter.sh -- what a before-queue milter costs posthorn's accept rate.
#
# The load of bench/accept.sh (Postfix's smtp-source: SESSIONS parallel
# sessions, N messages of SIZE bytes, one connection per message) goes to a
# posthorn satellite relaying to an smtp-sink, twice in the same run:
#   1. without a milter (`nomilter`), and
#   2. with rspamd as its milter (`rspamd`): rspamd's proxy worker in milter
#      mode, scanning itself, started here with a private configuration (as
#      tests/milter.rs does: no Redis, DNS pointed at nothing, a short TLD
#      list), run as nobody.
# Each session holds its own milter connection (as Postfix does), so the 20
# sessions run 20 milter conversations at once. Printed per run: accepted
# messages per second, time until the sink had all N, and the CPU of the
# posthorn process per message (rspamd's own CPU is not counted; its
# column `rspamd CPU ms/msg` is printed beside). Figures are printed, never
# asserted on. Everything started here is stopped and removed on exit.
#
# usage: bench/milter.sh [N]            (default N=1000)
# env:   SESSIONS=20 SIZE=1024 POSTHORN_BIN=path
#        CARGO_TARGET_DIR (where to find or build target/release/posthorn)
set -euo pipefail

N=${1:-${N:-1000}}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-1024}
SINK=/usr/sbin/smtp-sink
SOURCE=/usr/sbin/smtp-source
POSTFIX=/usr/sbin/postfix
HZ=$(getconf CLK_TCK)
ROOT=$(cd "$(dirname "$0")/.." && pwd)

for tool in "$SINK" "$SOURCE"; do
    [ -x "$tool" ] || { echo "missing $tool: apt-get install postfix" >&2; exit 1; }
done
command -v rspamd >/dev/null || { echo "missing rspamd: apt-get install rspamd" >&2; exit 1; }
command -v python3 >/dev/null || { echo "missing python3" >&2; exit 1; }

. "$ROOT/bench/lib.sh"
bench_init milter-bench

RESULTS=()
RSPAMD_PID=""

# Starts rspamd's proxy in milter mode on 127.0.0.1:$1, config under $WORK/rspamd.
start_rspamd() {
    local d=$WORK/rspamd port=$1
    mkdir -p "$d/db" "$d/local.d"
    cat >"$d/rspamd.conf" <<EOF
.include "\$CONFDIR/common.conf"
options {
    pidfile = "\$RUNDIR/rspamd.pid";
    .include "\$CONFDIR/options.inc"
    .include(try=true; priority=1,duplicate=merge) "\$LOCAL_CONFDIR/local.d/options.inc"
}
logging { type = "file"; filename = "\$LOGDIR/rspamd.log"; level = "warning"; }
worker "rspamd_proxy" {
    bind_socket = "127.0.0.1:$port";
    milter = yes;
    timeout = 120s;
    count = 1;
    upstream "local" { default = yes; self_scan = yes; }
}
lua = "\$RULESDIR/rspamd.lua"
.include "\$CONFDIR/metrics.conf"
.include "\$CONFDIR/actions.conf"
.include "\$CONFDIR/groups.conf"
.include "\$CONFDIR/composites.conf"
.include "\$CONFDIR/statistic.conf"
.include "\$CONFDIR/modules.conf"
.include "\$CONFDIR/settings.conf"
EOF
    printf 'com\norg\nnet\ntest\nexample\n' >"$d/tld.dat"
    printf 'dns { nameserver = ["127.0.0.1:1"]; timeout = 0.1s; retransmits = 0; }\nurl_tld = "%s";\n' \
        "$d/tld.dat" >"$d/local.d/options.inc"
    chown -R nobody:nogroup "$d"
    rspamd -f -u nobody -g nogroup -c "$d/rspamd.conf" --var "LOCAL_CONFDIR=$d" --var "DBDIR=$d/db" \
        --var "RUNDIR=$d" --var "LOGDIR=$d" >/dev/null 2>&1 &
    RSPAMD_PID=$!
    PIDS+=("$RSPAMD_PID")
    for _ in $(seq 1800); do
        python3 -c 'import socket,sys; socket.create_connection(("127.0.0.1",int(sys.argv[1])),0.2).close()' \
            "$port" 2>/dev/null && return 0
        sleep 0.1
    done
    echo "rspamd did not start:" >&2
    cat "$d/rspamd.log" >&2
    return 1
}

# bench_posthorn NAME [TOML] [RSPAMD_PID]: one run, TOML appended.
bench_posthorn() {
    local name=$1 extra=${2:-} milter_pid=${3:-}
    local bin
    bin=$(posthorn_bin)
    local dir=$WORK/$name sink_port
    mkdir -p "$dir"
    sink_port=$(free_port 127.0.0.1)
    start_sink 127.0.0.1 "$sink_port" "$N"
    local sink_pid=$SINK_PID
    cat >"$dir/posthorn.toml" <<EOF
role = "satellite"
user = "root"
hostname = "bench-posthorn.test"
spool = "$dir/spool"

[smtp]
listen = ["127.0.0.1:0"]

[relay]
smarthosts = ["127.0.0.1:$sink_port"]
tls = "none"
$extra
EOF
    "$bin" serve -c "$dir/posthorn.toml" 2>"$dir/posthorn.log" &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 400); do
        grep -qx 'ready' "$dir/posthorn.log" 2>/dev/null && break
        [ -d "/proc/$pid" ] || { cat "$dir/posthorn.log" >&2; return 1; }
        sleep 0.05
    done
    local addr
    addr=$(sed -n 's/.*listening smtp=\([0-9.]*:[0-9]*\).*/\1/p' "$dir/posthorn.log" | head -1)
    sleep 1
    local c0 m0=0 t0 secs done_secs c1 m1=0
    c0=$(proc_ticks "$pid")
    [ -n "$milter_pid" ] && m0=$(tree_ticks "$milter_pid")
    t0=$(now)
    secs=$(run_source "${addr%:*}" "${addr##*:}")
    wait_sink_done "$sink_pid"
    done_secs=$(calc "$(now) - $t0")
    c1=$(proc_ticks "$pid")
    [ -n "$milter_pid" ] && m1=$(tree_ticks "$milter_pid")
    local refused
    refused=$(grep -c 'reject: END-OF-MESSAGE\|warning: milter' "$dir/posthorn.log" || true)
    RESULTS+=("$(printf '%-9s %7d %8d %6d %10.0f %8.2f %10.3f %10.3f %8d' "$name" "$N" "$SESSIONS" "$SIZE" \
        "$(calc "$N / $secs")" "$done_secs" "$(calc "($c1 - $c0) * 1000 / $HZ / $N")" \
        "$(calc "($m1 - $m0) * 1000 / $HZ / $N")" "$refused")")
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

bench_posthorn nomilter
milter_port=$(free_port 127.0.0.1)
start_rspamd "$milter_port"
bench_posthorn rspamd "$(printf '\n[milter]\nservers = ["inet:127.0.0.1:%s"]\n' "$milter_port")" "$RSPAMD_PID"

echo
echo "milter benchmark: smtp-source -s $SESSIONS -l $SIZE -m $N, one connection per message; $(nproc) cores"
printf '%-9s %7s %8s %6s %10s %8s %10s %10s %8s\n' run msgs sessions bytes "accept/s" "done s" \
    "CPU ms/msg" "milter CPU" "refused"
for r in "${RESULTS[@]}"; do
    echo "$r"
done
echo "(CPU ms/msg: posthorn's process; milter CPU: rspamd's processes, ms/msg; refused: milter refusals and warnings)"
