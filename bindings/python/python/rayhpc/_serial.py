"""How values become bytes and back: pickle protocol 5 through cloudpickle (functions,
lambdas and classes defined in __main__ travel by value).

Buffers (numpy arrays, bytearrays: whatever pickles through a PickleBuffer) are taken out
of band (pickle 5's buffer_callback): a value with any is a *container*

    magic "RHPCOOB\x01" | n: u64 | in-band length: u64 | n buffer lengths: u64 each |
    in-band pickle | each buffer, at an offset aligned to 64 bytes

so that a container unpickles with its buffers pointing into the store or into the bytes it
came in (zero-copy, read-only: numpy arrays are read-only at every size, as in Ray). A value living in the store may also be named by a key marker
("RHPCKEY\x01", key, length), which a worker reads in place.
"""

import pickle
import struct
import sys

import cloudpickle

OOB_MAGIC = b"RHPCOOB\x01"
ITEMS_MAGIC = b"RHPCITM\x01"
KEY_MAGIC = b"RHPCKEY\x01"
_ALIGN = 64

_HEAD = struct.Struct("<QQ")
_LEN = struct.Struct("<Q")

_NONE = pickle.dumps(None, protocol=5)
# Values of these exact types pickle the same through the C pickler, which is several times
# faster than building a cloudpickle Pickler (what small task results mostly are).
_PLAIN = (int, float, str, bytes, bool, complex)


def dumps(value):
    """The pickle of `value` as a list of parts, to be sent or stored one after the other: one
    bytes object, or a container's header, in-band pickle, padding and buffers."""
    if value is None:
        return [_NONE]
    if type(value) in _PLAIN:
        return [pickle.dumps(value, protocol=5)]
    bufs = []
    if type(value) is _ndarray() and not value.dtype.hasobject:
        # A plain array needs nothing of cloudpickle (which builds a pickler per call). A
        # strided one is made contiguous, so that it too travels out of band.
        if not (value.flags.c_contiguous or value.flags.f_contiguous):
            value = sys.modules["numpy"].ascontiguousarray(value)
        try:
            inband = pickle.dumps(value, protocol=5, buffer_callback=bufs.append)
        except BufferError:
            bufs.clear()
            inband = pickle.dumps(value, protocol=5)
        return _container(inband, [b.raw() for b in bufs])

    def take(pb):
        # Every buffer goes out of band, however small: read back, it points into the bytes
        # it came in (or the store), read-only, as Ray's arrays are at every size.
        bufs.append(pb.raw())
        return False

    try:
        inband = cloudpickle.dumps(value, protocol=5, buffer_callback=take)
    except BufferError:
        # A buffer that is not contiguous: pickled in band.
        bufs.clear()
        inband = cloudpickle.dumps(value, protocol=5)
    return _container(inband, bufs)


def _ndarray():
    # numpy's array type, once numpy is loaded (a value cannot be one before).
    np = sys.modules.get("numpy")
    return np.ndarray if np is not None else None


def _container(inband, bufs):
    if not bufs:
        return [inband]
    header = OOB_MAGIC + struct.pack(f"<QQ{len(bufs)}Q", len(bufs), len(inband), *(b.nbytes for b in bufs))
    parts = [header, inband]
    at = len(header) + len(inband)
    for b in bufs:
        pad = -at % _ALIGN
        if pad:
            parts.append(bytes(pad))
            at += pad
        parts.append(b)
        at += b.nbytes
    return parts


def dumps_items(result, n):
    """The result of a call with `num_returns=n`: each of its `n` items pickled on its own,
    after a header (magic, n, the items' lengths), for the runtime to split into n objects."""
    try:
        items = list(result)
    except TypeError:
        raise ValueError(f"Task returned a {type(result).__name__}, not {n} objects (num_returns={n}).") from None
    if len(items) != n:
        raise ValueError(f"Task returned {len(items)} objects, but num_returns={n}.")
    blobs = []
    for v in items:
        parts = dumps(v)
        blobs.append(parts[0] if len(parts) == 1 else b"".join(parts))
    return [ITEMS_MAGIC + struct.pack(f"<Q{n}Q", n, *(len(b) for b in blobs)), *blobs]


def size(parts):
    return sum(memoryview(p).nbytes for p in parts)


def loads(data):
    """The value of a pickle given as bytes, a memoryview or a pinned store object."""
    if type(data) is bytes:
        head = data[:8]
        if head == KEY_MAGIC:
            from . import _native
            return loads(_native.stored(data))
        if head != OOB_MAGIC:
            return pickle.loads(data)
    mv = memoryview(data)
    if mv[:8] != OOB_MAGIC:
        return pickle.loads(mv)
    n, inband_len = _HEAD.unpack_from(mv, 8)
    if n == 1:
        # One buffer (an array): the common case, without the loop.
        (ln,) = _LEN.unpack_from(mv, 24)
        at = 32 + inband_len
        start = at + (-at % _ALIGN)
        return pickle.loads(mv[32:at], buffers=(mv[start:start + ln],))
    lens = struct.unpack_from(f"<{n}Q", mv, 24)
    at = 24 + 8 * n
    inband = mv[at:at + inband_len]
    at += inband_len
    buffers = []
    for ln in lens:
        at += -at % _ALIGN
        buffers.append(mv[at:at + ln])
        at += ln
    return pickle.loads(inband, buffers=buffers)


def error_payload(exc, function_name, tb):
    """The pickled (exception, function name, traceback text); the exception is replaced by
    a RuntimeError carrying its text when it cannot be pickled. A task that failed because a
    task it waited on failed (a RayTaskError raised by its `get`) fails with that task's
    cause, as Ray does: the caller's error is an instance of the innermost exception's
    class, and `tb` (this task's traceback) shows the inner one's text."""
    from rayhpc.exceptions import RayTaskError
    if isinstance(exc, RayTaskError) and exc.cause is not None:
        exc = exc.cause
    try:
        return cloudpickle.dumps((exc, function_name, tb), protocol=5)
    except BaseException:  # noqa: BLE001
        stand_in = RuntimeError(f"{type(exc).__name__}: {exc} (the exception could not be pickled)")
        return cloudpickle.dumps((stand_in, function_name, tb), protocol=5)
