"""
Until when a node may act on its lease, proved end to end: a renewal counts only once the
node's *own watch* has delivered it back.

Each keep-alive round sends, to one member, the lease keep-alive and then a put of the
node's heartbeat key (``<prefix>.heartbeat/<node_id>``, attached to the lease, value: a
sequence number). Both answers must come from the same member in the same raft term (the
put needs the quorum: the member was not cut off when it renewed the lease). The renewal is
then *pending*: :meth:`LeaseDeadline.renewed`. It counts (the deadline moves to the round's
send time plus the granted TTL) only when the watch delivers that heartbeat
(:meth:`LeaseDeadline.seen`), after every event before it was delivered to the watch
callbacks. A watch that stalls (its member frozen or cut from the quorum, a connection that
went quiet) therefore stops the deadline, and the node fails closed before etcd could let
another node claim its sessions, whatever progress-notification interval the server runs
with. A heartbeat unseen for ``stall_after`` seconds means the stream is dead: the backend
reopens it on another member (:meth:`LeaseDeadline.stalled`), resuming from the last
revision it saw, so a takeover it missed is still reported.

Pure bookkeeping: no threads, no I/O; time comes from the injected ``clock`` (monotonic
seconds), so the tests drive the deadlines. Thread-safe (the keep-alive thread reports
renewals, the reactor thread reports what the watch delivered).
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from collections.abc import Callable

PENDING_MAX = 16  # renewals waiting for their heartbeat at most (older ones are dropped)


class LeaseDeadline:
    """
    :param ttl: the lease TTL (seconds).
    :param guard: seconds before the lease's expiry at which the node gives up (fail closed
        before etcd frees its sessions for others).
    :param stall_after: a heartbeat sent this long ago and not yet seen marks the watch dead.
    :param clock: monotonic seconds.
    """

    def __init__(
        self,
        ttl: float,
        guard: float,
        stall_after: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.ttl, self.guard, self.stall_after = ttl, guard, stall_after
        self.clock = clock
        self._lock = threading.Lock()
        self.valid_until = 0.0
        self._pending: OrderedDict[int, tuple[float, float]] = OrderedDict()
        # heartbeats the watch delivered before their round was confirmed (the watch event
        # and the put's answer race): counted as soon as the round is
        self._early: set[int] = set()
        self._seq = 0
        self.last_seen: float | None = None  # when the watch last delivered a heartbeat
        self.stalls = 0
        self._reported = 0  # highest heartbeat already covered by a stall report
        self._reported_seen = 0  # highest heartbeat whose round was counted

    def granted(self, t0: float) -> None:
        """A new lease was granted by a request sent at ``t0``: valid for a TTL from there
        (its grant needed the quorum); earlier pending renewals belong to the old lease."""
        with self._lock:
            self.valid_until = t0 + self.ttl
            self._pending.clear()
            self._early.clear()

    def next_seq(self) -> int:
        with self._lock:
            self._seq += 1
            return self._seq

    def renewed(self, seq: int, t0: float, granted_ttl: float) -> None:
        """The keep-alive round ``seq``, sent at ``t0``, renewed the lease for
        ``granted_ttl`` seconds and wrote heartbeat ``seq``: counts once that is seen."""
        with self._lock:
            self._pending[seq] = (t0, min(float(granted_ttl), self.ttl))
            while len(self._pending) > PENDING_MAX:
                self._pending.popitem(last=False)
            if seq in self._early:  # the watch was faster than the put's answer
                self._early.discard(seq)
                self._count_through(seq)

    def seen(self, seq: int) -> bool:
        """The watch delivered heartbeat ``seq`` (and everything before it): the renewal of
        that round counts, and so do older ones (the stream is ordered). True if it moved
        the deadline. A heartbeat seen before its round was confirmed (:meth:`renewed`)
        counts when it is."""
        with self._lock:
            self.last_seen = self.clock()
            if seq not in self._pending:
                if seq > self._reported_seen:
                    self._early.add(seq)
                    while len(self._early) > PENDING_MAX:
                        self._early.discard(min(self._early))
                return self._count_through(seq - 1)
            return self._count_through(seq)

    def _count_through(self, seq: int) -> bool:
        moved = False
        while self._pending and next(iter(self._pending)) <= seq:
            _, (t0, ttl) = self._pending.popitem(last=False)
            if t0 + ttl > self.valid_until:
                self.valid_until = t0 + ttl
                moved = True
        self._reported_seen = max(self._reported_seen, seq)
        return moved

    def expired(self) -> bool:
        """Past the point where the node must stop acting on its lease."""
        return self.clock() >= self.valid_until - self.guard

    def overdue(self) -> float:
        """Seconds since the last counted renewal's send time (for the log)."""
        return self.clock() - (self.valid_until - self.ttl)

    def stalled(self) -> bool:
        """A heartbeat was written ``stall_after`` seconds ago or more and the watch has not
        delivered it: the stream is dead. Reported once per dead stream: the next report
        needs a heartbeat written after this one to go unseen as long."""
        with self._lock:
            now = self.clock()
            late = [s for s, (t0, _) in self._pending.items() if now - t0 >= self.stall_after]
            if not late or max(late) <= self._reported:
                return False
            self._reported = max(self._pending)
            self.stalls += 1
            return True
