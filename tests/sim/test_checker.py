"""The reference model itself: it must flag what breaks an invariant, and only that."""

from __future__ import annotations

from jumping.core.outputs import Emit
from jumping.core.policy import Policy
from jumping.testing.invariants import InvariantChecker

T0 = 1_800_000_000.0


def switches(times: list[float], latency_ms: int = 0) -> list[str]:
    c = InvariantChecker(Policy())
    for t in times:
        e = Emit("TRANSPORT_SWITCH", "ab" * 16, 1, None, {"switch_latency_ms": latency_ms})
        c._event(T0 + t + latency_ms / 1000.0, "client", e)
    return c.violations


def test_a_ninth_switch_within_60_s_is_flagged() -> None:
    assert any("9 switches within 60 s" in v for v in switches([i * 5.0 for i in range(9)]))


def test_switches_closer_than_the_cooldown_are_flagged() -> None:
    assert any("apart" in v for v in switches([0.0, 1.0]))


def test_the_window_is_half_open_like_the_limiter() -> None:
    # the ninth decision exactly 60 s after the first starts a new window (the limiter
    # allows it), also when the event reports the latency in whole milliseconds
    times = [0.0, 10.0, 20.0, 30.0, 40.0, 45.0, 50.0, 55.0, 60.0]
    assert switches(times) == []
    assert switches(times, latency_ms=39) == []
    assert switches([*times[:-1], 59.9]) != []


def test_a_quiet_session_that_originates_traffic_is_flagged() -> None:
    from jumping.testing.sim import SimNet

    net = SimNet(seed=2)
    net.checker = InvariantChecker(net.policy)
    net.start()
    net.run_for(10.0)  # quiet now
    assert net.checker.violations == []
    g = next(iter(net.gateway.sessions.values()))
    assert g.quiet
    # what a regression would do: the quiet gateway session sends on its own (heartbeats)
    kp = g.current
    assert kp is not None
    for _ in range(2):
        g.tx_packets += 1
        net.gateway._send(g.path, kp.seal(kp.control_prefix, b"\x01"))
    net.apply("gateway", net.gateway.take())
    net.run_for(30.0)  # the next step (the packets arriving) looks
    assert any("quiet but sent 2" in v for v in net.checker.violations)
