"""The service's hot path (jumping/service/dataplane.py) on a fake clock, around real cores:
datagrams in, TUN packets out and back, the outputs executed, the one timer at the core's
deadline."""

from __future__ import annotations

from typing import Any

from twisted.internet.task import Clock
from zope.interface import alsoProvides

from jumping.core import wire
from jumping.core.outputs import ArmTimer
from jumping.interfaces import IBatchTransport
from jumping.service.dataplane import DataPlane
from jumping.testing.sim import SimNet, SimPath, capture, ipv4

UP = ipv4("10.99.0.2", "10.99.0.1", b"up" * 40)
DOWN = ipv4("10.99.0.1", "10.99.0.2", b"down" * 20)


class Tun:
    name = "t0"

    def __init__(self) -> None:
        self.written: list[bytes] = []

    def write_many(self, packets: Any) -> None:
        self.written.extend(bytes(p) for p in packets)


def sending(path: SimPath, batches: list[int] | None = None) -> list[bytes]:
    """Give a simulated path a transport's send (and, with ``batches``, send_batch, the
    length of each call recorded there); returns what it sent."""
    sent: list[bytes] = []
    path.send = sent.append  # type: ignore[method-assign]
    if batches is not None:

        def send_batch(datagrams: list[bytes]) -> None:
            batches.append(len(datagrams))
            sent.extend(datagrams)

        path.send_batch = send_batch  # type: ignore[attr-defined]
        alsoProvides(path, IBatchTransport)
    return sent


def attached(links: int = 1) -> tuple[SimNet, Clock]:
    net = SimNet(seed=7, links=links)
    net.start()
    net.run_for(0.5)
    assert net.states() == ("ATTACHED", "ATTACHED")
    clock = Clock()
    clock.advance(net.now)
    return net, clock


def plane(core: Any, clock: Clock) -> tuple[DataPlane, Tun, list[Any]]:
    lost: list[Any] = []
    dp = DataPlane(clock, lost.append)
    tun = Tun()
    dp.start(core, tun)  # type: ignore[arg-type]
    return dp, tun, lost


def test_nothing_reaches_a_core_before_the_node_serves() -> None:
    net, clock = attached()
    dp = DataPlane(clock, lambda _t: None)
    gpath = net.links[0].gateway_side
    data = capture(net, "client", UP)
    dp.datagramReceived(gpath, data)
    dp.datagramsReceived(gpath, [data])
    tun = Tun()
    dp.start(net.gateway, tun)  # type: ignore[arg-type]
    dp.datagramReceived(gpath, data)  # not a replay: the core never saw it
    assert tun.written == [UP] and net.gateway.drops["REPLAY"] == 0


def test_a_datagram_in_is_its_inner_packet_on_the_tun_device() -> None:
    net, clock = attached()
    dp, tun, _ = plane(net.gateway, clock)
    gpath = net.links[0].gateway_side
    dp.datagramReceived(gpath, capture(net, "client", UP))
    assert tun.written == [UP]
    run = [capture(net, "client", UP), capture(net, "client", UP)]
    dp.datagramsReceived(gpath, run)  # one read of two (UDP GRO)
    assert tun.written == [UP, UP, UP]
    dp.datagramReceived(gpath, run[0])  # a replay: counted by the core, nothing written
    assert tun.written == [UP, UP, UP] and net.gateway.drops["REPLAY"] == 1


def test_a_tun_wakeup_is_sealed_and_sent_in_one_batch_the_peer_opens() -> None:
    net, clock = attached()
    dp, _tun, _ = plane(net.gateway, clock)
    gpath = net.links[0].gateway_side
    calls: list[int] = []
    sent = sending(gpath, calls)
    for _ in range(3):
        dp.tun_packet(DOWN)
    assert sent == []  # sealed at the end of the wake-up, not before
    dp.flush()
    assert calls == [3] and len(sent) == 3
    assert all(d[:1] == bytes((wire.MessageType.DATA,)) for d in sent)
    cpath = net.links[0].client_side
    assert net.client.receive_batch(net.now, cpath, sent).packets == [DOWN] * 3


def test_without_send_batch_each_datagram_is_sent_alone() -> None:
    net, clock = attached()
    dp, _tun, _ = plane(net.gateway, clock)
    sent = sending(net.links[0].gateway_side)
    dp.tun_packet(DOWN)
    dp.tun_packet(DOWN)
    dp.flush()
    assert len(sent) == 2


def test_the_timer_keeps_the_earliest_deadline() -> None:
    net, clock = attached()
    dp, _tun, _ = plane(net.gateway, clock)
    now = clock.seconds()
    dp.run([ArmTimer(now + 10)])
    dp.run([ArmTimer(now + 5)])
    dp.run([ArmTimer(now + 7)])  # later than the armed one: nothing changes
    # one timer, moved: nothing cancelled is left behind
    (call,) = clock.getDelayedCalls()
    assert call.active() and call.getTime() == now + 5
    fired: list[float] = []
    dp._fire = lambda: fired.append(clock.seconds())  # type: ignore[method-assign]
    call.func = dp._fire  # what the armed call runs, observed
    clock.advance(5)
    assert fired == [now + 5]


def test_a_moved_timer_fires_sooner_on_a_real_reactor_heap() -> None:
    """Twisted's own heap (not the test clock's list): the timer moved to a sooner deadline
    fires then, once, and the later one it replaced never fires."""
    from twisted.internet.selectreactor import SelectReactor

    reactor = SelectReactor()
    try:
        dp = DataPlane(reactor, lambda t: None)
        fired: list[float] = []
        dp._fire = lambda: fired.append(reactor.seconds())  # type: ignore[method-assign]
        other = reactor.callLater(0.5, lambda: None)  # a heap with more than our call
        now = reactor.seconds()
        dp.run([ArmTimer(now + 0.3)])
        dp.run([ArmTimer(now + 0.05)])
        deadline = now + 0.6
        while reactor.seconds() < deadline:
            reactor.iterate(0.01)
        assert len(fired) == 1 and fired[0] >= now + 0.05 and fired[0] < now + 0.3
        assert not other.active()  # the other call ran at its time too
    finally:
        for c in reactor.getDelayedCalls():
            c.cancel()
        waker = reactor.waker  # the reactor's own pipe: closed, nothing left open
        reactor.removeReader(waker)
        waker.connectionLost(None)


def test_the_armed_timer_fires_at_the_cores_deadline_and_runs_its_tick() -> None:
    net, clock = attached()
    client = net.client
    dp, _tun, _ = plane(client, clock)
    sent = sending(net.links[0].client_side)
    ticks: list[float] = []
    tick = client.tick
    client.tick = lambda now: (ticks.append(now), tick(now))[1]  # type: ignore[method-assign]
    dp.run(tick(clock.seconds()))  # what serving starts with
    deadline = client.next_deadline()
    assert deadline is not None
    (call,) = clock.getDelayedCalls()
    assert call.getTime() == deadline
    clock.advance(deadline - clock.seconds() - 1e-3)
    assert ticks == []  # not before its deadline
    clock.advance(1e-3)
    assert ticks == [clock.seconds()] and abs(ticks[0] - deadline) < 1e-9
    keepalives = client.counters["nat_keepalives"]
    # idle for the NAT keepalive interval: each fired timer ticks the core, which arms the next
    for _ in range(int(client.policy.nat_keepalive_s) + 2):
        clock.advance(1.0)
    assert client.counters["nat_keepalives"] == keepalives + 1
    assert sent, "the keepalive the tick returned went out on the path"
    assert [c for c in clock.getDelayedCalls() if c.active()], "the next deadline is armed"


def test_a_lost_transport_is_told_to_the_core_then_the_service() -> None:
    net, clock = attached(links=2)
    dp, _tun, lost = plane(net.client, clock)
    for link in net.links:
        sending(link.client_side)
    path = net.client.session.path  # type: ignore[union-attr]
    failures = net.client.stats[path].failures
    dp.transportLost(path, "reset")
    assert net.client.stats[path].failures == failures + 1
    assert lost == [path]


def test_close_stops_the_timer_and_forgets_unsealed_packets() -> None:
    net, clock = attached()
    dp, _tun, _ = plane(net.gateway, clock)
    sent = sending(net.links[0].gateway_side)
    dp.run([ArmTimer(clock.seconds() + 1)])
    dp.tun_packet(DOWN)
    dp.close()
    assert not [c for c in clock.getDelayedCalls() if c.active()]
    dp.flush()
    assert sent == []
