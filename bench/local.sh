#!/usr/bin/env bash
# bench/local.sh -- local mbox delivery rate, posthorn beside Postfix's local(8).
#
# Two loads, each sent with Postfix's smtp-source (one connection per
# message, SIZE bytes):
#   busy   N messages to one user: every delivery contends for one mbox
#          (dotlock + fcntl lock, append, fsync);
#   spread N messages over USERS users (N/USERS each, one smtp-source per
#          user in parallel): USERS mailboxes.
# Each goes to
#   1. a posthorn hub (`[local] local_transport = "local"`, the mail spool
#      a root:mail 2775 directory of its own): deliveries to the users go
#      through the local delivery agent, a fork per delivery as the user;
#   2. a private Postfix instance with `local_transport = local` and
#      `mail_spool_directory` in a directory of its own (needs root).
# Printed: deliveries per second, from the first connection until every
# mailbox holds all its messages (counted by `From ` lines). The users
# (phbench0..) are made with useradd and removed on exit. Figures are
# printed, never asserted on; they are noisy on a shared machine.
#
# usage: bench/local.sh [N]        (default N=500)
# env:   USERS=100 SESSIONS=10 SIZE=2048 POSTHORN_BIN=path SKIP_POSTFIX=1
#        CARGO_TARGET_DIR (where to find or build target/release/posthorn)
set -euo pipefail

N=${1:-${N:-500}}
USERS=${USERS:-100}
SESSIONS=${SESSIONS:-10}
SIZE=${SIZE:-2048}
SINK=/usr/sbin/smtp-sink
SOURCE=/usr/sbin/smtp-source
POSTFIX=/usr/sbin/postfix
ROOT=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "bench/local.sh makes users and mailboxes of others: run it as root" >&2; exit 1; }
[ -x "$SOURCE" ] || { echo "missing $SOURCE: apt-get install postfix" >&2; exit 1; }

. "$ROOT/bench/lib.sh"
bench_init local-bench
MADE_USERS=()
cleanup_users() {
    for u in "${MADE_USERS[@]}"; do userdel "$u" 2>/dev/null || true; done
    bench_cleanup
}
trap cleanup_users EXIT

for i in $(seq 0 "$USERS"); do
    u=phbench$i
    id "$u" >/dev/null 2>&1 || { useradd --no-create-home --shell /usr/sbin/nologin --user-group "$u"; MADE_USERS+=("$u"); }
done

spool_dir() {
    mkdir -p "$1"
    chgrp mail "$1"
    chmod 2775 "$1"
}

# Messages in mbox $1 (0 when missing).
in_mbox() { [ -f "$1" ] && grep -c '^From ' "$1" || echo 0; }

# Waits until spool $1 holds $2 messages for user $3, or $2 for each of
# phbench1..USERS when $3 is "spread".
wait_delivered() {
    local spool=$1 want=$2 who=$3 total
    for _ in $(seq 6000); do
        if [ "$who" = spread ]; then
            total=$(cat "$spool"/phbench[1-9]* 2>/dev/null | grep -c '^From ' || true)
            [ "$total" -ge $((want * USERS)) ] && return 0
        else
            [ "$(in_mbox "$spool/$who")" -ge "$want" ] && return 0
        fi
        sleep 0.1
    done
    echo "not all delivered in 600 s under $spool" >&2
    return 1
}

# The two loads against $1:$2 into spool $3; prints "busy spread" rates.
run_loads() {
    local ip=$1 port=$2 spool=$3 t0 t1 busy spread per=$((N / USERS))
    t0=$(now)
    "$SOURCE" -s "$SESSIONS" -l "$SIZE" -m "$N" -f bench@client.test -t phbench0@bench-local.test \
        -M client.test "$ip:$port" >"$WORK/source-$port.log" 2>&1
    wait_delivered "$spool" "$N" phbench0
    t1=$(now)
    busy=$(calc "$N / ($t1 - $t0)")
    t0=$(now)
    local pids=()
    for i in $(seq 1 "$USERS"); do
        "$SOURCE" -s 1 -l "$SIZE" -m "$per" -f bench@client.test -t "phbench$i@bench-local.test" \
            -M client.test "$ip:$port" >>"$WORK/source-$port.log" 2>&1 &
        pids+=("$!")
    done
    for p in "${pids[@]}"; do wait "$p"; done
    wait_delivered "$spool" "$per" spread
    t1=$(now)
    spread=$(calc "$per * $USERS / ($t1 - $t0)")
    echo "$busy $spread"
}

RESULTS=()

bench_posthorn() {
    local bin dir=$WORK/posthorn
    bin=$(posthorn_bin)
    mkdir -p "$dir"
    spool_dir "$dir/mail"
    cat >"$dir/posthorn.toml" <<EOF
role = "hub"
user = "root"                 # the bench runs as root; deliveries still go through the agent as each user
hostname = "bench-posthorn.test"
spool = "$dir/spool"

[smtp]
listen = ["127.0.0.1:0"]
max_connections = 500

[access]
local_domains = ["bench-local.test"]
trusted_networks = ["127.0.0.0/8"]

[local]
local_transport = "local"
mail_spool_directory = "$dir/mail"
EOF
    "$bin" serve -c "$dir/posthorn.toml" 2>"$dir/posthorn.log" &
    PIDS+=("$!")
    for _ in $(seq 400); do
        grep -qx 'ready' "$dir/posthorn.log" 2>/dev/null && break
        sleep 0.05
    done
    grep -qx 'ready' "$dir/posthorn.log" || { echo "posthorn not ready:" >&2; cat "$dir/posthorn.log" >&2; return 1; }
    local addr
    addr=$(sed -n 's/.*listening smtp=\([0-9.]*:[0-9]*\).*/\1/p' "$dir/posthorn.log" | head -1)
    read -r busy spread < <(run_loads "${addr%:*}" "${addr#*:}" "$dir/mail")
    RESULTS+=("posthorn $busy $spread")
}

bench_postfix() {
    pf_setup || return 0
    local ip=127.0.0.1 port
    port=$(free_port $ip)
    spool_dir "$WORK/pfmail"
    {
        pf_main_cf "bench/local.sh: local(8) into mbox files"
        cat <<EOF
mydestination = bench-local.test
local_transport = local
mail_spool_directory = $WORK/pfmail
home_mailbox =
mailbox_command =
local_recipient_maps =
smtpd_relay_restrictions = permit_mynetworks, reject
smtpd_tls_security_level = none
EOF
    } >"$PF_DIR/etc/main.cf"
    {
        echo "$ip:$port inet n - n - - smtpd"
        pf_services
    } >"$PF_DIR/etc/master.cf"
    pf_start "$ip" "$port"
    read -r busy spread < <(run_loads "$ip" "$port" "$WORK/pfmail")
    RESULTS+=("postfix $busy $spread")
}

bench_posthorn
[ -n "${SKIP_POSTFIX:-}" ] || bench_postfix

printf '%-10s %18s %24s\n' MTA "busy mbox msg/s" "$USERS mailboxes msg/s"
for r in "${RESULTS[@]}"; do
    read -r name busy spread <<<"$r"
    printf '%-10s %18.1f %24.1f\n' "$name" "$busy" "$spread"
done
echo "(N=$N, SIZE=$SIZE, SESSIONS=$SESSIONS for the busy mbox; noisy on a shared machine)"
