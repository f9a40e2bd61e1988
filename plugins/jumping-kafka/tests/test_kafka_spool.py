"""
The Kafka sink's disk spool (the default) against the real broker: nothing is lost while the
broker is away or the node restarts; a full spool drops, counts, and hands the gap to the
node for its EVENTS_LOST announcement once there is room; bad spool settings are one-line
errors. What reached the topic is read back by kafka-python's consumer and deduplicated on
the event identity (node_id, boot_id, seq).
"""

from __future__ import annotations

import json
import os
import threading
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import Broker, wait_for
from kafkahelp import read_topic

from jumping import plugin
from jumping.errors import PluginError
from jumping.interfaces import IEventSink

BOOT = "5f0c2a9e7b3d41c8a6e2f09b1d7c4e3a"


def event(i: int, boot: str = BOOT) -> dict[str, Any]:
    return {
        "schema": "jumping.event/1", "ts_ms": int(time.time() * 1000), "event_type": "SESSION_STATS",
        "session_id": f"{i % 8:032x}", "node_id": "gw1", "boot_id": boot, "policy_version": "1",
        "state_version": 1, "reason_code": None, "seq": i, "prev_hash": "0" * 64, "bytes_in": i,
        "bytes_out": i, "packets_in": i, "packets_out": i, "pad": "x" * 300,
    }  # fmt: skip


def identities(bootstrap: str, topic: str) -> tuple[set[tuple[str, str, int]], int]:
    """The distinct (node_id, boot_id, seq) in the topic, and how many records it holds."""
    records = read_topic(bootstrap, topic)
    ids = set()
    for r in records:
        e = json.loads(r.value)
        ids.add((e["node_id"], e["boot_id"], e["seq"]))
    return ids, len(records)


def test_bad_spool_settings_are_one_line_errors(tmp_path: Path) -> None:
    for options, message in (
        ({"spool_max_bytes": "lots"}, "spool_max_bytes must be a size"),
        ({"spool_max_bytes": 1000}, "spool_max_bytes must be a size >= 65536"),
        ({"spool_fsync": "sometimes"}, "spool fsync must be one of interval, always, never"),
        ({"spool_full": "block"}, "spool full must be one of drop_newest, drop_oldest"),
        ({"spool": "yes"}, "spool must be true or false"),
        ({"spool": False, "spool_dir": "/x"}, "spool_dir need spool = true"),
    ):
        with pytest.raises(PluginError, match="kafka: " + message):
            plugin.load(IEventSink, "kafka", **options)
    blocker = tmp_path / "file"
    blocker.write_text("")
    sink = plugin.load(IEventSink, "kafka", spool_dir=str(blocker / "spool"))
    with pytest.raises(OSError, match=r"^kafka: spool .*file/spool: cannot use it: Not a direct"):
        sink.start()
    sink.close()
    unbound = plugin.load(IEventSink, "kafka")
    with pytest.raises(OSError, match="kafka: no spool directory: set spool_dir"):
        unbound.start()
    assert unbound.bind_state_dir("/var/lib/jumping/gw1") == (
        "/var/lib/jumping/gw1/spool/kafka-jumping-events"
    )


def test_unreachable_broker_then_a_restart_delivers_everything_spooled(
    broker: Broker, tmp_path: Path
) -> None:
    """A node whose broker is unreachable spools every event (nothing dropped, emit stays
    fast); it stops; the next start (broker reachable) delivers all of them."""
    topic = broker.topic("spool-restart")
    spool = str(tmp_path / "spool")
    sink = plugin.load(IEventSink, "kafka", bootstrap_servers="127.0.0.1:1", topic=topic,
                       spool_dir=spool)  # fmt: skip
    sink.start()
    worst = 0.0
    for i in range(3000):
        t = time.perf_counter()
        sink.emit(event(i))
        worst = max(worst, time.perf_counter() - t)
        if i % 500 == 0:
            time.sleep(0.01)  # let the writer take what is queued
    wait_for(lambda: sink.health()["spool_backlog"] == 3000, 20, "everything spooled")
    h = sink.health()
    assert sink.dropped == 0 and sink.delivered == 0
    assert h["state"] in ("degraded", "failing") and h["connected"] is False
    assert worst < 0.25, f"one emit took {worst * 1e3:.2f} ms"
    sink.close()
    assert sink.join(20), "close() must be bounded with the broker unreachable"
    again = plugin.load(IEventSink, "kafka", bootstrap_servers=broker.bootstrap, topic=topic,
                        spool_dir=spool)  # fmt: skip
    again.start()
    wait_for(lambda: again.delivered >= 3000, 60, "the spooled events delivered after restart")
    again.close()
    assert again.join(20)
    ids, _n = identities(broker.bootstrap, topic)
    assert ids == {("gw1", BOOT, i) for i in range(3000)}
    assert os.listdir(spool) and again.dropped == 0


def test_broker_outage_loses_nothing_and_a_full_spool_announces_its_gap(
    broker: Broker, tmp_path: Path
) -> None:
    """One outage, two sinks fed the same stream (1000 events/s): one with room loses
    nothing across the broker's stop and restart; one with a 64 KiB spool fills, drops and
    counts the newest events, says nothing while full, and hands over the exact range once
    the broker has taken what it held."""
    big_topic, small_topic = broker.topic("spool-big"), broker.topic("spool-small")
    big = plugin.load(IEventSink, "kafka", bootstrap_servers=broker.bootstrap, topic=big_topic,
                      spool_dir=str(tmp_path / "big"))  # fmt: skip
    small = plugin.load(IEventSink, "kafka", bootstrap_servers=broker.bootstrap,
                        topic=small_topic, spool_dir=str(tmp_path / "small"),
                        spool_max_bytes=65536, spool_segment_bytes=8192)  # fmt: skip
    for s in (big, small):
        s.start()
    stop = threading.Event()
    emitted = [0]

    def produce() -> None:  # stands in for the reactor thread
        i = 0
        while not stop.is_set():
            e = event(i)
            big.emit(e)
            small.emit(e)
            i += 1
            emitted[0] = i
            time.sleep(0.001)

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        wait_for(lambda: big.delivered > 200 and small.delivered > 200, 30, "delivery first")
        broker.stop()
        wait_for(lambda: small.dropped > 100, 60, "the small spool full")
        assert small.take_losses() == [], "nothing is announced while the spool is full"
        # not ok once a send has failed or the oldest event waits longer than 10 s
        wait_for(lambda: big.health()["state"] != "ok", 60, "the big sink's health to drop")
        during = big.health()
        assert big.dropped == 0 and during["spool_backlog"] > 0
        assert during["state"] in ("degraded", "failing")
        broker.start()
        time.sleep(1.0)
    finally:
        stop.set()
        thread.join()
    n = emitted[0]
    wait_for(lambda: big.delivered >= n, 90, "every event of the big spool delivered")
    losses: list[Any] = []
    wait_for(lambda: bool(losses.extend(small.take_losses()) or losses), 90, "the gap handed over")
    wait_for(lambda: small.health()["spool_backlog"] == 0, 90, "the small spool drained")
    assert big.health()["state"] == "ok"
    for s in (big, small):
        s.close()
        assert s.join(20)
    assert big.dropped == 0
    ids, records = identities(broker.bootstrap, big_topic)
    assert ids == {("gw1", BOOT, i) for i in range(n)}, "nothing lost"
    assert records >= n  # resent records may be there twice; the identity makes them one
    small_ids, _ = identities(broker.bootstrap, small_topic)
    lost = {i for i in range(n)} - {seq for _n, _b, seq in small_ids}
    assert sum(c for _b, _f, _l, c in losses) == small.dropped == len(lost) > 0
    for boot, first, last, count in losses:
        assert boot == BOOT and count == last - first + 1
        assert set(range(first, last + 1)) <= lost


class _Future:
    def add_callback(self, *a: Any) -> None:
        pass

    def add_errback(self, *a: Any) -> None:
        pass


class _Wedged:
    """A producer that accepts records and never settles them (no broker needed)."""

    made = 0

    def __init__(self) -> None:
        _Wedged.made += 1

    def send(self, *a: Any, **k: Any) -> _Future:
        return _Future()

    def flush(self, timeout: float | None = None) -> None:
        pass

    def close(self, timeout: float | None = None) -> None:
        pass


def test_a_wedged_producer_is_replaced_and_nothing_is_dropped(tmp_path: Path) -> None:
    sink = plugin.load(IEventSink, "kafka", bootstrap_servers="127.0.0.1:9", topic="t",
                       spool_dir=str(tmp_path / "spool"))  # fmt: skip
    sink._producer = _Wedged  # type: ignore[method-assign]
    sink.stall_s = 0.3
    sink.start()
    for i in range(5):
        sink.emit(event(i))
    wait_for(lambda: _Wedged.made >= 2 and sink.spooled.resends >= 1, 10, "a new producer")
    assert sink.dropped == 0 and sink.health()["spool_backlog"] == 5, "kept, to send again"
    sink.close()
    assert sink.join(15)
