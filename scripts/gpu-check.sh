#!/usr/bin/env bash
# scripts/gpu-check.sh: issue #12's GPU proof in one run. Meant for the device machine (an NVIDIA GPU,
# PyTorch with CUDA in its python3, no network): builds ember against that PyTorch's libtorch, then
# runs the cuda tests, NCCL's DDP test, the whole suite, the conformance cases (the runner's modules have layers, so
# accelerator auto puts them on cuda:0), the examples and the benchmarks, and writes every log and
# figure under $OUT. Also runs on a CPU machine against Debian's libtorch (the cuda tests skip there,
# and the conformance cases run on the CPU): that is how the script is tried before device time is spent.
#
#   scripts/gpu-check.sh --fetch-debs     here (Debian 12, apt reachable): the .debs of cmocka and cJSON,
#                                         which a PyTorch image may lack, into .gpu-debs/ (git-ignored;
#                                         name it in the device tool's `carry`)
#   OUT=DIR scripts/gpu-check.sh [--quick] the check; DIR defaults to ./gpu-out. --quick: fewer epochs and
#                                         benchmark repetitions (a dry run)
#
# Every step runs even when one before it failed (each writes its own log); the exit status is the
# number of failed steps (0: all passed). $OUT/summary.txt lists them.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root" || exit 1

if [ "${1:-}" = "--fetch-debs" ]; then
    mkdir -p .gpu-debs
    grep -qx '/.gpu-debs/' .git/info/exclude 2>/dev/null || echo '/.gpu-debs/' >>.git/info/exclude
    (cd .gpu-debs && apt-get download libcmocka0 libcmocka-dev libcjson1 libcjson-dev) || exit 1
    ls -l .gpu-debs
    exit 0
fi
quick=0
[ "${1:-}" = "--quick" ] && quick=1

OUT=${OUT:-$root/gpu-out}
mkdir -p "$OUT"
summary="$OUT/summary.txt"
: >"$summary"
failed=0
jobs=$(nproc 2>/dev/null || echo 2)
step() { # step NAME LOG COMMAND...: run, log, record pass/fail
    local name=$1 log=$2
    shift 2
    local t0=$SECONDS
    echo "==== $name" | tee -a "$summary"
    "$@" >"$OUT/$log" 2>&1
    local rc=$?
    printf '     rc %d, %d s, log %s\n' "$rc" $((SECONDS - t0)) "$log" | tee -a "$summary"
    [ "$rc" -eq 0 ] || failed=$((failed + 1))
    return 0
}

# ---- the machine ---------------------------------------------------------------------------------------
{
    date -u
    uname -a
    nvidia-smi 2>&1 || echo "no nvidia-smi"
    python3 -c 'import torch; print("torch", torch.__version__, "cuda", torch.version.cuda, "available", torch.cuda.is_available())' 2>&1
    nproc
} >"$OUT/machine.txt" 2>&1

# ---- what the build needs -------------------------------------------------------------------------------
# libtorch: the python3 PyTorch's when it has one (the device image), else the system's (Debian's)
prefix_path=""
if torch_cmake=$(python3 -c 'import torch; print(torch.utils.cmake_prefix_path)' 2>/dev/null) && [ -n "$torch_cmake" ]; then
    prefix_path=$torch_cmake
    torch_lib=$(python3 -c 'import os, torch; print(os.path.join(os.path.dirname(torch.__file__), "lib"))')
    export LD_LIBRARY_PATH="$torch_lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
# cmocka and cJSON from .gpu-debs/ when pkg-config does not find them (unpacked under /tmp, never /)
if ! pkg-config --exists cmocka libcjson 2>/dev/null && ls .gpu-debs/*.deb >/dev/null 2>&1; then
    deps=/tmp/ember-gpu-deps
    rm -rf "$deps" && mkdir -p "$deps"
    for f in .gpu-debs/*.deb; do dpkg -x "$f" "$deps"; done
    for pc in "$deps"/usr/lib/*/pkgconfig/*.pc; do sed -i "s|^prefix=/usr|prefix=$deps/usr|" "$pc"; done
    export PKG_CONFIG_PATH="$(echo "$deps"/usr/lib/*/pkgconfig)${PKG_CONFIG_PATH:+:$PKG_CONFIG_PATH}"
    export LD_LIBRARY_PATH="$(echo "$deps"/usr/lib/*-linux-gnu)${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
fi
export OMP_NUM_THREADS=1 OPENBLAS_NUM_THREADS=1

# ---- build ------------------------------------------------------------------------------------------------
build=build-gpu
step "configure (libtorch: ${prefix_path:-the system libtorch})" configure.log \
    cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release ${prefix_path:+-DCMAKE_PREFIX_PATH="$prefix_path"}
step "build" build.log cmake --build "$build" -j"$jobs"
if [ ! -x "$build/bin/ember-conformance" ]; then
    echo "the build failed: see $OUT/build.log" | tee -a "$summary"
    exit 1
fi

# ---- tests --------------------------------------------------------------------------------------------------
step "cuda tests (tensors, layers, optimizers, the trainer in both modes, 16-mixed with the scaler)" cuda.log \
    ctest --test-dir "$build" -L cuda --output-on-failure -V
# NCCL (issue #9): DDP on cuda:LOCAL_RANK with ProcessGroupNCCL, one rank (and two where two GPUs are
# visible), against a single-process fit; then the backend choice and its refusals (test_ddp_backend).
# Its 77 (skipped: no CUDA or no NCCL in the libtorch) counts as a failure where a GPU is visible.
step "NCCL: DDP on CUDA with ProcessGroupNCCL (test_cuda_nccl, test_ddp_backend)" nccl.log \
    bash -c "'$build/bin/test_cuda_nccl'; rc=\$?; if [ \$rc -eq 77 ] && ! nvidia-smi -L >/dev/null 2>&1; then rc=0; fi
             '$build/bin/test_ddp_backend' || rc=1; exit \$rc"
step "the whole suite" ctest.log ctest --test-dir "$build" -j"$jobs" --output-on-failure --timeout 900
step "conformance cases through the runner (cuda:0 where a GPU is visible)" conformance.log \
    bash -c "cd tests && ../$build/bin/ember-conformance conformance/cases/*.json; rc=\$?; [ \$rc -eq 77 ] && rc=0; exit \$rc"
# (77: every case ran or was skipped with its reason, e.g. the torch-version twins: not a failure)

# ---- examples and figures -------------------------------------------------------------------------------------
epochs=30
reps=""
[ "$quick" -eq 1 ] && epochs=3 && reps="--quick"
step "classifier (32-true)" classifier.log \
    "$build/bin/classifier" --epochs "$epochs" --log-dir "$OUT/classifier-logs"
step "classifier (bf16-mixed)" classifier-bf16.log "$build/bin/classifier" --epochs "$epochs" --bf16
step "gan" gan.log "$build/bin/gan" --out "$OUT/gan"
step "ember-bench (ember vs raw libtorch)" bench.log "$build/bin/ember-bench" $reps
step "ember-bench --ddp 2 (Gloo)" bench-ddp.log "$build/bin/ember-bench" --ddp 2 $reps

echo "failed steps: $failed" | tee -a "$summary"
exit "$failed"
