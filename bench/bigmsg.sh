#!/usr/bin/env bash
# bench/bigmsg.sh -- a satellite's memory with many large messages at once
# (issue 18, item 4): smtp-source sends N messages of SIZE bytes over N
# parallel sessions to a posthorn satellite relaying to an smtp-sink, and
# the daemon's peak resident memory (VmHWM) is printed once the sink has
# them all, with the time it took. A sampler reads /proc/PID/status every
# 0.1 s meanwhile and prints the peaks of RssAnon (heap, buffers, stacks)
# and RssFile (file-backed: the binary, and the pages of mapped bodies
# being sent) apart, since only the first is memory the daemon allocated. Everything started here is removed on
# exit. Figures are printed, never asserted on.
#
# usage: bench/bigmsg.sh [N]           (default N=200)
# env:   SIZE=20000000 POSTHORN_BIN=path KEEP=1 CARGO_TARGET_DIR
set -euo pipefail

N=${1:-${N:-200}}
SIZE=${SIZE:-20000000}
SESSIONS=$N
SINK=/usr/sbin/smtp-sink
SOURCE=/usr/sbin/smtp-source
ROOT=$(cd "$(dirname "$0")/.." && pwd)
for tool in "$SINK" "$SOURCE"; do
    [ -x "$tool" ] || { echo "missing $tool: apt-get install postfix" >&2; exit 1; }
done
. "$ROOT/bench/lib.sh"
bench_init bigmsg-bench
ulimit -n 65536 2>/dev/null || true

bin=$(posthorn_bin)
dir=$WORK/posthorn
mkdir -p "$dir"
sink_port=$(free_port 127.0.0.1)
start_sink 127.0.0.1 "$sink_port" "$N"
sink_pid=$SINK_PID
cat >"$dir/posthorn.toml" <<CONF
role = "satellite"
user = "root"
hostname = "bench-posthorn.test"
spool = "$dir/spool"

[smtp]
listen = ["127.0.0.1:0"]
max_message_size = "100M"

[relay]
smarthosts = ["127.0.0.1:$sink_port"]
tls = "none"
CONF
"$bin" serve -c "$dir/posthorn.toml" 2>"$dir/posthorn.log" &
pid=$!
PIDS+=("$pid")
for _ in $(seq 400); do
    grep -qx 'ready' "$dir/posthorn.log" 2>/dev/null && break
    sleep 0.05
done
addr=$(sed -n 's/.*listening smtp=\([0-9.]*:[0-9]*\).*/\1/p' "$dir/posthorn.log" | head -1)
sleep 1
idle=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
# Peaks of RssAnon and RssFile (KiB) into $WORK/peaks until the daemon goes.
(
    a=0 f=0
    while [ -d "/proc/$pid" ]; do
        read -r ra rf < <(awk '$1 == "RssAnon:" {a=$2} $1 == "RssFile:" {f=$2} END {print a+0, f+0}' "/proc/$pid/status" 2>/dev/null || echo "0 0")
        [ "$ra" -gt "$a" ] && a=$ra
        [ "$rf" -gt "$f" ] && f=$rf
        echo "$a $f" >"$WORK/peaks"
        sleep 0.1
    done
) &
PIDS+=("$!")
t0=$(now)
secs=$(run_source "${addr%:*}" "${addr##*:}")
wait_sink_done "$sink_pid"
done_secs=$(calc "$(now) - $t0")
hwm=$(awk '/^VmHWM:/ {print $2}' "/proc/$pid/status")
read -r peak_anon peak_file <"$WORK/peaks"
echo
echo "large messages: smtp-source -s $SESSIONS -l $SIZE -m $N -> satellite -> smtp-sink; $(nproc) cores"
printf '%-10s %6s %10s %9s %8s %12s %13s %10s %10s\n' MTA msgs bytes "accept s" "done s" "idle RSS MiB" "peak RSS MiB" \
    "peak anon" "peak file"
printf '%-10s %6d %10d %9.1f %8.1f %12.1f %13.1f %10.1f %10.1f\n' posthorn "$N" "$SIZE" "$secs" "$done_secs" \
    "$(calc "$idle / 1024")" "$(calc "$hwm / 1024")" "$(calc "$peak_anon / 1024")" "$(calc "$peak_file / 1024")"
echo "(peak anon, peak file: sampled every 0.1 s, MiB; their peaks need not coincide)"
