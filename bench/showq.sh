#!/usr/bin/env bash
# bench/showq.sh -- the public listing under attack: daemon memory while a
# local user holds many queue listings open without reading them.
#
# N messages (default 20,000) go by SMTP (Postfix's smtp-source) into a
# posthorn satellite whose smarthost refuses connections, and the script
# waits until every message is deferred. Then, as `nobody`, CONNS (150)
# connections are opened to SPOOL/showq.sock and never read, for HOLD (10)
# seconds. Printed: the daemon's RSS before and during the attack and its
# peak (VmHWM), how many of the connections were refused with a reason, and
# how long root's `mailq | wc -l` takes during the attack. Figures are
# printed, never asserted on. Needs root (to run the attacker as nobody).
#
# usage: bench/showq.sh [N]          (default N=20000)
# env:   CONNS=150 HOLD=10 SESSIONS=20 SIZE=512 POSTHORN_BIN=path
set -euo pipefail

N=${1:-${N:-20000}}
CONNS=${CONNS:-150}
HOLD=${HOLD:-10}
SESSIONS=${SESSIONS:-20}
SIZE=${SIZE:-512}
SOURCE=/usr/sbin/smtp-source
ROOT=$(cd "$(dirname "$0")/.." && pwd)
PY=/usr/bin/python3

[ -x "$SOURCE" ] || { echo "missing $SOURCE: apt-get install postfix" >&2; exit 1; }
[ -x "$PY" ] || { echo "missing $PY (nobody cannot run a python under /root)" >&2; exit 1; }
[ "$(id -u)" = 0 ] || { echo "run as root: the attacker runs as nobody" >&2; exit 1; }

. "$ROOT/bench/lib.sh"
bench_init showq-bench

rss() { awk "/^$2:/ {print \$2}" "/proc/$1/status"; }

bin=${POSTHORN_BIN:-}
if [ -z "$bin" ]; then
    bin=${CARGO_TARGET_DIR:-$ROOT/target}/release/posthorn
    echo "building $bin ..." >&2
    (cd "$ROOT" && cargo build --release --quiet) >&2
fi
dir=$WORK/posthorn
mkdir -p "$dir/bin"
chmod 711 "$WORK" "$dir"
"$bin" install-links "$dir/bin" >/dev/null
dead=$(free_port 127.0.0.1)
cat >"$dir/posthorn.toml" <<CONF
role = "satellite"
user = "root"                 # the benchmark runs as root; the daemon stays root
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
CONF
"$bin" serve -c "$dir/posthorn.toml" 2>"$dir/posthorn.log" &
pid=$!
PIDS+=("$pid")
for _ in $(seq 400); do
    grep -qx 'ready' "$dir/posthorn.log" 2>/dev/null && break
    [ -d "/proc/$pid" ] || { cat "$dir/posthorn.log" >&2; exit 1; }
    sleep 0.05
done
addr=$(sed -n 's/.*listening smtp=\([0-9.]*:[0-9]*\).*/\1/p' "$dir/posthorn.log" | head -1)
echo "submitting $N messages ..." >&2
"$SOURCE" -s "$SESSIONS" -l "$SIZE" -m "$N" -f bench@client.test -t rcpt@example.test \
    -M client.test "$addr" >"$WORK/source.log" 2>&1
for _ in $(seq 600); do
    [ "$(find "$dir/spool/deferred" -type f | wc -l)" -ge "$N" ] && break
    sleep 1
done
sleep 2
before=$(rss "$pid" VmRSS)

# The attacker: CONNS listings opened and never read.
cat >"$WORK/attack.py" <<'PY'
import socket, sys, time
path, n, hold = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
conns = []
for _ in range(n):
    s = socket.socket(socket.AF_UNIX)
    s.connect(path)
    conns.append(s)
time.sleep(1)
refused = 0
for s in conns:
    s.setblocking(False)
    try:
        if b'"error"' in s.recv(4096, socket.MSG_PEEK):
            refused += 1
    except BlockingIOError:
        pass
print(refused, flush=True)
time.sleep(hold)
PY
chmod 644 "$WORK/attack.py"
setpriv --reuid=65534 --regid=65534 --clear-groups -- "$PY" "$WORK/attack.py" \
    "$dir/spool/showq.sock" "$CONNS" "$HOLD" >"$WORK/attack.out" &
attacker=$!
sleep 3
during=$(rss "$pid" VmRSS)
t0=$(now)
lines=$(PATH="$dir/bin:$PATH" POSTHORN_CONFIG=$dir/posthorn.toml mailq | wc -l)
mailq_secs=$(calc "$(now) - $t0")
wait "$attacker"
refused=$(head -1 "$WORK/attack.out")
peak=$(rss "$pid" VmHWM)

printf '%-52s %s\n' "queue" "$N messages"
printf '%-52s %s\n' "daemon RSS before the attack (MiB)" "$(calc "$before / 1024")"
printf '%-52s %s\n' "daemon RSS with $CONNS idle listings open (MiB)" "$(calc "$during / 1024")"
printf '%-52s %s\n' "daemon peak RSS, VmHWM (MiB)" "$(calc "$peak / 1024")"
printf '%-52s %s\n' "listings refused (per-user limit)" "$refused of $CONNS"
printf '%-52s %s\n' "root's mailq during the attack" "$lines lines in $mailq_secs s"
