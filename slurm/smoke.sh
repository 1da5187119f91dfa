#!/usr/bin/env bash
# Self-check of the namespace Slurm cluster (root; works on a fresh Debian 12 machine): installs
# what it needs, brings up ctl + 3 nodes, and checks hostnames, Slurm's task environment, TCP
# between tasks on different nodes, Open MPI under `srun --mpi=pmix` and `mpirun` inside an
# `sbatch --wait` allocation, and the job templates. Tears the cluster down on exit, always.
#
#   slurm/smoke.sh        exits non-zero, with a message saying what failed, on any failure
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
cluster=$here/cluster.sh
export RHPC_SLURM_BASE=${RHPC_SLURM_BASE:-/tmp/rayhpc-slurm}
base=$RHPC_SLURM_BASE
work=$base/smoke                      # on the shared file system: every node sees it
nodes=3

step() { printf '\n== %s\n' "$*"; }
fail() {
  echo "smoke.sh: FAIL: $*" >&2
  echo "smoke.sh: logs: $base/log/ (kept after the cluster is down)" >&2
  exit 1
}
now() { date +%s.%N; }
since() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.2f", b - a }'; }
on_ctl() { "$cluster" exec ctl "$@"; }     # Slurm clients run in the controller's namespace

[ "$(id -u)" = 0 ] || fail "must run as root"
trap '"$cluster" down || echo "smoke.sh: cluster.sh down failed" >&2' EXIT

step "install (gcc and python3 too: mpicc and the TCP check use them)"
t0=$(now)
"$cluster" install gcc libc6-dev python3 || fail "cluster.sh install"
t_install=$(since "$t0")

step "up $nodes"
t0=$(now)
"$cluster" up $nodes || fail "cluster.sh up $nodes"
t_up=$(since "$t0")
"$cluster" up $nodes | tee "$base/up-again.txt" || fail "a second cluster.sh up $nodes"
grep -q 'already up' "$base/up-again.txt" || fail "a second 'up $nodes' did not find the cluster up"
rm -rf "$work"
mkdir -p "$work"

step "srun hostname: one task per node, each with the node's hostname"
t0=$(now)
on_ctl srun -N$nodes --ntasks-per-node=1 hostname > "$work/hostname.txt" || fail "srun hostname"
t_srun=$(since "$t0")
cat "$work/hostname.txt"
[ "$(sort "$work/hostname.txt" | tr '\n' ' ')" = "node1 node2 node3 " ] \
  || fail "srun hostname printed '$(tr '\n' ' ' < "$work/hostname.txt")', not node1 node2 node3"

step "srun printenv: SLURM_PROCID, SLURM_NODEID, SLURM_JOB_NODELIST per task"
# -l labels each line with its task ("0: ..."); printenv prints the three values in order.
on_ctl srun -l -N$nodes --ntasks-per-node=1 printenv SLURM_PROCID SLURM_NODEID SLURM_JOB_NODELIST > "$work/env.txt" \
  || fail "srun printenv"
sort -s -n -k1,1 "$work/env.txt" | tee "$work/env.sorted.txt"
awk -F': ' -v n=$nodes '
  { v[$1] = v[$1] " " $2; c[$1]++ }
  END {
    for (t = 0; t < n; t++)    # task t: its rank t, on the t-th node (one task per node, in order)
      if (v[t] != " " t " " t " node[1-" n "]") { print "task " t ":" v[t] " (want " t " " t " node[1-" n "])"; bad = 1 }
    if (length(c) != n) { print length(c) " tasks, want " n; bad = 1 }
    exit bad
  }' "$work/env.txt" || fail "wrong Slurm task environment (above)"

step "TCP between tasks on different nodes, by hostname"
cat > "$work/tcp.py" <<'EOF'
import os, socket, sys, time
host, port = socket.gethostname(), 34567
if os.environ["SLURM_PROCID"] == "0":          # on node1: listen, answer one connection
    server = socket.create_server(("", port))
    server.settimeout(30)
    conn, (addr, _) = server.accept()
    said = conn.recv(100).decode()
    conn.sendall(f"ack from {host}".encode())
    print(f"{host} listened; got '{said}' from {addr}")
else:                                           # on node2: connect to node1 by name
    deadline = time.time() + 30
    while True:
        try:
            conn = socket.create_connection((sys.argv[1], port), timeout=5)
            break
        except OSError:
            if time.time() > deadline:
                raise
            time.sleep(0.1)
    conn.sendall(f"hello from {host}".encode())
    print(f"{host} connected; got '{conn.recv(100).decode()}'")
EOF
on_ctl srun -N2 -w node1,node2 --ntasks-per-node=1 python3 "$work/tcp.py" node1 > "$work/tcp.txt" \
  || fail "the TCP job step failed: $(cat "$work/tcp.txt")"
cat "$work/tcp.txt"
grep -qx "node1 listened; got 'hello from node2' from 10.87.0.12" "$work/tcp.txt" || fail "node1 did not hear node2"
grep -qx "node2 connected; got 'ack from node1'" "$work/tcp.txt" || fail "node2 did not hear node1"

step "Open MPI: hello under srun --mpi=pmix"
cat > "$work/hello.c" <<'EOF'
#include <mpi.h>
#include <stdio.h>
int main(int argc, char **argv) {
  int rank, size, sum, len;
  char host[MPI_MAX_PROCESSOR_NAME];
  MPI_Init(&argc, &argv);
  MPI_Comm_rank(MPI_COMM_WORLD, &rank);
  MPI_Comm_size(MPI_COMM_WORLD, &size);
  MPI_Get_processor_name(host, &len);
  MPI_Allreduce(&rank, &sum, 1, MPI_INT, MPI_SUM, MPI_COMM_WORLD); /* real traffic between nodes */
  printf("rank %d size %d host %s sum %d\n", rank, size, host, sum);
  MPI_Finalize();
  return 0;
}
EOF
mpicc -O2 -o "$work/hello" "$work/hello.c" || fail "mpicc"
# FILE holds one line per rank: world size $nodes, $nodes distinct hostnames, the right sum.
check_hello() {
  local file=$1 what=$2
  cat "$file"
  awk -v n=$nodes '
    $1 == "rank" { ranks++; if ($4 != n) bad = "a world size of " $4; if ($8 != n * (n - 1) / 2) bad = "an allreduce sum of " $8; hosts[$6] = 1 }
    END {
      if (ranks != n) bad = ranks + 0 " ranks";
      if (length(hosts) != n) bad = length(hosts) " distinct hosts";
      if (bad != "") { print bad " (want " n ")"; exit 1 }
    }' "$file" || fail "$what: wrong output (above)"
}
on_ctl srun -N$nodes --ntasks-per-node=1 --mpi=pmix "$work/hello" > "$work/mpi-srun.txt" 2>&1 \
  || fail "srun --mpi=pmix hello: $(cat "$work/mpi-srun.txt")"
check_hello "$work/mpi-srun.txt" "srun --mpi=pmix"

step "Open MPI: mpirun inside sbatch --wait"
cat > "$work/mpirun.sbatch" <<EOF
#!/bin/bash
#SBATCH -N $nodes --ntasks-per-node=1 --output=$work/mpirun-%j.out
mpirun --allow-run-as-root $work/hello
EOF
t0=$(now)
job=$(on_ctl sbatch --parsable --wait "$work/mpirun.sbatch") \
  || fail "sbatch --wait of mpirun failed: $(cat "$work"/mpirun-*.out 2>/dev/null)"
t_sbatch=$(since "$t0")
check_hello "$work/mpirun-$job.out" "mpirun in sbatch"

step "the job templates, with a stand-in rayhpc that says where it runs"
mkdir -p "$work/bin"
cat > "$work/bin/rayhpc" <<'EOF'
#!/bin/sh
echo "rayhpc $* | host $(hostname) rank ${OMPI_COMM_WORLD_RANK:-$SLURM_PROCID}"
EOF
chmod +x "$work/bin/rayhpc"
for t in job.sbatch mpi-job.sbatch; do
  bash -n "$here/$t" || fail "$t: shell syntax"
  on_ctl sbatch --test-only "$here/$t" > "$work/test-only.txt" 2>&1 || true
  grep -q 'to start at' "$work/test-only.txt" || fail "$t: sbatch --test-only refused it: $(cat "$work/test-only.txt")"
  # The template as a user fills it in: the stand-in's directory for the rayhpc binary's.
  sed "s|/path/to/rayhpc/target/release|$work/bin|" "$here/$t" > "$work/$t"
  job=$(on_ctl sbatch --parsable --wait --chdir="$work" "$work/$t") || fail "$t: the job failed"
  out=$(ls "$work"/rayhpc*-"$job".out) || fail "$t: no output file"
  cat "$out"
  # "rayhpc launch -- python driver.py | host nodeI rank R": fields 8 and 10
  [ "$(grep -c '^rayhpc launch -- python driver.py | host node[12] rank [01]$' "$out")" = 2 ] \
    && [ "$(awk '/^rayhpc/ { print $8 }' "$out" | sort | tr '\n' ' ')" = "node1 node2 " ] \
    && [ "$(awk '/^rayhpc/ { print $10 }' "$out" | sort | tr '\n' ' ')" = "0 1 " ] \
    || fail "$t: want one 'rayhpc launch' on each of 2 nodes, ranks 0 and 1"
done

step "status, down"
"$cluster" status
trap - EXIT
"$cluster" down || fail "cluster.sh down"
[ -z "$(ip netns list | awk '$1 ~ /^rhpc-/')" ] || fail "namespaces left: $(ip netns list)"
# Daemons of this cluster: started with -f $base/slurm.conf (its stepds died with the namespaces).
! pgrep -f -- "-f $base/slurm.conf" >/dev/null || fail "daemons left: $(pgrep -a -f -- "-f $base/slurm.conf")"

echo
echo "smoke.sh: OK   install: ${t_install} s   up $nodes nodes: ${t_up} s   first srun: ${t_srun} s   sbatch --wait (mpirun): ${t_sbatch} s"
