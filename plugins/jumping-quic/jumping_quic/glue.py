"""
The few places where the plugin reads aioquic 1.7's private state, each with the reason.

aioquic's public API (``send_datagram_frame``, ``datagrams_to_send``, the events) has no way
to ask how many DATAGRAM frames wait to be sent, what the peer allows, which connection ID
packets carry, or which certificate the server showed. These reads are kept in this one
module, and ``tests/test_aioquic_assumptions.py`` fails loudly if an aioquic release moves
any of them (the distribution pins ``aioquic < 2``).
"""

from __future__ import annotations

from collections import deque
from typing import Any

from aioquic.buffer import size_uint_var
from aioquic.quic.connection import QuicConnection
from aioquic.quic.packet_builder import PACKET_NUMBER_SEND_SIZE

#: AEAD tag of every QUIC packet (AES-GCM and ChaCha20-Poly1305 alike)
AEAD_TAG = 16


def pending(conn: QuicConnection) -> deque[bytes]:
    """The queue of DATAGRAM payloads ``send_datagram_frame`` appends to.

    aioquic never bounds it (bulk traffic piles up behind congestion control) and keeps a
    payload that fits no packet at its head for good, blocking everything behind it
    (aioquic issue #294): the caller bounds it and evicts such a head."""
    q: deque[bytes] = conn._datagrams_pending
    return q


def peer_cid_length(conn: QuicConnection) -> int:
    """Length of the connection ID our short-header packets carry now."""
    return len(conn._peer_cid.cid)


def peer_max_datagram_frame_size(conn: QuicConnection) -> int | None:
    """The peer's ``max_datagram_frame_size`` transport parameter (None: no DATAGRAM frames
    at all). aioquic stores it but never checks a frame against it before sending; a peer
    receiving a bigger frame closes the connection (PROTOCOL_VIOLATION)."""
    v: int | None = conn._remote_max_datagram_frame_size
    return v


def peer_certificate(conn: QuicConnection) -> Any:
    """The server's leaf certificate (client side, after the TLS handshake), or None."""
    return getattr(conn.tls, "_peer_certificate", None)


def datagram_capacity(max_datagram_size: int, cid_length: int, frame_limit: int | None) -> int:
    """The largest DATAGRAM payload one short-header packet of ``max_datagram_size`` bytes
    carries: header (1 + connection ID + packet number), frame type, length, AEAD tag; at
    most what the peer's ``max_datagram_frame_size`` allows (type and length included)."""
    room = max_datagram_size - (1 + cid_length + PACKET_NUMBER_SEND_SIZE) - AEAD_TAG - 1
    n = room - size_uint_var(max(room - 2, 0))
    if frame_limit is not None:
        n = min(n, frame_limit - 1 - size_uint_var(frame_limit))
    return max(n, 0)
