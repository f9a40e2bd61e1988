"""
``kafka`` event sink: SIEM events to an Apache Kafka topic (kafka-python).

- :meth:`KafkaSink.emit` runs on the reactor thread: it checks one bound and queues the
  event (:class:`jumping.sinkwriter.BoundedWriter`, the writer every threaded sink shares),
  nothing else. It never blocks on the network and never raises (docs/protocol.md,
  invariant 9). The writer's daemon thread owns the ``KafkaProducer``, serialises and sends.
- The bound covers every event accepted and not yet acknowledged: those in our queue *and*
  those inside the producer (batched, in flight, being retried). Past ``max_queue`` new
  events are dropped and counted; so are records the broker never acknowledged within
  ``delivery_timeout_ms``.
- Records are keyed by ``session_id`` (``node_id`` for node-wide events, whose session_id
  is null), so one session's events land in one partition, in order: ``acks=all`` with
  the idempotent producer (or one request in flight on clients without it).
- A broker that is down at start neither blocks nor fails the node: the producer is built
  in the thread and rebuilt with backoff; once built, kafka-python reconnects by itself
  (``reconnect_backoff_max_ms``).
- Lifecycle (``jumping.interfaces``): the constructor only validates; :meth:`KafkaSink.start`
  (after twistd's fork and privilege drop) starts the sender thread, which builds the
  producer. Events emitted before ``start()`` wait in the bounded queue.
"""

from __future__ import annotations

import os
import time
from typing import Any

from twisted.internet import defer
from twisted.logger import Logger
from zope.interface import implementer

from jumping.chain import canonical
from jumping.interfaces import IDurableEventSink, IEncodedEventSink, IEventSink, ISinkHealth
from jumping.sinkwriter import BoundedWriter

log = Logger()

# plugin option -> (type, lower bound); all of them go to KafkaProducer under the same name
_INT_OPTIONS = {
    "linger_ms": 0,
    "batch_size": 1,
    "delivery_timeout_ms": 1000,
    "request_timeout_ms": 1000,
    "max_block_ms": 0,
    "reconnect_backoff_max_ms": 50,
}
_STR_OPTIONS = (
    "client_id",
    "compression_type",
    "security_protocol",
    "ssl_cafile",
    "ssl_certfile",
    "ssl_keyfile",
    "sasl_mechanism",
    "sasl_plain_username",
    "sasl_plain_password",
)


def _int(name: str, value: Any, low: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < low:
        raise ValueError(f"kafka: {name} must be an integer >= {low}, got {value!r}")
    return value


def _servers(value: Any) -> list[str]:
    items = value.split(",") if isinstance(value, str) else value
    if not isinstance(items, list) or not items:
        raise ValueError(f"kafka: bootstrap_servers must be 'host:port[,host:port]', got {value!r}")
    out = []
    for item in items:
        host, sep, port = str(item).strip().rpartition(":")
        if not isinstance(item, str) or not sep or not host or not port.isdigit():
            raise ValueError(f"kafka: bootstrap server {item!r} is not host:port")
        if not 0 < int(port) < 65536:
            raise ValueError(f"kafka: bootstrap server {item!r}: port out of range")
        out.append(f"{host}:{port}")
    return out


_SPOOL_OPTIONS = (
    "spool", "spool_dir", "spool_max_bytes", "spool_segment_bytes", "spool_fsync",
    "spool_fsync_interval_ms", "spool_full",
)  # fmt: skip


@implementer(IEventSink, IEncodedEventSink, ISinkHealth, IDurableEventSink)
class KafkaSink:
    """An ``IEventSink`` writing to one Kafka topic. Options are the keys of its
    ``[[events]]`` table (see ``plugins/jumping-kafka/README.md``)."""

    name = "kafka"

    def __init__(
        self,
        bootstrap_servers: str | list[str] = "127.0.0.1:9092",
        topic: str = "jumping-events",
        max_queue: int = 10_000,
        close_timeout_ms: int = 3000,
        **options: Any,
    ) -> None:
        spool_options = {k: options.pop(k) for k in _SPOOL_OPTIONS if k in options}
        unknown = sorted(set(options) - set(_INT_OPTIONS) - set(_STR_OPTIONS))
        if unknown:
            known = ", ".join(
                ["bootstrap_servers", "topic", "max_queue", "close_timeout_ms"]
                + sorted([*_INT_OPTIONS, *_STR_OPTIONS, *_SPOOL_OPTIONS])
            )
            raise ValueError(f"kafka: unknown option(s) {', '.join(unknown)}; known: {known}")
        if not isinstance(topic, str) or not topic or len(topic) > 249:
            raise ValueError(f"kafka: topic must be a non-empty string, got {topic!r}")
        self.bootstrap = _servers(bootstrap_servers)
        self.topic = topic
        self.max_queue = _int("max_queue", max_queue, 1)
        self.close_timeout = _int("close_timeout_ms", close_timeout_ms, 0) / 1000
        config: dict[str, Any] = {
            "linger_ms": 5,
            "delivery_timeout_ms": 30_000,
            "request_timeout_ms": 10_000,
            "max_block_ms": 5000,  # sender thread only: waiting for metadata of a new topic
            "reconnect_backoff_max_ms": 1000,
            "client_id": "jumping",
        }
        for k, v in options.items():
            if k in _INT_OPTIONS:
                config[k] = _int(k, v, _INT_OPTIONS[k])
            elif not isinstance(v, str):
                raise ValueError(f"kafka: {k} must be a string, got {v!r}")
            else:
                config[k] = v
        if config["delivery_timeout_ms"] < config["request_timeout_ms"] + config["linger_ms"]:
            raise ValueError("kafka: delivery_timeout_ms must be >= request_timeout_ms + linger_ms")
        config.update(bootstrap_servers=self.bootstrap, acks="all")
        self.config = config
        # counters: each is written by one thread only (reads from others are fine)
        self._sent = 0  # sender thread: handed to the producer
        self._unsent = 0  # sender thread: the producer refused it, or left over at close
        self._acked = 0  # producer I/O thread: acknowledged by the broker (acks=all)
        self._failed = 0  # producer I/O thread: never acknowledged
        #: the producer generation: a wedged producer is replaced, and late callbacks of
        #: the old one are ignored (what it held was already counted as dropped)
        self._gen = 0
        self._progress_at = time.monotonic()
        #: no acknowledgement nor failure for this long with records pending: the producer
        #: is wedged (kafka-python can loop on retries after a broker restart); replace it
        self.stall_s = config["delivery_timeout_ms"] / 1000 + 5.0
        self.reconnects = 0
        self.connected = False
        self.last_error = ""
        self._final = False
        self._stop_at = 0.0
        self._started = False
        self._closing = False
        self._attempts = 0  # sender thread: producers it tried to build
        self._producer_obj: Any = None
        self.last_error_at: float | None = None
        #: the durable path (jumping_kafka/spooled.py), or None: memory only (spool = false)
        self.spooled = _spooled(self, topic, self.max_queue, spool_options)
        # the bound covers our queue *and* what the producer holds (batched, in flight)
        self._writer = BoundedWriter(
            f"kafka:{topic}", self.max_queue, self._send_batch, batch=500,
            held=self._in_producer, idle=self._idle, idle_s=1.0, finish=self._finish,
        )  # fmt: skip

    def bind_state_dir(self, state_dir: str) -> str | None:
        """The node's state directory (``[node] state_dir``): the spool goes to
        ``STATE_DIR/spool/kafka-TOPIC`` unless ``spool_dir`` is set. Returns the directory
        the spool will use inside the state directory, or None if it needs none (no spool,
        or ``spool_dir`` set: the operator made it usable by the node's user)."""
        if self.spooled is None or self.spooled.spool.directory:
            return None
        self.spooled.spool.directory = os.path.join(state_dir, "spool", f"kafka-{self.topic}")
        return self.spooled.spool.directory

    def start(self) -> None:
        """Start the sender thread (it connects to the brokers, never the reactor); with the
        spool, open it first (an unusable spool directory is a one-line start error)."""
        if self.spooled is not None:
            if self._started or self._closing:
                return
            if not self.spooled.spool.directory:
                raise OSError(
                    "kafka: no spool directory: set spool_dir, or run in a node ([node] "
                    "state_dir), or set spool = false"
                )
            self.spooled.start()
            self._started = True
            return
        self._writer.start()

    # ------------------------------------------------------------------ IEventSink
    @property
    def delivered(self) -> int:
        if self.spooled is not None:
            return self.spooled.delivered
        return self._acked

    @property
    def dropped(self) -> int:
        if self.spooled is not None:
            return self.spooled.dropped
        return self._writer.overflow + self._writer.failed + self._unsent + self._failed

    def _in_producer(self) -> int:
        """Taken from the queue and not settled: in the sender's hands or the producer's."""
        return self._writer.taking + max(0, self._sent - self._acked - self._failed)

    @property
    def queue_depth(self) -> int:
        """Accepted, not yet acknowledged nor dropped: in our queue or inside the producer.

        Each counter has one writer and only grows, so a racy read can only overstate
        the depth: the bound holds. With the spool: the memory queue in front of it (what
        the spool holds is :meth:`health`'s ``spool_backlog``)."""
        if self.spooled is not None:
            return self.spooled.writer.queued
        return self._writer.queued + self._in_producer()

    def emit(self, event: dict[str, Any]) -> None:
        # the reactor's whole cost: a bound check and an append (never waits on I/O)
        if self.spooled is not None:
            self.spooled.put(event)
        else:
            self._writer.put(event)

    def emit_encoded(self, event: dict[str, Any], encoded: bytes) -> None:
        """As :meth:`emit`, with the event's canonical encoding (the record's value): the
        node made it once for its chain; the sender thread does not encode it again."""
        if self.spooled is not None:
            self.spooled.put(event, encoded)
        else:
            self._writer.put((encoded, event))

    def take_losses(self) -> list[tuple[str | None, int, int, int]]:
        """Ranges of dropped events the node announces (EVENTS_LOST) once the spool has
        room: (boot_id, first_seq, last_seq, count). Empty without a spool."""
        return self.spooled.take_losses() if self.spooled is not None else []

    def close(self) -> defer.Deferred[None]:
        """Send what is queued and flush, for at most ``close_timeout_ms`` (plus a bounded
        producer shutdown), in the sender thread; the Deferred fires when it is done. With
        the spool, what is not acknowledged by then stays in it for the next start."""
        self._stop_at = time.monotonic() + self.close_timeout
        if self.spooled is not None:
            d: defer.Deferred[None] = defer.Deferred()
            if self._closing:
                return defer.succeed(None)
            self._closing = True

            def done() -> None:
                from twisted.internet import reactor

                reactor.callFromThread(d.callback, None)  # type: ignore[attr-defined]

            if not self._started:
                self.spooled.writer.close(0)
                return defer.succeed(None)
            self.spooled.close(self.close_timeout, done)
            return d
        d = self._writer.close(self.close_timeout)
        if not self._writer.started:
            self._final = True
        return d

    def join(self, timeout: float | None = None) -> bool:
        """Wait (off the reactor) until the sender thread has finished; True if it has."""
        if self.spooled is not None:
            return self.spooled.join(timeout)
        return self._writer.join(timeout)

    # ------------------------------------------------------------------ health
    def delivering(self) -> None:
        """An acknowledgement came (shipper or producer thread)."""
        if not self.connected:
            self.connected = True
            log.info(
                "kafka sink: delivering to {servers} topic {topic}",
                servers=self.bootstrap,
                topic=self.topic,
            )

    def failing(self, exc: Any) -> None:
        """A send failed or timed out (shipper or producer thread)."""
        self._down(exc)

    def health(self) -> dict[str, Any]:
        """What ``jumpctl status`` shows for this sink (docs/operations.md): ``state`` ok
        (delivering, nothing old waiting), degraded (not connected, or a backlog older
        than 10 s, or events dropped in the last minute... see the doc) or failing (no
        delivery for longer than ``delivery_timeout_ms``, or the spool full), the last
        error and when, and the spool's backlog."""
        now = time.time()
        out: dict[str, Any] = {
            "connected": self.connected,
            "last_error": self.last_error or None,
            "last_error_at": self.last_error_at,
        }
        spooled = self.spooled
        backlog = 0
        age = 0.0
        full = False
        if spooled is not None and self._started:
            sp = spooled.spool
            backlog = sp.backlog
            age = max(0.0, now - sp.oldest_ts_ms / 1000) if backlog and sp.oldest_ts_ms else 0.0
            full = not sp.has_room
            out.update(
                spool_dir=sp.directory, spool_bytes=sp.used_bytes, spool_max_bytes=sp.max_bytes,
                spool_backlog=backlog, spool_oldest_age_s=round(age, 3),
                spool_dropped=sp.dropped_full, resends=spooled.resends,
            )  # fmt: skip
        limit = self.config["delivery_timeout_ms"] / 1000
        if full or (
            not self.connected
            and self.last_error
            and (backlog or spooled is None)
            and self.last_error_at is not None
            and age > limit
        ):
            state = "failing"
        elif not self.connected or age > 10.0:
            state = "degraded"
        else:
            state = "ok"
        out["state"] = state
        return out

    def stats(self) -> dict[str, Any]:
        return {
            "queue_depth": self.queue_depth,
            "delivered": self.delivered,
            "dropped": self.dropped,
            "dropped_full": self._writer.overflow,
            "dropped_unsent": self._unsent + self._writer.failed,
            "dropped_failed": self._failed,
            "reconnects": self.reconnects,
            "connected": self.connected,
            "last_error": self.last_error,
        }

    # ------------------------------------------------------------------ sender thread
    def _ok(self, gen: int, _meta: Any) -> None:
        if self._final or gen != self._gen:  # already counted as dropped
            return
        self._progress_at = time.monotonic()
        self._acked += 1
        if not self.connected:
            self.connected = True
            log.info(
                "kafka sink: delivering to {servers} topic {topic}",
                servers=self.bootstrap,
                topic=self.topic,
            )

    def _nok(self, gen: int, exc: Any) -> None:
        if self._final or gen != self._gen:
            return
        self._progress_at = time.monotonic()
        self._failed += 1
        self._down(exc)

    def _down(self, exc: Any) -> None:
        self.last_error = f"{type(exc).__name__}: {exc}"[:300]
        self.last_error_at = time.time()
        if self.connected:
            self.connected = False
            log.warn(
                "kafka sink: delivery failing ({error}); dropping and counting",
                error=self.last_error,
            )

    def _producer(self) -> Any:
        """Build the producer, retrying with backoff; None once the sink is closing."""
        from kafka import KafkaProducer

        config = dict(self.config)
        known = KafkaProducer.DEFAULT_CONFIG
        # ordered retries without duplicates: the idempotent producer where the client has it,
        # and one request in flight per connection (kafka-python 2.x requires it for
        # idempotence; without idempotence it is what keeps retries in order)
        config["enable_idempotence"] = True
        config["max_in_flight_requests_per_connection"] = 1
        if "bootstrap_timeout_ms" in known:
            config["bootstrap_timeout_ms"] = min(config["request_timeout_ms"], 3000)
        config = {k: v for k, v in config.items() if k in known}
        backoff = 0.2
        while True:
            if (self._writer.closing or self._closing) and self._attempts:
                return None  # closing, and the brokers were unreachable: do not wait again
            self._attempts += 1
            try:
                return KafkaProducer(**config)
            except Exception as e:
                self.reconnects += 1
                self._down(e)
                if self.reconnects == 1:
                    log.warn(
                        "kafka sink: cannot reach {servers} ({error}); retrying",
                        servers=self.bootstrap,
                        error=self.last_error,
                    )
            deadline = time.monotonic() + backoff
            while time.monotonic() < deadline:
                if self._writer.closing or self._closing:
                    return None
                time.sleep(0.05)
            backoff = min(backoff * 2, 5.0)

    def _idle(self) -> None:
        self._producer_obj = self._check_stall(self._producer_obj)

    def _send_batch(self, batch: list[dict[str, Any]]) -> None:
        """Sender thread: hand each event to the producer (built, or rebuilt, on demand)."""
        for item in batch:
            # counted (sent or dropped) first, then out of hand: a racy read overstates only
            self._send_one(item)
            self._writer.taking -= 1

    def _send_one(self, item: Any) -> None:
        producer = self._producer_obj = self._check_stall(self._producer_obj)
        if producer is None:
            producer = self._producer_obj = self._producer()
            if producer is None:  # closing while the brokers were unreachable
                self._unsent += 1
                return
        if self._writer.closing and time.monotonic() > self._stop_at:
            self._unsent += 1
            return
        if type(item) is tuple:  # emit_encoded: (canonical encoding, event)
            value, item = item
        else:
            value = None
        key = item.get("session_id") or item.get("node_id") or ""
        try:
            if value is None:
                value = canonical(item)  # the bytes the chain hashes
            future = producer.send(self.topic, key=str(key).encode(), value=value)
        except Exception as e:  # metadata or buffer unavailable within max_block_ms
            self._unsent += 1
            self._down(e)
            return
        if self._sent == self._acked + self._failed:
            self._progress_at = time.monotonic()  # the stall clock starts now
        self._sent += 1
        future.add_callback(self._ok, self._gen)
        future.add_errback(self._nok, self._gen)

    def _check_stall(self, producer: Any) -> Any:
        """Replace a producer that holds records and has settled none for ``stall_s``."""
        if producer is None or self._sent - self._acked - self._failed <= 0:
            return producer
        if time.monotonic() - self._progress_at < self.stall_s:
            return producer
        self._gen += 1  # from now on the old producer's callbacks count for nothing
        pending = max(0, self._sent - self._acked - self._failed)
        self._unsent += pending  # their fate is unknown: counted as dropped
        self._sent -= pending
        self.reconnects += 1
        self._down(RuntimeError(f"no delivery progress for {self.stall_s:g}s; new producer"))
        try:
            producer.close(timeout=0)
        except Exception:
            pass
        self._progress_at = time.monotonic()
        return None

    def _finish(self, leftover: list[Any]) -> None:
        """Sender thread, at the end: flush within what is left of the close bound; what
        is still queued or never acknowledged counts as dropped."""
        producer = self._producer_obj
        if producer is not None:
            try:
                producer.flush(timeout=max(0.0, self._stop_at - time.monotonic()))
            except Exception:
                pass
            try:
                producer.close(timeout=1.0)
            except Exception:
                pass
        self._final = True
        self._unsent += len(leftover) + max(0, self._sent - self._acked - self._failed)
        self._sent = self._acked + self._failed


def _spooled(sink: KafkaSink, topic: str, max_queue: int, opts: dict[str, Any]) -> Any:
    """The spool options, checked (a bad size or policy is a one-line error at load)."""
    from jumping.spool import SegmentLog, parse_size
    from jumping_kafka.spooled import SpooledDelivery

    on = opts.get("spool", True)
    if not isinstance(on, bool):
        raise ValueError(f"kafka: spool must be true or false, got {on!r}")
    if not on:
        extra = sorted(set(opts) - {"spool"})
        if extra:
            raise ValueError(f"kafka: {', '.join(extra)} need spool = true")
        return None
    directory = opts.get("spool_dir", "")
    if not isinstance(directory, str):
        raise ValueError(f"kafka: spool_dir must be a path, got {directory!r}")
    max_bytes = parse_size(
        "kafka: spool_max_bytes", opts.get("spool_max_bytes", 256 << 20), 64 * 1024
    )
    seg = parse_size(
        "kafka: spool_segment_bytes",
        opts.get("spool_segment_bytes", min(8 << 20, max_bytes // 4)),
        4096,
    )
    interval = _int("spool_fsync_interval_ms", opts.get("spool_fsync_interval_ms", 1000), 1)
    try:
        log_ = SegmentLog(
            directory, max_bytes, seg, str(opts.get("spool_fsync", "interval")), interval,
            str(opts.get("spool_full", "drop_newest")),
        )  # fmt: skip
    except ValueError as e:
        raise ValueError(f"kafka: {e}") from None
    return SpooledDelivery(sink, log_, max_queue)
