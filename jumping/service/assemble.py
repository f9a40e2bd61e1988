"""
Building a node's parts from its configuration: key files, plugins and the core, opening
nothing the node would not open before it serves (no TUN device, no socket).

One code path for ``twistd jumping`` (the node service) and ``jumpctl check`` /
``jumpctl show-config``: a file one accepts, the other accepts, with the same message for
what is wrong (an unknown plugin name lists the installed ones).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger

from jumping import plugin
from jumping.core.client import ClientCore
from jumping.core.gateway import GatewayCore
from jumping.core.node import NodeCore, Peer
from jumping.interfaces import IEventSink, IOwnershipBackend, IRateLimitPolicy, ITransportFactory
from jumping.keys import load_private_key, load_psk
from jumping.service import mtu

log = Logger()


@dataclass
class Parts:
    """What :func:`build_parts` made; :meth:`close` undoes it."""

    private_key: bytes
    #: a gateway's peers (their pre-shared keys read), empty on a client
    peers: list[Peer] = field(default_factory=list)
    #: a client's pre-shared key with its gateway, or None
    gateway_psk: bytes | None = None
    sinks: list[Any] = field(default_factory=list)
    switch_limiter: Any = None
    ownership: Any = None
    #: (``[[listen]]`` or ``[[gateway.endpoints]]`` entry, ITransportFactory)
    factories: list[tuple[Any, Any]] = field(default_factory=list)
    #: the tunnel MTU: ``[tun] mtu`` fitted to the smallest transport (jumping/service/mtu.py)
    mtu: int = 0

    def close(self) -> defer.Deferred[None]:
        waits = []
        for closable in [*self.sinks, self.ownership]:
            if closable is not None:
                try:
                    waits.append(defer.maybeDeferred(closable.close))
                except Exception:
                    log.failure("closing plugin")
        return defer.DeferredList(waits, consumeErrors=True).addCallback(lambda _: None)


def peers_of(cfg: Any) -> list[Peer]:
    """The gateway's ``[[peers]]`` as the core takes them (pre-shared key files read)."""
    return [
        Peer(p.public_key, p.allowed_ips, p.name, load_psk(p.psk) if p.psk else None)
        for p in cfg.peers
    ]


def build_parts(cfg: Any) -> Parts:
    """Read the key files, build (``jumping.plugin.load``: find by name, construct,
    ``verifyObject``) every configured plugin, fit the tunnel MTU to the transports.
    Raises ``KeyFileError``, ``PluginError`` or ``MTUError`` (one line); what was built
    before the failure is closed."""
    parts = Parts(load_private_key(cfg.private_key))
    try:
        if cfg.role == "gateway":
            parts.peers = peers_of(cfg)
        elif cfg.gateway.psk:
            parts.gateway_psk = load_psk(cfg.gateway.psk)
        for sink in cfg.events:
            parts.sinks.append(plugin.load(IEventSink, sink.name, **dict(sink.options)))
        rl = cfg.rate_limit
        # the limits its table leaves out come from [policy] (IRateLimitPolicy.reconfigure)
        parts.switch_limiter = plugin.load(IRateLimitPolicy, rl.name, **dict(rl.options))
        if cfg.role == "gateway":
            own = cfg.ownership
            parts.ownership = plugin.load(
                IOwnershipBackend, own.name, node_id=cfg.node_id, **dict(own.options)
            )
        places = cfg.listen if cfg.role == "gateway" else cfg.gateway.endpoints
        for pl in places:
            parts.factories.append(
                (pl, plugin.load(ITransportFactory, pl.transport, **dict(pl.options)))
            )
        tun = cfg.tun
        parts.mtu = mtu.fit(
            tun.mtu, tun.mtu_auto, tun.address,
            [(f"transport {pl.transport!r} ({pl.host}:{pl.port})", mtu.limit_of(f))
             for pl, f in parts.factories],
        )  # fmt: skip
    except BaseException:
        parts.close()
        raise
    return parts


def build_core(cfg: Any, parts: Parts, rng: Callable[[int], bytes], now: float) -> NodeCore:
    """The sans-IO core of the configured role, from what :func:`build_parts` made."""
    common = dict(
        node_id=cfg.node_id, private_key=parts.private_key, policy=cfg.policy,
        rng=rng, now=now, switch_limiter=parts.switch_limiter,
    )  # fmt: skip
    if cfg.role == "gateway":
        gateway = GatewayCore(peers=parts.peers, **common)  # type: ignore[arg-type]
        # a backend shared by several nodes (etcd, a shared memory store): a client may
        # resume here a session another gateway owned (takeover)
        gateway.adopt_sessions = bool(parts.ownership.shared)
        return gateway
    return ClientCore(
        gateway_public_key=cfg.gateway.public_key,
        gateway_psk=parts.gateway_psk,
        **common,
    )  # type: ignore[arg-type]
