#!/usr/bin/env bash
# The whole test suite of rayhpc, as CI runs it. Works on a fresh Debian 12 machine that has
# the Rust toolchain (rustup's default profile): it installs what else it needs.
#
#   ci/test.sh            everything
#   ci/test.sh quick      formatting, lints and the unit/integration tests only
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n== %s\n' "$*"; }
have() { command -v "$1" >/dev/null 2>&1; }
as_root() { if [ "$(id -u)" = 0 ]; then "$@"; elif have sudo; then sudo "$@"; else "$@"; fi; }

step "prerequisites"
# A C compiler: rustc links through it, and mimalloc (the launcher's allocator) is C.
# hwloc and udev headers: for the optional `hwloc` topology backend of rayhpc-sched.
pkgs=()
have cc || pkgs+=(gcc libc6-dev)
have pkg-config || pkgs+=(pkg-config)
{ have pkg-config && pkg-config --exists hwloc libudev; } || pkgs+=(libhwloc-dev libudev-dev)
# libfabric's headers: the RDMA fabric backend (feature `fabric` of the transport, cluster and
# launcher), tested over its tcp;ofi_rxm and shm providers (no RDMA device here).
{ have pkg-config && pkg-config --exists libfabric; } || pkgs+=(libfabric-dev)
# Python 3 with venv and pip: the Python package is built (maturin, from PyPI) and tested.
have python3 || pkgs+=(python3)
{ have python3 && python3 -c "import ensurepip, venv" >/dev/null 2>&1; } || pkgs+=(python3-venv python3-pip)
# valgrind: the C examples are checked for memory errors and leaks.
have valgrind || pkgs+=(valgrind)
have c++ || pkgs+=(g++)
if [ ${#pkgs[@]} -gt 0 ]; then
  as_root apt-get update -qq
  as_root env DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${pkgs[@]}"
fi
for comp in rustfmt clippy; do
  if ! cargo "${comp/rustfmt/fmt}" --version >/dev/null 2>&1; then
    rustup component add "$comp"
  fi
done
cargo --version && cc --version | head -1

step "format"
cargo fmt --all -- --check

step "module cycles (each crate's top-level modules form layers)"
python3 ci/module-cycles.py core/src sched/src objstore/src transport/src node/src cluster/src launcher/src bindings/c/src bindings/python/src

step "clippy (all targets, all features, warnings are errors)"
cargo clippy --workspace --all-targets --all-features --locked -- -D warnings

step "unit, integration and doc tests"
cargo test --workspace --locked

step "the fabric backend (libfabric: tcp;ofi_rxm and shm providers)"
cargo test -p rayhpc-transport --features fabric --locked
cargo test -p rayhpc-cluster --features fabric --locked
cargo test -p rayhpc-launcher --features fabric --locked --test cli

step "the hwloc topology backend"
cargo test -p rayhpc-sched --features hwloc --locked --lib

step "object arena without and with 2 MiB hugepages reserved"
if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/nr_hugepages ]; then
  old=$(cat /proc/sys/vm/nr_hugepages)
  for n in 0 64; do
    echo "$n" > /proc/sys/vm/nr_hugepages
    echo "nr_hugepages=$n"
    cargo test -p rayhpc-objstore --locked --test arena -- --nocapture
  done
  echo "$old" > /proc/sys/vm/nr_hugepages
else
  echo "not root: the arena test ran once above with the machine's hugepage pool as it is"
fi

step "the Python package: pip install ./bindings/python, then its pytest suite"
# A venv of the project's own (Debian's system Python refuses pip installs); pip builds the
# extension with maturin in release mode, into this workspace's target directory.
[ -x target/venv/bin/python ] || python3 -m venv target/venv
target/venv/bin/python -m pip install -q --upgrade pip
target/venv/bin/python -m pip install -q './bindings/python[test]'
# The launcher the cluster tests start, with the fabric backend (they run both paths).
cargo build --locked -q -p rayhpc-launcher --features fabric
# The API suite also runs on a 2-node namespace Slurm cluster (test_api_modes.py): Slurm and
# munge first (root only; without them that mode is skipped and says why).
if [ "$(id -u)" = 0 ]; then bash slurm/cluster.sh install; fi
target/venv/bin/python -m pytest -q bindings/python/tests

[ "${1:-}" = quick ] && exit 0

step "the C API: header, install, examples, bad inputs, valgrind"
bash ci/c-api.sh

step "a real Slurm cluster (munge, slurmctld, 3 slurmd in network namespaces) with Open MPI; rayhpc launch across it"
if [ "$(id -u)" = 0 ]; then
  bash slurm/smoke.sh
  cargo build --locked -q -p rayhpc-launcher --features fabric
  # The bench across nodes runs the release build (its figures are the ones reported).
  cargo build --locked -q --release -p rayhpc-launcher --features fabric
  RAYHPC_C_PREFIX="$PWD/target/c-prefix" bash slurm/launch-test.sh
else
  echo "not root: network namespaces cannot be made; the Slurm cluster is not tested here"
fi

step "loom model check of the executors' idle protocol, the object table's pins and the rings' sleep handshake"
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
  cargo test -p rayhpc-sched --release --locked --test loom_sleep --test loom_signal
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=2 CARGO_TARGET_DIR=target/loom \
  cargo test -p rayhpc-objstore --release --locked --test loom_pin
RUSTFLAGS="--cfg loom" LOOM_MAX_PREEMPTIONS=3 CARGO_TARGET_DIR=target/loom \
  cargo test -p rayhpc-objstore --release --locked --test loom_ring

step "criterion benches, each run once as a test"
cargo bench --workspace --locked -- --test

step "rayhpc bench (figures for the log; targets are judged by people, not asserted)"
# Without hugepages (the store falls back, and says which backing it got), then with 3 GiB
# of 2 MiB pages reserved for the 2.5 GiB store and the spill figures' 256 MiB store.
cargo run --release --locked -p rayhpc-launcher -- bench
if [ "$(id -u)" = 0 ] && [ -w /proc/sys/vm/nr_hugepages ]; then
  old=$(cat /proc/sys/vm/nr_hugepages)
  echo 1536 > /proc/sys/vm/nr_hugepages
  echo "nr_hugepages=$(cat /proc/sys/vm/nr_hugepages)"
  cargo run --release --locked -p rayhpc-launcher -- bench --json
  echo "$old" > /proc/sys/vm/nr_hugepages
else
  cargo run --release --locked -p rayhpc-launcher -- bench --json
fi
