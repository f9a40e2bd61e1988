"""The TCP transport: framing (pure, Hypothesis) and real loopback connections."""

from __future__ import annotations

import pytest
import pytest_twisted
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet import defer, reactor, task

from jumping.builtin.tcp import FrameDecoder, TCPTransportFactory, frame


@given(st.lists(st.binary(min_size=1, max_size=3000), max_size=40), st.data())
def test_any_split_of_a_stream_yields_exactly_the_frames(
    frames: list[bytes], data: st.DataObject
) -> None:
    stream = b"".join(frame(f) for f in frames)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=20)))
    d = FrameDecoder()
    out: list[bytes] = []
    prev = 0
    for c in [*cuts, len(stream)]:
        out += d.feed(stream[prev:c])
        prev = c
    assert out == frames and not d.buf


@pytest.mark.parametrize("bad", [b"\x00\x00", b"\xff\xff" + b"x" * 10])
def test_bad_lengths_are_protocol_errors(bad: bytes) -> None:
    with pytest.raises(ValueError):
        FrameDecoder(max_frame=1000).feed(bad)


def test_options_are_validated() -> None:
    with pytest.raises(ValueError, match="max_frame"):
        TCPTransportFactory(max_frame=10)
    with pytest.raises(TypeError):
        TCPTransportFactory(bogus=1)  # type: ignore[call-arg]


class Receiver:
    def __init__(self) -> None:
        self.got: list[tuple[object, bytes]] = []
        self.lost: list[tuple[object, str]] = []
        self.waiting: defer.Deferred[None] | None = None
        self.want = 0

    def datagramReceived(self, t: object, data: bytes) -> None:  # noqa: N802
        self.got.append((t, data))
        if self.waiting is not None and len(self.got) >= self.want:
            d, self.waiting = self.waiting, None
            d.callback(None)

    def transportLost(self, t: object, reason: str) -> None:  # noqa: N802
        self.lost.append((t, reason))

    def wait(self, n: int) -> defer.Deferred[None]:
        self.want = n
        if len(self.got) >= n:
            return defer.succeed(None)
        self.waiting = defer.Deferred()
        return self.waiting.addTimeout(10, reactor)


@pytest_twisted.inlineCallbacks
def test_frames_both_ways_in_order_and_close() -> None:
    f = TCPTransportFactory()
    server, client = Receiver(), Receiver()
    listener = f.listen(reactor, "127.0.0.1", 0, server)
    try:
        path = yield f.connect(reactor, ("127.0.0.1", listener.local_address[1]), client)
        assert path.kind == "tcp" and path.connected
        msgs = [bytes([i % 256]) * (1 + i * 7 % 1400) for i in range(2000)]
        for i, m in enumerate(msgs):
            path.send(m)
            if i % 100 == 99:  # let the reactor write, as a real sender paced by TUN reads
                yield task.deferLater(reactor, 0, lambda: None)
        assert path.send_errors == 0
        yield server.wait(len(msgs))
        assert [d for _t, d in server.got] == msgs
        back = server.got[0][0]
        assert back.remote_address == path.local_address
        back.send(b"pong")  # type: ignore[attr-defined]
        yield client.wait(1)
        assert client.got[0][1] == b"pong"
        path.close()
        path.close()
        path.send(b"after close")
        assert path.send_errors == 1
        yield task.deferLater(reactor, 0.2, lambda: None)
        assert server.lost and server.lost[0][0] is back
    finally:
        yield listener.close()


@pytest_twisted.inlineCallbacks
def test_port_in_use_and_refused_connect_are_clear_errors() -> None:
    f = TCPTransportFactory()
    listener = f.listen(reactor, "127.0.0.1", 0, Receiver())
    port = listener.local_address[1]
    try:
        with pytest.raises(OSError, match=f"cannot listen on tcp 127.0.0.1:{port}"):
            f.listen(reactor, "127.0.0.1", port, Receiver())
    finally:
        yield listener.close()
    with pytest.raises(ConnectionError, match="cannot connect to tcp"):
        yield f.connect(reactor, ("127.0.0.1", port), Receiver())


@pytest_twisted.inlineCallbacks
def test_garbage_from_the_peer_closes_the_connection() -> None:
    from twisted.internet.protocol import ClientCreator, Protocol

    f = TCPTransportFactory(max_frame=100)
    server = Receiver()
    listener = f.listen(reactor, "127.0.0.1", 0, server)
    try:
        raw = yield ClientCreator(reactor, Protocol).connectTCP(
            "127.0.0.1", listener.local_address[1]
        )
        raw.transport.write(b"\xff\xffjunk")
        yield task.deferLater(reactor, 0.3, lambda: None)
        assert server.lost and server.lost[0][1] == "protocol_error"
        assert not server.got
    finally:
        yield listener.close()


@pytest_twisted.inlineCallbacks
def test_full_write_buffer_drops_and_counts_instead_of_queueing() -> None:
    f = TCPTransportFactory(max_write_buffer=65536)
    server = Receiver()
    listener = f.listen(reactor, "127.0.0.1", 0, server)
    try:
        path = yield f.connect(reactor, ("127.0.0.1", listener.local_address[1]), Receiver())
        for _ in range(2000):  # ~2.8 MB in one reactor turn
            path.send(b"x" * 1400)
        assert path.paused and path.send_errors > 0
        yield task.deferLater(reactor, 1.0, lambda: None)
        assert len(server.got) + path.send_errors == 2000
        path.close()
    finally:
        yield listener.close()
