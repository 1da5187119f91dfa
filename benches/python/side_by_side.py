"""rayhpc and Ray side by side on this machine, in one run.

    python3 benches/python/side_by_side.py [--trial-seconds 2] [--out target/side-by-side.md]

Sets up what is missing: a venv with Ray (`target/ray-venv`, `pip install ray==2.60.0
numpy`) and one with rayhpc (`target/venv`, `pip install ./bindings/python[test]`). Then,
one runtime after the other (never both at once): `probe.py` (start-up, sync latency, idle
memory, 1 GiB put/get) and the microbenchmark (`rayhpc.microbenchmark`, whose `--ray` mode
runs the identical workloads on Ray). Prints one table, writes it as Markdown with the raw
figures as JSON beside it, and checks the figures the Python issue asks for.
"""

import argparse
import json
import os
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
RAY_VERSION = "2.60.0"


def sh(cmd, **kw):
    print("+", " ".join(cmd), file=sys.stderr, flush=True)
    return subprocess.run(cmd, check=True, **kw)


def venv(path, packages, check):
    py = os.path.join(path, "bin", "python")
    if os.path.exists(py) and subprocess.run([py, "-c", check], capture_output=True).returncode == 0:
        return py
    if not os.path.exists(py):
        sh([sys.executable, "-m", "venv", path])
    sh([py, "-m", "pip", "install", "-q", "--upgrade", "pip"])
    sh([py, "-m", "pip", "install", "-q", *packages], cwd=ROOT)
    return py


def run_json(cmd):
    p = sh(cmd, capture_output=True, text=True, cwd=ROOT)
    return json.loads(p.stdout.strip().splitlines()[-1])


def microbenchmark(py, ray, trial_seconds, out):
    cmd = [py, os.path.join(ROOT, "bindings/python/python/rayhpc/microbenchmark.py"), "--json", out,
           "--trial-seconds", str(trial_seconds)]
    if ray:
        cmd.append("--ray")
    else:
        cmd = [py, "-m", "rayhpc.microbenchmark", "--json", out, "--trial-seconds", str(trial_seconds)]
    p = sh(cmd, capture_output=True, text=True, cwd="/tmp")
    sys.stderr.write(p.stdout)
    with open(out) as f:
        return {k: v[0] for k, v in json.load(f).items()}


def fmt(v):
    if v is None:
        return "—"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--trial-seconds", type=float, default=2.0)
    p.add_argument("--out", default=os.path.join(ROOT, "target", "side-by-side.md"))
    p.add_argument("--ray-python", help="a Python with Ray installed (default: make target/ray-venv)")
    p.add_argument("--rayhpc-python", help="a Python with rayhpc installed (default: make target/venv)")
    args = p.parse_args()
    os.makedirs(os.path.dirname(args.out), exist_ok=True)
    ray_py = args.ray_python or venv(os.path.join(ROOT, "target", "ray-venv"), [f"ray=={RAY_VERSION}", "numpy"], "import ray, numpy")
    hpc_py = args.rayhpc_python or venv(os.path.join(ROOT, "target", "venv"), ["./bindings/python[test]"], "import rayhpc, numpy")
    probe = os.path.join(ROOT, "benches", "python", "probe.py")

    t = time.time()
    figures = {"machine": {"cpus": os.cpu_count(), "kernel": os.uname().release}}
    figures["rayhpc_probe"] = run_json([hpc_py, probe])
    figures["ray_probe"] = run_json([ray_py, probe, "--ray"])
    figures["rayhpc_micro"] = microbenchmark(hpc_py, False, args.trial_seconds, "/tmp/rayhpc-micro.json")
    figures["ray_micro"] = microbenchmark(ray_py, True, args.trial_seconds, "/tmp/ray-micro.json")
    figures["seconds"] = time.time() - t

    hp, rp = figures["rayhpc_probe"], figures["ray_probe"]
    hm, rm = figures["rayhpc_micro"], figures["ray_micro"]
    rows = [("probe", k, hp.get(k), rp.get(k)) for k in hp if k != "runtime"]
    names = list(hm) + [k for k in rm if k not in hm]
    rows += [("per second", k, hm.get(k), rm.get(k)) for k in names]
    lines = [
        f"# rayhpc ({hp['runtime']}) and Ray ({rp['runtime']}) side by side",
        "",
        f"{figures['machine']['cpus']} CPUs, Linux {figures['machine']['kernel']}; both with `init(num_cpus=2)` "
        f"(the microbenchmark: default init); run took {figures['seconds']:.0f} s.",
        "",
        "| figure | metric | rayhpc | Ray | rayhpc / Ray |",
        "|---|---|---:|---:|---:|",
    ]
    for kind, k, a, b in rows:
        ratio = a / b if isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool) and b else None
        lines.append(f"| {kind} | {k} | {fmt(a)} | {fmt(b)} | {fmt(ratio) + '×' if ratio else '—'} |")

    checks = [
        ("empty tasks in a batch >= 50 000/s", hm.get("single_client_tasks_async", 0) >= 50_000),
        ("sync round trip median <= 50 us", hp["tasks_sync_median_us"] <= 50),
        ("actor calls, async batch >= 50 000/s", hm.get("1_1_actor_calls_async", 0) >= 50_000),
        ("put of 1 GiB numpy at least as fast as Ray (best of 3)", hp["put_1gib_best_gib_s"] >= rp["put_1gib_best_gib_s"]),
        ("get of 1 GiB numpy zero-copy", hp["get_1gib_zero_copy"]),
        ("init() to first result <= 1 s", hp["init_to_first_result_s"] <= 1.0),
        ("idle runtime + workers <= 150 MB RSS", hp["idle_rss_mb"] <= 150),
    ]
    lines += ["", "| the issue asks | holds |", "|---|---|"]
    lines += [f"| {c} | {'yes' if ok else 'NO'} |" for c, ok in checks]
    text = "\n".join(lines) + "\n"
    print(text)
    with open(args.out, "w") as f:
        f.write(text)
    with open(os.path.splitext(args.out)[0] + ".json", "w") as f:
        json.dump(figures, f, indent=1)
    return 0 if all(ok for _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
