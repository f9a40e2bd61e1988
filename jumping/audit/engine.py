"""
The audit engine: check a history of SIEM events against the contract and the invariants.

The checks (each violation names one, see docs/events.md, "Auditing"):

- ``SCHEMA``: every event validates against ``jumping.event/1``;
- ``SEQ_START`` / ``SEQ_GAP`` / ``SEQ_ORDER`` / ``CHAIN``: per node, ``seq`` starts at 0 and
  goes up by one, and ``prev_hash`` is the keyed hash of the previous event (with a key);
- ``ILLEGAL_TRANSITION`` / ``STATE_DISCONTINUITY``: every state change is in the table and
  starts where the previous one ended, per (session, node);
- ``STATE_VERSION``: per (session, node) — a node's own counter, never compared across
  nodes — ``state_version`` strictly increases with each transition and never goes back;
- ``AFTER_TERMINATED`` / ``TERMINATION_MISMATCH``: TERMINATED is absorbing; a node that
  ended its copy of a session with ``OWNERSHIP_LOST`` may later take the session over again
  (a claim with a strictly higher fencing token), which starts a new track;
- ``RECOVERY_TOO_LONG``: RECOVERING lasts at most ``recovery_window_ms`` (+ tolerance);
- ``TWO_BINDINGS``: attach/switch/reattach events never leave two transports bound;
- ``SWITCH_RATE``: switches at least ``switch_cooldown_ms`` apart, at most
  ``max_switches_per_min`` in any minute, per (session, node);
- ``TWO_OWNERS``: ownership claims across nodes never overlap without a newer fencing token.

:class:`Auditor` and :func:`audit_events` are pure (no I/O) and need ``jsonschema``.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import Any, TypeGuard

from jumping import schema as event_schema
from jumping.chain import ZERO_HASH, canonical, chain_hash, check_key
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


def _is_int(v: Any) -> TypeGuard[int]:
    return isinstance(v, int) and not isinstance(v, bool)


def _boot(e: Any) -> str | None:
    """The event's ``boot_id`` (which start of its node emitted it), if it has one."""
    b = e.get("boot_id") if isinstance(e, dict) else None
    return b if isinstance(b, str) else None


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
    #: the node's runs seen, by ``boot_id``, in the order they were checked
    boots: list[str] = field(default_factory=list)
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
    #: the highest fencing token this track claimed the session with
    token: int | None = None
    recovering_since: int | None = None
    recovering_where: str = ""
    recovering_index: int = -1
    recovering_flagged: bool = False
    longest_recovering_ms: int = 0
    #: (start, end) of each outage a TRANSPORT_SWITCH reported (``outage_ms`` before it)
    outages: list[tuple[int, int]] = field(default_factory=list)
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
    def longest_outage_ms(self) -> int:
        return max((end - start for start, end in self.outages), default=0)

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
        #: node -> its EVENTS_LOST announcements (and where they are), for SEQ_GAP messages
        self._lost: dict[str, list[tuple[dict[str, Any], str]]] = {}

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
                if e.get("event_type") == "EVENTS_LOST":
                    self._lost.setdefault(node, []).append((e, rec.where))
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
        """Per node by (run, seq). A run is one start of the node: its ``boot_id`` where
        events carry one (docs/events.md, "Event identity"), runs ordered by their first
        ``ts_ms``; for older events without it, a run starts at each seq 0 (guessed from
        timestamps). Duplicates are records with the same (node_id, boot_id, seq): one is
        kept, the others counted; two *different* events with one identity are a
        violation."""

        def ts(r: Record) -> int:
            v = r.event.get("ts_ms")
            return v if _is_int(v) else 0

        def seq(r: Record) -> int:
            v = r.event.get("seq")
            return v if _is_int(v) else -1

        boot_start: dict[str, int] = {}
        for r in recs:
            b = _boot(r.event)
            if b is not None:
                boot_start[b] = min(boot_start.get(b, ts(r)), ts(r))
        starts = sorted(
            [ts(r) for r in recs if _boot(r.event) is None and seq(r) == 0
             and r.event.get("prev_hash") == ZERO_HASH] + list(boot_start.values())
        )  # fmt: skip

        def run(r: Record) -> tuple[int, str]:
            b = _boot(r.event)
            at = boot_start[b] if b is not None else ts(r)
            return max(bisect.bisect_right(starts, at) - 1, 0), b or ""

        recs = sorted(recs, key=lambda r: (run(r), seq(r), r.index))
        out: list[Record] = []
        for r in recs:
            if out and seq(out[-1]) == seq(r) and _boot(out[-1].event) == _boot(r.event):
                if canonical(out[-1].event) == canonical(r.event):
                    self.report.duplicates += 1
                    continue
                if _boot(r.event) is not None:
                    self._violate(
                        "SEQ_ORDER", r,
                        f"two different events with one identity (node {r.event.get('node_id')}"
                        f", boot_id {_boot(r.event)}, seq {seq(r)}); the other is at "
                        f"{out[-1].where}",
                    )  # fmt: skip
                    continue
            out.append(r)
        return out

    def _announced(self, node: str, boot: str | None, first: int, last: int) -> str:
        """What EVENTS_LOST events of that node say about the missing seqs, if anything."""
        said = [
            (e, where)
            for e, where in self._lost.get(node, [])
            if (e.get("lost_boot_id") or e.get("boot_id")) == boot
            and _is_int(e.get("first_seq")) and _is_int(e.get("last_seq"))
            and e["first_seq"] <= last and e["last_seq"] >= first
        ]  # fmt: skip
        if not said:
            return ""
        parts = [
            f"seq {e['first_seq']}..{e['last_seq']} ({e.get('count')} event(s), "
            f"sink {e.get('sink', '?')}) at {where}"
            for e, where in said
        ]
        return "; announced by EVENTS_LOST: " + ", ".join(parts)

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
            b = _boot(e)
            if b is not None and b not in info.boots:
                info.boots.append(b)
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
            boot, lboot = _boot(e), _boot(last.event)
            if boot is not None and lboot is not None and boot != lboot:
                # a new start of the node, known from its boot_id, not guessed
                info.restarts += 1
                if seq != 0 or ph != ZERO_HASH:
                    self._violate(
                        "SEQ_GAP", rec,
                        f"node {info.node_id} restarted (boot_id {boot}) and its first event "
                        f"here has seq {seq}: {seq} event(s) of that run missing"
                        + self._announced(info.node_id, boot, 0, seq - 1),
                    )  # fmt: skip
                last = rec
            elif seq == 0 and ph == ZERO_HASH and (boot is None or lboot is None):
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
                    f"{seq - lseq - 1} event(s) missing"
                    + self._announced(info.node_id, boot, lseq + 1, seq - 1),
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
        if t is None or (fresh_attempt and t.state is not None) or self._retaken(t, e):
            t = SessionTrack(sid, node, attempt=t.attempt + 1 if t is not None else 0)
            self._current[key] = t
            self.report.tracks.append(t)
        return t

    @staticmethod
    def _retaken(t: SessionTrack, e: dict[str, Any]) -> bool:
        """``e`` takes the session over again on a node whose copy ended with
        ``OWNERSHIP_LOST`` (it failed closed or was fenced, and the session's record lived
        on): a claim by that node with a fencing token strictly higher than any it held.
        It starts a new track; anything else after TERMINATED is ``AFTER_TERMINATED``."""
        token, held = e.get("fencing_token"), t.token
        return (
            t.final_seen
            and t.terminated_reason == fsm.Reason.OWNERSHIP_LOST.value
            and e.get("event_type") == "OWNERSHIP_CHANGE"
            and e.get("owner") == t.node_id
            and e.get("reason_code") is None
            and _is_int(token)
            and (held is None or token > held)
        )

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
        outage = e.get("outage_ms")
        if isinstance(outage, int) and not isinstance(outage, bool) and outage >= 0:
            t.outages.append((ts - outage, ts))
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
        token, held = e.get("fencing_token"), t.token
        if claim and _is_int(token) and (held is None or token > held):
            t.token = token
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
