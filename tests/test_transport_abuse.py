"""Issue 10, transports under attack, over real sockets on loopback: junk from fresh source
addresses must not evict a live path (UDP), and unauthenticated TCP connections are bounded
in number and in time."""

from __future__ import annotations

import socket

import pytest
import pytest_twisted
from twisted.internet import reactor, task

from jumping import plugin
from jumping.builtin.tcp import TCPTransportFactory, frame
from jumping.errors import PluginError
from jumping.interfaces import ITransportFactory


class Receiver:
    """Stands in for the node: a datagram reading b"auth" is one the core authenticated,
    so it confirms the path, as the service does when the core says ``ConfirmPath``."""

    def __init__(self) -> None:
        self.got: list[tuple[object, bytes]] = []
        self.lost: list[object] = []

    def datagramReceived(self, transport: object, data: bytes) -> None:  # noqa: N802
        self.got.append((transport, data))
        if data == b"auth":
            transport.confirm()  # type: ignore[attr-defined]

    def transportLost(self, transport: object, reason: str) -> None:  # noqa: N802
        self.lost.append(transport)


async def _wait(cond, timeout: float = 5.0) -> None:  # noqa: ANN001
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("timed out")


@pytest_twisted.ensureDeferred
async def test_junk_from_fresh_source_ports_never_evicts_a_live_udp_path() -> None:
    factory = plugin.load(ITransportFactory, "udp", max_paths=256)
    server, client = Receiver(), Receiver()
    listener = factory.listen(reactor, "127.0.0.1", 0, server)
    live = await factory.connect(reactor, ("127.0.0.1", listener.local_address[1]), client)
    try:
        live.send(b"auth")
        await _wait(lambda: len(server.got) == 1)
        gw_side = server.got[0][0]
        # 400 one-byte datagrams, each from a fresh source port (more than the table holds)
        for _ in range(400):
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
                s.sendto(b"x", ("127.0.0.1", listener.local_address[1]))
        await _wait(lambda: len(server.got) == 401)
        assert gw_side.connected and not server.lost
        assert list(listener.paths.values()) == [gw_side]  # junk never entered the table
        assert listener.provisional_paths == 401 and listener.evicted == 0  # junk + the first
        gw_side.send(b"still here")
        await _wait(lambda: [d for _, d in client.got] == [b"still here"])
        # the authenticated path keeps its identity: the next datagram comes on it
        live.send(b"data")
        await _wait(lambda: len(server.got) == 402)
        assert server.got[-1][0] is gw_side
    finally:
        live.close()
        await listener.close()


def test_udp_junk_path_is_provisional_until_confirmed() -> None:
    factory = plugin.load(ITransportFactory, "udp", max_paths=2)
    server = Receiver()
    listener = factory.listen(reactor, "127.0.0.1", 0, server)
    try:
        listener._on_datagram(b"x", ("127.0.0.1", 1))
        listener._on_datagram(b"auth", ("127.0.0.1", 2))
        listener._on_datagram(b"auth", ("127.0.0.1", 3))
        listener._on_datagram(b"auth", ("127.0.0.1", 4))  # table full: least recently used goes
        first, second, third, fourth = (p for p, _ in server.got)
        assert first.provisional and first.connected
        assert not second.provisional
        assert list(listener.paths) == [("127.0.0.1", 3), ("127.0.0.1", 4)]
        assert listener.evicted == 1 and not second.connected and server.lost == [second]
        listener._on_datagram(b"y", ("127.0.0.1", 3))  # used: now the most recent
        listener._on_datagram(b"auth", ("127.0.0.1", 5))
        assert list(listener.paths) == [("127.0.0.1", 3), ("127.0.0.1", 5)]
    finally:
        listener.close()


def test_udp_path_table_sweep_gives_used_paths_a_second_chance() -> None:
    """A full table of paths that were all used since they entered: the sweep clears every
    mark once (batch by batch), then forgets the oldest; a path used after that outlives
    older unused ones. 3 000 paths: more than a sweep batch, so batches follow each other."""
    n = 3000
    factory = plugin.load(ITransportFactory, "udp", max_paths=n)
    server = Receiver()
    listener = factory.listen(reactor, "127.0.0.1", 0, server)
    try:
        for port in range(1, n + 1):
            listener._on_datagram(b"auth", ("127.0.0.1", port))
        for port in range(1, n + 1):
            listener._on_datagram(b"data", ("127.0.0.1", port))  # every path used
        assert all(p.used for p in listener.paths.values())
        listener._on_datagram(b"auth", ("127.0.0.1", n + 1))
        assert listener.evicted == 1 and len(listener.paths) == n
        (gone,) = server.lost
        assert gone.remote_address == ("127.0.0.1", 1) and not gone.connected
        assert not any(p.used for p in listener.paths.values())
        listener._on_datagram(b"data", ("127.0.0.1", 2))  # used again: survives the next
        listener._on_datagram(b"auth", ("127.0.0.1", n + 2))
        assert [p.remote_address[1] for p in server.lost] == [1, 3]
        assert ("127.0.0.1", 2) in listener.paths and len(listener.paths) == n
    finally:
        listener.close()


def _connect(port: int) -> socket.socket:
    s = socket.create_connection(("127.0.0.1", port))
    s.setblocking(False)
    return s


def _closed(s: socket.socket) -> bool:
    try:
        return s.recv(1) == b""
    except BlockingIOError:
        return False
    except OSError:
        return True


@pytest_twisted.ensureDeferred
async def test_unauthenticated_tcp_connections_are_bounded_and_timed_out() -> None:
    factory = TCPTransportFactory(handshake_timeout_s=1, max_unauthenticated=2)
    server = Receiver()
    listener = factory.listen(reactor, "127.0.0.1", 0, server)
    port = listener.local_address[1]
    socks: list[socket.socket] = []
    try:
        good = _connect(port)
        socks.append(good)
        await _wait(lambda: len(listener.paths) == 1)
        good.sendall(frame(b"auth"))  # authenticated: no longer counts, never timed out
        await _wait(lambda: len(server.got) == 1)
        idle = [_connect(port) for _ in range(2)]
        socks += idle
        await _wait(lambda: len(listener.paths) == 3)
        extra = _connect(port)  # a third unauthenticated one: over the bound
        socks.append(extra)
        await _wait(lambda: _closed(extra))
        assert listener.refused_unauthenticated >= 1
        await _wait(lambda: all(_closed(s) for s in idle), timeout=5.0)
        assert listener.handshake_timeouts == 2
        assert not _closed(good) and len(listener.paths) == 1
    finally:
        for s in socks:
            s.close()
        await listener.close()


def test_tcp_timeouts_are_validated() -> None:
    with pytest.raises(ValueError, match="handshake_timeout_s"):
        TCPTransportFactory(handshake_timeout_s=0)
    with pytest.raises(ValueError, match="max_unauthenticated"):
        TCPTransportFactory(max_unauthenticated=0)
    with pytest.raises(ValueError, match="idle_timeout_s"):
        TCPTransportFactory(idle_timeout_s=0)


def test_a_udp_read_pass_serves_a_bounded_slice_of_unauthenticated_datagrams() -> None:
    """A listener's read pass ends after ``unauthenticated_per_read`` datagrams from
    addresses nothing authenticated on (the socket stays readable: the next pass goes on
    where this one stopped), so that the reactor serves the TUN device and the timers
    between two slices of a flood; datagrams of an authenticated path do not count."""
    factory = plugin.load(ITransportFactory, "udp", unauthenticated_per_read=50)
    server = Receiver()
    listener = factory.listen(reactor, "127.0.0.1", 0, server)
    port = listener.local_address[1]
    live = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    junk = [socket.socket(socket.AF_INET, socket.SOCK_DGRAM) for _ in range(120)]
    try:
        live.sendto(b"auth", ("127.0.0.1", port))
        listener.port.doRead()
        assert len(server.got) == 1 and len(listener.paths) == 1
        for i, s in enumerate(junk):  # 120 strangers, with 30 datagrams of the live path
            s.sendto(b"x", ("127.0.0.1", port))
            if i % 4 == 0:
                live.sendto(b"data", ("127.0.0.1", port))
        passes = []
        for _ in range(4):
            before = len(server.got)
            listener.port.doRead()
            passes.append(server.got[before:])
        strangers = [sum(1 for t, _ in p if t not in listener.paths.values()) for p in passes]
        assert strangers == [50, 50, 20, 0]
        assert sum(len(p) for p in passes) == 150  # nothing lost, nothing twice
        assert listener.yielded_reads == 2
    finally:
        live.close()
        for s in junk:
            s.close()
        listener.port.stopListening()
    with pytest.raises(PluginError, match="unauthenticated_per_read"):
        plugin.load(ITransportFactory, "udp", unauthenticated_per_read=0)
