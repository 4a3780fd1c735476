#!/usr/bin/env bash
# bench/idle_rss.sh -- how much memory an idle posthorn holds, satellite
# and hub, beside an idle private Postfix.
#
# Starts a default satellite (the configuration of bench/accept.sh: relay
# to an smtp-sink, no TLS) and a default hub (trusted 127.0.0.0/8), waits
# for `ready`, lets each sit IDLE seconds (default 1), then prints from
# /proc/PID/status and /proc/PID/smaps_rollup:
#   VmRSS    resident set, KiB shown as MiB
#   anon     RssAnon: heap, thread stacks, every anonymous mapping
#   file     RssFile: file-backed pages (the binary's own text and data,
#            shared libraries); shared with other processes of the binary
#   Pss      proportional set: shared pages divided among their users
#   threads  the process's thread count
# Postfix's row sums every process of a private instance (master, and the
# qmgr, pickup, ... it starts), idle after start; needs root and
# SKIP_POSTFIX unset. Figures are printed, never asserted on. Everything
# started here is stopped and removed on exit.
#
# usage: bench/idle_rss.sh
# env:   IDLE=1 POSTHORN_BIN=path SKIP_POSTFIX=1
#        CARGO_TARGET_DIR (where to find or build target/release/posthorn)
set -euo pipefail

IDLE=${IDLE:-1}
SINK=/usr/sbin/smtp-sink
SOURCE=/usr/sbin/smtp-source
POSTFIX=/usr/sbin/postfix
N=1
ROOT=$(cd "$(dirname "$0")/.." && pwd)

[ -x "$SINK" ] || { echo "missing $SINK: apt-get install postfix" >&2; exit 1; }
command -v python3 >/dev/null || { echo "missing python3" >&2; exit 1; }

. "$ROOT/bench/lib.sh"
bench_init idle-rss

RESULTS=()

# KiB of field $2 (VmRSS:, RssAnon:, Threads: ...) in /proc/$1/status.
status_field() { awk -v f="$2" '$1 == f {print $2}' "/proc/$1/status" 2>/dev/null || true; }

# Pss in KiB of process $1.
pss() { awk '$1 == "Pss:" {print $2}' "/proc/$1/smaps_rollup" 2>/dev/null || true; }

# One row: name, then KiB of VmRSS, anon, file, Pss, and the thread count.
row() {
    printf '%-10s %8.2f %8.2f %8.2f %8.2f %8d' "$1" \
        "$(calc "$2 / 1024")" "$(calc "$3 / 1024")" "$(calc "$4 / 1024")" "$(calc "$5 / 1024")" "$6"
}

# The row of one process $2, named $1.
measure() {
    local p=$2
    row "$1" "$(status_field "$p" VmRSS:)" "$(status_field "$p" RssAnon:)" \
        "$(( $(status_field "$p" RssFile:) + $(status_field "$p" RssShmem:) ))" "$(pss "$p")" \
        "$(status_field "$p" Threads:)"
}

# start_posthorn NAME ROLE TOML-TAIL: starts it and leaves its pid in PH_PID.
start_posthorn() {
    local name=$1 role=$2 tail=$3 bin dir=$WORK/$1
    bin=$(posthorn_bin)
    mkdir -p "$dir"
    cat >"$dir/posthorn.toml" <<EOF
role = "$role"
user = "root"
hostname = "bench-$name.test"
spool = "$dir/spool"

[smtp]
listen = ["127.0.0.1:0"]
$tail
EOF
    "$bin" serve -c "$dir/posthorn.toml" 2>"$dir/posthorn.log" &
    PH_PID=$!
    PIDS+=("$PH_PID")
    for _ in $(seq 400); do
        grep -qx 'ready' "$dir/posthorn.log" 2>/dev/null && return 0
        [ -d "/proc/$PH_PID" ] || break
        sleep 0.05
    done
    echo "posthorn $name not ready:" >&2
    cat "$dir/posthorn.log" >&2
    return 1
}

sink_port=$(free_port 127.0.0.1)
start_sink 127.0.0.1 "$sink_port" 1

start_posthorn satellite satellite "$(printf '\n[relay]\nsmarthosts = ["127.0.0.1:%s"]\ntls = "none"' "$sink_port")"
sat=$PH_PID
start_posthorn hub hub "$(printf '\n[access]\ntrusted_networks = ["127.0.0.0/8"]')"
hub=$PH_PID
sleep "$IDLE"
RESULTS+=("$(measure satellite "$sat")" "$(measure hub "$hub")")

if [ "${SKIP_POSTFIX:-}" != 1 ] && pf_setup; then
    ip=127.0.0.$((100 + RANDOM % 100))
    port=$(free_port "$ip")
    {
        pf_main_cf "bench/idle_rss.sh: idle, relays to an smtp-sink"
        echo "relayhost = [127.0.0.1]:$sink_port"
        echo "smtpd_tls_security_level = none"
        echo "smtp_tls_security_level = none"
    } >"$PF_DIR/etc/main.cf"
    {
        echo "$ip:$port inet n - n - - smtpd"
        pf_services
    } >"$PF_DIR/etc/master.cf"
    pf_start "$ip" "$port"
    sleep "$IDLE"
    rss=0 anon=0 file=0 p_ss=0 threads=0
    for p in $(tree_pids "$PF_MASTER"); do
        rss=$((rss + $(status_field "$p" VmRSS:)))
        anon=$((anon + $(status_field "$p" RssAnon:)))
        file=$((file + $(status_field "$p" RssFile:) + $(status_field "$p" RssShmem:)))
        p_ss=$((p_ss + $(pss "$p")))
        threads=$((threads + $(status_field "$p" Threads:)))
    done
    RESULTS+=("$(row postfix "$rss" "$anon" "$file" "$p_ss" "$threads")")
    pf_stop
fi

echo
echo "idle memory, ${IDLE} s after ready; $(nproc) cores"
printf '%-10s %8s %8s %8s %8s %8s\n' "" "RSS MiB" "anon" "file" "Pss" threads
for r in "${RESULTS[@]}"; do
    echo "$r"
done
echo "(anon: heap and stacks; file: the binary and libraries, shared; Postfix: all its processes summed, threads = processes)"
