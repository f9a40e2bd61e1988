"""
The built-in TCP transport (plugin name ``tcp``): for networks where UDP is blocked.

Each datagram travels as one frame: a 2-byte big-endian length, then the bytes. A zero or
oversized length is a protocol error: the connection is closed and counted. One TCP
connection is one path (one :class:`~jumping.interfaces.ITransport`).

A VPN must not queue without bound inside TCP (TCP-over-TCP meltdown): when the kernel
buffer and Twisted's write buffer are full the transport is paused by Twisted's producer
mechanism, and while paused ``send`` drops the datagram and counts it, as a full network
queue would.
"""

from __future__ import annotations

import itertools
import socket
import struct
from typing import Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from zope.interface import implementer

from jumping.interfaces import IListener, ITransport, ITransportFactory

_LEN = struct.Struct("!H")
_ids = itertools.count(1)


class FrameDecoder:
    """Incremental de-framer; ``feed`` returns complete frames, raises ValueError on a bad
    length. Memory: at most one partial frame (<= max_frame + 2 bytes) is kept."""

    def __init__(self, max_frame: int = 65535) -> None:
        self.max_frame = max_frame
        self.buf = bytearray()

    def feed(self, data: bytes) -> list[bytes]:
        buf = self.buf
        buf += data
        frames = []
        pos = 0
        n = len(buf)
        while n - pos >= 2:
            (length,) = _LEN.unpack_from(buf, pos)
            if length == 0 or length > self.max_frame:
                raise ValueError(f"bad frame length {length}")
            if n - pos - 2 < length:
                break
            frames.append(bytes(buf[pos + 2 : pos + 2 + length]))
            pos += 2 + length
        if pos:
            del buf[:pos]
        return frames


def frame(data: bytes) -> bytes:
    return _LEN.pack(len(data)) + data


def _fmt(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(ITransport, IPushProducer)
class TCPPath(Protocol):
    kind = "tcp"

    def __init__(self, owner: Any, receiver: Any, max_frame: int) -> None:
        self.owner = owner
        self.receiver = receiver
        self.decoder = FrameDecoder(max_frame)
        self.max_frame = max_frame
        self.connected = False
        self.paused = False
        self.send_errors = 0
        self.protocol_errors = 0
        self.transport_id = "tcp:?"
        self.local_address: tuple[str, int] = ("", 0)
        self.remote_address: tuple[str, int] = ("", 0)
        self._lost_reason = "closed"
        self._reported = False

    # Protocol ------------------------------------------------------------------
    def connectionMade(self) -> None:  # noqa: N802
        t: Any = self.transport
        try:
            t.setTcpNoDelay(True)
        except Exception:
            pass
        try:
            sock = t.getHandle()
            for opt in (socket.SO_RCVBUF, socket.SO_SNDBUF):
                sock.setsockopt(socket.SOL_SOCKET, opt, self.owner.buffer_bytes)
        except Exception:
            pass
        h: Any = t.getHost()
        p: Any = t.getPeer()
        self.local_address = (h.host, h.port)
        self.remote_address = (p.host, p.port)
        self.transport_id = f"tcp:{_fmt(h.host, h.port)}>{_fmt(p.host, p.port)}#{next(_ids)}"
        self.connected = True
        t.bufferSize = self.owner.max_write_buffer  # Twisted pauses us beyond this
        t.registerProducer(self, True)
        self.owner._made(self)

    def dataReceived(self, data: bytes) -> None:  # noqa: N802
        try:
            frames = self.decoder.feed(data)
        except ValueError:
            self.protocol_errors += 1
            self._lost_reason = "protocol_error"
            self.close()
            return
        receive = self.receiver.datagramReceived
        for f in frames:
            receive(self, f)

    def connectionLost(self, reason: Any = None) -> None:  # noqa: N802
        self.connected = False
        self.owner._lost(self)
        if not self._reported:
            self._reported = True
            why = self._lost_reason
            if why == "closed" and reason is not None and "ConnectionLost" in repr(reason.type):
                why = "reset"
            self.receiver.transportLost(self, why)

    # IPushProducer: Twisted tells us when its write buffer is full --------------------
    def pauseProducing(self) -> None:  # noqa: N802
        self.paused = True

    def resumeProducing(self) -> None:  # noqa: N802
        self.paused = False

    def stopProducing(self) -> None:  # noqa: N802
        self.paused = True

    # ITransport ----------------------------------------------------------------
    def send(self, data: bytes) -> None:
        if not self.connected or self.paused or not 0 < len(data) <= self.max_frame:
            self.send_errors += 1
            return
        self.transport.write(_LEN.pack(len(data)) + data)  # type: ignore[union-attr]

    def close(self) -> None:
        if self.connected:
            self.connected = False
            self.transport.loseConnection()  # type: ignore[union-attr]

    def __repr__(self) -> str:
        return f"<TCPPath {self.transport_id}>"


class _ServerFactory(Factory):
    def __init__(self, listener: TCPListener) -> None:
        self.listener = listener

    def buildProtocol(self, addr: Any) -> Protocol | None:  # noqa: N802
        lst = self.listener
        if len(lst.paths) >= lst.max_connections:
            lst.refused += 1
            return None
        return TCPPath(lst, lst.receiver, lst.max_frame)


@implementer(IListener)
class TCPListener:
    def __init__(
        self, reactor: Any, host: str, port: int, receiver: Any, opts: TCPTransportFactory
    ) -> None:
        self.receiver = receiver
        self.max_connections = opts.max_connections
        self.max_frame = opts.max_frame
        self.buffer_bytes = opts.buffer_bytes
        self.max_write_buffer = opts.max_write_buffer
        self.paths: set[TCPPath] = set()
        self.refused = 0
        self.port = reactor.listenTCP(port, _ServerFactory(self), interface=host)
        h = self.port.getHost()
        self.local_address = (h.host, h.port)

    def _made(self, path: TCPPath) -> None:
        self.paths.add(path)

    def _lost(self, path: TCPPath) -> None:
        self.paths.discard(path)

    def close(self) -> defer.Deferred[None]:
        for path in list(self.paths):
            path.close()
        return defer.maybeDeferred(self.port.stopListening)


class _Connector(ClientFactory):
    def __init__(self, owner: TCPTransportFactory, receiver: Any, remote: tuple[str, int]) -> None:
        self.owner = owner
        self.receiver = receiver
        self.remote = remote
        self.buffer_bytes = owner.buffer_bytes
        self.max_write_buffer = owner.max_write_buffer
        self.d: defer.Deferred[TCPPath] = defer.Deferred()

    def buildProtocol(self, addr: Any) -> Protocol:  # noqa: N802
        return TCPPath(self, self.receiver, self.owner.max_frame)

    def _made(self, path: TCPPath) -> None:
        if not self.d.called:
            self.d.callback(path)

    def _lost(self, path: TCPPath) -> None:
        pass

    def clientConnectionFailed(self, connector: Any, reason: Any) -> None:  # noqa: N802
        if not self.d.called:
            host, port = self.remote
            self.d.errback(
                ConnectionError(
                    f"cannot connect to tcp {_fmt(host, port)}: {reason.getErrorMessage()}"
                )
            )


@implementer(ITransportFactory)
class TCPTransportFactory:
    """``tcp`` plugin. Options: max_connections, max_frame, buffer_bytes, connect_timeout_s,
    max_write_buffer (beyond it, datagrams are dropped and counted, never queued)."""

    kind = "tcp"

    def __init__(
        self,
        max_connections: int = 65536,
        max_frame: int = 65535,
        buffer_bytes: int = 4 * 1024 * 1024,
        connect_timeout_s: int = 5,
        max_write_buffer: int = 1024 * 1024,
    ) -> None:
        for name, v, lo, hi in (
            ("max_connections", max_connections, 1, 10_000_000),
            ("max_frame", max_frame, 64, 65535),
            ("buffer_bytes", buffer_bytes, 4096, 1 << 30),
            ("connect_timeout_s", connect_timeout_s, 1, 300),
            ("max_write_buffer", max_write_buffer, 65536, 1 << 30),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"tcp: {name} must be an integer in {lo}..{hi}, got {v!r}")
        self.max_connections = max_connections
        self.max_frame = max_frame
        self.buffer_bytes = buffer_bytes
        self.connect_timeout_s = connect_timeout_s
        self.max_write_buffer = max_write_buffer

    def listen(self, reactor: Any, host: str, port: int, receiver: Any) -> TCPListener:
        try:
            return TCPListener(reactor, host, port, receiver, self)
        except CannotListenError as e:
            err = e.socketError
            raise OSError(
                getattr(err, "errno", None) or 98,
                f"cannot listen on tcp {host}:{port}: {getattr(err, 'strerror', None) or err}",
            ) from None

    def connect(
        self, reactor: Any, remote: tuple[str, int], receiver: Any, local: Any = None
    ) -> defer.Deferred[TCPPath]:
        f = _Connector(self, receiver, remote)
        reactor.connectTCP(
            remote[0], remote[1], f, timeout=self.connect_timeout_s, bindAddress=local
        )
        return f.d
