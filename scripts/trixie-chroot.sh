#!/usr/bin/env bash
# scripts/trixie-chroot.sh: build and test ember against libtorch 2.x, in a Debian trixie chroot.
#
# Debian 12 ships libtorch 1.13; trixie ships 2.6. This script makes (or reuses) a minbase trixie
# chroot with the packages scripts/install-deps.sh lists (installed by running install-deps.sh inside
# it), copies the source tree in (its own build dir, nothing shared with the host's build/), and runs
# README.md's second line, the test command, there.
#
# The chroot is cached in $EMBER_TRIXIE_ROOT (default /var/cache/ember-ci/trixie) and rebuilt only when
# install-deps.sh's package list changes (its hash is stored in the chroot). The mirror is the Debian
# one this machine's apt already uses (/etc/apt/sources.list.d/*.sources, /etc/apt/sources.list), or
# $EMBER_TRIXIE_MIRROR.
#
# Needs root, debootstrap (installed if missing) and the mirror. When any is lacking it says so loudly
# and exits 0, except under CI=true, where it fails.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
root=${EMBER_TRIXIE_ROOT:-/var/cache/ember-ci/trixie}
suite=trixie

say() { printf 'trixie-chroot: [%s] %s\n' "$(date +%T)" "$*" >&2; }

unavailable() {
    {
        echo
        echo "######################################################################"
        echo "#  trixie-chroot: the libtorch 2.x leg CANNOT RUN on this machine:"
        echo "#    $*"
        echo "#  ember was NOT built or tested against libtorch 2.x."
        echo "######################################################################"
        echo
    } >&2
    if [ "${CI:-}" = true ]; then exit 1; fi
    exit 0
}

[ "$(id -u)" -eq 0 ] || unavailable "not root (debootstrap, chroot and mount need root)"

if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null ||
           { apt-get update -qq >/dev/null &&
             DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }; }; then
        unavailable "debootstrap is not installed and apt-get could not install it"
    fi
fi

# The Debian mirror this machine already uses: the first deb URI ending in /debian.
mirror=${EMBER_TRIXIE_MIRROR:-}
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null | sed -n 's|^URIs:[[:space:]]*\(.*/debian\)/\{0,1\}[[:space:]]*$|\1|p' | head -n1)
fi
if [ -z "$mirror" ]; then
    mirror=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
             sed -n 's|^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*/debian\)/\{0,1\}[[:space:]].*|\2|p' | head -n1)
fi
mirror=${mirror:-http://deb.debian.org/debian}

# The package list install-deps.sh installs; the chroot is rebuilt when it changes.
deps_hash=$(sed -n '/^PKGS="/,/"/p' "$src/scripts/install-deps.sh" | tr -s ' \t\n\\' ' ' | sha256sum | cut -d' ' -f1)

# Mounts, undone on every exit.
mounted=()
cleanup() {
    local i
    for ((i = ${#mounted[@]} - 1; i >= 0; i--)); do
        umount "${mounted[i]}" 2>/dev/null || umount -l "${mounted[i]}" 2>/dev/null ||
            say "could not unmount ${mounted[i]}"
    done
    mounted=()
}
trap cleanup EXIT
trap 'exit 130' INT TERM

mount_into() {  # mount_into CHROOT: /proc, /dev (with /dev/pts and a fresh /dev/shm), /sys
    local r=$1
    mkdir -p "$r/proc" "$r/dev" "$r/sys"
    mount -t proc proc "$r/proc" && mounted+=("$r/proc")
    mount --bind /dev "$r/dev" && mounted+=("$r/dev")
    if [ -d /dev/pts ] && mount --bind /dev/pts "$r/dev/pts" 2>/dev/null; then mounted+=("$r/dev/pts"); fi
    mkdir -p "$r/dev/shm" 2>/dev/null || true
    if mount -t tmpfs -o mode=1777,nosuid,nodev shm "$r/dev/shm"; then mounted+=("$r/dev/shm"); fi
    if mount -t sysfs sysfs "$r/sys" 2>/dev/null || mount --rbind /sys "$r/sys"; then mounted+=("$r/sys"); fi
}

in_chroot() {  # in_chroot CHROOT COMMAND: a clean environment, root's shell
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        TERM="${TERM:-dumb}" CI="${CI:-}" DEBIAN_FRONTEND=noninteractive \
        chroot "$1" /bin/bash -c "$2"
}

if [ -f "$root/.ember-deps-hash" ] && [ "$(cat "$root/.ember-deps-hash")" = "$deps_hash" ]; then
    say "reusing the cached chroot $root"
else
    new="$root.new"
    say "making a $suite chroot in $root from $mirror (minbase, then scripts/install-deps.sh)"
    # A .new left by an interrupted run may still have something mounted in it.
    for m in dev/shm dev/pts dev sys proc; do umount -l "$new/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$new"
    mkdir -p "$(dirname "$root")"
    if ! debootstrap --variant=minbase "$suite" "$new" "$mirror" >"$new.debootstrap.log" 2>&1; then
        tail -n 20 "$new.debootstrap.log" >&2
        unavailable "debootstrap $suite from $mirror failed (network? mirror?): see $new.debootstrap.log"
    fi
    cp /etc/resolv.conf "$new/etc/resolv.conf" 2>/dev/null || true
    cp "$src/scripts/install-deps.sh" "$new/tmp/install-deps.sh"
    # no daemons start in a chroot (the usual policy-rc.d; without it invoke-rc.d warns)
    printf '#!/bin/sh\nexit 101\n' >"$new/usr/sbin/policy-rc.d" && chmod 755 "$new/usr/sbin/policy-rc.d"
    mount_into "$new"
    if ! in_chroot "$new" "sh /tmp/install-deps.sh"; then
        unavailable "scripts/install-deps.sh failed inside the $suite chroot"
    fi
    in_chroot "$new" "apt-get clean"
    say "the $suite chroot is ready"
    cleanup
    rm -f "$new/tmp/install-deps.sh"
    echo "$deps_hash" >"$new/.ember-deps-hash"
    # Replace the old chroot only now that the new one is complete.
    if [ -d "$root" ]; then
        for m in dev/shm dev/pts dev sys proc; do umount -l "$root/$m" 2>/dev/null || true; done
        rm -rf --one-file-system "$root"
    fi
    mv "$new" "$root"
    rm -f "$new.debootstrap.log"
fi

# The source tree, copied in (the build dir is the copy's own, fresh each run).
work="$root/work/ember"
rm -rf --one-file-system "$work"
mkdir -p "$work"
(cd "$src" && tar -c --exclude=./.git --exclude='./build' --exclude='./build-*' --exclude='./.cache' .) |
    tar -x -C "$work"
test_command=$(sed -n 2p "$src/README.md")

mount_into "$root"
say "libtorch in the chroot: $(in_chroot "$root" "dpkg-query -W -f='\${Version}' libtorch-dev")"
say "running README.md's test command in $suite: $test_command"
in_chroot "$root" "cd /work/ember && $test_command"
say "done: README.md's test command passed against libtorch 2.x"
