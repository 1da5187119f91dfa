"""The loop of a Python worker process: started by the node runtime, attached to it by a
shared-memory ring channel, it runs the calls it is sent until the channel closes."""

import os
import pickle
import sys
import traceback


def _extend_path():
    # Import what the driver imports: its sys.path, where this one lacks an entry.
    extra = os.environ.get("RAYHPC_SYS_PATH", "")
    have = set(sys.path)
    for p in extra.split(os.pathsep):
        if p and p not in have:
            sys.path.append(p)


class _Interrupt:
    """SIGINT (a cancelled task) interrupts the running call only: outside one it never breaks
    the loop's own work. One that arrives before the call's body started (the node signals
    the worker as soon as the call is sent) is kept for the call; one after the call ended
    is never read, because the node retires a worker whose call was cancelled."""

    in_call = False
    pending = False

    @classmethod
    def handler(cls, signum, frame):
        if cls.in_call:
            raise KeyboardInterrupt
        cls.pending = True

    @classmethod
    def enter(cls):
        cls.in_call = True
        if cls.pending:
            cls.pending = False
            raise KeyboardInterrupt


_EXTRAS = {}  # pickled extras of calls -> their value (a stream of calls shares a few)


def _extras(blob, cloudpickle):
    # What a call carries besides its arguments: retry_exceptions's classes, runtime_env.
    got = _EXTRAS.get(blob)
    if got is None:
        got = cloudpickle.loads(blob)
        if len(_EXTRAS) > 256:
            _EXTRAS.clear()
        _EXTRAS[blob] = got
    return got


def _apply_env(env, permanent):
    """Applies a runtime_env (env_vars, working_dir, py_modules) to this process; returns
    what undoes it after the call (None when `permanent`: an actor's, for its life)."""
    paths = list(env.get("py_modules", []))
    cwd = None
    if env.get("working_dir"):
        # First: a directory that is not there fails the call with nothing else applied.
        cwd = os.getcwd()
        os.chdir(env["working_dir"])
        paths.insert(0, env["working_dir"])
    saved_env = {k: os.environ.get(k) for k in env.get("env_vars", {})}
    os.environ.update(env.get("env_vars", {}))
    saved_path = list(sys.path)
    sys.path[:0] = paths
    if permanent:
        return None

    def restore():
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        sys.path[:] = saved_path
        if cwd is not None:
            os.chdir(cwd)
    return restore


def _terminate():
    # `handle.__ray_terminate__.remote()`: ends the actor once the calls before it ran.
    from rayhpc.actor import ActorExit
    raise ActorExit("__ray_terminate__ was called")


# What this worker runs, for get_runtime_context(): the name of the call in progress, and
# the actor it hosts (its class's key and the class), once constructed.
RUNNING = {"name": None, "actor": None, "env": None}


def main():
    _extend_path()
    import signal

    import cloudpickle
    from rayhpc import _native
    from rayhpc._serial import dumps, dumps_items, loads, error_payload
    from rayhpc.actor import ActorExit

    signal.signal(signal.SIGINT, _Interrupt.handler)
    _native.worker_attach()
    functions = {}
    calls = {}  # calls run per function, for max_calls
    instance = None  # the actor this worker hosts, once constructed
    class_name = "Actor"
    DEFINE, CALL, NEW, METHOD = 1, 2, 3, 4
    while True:
        req = _native.worker_recv()
        if req is None:
            break
        op, key, body = req
        req = None
        if op == DEFINE:
            try:
                functions[key] = (cloudpickle.loads(body), None)
            except BaseException as e:  # noqa: BLE001 - reported at the call
                functions[key] = (None, e)
            continue
        fn = None
        name = "task"
        out = err = None
        retry_only = None  # retry_exceptions's classes, when it lists them
        restore = None  # undoes a task's runtime_env after its call
        retire = False  # the function's max_calls reached: this worker's last call
        generator = False  # num_returns "dynamic" or "streaming"
        try:
            if op == METHOD:
                mname = body[0].decode()
                name = f"{class_name}.{mname}"
                if instance is None:
                    raise RuntimeError("this worker hosts no actor")
                fn = _terminate if mname == "__ray_terminate__" else getattr(instance, mname)
                body = body[1:]
            else:
                fn, load_error = functions.get(key, (None, None))
                if fn is None:
                    if load_error is not None:
                        raise load_error
                    raise RuntimeError("this worker was never sent the function or class")
                name = getattr(fn, "__qualname__", "task")
                if op == NEW:
                    class_name = name
                    name = f"{class_name}.__init__"
            RUNNING["name"] = name
            if op != METHOD:
                RUNNING["env"] = None
            layout = body[0]
            npos, returns = None, 1
            if layout:
                npos, names, returns, *rest = pickle.loads(layout)
                if rest and rest[0]:
                    extras = _extras(rest[0], cloudpickle)
                    # retry_exceptions lists the classes to retry: another exception is final.
                    retry_only = extras.get("retry_only")
                    generator = extras.get("generator", False)
                    if extras.get("max_calls") and op == CALL:
                        calls[key] = calls.get(key, 0) + 1
                        retire = calls[key] >= extras["max_calls"]
                    if op != METHOD:
                        RUNNING["env"] = extras.get("env")
                    if extras.get("env"):
                        # Before the arguments are read: they may need its modules. An
                        # actor keeps it for its life.
                        restore = _apply_env(extras["env"], permanent=op == NEW)
            values = [loads(b) for b in body[1:]]
            body = None
            _Interrupt.enter()
            if npos is not None:
                result = fn(*values[:npos], **dict(zip(names, values[npos:])))
            else:
                result = fn(*values)
            if generator:
                from rayhpc._generators import collect
                result = collect(result, name)
            _Interrupt.in_call = False
            values = None
            if op == NEW:
                instance, result = result, None
                RUNNING["actor"] = (key, type(instance))
            out = dumps(result) if returns == 1 else dumps_items(result, returns)
            result = None
        except ActorExit as e:
            # The actor ends itself: told as such (not a lost process: no restart).
            _Interrupt.in_call = False
            err = (f"the actor exited: {e}", b"", False, op == METHOD)
        except BaseException as e:  # noqa: BLE001 - every failure goes back to the caller
            _Interrupt.in_call = False
            # The traceback from the call's own frames on (this loop's frame left out).
            tb = "".join(traceback.format_exception(type(e), e, e.__traceback__.tb_next if e.__traceback__ else None))
            retry = retry_only is None or isinstance(e, retry_only)
            err = (f"{type(e).__name__}: {e}", error_payload(e, name, tb), retry, False, retire)
        if restore is not None:
            restore()
        # Nothing of the call stays alive while this worker waits for the next one: its
        # arguments may pin objects of the store.
        fn = values = result = body = None
        try:
            if err is None:
                try:
                    _native.worker_ok(out, retire)
                except ConnectionError:
                    raise
                except Exception as e:  # noqa: BLE001 - a result the store refused: the call's error
                    if isinstance(e, MemoryError):
                        from rayhpc.exceptions import ObjectStoreFullError
                        e = ObjectStoreFullError(f"the result of {name}: {e}")
                    tb = "".join(traceback.format_exception_only(type(e), e))
                    _native.worker_err(f"{type(e).__name__}: {e}", error_payload(e, name, tb))
            else:
                _native.worker_err(*err)
        except ConnectionError:
            break
        out = err = None
