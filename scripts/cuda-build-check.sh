#!/usr/bin/env bash
# scripts/cuda-build-check.sh: build ember against a CUDA-enabled libtorch (Debian trixie's
# libtorch-cuda-dev 2.6, with NCCL) with -DEMBER_WERROR=ON, so that every CUDA- and NCCL-guarded path
# in shim/ compiles and links for real, then run the whole test suite there on the CPU (no GPU: the
# cuda tests skip saying why; DDP runs on Gloo; test_ddp_backend checks that NCCL is built in).
#
# NOT part of .ci/run: the environment is a ~3.7 GB download (CUDA 12.4 toolkit, cuBLAS & co., NCCL,
# libtorch-cuda). Run it by hand (as root) after touching shim/dist.cpp, compat.h or CUDA code:
#
#   sudo scripts/cuda-build-check.sh              make or reuse the chroot, build, run the suite
#   sudo scripts/cuda-build-check.sh --prepare    only make (or check) the chroot
#
# The chroot lives in $EMBER_CUDA_ROOT (default /var/tmp/ember-cuda/trixie) and is made once: a copy of
# the CI trixie chroot ($EMBER_TRIXIE_ROOT, default /var/cache/ember-ci/trixie, never modified; made
# with debootstrap + scripts/install-deps.sh as scripts/trixie-chroot.sh does when it is absent), plus
# contrib and non-free, plus libtorch-cuda-dev, nvidia-cuda-toolkit (nvcc: torch's CMake config
# enables the CUDA language), nvidia-cuda-dev and libnccl-dev. It is remade when this script's package
# list or install-deps.sh's changes.
#
# Two things NVIDIA's cuDNN needs are not reachable here, and are stood in for, inside the chroot only:
#  - the package nvidia-cudnn is an installer that downloads cuDNN from NVIDIA at install time: a local
#    package of the same name (version 9.0.0.312~cuda12+ember.dummy, no files) satisfies libtorch's
#    dependency instead;
#  - libtorch_cuda.so needs libcudnn.so.9 to link and load: a stand-in library is generated that
#    exports exactly the cudnn* functions libtorch imports (under libtorch's symbol version), each
#    returning an error status. No cuDNN function runs without a GPU; on a GPU this chroot is no use.
# Nothing else is faked: ember compiles against the real CUDA, NCCL and c10d headers and links the
# real libtorch_cuda, libc10_cuda, libcudart and libnccl.
#
# Needs root, debootstrap (when the CI chroot is absent) and the Debian mirror. When any is lacking it
# says so loudly and exits 0 (1 under CI=true), as trixie-chroot.sh does.
set -euo pipefail

src=$(cd "$(dirname "$0")/.." && pwd)
root=${EMBER_CUDA_ROOT:-/var/tmp/ember-cuda/trixie}
base=${EMBER_TRIXIE_ROOT:-/var/cache/ember-ci/trixie}
suite=trixie
cuda_pkgs="libtorch-cuda-dev libgloo-cuda-dev nvidia-cuda-toolkit nvidia-cuda-dev libnccl-dev"

chroot_tool=cuda-build-check
chroot_not_done="ember was NOT built against a CUDA libtorch."
# say, unavailable, debian_mirror, mount_into (mounts undone on exit), in_chroot
. "$src/scripts/lib/chroot.sh"

[ "$(id -u)" -eq 0 ] || unavailable "not root (chroot and mount need root)"

mirror=$(debian_mirror)

# What the chroot is made of; it is remade when this changes.
deps_hash=$( { sed -n '/^PKGS="/,/"/p' "$src/scripts/install-deps.sh"; echo "$cuda_pkgs"; echo standin-v1; } |
    tr -s ' \t\n\\' ' ' | sha256sum | cut -d' ' -f1)

# The cuDNN stand-ins (see the header), run inside the chroot.
read -r -d '' make_standins <<'STANDIN' || true
set -e
# 1. the installer package, as an empty package of the same name
d=/tmp/nvidia-cudnn-standin
rm -rf $d && mkdir -p $d/DEBIAN
cat >$d/DEBIAN/control <<'CONTROL'
Package: nvidia-cudnn
Version: 9.0.0.312~cuda12+ember.dummy
Architecture: amd64
Maintainer: ember cuda-build-check <nobody@localhost>
Priority: optional
Section: contrib/libs
Description: stand-in for the cuDNN installer package (ember's CUDA build check)
 The real nvidia-cudnn downloads cuDNN from NVIDIA at install time; this stand-in
 only satisfies libtorch-cuda's dependency. It ships no files.
CONTROL
dpkg-deb --build $d /tmp/nvidia-cudnn-standin.deb >/dev/null
dpkg -i /tmp/nvidia-cudnn-standin.deb >/dev/null
apt-mark hold nvidia-cudnn >/dev/null
STANDIN

read -r -d '' make_libcudnn <<'LIBCUDNN' || true
set -e
# 2. libcudnn.so.9 exporting what libtorch imports from it (each call fails with status 1001,
#    CUDNN_STATUS_NOT_INITIALIZED), under libtorch's symbol version "libcudnn.so.9"
cd /usr/lib/x86_64-linux-gnu
syms=$(for l in libtorch*.so* libc10*.so*; do [ -f "$l" ] && nm -D --undefined-only "$l" 2>/dev/null; done |
       sed -n 's/^ *U \(cudnn[A-Za-z0-9_]*\)@libcudnn\.so\.9$/\1/p' | sort -u)
[ -n "$syms" ] || { echo "no cudnn symbols imported by libtorch?" >&2; exit 1; }
d=/usr/local/lib/ember-cudnn-standin
mkdir -p $d
{
  echo '/* cuDNN stand-in (scripts/cuda-build-check.sh): for linking and loading without a GPU only. */'
  for s in $syms; do
    case $s in
      cudnnGetVersion|cudnnGetCudartVersion|cudnnGetMaxDeviceVersion) echo "unsigned long $s(void) { return 0; }" ;;
      cudnnGetErrorString) echo "const char *$s(int s) { (void)s; return \"cuDNN stand-in: no cuDNN here\"; }" ;;
      *) echo "int $s(void) { return 1001; }" ;;
    esac
  done
} >$d/standin.c
echo 'libcudnn.so.9 { global: *; };' >$d/standin.map
gcc -shared -fPIC -fno-builtin -Wl,-soname,libcudnn.so.9 -Wl,--version-script=$d/standin.map \
    -o $d/libcudnn.so.9 $d/standin.c
ln -sf libcudnn.so.9 $d/libcudnn.so
echo $d >/etc/ld.so.conf.d/ember-cudnn-standin.conf
ldconfig
echo "cuDNN stand-in: $(echo $syms | wc -w) functions"
LIBCUDNN

if [ -f "$root/.ember-cuda-hash" ] && [ "$(cat "$root/.ember-cuda-hash")" = "$deps_hash" ]; then
    say "reusing the CUDA chroot $root"
else
    new="$root.new"
    for m in dev/shm dev/pts dev sys proc; do umount -l "$new/$m" 2>/dev/null || true; done
    rm -rf --one-file-system "$new"
    mkdir -p "$(dirname "$root")"
    if [ -f "$base/.ember-deps-hash" ]; then
        say "copying the trixie chroot $base to $new (the original is not changed)"
        cp -a "$base" "$new"
    else
        say "no trixie chroot at $base: making one with debootstrap ($suite, $mirror) and install-deps.sh"
        command -v debootstrap >/dev/null 2>&1 ||
            DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends debootstrap >/dev/null ||
            unavailable "debootstrap is not installed and apt-get could not install it"
        debootstrap --variant=minbase "$suite" "$new" "$mirror" >"$new.debootstrap.log" 2>&1 ||
            unavailable "debootstrap $suite from $mirror failed: see $new.debootstrap.log"
        printf '#!/bin/sh\nexit 101\n' >"$new/usr/sbin/policy-rc.d" && chmod 755 "$new/usr/sbin/policy-rc.d"
        cp "$src/scripts/install-deps.sh" "$new/tmp/install-deps.sh"
        cp /etc/resolv.conf "$new/etc/resolv.conf" 2>/dev/null || true
        mount_into "$new"
        in_chroot "$new" "sh /tmp/install-deps.sh" || unavailable "install-deps.sh failed in the new chroot"
        cleanup
    fi
    cp /etc/resolv.conf "$new/etc/resolv.conf" 2>/dev/null || true
    echo "deb $mirror $suite main contrib non-free non-free-firmware" >"$new/etc/apt/sources.list"
    rm -f "$new"/etc/apt/sources.list.d/*.sources "$new"/etc/apt/sources.list.d/*.list
    mount_into "$new"
    in_chroot "$new" "apt-get update -qq" || unavailable "apt-get update (contrib, non-free) failed in the chroot"
    in_chroot "$new" "$make_standins" || unavailable "the nvidia-cudnn stand-in package could not be made"
    say "installing $cuda_pkgs (about 3.7 GB to download; python3-torch and libtorch-dev make way)"
    in_chroot "$new" "apt-get install -y -qq --no-install-recommends $cuda_pkgs >/tmp/cuda-install.log 2>&1 ||
                      { tail -n 30 /tmp/cuda-install.log; exit 1; }" ||
        unavailable "installing $cuda_pkgs failed (network? mirror?)"
    in_chroot "$new" "$make_libcudnn" || unavailable "the libcudnn.so.9 stand-in could not be built"
    in_chroot "$new" "apt-get clean"
    cleanup
    echo "$deps_hash" >"$new/.ember-cuda-hash"
    if [ -d "$root" ]; then
        for m in dev/shm dev/pts dev sys proc; do umount -l "$root/$m" 2>/dev/null || true; done
        rm -rf --one-file-system "$root"
    fi
    mv "$new" "$root"
    say "the CUDA chroot is ready: $root"
fi

if [ "${1:-}" = "--prepare" ]; then
    say "prepared: $root"
    exit 0
fi

# The source tree, copied in (the build dir is the copy's own, fresh each run).
work="$root/work/ember"
rm -rf --one-file-system "$work"
mkdir -p "$work"
(cd "$src" && tar -c --exclude=./.git --exclude='./build' --exclude='./build-*' --exclude='./.cache' .) |
    tar -x -C "$work"

mount_into "$root"
say "libtorch in the chroot: libtorch-cuda-dev $(in_chroot "$root" "dpkg-query -W -f='\${Version}' libtorch-cuda-dev"), nvcc $(in_chroot "$root" "nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p'"), NCCL $(in_chroot "$root" "dpkg-query -W -f='\${Version}' libnccl-dev")"
jobs=${EMBER_JOBS:-2}
# shellcheck disable=SC2016
in_chroot "$root" '
set -e
cd /work/ember
cmake -S . -B build-cuda -DEMBER_WERROR=ON
# what makes this a CUDA build: torch'"'"'s compile definitions and the CUDA libraries in the link
defs=$(grep -o "\-DUSE_[A-Z0-9_]*" build-cuda/CMakeFiles/ember_objects.dir/flags.make | sort -u | tr "\n" " ")
echo "cuda-build-check: torch compile definitions for shim/: $defs"
case "$defs" in *-DUSE_C10D_NCCL*) ;; *) echo "cuda-build-check: USE_C10D_NCCL is not defined: not a NCCL build" >&2; exit 1 ;; esac
cmake --build build-cuda -j'"$jobs"'
echo "cuda-build-check: libember.so links: $(ldd build-cuda/lib/libember.so | grep -oE "lib(torch_cuda|c10_cuda|cudart|nccl)[^ ]*" | sort -u | tr "\n" " ")"
nm -C build-cuda/CMakeFiles/ember_objects.dir/shim/dist.cpp.o | grep -q "c10d::ProcessGroupNCCL::ProcessGroupNCCL" ||
    { echo "cuda-build-check: shim/dist.cpp did not compile its NCCL path" >&2; exit 1; }
echo "cuda-build-check: shim/dist.cpp.o calls ProcessGroupNCCL'"'"'s constructor (the NCCL path compiled)"
EMBER_EXPECT_NCCL=1 ctest --test-dir build-cuda -j'"$jobs"' --output-on-failure --timeout 900
'
say "done: ember built with -DEMBER_WERROR=ON against the CUDA libtorch, and its tests passed on the CPU"
