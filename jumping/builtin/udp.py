"""
The built-in UDP transport (plugin name ``udp``).

A gateway listener is one UDP socket; every remote address it hears from gets its own
:class:`UDPPath` (an :class:`~jumping.interfaces.ITransport`). A datagram from an address
the listener does not know yet comes on a *provisional* path that is in no table: only once
the node authenticated a packet on it (``confirm()``) is it kept, in a table of at most
``max_paths`` entries, least recently used forgotten first (counted, and the node told).
So spoofed or junk sources cost one short-lived object each and can never push out the
path of a live session. A client path is a UDP socket of its own, so that each path has its
own 4-tuple and a path can be bound to a chosen source address.

Sending goes straight to the socket (``sendto``/``send``): no Twisted write buffering, no
per-packet allocation beyond the datagram itself. Socket buffers are raised to
``buffer_bytes`` (with ``SO_*BUFFORCE`` when running as root; no global sysctl is touched).

Batching (Linux UDP segmentation offload, ``gso = true``, the default): paths provide
:class:`~jumping.interfaces.IBatchTransport`; ``send_batch`` hands a run of equal-size
datagrams to the kernel in one ``sendmsg`` with ``UDP_SEGMENT``, which walks the UDP/IP
stack once for the whole run (the datagrams on the wire are unchanged). Sockets also ask for
``UDP_GRO``, so a run that arrives whole is read with one ``recvmsg`` and split at the
segment size the kernel reports. Where the kernel refuses either option, the path falls
back to one system call per datagram, counted in ``gso_fallbacks``.
"""

from __future__ import annotations

import errno
import itertools
import os
import socket
import sys
from typing import TYPE_CHECKING, Any

from twisted.internet import defer, udp
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import DatagramProtocol
from twisted.logger import Logger
from zope.interface import implementer

from jumping.interfaces import (
    IBatchDatagramReceiver,
    IBatchTransport,
    IListener,
    IProvisionalPath,
    ITransportFactory,
)

_SO_RCVBUFFORCE = getattr(socket, "SO_RCVBUFFORCE", 33)
_SO_SNDBUFFORCE = getattr(socket, "SO_SNDBUFFORCE", 32)
_ids = itertools.count(1)
#: entries the path table's eviction sweep reads at once (UDPListener._insert)
_SWEEP_BATCH = 256
_log = Logger()
_READ_AGAIN = (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR, errno.EMSGSIZE, errno.ECONNREFUSED)
SOL_UDP = 17
UDP_SEGMENT = 103  # linux/udp.h: cmsg (u16) = segment size of a GSO send
UDP_GRO = 104  # linux/udp.h: sockopt; cmsg (int) = segment size of a coalesced read
#: kernel limits of one GSO send (UDP_MAX_SEGMENTS is 64 on older kernels)
GSO_MAX_SEGMENTS = 64
GSO_MAX_BYTES = 65000
_GRO_CMSG = socket.CMSG_SPACE(4)
_BYTEORDER = sys.byteorder


#: linux/filter.h, asm-generic/socket.h
_SO_ATTACH_FILTER = 26
_SO_MEMINFO = 55
_SK_MEMINFO_DROPS = 8  # index in SO_MEMINFO's u32 array
#: the one datagram a gateway never needs to read: a client's NAT keepalive under expired
#: keys (a CONTROL header and counter, 16 bytes, no tag; jumping/core/client.py). Without a
#: tag it can never authenticate, so the core could only count it as KEY_EXPIRED; what it
#: is for is the NAT on the way, and that it reached already.
_KEEPALIVE_LEN = 16
_KEEPALIVE_HEAD = (5 << 8) | 1  # MessageType.CONTROL, wire.VERSION (bytes 0-1, big-endian)


def keepalive_filter() -> bytes:
    """A classic BPF socket filter (``SO_ATTACH_FILTER``): drop a UDP datagram of exactly
    ``_KEEPALIVE_LEN`` bytes that starts with a CONTROL header of this version; pass every
    other one whole. A UDP socket's filter sees the UDP header first (8 bytes), then the
    payload. The kernel counts what it drops in the socket's drops (``kernel_drops``)."""
    import struct

    ins = (
        (0x80, 0, 0, 0),                        # A = packet length
        (0x15, 0, 3, 8 + _KEEPALIVE_LEN),       # if A != 8 + 16: pass
        (0x28, 0, 0, 8),                        # A = 16 bits at payload offset 0
        (0x15, 0, 1, _KEEPALIVE_HEAD),          # if A != CONTROL, VERSION: pass
        (0x06, 0, 0, 0),                        # drop
        (0x06, 0, 0, 0xFFFFFFFF),               # pass, whole
    )  # fmt: skip
    return b"".join(struct.pack("HBBI", *i) for i in ins)


def attach_keepalive_filter(sock: socket.socket) -> bool:
    """Attach :func:`keepalive_filter` to ``sock``; False (and the socket unchanged) where
    the kernel refuses it: every keepalive then reaches the core, which counts it."""
    import ctypes
    import struct

    prog = keepalive_filter()
    buf = ctypes.create_string_buffer(prog, len(prog))
    fprog = struct.pack("HL", len(prog) // 8, ctypes.addressof(buf))
    try:
        sock.setsockopt(socket.SOL_SOCKET, _SO_ATTACH_FILTER, fprog)
    except OSError as e:
        _log.warn("udp: socket filter for expired-key keepalives refused ({why}); the core "
                  "counts them instead", why=e.strerror)  # fmt: skip
        return False
    return True


def kernel_drops(sock: socket.socket) -> int:
    """Datagrams the kernel dropped for ``sock`` (``SO_MEMINFO``): a full receive buffer,
    or the socket filter; 0 where the kernel does not say."""
    import struct

    try:
        raw = sock.getsockopt(socket.SOL_SOCKET, _SO_MEMINFO, 9 * 4)
    except OSError:
        return 0
    return int(struct.unpack_from("9I", raw)[_SK_MEMINFO_DROPS])


class LeanPort(udp.Port):
    """``udp.Port`` with a tighter read loop: the datagrams the socket holds read in one
    call (``recv_burst``: jumping/service/_fastio.c, or its twin ``_recv_burst_py``), then
    one call per datagram straight into our handler (Twisted's generic loop adds a protocol
    dispatch and its own bookkeeping per datagram, and ends on a Python exception). Up to
    ``maxThroughput`` bytes per reactor wake-up."""

    #: the reactor calls ``doRead`` without Twisted's legacy log context
    #: (jumping/service/dispatch.py)
    lean_dispatch = True
    handler: Any = None
    handler_many: Any = None
    gro = False
    handler_errors = 0
    #: a read pass ends once this many datagrams of it came from unauthenticated sources
    #: (the listener counts them in ``unknown``), so that the reactor serves the TUN device
    #: and the timers between two slices of a flood; 0: no bound (client sockets)
    unknown_per_read = 0
    unknown = 0
    #: read passes ended by that bound
    yielded_reads = 0
    #: reads that returned a coalesced run of several datagrams
    coalesced_reads = 0
    #: the receiver's IInitiationGate (gateway listeners with the C read loop), or None
    gate_keeper: Any = None
    _fresh: socket.socket | None = None

    def createInternetSocket(self) -> socket.socket:  # noqa: N802
        self._fresh = skt = super().createInternetSocket()
        return skt

    def _bindSocket(self) -> None:
        """Twisted's ``udp.Port`` leaves the socket of a failed bind to the garbage
        collector (its traceback keeps it open); close it now: nothing is left open."""
        try:
            super()._bindSocket()
        except CannotListenError:
            if self._fresh is not None:
                self._fresh.close()
            raise
        finally:
            self._fresh = None

    def doRead(self) -> None:  # noqa: N802
        keeper = self.gate_keeper
        gate = keeper.arm() if keeper is not None else None
        if gate is None:
            self._read(None)
            return
        try:
            self._read(gate)
        finally:
            keeper.done(gate)

    def _read(self, gate: Any) -> None:
        """One read pass; ``gate``: the receiver's initiation gate (``recv_burst`` hands it
        what it refuses: those count as unauthenticated datagrams of the pass)."""
        handler = self.handler
        many = self.handler_many
        size = self.maxPacketSize
        cap = self.maxThroughput
        limit = self.unknown_per_read
        burst_of = c_recv_burst
        source: Any = self.socket.fileno() if burst_of is not None else self.socket
        if burst_of is None:
            burst_of = _recv_burst_py
        gro = self.gro
        read = 0
        self.unknown = 0
        while read < cap:
            # with a bound on unauthenticated sources, a burst is never longer than what
            # is left of it (each datagram could be one): the pass ends exactly at the bound
            count = limit - self.unknown if limit else _BURST
            if count <= 0:
                self.yielded_reads += 1
                return
            try:
                # what the socket holds, read before any of it is handled: one call, and
                # no exception to end the loop (jumping/service/_fastio.c)
                if gate is None:
                    burst = burst_of(source, size, cap - read, count, gro)
                else:
                    burst = burst_of(source, size, cap - read, count, gro, gate)
            except OSError as e:
                if e.errno in _READ_AGAIN:
                    return
                raise
            got = len(burst)
            if gate is not None and gate.last_count:
                got += gate.last_count
                read += gate.last_bytes
                self.unknown += gate.last_count
            for data, addr, seg in burst:
                n = len(data)
                read += n
                try:
                    if 0 < seg < n:
                        # a coalesced run (UDP_GRO): split at the kernel's segment size,
                        # exactly as if read one by one
                        self.coalesced_reads += 1
                        if many is not None:
                            many([data[o : o + seg] for o in range(0, n, seg)], addr)
                        else:
                            for off in range(0, n, seg):
                                handler(data[off : off + seg], addr)
                    else:
                        handler(data, addr)
                except Exception:
                    self.handler_errors += 1
                    _log.failure("datagram handler failed")
            if got < count and read < cap:
                return  # the socket is empty


def _recv_burst_py(
    sock: socket.socket, size: int, limit: int, count: int, gro: bool
) -> list[tuple[bytes, Any, int]]:
    """The pure-Python twin of ``_fastio.recv_burst``: ``recvmsg`` until the socket is
    empty, ``limit`` bytes or ``count`` datagrams were read; (data, address, segment size)
    each, the segment size from the UDP_GRO control message (0 without one). An error other
    than EAGAIN/EINTR is raised if nothing was read yet, else what was read goes first."""
    out: list[tuple[bytes, Any, int]] = []
    recv = sock.recvmsg
    space = _GRO_CMSG if gro else 0
    total = 0
    while total < limit and len(out) < count:
        try:
            data, anc, _flags, addr = recv(size, space)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR) or out:
                break
            raise
        seg = 0
        for level, kind, value in anc:
            if level == SOL_UDP and kind == UDP_GRO and len(value) >= 4:
                seg = int.from_bytes(value[:4], _BYTEORDER, signed=True)
        out.append((data, addr, seg))
        total += len(data)
    return out


def _compiled_recv_burst() -> Any:
    if os.environ.get("JUMPING_PURE_PYTHON"):
        return None
    try:
        from jumping.service import _fastio  # type: ignore[attr-defined]
    except ImportError:
        return None
    return getattr(_fastio, "recv_burst", None)


#: the C loop (jumping/service/_fastio.c) if it was built, else None (then _recv_burst_py)
c_recv_burst: Any = _compiled_recv_burst()
#: datagrams per read call where no bound on unauthenticated sources applies
_BURST = 64


def _listen(
    reactor: Any, port: int, host: str, handler: Any, gso: bool, handler_many: Any = None,
    unknown_per_read: int = 0,
) -> LeanPort:  # fmt: skip
    p = LeanPort(port, _Null(), host, 65535, reactor)
    p.handler = handler
    p.handler_many = handler_many
    p.unknown_per_read = unknown_per_read
    p.startListening()
    if gso:
        try:
            p.socket.setsockopt(SOL_UDP, UDP_GRO, 1)
            p.gro = True
        except OSError:
            pass  # an old kernel: datagrams arrive one by one, as without the option
    return p


def _send_batch(path: Any, datagrams: list[bytes], addr: tuple[str, int]) -> None:
    """Send ``datagrams`` in order: runs of equal size (the last one may be shorter) as one
    ``UDP_SEGMENT`` ``sendmsg`` each, anything else with ``sendto``."""
    sendto = path._sendto
    sendmsg = path._sendmsg
    n = len(datagrams)
    i = 0
    while i < n:
        size = len(datagrams[i])
        j = i + 1
        total = size
        if sendmsg is not None:
            limit = min(n, i + GSO_MAX_SEGMENTS)
            while j < limit and len(datagrams[j]) == size and total + size <= GSO_MAX_BYTES:
                total += size
                j += 1
            if (
                j < limit
                and len(datagrams[j]) < size
                and total + len(datagrams[j]) <= GSO_MAX_BYTES
            ):
                j += 1  # a shorter datagram may close a run
        try:
            if j - i == 1:
                sendto(datagrams[i], addr)
            else:
                sendmsg(
                    datagrams[i:j], [(SOL_UDP, UDP_SEGMENT, size.to_bytes(2, _BYTEORDER))], 0, addr
                )
        except OSError as e:
            if j - i > 1 and e.errno in (
                errno.EINVAL,
                errno.EIO,
                errno.ENOPROTOOPT,
                errno.EMSGSIZE,
            ):
                # the kernel or the route cannot segment: from now on, one by one
                path._sendmsg = sendmsg = None
                path.gso_fallbacks += 1
                continue
            path.send_errors += j - i
        i = j


class _Null(DatagramProtocol):
    noisy = False


#: buffer shortfalls already logged, by (direction, reason): one line each, not one a socket
_short_logged: set[tuple[str, str]] = set()


def _tune(sock: socket.socket, size: int) -> None:
    """Ask for ``size``-byte buffers each way: ``SO_*BUFFORCE`` (needs CAP_NET_ADMIN, which
    a node keeps after dropping root), else the plain option (capped by the kernel at
    ``net.core.rmem_max``/``wmem_max``). A socket that gets less says why, in the log."""
    for what, opt, force, plain, limit in (
        ("receive", "SO_RCVBUF", _SO_RCVBUFFORCE, socket.SO_RCVBUF, "rmem_max"),
        ("send", "SO_SNDBUF", _SO_SNDBUFFORCE, socket.SO_SNDBUF, "wmem_max"),
    ):
        try:
            sock.setsockopt(socket.SOL_SOCKET, force, size)
            continue
        except OSError as e:
            why = f"{opt}FORCE refused ({e.strerror}: no CAP_NET_ADMIN)"
        try:
            sock.setsockopt(socket.SOL_SOCKET, plain, size)
            got = sock.getsockopt(socket.SOL_SOCKET, plain) // 2  # the kernel doubles it
        except OSError as e:
            got, why = 0, f"{why}; {opt} failed: {e.strerror}"
        if got < size and (what, why) not in _short_logged:
            _short_logged.add((what, why))
            _log.warn(
                "udp: {what} buffer {got} bytes instead of {size} (buffer_bytes): {why}; "
                "raise net.core.{limit} or keep CAP_NET_ADMIN ([node] capabilities)",
                what=what, got=got, size=size, why=why, limit=limit,
            )  # fmt: skip


def _fmt(addr: tuple[str, int]) -> str:
    host, port = addr[0], addr[1]
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


@implementer(IBatchTransport, IProvisionalPath)
class UDPPath:
    """One remote address seen by a listener (gateway side). A gateway holds one per client
    (issue 18: 100 000 of them), so it is slotted and keeps only what is its own; the
    socket's methods are looked up through the listener when sending."""

    __slots__ = (
        "_listener", "provisional", "_gso", "_addr", "used", "remote_address", "_n",
        "connected", "send_errors", "gso_fallbacks",
    )  # fmt: skip
    kind = "udp"

    def __init__(
        self, listener: UDPListener, addr: tuple[str, int], provisional: bool = False
    ) -> None:
        self._listener = listener
        #: True until the node authenticated a packet from this address (IProvisionalPath)
        self.provisional = provisional
        #: UDP_SEGMENT sends: until the kernel refuses one (then one by one, for this path)
        self._gso = listener.gso
        self._addr = addr
        #: a datagram came from it since the listener's eviction sweep last passed it
        self.used = False
        # an IPv4 source is already (host, port); IPv6 adds flow info and scope
        self.remote_address = addr if len(addr) == 2 else (addr[0], addr[1])
        self._n = next(_ids)
        self.connected = True
        self.send_errors = 0
        self.gso_fallbacks = 0

    @property
    def local_address(self) -> tuple[str, int]:
        return self._listener.local_address  # type: ignore[no-any-return]

    @property
    def _sendto(self) -> Any:
        return self._listener.sock.sendto

    @property
    def _sendmsg(self) -> Any:
        return self._listener.sock.sendmsg if self._gso else None

    @_sendmsg.setter
    def _sendmsg(self, value: Any) -> None:  # _send_batch's fallback sets None
        self._gso = value is not None

    @property
    def transport_id(self) -> str:
        """Made each time it is asked for (events only; a microsecond): a flood from spoofed
        sources creates a provisional path per datagram, and almost none of them is ever
        named, and an idle client's path need not keep its name (about 90 bytes)."""
        return f"udp:{_fmt(self.local_address)}>{_fmt(self._addr)}#{self._n}"

    def send(self, data: bytes) -> None:
        if not self.connected:
            self.send_errors += 1
            return
        try:
            self._listener.sock.sendto(data, self._addr)
        except OSError:
            self.send_errors += 1

    def send_batch(self, datagrams: list[bytes]) -> None:
        if not self.connected:
            self.send_errors += len(datagrams)
            return
        _send_batch(self, datagrams, self._addr)

    def confirm(self) -> None:
        if self.provisional and self.connected:
            self.provisional = False
            self._listener._insert(self)

    def close(self) -> None:
        if self.connected:
            self.connected = False
            self._listener._forget(self)

    def __repr__(self) -> str:
        return f"<UDPPath {self.transport_id}>"


@implementer(IListener)
class UDPListener:
    def __init__(
        self,
        reactor: Any,
        host: str,
        port: int,
        receiver: Any,
        max_paths: int,
        buffer_bytes: int,
        gso: bool = True,
        unauthenticated_per_read: int = 0,
        drop_expired_keepalives: bool = True,
    ) -> None:
        self.receiver = receiver
        self.receive = receiver.datagramReceived
        self.max_paths = max_paths
        self.gso = gso
        #: authenticated paths by remote address, in the order they entered (or were given
        #: a second chance): a plain dict, not an OrderedDict, whose linked list costs about
        #: 50 bytes more per path (issue 18: 100 000 of them). Recency is each path's
        #: ``used`` mark, set per datagram (cheaper than moving the entry); eviction is the
        #: CLOCK approximation of least recently used (``_insert``).
        self.paths: dict[Any, UDPPath] = {}
        #: authenticated paths forgotten because the table was full
        self.evicted = 0
        #: datagrams that came from an address not in the table (a provisional path each)
        self.provisional_paths = 0
        many = self._on_datagrams if IBatchDatagramReceiver.providedBy(receiver) else None
        self.port = _listen(
            reactor, port, host, self._on_datagram, gso, many, unauthenticated_per_read
        )
        self.sock: socket.socket = self.port.socket
        if c_recv_burst is not None:
            self.port.gate_keeper = getattr(receiver, "initiation_gate", None)
        _tune(self.sock, buffer_bytes)
        #: the kernel drops clients' NAT keepalives under expired keys before they wake
        #: the reactor: 100 000 idle sessions send 4 000 a second (issue 18)
        self.keepalive_filter = drop_expired_keepalives and attach_keepalive_filter(self.sock)
        bound = self.sock.getsockname()
        self.local_address = (bound[0], bound[1])

    @property
    def kernel_drops(self) -> int:
        """Datagrams the kernel dropped for this socket: its receive buffer was full, or
        (``keepalive_filter``) a NAT keepalive under expired keys."""
        return kernel_drops(self.sock)

    @property
    def yielded_reads(self) -> int:
        """Read passes ended early by ``unauthenticated_per_read``."""
        return self.port.yielded_reads

    def _on_datagram(self, data: bytes, addr: Any) -> None:
        paths = self.paths
        path = paths.get(addr)
        if path is None:
            self.provisional_paths += 1
            self.port.unknown += 1
            path = UDPPath(self, addr, provisional=True)
        else:
            path.used = True
        self.receive(path, data)

    def _on_datagrams(self, datagrams: list[bytes], addr: Any) -> None:
        paths = self.paths
        path = paths.get(addr)
        if path is None:
            self.provisional_paths += 1
            self.port.unknown += 1
            path = UDPPath(self, addr, provisional=True)
        else:
            path.used = True
        self.receiver.datagramsReceived(path, datagrams)

    def _insert(self, path: UDPPath) -> None:
        """``path`` authenticated: keep it (the first confirmed path of an address wins).
        A full table forgets the oldest path not used since the sweep last passed it: the
        sweep takes entries oldest first and moves a used one to the end, its mark cleared
        (a second chance), so each entry is passed over at most once per eviction cycle. It
        reads the oldest entries a batch at a time: a dict is iterated from its first slot,
        past those its sweep emptied, so one read per entry would cost quadratic time."""
        paths = self.paths
        if path._addr in paths:
            return
        while len(paths) >= self.max_paths:
            for old_addr in list(itertools.islice(paths, _SWEEP_BATCH)):
                old = paths.pop(old_addr)
                if old.used:
                    old.used = False
                    paths[old_addr] = old
                    continue
                old.connected = False
                self.evicted += 1
                self.receiver.transportLost(old, "evicted")
                break
        paths[path._addr] = path

    def _forget(self, path: UDPPath) -> None:
        if self.paths.get(path._addr) is path:
            del self.paths[path._addr]

    def close(self) -> defer.Deferred[None]:
        for path in list(self.paths.values()):
            path.close()
        return defer.maybeDeferred(self.port.stopListening)


@implementer(IBatchTransport)
class UDPClientPath:
    """A UDP socket of its own from a (chosen) local address to one gateway endpoint.

    The socket is deliberately *not* connected: on a connected UDP socket an ICMP "port
    unreachable" (the gateway not up yet, a restart) surfaces as EPOLLERR, which Twisted's
    epoll reactor treats as a lost connection. Unconnected, we send with ``sendto`` and
    accept only datagrams from the endpoint (others are counted in ``foreign``).
    """

    kind = "udp"
    gso_fallbacks = 0

    def __init__(
        self,
        reactor: Any,
        remote: tuple[str, int],
        receiver: Any,
        local: tuple[str, int] | None,
        buffer_bytes: int,
        gso: bool = True,
    ) -> None:
        self.receiver = receiver
        self.receive = receiver.datagramReceived
        self.foreign = 0
        self.send_errors = 0
        host, lport = (local or ("", 0))[0], (local or ("", 0))[1]
        self._remote = (remote[0], remote[1])
        many = self._on_datagrams if IBatchDatagramReceiver.providedBy(receiver) else None
        self.port = _listen(reactor, lport, host, self._on_datagram, gso, many)
        self.sock: socket.socket = self.port.socket
        _tune(self.sock, buffer_bytes)
        self._sendto = self.sock.sendto
        self._sendmsg = self.sock.sendmsg if gso else None
        bound = self.sock.getsockname()
        self.local_address = (bound[0], bound[1])
        self.remote_address = self._remote
        self.transport_id = f"udp:{_fmt(self.local_address)}>{_fmt(self._remote)}#{next(_ids)}"
        self.connected = True

    def _on_datagram(self, data: bytes, addr: Any) -> None:
        if addr[0] != self._remote[0] or addr[1] != self._remote[1]:
            self.foreign += 1  # not from our gateway endpoint: never handed on
            return
        self.receive(self, data)

    def _on_datagrams(self, datagrams: list[bytes], addr: Any) -> None:
        if addr[0] != self._remote[0] or addr[1] != self._remote[1]:
            self.foreign += len(datagrams)
            return
        self.receiver.datagramsReceived(self, datagrams)

    def send(self, data: bytes) -> None:
        if not self.connected:
            self.send_errors += 1
            return
        try:
            self._sendto(data, self._remote)
        except OSError as e:
            self.send_errors += 1
            if e.errno == errno.EBADF:
                self.connected = False

    def send_batch(self, datagrams: list[bytes]) -> None:
        if not self.connected:
            self.send_errors += len(datagrams)
            return
        _send_batch(self, datagrams, self._remote)

    def close(self) -> None:
        if self.connected:
            self.connected = False
            self.port.stopListening()

    def __repr__(self) -> str:
        return f"<UDPClientPath {self.transport_id}>"


@implementer(ITransportFactory)
class UDPTransportFactory:
    """``udp`` plugin. Options: ``max_paths`` (authenticated remote addresses per listener;
    262144, twice the default session table, so that one address per session, and the old
    addresses sessions roamed from, fit),
    ``buffer_bytes``, ``gso`` (segmentation/receive offload where the kernel has it;
    default true), ``unauthenticated_per_read`` (a listener's read pass ends after this
    many datagrams from addresses no packet authenticated on, so that a flood is served in
    slices between which the reactor serves the TUN device and the timers; 256),
    ``drop_expired_keepalives`` (a listener's socket filter drops clients' NAT keepalives
    under expired keys in the kernel, counted in ``kernel_drops``; default true)."""

    kind = "udp"

    def __init__(
        self,
        max_paths: int = 262144,
        buffer_bytes: int = 4 * 1024 * 1024,
        gso: bool = True,
        unauthenticated_per_read: int = 256,
        drop_expired_keepalives: bool = True,
    ) -> None:
        if not isinstance(drop_expired_keepalives, bool):
            raise ValueError(
                f"udp: drop_expired_keepalives must be true or false, got {drop_expired_keepalives!r}"
            )
        self.drop_expired_keepalives = drop_expired_keepalives
        if not isinstance(max_paths, int) or not 1 <= max_paths <= 10_000_000:
            raise ValueError(f"udp: max_paths must be an integer in 1..10000000, got {max_paths!r}")
        if (
            not isinstance(unauthenticated_per_read, int)
            or isinstance(unauthenticated_per_read, bool)
            or not 1 <= unauthenticated_per_read <= 1_000_000
        ):
            raise ValueError(
                "udp: unauthenticated_per_read must be an integer in 1..1000000, "
                f"got {unauthenticated_per_read!r}"
            )
        if not isinstance(buffer_bytes, int) or not 4096 <= buffer_bytes <= 1 << 30:
            raise ValueError(
                f"udp: buffer_bytes must be an integer in 4096..1073741824, got {buffer_bytes!r}"
            )
        if not isinstance(gso, bool):
            raise ValueError(f"udp: gso must be true or false, got {gso!r}")
        self.max_paths = max_paths
        self.buffer_bytes = buffer_bytes
        self.gso = gso
        self.unauthenticated_per_read = unauthenticated_per_read

    def listen(self, reactor: Any, host: str, port: int, receiver: Any) -> UDPListener:
        try:
            return UDPListener(
                reactor, host, port, receiver, self.max_paths, self.buffer_bytes, self.gso,
                self.unauthenticated_per_read, self.drop_expired_keepalives,
            )  # fmt: skip
        except CannotListenError as e:
            err = e.socketError
            raise OSError(
                getattr(err, "errno", None) or errno.EADDRINUSE,
                f"cannot listen on udp {host}:{port}: {getattr(err, 'strerror', None) or err}",
            ) from None

    def connect(
        self, reactor: Any, remote: tuple[str, int], receiver: Any, local: Any = None
    ) -> defer.Deferred[UDPClientPath]:
        try:
            path = UDPClientPath(reactor, remote, receiver, local, self.buffer_bytes, self.gso)
        except Exception as e:
            return defer.fail(e)
        return defer.succeed(path)


if TYPE_CHECKING:  # the paths are what the core takes them for (jumping/core/pathhandle.py)
    from jumping.core.pathhandle import PathHandle, ProvisionalPath

    def _paths(listened: UDPPath, connected: UDPClientPath) -> tuple[ProvisionalPath, PathHandle]:
        return listened, connected
