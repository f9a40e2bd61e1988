"""The responder's static-static DH computed once per configured peer, when it is configured
(as wireguard-go's precomputed static-static): the same keys as computing it each time, one
DH less per handshake, nothing kept for keys that are not (or no longer) configured peers."""

from __future__ import annotations

import pytest

from jumping.core import handshake, noise
from jumping.core.handshake import HandshakeError, Identity, Initiation, Response
from jumping.core.node import Peer
from jumping.core.noise import dh, public_key
from jumping.testing.sim import SimNet, seeded_rng

CLIENT, GATEWAY = seeded_rng(11)(32), seeded_rng(12)(32)


def initiation() -> bytes:
    me = Identity(CLIENT)
    return Initiation(me, public_key(GATEWAY), seeded_rng(5), 1.0, 7).message


def counting(monkeypatch: pytest.MonkeyPatch) -> list[tuple[bytes, bytes]]:
    """Every DH the handshakes compute, as (private, public)."""
    calls: list[tuple[bytes, bytes]] = []
    real = noise.dh

    def counted(private: bytes, public: bytes) -> bytes:
        calls.append((private, public))
        return real(private, public)

    monkeypatch.setattr(noise, "dh", counted)
    monkeypatch.setattr(handshake, "dh", counted)  # an initiator's kept static-static
    return calls


def test_a_precomputed_ss_gives_the_same_keys_with_one_dh_less(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data, ss = initiation(), dh(GATEWAY, public_key(CLIENT))
    calls = counting(monkeypatch)
    plain = Response(Identity(GATEWAY), data, seeded_rng(6))
    assert len(calls) == 2, "es and ss"
    del calls[:]
    fast = Response(Identity(GATEWAY), data, seeded_rng(6), {public_key(CLIENT): ss}.get)
    assert len(calls) == 1, "es only: ss came from the table"
    a, b = plain.write(9, bytes(16), 0), fast.write(9, bytes(16), 0)
    assert a == b, "same response bytes and keys"


def test_a_wrong_precomputed_value_fails_to_authenticate() -> None:
    with pytest.raises(HandshakeError, match="HANDSHAKE_AUTH_FAILED"):
        Response(Identity(GATEWAY), initiation(), seeded_rng(6), lambda _key: bytes(32))


def test_the_gateway_computes_ss_once_per_configured_peer_and_forgets_removed_ones(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    net = SimNet(seed=3)
    net.start()
    net.run_for(0.5)
    assert net.states() == ("ATTACHED", "ATTACHED")
    gw, client_pub = net.gateway, public_key(net.client_key)
    assert set(gw._static_static) == {client_pub}, "computed when the peer was configured"
    assert gw._static_static[client_pub] == dh(net.gateway_key, client_pub)
    calls = counting(monkeypatch)
    again = Initiation(Identity(net.client_key), gw.me.public, seeded_rng(8), net.now + 1, 77)
    net.apply("gateway", gw.receive(net.now, net.links[0].gateway_side, again.message))
    assert calls, "the initiation was read"
    assert (net.gateway_key, client_pub) not in calls, "ss not computed again"
    stranger = public_key(seeded_rng(99)(32))
    assert gw._peer_static_static(stranger) is None and stranger not in gw._static_static
    other = Peer(stranger, ("10.99.0.9/32",), "dave")
    net.apply("gateway", gw.set_peers(net.now, [other]))
    assert gw._static_static == {stranger: dh(net.gateway_key, stranger)}, "added, removed"


def test_an_initiator_computes_ss_once_per_remote_key_and_keeps_few(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    me, gw_pub = Identity(CLIENT), public_key(GATEWAY)
    calls = counting(monkeypatch)
    first = Initiation(me, gw_pub, seeded_rng(5), 1.0, 7)
    assert (CLIENT, gw_pub) in calls, "ss computed by the first initiation"
    del calls[:]
    second = Initiation(me, gw_pub, seeded_rng(5), 2.0, 7)
    assert calls == [(seeded_rng(5)(32), gw_pub)], "es only: ss kept from the first"
    # the kept value is the real one: the gateway reads both initiations
    for init in (first, second):
        assert Response(Identity(GATEWAY), init.message, seeded_rng(6)).remote_static == (
            public_key(CLIENT)
        )
    others = [public_key(seeded_rng(200 + k)(32)) for k in range(Identity.STATIC_STATIC_KEPT)]
    for pub in others:
        me.static_static(pub)
    assert len(me._static_static) == Identity.STATIC_STATIC_KEPT, "bounded"
    assert me.static_static(others[-1]) is None, "beyond the bound: computed by the handshake"
    assert me.static_static(bytes(32)) is None, "a low-order key: no result kept"
    assert bytes(32) not in me._static_static


def test_a_wrong_public_half_of_the_initiators_key_fails_to_authenticate() -> None:
    me = Identity(CLIENT)
    me.public = public_key(seeded_rng(13)(32))  # what s_pub trusts the caller for
    data = Initiation(me, public_key(GATEWAY), seeded_rng(5), 1.0, 7).message
    with pytest.raises(HandshakeError, match="HANDSHAKE_AUTH_FAILED"):
        Response(Identity(GATEWAY), data, seeded_rng(6))
