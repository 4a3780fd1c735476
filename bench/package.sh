#!/usr/bin/env bash
# Figures of the Debian package: .deb size, stripped binary size, installed
# size, and the time from `dpkg -i` to a test mail in root's Maildir.
#
#   bench/package.sh [--binary PATH]     (default: cargo build --release)
#
# The install is a real `dpkg -i`, in a throwaway root: the host's own
# system under an overlay whose writes go to a tmpfs, in private mount,
# network and pid namespaces (nothing reaches the host, its port 25 or its
# processes). Postfix, if installed, is purged in there first: the two are
# mail-transport-agents. Needs root. Prints figures; asserts nothing.
set -euo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
[ "$(id -u)" = 0 ] || { echo "bench/package.sh: run as root (namespaces, dpkg)" >&2; exit 1; }

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
deb=$("$repo/pkg/build-deb.sh" "$@" "$out" 2>/dev/null)
mkdir "$out/x"
dpkg-deb -x "$deb" "$out/x"

kib() { echo "$(( ($1 + 1023) / 1024 )) KiB ($(numfmt --to=iec-i --suffix=B "$1"))"; }
echo "package:          $(basename "$deb")"
echo "deb size:         $(kib "$(stat -c %s "$deb")")"
echo "stripped binary:  $(kib "$(stat -c %s "$out/x/usr/sbin/posthorn")")"
echo "installed size:   $(dpkg-deb -f "$deb" Installed-Size) KiB (Installed-Size)"

mkdir "$out/t"
timing=$(unshare --mount --net --pid --fork --propagation private sh -s "$out/t" "$(dirname "$deb")" "$(basename "$deb")" <<'EOF'
set -e
T=$1; DEBS=$2; DEB=$3
mount -t tmpfs tmpfs "$T"
mkdir -p "$T/u" "$T/w" "$T/m"
mount -t overlay overlay -o "lowerdir=/,upperdir=$T/u,workdir=$T/w" "$T/m"
mount -t proc proc "$T/m/proc"
mount --rbind /dev "$T/m/dev"
mount --rbind /sys "$T/m/sys"
mkdir -p "$T/m/debs" && mount --bind "$DEBS" "$T/m/debs"
ip link set lo up
exec chroot "$T/m" /bin/sh -c '
    set -e
    dpkg --purge --force-depends postfix >/dev/null 2>&1 || true
    printf "#!/bin/sh\nexit 0\n" >/usr/sbin/policy-rc.d
    start=$(date +%s%N)
    dpkg -i "/debs/$1" >/dev/null 2>&1
    installed=$(date +%s%N)
    printf "Subject: bench\n\nhello\n" | /usr/sbin/sendmail root
    i=0
    until ls /var/mail/posthorn/root/new/* >/dev/null 2>&1; do
        i=$((i + 1)); [ $i -lt 3000 ] || { echo "no mail after 30 s" >&2; exit 1; }
        sleep 0.01
    done
    done=$(date +%s%N)
    echo "$(( (installed - start) / 1000000 )) $(( (done - start) / 1000000 ))"
' sh "$DEB"
EOF
)
set -- $timing
echo "dpkg -i:          $1 ms (unpack, account, spool, daemon started by the init script)"
echo "dpkg -i to mail:  $2 ms (root's Maildir holds the test mail sent with /usr/sbin/sendmail)"
