#!/usr/bin/env bash
# bench/accept.sh -- how fast posthorn accepts mail, side by side with Postfix.
#
# The same load, Postfix's smtp-source (SESSIONS parallel sessions, N
# messages of SIZE bytes, one connection per message), goes to
#   1. a posthorn satellite (spool on disk, durable commit) relaying to an
#      smtp-sink, and
#   2. a private Postfix instance (its own config dir and queue, listening on
#      127.0.0.X:PORT, relayhost = the other smtp-sink; started with
#      `postfix -c DIR start`, needs root), and
#   3. a private Exim (Debian's exim4-daemon-light unpacked with dpkg-deb,
#      its own configuration and spool, a manualroute router to a third
#      smtp-sink; needs root; see ex_setup in bench/lib.sh).
# For each it prints:
#   accept msg/s   N / wall time until smtp-source got every 250
#   done s         wall time until the sink received all N (accept + relay)
#   CPU ms/msg     user+system CPU of the MTA's processes from the start of
#                  the load until the sink has all N, per message (Postfix:
#                  master + all its children, live and exited; Exim: every
#                  process of its cgroup, see ex_ticks in bench/lib.sh)
#   RSS            posthorn: VmRSS one second after `ready` (idle); Postfix:
#                  the sum over its processes when idle after start; Exim: its daemon
# When rsyslogd is installed, posthorn runs a second time (`ph-syslog`) with
# `log.to = "syslog"` into a private rsyslogd, so the cost of logging to
# syslog shows beside logging to stderr (a file) in the same run; the CPU
# column counts posthorn's process only, not rsyslogd's.
# Exim 4.96 holds its 221 reply to QUIT for up to 200 ms, waiting for the
# client to close first (so that the client, not the server, keeps the
# TIME_WAIT); smtp-source waits for that 221, so each of Exim's sessions
# costs at least 200 ms and SESSIONS sessions cap it near SESSIONS x 5
# msg/s. Postfix's own SMTP client does not wait for the reply to QUIT
# (smtp_skip_quit_response), so mail from a real Postfix does not pay it.
# Figures are printed, never asserted on. Everything started here is stopped
# and removed on exit.
#
# usage: bench/accept.sh [N]            (default N=2000)
# env:   SESSIONS=20 SIZE=1024 POSTHORN_BIN=path SKIP_POSTFIX=1 SKIP_POSTHORN=1
#        SKIP_SYSLOG=1 SKIP_EXIM=1 EXIM_ROOT=dir (where Exim is unpacked)
#        CARGO_TARGET_DIR (where to find or build target/release/posthorn)
set -euo pipefail

N=${1:-${N:-2000}}
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
command -v python3 >/dev/null || { echo "missing python3" >&2; exit 1; }

# Shared helpers: free_port, wait_listening, tree_ticks, calc, the sink
# and source, the private Postfix instance (pf_*), bench_init.
. "$ROOT/bench/lib.sh"
bench_init accept-bench

RESULTS=()

# A private rsyslogd reading $WORK/rsyslog/log.sock, writing mail.log there.
start_rsyslog() {
    local d=$WORK/rsyslog
    mkdir -p "$d"
    cat >"$d/rsyslog.conf" <<EOF
global(workDirectory="$d")
module(load="imuxsock" SysSock.Use="off")
input(type="imuxsock" Socket="$d/log.sock" RateLimit.Interval="0")
mail.* action(type="omfile" file="$d/mail.log" template="RSYSLOG_TraditionalFileFormat")
EOF
    rsyslogd -n -f "$d/rsyslog.conf" -i "$d/pid" &
    PIDS+=("$!")
    for _ in $(seq 100); do
        [ -S "$d/log.sock" ] && return 0
        sleep 0.05
    done
    echo "rsyslogd made no socket" >&2
    return 1
}

# bench_posthorn NAME [TOML]: one run, TOML appended to the configuration.
bench_posthorn() {
    local name=$1 extra=${2:-}
    local bin
    bin=$(posthorn_bin)
    local dir=$WORK/$name sink_port
    mkdir -p "$dir"
    sink_port=$(free_port 127.0.0.1)
    start_sink 127.0.0.1 "$sink_port" "$N"
    local sink_pid=$SINK_PID
    cat >"$dir/posthorn.toml" <<EOF
role = "satellite"
user = "root"                 # the benchmark runs as root (for Postfix); the daemon stays root
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
    grep -qx 'ready' "$dir/posthorn.log" || { echo "posthorn not ready:" >&2; cat "$dir/posthorn.log" >&2; return 1; }
    local addr
    addr=$(sed -n 's/.*listening smtp=\([0-9.]*:[0-9]*\).*/\1/p' "$dir/posthorn.log" | head -1)
    sleep 1
    local rss
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")

    local c0 t0 secs done_secs c1
    c0=$(proc_ticks "$pid")
    t0=$(now)
    secs=$(run_source "${addr%:*}" "${addr##*:}")
    wait_sink_done "$sink_pid"
    done_secs=$(calc "$(now) - $t0")
    c1=$(proc_ticks "$pid")
    RESULTS+=("$(row "$name" "$secs" "$done_secs" $((c1 - c0)) "$rss")")
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
    {
        pf_main_cf "bench/accept.sh: relays everything to an smtp-sink"
        cat <<EOF
relayhost = [127.0.0.1]:$sink_port
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_tls_security_level = none
smtp_tls_security_level = none
EOF
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
    local rss
    rss=$(tree_rss "$master")

    local c0 t0 secs done_secs c1
    c0=$(tree_ticks "$master")
    t0=$(now)
    secs=$(run_source "$ip" "$port")
    wait_sink_done "$sink_pid"
    done_secs=$(calc "$(now) - $t0")
    c1=$(tree_ticks "$master")
    RESULTS+=("$(row postfix "$secs" "$done_secs" $((c1 - c0)) "$rss")")
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
    ex_conf "bench/accept.sh: relays everything to an smtp-sink" "$ip" "$port" \
        "* 127.0.0.1::$sink_port" >"$EX_DIR/exim.conf"
    ex_start "$ip" "$port"
    local daemon=$EX_PID
    sleep 1
    local rss
    rss=$(tree_rss "$daemon")

    local c0 t0 secs done_secs c1
    c0=$(ex_ticks)
    t0=$(now)
    secs=$(run_source "$ip" "$port")
    wait_sink_done "$sink_pid"
    done_secs=$(calc "$(now) - $t0")
    c1=$(ex_ticks)
    RESULTS+=("$(row exim "$secs" "$done_secs" $((c1 - c0)) "$rss")")
    ex_stop
}

# One table row: name, accept seconds, done seconds, CPU ticks, RSS kB.
row() {
    printf '%-9s %7d %8d %6d %10.0f %8.2f %10.3f %9.1f' "$1" "$N" "$SESSIONS" "$SIZE" \
        "$(calc "$N / $2")" "$3" "$(calc "$4 * 1000 / $HZ / $N")" "$(calc "$5 / 1024")"
}

if [ "${SKIP_POSTHORN:-}" != 1 ]; then
    bench_posthorn posthorn
    if [ "${SKIP_SYSLOG:-}" != 1 ] && command -v rsyslogd >/dev/null && start_rsyslog; then
        bench_posthorn ph-syslog "$(printf '[log]\nto = "syslog"\nsyslog_socket = "%s"' "$WORK/rsyslog/log.sock")"
        echo "ph-syslog: $(wc -l <"$WORK/rsyslog/mail.log") lines in rsyslog's mail.log" >&2
    fi
fi
[ "${SKIP_POSTFIX:-}" = 1 ] || bench_postfix
[ "${SKIP_EXIM:-}" = 1 ] || bench_exim

echo
echo "accept benchmark: smtp-source -s $SESSIONS -l $SIZE -m $N, one connection per message; $(nproc) cores"
printf '%-9s %7s %8s %6s %10s %8s %10s %9s\n' MTA msgs sessions bytes "accept/s" "done s" "CPU ms/msg" "RSS MiB"
for r in "${RESULTS[@]}"; do
    echo "$r"
done
echo "(done s: until the sink had all N; CPU: the MTA's processes over that time; RSS: idle after start)"
