"""
TCP super-packets carried whole across the tunnel (``DATA_SEGMENT`` messages, protocol
revision 2): the sender does no per-segment TCP work; the receiving kernel finishes it.

A TUN device with TCP segmentation offload hands the sender TCP/IPv4 super-packets (up to
64 KiB, one TCP/IP header, a segment size ``gso_size``) and single TCP packets whose
checksum is left to be filled in. Instead of cutting them into complete segments (new
headers, two checksums each, in Python), the sender seals each ``gso_size`` piece of the
payload as its own datagram, behind the super-packet's header as it was read:

    header 4 bytes: type 6 | version 1 | chunk:u16 (bits 0-14 the piece's index, bit 15 set
                    on the last piece), then receiver_index:u32 | counter:u64 as for DATA;
    plaintext:      the super-packet's IPv4+TCP header (its total length is the whole
                    super-packet's; checksum fields undefined) | piece ``index`` of the
                    payload (every piece but the last exactly ``gso_size`` bytes).

Every datagram is sealed on its own (own counter, replay window, AEAD tag), so the loss of
one loses one segment's worth of data, as for ordinary packets. The receiver groups
consecutive pieces of one super-packet into a :class:`SegmentRun` (a header rebuilt for
the run, the pieces, the segment size) that the service writes to its TUN device as one
GSO packet with a ``virtio_net_hdr`` asking the kernel to segment it and compute the
checksums; a gap (a lost or reordered piece) just starts a new run.

Pure functions and plain data: no I/O.
"""

from __future__ import annotations

import struct

#: protocol revision this build speaks (1: DATA only; 2: + DATA_SEGMENT), and the feature
#: bits carried in the body of a KEEPALIVE: ``revision:u8 | features:u32``
REVISION = 2
FEATURE_SEGMENTS = 1
FEATURES = struct.Struct("<BI")

LAST = 0x8000
MAX_PIECES = 0x7FFF
_FIN_PSH = 0x09
_CWR = 0x80
_WORDS10 = struct.Struct("!10H")
_ADDRS = struct.Struct("!4H")


def tcp4_header_length(packet: bytes | memoryview) -> int:
    """The IPv4+TCP header length of ``packet``, or 0 if it is not a well-formed
    unfragmented TCP/IPv4 packet whose headers fit in it."""
    n = len(packet)
    if n < 40 or packet[0] >> 4 != 4 or packet[9] != 6 or packet[6] & 0x3F or packet[7]:
        return 0
    ihl = (packet[0] & 0x0F) * 4
    if ihl < 20 or ihl + 20 > n:
        return 0
    hl = ihl + (packet[ihl + 12] >> 4) * 4
    if hl < ihl + 20 or hl > n:
        return 0
    return hl


def _fold(s: int) -> int:
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


class SegmentRun:
    """Consecutive pieces of one super-packet, ready to be written as one GSO packet:
    ``header`` (total length, IP id, sequence number, flags and IP checksum of the run;
    the TCP checksum field holds the pseudo-header sum, to be completed over the segment
    bytes), ``pieces`` (the payload, in order), ``gso_size``, ``csum_start`` (the TCP
    header's offset)."""

    __slots__ = ("template", "hl", "pieces", "first", "offset", "size", "gso_size", "last",
                 "next_index")  # fmt: skip

    def __init__(self, template: bytes, hl: int, index: int, offset: int, piece: memoryview):
        self.template = template
        self.hl = hl
        self.pieces = [piece]
        self.first = index
        self.offset = offset
        self.size = len(piece)
        self.gso_size = len(piece)
        self.last = False
        self.next_index = index + 1

    @property
    def csum_start(self) -> int:
        return (self.template[0] & 0x0F) * 4

    @property
    def header(self) -> bytes:
        t = self.template
        ihl = (t[0] & 0x0F) * 4
        hl = self.hl
        h = bytearray(t[:hl])
        total = hl + self.size
        h[2:4] = total.to_bytes(2, "big")
        ident = (((t[4] << 8) | t[5]) + self.first) & 0xFFFF
        h[4:6] = ident.to_bytes(2, "big")
        h[10:12] = b"\0\0"
        h[10:12] = (~_fold(sum(_WORDS10.unpack_from(h))) & 0xFFFF).to_bytes(2, "big")
        seq = (int.from_bytes(t[ihl + 4 : ihl + 8], "big") + self.offset) & 0xFFFFFFFF
        h[ihl + 4 : ihl + 8] = seq.to_bytes(4, "big")
        flags = t[ihl + 13]
        if not self.last:
            flags &= ~_FIN_PSH
        if self.first:
            flags &= ~_CWR
        h[ihl + 13] = flags
        # CHECKSUM_PARTIAL: the field holds the folded pseudo-header sum
        h[ihl + 16 : ihl + 18] = _fold(sum(_ADDRS.unpack_from(h, 12)) + 6 + total - ihl).to_bytes(
            2, "big"
        )
        return bytes(h)


def start_run(plain: bytes, chunk: int) -> SegmentRun | None:
    """A run from the first piece seen of a super-packet; None if the piece is malformed
    (not TCP/IPv4, or its index, size and the super-packet's length disagree)."""
    hl = tcp4_header_length(plain)
    if not hl:
        return None
    payload = ((plain[2] << 8) | plain[3]) - hl
    n = len(plain) - hl
    index = chunk & MAX_PIECES
    if n <= 0 or payload < n:
        return None
    if chunk & LAST:
        offset = payload - n
        if (index == 0) != (offset == 0):
            return None
    else:
        offset = index * n
        if offset + n >= payload:  # a piece that is not the last leaves payload for more
            return None
    run = SegmentRun(plain[:hl], hl, index, offset, memoryview(plain)[hl:])
    if chunk & LAST:
        run.last = True
        if index and offset % index == 0:
            run.gso_size = offset // index
    return run


def extend_run(run: SegmentRun, plain: bytes, chunk: int) -> bool:
    """Add the next piece to ``run`` if it is the next piece of the same super-packet."""
    if run.last or (chunk & MAX_PIECES) != run.next_index:
        return False
    if not plain.startswith(run.template):
        return False
    hl = run.hl
    n = len(plain) - hl
    end = run.offset + run.size + n
    payload = ((plain[2] << 8) | plain[3]) - hl
    if chunk & LAST:
        if n <= 0 or n > run.gso_size or end != payload:
            return False
        run.last = True
    elif n != run.gso_size or end >= payload:
        return False
    run.pieces.append(memoryview(plain)[hl:])
    run.size += n
    run.next_index += 1
    return True


def pieces(packet: bytes | memoryview, hl: int, gso_size: int) -> int:
    """How many pieces a super-packet of header length ``hl`` is cut into (0: too many)."""
    payload = len(packet) - hl
    count = max(1, -(-payload // gso_size))
    return count if count <= MAX_PIECES + 1 else 0
