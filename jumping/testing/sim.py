"""
A seeded, deterministic simulated network driving real core instances with a virtual clock.

``SimNet`` wires one :class:`~jumping.core.node.ClientCore` to one
:class:`~jumping.core.node.GatewayCore` over any number of simulated links (each a pair of
path objects, one per side), with per-link delay, loss and blackholing. Nothing here sleeps
or touches the OS: the same seed gives the same run, packet for packet.

Shipped in the package so plugin authors and later tests (jumping scenarios, invariants)
reuse it.
"""

from __future__ import annotations

import heapq
import itertools
import random
import struct
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

from jumping.core.client import ClientCore
from jumping.core.gateway import GatewayCore
from jumping.core.node import NodeCore, Peer
from jumping.core.noise import public_key
from jumping.core.outputs import (
    Adopt,
    ArmTimer,
    Claim,
    ConfirmPath,
    Emit,
    Output,
    Release,
    Renew,
    Send,
    WriteTun,
)
from jumping.core.policy import Policy
from jumping.core.segments import SegmentRun

START = 1_800_000_000.0  # a fixed "wall clock" origin, seconds


class SimPath:
    """What the core sees as a transport: attributes only (the core never calls it)."""

    def __init__(self, transport_id: str, local: tuple[str, int], remote: tuple[str, int]):
        self.transport_id = transport_id
        self.kind = "udp"
        self.local_address = local
        self.remote_address = remote
        self.connected = True
        self.send_errors = 0
        #: as a listener's path for a source it has not yet seen authenticate
        self.provisional = False
        self.confirmed = 0

    def confirm(self) -> None:
        self.provisional = False
        self.confirmed += 1

    def send(self, data: bytes) -> None:
        """Not called: the simulated network carries the cores' ``Send`` outputs itself."""
        raise NotImplementedError("SimNet delivers Send outputs")

    def __repr__(self) -> str:
        return f"<SimPath {self.transport_id}>"


@dataclass
class Link:
    name: str
    client_side: SimPath
    gateway_side: SimPath
    delay: float = 0.010
    loss: float = 0.0
    up: bool = True
    #: "client" or "gateway": packets *to* that side are dropped (a one-way failure)
    dead_to: str = ""
    delivered: int = 0
    lost: int = 0
    #: packets per second each way (0 = unlimited): above it packets queue, so a busy
    #: link's round trip includes the queue its own traffic builds
    rate: float = 0.0
    busy_until: dict[str, float] = field(default_factory=dict)


@dataclass
class NodeLog:
    tun: list[bytes | SegmentRun] = field(default_factory=list)
    events: list[Emit] = field(default_factory=list)
    #: when each event was emitted (virtual clock), parallel to ``events``
    event_times: list[float] = field(default_factory=list)
    drops: list[str] = field(default_factory=list)


def seeded_rng(seed: int) -> Callable[[int], bytes]:
    r = random.Random(seed)
    return r.randbytes


class SimNet:
    def __init__(
        self,
        seed: int = 0,
        policy: Policy | None = None,
        links: int = 1,
        client_ips: tuple[str, ...] = ("10.99.0.2/32",),
        **core_options: Any,
    ) -> None:
        self.seed = seed
        self.random = random.Random(seed)
        self.now = START
        self.policy = policy or Policy()
        rng = seeded_rng(seed)
        self.gateway_key = rng(32)
        self.client_key = rng(32)
        self.gateway = GatewayCore(
            peers=[Peer(public_key(self.client_key), client_ips)],
            node_id="gw1", private_key=self.gateway_key, policy=self.policy,
            rng=seeded_rng(seed + 1), now=self.now, **core_options,
        )  # fmt: skip
        self.links: list[Link] = []
        for i in range(links):
            c = SimPath(f"sim:c{i}", (f"10.201.{i + 1}.1", 40000), (f"10.201.{i + 1}.2", 51820))
            g = SimPath(f"sim:g{i}", (f"10.201.{i + 1}.2", 51820), (f"10.201.{i + 1}.1", 40000))
            self.links.append(Link(f"L{i}", c, g))
        self.client = ClientCore(
            gateway_public_key=public_key(self.gateway_key),
            paths=[link.client_side for link in self.links],
            node_id="c1", private_key=self.client_key, policy=self.policy,
            rng=seeded_rng(seed + 2), now=self.now, **core_options,
        )  # fmt: skip
        self.log = {"client": NodeLog(), "gateway": NodeLog()}
        self._queue: list[tuple[float, int, str, Any, bytes]] = []
        self._timers = {"client": float("inf"), "gateway": float("inf")}
        self._seq = itertools.count()
        self.owner_tokens = itertools.count(1)
        self._calls: list[tuple[float, int, Callable[[], None]]] = []
        self.echo = False  # gateway answers every inner packet it receives (an echo server)
        self.delivered: dict[str, list[float]] = {"client": [], "gateway": []}
        self.checker: Any = None

    # ------------------------------------------------------------------ wiring
    def core(self, side: str) -> NodeCore:
        return self.client if side == "client" else self.gateway

    def _link_of(self, path: Any) -> tuple[Link, str]:
        for link in self.links:
            if path is link.client_side:
                return link, "gateway"
            if path is link.gateway_side:
                return link, "client"
        raise KeyError(path)

    def apply(self, side: str, outputs: list[Output]) -> None:
        log = self.log[side]
        for out in outputs:
            if isinstance(out, Send):
                try:
                    link, dest = self._link_of(out.path)
                except KeyError:  # a stale path (old NAT mapping): the network drops it
                    continue
                if (
                    not link.up
                    or link.dead_to == dest
                    or (link.loss and self.random.random() < link.loss)
                ):
                    link.lost += 1
                    continue
                link.delivered += 1
                far = link.gateway_side if dest == "gateway" else link.client_side
                depart = self.now
                if link.rate:
                    depart = max(depart, link.busy_until.get(dest, 0.0)) + 1.0 / link.rate
                    link.busy_until[dest] = depart
                heapq.heappush(
                    self._queue, (depart + link.delay, next(self._seq), dest, far, out.data)
                )
            elif isinstance(out, WriteTun):
                log.tun.append(out.data)
                self.delivered[side].append(self.now)
                if self.echo and side == "gateway":
                    self.apply("gateway", self.gateway.seal(self.now, ECHO))
            elif isinstance(out, Emit):
                log.events.append(out)
                log.event_times.append(self.now)
            elif isinstance(out, ArmTimer):
                self._timers[side] = min(self._timers[side], out.at)
            elif isinstance(out, Claim):
                token = next(self.owner_tokens)
                assert isinstance(self.gateway, GatewayCore)
                self.apply("gateway", self.gateway.claimed(self.now, out.session_id, token, None))
            elif isinstance(out, Adopt):  # one gateway: nobody else owns anything
                assert isinstance(self.gateway, GatewayCore)
                self.apply(
                    "gateway",
                    self.gateway.adoption_checked(self.now, out.session_id, None, "no_record"),
                )
            elif isinstance(out, (Release, Renew)):
                pass
            elif isinstance(out, ConfirmPath):
                out.path.confirm()
            else:
                log.drops.append(out.reason)  # Drop

    def start(self) -> None:
        self.apply("client", self.client.start(self.now))

    def inject(self, side: str, path: Any, data: bytes) -> list[Output]:
        """Deliver raw bytes to a core now (an attacker, a fuzzer)."""
        out = self.core(side).receive(self.now, path, data)
        self.apply(side, out)
        return out

    def send_inner(self, side: str, packet: bytes) -> None:
        self.apply(side, self.core(side).seal(self.now, packet))  # type: ignore[attr-defined]

    # ------------------------------------------------------------------ time
    def call_at(self, at: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._calls, (at, next(self._seq), fn))

    def traffic(self, until: float, interval: float = 0.002) -> None:
        """The client sends one inner packet every ``interval`` until ``until``."""

        def send() -> None:
            self.send_inner("client", PROBE_PACKET)
            if self.now + interval < until:
                self.call_at(self.now + interval, send)

        self.call_at(self.now, send)

    def bulk(self, until: float, burst: int = 50, every: float = 0.05) -> None:
        """A bulk transfer's shape: ``burst`` packets at once every ``every`` seconds."""

        def send() -> None:
            for _ in range(burst):
                self.send_inner("client", PROBE_PACKET)
            if self.now + every < until:
                self.call_at(self.now + every, send)

        self.call_at(self.now, send)

    def rebind(self, i: int) -> SimPath:
        """NAT rebinding on link ``i``: the gateway sees the client from a new address."""
        link = self.links[i]
        old = link.gateway_side
        host, port = old.remote_address
        new = SimPath(f"{old.transport_id}'", old.local_address, (host, port + 1))
        link.gateway_side = new
        return new

    def run_until(self, t: float) -> None:
        while True:
            nxt = min(
                self._queue[0][0] if self._queue else float("inf"),
                self._timers["client"],
                self._timers["gateway"],
                self._calls[0][0] if self._calls else float("inf"),
            )
            if nxt > t:
                break
            self.now = max(self.now, nxt)
            if self.checker is not None:
                self.checker.step(self)
            if self._calls and self._calls[0][0] <= self.now:
                heapq.heappop(self._calls)[2]()
                continue
            if self._queue and self._queue[0][0] <= self.now:
                _at, _s, dest, path, data = heapq.heappop(self._queue)
                self.apply(dest, self.core(dest).receive(self.now, path, data))
                continue
            for side in ("client", "gateway"):
                if self._timers[side] <= self.now:
                    self._timers[side] = float("inf")
                    self.apply(side, self.core(side).tick(self.now))
        self.now = max(self.now, t)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    # ------------------------------------------------------------------ views
    def states(self) -> tuple[str | None, str | None]:
        c = self.client.session
        gs = list(self.gateway.sessions.values())
        return (
            c.fsm.state.value if c is not None else None,
            gs[-1].fsm.state.value if gs else None,
        )

    def events(self, side: str, event_type: str | None = None) -> list[Emit]:
        return [e for e in self.log[side].events if event_type in (None, e.event_type)]


def gaps(times: list[float], after: float) -> float:
    """Largest interval between consecutive deliveries from ``after`` on (seconds)."""
    ts = [t for t in times if t >= after - 1.0]
    return max((b - a for a, b in zip(ts, ts[1:], strict=False)), default=float("inf"))


def ipv4(src: str, dst: str, payload: bytes = b"x" * 64, proto: int = 17) -> bytes:
    """A minimal IPv4 packet (checksums not computed: the tunnel does not look at them)."""

    def a(s: str) -> bytes:
        return bytes(int(p) for p in s.split("."))

    total = 20 + 8 + len(payload)
    header = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 1, 0, 64, proto, 0, a(src), a(dst))
    return header + struct.pack("!HHHH", 1000, 2000, 8 + len(payload), 0) + payload


def capture(net: SimNet, side: str, packet: bytes) -> bytes:
    """Encrypt ``packet`` on ``side`` and return the datagram instead of delivering it."""
    out = net.core(side).seal(net.now, packet)  # type: ignore[attr-defined]
    sends = [o for o in out if isinstance(o, Send)]
    assert len(sends) == 1, out
    return sends[0].data


PROBE_PACKET = ipv4("10.99.0.2", "10.99.0.1", b"p" * 36)
ECHO = ipv4("10.99.0.1", "10.99.0.2", b"e" * 36)


class ClusterNet:
    """
    A client and ``gateways`` gateways of one cluster (docs/protocol.md) on the simulated
    network: the gateways share one static identity (the client's Noise responder key) and a
    :class:`~jumping.builtin.memory.MemoryStore`, each with its own node id and
    ``MemoryOwnership``; the client has one path per gateway (gateway ``gwN`` at
    10.210.0.1N). The ownership outputs are executed by the service's own
    :class:`~jumping.service.ownership.OwnershipDriver` (claims, renewals, takeovers,
    watches that fence the old owner).
    ``kill(name)`` stops a gateway dead; ``fence(name)`` makes it lose its ownership
    (its backend failing closed).
    """

    def __init__(
        self,
        seed: int = 0,
        policy: Policy | None = None,
        gateways: int = 2,
        client_ips: tuple[str, ...] = ("10.99.0.2/32",),
        **core_options: Any,
    ) -> None:
        from jumping.builtin.memory import MemoryOwnership, MemoryStore
        from jumping.service.ownership import OwnershipDriver

        self.seed = seed
        self.random = random.Random(seed)
        self.now = START
        self.policy = policy or Policy()
        rng = seeded_rng(seed)
        self.gateway_key = rng(32)
        self.client_key = rng(32)
        self.store = MemoryStore()
        self.gateways: dict[str, GatewayCore] = {}
        self.backends: dict[str, Any] = {}
        #: the service's ownership glue, one per gateway, as the node runs it
        self.owners: dict[str, OwnershipDriver] = {}
        self.alive: dict[str, bool] = {}
        self.links: list[Link] = []
        for i in range(gateways):
            name = f"gw{i + 1}"
            host = f"10.210.0.{11 + i}"
            self.gateways[name] = GatewayCore(
                peers=[Peer(public_key(self.client_key), client_ips)], node_id=name,
                private_key=self.gateway_key, policy=self.policy, rng=seeded_rng(seed + 10 + i),
                now=self.now, adopt_sessions=True, **core_options,
            )  # fmt: skip
            self.backends[name] = MemoryOwnership(name, store=self.store, clock=self)
            self.owners[name] = self._driver(name, OwnershipDriver)
            self.alive[name] = True
            c = SimPath(f"sim:c>{name}", ("10.210.0.100", 40000 + i), (host, 51820))
            g = SimPath(f"sim:{name}<c", (host, 51820), ("10.210.0.100", 40000 + i))
            self.links.append(Link(name, c, g))
        self.client = ClientCore(
            gateway_public_key=public_key(self.gateway_key),
            paths=[link.client_side for link in self.links],
            node_id="c1", private_key=self.client_key, policy=self.policy,
            rng=seeded_rng(seed + 2), now=self.now, **core_options,
        )  # fmt: skip
        self.log: dict[str, NodeLog] = {"client": NodeLog()}
        self.log.update({name: NodeLog() for name in self.gateways})
        self._queue: list[tuple[float, int, str, Any, bytes]] = []
        self._timers = {side: float("inf") for side in self.log}
        self._calls: list[tuple[float, int, Callable[[], None]]] = []
        self._seq = itertools.count()
        self.forwarded: list[tuple[float, str, str]] = []  # (time, gateway, session id hex)
        self.echo = False
        self.checks: list[Callable[[ClusterNet], None]] = []

    def _driver(self, name: str, cls: Any) -> Any:
        """The service's ownership glue for gateway ``name`` (a dead one hears nothing)."""

        def core() -> GatewayCore | None:
            return self.gateways[name] if self.alive[name] else None

        def run(outputs: Iterable[Output]) -> None:
            self.apply(name, outputs)

        return cls(self.backends[name], core, run, lambda: self.now)

    # the memory backend's clock (its watches call back through it)
    def callLater(self, delay: float, fn: Callable[..., Any], *args: Any) -> None:  # noqa: N802
        heapq.heappush(self._calls, (self.now + delay, next(self._seq), lambda: fn(*args)))

    def core(self, side: str) -> NodeCore:
        return self.client if side == "client" else self.gateways[side]

    def _route(self, path: Any) -> tuple[Link, str, SimPath] | None:
        for link in self.links:
            if path is link.client_side:
                return link, link.name, link.gateway_side
            if path is link.gateway_side:
                return link, "client", link.client_side
        return None

    def apply(self, side: str, outputs: Iterable[Output]) -> None:
        from jumping.core.outputs import Drop

        log = self.log[side]
        for out in outputs:
            if isinstance(out, Send):
                r = self._route(out.path)
                if r is None:
                    continue
                link, dest, far = r
                gw = link.name
                if not link.up or not self.alive[gw]:
                    link.lost += 1
                    continue
                link.delivered += 1
                heapq.heappush(
                    self._queue, (self.now + link.delay, next(self._seq), dest, far, out.data)
                )
            elif isinstance(out, WriteTun):
                log.tun.append(out.data)
                if side != "client":
                    for sid, s in self.gateways[side].sessions.items():
                        if s.owned:
                            self.forwarded.append((self.now, side, sid.hex()))
                    if self.echo:
                        self.apply(side, self.gateways[side].seal(self.now, ECHO))
            elif isinstance(out, Emit):
                log.events.append(out)
                log.event_times.append(self.now)
            elif isinstance(out, ArmTimer):
                self._timers[side] = min(self._timers[side], out.at)
            elif isinstance(out, (Claim, Renew, Adopt, Release)):
                if side in self.owners:  # (a client's Release names no token: nothing to do)
                    self.owners[side].execute(out)
            elif isinstance(out, ConfirmPath):
                out.path.confirm()
            elif isinstance(out, Drop):
                log.drops.append(out.reason)

    # ------------------------------------------------------------------ faults
    def link(self, name: str) -> Link:
        return next(link for link in self.links if link.name == name)

    def kill(self, name: str) -> None:
        """The gateway process dies: no packets, no timers; its record stays (as in etcd
        until the lease expires)."""
        self.alive[name] = False
        self._timers[name] = float("inf")

    def fence(self, name: str) -> None:
        """The gateway's backend fails closed (lost lease / quorum): every owned session is
        lost at once, the gateway stays reachable."""
        gw = self.gateways[name]
        for sid, s in list(gw.sessions.items()):
            if s.owned:
                self.apply(name, gw.ownership_lost(self.now, sid.hex()))

    def owner(self) -> tuple[str, int] | None:
        """(node id, token) of the client's session in the store."""
        s = self.client.session
        cur = self.store.records.get(s.sid_hex) if s is not None else None
        return (cur[2], cur[1]) if cur is not None else None

    # ------------------------------------------------------------------ time
    def start(self) -> None:
        self.apply("client", self.client.start(self.now))

    def send_inner(self, side: str, packet: bytes) -> None:
        self.apply(side, self.core(side).seal(self.now, packet))  # type: ignore[attr-defined]

    def call_at(self, at: float, fn: Callable[[], None]) -> None:
        heapq.heappush(self._calls, (at, next(self._seq), fn))

    def traffic(self, until: float, interval: float = 0.01) -> None:
        def send() -> None:
            self.send_inner("client", PROBE_PACKET)
            if self.now + interval < until:
                self.call_at(self.now + interval, send)

        self.call_at(self.now, send)

    def run_until(self, t: float) -> None:
        while True:
            nxt = min(
                self._queue[0][0] if self._queue else float("inf"),
                self._calls[0][0] if self._calls else float("inf"),
                *self._timers.values(),
            )
            if nxt > t:
                break
            self.now = max(self.now, nxt)
            for check in self.checks:
                check(self)
            if self._calls and self._calls[0][0] <= self.now:
                heapq.heappop(self._calls)[2]()
                continue
            if self._queue and self._queue[0][0] <= self.now:
                _at, _s, dest, path, data = heapq.heappop(self._queue)
                if dest == "client" or self.alive[dest]:
                    self.apply(dest, self.core(dest).receive(self.now, path, data))
                continue
            for side in list(self._timers):
                if self._timers[side] <= self.now:
                    self._timers[side] = float("inf")
                    if side == "client" or self.alive[side]:
                        self.apply(side, self.core(side).tick(self.now))
        self.now = max(self.now, t)

    def run_for(self, seconds: float) -> None:
        self.run_until(self.now + seconds)

    def events(self, side: str, event_type: str | None = None) -> list[Emit]:
        return [e for e in self.log[side].events if event_type in (None, e.event_type)]
