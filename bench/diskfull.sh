#!/usr/bin/env bash
# bench/diskfull.sh -- what a posthorn satellite does when its spool's disk
# fills up (issue 12, items 12 and 14).
#
# The spool is a loop-mounted ext4 image of its own (needs root). N
# messages are queued while the smarthost is down, then a ballast file
# takes every free block, and the script prints:
#   - the replies a client gets while the disk is full;
#   - whether the daemon restarts on the full disk (clean stop, then start);
#   - the time from removing the ballast to the first 250;
#   - the time until the queued mail has reached the smarthost once it is
#     back, without a restart.
# Figures are printed, never asserted on. Everything started here is
# stopped, unmounted and removed on exit.
#
# usage: bench/diskfull.sh [N]          (default N=50)
# env:   POSTHORN_BIN=path IMAGE_MB=64 MIN_FREE=4M
#        CARGO_TARGET_DIR (where to find or build target/release/posthorn)
set -euo pipefail

N=${1:-${N:-50}}
IMAGE_MB=${IMAGE_MB:-64}
MIN_FREE=${MIN_FREE:-4M}
SINK=/usr/sbin/smtp-sink
ROOT=$(cd "$(dirname "$0")/.." && pwd)

[ "$(id -u)" = 0 ] || { echo "needs root: the spool is a loop-mounted filesystem" >&2; exit 1; }
[ -e /dev/loop-control ] || { echo "needs loop devices (/dev/loop-control)" >&2; exit 1; }
command -v mkfs.ext4 >/dev/null || { echo "missing mkfs.ext4" >&2; exit 1; }
[ -x "$SINK" ] || { echo "missing $SINK: apt-get install postfix" >&2; exit 1; }
command -v python3 >/dev/null || { echo "missing python3" >&2; exit 1; }

# Shared helpers: free_port, wait_listening, now, calc, start_sink, bench_init.
. "$ROOT/bench/lib.sh"
bench_init diskfull-bench
MOUNTED=""
DAEMON=""
cleanup() {
    set +e
    [ -n "$DAEMON" ] && kill "$DAEMON" 2>/dev/null && wait "$DAEMON" 2>/dev/null
    [ -n "$MOUNTED" ] && umount -l "$MOUNTED"
    bench_cleanup
}
trap cleanup EXIT

BIN=${POSTHORN_BIN:-}
if [ -z "$BIN" ]; then
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/posthorn
    echo "building $BIN ..." >&2
    (cd "$ROOT" && cargo build --release --quiet) >&2
fi

SPOOL=$WORK/spool
mkdir -p "$SPOOL"
truncate -s "${IMAGE_MB}M" "$WORK/spool.img"
mkfs.ext4 -q -F -m 0 "$WORK/spool.img"
mount -o loop "$WORK/spool.img" "$SPOOL"
MOUNTED=$SPOOL

SINK_PORT=$(free_port 127.0.0.1)
cat >"$WORK/posthorn.toml" <<EOF
user = "root"
spool = "$SPOOL"
hostname = "diskfull.bench"
role = "satellite"

[smtp]
listen = ["127.0.0.1:0"]

[relay]
smarthosts = ["[127.0.0.1]:$SINK_PORT"]
tls = "none"

[queue]
retry_min = "1s"
retry_max = "2s"
min_free = "$MIN_FREE"
EOF

# Starts the daemon; sets DAEMON and PORT, or returns 1 when it does not
# become ready within 20 s.
start_daemon() {
    local log=$WORK/posthorn.$1.log
    "$BIN" serve -c "$WORK/posthorn.toml" 2>"$log" &
    DAEMON=$!
    for _ in $(seq 200); do
        grep -q '^ready$' "$log" && break
        [ -d "/proc/$DAEMON" ] || break
        sleep 0.1
    done
    if ! grep -q '^ready$' "$log"; then
        DAEMON=""
        return 1
    fi
    PORT=$(sed -n 's/^listening smtp=127.0.0.1:\([0-9]*\)$/\1/p' "$log" | head -1)
}

stop_daemon() {
    kill "$DAEMON"
    wait "$DAEMON" 2>/dev/null || true
    DAEMON=""
}

# Sends one message; prints the server's final reply ("250 2.0.0 Ok: ...").
send() {
    python3 - "$PORT" "$1" <<'PY'
import smtplib, sys
port, subject = int(sys.argv[1]), sys.argv[2]
msg = "From: bench@client.test\r\nTo: ops@example.net\r\nSubject: %s\r\n\r\ndisk full bench\r\n" % subject
try:
    s = smtplib.SMTP("127.0.0.1", port, timeout=30)
    s.ehlo("client.test")
    s.mail("bench@client.test")
    s.rcpt("ops@example.net")
    code, text = s.data(msg)
    s.quit()
except smtplib.SMTPResponseException as e:
    code, text = e.smtp_code, e.smtp_error
print(code, text.decode(errors="replace") if isinstance(text, bytes) else text)
PY
}

available() { python3 -c 'import os,sys; s=os.statvfs(sys.argv[1]); print(s.f_bavail*s.f_frsize)' "$SPOOL"; }

# Takes every free block: fallocate in shrinking pieces, then 1 KiB writes.
fill() {
    local piece avail
    piece=$(available)
    : >"$SPOOL/ballast"
    while [ "$piece" -ge 65536 ] && [ "$(available)" -gt 0 ]; do
        avail=$(available)
        [ "$piece" -gt "$avail" ] && piece=$avail
        fallocate -o "$(stat -c %s "$SPOOL/ballast")" -l "$piece" "$SPOOL/ballast" 2>/dev/null || piece=$((piece / 2))
    done
    dd if=/dev/zero bs=1024 oflag=append conv=notrunc,fsync of="$SPOOL/ballast" 2>/dev/null || true
}

start_daemon first || { echo "posthorn did not start:" >&2; cat "$WORK/posthorn.first.log" >&2; exit 1; }
echo "queueing $N messages while the smarthost is down ..." >&2
for i in $(seq "$N"); do send "queued-$i" >/dev/null; done
for _ in $(seq 200); do
    [ "$(ls "$SPOOL/deferred" | wc -l)" -ge "$N" ] && break
    sleep 0.1
done

fill
echo "disk filled: $(available) bytes available" >&2
FULL_REPLIES=$(for i in 1 2 3; do send "while-full-$i"; done | sort | uniq -c)

stop_daemon
if start_daemon restart; then RESTART="ok (ready on the full disk)"; else RESTART="FAILED: $(tail -1 "$WORK/posthorn.restart.log")"; fi
AFTER_RESTART=$( [ -n "$DAEMON" ] && send "after-restart" || echo "(no daemon)")

rm -f "$SPOOL/ballast"
FREED=$(now)
FIRST_250=""
REFUSED=0
for _ in $(seq 300); do
    [ -n "$DAEMON" ] || break
    reply=$(send "space-back")
    if [ "${reply%% *}" = 250 ]; then
        FIRST_250=$(calc "$(now) - $FREED")
        break
    fi
    REFUSED=$((REFUSED + 1))
    sleep 0.1
done

DRAIN=""
if [ -n "$DAEMON" ]; then
    HOP_UP=$(now)
    start_sink 127.0.0.1 "$SINK_PORT" "$((N + 1))"
    if wait_sink_done "$SINK_PID"; then DRAIN=$(calc "$(now) - $HOP_UP"); fi
fi

echo
echo "disk-full figures (N=$N, ${IMAGE_MB} MiB ext4 spool, queue.min_free=$MIN_FREE):"
echo "  replies while full:"
echo "$FULL_REPLIES" | sed 's/^/    /'
echo "  restart on the full disk:        $RESTART"
echo "  reply after that restart:        $AFTER_RESTART"
echo "  space freed -> first 250:        ${FIRST_250:-none} s ($REFUSED refused before it)"
echo "  hop back -> $((N + 1)) messages delivered: ${DRAIN:-not all} s (no restart)"
