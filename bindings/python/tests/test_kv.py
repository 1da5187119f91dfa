"""The KV store of a single embedded node: put/get/list/delete, Ray's internal_kv names,
and watches that wake on a change, see every change once, and time out."""

import threading
import time

import pytest

import rayhpc as ray
from rayhpc.experimental import internal_kv as ikv


@pytest.fixture(autouse=True)
def runtime():
    ray.init(num_cpus=2)
    yield
    ray.shutdown()


def test_put_get_list_delete():
    assert ray.kv.put("a/1", b"x") is False
    assert ray.kv.put(b"a/1", b"y", overwrite=False) is True
    assert ray.kv.get("a/1") == b"x"
    assert ray.kv.put("a/2", "text") is False
    assert ray.kv.list("a/") == [b"a/1", b"a/2"]
    assert ray.kv.exists("a/2") and not ray.kv.exists("a/3")
    assert ray.kv.delete("a/", prefix=True) == 2
    assert ray.kv.get("a/1") is None and ray.kv.list() == []
    with pytest.raises(TypeError):
        ray.kv.put(1, b"x")
    with pytest.raises(Exception, match="largest"):
        ray.kv.put("big", b"0" * ((32 << 20) + 1))


def test_internal_kv_namespaces_keep_keys_apart():
    assert ikv._internal_kv_initialized()
    assert ikv._internal_kv_put("k", b"1", namespace="a") is False
    assert ikv._internal_kv_put("k", b"2") is False
    assert ikv._internal_kv_get("k", namespace="a") == b"1"
    assert ikv._internal_kv_get("k") == b"2"
    assert ikv._internal_kv_list("", namespace="a") == [b"k"]
    assert ikv._internal_kv_del("k", namespace="a") == 1
    assert not ikv._internal_kv_exists("k", namespace="a") and ikv._internal_kv_exists("k")


def test_a_watch_wakes_on_a_change_under_its_prefix_only():
    since = ray.kv.watch("w/", timeout=0).version
    got = []
    t = threading.Thread(target=lambda: got.append(ray.kv.watch("w/", since, timeout=30)))
    t.start()
    time.sleep(0.3)
    ray.kv.put("elsewhere", b"0")
    time.sleep(0.3)
    assert t.is_alive(), "a change outside the prefix woke the watch"
    ray.kv.put("w/x", b"1")
    t.join(10)
    assert not t.is_alive()
    (ev,) = got
    assert ev.changes == [(b"w/x", b"1")] and not ev.reset
    # Every later change once, in order; a delete is None.
    ray.kv.put("w/x", b"2")
    ray.kv.delete("w/x")
    ev2 = ray.kv.watch("w/", ev.version, timeout=0)
    assert ev2.changes == [(b"w/x", b"2"), (b"w/x", None)]
    # Nothing new: the timeout's empty answer at the same version.
    t0 = time.monotonic()
    ev3 = ray.kv.watch("w/", ev2.version, timeout=0.3)
    assert ev3.changes == [] and ev3.version == ev2.version and time.monotonic() - t0 >= 0.3
    with pytest.raises(ValueError):
        ray.kv.watch("w/", 0, timeout=-1)


def test_tasks_see_the_drivers_keys():
    ray.kv.put("cfg", b"42")

    @ray.remote
    def read():
        ray.kv.put("from-task", b"hi")
        return ray.kv.get("cfg")

    assert ray.get(read.remote()) == b"42"
    assert ray.kv.get("from-task") == b"hi"
