#!/usr/bin/env bash
# bench/sessions.sh -- how the accept rate of a hub scales with the number
# of sessions, posthorn beside Postfix (issue 18, item 3).
#
# For each count S in SWEEP, Postfix's smtp-source sends N messages of SIZE
# bytes over S parallel sessions (one connection per message) to
#   1. a posthorn hub (role = "hub": max_connections 500, trusted_networks
#      127.0.0.0/8, spool on disk with its durable commit) whose next hop
#      for example.test is an smtp-sink, and
#   2. a private Postfix instance (as in bench/relay.sh; needs root)
#      relaying to another smtp-sink.
# Between two counts the queue is left to drain, so that each point starts
# from an empty queue. For each point it prints:
#   accept msg/s   N / wall time until smtp-source got every 250
#   CPU ms/msg     user+system CPU of the MTA's processes over that time
#   421            replies starting 421 that smtp-source reported, plus
#                  (posthorn) the connections its log says were refused
# Figures are printed, never asserted on. Everything started here is
# stopped and removed on exit.
#
# usage: bench/sessions.sh [N]         (default N=2000 per point)
# env:   SWEEP="1 20 100 500" SIZE=1024 POSTHORN_BIN=path SKIP_POSTFIX=1
#        SKIP_POSTHORN=1 KEEP=1 CARGO_TARGET_DIR
set -euo pipefail

N=${1:-${N:-2000}}
SWEEP=${SWEEP:-1 20 100 500}
SIZE=${SIZE:-1024}
SINK=/usr/sbin/smtp-sink
SOURCE=/usr/sbin/smtp-source
POSTFIX=/usr/sbin/postfix
HZ=$(getconf CLK_TCK)
ROOT=$(cd "$(dirname "$0")/.." && pwd)

for tool in "$SINK" "$SOURCE"; do
    [ -x "$tool" ] || { echo "missing $tool: apt-get install postfix" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "missing python3" >&2; exit 1; }

. "$ROOT/bench/lib.sh"
bench_init sessions-bench
# 500 sessions need 500 descriptors in smtp-source and in the daemon.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"

RESULTS=()

# A sink that never exits by itself (stopped on exit with the rest).
start_open_sink() {
    "$SINK" -u root "$1:$2" 1024 >/dev/null 2>"$WORK/sink-$2.log" &
    PIDS+=("$!")
    wait_listening "$1" "$2"
}

# Message files left under the queue directories $@.
queued() {
    find "$@" -type f 2>/dev/null | wc -l
}

# Waits (up to 300 s) until no message file is left under $@.
wait_drained() {
    for _ in $(seq 3000); do
        [ "$(queued "$@")" = 0 ] && return 0
        sleep 0.1
    done
    echo "queue not drained in 300 s: $(queued "$@") files left" >&2
}

# One point: $1 MTA name, $2 sessions, $3:$4 its address, $5 the pid of
# its process tree, $6 a command printing its refusals so far, $7...: its
# queue directories.
point() {
    local name=$1 sessions=$2 ip=$3 port=$4 pid=$5 refused_cmd=$6
    shift 6
    local c0 t0 secs c1 r0 r1 replies
    r0=$($refused_cmd)
    c0=$(tree_ticks "$pid")
    t0=$(now)
    "$SOURCE" -s "$sessions" -l "$SIZE" -m "$N" -f bench@client.test -t rcpt@example.test \
        -M client.test "$ip:$port" >"$WORK/source-$name-$sessions.log" 2>&1 ||
        echo "$name, $sessions sessions: smtp-source: $(tail -1 "$WORK/source-$name-$sessions.log")" >&2
    secs=$(calc "$(now) - $t0")
    c1=$(tree_ticks "$pid")
    r1=$($refused_cmd)
    replies=$(grep -c ' 421 \|: 421' "$WORK/source-$name-$sessions.log" || true)
    RESULTS+=("$(printf '%-9s %8d %7d %6d %10.0f %10.3f %6d' "$name" "$sessions" "$N" "$SIZE" \
        "$(calc "$N / $secs")" "$(calc "($c1 - $c0) * 1000 / $HZ / $N")" $((replies + r1 - r0)))")
    wait_drained "$@"
}

PH_LOG=""
posthorn_refused() { grep -c 'too many connections' "$PH_LOG" || true; }
no_refusals() { echo 0; }

bench_posthorn() {
    local bin
    bin=$(posthorn_bin)
    local dir=$WORK/posthorn sink_port
    mkdir -p "$dir"
    sink_port=$(free_port 127.0.0.1)
    start_open_sink 127.0.0.1 "$sink_port"
    echo "example.test   relay:[127.0.0.1]:$sink_port" >"$dir/transport"
    cat >"$dir/posthorn.toml" <<CONF
role = "hub"
user = "root"                 # the benchmark runs as root (for Postfix); the daemon stays root
hostname = "bench-hub.test"
spool = "$dir/spool"

[smtp]
listen = ["127.0.0.1:0"]

[access]
trusted_networks = ["127.0.0.0/8"]

[deliver]
transport_maps = ["hash:$dir/transport"]

[relay]
tls = "none"
CONF
    PH_LOG=$dir/posthorn.log
    "$bin" serve -c "$dir/posthorn.toml" 2>"$PH_LOG" &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 400); do
        grep -qx 'ready' "$PH_LOG" 2>/dev/null && break
        [ -d "/proc/$pid" ] || { cat "$PH_LOG" >&2; return 1; }
        sleep 0.05
    done
    local addr
    addr=$(sed -n 's/.*listening smtp=\([0-9.]*:[0-9]*\).*/\1/p' "$PH_LOG" | head -1)
    sleep 1
    for s in $SWEEP; do
        point posthorn "$s" "${addr%:*}" "${addr##*:}" "$pid" posthorn_refused \
            "$dir/spool/incoming" "$dir/spool/active" "$dir/spool/deferred"
    done
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

bench_postfix() {
    pf_setup || return 0
    local ip=127.0.0.$((100 + RANDOM % 100))
    local port sink_port
    port=$(free_port "$ip")
    sink_port=$(free_port 127.0.0.1)
    start_open_sink 127.0.0.1 "$sink_port"
    echo "example.test   relay:[127.0.0.1]:$sink_port" >"$PF_DIR/etc/transport"
    {
        pf_main_cf "bench/sessions.sh: a hub relaying for its networks"
        cat <<CONF
relayhost =
transport_maps = texthash:$PF_DIR/etc/transport
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_tls_security_level = none
smtp_tls_security_level = none
# As many smtpd processes as posthorn's hub has slots.
default_process_limit = 500
CONF
    } >"$PF_DIR/etc/main.cf"
    {
        echo "$ip:$port inet n - n - - smtpd"
        pf_services
    } >"$PF_DIR/etc/master.cf"
    pf_start "$ip" "$port"
    sleep 1
    local q=$PF_DIR/queue
    for s in $SWEEP; do
        point postfix "$s" "$ip" "$port" "$PF_MASTER" no_refusals \
            "$q/maildrop" "$q/incoming" "$q/active" "$q/deferred"
    done
    pf_stop
}

[ "${SKIP_POSTHORN:-}" = 1 ] || bench_posthorn
[ "${SKIP_POSTFIX:-}" = 1 ] || bench_postfix

echo
echo "session sweep: smtp-source -s S -l $SIZE -m $N -> hub -> smtp-sink, one connection per message; $(nproc) cores"
printf '%-9s %8s %7s %6s %10s %10s %6s\n' MTA sessions msgs bytes "accept/s" "CPU ms/msg" 421
for r in "${RESULTS[@]}"; do
    echo "$r"
done
echo "(CPU: the MTA's processes while smtp-source ran, per message; 421: replies smtp-source"
echo " reported plus connections the MTA's log says it refused)"
