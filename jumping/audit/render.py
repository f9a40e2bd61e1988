"""The audit as text: per-session timelines, the violations, the summary."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from typing import Any

from jumping.audit.engine import CHECKS, SSC, AuditReport, Record, _is_int


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
        felt = f", outage {g('outage_ms')} ms" if g("outage_ms") is not None else ""
        return (
            f"{g('old_transport_id')} -> {g('new_transport_id')} "
            f"(switch {g('switch_latency_ms')} ms{felt})"
        )
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
        out.append(
            f"  duplicates ignored (same node_id, boot_id, seq, same content): {report.duplicates}"
        )
    mode = "seq and keyed hash chain" if report.chain_verified else "seq only (no --chain-key)"
    for info in report.nodes.values():
        out.append(
            f"  node {info.node_id}: {info.events} events, seq {info.first_seq}..{info.last_seq}, "
            f"restarts {info.restarts}"
            + (f" (runs by boot_id: {', '.join(b[:8] for b in info.boots)})" if info.boots else "")
            + f", checked {mode}"
        )
    sessions = {t.session_id for t in report.tracks}
    ended = Counter(t.terminated_reason for t in report.tracks if t.terminated_reason)
    failed_over = {t.session_id for t in report.tracks if t.switches or t.reattach_ok}
    longest = max((t.longest_recovering_ms for t in report.tracks), default=0)
    out.append(
        f"  sessions: {len(sessions)}; failed over: {len(failed_over)}; "
        f"longest RECOVERING: {longest} ms"
    )
    felt = [(t.longest_outage_ms, t) for t in report.tracks if t.outages]
    if felt:
        worst, where = max(felt, key=lambda x: x[0])
        n = sum(len(t.outages) for _ms, t in felt)
        out.append(
            f"  outages felt (last authenticated packet on the old transport -> new binding): "
            f"{n}, longest {worst} ms ({where.label})"
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
