"""
The UDP socket under a QUIC listener or client path: Twisted's ``udp.Port`` with a read
loop that hands every datagram to one handler and, after the run read in one wake-up,
calls ``after_read`` once (that is where the pumps flush and the receiver gets its run).
"""

from __future__ import annotations

import errno
import socket
from collections.abc import Callable
from typing import Any

from twisted.internet import udp
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger

_log = Logger()
_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.EMSGSIZE)
_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)


class _Quiet(DatagramProtocol):
    noisy = False

    def __init__(self, refused: Callable[[], None] | None) -> None:
        self._refused = refused

    def connectionRefused(self) -> None:  # noqa: N802
        if self._refused is not None:
            self._refused()


class QuicPort(udp.Port):
    handler: Callable[[bytes, Any], None]
    after_read: Callable[[], None]
    handler_errors = 0
    refused = 0
    _fresh: socket.socket | None = None
    #: called once if the reactor drops the socket (an error it reports as a lost
    #: connection, e.g. ICMP port unreachable on a connected socket)
    on_lost: Callable[[int], None] | None = None
    _closing = False

    def stopListening(self) -> Any:  # noqa: N802
        self._closing = True
        return super().stopListening()

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        err = 0
        try:
            err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        except (OSError, AttributeError):
            pass
        super().connectionLost(reason)
        lost, self.on_lost = self.on_lost, None
        if lost is not None and not self._closing:
            lost(err)

    def createInternetSocket(self) -> socket.socket:  # noqa: N802
        self._fresh = s = super().createInternetSocket()
        return s

    def _bindSocket(self) -> None:  # noqa: N802
        """A failed bind closes its socket now (Twisted leaves it to the collector)."""
        try:
            super()._bindSocket()
        except CannotListenError:
            if self._fresh is not None:
                self._fresh.close()
            raise
        finally:
            self._fresh = None

    def doRead(self) -> None:  # noqa: N802
        recv = self.socket.recvfrom
        handler = self.handler
        read = 0
        try:
            while read < self.maxThroughput:
                try:
                    data, addr = recv(self.maxPacketSize)
                except OSError as e:
                    if e.errno in _AGAIN:
                        return
                    if e.errno == errno.ECONNREFUSED:
                        self.refused += 1
                        self.protocol.connectionRefused()
                        return
                    raise
                read += len(data)
                try:
                    handler(data, addr)
                except Exception:
                    self.handler_errors += 1
                    _log.failure("quic datagram handler failed")
        finally:
            try:
                self.after_read()
            except Exception:
                self.handler_errors += 1
                _log.failure("quic after-read failed")


def open_port(
    reactor: Any,
    host: str,
    port: int,
    handler: Callable[[bytes, Any], None],
    after_read: Callable[[], None],
    buffer_bytes: int,
    refused: Callable[[], None] | None = None,
) -> QuicPort:
    """Bind a UDP socket (raises ``CannotListenError``, leaving nothing open)."""
    p = QuicPort(port, _Quiet(refused), host, 65535, reactor)
    p.handler = handler
    p.after_read = after_read
    p.startListening()
    for force, plain in ((_SO_RCVBUFFORCE, socket.SO_RCVBUF), (_SO_SNDBUFFORCE, socket.SO_SNDBUF)):
        try:
            p.socket.setsockopt(socket.SOL_SOCKET, force, buffer_bytes)
        except OSError:
            try:
                p.socket.setsockopt(socket.SOL_SOCKET, plain, buffer_bytes)
            except OSError:
                pass
    return p


def fmt(addr: Any) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
