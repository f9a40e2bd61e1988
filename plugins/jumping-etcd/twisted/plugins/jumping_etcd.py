"""Drop-in: the ``etcd`` ownership backend."""

from jumping.interfaces import IOwnershipBackend
from jumping.plugin import PluginSpec

etcd = PluginSpec(
    "etcd",
    IOwnershipBackend,
    "jumping_etcd.backend:EtcdOwnership",
    "cluster-wide session ownership on etcd v3 (lease per node, CAS on revisions, fencing)",
)
