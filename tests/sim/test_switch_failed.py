"""TRANSPORT_SWITCH_FAILED: the gateway challenges a new path (a reattach or a rebinding
arrived on it) and no challenge is ever answered (the path carries nothing back to the
client); after its attempts it reports the failed switch once, and the old binding stays."""

from __future__ import annotations

from jumping.core.gateway import CHALLENGE_ATTEMPTS
from jumping.testing.invariants import InvariantChecker
from jumping.testing.sim import SimNet


def test_an_unanswered_path_validation_is_a_failed_switch() -> None:
    """The client's NAT moves (a new source address) and that direction then carries
    nothing back: the gateway challenges the new path, never hears an answer."""
    net = SimNet(seed=9, links=1)
    net.checker = InvariantChecker(net.policy)
    net.echo = True
    net.start()
    net.run_for(3.0)
    assert net.states() == ("ATTACHED", "ATTACHED")
    net.traffic(until=net.now + 6.0, interval=0.01)
    net.run_for(1.0)
    bound = net.gateway.sessions[net.client.session.session_id].path  # type: ignore[union-attr]
    new = net.rebind(0)
    net.links[0].dead_to = "client"  # nothing reaches the client any more
    net.run_for(4.0)
    failed = net.events("gateway", "TRANSPORT_SWITCH_FAILED")
    assert len(failed) == 1, [e.fields for e in failed]
    (f,) = failed
    assert f.reason_code == "REATTACH_VALIDATION_FAILED"
    assert f.fields["error"] == "path_validation_timeout"
    assert f.fields["new_transport_id"] == new.transport_id
    assert f.fields["old_transport_id"] == bound.transport_id
    assert net.gateway.counters["path_challenges"] >= 1
    assert net.gateway.counters["path_validation_failed"] == 1
    assert net.events("gateway", "TRANSPORT_SWITCH") == []
    assert CHALLENGE_ATTEMPTS > 1
    assert net.checker.violations == [], net.checker.violations[:5]
