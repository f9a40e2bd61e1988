"""
A client's 4-tuple changes under a live QUIC connection (NAT rebinding): aioquic follows
it, and the node hears it as a *new*, provisional path object with the new address,
exactly as a UDP rebinding, so Jumping's core validates and decides (docs:
jumping_quic/server.py).
"""

from __future__ import annotations

from typing import Any

import pytest_twisted
from jumping_quic.sock import open_port
from quichelp import factory

from jumping.testing.conformance import Receiver, wait_until


def _reactor() -> Any:
    from twisted.internet import reactor

    return reactor


def _rebind(path: Any) -> None:
    """What a NAT does when its mapping changes: the same connection, another source port."""
    old = path.port
    new = open_port(_reactor(), "127.0.0.1", 0, path._udp, path._after_read, 1 << 16)
    new.connect(*path.remote_address)
    path.port, path._send = new, new.socket.send
    old.on_lost = None
    old.stopListening()


@pytest_twisted.ensureDeferred
async def test_rebinding_reaches_the_node_as_a_new_path_and_aioquic_follows() -> None:
    f = factory()
    server, client = Receiver(), Receiver()
    lst = f.listen(_reactor(), "127.0.0.1", 0, server)
    path = await f.connect(_reactor(), lst.local_address, client).addTimeout(10, _reactor())
    try:
        path.send(b"before")
        await wait_until(lambda: server.data == [b"before"], "the first datagram")
        old = server.got[0][0]
        old.confirm()  # the node authenticated the first datagram
        old_port = old.remote_address[1]
        _rebind(path)
        new_port = path.port.socket.getsockname()[1]
        path.send(b"after")
        await wait_until(lambda: b"after" in server.data, "a datagram from the new address")
        new = server.got[-1][0]
        assert new is not old and new.transport_id != old.transport_id
        assert new.remote_address == ("127.0.0.1", new_port) != old.remote_address
        assert old.remote_address == ("127.0.0.1", old_port) and old.connected
        assert len(lst.connections) == 1, "one QUIC connection, two path objects"
        assert new.provisional and old in lst.paths and new not in lst.paths
        # the core would now challenge `new` and answer there; both objects send through
        # the one connection, which aioquic moved to the validated new address
        new.send(b"to the new address")
        old.send(b"via the old object")
        await wait_until(lambda: len(client.data) == 2, "both datagrams at the client")
        assert sorted(client.data) == sorted([b"to the new address", b"via the old object"])
    finally:
        path.close()
        await lst.close()


@pytest_twisted.ensureDeferred
async def test_path_objects_per_connection_are_bounded() -> None:
    from jumping_quic.server import PATHS_PER_CONNECTION

    f = factory()
    server = Receiver()
    lst = f.listen(_reactor(), "127.0.0.1", 0, server)
    path = await f.connect(_reactor(), lst.local_address, Receiver()).addTimeout(10, _reactor())
    try:
        for i in range(PATHS_PER_CONNECTION + 2):
            _rebind(path)
            path.send(b"hop %d" % i)
            await wait_until(lambda i=i: b"hop %d" % i in server.data, f"hop {i}")
            server.got[-1][0].confirm()  # the node authenticated a packet from there
        (c,) = lst.connections
        assert len(c.paths) == PATHS_PER_CONNECTION
        assert lst.drops["paths_evicted"] == 2
        assert [r for _t, r in server.lost] == ["evicted", "evicted"]
    finally:
        path.close()
        await lst.close()
