#!/usr/bin/env bash
# The C API from the outside, as a user gets it: the header regenerated and compared, the
# documented install into a prefix, every example and the bad-input test built with
# pkg-config and run, the small ones under valgrind, and the throughput example next to
# `rayhpc bench` (figures for the log). Called by ci/test.sh.
set -euo pipefail
cd "$(dirname "$0")/.."

have() { command -v "$1" >/dev/null 2>&1; }

# The header is generated from the code: it must be what cbindgen makes of it now.
have cbindgen || cargo install --locked cbindgen --version 0.29.4
cbindgen --quiet --config bindings/c/cbindgen.toml --crate rayhpc-c --output target/rayhpc.h.generated bindings/c
if ! diff -u bindings/c/include/rayhpc.h target/rayhpc.h.generated; then
  echo "bindings/c/include/rayhpc.h is not what cbindgen makes of bindings/c/src: regenerate it" >&2
  exit 1
fi

prefix="$PWD/target/c-prefix"
rm -rf "$prefix"
bindings/c/install.sh "$prefix"
export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
out="$PWD/target/c-examples"
mkdir -p "$out"
# The documented commands (warnings as errors, and as C++ too: the header is for both).
cflags=(-std=c99 -Wall -Wextra -Werror)
for src in examples/c/hello.c examples/c/tree.c examples/c/bench.c examples/c/cluster.c bindings/c/tests/bad_inputs.c bindings/c/tests/threads.c; do
  cc "${cflags[@]}" "$src" $(pkg-config --cflags --libs rayhpc) -o "$out/$(basename "$src" .c)"
done
cc "${cflags[@]}" examples/c/counter.c examples/c/counter_class.c $(pkg-config --cflags --libs rayhpc) -o "$out/counter"
# Shared libraries of functions and classes, which a runtime loads by name (library:symbol).
cc "${cflags[@]}" -shared -fPIC examples/c/square.c $(pkg-config --cflags --libs rayhpc) -o "$out/libsquare.so"
cc "${cflags[@]}" -shared -fPIC examples/c/counter_class.c $(pkg-config --cflags --libs rayhpc) -o "$out/libcounter.so"
cc "${cflags[@]}" -shared -fPIC bindings/c/tests/testlib.c $(pkg-config --cflags --libs rayhpc) -o "$out/libtestlib.so"
c++ -x c++ -fsyntax-only -Wall -Werror $(pkg-config --cflags rayhpc) - <<<'#include <rayhpc.h>
int main() { return rayhpc_status_name(RAYHPC_OK) == nullptr; }'

"$out/hello" | tee "$out/hello.txt"
grep -qx '40 + 2 = 42' "$out/hello.txt"
"$out/tree" 1024 | tee "$out/tree.txt"
grep -qx 'sum of 1..1024 = 524800 by 1023 tasks' "$out/tree.txt"
counter_ok() {
  grep -qx 'counter after 1+2+...+10 from 100: 155' "$1" && grep -qx 'a call with a wrong count: RAYHPC_E_ARG_COUNT' "$1" \
    && grep -qx 'a call after kill: RAYHPC_E_ACTOR_DIED' "$1"
}
"$out/counter" | tee "$out/counter.txt"
counter_ok "$out/counter.txt"
"$out/bad_inputs" "$out/libtestlib.so" > "$out/bad_inputs.txt" || { cat "$out/bad_inputs.txt"; exit 1; }
tail -1 "$out/bad_inputs.txt"
"$out/threads" "$out/libtestlib.so" | tee "$out/threads.txt"
grep -q 'embedded: all threads went on at once' "$out/threads.txt"

# C drivers attached to a node runtime (`rayhpc launch`), running library:symbol tasks and
# actors the node loads from shared libraries built with the documented commands.
cargo build --locked -q -p rayhpc-launcher
launch() { RAYHPC_RUNTIME_DIR="$out/rt" target/debug/rayhpc launch -- "$@"; }
launch "$out/cluster" "$out/libsquare.so" 100 | tee "$out/cluster.txt"
grep -qx 'sum of squares of 0..99 = 328350' "$out/cluster.txt"
grep -qx "a bad call: RAYHPC_E_TASK: task '$out/libsquare.so:square' failed: square takes one 8-byte integer" "$out/cluster.txt"
launch "$out/counter" "$out/libcounter.so" | tee "$out/counter-attached.txt"
counter_ok "$out/counter-attached.txt"
launch "$out/bad_inputs" "$out/libtestlib.so" > "$out/bad_inputs-attached.txt" || { cat "$out/bad_inputs-attached.txt"; exit 1; }
tail -1 "$out/bad_inputs-attached.txt"
launch "$out/threads" "$out/libtestlib.so" | tee "$out/threads-attached.txt"
grep -q 'attached: all threads went on at once' "$out/threads-attached.txt"

# No memory error, no leak (definite or indirect) in the examples and the bad-input test,
# with the library built without mimalloc so that valgrind sees all of its allocations too
# (found first through LD_LIBRARY_PATH: the examples' rpath is a RUNPATH).
CARGO_TARGET_DIR=target/c-valgrind cargo build --release --locked -q -p rayhpc-c --no-default-features
for run in "hello" "tree 128" "counter" "bench 2000 1" "bad_inputs $out/libtestlib.so" "threads $out/libtestlib.so 5000"; do
  LD_LIBRARY_PATH="$PWD/target/c-valgrind/release" valgrind -q --error-exitcode=9 --leak-check=full \
    --errors-for-leak-kinds=definite,indirect "$out"/$run > "$out/valgrind.txt" 2>&1 \
    || { cat "$out/valgrind.txt"; echo "valgrind: $run" >&2; exit 1; }
  echo "valgrind clean: $run"
done
# The attached C drivers too (the node is the rayhpc binary; valgrind watches the driver). A
# small store: valgrind's leak check reads through every mapping, the store's arena too.
attached_valgrind() {
  RAYHPC_RUNTIME_DIR="$out/rt" target/debug/rayhpc launch --object-store-memory $((256 << 20)) -- env LD_LIBRARY_PATH="$PWD/target/c-valgrind/release" \
    valgrind -q --error-exitcode=9 --leak-check=full --errors-for-leak-kinds=definite,indirect "$@" \
    > "$out/valgrind.txt" 2>&1 || { cat "$out/valgrind.txt"; echo "valgrind: $* (attached)" >&2; exit 1; }
}
attached_valgrind "$out/cluster" "$out/libsquare.so" 20
grep -qx 'sum of squares of 0..19 = 2470' "$out/valgrind.txt" || { cat "$out/valgrind.txt"; exit 1; }
attached_valgrind "$out/counter" "$out/libcounter.so"
counter_ok "$out/valgrind.txt" || { cat "$out/valgrind.txt"; exit 1; }
attached_valgrind "$out/threads" "$out/libtestlib.so" 5000
grep -q 'attached: all threads went on at once' "$out/valgrind.txt" || { cat "$out/valgrind.txt"; exit 1; }
attached_valgrind "$out/bad_inputs" "$out/libtestlib.so"
echo "valgrind clean: cluster, counter, threads and bad_inputs (attached to a node runtime)"
readelf -d "$out/hello" | grep -q RUNPATH || { echo "the examples' rpath is not a RUNPATH: LD_LIBRARY_PATH would not win" >&2; exit 1; }

# The throughput example beside `rayhpc bench` in the same run, alternated five times
# (figures, not asserted: medians of 15 batches after half a second of warm-up each; this
# VM has stretches of a second or two at half speed, so the medians of the five rounds are
# compared as well).
cargo build --release --locked -q -p rayhpc-launcher
rounds="$out/throughput.txt"
: > "$rounds"
for round in 1 2 3 4 5; do
  "$out/bench" 200000 15 >> "$rounds"
  target/release/rayhpc bench --json --object-mib 0 --spill-mib 0 --trials 15 --round-trips 1000 --idle-secs 1 \
    | tr ',' '\n' | sed -n 's/.*"\(tasks_async_per_s\)":\(.*\)/\1 \2/p' >> "$rounds"
done
awk '
  { v[$1, ++n[$1]] = $2; if ($1 == "tasks_async_per_s") { for (k in last) printf "%s %.0f (%.2f of rayhpc bench tasks_async_per_s %.0f)\n", k, last[k], last[k] / $2, $2; delete last } else last[$1] = $2 }
  function median(k,   i, j, t, m) { m = n[k]; for (i = 1; i <= m; i++) a[i] = v[k, i]
    for (i = 1; i <= m; i++) for (j = i + 1; j <= m; j++) if (a[j] < a[i]) { t = a[i]; a[i] = a[j]; a[j] = t }
    return a[int((m + 1) / 2)] }
  END { r = median("tasks_async_per_s")
    for (k in n) if (k != "tasks_async_per_s") printf "median of %d rounds: %s %.0f (%.2f of rayhpc bench tasks_async_per_s %.0f)\n", n[k], k, median(k), median(k) / r, r }
' "$rounds"
