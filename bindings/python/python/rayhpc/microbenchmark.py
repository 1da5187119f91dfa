"""`python -m rayhpc.microbenchmark`: the workloads of `ray microbenchmark`, under its metric
names, printed as it prints them (`<name> per second <mean> +- <sd>`).

Run the same module with `--ray` in an environment where Ray is installed to measure Ray
itself with the identical code (`import ray` instead of `import rayhpc as ray`).
"""

import argparse
import json
import sys
import time


def timeit(name, fn, multiplier=1, trials=4, trial_seconds=1.0, results=None, only=None):
    if only and not any(o in name for o in only):
        return
    # Warm up (workers started, functions registered), then timed trials.
    start = time.perf_counter()
    while time.perf_counter() - start < 0.2:
        fn()
    rates = []
    for _ in range(trials):
        n = 0
        start = time.perf_counter()
        while True:
            fn()
            n += 1
            elapsed = time.perf_counter() - start
            if elapsed >= trial_seconds:
                break
        rates.append(n * multiplier / elapsed)
    mean = sum(rates) / len(rates)
    sd = (sum((r - mean) ** 2 for r in rates) / len(rates)) ** 0.5
    print(f"{name} per second {round(mean, 2)} +- {round(sd, 2)}", flush=True)
    if results is not None:
        results[name] = (mean, sd)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--ray", action="store_true", help="measure Ray instead of rayhpc")
    p.add_argument("--json", metavar="FILE", help="also write {name: [mean, sd]} here")
    p.add_argument("--only", action="append", help="run the metrics whose name contains this")
    p.add_argument("--num-cpus", type=int, default=None)
    args = p.parse_args(argv)
    if args.ray:
        import ray
    else:
        import rayhpc as ray
    import numpy as np

    ray.init(num_cpus=args.num_cpus, **({"include_dashboard": False} if args.ray else {}))
    results = {}

    @ray.remote
    def small_value():
        return b"ok"

    @ray.remote(num_cpus=0)
    def noop():
        pass

    value = ray.put(0)
    timeit("single_client_get_calls", lambda: ray.get(value), results=results, only=args.only)
    timeit("single_client_put_calls", lambda: ray.put(0), results=results, only=args.only)

    arr = np.zeros(1 << 30, dtype=np.uint8)  # 1 GiB
    timeit("single_client_put_gigabytes", lambda: ray.put(arr), 1, trials=2, results=results, only=args.only)
    del arr

    timeit("single_client_tasks_sync", lambda: ray.get(small_value.remote()), results=results, only=args.only)

    def async_batch():
        ray.get([small_value.remote() for _ in range(1000)])

    timeit("single_client_tasks_async", async_batch, 1000, results=results, only=args.only)

    def tasks_and_get_batch():
        ray.get([noop.remote() for _ in range(1000)])

    timeit("single_client_tasks_and_get_batch", tasks_and_get_batch, 1000, results=results, only=args.only)

    def wait_1k():
        refs = [small_value.remote() for _ in range(1000)]
        ray.wait(refs, num_returns=len(refs))

    timeit("single_client_wait_1k_refs", wait_1k, results=results, only=args.only)

    t = time.perf_counter()
    ray.shutdown()
    if args.json:
        with open(args.json, "w") as f:
            json.dump({k: list(v) for k, v in results.items()}, f, indent=1)
    print(f"(shutdown took {time.perf_counter() - t:.3f} s; actor metrics: not measured yet)", file=sys.stderr)


if __name__ == "__main__":
    main()
