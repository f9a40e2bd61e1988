"""The gateway listener's socket filter (jumping/builtin/udp.py, issue 18): a client's NAT
keepalive under expired keys (16 bytes: a CONTROL header and a counter, no tag, so it can
never authenticate) is dropped by the kernel before it wakes the reactor, and counted in the
socket's drops; every other datagram reaches the listener whole. Real sockets on IPv4 and
IPv6 loopback, a real listener made by the ``udp`` plugin."""

from __future__ import annotations

import socket
import time
from typing import Any

import pytest

from jumping.builtin import udp
from jumping.core import wire

#: what a client sends while idle once its keys expired (jumping/core/client.py)
KEEPALIVE = wire.CONTROL_PREFIX + (7).to_bytes(4, "little") + (3).to_bytes(8, "little")


class _Reactor:
    def addReader(self, reader: Any) -> None:  # noqa: N802
        self.reader = reader

    def removeReader(self, reader: Any) -> None:  # noqa: N802
        pass


class _Receiver:
    def __init__(self) -> None:
        self.got: list[bytes] = []

    def datagramReceived(self, path: Any, data: bytes) -> None:  # noqa: N802
        self.got.append(data)

    def transportLost(self, path: Any, why: str) -> None:  # noqa: N802
        pass


def _listener(host: str, **options: Any) -> tuple[udp.UDPListener, _Receiver]:
    rx = _Receiver()
    try:
        lst = udp.UDPTransportFactory(gso=False, **options).listen(_Reactor(), host, 0, rx)
    except OSError as e:
        pytest.skip(f"no {host} here: {e}")
    return lst, rx


def _read_all(lst: udp.UDPListener) -> None:
    time.sleep(0.05)  # loopback delivery is immediate; this only bounds a slow CI machine
    lst.port.doRead()


def test_the_keepalive_the_client_sends_is_the_shape_the_filter_drops() -> None:
    assert len(KEEPALIVE) == wire.TRANSPORT_HEADER_LEN == udp._KEEPALIVE_LEN
    assert KEEPALIVE[:2] == udp._KEEPALIVE_HEAD.to_bytes(2, "big")
    assert wire.OVERHEAD > udp._KEEPALIVE_LEN, "no datagram this short can authenticate"


@pytest.mark.parametrize("host", ["127.0.0.1", "::1"])
def test_the_kernel_drops_expired_keepalives_and_counts_them(host: str) -> None:
    lst, rx = _listener(host)
    sender = socket.socket(socket.AF_INET6 if ":" in host else socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert lst.keepalive_filter is True and lst.kernel_drops == 0
        others = [
            KEEPALIVE + b"x",  # one byte longer
            KEEPALIVE[:15],  # one byte shorter
            wire.DATA_PREFIX + KEEPALIVE[4:],  # a DATA header
            bytes([wire.MessageType.CONTROL, wire.VERSION + 1, 0, 0]) + KEEPALIVE[4:],  # version
            KEEPALIVE + bytes(16),  # a control message with a tag's room
        ]
        for d in [KEEPALIVE, *others, KEEPALIVE, KEEPALIVE]:
            sender.sendto(d, lst.sock.getsockname()[:2])
        _read_all(lst)
        assert rx.got == others, "every other datagram whole, in order"
        assert lst.kernel_drops == 3
        assert lst.provisional_paths == len(others), "a dropped keepalive made no path"
    finally:
        sender.close()
        lst.sock.close()


def test_the_option_off_hands_keepalives_to_the_core() -> None:
    lst, rx = _listener("127.0.0.1", drop_expired_keepalives=False)
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert lst.keepalive_filter is False
        sender.sendto(KEEPALIVE, lst.sock.getsockname())
        _read_all(lst)
        assert rx.got == [KEEPALIVE] and lst.kernel_drops == 0
    finally:
        sender.close()
        lst.sock.close()


def test_a_bad_option_is_refused_by_name() -> None:
    with pytest.raises(ValueError, match="drop_expired_keepalives must be true or false"):
        udp.UDPTransportFactory(drop_expired_keepalives="yes")  # type: ignore[arg-type]


def test_a_refused_filter_leaves_the_socket_as_it_was(monkeypatch: pytest.MonkeyPatch) -> None:
    """A kernel without socket filters: a warning, no filter, every datagram read."""
    monkeypatch.setattr(udp, "_SO_ATTACH_FILTER", 0x7FFF)  # an option no kernel knows
    lst, rx = _listener("127.0.0.1")
    sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    try:
        assert lst.keepalive_filter is False
        sender.sendto(KEEPALIVE, lst.sock.getsockname())
        _read_all(lst)
        assert rx.got == [KEEPALIVE]
    finally:
        sender.close()
        lst.sock.close()
