"""
What the core asks its caller to do. Frozen: the core never gets a callback.

The service executes them in order: ``Send`` on the named path, ``WriteTun`` to the TUN
device, ``Emit`` to the event pipeline, ``ArmTimer`` to call ``tick`` again, ``Claim``,
``Adopt`` and ``Release`` against the ownership backend, ``ConfirmPath`` by calling the
path's ``confirm()``. ``Drop`` is informational (already counted).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Union

from jumping.core.segments import SegmentRun


@dataclass(frozen=True, slots=True)
class Send:
    path: Any
    data: bytes


@dataclass(frozen=True, slots=True)
class WriteTun:
    #: an IP packet, or consecutive pieces of one TCP super-packet (written as one GSO packet)
    data: bytes | SegmentRun


@dataclass(frozen=True, slots=True)
class Emit:
    """One SIEM event (docs/events.md) minus what the pipeline adds (schema, ts, node, seq)."""

    event_type: str
    session_id: str | None
    state_version: int
    reason_code: str | None
    fields: Mapping[str, Any]


@dataclass(frozen=True, slots=True)
class ArmTimer:
    """Call ``tick`` no later than ``at`` (seconds, the caller's clock)."""

    at: float


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str


@dataclass(frozen=True, slots=True)
class Claim:
    """Ask the ownership backend for this session; answer with ``NodeCore.claimed``."""

    session_id: str
    record: Mapping[str, Any]
    token: int | None


@dataclass(frozen=True, slots=True)
class Adopt:
    """Take over a session another gateway of the cluster owns (a client resumed it here):
    read its record, check it against the authenticated initiator (``client_key``, hex) and
    its ``state_version`` (:func:`jumping.core.gateway.adoption_error`), claim it by CAS on
    the record's token; answer with ``GatewayCore.adopted``."""

    session_id: str
    client_key: str
    state_version: int


@dataclass(frozen=True, slots=True)
class Release:
    session_id: str
    token: int | None


@dataclass(frozen=True, slots=True)
class ConfirmPath:
    """A packet authenticated on a path its transport marked ``provisional``: the transport
    may now keep it (``path.confirm()``). Unauthenticated sources never get a table entry."""

    path: Any


Output = Union[Send, WriteTun, Emit, ArmTimer, Drop, Claim, Adopt, Release, ConfirmPath]
