"""
The published JSON Schema of Jumping's SIEM events (docs/events.md), ``jumping.event/1``.

``event-1.json`` is the contract; ``docs/events.md`` explains it field by field. The
schema's enums mirror :mod:`jumping.core.fsm` exactly (a test keeps them in step), so a new
state or reason code cannot ship without the schema knowing it.

:func:`validate` needs the ``jsonschema`` package (a test dependency, optional at run time):
without it, it raises :class:`SchemaUnavailable` with the install hint instead of
pretending an event is valid.
"""

from __future__ import annotations

import copy
import json
from functools import lru_cache
from importlib import resources
from typing import Any

SCHEMA_ID = "jumping.event/1"
SCHEMA_FILE = "event-1.json"

#: Reason codes the schema accepts beyond :class:`jumping.core.fsm.Reason`. None today:
#: every reason code an event carries is one the state machine knows.
NON_FSM_REASON_CODES: tuple[str, ...] = ()

#: Documented and accepted by the schema, but produced by no code path of this release
#: (docs/events.md, "Reserved names"): names are never removed or reused within
#: ``jumping.event/1``, so a released name nothing emits any more, or not yet, stays here.
#: A test keeps every other documented name produced by a code path, and these not.
RESERVED_REASON_CODES: tuple[str, ...] = ("NO_CANDIDATE_TRANSPORTS",)
RESERVED_VIOLATION_TYPES: tuple[str, ...] = ("DUAL_ACTIVE_ATTEMPT", "STALE_FENCING_TOKEN")


class SchemaUnavailable(RuntimeError):
    """``validate`` was called but the ``jsonschema`` package is not installed."""


@lru_cache(maxsize=1)
def _schema_text() -> str:
    return resources.files(__name__).joinpath(SCHEMA_FILE).read_text(encoding="utf-8")


def load_schema() -> dict[str, Any]:
    """The schema as a fresh dict (callers may modify their copy)."""
    return copy.deepcopy(_cached_schema())


@lru_cache(maxsize=1)
def _cached_schema() -> dict[str, Any]:
    schema: dict[str, Any] = json.loads(_schema_text())
    return schema


@lru_cache(maxsize=1)
def _validator() -> Any:
    try:
        from jsonschema import Draft202012Validator
    except ImportError:
        raise SchemaUnavailable(
            "validating events needs the 'jsonschema' package: pip install jsonschema"
        ) from None
    return Draft202012Validator(_cached_schema())


def _where(path: Any) -> str:
    return "/".join(str(p) for p in path)


def validate(event: Any) -> list[str]:
    """
    Every way ``event`` breaks the schema, as readable messages (empty list: valid).

    Raises :class:`SchemaUnavailable` if ``jsonschema`` is not installed.
    """
    errors = sorted(_validator().iter_errors(event), key=lambda e: (list(e.path), e.message))
    out = []
    for e in errors:
        text = _message(e)
        if "then" in e.schema_path and isinstance(event, dict):
            text += f" (for {event.get('event_type')})"
        out.append(f"{_where(e.path)}: {text}" if e.path else text)
    return out


def _message(error: Any) -> str:
    """For "null or X" (anyOf) failures, say what was wrong against X, not "not valid under
    any of the given schemas"."""
    if error.validator == "anyOf" and error.context:
        useful = [
            c for c in error.context if not (c.validator == "type" and c.validator_value == "null")
        ]
        if useful:
            return str(useful[0].message)
    return str(error.message)


def event_types() -> list[str]:
    return list(_cached_schema()["properties"]["event_type"]["enum"])


def states() -> list[str]:
    return list(_cached_schema()["$defs"]["state"]["enum"])


def reason_codes() -> list[str]:
    return list(_cached_schema()["$defs"]["reason_code"]["enum"])


def violation_types() -> list[str]:
    return list(_cached_schema()["$defs"]["violation_type"]["enum"])
