#!/bin/sh
# check_symbols.sh LIB: every global symbol libember.a defines is em_ (public) or emi_ (internal).
# A C program linking the static library with a function of its own named like one of ours would
# otherwise fail to link or, worse, call ours. C++ names are demangled: emi_lbfgs::step is fine.
# Weak (W/V) symbols are template and inline instantiations of libtorch's own headers, not ember's names.
set -eu
lib=${1:?usage: check_symbols.sh libember.a}
command -v nm >/dev/null || { echo "nm not found (binutils)"; exit 77; }
bad=$(nm -gC --defined-only "$lib" | awk 'NF >= 3 && $2 ~ /^[TDBRGS]$/ { $1 = ""; $2 = ""; sub(/^  /, ""); print }' |
      grep -vE '^(em_|emi_)' | sort -u || true)
count=$(nm -gC --defined-only "$lib" | awk 'NF >= 3 && $2 ~ /^[TDBRGS]$/' | wc -l)
if [ -n "$bad" ]; then
    echo "global symbols in $lib without the em_/emi_ prefix:"
    echo "$bad" | sed 's/^/    /'
    exit 1
fi
echo "$count global symbols in $lib, all em_ or emi_"
