"""Tasks, objects and errors through `import rayhpc as ray`, as Ray Core programs use them."""

import os
import pickle
import signal
import threading
import time

import pytest

import rayhpc as ray
from rayhpc import exceptions


@ray.remote
def add(a, b=10):
    return a + b


@ray.remote
def echo(x):
    return x


@ray.remote
def fails(msg):
    raise ValueError(msg)


def test_tasks_return_futures_and_get_reads_one_or_many(ray_start):
    r = add.remote(1, 2)
    assert isinstance(r, ray.ObjectRef)
    assert ray.get(r) == 3
    assert ray.get([add.remote(i, i) for i in range(50)]) == [2 * i for i in range(50)]
    # As Ray: a list, not a tuple.
    with pytest.raises(ValueError, match="must either be an ObjectRef or a list of ObjectRefs"):
        ray.get((add.remote(1), add.remote(1, b=2)))
    assert ray.get(add.remote(a=5, b=6)) == 11


def test_refs_as_arguments_are_resolved_and_chain_into_a_dag(ray_start):
    x = ray.put(41)
    assert ray.get(add.remote(x, 1)) == 42
    # A chain: each task waits for the previous one's result.
    r = ray.put(0)
    for _ in range(20):
        r = add.remote(r, 1)
    assert ray.get(r) == 20
    # A tree: sums of sums.
    leaves = [echo.remote(i) for i in range(16)]
    while len(leaves) > 1:
        leaves = [add.remote(leaves[i], leaves[i + 1]) for i in range(0, len(leaves), 2)]
    assert ray.get(leaves[0]) == sum(range(16))


def test_values_of_many_kinds_round_trip(ray_start):
    class Point:  # defined here: travels by value (cloudpickle)
        def __init__(self, x, y):
            self.x, self.y = x, y

    values = [None, True, 3, 2.5, "text", b"bytes", [1, [2]], {"k": (1, 2)}, set([1, 2]), b"x" * 200_000]
    for v in values:
        assert ray.get(echo.remote(v)) == v
        assert ray.get(ray.put(v)) == v
    p = ray.get(echo.remote(Point(1, 2)))
    assert (p.x, p.y) == (1, 2)
    assert ray.get(ray.remote(lambda: "lambda")
                   .remote()) == "lambda"


def test_an_exception_comes_back_as_its_own_class_and_as_a_task_error(ray_start):
    with pytest.raises(ValueError) as info:
        ray.get(fails.remote("bad input"))
    e = info.value
    assert isinstance(e, exceptions.RayTaskError)
    assert isinstance(e.cause, ValueError) and e.cause.args == ("bad input",)
    assert "fails" in str(e) and "bad input" in str(e)
    assert "in fails" in e.traceback_str and "ValueError: bad input" in e.traceback_str, e.traceback_str
    assert "_worker.py" not in e.traceback_str, "the worker's own frame is left out"
    # A task depending on a failed object fails with the same error, without running.
    with pytest.raises(ValueError, match="bad input"):
        ray.get(add.remote(fails.remote("bad input"), 1))
    # A list get raises the first failure.
    with pytest.raises(ValueError):
        ray.get([add.remote(1, 1), fails.remote("x")])


@ray.remote
def gets(ref_list):
    return ray.get(ref_list[0])


@ray.remote
class Relay:
    def relay(self, depth):
        return ray.get(nested_failure.remote(depth))


@ray.remote
def nested_failure(depth):
    if depth == 0:
        raise KeyError("deep")
    return ray.get(nested_failure.remote(depth - 1))


def test_an_error_through_nested_tasks_and_actors_keeps_its_class_and_every_traceback(ray_start):
    # Three tasks deep, then through an actor and a task that was passed the ref: each
    # level's get raises the innermost exception's class, with the texts of the levels below.
    with pytest.raises(KeyError) as info:
        ray.get(nested_failure.remote(3))
    e = info.value
    assert isinstance(e, exceptions.RayTaskError) and type(e).__name__ == "RayTaskError(KeyError)"
    assert isinstance(e.cause, KeyError) and e.cause.args == ("deep",)
    assert e.traceback_str.count("in nested_failure") >= 4 and "deep" in str(e), str(e)
    with pytest.raises(KeyError, match="deep"):
        ray.get(Relay.remote().relay.remote(1))
    with pytest.raises(KeyError, match="deep"):
        ray.get(gets.remote([nested_failure.remote(1)]))
    # The error pickles as itself (a program may send it on, or keep it).
    again = pickle.loads(pickle.dumps(e))
    assert type(again).__name__ == "RayTaskError(KeyError)" and isinstance(again, KeyError)
    assert again.cause.args == ("deep",) and str(again) == str(e)


def test_bad_calls_fail_at_the_call_with_clear_errors(ray_start):
    with pytest.raises(TypeError, match="cannot be called directly"):
        add(1, 2)
    with pytest.raises(TypeError):
        add.remote()  # missing a
    with pytest.raises(TypeError):
        add.remote(1, 2, 3)
    with pytest.raises(TypeError):
        add.remote(1, c=2)
    with pytest.raises(TypeError, match="serialize"):
        echo.remote(threading.Lock())
    with pytest.raises(TypeError):
        ray.put(ray.put(1))
    with pytest.raises(ValueError):
        ray.get("not a ref")
    with pytest.raises(ValueError, match="Invalid option"):
        add.options(no_such_option=1)
    with pytest.raises(RuntimeError, match="twice"):
        ray.init()
    ray.init(ignore_reinit_error=True)


def test_an_unpicklable_result_fails_at_get(ray_start):
    @ray.remote
    def make_lock():
        return threading.Lock()

    with pytest.raises(exceptions.RayTaskError, match="lock"):
        ray.get(make_lock.remote())


def test_get_with_a_timeout_raises_get_timeout_error(ray_start):
    @ray.remote
    def slow():
        time.sleep(1.0)
        return 1

    r = slow.remote()
    t = time.monotonic()
    with pytest.raises(exceptions.GetTimeoutError):
        ray.get(r, timeout=0.1)
    assert time.monotonic() - t < 0.9
    assert isinstance(exceptions.GetTimeoutError("x"), TimeoutError)
    assert ray.get(r) == 1


def test_wait_splits_ready_from_pending_in_order(ray_start):
    @ray.remote
    def sleep_then(s, v):
        time.sleep(s)
        return v

    fast = [sleep_then.remote(0, i) for i in range(3)]
    slow = sleep_then.remote(2.0, "slow")
    ready, rest = ray.wait(fast + [slow], num_returns=3, timeout=1.5)
    assert ready == fast and rest == [slow]
    ready, rest = ray.wait([slow], timeout=0.05)
    assert (ready, rest) == ([], [slow])
    with pytest.raises(ValueError):
        ray.wait([slow, slow])
    with pytest.raises(ValueError):
        ray.wait(fast, num_returns=4)
    with pytest.raises(TypeError):
        ray.wait(slow)
    assert ray.get(slow) == "slow"  # leave no task running for the next test


def test_a_worker_killed_mid_task_is_retried_then_reported(ray_start, tmp_path):
    marker = tmp_path / "crashed-once"

    @ray.remote(max_retries=2)
    def crash_once(path):
        if not os.path.exists(path):
            open(path, "w").close()
            os._exit(1)
        return "second attempt"

    assert ray.get(crash_once.remote(str(marker))) == "second attempt"

    @ray.remote(max_retries=0)
    def always_crash():
        os.kill(os.getpid(), signal.SIGKILL)

    with pytest.raises(exceptions.WorkerCrashedError, match="died"):
        ray.get(always_crash.remote())

    @ray.remote(max_retries=1)
    def crash_twice():
        os._exit(3)

    with pytest.raises(exceptions.WorkerCrashedError, match="2 attempt"):
        ray.get(crash_twice.remote())
    # The runtime goes on.
    assert ray.get(add.remote(1, 1)) == 2


def test_application_errors_are_retried_only_with_retry_exceptions(ray_start, tmp_path):
    counter = tmp_path / "count"

    @ray.remote(max_retries=3, retry_exceptions=True)
    def flaky(path):
        n = int(open(path).read()) if os.path.exists(path) else 0
        open(path, "w").write(str(n + 1))
        if n < 2:
            raise RuntimeError(f"attempt {n}")
        return n

    assert ray.get(flaky.remote(str(counter))) == 2
    counter.unlink()
    with pytest.raises(RuntimeError, match="attempt 0"):
        ray.get(flaky.options(retry_exceptions=False).remote(str(counter)))
    counter.unlink()


class Transient(Exception):
    pass


def test_retry_exceptions_as_a_list_retries_only_those_classes(ray_start, tmp_path):
    @ray.remote(max_retries=3)
    def flaky(path, exc):
        n = int(open(path).read()) if os.path.exists(path) else 0
        open(path, "w").write(str(n + 1))
        if n < 2:
            raise exc(f"attempt {n}")
        return n

    listed = flaky.options(retry_exceptions=[Transient, KeyError])
    # A listed class (one defined in the test module, pickled by value too) is retried; a
    # subclass of a listed one as well; another class fails at its first attempt.
    assert ray.get(listed.remote(str(tmp_path / "a"), Transient)) == 2
    assert ray.get(listed.remote(str(tmp_path / "b"), KeyError)) == 2
    with pytest.raises(ValueError, match="attempt 0"):
        ray.get(listed.remote(str(tmp_path / "c"), ValueError))
    assert (tmp_path / "c").read_text() == "1"
    # Keyword arguments and several returns travel with the list.
    @ray.remote(max_retries=1, retry_exceptions=(Transient,), num_returns=2)
    def pair(path, *, exc):
        n = int(open(path).read()) if os.path.exists(path) else 0
        open(path, "w").write(str(n + 1))
        if n < 1:
            raise exc("once")
        return n, -n

    assert ray.get(list(pair.remote(str(tmp_path / "d"), exc=Transient))) == [1, -1]
    # As Ray: a list of anything but exception classes, or another type, is refused.
    with pytest.raises(ValueError, match="either a boolean or a list of exceptions"):
        flaky.options(retry_exceptions=[ValueError, "KeyError"])
    with pytest.raises(TypeError, match="retry_exceptions"):
        flaky.options(retry_exceptions="ValueError")


def test_resources_bound_how_many_tasks_run_at_once(ray_start):
    @ray.remote
    def span(s):
        t = time.monotonic()
        time.sleep(s)
        return (t, time.monotonic(), os.getpid())

    # Two CPUs: two 1-CPU tasks overlap, two 2-CPU tasks do not.
    a, b = ray.get([span.remote(0.3), span.remote(0.3)])
    assert a[0] < b[1] and b[0] < a[1], "1-CPU tasks ran one after the other"
    assert a[2] != b[2], "in two worker processes"
    a, b = ray.get([span.options(num_cpus=2).remote(0.2), span.options(num_cpus=2).remote(0.2)])
    assert a[1] <= b[0] or b[1] <= a[0], "2-CPU tasks overlapped on 2 CPUs"
    # More than the node has, or a resource it has none of: pending, as Ray keeps such a
    # task (with a warning), until cancelled; the node goes on.
    for too_much in (span.options(num_cpus=3), span.options(resources={"no_such": 1})):
        r = too_much.remote(0)
        assert ray.wait([r], timeout=0.2) == ([], [r])
        ray.cancel(r)
        with pytest.raises(exceptions.TaskCancelledError):
            ray.get(r, timeout=60)
    # A malformed amount is still refused at the call.
    with pytest.raises(ValueError):
        span.options(num_cpus=1.5).remote(0)
    assert ray.cluster_resources()["CPU"] == 2
    [node] = ray.nodes()
    assert node["Alive"] and node["Resources"]["CPU"] == 2 and len(node["NodeID"]) == 56
    # Executors give their CPU leases back once idle, a moment after the last task.
    deadline = time.monotonic() + 5
    while ray.available_resources().get("CPU") != 2 and time.monotonic() < deadline:
        time.sleep(0.01)
    assert ray.available_resources().get("CPU") == 2


def test_workers_are_reused_and_bounded_by_concurrency(ray_start):
    @ray.remote
    def pid():
        return os.getpid()

    pids = set(ray.get([pid.remote() for _ in range(200)]))
    live, _ = ray._native.workers()
    assert pids <= set(live) and len(pids) <= 3, (pids, live)


def test_a_task_error_exposes_the_cause_and_its_attributes(ray_start):
    class Coded(Exception):
        def __init__(self, code):
            super().__init__(f"code {code}")
            self.code = code

    @ray.remote
    def raise_coded():
        raise Coded(7)

    with pytest.raises(Coded) as info:
        ray.get(raise_coded.remote())
    assert info.value.code == 7 and isinstance(info.value, exceptions.RayTaskError)
    assert type(info.value).__name__ == "RayTaskError(Coded)"


def test_arguments_over_the_per_call_limit_fail_clearly_and_the_worker_goes_on(ray_start):
    @ray.remote
    def size(*xs):
        return sum(len(x) for x in xs)

    # One argument over 1 MiB goes through the store whatever its size; many just under it
    # travel with the call, whose message has a limit (16 MiB).
    with pytest.raises(exceptions.RayTaskError, match="over the current limit"):
        ray.get(size.remote(*[b"x" * ((1 << 20) - 100)] * 20))
    assert ray.get(size.remote(b"x" * 1000)) == 1000
    assert ray.get(size.remote(b"x" * (20 << 20))) == 20 << 20


def test_num_returns_gives_one_ref_per_item(ray_start):
    @ray.remote(num_returns=3)
    def three(x):
        return x, x + 1, [x + 2]

    a, b, c = three.remote(1)
    assert ray.get([a, b, c]) == [1, 2, [3]]

    @ray.remote
    def pair(n):
        import numpy as np
        return np.arange(n), "label"

    arr, label = pair.options(num_returns=2).remote(1 << 20)  # one big item and one small
    assert ray.get(label) == "label"
    assert ray.get(arr)[-1] == (1 << 20) - 1
    # The wrong number of items fails every ref with the same error.
    refs = three.options(num_returns=2).remote(5)
    for r in refs:
        with pytest.raises(ValueError, match="returned 3 objects, but num_returns=2"):
            ray.get(r)
    # None: the call runs all the same, its result is dropped (as in Ray).
    @ray.remote(num_returns=0)
    def mark(path):
        open(path, "w").write("ran")
        return "dropped"

    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"rayhpc-mark-{os.getpid()}")
    assert mark.remote(path) is None
    deadline = time.monotonic() + 60
    while not os.path.exists(path) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert open(path).read() == "ran"
    os.unlink(path)
    with pytest.raises(ValueError, match="num_returns"):
        three.options(num_returns=-1)
    with pytest.raises(ValueError, match="num_returns"):
        three.options(num_returns="many")

    @ray.remote
    class Splitter:
        @ray.method(num_returns=2)
        def split(self, s):
            return s[:1], s[1:]

        def whole(self, s):
            return s

    sp = Splitter.remote()
    h, t = sp.split.remote("abc")
    assert ray.get([h, t]) == ["a", "bc"]
    u, v = sp.whole.options(num_returns=2).remote(("u", "v"))
    assert ray.get([u, v]) == ["u", "v"]

    @ray.remote
    def nested():
        p, q = pair.options(num_returns=2).remote(3)
        return list(ray.get(p)), ray.get(q)

    assert ray.get(nested.remote()) == ([0, 1, 2], "label")


def test_cancel_stops_queued_and_running_tasks(ray_start):
    # Tasks say when they started and block until released (KV events, not sleeps), so each
    # cancel below meets the state it is meant for, however slow the machine.
    @ray.remote
    def block(tag):
        ray.kv.put(f"started/{tag}", b"1")
        v = 0
        while not ray.kv.exists(f"release/{tag}"):
            v = ray.kv.watch(f"release/{tag}", since=v, timeout=1).version
        return tag

    @ray.remote
    def after(x):
        return x

    def wait_started(*tags):
        v, end = 0, time.monotonic() + 60
        while not all(ray.kv.exists(f"started/{t}") for t in tags):
            assert time.monotonic() < end, f"{tags} did not start"
            v = ray.kv.watch("started/", since=v, timeout=1).version

    # Running: interrupted (KeyboardInterrupt in the task), or its worker killed with force.
    for force in (False, True):
        tag = f"run-{force}"
        r = block.remote(tag)
        wait_started(tag)
        ray.cancel(r, force=force)
        with pytest.raises(exceptions.TaskCancelledError):
            ray.get(r, timeout=60)
    # Queued behind two running tasks on two CPUs: fails at once (the CPUs still held) and
    # never runs; a task depending on it fails too, once it gets a CPU.
    busy = [block.remote("b0"), block.remote("b1")]
    wait_started("b0", "b1")
    queued = block.remote("q")
    dependent = after.remote(queued)
    ray.cancel(queued)
    with pytest.raises(exceptions.TaskCancelledError):
        ray.get(queued, timeout=60)
    for t in ("b0", "b1", "q"):
        ray.kv.put(f"release/{t}", b"1")
    with pytest.raises(exceptions.TaskCancelledError):
        ray.get(dependent, timeout=60)
    assert ray.get(busy) == ["b0", "b1"]
    assert not ray.kv.exists("started/q"), "the cancelled queued task ran"
    # Done already: nothing changes; workers are fine afterwards.
    done = after.remote(0)
    assert ray.get(done) == 0
    ray.cancel(done)
    assert ray.get(done) == 0
    assert ray.get([after.remote(i) for i in range(4)]) == [0, 1, 2, 3]
    with pytest.raises(TypeError):
        ray.cancel("not a ref")


def test_a_huge_exception_reaches_get_as_a_task_error(ray_start):
    @ray.remote(max_retries=2)
    def boom():
        raise ValueError(b"x" * (20 << 20))

    with pytest.raises(exceptions.RayTaskError, match="ValueError"):
        ray.get(boom.remote(), timeout=60)


def test_an_idle_worker_holds_no_store_object(ray_start):
    import numpy as np

    @ray.remote
    def keep_nothing(a):
        inner = ray.put(np.ones(1 << 20))
        ray.get(inner)
        return float(a[0])

    big = ray.put(np.ones(4 << 20))
    assert ray.get(keep_nothing.remote(big)) == 1.0
    del big
    # Everything the call touched goes once the call is done: the store empties.
    store = ray._native.store_objects
    deadline = time.time() + 10
    while store() != 0 and time.time() < deadline:
        time.sleep(0.05)
    assert store() == 0


def test_runtime_env_gives_env_vars_a_working_dir_and_modules_to_tasks_and_actors(ray_start, tmp_path):
    wd = tmp_path / "wd"
    wd.mkdir()
    (wd / "wd_module.py").write_text("VALUE = 'from the working dir'\n")
    (wd / "data.txt").write_text("data\n")
    pkg = tmp_path / "mods" / "env_pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("NAME = 'env_pkg'\n")

    @ray.remote(runtime_env={"env_vars": {"RAYHPC_TEST_FOO": "bar"}})
    def env():
        return os.environ.get("RAYHPC_TEST_FOO"), os.environ.get("RAYHPC_TEST_JOB")

    @ray.remote
    def plain():
        return os.environ.get("RAYHPC_TEST_FOO"), os.getcwd()

    @ray.remote(runtime_env={"working_dir": str(wd), "py_modules": [str(pkg)]})
    def files():
        import env_pkg
        import wd_module
        return wd_module.VALUE, env_pkg.NAME, open("data.txt").read().strip()

    @ray.remote(runtime_env={"env_vars": {"RAYHPC_TEST_ACTOR": "yes"}})
    class Env:
        def get(self):
            return os.environ.get("RAYHPC_TEST_ACTOR")

    assert ray.get(env.remote()) == ("bar", None)
    assert ray.get(env.options(runtime_env={"env_vars": {"RAYHPC_TEST_FOO": "other"}}).remote())[0] == "other"
    assert ray.get(files.remote()) == ("from the working dir", "env_pkg", "data")
    # A task's environment ends with it: the next task in that worker has none of it.
    for var, cwd in ray.get([plain.remote() for _ in range(8)]):
        assert var is None and cwd != str(wd)
    assert ray.get(Env.remote().get.remote()) == "yes"
    # A working_dir gone by the time the call runs fails that call only, leaving the worker
    # as it was (no env var of that call stays behind).
    gone = tmp_path / "gone"
    gone.mkdir()
    late = env.options(runtime_env={"working_dir": str(gone), "env_vars": {"RAYHPC_TEST_FOO": "stale"}})
    gone.rmdir()
    with pytest.raises(FileNotFoundError):
        ray.get(late.remote())
    for var, _ in ray.get([plain.remote() for _ in range(8)]):
        assert var is None
    # What a worker here cannot provide is refused, naming it.
    with pytest.raises(ValueError, match="'pip' is not supported"):
        env.options(runtime_env={"pip": ["requests"]})
    with pytest.raises(ValueError, match="working_dir"):
        env.options(runtime_env={"working_dir": str(tmp_path / "missing")})
    # The job's runtime_env (init's) is every task's, under the task's own.
    ray.shutdown()
    ray.init(num_cpus=2, runtime_env={"env_vars": {"RAYHPC_TEST_JOB": "job", "RAYHPC_TEST_FOO": "job"}})
    assert ray.get(env.remote()) == ("bar", "job")
    assert ray.get(plain.remote())[0] == "job"


def test_the_exceptions_of_ray_are_all_there_in_rays_hierarchy():
    # Programs name them in `except` clauses: each must exist, under the same bases as Ray's.
    e = exceptions
    hierarchy = {
        "ObjectLostError": ["ObjectFetchTimedOutError", "ReferenceCountingAssertionError", "ObjectFreedError",
                            "OwnerDiedError", "ObjectReconstructionFailedError"],
        "RayActorError": ["ActorDiedError", "ActorUnavailableError"],
        "ValueError": ["ActorAlreadyExistsError", "ActorHandleNotFoundError"],
        "TimeoutError": ["GetTimeoutError"],
        "RayError": ["CrossLanguageError", "TaskCancelledError", "RayTaskError", "LocalRayletDiedError",
                     "WorkerCrashedError", "RaySystemError", "AuthenticationError", "UserCodeException",
                     "ObjectStoreFullError", "OutOfDiskError", "OutOfMemoryError", "NodeDiedError", "RpcError",
                     "PlasmaObjectNotAvailable", "AsyncioActorExit", "RuntimeEnvSetupError",
                     "TaskPlacementGroupRemoved", "ActorPlacementGroupRemoved", "PendingCallsLimitExceeded",
                     "TaskUnschedulableError", "ActorUnschedulableError", "ObjectRefStreamEndOfStreamError",
                     "UnserializableException"],
    }
    bases = {"ObjectLostError": e.ObjectLostError, "RayActorError": e.RayActorError, "ValueError": ValueError,
             "TimeoutError": TimeoutError, "RayError": e.RayError}
    for base, names in hierarchy.items():
        b = bases[base]
        for n in names:
            assert issubclass(getattr(e, n), b), f"{n} is not a {base}"
            assert issubclass(getattr(e, n), e.RayError), f"{n} is not a RayError"
    assert ray.exceptions is exceptions


def test_max_calls_retires_a_worker_after_that_many_calls_of_the_function(ray_start):
    @ray.remote(max_calls=2)
    def pid(fail=False):
        if fail:
            raise ValueError("counted too")
        return os.getpid()

    # One call at a time: each worker process runs the function twice, then a new one comes.
    pids = [ray.get(pid.remote()) for _ in range(6)]
    assert [pids.count(p) for p in pids] == [2] * 6 and len(set(pids)) == 3, pids
    # A failed call counts as a call.
    first = ray.get(pid.remote())
    with pytest.raises(ValueError):
        ray.get(pid.remote(True))
    assert ray.get(pid.remote()) != first
    with pytest.raises(ValueError, match="max_calls"):
        pid.options(max_calls=-1)


def test_generator_tasks_and_methods_give_a_ref_per_item_and_an_error_as_the_last(ray_start):
    import asyncio

    @ray.remote(num_returns="dynamic")
    def squares(n):
        for i in range(n):
            yield i * i

    @ray.remote(num_returns="streaming")
    def stream(n, fail_at=-1):
        for i in range(n):
            if i == fail_at:
                raise ValueError(f"failed at {i}")
            yield {"i": i}

    @ray.remote
    class Source:
        @ray.method(num_returns="streaming")
        def words(self, n):
            yield from (f"w{i}" for i in range(n))

    gen = ray.get(squares.remote(5))
    assert isinstance(gen, ray.ObjectRefGenerator) and [ray.get(r) for r in gen] == [0, 1, 4, 9, 16]
    assert [ray.get(r)["i"] for r in stream.remote(3)] == [0, 1, 2]
    got = []
    for ref in stream.remote(5, fail_at=2):
        try:
            got.append(ray.get(ref)["i"])
        except ValueError as e:
            got.append(str(e).splitlines()[-1])
    assert got == [0, 1, "ValueError: failed at 2"]

    async def consume():
        return [(await r)["i"] async for r in stream.remote(4)]

    assert asyncio.run(consume()) == [0, 1, 2, 3]
    assert [ray.get(r) for r in Source.remote().words.remote(3)] == ["w0", "w1", "w2"]
    # The generator may travel (into a task).
    @ray.remote
    def total(g):
        return sum(ray.get(list(g)))

    assert ray.get(total.remote(ray.get(squares.remote(4)))) == 14

    @ray.remote(num_returns="dynamic")
    def not_a_generator():
        return 5

    with pytest.raises(TypeError, match="not iterable"):
        ray.get(not_a_generator.remote())
