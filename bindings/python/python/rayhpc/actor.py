"""`rayhpc.actor`: what Ray's `ray.actor` module offers an actor's own code."""


class ActorExit(SystemExit):
    """Raised by `exit_actor()` to end the actor from its own method."""


def exit_actor():
    """Ends the actor whose method calls it: the call and every later one raise
    ActorDiedError, and the actor is not restarted (an intended exit)."""
    from . import _worker
    if _worker.RUNNING["actor"] is None:
        raise TypeError("exit_actor API is called on a non-actor worker, which is not allowed: "
                        "it must be called from an actor's method")
    raise ActorExit("exit_actor() was called")
