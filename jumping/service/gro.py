"""
Offloads for a TUN device opened with ``IFF_VNET_HDR``, as wireguard-go does them.

Writes (userspace GRO): :func:`coalesce`.
Reads (userspace TSO): :func:`segment`.

A run of decrypted inner packets is turned into ``writev`` buffer lists for a TUN device
opened with ``IFF_VNET_HDR``: consecutive in-order segments of one IPv4 TCP flow become one
TCP super-packet with a ``virtio_net_hdr`` asking the kernel to segment it (GSO) and to
fill in the TCP checksum; the kernel then forwards or delivers the whole run as one packet
instead of walking its stack once per segment. Everything else is written unchanged behind
an all-zero header. What reaches the far end is byte-for-byte what separate writes would
have produced.

Segments are merged only when Linux's own GRO would merge them: IPv4 without options or
fragmentation, TCP with only ACK (and PSH on the last), the same addresses, ports, ack
number, window, TTL, TOS, DF bit and TCP options, sequence numbers contiguous, IP ids
incrementing by one (as the kernel will number the segments), every payload the size of the
first (the last may be shorter), at most 64 KiB in all.

With TSO enabled on the device, the kernel hands us TCP super-packets (up to 64 KiB) and
packets whose checksum is left to us; :func:`segment` cuts a super-packet into MTU-sized
segments exactly as the kernel's software GSO would (sequence numbers, IP ids, lengths,
flags, full checksums) and completes pending checksums, so the tunnel carries ordinary,
complete IP packets.

Pure functions: bytes in, buffer lists out (no I/O), so they are tested directly.
"""

from __future__ import annotations

import struct

from jumping.core.segments import SegmentRun

VNET_HDR_LEN = 10
PLAIN = bytes(VNET_HDR_LEN)  # no checksum work, no segmentation
_VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_NEEDS_CSUM = 1
_GSO_NONE = 0
_GSO_TCPV4 = 1
_MAX_TOTAL = 65535
_ACK, _PSH = 0x10, 0x08
_WORDS10 = struct.Struct("!10H")


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def _super_header(first: bytes, hl: int, total: int, psh: int) -> bytearray:
    h = bytearray(first[:hl])
    h[2:4] = total.to_bytes(2, "big")
    h[10:12] = b"\0\0"
    h[10:12] = (~_fold(sum(_WORDS10.unpack_from(h))) & 0xFFFF).to_bytes(2, "big")
    h[33] |= psh
    # CHECKSUM_PARTIAL: the TCP checksum field holds the folded pseudo-header sum; the
    # kernel adds the segment's bytes and complements.
    src_dst = struct.unpack_from("!4H", h, 12)
    h[36:38] = _fold(sum(src_dst) + 6 + total - 20).to_bytes(2, "big")
    return h


def run_buffers(run: SegmentRun) -> list[bytes | memoryview]:
    """``writev`` buffers for a :class:`~jumping.core.segments.SegmentRun`: a
    virtio_net_hdr asking for TCPv4 segmentation at ``gso_size`` (none for a single
    segment) and for the TCP checksum from ``csum_start``, the run's header, its pieces."""
    gso = _GSO_TCPV4 if run.size > run.gso_size else _GSO_NONE
    return [
        _VNET.pack(_NEEDS_CSUM, gso, run.hl, run.gso_size, run.csum_start, 16),
        run.header,
        *run.pieces,
    ]


def coalesce(packets: list[bytes]) -> list[list[bytes | bytearray | memoryview]]:
    """``writev`` buffer lists (virtio_net_hdr first) for ``packets``, in order."""
    out: list[list[bytes | bytearray | memoryview]] = []
    group: list[bytes] = []  # packets of the open group (same flow, contiguous)
    key = b""
    next_seq = mss = hl = size = next_id = 0
    psh = 0
    closed = True

    def flush() -> None:
        if len(group) == 1:
            out.append([PLAIN, group[0]])
        elif group:
            first = group[0]
            bufs: list[bytes | bytearray | memoryview] = [
                _VNET.pack(_NEEDS_CSUM, _GSO_TCPV4, hl, mss, 20, 16),
                _super_header(first, hl, size, psh),
            ]
            bufs += [memoryview(p)[hl:] for p in group]
            out.append(bufs)
        group.clear()

    for p in packets:
        n = len(p)
        if (
            n > 40
            and p[0] == 0x45
            and p[9] == 6
            and not (p[6] & 0x3F or p[7])
            and (p[33] == _ACK or p[33] == _ACK | _PSH)
            and ((p[2] << 8) | p[3]) == n
        ):
            phl = 20 + (p[32] >> 4) * 4
            plen = n - phl
            if plen > 0 and phl >= 40:
                seq = int.from_bytes(p[24:28], "big")
                pkey = p[1:2] + p[6:7] + p[8:9] + p[12:24] + p[28:32] + p[34:36] + p[40:phl]
                ident = (p[4] << 8) | p[5]
                if (
                    not closed
                    and pkey == key
                    and seq == next_seq
                    and ident == next_id
                    and plen <= mss
                    and size + plen <= _MAX_TOTAL
                ):
                    group.append(p)
                    size += plen
                    next_seq = (seq + plen) & 0xFFFFFFFF
                    next_id = (ident + 1) & 0xFFFF
                    if plen < mss or p[33] & _PSH:
                        closed = True
                        psh = p[33] & _PSH
                    continue
                flush()
                group.append(p)
                key, hl, mss, size = pkey, phl, plen, n
                next_seq = (seq + plen) & 0xFFFFFFFF
                next_id = (ident + 1) & 0xFFFF
                psh = p[33] & _PSH
                closed = bool(psh)
                continue
        flush()
        closed = True
        out.append([PLAIN, p])
    flush()
    return out


_VNET_UNPACK = _VNET.unpack_from
_FIN_PSH = 0x09
_CWR = 0x80
_PACK_H = struct.Struct("!H").pack_into
_PACK_I = struct.Struct("!I").pack_into


def _sum(data: bytes | bytearray | memoryview) -> int:
    """Ones-complement sum of ``data`` as 16-bit big-endian words, not folded (mod 0xFFFF
    is taken by the caller): one big-integer conversion instead of a Python loop."""
    n = int.from_bytes(data, "big")
    return n << 8 if len(data) & 1 else n


def _finish(total: int) -> int:
    """The checksum field for a ones-complement sum."""
    s = total % 0xFFFF
    if s == 0 and total:
        s = 0xFFFF
    return ~s & 0xFFFF


class OffloadError(ValueError):
    """A packet from the device with a header we cannot honour (counted, dropped)."""


def segment(frame: bytes) -> list[bytes]:
    """Inner packets for one read from a TUN device with a virtio_net_hdr in front."""
    flags, gso_type, _hdr_len, gso_size, csum_start, csum_offset = _VNET_UNPACK(frame)
    pkt = frame[VNET_HDR_LEN:]
    if gso_type == _GSO_NONE:
        if flags & _NEEDS_CSUM:
            end = csum_start + csum_offset + 2
            if end > len(pkt) or csum_start >= len(pkt):
                raise OffloadError("checksum offsets outside the packet")
            b = bytearray(pkt)
            # the field holds the pseudo-header sum; the kernel left the rest to us
            b[csum_start + csum_offset : end] = _finish(_sum(memoryview(b)[csum_start:])).to_bytes(
                2, "big"
            )
            return [bytes(b)]
        return [pkt]
    if gso_type != _GSO_TCPV4 or len(pkt) < 40 or pkt[0] >> 4 != 4 or pkt[9] != 6:
        raise OffloadError(f"unsupported GSO type {gso_type}")
    ihl = (pkt[0] & 0x0F) * 4
    thl = (pkt[ihl + 12] >> 4) * 4
    hl = ihl + thl
    if gso_size <= 0 or hl > len(pkt) or thl < 20:
        raise OffloadError("malformed TCP super-packet")
    header = bytearray(pkt[:hl])
    ip_id = (header[4] << 8) | header[5]
    seq = int.from_bytes(header[ihl + 4 : ihl + 8], "big")
    tcp_flags = header[ihl + 13]
    # Checksums are sums of 16-bit words, so each is a constant part (computed once, with
    # the fields that change per segment zeroed) plus those fields.
    for i in (2, 3, 4, 5, 10, 11, ihl + 4, ihl + 5, ihl + 6, ihl + 7, ihl + 13, ihl + 16, ihl + 17):
        header[i] = 0
    ip_base = _sum(header[:ihl])
    tcp_base = _sum(header[12:20]) + 6 + _sum(header[ihl:])  # pseudo header + TCP header
    out = []
    payload = memoryview(pkt)[hl:]
    n = len(payload)
    join = b"".join
    for k, off in enumerate(range(0, n, gso_size)):
        chunk = payload[off : off + gso_size]
        size = hl + len(chunk)
        ident = (ip_id + k) & 0xFFFF
        s = (seq + off) & 0xFFFFFFFF
        f = tcp_flags if off + gso_size >= n else tcp_flags & ~_FIN_PSH
        if k:
            f &= ~_CWR
        h = bytearray(header)
        _PACK_H(h, 2, size)
        _PACK_H(h, 4, ident)
        _PACK_H(h, 10, _finish(ip_base + size + ident))
        _PACK_I(h, ihl + 4, s)
        h[ihl + 13] = f
        total = tcp_base + (size - ihl) + (s >> 16) + (s & 0xFFFF) + f
        _PACK_H(h, ihl + 16, _finish(total + _sum(chunk)))
        out.append(join((h, chunk)))
    return out
