"""Ray's exception classes, with Ray's names and meaning."""


class RayError(Exception):
    """Base of every rayhpc error."""


class RaySystemError(RayError):
    """The runtime itself failed (not the task)."""


class RayTaskError(RayError):
    """A task raised. `get` raises an instance that is also an instance of the task's own
    exception class (as Ray does), so `except ValueError` catches a remote ValueError."""

    def __init__(self, function_name="", traceback_str="", cause=None, proctitle="", pid=None, ip=None):
        self.function_name = function_name
        self.traceback_str = traceback_str
        self.cause = cause
        self.pid = pid
        super().__init__(self._message())

    def _message(self):
        head = f"{type(self.cause).__name__ if self.cause is not None else 'Error'} in {self.function_name}()"
        return f"{head}\n{self.traceback_str}".rstrip()

    def __str__(self):
        return self._message()

    def __reduce__(self):
        # Pickled by its fields, not its class: an instance of a class made for its cause
        # (see `as_instanceof_cause`) is rebuilt as one again wherever it is unpickled.
        return (_rebuild_task_error, (self.function_name, self.traceback_str, self.cause, type(self) is not RayTaskError))

    def as_instanceof_cause(self):
        """This error as an instance of both RayTaskError and the cause's class."""
        cause = self.cause
        if cause is None or isinstance(cause, RayTaskError):
            return self
        cause_cls = type(cause)
        try:
            cls = _dual_classes.get(cause_cls)
            if cls is None:
                cls = type(f"RayTaskError({cause_cls.__name__})", (RayTaskError, cause_cls), {
                    "__init__": _dual_init,
                    "__getattr__": _cause_attr,
                    "__str__": RayTaskError.__str__,
                })
                cls.__module__ = RayTaskError.__module__
                _dual_classes[cause_cls] = cls
            return cls(self.function_name, self.traceback_str, cause)
        except TypeError:
            # A class that cannot be mixed in (a layout conflict): the plain error.
            return self


def _rebuild_task_error(function_name, traceback_str, cause, dual):
    e = RayTaskError(function_name, traceback_str, cause)
    return e.as_instanceof_cause() if dual else e


def _cause_attr(self, name):
    # Attributes the error lacks are the cause's (its fields, say). `cause` itself must not
    # recurse when it is not set yet.
    if name == "cause":
        raise AttributeError(name)
    return getattr(self.cause, name)


def _dual_init(self, function_name, traceback_str, cause):
    self.function_name = function_name
    self.traceback_str = traceback_str
    self.cause = cause
    self.pid = None
    self.args = (cause,)


_dual_classes = {}


class TaskCancelledError(RayError):
    """The task was cancelled."""


class WorkerCrashedError(RayError):
    """The worker process running the task died (after its retries)."""


class RayActorError(RayError):
    """The actor died or was killed: its calls fail with this."""


class ActorDiedError(RayActorError):
    """The actor is dead."""


class ActorUnavailableError(RayActorError):
    """The call lost the actor's process, which was restarted: the actor may answer later
    calls (Ray keeps ActorDiedError for an actor gone for good)."""


class ActorAlreadyExistsError(ValueError, RayError):
    """An actor name is held by a live actor (a ValueError too, as in Ray)."""

    def __init__(self, error_message):
        super().__init__(error_message)
        self.error_message = error_message


class ObjectLostError(RayError):
    """An object's value is gone."""


class ObjectStoreFullError(RayError):
    """The object store could not take an object."""


class GetTimeoutError(RayError, TimeoutError):
    """`get` timed out."""


class OutOfMemoryError(RayError):
    """The node ran out of memory."""


# The rest of Ray's hierarchy, so that programs naming them (in `except` clauses, say) run
# unchanged; the runtime raises those above.

class CrossLanguageError(RayError):
    """An error from a task of another language."""


class LocalRayletDiedError(RayError):
    """The node runtime of this process died."""


class AuthenticationError(RayError):
    """A connection failed to authenticate."""


class UserCodeException(RayError):
    """An error of the user's code."""


class OutOfDiskError(RayError):
    """The disk that objects spill to is full."""


class NodeDiedError(RayError):
    """A node of the cluster died."""


class ObjectFetchTimedOutError(ObjectLostError):
    """An object could not be fetched in time."""


class RpcError(RayError):
    """A call between processes of the runtime failed."""


class ReferenceCountingAssertionError(ObjectLostError, AssertionError):
    """An object was freed while a reference to it remained."""


class ObjectFreedError(ObjectLostError):
    """The object was freed (`_free`)."""


class OwnerDiedError(ObjectLostError):
    """The process that owned the object died."""


class ObjectReconstructionFailedError(ObjectLostError):
    """The object was lost and could not be rebuilt."""


class PlasmaObjectNotAvailable(RayError):
    """The object is not in the store."""


class AsyncioActorExit(RayError):
    """An async actor exits."""


class RuntimeEnvSetupError(RayError):
    """A runtime_env could not be set up."""


class TaskPlacementGroupRemoved(RayError):
    """The task's placement group was removed."""


class ActorPlacementGroupRemoved(RayError):
    """The actor's placement group was removed."""


class PendingCallsLimitExceeded(RayError):
    """An actor has more calls pending than its max_pending_calls."""


class TaskUnschedulableError(RayError):
    """The task cannot be scheduled."""


class ActorUnschedulableError(RayError):
    """The actor cannot be scheduled."""


class ObjectRefStreamEndOfStreamError(RayError):
    """A generator has no more items."""


class UnserializableException(RayError):
    """A task's exception could not be serialized."""


class ActorHandleNotFoundError(ValueError, RayError):
    """An actor handle is not found."""
