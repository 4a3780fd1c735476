#!/usr/bin/env bash
# bench/startup.sh -- how soon a satellite with a big queue is ready again.
#
# A spool with N deferred messages (default 100,000; 512-byte bodies, next
# attempt an hour ahead, so nothing is retried during the run) is made
# once: a posthorn satellite whose smarthost refuses connections takes K
# real messages by SMTP, and their envelope and body files are copied N
# times under fresh ids below the spool's id lease, the way the daemon
# itself would have named them. Then, with the page cache dropped first
# (COLD=0 keeps it warm), posthorn is started on that spool with a working
# smarthost (an smtp-sink) and the script prints:
#   ready s       from exec until the daemon prints `ready` (it accepts mail)
#   first s       from exec until the sink has a message sent just after
#                 `ready` (the fresh mail is not stuck behind the queue)
#   loaded s      from exec until the scheduler has indexed the whole queue
#                 (its `queue loaded` log line)
#   RSS MiB       VmRSS at ready, once the queue is loaded, and after one
#                 `mailq` through the daemon
#   mailq         wall seconds of `posthorn mailq | wc -l` once loaded
# Figures are printed, never asserted on. Everything started here is
# stopped and removed on exit (KEEP=1 keeps the spool).
#
# usage: bench/startup.sh [N]            (default N=100000)
# env:   COLD=1 POSTHORN_BIN=path CARGO_TARGET_DIR
#        NO_LOADED_LINE=1 (a binary from before the `queue loaded` line)
set -euo pipefail

N=${1:-${N:-100000}}
COLD=${COLD:-1}
SINK=/usr/sbin/smtp-sink
SOURCE=/usr/sbin/smtp-source
POSTFIX=/usr/sbin/postfix
SESSIONS=1
SIZE=512
ROOT=$(cd "$(dirname "$0")/.." && pwd)

for tool in "$SINK" "$SOURCE"; do
    [ -x "$tool" ] || { echo "missing $tool: apt-get install postfix" >&2; exit 1; }
done

. "$ROOT/bench/lib.sh"
bench_init startup-bench
BIN=$(posthorn_bin)
SPOOL=$WORK/spool

# The daemon's configuration; $1: the smarthost's port.
config() {
    cat <<CONF
role = "satellite"
user = "$(id -un)"
hostname = "bench-startup.test"
spool = "$SPOOL"

[smtp]
listen = ["127.0.0.1:0"]

[relay]
smarthosts = ["127.0.0.1:$1"]
tls = "none"
CONF
}

# Starts the daemon with config $1, log $2; sets PH_PID.
start_posthorn() {
    "$BIN" serve -c "$1" 2>"$2" &
    PH_PID=$!
    PIDS+=("$PH_PID")
}

# Waits for a line matching $2 in log $1 (600 s); fails if the daemon died.
wait_log() {
    for _ in $(seq 60000); do
        grep -q "$2" "$1" 2>/dev/null && return 0
        [ -d "/proc/$PH_PID" ] || { echo "posthorn exited:" >&2; tail -5 "$1" >&2; return 1; }
        sleep 0.01
    done
    return 1
}

stop_posthorn() {
    kill "$PH_PID"
    wait "$PH_PID" 2>/dev/null || true
}

# ---- 1. A few real deferred messages, as templates.
refused=$(free_port 127.0.0.1)    # nothing listens there
config "$refused" >"$WORK/fill.toml"
start_posthorn "$WORK/fill.toml" "$WORK/fill.log"
wait_log "$WORK/fill.log" '^ready$'
addr=$(sed -n 's/.*listening smtp=\([0-9.]*:[0-9]*\).*/\1/p' "$WORK/fill.log" | head -1)
"$SOURCE" -s 1 -l "$SIZE" -m 4 -f bench@client.test -t rcpt@example.test "${addr%:*}:${addr##*:}"
for _ in $(seq 200); do
    [ "$(find "$SPOOL/deferred" -type f | wc -l)" -ge 4 ] && break
    sleep 0.05
done
stop_posthorn

# ---- 2. N copies under fresh ids, below the id lease.
echo "making $N deferred messages ..." >&2
t0=$(now)
python3 - "$SPOOL" "$N" <<'PY'
import json, os, sys, time
spool, n = sys.argv[1], int(sys.argv[2])
alphabet = "0123456789BCDFGHJKLMNPQRSTVWXYZ"
def encode(v):
    s = ""
    for _ in range(11):
        v, r = divmod(v, 31)
        s = alphabet[r] + s
    return s
def decode(s):
    v = 0
    for c in s:
        v = v * 31 + alphabet.index(c)
    return v
templates = sorted(os.listdir(os.path.join(spool, "deferred")))
envs = [json.load(open(os.path.join(spool, "deferred", t))) for t in templates]
bodies = [open(os.path.join(spool, "data", t), "rb").read() for t in templates]
# Ids a second apart below the oldest template: older than every id the
# generator hands out from now on, and below its lease.
base = decode(templates[0]) - n * 1000
later = int(time.time()) + 3600
for i in range(n):
    mid = encode(base + i * 1000)
    env = dict(envs[i % len(envs)])
    env["id"] = env["trace_id"] = mid
    env["next_attempt"] = later
    with open(os.path.join(spool, "data", mid), "wb") as f:
        f.write(bodies[i % len(bodies)])
    with open(os.path.join(spool, "deferred", mid), "w") as f:
        json.dump(env, f, separators=(",", ":"))
for t in templates:
    env = json.load(open(os.path.join(spool, "deferred", t)))
    env["next_attempt"] = later
    with open(os.path.join(spool, "deferred", t), "w") as f:
        json.dump(env, f, separators=(",", ":"))
PY
sync
echo "made in $(calc "$(now) - $t0") s" >&2

# ---- 3. Start on it, with a working smarthost.
sink_port=$(free_port 127.0.0.1)
start_sink 127.0.0.1 "$sink_port" 1
sink_pid=$SINK_PID
config "$sink_port" >"$WORK/serve.toml"
if [ "$COLD" = 1 ] && [ -w /proc/sys/vm/drop_caches ]; then
    sync
    echo 3 >/proc/sys/vm/drop_caches || echo "could not drop the page cache; it stays warm" >&2
fi
echo "starting posthorn on the queue ..." >&2
t0=$(now)
start_posthorn "$WORK/serve.toml" "$WORK/serve.log"
wait_log "$WORK/serve.log" '^ready$'
ready=$(calc "$(now) - $t0")
rss_ready=$(awk '/^VmRSS:/ {print $2}' "/proc/$PH_PID/status")
addr=$(sed -n 's/.*listening smtp=\([0-9.]*:[0-9]*\).*/\1/p' "$WORK/serve.log" | head -1)
"$SOURCE" -s 1 -l "$SIZE" -m 1 -f bench@client.test -t rcpt@example.test "${addr%:*}:${addr##*:}"
wait_sink_done "$sink_pid"
first=$(calc "$(now) - $t0")
loaded=-
if [ "${NO_LOADED_LINE:-}" != 1 ]; then
    wait_log "$WORK/serve.log" '^loaded$'
    loaded=$(sed -n 's/.*queue loaded.* in \([0-9.]*\) s.*/\1/p' "$WORK/serve.log" | head -1)
fi
rss_loaded=$(awk '/^VmRSS:/ {print $2}' "/proc/$PH_PID/status")
t1=$(now)
listed=$(set +o pipefail; "$BIN" mailq -c "$WORK/serve.toml" 2>"$WORK/mailq.err" | wc -l)
mailq=$(calc "$(now) - $t1")
[ -s "$WORK/mailq.err" ] && { echo "mailq said:" >&2; head -3 "$WORK/mailq.err" >&2; }
rss_mailq=$(awk '/^VmRSS:/ {print $2}' "/proc/$PH_PID/status")
stop_posthorn

echo
echo "start-up with a big queue: $N deferred messages, $(nproc) cores, page cache $([ "$COLD" = 1 ] && echo dropped || echo warm)"
printf '%9s %8s %8s %9s %10s %11s %8s %8s %10s\n' queued "ready s" "first s" "loaded s" "RSS ready" "RSS loaded" "mailq s" lines "RSS mailq"
printf '%9d %8.2f %8.2f %9s %10.1f %11.1f %8.2f %8d %10.1f\n' "$N" "$ready" "$first" "${loaded:-?}" \
    "$(calc "$rss_ready / 1024")" "$(calc "$rss_loaded / 1024")" "$mailq" "$listed" "$(calc "$rss_mailq / 1024")"
echo "(loaded s: the daemon's own figure, from its start until the whole queue is indexed; RSS in MiB:"
echo " at ready, once loaded, and after one mailq through the daemon)"
