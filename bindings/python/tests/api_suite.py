"""One driver program of named checks of Ray Core's documented behaviour, run through
`import rayhpc as ray` in every way a driver meets rayhpc (see test_api_modes.py):

    python api_suite.py                      embedded: ray.init(num_cpus=2, resources=...)
    rayhpc launch --num-cpus 2 --resources '{"per_node": 1, "probe": 1, "slot": 1}' -- python api_suite.py
                                             attached: ray.init() finds RAYHPC_ADDRESS
    srun -N2 ... rayhpc launch ...           a 2-node cluster (the head alone has "slot")
    API_SUITE_IMPL=ray python api_suite.py   the oracle: the same checks on Ray itself

It prints ONE JSON object {check: result} as its last line of standard output. A result is
"ok" when what the check observed equals what Ray documents (and Ray 2.60 does), else
"mismatch: <what differs>", or "error: <exception>" when the check itself broke. Every
observation is deterministic (values, exception class names, orders, booleans), never a
time, an id or a host name, so that the modes' JSON can be compared as they are.

The resources every mode gives are the same per node: 2 CPUs and {"per_node": 1, "probe": 1};
the head node alone has {"slot": 1}, so a task asking for "slot" runs on the head in every
mode, and its queue is the one queue every mode shares. Checks that look at cluster totals
divide by the number of nodes; one probe actor per node (`probes`) reaches every node.
`python api_suite.py CHECK...` runs only the checks named.

Nothing here waits on a wall-clock sleep for correctness: a task that must be "running" or
"held" signals it through a file (the file system is shared by the nodes of the namespace
cluster) and waits for a release file; timeouts are upper bounds only.

`KNOWN_DRIFT` (below) lists every check whose result is, today, not "ok" in some mode: the
deviations from Ray and the differences between the embedded and attached paths.
test_api_modes.py asserts the results equal "ok" or exactly that recorded drift, so a fix
(or a new drift) shows up as a failure to update the table.
"""

import json
import os
import re
import shutil
import socket
import sys
import tempfile
import threading
import time
import traceback

IMPL = os.environ.get("API_SUITE_IMPL", "rayhpc")
if IMPL == "ray":
    import ray  # the oracle
else:
    import rayhpc as ray

import numpy as np

MODES = ("embedded", "attached", "cluster")

# Per node, in every mode (test_api_modes.py gives the launches the same). "probe" places
# one long-lived probe actor on every node (see `probes`).
NODE_CPUS = 2
NODE_RESOURCES = {"per_node": 1, "probe": 1}
HEAD_RESOURCES = {"per_node": 1, "probe": 1, "slot": 1}

BOUND = 30  # seconds: the upper bound of any wait of the suite (never reached when all is well)

# --------------------------------------------------------------------------- known drift
#
# check -> {mode or "*": the exact result string observed today}. "*" is every mode. These
# are findings, not expectations: each one is a place where rayhpc does not do what Ray
# documents (and Ray 2.60 does: `API_SUITE_IMPL=ray python api_suite.py` on Ray gives "ok"
# for every check, kv_store skipped; Ray's own cancellation is flaky in a full run: it may
# never answer the call after the cancelled one in `cancel_actor_call`, or abort with
# "Check failed: ... submitted_task_ref_count > 0" in `cancel_when_the_head_is_busy`; each
# passes on its own), or where rayhpc's modes disagree. Checks whose drift
# differs between modes are the known differences between the embedded and attached paths
# (or the cluster); test_api_modes.py compares the modes on every other check. When rayhpc
# changes, update an entry from the new result (API_SUITE_DUMP=dir writes each mode's JSON)
# or delete it: a check that passes while drift is recorded fails the test too.
KNOWN_DRIFT = {
    # A task depending on a cancelled one raises a plain TaskCancelledError where Ray raises
    # RayTaskError(TaskCancelledError).
    "cancel_queued": {"*": (
        "mismatch: dependent: observed [true, \"TaskCancelledError\"], expected [true, \"RayTaskError(TaskCancelledError)\"]")},
    # A running task interrupted by cancel raises plain TaskCancelledError; Ray wraps it as a
    # task error (RayTaskError(TaskCancelledError)). (force=True agrees: TaskCancelledError.)
    "cancel_running": {"*": (
        "mismatch: interrupted: observed [true, \"TaskCancelledError\"], expected [true, \"RayTaskError(TaskCancelledError)\"]")},
}


def expected_result(check, mode):
    """What `check` gives today in `mode`: "ok", or its recorded drift."""
    drift = KNOWN_DRIFT.get(check, {})
    return drift.get(mode, drift.get("*", "ok"))


# --------------------------------------------------------------------------- helpers

SCRATCH = None  # a directory of this run, on a file system every node shares


def scratch(name):
    """A fresh directory for one check's marker files."""
    return tempfile.mkdtemp(prefix=name + "-", dir=SCRATCH)


def touch(path):
    with open(path, "w"):
        pass


def wait_for_file(path, bound=BOUND):
    """Waits until `path` exists (an event another process signals); False past `bound`."""
    deadline = time.monotonic() + bound
    while not os.path.exists(path):
        if time.monotonic() > deadline:
            return False
        time.sleep(0.002)
    return True


def error_kind(fn, cls):
    """[whether `fn` raised an instance of `cls`, the class name of what it raised]."""
    try:
        fn()
        return [False, "no error"]
    except Exception as e:  # noqa: BLE001
        return [isinstance(e, cls), type(e).__name__]


def failure(submit, cls):
    """How a call fails: [an instance of `cls`?, its class name, "at submit" or "at get"]
    (Ray: a call's error comes at `get`; `.remote()` returns a ref whatever happens)."""
    try:
        ref = submit()
    except Exception as e:  # noqa: BLE001
        return [isinstance(e, cls), type(e).__name__, "at submit"]
    try:
        ray.get(ref, timeout=BOUND)
        return [False, "no error", "at get"]
    except Exception as e:  # noqa: BLE001
        return [isinstance(e, cls), type(e).__name__, "at get"]


def outcome(fn):
    """What calling `fn` gives: its value, or "raises <exception class name>"."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001
        return f"raises {type(e).__name__}"


def eventually(predicate, bound=10.0):
    """Whether `predicate()` becomes true within `bound` seconds (polled; a bound, not a delay)."""
    deadline = time.monotonic() + bound
    while True:
        if predicate():
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.01)


class Skip(Exception):
    """The check does not apply to this implementation (a rayhpc extension under Ray)."""


class Gate:
    """A task holds (occupies its resources) until the driver opens the gate: `hold` marks
    `started` once it runs, then waits for `release`."""

    def __init__(self, name):
        self.dir = scratch(name)
        self.started = os.path.join(self.dir, "started")
        self.release = os.path.join(self.dir, "release")

    def open(self):
        touch(self.release)


# --------------------------------------------------------------------------- remote code

@ray.remote
def add(a, b=10, *, c=0):
    return a + b + c


@ray.remote
def echo(x):
    return x


@ray.remote
def type_name(x):
    return type(x).__name__


@ray.remote
def hold(started, release, value=None):
    touch(started)
    if not wait_for_file(release, 60):
        return "never released"
    return value


@ray.remote
def mark(path, value=None):
    touch(path)
    return value


@ray.remote
def fail(message):
    raise ValueError(message)


class Coded(Exception):
    def __init__(self, code):
        super().__init__(f"code {code}")
        self.code = code


@ray.remote
class Counter:
    def __init__(self, start=0, *, step=1):
        self.value = start
        self.step = step

    def incr(self):
        self.value += self.step
        return self.value

    def get(self):
        return self.value

    def add(self, x, y=0):
        self.value += x + y
        return self.value

    def pid(self):
        return os.getpid()

    def fail(self, message):
        raise ValueError(message)

    def crash(self):
        os._exit(1)


N_BIG = 1 << 18  # float64 elements: 2 MiB


@ray.remote(num_cpus=0, resources={"probe": 1})
class Probe:
    """One per node (each node has one "probe"), alive for the whole run: what a node sees,
    and objects made and read there."""

    def host(self):
        return socket.gethostname()

    def context(self):
        c = ray.get_runtime_context()
        aid = getattr(c, "get_actor_id", None)
        return [socket.gethostname(), c.get_node_id(), aid() if callable(aid) else "missing", c.get_assigned_resources()]

    def stats(self, x):
        return [float(x.sum()), bool(x.flags.writeable)]

    def make(self):
        return np.arange(N_BIG, dtype=np.float64)

    def put_inner(self):
        return [ray.put(np.arange(N_BIG, dtype=np.float64))]

    def kv(self, key):
        if IMPL == "ray":
            return _internal_kv_module()._internal_kv_get(key, namespace="suite-nodes")
        return ray.kv.get("suite-nodes/" + key)


_PROBES = []


def probes():
    """The probe actors, one per node, made on first use and kept."""
    if not _PROBES:
        _PROBES.extend(Probe.remote() for _ in _alive_nodes())
    return _PROBES


# --------------------------------------------------------------------------- the checks

CHECKS = []


def check(expect):
    """Registers a check: a function returning {label: observation}, compared with `expect`."""
    def register(fn):
        fn.expect = expect
        CHECKS.append(fn)
        return fn
    return register


@check({"values": [11, 3, 8, 15, 7], "missing_arg": "raises TypeError", "extra_arg": "raises TypeError",
        "unknown_kwarg": "raises TypeError", "direct_call": "raises TypeError", "lambda": "lambda"})
def tasks_args_kwargs():
    refs = [add.remote(1), add.remote(1, 2), add.remote(1, b=3, c=4), add.remote(a=5), add.remote(*[1, 2], **{"c": 4})]
    return {
        "values": ray.get(refs, timeout=BOUND),
        "missing_arg": outcome(lambda: add.remote()),
        "extra_arg": outcome(lambda: add.remote(1, 2, 3)),
        "unknown_kwarg": outcome(lambda: add.remote(1, d=2)),
        "direct_call": outcome(lambda: add(1, 2)),
        "lambda": ray.get(ray.remote(lambda: "lambda").remote(), timeout=BOUND),
    }


@check({"put_arg": 42, "chain": 20, "tree": 120, "task_ref_arg": 13, "top_level_resolved": "int",
        "nested_not_resolved": "list of ObjectRef", "is_ref": True})
def refs_as_args():
    x = ray.put(40)
    r = ray.put(0)
    for _ in range(20):
        r = add.remote(r, 1)
    leaves = [echo.remote(i) for i in range(16)]
    while len(leaves) > 1:
        leaves = [add.remote(leaves[i], leaves[i + 1]) for i in range(0, len(leaves), 2)]

    @ray.remote
    def inner_types(xs):
        return "list of " + "/".join(sorted({type(v).__name__ for v in xs}))

    return {
        "put_arg": ray.get(add.remote(x, 2), timeout=BOUND),
        "chain": ray.get(r, timeout=BOUND),
        "tree": ray.get(leaves[0], timeout=BOUND),
        "task_ref_arg": ray.get(add.remote(add.remote(1, 2), 10), timeout=BOUND),
        "top_level_resolved": ray.get(type_name.remote(ray.put(1)), timeout=BOUND),
        "nested_not_resolved": ray.get(inner_types.remote([ray.put(1), ray.put(2)]), timeout=BOUND),
        "is_ref": isinstance(x, ray.ObjectRef),
    }


@check({"fan_out": 285, "sum_tree": 36, "put_in_task": {"sum": 285}, "wait_in_task": [10, 0]})
def nested_tasks():
    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    def fan_out(n):
        refs = [square.remote(i) for i in range(n)]
        return sum(ray.get(refs))

    @ray.remote
    def sum_tree(lo, hi):
        if hi - lo <= 2:
            return sum(range(lo, hi))
        mid = (lo + hi) // 2
        return sum(ray.get([sum_tree.remote(lo, mid), sum_tree.remote(mid, hi)]))

    @ray.remote
    def put_in_task(n):
        box = ray.put({"sum": sum(i * i for i in range(n))})
        return ray.get(box)

    @ray.remote
    def wait_in_task(n):
        refs = [square.remote(i) for i in range(n)]
        ready, rest = ray.wait(refs, num_returns=n, timeout=BOUND)
        return [len(ready), len(rest)]

    return {
        "fan_out": ray.get(fan_out.remote(10), timeout=BOUND),
        "sum_tree": ray.get(sum_tree.remote(0, 9), timeout=BOUND),
        "put_in_task": ray.get(put_in_task.remote(10), timeout=BOUND),
        "wait_in_task": ray.get(wait_in_task.remote(10), timeout=BOUND),
    }


@check({"three": [1, 2, [3]], "is_list": True, "one_is_ref": True, "big_and_small": [1048575, "label"],
        "wrong_count": ["RayTaskError(ValueError)", "RayTaskError(ValueError)"], "zero": None,
        "method_decorator": ["a", "bc"], "method_options": ["u", "v"], "nested": [[0, 1, 2], "label"]})
def num_returns():
    @ray.remote(num_returns=3)
    def three(x):
        return x, x + 1, [x + 2]

    @ray.remote
    def pair(n):
        return np.arange(n), "label"

    @ray.remote
    class Splitter:
        @ray.method(num_returns=2)
        def split(self, s):
            return s[:1], s[1:]

        def whole(self, s):
            return s

    @ray.remote
    def nested():
        p, q = pair.options(num_returns=2).remote(3)
        return [list(map(int, ray.get(p))), ray.get(q)]

    refs = three.remote(1)
    arr, label = pair.options(num_returns=2).remote(1 << 20)
    wrong = three.options(num_returns=2).remote(5)
    wrong_kinds = []
    for r in wrong:
        try:
            ray.get(r, timeout=BOUND)
            wrong_kinds.append("no error")
        except Exception as e:  # noqa: BLE001
            wrong_kinds.append(type(e).__name__)
    sp = Splitter.remote()
    h, t = sp.split.remote("abc")
    u, v = sp.whole.options(num_returns=2).remote(("u", "v"))
    out = {
        "three": ray.get(list(refs), timeout=BOUND),
        "is_list": isinstance(refs, (list, tuple)) and len(refs) == 3,
        "one_is_ref": isinstance(echo.options(num_returns=1).remote(1), ray.ObjectRef),
        "big_and_small": [int(ray.get(arr, timeout=BOUND)[-1]), ray.get(label, timeout=BOUND)],
        "wrong_count": wrong_kinds,
        # Ray allows num_returns=0: `.remote()` returns None.
        "zero": outcome(lambda: three.options(num_returns=0).remote(1)),
        "method_decorator": ray.get([h, t], timeout=BOUND),
        "method_options": ray.get([u, v], timeout=BOUND),
        "nested": ray.get(nested.remote(), timeout=BOUND),
    }
    ray.kill(sp)
    return out


class Point:
    def __init__(self, x, y):
        self.x, self.y = x, y

    def __eq__(self, other):
        return isinstance(other, Point) and (self.x, self.y) == (other.x, other.y)


SMALL_VALUES = [None, True, 3, 2.5, "text", b"bytes", [1, [2]], {"k": (1, 2)}, {1, 2}, b"x" * 200_000,
                Point(1, 2), np.arange(10)]


@check({"put_get": [True] * len(SMALL_VALUES), "through_task": [True] * len(SMALL_VALUES),
        "put_a_ref": "raises TypeError", "get_not_a_ref": "raises ValueError",
        "get_list_with_a_non_ref": "raises TypeError", "get_tuple_of_refs": "raises ValueError",
        "value_is_a_copy": True, "small_array_read_only": [True, True], "put_unpicklable": "raises TypeError"})
def put_get_small():
    def same(a, b):
        if isinstance(a, np.ndarray):
            return isinstance(b, np.ndarray) and np.array_equal(a, b)
        return type(a) is type(b) and a == b

    mutable = [1, 2]
    r = ray.put(mutable)
    mutable.append(3)
    return {
        "put_get": [same(v, ray.get(ray.put(v), timeout=BOUND)) for v in SMALL_VALUES],
        "through_task": [same(v, ray.get(echo.remote(v), timeout=BOUND)) for v in SMALL_VALUES],
        "put_a_ref": outcome(lambda: ray.put(ray.put(1))),
        "get_not_a_ref": outcome(lambda: ray.get("not a ref")),
        "get_list_with_a_non_ref": outcome(lambda: ray.get([ray.put(1), 2])),
        # Ray's get takes an ObjectRef or a *list* of them (a tuple is a ValueError).
        "get_tuple_of_refs": outcome(lambda: ray.get((ray.put(1), ray.put(2)))),
        "value_is_a_copy": ray.get(r, timeout=BOUND) == [1, 2],
        "put_unpicklable": outcome(lambda: ray.put(threading.Lock())),
        # Ray: an array read from the object store is read-only, however small (put, result).
        "small_array_read_only": [not ray.get(ray.put(np.arange(10)), timeout=BOUND).flags.writeable,
                                  not ray.get(echo.remote(np.arange(10)), timeout=BOUND).flags.writeable],
    }


@check({"equal": True, "read_only": True, "write_raises": "raises ValueError", "owndata": False,
        "two_gets_share_memory": True, "outlives_ref": 262143.0, "dict_of_arrays": True,
        "strided": True, "arg_in_task": [262143.0 * 262144 / 2, False], "put_arg_in_task": [262143.0 * 262144 / 2, False],
        "task_result": [[2000000], 7, 7, False], "actor_result": [[300000], False],
        "actor_constructor_arg": [262143.0 * 262144 / 2, False], "arrays_inside_a_result": [[2000000, 10], [False, False]]})
def put_get_large():
    a = np.arange(1 << 18, dtype=np.float64)  # 2 MiB
    r = ray.put(a)
    b = ray.get(r, timeout=BOUND)
    c = ray.get(r, timeout=BOUND)

    def write():
        b[0] = 1

    @ray.remote
    def stats(x):
        return [float(x.sum()), bool(x.flags.writeable)]

    @ray.remote
    def make(n):
        return np.full(n, 7, dtype=np.uint8)

    @ray.remote
    class Maker:
        def __init__(self, x=None):
            self.x = x

        def make(self, n):
            return np.ones(n)

        def stats(self):
            return [float(self.x.sum()), bool(self.x.flags.writeable)]

    @ray.remote
    def several():
        return {"big": np.zeros(2_000_000), "small": np.arange(10)}

    z = ray.get(make.remote(2_000_000), timeout=BOUND)
    m = Maker.remote(a)
    y = ray.get(m.make.remote(300_000), timeout=BOUND)
    ctor = ray.get(m.stats.remote(), timeout=BOUND)
    ray.kill(m)
    sev = ray.get(several.remote(), timeout=BOUND)
    mixed = {"small": np.arange(10), "big": np.ones((512, 512)), "text": "x" * 100_000}
    got = ray.get(ray.put(mixed), timeout=BOUND)
    strided = np.arange(1 << 20)[::2]
    out = {
        "equal": bool(np.array_equal(a, b)),
        "read_only": not b.flags.writeable,
        "write_raises": outcome(write),
        "owndata": bool(b.flags.owndata),
        "two_gets_share_memory": bool(np.shares_memory(b, c)),
        "dict_of_arrays": bool(np.array_equal(got["small"], mixed["small"]) and np.array_equal(got["big"], mixed["big"])
                               and got["text"] == mixed["text"]),
        "strided": bool(np.array_equal(ray.get(ray.put(strided), timeout=BOUND), strided)),
        "arg_in_task": ray.get(stats.remote(a), timeout=BOUND),
        "put_arg_in_task": ray.get(stats.remote(r), timeout=BOUND),
        "task_result": [list(z.shape), int(z[0]), int(z[-1]), bool(z.flags.writeable)],
        "actor_result": [list(y.shape), bool(y.flags.writeable)],
        "actor_constructor_arg": ctor,
        # Ray: every array of a value read from the object store is read-only, small ones too.
        "arrays_inside_a_result": [[len(sev["big"]), len(sev["small"])],
                                   [bool(sev["big"].flags.writeable), bool(sev["small"].flags.writeable)]],
    }
    del r, c
    out["outlives_ref"] = float(b[-1])
    return out


@check({"all_ready": [3, 1, True], "num_returns_2": [2, 2, True], "default_one": 1, "timeout_partial": [3, 1, True],
        "timeout_zero": [0, 1], "failed_is_ready": 1, "duplicates": "raises ValueError",
        "too_many": "raises ValueError", "not_a_list": "raises TypeError", "released": "held"})
def wait():
    g = Gate("wait")
    fast = [echo.remote(i) for i in range(3)]
    ray.get(fast, timeout=BOUND)
    blocked = hold.remote(g.started, g.release, "held")
    try:
        refs = fast + [blocked]
        out = {}
        ready, rest = ray.wait(refs, num_returns=3, timeout=BOUND)
        out["all_ready"] = [len(ready), len(rest), ready == fast and rest == [blocked]]
        ready, rest = ray.wait(refs, num_returns=2, timeout=BOUND)
        # Both lists keep the input's order.
        out["num_returns_2"] = [len(ready), len(rest), [r for r in refs if r in ready] == ready and
                                [r for r in refs if r in rest] == rest]
        ready, rest = ray.wait(refs, timeout=BOUND)
        out["default_one"] = len(ready)
        ready, rest = ray.wait([blocked] + fast, num_returns=4, timeout=0.05)
        out["timeout_partial"] = [len(ready), len(rest), ready == fast and rest == [blocked]]
        ready, rest = ray.wait([blocked], timeout=0)
        out["timeout_zero"] = [len(ready), len(rest)]
        ready, _ = ray.wait([fail.remote("x")], timeout=BOUND)
        out["failed_is_ready"] = len(ready)
        out["duplicates"] = outcome(lambda: ray.wait([blocked, blocked], timeout=0))
        out["too_many"] = outcome(lambda: ray.wait(fast, num_returns=4, timeout=0))
        out["not_a_list"] = outcome(lambda: ray.wait(blocked))
    finally:
        g.open()
    out["released"] = ray.get(blocked, timeout=BOUND)
    return out


@check({"get_timeout": "raises GetTimeoutError", "is_timeout_error": True, "is_ray_error": True,
        "list_timeout_zero": "raises GetTimeoutError", "ready_with_timeout_zero": 5, "released": "held"})
def get_timeout():
    g = Gate("get-timeout")
    blocked = hold.remote(g.started, g.release, "held")
    try:
        try:
            ray.get(blocked, timeout=0.05)
            kind, is_timeout, is_ray = "no error", False, False
        except Exception as e:  # noqa: BLE001
            kind, is_timeout, is_ray = f"raises {type(e).__name__}", isinstance(e, TimeoutError), \
                isinstance(e, ray.exceptions.RayError)
        ready = echo.remote(5)
        ray.get(ready, timeout=BOUND)
        out = {
            "get_timeout": kind,
            "is_timeout_error": is_timeout,
            "is_ray_error": is_ray,
            "list_timeout_zero": outcome(lambda: ray.get([ready, blocked], timeout=0)),
            "ready_with_timeout_zero": ray.get(ready, timeout=0),
        }
    finally:
        g.open()
    out["released"] = ray.get(blocked, timeout=BOUND)
    return out


@check({"type": "RayTaskError(ValueError)", "is_task_error": True, "is_value_error": True, "cause": ["ValueError", ["bad input"]],
        "message_names_function": True, "message_has_traceback": True, "dependent": "RayTaskError(ValueError)",
        "list_get": "raises RayTaskError(ValueError)", "custom_attribute": [True, 7, "RayTaskError(Coded)"],
        "actor_method": ["RayTaskError(ValueError)", 1], "unpicklable_result": [True, "RayTaskError(TypeError)"]})
def task_exceptions():
    @ray.remote
    def raise_coded():
        raise Coded(7)

    @ray.remote
    def make_lock():
        return threading.Lock()

    out = {}
    try:
        ray.get(fail.remote("bad input"), timeout=BOUND)
    except Exception as e:  # noqa: BLE001
        out["type"] = type(e).__name__
        out["is_task_error"] = isinstance(e, ray.exceptions.RayTaskError)
        out["is_value_error"] = isinstance(e, ValueError)
        cause = getattr(e, "cause", None)
        out["cause"] = [type(cause).__name__, list(getattr(cause, "args", ()))]
        out["message_names_function"] = "fail" in str(e) and "bad input" in str(e)
        out["message_has_traceback"] = "in fail" in str(e)
    try:
        ray.get(add.remote(fail.remote("bad input"), 1), timeout=BOUND)
        out["dependent"] = "no error"
    except Exception as e:  # noqa: BLE001
        out["dependent"] = type(e).__name__
    out["list_get"] = outcome(lambda: ray.get([add.remote(1, 1), fail.remote("x")], timeout=BOUND))
    try:
        ray.get(raise_coded.remote(), timeout=BOUND)
        out["custom_attribute"] = "no error"
    except Coded as e:
        out["custom_attribute"] = [isinstance(e, ray.exceptions.RayTaskError), e.code, type(e).__name__]
    c = Counter.remote()
    try:
        ray.get(c.fail.remote("method"), timeout=BOUND)
        kind = "no error"
    except Exception as e:  # noqa: BLE001
        kind = type(e).__name__
    out["actor_method"] = [kind, ray.get(c.incr.remote(), timeout=BOUND)]
    out["unpicklable_result"] = error_kind(lambda: ray.get(make_lock.remote(), timeout=BOUND), ray.exceptions.RayTaskError)
    ray.kill(c)
    return out


def _crash_once(marker):
    if not os.path.exists(marker):
        touch(marker)
        os._exit(1)
    return "second attempt"


@check({"crash_once": "second attempt", "default_retries": "second attempt",
        "no_retries": ["raises WorkerCrashedError", True], "attempts_then_error": ["raises WorkerCrashedError", 2],
        "goes_on": 2})
def retries_worker_crash():
    d = scratch("crash")

    @ray.remote(max_retries=0)
    def always_crash():
        os._exit(1)

    @ray.remote(max_retries=1)
    def crash_counted(path):
        with open(path, "a") as f:
            f.write("x")
        os._exit(3)

    out = {
        "crash_once": ray.get(ray.remote(max_retries=2)(_crash_once).remote(os.path.join(d, "once")), timeout=BOUND),
        # max_retries left out: Ray's default for tasks (3) applies.
        "default_retries": ray.get(ray.remote(_crash_once).remote(os.path.join(d, "default")), timeout=BOUND),
    }
    try:
        ray.get(always_crash.remote(), timeout=BOUND)
        out["no_retries"] = ["no error", False]
    except Exception as e:  # noqa: BLE001
        out["no_retries"] = [f"raises {type(e).__name__}", isinstance(e, ray.exceptions.RayError)]
    counted = os.path.join(d, "counted")
    first = outcome(lambda: ray.get(crash_counted.remote(counted), timeout=BOUND))
    out["attempts_then_error"] = [first, len(open(counted).read()) if os.path.exists(counted) else 0]
    out["goes_on"] = ray.get(add.remote(1, 1), timeout=BOUND)
    return out


def _flaky(path, fail_times, exc_name):
    with open(path, "a") as f:
        f.write("x")
    n = len(open(path).read())
    if n <= fail_times:
        raise {"RuntimeError": RuntimeError, "ValueError": ValueError, "KeyError": KeyError}[exc_name](f"attempt {n}")
    return n


@check({"retried": 3, "not_retried": ["raises RayTaskError(RuntimeError)", 1],
        "default_not_retried": ["raises RayTaskError(RuntimeError)", 1],
        "retries_run_out": ["raises RayTaskError(RuntimeError)", 2]})
def retry_exceptions():
    d = scratch("flaky")
    flaky = ray.remote(max_retries=3, retry_exceptions=True)(_flaky)

    def counted(name, fn):
        path = os.path.join(d, name)
        got = outcome(lambda: ray.get(fn(path), timeout=BOUND))
        return [got, len(open(path).read()) if os.path.exists(path) else 0]

    return {
        "retried": ray.get(flaky.remote(os.path.join(d, "retried"), 2, "RuntimeError"), timeout=BOUND),
        "not_retried": counted("off", lambda p: flaky.options(retry_exceptions=False).remote(p, 2, "RuntimeError")),
        # Ray's default is retry_exceptions=False: an application error is not retried.
        "default_not_retried": counted("default", lambda p: ray.remote(max_retries=3)(_flaky).remote(p, 2, "RuntimeError")),
        "retries_run_out": counted("out", lambda p: flaky.options(max_retries=1).remote(p, 5, "RuntimeError")),
    }


@check({"listed_class_retried": 2, "other_class_not_retried": ["raises RayTaskError(KeyError)", 1]})
def retry_exceptions_list():
    # Ray: retry_exceptions may be a list of exception classes, only those are retried.
    d = scratch("flaky-list")
    try:
        listed = ray.remote(max_retries=3, retry_exceptions=[ValueError])(_flaky)
    except Exception as e:  # noqa: BLE001
        return {"listed_class_retried": f"raises {type(e).__name__} at options", "other_class_not_retried": "not run"}
    other = os.path.join(d, "other")
    got = outcome(lambda: ray.get(listed.remote(other, 2, "KeyError"), timeout=BOUND))
    return {
        "listed_class_retried": ray.get(listed.remote(os.path.join(d, "listed"), 1, "ValueError"), timeout=BOUND),
        "other_class_not_retried": [got, len(open(other).read()) if os.path.exists(other) else 0],
    }


# Ray marks a cancelled task that has not started as cancelled at once: `get` raises
# TaskCancelledError without waiting for what held it back. How long that may take is
# bounded by CANCEL_BOUND (Ray: milliseconds); what the bound does not see comes out once
# the holder is released.
CANCEL_BOUND = 0.5


@check({"queued_before_cancel": True, "cancelled_while_held": [True, True], "queued": [True, "TaskCancelledError"],
        "dependent": [True, "RayTaskError(TaskCancelledError)"], "holder": "held", "queued_never_ran": True, "slot_free_after": "after"})
def cancel_queued():
    # The head's one "slot" is held: a second task asking for it is queued, in every mode.
    g = Gate("cancel-queued")
    holder = hold.options(resources={"slot": 1}).remote(g.started, g.release, "held")
    ran = os.path.join(g.dir, "ran")
    try:
        if not wait_for_file(g.started):
            return {"holder": "never started"}
        queued = mark.options(resources={"slot": 1}).remote(ran, "ran")
        dependent = echo.remote(queued)
        ready, _ = ray.wait([queued], timeout=0)
        out = {"queued_before_cancel": not ready}
        ray.cancel(queued)
        ready, _ = ray.wait([queued, dependent], num_returns=2, timeout=CANCEL_BOUND)
        out["cancelled_while_held"] = [queued in ready, dependent in ready]
    finally:
        g.open()
    cancelled = ray.exceptions.TaskCancelledError
    out["queued"] = error_kind(lambda: ray.get(queued, timeout=BOUND), cancelled)
    # Ray: a task whose argument was cancelled fails with the argument's error wrapped as
    # a task error (RayTaskError(TaskCancelledError)).
    out["dependent"] = error_kind(lambda: ray.get(dependent, timeout=BOUND), cancelled)
    out["holder"] = ray.get(holder, timeout=BOUND)
    # The slot's next task runs (and the cancelled one, had it stayed queued, before it).
    out["slot_free_after"] = ray.get(mark.options(resources={"slot": 1}).remote(os.path.join(g.dir, "after"), "after"),
                                     timeout=BOUND)
    out["queued_never_ran"] = not os.path.exists(ran)
    return out


@check({"cancelled_while_pending": True, "pending_on_dependency": [True, "TaskCancelledError"], "never_ran": True,
        "done_then_cancel": 5, "cancel_not_a_ref": "raises TypeError"})
def cancel_pending_and_done():
    g = Gate("cancel-dep")
    blocker = hold.remote(g.started, g.release, 1)
    ran = os.path.join(g.dir, "ran")
    try:
        waiting = mark.remote(ran, blocker)  # waits for its argument
        ray.cancel(waiting)
        ready, _ = ray.wait([waiting], timeout=CANCEL_BOUND)
        out = {"cancelled_while_pending": bool(ready)}
    finally:
        g.open()
    out["pending_on_dependency"] = error_kind(lambda: ray.get(waiting, timeout=BOUND), ray.exceptions.TaskCancelledError)
    ray.get(blocker, timeout=BOUND)
    done = echo.remote(5)
    ray.get(done, timeout=BOUND)
    ray.cancel(done)
    out["done_then_cancel"] = ray.get(done, timeout=BOUND)
    out["never_ran"] = not os.path.exists(ran)
    out["cancel_not_a_ref"] = outcome(lambda: ray.cancel("not a ref"))
    return out


@ray.remote
def cancel_in_a_task(started, release, ran):
    # This task holds one of the head's CPUs and its blocker the other: the task it cancels
    # goes where there is room (in the cluster, another node).
    blocker = hold.remote(started, release, 1)
    waiting = mark.remote(ran, blocker)
    ray.cancel(waiting)
    touch(release)
    got = error_kind(lambda: ray.get(waiting, timeout=BOUND), ray.exceptions.TaskCancelledError)
    return [got, not os.path.exists(ran)]


@check({"from_the_driver": [True, "TaskCancelledError"], "never_ran": True,
        "from_a_task": [[True, "TaskCancelledError"], True]})
def cancel_when_the_head_is_busy():
    # The head's CPUs are all held: a task submitted now goes to the least loaded node (in
    # the cluster, another one; README "Status"). Cancelled before its argument is ready,
    # it must never run, wherever it went.
    g = Gate("cancel-busy")
    holder = hold.options(num_cpus=NODE_CPUS).remote(g.started, g.release, 1)
    ran = os.path.join(g.dir, "ran")
    try:
        wait_for_file(g.started)
        waiting = mark.remote(ran, holder)
        ray.cancel(waiting)
    finally:
        g.open()
    out = {"from_the_driver": error_kind(lambda: ray.get(waiting, timeout=BOUND), ray.exceptions.TaskCancelledError)}
    out["never_ran"] = not os.path.exists(ran)
    ray.get(holder, timeout=BOUND)
    g = Gate("cancel-in-task")
    out["from_a_task"] = ray.get(cancel_in_a_task.remote(g.started, g.release, os.path.join(g.dir, "ran")), timeout=BOUND)
    return out


@check({"interrupted": [True, "RayTaskError(TaskCancelledError)"], "forced": [True, "TaskCancelledError"],
        "goes_on": [0, 1, 2, 3]})
def cancel_running():
    out = {}
    for label, force in (("interrupted", False), ("forced", True)):
        g = Gate("cancel-running")
        r = hold.options(max_retries=0).remote(g.started, g.release, "not cancelled")
        try:
            if not wait_for_file(g.started):
                out[label] = "never started"
                continue
            ray.cancel(r, force=force)
            # Ray: the KeyboardInterrupt a running task gets comes back as a task error
            # (RayTaskError(TaskCancelledError)); a killed worker as TaskCancelledError.
            out[label] = error_kind(lambda: ray.get(r, timeout=BOUND), ray.exceptions.TaskCancelledError)
        finally:
            g.open()
    out["goes_on"] = ray.get([echo.remote(i) for i in range(4)], timeout=BOUND)
    return out


@check({"queued_call": "raises TaskCancelledError", "running_call": "held", "actor_goes_on": 1})
def cancel_actor_call():
    # Ray cancels an actor call that has not started (force=False); the actor lives on.
    # (Ray 2.60 itself sometimes never answers the next call after such a cancel when
    # other cancels came before it in the same run: "actor_goes_on" then times out there.)
    g = Gate("cancel-actor")

    @ray.remote
    class Holder:
        def hold(self, started, release):
            touch(started)
            return "held" if wait_for_file(release, 60) else "never released"

        def one(self):
            return 1

    a = Holder.remote()
    running = a.hold.remote(g.started, g.release)
    try:
        wait_for_file(g.started)
        queued = a.one.remote()
        try:
            ray.cancel(queued)
            cancelled = None
        except Exception as e:  # noqa: BLE001
            cancelled = f"cancel raises {type(e).__name__}"
    finally:
        g.open()
    out = {"queued_call": cancelled or outcome(lambda: ray.get(queued, timeout=BOUND)),
           "running_call": ray.get(running, timeout=BOUND),
           "actor_goes_on": ray.get(a.one.remote(), timeout=BOUND)}
    ray.kill(a)
    return out


@check({"in_order": list(range(12, 52, 2)), "kwargs_method": 53, "state": 53, "own_process": True,
        "two_actors_two_processes": True, "direct_instantiation": "raises TypeError",
        "direct_method_call": "raises TypeError", "unknown_method": "raises AttributeError",
        "bad_arity": "raises TypeError"})
def actors_order_and_state():
    c = Counter.remote(10, step=2)
    d = Counter.remote()
    out = {
        "in_order": ray.get([c.incr.remote() for _ in range(20)], timeout=BOUND),
        "kwargs_method": ray.get(c.add.remote(1, y=2), timeout=BOUND),
        "state": ray.get(c.get.remote(), timeout=BOUND),
    }
    pc, pd = ray.get([c.pid.remote(), d.pid.remote()], timeout=BOUND)
    out["own_process"] = pc != os.getpid()
    out["two_actors_two_processes"] = pc != pd
    out["direct_instantiation"] = outcome(lambda: Counter())
    out["direct_method_call"] = outcome(lambda: c.incr())
    out["unknown_method"] = outcome(lambda: c.no_such_method.remote())
    out["bad_arity"] = outcome(lambda: c.add.remote())
    ray.kill(c)
    ray.kill(d)
    return out


@check({"made_in_a_task": ["made", 1, "raises AttributeError"], "found": 6, "get_if_exists": 6,
        "taken": [True, "ActorAlreadyExistsError"], "missing": "raises ValueError",
        "from_task": 7, "freed_after_kill": True, "name_reused": 2, "bad_name": "raises ValueError"})
def named_actors():
    name = f"suite-counter-{os.getpid()}"
    c = Counter.options(name=name).remote(5)

    @ray.remote
    def by_name(n):
        return ray.get(ray.get_actor(n).incr.remote())

    out = {
        "found": ray.get(ray.get_actor(name).incr.remote(), timeout=BOUND),
        "get_if_exists": ray.get(Counter.options(name=name, get_if_exists=True).remote().get.remote(), timeout=BOUND),
        # Ray 2.60: ActorAlreadyExistsError, a ValueError.
        "taken": error_kind(lambda: Counter.options(name=name).remote(), ValueError),
        "missing": outcome(lambda: ray.get_actor("no-such-actor")),
        "from_task": ray.get(by_name.remote(name), timeout=BOUND),
        "bad_name": outcome(lambda: ray.get_actor("")),
    }
    # An actor a task created and named (detached: it outlives its creator), found from
    # the driver: its handle knows the class's methods.
    @ray.remote
    def make_named(n):
        Counter.options(name=n, lifetime="detached").remote()
        return "made"

    other = name + "-from-task"
    made = ray.get(make_named.remote(other), timeout=BOUND)
    found = ray.get_actor(other)
    out["made_in_a_task"] = [made, ray.get(found.incr.remote(), timeout=BOUND), outcome(lambda: found.no_such_method.remote())]
    ray.kill(found)
    ray.kill(c)
    # ray.kill is asynchronous in Ray: the name goes once the actor is dead.
    out["freed_after_kill"] = eventually(lambda: outcome(lambda: ray.get_actor(name)) == "raises ValueError")
    again = Counter.options(name=name).remote(1)
    out["name_reused"] = ray.get(again.incr.remote(), timeout=BOUND)
    ray.kill(again)
    return out


@check({"before": 1, "running_call": [True, "ActorDiedError", "at get"], "queued_call": [True, "ActorDiedError", "at get"],
        "later_call": [True, "ActorDiedError", "at get"], "kill_not_an_actor": "raises ValueError",
        "constructor_error": [True, "ActorDiedError", "at get"], "constructor_error_text": True,
        "killed_from_a_task": ["killed", [True, "ActorDiedError", "at get"]]})
def actor_kill_and_death():
    g = Gate("kill")
    died = ray.exceptions.RayActorError

    @ray.remote
    class Holder:
        def __init__(self):
            self.n = 0

        def hold(self, started, release):
            touch(started)
            return "held" if wait_for_file(release, 60) else "never released"

        def incr(self):
            self.n += 1
            return self.n

    @ray.remote
    class Broken:
        def __init__(self):
            raise RuntimeError("cannot build")

        def f(self):
            return 1

    h = Holder.remote()
    out = {"before": ray.get(h.incr.remote(), timeout=BOUND)}
    running = h.hold.remote(g.started, g.release)
    try:
        wait_for_file(g.started)
        queued = h.incr.remote()
        ray.kill(h)
        out["running_call"] = failure(lambda: running, died)
        out["queued_call"] = failure(lambda: queued, died)
        out["later_call"] = failure(lambda: h.incr.remote(), died)
    finally:
        g.open()
    out["kill_not_an_actor"] = outcome(lambda: ray.kill("not an actor"))
    @ray.remote
    def kill_it(actor):
        ray.kill(actor)
        return "killed"

    k = Holder.remote()
    ray.get(k.incr.remote(), timeout=BOUND)
    out["killed_from_a_task"] = [ray.get(kill_it.remote(k), timeout=BOUND), failure(lambda: k.incr.remote(), died)]
    b = Broken.remote()
    out["constructor_error"] = failure(lambda: b.f.remote(), died)
    try:
        ray.get(b.f.remote(), timeout=BOUND)
        out["constructor_error_text"] = "no error"
    except Exception as e:  # noqa: BLE001
        out["constructor_error_text"] = "cannot build" in str(e)
    return out


# Ray 2.60: the call that lost a process which will restart raises ActorUnavailableError
# (a RayActorError); once no restart is left, ActorDiedError.
@check({"first": 101, "crash": [True, "ActorUnavailableError", "at get"], "restarted_fresh_state": 101, "new_process": True,
        "crash_again": [True, "ActorDiedError", "at get"], "dead_after_restarts": [True, "ActorDiedError", "at get"],
        "no_restarts": [[True, "ActorDiedError", "at get"], [True, "ActorDiedError", "at get"]],
        "max_task_retries": "second life"})
def actor_max_restarts():
    died = ray.exceptions.RayActorError
    c = Counter.options(max_restarts=1).remote(100)
    pid = ray.get(c.pid.remote(), timeout=BOUND)
    out = {"first": ray.get(c.incr.remote(), timeout=BOUND)}
    out["crash"] = failure(lambda: c.crash.remote(), died)
    out["restarted_fresh_state"] = ray.get(c.incr.remote(), timeout=BOUND)
    out["new_process"] = ray.get(c.pid.remote(), timeout=BOUND) != pid
    out["crash_again"] = failure(lambda: c.crash.remote(), died)
    out["dead_after_restarts"] = failure(lambda: c.incr.remote(), died)
    m = Counter.options(max_restarts=0).remote()
    ray.get(m.incr.remote(), timeout=BOUND)
    out["no_restarts"] = [failure(lambda: m.crash.remote(), died), failure(lambda: m.incr.remote(), died)]

    @ray.remote(max_restarts=1, max_task_retries=1)
    class Flaky:
        def once(self, marker):
            # The first run kills the process; the rerun (on the restarted actor) finds the marker.
            if not os.path.exists(marker):
                touch(marker)
                os._exit(1)
            return "second life"

    f = Flaky.remote()
    out["max_task_retries"] = outcome(lambda: ray.get(f.once.remote(os.path.join(scratch("task-retries"), "m")),
                                                      timeout=BOUND))
    ray.kill(f)
    return out


@check({"task": 3, "other_actor": 4, "in_a_list": 5, "state": 5, "handle_from_actor": 6, "equal_after_travel": True,
        "through_put": 7, "made_in_a_task": [11, 12]})
def actor_handles_travel():
    @ray.remote
    def bump(counter, n):
        return ray.get([counter.incr.remote() for _ in range(n)])[-1]

    @ray.remote
    def bump_all(counters):
        return [ray.get(c.incr.remote()) for c in counters][-1]

    @ray.remote
    def same(counter, ref_hex):
        return counter

    @ray.remote
    class Relay:
        def __init__(self, counter):
            self.counter = counter

        def bump(self):
            return ray.get(self.counter.incr.remote())

        def handle(self):
            return self.counter

    c = Counter.remote()
    relay = Relay.remote(c)
    out = {
        "task": ray.get(bump.remote(c, 3), timeout=BOUND),
        "other_actor": ray.get(relay.bump.remote(), timeout=BOUND),
        "in_a_list": ray.get(bump_all.remote([c]), timeout=BOUND),
        "state": ray.get(c.get.remote(), timeout=BOUND),
    }
    back = ray.get(relay.handle.remote(), timeout=BOUND)
    out["handle_from_actor"] = ray.get(back.incr.remote(), timeout=BOUND)
    out["equal_after_travel"] = ray.get(same.remote(c, None), timeout=BOUND) == c
    out["through_put"] = ray.get(ray.get(ray.put([c]), timeout=BOUND)[0].incr.remote(), timeout=BOUND)

    @ray.remote
    def make_counter():
        made = Counter.remote(10)
        ray.get(made.incr.remote())
        return made

    made = ray.get(make_counter.remote(), timeout=BOUND)
    out["made_in_a_task"] = [ray.get(made.get.remote(), timeout=BOUND), ray.get(made.incr.remote(), timeout=BOUND)]
    ray.kill(made)
    ray.kill(relay)
    ray.kill(c)
    return out


@check({"put_list_holds_refs": [True, True], "inner_values": [5, 5], "task_returns_refs": [7, 8],
        "task_gets_nested": 5, "returned_put_ref": 9, "actor_keeps_ref": 5, "refs_equal": True})
def refs_inside_values():
    inner = ray.put(5)
    outer = ray.put([inner, {"k": inner}])
    got = ray.get(outer, timeout=BOUND)

    @ray.remote
    def make_refs():
        return [ray.put(7), echo.remote(8)]

    @ray.remote
    def deref(xs):
        return ray.get(xs[0])

    @ray.remote
    def put_and_return():
        return ray.put(9)

    @ray.remote
    class Keeper:
        def keep(self, xs):
            self.ref = xs[0]

        def read(self):
            return ray.get(self.ref)

    k = Keeper.remote()
    ray.get(k.keep.remote([inner]), timeout=BOUND)
    out = {
        "put_list_holds_refs": [isinstance(got[0], ray.ObjectRef), isinstance(got[1]["k"], ray.ObjectRef)],
        "inner_values": ray.get([got[0], got[1]["k"]], timeout=BOUND),
        "task_returns_refs": ray.get(ray.get(make_refs.remote(), timeout=BOUND), timeout=BOUND),
        "task_gets_nested": ray.get(deref.remote([inner]), timeout=BOUND),
        "returned_put_ref": ray.get(ray.get(put_and_return.remote(), timeout=BOUND), timeout=BOUND),
        "actor_keeps_ref": ray.get(k.read.remote(), timeout=BOUND),
        "refs_equal": got[0] == inner,
    }
    ray.kill(k)
    return out


def _alive_nodes():
    return [n for n in ray.nodes() if n["Alive"]]


def _infeasible(make):
    """Ray keeps a task no node can ever run pending (with a warning), not an error."""
    try:
        r = make()
    except Exception as e:  # noqa: BLE001
        return f"raises {type(e).__name__} at submit"
    ready, _ = ray.wait([r], timeout=0.5)
    if ready:
        return "finished: " + str(outcome(lambda: ray.get(r, timeout=BOUND)))
    ray.cancel(r)
    return "pending"


@check({"per_node_totals": {"CPU": 2.0, "per_node": 1.0}, "slot_total": 1.0, "num_cpus_2": "ran",
        "num_cpus_0": "ran", "fractional": "ran", "custom": "ran", "slot_on_head": True,
        "infeasible_cpus": "pending", "infeasible_custom": "pending", "available_back_to_total": True,
        "actor_holds_its_cpu": [True, True]})
def resources():
    nodes = len(_alive_nodes())
    total = ray.cluster_resources()

    @ray.remote
    def where():
        return socket.gethostname()

    @ray.remote
    def ran():
        return "ran"

    out = {
        "per_node_totals": {k: total.get(k, 0) / nodes for k in ("CPU", "per_node")},
        "slot_total": total.get("slot"),
        "num_cpus_2": ray.get(ran.options(num_cpus=NODE_CPUS).remote(), timeout=BOUND),
        "num_cpus_0": ray.get(ran.options(num_cpus=0).remote(), timeout=BOUND),
        "fractional": ray.get(ran.options(num_cpus=0.5).remote(), timeout=BOUND),
        "custom": ray.get(ran.options(resources={"per_node": 1}).remote(), timeout=BOUND),
        "slot_on_head": ray.get(where.options(resources={"slot": 1}).remote(), timeout=BOUND) == socket.gethostname(),
        "infeasible_cpus": _infeasible(lambda: ran.options(num_cpus=NODE_CPUS + 1).remote()),
        "infeasible_custom": _infeasible(lambda: ran.options(resources={"no_such_resource": 1}).remote()),
    }

    def cpus_available(n):
        return lambda: ray.available_resources().get("CPU", 0) == n

    out["available_back_to_total"] = eventually(cpus_available(total["CPU"]))
    a = Counter.options(num_cpus=1).remote()
    ray.get(a.incr.remote(), timeout=BOUND)
    held = eventually(cpus_available(total["CPU"] - 1))
    ray.kill(a)
    out["actor_holds_its_cpu"] = [held, eventually(cpus_available(total["CPU"]))]
    return out


@check({"one_probe_per_node": True, "reads_the_drivers_object": True, "its_results_in_the_driver": True,
        "refs_it_puts": True, "ref_from_another_node": True, "kv_from_every_node": True})
def objects_across_nodes():
    # Objects made on every node are read by the driver and by the other nodes' probes. On
    # one node, all of it is local.
    want = float(np.arange(N_BIG, dtype=np.float64).sum())
    ps = probes()
    nodes = len(ps)
    hosts = ray.get([p.host.remote() for p in ps], timeout=BOUND)
    big = ray.put(np.arange(N_BIG, dtype=np.float64))
    made = [p.make.remote() for p in ps]
    arrays = ray.get(made, timeout=BOUND)
    inner = [ray.get(p.put_inner.remote(), timeout=BOUND)[0] for p in ps]
    if IMPL == "ray":
        _internal_kv_module()._internal_kv_put("k", b"v", namespace="suite-nodes")
    else:
        ray.kv.put("suite-nodes/k", b"v")
    out = {
        "one_probe_per_node": len(set(hosts)) == nodes,
        "reads_the_drivers_object": all(r == [want, False] for r in ray.get([p.stats.remote(big) for p in ps], timeout=BOUND)),
        "its_results_in_the_driver": all(float(x.sum()) == want and not x.flags.writeable for x in arrays),
        "refs_it_puts": all(float(x.sum()) == want for x in ray.get(inner, timeout=BOUND)),
        # Each probe reads what the next node's probe made.
        "ref_from_another_node": all(r == [want, False] for r in ray.get(
            [p.stats.remote(made[(i + 1) % nodes]) for i, p in enumerate(ps)], timeout=BOUND)),
        "kv_from_every_node": all(v == b"v" for v in ray.get([p.kv.remote("k") for p in ps], timeout=BOUND)),
    }
    return out


@check({"memory": True, "object_store_memory": True, "node_ip_key": True})
def cluster_resources_ray_keys():
    # Ray's cluster_resources() also has "memory", "object_store_memory" and one
    # "node:<ip>" per node (programs pin tasks with the latter).
    total = ray.cluster_resources()
    return {"memory": "memory" in total, "object_store_memory": "object_store_memory" in total,
            "node_ip_key": any(k.startswith("node:") and k != "node:__internal_head__" for k in total)}


@check({"required_keys": True, "all_alive": True, "node_id_hex56": True, "unique_ids": True,
        "cpus_per_node": [2.0], "per_node_resource": [1.0], "nodes_with_slot": 1, "strings": True})
def nodes_shape():
    ns = ray.nodes()
    required = {"NodeID", "Alive", "NodeManagerAddress", "NodeManagerHostname", "Resources"}
    return {
        "required_keys": all(required <= set(n) for n in ns),
        "all_alive": all(n["Alive"] for n in ns),
        "node_id_hex56": all(re.fullmatch(r"[0-9a-f]{56}", n["NodeID"]) is not None for n in ns),
        "unique_ids": len({n["NodeID"] for n in ns}) == len(ns),
        "cpus_per_node": sorted({n["Resources"].get("CPU") for n in ns}),
        "per_node_resource": sorted({n["Resources"].get("per_node") for n in ns}),
        "nodes_with_slot": sum(1 for n in ns if n["Resources"].get("slot")),
        "strings": all(isinstance(n["NodeManagerAddress"], str) and isinstance(n["NodeManagerHostname"], str) for n in ns),
    }


@check({"put": [False, True, "1"], "put_str_value": False, "list": ["suite/a", "suite/b"], "exists": [True, False],
        "task_reads_and_writes": ["1", "from task"], "watch_changes": [["suite/w", "1"], ["suite/w", "2"], ["suite/w", None]],
        "watch_wakes_on_task_put": [["suite/t/x", "w"]], "watch_timeout_empty": [[], True],
        "delete_prefix": [4, []], "bad_key": "raises TypeError"})
def kv_store():
    kv = getattr(ray, "kv", None)
    if kv is None:
        raise Skip("ray.kv is rayhpc's own")

    def text(b):
        return None if b is None else b.decode()

    @ray.remote
    def reader():
        ray.kv.put("suite/c", b"from task")
        return text(ray.kv.get("suite/a"))

    @ray.remote
    def writer():
        ray.kv.put("suite/t/x", b"w")

    out = {"put": [kv.put("suite/a", b"1"), kv.put("suite/a", b"2", overwrite=False), text(kv.get("suite/a"))],
           "put_str_value": kv.put("suite/b", "text")}
    out["list"] = [text(k) for k in kv.list("suite/")]
    out["exists"] = [kv.exists("suite/a"), kv.exists("suite/zz")]
    out["task_reads_and_writes"] = [ray.get(reader.remote(), timeout=BOUND), text(kv.get("suite/c"))]
    v0 = kv.watch("suite/w", 0, timeout=0).version
    kv.put("suite/w", b"1")
    kv.put("suite/w", b"2")
    kv.delete("suite/w")
    out["watch_changes"] = [[text(k), text(v)] for k, v in kv.watch("suite/w", v0, timeout=0).changes]
    v1 = kv.watch("suite/t/", 0, timeout=0).version
    w = writer.remote()
    out["watch_wakes_on_task_put"] = [[text(k), text(v)] for k, v in kv.watch("suite/t/", v1, timeout=BOUND).changes]
    ray.get(w, timeout=BOUND)
    v2 = kv.watch("suite/none/", 0, timeout=0).version
    ev = kv.watch("suite/none/", v2, timeout=0.05)
    out["watch_timeout_empty"] = [ev.changes, ev.version == v2]
    out["delete_prefix"] = [kv.delete("suite/", prefix=True), kv.list("suite/")]
    out["bad_key"] = outcome(lambda: kv.put(1, b"x"))
    return out


@check({"initialized": True, "put": [False, True, True, "2"], "namespaces_apart": ["0", "2"], "exists": [True, False],
        "list": ["k", "k2"], "task_sees": "2", "task_writes": "t", "delete": [1, False], "delete_prefix": 2})
def internal_kv():
    ikv = _internal_kv_module()

    def text(b):
        return None if b is None else b.decode()

    @ray.remote
    def task_side():
        tk = _internal_kv_module()
        tk._internal_kv_put("from-task", b"t", namespace="suite")
        return text(tk._internal_kv_get("k", namespace="suite"))

    ns = "suite"
    out = {"initialized": ikv._internal_kv_initialized()}
    out["put"] = [ikv._internal_kv_put("k", b"1", namespace=ns), ikv._internal_kv_put("k", b"2", namespace=ns),
                  ikv._internal_kv_put("k", b"3", overwrite=False, namespace=ns), text(ikv._internal_kv_get("k", namespace=ns))]
    ikv._internal_kv_put("k", b"0")
    out["namespaces_apart"] = [text(ikv._internal_kv_get("k")), text(ikv._internal_kv_get("k", namespace=ns))]
    out["exists"] = [ikv._internal_kv_exists("k", namespace=ns), ikv._internal_kv_exists("nope", namespace=ns)]
    ikv._internal_kv_put("k2", b"x", namespace=ns)
    out["list"] = sorted(text(k) for k in ikv._internal_kv_list("k", namespace=ns))
    out["task_sees"] = ray.get(task_side.remote(), timeout=BOUND)
    out["task_writes"] = text(ikv._internal_kv_get("from-task", namespace=ns))
    out["delete"] = [ikv._internal_kv_del("k", namespace=ns), ikv._internal_kv_exists("k", namespace=ns)]
    out["delete_prefix"] = ikv._internal_kv_del("", del_by_prefix=True, namespace=ns)
    ikv._internal_kv_del("k")
    return out


def _internal_kv_module():
    """`ray.experimental.internal_kv` of the implementation under test."""
    import importlib
    return importlib.import_module(ray.__name__ + ".experimental.internal_kv")


RAY_CONTEXT_METHODS = ["get_job_id", "get_node_id", "get_task_id", "get_actor_id", "get_worker_id",
                       "get_assigned_resources", "get_actor_name", "get_task_name", "get_placement_group_id",
                       "get_runtime_env_string", "was_current_actor_reconstructed", "namespace", "current_actor",
                       "get_accelerator_ids"]


def _call(c, name, default="missing"):
    m = getattr(c, name, None)
    return m() if callable(m) else default


@check({"missing_methods": []})
def runtime_context_api():
    if not hasattr(ray, "get_runtime_context"):
        raise Skip("no ray.get_runtime_context")
    ctx = ray.get_runtime_context()
    # Looked up on the class: some of Ray's are properties that raise in a driver.
    return {"missing_methods": [m for m in RAY_CONTEXT_METHODS if not hasattr(type(ctx), m)]}


@check({"job_id_hex8": True, "task_job_id_same": True, "namespace_is_str": True, "driver_node_id_listed": True,
        "node_id_per_node": [True, True]})
def runtime_context_ids():
    ctx = ray.get_runtime_context()

    @ray.remote
    def job_id():
        return ray.get_runtime_context().get_job_id()

    nodes = _alive_nodes()
    # The probe of every node reports the node id that ray.nodes() gives its host.
    seen = ray.get([p.context.remote() for p in probes()], timeout=BOUND)
    by_host = {n["NodeManagerHostname"]: n["NodeID"] for n in nodes}
    return {
        # Ray's job ids are 4 bytes in hex ("01000000").
        "job_id_hex8": re.fullmatch(r"[0-9a-f]{8}", ctx.get_job_id()) is not None,
        "task_job_id_same": ray.get(job_id.remote(), timeout=BOUND) == ctx.get_job_id(),
        "namespace_is_str": isinstance(ctx.namespace, str),
        "driver_node_id_listed": ctx.get_node_id() in {n["NodeID"] for n in nodes},
        "node_id_per_node": [len({host for host, *_ in seen}) == len(nodes),
                             all(by_host.get(host) == nid for host, nid, _, _ in seen)],
    }


@check({"task_assigned_resources": {"CPU": 1.0}, "actor_assigned_resources": {"probe": 1.0},
        "task_id_in_task": True, "actor_id_in_actor": True})
def runtime_context_in_workers():
    @ray.remote
    def task_side():
        c = ray.get_runtime_context()
        return [c.get_assigned_resources(), _call(c, "get_task_id")]

    res, tid = ray.get(task_side.remote(), timeout=BOUND)
    seen = ray.get([p.context.remote() for p in probes()], timeout=BOUND)
    hexid = re.compile(r"[0-9a-f]+")
    return {
        "task_assigned_resources": res,
        "actor_assigned_resources": seen[0][3],
        "task_id_in_task": isinstance(tid, str) and hexid.fullmatch(tid) is not None,
        "actor_id_in_actor": all(isinstance(aid, str) and hexid.fullmatch(aid) is not None for _, _, aid, _ in seen),
    }


# How long actors that fit may take to start (Ray: well under a second; rayhpc: ~0.1 s).
START_BOUND = 3.0


@check({"first_round": [True, True], "right_after_kill": [True, True]})
def whole_node_actors_after_kill():
    # Actors that each take all of a node's CPUs, one per node; all killed, then as many
    # again at once: every one of them fits on a node of its own, and starts.
    @ray.remote
    class Whole:
        def host(self):
            return socket.gethostname()

    nodes = len(_alive_nodes())
    out = {}
    for label in ("first_round", "right_after_kill"):
        actors = [Whole.options(num_cpus=NODE_CPUS).remote() for _ in range(nodes)]
        refs = [a.host.remote() for a in actors]
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=START_BOUND)
        out[label] = [len(ready) == nodes, len(set(ray.get(ready, timeout=BOUND))) == len(ready)]
        for a in actors:
            ray.kill(a)
    return out


@check({"is_initialized": True, "init_twice": "raises RuntimeError", "ignore_reinit_error": "no error"})
def init_state():
    return {
        "is_initialized": ray.is_initialized(),
        "init_twice": outcome(lambda: ray.init()),
        "ignore_reinit_error": outcome(lambda: (ray.init(ignore_reinit_error=True), "no error")[1]),
    }


# --------------------------------------------------------------------------- running

_MISSING = "<missing>"


def _plain(x):
    return json.loads(json.dumps(x))


def run_check(fn):
    """"ok", "mismatch: ...", "skipped: ..." or "error: ..." for one check."""
    try:
        observed = fn()
    except Skip as e:
        return f"skipped: {e}"
    except Exception as e:  # noqa: BLE001
        traceback.print_exc(file=sys.stderr)
        first = str(e).splitlines()[0][:200] if str(e) else ""
        return f"error: {type(e).__name__}: {first}"
    try:
        observed = _plain(observed)
    except (TypeError, ValueError) as e:
        return f"error: the observation is not JSON: {e}"
    expect = _plain(fn.expect)
    diffs = []
    for label in list(expect) + [k for k in observed if k not in expect]:
        want, got = expect.get(label, _MISSING), observed.get(label, _MISSING)
        if want != got:
            diffs.append(f"{label}: observed {json.dumps(got)}, expected {json.dumps(want)}")
    return "ok" if not diffs else "mismatch: " + "; ".join(diffs)


def init():
    if IMPL != "ray" and os.environ.get("RAYHPC_ADDRESS"):
        ray.init()  # attached: the launch gave its nodes their resources
    elif IMPL == "ray":
        ray.init(num_cpus=NODE_CPUS, resources=HEAD_RESOURCES, include_dashboard=False, log_to_driver=False)
    else:
        ray.init(num_cpus=NODE_CPUS, resources=HEAD_RESOURCES)


def main(argv):
    """Runs the checks (all, or those named in `argv`); prints the JSON object last."""
    global SCRATCH
    chosen = [fn for fn in CHECKS if not argv or fn.__name__ in argv]
    unknown = set(argv) - {fn.__name__ for fn in CHECKS}
    if unknown:
        sys.exit(f"api_suite: no check named {sorted(unknown)}")
    SCRATCH = tempfile.mkdtemp(prefix="api-suite-", dir=os.environ.get("API_SUITE_SCRATCH"))
    os.chmod(SCRATCH, 0o755)
    t0 = time.monotonic()
    results = {}
    try:
        init()
        for fn in chosen:
            t = time.monotonic()
            results[fn.__name__] = run_check(fn)
            print(f"api_suite: {fn.__name__}: {time.monotonic() - t:.2f} s: {results[fn.__name__]}", file=sys.stderr,
                  flush=True)
        for p in _PROBES:
            ray.kill(p)
        ray.shutdown()
    finally:
        shutil.rmtree(SCRATCH, ignore_errors=True)
    print(f"api_suite: {len(chosen)} checks in {time.monotonic() - t0:.2f} s", file=sys.stderr, flush=True)
    print(json.dumps(results), flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
