#!/bin/sh
# install-deps.sh: install what a fresh Debian 12 machine lacks to build and test ember.
# Idempotent and quiet: packages already present are not touched. Needs root (apt-get);
# run as another user it prints the command to run instead.
set -eu

# python3-torch: only for /usr/bin/torchrun, which test_ddp_train launches ranks with (skipped without it)
PKGS="cmake g++ make pkg-config libtorch-dev libgloo-dev libcmocka-dev libopenblas0-pthread \
      libcjson-dev libcairo2-dev python3-torch"
# clang with its libFuzzer runtime: the fuzz test of the safetensors reader (tests/fuzz/). Named by
# release, as the runtime's package carries clang's version; elsewhere the fuzz test is skipped and
# says why.
case "$(. /etc/os-release 2>/dev/null; echo "${VERSION_CODENAME:-}")" in
bookworm) PKGS="$PKGS clang-14 libclang-rt-14-dev" ;;
esac

missing=""
for p in $PKGS; do
    if ! dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed"; then
        missing="$missing $p"
    fi
done

if [ -z "$missing" ]; then
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "ember needs these Debian packages:$missing" >&2
    echo "run as root:  apt-get update && apt-get install -y$missing" >&2
    exit 1
fi

echo "installing:$missing" >&2
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq >/dev/null
# shellcheck disable=SC2086
apt-get install -y -qq --no-install-recommends $missing >/dev/null
