"""A pre-shared key per peer (Noise IKpsk2, psk mixed in at the end of the response): both
ends must hold the same one, or no session key ever confirms."""

from __future__ import annotations

import pytest

from jumping.core import handshake
from jumping.core.noise import public_key
from jumping.testing.sim import SimNet, ipv4

UP = ipv4("10.99.0.2", "10.99.0.1", b"hello gateway")
PSK = bytes(range(1, 33))
OTHER = bytes(range(2, 34))


def _net(gateway_psk: bytes | None, client_psk: bytes | None, seed: int = 3) -> SimNet:
    net = SimNet(seed=seed)
    peer = net.gateway.peers[public_key(net.client_key)]
    if gateway_psk is not None:
        peer.psk = gateway_psk
    if client_psk is not None:
        net.client.gateway.psk = client_psk
    net.start()
    net.run_for(3.0)
    return net


def test_the_same_psk_at_both_ends_attaches_and_carries_traffic() -> None:
    net = _net(PSK, PSK)
    assert net.states() == ("ATTACHED", "ATTACHED")
    net.send_inner("client", UP)
    net.run_for(0.2)
    assert UP in net.log["gateway"].tun


@pytest.mark.parametrize(
    "gateway_psk, client_psk",
    [(PSK, None), (None, PSK), (PSK, OTHER)],
    ids=["only-gateway", "only-client", "different"],
)
def test_a_missing_or_wrong_psk_never_confirms_a_session(
    gateway_psk: bytes | None, client_psk: bytes | None
) -> None:
    net = _net(gateway_psk, client_psk)
    client_state, gateway_state = net.states()
    assert client_state == "BIRTH", client_state
    assert gateway_state in (None, "BIRTH")
    # the initiator cannot open any response: counted, nothing installed
    assert net.client.drops["HANDSHAKE_AUTH_FAILED"] >= 1
    assert net.client.counters["handshakes_sent"] >= 2  # it kept trying
    # the gateway answered but never saw a packet under the keys: no session, no claim
    assert net.gateway.counters["handshakes_confirmed"] == 0
    # (answered-but-unconfirmed BIRTH sessions are superseded as for any lost response)
    assert all(
        e.fields["new_state"] != "ATTACHED" for e in net.events("gateway", "SESSION_STATE_CHANGE")
    )
    assert not net.events("gateway", "OWNERSHIP_CHANGE")
    assert not net.events("client", "TRANSPORT_ATTACHED")
    net.send_inner("client", UP)
    net.run_for(0.2)
    assert UP not in net.log["gateway"].tun


def test_the_handshake_is_the_vector_checked_ikpsk2() -> None:
    """tests/core/test_noise_vectors.py checks jumping.core.noise against the published
    Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s vectors; the handshake must be that pattern."""
    assert handshake.PATTERN == "IKpsk2"
    me = handshake.Identity(bytes(range(32)))
    init = handshake.Initiation(me, public_key(bytes(range(1, 33))), bytes, 1.0, 7, psk=PSK)
    assert init._hs.protocol_name == "Noise_IKpsk2_25519_ChaChaPoly_BLAKE2s"
    with pytest.raises(ValueError, match="32 bytes"):
        from jumping.core.node import Peer

        Peer(b"k" * 32, psk=b"short")
