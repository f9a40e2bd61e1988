"""The UDP sockets' read loop (``recv_burst``): the C loop (jumping/service/_fastio.c) and its
pure-Python twin read a non-blocking UDP socket until it is empty, the byte limit or the
datagram count is reached, give each datagram with the address tuple Python's socket module
gives and the UDP_GRO segment size, and surface errors the same way. Real sockets on
loopback (IPv4 and IPv6), and :class:`LeanPort` reading through them on a real reactor's
terms (its ``doRead``)."""

from __future__ import annotations

import errno
import os
import socket
from typing import Any

import pytest

from jumping.builtin import udp

IMPLEMENTATIONS = [pytest.param("python", id="python")]
if udp.c_recv_burst is not None:
    IMPLEMENTATIONS.append(pytest.param("c", id="c"))


def burst(kind: str, sock: socket.socket, size: int = 65535, limit: int = 1 << 20,
          count: int = 64, gro: bool = False) -> list[tuple[bytes, Any, int]]:  # fmt: skip
    if kind == "c":
        return udp.c_recv_burst(sock.fileno(), size, limit, count, gro)  # type: ignore[no-any-return]
    return udp._recv_burst_py(sock, size, limit, count, gro)


def test_the_c_loop_is_built_where_the_data_plane_is() -> None:
    # CI builds both extensions (pip install .); one without the other is a broken build
    from jumping.core import aead

    if aead.CAead is not None and not os.environ.get("JUMPING_PURE_PYTHON"):
        assert udp.c_recv_burst is not None


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_an_empty_socket_gives_nothing(udp_pair, kind) -> None:
    _a, b = udp_pair
    assert burst(kind, b) == []


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_every_datagram_in_order_with_the_address_python_gives(udp_pair, kind) -> None:
    a, b = udp_pair
    sent = [os.urandom(n) for n in (1, 94, 1420, 9000, 3)]
    for d in sent:
        a.sendto(d, b.getsockname())
    got = burst(kind, b)
    assert [d for d, _addr, _seg in got] == sent
    assert all(seg == 0 for _d, _addr, seg in got)
    # the same tuple (shape and values) Python's recvfrom gives for this source
    a.sendto(b"ref", b.getsockname())
    ref = None
    for _ in range(100):
        try:
            _data, ref = b.recvfrom(100)
            break
        except BlockingIOError:
            pass
    assert ref is not None
    assert {addr for _d, addr, _s in got} == {ref}
    assert burst(kind, b) == []


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_two_sources_keep_their_own_addresses(udp_pair, kind) -> None:
    a, b = udp_pair
    c = socket.socket(a.family, socket.SOCK_DGRAM)
    try:
        c.bind((a.getsockname()[0], 0))
        a.sendto(b"from a", b.getsockname())
        c.sendto(b"from c", b.getsockname())
        a.sendto(b"a again", b.getsockname())
        got = burst(kind, b)
        assert [(d, addr[1]) for d, addr, _s in got] == [
            (b"from a", a.getsockname()[1]),
            (b"from c", c.getsockname()[1]),
            (b"a again", a.getsockname()[1]),
        ]
    finally:
        c.close()


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_stops_at_the_count_and_at_the_byte_limit(udp_pair, kind) -> None:
    a, b = udp_pair
    sent = [bytes([i]) * 1000 for i in range(10)]
    for d in sent:
        a.sendto(d, b.getsockname())
    first = burst(kind, b, count=3)
    assert [d for d, _a, _s in first] == sent[:3]
    # the limit is checked before each read: 2500 bytes take three datagrams of 1000
    second = burst(kind, b, limit=2500)
    assert [d for d, _a, _s in second] == sent[3:6]
    assert [d for d, _a, _s in burst(kind, b)] == sent[6:]


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_a_datagram_longer_than_the_buffer_is_cut_to_it(udp_pair, kind) -> None:
    a, b = udp_pair
    a.sendto(b"x" * 3000, b.getsockname())
    ((data, _addr, _seg),) = burst(kind, b, size=1000)
    assert data == b"x" * 1000


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_a_coalesced_run_carries_the_kernels_segment_size(kind) -> None:
    """UDP_SEGMENT send, UDP_GRO receive on loopback: the run arrives whole, with its size."""
    a = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    b = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        a.bind(("127.0.0.1", 0))
        b.bind(("127.0.0.1", 0))
        b.setblocking(False)
        try:
            b.setsockopt(udp.SOL_UDP, udp.UDP_GRO, 1)
            a.setsockopt(udp.SOL_UDP, udp.UDP_SEGMENT, 100)
        except OSError as e:
            pytest.skip(f"no UDP GSO/GRO here: {e}")
        run = os.urandom(350)  # 100 + 100 + 100 + 50
        a.sendto(run, b.getsockname())
        got = burst(kind, b, gro=True)
        joined = b"".join(d for d, _a, _s in got)
        assert joined == run
        if len(got) == 1:
            assert got[0][2] == 100
        else:  # the kernel split it after all: each piece alone, no segment size
            assert [len(d) for d, _a, _s in got] == [100, 100, 100, 50]
    finally:
        a.close()
        b.close()


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_an_error_first_is_raised_an_error_after_data_hands_over_the_data(kind) -> None:
    """A connected socket whose peer port is closed: ECONNREFUSED on the next receive."""
    closed = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    closed.bind(("127.0.0.1", 0))
    dead = closed.getsockname()
    closed.close()
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    other = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        s.bind(("127.0.0.1", 0))
        s.setblocking(False)
        s.connect(dead)
        s.send(b"nobody listens")
        with pytest.raises(OSError) as err:
            for _ in range(1000):  # the ICMP error comes back through loopback at once
                burst(kind, s)
        assert err.value.errno == errno.ECONNREFUSED
        assert burst(kind, s) == []  # the error was reported once
    finally:
        s.close()
        other.close()


def test_the_c_loop_refuses_bad_arguments() -> None:
    if udp.c_recv_burst is None:
        pytest.skip("jumping/service/_fastio.c not built")
    with pytest.raises(ValueError):
        udp.c_recv_burst(-1, 65535, 1, 1, False)
    with pytest.raises(ValueError):
        udp.c_recv_burst(0, 0, 1, 1, False)
    with pytest.raises(TypeError):
        udp.c_recv_burst(0, 1, 1)
    with pytest.raises(OSError):
        udp.c_recv_burst(2**30, 65535, 1, 1, False)  # not a descriptor: EBADF, raised


class _Reactor:
    """What LeanPort.startListening needs of a reactor, nothing more (no loop runs)."""

    def addReader(self, reader: Any) -> None:  # noqa: N802
        self.reader = reader

    def removeReader(self, reader: Any) -> None:  # noqa: N802
        pass


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_the_port_ends_a_pass_exactly_at_the_bound_on_unknown_sources(kind, monkeypatch) -> None:
    """unknown_per_read = 5, twelve datagrams all from unknown sources: the first pass hands
    over five and yields, the next five, then the last two and the socket is empty."""
    if kind == "python":
        monkeypatch.setattr(udp, "c_recv_burst", None)
    got: list[bytes] = []
    port: Any = None

    def handler(data: bytes, addr: Any) -> None:
        got.append(data)
        port.unknown += 1  # what the listener does for an address not in its table

    port = udp._listen(_Reactor(), 0, "127.0.0.1", handler, gso=False, unknown_per_read=5)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for i in range(12):
            sender.sendto(bytes([i]), port.socket.getsockname())
        port.doRead()
        assert got == [bytes([i]) for i in range(5)] and port.yielded_reads == 1
        port.doRead()
        assert len(got) == 10 and port.yielded_reads == 2
        port.doRead()
        assert got == [bytes([i]) for i in range(12)] and port.yielded_reads == 2
    finally:
        sender.close()
        port.socket.close()


@pytest.mark.parametrize("kind", IMPLEMENTATIONS)
def test_a_raising_handler_is_counted_and_never_ends_the_pass(kind, monkeypatch) -> None:
    if kind == "python":
        monkeypatch.setattr(udp, "c_recv_burst", None)
    got: list[bytes] = []

    def handler(data: bytes, addr: Any) -> None:
        if data == b"bad":
            raise RuntimeError("handler bug")
        got.append(data)

    port = udp._listen(_Reactor(), 0, "127.0.0.1", handler, gso=False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        for d in (b"one", b"bad", b"two"):
            sender.sendto(d, port.socket.getsockname())
        port.doRead()
        assert got == [b"one", b"two"] and port.handler_errors == 1
    finally:
        sender.close()
        port.socket.close()
