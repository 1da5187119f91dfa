"""Actors: state in a worker process of their own, methods in submission order, handles that
travel into tasks and other actors, kill, names, restarts, and errors as Ray raises them."""

import os
import threading
import time

import pytest

import rayhpc as ray
from rayhpc.exceptions import ActorDiedError, ActorUnavailableError, RayActorError, RayTaskError


@ray.remote
class Counter:
    def __init__(self, start=0, *, step=1):
        self.value = start
        self.step = step

    def increment(self):
        self.value += self.step
        return self.value

    def get_value(self):
        return self.value

    def add(self, x, y=0):
        self.value += x + y
        return self.value

    def pid(self):
        return os.getpid()

    def fail(self, message):
        raise ValueError(message)

    def crash(self):
        os._exit(3)

    def sleep(self, s):
        time.sleep(s)
        return s


def test_methods_run_in_submission_order_on_the_actors_state(ray_start):
    c = Counter.remote(10, step=2)
    refs = [c.increment.remote() for _ in range(200)]
    assert ray.get(refs) == list(range(12, 411, 2))
    assert ray.get(c.add.remote(1, y=2)) == 413
    assert ray.get(c.get_value.remote()) == 413


def test_each_actor_has_its_own_process(ray_start):
    a, b = Counter.remote(), Counter.remote()
    pa, pb = ray.get([a.pid.remote(), b.pid.remote()])
    assert pa != pb and os.getpid() not in (pa, pb)
    assert ray.get(a.pid.remote()) == pa


def test_a_method_error_raises_the_task_error_and_the_actor_lives_on(ray_start):
    c = Counter.remote()
    with pytest.raises(ValueError, match="bad input") as info:
        ray.get(c.fail.remote("bad input"))
    assert isinstance(info.value, RayTaskError)
    assert "Counter.fail" in str(info.value)
    assert ray.get(c.increment.remote()) == 1


def test_bad_calls_fail_at_the_call(ray_start):
    c = Counter.remote()
    with pytest.raises(AttributeError, match="no_such_method"):
        c.no_such_method.remote()
    with pytest.raises(TypeError):
        c.add.remote()
    with pytest.raises(TypeError):
        c.increment.remote(1, 2, 3)
    with pytest.raises(TypeError, match="remote"):
        Counter()
    with pytest.raises(TypeError, match="remote"):
        c.increment()
    with pytest.raises(TypeError):
        Counter.remote(1, 2, 3)
    with pytest.raises(ValueError, match="Invalid option"):
        Counter.options(no_such_option=1)


def test_handles_pass_into_tasks_and_other_actors(ray_start):
    c = Counter.remote()

    @ray.remote
    def bump(counter, n):
        refs = [counter.increment.remote() for _ in range(n)]
        return ray.get(refs)[-1]

    @ray.remote
    class Relay:
        def __init__(self, counter):
            self.counter = counter

        def bump(self):
            return ray.get(self.counter.increment.remote())

    last = ray.get(bump.remote(c, 5))
    assert last == 5
    r = Relay.remote(c)
    assert ray.get(r.bump.remote()) == 6
    assert ray.get(c.get_value.remote()) == 6


def test_tasks_submit_tasks_and_put_and_wait_inside_workers(ray_start):
    @ray.remote
    def square(x):
        return x * x

    @ray.remote
    def fan_out(n):
        refs = [square.remote(i) for i in range(n)]
        ready, rest = ray.wait(refs, num_returns=n, timeout=30)
        assert not rest
        box = ray.put({"sum": sum(ray.get(ready))})
        return ray.get(box)["sum"]

    assert ray.get(fan_out.remote(10)) == sum(i * i for i in range(10))


def test_kill_fails_queued_and_later_calls_and_stops_a_running_call(ray_start):
    c = Counter.remote()
    assert ray.get(c.increment.remote()) == 1
    running = c.sleep.remote(60)
    queued = c.increment.remote()
    time.sleep(0.3)
    t = time.perf_counter()
    ray.kill(c)
    for r in (running, queued, c.increment.remote()):
        with pytest.raises(RayActorError):
            ray.get(r, timeout=30)
    assert time.perf_counter() - t < 20, "kill waited for the running call"
    with pytest.raises(ValueError, match="only supported for actors"):
        ray.kill("not an actor")


def test_named_actors_are_found_by_name(ray_start):
    c = Counter.options(name="the-counter").remote(5)
    same = ray.get_actor("the-counter")
    assert ray.get(same.increment.remote()) == 6
    again = Counter.options(name="the-counter", get_if_exists=True).remote()
    assert ray.get(again.get_value.remote()) == 6
    with pytest.raises(ValueError):
        Counter.options(name="the-counter").remote()
    with pytest.raises(ValueError, match="no-such"):
        ray.get_actor("no-such")

    @ray.remote
    def by_name():
        return ray.get(ray.get_actor("the-counter").increment.remote())

    assert ray.get(by_name.remote()) == 7
    ray.kill(c)
    with pytest.raises(ValueError):
        ray.get_actor("the-counter")


def test_a_dead_actor_process_raises_actor_error_without_restarts(ray_start):
    c = Counter.remote()
    assert ray.get(c.increment.remote()) == 1
    with pytest.raises(RayActorError):
        ray.get(c.crash.remote())
    with pytest.raises(RayActorError):
        ray.get(c.increment.remote())


def test_an_actor_restarts_up_to_max_restarts(ray_start):
    c = Counter.options(max_restarts=1).remote(100)
    pid = ray.get(c.pid.remote())
    ray.get(c.increment.remote())
    # The call that lost the process fails (the actor was unavailable: it lives on); the
    # actor comes back with fresh state.
    with pytest.raises(ActorUnavailableError):
        ray.get(c.crash.remote())
    assert ray.get(c.increment.remote()) == 101
    assert ray.get(c.pid.remote()) != pid
    # No restart left: the actor is dead, for this call and every later one.
    with pytest.raises(ActorDiedError):
        ray.get(c.crash.remote())
    with pytest.raises(ActorDiedError):
        ray.get(c.increment.remote())


def test_max_task_retries_reruns_the_lost_call_on_the_restarted_actor(ray_start):
    @ray.remote(max_restarts=-1, max_task_retries=2)
    class Flaky:
        def __init__(self, marker):
            self.marker = marker

        def once(self):
            # The first run kills the process; the rerun (a new process) finds the marker.
            if not os.path.exists(self.marker):
                open(self.marker, "w").close()
                os._exit(1)
            return "second time lucky"

    marker = f"/tmp/rayhpc-flaky-{os.getpid()}-{time.monotonic_ns()}"
    try:
        f = Flaky.remote(marker)
        assert ray.get(f.once.remote(), timeout=60) == "second time lucky"
    finally:
        if os.path.exists(marker):
            os.remove(marker)


def test_a_constructor_that_raises_makes_every_call_raise_actor_error(ray_start):
    @ray.remote
    class Broken:
        def __init__(self):
            raise RuntimeError("cannot build")

        def f(self):
            return 1

    b = Broken.remote()
    with pytest.raises(RayActorError, match="cannot build"):
        ray.get(b.f.remote())


def test_an_actor_holds_the_resources_it_asks_for_while_it_lives(ray_start):
    total = ray.cluster_resources()["CPU"]
    c = Counter.options(num_cpus=1).remote()
    ray.get(c.increment.remote())

    def available():
        return ray.available_resources().get("CPU", 0)

    deadline = time.time() + 5
    while available() != total - 1 and time.time() < deadline:
        time.sleep(0.02)
    assert available() == total - 1
    ray.kill(c)
    deadline = time.time() + 5
    while available() != total and time.time() < deadline:
        time.sleep(0.02)
    assert available() == total


def test_an_unpicklable_result_fails_at_get(ray_start):
    @ray.remote
    class Holder:
        def __init__(self):
            self.lock = threading.Lock()

        def get_lock(self):
            return self.lock

        def ok(self):
            return "still alive"

    h = Holder.remote()
    with pytest.raises(RayTaskError, match="pickle"):
        ray.get(h.get_lock.remote())
    assert ray.get(h.ok.remote()) == "still alive"


def test_long_actor_calls_leave_the_executors_to_other_work(ray_start):
    # Two actors sleeping in their methods on a 2-CPU runtime: tasks and a third actor still
    # run, because a waiting executor hands its other work to another thread.
    sleepers = [Counter.remote() for _ in range(2)]
    busy = [s.sleep.remote(3) for s in sleepers]
    time.sleep(0.3)
    c = Counter.remote()
    t = time.perf_counter()
    assert ray.get(c.increment.remote(), timeout=30) == 1

    @ray.remote
    def one():
        return 1

    assert ray.get(one.remote(), timeout=30) == 1
    assert time.perf_counter() - t < 2.5, "work waited for the sleeping actors"
    assert ray.get(busy) == [3, 3]


def test_kill_ends_an_actor_blocked_on_its_own_call(ray_start):
    @ray.remote
    class Selfish:
        def __init__(self):
            self.me = None

        def set_me(self, h):
            self.me = h

        def deadlock(self):
            # Waits for a call queued behind this one: only a kill ends it.
            return ray.get(self.me.ping.remote())

        def ping(self):
            return "pong"

    a = Selfish.remote()
    ray.get(a.set_me.remote(a))
    r = a.deadlock.remote()
    time.sleep(0.3)
    ray.kill(a)
    with pytest.raises(RayActorError):
        ray.get(r, timeout=30)
    # The runtime goes on (and its executors are free again).
    c = Counter.remote()
    assert ray.get(c.increment.remote(), timeout=30) == 1


def test_a_call_through_a_handle_of_a_killed_actor_raises_actor_error(ray_start):
    @ray.remote
    class Holder:
        def __init__(self, other):
            self.other = other

        def poke(self):
            return ray.get(self.other.increment.remote())

    c = Counter.remote()
    h = Holder.remote(c)
    assert ray.get(h.poke.remote()) == 1
    ray.kill(c)
    with pytest.raises(RayActorError):
        ray.get(h.poke.remote(), timeout=30)


def test_shutdown_ends_an_actor_blocked_on_its_own_call():
    import subprocess
    import sys

    script = """
import time, rayhpc as ray
ray.init(num_cpus=2)
@ray.remote
class Selfish:
    def set_me(self, h):
        self.me = h
    def deadlock(self):
        return ray.get(self.me.ping.remote())
    def ping(self):
        return 1
a = Selfish.remote()
ray.get(a.set_me.remote(a))
r = a.deadlock.remote()
time.sleep(0.3)
t = time.perf_counter()
ray.shutdown()
print("shutdown took", round(time.perf_counter() - t, 1))
"""
    p = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0, p.stderr
    assert "shutdown took" in p.stdout


@ray.remote
class Introspect:
    def context(self):
        c = ray.get_runtime_context()
        return {"task": c.get_task_id(), "actor": c.get_actor_id(), "name": c.get_actor_name(),
                "resources": c.get_assigned_resources(), "task_name": c.get_task_name(),
                "restarted": c.was_current_actor_reconstructed}

    def me(self):
        return ray.get_runtime_context().current_actor

    def crash(self):
        os._exit(3)


@ray.remote
def task_context():
    c = ray.get_runtime_context()
    return {"task": c.get_task_id(), "actor": c.get_actor_id(), "name": c.get_actor_name(),
            "resources": c.get_assigned_resources(), "task_name": c.get_task_name()}


def test_the_runtime_context_tells_a_call_what_it_is(ray_start):
    # A task: its own id, no actor, the resources it asked for (a CPU by default).
    t1, t2 = ray.get([task_context.remote(), task_context.options(num_cpus=0.5).remote()])
    assert t1["task"] and t2["task"] and t1["task"] != t2["task"] and int(t1["task"], 16) >= 0
    assert (t1["actor"], t1["name"], t1["resources"], t1["task_name"]) == (None, None, {"CPU": 1.0}, "task_context")
    assert t2["resources"] == {"CPU": 0.5}
    # An actor: its id, its name ("" when it has none), what it holds for its life (no CPU
    # by default, as in Ray); a handle to itself that the driver's handle equals.
    named = Introspect.options(name="introspected", num_cpus=1, max_restarts=1).remote()
    c = ray.get(named.context.remote())
    assert c["actor"] and c["task"] is None and c["name"] == "introspected" and c["restarted"] is False
    assert c["resources"] == {"CPU": 1.0} and c["task_name"] == "Introspect.context"
    assert ray.get(Introspect.remote().context.remote())["name"] == ""
    assert ray.get(Introspect.remote().context.remote())["resources"] == {}
    me = ray.get(named.me.remote())
    assert me == named and ray.get(me.context.remote())["actor"] == c["actor"]
    # After a restart it says so.
    with pytest.raises(RayActorError):
        ray.get(named.crash.remote())
    assert ray.get(named.context.remote())["restarted"] is True
    # The driver runs no task and is no actor.
    ctx = ray.get_runtime_context()
    assert (ctx.get_task_id(), ctx.get_actor_id(), ctx.get_actor_name(), ctx.get_assigned_resources()) == (None, None, None, {})
    with pytest.raises(RuntimeError, match="only available in an actor"):
        ctx.current_actor
    assert len(ctx.get_worker_id()) == 56


def test_a_queued_actor_call_can_be_cancelled_and_a_running_one_finishes(ray_start, tmp_path):
    @ray.remote
    class Holder:
        def hold(self, started, release):
            open(started, "w").close()
            while not os.path.exists(release):
                time.sleep(0.01)
            return "held"

        def one(self):
            return 1

    started, release = str(tmp_path / "started"), str(tmp_path / "release")
    a = Holder.remote()
    running = a.hold.remote(started, release)
    deadline = time.monotonic() + 60
    while not os.path.exists(started):
        assert time.monotonic() < deadline, "the first call never started"
        time.sleep(0.01)
    queued = a.one.remote()
    ray.cancel(queued)
    ray.cancel(running)  # running: it runs to its end (Ray's rule for actor calls)
    with pytest.raises(ValueError, match="force"):
        ray.cancel(a.one.remote(), force=True)
    open(release, "w").close()
    assert ray.get(running, timeout=60) == "held"
    with pytest.raises(ray.exceptions.TaskCancelledError):
        ray.get(queued, timeout=60)
    assert ray.get(a.one.remote(), timeout=60) == 1


def test_an_actor_ends_itself_with_exit_actor_or_ray_terminate_and_is_not_restarted(ray_start):
    @ray.remote(max_restarts=3)
    class Quitter:
        def one(self):
            return 1

        def quit(self):
            ray.actor.exit_actor()
            return "not reached"

    a = Quitter.remote()
    assert ray.get(a.one.remote()) == 1
    with pytest.raises(ActorDiedError, match="exit_actor"):
        ray.get(a.quit.remote())
    # An intended exit: dead for good, whatever max_restarts allows.
    with pytest.raises(ActorDiedError):
        ray.get(a.one.remote())
    b = Quitter.options(name="terminated").remote()
    first = b.one.remote()
    b.__ray_terminate__.remote()  # after the calls before it
    assert ray.get(first) == 1
    with pytest.raises(ActorDiedError, match="__ray_terminate__"):
        ray.get(b.one.remote())
    # Its name is free again.
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        try:
            ray.get_actor("terminated")
        except ValueError:
            break
        time.sleep(0.01)
    assert ray.get(Quitter.options(name="terminated").remote().one.remote()) == 1
    with pytest.raises(TypeError, match="non-actor"):
        ray.actor.exit_actor()


def test_kill_without_no_restart_restarts_the_actor_within_max_restarts(ray_start):
    c = Counter.options(max_restarts=1).remote(10)
    pid = ray.get(c.pid.remote())
    assert ray.get(c.increment.remote()) == 11
    ray.kill(c, no_restart=False)
    # A fresh process and state; the call after the kill is not lost.
    assert ray.get(c.increment.remote(), timeout=60) == 11
    assert ray.get(c.pid.remote()) != pid
    # No restart left: this time it is dead.
    ray.kill(c, no_restart=False)
    with pytest.raises(ActorDiedError):
        ray.get(c.increment.remote(), timeout=60)


def test_list_named_actors_names_the_live_named_actors(ray_start):
    a = Counter.options(name="listed-a").remote()
    b = Counter.options(name="listed-b").remote()
    Counter.remote()  # unnamed: not listed
    ray.get([a.get_value.remote(), b.get_value.remote()])
    # (Other tests of the module leave named actors of their own alive.)
    names = ray.util.list_named_actors()
    assert {"listed-a", "listed-b"} <= set(names) and names == sorted(names)
    assert {"name": "listed-b", "namespace": "default"} in ray.util.list_named_actors(all_namespaces=True)

    @ray.remote
    def from_a_task():
        return ray.util.list_named_actors()

    ray.kill(a)
    deadline = time.monotonic() + 60
    while "listed-a" in ray.util.list_named_actors():
        assert time.monotonic() < deadline, "a killed actor's name stayed listed"
        time.sleep(0.01)
    from_task = ray.get(from_a_task.remote())
    assert "listed-b" in from_task and "listed-a" not in from_task
    assert ray.util.get_node_ip_address() == ray.nodes()[0]["NodeManagerAddress"]
