"""Large values through the shared-memory store: numpy arrays come back zero-copy and
read-only, large arguments and results of tasks and actors travel by reference, a worker's
put goes straight into the store, and a value over the store's capacity is refused clearly."""

import numpy as np
import pytest

import rayhpc as ray
from rayhpc import exceptions


def test_get_of_a_put_array_is_zero_copy_and_read_only(ray_start):
    a = np.arange(4 << 20, dtype=np.int64)  # 32 MiB
    r = ray.put(a)
    b = ray.get(r)
    c = ray.get(r)
    assert np.array_equal(a, b)
    assert not b.flags.writeable
    with pytest.raises(ValueError):
        b[0] = 1
    # Two gets share the one copy in the store (no copy per get).
    assert np.shares_memory(b, c) or b.__array_interface__["data"][0] == c.__array_interface__["data"][0]
    # The bytes stay valid while the array lives, after the ref is gone.
    del r, c
    assert b[-1] == (4 << 20) - 1


def test_arrays_are_read_only_at_every_size_and_layout(ray_start):
    @ray.remote
    def inspect_arg(x):
        return x.flags.writeable, x.copy()

    # Ray's rule: an array read from an object, an argument or a result, is read-only,
    # however small, strided or not; a copy is the program's own.
    for a in (np.arange(10), np.arange(12).reshape(3, 4).T, np.arange(30)[::3], np.zeros((2, 0)), np.array(7)):
        got = ray.get(ray.put(a))
        assert np.array_equal(got, a) and got.shape == a.shape and not got.flags.writeable
        arg_writable, back = ray.get(inspect_arg.remote(a))
        assert not arg_writable and np.array_equal(back, a) and not back.flags.writeable
        with pytest.raises(ValueError, match="read-only"):
            got[...] = 0
    mine = ray.get(ray.put(np.arange(5))).copy()
    mine[0] = 9
    assert mine[0] == 9


def test_small_arrays_and_mixed_values_round_trip(ray_start):
    value = {"small": np.arange(10), "big": np.ones((512, 512)), "text": "x" * 100_000, "n": [1, 2, 3]}
    got = ray.get(ray.put(value))
    assert np.array_equal(got["small"], value["small"])
    assert np.array_equal(got["big"], value["big"])
    assert got["text"] == value["text"] and got["n"] == [1, 2, 3]
    # A non-contiguous array is pickled in band, and still comes back equal.
    strided = np.arange(1 << 20)[::2]
    assert np.array_equal(ray.get(ray.put(strided)), strided)


def test_large_arguments_and_results_of_tasks_and_actors(ray_start):
    @ray.remote
    def stats(x):
        return float(x.sum()), x.flags.writeable, x.shape

    @ray.remote
    def make(n):
        return np.full(n, 7, dtype=np.uint8)

    big = np.ones(3_000_000)  # 24 MB: over the ring's limit per message
    assert ray.get(stats.remote(big)) == (3e6, False, (3_000_000,))
    assert ray.get(stats.remote(ray.put(big))) == (3e6, False, (3_000_000,))
    z = ray.get(make.remote(50_000_000))
    assert z.shape == (50_000_000,) and z[0] == 7 and z[-1] == 7 and not z.flags.writeable
    # A task's large result passed on to another task is read in place there too.
    assert ray.get(stats.remote(make.remote(20_000_000)))[0] == 7 * 20_000_000

    @ray.remote
    class Keeper:
        def __init__(self):
            self.kept = None

        def keep(self, x):
            self.kept = x  # an array kept across calls stays valid (it holds its own pin)
            return x.nbytes

        def total(self):
            return float(self.kept.sum())

        def echo(self):
            return self.kept

    k = Keeper.remote()
    assert ray.get(k.keep.remote(big)) == big.nbytes
    del big
    assert ray.get(k.total.remote()) == 3e6
    assert ray.get(k.echo.remote()).shape == (3_000_000,)


def test_large_constructor_arguments_go_through_the_store_and_survive_restarts(ray_start):
    import os

    @ray.remote(max_restarts=1)
    class Holder:
        def __init__(self, data):
            self.total = int(data.sum())

        def total_(self):
            return self.total

        def crash(self):
            os._exit(1)

    big = np.ones(3_000_000, dtype=np.int64)  # 24 MB: over the ring's limit per message
    h = Holder.remote(big)
    del big
    assert ray.get(h.total_.remote()) == 3_000_000
    with pytest.raises(ray.exceptions.RayActorError):
        ray.get(h.crash.remote())
    # Restarted with the same (stored) argument.
    assert ray.get(h.total_.remote(), timeout=60) == 3_000_000


def test_a_worker_puts_large_values_into_the_store(ray_start):
    @ray.remote
    def putter(n):
        r = ray.put(np.arange(n, dtype=np.int64))
        back = ray.get(r)
        return int(back[-1]), back.flags.writeable

    assert ray.get(putter.remote(10 << 20)) == ((10 << 20) - 1, False)


def test_a_value_over_the_store_capacity_is_refused_clearly(ray_start):
    # A runtime of its own, with a small store; the module's comes back after.
    ray.shutdown()
    ray.init(num_cpus=1, object_store_memory=64 << 20)
    try:
        with pytest.raises(exceptions.ObjectStoreFullError, match="larger than the object store"):
            ray.put(np.zeros(100 << 20, dtype=np.uint8))
        assert ray.get(ray.put(np.ones(1 << 20)))[0] == 1.0

        @ray.remote
        def too_big():
            return np.zeros(100 << 20, dtype=np.uint8)

        with pytest.raises(exceptions.RayTaskError, match="larger than the object store"):
            ray.get(too_big.remote())
    finally:
        ray.shutdown()
        ray.init(num_cpus=2)


def test_refs_inside_values_travel_as_refs(ray_start):
    @ray.remote
    def make(i):
        return i * 10

    @ray.remote
    def total(box):
        # Refs nested in an argument arrive as refs (not resolved), as in Ray.
        assert all(isinstance(r, ray.ObjectRef) for r in box["refs"])
        return sum(ray.get(box["refs"]))

    refs = [make.remote(i) for i in range(5)]
    assert ray.get(total.remote({"refs": refs})) == 100

    @ray.remote
    def producer(n):
        return [ray.put(i) for i in range(n)]  # refs made in a worker, returned in a value

    inner = ray.get(producer.remote(100))
    assert ray.get(inner) == list(range(100))
    # A ref inside a put value, and one passed on again into another task.
    outer = ray.put([refs[0]])
    assert ray.get(ray.get(outer)[0]) == 0
    assert ray.get(total.remote({"refs": inner[:3]})) == 3


def test_refs_are_awaitable_and_have_futures(ray_start):
    import asyncio

    @ray.remote
    def double(x):
        return 2 * x

    @ray.remote
    def bad():
        raise KeyError("inside")

    async def main():
        one = await double.remote(21)
        many = await asyncio.gather(*[double.remote(i) for i in range(200)])
        with pytest.raises(KeyError):
            await bad.remote()
        # A ref awaited twice, and one already got.
        r = double.remote(5)
        ray.get(r)
        return one, many, await r, await r

    one, many, again, twice = asyncio.run(main())
    assert (one, again, twice) == (42, 10, 10) and many == [2 * i for i in range(200)]
    assert double.remote(4).future().result(timeout=60) == 8
    with pytest.raises(KeyError):
        bad.remote().future().result(timeout=60)
