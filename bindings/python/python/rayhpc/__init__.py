"""rayhpc: Ray Core's API (`import rayhpc as ray`) on a native runtime.

`init()` starts an embedded node runtime in this process; tasks run in Python worker
processes it starts (as many as run at once, bounded by the CPUs), each actor in a worker
process of its own, all attached to it by shared-memory rings. Values travel pickled
(protocol 5, through cloudpickle). Code running in a worker uses the same API: its calls go
to the runtime that started it.
"""

import atexit
import hashlib
import inspect
import os
import pickle
import sys
import threading

from . import _native, actor, exceptions, kv, util
from ._native import ObjectRef
from ._generators import ObjectRefGenerator
from ._serial import dumps, loads, size as _size
from .exceptions import (
    ActorAlreadyExistsError,
    ActorDiedError,
    ActorUnavailableError,
    TaskCancelledError,
    GetTimeoutError,
    ObjectLostError,
    ObjectStoreFullError,
    RayActorError,
    RayError,
    RaySystemError,
    RayTaskError,
    WorkerCrashedError,
)

__all__ = [
    "init", "shutdown", "is_initialized", "remote", "get", "put", "wait", "kill", "cancel", "get_actor",
    "method", "cluster_resources", "available_resources", "nodes", "get_runtime_context",
    "ObjectRef", "ObjectRefGenerator", "ActorHandle", "ActorClass", "exceptions",
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
        from_launch = address is None and bool(os.environ.get("RAYHPC_ADDRESS"))
        if address is None:
            address = os.environ.get("RAYHPC_ADDRESS") or None
        if address not in (None, "local"):
            # Attach to a running node runtime (`rayhpc launch`, `python -m rayhpc.node`).
            if num_cpus is not None or num_gpus is not None or resources is not None or object_store_memory is not None:
                if not from_launch:
                    raise ValueError("When connecting to an existing cluster, num_cpus, num_gpus, resources and "
                                     "object_store_memory must not be provided.")
                # A program written for one machine, run unchanged under `rayhpc launch`: the
                # cluster's resources are what the launch gave its nodes.
                import warnings
                warnings.warn("rayhpc: this driver runs under `rayhpc launch`, whose nodes' resources it uses: "
                              "init()'s num_cpus, num_gpus, resources and object_store_memory are ignored "
                              "(give them to `rayhpc launch`)", stacklevel=2)
            _set_job_env(runtime_env)
            _native.attach(_find_address(address))
            _epoch += 1
            if not _atexit_registered:
                atexit.register(shutdown)
                _atexit_registered = True
            return RayContext(address_info={"address": address})
        if resources is not None:
            for k in ("CPU", "GPU"):
                if k in resources:
                    raise ValueError(f"Use the '{k.lower()}s' argument of init, not resources['{k}']")
        _set_job_env(runtime_env)
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
    """Stops the workers and the runtime (a no-op when not initialized); a driver attached to
    a node runtime detaches (the node runs on)."""
    with _lock:
        _native.shutdown()
        _native.detach()


def _find_address(address):
    """The session directory of the node runtime to attach to: `address` itself, or with
    "auto" the address recorded for this job (see `rayhpc.node.address_file`)."""
    from .node import address_file
    if address == "auto":
        path = address_file()
        try:
            with open(path) as f:
                address = f.read().strip()
        except OSError:
            raise ConnectionError(
                f"Could not find any running rayhpc instance for this job (no {path}). Start one with "
                "`rayhpc launch`, or call init() with no address for an embedded runtime.") from None
    if os.path.basename(address) == "node.sock":
        address = os.path.dirname(address)
    if not os.path.exists(os.path.join(address, "node.sock")):
        raise ConnectionError(f"No rayhpc node runtime at {address!r} (no node.sock there).")
    return address


def is_initialized():
    return _native.is_initialized()


def _auto_init():
    if not _native.is_initialized():
        init()


def _key_of(blob):
    return hashlib.blake2b(blob, digest_size=16).digest()


def _arity(fn, skip=0):
    """(min, max) positional arguments of a plain function (minus `skip` leading ones), or
    None when it takes *args or **kwargs (the full signature check then runs)."""
    code = getattr(fn, "__code__", None)
    if code is None or code.co_flags & 0x0C:
        return None
    defaults = len(getattr(fn, "__defaults__", None) or ())
    return (code.co_argcount - defaults - skip, code.co_argcount - skip)


def _call_parts(args, kwargs, num_returns=1, extras=None):
    """The layout and pickled values of a call's arguments (ObjectRefs passed as they are).
    The layout is empty for positional arguments and one return, else the pickle of
    (positional count, keyword names, number of returns[, extras]): `extras` is the
    cloudpickle of what the call carries besides (see `_extras_of`)."""
    if extras is not None:
        parts = [pickle.dumps((len(args), tuple(kwargs), num_returns, extras), protocol=5)]
        values = list(args) + list(kwargs.values())
    elif kwargs or num_returns != 1:
        parts = [pickle.dumps((len(args), tuple(kwargs), num_returns), protocol=5)]
        values = list(args) + list(kwargs.values())
    else:
        parts = [b""]
        values = args
    for v in values:
        parts.append(v if type(v) is ObjectRef else _dumps_arg(v))
    return parts


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
    _check_num_returns(opts.get("num_returns", 1))
    rx = opts.get("retry_exceptions")
    if rx is not None and not isinstance(rx, (bool, list, tuple)):
        raise TypeError(f"The type of keyword 'retry_exceptions' must be (<class 'bool'>, <class 'list'>, "
                        f"<class 'tuple'>), but received type {type(rx)}")
    if isinstance(rx, (list, tuple)) and not all(isinstance(c, type) and issubclass(c, Exception) for c in rx):
        raise ValueError("retry_exceptions must be either a boolean or a list of exceptions")
    env = opts.get("runtime_env")
    if env is not None:
        _check_runtime_env(env)
    mc = opts.get("max_calls")
    if mc is not None and (type(mc) is not int or mc < 0):
        raise ValueError(f"The keyword 'max_calls' only accepts None, 0 or a positive integer, got {mc!r}")


_RUNTIME_ENV_KEYS = ("env_vars", "working_dir", "py_modules")
_job_env = None  # init()'s runtime_env: every task and actor of the job has it


def _check_runtime_env(env):
    """Refuses what a worker here cannot provide (pip, conda, containers...), naming it."""
    if not isinstance(env, dict):
        raise TypeError(f"runtime_env must be a dict, got {type(env).__name__}")
    for k in env:
        if k not in _RUNTIME_ENV_KEYS:
            raise ValueError(f"runtime_env key {k!r} is not supported by rayhpc (it supports "
                             f"{', '.join(_RUNTIME_ENV_KEYS)}): workers run in the driver's Python environment")
    ev = env.get("env_vars") or {}
    if not isinstance(ev, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in ev.items()):
        raise TypeError("runtime_env['env_vars'] must be a dict of str to str")
    wd = env.get("working_dir")
    if wd is not None and not os.path.isdir(wd):
        raise ValueError(f"runtime_env['working_dir'] must be a local directory (rayhpc's nodes share "
                         f"the file system); {wd!r} is not one")
    for m in env.get("py_modules") or []:
        if not isinstance(m, str) or not os.path.exists(m):
            raise ValueError(f"runtime_env['py_modules'] lists {m!r}, which is not a local path")


def _set_job_env(env):
    global _job_env
    if env is not None:
        _check_runtime_env(env)
    _job_env = env or None


def _env_of(env):
    """`env` over the job's, in the form the worker applies: env vars (the job's, then the
    call's), the working directory, and the directories py_modules are imported from."""
    out = {}
    for e in (_job_env, env):
        if not e:
            continue
        if e.get("env_vars"):
            out["env_vars"] = {**out.get("env_vars", {}), **e["env_vars"]}
        if e.get("working_dir"):
            out["working_dir"] = os.path.abspath(e["working_dir"])
        if e.get("py_modules"):
            out["py_modules"] = [os.path.dirname(os.path.abspath(m.rstrip("/"))) for m in e["py_modules"]]
    return out


_GENERATOR_EXTRAS = []


def _generator_extras():
    # The extras of an actor's generator method (the same every call).
    if not _GENERATOR_EXTRAS:
        import cloudpickle
        _GENERATOR_EXTRAS.append(cloudpickle.dumps({"generator": True}, protocol=5))
    return _GENERATOR_EXTRAS[0]


def _extras_of(opts):
    """The pickle of what a call carries besides its arguments, or None: the exception
    classes `retry_exceptions` lists (only those are retried), and its runtime_env."""
    x = {}
    rx = opts.get("retry_exceptions")
    if isinstance(rx, (list, tuple)):
        x["retry_only"] = tuple(rx)
    env = _env_of(opts.get("runtime_env"))
    if env:
        x["env"] = env
    if opts.get("max_calls"):
        x["max_calls"] = int(opts["max_calls"])
    if opts.get("num_returns") in ("dynamic", "streaming"):
        x["generator"] = True
    if not x:
        return None
    import cloudpickle
    return cloudpickle.dumps(x, protocol=5)


def _check_num_returns(n):
    if n in ("dynamic", "streaming"):
        return
    if type(n) is not int or n < 0:
        raise ValueError(f"num_returns must be a non-negative integer, got {n!r}")


def _returns(ref, n, actor=False):
    """The call's ref, or its `n` refs: one per item of the returned sequence (none: the
    call runs, what it returns is dropped, as in Ray)."""
    if n == 1:
        return ref
    if n == 0:
        return None
    return _native.items(ref, n)


class _Remote:
    """What remote functions and actor classes share: variants made by `.options()` share
    one pickle and registration, and pickling one (into a task) leaves the native state
    behind (the receiving worker registers it with its runtime)."""

    def options(self, **options):
        merged = dict(self._options)
        merged.update(options)
        variant = type(self)(self._wrapped, merged)
        variant._shared = self._shared  # one pickled function or class for every variant
        return variant

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_native_options"] = None
        state["_native_epoch"] = None
        state["_shared"] = {"epoch": None, "key": self._shared["key"], "blob": self._shared["blob"]}
        return state


class RemoteFunction(_Remote):
    """A function made remote with `@rayhpc.remote`: call it with `.remote(...)`."""

    def __init__(self, fn, options):
        _check_options(options, _TASK_OPTIONS)
        self._function = fn
        self._options = dict(options)
        self._name = getattr(fn, "__qualname__", getattr(fn, "__name__", "task"))
        self._shared = {"epoch": None, "key": None, "blob": None}
        self._native_options = None
        self._native_epoch = None
        self._extras = None
        self._arity = _arity(fn)
        self._num_returns = self._options.get("num_returns", 1)
        self.__doc__ = fn.__doc__
        self.__name__ = getattr(fn, "__name__", "task")
        self.__wrapped__ = fn

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Remote functions cannot be called directly. Instead of running '{self.__name__}()', "
            f"try '{self.__name__}.remote()'.")

    _wrapped = property(lambda self: self._function)

    def _register(self):
        s = self._shared
        if s["blob"] is None:
            import cloudpickle
            try:
                s["blob"] = cloudpickle.dumps(self._function, protocol=5)
            except Exception as e:
                raise TypeError(f"Could not serialize the function {self._name}: {e}") from e
            s["key"] = _key_of(s["blob"])
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
                retry_exceptions=None if o.get("retry_exceptions") is None else bool(
                    o["retry_exceptions"] is True or isinstance(o["retry_exceptions"], (list, tuple))))
            self._extras = _extras_of(o)
            self._native_epoch = _epoch

    def remote(self, *args, **kwargs):
        if self._native_epoch != _epoch or self._shared["epoch"] != _epoch:
            self._prepare()
        if kwargs or self._arity is None or not (self._arity[0] <= len(args) <= self._arity[1]):
            # Ray checks the call against the signature at submit: a TypeError here.
            inspect.signature(self._function).bind(*args, **kwargs)
        n = self._num_returns
        if self._extras is not None:
            if type(n) is str:  # a generator: one ref, whose value is the ObjectRefGenerator
                ref = _native.submit(self._shared["key"], _call_parts(args, kwargs, 1, self._extras), self._native_options)
                return ObjectRefGenerator(source=ref) if n == "streaming" else ref
            return _returns(_native.submit(self._shared["key"], _call_parts(args, kwargs, max(n, 1), self._extras),
                                           self._native_options), n)
        if n == 0:
            return _returns(_native.submit(self._shared["key"], _call_parts(args, kwargs), self._native_options), 0)
        if n == 1:
            return _native.submit(self._shared["key"], _call_parts(args, kwargs), self._native_options)
        return _returns(_native.submit(self._shared["key"], _call_parts(args, kwargs, n), self._native_options), n)


# Arguments up to this size travel with the call; larger ones are put into the store first
# and passed by reference (read in place by the worker).
_ARG_INLINE_MAX = 1 << 20


def _dumps_arg(v):
    try:
        parts = dumps(v)
    except Exception as e:
        raise TypeError(f"Could not serialize the argument {v!r} of type {type(v).__name__}: {e}") from e
    if len(parts) == 1 and len(parts[0]) <= _ARG_INLINE_MAX:
        return parts[0]
    if _size(parts) <= _ARG_INLINE_MAX:
        return b"".join(parts)
    return _native.put(parts)


# ---------------------------------------------------------------------------- actors

_ACTOR_OPTIONS = {
    "num_cpus", "num_gpus", "resources", "max_restarts", "max_task_retries", "name",
    "namespace", "lifetime", "get_if_exists", "max_concurrency", "memory",
    "scheduling_strategy", "runtime_env", "max_pending_calls", "concurrency_groups",
    "accelerator_type", "label_selector", "_metadata", "placement_group",
    "placement_group_bundle_index", "placement_group_capture_child_tasks",
    "enable_task_events", "allow_out_of_order_execution",
}


def _method_table(cls):
    """{name: (arity, options)} of the methods an actor of `cls` can be called with."""
    table = {}
    for name in dir(cls):
        if name.startswith("__") and name != "__call__":
            continue
        member = inspect.getattr_static(cls, name, None)
        if isinstance(member, (staticmethod, classmethod)):
            fn, skip = member.__func__, (0 if isinstance(member, staticmethod) else 1)
        elif inspect.isfunction(member):
            fn, skip = member, 1
        else:
            continue
        opts = dict(getattr(fn, "__rayhpc_method_options__", {}))
        _check_num_returns(opts.get("num_returns", 1))
        table[name] = (_arity(fn, skip), opts)
    return table


class ActorClass(_Remote):
    """A class made remote with `@rayhpc.remote`: create an actor with `.remote(...)`."""

    def __init__(self, cls, options):
        for k in options:
            if k not in _ACTOR_OPTIONS:
                raise ValueError(f"Invalid option keyword {k} for actors.")
        _check_options({k: v for k, v in options.items() if k in ("num_cpus", "num_gpus", "resources", "runtime_env")},
                       _TASK_OPTIONS)
        for k in ("max_restarts", "max_task_retries"):
            v = options.get(k)
            if v is not None and (not isinstance(v, int) or v < -1):
                raise ValueError(f"The keyword '{k}' only accepts -1, 0 or a positive integer, got {v!r}")
        if options.get("max_concurrency", 1) != 1:
            raise NotImplementedError("max_concurrency other than 1 (threaded actors) is not supported yet")
        self._cls = cls
        self._options = dict(options)
        self._name = getattr(cls, "__qualname__", cls.__name__)
        self._methods = _method_table(cls)
        self._shared = {"epoch": None, "key": None, "blob": None}
        self._native_options = None
        self._native_epoch = None
        self._extras = None
        self.__doc__ = cls.__doc__
        self.__name__ = cls.__name__

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Actors cannot be instantiated directly. Instead of '{self.__name__}()', "
            f"use '{self.__name__}.remote()'.")

    _wrapped = property(lambda self: self._cls)

    def _prepare(self):
        _auto_init()
        s = self._shared
        if s["epoch"] != _epoch:
            if s["blob"] is None:
                import cloudpickle
                try:
                    s["blob"] = cloudpickle.dumps(self._cls, protocol=5)
                except Exception as e:
                    raise TypeError(f"Could not serialize the class {self._name}: {e}") from e
                s["key"] = _key_of(s["blob"])
            _native.register_class(s["key"], s["blob"], self._name)
            _class_meta[s["key"]] = (self._methods, self._name)
            s["epoch"] = _epoch
        if self._native_epoch != _epoch:
            o = self._options
            self._native_options = _native.TaskOptions(
                self._name,
                num_cpus=None if o.get("num_cpus") is None else float(o["num_cpus"]),
                num_gpus=None if o.get("num_gpus") is None else float(o["num_gpus"]),
                resources={k: float(v) for k, v in (o.get("resources") or {}).items()},
                max_restarts=o.get("max_restarts"),
                max_task_retries=o.get("max_task_retries"),
                actor_name=o.get("name"))
            self._extras = _extras_of({"runtime_env": o.get("runtime_env")})
            self._native_epoch = _epoch

    def remote(self, *args, **kwargs):
        self._prepare()
        name = self._options.get("name")
        if name is not None and self._options.get("get_if_exists"):
            try:
                return get_actor(name)
            except ValueError:
                pass
        init_fn = inspect.getattr_static(self._cls, "__init__", None)
        if inspect.isfunction(init_fn):
            sig = inspect.signature(init_fn)
            sig.bind(None, *args, **kwargs)
        elif args or kwargs:
            raise TypeError(f"{self._name}() takes no arguments")
        ref = _native.create_actor(self._shared["key"], _call_parts(args, kwargs, 1, self._extras), self._native_options)
        return ActorHandle(ref, self._methods, self._name)


class ActorHandle:
    """A handle to an actor: `handle.method.remote(...)` calls it. It can be passed to tasks
    and to other actors."""

    def __init__(self, ref, methods, class_name):
        self._ref = ref
        self._methods = methods
        self._class_name = class_name
        self._bound = {}

    def __getattr__(self, name):
        if name == "__ray_terminate__":
            # Ray's graceful end: queued like any call, it ends the actor when its turn comes.
            return ActorMethod(self, name, (0, 0))
        if name.startswith("__") and name != "__call__":
            raise AttributeError(name)
        m = self._bound.get(name)
        if m is not None:
            return m
        methods = self._methods
        if methods is not None and name not in methods:
            raise AttributeError(f"'ActorHandle' object has no attribute '{name}'")
        if methods is None:
            m = ActorMethod(self, name, None)
        else:
            arity, opts = methods[name]
            m = ActorMethod(self, name, arity, opts.get("num_returns", 1))
        self._bound[name] = m
        return m

    def __reduce__(self):
        # The actor must outlive the driver's handle while this copy travels.
        _native.actor_pin(self._ref)
        return (_rebuild_actor, (self._ref.id_bytes(), self._ref.class_key(), self._methods, self._class_name))

    def __repr__(self):
        return f"Actor({self._class_name}, {self._ref.hex()})"

    def __eq__(self, other):
        return isinstance(other, ActorHandle) and other._ref.hex() == self._ref.hex()

    def __hash__(self):
        return hash(self._ref.hex())


def _rebuild_actor(actor_id, class_key, methods, class_name):
    return ActorHandle(_native.actor_from_id(actor_id, class_key), methods, class_name)


class ActorMethod:
    """A method of an actor: call it with `.remote(...)`."""

    def __init__(self, handle, name, arity, num_returns=1):
        self._handle = handle
        self._name = name
        self._arity = arity
        self._num_returns = num_returns

    def __call__(self, *args, **kwargs):
        raise TypeError(
            f"Actor methods cannot be called directly. Instead of running 'object.{self._name}()', "
            f"try 'object.{self._name}.remote()'.")

    def options(self, **options):
        for k in options:
            if k not in ("num_returns", "name", "concurrency_group", "enable_task_events", "_metadata"):
                raise ValueError(f"Invalid option keyword {k} for actor methods.")
        n = options.get("num_returns", self._num_returns)
        _check_num_returns(n)
        return ActorMethod(self._handle, self._name, self._arity, n)

    def remote(self, *args, **kwargs):
        a = self._arity
        if kwargs or a is None or not (a[0] <= len(args) <= a[1]):
            self._check(args, kwargs)
        n = self._num_returns
        if type(n) is str:  # a generator method
            ref = _native.actor_call(self._handle._ref, self._name, _call_parts(args, kwargs, 1, _generator_extras()))
            return ObjectRefGenerator(source=ref) if n == "streaming" else ref
        return _returns(_native.actor_call(self._handle._ref, self._name, _call_parts(args, kwargs, max(n, 1))), n)

    def _check(self, args, kwargs):
        methods = self._handle._methods
        if methods is None:
            return
        # The class is not at hand (only its method table): check against the arity.
        a = methods[self._name][0]
        if a is not None and not kwargs and not (a[0] <= len(args) <= a[1]):
            raise TypeError(
                f"{self._handle._class_name}.{self._name}() takes {a[0]}"
                f"{'' if a[0] == a[1] else f' to {a[1]}'} positional argument(s) but {len(args)} were given")


def kill(actor, *, no_restart=True):
    """Kills an actor now: a call it is running fails, later calls raise RayActorError. With
    `no_restart=False` only its process is ended: the actor restarts (fresh state) while its
    max_restarts allows, and later calls go to the new process."""
    if not isinstance(actor, ActorHandle):
        raise ValueError(f"ray.kill() only supported for actors. For tasks, try ray.cancel(). Got: {actor}.")
    _native.kill(actor._ref, bool(no_restart))


def cancel(object_ref, *, force=False, recursive=True):
    """Cancels the task of `object_ref`: one not started yet never runs; a running one gets
    KeyboardInterrupt (or, with `force`, its worker process is killed). `get` then raises
    TaskCancelledError. A task already finished is left as it is."""
    if type(object_ref) is not ObjectRef:
        raise TypeError(f"ray.cancel() only supported for object refs. For actors, try ray.kill(). Got: {type(object_ref)}.")
    _native.cancel(object_ref, bool(force))


def get_actor(name, namespace=None):
    """The live actor created with `name`; ValueError when there is none."""
    if not isinstance(name, str) or not name:
        raise ValueError("Please supply a non-empty value to get_actor")
    _auto_init()
    ref = _native.get_actor(name)
    meta = _class_meta.get(bytes(ref.class_key()))
    if meta is None:
        return ActorHandle(ref, None, "Actor")
    return ActorHandle(ref, meta[0], meta[1])


_class_meta = {}  # class key -> (method table, class name), for get_actor


def remote(*args, **kwargs):
    """`@rayhpc.remote` or `@rayhpc.remote(num_cpus=..., ...)` on a function or a class."""
    if len(args) == 1 and not kwargs and callable(args[0]):
        return _make_remote(args[0], {})
    if args:
        raise TypeError("The @rayhpc.remote decorator takes either a function or keyword options")

    def decorator(obj):
        return _make_remote(obj, kwargs)
    return decorator


def _make_remote(obj, options):
    if inspect.isclass(obj):
        return ActorClass(obj, options)
    if not callable(obj):
        raise TypeError("The @rayhpc.remote decorator must be applied to a function or a class")
    return RemoteFunction(obj, options)


def method(*args, **kwargs):
    """`@rayhpc.method(num_returns=...)` on an actor method."""
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
    if kind == "actor_died":
        raise ActorDiedError(message)
    if kind == "actor_unavailable":
        raise ActorUnavailableError(message)
    if kind == "cancelled":
        raise TaskCancelledError(f"task {function} was cancelled")
    if kind in ("value", "no_actor", "resources"):
        raise ValueError(message)
    if kind == "name_taken":
        raise ActorAlreadyExistsError(message)
    if kind == "timeout":
        raise GetTimeoutError(message)
    if kind == "store":
        raise ObjectStoreFullError(message)
    if kind == "object_lost":
        raise ObjectLostError(message)
    raise RaySystemError(message)


def get(object_refs, *, timeout=None):
    """The value of an ObjectRef, or the values of a list of them (blocks until ready)."""
    if type(object_refs) is ObjectRef:
        r = _native.get([object_refs], timeout)[0]
        if type(r) is not tuple:
            return loads(r)
        _raise_for(r)
    if not isinstance(object_refs, list):
        raise ValueError(f"Invalid type of object refs, {type(object_refs)}, is given. "
                         "'object_refs' must either be an ObjectRef or a list of ObjectRefs.")
    refs = list(object_refs)
    for r in refs:
        if type(r) is not ObjectRef:
            raise TypeError(f"get() expects ObjectRefs, got {type(r).__name__}")
    out = _native.get(refs, timeout)
    values = []
    for r in out:
        if type(r) is not tuple:
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
        parts = dumps(value)
    except Exception as e:
        raise TypeError(f"Could not serialize the put value {value!r}: {e}") from e
    try:
        return _native.put(parts)
    except MemoryError as e:
        raise ObjectStoreFullError(str(e)) from None


def wait(object_refs, *, num_returns=1, timeout=None, fetch_local=True):
    """Returns (ready, not_ready) once `num_returns` of the refs are ready or `timeout`
    seconds passed; both lists keep the input order."""
    # Ray's checks, in Ray's order (an empty list is fine whatever num_returns says).
    if type(object_refs) is ObjectRef:
        raise TypeError(f"wait() expected a list of ray.ObjectRef or ray.ObjectRefGenerator, "
                        f"got a single ray.ObjectRef or ray.ObjectRefGenerator {object_refs}")
    if not isinstance(object_refs, list):
        raise TypeError(f"wait() expected a list of ray.ObjectRef or ray.ObjectRefGenerator, got {type(object_refs)}")
    if timeout is not None and timeout < 0:
        raise ValueError(f"The 'timeout' argument must be nonnegative. Received {timeout}")
    refs = object_refs
    for r in refs:
        if type(r) is not ObjectRef:
            raise TypeError(f"wait() expected a list of ray.ObjectRef or ray.ObjectRefGenerator, "
                            f"got list containing {type(r)}")
    if not refs:
        return [], []
    if len(set(refs)) != len(refs):
        raise ValueError("Wait requires a list of unique ray_waitables.")
    if num_returns <= 0:
        raise ValueError(f"Invalid number of objects to return {num_returns}.")
    if num_returns > len(refs):
        raise ValueError("num_returns cannot be greater than the number of ray_waitables provided to ray.wait.")
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
    """The nodes of the cluster (under `rayhpc launch`, every node of the launch; else this
    process's own), as Ray describes them."""
    return [{
        "NodeID": f"{rank:056x}",
        "Alive": alive,
        "alive": alive,
        "NodeManagerAddress": address,
        "NodeManagerHostname": host,
        "NodeName": address,
        "Resources": {k: v for k, v in resources.items() if v > 0},
        "Labels": {},
    } for rank, alive, address, host, resources in _native.nodes()]


def _job_id():
    # Ray's job ids are 4 bytes in hex; under Slurm, the job's number in those 4 bytes.
    job = os.environ.get("SLURM_JOB_ID", "")
    return f"{int(job) & 0xFFFFFFFF:08x}" if job.isdigit() else "01000000"


class RuntimeContext:
    """What the calling process is and runs (`ray.get_runtime_context()`). In a worker, the
    call in progress: its task's id (an actor method has none), its actor, the resources it
    holds; in a driver, those are None (and {})."""

    @staticmethod
    def _call():
        # (task id, actor id, actor name, resources) of the call this worker runs.
        return _native.context() if _native.mode_name() == "worker" else None

    def get_node_id(self):
        # As ray.nodes() names the node this process's runtime is.
        return f"{_native.node_rank():056x}"

    def get_job_id(self):
        return _job_id()

    def get_worker_id(self):
        if not _native.is_initialized():
            raise RuntimeError("Worker ID is not available because Ray has not been initialized.")
        return f"{(_native.node_rank() << 32) | os.getpid():056x}"

    def get_task_id(self):
        c = self._call()
        return c[0] if c else None

    def get_task_name(self):
        if _native.mode_name() != "worker":
            return None
        from . import _worker
        return _worker.RUNNING["name"]

    def get_actor_id(self):
        c = self._call()
        return c[1] if c else None

    def get_actor_name(self):
        c = self._call()
        if not c or c[1] is None:
            return None
        return c[2] or ""

    @property
    def namespace(self):
        return "default"

    def get_assigned_resources(self):
        c = self._call()
        return {k: v for k, v in c[3].items() if v > 0} if c else {}

    def get_accelerator_ids(self):
        visible = os.environ.get("CUDA_VISIBLE_DEVICES", "")
        return {"GPU": [d for d in visible.split(",") if d] if self._call() else []}

    def get_placement_group_id(self):
        return None

    def get_runtime_env_string(self):
        import json
        return json.dumps(self.runtime_env)

    @property
    def runtime_env(self):
        # The call's (over the job's), as the worker applied it; the job's in a driver.
        if _native.mode_name() == "worker":
            from . import _worker
            return dict(_worker.RUNNING["env"] or {})
        return dict(_env_of(None))

    @property
    def was_current_actor_reconstructed(self):
        c = self._call()
        assert c and c[1] is not None, "This method should't be called inside Ray tasks."
        return c[4]

    @property
    def current_actor(self):
        c = self._call()
        if not c or c[1] is None:
            raise RuntimeError("This method is only available in an actor.")
        from . import _worker
        key, cls = _worker.RUNNING["actor"]
        return _rebuild_actor(int(c[1], 16).to_bytes(16, "little"), key, _method_table(cls), cls.__name__)


def get_runtime_context():
    return RuntimeContext()
