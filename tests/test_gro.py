"""Userspace GRO for TUN writes: coalesced super-packets, segmented again the way the
kernel's GSO does it, give back exactly the original segments (and valid checksums)."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from jumping.service.gro import PLAIN, VNET_HDR_LEN, coalesce


def csum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    s = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while s >> 16:
        s = (s & 0xFFFF) + (s >> 16)
    return s


def tcp4(seq: int, payload: bytes, flags: int = 0x10, ident: int = 1, opts: bytes = b"",
         src: bytes = b"\x0a\x63\x00\x02", dst: bytes = b"\x0a\x63\x01\x02", sport: int = 40000,
         ack: int = 7, window: int = 500, proto: int = 6, frag: int = 0x4000) -> bytes:  # fmt: skip
    doff = 20 + len(opts)
    total = 20 + doff + len(payload)
    ip = bytearray(
        struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, ident, frag, 64, proto, 0, src, dst)
    )
    ip[10:12] = (~csum(bytes(ip)) & 0xFFFF).to_bytes(2, "big")
    tcp = bytearray(
        struct.pack("!HHIIBBHHH", sport, 5201, seq, ack, (doff // 4) << 4, flags, window, 0, 0)
    )
    tcp += opts
    pseudo = src + dst + struct.pack("!BBH", 0, proto, doff + len(payload))
    tcp[16:18] = (~csum(pseudo + bytes(tcp) + payload) & 0xFFFF).to_bytes(2, "big")
    return bytes(ip) + bytes(tcp) + payload


def gso_segment(bufs: list) -> list[bytes]:
    """What the kernel makes of one writev: the plain packet, or the super-packet cut at
    gso_size with lengths, sequence numbers, IP ids and checksums redone."""
    raw = b"".join(bytes(b) for b in bufs)
    hdr, pkt = raw[:VNET_HDR_LEN], raw[VNET_HDR_LEN:]
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = struct.unpack("<BBHHHH", hdr)
    if gso_type == 0:
        assert hdr == PLAIN
        return [pkt]
    assert (flags, gso_type, csum_start, csum_offset) == (1, 1, 20, 16)
    # the super-packet itself is a valid IPv4 packet whose TCP checksum completes from the
    # partial (pseudo-header) sum the kernel starts from
    assert csum(pkt[:20]) == 0xFFFF
    assert struct.unpack("!H", pkt[2:4])[0] == len(pkt)
    full = pkt[:36] + b"\0\0" + pkt[38:]
    expect = ~csum(pkt[12:20] + struct.pack("!BBH", 0, 6, len(pkt) - 20) + full[20:]) & 0xFFFF
    assert (~csum(pkt[20:]) & 0xFFFF) == expect
    ip, tcp, payload = pkt[:20], pkt[20:hdr_len], pkt[hdr_len:]
    seq = struct.unpack("!I", tcp[4:8])[0]
    ident = struct.unpack("!H", ip[4:6])[0]
    out = []
    for i, off in enumerate(range(0, len(payload), gso_size)):
        chunk = payload[off : off + gso_size]
        last = off + gso_size >= len(payload)
        flags = tcp[13] if last else tcp[13] & ~0x08
        out.append(tcp4((seq + off) & 0xFFFFFFFF, chunk, flags=flags, ident=(ident + i) & 0xFFFF,
                        opts=tcp[20:], src=ip[12:16], dst=ip[16:20],
                        sport=struct.unpack("!H", tcp[0:2])[0],
                        ack=struct.unpack("!I", tcp[8:12])[0],
                        window=struct.unpack("!H", tcp[14:16])[0]))  # fmt: skip
    return out


def roundtrip(packets: list[bytes]) -> list[bytes]:
    return [seg for bufs in coalesce(packets) for seg in gso_segment(bufs)]


def flow(n: int, mss: int = 1368, seq: int = 1000, last: int | None = None, psh_last: bool = True,
         opts: bytes = b"\x01\x01\x08\x0a" + bytes(8)) -> list[bytes]:  # fmt: skip
    pkts = []
    for i in range(n):
        size = last if (last is not None and i == n - 1) else mss
        flags = 0x18 if (psh_last and i == n - 1) else 0x10
        pkts.append(tcp4(seq, os.urandom(size), flags=flags, ident=100 + i, opts=opts))
        seq = (seq + size) & 0xFFFFFFFF
    return pkts


def test_a_bulk_run_becomes_one_super_packet_and_segments_back_exactly() -> None:
    pkts = flow(44, last=500)
    writes = coalesce(pkts)
    assert len(writes) == 1
    assert roundtrip(pkts) == pkts


def test_runs_are_cut_at_64k_at_flow_changes_and_around_other_packets() -> None:
    a = flow(60, psh_last=False)  # 60 * 1368 > 64 KiB: at least two writes
    b = flow(3, seq=5, opts=b"")  # same addresses, different options: another flow key
    udp = tcp4(1, b"x" * 100, proto=17)
    syn = tcp4(9, b"", flags=0x02)
    pkts = a[:30] + [udp] + a[30:] + b + [syn]
    writes = coalesce(pkts)
    assert 5 <= len(writes) < len(pkts)
    assert roundtrip(pkts) == pkts


def test_what_must_not_merge_is_written_alone() -> None:
    base = flow(4, psh_last=False)
    gap = base[:2] + base[3:]  # sequence gap
    fragment = [tcp4(1, b"a" * 100, frag=0x2000), tcp4(101, b"b" * 100, frag=0x2000)]
    fin = [tcp4(1, b"a" * 100, flags=0x11), tcp4(101, b"b" * 100, flags=0x11)]
    short_first = flow(3, mss=100)[:1] + flow(3, mss=200, seq=1100)[:2]
    for pkts in (gap, fragment, fin):
        assert roundtrip(pkts) == pkts
    assert len(coalesce(fragment)) == 2 and len(coalesce(fin)) == 2
    assert len(coalesce(gap)) == 2  # [p0 p1] then [p3]
    assert roundtrip(short_first) == short_first  # a bigger segment never joins a smaller mss


def test_sequence_numbers_wrap() -> None:
    pkts = flow(10, seq=0xFFFFFFFF - 3000)
    assert len(coalesce(pkts)) == 1
    assert roundtrip(pkts) == pkts


@settings(max_examples=200, deadline=None)
@given(
    st.lists(st.tuples(st.integers(0, 3), st.integers(1, 1400), st.booleans()), max_size=60),
    st.booleans(),
)
def test_any_mix_round_trips_in_order(
    spec: list[tuple[int, int, bool]], incrementing_ids: bool
) -> None:
    seqs = [1000, 2000, 3000, 4000]
    ids = [0xFFF0, 1, 2, 3]
    pkts = []
    for f, size, psh in spec:
        ids[f] += 1 if incrementing_ids else 0
        pkts.append(tcp4(seqs[f], os.urandom(size), flags=0x18 if psh else 0x10, sport=40000 + f,
                         ident=ids[f]))  # fmt: skip
        seqs[f] = (seqs[f] + size) & 0xFFFFFFFF
    assert roundtrip(pkts) == pkts


# ---------------------------------------------------------------- reads: segment()
def test_segment_undoes_coalesce_exactly() -> None:
    """What the kernel would hand us with TSO on (one super-packet) is cut back into the
    very segments that made it, checksums complete."""
    from jumping.service.gro import segment

    for pkts in (flow(44, last=501), flow(2), flow(10, seq=0xFFFFFFFF - 3000, psh_last=False)):
        writes = coalesce(pkts)
        assert len(writes) == 1
        frame = b"".join(bytes(b) for b in writes[0])
        assert segment(frame) == pkts


@settings(max_examples=100, deadline=None)
@given(st.integers(1, 45), st.integers(1, 1400), st.integers(1, 1400), st.booleans())
def test_segment_matches_the_reference_segmenter(n: int, mss: int, last: int, psh: bool) -> None:
    from jumping.service.gro import segment

    pkts = flow(n, mss=mss, last=min(last, mss), psh_last=psh)
    for bufs in coalesce(pkts):
        frame = b"".join(bytes(b) for b in bufs)
        assert segment(frame) == gso_segment(bufs)


def test_segment_completes_a_pending_checksum_and_passes_plain_packets() -> None:
    from jumping.service.gro import segment

    udp = bytearray(tcp4(0, b"payload!", proto=17))  # any L4: the checksum is at +16 here
    good = bytes(udp)
    # what the kernel hands over with NEEDS_CSUM: the field holds the pseudo-header sum
    pseudo = csum(good[12:20] + struct.pack("!BBH", 0, 17, len(good) - 20))
    udp[36:38] = pseudo.to_bytes(2, "big")
    hdr = struct.pack("<BBHHHH", 1, 0, 0, 0, 20, 16)
    assert segment(hdr + bytes(udp)) == [good]
    assert segment(PLAIN + good) == [good]


def test_segment_refuses_what_it_cannot_honour() -> None:
    from jumping.service.gro import OffloadError, segment

    pkt = flow(1)[0]
    for hdr in (
        struct.pack("<BBHHHH", 1, 4, 52, 1368, 40, 16),  # GSO TCPv6 on an IPv4 packet
        struct.pack("<BBHHHH", 1, 3, 52, 1368, 20, 6),  # UDP fragmentation offload
        struct.pack("<BBHHHH", 1, 1, 52, 0, 20, 16),  # gso_size 0
        struct.pack("<BBHHHH", 1, 0, 0, 0, 5000, 16),  # checksum start past the end
    ):
        with pytest.raises(OffloadError):
            segment(hdr + pkt)
