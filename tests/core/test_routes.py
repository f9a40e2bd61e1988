"""The gateway's routing table (jumping/core/routes.py): host routes and a prefix table
instead of a walk over every route on each termination and over every peer for a
destination without a host route. The same answers as the walk it replaced, checked by
running both side by side on random peers, sessions, terminations and reloads."""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from jumping.core.fsm import Reason
from jumping.core.gateway import GatewayCore
from jumping.core.node import Peer, destination
from jumping.core.policy import Policy
from jumping.core.routes import PrefixTable
from jumping.core.session import Session
from jumping.testing.sim import seeded_rng

#: prefixes that nest and overlap (v4 and v6), and host routes inside them
NETWORKS = (
    "10.0.0.0/16", "10.0.1.0/24", "10.0.1.0/28", "10.0.1.5/32", "10.0.1.9/32",
    "10.0.2.0/24", "10.0.2.7/32", "10.1.0.0/16", "10.1.0.1/32", "0.0.0.0/0",
    "fd00::/64", "fd00::5/128", "fd00:0:0:1::/64",
)  # fmt: skip
PROBES = (
    "10.0.1.5", "10.0.1.9", "10.0.1.3", "10.0.1.200", "10.0.2.7", "10.0.2.8", "10.0.9.9",
    "10.1.0.1", "10.1.3.4", "192.0.2.1", "fd00::5", "fd00::9", "fd00:0:0:1::1", "fd01::1",
)  # fmt: skip


def packet_to(address: str) -> bytes:
    a = ipaddress.ip_address(address)
    if a.version == 4:
        return bytes([0x45]) + bytes(15) + a.packed
    return bytes([0x60]) + bytes(23) + a.packed + bytes(0)


class WalkingGateway(GatewayCore):
    """The routing as it was: a walk over every route on each termination, over every peer
    for a destination without a host route (first configured peer that contains it)."""

    def _forget_routes(self, s: Session) -> None:
        for key, owner in list(self.routes.items()):
            if owner is s:
                del self.routes[key]
        if s in s.peer.sessions:
            s.peer.sessions.remove(s)

    def _route(self, packet: bytes) -> Session | None:
        dst = destination(packet)
        if dst is None:
            return None
        s = self.routes.get(dst)
        if s is not None:
            return s
        addr = ipaddress.ip_address(dst)
        for peer in self.peers.values():
            if peer.sessions and any(addr in n for n in peer.networks):
                return peer.sessions[-1]
        return None

    def set_peers(self, now: float, peers: Sequence[Peer]) -> list[Any]:
        wanted = {p.public_key: p for p in peers}
        for key in [k for k in self.peers if k not in wanted]:
            gone = self.peers.pop(key)
            for s in [x for x in self.sessions.values() if x.peer is gone]:
                self._transition(now, s, Reason.POLICY_DENIED, detail="peer_removed")
        for key, new in wanted.items():
            old = self.peers.get(key)
            if old is None:
                self.peers[key] = new
                continue
            if old.networks != new.networks:
                old.networks, old.exact = new.networks, new.exact
                live = [x for x in self.sessions.values() if x.peer is old]
                for key_, owner in list(self.routes.items()):
                    if owner in live:
                        del self.routes[key_]
                for x in old.sessions:
                    self._set_routes(x)
        return self.take()


def key(i: int) -> bytes:
    return bytes([i + 1]) * 32


def gateway(cls: type[GatewayCore], spec: dict[int, tuple[str, ...]]) -> GatewayCore:
    rng = seeded_rng(7)
    return cls(
        peers=[Peer(key(i), nets) for i, nets in spec.items()], node_id="g",
        private_key=rng(32), policy=Policy(), rng=rng, now=0.0, max_sessions=64,
    )  # fmt: skip


def longest_match(g: GatewayCore, address: str) -> Session | None:
    """What the prefix table is to answer: the host route, else the peer (with a session)
    whose allowed IP contains the address with the longest prefix, the first configured
    on a tie; its newest session."""
    a = ipaddress.ip_address(address)
    s = g.routes.get(a.packed)
    if s is not None:
        return s
    best: tuple[int, int, Peer] | None = None
    for rank, peer in enumerate(g.peers.values()):
        if not peer.sessions:
            continue
        for n in peer.networks:
            if a in n and (best is None or (n.prefixlen, -rank) > best[:2]):
                best = (n.prefixlen, -rank, peer)
    return best[2].sessions[-1] if best is not None else None


def sid(s: Session | None) -> bytes | None:
    return s.session_id if s is not None else None


peer_networks = st.lists(st.sampled_from(NETWORKS), min_size=1, max_size=3, unique=True)
ops = st.lists(
    st.one_of(
        st.tuples(st.just("open"), st.integers(0, 5), st.booleans()),
        st.tuples(st.just("end"), st.integers(0, 100)),
        st.tuples(st.just("reload"), st.integers(0, 5), peer_networks, st.booleans()),
    ),
    max_size=25,
)


@settings(max_examples=150)
@given(st.dictionaries(st.integers(0, 5), peer_networks, min_size=1), ops)
def test_routing_is_the_walk_it_replaced(spec: dict[int, list[str]], steps: list[Any]) -> None:
    spec_t = {i: tuple(n) for i, n in spec.items()}
    new, old = gateway(GatewayCore, spec_t), gateway(WalkingGateway, spec_t)
    count = 0
    for step in steps:
        for g in (new, old):
            if step[0] == "open":
                peer = g.peers.get(key(step[1]))
                if peer is None:
                    continue
                s = g._new_session(1.0, peer, count.to_bytes(16, "big"))
                if s is not None and step[2]:
                    g._set_routes(s)  # confirmed: what _confirm does for its routes
            elif step[0] == "end":
                live = list(g.sessions.values())
                if live:
                    victim = live[step[1] % len(live)]
                    g._transition(1.0, victim, Reason.OPERATOR_TERMINATED)
            else:
                _op, i, nets, keep_others = step
                peers = {k: Peer(k, [str(n) for n in p.networks]) for k, p in g.peers.items()}
                if not keep_others:
                    peers = {}
                peers[key(i)] = Peer(key(i), nets)
                g.set_peers(1.0, list(peers.values()))
            g.take()
        count += 1
        assert {k: s.session_id for k, s in new.routes.items()} == {
            k: s.session_id for k, s in old.routes.items()
        }
        assert set(new.sessions) == set(old.sessions)
        for address in PROBES:
            got = sid(new._route(packet_to(address)))
            assert got == sid(longest_match(new, address)), address
            walked = sid(old._route(packet_to(address)))
            if sid(longest_match(old, address)) == walked:
                # the walk took the first configured peer that contains the address; where
                # that is also the longest match (no shorter prefix configured before a
                # longer one), both answer the same
                assert got == walked, address
        assert len(new.prefixes) <= sum(len(p.networks) for p in new.peers.values() if p.sessions)


def test_the_longest_prefix_wins_whatever_the_configuration_order() -> None:
    g = gateway(GatewayCore, {0: ("10.0.0.0/16",), 1: ("10.0.1.0/24",), 2: ("10.0.1.0/24",)})
    wide, narrow, same = (g._new_session(1.0, g.peers[key(i)], bytes([i]) * 16) for i in range(3))
    assert g._route(packet_to("10.0.1.1")) is narrow  # not the /16 configured first
    assert g._route(packet_to("10.0.2.1")) is wide
    g._transition(1.0, narrow, Reason.OPERATOR_TERMINATED)  # type: ignore[arg-type]
    assert g._route(packet_to("10.0.1.1")) is same
    g._transition(1.0, same, Reason.OPERATOR_TERMINATED)  # type: ignore[arg-type]
    assert g._route(packet_to("10.0.1.1")) is wide
    assert g._route(packet_to("fd00::1")) is None


def test_a_termination_touches_only_its_own_routes() -> None:
    """Ending a session removes its host routes and, with its peer's last session, its
    prefixes; nothing else is looked at (no walk over the table)."""
    spec = {i: (f"10.2.{i >> 8}.{i & 255}/32",) for i in range(50)}
    g = gateway(GatewayCore, spec)
    sessions = [g._new_session(1.0, g.peers[key(i)], bytes([i]) * 16) for i in range(50)]
    for s in sessions:
        g._set_routes(s)  # type: ignore[arg-type]
    before = dict(g.routes)

    class Watched(dict):  # type: ignore[type-arg]
        def items(self) -> Any:
            raise AssertionError("the termination walked the route table")

    g.routes = Watched(before)
    hosts = dict(g.hosts._hosts)
    g._transition(1.0, sessions[7], Reason.OPERATOR_TERMINATED)  # type: ignore[arg-type]
    assert set(before) - set(g.routes) == {bytes([10, 2, 0, 7])}
    # host allowed IPs are configuration: no session puts them in a table or takes them out
    assert g.hosts._hosts == hosts and len(hosts) == 50
    assert len(g.prefixes) == 0
    assert g._route(packet_to("10.2.0.7")) is None
    assert g._route(packet_to("10.2.0.8")) is sessions[8]


def test_a_host_listed_by_two_peers_goes_to_the_first_configured_with_a_session() -> None:
    """Configured hosts (a /32 two peers list, and a /24 around it): before either session
    confirms, the peer configured first; without it, the other; without both, the /24."""
    g = gateway(GatewayCore, {0: ("10.0.1.5/32",), 1: ("10.0.1.5/32",), 2: ("10.0.1.0/24",)})
    wide = g._new_session(1.0, g.peers[key(2)], bytes([2]) * 16)
    second = g._new_session(1.0, g.peers[key(1)], bytes([1]) * 16)
    assert g._route(packet_to("10.0.1.5")) is second
    first = g._new_session(1.0, g.peers[key(0)], bytes([0]) * 16)
    assert g._route(packet_to("10.0.1.5")) is first  # configured first, though newer
    g._transition(1.0, first, Reason.OPERATOR_TERMINATED)  # type: ignore[arg-type]
    assert g._route(packet_to("10.0.1.5")) is second
    g._transition(1.0, second, Reason.OPERATOR_TERMINATED)  # type: ignore[arg-type]
    assert g._route(packet_to("10.0.1.5")) is wide
    # a reload that drops the /32 from the first peer and gives it to no one else
    g.set_peers(2.0, [Peer(key(0), ["10.9.0.1/32"]), Peer(key(1), ["10.9.0.2/32"]),
                      Peer(key(2), ["10.0.1.0/24"])])  # fmt: skip
    assert len(g.hosts) == 2
    assert g._route(packet_to("10.0.1.5")) is wide
    assert g._route(packet_to("10.9.0.1")) is None


def test_prefix_table_alone() -> None:
    order = {"a": 0, "b": 1}
    t = PrefixTable(order.__getitem__)
    nets = tuple(ipaddress.ip_network(n) for n in ("10.0.0.0/8", "10.5.0.0/16"))
    t.add("b", nets[:1])
    t.add("a", nets)
    assert t.lookup(bytes([10, 5, 1, 1])) == "a"
    assert t.lookup(bytes([10, 6, 1, 1])) == "a"  # same /8: the one configured first
    t.remove("a", nets)
    assert t.lookup(bytes([10, 5, 1, 1])) == "b"
    t.remove("b", nets[:1])
    assert t.lookup(bytes([10, 5, 1, 1])) is None and len(t) == 0
    assert t.lookup(bytes(16)) is None


_NETS = tuple(
    ipaddress.ip_network(n)
    for n in ("10.0.0.0/8", "10.5.0.0/16", "10.5.1.0/24", "10.5.1.1/32", "10.5.1.2/32",
              "10.6.0.0/16", "fd00::/8", "fd00::1/128")
)  # fmt: skip
_ADDRS = (bytes([10, 5, 1, 1]), bytes([10, 5, 1, 2]), bytes([10, 5, 1, 3]), bytes([10, 5, 2, 1]),
          bytes([10, 6, 0, 1]), bytes([10, 7, 0, 1]), bytes([11, 0, 0, 1]),
          ipaddress.ip_address("fd00::1").packed, ipaddress.ip_address("fd00::2").packed)  # fmt: skip


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.tuples(st.booleans(), st.sampled_from("abcd"), st.sets(st.sampled_from(range(8)))),
        max_size=40,
    )
)
def test_prefix_table_matches_a_naive_longest_prefix_match(ops: list[Any]) -> None:
    """Adds and removes in any order (one peer or several per prefix, a peer alone again
    after the others left) answer like a scan of every peer's networks: the longest prefix,
    then the peer configured first."""
    order = {"a": 0, "b": 1, "c": 2, "d": 3}
    t = PrefixTable(order.__getitem__)
    model: dict[str, set[int]] = {}
    for add, peer, idx in ops:
        nets = tuple(_NETS[i] for i in sorted(idx))
        if add:
            t.add(peer, nets)
            model.setdefault(peer, set()).update(idx)
        else:
            t.remove(peer, nets)
            model[peer] = model.get(peer, set()) - idx
        for a in _ADDRS:
            ip = ipaddress.ip_address(a)
            best = None
            for p, held in model.items():
                for i in held:
                    n = _NETS[i]
                    if n.version == ip.version and ip in n:
                        k = (n.prefixlen, -order[p])
                        if best is None or k > best[0]:
                            best = (k, p)
            assert t.lookup(a) == (best[1] if best else None), (a, model)
        assert len(t) == len({i for held in model.values() for i in held})
