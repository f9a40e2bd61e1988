"""The initiation gate (jumping/service/_fastio.c ``Gate``, jumping/service/gate.py) against
the core it stands in for: the same initiations, sent over a real UDP socket on loopback to
the gate and handed to a twin GatewayCore (same keys, same cookie secret), are refused for
the same reasons, counted the same, reported with the same source prefixes and answered
with cookie replies that open to the same cookie. What the gate cannot decide (a valid
mac2, another message type) is handed on untouched."""

from __future__ import annotations

import dataclasses
import os
import socket
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jumping.builtin import udp
from jumping.core import wire
from jumping.core.handshake import read_cookie_reply
from jumping.core.limits import ViolationLedger
from jumping.core.node import SECURITY_VIOLATIONS, address_bytes
from jumping.core.noise import public_key
from jumping.core.outputs import Send
from jumping.service import gate as gate_mod
from tests.core.test_hardening import _gateway, _init

pytestmark = pytest.mark.skipif(
    gate_mod._CGate is None or udp.c_recv_burst is None, reason="built without the C loop"
)

NOW = 500.0
LIVE = 0x0A0B0C0D
REASONS = ("BAD_MAC1", "COOKIE_REQUIRED", "COOKIE_REPLY_LIMITED")


class Path:
    """The core's view of the sender's socket (what a UDPPath gives it)."""

    kind = "udp"

    def __init__(self, addr: Any) -> None:
        self.remote_address = (addr[0], addr[1])
        self.transport_id = f"udp:test>{addr[0]}:{addr[1]}"


def _messages(gw: Any, gw_key: bytes, client_key: bytes, src: Path) -> dict[str, list[bytes]]:
    """Initiations of every kind the gate meets, and two it must hand on."""
    plain = [_init(client_key, gw_key, NOW + i / 1000).message for i in range(6)]
    bad_mac1 = [m[:140] + bytes([m[140] ^ 1]) + m[141:] for m in plain[:3]]
    wrong_mac2 = [m[:152] + os.urandom(16) for m in plain[3:5]]
    cookie = gw.cookies.cookie(NOW, address_bytes(src))
    proven = [_init(client_key, gw_key, NOW + 0.5, cookie=cookie).message]
    other = [
        wire.TRANSPORT_HEADER.pack(wire.MessageType.DATA, wire.VERSION, 0, LIVE, 1) + bytes(48),
        wire.HEADER.pack(wire.MessageType.HANDSHAKE_INIT, wire.VERSION, 0) + bytes(100),
    ]
    return {"refused": plain + bad_mac1 + wrong_mac2, "handed_on": proven + other}


def _twins(**policy: object) -> tuple[Any, Any, bytes, bytes]:
    gate_gw, gw_key, client_key = _gateway(**policy)
    core_gw, _k, _c = _gateway(**policy)
    for gw in (gate_gw, core_gw):
        gw.cookie_mode = "always"
        gw.index[LIVE] = object()  # a live keypair's receiver index (only looked up)
    return gate_gw, core_gw, gw_key, client_key


@pytest.mark.parametrize(
    "policy",
    [{}, {"cookie_replies_burst": 4}, {"cookie_replies_per_source_burst": 3}],
    ids=["budgets", "node_budget", "source_budget"],
)
def test_the_gate_refuses_counts_and_answers_as_the_core_does(udp_pair, policy) -> None:
    a, b = udp_pair
    a.settimeout(2.0)  # the replies are read from the sender's socket
    gate_gw, core_gw, gw_key, client_key = _twins(**policy)
    src = Path(a.getsockname())
    # the gate's twin draws its cookie secret first (for the valid mac2), the core's at
    # its first refusal: the same draw of the same seeded generator, at the same time
    msgs = _messages(gate_gw, gw_key, client_key, src)
    # the core, one datagram at a time
    core_replies = []
    for m in msgs["refused"]:
        for out in core_gw.receive(NOW, src, m):
            if isinstance(out, Send):
                core_replies.append(out.data)
    # the gate, from a real socket
    g = bound_gate(gate_gw)
    state = gate_gw.gate_state(NOW)
    assert state is not None
    g.arm_cookies(NOW, *state)
    for m in msgs["refused"] + msgs["handed_on"]:
        a.sendto(m, b.getsockname())
    got = udp.c_recv_burst(b.fileno(), 65535, 1 << 20, 64, False, g)
    assert [d for d, _addr, _seg in got] == msgs["handed_on"]
    assert g.last_count == len(msgs["refused"]) and g.last_bytes == g.last_count * wire.INIT_LEN
    assert g.pending == len(msgs["refused"])
    gate_gw.gated(NOW, *g.drain())
    assert g.pending == 0 and g.drain() == (0, 0, [], [])

    for reason in REASONS:
        assert gate_gw.drops[reason] == core_gw.drops[reason], reason
    assert core_gw.drops["BAD_MAC1"] == 3 and core_gw.drops["COOKIE_REQUIRED"] > 0
    assert gate_gw.counters["cookie_replies"] == core_gw.counters["cookie_replies"]
    assert gate_gw.counters["gated_initiations"] == len(msgs["refused"])
    for meter in ("handshake_work", "wasted_work"):
        mine, theirs = getattr(gate_gw, meter), getattr(core_gw, meter)
        assert mine.load(NOW) == pytest.approx(theirs.load(NOW)) and mine.load(NOW) > 0
    assert gate_gw.cookie_bucket.tokens == pytest.approx(core_gw.cookie_bucket.tokens)
    assert gate_gw.security.flush(8) == core_gw.security.flush(8)

    gate_replies = []
    while True:
        try:
            gate_replies.append(a.recv(2048))
        except TimeoutError:
            break
        if len(gate_replies) == len(core_replies):
            a.settimeout(0.2)  # one more would be one too many
    assert len(gate_replies) == len(core_replies) == core_gw.counters["cookie_replies"]
    # each opens, with the initiation's mac1, to the cookie of the sender's address
    expected = core_gw.cookies.cookie(NOW, address_bytes(src))
    refused_with_reply = [m for m in msgs["refused"] if m not in msgs["refused"][6:9]]
    for mine, theirs, m in zip(gate_replies, core_replies, refused_with_reply, strict=False):
        gw_pub = public_key(gw_key)
        assert read_cookie_reply(mine, gw_pub, m[136:152]) == expected
        assert read_cookie_reply(theirs, gw_pub, m[136:152]) == expected
        assert mine[4:8] == m[4:8]  # to the initiator's sender index
        assert int.from_bytes(mine[24:32], "little") > 2**63  # the gate's nonce space
        assert mine[8:24] == theirs[8:24]  # under the same prefix (the same subkey)


def bound_gate(gw: Any) -> Any:
    g = gate_mod._CGate(1024, gw.security.tracked, 12345)
    g.bind(gw.me.mac1_key, gw.index, gw._key_lifetime)
    return g


def test_without_cookies_the_gate_refuses_only_what_needs_no_keys(udp_pair) -> None:
    """Cookies not required: an initiation with a valid mac1 and a DATA message of a live
    keypair are handed on; a wrong mac1 and an unknown receiver index are refused, counted
    and reported as the core does. An unbound gate, or none, hands everything on."""
    a, b = udp_pair
    gate_gw, core_gw, gw_key, client_key = _twins()
    for gw in (gate_gw, core_gw):
        gw.cookie_mode = "load"
    src = Path(a.getsockname())
    good = _init(client_key, gw_key, NOW).message
    bad = good[:140] + bytes([good[140] ^ 1]) + good[141:]
    data_hdr = wire.TRANSPORT_HEADER
    live = data_hdr.pack(wire.MessageType.DATA, wire.VERSION, 0, LIVE, 9) + bytes(40)
    unknown = [
        data_hdr.pack(wire.MessageType.DATA, wire.VERSION, 0, 77 + i, 9) + bytes(40)
        for i in range(3)
    ]
    short = wire.HEADER.pack(wire.MessageType.DATA, wire.VERSION, 0) + bytes(8)
    handed_on = [good, live, short]
    for gate in (None, gate_mod._CGate(16, 8, 1)):  # none, and one never bound
        for m in handed_on + [bad, *unknown]:
            a.sendto(m, b.getsockname())
        got = udp.c_recv_burst(b.fileno(), 65535, 1 << 20, 64, False, gate)
        assert [d for d, _a, _s in got] == handed_on + [bad, *unknown]
    g = bound_gate(gate_gw)
    assert g.armed == 0 and gate_gw.gate_state(NOW) is None  # no cookie part to arm
    for m in handed_on + [bad, *unknown]:
        a.sendto(m, b.getsockname())
    got = udp.c_recv_burst(b.fileno(), 65535, 1 << 20, 64, False, g)
    assert [d for d, _a, _s in got] == handed_on
    gate_gw.gated(NOW, *g.drain())
    for m in [bad, *unknown]:
        core_gw.receive(NOW, src, m)
    for reason in ("BAD_MAC1", "UNKNOWN_INDEX"):
        assert gate_gw.drops[reason] == core_gw.drops[reason] > 0, reason
    assert gate_gw.wasted_work.load(NOW) == core_gw.wasted_work.load(NOW) == 0
    assert gate_gw.security.flush(8) == core_gw.security.flush(8)


def test_the_gate_rejects_bad_arguments() -> None:
    with pytest.raises(ValueError, match="power of two"):
        gate_mod._CGate(1000, 8, 1)
    with pytest.raises(ValueError, match="tracked"):
        gate_mod._CGate(16, 0, 1)
    g = gate_mod._CGate(16, 8, 1)
    with pytest.raises(RuntimeError, match="bind"):
        g.arm_cookies(0.0, b"s" * 32, b"k" * 32, b"p" * 16, 1, 5.0, 5.0)
    with pytest.raises(TypeError):
        g.bind(b"k" * 32, [], 60.0)  # the index is a dict
    g.bind(b"k" * 32, {}, 60.0)
    with pytest.raises(ValueError, match="subkey"):
        g.arm_cookies(0.0, b"s" * 32, b"short", b"p" * 16, 1, 5.0, 5.0)
    assert g.armed == 0
    with pytest.raises(TypeError, match="Gate or None"):
        udp.c_recv_burst(0, 10, 10, 1, False, object())


class _Plane:
    def __init__(self, core: Any) -> None:
        self.core = core
        self._now = lambda: NOW


def test_the_keeper_arms_cookies_only_while_they_are_required() -> None:
    gw, gw_key, client_key = _gateway()
    keeper = gate_mod.InitiationGate(_Plane(gw))
    g = keeper.arm()
    assert g is not None and g.armed == 0 and keeper.passes == 0  # load mode, no load
    gw.cookie_mode = "always"
    assert keeper.arm() is g and g.armed == 1 and keeper.passes == 1
    keeper.done(g)  # nothing refused: nothing to fold
    gw.cookie_mode = "never"
    assert keeper.arm() is g and g.armed == 0
    gw.set_policy(NOW, dataclasses.replace(gw.policy, cookie_source_table_size=4096))
    assert keeper.arm() is not g  # a new table for the new policy
    keeper.dataplane.core = None  # not serving yet: nothing to arm
    assert keeper.arm() is None and keeper.errors == 0


# the ledger's merge: a Misra-Gries summary made elsewhere adds to its own -----------------
@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.integers(0, 30), max_size=300),
    st.lists(st.integers(0, 30), max_size=300),
    st.integers(1, 8),
)
def test_merged_summaries_count_exactly_and_never_overstate_a_source(
    here: list[int], there: list[int], tracked: int
) -> None:
    ledger = ViolationLedger(SECURITY_VIOLATIONS, tracked=tracked)
    other = ViolationLedger(SECURITY_VIOLATIONS, tracked=tracked)
    for i in here:
        ledger.record("BAD_MAC1", f"10.0.0.{i}/32")
    for i in there:
        other.record("BAD_MAC1", f"10.0.0.{i}/32")
    summary = other._sources.get(("HANDSHAKE_FLOOD", None), {})
    ledger.merge("BAD_MAC1", len(there), list(summary.items()))
    entries = ledger.flush(tracked)
    if not here and not there:
        assert entries == []
        return
    [(_v, _sid, count, named, rest)] = entries
    assert count == len(here) + len(there) and rest >= 0
    assert len(named) <= tracked
    truth = here + there
    for e in named:
        assert 0 < e["count"] <= truth.count(int(e["address"].split(".")[3].split("/")[0]))


def _attached_net() -> Any:
    from jumping.testing.sim import SimNet

    net = SimNet(seed=3)
    net.start()
    net.run_for(3.0)
    return net


def test_replays_of_a_live_keypair_are_refused_for_its_session(udp_pair) -> None:
    """Two identical simulated tunnels: DATA messages the gateway has accepted once, sent
    again through the gate over a real socket and, to the twin, straight to the core; a
    fresh counter is handed on (the core authenticates it). Drops, the REPLAY_DETECTED
    entry naming the session and its source, and the session's window agree."""
    from jumping.testing.sim import ipv4

    a, b = udp_pair
    nets = [_attached_net(), _attached_net()]
    src = Path(a.getsockname())
    captured = []
    for net in nets:
        kp = net.client.session.current
        up = ipv4("10.99.0.2", "10.99.0.1", b"x" * 64)
        msgs = [kp.seal(kp.data_prefix, up) for _ in range(5)]
        for m in msgs[:4]:  # accepted once: from now on replays
            net.gateway.receive(net.now, net.links[0].gateway_side, m)
        captured.append(msgs)
    assert captured[0] == captured[1]  # the same seeded tunnels
    gate_net, core_net = nets
    gw = gate_net.gateway
    g = bound_gate(gw)
    g.now = gate_net.now
    sent = captured[0][:4] * 2 + [captured[0][4]]
    for m in sent:
        a.sendto(m, b.getsockname())
    got = udp.c_recv_burst(b.fileno(), 65535, 1 << 20, 64, False, g)
    assert [d for d, _a, _s in got] == [captured[0][4]]  # the fresh one
    assert g.pending == 8
    gw.gated(gate_net.now, *g.drain())
    for m in sent[:8]:
        core_net.gateway.receive(core_net.now, src, m)
    assert gw.drops["REPLAY"] == core_net.gateway.drops["REPLAY"] == 8
    assert gw.counters["gated_replays"] == 8
    mine, theirs = gw.security.flush(8), core_net.gateway.security.flush(8)
    assert mine == theirs and mine[0][0] == "REPLAY_DETECTED" and mine[0][1] is not None
    # an expired keypair is the core's (KEY_EXPIRED): handed on
    g.now = gate_net.now + gw._key_lifetime
    a.sendto(sent[0], b.getsockname())
    got = udp.c_recv_burst(b.fileno(), 65535, 1 << 20, 64, False, g)
    assert [d for d, _a, _s in got] == [sent[0]] and g.pending == 0


#: headers the core reads as MALFORMED_HEADER (wire.message_type is None), and near misses
#: it does not: a DATA_SEGMENT's chunk field, a well-formed header too short for its type
MALFORMED = [
    b"", b"\x04", b"\x04\x01", b"\x04\x01\x00",  # shorter than the header
    b"\x04\x02\x00\x00" + bytes(40),  # another version
    b"\x00\x01\x00\x00" + bytes(40), b"\x07\x01\x00\x00" + bytes(40),  # unknown types
    b"\xff\x01\x00\x00" + bytes(200),
    b"\x04\x01\x01\x00" + bytes(40), b"\x01\x01\x00\x01" + bytes(164),  # reserved set
]  # fmt: skip
NEAR_MISSES = [
    b"\x06\x01\x03\x00" + bytes(40),  # DATA_SEGMENT, chunk 3
    b"\x05\x01\x00\x00",  # CONTROL: the header alone (SHORT_PACKET, the core's)
    b"\x02\x01\x00\x00" + bytes(20),  # a response of the wrong length (BAD_LENGTH)
]


def test_malformed_headers_are_refused_as_the_core_refuses_them(udp_pair) -> None:
    """Whatever its length, a datagram whose header is not version 1's is refused in the
    loop as MALFORMED_HEADER, counted and reported from its source as the core does; a
    well-formed header is handed on, whatever follows it."""
    a, b = udp_pair
    gate_gw, core_gw, _gw_key, _client_key = _twins()
    src = Path(a.getsockname())
    g = bound_gate(gate_gw)
    g.now = NOW
    for m in MALFORMED + NEAR_MISSES:
        a.sendto(m, b.getsockname())
    got = udp.c_recv_burst(b.fileno(), 65535, 1 << 20, 64, False, g)
    assert [d for d, _a, _s in got] == NEAR_MISSES
    assert g.last_count == len(MALFORMED) and g.pending == len(MALFORMED)
    gate_gw.gated(NOW, *g.drain())
    for m in MALFORMED:
        core_gw.receive(NOW, src, m)
    assert gate_gw.drops["MALFORMED_HEADER"] == core_gw.drops["MALFORMED_HEADER"] == len(MALFORMED)
    assert gate_gw.security.flush(8) == core_gw.security.flush(8)


@settings(max_examples=300, deadline=None)
@given(st.binary(max_size=64))
def test_what_the_gate_refuses_as_malformed_the_core_does(datagram: bytes) -> None:
    """Any datagram at all: refused as malformed exactly when the core's wire.message_type
    has no type for it (the rest is other rules' or the core's)."""
    gw, _core, _k, _c = _twins()
    g = bound_gate(gw)
    g.now = NOW
    with (
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as a,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as b,
    ):
        b.bind(("127.0.0.1", 0))
        b.setblocking(False)
        a.sendto(datagram, b.getsockname())
        got = udp.c_recv_burst(b.fileno(), 65535, 1 << 20, 64, False, g)
    counts = {reason: n for reason, n, _heavy in g.drain()[2]}
    malformed = wire.message_type(datagram) is None
    assert counts.get("MALFORMED_HEADER", 0) == int(malformed)
    if malformed:
        assert got == []  # refused in the loop, never a Python object
