"""transport_lost_ttl_ms ends a session whose transport stays lost across RECOVERING and
DEGRADED stints (TRANSPORT_TTL_EXCEEDED): the policy key used to be validated and then
ignored, and a client whose switches were refused looped RECOVERING -> DEGRADED ->
RECOVERING until the cooldown allowed a switch."""

from __future__ import annotations

from jumping.core.policy import Policy
from jumping.testing.invariants import InvariantChecker
from jumping.testing.sim import SimNet


def _changes(net: SimNet, side: str) -> list[tuple[float, str, str]]:
    log = net.log[side]
    return [
        (t, e.reason_code or "", e.fields["new_state"])
        for t, e in zip(log.event_times, log.events, strict=True)
        if e.event_type == "SESSION_STATE_CHANGE"
    ]


def test_refused_switches_end_at_the_lost_transport_ttl() -> None:
    policy = Policy(
        switch_cooldown_ms=120_000, max_switches_per_min=1, transport_lost_ttl_ms=12_000
    )
    net = SimNet(seed=7, links=2, policy=policy)
    net.checker = InvariantChecker(net.policy)
    net.echo = True
    net.start()
    net.run_for(3.0)
    assert net.states() == ("ATTACHED", "ATTACHED")
    net.traffic(until=net.now + 40.0, interval=0.05)
    net.run_for(1.0)
    net.links[0].up = False  # first failover: allowed
    net.run_for(3.0)
    assert len(net.events("client", "TRANSPORT_SWITCH")) == 1
    lost_at = net.now
    net.links[1].up = False  # the second would come within the cooldown: refused
    net.links[0].up = True
    net.run_for(30.0)
    changes = _changes(net, "client")
    refused = [c for c in changes if c[1] in ("COOLDOWN_ACTIVE", "SWITCH_RATE_LIMITED")]
    assert refused, changes
    end = [c for c in changes if c[2] == "TERMINATED"]
    assert [c[1] for c in end] == ["TRANSPORT_TTL_EXCEEDED"], changes
    # 12 s after the last authenticated packet on the lost transport (just before lost_at)
    assert lost_at + 11.0 <= end[0][0] <= lost_at + 12.5, (lost_at, end)
    (term,) = net.events("client", "SESSION_TERMINATED")
    assert term.reason_code == "TRANSPORT_TTL_EXCEEDED"
    assert net.checker.violations == [], net.checker.violations[:5]


def test_a_healthy_degraded_session_is_not_ended_by_the_ttl() -> None:
    """The TTL counts from the last authenticated packet: a session that keeps hearing
    its transport is never ended by it, whatever its state."""
    policy = Policy(transport_lost_ttl_ms=2_000)
    net = SimNet(seed=8, links=1, policy=policy)
    net.checker = InvariantChecker(net.policy)
    net.echo = True
    net.start()
    net.run_for(3.0)
    net.traffic(until=net.now + 20.0, interval=0.01)
    net.links[0].loss = 0.3  # lossy but alive: VOLATILE / DEGRADED, never lost
    net.run_for(20.0)
    reasons = [c[1] for c in _changes(net, "client")]
    assert "TRANSPORT_TTL_EXCEEDED" not in reasons, reasons
    assert net.states()[0] != "TERMINATED"
    assert net.checker.violations == [], net.checker.violations[:5]
