"""`rayhpc.util`: the parts of Ray's `ray.util` that rayhpc offers."""

from .. import _native

__all__ = ["list_named_actors", "get_node_ip_address"]


def list_named_actors(all_namespaces=False):
    """The names of the live named actors of the cluster (with `all_namespaces`, dicts of
    name and namespace: rayhpc has the one namespace, "default")."""
    names = _native.actor_names()
    if all_namespaces:
        return [{"name": n, "namespace": "default"} for n in names]
    return names


def get_node_ip_address():
    """The address of the node this process runs on, as `ray.nodes()` gives it."""
    me = _native.node_rank()
    for rank, _alive, address, _host, _resources in _native.nodes():
        if rank == me:
            return address
    return "127.0.0.1"
