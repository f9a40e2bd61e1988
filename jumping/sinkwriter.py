"""
The bounded writer every event sink that needs a thread is built on (``jsonl``, ``syslog``,
``kafka``): one bounded in-memory queue filled on the reactor thread and drained, in
batches, by one daemon thread that does the blocking work (disk, socket, network).

- :meth:`BoundedWriter.put` (reactor thread) is a bound check, an append and, when the
  thread sleeps, one wake-up: it never waits on the thread, the disk or the network, and
  never raises. A woken thread lingers ``linger_s`` (default 20 ms) before it drains, so
  that the events of a burst go out in one batch and cost one wake-up, not one each: a
  wake-up per event (a thread switch and a fight for the GIL) was 15 % of a gateway's CPU
  while it answered handshakes (issue 18's profile). Past the bound (``max_queue``, plus what the sink says it still ``held``
  downstream, e.g. records inside a Kafka producer) the item is dropped and counted in
  :attr:`overflow`.
- The thread calls ``write(batch)`` with up to ``batch`` items at a time, in order. ``write``
  does its own counting (delivered, dropped per item) and may return how many it
  delivered (for :meth:`health`); an exception out of it is a safety net only: the whole
  batch is counted in :attr:`failed`, the error kept in :attr:`last_error`, and the
  thread lives on.
- ``idle()`` is called when nothing arrived for ``idle_s`` (a sink's housekeeping: a
  wedged producer, a retry), ``finish(leftover)`` once at the end on the thread, with what
  was still queued when the close deadline passed.
- Lifecycle (``jumping.interfaces``): constructing starts nothing; :meth:`start` starts the
  thread (items put before it wait within the bound); :meth:`close` lets the thread write
  what is queued for at most ``timeout`` seconds and returns a Deferred that fires once
  the thread has finished, never blocking the reactor. Items put after close are dropped
  and counted.

Every counter is written by one thread only (``overflow`` by the putting thread, the rest
by the writer thread), so a read from another thread can be stale but never loses an
update.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable
from typing import Any

from twisted.internet import defer

__all__ = ["BoundedWriter", "sink_health"]

#: how long a woken writer waits for more before it drains (see the module's docstring)
LINGER_S = 0.02


class BoundedWriter:
    def __init__(
        self,
        name: str,
        max_queue: int,
        write: Callable[[list[Any]], int | None],
        *,
        batch: int = 1000,
        held: Callable[[], int] | None = None,
        idle: Callable[[], None] | None = None,
        idle_s: float = 0.5,
        finish: Callable[[list[Any]], None] | None = None,
        linger_s: float = LINGER_S,
    ) -> None:
        if isinstance(max_queue, bool) or not isinstance(max_queue, int) or max_queue < 1:
            raise ValueError(f"{name}: max_queue must be a positive integer, got {max_queue!r}")
        self.name = name
        self.max_queue = max_queue
        self._write = write
        self._batch = batch
        self._held = held
        self._idle = idle
        self._idle_s = idle_s
        self._finish = finish
        if not 0.0 <= linger_s <= 1.0:
            raise ValueError(f"{name}: linger_s must be within 0..1 s, got {linger_s!r}")
        self._linger_s = linger_s
        #: dropped on the putting thread: the bound was reached, or the writer is closed
        self.overflow = 0
        #: dropped on the writer thread: ``write`` raised for their batch
        self.failed = 0
        self.errors = 0
        self.last_error = ""
        self.last_error_at: float | None = None
        #: wall-clock times of the last delivery and the last drop (for :meth:`health`)
        self.last_delivery_at: float | None = None
        self.last_drop_at: float | None = None
        #: items the thread took from the queue and has not finished writing (``write`` may
        #: lower it item by item as it hands them on)
        self.taking = 0
        self._q: deque[Any] = deque()
        self._wake = threading.Event()
        self._closing = False
        self._deadline = 0.0
        self._thread: threading.Thread | None = None
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._waiters: list[defer.Deferred[None]] = []

    # ------------------------------------------------------------------ putting side
    @property
    def queued(self) -> int:
        return len(self._q)

    @property
    def closing(self) -> bool:
        return self._closing

    def put(self, item: Any) -> bool:
        """Queue ``item``; False (and counted in :attr:`overflow`) if it was dropped."""
        q = self._q
        if self._closing or len(q) + (self._held() if self._held else 0) >= self.max_queue:
            self.overflow += 1
            self.last_drop_at = time.time()
            return False
        q.append(item)
        if not self._wake.is_set():
            self._wake.set()
        return True

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start the writer thread (once; not after :meth:`close`)."""
        with self._lock:
            if self._thread is not None or self._closing:
                return
            self._thread = threading.Thread(target=self._run, name=self.name, daemon=True)
            self._thread.start()

    @property
    def started(self) -> bool:
        return self._thread is not None

    def close(self, timeout: float = 2.0) -> defer.Deferred[None]:
        """Write what is queued for at most ``timeout`` s, then stop; the Deferred fires
        (on the reactor thread) once the writer thread has finished."""
        d: defer.Deferred[None] = defer.Deferred()
        with self._lock:
            if not self._closing:
                self._closing = True
                self._deadline = time.monotonic() + timeout
                if self._thread is None:  # never started: what waits is dropped, counted
                    self.overflow += len(self._q)
                    self._q.clear()
                    self._done.set()
            if self._done.is_set():
                d.callback(None)
            else:
                self._waiters.append(d)
        self._wake.set()
        return d

    def join(self, timeout: float | None = None) -> bool:
        """Wait (off the reactor: tests, tools) until the thread has finished."""
        if self._thread is None:
            return self._done.is_set()
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ writer thread
    def note_error(self, exc: BaseException | str) -> None:
        """Record the last error (writer thread; also for the sink's own failures)."""
        self.errors += 1
        text = exc if isinstance(exc, str) else f"{type(exc).__name__}: {exc}"
        self.last_error = text[:300]
        self.last_error_at = self.last_drop_at = time.time()

    def health(self, window_s: float = 60.0) -> dict[str, Any]:
        """``state``: ``failing`` when the last error (within ``window_s``) has not been
        followed by any delivery, ``degraded`` when there was an error or a drop within
        ``window_s``, else ``ok``; with the last error and its time (Unix seconds)."""
        now = time.time()
        err = self.last_error_at
        recent_err = err is not None and now - err <= window_s
        if recent_err and (self.last_delivery_at is None or self.last_delivery_at < err):  # type: ignore[operator]
            state = "failing"
        elif recent_err or (self.last_drop_at is not None and now - self.last_drop_at <= window_s):
            state = "degraded"
        else:
            state = "ok"
        return {"state": state, "last_error": self.last_error or None, "last_error_at": err}

    def _run(self) -> None:
        q = self._q
        leftover: list[Any] = []
        try:
            while True:
                woke = self._wake.wait(self._idle_s)
                if woke and self._linger_s and not self._closing and len(q) < self._batch:
                    # the event stays set meanwhile: puts in the burst wake no one
                    time.sleep(self._linger_s)
                self._wake.clear()  # before draining: a put from now on wakes us again
                if not woke and self._idle is not None and not self._closing:
                    self._safe(self._idle)
                while q:
                    if self._closing and time.monotonic() > self._deadline:
                        break
                    # counted as taken before it leaves the queue: a racy read of
                    # queued + taking can only overstate what the writer holds
                    self.taking = min(len(q), self._batch)
                    batch = [q.popleft() for _ in range(self.taking)]
                    try:
                        if self._write(batch):
                            self.last_delivery_at = time.time()
                    except Exception as e:  # never let the thread die
                        self.failed += len(batch)
                        self.note_error(e)
                    self.taking = 0
                if self._closing and (not q or time.monotonic() > self._deadline):
                    break
        finally:
            while q:
                leftover.append(q.popleft())
            if self._finish is not None:
                self._safe(self._finish, leftover)
            else:
                self.failed += len(leftover)
            self._finished()

    def _safe(self, fn: Callable[..., None], *args: Any) -> None:
        try:
            fn(*args)
        except Exception as e:
            self.note_error(e)

    def _finished(self) -> None:
        with self._lock:
            self._done.set()
            waiters, self._waiters = self._waiters, []
        if waiters:
            from twisted.internet import reactor

            for d in waiters:
                reactor.callFromThread(d.callback, None)  # type: ignore[attr-defined]


def sink_health(sink: Any) -> dict[str, Any]:
    """A sink's ``health()`` (optional for IEventSink plugins), or ``unknown``; never raises."""
    from jumping.interfaces import ISinkHealth

    if not ISinkHealth.providedBy(sink):
        return {"state": "unknown"}
    try:
        return dict(sink.health())
    except Exception as e:
        return {"state": "unknown", "last_error": f"health(): {type(e).__name__}: {e}"}
