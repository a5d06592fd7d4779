# shellcheck shell=bash disable=SC2154 # chroot_tool and chroot_not_done are set by the script that sources this
# scripts/lib/chroot.sh: what scripts/trixie-chroot.sh and scripts/cuda-build-check.sh share, sourced by
# both (bash, under set -euo pipefail). Before sourcing, the script sets:
#   chroot_tool      its name, the prefix of every message ("trixie-chroot")
#   chroot_not_done  what did not happen when it cannot run ("ember was NOT built ... against libtorch 2.x")
# It defines say, unavailable, debian_mirror, mount_into, cleanup (undoes every mount; set as the EXIT
# trap here) and in_chroot.

say() { printf '%s: [%s] %s\n' "$chroot_tool" "$(date +%T)" "$*" >&2; }

# Says loudly that the script cannot run here and why; exits 0, or 1 under CI=true.
unavailable() {
    {
        echo
        echo "######################################################################"
        echo "#  $chroot_tool: CANNOT RUN on this machine:"
        echo "#    $*"
        echo "#  $chroot_not_done"
        echo "######################################################################"
        echo
    } >&2
    if [ "${CI:-}" = true ]; then exit 1; fi
    exit 0
}

# The Debian mirror this machine's apt already uses (the first deb URI ending in /debian, from
# /etc/apt/sources.list.d/*.sources, then the one-line lists), or $EMBER_TRIXIE_MIRROR, or deb.debian.org.
debian_mirror() {
    local m=${EMBER_TRIXIE_MIRROR:-}
    if [ -z "$m" ]; then
        m=$(cat /etc/apt/sources.list.d/*.sources 2>/dev/null |
            sed -n 's|^URIs:[[:space:]]*\(.*/debian\)/\{0,1\}[[:space:]]*$|\1|p' | head -n1)
    fi
    if [ -z "$m" ]; then
        m=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null |
            sed -n 's|^deb[[:space:]]\{1,\}\(\[[^]]*\][[:space:]]\{1,\}\)\{0,1\}\([^[:space:]]*/debian\)/\{0,1\}[[:space:]].*|\2|p' |
            head -n1)
    fi
    echo "${m:-http://deb.debian.org/debian}"
}

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

in_chroot() {  # in_chroot CHROOT COMMAND: a clean environment (plus $EMBER_EXTRA_ENV), root's shell
    # shellcheck disable=SC2086 # EMBER_EXTRA_ENV is a list of NAME=VALUE words
    env -i PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin HOME=/root LANG=C.UTF-8 \
        TERM="${TERM:-dumb}" CI="${CI:-}" DEBIAN_FRONTEND=noninteractive ${EMBER_EXTRA_ENV:-} \
        chroot "$1" /bin/bash -c "$2"
}
