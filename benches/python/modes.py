"""Empty Python tasks per second, embedded (`ray.init()` in the driver) against attached (the
driver under a one-node `rayhpc launch`, talking to the node runtime over its ring) and a
3-node cluster on loopback (the driver on the head, one CPU per node, tasks spread over the
nodes), in alternated rounds, with the CPU time per task summed over every process of the
run (driver, nodes, workers: every process under this script, from /proc, over the timed
window).

    python3 benches/python/modes.py [--rounds 5] [--seconds 2] [--rayhpc target/release/rayhpc]

The workload is `ray microbenchmark`'s single_client_tasks_async: batches of 1000 empty
tasks submitted, then all got. Figures are printed, not asserted.
"""

import argparse
import os
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

DRIVER = r"""
import os, sys, time
import rayhpc as ray

def tree_cpu(root):
    # CPU seconds of `root` and every process under it (the node, the driver, the workers).
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            try:
                with open(f"/proc/{d}/stat") as f:
                    rest = f.read().rsplit(")", 1)[1].split()
                stats[int(d)] = (int(rest[1]), int(rest[11]) + int(rest[12]))
            except OSError:
                pass
    keep, grew = {root}, True
    while grew:
        more = {p for p, (pp, _) in stats.items() if pp in keep} - keep
        grew = bool(more)
        keep |= more
    keep.discard(root)  # the harness itself, which only waits
    return sum(stats[p][1] for p in keep if p in stats) / os.sysconf("SC_CLK_TCK")

ray.init(**({} if os.environ.get("RAYHPC_ADDRESS") else {"num_cpus": 2}))
@ray.remote
def empty():
    pass
def batch():
    ray.get([empty.remote() for _ in range(1000)])
end = time.perf_counter() + 0.5
while time.perf_counter() < end:
    batch()
root = int(os.environ["BENCH_ROOT"])
cpu0 = tree_cpu(root)
n, start, deadline = 0, time.perf_counter(), time.perf_counter() + float(sys.argv[1])
while time.perf_counter() < deadline:
    batch()
    n += 1000
elapsed = time.perf_counter() - start
cpu = tree_cpu(root) - cpu0
print(f"RATE {n / elapsed:.1f} CPU_US {cpu / n * 1e6:.2f}", flush=True)
ray.shutdown()
"""


def cluster(a, env, nodes=3):
    """`nodes` node runtimes on loopback, as srun starts them (rank 0 runs the driver)."""
    import tempfile
    tmp = tempfile.mkdtemp(prefix="rayhpc-modes-")
    def step(rank):
        e = dict(env)
        e.update({"SLURM_JOB_ID": f"modes{os.getpid()}", "SLURM_STEP_ID": "0", "SLURM_PROCID": str(rank), "SLURM_LOCALID": "0",
                  "SLURM_STEP_NUM_TASKS": str(nodes), "SLURM_STEP_NUM_NODES": str(nodes),
                  "RAYHPC_RENDEZVOUS_DIR": os.path.join(tmp, "rdv"), "RAYHPC_RUNTIME_DIR": os.path.join(tmp, "rt")})
        return e
    base = [a.rayhpc, "launch", "--interface", "127.0.0.1", "--num-cpus", "1", "--python", a.python]
    members = [subprocess.Popen(base, env=step(r), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL) for r in range(1, nodes)]
    try:
        return run(base + ["--", a.python, "-c", DRIVER, str(a.seconds)], step(0))
    finally:
        for m in members:
            m.wait(timeout=60)


def run(cmd, env):
    out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=300)
    line = [l for l in out.stdout.splitlines() if l.startswith("RATE ")]
    if out.returncode != 0 or not line:
        raise SystemExit(f"{cmd} failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")
    _, rate, _, cpu = line[0].split()
    return float(rate), float(cpu)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--rayhpc", default=os.path.join(ROOT, "target", "release", "rayhpc"))
    p.add_argument("--python", default=sys.executable)
    a = p.parse_args()
    env = dict(os.environ)
    env.pop("RAYHPC_ADDRESS", None)
    env["BENCH_ROOT"] = str(os.getpid())
    modes = {
        "embedded": lambda: run([a.python, "-c", DRIVER, str(a.seconds)], env),
        "attached": lambda: run([a.rayhpc, "launch", "--num-cpus", "2", "--python", a.python, "--", a.python, "-c", DRIVER, str(a.seconds)], env),
        "3 nodes": lambda: cluster(a, env),
    }
    got = {m: [] for m in modes}
    for r in range(a.rounds):
        for m, go in modes.items():
            rate, cpu = go()
            got[m].append((rate, cpu))
            print(f"round {r} {m:9s} {rate:10.0f} tasks/s  {cpu:7.1f} µs CPU per task", flush=True)
    med = {m: (statistics.median(x for x, _ in v), statistics.median(c for _, c in v)) for m, v in got.items()}
    for m, (rate, cpu) in med.items():
        print(f"median {m:9s} {rate:10.0f} tasks/s  {cpu:7.1f} µs CPU per task")
    for m in ("attached", "3 nodes"):
        print(f"{m} / embedded: {med[m][0] / med['embedded'][0]:.2f} (rate), {med[m][1] / med['embedded'][1]:.2f} (CPU per task)")


if __name__ == "__main__":
    main()
