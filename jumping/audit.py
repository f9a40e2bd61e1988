"""
``jumpctl audit``: check a history of SIEM events against the contract and the invariants.

Input is JSON lines (files or stdin) or a Kafka topic read from its beginning to its end.
The checks (each violation names one, see docs/events.md, "Auditing"):

- ``SCHEMA``: every event validates against ``jumping.event/1``;
- ``SEQ_START`` / ``SEQ_GAP`` / ``SEQ_ORDER`` / ``CHAIN``: per node, ``seq`` starts at 0 and
  goes up by one, and ``prev_hash`` is the keyed hash of the previous event (with a key);
- ``ILLEGAL_TRANSITION`` / ``STATE_DISCONTINUITY``: every state change is in the table and
  starts where the previous one ended, per (session, node);
- ``STATE_VERSION``: ``state_version`` strictly increases with each transition, never goes
  back on any event;
- ``AFTER_TERMINATED`` / ``TERMINATION_MISMATCH``: TERMINATED is absorbing;
- ``RECOVERY_TOO_LONG``: RECOVERING lasts at most ``recovery_window_ms`` (+ tolerance);
- ``TWO_BINDINGS``: attach/switch/reattach events never leave two transports bound;
- ``SWITCH_RATE``: switches at least ``switch_cooldown_ms`` apart, at most
  ``max_switches_per_min`` in any minute, per (session, node);
- ``TWO_OWNERS``: ownership claims across nodes never overlap without a newer fencing token.

The engine (:class:`Auditor`, :func:`audit_events`) is pure and needs ``jsonschema``;
:func:`main` is the command, :func:`add_arguments` and :func:`run` mount it elsewhere
(``jumpctl audit``). See docs/events.md, "Auditing", for the exact rules.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import json
import sys
import time
from collections import Counter
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import IO, Any

from jumping import schema as event_schema
from jumping.chain import KEY_BYTES, ZERO_HASH, canonical, chain_hash, check_key
from jumping.core import fsm

#: A client's session before the gateway assigned its id (several attempts may share it).
UNASSIGNED_SESSION = "0" * 32
DEFAULT_RECOVERY_WINDOW_MS = 8000
DEFAULT_TOLERANCE_MS = 500
DEFAULT_SWITCH_COOLDOWN_MS = 1500
DEFAULT_MAX_SWITCHES_PER_MIN = 8
SSC = "SESSION_STATE_CHANGE"
RECOVERING = fsm.State.RECOVERING.value
TERMINATED = fsm.State.TERMINATED.value
CHECKS = (
    "SCHEMA", "SEQ_START", "SEQ_GAP", "SEQ_ORDER", "CHAIN", "ILLEGAL_TRANSITION",
    "STATE_DISCONTINUITY", "STATE_VERSION", "AFTER_TERMINATED", "TERMINATION_MISMATCH",
    "RECOVERY_TOO_LONG", "TWO_BINDINGS", "SWITCH_RATE", "TWO_OWNERS",
)  # fmt: skip


class AuditInputError(Exception):
    """The input cannot be read at all (exit status 2)."""


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


@dataclass(frozen=True, slots=True)
class Violation:
    check: str
    where: str
    message: str
    event: Any = None
    index: int = -1

    def __str__(self) -> str:
        return f"[{self.check}] {self.where}: {self.message}"


@dataclass(frozen=True, slots=True)
class InputError:
    where: str
    message: str

    def __str__(self) -> str:
        return f"{self.where}: {self.message}"


@dataclass(slots=True)
class Record:
    index: int
    where: str
    event: Any


@dataclass(slots=True)
class NodeInfo:
    node_id: str
    events: int = 0
    first_seq: int | None = None
    last_seq: int | None = None
    restarts: int = 0
    last_ts: int = 0
    last_where: str = ""


@dataclass(slots=True)
class SessionTrack:
    """What the audit knows about one session on one node."""

    session_id: str
    node_id: str
    attempt: int = 0
    state: str | None = None
    state_where: str = ""
    version: int | None = None
    version_where: str = ""
    terminated_where: str | None = None
    terminated_reason: str | None = None
    final_seen: bool = False
    recovering_since: int | None = None
    recovering_where: str = ""
    recovering_index: int = -1
    recovering_flagged: bool = False
    longest_recovering_ms: int = 0
    #: transport id -> where it was bound (more than one entry is a TWO_BINDINGS violation)
    bound: dict[str, str] = field(default_factory=dict)
    switches: int = 0
    switch_times: list[int] = field(default_factory=list)
    reattach_ok: int = 0
    reattach_failed: int = 0
    first_ts: int | None = None
    last_ts: int = 0
    bands: list[tuple[int, str]] = field(default_factory=list)
    marks: list[tuple[int, str]] = field(default_factory=list)
    rows: list[int] = field(default_factory=list)

    @property
    def label(self) -> str:
        suffix = f"#{self.attempt}" if self.attempt else ""
        return f"{self.session_id}{suffix}@{self.node_id}"


@dataclass(slots=True)
class _Ownership:
    node: str
    token: int | None
    start: int
    end: float
    rec: Record


@dataclass
class AuditReport:
    records: list[Record] = field(default_factory=list)
    violations: list[Violation] = field(default_factory=list)
    input_errors: list[InputError] = field(default_factory=list)
    nodes: dict[str, NodeInfo] = field(default_factory=dict)
    tracks: list[SessionTrack] = field(default_factory=list)
    by_type: Counter[str] = field(default_factory=Counter)
    node_wide: list[int] = field(default_factory=list)
    duplicates: int = 0
    chain_verified: bool = False
    order: str = "arrival"

    @property
    def ok(self) -> bool:
        return not self.violations and not self.input_errors

    @property
    def exit_status(self) -> int:
        if self.input_errors:
            return 2
        return 1 if self.violations else 0

    def flagged(self) -> set[int]:
        return {v.index for v in self.violations if v.index >= 0}

    def by_check(self) -> Counter[str]:
        return Counter(v.check for v in self.violations)


class Auditor:
    """
    Collects events (``add``) and input errors, then checks everything at ``finish``.

    ``order="arrival"`` checks each node's events in the order given (files: reordering is
    a violation); ``order="seq"`` sorts each node's events by ``seq`` first and ignores exact
    duplicates (Kafka: partitions interleave, delivery is at least once). ``partial`` lets a
    node's history start after seq 0 (an excerpt, a rotated file).
    """

    def __init__(
        self,
        chain_key: bytes | None = None,
        *,
        recovery_window_ms: int = DEFAULT_RECOVERY_WINDOW_MS,
        tolerance_ms: int = DEFAULT_TOLERANCE_MS,
        clock_skew_ms: int = 0,
        switch_cooldown_ms: int = DEFAULT_SWITCH_COOLDOWN_MS,
        max_switches_per_min: int = DEFAULT_MAX_SWITCHES_PER_MIN,
        order: str = "arrival",
        partial: bool = False,
    ) -> None:
        if chain_key is not None:
            chain_key = check_key(chain_key)
        if order not in ("arrival", "seq"):
            raise ValueError("order must be 'arrival' or 'seq'")
        self.chain_key = chain_key
        self.recovery_limit = recovery_window_ms + tolerance_ms
        self.recovery_window_ms = recovery_window_ms
        self.tolerance_ms = tolerance_ms
        self.clock_skew_ms = clock_skew_ms
        self.switch_cooldown_ms = switch_cooldown_ms
        self.max_switches_per_min = max_switches_per_min
        self.partial = partial
        self.report = AuditReport(chain_verified=chain_key is not None, order=order)
        self._current: dict[tuple[str, str], SessionTrack] = {}
        self._owners: dict[str, list[tuple[str, str, Record]]] = {}

    # ------------------------------------------------------------------ input
    def add(self, event: Any, where: str) -> None:
        self.report.records.append(Record(len(self.report.records), where, event))

    def input_error(self, where: str, message: str) -> None:
        self.report.input_errors.append(InputError(where, message))

    def _violate(self, check: str, rec: Record, message: str) -> None:
        self.report.violations.append(Violation(check, rec.where, message, rec.event, rec.index))

    # ------------------------------------------------------------------ checks
    def finish(self) -> AuditReport:
        report = self.report
        per_node: dict[str, list[Record]] = {}
        for rec in report.records:
            e = rec.event
            if not isinstance(e, dict):
                self._violate("SCHEMA", rec, "not a JSON object")
                continue
            problems = event_schema.validate(e)
            if problems:
                self._violate("SCHEMA", rec, "; ".join(problems))
            report.by_type[str(e.get("event_type"))] += 1
            node = e.get("node_id")
            if isinstance(node, str):
                per_node.setdefault(node, []).append(rec)
        for node, recs in per_node.items():
            if report.order == "seq":
                recs = self._sorted(recs)
            report.nodes[node] = info = NodeInfo(node)
            stray = self._check_chain(info, recs)
            for rec in recs:
                if rec.index not in stray:  # out of sequence: reported, not replayed
                    self._check_session(rec)
        for sid, items in self._owners.items():
            self._check_owners(sid, items)
        self._check_open_recoveries()
        report.violations.sort(key=lambda v: (v.index, CHECKS.index(v.check)))
        return report

    def _sorted(self, recs: list[Record]) -> list[Record]:
        """Per node by (epoch, seq); an epoch starts at each seq 0 (a node restart)."""

        def ts(r: Record) -> int:
            v = r.event.get("ts_ms")
            return v if _is_int(v) else 0

        def seq(r: Record) -> int:
            v = r.event.get("seq")
            return v if _is_int(v) else -1

        starts = sorted(
            ts(r) for r in recs if seq(r) == 0 and r.event.get("prev_hash") == ZERO_HASH
        )
        recs = sorted(
            recs, key=lambda r: (max(bisect.bisect_right(starts, ts(r)) - 1, 0), seq(r), r.index)
        )
        out: list[Record] = []
        for r in recs:
            if out and seq(out[-1]) == seq(r) and canonical(out[-1].event) == canonical(r.event):
                self.report.duplicates += 1
                continue
            out.append(r)
        return out

    def _check_chain(self, info: NodeInfo, recs: list[Record]) -> set[int]:
        """Seq and hash chain of one node; returns the events that came out of sequence."""
        last: Record | None = None
        stray: set[int] = set()
        for rec in recs:
            e = rec.event
            info.events += 1
            if _is_int(e.get("ts_ms")):
                info.last_ts = max(info.last_ts, e["ts_ms"])
                info.last_where = rec.where
            seq, ph = e.get("seq"), e.get("prev_hash")
            if not _is_int(seq) or not isinstance(ph, str):
                continue  # a SCHEMA violation already
            if last is None:
                info.first_seq = info.last_seq = seq
                if seq != 0 and not self.partial:
                    self._violate(
                        "SEQ_START", rec,
                        f"the first event of node {info.node_id} has seq {seq}, expected 0: "
                        f"{seq} earlier event(s) missing (--partial audits an excerpt)",
                    )  # fmt: skip
                elif seq == 0 and ph != ZERO_HASH:
                    self._violate("CHAIN", rec, "seq 0 must carry a prev_hash of 64 zeros")
                last = rec
                continue
            lseq = last.event["seq"]
            if seq == 0 and ph == ZERO_HASH:
                lts, ts = last.event.get("ts_ms"), e.get("ts_ms")
                if _is_int(lts) and _is_int(ts) and ts < lts:
                    self._violate(
                        "SEQ_ORDER", rec,
                        f"a restart (seq 0) stamped {ts}, before the previous event "
                        f"({last.where}, ts_ms {lts}): reordered",
                    )  # fmt: skip
                info.restarts += 1
                last = rec
            elif seq == lseq + 1:
                if self.chain_key is not None and ph != chain_hash(self.chain_key, last.event):
                    self._violate(
                        "CHAIN", rec,
                        f"prev_hash is not the hash of seq {lseq} ({last.where}): "
                        "that event or this prev_hash was altered, or an event was replaced",
                    )  # fmt: skip
                last = rec
            elif seq > lseq + 1:
                self._violate(
                    "SEQ_GAP", rec,
                    f"seq jumps from {lseq} ({last.where}) to {seq}: "
                    f"{seq - lseq - 1} event(s) missing",
                )  # fmt: skip
                last = rec
            else:
                self._violate(
                    "SEQ_ORDER",
                    rec,
                    f"seq {seq} comes after seq {lseq} ({last.where}): duplicated or reordered",
                )
                stray.add(rec.index)
            info.last_seq = last.event["seq"]
        return stray

    def _track(self, sid: str, node: str, e: dict[str, Any]) -> SessionTrack:
        key = (sid, node)
        t = self._current.get(key)
        fresh_attempt = (
            sid == UNASSIGNED_SESSION
            and e.get("event_type") == SSC
            and e.get("previous_state") == fsm.State.BIRTH.value
        )
        if t is None or (fresh_attempt and t.state is not None):
            t = SessionTrack(sid, node, attempt=t.attempt + 1 if t is not None else 0)
            self._current[key] = t
            self.report.tracks.append(t)
        return t

    def _check_session(self, rec: Record) -> None:
        e = rec.event
        sid, node, et = e.get("session_id"), e.get("node_id"), e.get("event_type")
        ts, ver = e.get("ts_ms"), e.get("state_version")
        if not (isinstance(et, str) and isinstance(node, str) and _is_int(ts) and _is_int(ver)):
            return
        if sid is None:
            self.report.node_wide.append(rec.index)
            return
        if not isinstance(sid, str):
            return
        t = self._track(sid, node, e)
        t.rows.append(rec.index)
        t.first_ts = ts if t.first_ts is None else t.first_ts
        t.last_ts = max(t.last_ts, ts)
        if t.terminated_where is not None:
            allowed = (et == "SESSION_TERMINATED" and not t.final_seen) or (
                et == "OWNERSHIP_CHANGE" and e.get("owner") is None
            )
            if not allowed:
                self._violate(
                    "AFTER_TERMINATED", rec,
                    f"{et} after the session reached TERMINATED on {node} ({t.terminated_where})",
                )  # fmt: skip
                return
        leaving = et == SSC and e.get("previous_state") == RECOVERING
        if t.recovering_since is not None and not leaving and not t.recovering_flagged:
            if ts - t.recovering_since > self.recovery_limit:
                t.recovering_flagged = True
                self._violate(
                    "RECOVERY_TOO_LONG", rec,
                    f"still RECOVERING {ts - t.recovering_since} ms after entering it "
                    f"({t.recovering_where}); the bound is {self._bound_text()}",
                )  # fmt: skip
        if t.version is not None and (ver <= t.version if et == SSC else ver < t.version):
            what = "does not increase past" if et == SSC else "goes back from"
            self._violate(
                "STATE_VERSION", rec, f"state_version {ver} {what} {t.version} ({t.version_where})"
            )
        if t.version is None or ver > t.version:
            t.version, t.version_where = ver, rec.where
        handler = _HANDLERS.get(et)
        if handler is not None:
            handler(self, t, rec, e)

    def _bound_text(self) -> str:
        return f"recovery_window_ms {self.recovery_window_ms} + tolerance {self.tolerance_ms}"

    def _on_state_change(self, t: SessionTrack, rec: Record, e: dict[str, Any]) -> None:
        prev, new, reason = e.get("previous_state"), e.get("new_state"), e.get("reason_code")
        ts = e["ts_ms"]
        if not (isinstance(prev, str) and isinstance(new, str)):
            return
        if not fsm.is_legal(prev, new, str(reason)):
            hint = ""
            try:
                target = fsm.LEGAL.get((fsm.State(prev), fsm.Reason(reason)))
            except ValueError:
                target = None
            if target is not None:
                hint = f" (from {prev}, {reason} leads to {target.value})"
            self._violate(
                "ILLEGAL_TRANSITION", rec,
                f"{prev} -> {new} with {reason} is not in the transition table{hint}",
            )  # fmt: skip
        if t.state is not None and prev != t.state:
            self._violate(
                "STATE_DISCONTINUITY", rec,
                f"previous_state {prev}, but the last new_state of this session on "
                f"{t.node_id} was {t.state} ({t.state_where})",
            )  # fmt: skip
        if t.recovering_since is not None and new != RECOVERING:
            self._end_recovery(t, rec, ts)
        if new == RECOVERING and t.recovering_since is None:
            t.recovering_since, t.recovering_where = ts, rec.where
            t.recovering_index, t.recovering_flagged = rec.index, False
        t.state, t.state_where = new, rec.where
        t.bands.append((ts, new))
        if new == TERMINATED:
            t.terminated_where, t.terminated_reason = rec.where, str(reason)
            t.bound.clear()
            self._owners.setdefault(t.session_id, []).append(("end", t.node_id, rec))

    def _end_recovery(self, t: SessionTrack, rec: Record, ts: int) -> None:
        assert t.recovering_since is not None
        lasted = ts - t.recovering_since
        t.longest_recovering_ms = max(t.longest_recovering_ms, lasted)
        if lasted > self.recovery_limit and not t.recovering_flagged:
            self._violate(
                "RECOVERY_TOO_LONG", rec,
                f"RECOVERING lasted {lasted} ms (entered at {t.recovering_where}); "
                f"the bound is {self._bound_text()}",
            )  # fmt: skip
        t.recovering_since = None

    def _on_terminated(self, t: SessionTrack, rec: Record, e: dict[str, Any]) -> None:
        reason = e.get("reason_code")
        if t.state is not None and t.state != TERMINATED:
            self._violate(
                "TERMINATION_MISMATCH", rec,
                f"SESSION_TERMINATED while the session is {t.state} on {t.node_id} "
                f"({t.state_where}): no SESSION_STATE_CHANGE to TERMINATED",
            )  # fmt: skip
        elif t.terminated_reason is not None and reason != t.terminated_reason:
            self._violate(
                "TERMINATION_MISMATCH", rec,
                f"reason_code {reason} differs from the terminating transition's "
                f"{t.terminated_reason} ({t.terminated_where})",
            )  # fmt: skip
        if t.recovering_since is not None:
            self._end_recovery(t, rec, e["ts_ms"])
        t.final_seen = True
        if t.terminated_where is None:
            t.terminated_where, t.terminated_reason = rec.where, str(reason)
            self._owners.setdefault(t.session_id, []).append(("end", t.node_id, rec))
        t.bound.clear()
        t.marks.append((e["ts_ms"], "end"))

    def _bind(self, t: SessionTrack, rec: Record, old: Any, new: Any, what: str) -> None:
        """``old`` stops being bound (if it was), ``new`` is bound: anything else still bound
        means two bindings at once. Re-announcing the bound transport is harmless."""
        if isinstance(old, str):
            t.bound.pop(old, None)
        others = {tid: where for tid, where in t.bound.items() if tid != new}
        if others:
            still = ", ".join(f"{tid} (bound at {where})" for tid, where in sorted(others.items()))
            self._violate("TWO_BINDINGS", rec, f"{what} {new} while still bound to {still}")
        if isinstance(new, str):
            t.bound.setdefault(new, rec.where)

    def _on_attached(self, t: SessionTrack, rec: Record, e: dict[str, Any]) -> None:
        tid = e.get("transport_id")
        self._bind(t, rec, None, tid, "attaches")

    def _on_switch(self, t: SessionTrack, rec: Record, e: dict[str, Any]) -> None:
        old, new = e.get("old_transport_id"), e.get("new_transport_id")
        self._bind(t, rec, old, new, f"switches from {old} to")
        t.switches += 1
        ts = e["ts_ms"]
        t.marks.append((ts, "switch"))
        if t.switch_times and ts - t.switch_times[-1] < self.switch_cooldown_ms - self.tolerance_ms:
            self._violate(
                "SWITCH_RATE", rec,
                f"switch {ts - t.switch_times[-1]} ms after the previous one; "
                f"switch_cooldown_ms is {self.switch_cooldown_ms} (tolerance {self.tolerance_ms})",
            )  # fmt: skip
        t.switch_times.append(ts)
        recent = [x for x in t.switch_times if x > ts - 60_000 + self.tolerance_ms]
        if len(recent) > self.max_switches_per_min:
            self._violate(
                "SWITCH_RATE", rec,
                f"{len(recent)} switches within a minute; max_switches_per_min is "
                f"{self.max_switches_per_min}",
            )  # fmt: skip
        del t.switch_times[: len(t.switch_times) - len(recent)]

    def _on_reattach(self, t: SessionTrack, rec: Record, e: dict[str, Any]) -> None:
        if e.get("ok") is True:
            t.reattach_ok += 1
            t.marks.append((e["ts_ms"], "reattach"))
            tid = e.get("transport_id")
            if isinstance(tid, str):
                self._bind(t, rec, None, tid, "reattaches on")
        else:
            t.reattach_failed += 1

    def _on_ownership(self, t: SessionTrack, rec: Record, e: dict[str, Any]) -> None:
        claim = e.get("owner") == t.node_id and e.get("reason_code") != "OWNERSHIP_LOST"
        kind = "claim" if claim else "release"
        self._owners.setdefault(t.session_id, []).append((kind, t.node_id, rec))
        t.marks.append((e["ts_ms"], "owner" if claim else "release"))

    def _check_owners(self, sid: str, items: list[tuple[str, str, Record]]) -> None:
        intervals: list[_Ownership] = []
        open_: dict[str, _Ownership] = {}
        for kind, node, rec in items:  # each node's items are in that node's order
            ts = rec.event["ts_ms"]
            held = open_.pop(node, None)
            if held is not None:
                held.end = min(held.end, ts)
            if kind == "claim":
                token = rec.event.get("fencing_token")
                own = _Ownership(node, token if _is_int(token) else None, ts, float("inf"), rec)
                open_[node] = own
                intervals.append(own)
        intervals.sort(key=lambda o: (o.start, o.rec.index))
        for j, new in enumerate(intervals):
            for old in intervals[:j]:
                if old.node == new.node or old.end <= new.start + self.clock_skew_ms:
                    continue
                if new.token is not None and old.token is not None and new.token > old.token:
                    old.end = min(old.end, new.start)  # fenced out by the newer claim
                    continue
                self._violate(
                    "TWO_OWNERS", new.rec,
                    f"{new.node} claims session {sid} with fencing token {new.token} while "
                    f"{old.node} still owns it with token {old.token} (claimed at "
                    f"{old.rec.where}); a takeover needs a strictly higher token",
                )  # fmt: skip
                break

    def _check_open_recoveries(self) -> None:
        for t in self.report.tracks:
            if t.recovering_since is None or t.recovering_flagged:
                continue
            info = self.report.nodes[t.node_id]
            lasted = info.last_ts - t.recovering_since
            t.longest_recovering_ms = max(t.longest_recovering_ms, lasted)
            if lasted > self.recovery_limit:
                rec = self.report.records[t.recovering_index]
                self._violate(
                    "RECOVERY_TOO_LONG", rec,
                    f"entered RECOVERING here and was still RECOVERING {lasted} ms later, at "
                    f"{t.node_id}'s last event ({info.last_where}); the bound is "
                    f"{self._bound_text()}",
                )  # fmt: skip


_HANDLERS: dict[str, Callable[[Auditor, SessionTrack, Record, dict[str, Any]], None]] = {
    SSC: Auditor._on_state_change,
    "SESSION_TERMINATED": Auditor._on_terminated,
    "TRANSPORT_ATTACHED": Auditor._on_attached,
    "TRANSPORT_SWITCH": Auditor._on_switch,
    "REATTACH_RESULT": Auditor._on_reattach,
    "OWNERSHIP_CHANGE": Auditor._on_ownership,
}


def audit_events(
    events: Iterable[dict[str, Any]], chain_key: bytes | None, **options: Any
) -> AuditReport:
    """
    Audit a history given as event dicts (each located as ``event #N``, 1-based).

    ``options`` are :class:`Auditor`'s keyword arguments (``recovery_window_ms``,
    ``tolerance_ms``, ``clock_skew_ms``, ``switch_cooldown_ms``, ``max_switches_per_min``,
    ``order``, ``partial``).
    """
    auditor = Auditor(chain_key, **options)
    for i, event in enumerate(events, 1):
        auditor.add(event, f"event #{i}")
    return auditor.finish()


# ---------------------------------------------------------------------- reading
def read_jsonl(auditor: Auditor, stream: IO[bytes], name: str) -> None:
    """Add every line of ``stream``; a bad line is an input error with its line number."""
    for lineno, raw in enumerate(stream, 1):
        where = f"{name}:{lineno}"
        try:
            line = raw.decode("utf-8").strip()
        except UnicodeDecodeError as e:
            auditor.input_error(where, f"not UTF-8 ({e.reason} at byte {e.start})")
            continue
        if line:
            _add_json(auditor, line, where)


def _add_json(auditor: Auditor, text: str | bytes, where: str) -> None:
    try:
        event = json.loads(text)
    except ValueError as e:
        auditor.input_error(where, f"bad JSON: {e}")
        return
    if not isinstance(event, dict):
        auditor.input_error(where, f"not a JSON object but {type(event).__name__}")
        return
    auditor.add(event, where)


def _kafka_api() -> tuple[Callable[..., Any], Callable[[str, int], Any]]:
    try:
        from kafka import KafkaConsumer, TopicPartition
    except ImportError:
        raise AuditInputError("--kafka needs kafka-python: pip install kafka-python") from None
    return KafkaConsumer, TopicPartition


def read_kafka(
    auditor: Auditor,
    bootstrap: str,
    topic: str,
    timeout_s: float,
    api: tuple[Callable[..., Any], Callable[[str, int], Any]] | None = None,
) -> None:
    """
    Read ``topic`` from the beginning of every partition up to its end *as of now* (the end
    offsets are taken first), giving up after ``timeout_s`` with an input error.
    """
    consumer_cls, tp_cls = api or _kafka_api()
    deadline = time.monotonic() + timeout_s
    try:
        consumer = consumer_cls(
            bootstrap_servers=bootstrap.split(","),
            group_id=None,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
        )
    except Exception as e:
        raise AuditInputError(f"kafka {bootstrap}: cannot connect: {e}") from None
    try:
        parts = consumer.partitions_for_topic(topic)
        if not parts:
            raise AuditInputError(f"kafka {bootstrap}: no topic {topic!r}")
        tps = [tp_cls(topic, p) for p in sorted(parts)]
        consumer.assign(tps)
        consumer.seek_to_beginning(*tps)
        end = consumer.end_offsets(tps)
        left = {tp for tp in tps if consumer.position(tp) < end[tp]}
        while left:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                names = ", ".join(f"{tp.topic}[{tp.partition}]" for tp in sorted(left))
                auditor.input_error(
                    f"kafka {topic}", f"timed out after {timeout_s:g}s before the end of {names}"
                )
                break
            batch = consumer.poll(timeout_ms=int(min(remaining, 1.0) * 1000))
            for tp, messages in batch.items():
                for m in messages:
                    if m.offset < end[tp]:
                        _add_json(auditor, m.value, f"{tp.topic}[{tp.partition}]@{m.offset}")
            left = {tp for tp in left if consumer.position(tp) < end[tp]}
    except AuditInputError:
        raise
    except Exception as e:
        raise AuditInputError(f"kafka {bootstrap}: {type(e).__name__}: {e}") from None
    finally:
        consumer.close()


def load_chain_key(path: str) -> bytes:
    """The 32-byte chain key from a file holding it in hex, base64 or raw."""
    try:
        with open(path, "rb") as f:
            data = f.read()
    except OSError as e:
        raise AuditInputError(f"--chain-key {path}: {e.strerror}") from None
    text = data.strip()
    for decode in (bytes.fromhex, lambda s: base64.b64decode(s, validate=True)):
        try:
            key = decode(text.decode("ascii"))
        except (ValueError, UnicodeDecodeError, binascii.Error):
            continue
        if len(key) == KEY_BYTES:
            return key
    if len(data) == KEY_BYTES:
        return data
    raise AuditInputError(f"--chain-key {path}: expected 32 bytes in hex, base64 or raw")


# ---------------------------------------------------------------------- output
def _time(ts: Any) -> str:
    if not _is_int(ts):
        return "?"
    try:
        dt = datetime.fromtimestamp(ts / 1000, UTC)
    except (OverflowError, OSError, ValueError):
        return str(ts)
    return dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{ts % 1000:03d}"


def _change(e: dict[str, Any]) -> str:
    et = e.get("event_type")
    g = e.get
    if et == SSC:
        return f"{g('previous_state')} -> {g('new_state')}"
    if et == "TRANSPORT_ATTACHED":
        return f"-> {g('transport_id')} ({g('transport_kind')})"
    if et == "TRANSPORT_SWITCH":
        return f"{g('old_transport_id')} -> {g('new_transport_id')} ({g('switch_latency_ms')} ms)"
    if et in ("TRANSPORT_SWITCH_DENIED", "TRANSPORT_SWITCH_FAILED"):
        return f"x {g('new_transport_id')}"
    if et == "REATTACH_ATTEMPT":
        if g("transport_id") is not None:
            return f"via {g('transport_id')}"
        return f"{g('candidates')} candidate(s)" if g("candidates") is not None else ""
    if et == "REATTACH_RESULT":
        return "ok" if g("ok") is True else "rejected"
    if et == "OWNERSHIP_CHANGE":
        return f"owner {g('owner')} (token {g('fencing_token')})"
    if et == "SESSION_STATS":
        return (
            f"in {g('bytes_in')} B/{g('packets_in')} p, out {g('bytes_out')} B/{g('packets_out')} p"
        )
    if et == "SESSION_TERMINATED":
        return f"after {g('lifetime_ms')} ms, in {g('bytes_in')} B, out {g('bytes_out')} B"
    if et == "SECURITY_EVENT":
        return f"{g('violation_type')} x{g('count')} in {g('window_ms')} ms"
    if et == "POLICY_EVENT":
        return f"{g('policy_name')} {g('observed_value')} vs {g('threshold_value')}"
    if et == "POLICY_RELOADED":
        return f"{g('previous_policy_version')} -> {g('policy_version')}"
    return ""


def _table(report: AuditReport, indices: Iterable[int]) -> list[str]:
    flagged = report.flagged()
    rows: list[tuple[str, ...]] = []
    last_key: tuple[str, ...] | None = None
    repeat = 0
    for i in sorted(indices, key=lambda i: (_ts_of(report.records[i]), i)):
        e = report.records[i].event
        mark = "!" if i in flagged else " "
        key = (
            str(e.get("node_id")), str(e.get("event_type")), _change(e),
            str(e.get("reason_code") or ""), str(e.get("state_version")),
        )  # fmt: skip
        if key == last_key and mark == " " and rows[-1][0] == " ":
            repeat += 1  # collapse identical consecutive rows (e.g. periodic attempts)
            rows[-1] = (*rows[-1][:3], f"{key[1]} (x{repeat})", *rows[-1][4:])
            continue
        last_key, repeat = key, 1
        rows.append((mark, _time(e.get("ts_ms")), *key))
    head = (" ", "time (UTC)", "node", "event", "from -> to", "reason", "version")
    widths = [max(len(r[c]) for r in [head, *rows]) for c in range(len(head))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(r, widths, strict=True)).rstrip()
        for r in [head, *rows]
    ]


def _ts_of(rec: Record) -> int:
    ts = rec.event.get("ts_ms") if isinstance(rec.event, dict) else None
    return ts if isinstance(ts, int) and not isinstance(ts, bool) else 0


def format_timeline(report: AuditReport, sessions: Sequence[str] = ()) -> str:
    """Per session (all its nodes together), a time-ordered table; node-wide events last."""
    by_session: dict[str, list[int]] = {}
    for t in report.tracks:
        label = t.session_id + (f" (attempt {t.attempt})" if t.attempt else "")
        if sessions and not any(t.session_id.startswith(s) for s in sessions):
            continue
        by_session.setdefault(label, []).extend(t.rows)
    out: list[str] = []
    for label, rows in by_session.items():
        out.append(f"session {label}")
        out.extend("  " + line for line in _table(report, rows))
        out.append("")
    if report.node_wide and not sessions:
        out.append("node-wide events")
        out.extend("  " + line for line in _table(report, report.node_wide))
        out.append("")
    return "\n".join(out)


def format_violations(report: AuditReport) -> str:
    out = []
    for v in report.violations:
        out.append(f"VIOLATION {v}")
        if v.event is not None:
            out.append("    " + json.dumps(v.event, sort_keys=True))
    return "\n".join(out)


def format_summary(report: AuditReport) -> str:
    n = len(report.records)
    out = ["summary", f"  events: {n} from {len(report.nodes)} node(s)"]
    if report.duplicates:
        out.append(f"  exact duplicates ignored: {report.duplicates}")
    mode = "seq and keyed hash chain" if report.chain_verified else "seq only (no --chain-key)"
    for info in report.nodes.values():
        out.append(
            f"  node {info.node_id}: {info.events} events, seq {info.first_seq}..{info.last_seq}, "
            f"restarts {info.restarts}, checked {mode}"
        )
    sessions = {t.session_id for t in report.tracks}
    ended = Counter(t.terminated_reason for t in report.tracks if t.terminated_reason)
    failed_over = {t.session_id for t in report.tracks if t.switches or t.reattach_ok}
    longest = max((t.longest_recovering_ms for t in report.tracks), default=0)
    out.append(
        f"  sessions: {len(sessions)}; failed over: {len(failed_over)}; "
        f"longest RECOVERING: {longest} ms"
    )
    if ended:
        out.append("  terminations: " + ", ".join(f"{r} {c}" for r, c in sorted(ended.items())))
    out.append("  by type: " + ", ".join(f"{k} {v}" for k, v in sorted(report.by_type.items())))
    if report.input_errors:
        out.append(f"  input errors: {len(report.input_errors)}")
    checks = report.by_check()
    if checks:
        out.append("  violations: " + ", ".join(f"{c} {checks[c]}" for c in CHECKS if c in checks))
    verdict = {0: "OK", 1: "VIOLATIONS FOUND", 2: "INPUT ERRORS"}[report.exit_status]
    out.append(f"  result: {verdict}")
    return "\n".join(out)


_COLORS = {
    "BIRTH": "#b0b0b0", "ATTACHED": "#3c9a3c", "VOLATILE": "#e6c229",
    "DEGRADED": "#e67e22", "RECOVERING": "#c0392b", "TERMINATED": "#202020",
}  # fmt: skip
#: timeline mark -> (marker, color, vertical offset in the row, legend label)
_MARKS = {
    "switch": ("^", "#2e86de", -0.28, "transport switch"),
    "reattach": ("o", "white", 0.28, "reattach ok"),
    "owner": ("s", "#8e44ad", 0.0, "ownership claimed"),
    "release": ("s", "white", 0.0, "ownership released"),
}


def plot_timeline(report: AuditReport, path: str) -> None:
    """One row per session x node: state bands, switch/reattach markers, violations."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        from matplotlib.lines import Line2D
        from matplotlib.patches import Patch
    except ImportError:
        raise AuditInputError("--plot needs matplotlib: pip install matplotlib") from None
    tracks = [t for t in report.tracks if t.first_ts is not None]
    born: dict[str, int] = {}
    for t in tracks:
        born[t.session_id] = min(born.get(t.session_id, t.first_ts or 0), t.first_ts or 0)
    tracks.sort(key=lambda t: (born[t.session_id], t.session_id, t.attempt, t.first_ts or 0))
    if not tracks:
        raise AuditInputError("--plot: no session events to draw")
    t0 = min(t.first_ts or 0 for t in tracks)
    end = max(t.last_ts for t in tracks)
    end = max(end, max(i.last_ts for i in report.nodes.values()))
    fig, ax = plt.subplots(figsize=(13, 1.6 + 0.55 * len(tracks)))
    flagged = report.flagged()
    for row, t in enumerate(tracks):
        first = t.first_ts or 0
        starts = [(first, "BIRTH")] if not t.bands or t.bands[0][0] > first else []
        bands = starts + t.bands
        last = end if t.terminated_where is None else t.last_ts
        for k, (start, state) in enumerate(bands):
            stop = bands[k + 1][0] if k + 1 < len(bands) else max(last, start)
            width = max(stop - start, (end - t0) * 0.004 if state == TERMINATED else 0)
            ax.barh(row, width / 1000, left=(start - t0) / 1000, color=_COLORS.get(state, "w"))
        for ts, kind in t.marks:
            if kind in _MARKS:
                m, c, dy, _label = _MARKS[kind]
                ax.plot((ts - t0) / 1000, row + dy, m, color=c, markeredgecolor="black")
        for i in t.rows:
            if i in flagged:
                ax.plot((_ts_of(report.records[i]) - t0) / 1000, row, "X", color="red", ms=11)
    ax.set_yticks(range(len(tracks)))
    ax.set_yticklabels([t.label.replace(t.session_id, t.session_id[:8]) for t in tracks])
    ax.set_ylim(len(tracks) - 0.5, -0.5)
    ax.set_xlabel(f"seconds since {_time(t0)} UTC")
    handles: list[Any] = [Patch(color=c, label=s) for s, c in _COLORS.items()]
    for m, c, _dy, label in _MARKS.values():
        handles.append(
            Line2D([], [], marker=m, color=c, markeredgecolor="black", ls="", label=label)
        )
    handles.append(Line2D([], [], marker="X", color="red", ls="", label="violation"))
    ax.legend(handles=handles, loc="center left", bbox_to_anchor=(1.01, 0.5), fontsize="small")
    ax.set_title("jumping audit: session state per session x node")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------- command
def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options of ``jumpctl audit`` (mount with ``run`` as the handler)."""
    parser.add_argument(
        "files", nargs="*", metavar="FILE", help="JSON-lines event files in order ('-': stdin)"
    )
    parser.add_argument("--kafka", metavar="BOOTSTRAP", help="read a Kafka topic instead")
    parser.add_argument("--topic", help="the Kafka topic (with --kafka)")
    parser.add_argument(
        "--timeout", type=float, default=30.0, metavar="S",
        help="give up reading Kafka after S seconds (default 30)",
    )  # fmt: skip
    parser.add_argument(
        "--chain-key", metavar="FILE",
        help="file with the 32-byte chain key (hex, base64 or raw); without it only seq is "
        "checked",
    )  # fmt: skip
    parser.add_argument(
        "--recovery-window-ms", type=int, default=DEFAULT_RECOVERY_WINDOW_MS, metavar="MS",
        help="bound on RECOVERING (default %(default)s, the policy default)",
    )  # fmt: skip
    parser.add_argument(
        "--tolerance-ms", type=int, default=DEFAULT_TOLERANCE_MS, metavar="MS",
        help="slack on the time bounds (recovery window, switch cooldown) for timer "
        "granularity (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--clock-skew-ms", type=int, default=0, metavar="MS",
        help="clock skew allowed between nodes when comparing ownership (default 0)",
    )  # fmt: skip
    parser.add_argument(
        "--switch-cooldown-ms", type=int, default=DEFAULT_SWITCH_COOLDOWN_MS, metavar="MS",
        help="minimum gap between two switches of a session (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--max-switches-per-min", type=int, default=DEFAULT_MAX_SWITCHES_PER_MIN, metavar="N",
        help="maximum switches of a session in any minute (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--order", choices=("arrival", "seq"), default=None,
        help="check each node's events in input order (files' default) or sorted by seq "
        "(Kafka's default; exact duplicates are then ignored)",
    )  # fmt: skip
    parser.add_argument(
        "--partial", action="store_true",
        help="histories may start after seq 0 (an excerpt or a rotated file)",
    )  # fmt: skip
    parser.add_argument(
        "--session", action="append", default=[], metavar="ID",
        help="show only sessions whose id starts with ID (repeatable)",
    )  # fmt: skip
    parser.add_argument("--no-timeline", action="store_true", help="print only the summary")
    parser.add_argument("--plot", metavar="PNG", help="draw the timeline (needs matplotlib)")


def run(args: argparse.Namespace, out: IO[str] | None = None, err: IO[str] | None = None) -> int:
    """Run an audit from parsed arguments; returns the exit status (0, 1 or 2)."""
    out = out or sys.stdout
    err = err or sys.stderr
    if bool(args.files) == bool(args.kafka):
        print("jumpctl audit: give event FILEs or --kafka BOOTSTRAP --topic T", file=err)
        return 2
    if args.kafka and not args.topic:
        print("jumpctl audit: --kafka needs --topic", file=err)
        return 2
    for name in (
        "recovery_window_ms", "tolerance_ms", "clock_skew_ms", "switch_cooldown_ms",
        "max_switches_per_min",
    ):  # fmt: skip
        if getattr(args, name) < 0:
            print(f"jumpctl audit: --{name.replace('_', '-')} must be >= 0", file=err)
            return 2
    try:
        event_schema.validate({})
        key = load_chain_key(args.chain_key) if args.chain_key else None
        auditor = Auditor(
            key,
            recovery_window_ms=args.recovery_window_ms,
            tolerance_ms=args.tolerance_ms,
            clock_skew_ms=args.clock_skew_ms,
            switch_cooldown_ms=args.switch_cooldown_ms,
            max_switches_per_min=args.max_switches_per_min,
            order=args.order or ("seq" if args.kafka else "arrival"),
            partial=args.partial,
        )
        if args.kafka:
            read_kafka(auditor, args.kafka, args.topic, args.timeout)
        for name in args.files:
            if name == "-":
                read_jsonl(auditor, sys.stdin.buffer, "<stdin>")
                continue
            try:
                with open(name, "rb") as f:
                    read_jsonl(auditor, f, name)
            except OSError as e:
                auditor.input_error(name, f"cannot read: {e.strerror}")
        report = auditor.finish()
        if args.plot:
            plot_timeline(report, args.plot)
    except (AuditInputError, event_schema.SchemaUnavailable) as e:
        print(f"jumpctl audit: {e}", file=err)
        return 2
    if not args.no_timeline:
        print(format_timeline(report, args.session), file=out)
    if report.violations:
        print(format_violations(report), file=out)
    for problem in report.input_errors:
        print(f"INPUT ERROR {problem}", file=err)
    print(format_summary(report), file=out)
    if args.plot:
        print(f"  timeline picture: {args.plot}", file=out)
    return report.exit_status


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="jumpctl audit",
        description="Verify a history of Jumping SIEM events: schema, per-node seq and hash "
        "chain, state machine, versions, bounded recovery, one binding, one owner.",
        epilog="Exit status: 0 no violation, 1 violations (each printed), 2 usage or input errors.",
    )
    add_arguments(parser)
    try:
        args = parser.parse_args(argv)
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else 2
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
