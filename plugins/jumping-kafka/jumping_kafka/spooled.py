"""
The Kafka sink's durable path (``spool = true``, the default): events go from the reactor
to the shared bounded writer (:mod:`jumping.sinkwriter`), which appends them in batches to
an on-disk segment log (:mod:`jumping.spool`); a shipper thread reads the log, sends with
the idempotent producer (``acks=all``) and commits a record only once the broker has
acknowledged it and every record before it. Nothing is dropped because the broker is down:
the log holds it until it is acknowledged, across broker outages and node restarts (what is
on disk at a crash is sent after the restart). Only a full spool (or a failing disk, or a
full in-memory queue in front of it) drops events: counted, and their seq ranges kept for
the node's ``EVENTS_LOST`` announcement.

A failed or timed-out record is not dropped: once everything in flight has settled, the
shipper rewinds to the first unacknowledged record and sends again, after a backoff. A
producer that makes no progress for ``stall_s`` (kafka-python can loop on retries after a
broker restart) is replaced, and the shipper rewinds. Resent records may reach the topic
twice; consumers deduplicate on (node_id, boot_id, seq).
"""

from __future__ import annotations

import json
import queue
import threading
import time
from collections.abc import Callable
from typing import Any

from twisted.logger import Logger

from jumping.chain import canonical
from jumping.sinkwriter import BoundedWriter
from jumping.spool import LossLog, SegmentLog, SpoolError

log = Logger()
#: records handed to the producer and not yet settled, at most
WINDOW = 5000


def record_key(payload: bytes) -> bytes:
    """The Kafka key of a canonical event: its session_id, or its node_id for node-wide
    events (keys are sorted and unspaced in canonical JSON, so a search finds them)."""
    i = payload.find(b'"session_id":"')
    if i >= 0:
        return payload[i + 14 : i + 46]
    j = payload.find(b'"node_id":"')
    if j >= 0:
        return payload[j + 11 : payload.index(b'"', j + 11)]
    try:
        e = json.loads(payload)
        return str(e.get("session_id") or e.get("node_id") or "").encode()
    except (ValueError, AttributeError):
        return b""


class SpooledDelivery:
    """The spool and the shipper thread of one Kafka sink (``sink`` gives the topic, the
    producer factory, the stall bound and the connection state it reports)."""

    def __init__(self, sink: Any, log_: SegmentLog, max_queue: int) -> None:
        self.sink = sink
        self.spool = log_
        self.losses = LossLog()  # dropped in front of the spool (queue full, bad event)
        self.bad = 0  # writer thread: not JSON, or the disk failed for them
        self.writer = BoundedWriter(
            f"kafka-spool:{sink.topic}", max_queue, self._append, batch=1000,
            finish=self._writer_done,
        )  # fmt: skip
        self.acked = 0  # shipper: acknowledgements (a resent record counts again)
        self.resends = 0
        self._acks: queue.SimpleQueue[tuple[int, int, Any]] = queue.SimpleQueue()
        self._gen = 0
        self._thread: threading.Thread | None = None
        self._closing = False
        self._stop_at = 0.0
        self._writer_finished = threading.Event()
        self._done: Callable[[], None] | None = None

    # ------------------------------------------------------------------ reactor thread
    def put(self, event: dict[str, Any], encoded: bytes | None = None) -> None:
        """Queue ``event`` for the spool; with ``encoded`` (its canonical encoding, made
        once by the node for its chain) the writer stores those bytes, not a new one."""
        item: Any = event if encoded is None else (encoded, event)
        if not self.writer.put(item):
            self.losses.record(event.get("boot_id"), event.get("seq"))

    def start(self) -> None:
        """Open the spool (a clear one-line error if it cannot be used), start both
        threads."""
        try:
            self.spool.open()
        except SpoolError as e:
            raise OSError(f"kafka: {e}") from None
        self.writer.start()
        self._thread = threading.Thread(
            target=self._ship, name=f"kafka-ship:{self.sink.topic}", daemon=True
        )
        self._thread.start()

    def close(self, timeout: float, done: Callable[[], None]) -> None:
        """Write the memory queue into the spool, ship for at most ``timeout`` s, then stop;
        what is not acknowledged stays in the spool for the next start. ``done`` is
        called from the shipper thread at the end."""
        self._stop_at = time.monotonic() + timeout
        self._done = done
        self._closing = True
        self.writer.close(min(timeout, 2.0))
        if self._thread is None:
            self._writer_finished.set()
            done()

    def join(self, timeout: float | None) -> bool:
        if self._thread is None:
            return True
        self._thread.join(timeout)
        return not self._thread.is_alive()

    # ------------------------------------------------------------------ counters
    @property
    def dropped(self) -> int:
        return self.writer.overflow + self.writer.failed + self.bad + self.spool.dropped_full

    @property
    def delivered(self) -> int:
        return self.spool.committed_total

    def take_losses(self) -> list[tuple[str | None, int, int, int]]:
        """Dropped seq ranges to announce, once the spool has room again."""
        if not self.spool.has_room:
            return []
        return self.losses.take() + self.spool.losses.take()

    # ------------------------------------------------------------------ writer thread
    def _append(self, batch: list[Any]) -> None:
        records = []
        for item in batch:
            if type(item) is tuple:  # (canonical encoding, event): encoded by the node
                payload, e = item
            else:
                e = item
                try:
                    payload = canonical(e)
                except (TypeError, ValueError):
                    self.bad += 1
                    self.losses.record(e.get("boot_id"), e.get("seq"))
                    continue
            ts = e.get("ts_ms")
            records.append((payload, ts if isinstance(ts, int) and ts >= 0 else 0,
                            e.get("boot_id"), e.get("seq")))  # fmt: skip
        try:
            self.spool.append(records)
        except OSError as e:  # the disk failed: this batch is lost, counted, announced
            self.writer.note_error(e)
            self.sink.last_error = self.writer.last_error
            for _p, _ts, boot, seq in records:
                self.bad += 1
                self.losses.record(boot, seq)

    def _writer_done(self, leftover: list[Any]) -> None:
        for item in leftover:
            e = item[1] if type(item) is tuple else item
            self.bad += 1
            self.losses.record(e.get("boot_id"), e.get("seq"))
        self._writer_finished.set()

    # ------------------------------------------------------------------ shipper thread
    def _ship(self) -> None:
        sink = self.sink
        spool = self.spool
        producer: Any = None
        inflight: dict[int, int] = {}  # record number -> ts_ms
        #: the first record that failed or was never handed over: nothing from it on is
        #: committed until the shipper has rewound and sent it again
        hold: int | None = None
        failed = False
        backoff = 0.2
        retry_at = 0.0
        progress_at = time.monotonic()
        try:
            while True:
                # settle what the producer reported
                try:
                    item: Any = self._acks.get(timeout=0.02 if inflight else 0.05)
                except queue.Empty:
                    item = None
                while item is not None:
                    gen, num, exc = item
                    if gen == self._gen and num in inflight:
                        del inflight[num]
                        progress_at = time.monotonic()
                        if exc is None:
                            self.acked += 1
                            backoff = 0.2
                            sink.delivering()
                        else:
                            failed = True
                            hold = num if hold is None else min(hold, num)
                            sink.failing(exc)
                    try:
                        item = self._acks.get_nowait()
                    except queue.Empty:
                        item = None
                first = _first(inflight, hold, spool.read_position)
                spool.commit(first, inflight.get(first))
                spool.write_commit()
                now = time.monotonic()
                if self._closing and self._writer_finished.is_set():
                    if spool.backlog == 0 or now > self._stop_at:
                        break
                if inflight and now - progress_at > sink.stall_s:
                    # a wedged producer: replace it, send again what it held
                    self._gen += 1
                    hold = _first(inflight, hold, spool.read_position)
                    inflight.clear()
                    sink.reconnects += 1
                    sink.failing(RuntimeError(f"no delivery progress for {sink.stall_s:g}s; "
                                              "new producer"))  # fmt: skip
                    _close(producer, 0)
                    producer = None
                    failed = True
                if failed and not inflight:
                    spool.commit(_first(inflight, hold, spool.read_position))
                    spool.rewind()
                    hold = None
                    self.resends += 1
                    failed = False
                    retry_at = now + backoff
                    backoff = min(backoff * 2, 5.0)
                if failed or now < retry_at or len(inflight) >= WINDOW or not spool.unread:
                    continue
                if producer is None:  # before reading: what is read is sent or held
                    producer = sink._producer()
                    if producer is None:  # closing while the brokers were unreachable
                        break
                    progress_at = time.monotonic()
                records = spool.read(min(500, WINDOW - len(inflight)))
                for num, payload, ts in records:
                    try:
                        future = producer.send(sink.topic, key=record_key(payload), value=payload)
                    except Exception as e:  # metadata unavailable within max_block_ms...
                        failed = True
                        hold = num if hold is None else min(hold, num)
                        sink.failing(e)
                        break
                    if not inflight:
                        progress_at = time.monotonic()
                    inflight[num] = ts
                    gen = self._gen
                    future.add_callback(self._settled, gen, num, None)
                    future.add_errback(self._failed, gen, num)
        except Exception as e:  # never let the thread die silently
            log.failure("kafka sink: shipper thread failed")
            sink.last_error = repr(e)
        finally:
            if producer is not None:
                try:
                    producer.flush(timeout=max(0.0, self._stop_at - time.monotonic()))
                except Exception:
                    pass
            # settle what the flush brought in, then keep the position for the next start
            while True:
                try:
                    gen, num, exc = self._acks.get_nowait()
                except queue.Empty:
                    break
                if gen == self._gen and num in inflight and exc is None:
                    del inflight[num]
                    self.acked += 1
            spool.commit(_first(inflight, hold, spool.read_position))
            _close(producer, 1.0)
            self._writer_finished.wait(5.0)
            spool.close()
            if self._done is not None:
                self._done()

    def _settled(self, gen: int, num: int, exc: Any, _meta: Any = None) -> None:
        self._acks.put((gen, num, exc))

    def _failed(self, gen: int, num: int, exc: Any) -> None:
        self._acks.put((gen, num, exc if exc is not None else RuntimeError("failed")))


def _first(inflight: dict[int, int], hold: int | None, read: int) -> int:
    """The first record not known to be acknowledged: the commit may go up to it."""
    first = min(inflight) if inflight else read
    return first if hold is None else min(first, hold)


def _close(producer: Any, timeout: float) -> None:
    if producer is not None:
        try:
            producer.close(timeout=timeout)
        except Exception:
            pass
