"""
Coverage-guided fuzzing of the wire (atheris): the parsers and a live gateway/client core
pair, checked for more than "no exception".

One input is one datagram plus a selector byte: which core receives it (gateway, client),
from which path (the session's own, the other link, a never-seen source), and what is done
to it first (nothing, or it is spliced onto a real packet's header). The pair is set up once
by a real handshake and kept running between inputs (its clock advances a little each time),
so data, control and handshake code paths stay reachable.

After every input the harness checks the properties the wire promises:

- nothing raises out of the core, and no drop is an ``INTERNAL_ERROR``;
- a datagram the core dropped (a counted ``Drop``) changed no session state: state and
  state_version, active path, keypairs, replay windows, routes, index, session table;
- every table unauthenticated input touches stays within its bound.

``check_one(data)`` is the whole property; ``main()`` runs it under atheris (see
``tests/fuzz/run.sh``), and the CI test runs the committed corpus plus a short bounded run.
"""

from __future__ import annotations

import sys
from typing import Any

from jumping.builtin.tcp import FrameDecoder
from jumping.core import handshake, wire
from jumping.core.outputs import Drop
from jumping.testing.sim import SimNet, SimPath, ipv4

UP = ipv4("10.99.0.2", "10.99.0.1", b"fuzz up")
DOWN = ipv4("10.99.0.1", "10.99.0.2", b"fuzz down")


class Pair:
    """A gateway and a client with an established session, and real packets of each kind."""

    def __init__(self, seed: int = 10) -> None:
        self.net = net = SimNet(seed=seed, links=2)
        net.start()
        net.run_for(3.0)
        assert net.states() == ("ATTACHED", "ATTACHED"), net.states()
        self.stranger = SimPath("fuzz:stranger", ("10.201.1.2", 51820), ("203.0.113.9", 4444))
        self.stranger.provisional = True
        self.seeds = self._seeds()

    def _seeds(self) -> list[bytes]:
        """Real datagrams of every type, sealed but never delivered (fresh counters)."""
        net = self.net
        c, g = net.client, net.gateway
        s = c.session
        gs = next(iter(g.sessions.values()))
        assert s is not None and s.current is not None and gs.current is not None
        ck, gk = s.current, gs.current
        seeds = [ck.seal(ck.data_prefix, UP), gk.seal(gk.data_prefix, DOWN)]
        for kind in wire.Control:
            body = bytes(32) if kind != wire.Control.TERMINATE else b"OPERATOR_TERMINATED"
            seeds.append(ck.seal(ck.control_prefix, bytes((kind,)) + body))
            seeds.append(gk.seal(gk.control_prefix, bytes((kind,)) + body))
        init = handshake.Initiation(c.me, c.gateway.public_key, net.client.rng, net.now, 99)
        seeds.append(init.message)
        seeds.append(bytes(wire.RESP_LEN))
        seeds.append(wire.pack_cookie_reply(99, bytes(24), bytes(32)))
        return [x for x in seeds if x is not None]


def _session_state(core: Any) -> tuple[Any, ...]:
    out = []
    for sid, s in sorted(core.sessions.items()):
        kps = tuple(
            (
                k.local_index,
                k.remote_index,
                k.recv_aead is not None,
                k.replay.top,
                tuple(k.replay.blocks),
            )
            for k in s.keypairs()
        )
        out.append((sid, s.fsm.state, s.fsm.state_version, id(s.path), kps, s.owned,
                    getattr(s, "challenge", None) is not None))  # fmt: skip
    routes = tuple(sorted((k, id(v)) for k, v in getattr(core, "routes", {}).items()))
    return tuple(out), tuple(sorted(core.index)), routes


class Violation(AssertionError):
    """A wire property did not hold (not a crash of the harness)."""


PAIR: Pair | None = None


def pair() -> Pair:
    global PAIR
    if PAIR is None:
        PAIR = Pair()
    return PAIR


def check_one(data: bytes) -> None:
    p = pair()
    net = p.net
    if len(data) < 2:
        return
    sel, payload = data[0], data[1:]
    core = net.gateway if sel & 1 else net.client
    link = net.links[(sel >> 1) & 1]
    path = link.gateway_side if core is net.gateway else link.client_side
    if sel & 4:
        path = p.stranger
    if sel & 8:  # splice onto a real packet: valid header, index, type; fuzzed tail
        seed = p.seeds[(sel >> 4) % len(p.seeds)]
        payload = seed[: min(len(seed), 16)] + payload
    net.now += 0.0005
    before = _session_state(core)
    out = core.receive(net.now, path, bytes(payload))
    drops = [o.reason for o in out if isinstance(o, Drop)]
    if any(r.startswith("INTERNAL_ERROR") for r in drops) or core.counters["internal_error"]:
        raise Violation(f"internal error on {payload[:40].hex()}: {drops}")
    if any(r in BEFORE_AUTHENTICATION for r in drops) and _session_state(core) != before:
        raise Violation(f"an unauthenticated datagram ({drops}) changed session state")
    if core is net.gateway:
        g = net.gateway
        if len(g.source_limiter) > g.policy.handshake_source_table_size:
            raise Violation("source limiter over its bound")
        if len(g.sessions) > g.max_sessions:
            raise Violation("session table over its bound")
    # the real peers keep talking, so the session stays established between inputs
    if net.now - _last_run[0] > 0.5:
        _last_run[0] = net.now
        net.run_for(0.01)
    if net.client.session is None or not net.gateway.sessions:
        # an authenticated TERMINATE (a fresh seed) ended it legitimately: start over
        global PAIR
        PAIR = None


#: drop reasons decided before a datagram authenticated: such a datagram changed nothing
BEFORE_AUTHENTICATION = frozenset(
    {
        "MALFORMED_HEADER", "SHORT_PACKET", "UNKNOWN_INDEX", "KEY_EXPIRED", "REPLAY",
        "KEY_WIPED", "AUTH_FAILED", "BAD_LENGTH", "BAD_MAC1", "COOKIE_REQUIRED",
        "COOKIE_REPLY_LIMITED", "HANDSHAKE_RATE_LIMITED", "HANDSHAKE_AUTH_FAILED", "UNKNOWN_PEER", "HANDSHAKE_REPLAY",
        "UNEXPECTED_HANDSHAKE", "BAD_COOKIE_REPLY",
    }
)  # fmt: skip
_last_run = [0.0]


def check_parsers(data: bytes) -> None:
    """The stateless parsers: typed errors only."""
    wire.message_type(data)
    try:
        FrameDecoder(max_frame=2048).feed(data)
    except ValueError:
        pass
    me = pair().net.gateway.me
    try:
        handshake.Response(me, data, pair().net.gateway.rng)
    except handshake.HandshakeError:
        pass
    try:
        handshake.read_cookie_reply(data, me.public, bytes(16))
    except handshake.HandshakeError:
        pass


def one_input(data: bytes) -> None:
    if data[:1] == b"P":
        check_parsers(data[1:])
    else:
        check_one(data)


def main(argv: list[str]) -> None:
    import atheris

    # the jumping modules are imported already (above): instrument what is loaded
    atheris.instrument_all()
    pair()
    atheris.Setup(argv, one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
