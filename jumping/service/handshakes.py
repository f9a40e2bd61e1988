"""
The gateway's handshake queue: handshake messages wait here, apart from the data plane, and
are served in slices of bounded time, so that the tunnel never waits behind a flood of them.

As in wireguard-go (handshakes have their own bounded queue and workers; data never waits
behind them): the node classifies each datagram on its type byte as it is read. DATA,
DATA_SEGMENT and CONTROL (authenticated by the session's keys, or dropped on an index
lookup) are handled at once; handshake messages are only appended here, which costs a
deque append. The queue is served from the reactor (``callLater(0)``): each turn handles
messages until ``budget_s`` of handshake work is spent (measured by ``clock``, a monotonic
wall clock: the service owns it, the core stays sans-IO), then gives the reactor back, so
the TUN device, the sockets and the timers run between two slices. A turn handles at least
one message, so a turn ends within the budget plus one message.

The queue holds at most ``limit`` messages. When it is full, the oldest one is dropped
(counted in ``dropped``), not the newest: what is served is then the freshest demand (an
initiator that sent it is still waiting for the answer), a legitimate client's new attempt
always gets in, and an attacker cannot keep the queue filled with messages that are old by
the time they are served. Either way a full queue means the node is asked for more
handshake work than it spends on handshakes, and the excess is dropped unread.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any

from twisted.logger import Logger

_log = Logger()


class HandshakeQueue:
    """Bounded FIFO of ``(transport, datagram)`` served by ``handle`` in time-bounded turns."""

    def __init__(
        self,
        reactor: Any,
        handle: Callable[[Any, bytes], None],
        limit: int = 1024,
        budget_s: float = 0.001,
        clock: Callable[[], float] = perf_counter,
    ) -> None:
        self.reactor = reactor
        self.handle = handle
        #: most messages waiting (a policy value: ``handshake_queue_size``)
        self.limit = limit
        #: handshake work per reactor turn, seconds (``handshake_turn_budget_ms``)
        self.budget_s = budget_s
        self.clock = clock
        self._q: deque[tuple[Any, bytes]] = deque()
        self._turn: Any = None
        #: messages queued, served, dropped because the queue was full (the oldest first)
        self.queued = 0
        self.served = 0
        self.dropped = 0
        #: turns, and turns that ended on the budget with messages still waiting
        self.turns = 0
        self.yielded = 0
        #: the deepest the queue has been
        self.high_water = 0
        #: messages whose handler raised (a bug: logged, the queue goes on)
        self.errors = 0

    def __len__(self) -> int:
        return len(self._q)

    def configure(self, limit: int, budget_s: float) -> None:
        """New limits (a policy reload); a queue over the new limit loses its oldest."""
        self.limit = limit
        self.budget_s = budget_s
        q = self._q
        while len(q) > limit:
            q.popleft()
            self.dropped += 1

    def put(self, transport: Any, data: bytes) -> None:
        q = self._q
        if len(q) >= self.limit:
            q.popleft()
            self.dropped += 1
        q.append((transport, data))
        self.queued += 1
        n = len(q)
        if n > self.high_water:
            self.high_water = n
        if self._turn is None:
            self._turn = self.reactor.callLater(0, self._serve)

    def _serve(self) -> None:
        """One turn: messages until the budget is spent (at least one), then yield."""
        self._turn = None
        q = self._q
        clock = self.clock
        handle = self.handle
        self.turns += 1
        end = clock() + self.budget_s
        while q:
            transport, data = q.popleft()
            self.served += 1
            try:
                handle(transport, data)
            except Exception:
                self.errors += 1
                _log.failure("handshake message handler failed")
            if clock() >= end:
                break
        if q:
            self.yielded += 1
            self._turn = self.reactor.callLater(0, self._serve)

    def clear(self) -> None:
        """Forget what waits and cancel the next turn (the node stops)."""
        self._q.clear()
        if self._turn is not None and self._turn.active():
            self._turn.cancel()
        self._turn = None
