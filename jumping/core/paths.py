"""
Per-path measurements and deterministic candidate selection (docs/protocol.md).

Each candidate path of a client has a :class:`PathStats`: an RFC 6298 RTT estimator fed by
authenticated probe replies, a fixed-size ring of recent probes for the loss ratio over
``loss_window_ms``, consecutive probe losses, and when it was last heard from. All bounded.

:func:`select` is the whole selection rule: lowest score wins, the active path is kept
unless a candidate beats it by the hysteresis factor, ties go to the lowest transport id.
Same inputs, same choice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from jumping.core.pathhandle import PathHandle
from jumping.core.policy import Policy

IN_FLIGHT, ACKED, LOST = 0, 1, 2
RING = 64  # probes remembered per path (bounds memory and the loss estimate)
MAX_OUTSTANDING = 16
#: the minimum RTT is remembered this long (seconds), as BBR's min_rtt filter does: the
#: path's propagation delay, not the queueing that the session's own traffic adds to it
MIN_RTT_WINDOW = 10.0
#: the probe timeout is never below this many timer granularities: a timer that fires late
#: must not look like a silent path
GRANULARITY_FACTOR = 4


class PathStats:
    __slots__ = (
        "path",
        "srtt",
        "rttvar",
        "min_rtt",
        "min_rtt_at",
        "next_min_rtt",
        "next_min_at",
        "samples",
        "ring_sent",
        "ring_state",
        "ring_pos",
        "outstanding",
        "consecutive_lost",
        "last_rx",
        "last_probe_tx",
        "failures",
        "validated",
        "added",
    )

    def __init__(self, path: PathHandle, now: float) -> None:
        self.path = path
        self.srtt: float | None = None
        self.rttvar = 0.0
        self.min_rtt: float | None = None
        self.min_rtt_at = 0.0
        self.next_min_rtt: float | None = None  # best recent unloaded sample ...
        self.next_min_at = 0.0  # ... and when it was taken
        self.samples = 0
        self.ring_sent = [0.0] * RING
        self.ring_state = [ACKED] * RING  # per probe: IN_FLIGHT, ACKED or LOST
        self.ring_pos = 0
        self.outstanding: dict[int, tuple[float, int]] = {}
        self.consecutive_lost = 0
        self.last_rx = -1e18
        self.last_probe_tx = -1e18
        self.failures = 0
        self.validated = False
        self.added = now

    @property
    def transport_id(self) -> str:
        return str(getattr(self.path, "transport_id", id(self.path)))

    def probe_sent(self, now: float, probe_id: int) -> None:
        if len(self.outstanding) >= MAX_OUTSTANDING:
            oldest = min(self.outstanding, key=lambda k: self.outstanding[k][0])
            self._lost(oldest)
        pos = self.ring_pos
        self.ring_sent[pos] = now
        self.ring_state[pos] = IN_FLIGHT
        self.outstanding[probe_id] = (now, pos)
        self.ring_pos = (pos + 1) % RING
        self.last_probe_tx = now

    def _lost(self, probe_id: int) -> None:
        entry = self.outstanding.pop(probe_id, None)
        if entry is not None:
            self.ring_state[entry[1]] = LOST
        self.consecutive_lost += 1

    def probe_reply(self, now: float, probe_id: int, loaded: bool = False) -> float | None:
        """Record an authenticated reply; returns the RTT sample (s) or None if unknown.

        ``loaded``: the probe travelled with the session's own data (the active path of a
        busy session), so it queued behind it at both ends: the sample feeds the smoothed
        RTT (the probe timeout must cover that queue) but says nothing about the path's
        propagation delay, so it never replaces the minimum RTT that selection compares."""
        entry = self.outstanding.pop(probe_id, None)
        self.last_rx = now
        if entry is None:
            return None
        sent, pos = entry
        self.ring_state[pos] = ACKED
        self.consecutive_lost = 0
        self.validated = True
        rtt = max(now - sent, 1e-6)
        if self.srtt is None:
            self.srtt, self.rttvar = rtt, rtt / 2
        else:
            self.rttvar = 0.75 * self.rttvar + 0.25 * abs(self.srtt - rtt)
            self.srtt = 0.875 * self.srtt + 0.125 * rtt
        self._min_rtt_sample(now, rtt, loaded)
        self.samples += 1
        return rtt

    def _min_rtt_sample(self, now: float, rtt: float, loaded: bool) -> None:
        """Windowed minimum: the best sample of the last MIN_RTT_WINDOW. When the window
        ends, the best *unloaded* sample seen during it takes over (never whatever sample
        happens to arrive then: under a long transfer that is a queue, not the path)."""
        if self.min_rtt is None or rtt <= self.min_rtt:
            self.min_rtt, self.min_rtt_at, self.next_min_rtt = rtt, now, None
            return
        if loaded:
            return
        nxt = self.next_min_rtt
        if nxt is None or rtt <= nxt or now - self.next_min_at > MIN_RTT_WINDOW / 2:
            self.next_min_rtt, self.next_min_at = rtt, now  # best of the recent half window
        if now - self.min_rtt_at > MIN_RTT_WINDOW:
            self.min_rtt, self.min_rtt_at = self.next_min_rtt, self.next_min_at
            self.next_min_rtt = None

    def fresh_start(self) -> None:
        """The session was (re)bound to this path: judge it on what happens from now on."""
        self.ring_sent = [0.0] * RING
        self.ring_state = [ACKED] * RING
        self.outstanding.clear()
        self.consecutive_lost = 0

    def heard(self, now: float) -> None:
        """Any authenticated packet arrived on this path."""
        self.last_rx = now

    def expire(self, now: float, timeout: float) -> int:
        """Count probes unanswered for ``timeout`` as lost; returns how many."""
        late = [pid for pid, (sent, _pos) in self.outstanding.items() if now - sent >= timeout]
        for pid in late:
            self._lost(pid)
        return len(late)

    def loss(self, now: float, window: float) -> float:
        """Lost / (acked + lost) over probes sent in the window; in-flight ones don't count."""
        acked = lost = 0
        for t, state in zip(self.ring_sent, self.ring_state, strict=True):
            if t and now - t <= window:
                if state == ACKED:
                    acked += 1
                elif state == LOST:
                    lost += 1
        return 0.0 if acked + lost == 0 else lost / (acked + lost)

    def probes_in(self, now: float, window: float) -> int:
        return sum(1 for t in self.ring_sent if t and now - t <= window)

    def pto(self, policy: Policy, granularity: float = 0.001) -> float:
        """QUIC-style probe timeout, seconds: max(srtt + 4 rttvar, floor) x multiplier, where
        the floor is ``probe_timeout_floor_ms`` or GRANULARITY_FACTOR times the timer
        granularity the host actually shows (how late its timers fire), the larger."""
        floor = max(policy.probe_timeout_floor_ms / 1000.0, GRANULARITY_FACTOR * granularity)
        base = floor if self.srtt is None else max(self.srtt + 4 * self.rttvar, floor)
        return base * policy.probe_timeout_multiplier

    def alive(self, now: float, policy: Policy) -> bool:
        return (
            self.validated
            and getattr(self.path, "connected", True)
            and now - self.last_rx < policy.dead_after_ms / 1000.0
            and self.consecutive_lost < policy.max_consecutive_drops
        )

    def score(self, now: float, policy: Policy) -> float:
        """Lower is better: RTT (ms) inflated by loss and recent failures.

        The RTT is the path's windowed minimum, not the smoothed one: probes on the active
        path queue behind the session's own traffic, and a busy path must not look worse
        than an idle twin (that would move a bulk transfer back and forth)."""
        # +10 ms: a base cost per path, so that sub-millisecond jitter between two good
        # paths never crosses the hysteresis factor (no flapping between equals)
        rtt = self.min_rtt if self.min_rtt is not None else self.srtt
        rtt_ms = (rtt if rtt is not None else 0.1) * 1000.0 + 10.0
        loss = self.loss(now, policy.loss_window_ms / 1000.0)
        return rtt_ms * (1.0 + 10.0 * loss) * (1.0 + 0.5 * min(self.failures, 10))


@dataclass(frozen=True, slots=True)
class Candidate:
    transport_id: str
    score: float
    alive: bool


def select(active: str | None, candidates: Sequence[Candidate], hysteresis: float) -> str | None:
    """The transport id to use, or None if no candidate is alive."""
    alive = sorted((c for c in candidates if c.alive), key=lambda c: (c.score, c.transport_id))
    if not alive:
        return None
    best = alive[0]
    current = next((c for c in alive if c.transport_id == active), None)
    if current is None or best.transport_id == current.transport_id:
        return best.transport_id
    if best.score * hysteresis < current.score:
        return best.transport_id
    return current.transport_id
