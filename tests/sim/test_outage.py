"""TRANSPORT_SWITCH carries the outage as the user felt it: ``detection_ms`` (the last
authenticated packet on the old path to the decision to switch) beside
``switch_latency_ms`` (decision to new binding), and their sum ``outage_ms``. Checked
against the gap the traffic itself saw, on both ends, in the seeded simulator of the real
cores; the same fields feed jumpctl audit (tests/test_audit_outage.py) and the
``jumping_switch_outage_seconds`` metric."""

from __future__ import annotations

import pytest

from jumping.testing.invariants import InvariantChecker
from jumping.testing.sim import SimNet, gaps


def running(seed: int) -> SimNet:
    net = SimNet(seed=seed, links=2)
    net.checker = InvariantChecker(net.policy)
    net.echo = True
    net.start()
    net.run_for(3.0)
    assert net.states() == ("ATTACHED", "ATTACHED")
    return net


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_a_silent_path_death_reports_the_gap_the_traffic_saw(seed: int) -> None:
    net = running(seed)
    net.traffic(until=net.now + 6.0)
    net.run_for(1.0)
    t0 = net.now
    net.links[0].up = False
    net.run_for(4.0)
    # the traffic's own view: the longest gap between deliveries, each way
    felt = {
        "client": gaps(net.delivered["client"], t0),
        "gateway": gaps(net.delivered["gateway"], t0),
    }
    for side in ("client", "gateway"):
        (sw,) = net.events(side, "TRANSPORT_SWITCH")
        f = sw.fields
        assert f["detection_ms"] + f["switch_latency_ms"] == f["outage_ms"], f
        # the silent death took far longer to notice than to switch
        assert f["detection_ms"] > f["switch_latency_ms"], f
        # the outage ends at the new binding; the next delivery follows within a packet's
        # interval plus one trip (2 ms traffic, 10 ms links); a gateway already delivers
        # the client's packets from the new path while it validates it (one round trip)
        assert abs(felt[side] * 1000 - f["outage_ms"]) <= 40, (side, felt[side], f)
        assert f["outage_ms"] >= 100, f  # a probe timeout at least: not "switch 0-3 ms"
    assert net.checker.violations == []


def test_an_idle_session_counts_from_its_first_unanswered_packet() -> None:
    """A session that was idle when its path died: nobody waited until the first packet
    went out, so the outage is not the idle time."""
    net = running(4)
    net.run_for(10.0)  # idle: well past idle_after_ms
    net.links[0].up = False
    net.run_for(1.0)
    t0 = net.now
    net.traffic(until=net.now + 4.0)
    net.run_for(4.0)
    (sw,) = net.events("client", "TRANSPORT_SWITCH")
    f = sw.fields
    assert f["outage_ms"] <= int((sw_time(net) - t0) * 1000) + 1, f
    assert f["outage_ms"] < 2000, f
    assert f["detection_ms"] + f["switch_latency_ms"] == f["outage_ms"], f


def sw_time(net: SimNet) -> float:
    log = net.log["client"]
    times = [
        t
        for t, e in zip(log.event_times, log.events, strict=True)
        if e.event_type == "TRANSPORT_SWITCH"
    ]
    return times[0]
