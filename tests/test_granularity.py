"""The timer granularity the node observes: the largest recent lateness of its timers."""

from __future__ import annotations

from jumping.service.granularity import TimerLateness


def test_granularity_is_the_largest_recent_lateness_within_bounds() -> None:
    g = TimerLateness(window=4, floor=0.001, ceiling=0.05)
    assert g.observe(0.0002) == 0.001  # never below the floor
    assert g.observe(0.008) == 0.008
    for _ in range(3):
        assert g.observe(0.0005) == 0.008  # still in the window
    assert g.observe(0.0005) == 0.001  # the late one left the window
    assert g.observe(3.0) == 0.05  # a stall (suspend, debugger) is capped
    assert g.observe(-1.0) == 0.05  # early firings count as on time
