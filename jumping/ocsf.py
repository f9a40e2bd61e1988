"""
Jumping SIEM events as OCSF 1.5.0 events (``jumpctl export --ocsf``, docs/events.md "OCSF").

Each ``jumping.event/1`` event maps to the OCSF class that fits it:

- handshakes (``SESSION_STATE_CHANGE`` with ``HANDSHAKE_OK`` / ``HANDSHAKE_FAIL``):
  **Authentication** (3002), activity Logon, status Success / Failure;
- ``SECURITY_EVENT``: **Detection Finding** (2004), activity Create, the aggregate's count
  and window as ``count``, ``start_time`` and ``end_time``;
- ``POLICY_RELOADED``: **Device Config State Change** (5019), the node as the device;
- everything else about a session (state changes, attach, switch, denied and failed
  switches, reattaches, ownership, policy thresholds, stats, termination): **Network
  Activity** (4001): Open (attached), Close (terminated), Traffic (stats, with ``traffic``),
  Refuse (switch denied), Fail (switch failed), Other for the rest (``activity_name`` is the
  Jumping event type).

Nothing is lost: ``unmapped.jumping`` is the original event, byte for byte the object the
chain covers, so ``seq``, ``prev_hash`` and every field stay verifiable
(``jumpctl audit`` on the originals). ``metadata.sequence`` is ``seq``,
``metadata.correlation_uid`` the ``session_id``, ``metadata.uid`` ``boot:seq``, and
``metadata.log_provider`` the node's **boot identity** ``node_id@boot_id``: with the
event's ``seq`` that is the event's identity (docs/events.md), so one event exported twice
gets one ``uid`` and two runs' events never share one. Events of older nodes carry no
``boot_id``; for them the boot identity is ``node_id@ts_ms`` of their run's ``seq`` 0 event
(see :class:`Exporter`), ``node_id@?`` when the history starts after it. The mapping is
pure: it never changes the Jumping stream.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Iterator
from typing import IO, Any

from jumping import schema as event_schema

OCSF_VERSION = "1.5.0"
PRODUCT = {"name": "Jumping", "vendor_name": "Jumping", "version": "1"}

NETWORK_ACTIVITY, AUTHENTICATION, DETECTION_FINDING, CONFIG_CHANGE = 4001, 3002, 2004, 5019
CATEGORY = {NETWORK_ACTIVITY: 4, AUTHENTICATION: 3, DETECTION_FINDING: 2, CONFIG_CHANGE: 5}
CATEGORY_NAME = {
    4: "Network Activity",
    3: "Identity & Access Management",
    2: "Findings",
    5: "Discovery",
}
CLASS_NAME = {
    NETWORK_ACTIVITY: "Network Activity",
    AUTHENTICATION: "Authentication",
    DETECTION_FINDING: "Detection Finding",
    CONFIG_CHANGE: "Device Config State Change",
}
#: Network Activity's activity ids (OCSF 1.5.0)
_OPEN, _CLOSE, _FAIL, _REFUSE, _TRAFFIC, _OTHER = 1, 2, 4, 5, 6, 99
_NETWORK_ACTIVITY = {
    "TRANSPORT_ATTACHED": (_OPEN, "Open"),
    "SESSION_TERMINATED": (_CLOSE, "Close"),
    "SESSION_STATS": (_TRAFFIC, "Traffic"),
    "TRANSPORT_SWITCH_DENIED": (_REFUSE, "Refuse"),
    "TRANSPORT_SWITCH_FAILED": (_FAIL, "Fail"),
}
#: severity_id: 1 Informational, 2 Low, 3 Medium, 4 High
_LOW = {"TRANSPORT_SWITCH_DENIED", "TRANSPORT_SWITCH_FAILED", "POLICY_EVENT"}
_QUIET_VIOLATIONS = {"MALFORMED_PACKET", "UNKNOWN_RECEIVER"}
_SEVERITY_NAME = {1: "Informational", 2: "Low", 3: "Medium", 4: "High"}


class OcsfMappingError(ValueError):
    """The input is not a valid ``jumping.event/1`` event."""


def _class_and_activity(e: dict[str, Any]) -> tuple[int, int, str]:
    et = e["event_type"]
    if et == "SESSION_STATE_CHANGE" and e.get("reason_code") in ("HANDSHAKE_OK", "HANDSHAKE_FAIL"):
        return AUTHENTICATION, 1, "Logon"
    if et == "SECURITY_EVENT":
        return DETECTION_FINDING, 1, "Create"
    if et == "POLICY_RELOADED":
        return CONFIG_CHANGE, 99, "Policy reloaded"
    activity, name = _NETWORK_ACTIVITY.get(et, (_OTHER, et))
    return NETWORK_ACTIVITY, activity, name


def _severity(e: dict[str, Any]) -> int:
    et = e["event_type"]
    if et == "SECURITY_EVENT":
        return 2 if e.get("violation_type") in _QUIET_VIOLATIONS else 3
    if et in _LOW or (et == "SESSION_STATE_CHANGE" and e.get("new_state") == "TERMINATED"):
        return 2
    if et == "REATTACH_RESULT" and e.get("ok") is False:
        return 2
    return 1


def _message(e: dict[str, Any]) -> str:
    g = e.get
    et = e["event_type"]
    if et == "SESSION_STATE_CHANGE":
        return f"{g('previous_state')} -> {g('new_state')} ({g('reason_code')})"
    if et == "TRANSPORT_SWITCH":
        return (
            f"switched {g('old_transport_kind')} -> {g('new_transport_kind')} in "
            f"{g('switch_latency_ms')} ms (outage {g('outage_ms')} ms)"
        )
    if et == "SECURITY_EVENT":
        return f"{g('violation_type')} x{g('count')} in {g('window_ms')} ms"
    return et if g("reason_code") is None else f"{et} ({g('reason_code')})"


def to_ocsf(event: dict[str, Any], boot: str | None = None) -> dict[str, Any]:
    """One Jumping event as an OCSF 1.5.0 event (a JSON object). Raises
    :class:`OcsfMappingError` if ``event`` does not validate against ``jumping.event/1``."""
    problems = event_schema.validate(event)
    if problems:
        raise OcsfMappingError("not a valid jumping.event/1 event: " + "; ".join(problems))
    e = event
    class_uid, activity_id, activity_name = _class_and_activity(e)
    severity = _severity(e)
    node, seq, sid = e["node_id"], e["seq"], e["session_id"]
    if e.get("boot_id") is not None:
        boot = f"{node}@{e['boot_id']}"
    else:
        boot = boot or f"{node}@?"
    out: dict[str, Any] = {
        "class_uid": class_uid,
        "class_name": CLASS_NAME[class_uid],
        "category_uid": CATEGORY[class_uid],
        "category_name": CATEGORY_NAME[CATEGORY[class_uid]],
        "activity_id": activity_id,
        "activity_name": activity_name,
        "type_uid": class_uid * 100 + activity_id,
        "time": e["ts_ms"],
        "severity_id": severity,
        "severity": _SEVERITY_NAME[severity],
        "message": _message(e),
        "metadata": {
            "version": OCSF_VERSION,
            "product": dict(PRODUCT),
            "uid": f"{boot}:{seq}",
            "sequence": seq,
            "log_name": e["schema"],
            "log_provider": boot,
            "event_code": e["event_type"],
            **({"correlation_uid": sid} if sid is not None else {}),
        },
        "unmapped": {"jumping": e},
    }
    et = e["event_type"]
    if class_uid == AUTHENTICATION:
        ok = e.get("reason_code") == "HANDSHAKE_OK"
        out["status_id"], out["status"] = (1, "Success") if ok else (2, "Failure")
        out["user"] = {"uid": sid or "unknown", "name": "jumping session"}
        out["service"] = {"name": "jumping"}
    elif class_uid == DETECTION_FINDING:
        window = e.get("window_ms") or 0
        out["finding_info"] = {
            "uid": f"{boot}:{seq}",
            "title": e["violation_type"],
            "types": [e["violation_type"]],
        }
        out["count"] = e["count"]
        out["start_time"], out["end_time"] = e["ts_ms"] - window, e["ts_ms"]
    elif class_uid == CONFIG_CHANGE:
        out["device"] = {"type_id": 0, "name": node, "hostname": node}
    else:
        if et == "SESSION_STATS":
            out["traffic"] = {
                "bytes_in": e["bytes_in"], "bytes_out": e["bytes_out"],
                "packets_in": e["packets_in"], "packets_out": e["packets_out"],
                "bytes": e["bytes_in"] + e["bytes_out"],
                "packets": e["packets_in"] + e["packets_out"],
            }  # fmt: skip
        elif et == "TRANSPORT_SWITCH" and e.get("outage_ms") is not None:
            out["duration"] = e["outage_ms"]
        elif et == "SESSION_TERMINATED":
            out["duration"] = e["lifetime_ms"]
        if et == "REATTACH_RESULT":
            out["status_id"], out["status"] = (1, "Success") if e.get("ok") else (2, "Failure")
    return out


class Exporter:
    """Maps a stream in order. An event's boot identity is its ``boot_id``; for events without
    one (older nodes) the exporter tracks it per node: the ``ts_ms`` of the node's latest
    ``seq`` 0 event with a zero ``prev_hash``."""

    def __init__(self) -> None:
        self.boots: dict[str, str] = {}

    def map(self, event: dict[str, Any]) -> dict[str, Any]:
        node = event.get("node_id")
        if isinstance(node, str) and event.get("seq") == 0 and event.get("prev_hash") == "0" * 64:
            self.boots[node] = f"{node}@{event.get('ts_ms')}"
        return to_ocsf(event, self.boots.get(node) if isinstance(node, str) else None)

    def map_lines(self, lines: Iterable[bytes | str], name: str) -> Iterator[dict[str, Any]]:
        """OCSF events of JSON lines; a bad line raises OcsfMappingError with its place."""
        for n, raw in enumerate(lines, 1):
            text = raw.decode("utf-8", "replace") if isinstance(raw, bytes) else raw
            if not text.strip():
                continue
            try:
                event = json.loads(text)
            except ValueError as err:
                raise OcsfMappingError(f"{name}:{n}: bad JSON: {err}") from None
            if not isinstance(event, dict):
                raise OcsfMappingError(f"{name}:{n}: not a JSON object")
            try:
                yield self.map(event)
            except OcsfMappingError as err:
                raise OcsfMappingError(f"{name}:{n}: {err}") from None


def export(files: Iterable[str], out: IO[str]) -> int:
    """``jumpctl export --ocsf``: OCSF JSON lines of ``files`` ('-': stdin) on ``out``;
    returns the number written. Raises OcsfMappingError on the first bad line."""
    import sys

    exporter = Exporter()
    written = 0
    for name in files:
        stream: Any = sys.stdin if name == "-" else open(name, encoding="utf-8")  # noqa: SIM115
        try:
            for o in exporter.map_lines(stream, "<stdin>" if name == "-" else name):
                out.write(json.dumps(o, sort_keys=True, separators=(",", ":")) + "\n")
                written += 1
        finally:
            if stream is not sys.stdin:
                stream.close()
    return written
