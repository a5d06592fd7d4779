#!/bin/sh
# run.sh: install the current build into a fresh prefix and build a program against it, as a user
# would: with pkg-config (shared and static) and with CMake's find_package(ember) (ember::ember and
# ember::ember_static). Every program is then run.
#
# usage: run.sh CMAKE BUILD_DIR PREFIX WORK_DIR CC   (CFLAGS/LDFLAGS from the environment: the
#        sanitizer build passes -fsanitize=... so the programs can load an instrumented libember)
set -eu
cmake=$1 build=$2 prefix=$3 work=$4 cc=$5
here=$(cd "$(dirname "$0")" && pwd)
cflags=${CFLAGS:-}
ldflags=${LDFLAGS:-}

rm -rf "$prefix" "$work"
mkdir -p "$work"

step() { printf '\n== %s\n' "$*"; }

step "cmake --install $build --prefix $prefix"
"$cmake" --install "$build" --prefix "$prefix" >"$work/install.log"
for f in include/ember.h include/ember/common.h include/ember/tensor.h lib/libember.a \
         lib/pkgconfig/ember.pc lib/pkgconfig/ember-static.pc lib/cmake/ember/emberConfig.cmake \
         lib/cmake/ember/emberConfigVersion.cmake lib/cmake/ember/emberTargets.cmake; do
    test -f "$prefix/$f" || { echo "missing after install: $f"; exit 1; }
done
# ember-plot is built and installed where cairo is found (the build tree has it then)
if [ -x "$build/bin/ember-plot" ]; then
    test -x "$prefix/bin/ember-plot" || { echo "missing after install: bin/ember-plot"; exit 1; }
    "$prefix/bin/ember-plot" --help >/dev/null || { echo "the installed ember-plot does not run"; exit 1; }
fi
soname=$(ls "$prefix"/lib/libember.so.* | head -n 1)
test -L "$prefix/lib/libember.so" || { echo "missing: lib/libember.so (symlink)"; exit 1; }
test -n "$soname" || { echo "missing: lib/libember.so.N"; exit 1; }
pat='^[[:space:]]*#[[:space:]]*include[[:space:]]*[<"]\(torch\|ATen\|c10\)/'
if grep -rq "$pat" "$prefix/include"; then
    echo "an installed header includes a torch header:"; grep -rn "$pat" "$prefix/include"
    exit 1
fi

export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
step "pkg-config --cflags --libs ember: $(pkg-config --cflags --libs ember)"
# shellcheck disable=SC2046,SC2086
"$cc" -std=c11 -Wall -Wextra -Werror $cflags -o "$work/app_pc" "$here/app.c" \
    $(pkg-config --cflags --libs ember) $ldflags
LD_LIBRARY_PATH="$prefix/lib" "$work/app_pc"

libs=$(pkg-config --libs ember-static)
step "pkg-config --libs ember-static: $libs"
# shellcheck disable=SC2046,SC2086
"$cc" -std=c11 -Wall -Wextra -Werror $cflags -o "$work/app_pc_static" "$here/app.c" \
    $(pkg-config --cflags ember-static) $libs $ldflags
if ldd "$work/app_pc_static" | grep -q libember; then
    echo "app_pc_static is linked to libember.so, not libember.a"; exit 1
fi
"$work/app_pc_static"

step "find_package(ember): ember::ember and ember::ember_static"
"$cmake" -S "$here/consumer" -B "$work/consumer" -DCMAKE_PREFIX_PATH="$prefix" \
    -DAPP_SOURCE="$here/app.c" -DCMAKE_C_COMPILER="$cc" \
    -DCMAKE_C_FLAGS="$cflags" -DCMAKE_EXE_LINKER_FLAGS="$ldflags" >"$work/consumer.log" 2>&1 ||
    { cat "$work/consumer.log"; exit 1; }
"$cmake" --build "$work/consumer" >>"$work/consumer.log" 2>&1 ||
    { cat "$work/consumer.log"; exit 1; }
"$work/consumer/app_shared"   # CMake's build rpath points into the prefix
if ldd "$work/consumer/app_static" | grep -q libember; then
    echo "app_static is linked to libember.so, not libember.a"; exit 1
fi
"$work/consumer/app_static"
step "ok"
