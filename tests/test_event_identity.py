"""Event identity (docs/events.md, "Event identity"): every event carries its node's
per-start ``boot_id``, so (node_id, boot_id, seq) names one event. ``jumpctl audit`` drops
redelivered copies by that identity, counts restarts from ``boot_id`` (not from
timestamps), and says which announced loss (EVENTS_LOST) a gap is."""

from __future__ import annotations

import random
from typing import Any

import pytest

from jumping import schema
from jumping.audit import audit_events, format_summary
from jumping.core.outputs import Emit
from jumping.service.events import EventPipeline

KEY = bytes(range(32))


def run_of(node: str, n: int, start_ms: int, boot: str | None = None) -> list[dict[str, Any]]:
    """``n`` policy reloads from one start of ``node`` (one EventPipeline), chained."""
    now = [start_ms / 1000]
    pipe = EventPipeline(node, [], KEY, lambda: "1", lambda: now[0], boot_id=boot)
    out = []
    for _ in range(n):
        out.append(
            pipe.emit(Emit("POLICY_RELOADED", None, 0, None, {"previous_policy_version": "1"}))
        )
        now[0] += 0.01
    return out


def test_every_event_carries_its_runs_boot_id_and_validates() -> None:
    a, b = run_of("gw1", 3, 1_800_000_000_000), run_of("gw1", 3, 1_800_000_000_000)
    assert len({e["boot_id"] for e in a}) == 1 and len({e["boot_id"] for e in b}) == 1
    assert a[0]["boot_id"] != b[0]["boot_id"], "two starts never share a boot_id"
    assert [e["seq"] for e in a] == [e["seq"] for e in b] == [0, 1, 2]
    for e in a + b:
        assert schema.validate(e) == [], e


def test_a_bad_boot_id_is_refused() -> None:
    with pytest.raises(ValueError, match="boot_id must be 32 lowercase hex"):
        EventPipeline("gw1", [], KEY, lambda: "1", lambda: 0.0, boot_id="nope")


def test_redelivery_across_a_restart_is_deduplicated_by_identity() -> None:
    """Two runs of one node, the first one's tail delivered again after the second started
    (a spool shipping what it held before a crash), everything shuffled as partitions
    interleave: one restart, the copies dropped, no violation."""
    first = run_of("gw1", 20, 1_800_000_000_000)
    second = run_of("gw1", 10, 1_800_000_100_000)
    stream = first + second + first[12:] + second[:3]
    random.Random(7).shuffle(stream)
    report = audit_events(stream, KEY, order="seq")
    assert report.ok, [str(v) for v in report.violations]
    assert report.duplicates == 8 + 3
    assert report.nodes["gw1"].restarts == 1
    assert report.nodes["gw1"].boots == [first[0]["boot_id"], second[0]["boot_id"]]
    assert "restarts 1 (runs by boot_id" in format_summary(report)


def test_a_restart_is_known_from_boot_id_even_when_the_clock_went_back() -> None:
    """The second start's clock is behind the first's: the old audit called the restart
    reordered (it guessed runs from timestamps); the boot_id says what happened."""
    first = run_of("gw1", 5, 1_800_000_100_000)
    second = run_of("gw1", 5, 1_800_000_000_000)
    report = audit_events(first + second, KEY)
    assert report.ok, [str(v) for v in report.violations]
    assert report.nodes["gw1"].restarts == 1


def test_two_different_events_with_one_identity_are_a_violation() -> None:
    run = run_of("gw1", 4, 1_800_000_000_000)
    forged = dict(run[2], ts_ms=run[2]["ts_ms"] + 1)
    report = audit_events([*run, forged], KEY, order="seq")
    assert [v.check for v in report.violations] == ["SEQ_ORDER"]
    assert "two different events with one identity" in report.violations[0].message


def test_a_gap_names_the_events_lost_announcement_that_covers_it() -> None:
    run = run_of("gw1", 10, 1_800_000_000_000)
    boot = run[0]["boot_id"]
    now = [run[-1]["ts_ms"] / 1000 + 1]
    # the announcement is emitted later by the same run: rebuild the run with it appended
    pipe = EventPipeline("gw1", [], KEY, lambda: "1", lambda: now[0], boot_id=boot)
    events = [pipe.emit(Emit("POLICY_RELOADED", None, 0, None, {"previous_policy_version": "1"}))
              for _ in range(10)]  # fmt: skip
    fields = {"first_seq": 4, "last_seq": 6, "count": 3, "sink": "kafka0", "lost_boot_id": boot}
    events.append(pipe.emit(Emit("EVENTS_LOST", None, 0, None, fields)))
    kept = events[:4] + events[7:]
    report = audit_events(kept, KEY, order="seq")
    assert [v.check for v in report.violations] == ["SEQ_GAP"]
    msg = report.violations[0].message
    assert "3 event(s) missing" in msg and "announced by EVENTS_LOST: seq 4..6" in msg
