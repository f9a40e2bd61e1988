"""TCP super-packets carried whole (DATA_SEGMENT, protocol revision 2): what the receiver's
kernel makes of the runs is exactly what software segmentation of the original super-packet
makes, also when datagrams are lost or reordered; the feature is negotiated, and a pair of
revisions 1 and 2 keeps to DATA."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from jumping.core import segments, wire
from jumping.core.segments import SegmentRun
from jumping.service.gro import coalesce, run_buffers, segment
from jumping.testing.sim import SimNet
from tests.core.test_aead import IMPLEMENTATIONS, implementation
from tests.test_gro import flow, tcp4

CLIENT, SERVER = b"\x0a\x63\x00\x02", b"\x0a\x63\x01\x02"


def attached(seed: int = 1, **patch: object) -> SimNet:
    net = SimNet(seed=seed)
    for name, fn in patch.items():
        side, attr = name.split("__")
        setattr(net.core(side), attr, fn)
    net.start()
    net.run_for(2.0)
    assert net.states() == ("ATTACHED", "ATTACHED")
    return net


def super_packet(pkts: list[bytes]) -> tuple[bytes, int, int]:
    """What a TUN device with TSO hands over for ``pkts``: (packet, header length, gso)."""
    writes = coalesce(pkts)
    assert len(writes) == 1
    frame = b"".join(bytes(b) for b in writes[0])
    packet = frame[10:]
    gso = int.from_bytes(frame[4:6], "little") if len(pkts) > 1 else len(pkts[0]) - 52
    return packet, segments.tcp4_header_length(packet), gso


def kernel_segments(items: list) -> list[bytes]:
    """What the receiving kernel writes out for Received.packets (software GSO, checked
    against a reference segmenter in test_gro)."""
    out: list[bytes] = []
    for it in items:
        assert isinstance(it, SegmentRun)
        out += segment(b"".join(bytes(b) for b in run_buffers(it)))
    return out


def test_the_feature_is_negotiated_both_ways() -> None:
    net = attached()
    c = net.client.session
    g = next(iter(net.gateway.sessions.values()))
    assert c is not None and c.peer_features == segments.FEATURE_SEGMENTS
    assert g.peer_features == segments.FEATURE_SEGMENTS
    assert net.client.accepts_segments(flow(1)[0])
    down = tcp4(1, b"x" * 100, src=SERVER, dst=CLIENT)
    assert net.gateway.accepts_segments(down)


@settings(max_examples=60, deadline=None)
@given(
    st.integers(1, 47), st.integers(200, 1368), st.integers(1, 1368), st.booleans(),
    st.integers(0, 2**32 - 1), st.integers(0, 99),
)  # fmt: skip
def test_pieces_become_exactly_the_segments_software_would_make(
    n: int, mss: int, last: int, psh: bool, seed: int, loss_pct: int
) -> None:
    for impl in IMPLEMENTATIONS:  # the C loops and their Python twin alike
        with implementation(impl):
            _pieces_become_segments(n, mss, last, psh, seed, loss_pct)


def _pieces_become_segments(
    n: int, mss: int, last: int, psh: bool, seed: int, loss_pct: int
) -> None:
    pkts = flow(n, mss=mss, last=min(last, mss), psh_last=psh)
    net = attached()
    packet, hl, gso = super_packet(pkts)
    sealed = net.client.seal_batch(net.now, [(packet, hl, gso)])
    (path, datagrams), = sealed.sends  # fmt: skip
    assert len(datagrams) == n
    assert all(d[0] == wire.MessageType.DATA_SEGMENT for d in datagrams)
    assert max(len(d) for d in datagrams) <= max(len(p) for p in pkts) + wire.OVERHEAD
    rng = random.Random(seed)
    kept = [i for i in range(n) if rng.randrange(100) >= loss_pct]
    got = net.gateway.receive_batch(
        net.now, net.links[0].gateway_side, [datagrams[i] for i in kept]
    )
    assert kernel_segments(got.packets) == [pkts[i] for i in kept]


def test_reordered_pieces_start_new_runs_and_nothing_is_lost_or_duplicated() -> None:
    pkts = flow(20, last=700)
    net = attached()
    sealed = net.client.seal_batch(net.now, [super_packet(pkts)])
    datagrams = sealed.sends[0][1]
    order = [0, 1, 2, 5, 3, 4, 6, *range(7, 20)]
    got = net.gateway.receive_batch(
        net.now, net.links[0].gateway_side, [datagrams[i] for i in order]
    )
    assert kernel_segments(got.packets) == [pkts[i] for i in order]
    assert len(got.packets) == 4  # 0-2, 5, 3-4, 6-19


def test_the_gateway_sends_pieces_down_too() -> None:
    pkts = [tcp4(1000 + i * 1368, bytes([i]) * 1368, ident=i, src=SERVER, dst=CLIENT,
                 opts=b"\x01\x01\x08\x0a" + bytes(8)) for i in range(5)]  # fmt: skip
    net = attached()
    sealed = net.gateway.seal_batch(net.now, [super_packet(pkts)])
    (path, datagrams), = sealed.sends  # fmt: skip
    got = net.client.receive_batch(net.now, net.links[0].client_side, datagrams)
    assert kernel_segments(got.packets) == pkts


def test_a_single_packet_with_a_pending_checksum_goes_as_one_piece() -> None:
    pkt = flow(1, last=300)[0]
    net = attached()
    partial = bytearray(pkt)
    partial[36:38] = b"\x12\x34"  # the TUN leaves the checksum field to be completed
    sealed = net.client.seal_batch(net.now, [(bytes(partial), 52, 300)])
    datagrams = sealed.sends[0][1]
    assert len(datagrams) == 1 and datagrams[0][2:4] == (segments.LAST).to_bytes(2, "little")
    got = net.gateway.receive_batch(net.now, net.links[0].gateway_side, datagrams)
    assert kernel_segments(got.packets) == [pkt]


def test_a_revision_1_gateway_gets_data_only() -> None:
    """A revision-1 gateway ignores the keepalive's body (it never answers): the client
    stops announcing after 4 tries and never takes super-packets whole."""
    net = attached(gateway___on_features=lambda *a: None)
    net.run_for(10.0)
    c = net.client.session
    assert c is not None and c.peer_features is None and c.features_sent == 4
    assert not net.client.accepts_segments(flow(1)[0])
    pkt = flow(1)[0]
    net.send_inner("client", pkt)
    net.run_for(0.1)
    assert net.log["gateway"].tun[-1] == pkt


def test_a_revision_1_client_gets_data_only() -> None:
    """A revision-1 client confirms its keys with an empty keepalive: the gateway never
    learns the feature and sends complete packets."""

    def old_announce(now: float, s: object) -> None:
        net.client._control(now, s, wire.Control.KEEPALIVE)  # type: ignore[arg-type]

    net = SimNet(seed=4)
    net.client._announce = old_announce  # type: ignore[method-assign]
    net.start()
    net.run_for(5.0)
    g = next(iter(net.gateway.sessions.values()))
    assert g.peer_features is None
    assert not net.gateway.accepts_segments(tcp4(1, b"x" * 100, src=SERVER, dst=CLIENT))


def test_pieces_to_a_node_that_did_not_offer_them_are_counted_drops() -> None:
    net = attached()
    datagrams = net.client.seal_batch(net.now, [super_packet(flow(3))]).sends[0][1]
    net.gateway.features = 0
    got = net.gateway.receive_batch(net.now, net.links[0].gateway_side, datagrams)
    assert got.packets == [] and net.gateway.drops["SEGMENTS_NOT_OFFERED"] == 3


def test_malformed_pieces_are_counted_drops() -> None:
    net = attached()
    s = net.client.session
    assert s is not None and s.current is not None
    udp = tcp4(1, b"u" * 200, proto=17)  # not TCP
    short = tcp4(1, b"t" * 200)
    bad = [
        *s.current.seal_pieces(udp, 52, 100),  # type: ignore[misc]
        *s.current.seal_pieces(short[:60], 52, 100),  # type: ignore[misc]
    ]
    got = net.gateway.receive_batch(net.now, net.links[0].gateway_side, bad)
    assert got.packets == [] and net.gateway.drops["MALFORMED_SEGMENT"] == len(bad)
