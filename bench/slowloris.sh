#!/usr/bin/env bash
# bench/slowloris.sh -- a hub under a slow-client attack (issue 12, item 11).
#
# A release posthorn hub (defaults: max_connections 500, of which
# trusted_reserve 50 for trusted networks; 50 connections and 600 new ones
# a minute per client; command_timeout 5m) trusting 127.0.0.1 only. An
# attacker keeps SOCKETS connections from eight loopback addresses
# (127.0.0.10-17), sending one byte on each every DRIP seconds and never a
# whole line, and opens a new one for each the hub refuses or cuts, for
# ATTACK seconds. Meanwhile a trusted client (Python's smtplib from
# 127.0.0.1) sends a message every 2 s to a local Maildir. It prints:
#   RSS idle        VmRSS of the daemon one second after `ready`
#   RSS attack      peak and last VmRSS sampled each second of the attack
#   connections     the attacker's connections opened, and how many the hub
#                   refused (421 4.7.0) or closed (a deadline's 421 4.4.2)
#   trusted         messages accepted / sent, and the time from connect to
#                   the 250 after DATA: min, median, max
#   log lines       written during the attack (up to its last second), and
#                   the refusal lines among them (the rest of the refusals
#                   are summarised)
# Figures are printed, never asserted on. Everything started here is
# stopped and removed on exit.
#
# usage: bench/slowloris.sh
# env:   SOCKETS=1000 DRIP=5 (whole seconds) ATTACK=30 POSTHORN_BIN=path KEEP=1
#        CARGO_TARGET_DIR (where to find or build target/release/posthorn)
set -euo pipefail

SOCKETS=${SOCKETS:-1000}
DRIP=${DRIP:-5}
ATTACK=${ATTACK:-30}
ROOT=$(cd "$(dirname "$0")/.." && pwd)

command -v python3 >/dev/null || { echo "missing python3" >&2; exit 1; }

# Shared helpers: bench_init (WORK, PIDS, cleanup on exit).
. "$ROOT/bench/lib.sh"
bench_init slowloris-bench

# The attacker holds SOCKETS descriptors, the daemon up to max_connections.
if [ "$(ulimit -n)" != unlimited ] && [ "$(ulimit -n)" -lt $((SOCKETS + 1024)) ]; then
    ulimit -n "$(ulimit -Hn)"
fi

# The attacker: argv host port sockets drip seconds; prints the counts of
# connections opened, refused (421 4.7.0) and closed or cut at the end.
ATTACKER='
import socket, sys, time
host, port, n, drip, secs = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5])
sources = ["127.0.0.%d" % (10 + i) for i in range(8)]
socks = [None] * n
opened = refused = closed = 0

def connect(i):
    s = socket.socket()
    s.settimeout(1)
    s.bind((sources[i % len(sources)], 0))
    s.connect((host, port))
    s.setblocking(False)
    return s

end = time.time() + secs
while time.time() < end:
    for i in range(n):
        s = socks[i]
        if s is not None:
            try:
                data = s.recv(4096)
            except BlockingIOError:
                data = None
            except OSError:
                data = b""
            # A greeting is fine; a 421 (refused, or cut at a deadline) or
            # the end of the stream means a new connection.
            if data is not None and (data == b"" or data.startswith(b"421")):
                if data.startswith(b"421 4.7.0"):
                    refused += 1
                else:
                    closed += 1
                s.close()
                socks[i] = s = None
        if s is not None:
            try:
                s.send(b"x")
            except OSError:
                pass
        else:
            try:
                socks[i] = connect(i)
                opened += 1
            except OSError:
                pass
    time.sleep(drip)
print("opened %d, refused %d, closed or cut %d" % (opened, refused, closed), flush=True)
# The sockets close when this exits; the sampling stops first.
time.sleep(2)
'

# One message from 127.0.0.1; prints the milliseconds to the 250, or FAIL.
TRUSTED='
import smtplib, sys, time
start = time.time()
try:
    s = smtplib.SMTP(sys.argv[1], int(sys.argv[2]), local_hostname="vm1.test", timeout=60)
    s.sendmail("cron@vm1.test", ["ops@" + sys.argv[3]], b"Subject: during the attack\r\n\r\nstill here\r\n")
    s.quit()
    print("%.1f" % ((time.time() - start) * 1000))
except Exception as e:
    print("FAIL %s" % e)
'

bin=${POSTHORN_BIN:-}
if [ -z "$bin" ]; then
    target=${CARGO_TARGET_DIR:-$ROOT/target}
    bin=$target/release/posthorn
    echo "building $bin ..." >&2
    (cd "$ROOT" && cargo build --release --quiet) >&2
fi
dir=$WORK/posthorn
mkdir -p "$dir"
host=bench-slowloris.test
cat >"$dir/posthorn.toml" <<EOF
role = "hub"
hostname = "$host"
spool = "$dir/spool"
$([ "$(id -u)" = 0 ] && echo 'user = "root"                 # run as root by the benchmark; the daemon stays root')

[smtp]
listen = ["127.0.0.1:0"]

[access]
trusted_networks = ["127.0.0.1/32"]

[deliver]
maildir_root = "$dir/mail/{domain}/{user}"
EOF
"$bin" serve -c "$dir/posthorn.toml" 2>"$dir/posthorn.log" &
pid=$!
PIDS+=("$pid")
for _ in $(seq 400); do
    grep -qx 'ready' "$dir/posthorn.log" 2>/dev/null && break
    [ -d "/proc/$pid" ] || { cat "$dir/posthorn.log" >&2; exit 1; }
    sleep 0.05
done
grep -qx 'ready' "$dir/posthorn.log" || { echo "posthorn not ready:" >&2; cat "$dir/posthorn.log" >&2; exit 1; }
addr=$(sed -n 's/.*listening smtp=\([0-9.]*:[0-9]*\).*/\1/p' "$dir/posthorn.log" | head -1)
sleep 1
rss_idle=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
log_before=$(wc -l <"$dir/posthorn.log")

python3 -c "$ATTACKER" "${addr%:*}" "${addr##*:}" "$SOCKETS" "$DRIP" "$ATTACK" >"$WORK/attacker.out" &
attacker=$!
PIDS+=("$attacker")
start=$SECONDS
rss_peak=0 rss_last=0 sent=0 tick=0 log_now=$log_before
: >"$WORK/trusted.out"
while [ ! -s "$WORK/attacker.out" ] && kill -0 "$attacker" 2>/dev/null; do
    rss_last=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
    log_now=$(wc -l <"$dir/posthorn.log")
    [ "$rss_last" -gt "$rss_peak" ] && rss_peak=$rss_last
    # The first message goes once the attack has had a DRIP to fill the slots.
    if [ $((SECONDS - start)) -gt "$DRIP" ] && [ $((tick % 2)) = 0 ]; then
        python3 -c "$TRUSTED" "${addr%:*}" "${addr##*:}" "$host" >>"$WORK/trusted.out"
        sent=$((sent + 1))
    fi
    tick=$((tick + 1))
    sleep 1
done
wait "$attacker" || true
# Up to the last sample, before the attacker's exit closes its sockets:
# the lines about that are not the attack's.
log_during=$((log_now - log_before))
refusal_lines=$(head -n "$log_now" "$dir/posthorn.log" | tail -n "+$((log_before + 1))" | grep -c 'too many connections' || true)
ok=$(grep -vc FAIL "$WORK/trusted.out" || true)
times=$(grep -v FAIL "$WORK/trusted.out" | sort -n | tr '\n' ' ')

echo
echo "slowloris benchmark: $SOCKETS sockets from 8 addresses, a byte every $DRIP s each, ${ATTACK}s; $(nproc) cores"
mib() { awk "BEGIN { printf \"%.1f MiB\", $1 / 1024 }"; }
printf '%-16s %s\n' "RSS idle" "$(mib "$rss_idle")"
printf '%-16s %s\n' "RSS attack" "peak $(mib "$rss_peak"), last $(mib "$rss_last")"
printf '%-16s %s\n' "connections" "$(cat "$WORK/attacker.out")"
if [ "$ok" -gt 0 ]; then
    printf '%-16s %s\n' "trusted" "$ok/$sent accepted; ms to 250: $(echo "$times" | awk '{printf "min %s median %s max %s", $1, $(int((NF+1)/2)), $NF}')"
else
    printf '%-16s %s\n' "trusted" "0/$sent accepted"
fi
printf '%-16s %s\n' "log lines" "$log_during during the attack, $refusal_lines of them refusal lines"
grep FAIL "$WORK/trusted.out" >&2 || true
