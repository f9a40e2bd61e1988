"""The TUN reader's loop (``read_burst``): the C loop (jumping/service/_fastio.c) and its
pure-Python twin read a non-blocking descriptor until it is empty or the byte limit is
reached, keep packet boundaries, and surface errors the same way. A datagram socket pair
stands in for the device: like a TUN descriptor, one ``read`` returns one packet."""

from __future__ import annotations

import errno
import os
import socket

import pytest

from jumping.service import tun

IMPLEMENTATIONS = [pytest.param(tun._read_burst_py, id="python")]
if tun.c_read_burst is not None:
    IMPLEMENTATIONS.append(pytest.param(tun.c_read_burst, id="c"))


@pytest.fixture
def pair():
    a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
    b.setblocking(False)
    yield a, b
    a.close()
    b.close()


def test_the_c_loop_is_built_where_the_data_plane_is() -> None:
    # CI builds both extensions (pip install .); one without the other is a broken build
    from jumping.core import aead

    if aead.CAead is not None and not os.environ.get("JUMPING_PURE_PYTHON"):
        assert tun.c_read_burst is not None
        assert tun.read_burst is tun.c_read_burst


@pytest.mark.parametrize("read_burst", IMPLEMENTATIONS)
def test_empty_device_gives_nothing(pair, read_burst) -> None:
    _a, b = pair
    assert read_burst(b.fileno(), 65600, 1 << 18) == []


@pytest.mark.parametrize("read_burst", IMPLEMENTATIONS)
def test_reads_every_packet_in_order_with_its_boundaries(pair, read_burst) -> None:
    a, b = pair
    sent = [os.urandom(n) for n in (1, 94, 1500, 9000, 3)]
    for p in sent:
        a.send(p)
    assert read_burst(b.fileno(), 65600, 1 << 18) == sent
    assert read_burst(b.fileno(), 65600, 1 << 18) == []


@pytest.mark.parametrize("read_burst", IMPLEMENTATIONS)
def test_stops_at_the_byte_limit_and_leaves_the_rest(pair, read_burst) -> None:
    a, b = pair
    sent = [bytes([i]) * 1000 for i in range(10)]
    for p in sent:
        a.send(p)
    first = read_burst(b.fileno(), 65600, 2500)  # stops once 2 500 bytes were read
    assert first == sent[:3]
    assert read_burst(b.fileno(), 65600, 1 << 20) == sent[3:]


@pytest.mark.parametrize("read_burst", IMPLEMENTATIONS)
def test_a_short_buffer_truncates_as_read_does(pair, read_burst) -> None:
    a, b = pair
    a.send(b"x" * 100)
    assert read_burst(b.fileno(), 10, 1 << 18) == [b"x" * 10]


@pytest.mark.parametrize("read_burst", IMPLEMENTATIONS)
def test_an_error_with_nothing_read_is_raised(read_burst) -> None:
    r, w = os.pipe()
    os.close(r)
    os.close(w)
    with pytest.raises(OSError) as e:
        read_burst(r, 65600, 1 << 18)
    assert e.value.errno == errno.EBADF


@pytest.mark.parametrize("read_burst", IMPLEMENTATIONS)
def test_end_of_file_ends_the_burst(read_burst) -> None:
    r, w = os.pipe()
    os.set_blocking(r, False)
    os.write(w, b"abc")
    os.close(w)
    try:
        assert read_burst(r, 65600, 1 << 18) == [b"abc"]
        assert read_burst(r, 65600, 1 << 18) == []
    finally:
        os.close(r)


def test_the_c_loop_refuses_bad_arguments() -> None:
    if tun.c_read_burst is None:
        pytest.skip("jumping/service/_fastio.c not built")
    with pytest.raises(ValueError):
        tun.c_read_burst(-1, 65600, 1)
    with pytest.raises(ValueError):
        tun.c_read_burst(0, 0, 1)
    with pytest.raises(TypeError):
        tun.c_read_burst(0, 1)  # type: ignore[call-arg]
