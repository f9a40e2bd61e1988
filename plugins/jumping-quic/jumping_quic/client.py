"""
The client side: one UDP socket of its own and one QUIC connection per path.

The socket is *connected* to the gateway endpoint, so the kernel drops datagrams from
anyone else and an ICMP "port unreachable" fails the path at once instead of after the
connect timeout. ``connect`` fires once the TLS handshake is done and the gateway's
certificate passed the pin (or trust-store) check, and the gateway accepts DATAGRAM frames
of our ALPN; before that nothing of Jumping's is sent.
"""

from __future__ import annotations

import errno
import itertools
import os
from typing import TYPE_CHECKING, Any

from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from zope.interface import implementer

from jumping.interfaces import IBatchDatagramReceiver, IBatchTransport, IPathMTU
from jumping.tls import spki_pin
from jumping_quic import glue
from jumping_quic.framing import DatagramFraming
from jumping_quic.options import QuicOptions
from jumping_quic.pump import Pump
from jumping_quic.sock import fmt, open_port

_ids = itertools.count(1)


class QuicConnectError(ConnectionError):
    """The path could not be opened; the message says why, for the operator."""


@implementer(IBatchTransport, IPathMTU)
class QuicClientPath:
    kind = "quic"

    def __init__(
        self,
        reactor: Any,
        remote: tuple[str, int],
        receiver: Any,
        local: tuple[str, int] | None,
        opts: QuicOptions,
        config: QuicConfiguration,
        framing: DatagramFraming,
        failures: Any,
    ) -> None:
        self.reactor = reactor
        self.receiver = receiver
        self.opts = opts
        self.framing = framing
        self.failures = failures
        self.batch = IBatchDatagramReceiver.providedBy(receiver)
        self.remote_address = (remote[0], remote[1])
        self.connected = False
        self.send_errors = 0
        self.before_ready = 0
        self._closed = False
        self._rx: list[bytes] = []
        self.ready: defer.Deferred[QuicClientPath] = defer.Deferred()
        host, lport = local if local else ("", 0)
        try:
            self.port = open_port(
                reactor, host, lport, self._udp, self._after_read, opts.buffer_bytes,
                refused=self._refused,
            )  # fmt: skip
        except CannotListenError as e:
            raise OSError(f"quic: cannot bind {host}:{lport}: {e.socketError}") from None
        try:
            self.port.connect(remote[0], remote[1])
        except Exception:
            self.port.stopListening()
            raise
        self.port.on_lost = self._socket_lost
        self._send = self.port.socket.send
        bound = self.port.socket.getsockname()
        self.local_address = (bound[0], bound[1])
        self.transport_id = f"quic:{fmt(self.local_address)}>{fmt(remote)}#{next(_ids)}"
        self.conn = QuicConnection(configuration=config)
        self.pump = Pump(
            reactor, self.conn, framing, self._sendto, self._datagram, self._event,
            opts.max_queue, opts.max_datagram_size,
        )  # fmt: skip
        self._deadline = reactor.callLater(opts.connect_timeout_s, self._timeout)
        self.conn.connect(self.remote_address, reactor.seconds())
        self.pump.flush()

    # ------------------------------------------------------------------ ITransport
    @property
    def max_datagram(self) -> int:
        return self.pump.max_datagram

    def send(self, data: bytes) -> None:
        if not self.connected or not self.pump.queue(data):
            self.send_errors += 1
            return
        self.pump.flush_soon()

    def send_batch(self, datagrams: list[bytes]) -> None:
        if not self.connected:
            self.send_errors += len(datagrams)
            return
        queue = self.pump.queue
        for d in datagrams:
            if not queue(d):
                self.send_errors += 1
        self.pump.flush()

    def close(self) -> None:
        if self._closed:
            return
        if not self.ready.called:
            self._fail("closed before the handshake completed", "closed")
            return
        self.conn.close(reason_phrase="closed")
        self.pump.flush()
        self._gone("closed")

    # ------------------------------------------------------------------ socket
    def _sendto(self, data: bytes, addr: NetworkAddress) -> None:
        try:
            self._send(data)
        except OSError as e:
            if e.errno in (errno.EINVAL, errno.EADDRNOTAVAIL) and not self._closed:
                # our source address is gone (the host moved to another network): this
                # connection is never migrated from here; the path ends and the node opens
                # a new one, a jump Jumping decides and reports like any other
                self.reactor.callLater(0, self._gone, "local_address_gone")
            raise

    def _udp(self, data: bytes, addr: Any) -> None:
        self.pump.receive(data, self.remote_address)

    def _datagram(self, data: bytes, addr: NetworkAddress | None) -> None:
        if not self.connected:
            self.before_ready += 1  # not checked yet: never handed on
            return
        if self.batch:
            self._rx.append(data)
        else:
            self.receiver.datagramReceived(self, data)

    def _after_read(self) -> None:
        if self._rx:
            run, self._rx = self._rx, []
            if not self.connected:
                return
            if len(run) == 1:
                self.receiver.datagramReceived(self, run[0])
            else:
                self.receiver.datagramsReceived(self, run)

    def _socket_lost(self, err: int) -> None:
        """The reactor dropped the socket on an error it reported (a connected UDP socket:
        an ICMP error such as port unreachable, which SO_ERROR holds)."""
        if err == errno.ECONNREFUSED:
            self._refused()
        elif self.ready.called:
            self._gone("socket_error")
        else:
            why = os.strerror(err) if err else "socket error"
            self._fail(why, "socket_error")

    def _refused(self) -> None:
        if self.ready.called:
            self._gone("refused")
        else:
            self._fail("connection refused (nothing listens on that UDP port)", "refused")

    # ------------------------------------------------------------------ QUIC events
    def _event(self, event: events.QuicEvent) -> None:
        t = type(event)
        if t is events.HandshakeCompleted:
            self._handshake_done(event)  # type: ignore[arg-type]
        elif t is events.ConnectionTerminated:
            phrase = event.reason_phrase or f"error 0x{event.error_code:x}"  # type: ignore[attr-defined]
            if not self.ready.called:
                self._fail(f"the QUIC handshake failed: {phrase}", "tls_error", local=False)
            else:
                self._gone("closed" if event.error_code == 0 else "reset")  # type: ignore[attr-defined]
        elif t is events.StreamDataReceived or t is events.StreamReset:
            self.failures["stream_opened"] += 1
            self.conn.close(error_code=0x0A, reason_phrase="no streams on this ALPN")
            self.pump.flush()
            self._gone("protocol_error")

    def _handshake_done(self, event: events.HandshakeCompleted) -> None:
        if self.ready.called:
            return
        if event.alpn_protocol != self.framing.alpn:
            self._fail(
                f"the gateway does not speak {self.framing.alpn} (ALPN {event.alpn_protocol!r})",
                "alpn",
            )
            return
        if self.opts.pin_sha256:
            cert = glue.peer_certificate(self.conn)
            pin = spki_pin(cert) if cert is not None else None
            if pin not in self.opts.pin_sha256:
                self._fail(
                    f"the gateway's certificate has pin {pin}, not one of pin_sha256 (a wrong "
                    "gateway, or its key changed; `jumpctl tls-pin` on its certificate prints "
                    "the pin)",
                    "pin_mismatch",
                )
                return
        self.pump.update_limits()
        if self.pump.max_datagram <= 0:
            self._fail("the gateway accepts no QUIC DATAGRAM frames", "no_datagram_support")
            return
        self.connected = True
        if self._deadline.active():
            self._deadline.cancel()
        self.ready.callback(self)

    def _timeout(self) -> None:
        if not self.ready.called:
            self._fail(
                f"no QUIC handshake within {self.opts.connect_timeout_s} s", "handshake_timeout"
            )

    # ------------------------------------------------------------------ endings
    def _fail(self, why: str, counter: str, local: bool = True) -> None:
        """The path never opened: ``connect``'s Deferred fails with ``why``."""
        if self._closed:
            return
        self.failures[counter] += 1
        if local:
            self.conn.close(error_code=0x100 + 42 if counter == "pin_mismatch" else 0,
                            reason_phrase=counter)  # fmt: skip
            self.pump.flush()
        self._shutdown()
        if not self.ready.called:
            self.ready.errback(
                QuicConnectError(f"cannot connect to quic {fmt(self.remote_address)}: {why}")
            )

    def _gone(self, why: str) -> None:
        """An open path ended (closed here or by the gateway, idle timeout, socket error)."""
        if self._closed:
            return
        was = self.ready.called
        self._shutdown()
        if not was:
            self.ready.errback(
                QuicConnectError(f"cannot connect to quic {fmt(self.remote_address)}: {why}")
            )
            return
        self.receiver.transportLost(self, why)

    def _shutdown(self) -> None:
        self._closed = True
        self.connected = False
        self._rx = []
        self.pump.stop()
        if self._deadline.active():
            self._deadline.cancel()
        self.port.on_lost = None
        self.port.stopListening()

    def __repr__(self) -> str:
        return f"<QuicClientPath {self.transport_id}>"


if TYPE_CHECKING:  # the path is what the core takes it for (jumping/core/pathhandle.py)
    from jumping.core.pathhandle import PathHandle

    def _path(path: QuicClientPath) -> PathHandle:
        return path
