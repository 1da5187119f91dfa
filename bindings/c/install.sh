#!/usr/bin/env bash
# Builds librayhpc (release) and installs the shared and static library, rayhpc.h and
# rayhpc.pc into PREFIX (default /usr/local; any writable prefix works without root):
#
#   bindings/c/install.sh [PREFIX]
#   export PKG_CONFIG_PATH=PREFIX/lib/pkgconfig   # when PREFIX is not a system one
#   cc hello.c $(pkg-config --cflags --libs rayhpc) -o hello
set -euo pipefail
# The prefix as given, resolved from where the command runs (before moving to the source).
prefix="${1:-/usr/local}"
prefix="$(mkdir -p "$prefix" && cd "$prefix" && pwd)"
cd "$(dirname "$0")/../.."
cargo build --release --locked -p rayhpc-c
# Wherever cargo builds (CARGO_TARGET_DIR, build.target-dir), not a guessed target/.
target_dir="$(cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')"
[ -n "$target_dir" ] || { echo "cannot find cargo's target directory" >&2; exit 1; }
version="$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -1)"
install -d "$prefix/lib/pkgconfig" "$prefix/include"
install -m 0755 "$target_dir/release/librayhpc.so" "$prefix/lib/librayhpc.so"
install -m 0644 "$target_dir/release/librayhpc.a" "$prefix/lib/librayhpc.a"
install -m 0644 bindings/c/include/rayhpc.h "$prefix/include/rayhpc.h"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" bindings/c/rayhpc.pc.in > "$prefix/lib/pkgconfig/rayhpc.pc"
# A system prefix: refresh the loader's cache (the .pc file also sets an rpath).
if [ "$(id -u)" = 0 ] && command -v ldconfig >/dev/null; then ldconfig "$prefix/lib" 2>/dev/null || true; fi
echo "installed librayhpc $version into $prefix"
