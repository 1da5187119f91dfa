"""ObjectRefs as futures: `ref.future()` (a concurrent.futures.Future) and `await ref`.

One watcher thread per process waits on every ref someone asked a future of (`wait` on all
of them, a short timeout so that refs asked for meanwhile join), completes each future as
its ref becomes ready, and ends when none is left.
"""

import asyncio
import concurrent.futures
import threading

_lock = threading.Lock()
_pending = {}  # ref -> the futures waiting on it
_watcher = None
_POLL = 0.01  # seconds: how soon a ref asked for during a wait joins it


def future(ref):
    """A concurrent.futures.Future that holds `ref`'s value (or its error) once it is ready."""
    global _watcher
    fut = concurrent.futures.Future()
    with _lock:
        _pending.setdefault(ref, []).append(fut)
        if _watcher is None:
            _watcher = threading.Thread(target=_watch, name="rayhpc-futures", daemon=True)
            _watcher.start()
    return fut


def await_ref(ref):
    """What `await ref` iterates: the ref's future, on the running event loop."""
    return asyncio.wrap_future(future(ref)).__await__()


def _watch():
    global _watcher
    import rayhpc
    while True:
        with _lock:
            refs = list(_pending)
            if not refs:
                _watcher = None
                return
        try:
            # Until one is ready (or the poll ends), then all that are.
            ready, _ = rayhpc.wait(refs, num_returns=1, timeout=_POLL)
            if ready:
                ready, _ = rayhpc.wait(refs, num_returns=len(refs), timeout=0)
        except Exception as e:  # noqa: BLE001 - the runtime is gone: every future fails with it
            ready, failed = refs, e
        else:
            failed = None
        for ref in ready:
            with _lock:
                futs = _pending.pop(ref, [])
            if failed is None:
                try:
                    value, error = rayhpc.get(ref), None
                except BaseException as e:  # noqa: BLE001 - the ref's error is the future's
                    value, error = None, e
            else:
                value, error = None, failed
            for f in futs:
                if f.set_running_or_notify_cancel():
                    if error is None:
                        f.set_result(value)
                    else:
                        f.set_exception(error)
