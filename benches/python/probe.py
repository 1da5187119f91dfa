"""Start-up, latency, large-object and memory figures of one runtime, as JSON on stdout.

    python probe.py            # rayhpc (import rayhpc as ray)
    python probe.py --ray      # Ray, with the identical code

Measures, in this order: the time from `init()` to the first task's result (and from the
start of the import); the median round trip of `get(f.remote())` and of an actor call over
2000 calls; the resident memory of the whole process tree (the driver and
every process it started) after the runtime sat idle for 5 s with its workers started
(measured before the 1 GiB test, whose store pages would stay resident); `put` of a 1 GiB
numpy array (best of 3, and the first) and `get` of it (zero-copy when the array is
read-only and a view of the store's memory).
"""

import json
import os
import statistics
import sys
import time

T0 = time.perf_counter()
RAY = "--ray" in sys.argv
if RAY:
    import ray
else:
    import rayhpc as ray
import numpy as np

T_IMPORTED = time.perf_counter()


def tree_rss(root):
    """Resident bytes of `root` and all its descendants (from /proc)."""
    children = {}
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, IndexError, ValueError):
            continue
        children.setdefault(ppid, []).append(int(pid))
    total, count, todo = 0, 0, [root]
    while todo:
        p = todo.pop()
        try:
            with open(f"/proc/{p}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
            count += 1
        except OSError:
            pass
        todo.extend(children.get(p, []))
    return total, count


def main():
    out = {"runtime": "ray " + ray.__version__ if RAY else "rayhpc " + ray.__version__}
    t = time.perf_counter()
    ray.init(num_cpus=2, **({"include_dashboard": False} if RAY else {}))

    @ray.remote
    def f():
        return b"ok"

    assert ray.get(f.remote()) == b"ok"
    now = time.perf_counter()
    out["init_to_first_result_s"] = now - t
    out["import_to_first_result_s"] = now - T0
    out["import_s"] = T_IMPORTED - T0

    for _ in range(200):
        ray.get(f.remote())
    lat = []
    for _ in range(2000):
        s = time.perf_counter()
        ray.get(f.remote())
        lat.append(time.perf_counter() - s)
    out["tasks_sync_median_us"] = statistics.median(lat) * 1e6

    @ray.remote
    class A:
        def f(self):
            return b"ok"

    a = A.remote()
    ray.get(a.f.remote())
    lat = []
    for _ in range(2000):
        s = time.perf_counter()
        ray.get(a.f.remote())
        lat.append(time.perf_counter() - s)
    out["actor_sync_median_us"] = statistics.median(lat) * 1e6

    ray.kill(a)
    # Idle: the workers of two CPUs started, then nothing for 5 s.
    ray.get([f.remote() for _ in range(4)])
    time.sleep(5)
    rss, procs = tree_rss(os.getpid())
    out["idle_rss_mb"] = rss / 1e6
    out["idle_processes"] = procs

    arr = np.ones(1 << 30, dtype=np.uint8)  # 1 GiB, pages touched
    puts = []
    for _ in range(3):
        s = time.perf_counter()
        r = ray.put(arr)
        puts.append(time.perf_counter() - s)
        if _ < 2:
            del r
    out["put_1gib_best_gib_s"] = 1 / min(puts)
    out["put_1gib_first_gib_s"] = 1 / puts[0]
    s = time.perf_counter()
    b = ray.get(r)
    out["get_1gib_ms"] = (time.perf_counter() - s) * 1e3
    out["get_1gib_zero_copy"] = bool(not b.flags.writeable and b.base is not None)
    out["get_1gib_equal"] = bool(b[0] == 1 and b[-1] == 1)
    del b, r, arr

    s = time.perf_counter()
    ray.shutdown()
    out["shutdown_s"] = time.perf_counter() - s
    print(json.dumps(out))


if __name__ == "__main__":
    main()
