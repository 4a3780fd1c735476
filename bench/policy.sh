#!/usr/bin/env bash
# bench/policy.sh -- the accept rate through one policy service, beside the
# same without it, in the same run.
#
# The load is Postfix's smtp-source (SESSIONS parallel sessions, N messages
# of SIZE bytes, one connection per message) against a posthorn satellite
# that trusts no network (so every RCPT is a stranger's and is asked about)
# and relays example.test to an smtp-sink:
#   1. `none`:   no [policy] section;
#   2. `dunno`:  [policy] services = one trivial service (Python, threaded,
#                one thread per connection) answering `action=DUNNO` to
#                every request, the cheapest service there is; posthorn keeps
#                its connections open and reuses them.
# Columns as in bench/accept.sh. Figures are printed, never asserted on.
#
# usage: bench/policy.sh [N]            (default N=2000)
# env:   SESSIONS=20 SIZE=1024 POSTHORN_BIN=path (default: build release)
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

. "$ROOT/bench/lib.sh"
bench_init policy-bench

RESULTS=()

# A policy service answering DUNNO to everything, on 127.0.0.1:$1.
start_dunno() {
    python3 - "$1" <<'EOF' &
import socketserver, sys
class Handler(socketserver.StreamRequestHandler):
    def handle(self):
        for line in self.rfile:
            if line in (b"\n", b"\r\n"):
                self.wfile.write(b"action=DUNNO\n\n")
                self.wfile.flush()
class Server(socketserver.ThreadingTCPServer):
    daemon_threads = True
    allow_reuse_address = True
Server(("127.0.0.1", int(sys.argv[1])), Handler).serve_forever()
EOF
    PIDS+=("$!")
    wait_listening 127.0.0.1 "$1"
}

# bench_posthorn NAME [TOML]: one run, TOML appended to the configuration.
bench_posthorn() {
    local name=$1 extra=${2:-}
    local bin dir=$WORK/$name sink_port
    bin=$(posthorn_bin)
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
client_connection_limit = 0           # the load comes from one stranger
client_connection_rate_limit = 0

[access]
trusted_networks = ["10.99.0.0/16"]   # nobody: every client is asked about
relay_domains = ["example.test"]

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
    local rss c0 t0 secs done_secs c1
    rss=$(awk '/^VmRSS:/ {print $2}' "/proc/$pid/status")
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

row() {
    printf '%-9s %7d %8d %6d %10.0f %8.2f %10.3f %9.1f' "$1" "$N" "$SESSIONS" "$SIZE" \
        "$(calc "$N / $2")" "$3" "$(calc "$4 * 1000 / $HZ / $N")" "$(calc "$5 / 1024")"
}

policy_port=$(free_port 127.0.0.1)
start_dunno "$policy_port"
bench_posthorn none
bench_posthorn dunno "$(printf '\n[policy]\nservices = ["inet:127.0.0.1:%s"]' "$policy_port")"

echo
echo "policy benchmark: smtp-source -s $SESSIONS -l $SIZE -m $N, one connection per message; $(nproc) cores"
printf '%-9s %7s %8s %6s %10s %8s %10s %9s\n' policy msgs sessions bytes "accept/s" "done s" "CPU ms/msg" "RSS MiB"
for r in "${RESULTS[@]}"; do
    echo "$r"
done
echo "(CPU: posthorn's process only, not the policy service's)"
