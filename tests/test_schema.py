"""The published event schema (docs/events.md): valid, in step with the FSM, and obeyed by
the events the real core emits."""

from __future__ import annotations

import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from jumping import schema as event_schema
from jumping.core.fsm import Reason, State

ROOT = Path(__file__).resolve().parent.parent
SID = "0123456789abcdef0123456789abcdef"
DOCUMENTED_EVENT_TYPES = [
    "SESSION_STATE_CHANGE", "TRANSPORT_ATTACHED", "TRANSPORT_SWITCH", "TRANSPORT_SWITCH_DENIED",
    "TRANSPORT_SWITCH_FAILED", "REATTACH_ATTEMPT", "REATTACH_RESULT", "SECURITY_EVENT",
    "POLICY_EVENT", "POLICY_RELOADED", "OWNERSHIP_CHANGE", "SESSION_STATS", "SESSION_TERMINATED",
    "EVENTS_LOST",
]  # fmt: skip
DOCUMENTED_VIOLATIONS = [
    "REPLAY_DETECTED", "INVALID_PROOF", "DUAL_ACTIVE_ATTEMPT", "OWNERSHIP_CONFLICT",
    "HANDSHAKE_FLOOD",
]  # fmt: skip


def base(event_type: str, **fields: Any) -> dict[str, Any]:
    e: dict[str, Any] = {
        "schema": "jumping.event/1", "ts_ms": 1_800_000_000_123, "event_type": event_type,
        "session_id": SID, "node_id": "gw1", "policy_version": "3", "state_version": 2,
        "reason_code": None, "seq": 17, "prev_hash": "ab" * 32,
    }  # fmt: skip
    e.update(fields)
    return e


VALID: dict[str, dict[str, Any]] = {
    "SESSION_STATE_CHANGE": base(
        "SESSION_STATE_CHANGE", reason_code="TRANSPORT_DEAD", previous_state="VOLATILE",
        new_state="RECOVERING", silence_ms=3000, detail="transport_lost",
    ),
    "TRANSPORT_ATTACHED": base(
        "TRANSPORT_ATTACHED", transport_id="udp:10.0.0.1:51820>10.0.0.2:40000#1",
        transport_kind="udp",
    ),
    "TRANSPORT_SWITCH": base(
        "TRANSPORT_SWITCH", old_transport_id="udp:1", old_transport_kind="udp",
        new_transport_id="quic:2", new_transport_kind="quic", switch_latency_ms=180,
    ),
    "TRANSPORT_SWITCH_DENIED": base(
        "TRANSPORT_SWITCH_DENIED", reason_code="COOLDOWN_ACTIVE", old_transport_id="udp:1",
        new_transport_id="udp:2",
    ),
    "TRANSPORT_SWITCH_FAILED": base(
        "TRANSPORT_SWITCH_FAILED", reason_code="REATTACH_VALIDATION_FAILED",
        new_transport_id="udp:2", error="path_validation_timeout",
    ),
    "REATTACH_ATTEMPT": base("REATTACH_ATTEMPT", transport_id="udp:2", candidates=2),
    "REATTACH_RESULT": base("REATTACH_RESULT", reason_code="REATTACH_OK", ok=True),
    "SECURITY_EVENT": base(
        "SECURITY_EVENT", session_id=None, state_version=0, violation_type="HANDSHAKE_FLOOD",
        count=250_000, window_ms=10_000,
    ),
    "POLICY_EVENT": base(
        "POLICY_EVENT", policy_name="loss_volatile_threshold", threshold_value=0.2,
        observed_value=0.31,
    ),
    "POLICY_RELOADED": base(
        "POLICY_RELOADED", session_id=None, state_version=0, previous_policy_version="2"
    ),
    "OWNERSHIP_CHANGE": base("OWNERSHIP_CHANGE", owner="gw1", fencing_token=4711),
    "SESSION_STATS": base(
        "SESSION_STATS", bytes_in=10, bytes_out=20, packets_in=1, packets_out=2,
        transport_id="udp:1", rtt_ms=12.5, loss=0.0, interval_ms=60_000,
    ),
    "SESSION_TERMINATED": base(
        "SESSION_TERMINATED", reason_code="RECOVERY_WINDOW_EXCEEDED", lifetime_ms=11_019,
        bytes_in=33, bytes_out=1683, packets_in=1, packets_out=40,
    ),
    "EVENTS_LOST": base(
        "EVENTS_LOST", session_id=None, state_version=0, sink="kafka0", first_seq=120,
        last_seq=131, count=12, lost_boot_id="ab" * 16,
    ),
}  # fmt: skip


def drop(key: str) -> Callable[[dict[str, Any]], dict[str, Any]]:
    def f(e: dict[str, Any]) -> dict[str, Any]:
        e = dict(e)
        del e[key]
        return e

    return f


def put(**kv: Any) -> Callable[[dict[str, Any]], dict[str, Any]]:
    return lambda e: dict(e, **kv)


#: (event type, change, a fragment of the expected message)
INVALID: list[tuple[str, Callable[[dict[str, Any]], dict[str, Any]], str]] = [
    ("SESSION_STATE_CHANGE", drop("new_state"), "'new_state' is a required property"),
    ("SESSION_STATE_CHANGE", drop("previous_state"), "'previous_state' is a required"),
    ("SESSION_STATE_CHANGE", put(reason_code=None), "reason_code: None is not of type"),
    ("SESSION_STATE_CHANGE", put(new_state="LIMBO"), "new_state: 'LIMBO' is not one of"),
    ("SESSION_STATE_CHANGE", put(session_id=None), "session_id: None is not of type"),
    ("SESSION_STATE_CHANGE", put(silence_ms=-1), "silence_ms: -1 is less than"),
    ("TRANSPORT_ATTACHED", put(transport_id=None), "transport_id: None is not of type"),
    ("TRANSPORT_ATTACHED", drop("transport_kind"), "'transport_kind' is a required"),
    ("TRANSPORT_ATTACHED", put(transport_kind="UDP!"), "transport_kind: 'UDP!' does not match"),
    ("TRANSPORT_SWITCH", drop("switch_latency_ms"), "'switch_latency_ms' is a required"),
    ("TRANSPORT_SWITCH", drop("old_transport_id"), "'old_transport_id' is a required"),
    ("TRANSPORT_SWITCH", put(switch_latency_ms=1.5), "switch_latency_ms: 1.5 is not of type"),
    ("TRANSPORT_SWITCH_DENIED", put(reason_code=None), "reason_code: None is not of type"),
    ("TRANSPORT_SWITCH_DENIED", drop("new_transport_id"), "'new_transport_id' is a required"),
    ("TRANSPORT_SWITCH_FAILED", drop("new_transport_id"), "'new_transport_id' is a required"),
    ("REATTACH_ATTEMPT", put(session_id=None), "session_id: None is not of type"),
    ("REATTACH_RESULT", drop("ok"), "'ok' is a required property"),
    ("REATTACH_RESULT", put(reason_code="COOLDOWN_ACTIVE"), "'REATTACH_OK' was expected"),
    ("REATTACH_RESULT", put(ok=False), "should not be valid"),
    ("REATTACH_RESULT", put(ok="yes"), "ok: 'yes' is not of type 'boolean'"),
    ("SECURITY_EVENT", put(violation_type="PORT_SCAN"), "violation_type: 'PORT_SCAN' is not"),
    ("SECURITY_EVENT", put(count=0), "count: 0 is less than the minimum of 1"),
    ("SECURITY_EVENT", drop("window_ms"), "'window_ms' is a required property"),
    ("POLICY_EVENT", drop("observed_value"), "'observed_value' is a required property"),
    ("POLICY_EVENT", put(threshold_value="0.2"), "threshold_value: '0.2' is not of type"),
    ("POLICY_EVENT", drop("policy_name"), "'policy_name' is a required property"),
    ("POLICY_RELOADED", put(session_id=SID), "session_id: '0123456789abcdef0123456789abcdef' is"),
    ("POLICY_RELOADED", drop("previous_policy_version"), "'previous_policy_version' is a requ"),
    ("OWNERSHIP_CHANGE", drop("fencing_token"), "'fencing_token' is a required property"),
    ("OWNERSHIP_CHANGE", drop("owner"), "'owner' is a required property"),
    ("OWNERSHIP_CHANGE", put(fencing_token=-4), "fencing_token: -4 is less than"),
    ("SESSION_STATS", drop("packets_out"), "'packets_out' is a required property"),
    ("SESSION_STATS", put(loss=1.5), "loss: 1.5 is greater than the maximum of 1"),
    ("SESSION_STATS", put(bytes_in=-1), "bytes_in: -1 is less than the minimum of 0"),
    ("SESSION_TERMINATED", put(reason_code=None), "reason_code: None is not of type"),
    ("SESSION_TERMINATED", drop("lifetime_ms"), "'lifetime_ms' is a required property"),
    ("SESSION_TERMINATED", drop("bytes_out"), "'bytes_out' is a required property"),
    ("EVENTS_LOST", drop("first_seq"), "'first_seq' is a required property"),
    ("EVENTS_LOST", put(count=0), "count: 0 is less than the minimum of 1"),
    ("EVENTS_LOST", put(session_id=SID), "session_id: '0123456789abcdef0123456789abcdef' is"),
    ("EVENTS_LOST", put(lost_boot_id="x"), "lost_boot_id: 'x' does not match"),
    # base fields, on any type
    ("TRANSPORT_ATTACHED", put(schema="jumping.event/2"), "schema: 'jumping.event/1' was expected"),
    ("TRANSPORT_ATTACHED", put(session_id=SID.upper()), "session_id: '0123456789ABCDEF"),
    ("TRANSPORT_ATTACHED", put(session_id="abc"), "session_id: 'abc'"),
    ("TRANSPORT_ATTACHED", put(seq=-1), "seq: -1 is less than the minimum of 0"),
    ("TRANSPORT_ATTACHED", put(prev_hash="00"), "prev_hash: '00' does not match"),
    ("TRANSPORT_ATTACHED", put(ts_ms=1.5), "ts_ms: 1.5 is not of type 'integer'"),
    ("TRANSPORT_ATTACHED", put(state_version=True), "state_version: True is not of type"),
    ("TRANSPORT_ATTACHED", put(reason_code="NOPE"), "reason_code: 'NOPE' is not one of"),
    ("TRANSPORT_ATTACHED", put(event_type="HELLO"), "event_type: 'HELLO' is not one of"),
    ("TRANSPORT_ATTACHED", drop("node_id"), "'node_id' is a required property"),
    ("TRANSPORT_ATTACHED", drop("prev_hash"), "'prev_hash' is a required property"),
    ("TRANSPORT_ATTACHED", put(node_id=""), "node_id: '' should be non-empty"),
    ("TRANSPORT_ATTACHED", put(boot_id="AB" * 16), "boot_id: 'ABABAB"),
]


def test_schema_is_a_valid_draft_2020_12_schema() -> None:
    schema = event_schema.load_schema()
    Draft202012Validator.check_schema(schema)
    assert schema["$schema"] == "https://json-schema.org/draft/2020-12/schema"
    assert schema["$id"] == event_schema.SCHEMA_ID == "jumping.event/1"
    assert schema["properties"]["schema"]["const"] == "jumping.event/1"


def test_load_schema_returns_a_private_copy() -> None:
    a = event_schema.load_schema()
    a["properties"].clear()
    assert event_schema.load_schema()["properties"]


def test_enums_match_the_state_machine_exactly() -> None:
    assert event_schema.states() == [s.value for s in State]
    assert event_schema.reason_codes() == [r.value for r in Reason] + list(
        event_schema.NON_FSM_REASON_CODES
    )
    assert not set(event_schema.NON_FSM_REASON_CODES) & {r.value for r in Reason}


def test_event_types_are_the_spec_list() -> None:
    assert event_schema.event_types() == DOCUMENTED_EVENT_TYPES


def test_violation_types_cover_the_spec_and_the_core() -> None:
    known = set(event_schema.violation_types())
    assert set(DOCUMENTED_VIOLATIONS) <= known
    from jumping.core import node

    assert set(getattr(node, "SECURITY_VIOLATIONS", {})) <= known


def test_every_event_type_has_a_valid_example() -> None:
    assert sorted(VALID) == sorted(DOCUMENTED_EVENT_TYPES)


@pytest.mark.parametrize("event_type", DOCUMENTED_EVENT_TYPES)
def test_valid_examples(event_type: str) -> None:
    assert event_schema.validate(VALID[event_type]) == []


@pytest.mark.parametrize(
    ("event_type", "change", "message"),
    INVALID,
    ids=[f"{t}-{i}" for i, (t, _c, _m) in enumerate(INVALID)],
)
def test_invalid_examples(
    event_type: str, change: Callable[[dict[str, Any]], dict[str, Any]], message: str
) -> None:
    problems = event_schema.validate(change(VALID[event_type]))
    assert problems, "should have been rejected"
    assert any(message in p for p in problems), problems


def test_every_event_type_has_an_invalid_example() -> None:
    assert {t for t, _c, _m in INVALID} == set(DOCUMENTED_EVENT_TYPES)


def test_unknown_fields_are_allowed_for_forward_compatibility() -> None:
    assert event_schema.validate(dict(VALID["SESSION_STATS"], jitter_ms=3, path="wifi")) == []


def test_not_an_object() -> None:
    assert event_schema.validate([1, 2]) == ["[1, 2] is not of type 'object'"]


def test_validate_says_jsonschema_is_required(monkeypatch: pytest.MonkeyPatch) -> None:
    event_schema._validator.cache_clear()
    monkeypatch.setitem(sys.modules, "jsonschema", None)
    try:
        with pytest.raises(event_schema.SchemaUnavailable, match="pip install jsonschema"):
            event_schema.validate(VALID["SESSION_STATS"])
    finally:
        event_schema._validator.cache_clear()


def test_docs_examples_validate() -> None:
    text = (ROOT / "docs" / "events.md").read_text()
    blocks = re.findall(r"```json\n(.*?)```", text, re.S)
    events = [json.loads(line) for b in blocks for line in b.splitlines() if line.strip()]
    assert {e["event_type"] for e in events} == set(DOCUMENTED_EVENT_TYPES)
    for e in events:
        assert event_schema.validate(e) == [], e


def test_audit_fixtures_that_should_be_valid_are() -> None:
    path = ROOT / "tests" / "data" / "audit" / "clean.jsonl"
    events = [json.loads(line) for line in path.read_text().splitlines()]
    assert {e["event_type"] for e in events} == set(DOCUMENTED_EVENT_TYPES)
    for e in events:
        assert event_schema.validate(e) == [], e


# ---------------------------------------------------------------------- the real core
def simulated_events(live: bool) -> list[dict[str, Any]]:
    """
    The failover run of the brief through the real pipeline. ``live=False`` stamps every
    event after the run (all share one ts_ms, as in the brief); ``live=True`` pipes each
    Emit as the simulator produces it, so timestamps are the simulated times.
    """
    from jumping.core.outputs import Emit
    from jumping.service.events import EventPipeline
    from jumping.testing.sim import SimNet

    out: list[dict[str, Any]] = []

    class ListSink:
        def emit(self, event: dict[str, Any]) -> None:
            out.append(event)

    class LiveNet(SimNet):
        pipes: dict[str, EventPipeline] = {}

        def apply(self, side: str, outputs: list[Any]) -> None:
            for o in outputs:
                if isinstance(o, Emit) and side in self.pipes:
                    self.pipes[side].emit(o)
                super().apply(side, [o])

    net = (LiveNet if live else SimNet)(seed=1)
    pipes = {
        side: EventPipeline(
            net.core(side).node_id, sinks=[ListSink()], chain_key=bytes(32),
            policy_version=lambda: "default", clock=lambda: net.now,
        )
        for side in ("client", "gateway")
    }  # fmt: skip
    if live:
        net.pipes = pipes  # type: ignore[attr-defined]
    net.start()
    net.run_for(0.5)
    net.links[0].up = False
    net.traffic(until=net.now + 1.0, interval=0.1)  # the client has something to judge
    net.run_for(15)
    net.links[0].up = True
    net.run_for(3)
    if not live:
        for side in ("client", "gateway"):
            for e in net.events(side):
                pipes[side].emit(e)
    return out


@pytest.mark.parametrize("live", [False, True], ids=["stamped-after", "live"])
def test_events_from_the_simulated_core_validate(live: bool) -> None:
    events = simulated_events(live)
    types = {e["event_type"] for e in events}
    assert {"SESSION_STATE_CHANGE", "TRANSPORT_ATTACHED", "SESSION_TERMINATED"} <= types
    for e in events:
        assert event_schema.validate(e) == [], e
