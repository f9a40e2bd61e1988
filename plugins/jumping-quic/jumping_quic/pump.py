"""
Drive one sans-IO aioquic ``QuicConnection`` from the Twisted reactor.

aioquic's connection is a state machine like Jumping's core: bytes and a time in
(``receive_datagram``, ``handle_timer``), datagrams out (``datagrams_to_send``), a deadline
(``get_timer``) and events (``next_event``). :class:`Pump` is the glue, on the reactor's
clock and the node's own UDP socket, with aioquic's traps handled here:

- the DATAGRAM queue is bounded (``max_queue``): beyond it a datagram is dropped and
  counted (``queue_full``), as a full network queue would, instead of piling up behind
  congestion control;
- a datagram that fits no packet is refused before it is queued (``oversize``), and a head
  that stopped fitting (the peer's connection ID grew) is evicted, so the queue can never
  wedge (aioquic issue #294);
- :attr:`max_datagram` is what fits one packet now, also within the peer's
  ``max_datagram_frame_size``, which aioquic does not check on send.

Sends are coalesced: everything queued during one reactor turn goes out in one
``datagrams_to_send`` call (``flush_soon``), so ACKs ride along and timers are re-armed
once per turn, not once per packet.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from aioquic.quic import events
from aioquic.quic.connection import NetworkAddress, QuicConnection

from jumping_quic import glue
from jumping_quic.framing import DatagramFraming

#: conventional length of the connection IDs both ends of this plugin choose
CID_LENGTH = 8


class Pump:
    def __init__(
        self,
        reactor: Any,
        conn: QuicConnection,
        framing: DatagramFraming,
        sendto: Callable[[bytes, NetworkAddress], None],
        on_datagram: Callable[[bytes, NetworkAddress | None], None],
        on_event: Callable[[events.QuicEvent], None],
        max_queue: int,
        max_datagram_size: int,
    ) -> None:
        self.reactor = reactor
        self.conn = conn
        self.framing = framing
        self._sendto = sendto
        self._on_datagram = on_datagram
        self._on_event = on_event
        self.max_queue = max_queue
        self.max_datagram_size = max_datagram_size
        self._pending = glue.pending(conn)
        self._timer: Any = None
        self._timer_at = 0.0
        self._soon: Any = None
        self.stopped = False
        self.drops: Counter[str] = Counter()
        #: largest Jumping datagram one packet carries now (our 8-byte connection IDs until
        #: the handshake tells the peer's choice and limit)
        self.max_datagram = glue.datagram_capacity(max_datagram_size, CID_LENGTH, None) - (
            framing.prefix
        )

    # ------------------------------------------------------------------ in
    def receive(self, data: bytes, addr: NetworkAddress) -> None:
        """One UDP datagram from ``addr``; never raises (aioquic drops what it cannot
        decrypt; anything it raises is a counted drop)."""
        if self.stopped:
            return
        try:
            self.conn.receive_datagram(data, addr, self.reactor.seconds())
        except Exception:
            self.drops["aioquic_error"] += 1
        self._drain(addr)
        self.flush_soon()

    def _drain(self, addr: NetworkAddress | None) -> None:
        conn = self.conn
        received = self.framing.received
        while not self.stopped:
            event = conn.next_event()
            if event is None:
                return
            data = received(event)
            if data is not None:
                self._on_datagram(data, addr)
            else:
                self._on_event(event)

    def update_limits(self) -> None:
        """Recompute :attr:`max_datagram` from the peer's connection ID and frame limit
        (after the handshake)."""
        limit = glue.peer_max_datagram_frame_size(self.conn)
        if limit is None:  # the peer takes no DATAGRAM frames at all
            self.max_datagram = 0
            return
        cid = glue.peer_cid_length(self.conn)
        self.max_datagram = max(
            glue.datagram_capacity(self.max_datagram_size, cid, limit) - self.framing.prefix, 0
        )

    # ------------------------------------------------------------------ out
    def queue(self, data: bytes) -> bool:
        """Queue one Jumping datagram; False (counted) if it is too big or the queue full."""
        if len(data) > self.max_datagram:
            self.drops["oversize"] += 1
            return False
        if len(self._pending) >= self.max_queue:
            self.drops["queue_full"] += 1
            return False
        self.framing.send(self.conn, data)
        return True

    def flush_soon(self) -> None:
        """Flush once at the end of this reactor turn, whatever else is queued meanwhile."""
        if self._soon is None and not self.stopped:
            self._soon = self.reactor.callLater(0, self._flush_later)

    def _flush_later(self) -> None:
        self._soon = None
        self.flush()

    def flush(self) -> None:
        if self.stopped:
            return
        now = self.reactor.seconds()
        self._send_out(now)
        pending = self._pending
        if pending and len(pending[0]) > self.max_datagram:
            # the limit shrank under a queued head (the peer moved to a longer connection
            # ID): aioquic would keep it at the head for good, blocking the queue
            self.update_limits()
            while pending and len(pending[0]) > self.max_datagram:
                pending.popleft()
                self.drops["oversize"] += 1
            self._send_out(now)
        self._drain(None)
        self._arm(now)

    def _send_out(self, now: float) -> None:
        try:
            out = self.conn.datagrams_to_send(now)
        except Exception:
            self.drops["aioquic_error"] += 1
            return
        sendto = self._sendto
        for data, addr in out:
            try:
                sendto(data, addr)
            except OSError:  # buffer full, unreachable, a firewall: lost, as on the wire
                self.drops["send_failed"] += 1

    # ------------------------------------------------------------------ timer
    def _arm(self, now: float) -> None:
        if self.stopped:
            return
        at = self.conn.get_timer()
        t = self._timer
        if at is None:
            if t is not None and t.active():
                t.cancel()
            self._timer = None
            return
        if t is not None and t.active():
            if abs(at - self._timer_at) < 0.0005:
                return
            t.reset(max(0.0, at - now))
        else:
            self._timer = self.reactor.callLater(max(0.0, at - now), self._on_timer)
        self._timer_at = at

    def _on_timer(self) -> None:
        self._timer = None
        if self.stopped:
            return
        try:
            self.conn.handle_timer(self.reactor.seconds())
        except Exception:
            self.drops["aioquic_error"] += 1
        self._drain(None)
        self.flush()

    def stop(self) -> None:
        """No more sends, timers or events (the connection is over)."""
        self.stopped = True
        for t in (self._timer, self._soon):
            if t is not None and t.active():
                t.cancel()
        self._timer = self._soon = None
