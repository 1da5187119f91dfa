"""The cluster's key-value store, with watches.

One store per cluster (kept by the head; a single node keeps its own), reachable from the
driver, tasks and actors on every node. Keys and values are bytes (a ``str`` key is UTF-8
encoded). Every change bumps the store's version; ``watch`` returns the changes under a
prefix after the version a watcher has seen, waiting for one if there is none yet::

    since = 0
    while True:
        ev = rayhpc.kv.watch(b"jobs/", since, timeout=10)
        for key, value in ev.changes:      # value None: deleted
            ...
        since = ev.version

A watcher never misses a change nor sees one twice; one that fell far behind gets
``ev.reset`` and a snapshot of every key under its prefix instead of the changes.
Limits: keys up to 4 KiB, values up to 32 MiB (large data belongs in the object store).
"""

import time
from collections import namedtuple

from . import _native

__all__ = ["put", "get", "exists", "delete", "list", "watch", "Events"]

Events = namedtuple("Events", ["version", "reset", "changes"])
Events.__doc__ = """What ``watch`` returns: the version to pass as the next ``since``, whether
``changes`` is a snapshot (the watcher fell behind), and ``[(key, value or None)]`` oldest
first (empty: the timeout passed)."""

# A watch is asked for in slices, so that other calls of this process are not held up
# behind it for long.
_SLICE = 0.25


def _bytes(x, what):
    if isinstance(x, str):
        return x.encode()
    if isinstance(x, (bytes, bytearray, memoryview)):
        return bytes(x)
    raise TypeError(f"a KV {what} must be bytes or str, not {type(x).__name__}")


def put(key, value, overwrite=True):
    """Stores ``value`` under ``key`` (with ``overwrite=False`` an existing value stays).
    Returns True if the key existed before."""
    return _native.kv("put", _bytes(key, "key"), _bytes(value, "value"), overwrite)


def get(key):
    """The value of ``key``, or None."""
    return _native.kv("get", _bytes(key, "key"))


def exists(key):
    """Whether ``key`` has a value."""
    return get(key) is not None


def delete(key, prefix=False):
    """Deletes ``key`` (with ``prefix=True``, every key that starts with it); returns how
    many keys went."""
    return _native.kv("del", _bytes(key, "key"), None, prefix)


def list(prefix=b""):  # noqa: A001 (the store's verb)
    """The keys that start with ``prefix``, sorted."""
    return _native.kv("list", _bytes(prefix, "prefix"))


def watch(prefix=b"", since=0, timeout=None):
    """The changes to keys under ``prefix`` after version ``since`` (0: from the start),
    waiting up to ``timeout`` seconds (None: until there is one) for a first change."""
    prefix = _bytes(prefix, "prefix")
    if timeout is not None and not timeout >= 0:
        raise ValueError(f"a watch timeout must be >= 0 seconds, not {timeout}")
    deadline = None if timeout is None else time.monotonic() + timeout
    while True:
        left = _SLICE if deadline is None else max(0.0, min(_SLICE, deadline - time.monotonic()))
        version, reset, changes = _native.kv("watch", prefix, None, False, int(since), left)
        if changes or reset or (deadline is not None and time.monotonic() >= deadline):
            return Events(version, reset, changes)
        since = version
