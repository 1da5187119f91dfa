"""Ray's internal KV API (``ray.experimental.internal_kv``) over ``rayhpc.kv``.

A ``namespace`` keeps its keys apart from other namespaces' (and from keys given without
one): it is a prefix of the stored key.
"""

from .. import kv as _kv

__all__ = [
    "_internal_kv_initialized",
    "_internal_kv_put",
    "_internal_kv_get",
    "_internal_kv_exists",
    "_internal_kv_del",
    "_internal_kv_list",
]


def _ns(namespace):
    return b"" if namespace is None else b"@namespace_" + _kv._bytes(namespace, "namespace") + b":"


def _internal_kv_initialized():
    from .. import is_initialized

    return is_initialized()


def _internal_kv_put(key, value, overwrite=True, *, namespace=None):
    """Returns True if the key already existed."""
    return _kv.put(_ns(namespace) + _kv._bytes(key, "key"), value, overwrite)


def _internal_kv_get(key, *, namespace=None):
    return _kv.get(_ns(namespace) + _kv._bytes(key, "key"))


def _internal_kv_exists(key, *, namespace=None):
    return _kv.exists(_ns(namespace) + _kv._bytes(key, "key"))


def _internal_kv_del(key, *, del_by_prefix=False, namespace=None):
    return _kv.delete(_ns(namespace) + _kv._bytes(key, "key"), prefix=del_by_prefix)


def _internal_kv_list(prefix, *, namespace=None):
    ns = _ns(namespace)
    return [k[len(ns):] for k in _kv.list(ns + _kv._bytes(prefix, "prefix"))]
