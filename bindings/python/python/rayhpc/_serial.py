"""How values become bytes and back: pickle protocol 5 through cloudpickle (functions,
lambdas and classes defined in __main__ travel by value)."""

import pickle

import cloudpickle

_NONE = pickle.dumps(None, protocol=5)
# Values of these exact types pickle the same through the C pickler, which is several times
# faster than building a cloudpickle Pickler (what small task results mostly are).
_PLAIN = (int, float, str, bytes, bool, complex)


def dumps(value):
    if value is None:
        return _NONE
    if type(value) in _PLAIN:
        return pickle.dumps(value, protocol=5)
    return cloudpickle.dumps(value, protocol=5)


def loads(data):
    return pickle.loads(data)


def error_payload(exc, function_name, tb):
    """The pickled (exception, function name, traceback text); the exception is replaced by
    a RuntimeError carrying its text when it cannot be pickled."""
    try:
        return cloudpickle.dumps((exc, function_name, tb), protocol=5)
    except BaseException:  # noqa: BLE001
        stand_in = RuntimeError(f"{type(exc).__name__}: {exc} (the exception could not be pickled)")
        return cloudpickle.dumps((stand_in, function_name, tb), protocol=5)
