"""
The gateway side: one UDP socket, QUIC connections found by connection ID, and one
:class:`QuicServerPath` (an ``ITransport``) per connection and client address.

A QUIC handshake authenticates the gateway, not the client: a connection is unauthenticated
input until the node has authenticated a Jumping packet (Noise) on it. Its DATAGRAM frames
reach the node on *provisional* paths (``IProvisionalPath``): a fresh object per datagram,
in no table, until the node calls ``confirm()`` (the core's ``ConfirmPath``); only then is
the path kept for its address, and the connection counts as authenticated. Every table here
has a bound and a counter (``drops``):

- connections: ``max_connections`` in all, ``max_per_source`` per client address prefix
  (IPv4 /32, IPv6 /64), ``max_handshakes`` not yet through their TLS handshake (each must
  finish within ``connect_timeout_s``), ``max_unauthenticated`` with no confirmed path yet
  (each closed unless one is confirmed within ``handshake_timeout_s``); under handshake
  load (``retry = "auto"``: a quarter of ``max_handshakes`` in flight) new clients must
  first prove their address with a stateless Retry (RFC 9000 section 8.1), so spoofed
  floods create no state;
- confirmed path objects: at most :data:`PATHS_PER_CONNECTION` per connection, the least
  recently confirmed forgotten first (``paths_evicted``); an address that never
  authenticated can never push one out.

Rebinding: when a connection's packets start arriving from another address (NAT
rebinding, a new client address), aioquic validates that address itself (PATH_CHALLENGE,
3x anti-amplification) and moves its sending there; the DATAGRAM frames from the new
address reach the node through a *new*, provisional path object with a new
``transport_id``, so Jumping's core sees a rebinding exactly as on UDP: it challenges the
new path and follows it only once the old one has gone silent, with a
``TRANSPORT_SWITCH`` event.
"""

from __future__ import annotations

import ipaddress
import itertools
import os
from collections import Counter, OrderedDict
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from aioquic.buffer import Buffer
from aioquic.quic import events
from aioquic.quic.configuration import QuicConfiguration
from aioquic.quic.connection import NetworkAddress, QuicConnection
from aioquic.quic.packet import (
    QuicPacketType,
    encode_quic_retry,
    encode_quic_version_negotiation,
    pull_quic_header,
)
from aioquic.quic.retry import QuicRetryTokenHandler
from twisted.internet import defer
from twisted.internet.error import CannotListenError
from zope.interface import implementer

from jumping.interfaces import (
    IBatchDatagramReceiver,
    IBatchTransport,
    IListener,
    IPathMTU,
    IProvisionalPath,
)
from jumping_quic.framing import DatagramFraming
from jumping_quic.options import SMALLEST_MAX_DATAGRAM_SIZE, QuicOptions
from jumping_quic.pump import CID_LENGTH, Pump
from jumping_quic.sock import fmt, open_port

PATHS_PER_CONNECTION = 4
_ids = itertools.count(1)


def _source_key(addr: NetworkAddress) -> bytes:
    ip = ipaddress.ip_address(addr[0])
    if isinstance(ip, ipaddress.IPv6Address):
        return ip.ipv4_mapped.packed if ip.ipv4_mapped else ip.packed[:8]  # /64
    return ip.packed


@implementer(IBatchTransport, IPathMTU, IProvisionalPath)
class QuicServerPath:
    """One client address of one QUIC connection (gateway side)."""

    kind = "quic"

    def __init__(
        self, conn: _ServerConnection, addr: NetworkAddress, provisional: bool = True
    ) -> None:
        self._c = conn
        self._open = True
        #: True until the node authenticated a packet on it (IProvisionalPath)
        self.provisional = provisional
        self.local_address = conn.listener.local_address
        self.remote_address = (addr[0], addr[1])
        self._addr = addr
        self.transport_id = f"quic:{fmt(self.local_address)}>{fmt(addr)}#{next(_ids)}"
        self.send_errors = 0

    @property
    def connected(self) -> bool:
        return self._open and not self._c.closed

    def confirm(self) -> None:
        if self.provisional and self.connected:
            self.provisional = False
            self._c.confirmed(self)

    @property
    def max_datagram(self) -> int:
        return self._c.pump.max_datagram

    def send(self, data: bytes) -> None:
        if not self.connected or not self._c.pump.queue(data):
            self.send_errors += 1
            return
        self._c.pump.flush_soon()

    def send_batch(self, datagrams: list[bytes]) -> None:
        if not self.connected:
            self.send_errors += len(datagrams)
            return
        queue = self._c.pump.queue
        for d in datagrams:
            if not queue(d):
                self.send_errors += 1
        self._c.pump.flush()

    def close(self) -> None:
        if self.connected:
            self._open = False
            paths = self._c.paths
            if paths.get(self._addr) is self:
                del paths[self._addr]
            # the connection ends with the last path the node holds: a provisional one on a
            # connection nothing authenticated on yet, or its last confirmed one
            if not any(p.connected for p in paths.values()):
                self._c.close("closed")

    def __repr__(self) -> str:
        return f"<QuicServerPath {self.transport_id}>"


class _ServerConnection:
    """A QUIC connection of the listener, its CIDs and path objects."""

    def __init__(
        self, listener: QuicListener, conn: QuicConnection, addr: NetworkAddress, cids: list[bytes]
    ) -> None:
        self.listener = listener
        self.conn = conn
        self.source = _source_key(addr)
        self.cids = set(cids)
        #: confirmed paths by client address, least recently confirmed first
        self.paths: OrderedDict[NetworkAddress, QuicServerPath] = OrderedDict()
        self.handshaking = True
        #: no path confirmed yet (counted in listener.unauthenticated)
        self.unauthenticated = True
        self.closed = False
        self.pump = Pump(
            listener.reactor, conn, listener.framing, listener.sendto, self._datagram,
            self._event, listener.opts.max_queue, listener.opts.max_datagram_size,
        )  # fmt: skip
        self.deadline = listener.reactor.callLater(
            listener.opts.connect_timeout_s, self._handshake_deadline
        )
        self.auth_deadline = listener.reactor.callLater(
            listener.opts.handshake_timeout_s, self._auth_deadline
        )

    def _datagram(self, data: bytes, addr: NetworkAddress | None) -> None:
        if addr is None:
            addr = self.conn.get_peer_address()
            if addr is None:
                return
        path = self.paths.get(addr)
        if path is None:
            self.listener.drops["provisional_paths"] += 1
            path = QuicServerPath(self, addr)
        self.listener.deliver(path, data)

    def confirmed(self, path: QuicServerPath) -> None:
        """The node authenticated a packet on ``path``: keep it for its address (the first
        confirmed path of an address wins, as on UDP)."""
        paths = self.paths
        if path._addr in paths:
            return
        while len(paths) >= PATHS_PER_CONNECTION:
            _addr, oldest = paths.popitem(last=False)
            oldest._open = False
            self.listener.drops["paths_evicted"] += 1
            self.listener.lost(oldest, "evicted")
        paths[path._addr] = path
        if self.unauthenticated:
            self.unauthenticated = False
            self.listener.unauthenticated -= 1
            if self.auth_deadline.active():
                self.auth_deadline.cancel()

    def _event(self, event: events.QuicEvent) -> None:
        t = type(event)
        if t is events.HandshakeCompleted:
            self._handshake_done()
        elif t is events.ConnectionIdIssued:
            self.cids.add(event.connection_id)  # type: ignore[attr-defined]
            self.listener.cids[event.connection_id] = self  # type: ignore[attr-defined]
        elif t is events.ConnectionIdRetired:
            cid = event.connection_id  # type: ignore[attr-defined]
            self.cids.discard(cid)
            if self.listener.cids.get(cid) is self:
                del self.listener.cids[cid]
        elif t is events.ConnectionTerminated:
            code = event.error_code  # type: ignore[attr-defined]
            phrase = event.reason_phrase  # type: ignore[attr-defined]
            self._ended(
                "closed" if code == 0 else ("idle_timeout" if "Idle" in phrase else "reset")
            )
        elif t is events.StreamDataReceived or t is events.StreamReset:
            # this ALPN carries no streams: a peer that opens one is not ours
            self.listener.drops["stream_opened"] += 1
            self.close("protocol_error", 0x0A, "no streams on this ALPN")  # PROTOCOL_VIOLATION

    def _handshake_done(self) -> None:
        if not self.handshaking:
            return
        self.handshaking = False
        self.listener.half_open -= 1
        if self.deadline.active():
            self.deadline.cancel()
        self.pump.update_limits()
        if self.pump.max_datagram <= 0:
            self.listener.drops["no_datagram_support"] += 1
            self.close("protocol_error", 0x0A, "DATAGRAM frames are required")

    def _handshake_deadline(self) -> None:
        if self.handshaking and not self.closed:
            self.listener.drops["handshake_timeout"] += 1
            self._ended("handshake_timeout", silent=True)

    def _auth_deadline(self) -> None:
        if self.unauthenticated and not self.closed:
            self.listener.drops["unauthenticated_timeout"] += 1
            self.close("handshake_timeout", 0x0, "no authenticated packet in time")

    def close(self, why: str, code: int = 0, phrase: str = "") -> None:
        if self.closed:
            return
        self.conn.close(error_code=code, reason_phrase=phrase)
        self.pump.flush()  # the CONNECTION_CLOSE goes out now
        self._ended(why)

    def _ended(self, why: str, silent: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        self.pump.stop()
        for t in (self.deadline, self.auth_deadline):
            if t.active():
                t.cancel()
        self.listener.forget(self)
        for p in list(self.paths.values()):
            if p._open or not silent:
                p._open = False
                self.listener.lost(p, why)
        self.paths.clear()


@implementer(IListener)
class QuicListener:
    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        receiver: Any,
        opts: QuicOptions,
        config: QuicConfiguration,
        framing: DatagramFraming,
    ) -> None:
        self.reactor = reactor
        self.receiver = receiver
        self.opts = opts
        self.config = config
        self.framing = framing
        self.batch = IBatchDatagramReceiver.providedBy(receiver)
        self.cids: dict[bytes, _ServerConnection] = {}
        self.connections: set[_ServerConnection] = set()
        self.per_source: Counter[bytes] = Counter()
        self.half_open = 0
        #: connections with no confirmed path yet
        self.unauthenticated = 0
        self.drops: Counter[str] = Counter()
        self._retry = QuicRetryTokenHandler()
        self._rx: dict[QuicServerPath, list[bytes]] = {}
        try:
            self.port = open_port(
                reactor, host, port, self._datagram, self._after_read, opts.buffer_bytes
            )
        except CannotListenError as e:
            err = e.socketError
            raise OSError(
                getattr(err, "errno", None) or 98,
                f"cannot listen on quic {host}:{port}: {getattr(err, 'strerror', None) or err}",
            ) from None
        self.sendto: Callable[[bytes, Any], Any] = self.port.socket.sendto
        bound = self.port.socket.getsockname()
        self.local_address = (bound[0], bound[1])

    # ------------------------------------------------------------------ in
    def _datagram(self, data: bytes, addr: NetworkAddress) -> None:
        try:
            header = pull_quic_header(Buffer(data=data), host_cid_length=CID_LENGTH)
        except Exception:
            self.drops["garbage"] += 1
            return
        c = self.cids.get(header.destination_cid)
        if c is not None:
            c.pump.receive(data, addr)
            return
        if header.packet_type != QuicPacketType.INITIAL or len(data) < SMALLEST_MAX_DATAGRAM_SIZE:
            self.drops["unknown_connection"] += 1
            return
        if header.version not in self.config.supported_versions:
            self.drops["version_negotiation"] += 1
            self._send(
                encode_quic_version_negotiation(
                    source_cid=header.destination_cid,
                    destination_cid=header.source_cid,
                    supported_versions=self.config.supported_versions,
                ),
                addr,
            )
            return
        self._new_connection(data, addr, header)

    def _new_connection(self, data: bytes, addr: NetworkAddress, header: Any) -> None:
        opts = self.opts
        if len(self.connections) >= opts.max_connections:
            self.drops["connections_full"] += 1
            return
        if self.half_open >= opts.max_handshakes:
            self.drops["handshakes_full"] += 1
            return
        if self.unauthenticated >= opts.max_unauthenticated:
            self.drops["unauthenticated_full"] += 1
            return
        try:
            source = _source_key(addr)
        except ValueError:
            self.drops["garbage"] += 1
            return
        if self.per_source[source] >= opts.max_per_source:
            self.drops["source_full"] += 1
            return
        odcid: bytes | None = None
        retry_scid: bytes | None = None
        want_retry = opts.retry == "always" or (
            opts.retry == "auto" and self.half_open >= max(1, opts.max_handshakes // 4)
        )
        now = self.reactor.seconds()
        if header.token:
            try:
                odcid = self._retry.validate_token(
                    address=addr, destination_cid=header.destination_cid, token=header.token,
                    now=now,
                )  # fmt: skip
                retry_scid = header.destination_cid
            except ValueError:
                self.drops["bad_retry_token"] += 1
                return
        elif want_retry:
            scid = os.urandom(CID_LENGTH)
            self.drops["retry_sent"] += 1
            self._send(
                encode_quic_retry(
                    version=header.version, source_cid=scid,
                    destination_cid=header.source_cid,
                    original_destination_cid=header.destination_cid,
                    retry_token=self._retry.create_token(
                        address=addr, original_destination_connection_id=header.destination_cid,
                        retry_source_connection_id=scid, now=now,
                    ),
                ),
                addr,
            )  # fmt: skip
            return
        try:
            conn = QuicConnection(
                configuration=self.config,
                original_destination_connection_id=odcid or header.destination_cid,
                retry_source_connection_id=retry_scid,
            )
        except Exception:
            self.drops["garbage"] += 1
            return
        c = _ServerConnection(self, conn, addr, [header.destination_cid, conn.host_cid])
        self.connections.add(c)
        self.per_source[c.source] += 1
        self.half_open += 1
        self.unauthenticated += 1
        for cid in c.cids:
            self.cids[cid] = c
        c.pump.receive(data, addr)

    def deliver(self, path: QuicServerPath, data: bytes) -> None:
        if self.batch:
            run = self._rx.get(path)
            if run is None:
                self._rx[path] = [data]
            else:
                run.append(data)
        else:
            self.receiver.datagramReceived(path, data)

    def _after_read(self) -> None:
        """The run read in one wake-up: each path's datagrams go to the receiver at once."""
        if self._rx:
            rx, self._rx = self._rx, {}
            for path, run in rx.items():
                if path.connected:
                    if len(run) == 1:
                        self.receiver.datagramReceived(path, run[0])
                    else:
                        self.receiver.datagramsReceived(path, run)

    def _send(self, data: bytes, addr: NetworkAddress) -> None:
        try:
            self.sendto(data, addr)
        except OSError:
            self.drops["send_failed"] += 1

    # ------------------------------------------------------------------ counters
    # the names the node's metrics read from every listener (jumping_listener_*)
    @property
    def paths(self) -> list[QuicServerPath]:
        """The confirmed paths of all connections."""
        return [p for c in self.connections for p in c.paths.values()]

    @property
    def provisional_paths(self) -> int:
        return self.drops["provisional_paths"]

    @property
    def evicted(self) -> int:
        return self.drops["paths_evicted"]

    @property
    def refused(self) -> int:
        d = self.drops
        return d["connections_full"] + d["handshakes_full"] + d["source_full"]

    @property
    def refused_unauthenticated(self) -> int:
        return self.drops["unauthenticated_full"]

    @property
    def handshake_timeouts(self) -> int:
        return self.drops["handshake_timeout"] + self.drops["unauthenticated_timeout"]

    # ------------------------------------------------------------------ bookkeeping
    def lost(self, path: QuicServerPath, why: str) -> None:
        self._rx.pop(path, None)
        try:
            self.receiver.transportLost(path, why)
        except Exception:
            self.drops["receiver_error"] += 1

    def forget(self, c: _ServerConnection) -> None:
        if c in self.connections:
            self.connections.discard(c)
            self.per_source[c.source] -= 1
            if self.per_source[c.source] <= 0:
                del self.per_source[c.source]
            if c.handshaking:
                self.half_open -= 1
                c.handshaking = False
            if c.unauthenticated:
                self.unauthenticated -= 1
                c.unauthenticated = False
        for cid in c.cids:
            if self.cids.get(cid) is c:
                del self.cids[cid]

    def close(self) -> defer.Deferred[None]:
        for c in list(self.connections):
            c.close("closed")
        return defer.maybeDeferred(self.port.stopListening)


if TYPE_CHECKING:  # the path is what the core takes it for (jumping/core/pathhandle.py)
    from jumping.core.pathhandle import ProvisionalPath

    def _path(path: QuicServerPath) -> ProvisionalPath:
        return path
