#!/usr/bin/env bash
# `rayhpc launch` across the nodes of a real Slurm cluster (cluster.sh: one network namespace
# and one slurmd per node), started by srun and by Open MPI's mpirun inside an allocation:
# every node joins the head, the driver runs once on rank 0 and sees the whole cluster, the
# step ends with the driver's exit code and leaves nothing behind. Prints the time from srun
# to the driver's first line (a figure, not asserted).
#
#   slurm/launch-test.sh            (root; RAYHPC_BIN, RAYHPC_PYTHON override the defaults)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
rayhpc=${RAYHPC_BIN:-$root/target/debug/rayhpc}
python=${RAYHPC_PYTHON:-$root/target/venv/bin/python}
cluster="$root/slurm/cluster.sh"
nodes=3

say() { echo "launch-test.sh: $*"; }
die() { echo "launch-test.sh: FAILED: $*" >&2; exit 1; }
[ -x "$rayhpc" ] || die "no rayhpc binary at $rayhpc (cargo build -p rayhpc-launcher)"
"$python" -c "import rayhpc" 2>/dev/null || die "$python cannot import rayhpc (pip install ./bindings/python)"

work=$(mktemp -d /tmp/rayhpc-launch-test.XXXXXX)
chmod 755 "$work"
trap 'bash "$cluster" down >/dev/null 2>&1 || true; rm -rf "$work"' EXIT
# One node more than the launches below use: the broadcast bench (step 4) spreads an object
# from the head to 3 other nodes.
bash "$cluster" up $((nodes + 1)) >/dev/null
on_ctl() { (cd "$work" && bash "$cluster" exec ctl "$@"); }

cat > "$work/driver.py" <<'EOF'
import os, socket, sys, time
print(f"first line at {time.time():.6f} on {socket.gethostname()}", flush=True)
import rayhpc as ray
ray.init()
cpus = ray.cluster_resources()["CPU"]
@ray.remote
def f(x):
    return x * 2
print(f"cluster CPUs {cpus:g}, sum {sum(ray.get([f.remote(i) for i in range(100)]))}", flush=True)
sys.exit(int(os.environ.get("EXIT_CODE", "0")))
EOF

# 1. srun, one launch per node: the driver runs once, on the head's node, and sees every
#    node's CPUs (Slurm gives each task one CPU here).
start=$(date +%s.%N)
out=$(on_ctl env EXIT_CODE=3 srun -N"$nodes" --ntasks-per-node=1 --chdir="$work" \
  "$rayhpc" launch --python "$python" -- "$python" "$work/driver.py" 2>"$work/srun.err") && rc=0 || rc=$?
echo "$out"
[ "$rc" = 3 ] || { cat "$work/srun.err"; die "srun exited $rc, not the driver's 3"; }
[ "$(grep -c '^first line' <<<"$out")" = 1 ] || die "the driver did not run exactly once"
grep -q "^first line at .* on node1$" <<<"$out" || die "the driver did not run on the head's node (node1)"
grep -qx "cluster CPUs $nodes, sum 9900" <<<"$out" || { cat "$work/srun.err"; die "the driver did not see $nodes nodes"; }
grep -q "cluster up: $nodes nodes" "$work/srun.err" || die "the head did not report the cluster up"
first=$(sed -n 's/^first line at \([0-9.]*\) .*/\1/p' <<<"$out")
srun_to_first=$(python3 -c "print(f'{$first - $start:.2f}')")
say "srun -N$nodes: driver ran once on node1, saw $nodes CPUs, exit code 3 passed through"

# Nothing left: no rendezvous directory, no node runtime process.
[ -z "$(ls -A "$work/.rayhpc" 2>/dev/null)" ] || die "the rendezvous directory was left: $(ls -R "$work/.rayhpc")"
if pgrep -f "$rayhpc launch" >/dev/null; then die "a node runtime outlived its step: $(pgrep -af "$rayhpc launch")"; fi

# 2. More tasks than nodes: one node runtime per host, the other ranks start none.
out=$(on_ctl srun -N"$nodes" --ntasks-per-node=2 --chdir="$work" \
  "$rayhpc" launch --python "$python" -- "$python" "$work/driver.py" 2>"$work/srun2.err")
grep -qx "cluster CPUs $((2 * nodes)), sum 9900" <<<"$out" || { echo "$out"; cat "$work/srun2.err"; die "2 tasks per node: not one runtime per host"; }
[ "$(grep -c 'this rank starts none' "$work/srun2.err")" = "$nodes" ] || die "the second rank of each host did not stand aside"
say "srun --ntasks-per-node=2: one node runtime per host ($((2 * nodes)) CPUs), the second ranks stood aside"

# 2b. A C driver: attached to the head's node, its library:symbol tasks spread over the nodes
#     (each loads the library), the sum checked.
if [ -n "${RAYHPC_C_PREFIX:-}" ]; then
  export PKG_CONFIG_PATH="$RAYHPC_C_PREFIX/lib/pkgconfig"
  cc -std=c99 -shared -fPIC "$root/examples/c/square.c" $(pkg-config --cflags --libs rayhpc) -o "$work/libsquare.so"
  cc -std=c99 "$root/examples/c/cluster.c" $(pkg-config --cflags --libs rayhpc) -o "$work/cluster"
  out=$(on_ctl srun -N"$nodes" --ntasks-per-node=1 --chdir="$work" "$rayhpc" launch -- "$work/cluster" "$work/libsquare.so" 300 2>"$work/c.err") \
    || { cat "$work/c.err"; die "the C driver failed"; }
  grep -qx "sum of squares of 0..299 = 8955050" <<<"$out" || { echo "$out"; cat "$work/c.err"; die "the C driver's sum is wrong"; }
  say "srun -N$nodes with a C driver: library:symbol tasks, sum right"
  # A Rust driver (launcher/examples/attached.rs) attached to a 2-node launch: its native
  # tasks (each 50 ms, answering the pid of the node runtime that ran it) spread over both.
  cc -std=c99 -shared -fPIC "$root/launcher/examples/where.c" $(pkg-config --cflags --libs rayhpc) -o "$work/libwhere.so"
  cargo build --locked -q --manifest-path "$root/Cargo.toml" -p rayhpc-launcher --example attached
  cp "$root/target/debug/examples/attached" "$work/attached"
  out=$(on_ctl srun -N2 --ntasks-per-node=1 --chdir="$work" "$rayhpc" launch -- "$work/attached" "$work/libwhere.so:where" 16 50 2>"$work/rust.err") \
    || { cat "$work/rust.err"; die "the Rust driver failed"; }
  echo "$out"
  grep -q "^16 tasks ran on 2 nodes: " <<<"$out" || { cat "$work/rust.err"; die "the Rust driver's tasks did not spread over both nodes"; }
  grep -q "^a bad argument: task .* failed: where takes one 8-byte integer" <<<"$out" || die "the Rust driver's bad call did not fail clearly"
  say "srun -N2 with a Rust driver: its library:symbol tasks ran on both nodes"
else
  say "RAYHPC_C_PREFIX not set (bindings/c/install.sh PREFIX first): the C driver is not run"
fi

# 3. Open MPI's mpirun inside an allocation (its ranks inherit srun's variables: the MPI
#    ones must win). The batch allocation gives each node all of its CPUs (cluster.sh gives
#    each node the machine's).
cat > "$work/mpi.sbatch" <<EOF
#!/bin/bash
#SBATCH -N $nodes --ntasks-per-node=1 -o $work/mpi.out -e $work/mpi.err
mpirun --allow-run-as-root --map-by ppr:1:node "$rayhpc" launch --python "$python" -- "$python" "$work/driver.py"
EOF
on_ctl sbatch --wait "$work/mpi.sbatch" >/dev/null || { cat "$work/mpi.out" "$work/mpi.err"; die "the mpirun job failed"; }
grep -qx "cluster CPUs $((nodes * $(nproc))), sum 9900" "$work/mpi.out" || { cat "$work/mpi.out" "$work/mpi.err"; die "mpirun: the driver did not see $nodes nodes"; }
[ "$(grep -c '^first line' "$work/mpi.out")" = 1 ] || die "mpirun: the driver did not run exactly once"
say "mpirun -N$nodes (Open MPI, in sbatch): the driver saw $nodes nodes"

# 4. The bench across two nodes: the cluster's start, a raw TCP stream and an object pull
#    between node1 and node2 (figures for the log; the release binary when built).
bench_bin=$root/target/release/rayhpc
[ -x "$bench_bin" ] || bench_bin=$rayhpc
# With the fabric backend built (ci/test.sh builds it), libfabric's tcp;ofi_rxm (named: there
# is no RDMA device here) is measured beside the TCP pull and the raw stream.
fabric=()
"$bench_bin" fabric | grep -q "^providers.*tcp;ofi_rxm" && fabric=(--fabric "tcp;ofi_rxm")
on_ctl srun -N2 --ntasks-per-node=1 --chdir="$work" "$bench_bin" bench --across-nodes --object-mib 1024 --trials 3 --broadcast-mib 0 "${fabric[@]}" 2>"$work/bench.err" \
  | tee "$work/bench.out" || { cat "$work/bench.err"; die "the bench across nodes failed"; }
grep -q "object pull" "$work/bench.out" || { cat "$work/bench.err"; die "the bench printed no pull figure"; }
grep -q "byte-exact" "$work/bench.out" || { cat "$work/bench.err"; die "the bench did not check its copies"; }
# With the fabric backend built (ci/test.sh builds it), the nodes pull over libfabric's
# tcp;ofi_rxm between the namespaces, measured next to the TCP pull and the raw stream.
if grep -q "over fabric:" "$work/bench.out"; then
  grep -q "fabric pull (" "$work/bench.out" || { cat "$work/bench.err"; die "the bench printed no fabric pull figure"; }
  say "the fabric backend moved the object between namespaces, byte-exact"
fi
# A broadcast of 256 MiB from the head to the 3 other nodes at once: from the head alone, then
# as readers get it (a binomial tree: 2 rounds for 3 nodes).
on_ctl srun -N4 --ntasks-per-node=1 --chdir="$work" "$bench_bin" bench --across-nodes --object-mib 16 --trials 1 --broadcast-mib 256 \
  2>"$work/bcast.err" | tee "$work/bcast.out" || { cat "$work/bcast.err"; die "the broadcast bench failed"; }
grep -q "as a tree .* in 2 round(s)" "$work/bcast.out" || { cat "$work/bcast.out" "$work/bcast.err"; die "the broadcast did not spread in 2 rounds"; }

# 5. Every seed program (the Ray Core examples of the tutorials), unchanged, as the driver of
#    a launch on 2 nodes (2 CPUs and a nominal GPU each: one seed asks for a GPU).
seeds="$root/bindings/python/tests"
RAYHPC_SEED_RUNNER="bash $cluster exec ctl srun -N2 --ntasks-per-node=1 --chdir=$seeds/seeds $rayhpc launch --python $python --num-cpus 2 --num-gpus 1 --" \
  "$python" -m pytest -q -p no:cacheprovider "$seeds/test_seeds.py" || die "the seeds failed on the 2-node cluster"
# The same over the fabric (the objects of the seeds pulled with fi_read), when built with it.
if "$rayhpc" fabric | grep -q "^providers.*tcp;ofi_rxm"; then
  RAYHPC_SEED_RUNNER="bash $cluster exec ctl srun -N2 --ntasks-per-node=1 --chdir=$seeds/seeds $rayhpc launch --python $python --num-cpus 2 --num-gpus 1 --fabric tcp;ofi_rxm --" \
    "$python" -m pytest -q -p no:cacheprovider "$seeds/test_seeds.py" || die "the seeds failed on the 2-node cluster over the fabric"
  say "the seed programs pass over the fabric too"
fi
say "the seed programs pass unchanged on a 2-node cluster"

say "OK   srun to the driver's first line on $nodes nodes: $srun_to_first s"
