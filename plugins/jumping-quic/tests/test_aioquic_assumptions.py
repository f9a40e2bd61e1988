"""
What the plugin assumes about aioquic 1.7, shown on aioquic alone (sans-IO: two
``QuicConnection`` objects and a list of datagrams between them, no sockets, no clock).

If one of these fails after an aioquic upgrade, ``jumping_quic/glue.py`` needs a look: the
private attributes moved, or a trap the plugin works around was fixed upstream.
"""

from __future__ import annotations

import ssl
from typing import Any

import aioquic
from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet import pull_quic_header
from jumping_quic import glue
from jumping_quic.framing import DatagramFraming
from quichelp import certificate

from jumping import tls

CLIENT, SERVER = ("10.0.0.2", 40000), ("10.0.0.1", 443)


def _pair(server_frame_size: int | None = 65536) -> tuple[QuicConnection, QuicConnection, float]:
    crt, key, _pin = certificate()
    framing = DatagramFraming()
    c_cfg = QuicConfiguration(is_client=True, verify_mode=ssl.CERT_NONE)
    framing.configure(c_cfg)
    s_cfg = QuicConfiguration(is_client=False)
    framing.configure(s_cfg)
    s_cfg.max_datagram_frame_size = server_frame_size
    s_cfg.certificate = tls.load_certificates(crt)[0]
    s_cfg.private_key = tls.load_private_key(key)
    now = 1000.0
    client = QuicConnection(configuration=c_cfg)
    client.connect(SERVER, now)
    first = client.datagrams_to_send(now)
    header = pull_quic_header(Buffer(data=first[0][0]), host_cid_length=8)
    server = QuicConnection(
        configuration=s_cfg, original_destination_connection_id=header.destination_cid
    )
    for d, _a in first:
        server.receive_datagram(d, CLIENT, now)
    now = _exchange(client, server, now)
    return client, server, now


def _exchange(client: QuicConnection, server: QuicConnection, now: float) -> float:
    for _ in range(20):
        now += 0.01
        moved = False
        for d, _a in server.datagrams_to_send(now):
            client.receive_datagram(d, SERVER, now)
            moved = True
        for d, _a in client.datagrams_to_send(now):
            server.receive_datagram(d, CLIENT, now)
            moved = True
        if not moved:
            break
    return now


def _events(conn: QuicConnection) -> list[Any]:
    out = []
    while (e := conn.next_event()) is not None:
        out.append(e)
    return out


def test_version_and_the_private_state_glue_reads() -> None:
    assert aioquic.__version__.startswith("1."), aioquic.__version__
    client, server, _now = _pair()
    assert any(type(e) is events.HandshakeCompleted for e in _events(client))
    assert glue.pending(client) is glue.pending(client) and len(glue.pending(client)) == 0
    assert glue.peer_cid_length(client) == 8
    assert glue.peer_max_datagram_frame_size(client) == 65536
    assert glue.peer_certificate(client) is not None
    assert tls.spki_pin(glue.peer_certificate(client)) == certificate()[2]


def test_datagram_capacity_is_exact_for_aioquic_packets() -> None:
    """The largest payload glue computes goes out in one packet; one byte more does not."""
    client, server, now = _pair()
    _events(server)
    cap = glue.datagram_capacity(1200, glue.peer_cid_length(client), None)  # aioquic's default
    client.send_datagram_frame(b"a" * cap)
    now = _exchange(client, server, now)
    got = [e.data for e in _events(server) if type(e) is events.DatagramFrameReceived]
    assert got == [b"a" * cap]
    client.send_datagram_frame(b"b" * (cap + 1))
    now = _exchange(client, server, now)
    assert not [e for e in _events(server) if type(e) is events.DatagramFrameReceived]


def test_trap_an_oversized_frame_wedges_the_queue_for_good() -> None:
    """aioquic issue #294: a DATAGRAM payload that fits no packet stays at the head of the
    queue and everything behind it waits forever (the pump refuses and evicts such heads)."""
    client, server, now = _pair()
    _events(server)
    client.send_datagram_frame(b"x" * 1500)  # > 1200-byte packets (aioquic's default)
    client.send_datagram_frame(b"small")
    for _ in range(5):
        now = _exchange(client, server, now + 1.0)
    assert not [e for e in _events(server) if type(e) is events.DatagramFrameReceived]
    assert len(glue.pending(client)) == 2, "still wedged"


def test_trap_the_peers_frame_limit_is_not_checked_on_send() -> None:
    """The gateway allows 1000-byte frames; aioquic sends a bigger one anyway and the
    gateway closes the connection (the pump caps max_datagram at the peer's limit)."""
    client, server, now = _pair(server_frame_size=1000)
    _events(server)
    assert glue.peer_max_datagram_frame_size(client) == 1000
    client.send_datagram_frame(b"y" * 1100)
    now = _exchange(client, server, now)
    server.handle_timer(now + 10)  # past the closing period: the close is reported
    closed = [e for e in _events(server) if type(e) is events.ConnectionTerminated]
    assert closed and closed[0].error_code == 0x0A  # PROTOCOL_VIOLATION
