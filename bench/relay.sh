#!/usr/bin/env bash
# bench/relay.sh -- end-to-end relay rate of a hub, posthorn beside Postfix.
#
# The same load, Postfix's smtp-source (SESSIONS parallel sessions, N
# messages of SIZE bytes to rcpt@example.test, one connection per message),
# goes in the same run to
#   1. a posthorn hub (role = "hub", trusted_networks 127.0.0.0/8, spool on
#      disk with its durable commit), whose next hop for example.test is an
#      smtp-sink: a transport table entry `example.test relay:[127.0.0.1]:P`
#      (ROUTE=transport, the default) or `relay.smarthosts` (ROUTE=smarthost);
#   2. a private Postfix instance as hub (its own config dir and queue,
#      listening on 127.0.0.X:PORT, mynetworks 127.0.0.0/8, the same
#      transport entry in a texthash: table, or relayhost for
#      ROUTE=smarthost; started with `postfix -c DIR start`, needs root),
#      relaying to another smtp-sink;
#   3. a private Exim as hub (Debian's exim4-daemon-light unpacked with
#      dpkg-deb, its own configuration and spool, a manualroute router
#      `example.test 127.0.0.1::P`; needs root; see ex_setup in
#      bench/lib.sh), relaying to a third smtp-sink.
# For each it prints:
#   relay msg/s    N / wall time from the start of the load until the sink
#                  has received all N (smtp-sink -M N exits then)
#   accept msg/s   N / wall time until smtp-source got every 250
#   CPU ms/msg     user+system CPU of the MTA's processes over that time,
#                  per relayed message (Postfix: master and all its
#                  children, live and exited; Exim: every process of its
#                  cgroup, see ex_ticks)
#   conns          connections the sink accepted (reuse shows here)
# Exim 4.96 holds its 221 reply to QUIT for up to 200 ms, waiting for the
# client to close first (so that the client, not the server, keeps the
# TIME_WAIT); smtp-source waits for that 221, so each of Exim's sessions
# costs at least 200 ms and SESSIONS sessions cap it near SESSIONS x 5
# msg/s. Postfix's own SMTP client does not wait for the reply to QUIT
# (smtp_skip_quit_response), so mail from a real Postfix does not pay it.
# Figures are printed, never asserted on. Everything started here is
# stopped and removed on exit.
#
# usage: bench/relay.sh [N]            (default N=5000)
# env:   SESSIONS=20 SIZE=1024 ROUTE=transport|smarthost POSTHORN_BIN=path
#        SKIP_POSTFIX=1 SKIP_POSTHORN=1 SKIP_EXIM=1 KEEP=1 (keep the work
#        directory) EXIM_ROOT=dir (where Exim is unpacked)
#        CARGO_TARGET_DIR (where to find or build target/release/posthorn)
set -euo pipefail

N=${1:-${N:-5000}}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-1024}
ROUTE=${ROUTE:-transport}
SINK=/usr/sbin/smtp-sink
SOURCE=/usr/sbin/smtp-source
POSTFIX=/usr/sbin/postfix
HZ=$(getconf CLK_TCK)
ROOT=$(cd "$(dirname "$0")/.." && pwd)

case $ROUTE in
transport | smarthost) ;;
*) echo "ROUTE must be transport or smarthost" >&2; exit 2 ;;
esac
for tool in "$SINK" "$SOURCE"; do
    [ -x "$tool" ] || { echo "missing $tool: apt-get install postfix" >&2; exit 1; }
done
command -v python3 >/dev/null || { echo "missing python3" >&2; exit 1; }

# Shared helpers: free_port, wait_listening, tree_ticks, calc, the sink
# and source, the private Postfix instance (pf_*), bench_init.
. "$ROOT/bench/lib.sh"
bench_init relay-bench

# The sink is verbose here, so that its log tells how many connections it
# accepted.
SINK_OPTS=(-v)

# Connections the sink on port $1 accepted.
sink_connections() {
    grep -c 'smtp-sink: connect (' "$WORK/sink-$1.log" || true
}

# Measures one MTA: $1 name, $2:$3 its SMTP address, $4 the command that
# prints the MTA's CPU ticks so far ("tree_ticks PID", "ex_ticks"), $5 the
# sink's pid, $6 the sink's port.
measure() {
    local c0 t0 accept_secs relay_secs c1
    c0=$($4)
    t0=$(now)
    accept_secs=$(run_source "$2" "$3")
    wait_sink_done "$5"
    relay_secs=$(calc "$(now) - $t0")
    c1=$($4)
    RESULTS+=("$(row "$1" "$relay_secs" "$accept_secs" $((c1 - c0)) "$(sink_connections "$6")")")
}

RESULTS=()

bench_posthorn() {
    local bin
    bin=$(posthorn_bin)
    local dir=$WORK/posthorn sink_port
    mkdir -p "$dir"
    sink_port=$(free_port 127.0.0.1)
    start_sink 127.0.0.1 "$sink_port" "$N"
    local sink_pid=$SINK_PID
    local route
    if [ "$ROUTE" = smarthost ]; then
        route="[relay]
smarthosts = [\"127.0.0.1:$sink_port\"]
tls = \"none\""
    else
        echo "example.test   relay:[127.0.0.1]:$sink_port" >"$dir/transport"
        route="[deliver]
transport_maps = [\"hash:$dir/transport\"]

[relay]
tls = \"none\""
    fi
    cat >"$dir/posthorn.toml" <<CONF
role = "hub"
user = "root"                 # the benchmark runs as root (for Postfix); the daemon stays root
hostname = "bench-hub.test"
spool = "$dir/spool"

[smtp]
listen = ["127.0.0.1:0"]

[access]
trusted_networks = ["127.0.0.0/8"]

$route
CONF
    "$bin" serve -c "$dir/posthorn.toml" 2>"$dir/posthorn.log" &
    local pid=$!
    PIDS+=("$pid")
    for _ in $(seq 400); do
        grep -qx 'ready' "$dir/posthorn.log" 2>/dev/null && break
        [ -d "/proc/$pid" ] || { cat "$dir/posthorn.log" >&2; return 1; }
        sleep 0.05
    done
    grep -qx 'ready' "$dir/posthorn.log" || { echo "posthorn not ready:" >&2; cat "$dir/posthorn.log" >&2; return 1; }
    local addr
    addr=$(sed -n 's/.*listening smtp=\([0-9.]*:[0-9]*\).*/\1/p' "$dir/posthorn.log" | head -1)
    sleep 1
    measure posthorn "${addr%:*}" "${addr##*:}" "tree_ticks $pid" "$sink_pid" "$sink_port"
    # smtp-sink -M N exits as soon as it has read message N, before its
    # reply: that one may be deferred, so N - 1 deliveries are expected.
    local sent
    sent=$(grep -c 'status=sent' "$dir/posthorn.log" || true)
    [ "$sent" -ge $((N - 1)) ] || echo "posthorn: only $sent status=sent lines for $N messages" >&2
    kill "$pid"
    wait "$pid" 2>/dev/null || true
}

bench_postfix() {
    pf_setup || return 0
    local ip=127.0.0.$((100 + RANDOM % 100))
    local port sink_port
    port=$(free_port "$ip")
    sink_port=$(free_port 127.0.0.1)
    start_sink 127.0.0.1 "$sink_port" "$N"
    local sink_pid=$SINK_PID
    local route
    if [ "$ROUTE" = smarthost ]; then
        route="relayhost = [127.0.0.1]:$sink_port"
    else
        echo "example.test   relay:[127.0.0.1]:$sink_port" >"$PF_DIR/etc/transport"
        route="relayhost =
transport_maps = texthash:$PF_DIR/etc/transport"
    fi
    {
        pf_main_cf "bench/relay.sh: a hub relaying for its networks"
        cat <<CONF
$route
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_tls_security_level = none
smtp_tls_security_level = none
CONF
    } >"$PF_DIR/etc/main.cf"
    # Like Debian's master.cf, without chroot (the queue is private) and
    # with the SMTP listener on our address and port.
    {
        echo "$ip:$port inet n - n - - smtpd"
        pf_services
    } >"$PF_DIR/etc/master.cf"
    pf_start "$ip" "$port"
    local master=$PF_MASTER
    sleep 1
    measure postfix "$ip" "$port" "tree_ticks $master" "$sink_pid" "$sink_port"
    pf_stop
}

bench_exim() {
    ex_setup || return 0
    local ip=127.0.0.$((100 + RANDOM % 100))
    local port sink_port
    port=$(free_port "$ip")
    sink_port=$(free_port 127.0.0.1)
    start_sink 127.0.0.1 "$sink_port" "$N"
    local sink_pid=$SINK_PID
    ex_conf "bench/relay.sh: a hub relaying for its networks" "$ip" "$port" \
        "example.test 127.0.0.1::$sink_port" >"$EX_DIR/exim.conf"
    ex_start "$ip" "$port"
    sleep 1
    measure exim "$ip" "$port" ex_ticks "$sink_pid" "$sink_port"
    ex_stop
}

# One table row: name, relay seconds, accept seconds, CPU ticks, sink connections.
row() {
    printf '%-9s %7d %8d %6d %9.0f %9.0f %8.2f %10.3f %7d' "$1" "$N" "$SESSIONS" "$SIZE" \
        "$(calc "$N / $2")" "$(calc "$N / $3")" "$2" "$(calc "$4 * 1000 / $HZ / $N")" "$5"
}

[ "${SKIP_POSTHORN:-}" = 1 ] || bench_posthorn
[ "${SKIP_POSTFIX:-}" = 1 ] || bench_postfix
[ "${SKIP_EXIM:-}" = 1 ] || bench_exim

echo
echo "relay benchmark: smtp-source -s $SESSIONS -l $SIZE -m $N -> hub (next hop by $ROUTE) -> smtp-sink; $(nproc) cores"
printf '%-9s %7s %8s %6s %9s %9s %8s %10s %7s\n' MTA msgs sessions bytes "relay/s" "accept/s" "done s" "CPU ms/msg" conns
for r in "${RESULTS[@]}"; do
    echo "$r"
done
echo "(relay/s, done s: from the start of the load until the sink had all N; CPU: the hub's processes"
echo " over that time, per message; conns: connections the hub opened to the sink)"
