#!/usr/bin/env bash
# bench/tls_out.sh -- relay rate of a hub by outbound TLS policy level.
#
# smtp-source (SESSIONS sessions, N messages of SIZE bytes, plain) -> a
# posthorn hub whose transport table sends example.test to a next hop
# [127.0.0.1]:PORT, with a policy table entry for it at each LEVEL in turn
# (`may`: STARTTLS, certificate not checked; `verify`: checked against a
# private CA made here with openssl) -> the receiving posthorn hub (STARTTLS)
# -> smtp-sink (plain). The figure is N / the time from the start of the
# load until the sink has N messages; same run, same receiver for every
# level. DANE has no row: it applies to MX delivery only and needs a
# DNSSEC-signed zone with TLSA records served on loopback, which this
# script does not set up (tests/dane.rs does, with the test harness's DNS
# server); its handshake is the same as verify's, plus the validated DNS
# lookups (cached for their TTL). Figures are printed, never asserted on.
# Everything started here is stopped on exit.
#
# usage: bench/tls_out.sh [N]      (default N=2000)
# env:   SESSIONS=10 SIZE=1024 LEVELS="may verify" POSTHORN_BIN=path KEEP=1
set -euo pipefail

N=${1:-${N:-2000}}
SESSIONS=${SESSIONS:-10}
SIZE=${SIZE:-1024}
LEVELS=${LEVELS:-may verify}
SINK=/usr/sbin/smtp-sink
SOURCE=/usr/sbin/smtp-source
ROOT=$(cd "$(dirname "$0")/.." && pwd)

for tool in "$SINK" "$SOURCE"; do
    [ -x "$tool" ] || { echo "missing $tool: apt-get install postfix" >&2; exit 1; }
done
command -v openssl >/dev/null || { echo "missing openssl" >&2; exit 1; }

. "$ROOT/bench/lib.sh"
bench_init tls-out-bench
SINK_OPTS=()

BIN=${POSTHORN_BIN:-}
if [ -z "$BIN" ]; then
    BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/posthorn
    echo "building $BIN ..." >&2
    (cd "$ROOT" && cargo build --release --quiet) >&2
fi

# Starts posthorn with config $2 in directory $1; sets PH_PID, PH_LOG.
start_posthorn() {
    PH_LOG=$1/posthorn.log
    "$BIN" serve -c "$2" 2>"$PH_LOG" &
    PH_PID=$!
    PIDS+=("$PH_PID")
    for _ in $(seq 400); do
        grep -qx 'ready' "$PH_LOG" 2>/dev/null && return 0
        [ -d "/proc/$PH_PID" ] || break
        sleep 0.05
    done
    echo "posthorn not ready:" >&2
    cat "$PH_LOG" >&2
    return 1
}

announced() { sed -n "s/.*listening $2=\([0-9.]*:[0-9]*\).*/\1/p" "$1" | head -1; }

# A private CA and the receiver's certificate (for 127.0.0.1) signed by it.
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-ca \
    -keyout "$WORK/ca.key" -out "$WORK/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=bench-rx.test \
    -keyout "$WORK/key.pem" -out "$WORK/rx.csr" 2>/dev/null
printf 'subjectAltName=DNS:bench-rx.test,IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' >"$WORK/ext"
openssl x509 -req -in "$WORK/rx.csr" -CA "$WORK/ca.pem" -CAkey "$WORK/ca.key" -CAcreateserial -days 2 \
    -extfile "$WORK/ext" -out "$WORK/cert.pem" 2>/dev/null
chmod 644 "$WORK/key.pem"

# The receiver: STARTTLS with the certificate, everything on to the sink.
sink_port=$(free_port 127.0.0.1)
rx=$WORK/rx
mkdir -p "$rx"
echo "example.test   relay:[127.0.0.1]:$sink_port" >"$rx/transport"
cat >"$rx/posthorn.toml" <<CONF
role = "hub"
user = "root"
hostname = "bench-rx.test"
spool = "$rx/spool"
[smtp]
listen = ["127.0.0.1:0"]
[access]
trusted_networks = ["127.0.0.0/8"]
[deliver]
transport_maps = ["hash:$rx/transport"]
[tls]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
CONF
start_posthorn "$rx" "$rx/posthorn.toml"
rx_addr=$(announced "$rx/posthorn.log" smtp)

RESULTS=()
for level in $LEVELS; do
    dir=$WORK/tx-$level
    mkdir -p "$dir"
    echo "example.test   relay:[${rx_addr%:*}]:${rx_addr##*:}" >"$dir/transport"
    echo "[${rx_addr%:*}]:${rx_addr##*:}   $level" >"$dir/tls_policy"
    cat >"$dir/posthorn.toml" <<CONF
role = "hub"
user = "root"
hostname = "bench-tx.test"
spool = "$dir/spool"
[smtp]
listen = ["127.0.0.1:0"]
[access]
trusted_networks = ["127.0.0.0/8"]
[deliver]
transport_maps = ["hash:$dir/transport"]
[outbound_tls]
policy_maps = ["texthash:$dir/tls_policy"]
ca = "$WORK/ca.pem"
CONF
    start_posthorn "$dir" "$dir/posthorn.toml"
    tx_pid=$PH_PID
    tx=$(announced "$dir/posthorn.log" smtp)
    start_sink 127.0.0.1 "$sink_port" "$N"
    t0=$(now)
    run_source "${tx%:*}" "${tx##*:}" >/dev/null
    wait_sink_done "$SINK_PID"
    rate=$(calc "$N / ($(now) - $t0)")
    want=Untrusted
    [ "$level" = verify ] && want=Verified
    grep -q "$want TLS connection established to" "$dir/posthorn.log" ||
        echo "$level: the hub logged no $want TLS connection" >&2
    RESULTS+=("$(printf '%-8s %16.0f' "$level" "$rate")")
    kill "$tx_pid"
    wait "$tx_pid" 2>/dev/null || true
done

echo "outbound TLS: N=$N SESSIONS=$SESSIONS SIZE=$SIZE (hub -> next hop by policy level -> sink)"
printf '%-8s %16s\n' level "relay msg/s"
for r in "${RESULTS[@]}"; do echo "$r"; done
