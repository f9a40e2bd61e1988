"""Every documented event type, reason code and violation type has a code path that
produces it, except the reserved names (documented, accepted, emitted by nothing in this
release: jumping.schema.RESERVED_*), which must have none. The scenario tests that trigger
each one are listed in docs/events.md, "Where each name is produced"."""

from __future__ import annotations

import re
from pathlib import Path

import jumping
from jumping import schema as event_schema
from jumping.core import node as core_node
from jumping.core.fsm import Reason

SRC = Path(jumping.__file__).resolve().parent
CODE = "\n".join(p.read_text() for d in ("core", "service") for p in sorted((SRC / d).glob("*.py")))
DOCS = Path(__file__).resolve().parents[1] / "docs" / "events.md"


def _emitted_event_types() -> set[str]:
    # self._emit("X", ...) or Emit("X", ...) (node-wide SECURITY_EVENTs)
    return set(re.findall(r'(?:_emit|\bEmit)\(\s*"([A-Z_]+)"', CODE))


def _produced_reasons() -> set[str]:
    # a transition (or an event's reason) names its code as Reason.X; the switch limiter
    # returns its refusals as strings (Reason(denied))
    found = set(re.findall(r"\bReason\.([A-Z_]+)\b", CODE))
    limits = (SRC / "core" / "ratelimit.py").read_text()
    found |= {r.value for r in Reason if f'"{r.value}"' in limits}
    return found


def test_every_documented_event_type_is_emitted_by_the_code() -> None:
    assert set(event_schema.event_types()) == _emitted_event_types()


def test_every_reason_code_is_produced_unless_reserved() -> None:
    produced = _produced_reasons()
    reserved = set(event_schema.RESERVED_REASON_CODES)
    assert reserved <= set(event_schema.reason_codes())
    assert {r.value for r in Reason} - reserved <= produced
    assert not reserved & produced, "a reserved reason code is produced: unreserve it"


def test_every_violation_type_has_a_source_unless_reserved() -> None:
    mapped = set(core_node.SECURITY_VIOLATIONS)
    reserved = set(event_schema.RESERVED_VIOLATION_TYPES)
    assert set(event_schema.violation_types()) - reserved == mapped
    assert not reserved & mapped


def test_the_reserved_names_are_documented_as_such() -> None:
    text = DOCS.read_text()
    section = text[text.index("## Reserved names") :]
    section = section[: section.index("\n## ", 4)]
    for name in (*event_schema.RESERVED_REASON_CODES, *event_schema.RESERVED_VIOLATION_TYPES):
        assert f"`{name}`" in section, name
