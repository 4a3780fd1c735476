#!/usr/bin/env bash
# Builds posthorn's Debian package from the repository:
#
#   pkg/build-deb.sh [--binary PATH] [--version VERSION] OUTDIR
#
# Without --binary it runs `cargo build --release`. The binary is stripped
# (no -dbgsym package: the release profile keeps only line tables, and a
# crash report's backtrace is read against the build tree). The tree is
# staged under a temporary directory and packed with `dpkg-deb
# --root-owner-group -Zxz`, so no fakeroot is needed. --version overrides
# Cargo.toml's version (the tests build an "upgrade" this way). Prints the
# path of the .deb on stdout.
#
# Needs: dpkg-dev (dpkg-shlibdeps), binutils (strip), gzip.
set -euo pipefail

usage() {
    echo "usage: pkg/build-deb.sh [--binary PATH] [--version VERSION] OUTDIR" >&2
    exit 64
}

repo=$(cd "$(dirname "$0")/.." && pwd)
binary=
version=
while [ $# -gt 0 ]; do
    case "$1" in
        --binary) binary=${2:?--binary needs a path}; shift 2 ;;
        --version) version=${2:?--version needs a version}; shift 2 ;;
        -h | --help) usage ;;
        -*) echo "pkg/build-deb.sh: unknown option $1" >&2; usage ;;
        *) break ;;
    esac
done
[ $# -eq 1 ] || usage
outdir=$1
mkdir -p "$outdir"
outdir=$(cd "$outdir" && pwd)

if [ -z "$version" ]; then
    version=$(sed -n 's/^version = "\(.*\)"$/\1/p' "$repo/Cargo.toml" | head -1)
fi
if [ -z "$binary" ]; then
    (cd "$repo" && cargo build --release --bin posthorn >&2)
    binary=${CARGO_TARGET_DIR:-$repo/target}/release/posthorn
fi
[ -x "$binary" ] || { echo "pkg/build-deb.sh: $binary is not an executable" >&2; exit 66; }

arch=$(dpkg --print-architecture)
debian=$repo/pkg/debian
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
root=$work/root
mkdir -p "$root/DEBIAN"

# --- the files ----------------------------------------------------------------
install -D -m 0755 "$binary" "$root/usr/sbin/posthorn"
strip --strip-all --remove-section=.comment --remove-section=.note "$root/usr/sbin/posthorn"
install -D -m 0644 "$debian/posthorn.toml" "$root/etc/posthorn/posthorn.toml"
install -D -m 0755 "$debian/posthorn.init" "$root/etc/init.d/posthorn"
install -D -m 0644 "$debian/posthorn.service" "$root/lib/systemd/system/posthorn.service"
doc=$root/usr/share/doc/posthorn
install -D -m 0644 "$debian/copyright" "$doc/copyright"
date=$(date -R -d "@${SOURCE_DATE_EPOCH:-$(git -C "$repo" log -1 --format=%ct 2>/dev/null || date +%s)}")
sed -e "s/@VERSION@/$version/" -e "s/@DATE@/$date/" "$debian/changelog" | gzip -9n >"$doc/changelog.gz"
chmod 0644 "$doc/changelog.gz"

# The compatibility names: one binary that acts by the name it is called
# with (cli::COMPAT_NAMES). Where Postfix and Exim put them; those
# packages are mail-transport-agents (or exim4-base), which we conflict with.
link() { # link TARGET NAME
    mkdir -p "$(dirname "$root/$2")"
    ln -s "$1" "$root/$2"
}
for name in sendmail postqueue postsuper postcat postconf postfix postmap exim exim4 exiqgrep; do
    link posthorn "usr/sbin/$name"
done
link ../sbin/posthorn usr/bin/mailq
link ../sbin/posthorn usr/bin/newaliases
link ../sbin/sendmail usr/lib/sendmail

# manpages lands with the man-page branch
if "$binary" manpages --help >/dev/null 2>&1; then
    "$binary" manpages "$work/man"
    for section in 1 5 8; do
        for page in "$work/man/man$section"/*."$section"; do
            [ -e "$page" ] || continue
            install -D -m 0644 /dev/null "$root/usr/share/man/man$section/$(basename "$page").gz"
            gzip -9n <"$page" >"$root/usr/share/man/man$section/$(basename "$page").gz"
        done
    done
    install -D -m 0644 "$work/man/completions/posthorn.bash" "$root/usr/share/bash-completion/completions/posthorn"
    install -D -m 0644 "$work/man/completions/_posthorn" "$root/usr/share/zsh/vendor-completions/_posthorn"
fi

# --- the control area -------------------------------------------------------------
for script in postinst prerm postrm; do
    install -m 0755 "$debian/$script" "$root/DEBIAN/$script"
done
install -m 0644 "$debian/conffiles" "$root/DEBIAN/conffiles"

# The libraries the binary links, as dpkg-shlibdeps computes ${shlibs:Depends}
# (it wants a debian/control naming the package, nothing more).
mkdir -p "$work/src/debian"
printf 'Source: posthorn\n\nPackage: posthorn\nArchitecture: any\n' >"$work/src/debian/control"
shlibs=$(cd "$work/src" && dpkg-shlibdeps -O "$root/usr/sbin/posthorn" 2>/dev/null | sed -n 's/^shlibs:Depends=//p')
[ -n "$shlibs" ] || { echo "pkg/build-deb.sh: dpkg-shlibdeps found no libraries" >&2; exit 70; }

installed_size=$(du -sk --exclude=DEBIAN "$root" | cut -f1)
sed -e "s/@VERSION@/$version/" -e "s/@ARCH@/$arch/" -e "s/@INSTALLED_SIZE@/$installed_size/" \
    -e "s/@SHLIBS@/$shlibs/" "$debian/control" >"$root/DEBIAN/control"
(cd "$root" && find . -path ./DEBIAN -prune -o -type f -printf '%P\0' | sort -z | xargs -0 md5sum) >"$root/DEBIAN/md5sums"
chmod 0644 "$root/DEBIAN/control" "$root/DEBIAN/md5sums"

deb=$outdir/posthorn_${version}_${arch}.deb
dpkg-deb --root-owner-group -Zxz --build "$root" "$deb" >&2
echo "$deb"
