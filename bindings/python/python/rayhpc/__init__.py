"""rayhpc: Ray Core's API (`import rayhpc as ray`) on a native runtime.

`init()` starts an embedded node runtime in this process; tasks run in Python worker
processes it starts (as many as run at once, bounded by the CPUs), attached to it by
shared-memory rings. Values travel pickled (protocol 5, through cloudpickle).
"""

import atexit
import hashlib
import inspect
import os
import pickle
import sys
import threading

from . import _native, exceptions
from ._native import ObjectRef
from ._serial import dumps, loads
from .exceptions import (
    GetTimeoutError,
    ObjectStoreFullError,
    RayActorError,
    RayError,
    RaySystemError,
    RayTaskError,
    WorkerCrashedError,
)

__all__ = [
    "init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "method",
    "cluster_resources", "available_resources", "nodes", "get_runtime_context",
    "ObjectRef", "exceptions",
]
__version__ = "0.1.0"

_lock = threading.RLock()
_epoch = 0  # bumped by every init: functions register again with a new runtime
_atexit_registered = False


class RayContext(dict):
    """What `init` returns (Ray returns a context with the address info)."""

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        shutdown()


def init(address=None, *, num_cpus=None, num_gpus=None, resources=None,
         object_store_memory=None, ignore_reinit_error=False, namespace=None,
         include_dashboard=None, logging_level=None, log_to_driver=True,
         runtime_env=None, **kwargs):
    """Starts rayhpc in this process (an embedded single-node runtime)."""
    global _epoch, _atexit_registered
    with _lock:
        if _native.is_initialized():
            if ignore_reinit_error:
                return RayContext(address_info={"address": "embedded"})
            raise RuntimeError(
                "Maybe you called rayhpc.init twice by accident? This error can be suppressed "
                "by passing in 'ignore_reinit_error=True' or by calling 'rayhpc.shutdown()' "
                "prior to 'rayhpc.init()'.")
        if address not in (None, "local"):
            raise NotImplementedError(
                f"init(address={address!r}): attaching to a running node runtime is not built "
                "yet; init() with no address starts an embedded runtime")
        if resources is not None:
            for k in ("CPU", "GPU"):
                if k in resources:
                    raise ValueError(f"Use the '{k.lower()}s' argument of init, not resources['{k}']")
        _native.init(sys.executable, os.pathsep.join(p for p in sys.path if p),
                     num_cpus=None if num_cpus is None else float(num_cpus),
                     num_gpus=None if num_gpus is None else float(num_gpus),
                     resources={k: float(v) for k, v in (resources or {}).items()},
                     object_store_memory=object_store_memory)
        _epoch += 1
        if not _atexit_registered:
            atexit.register(shutdown)
            _atexit_registered = True
        return RayContext(address_info={"address": "embedded"})


def shutdown(_exiting_interpreter=False):
    """Stops the workers and the runtime (a no-op when not initialized)."""
    with _lock:
        _native.shutdown()


def is_initialized():
    return _native.is_initialized()


def _auto_init():
    if not _native.is_initialized():
        init()


# ---------------------------------------------------------------------------- tasks

_TASK_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "max_retries", "retry_exceptions", "num_returns",
    "name", "memory", "scheduling_strategy", "runtime_env", "max_calls", "accelerator_type",
    "label_selector", "_metadata", "placement_group", "placement_group_bundle_index",
    "placement_group_capture_child_tasks", "enable_task_events",
}


def _check_options(opts, allowed):
    for k in opts:
        if k not in allowed:
            raise ValueError(f"Invalid option keyword {k} for remote functions.")
    for k in ("num_cpus", "num_gpus"):
        v = opts.get(k)
        if v is not None and (not isinstance(v, (int, float)) or v < 0):
            raise ValueError(f"The keyword '{k}' only accepts None or a non-negative number, got {v!r}")
    r = opts.get("resources")
    if r is not None:
        if not isinstance(r, dict):
            raise TypeError(f"resources must be a dict, got {type(r).__name__}")
        for k in ("CPU", "GPU"):
            if k in r:
                raise ValueError(f"Use the '{k.lower()}s' argument, not resources['{k}']")
    n = opts.get("num_returns", 1)
    if n != 1:
        raise NotImplementedError("num_returns other than 1 is not supported yet")
    rx = opts.get("retry_exceptions")
    if rx is not None and not isinstance(rx, bool):
        raise NotImplementedError("retry_exceptions as a list of exception classes is not supported yet; use True or False")


class RemoteFunction:
    """A function made remote with `@rayhpc.remote`: call it with `.remote(...)`."""

    def __init__(self, fn, options):
        _check_options(options, _TASK_OPTIONS)
        self._function = fn
        self._options = dict(options)
        self._name = getattr(fn, "__qualname__", getattr(fn, "__name__", "task"))
        self._shared = {"epoch": None, "key": None, "blob": None}
        self._native_options = None
        self._native_epoch = None
        code = getattr(fn, "__code__", None)
        if code is not None and not (code.co_flags & 0x0C):  # no *args, no **kwargs
            defaults = len(fn.__defaults__ or ())
            self._arity = (code.co_argcount - defaults, code.co_argcount)
        else:
            self._arity = None
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", "task")
        self.__wrapped__ = fn

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Remote functions cannot be called directly. Instead of running '{self.__name__}()', "
            f"try '{self.__name__}.remote()'.")

    def options(self, **options):
        merged = dict(self._options)
        merged.update(options)
        f = RemoteFunction(self._function, merged)
        f._shared = self._shared  # one pickled function for every variant
        return f

    def _register(self):
        s = self._shared
        if s["blob"] is None:
            import cloudpickle
            try:
                s["blob"] = cloudpickle.dumps(self._function, protocol=5)
            except Exception as e:
                raise TypeError(f"Could not serialize the function {self._name}: {e}") from e
            s["key"] = hashlib.blake2b(s["blob"], digest_size=16).digest()
        _native.register_function(s["key"], s["blob"])
        s["epoch"] = _epoch

    def _prepare(self):
        _auto_init()
        if self._shared["epoch"] != _epoch:
            self._register()
        if self._native_epoch != _epoch:
            o = self._options
            self._native_options = _native.TaskOptions(
                self._options.get("name") or self._name,
                num_cpus=None if o.get("num_cpus") is None else float(o["num_cpus"]),
                num_gpus=None if o.get("num_gpus") is None else float(o["num_gpus"]),
                resources={k: float(v) for k, v in (o.get("resources") or {}).items()},
                max_retries=o.get("max_retries"),
                retry_exceptions=o.get("retry_exceptions"))
            self._native_epoch = _epoch

    def remote(self, *args, **kwargs):
        if self._native_epoch != _epoch or self._shared["epoch"] != _epoch:
            self._prepare()
        if kwargs or self._arity is None or not (self._arity[0] <= len(args) <= self._arity[1]):
            # Ray checks the call against the signature at submit: a TypeError here.
            inspect.signature(self._function).bind(*args, **kwargs)
        if kwargs:
            parts = [pickle.dumps((len(args), tuple(kwargs)), protocol=5)]
            values = list(args) + list(kwargs.values())
        else:
            parts = [b""]
            values = args
        for v in values:
            parts.append(v if type(v) is ObjectRef else _dumps_arg(v))
        return _native.submit(self._shared["key"], parts, self._native_options)


def _dumps_arg(v):
    try:
        return dumps(v)
    except Exception as e:
        raise TypeError(f"Could not serialize the argument {v!r} of type {type(v).__name__}: {e}") from e


def remote(*args, **kwargs):
    """`@rayhpc.remote` or `@rayhpc.remote(num_cpus=..., ...)` on a function."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("The @rayhpc.remote decorator takes either a function or keyword options")

    def decorator(obj):
        return _make_remote(obj, kwargs)
    return decorator


def _make_remote(obj, options):
    if inspect.isclass(obj):
        raise NotImplementedError("actors (@remote on a class) are not supported yet")
    if not callable(obj):
        raise TypeError("The @rayhpc.remote decorator must be applied to a function or a class")
    return RemoteFunction(obj, options)


def method(*args, **kwargs):
    """`@rayhpc.method(num_returns=...)` on an actor method (accepted; only 1 return yet)."""
    def decorator(m):
        m.__rayhpc_method_options__ = kwargs
        return m
    if len(args) == 1 and not kwargs and callable(args[0]):
        return decorator(args[0])
    return decorator


# ---------------------------------------------------------------------------- objects

def _raise_for(failure):
    kind, function, message, payload, attempts = failure
    if kind == "task":
        if payload is not None:
            try:
                exc, name, tb = loads(payload)
            except Exception as e:  # noqa: BLE001
                raise RaySystemError(f"task {function} failed ({message}); its exception could not be unpickled: {e}")
            raise RayTaskError(name, tb, exc).as_instanceof_cause()
        raise RayTaskError(function, message, RuntimeError(message)).as_instanceof_cause()
    if kind == "worker_died":
        raise WorkerCrashedError(f"task {function} failed after {attempts} attempt(s): {message}")
    if kind == "timeout":
        raise GetTimeoutError(message)
    if kind == "store":
        raise ObjectStoreFullError(message)
    raise RaySystemError(message)


def get(object_refs, *, timeout=None):
    """The value of an ObjectRef, or the values of a list of them (blocks until ready)."""
    if type(object_refs) is ObjectRef:
        r = _native.get([object_refs], timeout)[0]
        if type(r) is bytes:
            return loads(r)
        _raise_for(r)
    if not isinstance(object_refs, (list, tuple)):
        raise ValueError(
            f"'object_refs' must either be an ObjectRef or a list of ObjectRefs, got {type(object_refs).__name__}")
    refs = list(object_refs)
    for r in refs:
        if type(r) is not ObjectRef:
            raise TypeError(f"get() expects ObjectRefs, got {type(r).__name__}")
    out = _native.get(refs, timeout)
    values = []
    for r in out:
        if type(r) is bytes:
            values.append(loads(r))
        else:
            _raise_for(r)
    return values


def put(value):
    """Stores `value` in the object store; returns its ObjectRef."""
    if type(value) is ObjectRef:
        raise TypeError("Calling 'put' on an ObjectRef is not allowed. If you really want to do this, "
                        "you can wrap the ObjectRef in a list and call 'put' on it.")
    _auto_init()
    try:
        data = dumps(value)
    except Exception as e:
        raise TypeError(f"Could not serialize the put value {value!r}: {e}") from e
    return _native.put(data)


def wait(object_refs, *, num_returns=1, timeout=None, fetch_local=True):
    """Returns (ready, not_ready) once `num_returns` of the refs are ready or `timeout`
    seconds passed; both lists keep the input order."""
    if type(object_refs) is ObjectRef or not isinstance(object_refs, (list, tuple)):
        raise TypeError(f"wait() expected a list of ObjectRefs, got {type(object_refs).__name__}")
    refs = list(object_refs)
    for r in refs:
        if type(r) is not ObjectRef:
            raise TypeError(f"wait() expected a list of ObjectRefs, got an element of type {type(r).__name__}")
    if len(set(refs)) != len(refs):
        raise ValueError("Wait requires a list of unique object refs.")
    if num_returns <= 0:
        raise ValueError(f"Invalid number of objects to return {num_returns}.")
    if num_returns > len(refs):
        raise ValueError("num_returns cannot be greater than the number of objects provided to wait.")
    if timeout is not None and timeout < 0:
        raise ValueError(f"The 'timeout' argument must be nonnegative. Received {timeout}")
    if not refs:
        return [], []
    ready_idx = set(_native.wait(refs, num_returns, timeout)[:num_returns])
    ready = [r for i, r in enumerate(refs) if i in ready_idx]
    rest = [r for i, r in enumerate(refs) if i not in ready_idx]
    return ready, rest


# ---------------------------------------------------------------------------- cluster

def cluster_resources():
    """Total resources: {"CPU": n, "GPU": n, custom...: n}."""
    return {k: t for k, (t, _) in _native.resources().items() if t > 0}


def available_resources():
    """Resources not in use now."""
    return {k: a for k, (t, a) in _native.resources().items() if a > 0}


def nodes():
    """The nodes of the cluster (one: this one)."""
    return [{
        "NodeID": "0" * 56,
        "Alive": True,
        "NodeManagerAddress": "127.0.0.1",
        "NodeManagerHostname": os.uname().nodename,
        "Resources": cluster_resources(),
    }]


class RuntimeContext:
    def get_node_id(self):
        return "0" * 56

    def get_job_id(self):
        return os.environ.get("SLURM_JOB_ID", "01000000")

    @property
    def namespace(self):
        return "default"

    def get_assigned_resources(self):
        return {}


def get_runtime_context():
    return RuntimeContext()
