"""`python -m rayhpc.microbenchmark`: the workloads of `ray microbenchmark`, under its metric
names, printed as it prints them (`<name> per second <mean> +- <sd>`).

Each workload is the one of Ray's own microbenchmark script (ray/_private/ray_perf.py in Ray
2.60), with its multiplier: "tasks_and_get_batch" counts batches of 1000 tasks, the
"gigabytes" metrics count gigabytes (of an 800 MB array), the "async" ones single calls.
Timing: 1 s of warm-up, then 4 trials of 2 s (Ray's), or of `--trial-seconds`.

Run this file with `--ray` in an environment where Ray is installed to measure Ray itself
with the identical code (`import ray` instead of `import rayhpc as ray`). Workloads a runtime
cannot run (rayhpc has no threaded or asyncio actors yet) print why instead of a figure.
"""

import argparse
import json
import multiprocessing
import sys
import time


class Bench:
    def __init__(self, only=None, skip=None, trial_seconds=2.0, trials=4):
        self.only, self.skip = only, skip
        self.trial_seconds, self.trials = trial_seconds, trials
        self.results = {}

    def wanted(self, name):
        if self.only and not any(o in name for o in self.only):
            return False
        return not (self.skip and any(s in name for s in self.skip))

    def timeit(self, name, fn, multiplier=1):
        if not self.wanted(name):
            return
        # Ray's procedure: warm up for 1 s, then trials that run the workload in steps.
        start = time.perf_counter()
        count = 0
        while time.perf_counter() - start < min(1.0, self.trial_seconds):
            fn()
            count += 1
        step = count // 10 + 1
        rates = []
        for _ in range(self.trials):
            start = time.perf_counter()
            count = 0
            while time.perf_counter() - start < self.trial_seconds:
                for _ in range(step):
                    fn()
                count += step
            rates.append(multiplier * count / (time.perf_counter() - start))
        mean = sum(rates) / len(rates)
        sd = (sum((r - mean) ** 2 for r in rates) / len(rates)) ** 0.5
        print(f"{name} per second {round(mean, 2)} +- {round(sd, 2)}", flush=True)
        self.results[name] = (mean, sd)

    def unsupported(self, name, why):
        if self.wanted(name):
            print(f"{name}: not measured ({why})", flush=True)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--ray", action="store_true", help="measure Ray instead of rayhpc")
    p.add_argument("--json", metavar="FILE", help="also write {name: [mean, sd]} here")
    p.add_argument("--only", action="append", help="run the metrics whose name contains this")
    p.add_argument("--skip", action="append", help="skip the metrics whose name contains this")
    p.add_argument("--trial-seconds", type=float, default=2.0)
    p.add_argument("--num-cpus", type=int, default=None)
    args = p.parse_args(argv)
    if args.ray:
        import ray
    else:
        import rayhpc as ray
    import numpy as np

    ray.init(num_cpus=args.num_cpus, **({"include_dashboard": False} if args.ray else {}))
    b = Bench(args.only, args.skip, args.trial_seconds)

    @ray.remote
    def small_value():
        return b"ok"

    @ray.remote(num_cpus=0)
    class Actor:
        def small_value(self):
            return b"ok"

        def small_value_arg(self, x):
            return b"ok"

        def small_value_batch(self, n):
            ray.get([small_value.remote() for _ in range(n)])

    @ray.remote(num_cpus=0)
    class Client:
        def __init__(self, servers):
            if not isinstance(servers, list):
                servers = [servers]
            self.servers = servers

        def small_value_batch(self, n):
            results = []
            for s in self.servers:
                results.extend([s.small_value.remote() for _ in range(n)])
            ray.get(results)

        def small_value_batch_arg(self, n):
            x = ray.put(0)
            results = []
            for s in self.servers:
                results.extend([s.small_value_arg.remote(x) for _ in range(n)])
            ray.get(results)

    value = ray.put(0)
    b.timeit("single_client_get_calls", lambda: ray.get(value))
    b.timeit("single_client_put_calls", lambda: ray.put(0))

    @ray.remote
    def do_put_small():
        for _ in range(100):
            ray.put(0)

    b.timeit("multi_client_put_calls", lambda: ray.get([do_put_small.remote() for _ in range(10)]), 1000)

    if b.wanted("single_client_put_gigabytes"):
        arr = np.zeros(100 * 1024 * 1024, dtype=np.int64)
        b.timeit("single_client_put_gigabytes", lambda: ray.put(arr), 8 * 0.1)
        del arr

    b.timeit("single_client_tasks_and_get_batch", lambda: ray.get([small_value.remote() for _ in range(1000)]))

    @ray.remote
    def do_put():
        for _ in range(10):
            ray.put(np.zeros(10 * 1024 * 1024, dtype=np.int64))

    b.timeit("multi_client_put_gigabytes", lambda: ray.get([do_put.remote() for _ in range(10)]), 10 * 8 * 0.1)

    if b.wanted("single_client_get_object_containing_10k_refs"):

        @ray.remote
        def create_object_containing_ref():
            return [ray.put(1) for _ in range(10000)]

        obj_containing_ref = create_object_containing_ref.remote()
        b.timeit("single_client_get_object_containing_10k_refs", lambda: ray.get(obj_containing_ref))

    def wait_multiple_refs():
        not_ready = [small_value.remote() for _ in range(1000)]
        for _ in range(1000):
            _, not_ready = ray.wait(not_ready)

    b.timeit("single_client_wait_1k_refs", wait_multiple_refs)
    b.timeit("single_client_tasks_sync", lambda: ray.get(small_value.remote()))
    b.timeit("single_client_tasks_async", lambda: ray.get([small_value.remote() for _ in range(1000)]), 1000)

    n, m = 10000, 4
    if b.wanted("multi_client_tasks_async"):
        actors = [Actor.remote() for _ in range(m)]
        b.timeit("multi_client_tasks_async", lambda: ray.get([a.small_value_batch.remote(n) for a in actors]), n * m)
        for a in actors:
            ray.kill(a)

    a = Actor.remote()
    b.timeit("1_1_actor_calls_sync", lambda: ray.get(a.small_value.remote()))
    b.timeit("1_1_actor_calls_async", lambda: ray.get([a.small_value.remote() for _ in range(1000)]), 1000)
    if args.ray:
        c = Actor.options(max_concurrency=16).remote()
        b.timeit("1_1_actor_calls_concurrent", lambda: ray.get([c.small_value.remote() for _ in range(1000)]), 1000)
    else:
        b.unsupported("1_1_actor_calls_concurrent", "threaded actors (max_concurrency > 1) are not supported yet")

    n = 5000
    n_cpu = max(1, multiprocessing.cpu_count() // 2)
    servers = [Actor.remote() for _ in range(n_cpu)]
    client = Client.remote(servers)
    b.timeit("1_n_actor_calls_async", lambda: ray.get(client.small_value_batch.remote(n)), n * len(servers))

    @ray.remote
    def work(actors):
        ray.get([actors[i % n_cpu].small_value.remote() for i in range(n)])

    b.timeit("n_n_actor_calls_async", lambda: ray.get([work.remote(servers) for _ in range(m)]), m * n)

    n = 1000
    clients = [Client.remote(Actor.remote()) for _ in range(n_cpu)]
    b.timeit("n_n_actor_calls_with_arg_async", lambda: ray.get([c.small_value_batch_arg.remote(n) for c in clients]), n * len(clients))
    b.unsupported("1_1_async_actor_calls_sync", "asyncio actors are not supported yet")

    t = time.perf_counter()
    ray.shutdown()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: list(v) for k, v in b.results.items()}, f, indent=1)
    print(f"(shutdown took {time.perf_counter() - t:.3f} s)", file=sys.stderr)


if __name__ == "__main__":
    main()
