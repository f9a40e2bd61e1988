"""The core's data plane: receive_batch / seal_batch return everything they produce,
dispatch on the wire type themselves, and count drops with shared Drop objects."""

from __future__ import annotations

from hypothesis import example, given, settings
from hypothesis import strategies as st

from jumping.core import wire
from jumping.core.node import QUEUED, Received, Sealed, drop
from jumping.core.outputs import ArmTimer, Drop, Send
from jumping.testing.sim import SimNet, capture, ipv4
from tests.core.test_aead import IMPLEMENTATIONS, implementation
from tests.test_gro import flow, tcp4
from tests.test_segments import kernel_segments, super_packet

UP = [ipv4("10.99.0.2", "10.99.0.1", bytes([i]) * 100) for i in range(5)]
DOWN = ipv4("10.99.0.1", "10.99.0.2", b"down")


def attached(seed: int = 1) -> SimNet:
    net = SimNet(seed=seed)
    net.start()
    net.run_for(0.5)
    assert net.states() == ("ATTACHED", "ATTACHED")
    return net


def test_seal_batch_groups_by_path_and_receive_batch_delivers_in_order() -> None:
    net = attached()
    sealed = net.client.seal_batch(net.now, UP)
    assert isinstance(sealed, Sealed)
    assert len(sealed.sends) == 1
    path, datagrams = sealed.sends[0]
    assert path is net.client.session.path  # type: ignore[union-attr]
    assert [d[0] for d in datagrams] == [wire.MessageType.DATA] * 5
    gpath = net.links[0].gateway_side
    got = net.gateway.receive_batch(net.now, gpath, datagrams)
    assert isinstance(got, Received)
    assert got.packets == UP
    assert not [o for o in got.outputs if not isinstance(o, ArmTimer)]
    assert net.client.pending == [] and net.gateway.pending == []


def test_receive_batch_dispatches_every_wire_type_itself() -> None:
    net = attached()
    gpath = net.links[0].gateway_side
    s = net.client.session
    assert s is not None and s.current is not None
    kp = s.current
    probe = kp.seal(kp.control_prefix, bytes((wire.Control.PROBE,)) + b"12345678")
    data = capture(net, "client", UP[0])
    junk = b"\x09\x01\x00\x00" + bytes(40)
    before = dict(net.gateway.drops)
    got = net.gateway.receive_batch(net.now, gpath, [data, probe, junk, data, b""])
    assert got.packets == [UP[0]]  # the replayed copy is dropped
    replies = [o for o in got.outputs if isinstance(o, Send)]
    assert len(replies) == 1 and replies[0].data[0] == wire.MessageType.CONTROL
    drops = {k: v - before.get(k, 0) for k, v in net.gateway.drops.items()}
    assert drops["REPLAY"] == 1 and drops["MALFORMED_HEADER"] == 2


def test_drops_are_shared_objects_and_counted() -> None:
    net = attached()
    gpath = net.links[0].gateway_side
    data = bytearray(capture(net, "client", UP[0]))
    data[-1] ^= 1
    assert net.gateway._open_data(net.now, gpath, bytes(data)) is drop("AUTH_FAILED")
    assert net.gateway._open_data(net.now, gpath, bytes(data)) is drop("AUTH_FAILED")
    assert net.gateway.drops["AUTH_FAILED"] == 2
    assert net.gateway.receive(net.now, gpath, bytes(data)) == [drop("AUTH_FAILED")]
    assert isinstance(drop("AUTH_FAILED"), Drop)


def test_a_client_without_keys_queues_and_the_timer_output_is_returned() -> None:
    net = SimNet(seed=2)
    sealed = net.client.seal_batch(net.now, UP[:2])
    assert sealed.sends == [] and net.client.drops["QUEUE_FULL"] == 0
    assert net.client._seal_data(net.now, UP[2]) is QUEUED
    net.start()
    net.run_for(0.5)
    assert net.log["gateway"].tun[:3] == UP[:3]


def test_what_an_off_path_packet_causes_comes_back_with_the_batch() -> None:
    """A packet from another path (NAT rebinding) is delivered and the path challenge it
    causes comes back in Received.outputs, in the same call; nothing is left in pending."""
    net = SimNet(seed=3, links=2)
    net.start()
    net.run_for(0.5)
    s = next(iter(net.gateway.sessions.values()))
    other = next(link.gateway_side for link in net.links if link.gateway_side is not s.path)
    data = capture(net, "client", UP[1])
    off_path = net.gateway.counters["rx_off_path"]
    got = net.gateway.receive_batch(net.now, other, [data])
    assert got.packets == [UP[1]]
    assert net.gateway.pending == []
    challenges = [o for o in got.outputs if isinstance(o, Send) and o.path is other]
    assert len(challenges) == 1 and challenges[0].data[0] == wire.MessageType.CONTROL
    assert net.gateway.counters["rx_off_path"] == off_path + 1


def _inner() -> list:
    """Inner packets (random payloads: made once, sealed by each net alike)."""
    spoof = b"\x0a\x63\x00\x07"
    spoofed = [tcp4(1, b"s" * 1000, src=spoof), tcp4(1001, b"s" * 1000, ident=2, src=spoof)]
    return [
        *UP[:3],
        super_packet(flow(5, mss=1000, seq=1)),
        super_packet(flow(5, mss=1000, seq=5001)),
        super_packet(spoofed),
        ipv4("10.99.0.7", "10.99.0.1"),
    ]


def _pool(net: SimNet, inner: list) -> list[bytes]:
    """Datagrams from the client for the gateway: DATA, DATA_SEGMENT pieces of
    super-packets (one with a spoofed inner source), a forged copy, a control message,
    junk."""
    c = net.client
    pool: list[bytes] = []
    for p in inner:
        if isinstance(p, tuple):
            pool += c.seal_batch(net.now, [p]).sends[0][1]
        else:
            pool.append(capture(net, "client", p))
    forged = bytearray(pool[4])
    forged[-1] ^= 1
    pool.append(bytes(forged))
    kp = c.session.current  # type: ignore[union-attr]
    pool.append(kp.seal(kp.control_prefix, bytes((wire.Control.PROBE,)) + b"12345678"))
    pool.append(b"\x06\x01\x00\x00" + bytes(40))
    return pool


def _delivered(packets: list) -> list[bytes]:
    out: list[bytes] = []
    for p in packets:
        out += [p] if isinstance(p, bytes) else kernel_segments([p])
    return out


@settings(max_examples=80, deadline=None)
@given(st.lists(st.integers(0, 20), max_size=40), st.booleans(), st.booleans())
@example(list(range(21)), True, False)
@example([3, 4, 4, 5, 6, 7, 9, 8, 10], False, False)
def test_a_batch_is_exactly_its_datagrams_one_by_one(
    picks: list[int], ordered: bool, detach: bool
) -> None:
    """receive_batch takes the datagrams after the first of a keypair the lean way, and
    the pieces of a super-packet that follow in order in one loop; what it delivers, drops
    and counts is what the same datagrams do one call each (replays, forgeries, spoofed
    sources, control messages, junk and a session that is not in the plain case too), with
    the data plane's loops in C and in Python."""
    for impl in IMPLEMENTATIONS:
        with implementation(impl):
            _batch_is_one_by_one(picks, ordered, detach)


def _batch_is_one_by_one(picks: list[int], ordered: bool, detach: bool) -> None:
    nets = [attached(seed=4), attached(seed=4)]
    inner = _inner()
    pools = [_pool(n, inner) for n in nets]
    assert pools[0] == pools[1]  # same seed, same keys: the same datagrams for both
    batch = [pools[0][i % len(pools[0])] for i in (sorted(picks) if ordered else picks)]
    results = []
    for k, net in enumerate(nets):
        g = net.gateway
        s = next(iter(g.sessions.values()))
        if detach:
            s.owned = False  # not the plain case: every datagram the ordinary way
        path = net.links[0].gateway_side
        before = dict(g.drops)
        if k == 0:
            got = g.receive_batch(net.now, path, batch)
            packets, outputs = got.packets, got.outputs
        else:
            packets, outputs = [], []
            for d in batch:
                one = g.receive_batch(net.now, path, [d])
                packets += one.packets
                outputs += one.outputs
        drops = {r: n - before.get(r, 0) for r, n in g.drops.items() if n != before.get(r, 0)}
        results.append((
            _delivered(packets), drops, s.rx_bytes, s.rx_packets,
            sorted(type(o).__name__ for o in outputs if not isinstance(o, ArmTimer)),
        ))  # fmt: skip
    assert results[0] == results[1]
