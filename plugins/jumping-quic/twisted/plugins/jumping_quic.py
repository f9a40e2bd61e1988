"""Drop-in: the ``quic`` transport (the code is imported only when a node uses it)."""

from jumping.interfaces import ITransportFactory
from jumping.plugin import PluginSpec

quic = PluginSpec(
    "quic",
    ITransportFactory,
    "jumping_quic.factory:QuicTransportFactory",
    "QUIC (aioquic), one DATAGRAM frame per datagram, TLS pinned or CA-checked",
)
