"""
The TUN device: :class:`twisted.pair.tuntap.TuntapPort` in TUN mode without packet info,
plus address/MTU/route configuration through iproute2 (``ip``), which every Linux host
running a VPN has; Twisted's tuntap only opens the device. ``ip`` is run from a fixed,
trusted absolute path (:data:`IP_PATHS`, never looked up in ``PATH``) with a minimal
environment.

The device exists as long as our file descriptor is open (not persistent): when the
process stops, the kernel removes it and its routes.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import subprocess
from collections.abc import Callable, Sequence
from typing import Any

from twisted.pair.raw import IRawPacketProtocol
from twisted.pair.tuntap import TunnelFlags, TuntapPort
from zope.interface import implementer

from jumping.core.segments import SegmentRun
from jumping.service.gro import PLAIN, VNET_HDR_LEN, OffloadError, coalesce, run_buffers, segment

_writev = os.writev
TUNSETOFFLOAD = 0x400454D0
#: checksum offload + TCPv4 segmentation offload: the kernel may hand us 64 KiB TCP
#: super-packets, which :func:`~jumping.service.gro.segment` cuts (no TSO6: IPv6 segments
#: come one by one, as without offloads)
TUN_F_CSUM, TUN_F_TSO4 = 0x01, 0x02


class LeanTuntapPort(TuntapPort):
    """TuntapPort with a tighter read loop: everything the device holds, up to
    ``maxThroughput`` bytes per reactor wake-up, read in one call (:data:`read_burst`), then
    one call per packet straight into the node's fast path, then one call to ``on_flush``
    (the node sends what the wake-up produced, batched per path)."""

    #: the reactor calls ``doRead`` without Twisted's legacy log context
    #: (jumping/service/dispatch.py)
    lean_dispatch = True
    on_packet: Any = None
    on_flush: Any = None
    #: called with a frame that carries a super-packet or a pending checksum; returns True
    #: if it took the frame whole, else the frame is segmented here (complete packets)
    on_offloaded: Any = None
    handler_errors = 0
    #: open with IFF_VNET_HDR: every packet read or written carries a virtio_net_hdr
    vnet_hdr = False

    def _openTunnel(self, name: bytes, mode: Any) -> Any:  # noqa: N802
        if self.vnet_hdr:
            mode = mode | TunnelFlags.IFF_VNET_HDR
        return super()._openTunnel(name, mode)

    #: reads that carried a TCP super-packet or a checksum left to us; frames refused
    offloaded_reads = 0
    offload_errors = 0

    def doRead(self) -> None:  # noqa: N802
        on_packet = self.on_packet
        on_offloaded = self.on_offloaded
        vnet = self.vnet_hdr
        try:
            # everything the device holds (up to maxThroughput bytes), read before any of
            # it is handled: one call, and no exception to end the loop (_fastio.c)
            for data in read_burst(self._fileno, 65600, self.maxThroughput):
                try:
                    if not vnet:
                        on_packet(data)
                    elif data[1] == 0 and not data[0] & 1:  # no GSO, checksum complete
                        on_packet(data[VNET_HDR_LEN:])
                    else:
                        self.offloaded_reads += 1
                        if on_offloaded is not None and on_offloaded(data):
                            continue  # taken whole (a super-packet the peer finishes)
                        try:
                            packets = segment(data)
                        except OffloadError:
                            self.offload_errors += 1
                            continue
                        for p in packets:
                            on_packet(p)
                except Exception:
                    self.handler_errors += 1
        finally:
            if self.on_flush is not None:
                try:
                    self.on_flush()
                except Exception:
                    self.handler_errors += 1


def _read_burst_py(fd: int, size: int, limit: int) -> list[bytes]:
    """The pure-Python twin of ``_fastio.read_burst``: read ``fd`` (non-blocking) until it
    is empty or ``limit`` bytes were read. An error other than EAGAIN/EINTR is raised if
    nothing was read yet, else the packets read go first (the next read meets it again)."""
    out: list[bytes] = []
    total = 0
    while total < limit:
        try:
            data = os.read(fd, size)
        except OSError as e:
            if e.errno in (errno.EAGAIN, errno.EWOULDBLOCK, errno.EINTR) or out:
                break
            raise
        if not data:
            break
        out.append(data)
        total += len(data)
    return out


def _compiled_read_burst() -> Any:
    if os.environ.get("JUMPING_PURE_PYTHON"):
        return None
    try:
        from jumping.service import _fastio  # type: ignore[attr-defined]
    except ImportError:
        return None
    return _fastio.read_burst


#: the C loop (jumping/service/_fastio.c) if it was built, else None
c_read_burst: Any = _compiled_read_burst()
#: what the TUN reader uses
read_burst: Callable[[int, int, int], list[bytes]] = c_read_burst or _read_burst_py


class TunError(Exception):
    """The TUN device could not be opened or configured."""


@implementer(IRawPacketProtocol)
class TunProtocol:
    """Hands every packet read from the device to ``on_packet`` (the node's fast path)."""

    def __init__(self, on_packet: Callable[[bytes], None]) -> None:
        self.on_packet = on_packet
        self.transport: Any = None

    def makeConnection(self, transport: Any) -> None:  # noqa: N802
        self.transport = transport

    def addProto(self, num: int, proto: Any) -> None:  # noqa: N802
        raise NotImplementedError("TUN mode carries IP packets only")

    def datagramReceived(  # type: ignore[override]  # TUN mode: no dest/source/protocol
        self, datagram: bytes, partial: int = 0
    ) -> None:
        self.on_packet(datagram)


#: where iproute2's ``ip`` may be, in this order: root-owned system directories only
IP_PATHS = ("/usr/sbin/ip", "/sbin/ip", "/usr/bin/ip", "/bin/ip")
_ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LC_ALL": "C"}


def ip_command(candidates: Sequence[str] = IP_PATHS) -> str:
    """The absolute path of ``ip``: the first candidate that exists, owned by root and not
    writable by group or others.

    :raise TunError: none qualifies (iproute2 missing, or a binary others could replace)."""
    for path in candidates:
        try:
            st = os.stat(path)
        except OSError:
            continue
        if not stat.S_ISREG(st.st_mode) or not st.st_mode & 0o111:
            continue
        if st.st_uid != 0 or st.st_mode & 0o022:
            raise TunError(f"{path}: refusing to run an 'ip' binary that is not owned by root "
                           "or is writable by group/others")  # fmt: skip
        return path
    raise TunError(
        "the 'ip' command (iproute2) is required to configure the TUN device; not found at "
        + ", ".join(candidates)
    )


def _ip(*args: str) -> None:
    try:
        r = subprocess.run(
            [ip_command(), *args], capture_output=True, text=True, timeout=10, env=_ENV
        )
    except (OSError, subprocess.TimeoutExpired) as e:
        raise TunError(f"ip {' '.join(args)}: {e}") from None
    if r.returncode != 0:
        raise TunError(f"ip {' '.join(args)}: {r.stderr.strip() or 'failed'}")


class TunDevice:
    """Open + configure; ``write`` is the hot path (errors are counted, never raised)."""

    def __init__(
        self,
        reactor: Any,
        name: str,
        address: str,
        mtu: int,
        routes: Sequence[str],
        on_packet: Callable[[bytes], None],
        on_flush: Callable[[], None] | None = None,
        vnet_hdr: bool = True,
        on_offloaded: Callable[[bytes], bool] | None = None,
    ) -> None:
        ip_command()
        self.protocol = TunProtocol(on_packet)
        self.port = LeanTuntapPort(
            name.encode(), self.protocol, maxPacketSize=65536, reactor=reactor
        )
        self.port.on_packet = on_packet
        self.port.on_flush = on_flush
        self.port.on_offloaded = on_offloaded
        self.port.vnet_hdr = vnet_hdr
        self.vnet_hdr = vnet_hdr
        self.gro = vnet_hdr
        try:
            self.port._bindSocket()
        except Exception as e:
            raise TunError(f"cannot open TUN device {name!r}: {e}") from None
        self.name = self.port.interface.decode()
        if vnet_hdr:
            try:
                fcntl.ioctl(self.port.fileno(), TUNSETOFFLOAD, TUN_F_CSUM | TUN_F_TSO4)
            except OSError:
                pass  # no offloads: packets come one by one, checksums complete
        self.write_errors = 0
        self.fd = self.port.fileno()
        try:
            _ip("addr", "add", address, "dev", self.name)
            _ip("link", "set", "dev", self.name, "mtu", str(mtu), "up")
            for route in routes:
                _ip("route", "replace", route, "dev", self.name)
        except TunError:
            self.close()
            raise

    def start(self) -> None:
        self.protocol.makeConnection(self.port)
        self.port.startReading()

    def write(self, packet: bytes) -> None:
        try:
            if self.vnet_hdr:
                _writev(self.fd, (PLAIN, packet))
            else:
                os.write(self.fd, packet)
        except OSError:
            self.write_errors += 1

    def write_many(self, packets: list[bytes | SegmentRun]) -> None:
        """Write a run of packets; with ``vnet_hdr``, TCP segments of one flow go as one
        super-packet (:mod:`jumping.service.gro`), and each
        :class:`~jumping.core.segments.SegmentRun` as one GSO packet whose segmentation
        and checksums the kernel does."""
        if len(packets) == 1 and type(packets[0]) is bytes:
            self.write(packets[0])  # the commonest run (an idle tunnel's): nothing to join
            return
        fd = self.fd
        if not self.vnet_hdr:
            for p in packets:
                if type(p) is bytes:
                    try:
                        os.write(fd, p)
                    except OSError:
                        self.write_errors += 1
                else:
                    self.write_errors += 1  # never offered without vnet_hdr: not ours
            return
        plain: list[bytes] = []
        for p in packets:
            if type(p) is bytes:
                plain.append(p)
                continue
            if plain:
                self._write_plain(plain)
                plain = []
            try:
                _writev(fd, run_buffers(p))  # type: ignore[arg-type]
            except OSError:
                self.write_errors += len(p.pieces)  # type: ignore[union-attr]
        if plain:
            self._write_plain(plain)

    def _write_plain(self, packets: list[bytes]) -> None:
        fd = self.fd
        if not self.gro:
            for p in packets:
                self.write(p)
            return
        for bufs in coalesce(packets):
            try:
                _writev(fd, bufs)
            except OSError as e:
                n = len(bufs) - 2 if len(bufs) > 2 else 1
                self.write_errors += n
                if n > 1 and e.errno == errno.EINVAL:
                    self.gro = False  # the kernel refuses super-packets: one by one from now

    def close(self) -> None:
        try:
            self.port.stopReading()
        except Exception:
            pass
        try:
            self.port.connectionLost(None)
        except Exception:
            pass
