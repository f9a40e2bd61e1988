"""Path scoring: a path's own queueing never makes it look worse than an idle twin."""

from __future__ import annotations

from jumping.core.paths import MIN_RTT_WINDOW, Candidate, PathStats, select
from jumping.core.policy import Policy


def feed(st: PathStats, t0: float, rtts: list[float]) -> float:
    t = t0
    for i, rtt in enumerate(rtts):
        st.probe_sent(t, i)
        t += rtt
        st.probe_reply(t, i)
        t += 0.05
    return t


def test_a_busy_path_keeps_its_session_against_an_idle_twin() -> None:
    p = Policy()
    busy, idle = PathStats("a", 0.0), PathStats("b", 0.0)
    feed(idle, 0.0, [0.001] * 10)
    now = feed(busy, 0.0, [0.001] * 3 + [0.008] * 20)  # bulk traffic queues its probes
    assert busy.srtt is not None and busy.srtt > 0.005  # the smoothed RTT is inflated...
    cands = [Candidate("a", busy.score(now, p), True), Candidate("b", idle.score(now, p), True)]
    assert select("a", cands, p.hysteresis) == "a"  # ...the choice is not


def test_a_path_that_really_got_slower_loses_after_the_window() -> None:
    p = Policy()
    slow, other = PathStats("a", 0.0), PathStats("b", 0.0)
    now = feed(slow, 0.0, [0.001] * 3)
    feed(other, 0.0, [0.001] * 3)
    now = feed(slow, now + MIN_RTT_WINDOW + 1, [0.040] * 5)  # the route changed for good
    feed(other, now - 1, [0.001] * 3)
    cands = [Candidate("a", slow.score(now, p), True), Candidate("b", other.score(now, p), True)]
    assert select("a", cands, p.hysteresis) == "b"


def test_probe_timeout_scales_with_the_path_and_the_observed_timer_granularity() -> None:
    p = Policy()
    lan, wan = PathStats("a", 0.0), PathStats("b", 0.0)
    feed(lan, 0.0, [0.001] * 20)
    feed(wan, 0.0, [0.040] * 20)
    floor = p.probe_timeout_floor_ms / 1000
    assert abs(lan.pto(p, 0.001) - floor * p.probe_timeout_multiplier) < 1e-9
    assert wan.pto(p, 0.001) > 0.040 * p.probe_timeout_multiplier  # the path, not the floor
    # a host whose timers fire 10 ms late gets a floor of 4 x 10 ms, not false alarms
    assert abs(lan.pto(p, 0.010) - 0.040 * p.probe_timeout_multiplier) < 1e-9


def test_a_loaded_sample_never_becomes_the_min_rtt() -> None:
    st = PathStats("a", 0.0)
    st.probe_sent(0.0, 1)
    st.probe_reply(0.002, 1)
    t = 0.002
    for i in range(2, 40):  # 20 s of a transfer: every active-path probe queued behind data
        st.probe_sent(t, i)
        st.probe_reply(t + 0.080, i, loaded=True)
        t += 0.5
    assert st.min_rtt is not None and st.min_rtt < 0.003
    assert st.srtt is not None and st.srtt > 0.05  # the PTO still sees the queue
