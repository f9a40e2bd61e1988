"""
Receive-side coalescing for TUN writes (userspace GRO), as wireguard-go does it.

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

Pure functions: bytes in, buffer lists out (no I/O), so they are tested directly.
"""

from __future__ import annotations

import struct

VNET_HDR_LEN = 10
PLAIN = bytes(VNET_HDR_LEN)  # no checksum work, no segmentation
_VNET = struct.Struct("<BBHHHH")  # flags, gso_type, hdr_len, gso_size, csum_start, csum_offset
_NEEDS_CSUM = 1
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
