"""UDP batching: ``send_batch`` (UDP_SEGMENT) and coalesced reads (UDP_GRO) deliver exactly
what one ``send`` per datagram would, over real sockets on loopback."""

from __future__ import annotations

import os

import pytest
import pytest_twisted
from twisted.internet import defer, reactor, task

from jumping import plugin
from jumping.interfaces import IBatchTransport, ITransportFactory


class Sink:
    def __init__(self) -> None:
        self.got: list[tuple[object, bytes]] = []

    def datagramReceived(self, transport: object, data: bytes) -> None:  # noqa: N802
        self.got.append((transport, data))

    def transportLost(self, transport: object, reason: str) -> None:  # noqa: N802
        pass


async def _wait(cond, timeout: float = 5.0) -> None:  # noqa: ANN001
    for _ in range(int(timeout / 0.01)):
        if cond():
            return
        await task.deferLater(reactor, 0.01, lambda: None)
    raise AssertionError("timed out")


def _batches() -> list[list[bytes]]:
    full = [os.urandom(1452) for _ in range(100)]  # > one GSO run: split into several
    mixed = [os.urandom(n) for n in (1452, 1452, 1452, 700, 1452, 80, 80, 80, 1452)]
    return [full, mixed, full[:1], []]


@pytest.mark.parametrize("gso", [True, False])
@pytest_twisted.ensureDeferred
async def test_send_batch_delivers_every_datagram_in_order(gso: bool) -> None:
    factory = plugin.load(ITransportFactory, "udp", gso=gso)
    server, client = Sink(), Sink()
    listener = factory.listen(reactor, "127.0.0.1", 0, server)
    path = await factory.connect(reactor, ("127.0.0.1", listener.local_address[1]), client)
    try:
        assert IBatchTransport.providedBy(path)
        sent: list[bytes] = []
        for batch in _batches():
            path.send_batch(list(batch))
            sent += batch
            n = len(sent)
            await _wait(lambda n=n: len(server.got) == n)
        assert [d for _, d in server.got] == sent
        assert path.send_errors == 0
        # the reverse direction, through the listener's per-address path
        back = server.got[0][0]
        assert IBatchTransport.providedBy(back)
        back.send_batch(sent[:50])
        await _wait(lambda: len(client.got) == 50)
        assert [d for _, d in client.got] == sent[:50]
        coalesced = listener.port.coalesced_reads
        if gso:
            # loopback keeps a GSO run whole up to the receiving socket: it was read
            # coalesced and split at the segment size
            assert coalesced > 0
            assert path.gso_fallbacks == 0
        else:
            assert coalesced == 0
    finally:
        path.close()
        await defer.maybeDeferred(listener.close)


@pytest_twisted.ensureDeferred
async def test_send_batch_after_close_counts_errors_and_sends_nothing() -> None:
    factory = plugin.load(ITransportFactory, "udp")
    server, client = Sink(), Sink()
    listener = factory.listen(reactor, "127.0.0.1", 0, server)
    path = await factory.connect(reactor, ("127.0.0.1", listener.local_address[1]), client)
    path.close()
    path.send_batch([b"x" * 100] * 3)
    assert path.send_errors == 3
    await task.deferLater(reactor, 0.1, lambda: None)
    assert server.got == []
    await defer.maybeDeferred(listener.close)


def test_gso_option_is_validated() -> None:
    from jumping.errors import PluginError

    with pytest.raises(PluginError, match="gso must be true or false"):
        plugin.load(ITransportFactory, "udp", gso="yes")


@pytest_twisted.ensureDeferred
async def test_listener_paths_are_slotted_and_fall_back_one_by_one_on_their_own() -> None:
    """A gateway holds one listener path per client (issue 18): slotted, without bound
    socket methods or a cached name of its own, and the GSO fallback is per path."""
    factory = plugin.load(ITransportFactory, "udp", gso=True)
    server, c1, c2 = Sink(), Sink(), Sink()
    listener = factory.listen(reactor, "127.0.0.1", 0, server)
    dest = ("127.0.0.1", listener.local_address[1])
    p1 = await factory.connect(reactor, dest, c1)
    p2 = await factory.connect(reactor, dest, c2)
    try:
        p1.send(b"one")
        p2.send(b"two")
        await _wait(lambda: len(server.got) == 2)
        back1, back2 = (t for t, _ in server.got)
        assert not hasattr(back1, "__dict__")
        assert back1.remote_address[1] == p1.local_address[1]
        name = back1.transport_id
        assert name.startswith("udp:127.0.0.1:") and name == back1.transport_id
        assert name != back2.transport_id
        back1._sendmsg = None  # what the kernel refusing UDP_SEGMENT makes _send_batch do
        assert back1._sendmsg is None and back2._sendmsg is not None
        batch = [os.urandom(1452) for _ in range(20)]
        back1.send_batch(batch)
        back2.send_batch(batch)
        await _wait(lambda: len(c1.got) == 20 and len(c2.got) == 20)
        assert [d for _, d in c1.got] == batch == [d for _, d in c2.got]
        assert back1.send_errors == back2.send_errors == 0
    finally:
        p1.close()
        p2.close()
        await defer.maybeDeferred(listener.close)
