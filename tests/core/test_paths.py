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
