"""
The built-in TCP transport (plugin name ``tcp``): for networks where UDP is blocked.

Each datagram travels as one frame: a 2-byte big-endian length, then the bytes. A zero or
oversized length is a protocol error: the connection is closed and counted. One TCP
connection is one path (one :class:`~jumping.interfaces.ITransport`).

Unauthenticated connections are bounded: at most ``max_unauthenticated`` at once (more are
closed at once, counted), each closed unless the node authenticated a packet on it
(``confirm()``) within ``handshake_timeout_s``; any connection silent for
``idle_timeout_s`` is closed. Only then are the ``max_connections`` slots at stake.

A VPN must not queue without bound inside TCP (TCP-over-TCP meltdown): when the kernel
buffer and Twisted's write buffer are full the transport is paused by Twisted's producer
mechanism, and while paused ``send`` drops the datagram and counts it, as a full network
queue would.
"""

from __future__ import annotations

import itertools
import socket
import struct
from typing import TYPE_CHECKING, Any

from twisted.internet import defer
from twisted.internet.error import CannotListenError
from twisted.internet.interfaces import IPushProducer
from twisted.internet.protocol import ClientFactory, Factory, Protocol
from zope.interface import implementer

from jumping.interfaces import IListener, IProvisionalPath, ITransport, ITransportFactory

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


@implementer(ITransport, IProvisionalPath, IPushProducer)
class TCPPath(Protocol):
    kind = "tcp"

    def __init__(
        self, owner: Any, receiver: Any, max_frame: int, provisional: bool = False
    ) -> None:
        self.owner = owner
        #: a listener's connection: True until the node authenticated a packet on it
        self.provisional = provisional
        self.last_rx = 0.0
        self.receiver = receiver
        self.decoder = FrameDecoder(max_frame)
        self.max_frame = max_frame
        #: a bool (twisted's Protocol has an int): ITransport.connected
        self.connected: bool = False
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
        self.last_rx = self.owner.clock()
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

    # IProvisionalPath ------------------------------------------------------------
    def confirm(self) -> None:
        if self.provisional:
            self.provisional = False
            self.owner._confirmed(self)

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

    def abort(self) -> None:
        """Close at once, without waiting for buffered data (a timed-out connection)."""
        self.connected = False
        if self.transport is not None:
            self.transport.abortConnection()  # type: ignore[attr-defined]

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
        if len(lst.unauthenticated) >= lst.max_unauthenticated:
            lst.refused_unauthenticated += 1
            return None
        return TCPPath(lst, lst.receiver, lst.max_frame, provisional=True)


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
        self.reactor = reactor
        self.clock = reactor.seconds
        self.max_unauthenticated = opts.max_unauthenticated
        self.handshake_timeout_s = opts.handshake_timeout_s
        self.idle_timeout_s = opts.idle_timeout_s
        self.paths: set[TCPPath] = set()
        #: connections the node has not authenticated a packet on yet, with their deadline
        self.unauthenticated: dict[TCPPath, Any] = {}
        self.refused = 0
        self.refused_unauthenticated = 0
        self.handshake_timeouts = 0
        self.idle_timeouts = 0
        self.port = reactor.listenTCP(port, _ServerFactory(self), interface=host)
        h = self.port.getHost()
        self.local_address = (h.host, h.port)
        self._sweep = reactor.callLater(self.idle_timeout_s / 4, self._idle_sweep)

    def _made(self, path: TCPPath) -> None:
        self.paths.add(path)
        path.last_rx = self.clock()
        if path.provisional:
            self.unauthenticated[path] = self.reactor.callLater(
                self.handshake_timeout_s, self._handshake_timeout, path
            )

    def _confirmed(self, path: TCPPath) -> None:
        timer = self.unauthenticated.pop(path, None)
        if timer is not None and timer.active():
            timer.cancel()

    def _handshake_timeout(self, path: TCPPath) -> None:
        if self.unauthenticated.pop(path, None) is not None:
            self.handshake_timeouts += 1
            path._lost_reason = "handshake_timeout"
            path.abort()

    def _idle_sweep(self) -> None:
        now = self.clock()
        for path in [p for p in self.paths if now - p.last_rx >= self.idle_timeout_s]:
            self.idle_timeouts += 1
            path._lost_reason = "idle_timeout"
            path.abort()
        self._sweep = self.reactor.callLater(self.idle_timeout_s / 4, self._idle_sweep)

    def _lost(self, path: TCPPath) -> None:
        self.paths.discard(path)
        timer = self.unauthenticated.pop(path, None)
        if timer is not None and timer.active():
            timer.cancel()

    def close(self) -> defer.Deferred[None]:
        if self._sweep.active():
            self._sweep.cancel()
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
        self.clock = _no_clock
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


def _no_clock() -> float:
    return 0.0


@implementer(ITransportFactory)
class TCPTransportFactory:
    """``tcp`` plugin. Options: max_connections, max_frame, buffer_bytes, connect_timeout_s,
    max_write_buffer (beyond it, datagrams are dropped and counted, never queued), and the
    bounds on unauthenticated connections: max_unauthenticated, handshake_timeout_s,
    idle_timeout_s."""

    kind = "tcp"

    def __init__(
        self,
        max_connections: int = 65536,
        max_frame: int = 65535,
        buffer_bytes: int = 4 * 1024 * 1024,
        connect_timeout_s: int = 5,
        max_write_buffer: int = 1024 * 1024,
        max_unauthenticated: int = 1024,
        handshake_timeout_s: int = 10,
        idle_timeout_s: int = 180,
    ) -> None:
        for name, v, lo, hi in (
            ("max_connections", max_connections, 1, 10_000_000),
            ("max_frame", max_frame, 64, 65535),
            ("buffer_bytes", buffer_bytes, 4096, 1 << 30),
            ("connect_timeout_s", connect_timeout_s, 1, 300),
            ("max_write_buffer", max_write_buffer, 65536, 1 << 30),
            ("max_unauthenticated", max_unauthenticated, 1, 10_000_000),
            ("handshake_timeout_s", handshake_timeout_s, 1, 3600),
            ("idle_timeout_s", idle_timeout_s, 1, 86400),
        ):
            if isinstance(v, bool) or not isinstance(v, int) or not lo <= v <= hi:
                raise ValueError(f"tcp: {name} must be an integer in {lo}..{hi}, got {v!r}")
        self.max_connections = max_connections
        self.max_frame = max_frame
        self.buffer_bytes = buffer_bytes
        self.connect_timeout_s = connect_timeout_s
        self.max_write_buffer = max_write_buffer
        self.max_unauthenticated = max_unauthenticated
        self.handshake_timeout_s = handshake_timeout_s
        self.idle_timeout_s = idle_timeout_s

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


if TYPE_CHECKING:  # the path is what the core takes it for (jumping/core/pathhandle.py)
    from jumping.core.pathhandle import ProvisionalPath

    def _path(path: TCPPath) -> ProvisionalPath:
        return path
