#!/usr/bin/env bash
# bench/tls.sh -- TLS figures for a hub, posthorn beside Postfix.
#
# 1. Handshakes per second into the hub: `openssl s_time -new` (a full
#    handshake per connection, no resumption) against the hub's implicit-TLS
#    listener (posthorn `smtp.submissions`; Postfix an smtpd with
#    `smtpd_tls_wrappermode=yes`), PAR s_time processes at once for SECS
#    seconds; the figure is the sum of their connections / SECS.
# 2. Relay rate over TLS: smtp-source (SESSIONS sessions, N messages of
#    SIZE bytes, plain, loopback) -> a posthorn satellite with
#    `relay.tls = "encrypt"` -> STARTTLS -> the hub -> smtp-sink (plain).
#    The satellite is the same for both hubs; the figure is N / the time
#    from the start of the load until the sink has N messages.
# The certificate is a self-signed P-256 one made here with openssl.
# Figures are printed, never asserted on. Postfix needs root (it is
# skipped otherwise). Everything started here is stopped on exit.
#
# usage: bench/tls.sh [N]         (default N=2000)
# env:   SESSIONS=10 SIZE=1024 PAR=4 SECS=5 POSTHORN_BIN=path SKIP_POSTFIX=1 KEEP=1
set -euo pipefail

N=${1:-${N:-2000}}
SESSIONS=${SESSIONS:-10}
SIZE=${SIZE:-1024}
PAR=${PAR:-4}
SECS=${SECS:-5}
SINK=/usr/sbin/smtp-sink
SOURCE=/usr/sbin/smtp-source
POSTFIX=/usr/sbin/postfix
ROOT=$(cd "$(dirname "$0")/.." && pwd)

for tool in "$SINK" "$SOURCE"; do
    [ -x "$tool" ] || { echo "missing $tool: apt-get install postfix" >&2; exit 1; }
done
command -v openssl >/dev/null || { echo "missing openssl" >&2; exit 1; }
command -v python3 >/dev/null || { echo "missing python3" >&2; exit 1; }

# Shared helpers: free_port, wait_listening, tree_ticks, calc, the sink
# and source, the private Postfix instance (pf_*), bench_init.
. "$ROOT/bench/lib.sh"
bench_init tls-bench

# Starts an smtp-sink on 127.0.0.1:$1 that exits after $2 messages; sets SINK_PID.
start_sink() {
    local user=()
    [ "$(id -u)" = 0 ] && user=(-u root)
    "$SINK" "${user[@]}" -M "$2" "127.0.0.1:$1" 256 >/dev/null 2>&1 &
    SINK_PID=$!
    PIDS+=("$SINK_PID")
    wait_listening 127.0.0.1 "$1"
}

wait_gone() {
    for _ in $(seq 6000); do
        [ -d "/proc/$1" ] && ! grep -q '^State:.*Z' "/proc/$1/status" 2>/dev/null || return 0
        sleep 0.1
    done
    echo "sink $1 did not receive all messages in 600 s" >&2
    return 1
}

# Handshakes per second into $1:$2 (implicit TLS): PAR s_time processes.
handshakes() {
    local i pids=()
    for i in $(seq "$PAR"); do
        openssl s_time -connect "$1:$2" -new -time "$SECS" >"$WORK/s_time-$2-$i.log" 2>&1 &
        pids+=($!)
    done
    wait "${pids[@]}" 2>/dev/null || true
    # s_time prints "N connections in T real seconds" (T whole seconds, which
    # can be SECS + 1): the rate is the sum of N / T.
    cat "$WORK"/s_time-"$2"-*.log |
        awk '/connections in [0-9]+ real seconds/ { if ($4 > 0) r += $1 / $4 } END { printf "%.1f", r }'
}

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

# The relay run: satellite -> hub $1 (host:port) -> sink with pid $2. Prints relay msg/s.
relay_over_tls() {
    local hub=$1 sink_pid=$2 dir=$WORK/satellite-$3
    mkdir -p "$dir"
    cat >"$dir/posthorn.toml" <<CONF
role = "satellite"
user = "root"                 # the benchmark runs as root (for Postfix); the daemon stays root
hostname = "bench-satellite.test"
spool = "$dir/spool"
[smtp]
listen = ["127.0.0.1:0"]
[relay]
smarthosts = ["$hub"]
tls = "encrypt"
CONF
    start_posthorn "$dir" "$dir/posthorn.toml"
    local sat sat_pid=$PH_PID t0
    sat=$(announced "$dir/posthorn.log" smtp)
    t0=$(now)
    "$SOURCE" -s "$SESSIONS" -l "$SIZE" -m "$N" -f bench@client.test -t rcpt@example.test -M client.test "$sat" \
        >"$dir/source.log" 2>&1 || { echo "smtp-source failed:" >&2; cat "$dir/source.log" >&2; return 1; }
    wait_gone "$sink_pid"
    calc "$N / ($(now) - $t0)"
    grep -q 'TLS connection established to' "$dir/posthorn.log" ||
        echo "$3: the satellite logged no TLS connection" >&2
    kill "$sat_pid"
}

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 2 -subj /CN=bench-hub.test \
    -addext subjectAltName=DNS:bench-hub.test,IP:127.0.0.1 \
    -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null
chmod 644 "$WORK/key.pem"
RESULTS=()

bench_posthorn() {
    BIN=${POSTHORN_BIN:-}
    if [ -z "$BIN" ]; then
        BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/posthorn
        echo "building $BIN ..." >&2
        (cd "$ROOT" && cargo build --release --quiet) >&2
    fi
    local dir=$WORK/hub sink_port
    mkdir -p "$dir"
    sink_port=$(free_port 127.0.0.1)
    echo "example.test   relay:[127.0.0.1]:$sink_port" >"$dir/transport"
    cat >"$dir/posthorn.toml" <<CONF
role = "hub"
user = "root"                 # the benchmark runs as root (for Postfix); the daemon stays root
hostname = "bench-hub.test"
spool = "$dir/spool"
[smtp]
listen = ["127.0.0.1:0"]
submissions = ["127.0.0.1:0"]
[access]
trusted_networks = ["127.0.0.0/8"]
[deliver]
transport_maps = ["hash:$dir/transport"]
[relay]
tls = "none"
[tls]
cert = "$WORK/cert.pem"
key = "$WORK/key.pem"
CONF
    start_posthorn "$dir" "$dir/posthorn.toml"
    local hub_pid=$PH_PID smtp tls hs rate
    smtp=$(announced "$dir/posthorn.log" smtp)
    tls=$(announced "$dir/posthorn.log" submissions)
    hs=$(handshakes "${tls%:*}" "${tls##*:}")
    start_sink "$sink_port" "$N"
    rate=$(relay_over_tls "$smtp" "$SINK_PID" posthorn)
    RESULTS+=("$(printf '%-9s %14.0f %16.0f' posthorn "$hs" "$rate")")
    kill "$hub_pid"
}

bench_postfix() {
    pf_setup || return 0
    local ip=127.0.0.$((100 + RANDOM % 100)) port tls_port sink_port
    port=$(free_port "$ip")
    tls_port=$(free_port "$ip")
    sink_port=$(free_port 127.0.0.1)
    echo "example.test   relay:[127.0.0.1]:$sink_port" >"$PF_DIR/etc/transport"
    {
        pf_main_cf "bench/tls.sh: a hub with STARTTLS relaying for its networks"
        cat <<CONF
relayhost =
transport_maps = texthash:$PF_DIR/etc/transport
smtpd_relay_restrictions = permit_mynetworks, reject_unauth_destination
smtpd_tls_security_level = may
smtpd_tls_cert_file = $WORK/cert.pem
smtpd_tls_key_file = $WORK/key.pem
smtp_tls_security_level = none
CONF
    } >"$PF_DIR/etc/main.cf"
    {
        echo "$ip:$port inet n - n - - smtpd"
        echo "$ip:$tls_port inet n - n - - smtpd -o smtpd_tls_wrappermode=yes -o smtpd_tls_security_level=encrypt"
        pf_services
    } >"$PF_DIR/etc/master.cf"
    pf_start "$ip" "$port" "$tls_port"
    sleep 1
    local hs rate
    hs=$(handshakes "$ip" "$tls_port")
    start_sink "$sink_port" "$N"
    rate=$(relay_over_tls "$ip:$port" "$SINK_PID" postfix)
    RESULTS+=("$(printf '%-9s %14.0f %16.0f' postfix "$hs" "$rate")")
    grep -c 'Anonymous TLS connection established\|Untrusted TLS connection established' "$PF_DIR/maillog" \
        >"$WORK/postfix-tls-count" || true
    pf_stop
}

bench_posthorn
[ "${SKIP_POSTFIX:-}" = 1 ] || bench_postfix

echo
echo "TLS benchmark: $(nproc) cores; handshakes: $PAR x openssl s_time -new for ${SECS}s on implicit TLS;"
echo "relay: smtp-source -s $SESSIONS -l $SIZE -m $N -> posthorn satellite (relay.tls = encrypt) -> hub -> smtp-sink"
printf '%-9s %14s %16s\n' hub "handshakes/s" "relay msg/s (TLS)"
for r in "${RESULTS[@]}"; do echo "$r"; done
