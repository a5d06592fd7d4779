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

chroot_tool=trixie-chroot
chroot_not_done="ember was NOT built or tested against libtorch 2.x."
# say, unavailable, debian_mirror, mount_into (mounts undone on exit), in_chroot
. "$src/scripts/lib/chroot.sh"

[ "$(id -u)" -eq 0 ] || unavailable "not root (debootstrap, chroot and mount need root)"

if ! command -v debootstrap >/dev/null 2>&1; then
    say "installing debootstrap"
    if ! { DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null ||
           { apt-get update -qq >/dev/null &&
             DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null; }; }; then
        unavailable "debootstrap is not installed and apt-get could not install it"
    fi
fi

mirror=$(debian_mirror)

# The package list install-deps.sh installs; the chroot is rebuilt when it changes.
deps_hash=$(sed -n '/^PKGS="/,/"/p' "$src/scripts/install-deps.sh" | tr -s ' \t\n\\' ' ' | sha256sum | cut -d' ' -f1)

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
