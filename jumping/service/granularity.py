"""
How late the reactor's timers actually fire: the timer granularity the core's probe timeout
must stay clear of (jumping/core/paths.py, ``PathStats.pto``).

The node arms one reactor timer for the core's next deadline; :class:`TimerLateness` is fed
how late each one fired (``observe``) and reports the largest lateness of the last
``window`` firings, clamped to [``floor``, ``ceiling``]: on an idle host about a
millisecond (epoll waits in whole milliseconds), under load as late as the scheduler makes
it, so a busy host gets a longer probe timeout instead of false failovers.
"""

from __future__ import annotations


class TimerLateness:
    __slots__ = ("ring", "pos", "floor", "ceiling", "current")

    def __init__(self, window: int = 64, floor: float = 0.001, ceiling: float = 0.05) -> None:
        self.ring = [0.0] * window
        self.pos = 0
        self.floor = floor
        self.ceiling = ceiling
        self.current = floor

    def observe(self, late: float) -> float:
        """Record one firing ``late`` seconds after its deadline; returns the granularity."""
        ring = self.ring
        old = ring[self.pos]
        late = min(max(late, 0.0), self.ceiling)
        ring[self.pos] = late
        self.pos = (self.pos + 1) % len(ring)
        if late >= self.current:
            self.current = max(late, self.floor)
        elif old >= self.current:  # the largest one left the window
            self.current = max(max(ring), self.floor)
        return self.current
